"""The COCO reader and writer (eecs598.data.formats.coco): a round trip of the real VOC sample (course JSON -> COCO
-> reader == the course's reader, exactly: COCO stores the same floats), pycocotools reading our files, category
ids made contiguous, crowd regions kept as difficult, and clear errors on bad files."""
import os

import pytest
import torch

from eecs598.data.convert import convert
from eecs598.data.datasets import VOC_CLASSES, VOC2007DetectionTiny
from eecs598.data.formats import AnnotationError, CocoDetection, VOCXmlDetection, coco_paths, read_coco
from formats_helpers import make_coco

SPLITS = ("train", "val")


def _by_name(dataset):
    return {os.path.basename(path): index for index, path in enumerate(dataset.image_paths)}


@pytest.fixture(scope="module")
def coco_copy(tmp_path_factory):
    """The VOC sample's course JSON converted to COCO (both splits), or a skip without the sample."""
    from conftest import VOC_SAMPLE_DIR

    if not os.path.isdir(VOC_SAMPLE_DIR):
        pytest.skip(f"VOC sample not found at {VOC_SAMPLE_DIR}")
    root = str(tmp_path_factory.mktemp("coco"))
    for split in SPLITS:
        convert("course-json", VOC_SAMPLE_DIR, "coco", root, split, list(VOC_CLASSES))
    return root


@pytest.mark.parametrize("split", SPLITS)
def test_course_json_to_coco_and_back_is_exact(voc_sample_dir, coco_copy, split):
    course = VOC2007DetectionTiny(voc_sample_dir, split)
    ours = CocoDetection(*coco_paths(coco_copy, split), class_names=VOC_CLASSES, max_boxes=40)
    assert len(ours) == len(course) and ours.num_difficult == 0
    index = _by_name(ours)
    for i in range(len(course)):
        path, image, gt = course[i]
        _, our_image, our_gt = ours[index[os.path.basename(path)]]
        assert torch.equal(our_gt, gt), path
        if i < 2:
            assert torch.equal(our_image, image)


def test_pycocotools_reads_our_file_with_the_course_boxes(voc_sample_dir, coco_copy):
    """An independent reader: pycocotools' COCO() on the written file gives every course box as [x, y, w, h]."""
    import json

    coco_module = pytest.importorskip("pycocotools.coco", reason="pycocotools (extra 'coco') is not installed")
    coco = coco_module.COCO(coco_paths(coco_copy, "val")[0])
    with open(os.path.join(voc_sample_dir, "voc07_val.json")) as f:
        entries = json.load(f)
    by_file = {image["file_name"]: image["id"] for image in coco.dataset["images"]}
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    for image_path, objects in entries:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[by_file[os.path.basename(image_path)]]))
        assert [(names[a["category_id"]], a["bbox"]) for a in anns] == [
            (o["name"], [o["xyxy"][0], o["xyxy"][1], o["xyxy"][2] - o["xyxy"][0], o["xyxy"][3] - o["xyxy"][1]])
            for o in objects]


def test_voc_difficult_objects_become_crowd_regions_and_come_back_difficult(voc_sample_dir, tmp_path):
    voc = os.path.join(voc_sample_dir, "VOCdevkit", "VOC2007")
    counts = convert("voc-xml", voc, "coco", str(tmp_path), "val")
    assert counts == {"images": 24, "objects": 128, "difficult": 34, "left_out": 0}
    ours = CocoDetection(*coco_paths(str(tmp_path), "val"), max_boxes=40)
    reference = VOCXmlDetection(voc, "val")
    index = _by_name(ours)
    for i, path in enumerate(reference.image_paths):
        our_path = ours.image_paths[index[os.path.basename(path)]]
        assert torch.equal(ours[index[os.path.basename(path)]][2], reference[i][2])
        assert torch.equal(ours.difficult_gt(our_path), reference.difficult_gt(path))


def _coco(images=None, annotations=None, categories=None):
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}] if images is None else images,
            "annotations": [] if annotations is None else annotations,
            "categories": [{"id": 7, "name": "traffic light"}, {"id": 3, "name": "cat"}]
            if categories is None else categories}


def test_category_ids_become_contiguous_in_id_order_and_names_lose_their_spaces(tmp_path):
    annotations = [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0},
                   {"id": 11, "image_id": 1, "category_id": 3, "bbox": [5, 5, 4, 4], "iscrowd": 1}]
    found = read_coco(*make_coco(str(tmp_path), _coco(annotations=annotations)))
    assert found.class_names == ["cat", "traffic_light"]  # category 3 -> class 0, category 7 -> class 1
    objects = found.images[0].objects
    assert [(o.name, o.box, o.difficult) for o in objects] == [("traffic_light", (1.0, 2.0, 11.0, 22.0), False),
                                                                ("cat", (5.0, 5.0, 9.0, 9.0), True)]


@pytest.mark.parametrize("case, expected", [
    ("unknown category", r"ann\.json: annotations\[0\] \(id 5\): unknown category_id 99"),
    ("unknown image", r"annotations\[0\] \(id 5\): image_id 2 is not in 'images'"),
    ("box outside", r"annotations\[0\] \(id 5\) in .*a\.jpg: box \[70\.0, 1\.0, 75\.0, 2\.0\] lies outside the "
                    r"64x48 image"),
    ("bad bbox", r"annotations\[0\] \(id 5\): 'bbox' must be \[x, y, width, height\]"),
    ("missing image", r"images\[0\] \(id 1, b\.jpg\): image .*b\.jpg not found"),
    ("traversal", r"images\[0\] \(id 1, \.\./a\.jpg\): the image path '\.\./a\.jpg' leaves"),
    ("no images", r"ann\.json: 'images' is empty: the split is empty"),
])
def test_bad_entries_are_named(tmp_path, case, expected):
    annotation = {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]}
    data = {"unknown category": _coco(annotations=[dict(annotation, category_id=99)]),
            "unknown image": _coco(annotations=[dict(annotation, image_id=2)]),
            "box outside": _coco(annotations=[dict(annotation, bbox=[70, 1, 5, 1])]),
            "bad bbox": _coco(annotations=[dict(annotation, bbox=[1, 2, 3])]),
            "missing image": _coco(images=[{"id": 1, "file_name": "b.jpg", "width": 64, "height": 48}]),
            "traversal": _coco(images=[{"id": 1, "file_name": "../a.jpg", "width": 64, "height": 48}]),
            "no images": _coco(images=[])}[case]
    with pytest.raises(AnnotationError, match=expected):
        read_coco(*make_coco(str(tmp_path), data))


def test_malformed_json_names_line_and_column(tmp_path):
    path, image_dir = make_coco(str(tmp_path), _coco())
    with open(path) as f:
        lines = f.read().splitlines()
    lines[3] = lines[3] + ","  # a trailing comma inside the first image
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with pytest.raises(AnnotationError, match=r"ann\.json:\d+:\d+: malformed JSON"):
        read_coco(path, image_dir)
    with pytest.raises(FileNotFoundError, match="COCO annotation file .*nothere.json not found"):
        read_coco(str(tmp_path / "nothere.json"), image_dir)
