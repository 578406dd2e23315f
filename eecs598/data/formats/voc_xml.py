"""PASCAL VOC folders: ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``, ``JPEGImages/<id>.jpg``.

- :func:`read_voc_xml` / :class:`VOCXmlDetection`: a standard VOC folder (VOC 2007 / 2012 or one's own in
  that layout, e.g. from LabelImg or CVAT's "PASCAL VOC" export). Coordinates are taken exactly as written
  (VOC's 1-based pixel numbers, no shift), which is what the course's JSON holds for the same images;
  ``<difficult>1</difficult>`` objects are kept as difficult (see ``FormatDataset``); ``<truncated>``,
  ``<pose>`` and the person layout's ``<part>`` boxes are ignored.
- :func:`write_voc_xml`: the other way round (for ``python -m eecs598.data.convert``).

The XML is parsed with expat (the standard library's parser) so that errors can name ``file:line``; DTDs
and entity declarations are refused, so a hostile file cannot expand into gigabytes ("billion laughs").
"""
import os
from typing import List, Optional, Sequence
from xml.parsers import expat
from xml.sax.saxutils import escape

from ..datasets import VOC_CLASSES
from .base import (AnnotationError, AnnotationSet, FormatDataset, ImageAnnotation, ObjectAnnotation, check_box,
                   check_class_names, image_size_of)

__all__ = ["VOCXmlDetection", "read_voc_xml", "write_voc_xml"]

MAX_XML_BYTES = 4 * 2**20  # a VOC annotation is a few kB; larger files are refused unread


class _Node:
    """An XML element: tag, text, children, and the line it starts on."""

    __slots__ = ("tag", "text", "children", "line")

    def __init__(self, tag: str, line: int):
        self.tag, self.text, self.children, self.line = tag, "", [], line

    def find(self, tag: str) -> Optional["_Node"]:
        return next((child for child in self.children if child.tag == tag), None)

    def findall(self, tag: str) -> List["_Node"]:
        return [child for child in self.children if child.tag == tag]


def _parse_xml(path: str) -> _Node:
    """The root element of ``path``; malformed XML is an :class:`AnnotationError` naming ``file:line:column``."""
    with open(path, "rb") as f:
        data = f.read(MAX_XML_BYTES + 1)
    if len(data) > MAX_XML_BYTES:
        raise AnnotationError(f"{path}: larger than {MAX_XML_BYTES // 2**20} MB, not a VOC annotation; refused")
    parser = expat.ParserCreate()
    stack = [_Node("", 0)]

    def start(tag, attributes):
        node = _Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def refuse(*_):
        raise AnnotationError(f"{path}:{parser.CurrentLineNumber}: DTD and entity declarations are refused "
                              f"(a VOC annotation has none)")

    def text(data):
        stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: stack.pop()
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise AnnotationError(f"{path}:{e.lineno}:{e.offset + 1}: malformed XML ({expat.ErrorString(e.code)})") \
            from None
    return stack[0].children[0]


def _number(node: Optional[_Node], tag: str, path: str, parent: _Node) -> float:
    child = None if node is None else node.find(tag)
    if child is None:
        raise AnnotationError(f"{path}:{parent.line}: <{parent.tag}> has no <{tag}>")
    try:
        return float(child.text.strip())
    except ValueError:
        raise AnnotationError(f"{path}:{child.line}: <{tag}> must be a number, got {child.text.strip()!r}") from None


