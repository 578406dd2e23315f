"""What every annotation format is read into, and the ``Dataset`` they all become.

A reader (``coco.read_coco``, ``voc_xml.read_voc_xml``, ``yolo.read_yolo``, ``course_json.read_course_json``)
validates its files with errors that name the file and the line or entry, and returns an
:class:`AnnotationSet`: per image its absolute path, its objects as XYXY boxes in the image's own pixels
with a class name and a ``difficult`` flag, and the class list. A writer turns an ``AnnotationSet`` back
into files, so any format converts to any other (``python -m eecs598.data.convert``).

:class:`FormatDataset` is the ``Dataset`` of an ``AnnotationSet``: a ``DetectionJsonDataset`` (the same
validation, resize + centre-crop geometry and ``__getitem__`` output as ``VOC2007DetectionTiny``) whose
entries come from the set instead of a JSON file. ``difficult`` objects (VOC's flag, COCO's ``iscrowd``)
are left out of the training rows, exactly as the course's own JSON leaves them out, and kept beside them
for evaluation (:meth:`FormatDataset.difficult_gt`), where the mAP ignores detections on them.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from ..datasets import DetectionJsonDataset, VOC_CLASSES
from ..images import ImageFileError
from ..shapes import SHAPE_CLASSES
from ..transforms import map_boxes_to_crop

__all__ = ["AnnotationError", "ObjectAnnotation", "ImageAnnotation", "AnnotationSet", "FormatDataset",
           "IMAGE_EXTENSIONS", "check_box", "check_class_names", "file_class_name", "image_size_of",
           "inside", "parse_class_list"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class AnnotationError(ValueError):
    """A malformed or inconsistent annotation file; the message names the file and the line or entry."""


@dataclass
class ObjectAnnotation:
    """One object: ``name`` (a class name), ``box`` XYXY in the image's own pixels, ``difficult`` (VOC's
    flag or COCO's ``iscrowd``: ignored by the evaluation, left out of training)."""

    name: str
    box: Tuple[float, float, float, float]
    difficult: bool = False


@dataclass
class ImageAnnotation:
    """One image: absolute ``path``, its ``objects``, ``size`` ``(width, height)`` when the format states it
    (else None: read from the file when needed), and ``source``, where it was described (for messages)."""

    path: str
    objects: List[ObjectAnnotation] = field(default_factory=list)
    size: Optional[Tuple[int, int]] = None
    source: str = ""


@dataclass
class AnnotationSet:
    """The images of one split with their objects, the class list (class id = position) and ``source``, the
    annotation file or folder read."""

    images: List[ImageAnnotation]
    class_names: List[str]
    source: str

    def num_difficult(self) -> int:
        return sum(obj.difficult for image in self.images for obj in image.objects)


def file_class_name(name: str) -> str:
    """A class name as the mAP files can hold it: runs of whitespace become ``_`` (COCO's "traffic light" ->
    "traffic_light"; the Cartucho files are whitespace-separated)."""
    return "_".join(str(name).split())


