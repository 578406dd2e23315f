"""Small synthetic datasets in each format, written by hand (not by the writers under test), for the format tests."""
import json
import os

from PIL import Image


def write_image(path, width=64, height=48, color=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), color).save(path, quality=95)
    return path


VOC_OBJECT = """	<object>
		<name>{name}</name>
		<difficult>{difficult}</difficult>
		<bndbox>
			<xmin>{x1}</xmin>
			<ymin>{y1}</ymin>
			<xmax>{x2}</xmax>
			<ymax>{y2}</ymax>
		</bndbox>
	</object>
"""


def voc_xml(objects, width=64, height=48, filename="a.jpg"):
    """An annotation file; ``objects``: ``(name, (x1, y1, x2, y2), difficult)``. Line numbers: the first
    object's ``<name>`` is line 8, its ``<bndbox>`` line 10; each object takes 10 lines."""
    body = "".join(VOC_OBJECT.format(name=n, difficult=d, x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for n, b, d in objects)
    return (f"<annotation>\n\t<filename>{filename}</filename>\n\t<size>\n\t\t<width>{width}</width>\n"
            f"\t\t<height>{height}</height>\n\t</size>\n{body}</annotation>\n")


def make_voc(root, images, split="train"):
    """A VOC folder; ``images``: ``{image_id: [(name, box, difficult), ...]}`` (64 x 48 JPEGs)."""
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, "ImageSets", "Main"), exist_ok=True)
    for image_id, objects in images.items():
        write_image(os.path.join(root, "JPEGImages", image_id + ".jpg"))
        with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
            f.write(voc_xml(objects, filename=image_id + ".jpg"))
    with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in images))
    return root


def make_coco(root, data, images=("a.jpg",)):
    """``root/ann.json`` holding ``data`` (pretty-printed, one key per line) and 64 x 48 images in ``root/img``."""
    for name in images:
        write_image(os.path.join(root, "img", name))
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path, os.path.join(root, "img")


def make_yolo(root, labels, names=("cat", "dog"), split="train", size=(64, 48)):
    """``root/images/<split>/<stem>.jpg`` + ``root/labels/<split>/<stem>.txt`` (text given) + ``classes.txt``."""
    for stem, text in labels.items():
        write_image(os.path.join(root, "images", split, stem + ".jpg"), *size)
        if text is not None:
            os.makedirs(os.path.join(root, "labels", split), exist_ok=True)
            with open(os.path.join(root, "labels", split, stem + ".txt"), "w") as f:
                f.write(text)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    return root