def _parse_object(node: _Node, path: str, size, class_names: Sequence[str]) -> ObjectAnnotation:
    name_node = node.find("name")
    if name_node is None or not name_node.text.strip():
        raise AnnotationError(f"{path}:{node.line}: <object> has no <name>")
    name = name_node.text.strip()
    if name not in class_names:
        raise AnnotationError(f"{path}:{name_node.line}: unknown class {name!r}; known classes: "
                              f"{', '.join(class_names)} (pass the dataset's own class list)")
    bndbox = node.find("bndbox")
    if bndbox is None:
        raise AnnotationError(f"{path}:{node.line}: <object> has no <bndbox>")
    box = [_number(bndbox, tag, path, bndbox) for tag in ("xmin", "ymin", "xmax", "ymax")]
    box = check_box(box, size, f"{path}:{bndbox.line}")
    flag = node.find("difficult")
    difficult = flag is not None and flag.text.strip() not in ("", "0")
    if flag is not None and flag.text.strip() not in ("", "0", "1"):
        raise AnnotationError(f"{path}:{flag.line}: <difficult> must be 0 or 1, got {flag.text.strip()!r}")
    return ObjectAnnotation(name, box, difficult)


def _image_path(root: _Node, image_dir: str, image_id: str, xml_path: str) -> str:
    """``JPEGImages/<id>.jpg`` (the VOC rule), else the file named by ``<filename>`` (e.g. a PNG)."""
    path = os.path.join(image_dir, image_id + ".jpg")
    if os.path.isfile(path):
        return path
    filename = root.find("filename")
    named = os.path.basename(filename.text.strip()) if filename is not None and filename.text.strip() else ""
    if named and os.path.isfile(os.path.join(image_dir, named)):
        return os.path.join(image_dir, named)
    raise AnnotationError(f"{xml_path}: image {path} not found" + (f" (nor {named} named by <filename>)"
                                                                    if named else ""))


def _read_annotation(xml_path: str, image_dir: str, image_id: str, class_names) -> ImageAnnotation:
    root = _parse_xml(xml_path)
    if root.tag != "annotation":
        raise AnnotationError(f"{xml_path}:{root.line}: expected an <annotation> root element, got <{root.tag}>")
    image_path = _image_path(root, image_dir, image_id, xml_path)
    size_node = root.find("size")
    size = None
    if size_node is not None:
        width, height = (_number(size_node, tag, xml_path, size_node) for tag in ("width", "height"))
        size = (int(width), int(height)) if width > 0 and height > 0 else None
    if size is None:  # some tools write <width>0</width>: the image file says it
        size = image_size_of(image_path, xml_path)
    objects = [_parse_object(node, xml_path, size, class_names) for node in root.findall("object")]
    return ImageAnnotation(image_path, objects, size, xml_path)


def _split_ids(split_file: str) -> List[tuple]:
    """``[(image_id, line_number), ...]`` of ``ImageSets/Main/<split>.txt``."""
    ids = []
    with open(split_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 1 or "/" in tokens[0] or tokens[0] in (".", ".."):
                raise AnnotationError(f"{split_file}:{line_no}: expected one image id per line, got {line.strip()!r}")
            ids.append((tokens[0], line_no))
    if not ids:
        raise AnnotationError(f"{split_file} lists no image ids: the split is empty")
    return ids


def read_voc_xml(root: str, split: str = "train", class_names: Sequence[str] = VOC_CLASSES) -> AnnotationSet:
    """Read the images of ``split`` from a VOC folder (see the module docstring).

    Args:
        root: the folder holding ``Annotations/``, ``ImageSets/Main/`` and ``JPEGImages/`` (for VOC 2007:
            ``VOCdevkit/VOC2007``).
        split: the name of a file ``ImageSets/Main/<split>.txt`` (``train``, ``val``, ``trainval``, ``test``).
        class_names: class ids are positions in this list (default: the 20 VOC classes, alphabetical).

    Raises:
        FileNotFoundError: no split file (the message lists the splits there are).
        AnnotationError: a malformed split file or XML, a missing annotation or image, an unknown class,
            a box outside its image, an empty split; the message names the file and line.
    """
    class_names = check_class_names(class_names, "class_names")
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        folder = os.path.dirname(split_file)
        there = sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".txt") and "_" not in n) \
            if os.path.isdir(folder) else []
        raise FileNotFoundError(f"VOC split file {split_file} not found"
                                + (f"; splits there: {', '.join(there)}" if there else
                                   f" ({root} should hold Annotations/, ImageSets/Main/ and JPEGImages/)"))
    images = []
    for image_id, line_no in _split_ids(split_file):
        xml_path = os.path.join(root, "Annotations", image_id + ".xml")
        if not os.path.isfile(xml_path):
            raise AnnotationError(f"{split_file}:{line_no}: no annotation {xml_path} for image id {image_id!r}")
        images.append(_read_annotation(xml_path, os.path.join(root, "JPEGImages"), image_id, class_names))
    return AnnotationSet(images, class_names, split_file)