def check_class_names(names: Sequence[str], where: str) -> List[str]:
    """``names`` as a list, refusing an empty list, empty names, whitespace and repeated names."""
    names = list(names)
    if not names:
        raise AnnotationError(f"{where}: the class list is empty")
    bad = [n for n in names if not isinstance(n, str) or not n or any(c.isspace() for c in n)]
    if bad:
        raise AnnotationError(f"{where}: class names must be non-empty without whitespace (the mAP files are "
                              f"whitespace-separated), got {bad}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise AnnotationError(f"{where}: class names must be distinct, got {repeated} more than once")
    return names


def parse_class_list(spec) -> List[str]:
    """A class list from ``"voc"``, ``"shapes"``, ``"a,b,c"``, a file with one name per line, or a sequence."""
    if not isinstance(spec, str):
        return check_class_names(spec, "class list")
    if spec in ("voc", "shapes"):
        return list(VOC_CLASSES if spec == "voc" else SHAPE_CLASSES)
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            return check_class_names([line.strip() for line in f if line.strip()], spec)
    return check_class_names([n.strip() for n in spec.split(",") if n.strip()], f"class list {spec!r}")


def inside(root: str, relative: str, where: str) -> str:
    """``root/relative`` as an absolute path, refusing absolute paths and ``..`` that leave ``root``
    (annotation files are not trusted to point anywhere on the disk)."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) or "\\" in relative:
        raise AnnotationError(f"{where}: the image path {relative!r} must be a relative path inside {root}")
    root = os.path.abspath(root)
    path = os.path.normpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        raise AnnotationError(f"{where}: the image path {relative!r} leaves {root}; refused")
    return path


def image_size_of(path: str, where: str) -> Tuple[int, int]:
    """``(width, height)`` from the image file's header (nothing decoded)."""
    if not os.path.isfile(path):
        raise AnnotationError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as e:  # PIL's many ways to fail on a file that is not an image
        raise ImageFileError(f"{where}: cannot read image {path} ({type(e).__name__}: {e})") from e


def check_box(box: Sequence[float], size: Optional[Tuple[int, int]], where: str) -> Tuple[float, ...]:
    """A finite XYXY box with ``x1 <= x2`` and ``y1 <= y2`` that overlaps its ``(width, height)`` image.

    A box that only sticks out of the image is kept (the crop clamps it, as for the course's JSON); one
    wholly outside is an error: it cannot describe anything in the picture.
    """
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                for v in box):
        raise AnnotationError(f"{where}: a box needs 4 finite numbers, got {list(box)!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 < x1 or y2 < y1:
        raise AnnotationError(f"{where}: box {[x1, y1, x2, y2]} has x2 < x1 or y2 < y1")
    if size is not None:
        width, height = size
        if x2 < 0 or y2 < 0 or x1 > width or y1 > height:
            raise AnnotationError(f"{where}: box {[x1, y1, x2, y2]} lies outside the {width}x{height} image")
    return x1, y1, x2, y2


class FormatDataset(DetectionJsonDataset):
    """The ``Dataset`` of an :class:`AnnotationSet`: ``VOC2007DetectionTiny``'s output and geometry.

    ``__getitem__`` returns ``(image_path, image (3, S, S) float32, gt_boxes (max_boxes, 5) float32)``:
    ``Resize(S)`` + ``CenterCrop(S)`` + ImageNet normalisation, rows ``(x1, y1, x2, y2, class_id)`` in crop
    pixels of the non-difficult objects, boxes emptied by the crop and the padding ``-1`` (see
    ``DetectionJsonDataset``). Difficult objects are not in those rows (training never sees them, as with
    the course's JSON, which drops them); :meth:`difficult_gt` gives them to the evaluation, which writes
    them as ``difficult`` ground truth (detections on them are neither true nor false positives).

    Attributes (besides ``DetectionJsonDataset``'s): ``annotations`` (the set read), ``num_difficult``.
    """

    def __init__(self, annotations: AnnotationSet, image_size: int = 224, max_boxes: int = 40):
        if not annotations.images:
            raise AnnotationError(f"{annotations.source}: no images: the split is empty")
        self.annotations = annotations
        super().__init__(os.path.dirname(os.path.abspath(annotations.source)), os.path.abspath(annotations.source),
                         annotations.class_names, image_size=image_size, max_boxes=max_boxes)
        class_ids = {name: i for i, name in enumerate(annotations.class_names)}
        self._difficult_boxes: List[torch.Tensor] = []  # per image (D, 4) float32, original pixels
        self._difficult_classes: List[torch.Tensor] = []  # per image (D,) float32 class ids
        for image in annotations.images:
            hard = [obj for obj in image.objects if obj.difficult]
            self._difficult_boxes.append(torch.tensor([o.box for o in hard], dtype=torch.float32).reshape(-1, 4))
            self._difficult_classes.append(torch.tensor([class_ids[o.name] for o in hard], dtype=torch.float32))
        self.num_difficult = sum(len(c) for c in self._difficult_classes)
        self._index_of_path: Dict[str, int] = {path: i for i, path in enumerate(self.image_paths)}

    def _load_entries(self, hint: str) -> list:
        """The set in the course's JSON layout, difficult objects left out (they go to :meth:`difficult_gt`)."""
        return [[image.path, [{"name": obj.name, "xyxy": list(obj.box)} for obj in image.objects
                              if not obj.difficult]] for image in self.annotations.images]

    def difficult_gt(self, image_path: str) -> torch.Tensor:
        """The difficult objects of the image at ``image_path`` (as ``__getitem__`` returns it), mapped through
        the same resize and crop: ``(D, 5)`` float32 rows ``(x1, y1, x2, y2, class_id)`` in crop pixels,
        boxes emptied by the crop left out. ``(0, 5)`` for an image without difficult objects.

        Raises:
            KeyError: ``image_path`` is not an image of this dataset.
        """
        index = self._index_of_path[image_path]
        boxes, classes = self._difficult_boxes[index], self._difficult_classes[index]
        if len(classes) == 0:
            return torch.zeros(0, 5)
        width, height = image_size_of(image_path, self.json_path)  # the decoded image's size, as __getitem__'s
        mapped, valid = map_boxes_to_crop(boxes, width, height, self.image_size)
        return torch.cat([mapped, classes[:, None]], dim=1)[valid]
