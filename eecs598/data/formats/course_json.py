"""The course's JSON layout (``VOC2007DetectionTiny``'s ``voc07_<split>.json``) as an :class:`AnnotationSet`.

The file is a list of ``[image_path, [{"name": class, "xyxy": [x1, y1, x2, y2]}, ...]]`` with paths relative
to the dataset folder (``./here/VOCdevkit/VOC2007/JPEGImages/000012.jpg``). It has no ``difficult`` flag:
the course staff's conversion left VOC's difficult objects out altogether (docs/data.md), so
:func:`write_course_json` leaves them out too.
"""
import json
import os
from typing import List, Sequence

from ..datasets import DetectionJsonDataset
from .base import AnnotationSet, ImageAnnotation, ObjectAnnotation

__all__ = ["read_course_json", "write_course_json", "course_json_path", "COURSE_IMAGE_DIR"]

COURSE_IMAGE_DIR = os.path.join("VOCdevkit", "VOC2007", "JPEGImages")


def course_json_path(root: str, split: str) -> str:
    """``ROOT/voc07_<split>.json``, the name ``VOC2007DetectionTiny`` reads."""
    return os.path.join(root, f"voc07_{split}.json")


def read_course_json(root: str, split: str, class_names: Sequence[str]) -> AnnotationSet:
    """Read ``ROOT/voc07_<split>.json`` with ``DetectionJsonDataset``'s own validation (its errors)."""
    dataset = DetectionJsonDataset(root, f"voc07_{split}.json", class_names, max_boxes=10**6)
    names = list(class_names)
    images = [ImageAnnotation(os.path.abspath(path),
                              [ObjectAnnotation(names[int(c)], tuple(box)) for box, c in zip(boxes.tolist(),
                                                                                          classes.tolist())],
                              None, f"{dataset.json_path}: entry {i}")
              for i, (path, boxes, classes) in enumerate(zip(dataset.image_paths, dataset._boxes, dataset._classes))]
    return AnnotationSet(images, names, dataset.json_path)


def write_course_json(annotations: AnnotationSet, root: str, split: str, place_image) -> List[str]:
    """Write ``ROOT/voc07_<split>.json`` with the images in ``ROOT/VOCdevkit/VOC2007/JPEGImages/`` (so that
    ``VOC2007DetectionTiny(ROOT, split)`` reads it when the classes are VOC's; otherwise
    ``DetectionJsonDataset(ROOT, "voc07_<split>.json", class_names)``) and ``ROOT/classes.txt``. Difficult
    objects are left out, as in the course's files. Returns the files written."""
    image_dir = os.path.join(root, COURSE_IMAGE_DIR)
    os.makedirs(image_dir, exist_ok=True)
    entries, used = [], {}
    for image in annotations.images:
        file_name = os.path.basename(image.path)
        if file_name in used:
            raise ValueError(f"{image.path} and {used[file_name]} would both be {file_name} in {image_dir}")
        used[file_name] = image.path
        place_image(image.path, os.path.join(image_dir, file_name))
        objects = [{"name": obj.name, "xyxy": [float(v) for v in obj.box]} for obj in image.objects
                   if not obj.difficult]
        entries.append([f"./here/{COURSE_IMAGE_DIR.replace(os.sep, '/')}/{file_name}", objects])
    json_path = course_json_path(root, split)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    names_file = os.path.join(root, "classes.txt")
    with open(names_file, "w", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in annotations.class_names)
    return [json_path, names_file]