class VOCXmlDetection(FormatDataset):
    """A standard VOC folder as the course's dataset: ``__getitem__`` -> ``(image_path, image (3, S, S),
    gt_boxes (max_boxes, 5))`` with ``VOC2007DetectionTiny``'s geometry; difficult objects through
    :meth:`difficult_gt` (see ``FormatDataset``). For the course's images it gives exactly the course JSON's
    boxes and classes (``tests/test_formats_voc.py``)."""

    def __init__(self, root: str, split: str = "train", class_names: Sequence[str] = VOC_CLASSES,
                 image_size: int = 224, max_boxes: int = 40):
        """
        Args:
            root: the VOC folder (``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``).
            split: ``ImageSets/Main/<split>.txt``.
            class_names: class ids are positions (default: the 20 VOC classes).
            image_size: S; max_boxes: GT rows per image (non-difficult objects).
        """
        super().__init__(read_voc_xml(root, split, class_names), image_size=image_size, max_boxes=max_boxes)


def _coordinate(value: float) -> str:
    """VOC files hold integers; non-integer coordinates (e.g. from YOLO) keep 2 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _annotation_xml(image: ImageAnnotation, file_name: str, size) -> str:
    lines = ["<annotation>", "\t<folder>JPEGImages</folder>", f"\t<filename>{escape(file_name)}</filename>",
             f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n\t\t<depth>3</depth>\n\t</size>",
             "\t<segmented>0</segmented>"]
    for obj in image.objects:
        box = "".join(f"\t\t\t<{tag}>{_coordinate(v)}</{tag}>\n" for tag, v in zip(("xmin", "ymin", "xmax", "ymax"),
                                                                                   obj.box))
        lines.append(f"\t<object>\n\t\t<name>{escape(obj.name)}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>{int(obj.difficult)}</difficult>\n"
                     f"\t\t<bndbox>\n{box}\t\t</bndbox>\n\t</object>")
    return "\n".join(lines + ["</annotation>"]) + "\n"


def write_voc_xml(annotations: AnnotationSet, root: str, split: str, place_image) -> List[str]:
    """Write ``annotations`` as the VOC folder ``root`` (``Annotations/<stem>.xml``, ``JPEGImages/``,
    ``ImageSets/Main/<split>.txt``; other splits' files are kept). ``place_image(src, dst)`` copies or
    links each image. Returns the files written. Difficult objects keep their flag."""
    stems = {}
    for image in annotations.images:
        stem = os.path.splitext(os.path.basename(image.path))[0]
        if stem in stems:
            raise AnnotationError(f"{image.path} and {stems[stem]} would both be VOC image id {stem!r}; rename one")
        stems[stem] = image.path
    for folder in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    written = []
    for image in annotations.images:
        file_name = os.path.basename(image.path)
        stem = os.path.splitext(file_name)[0]
        size = image.size or image_size_of(image.path, image.source or annotations.source)
        xml_path = os.path.join(root, "Annotations", stem + ".xml")
        with open(xml_path, "w", encoding="utf-8") as f:
            f.write(_annotation_xml(image, file_name, size))
        place_image(image.path, os.path.join(root, "JPEGImages", file_name))
        written.append(xml_path)
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    with open(split_file, "w", encoding="utf-8") as f:
        f.writelines(f"{stem}\n" for stem in stems)
    return written + [split_file]

