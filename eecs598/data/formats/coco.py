"""COCO detection files: an instances JSON (``images``, ``annotations``, ``categories``) and an image folder.

- :func:`read_coco` / :class:`CocoDetection`: category ids (any integers) become contiguous class ids
  ``0..C-1`` in increasing category-id order (or the order of a given class list); names have their
  whitespace replaced by ``_`` ("traffic light" -> "traffic_light": the mAP files are whitespace-separated).
  Boxes ``[x, y, w, h]`` become ``[x, y, x + w, y + h]`` (the continuous convention that pycocotools and
  ``eecs598.evaluation.coco`` use). ``iscrowd: 1`` annotations are kept as *difficult* objects: left out of
  training and ignored by the evaluation, which is what the evaluator does with VOC's ``difficult`` (and
  what COCO's own evaluation does with crowd regions). Images without annotations are kept (negatives).
- :func:`write_coco`: the other way round (category ids ``1..C``, ``iscrowd`` = difficult, ``area = w * h``).

The usual layout (COCO 2017's): ``ROOT/annotations/instances_<split>.json`` and the images in
``ROOT/<split>/``; :func:`coco_paths` gives those names.
"""
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from .base import (AnnotationError, AnnotationSet, FormatDataset, ImageAnnotation, ObjectAnnotation, check_box,
                   check_class_names, file_class_name, image_size_of, inside)

__all__ = ["CocoDetection", "coco_paths", "read_coco", "write_coco"]


def coco_paths(root: str, split: str) -> Tuple[str, str]:
    """``(ROOT/annotations/instances_<split>.json, ROOT/<split>)``: COCO 2017's layout."""
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO annotation file {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories', "
                              f"got a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path}: '{key}' must be a list (a COCO instances file)")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _categories(data: dict, path: str, class_names: Optional[Sequence[str]]) -> Tuple[Dict[int, str], List[str]]:
    """``{category_id: class name}`` and the class list (class id = position)."""
    names: Dict[int, str] = {}
    for i, category in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        if not (isinstance(category, dict) and _is_int(category.get("id")) and isinstance(category.get("name"), str)
                and category["name"].strip()):
            raise AnnotationError(f"{where} must be {{'id': int, 'name': str}}, got {str(category)[:200]}")
        if category["id"] in names:
            raise AnnotationError(f"{where}: category id {category['id']} is used twice")
        names[category["id"]] = file_class_name(category["name"])
    if class_names is None:
        class_names = [names[i] for i in sorted(names)]
    class_names = check_class_names(class_names, f"{path}: categories")
    return names, class_names


def _images(data: dict, path: str, image_dir: str) -> Dict[int, ImageAnnotation]:
    images: Dict[int, ImageAnnotation] = {}
    for i, entry in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not (isinstance(entry, dict) and _is_int(entry.get("id")) and isinstance(entry.get("file_name"), str)):
            raise AnnotationError(f"{where} must have an integer 'id' and a 'file_name', got {str(entry)[:200]}")
        where = f"{where} (id {entry['id']}, {entry['file_name']})"
        if entry["id"] in images:
            raise AnnotationError(f"{where}: image id {entry['id']} is used twice")
        image_path = inside(image_dir, entry["file_name"], where)
        if not os.path.isfile(image_path):
            raise AnnotationError(f"{where}: image {image_path} not found")
        width, height = entry.get("width"), entry.get("height")
        if width is None or height is None:
            size = image_size_of(image_path, where)
        elif _is_int(width) and _is_int(height) and width > 0 and height > 0:
            size = (width, height)
        else:
            raise AnnotationError(f"{where}: 'width' and 'height' must be positive integers, got {width}, {height}")
        images[entry["id"]] = ImageAnnotation(image_path, [], size, where)
    return images


def _add_annotation(i: int, ann, path: str, images, category_names, class_names) -> None:
    where = f"{path}: annotations[{i}]"
    if not isinstance(ann, dict):
        raise AnnotationError(f"{where} must be an object, got {str(ann)[:200]}")
    where += f" (id {ann.get('id')})"
    image = images.get(ann.get("image_id"))
    if image is None:
        raise AnnotationError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
    name = category_names.get(ann.get("category_id"))
    if name is None:
        raise AnnotationError(f"{where}: unknown category_id {ann.get('category_id')!r}; 'categories' has "
                              f"{sorted(category_names)}")
    if name not in class_names:
        raise AnnotationError(f"{where}: unknown class {name!r} (category {ann['category_id']}); known classes: "
                              f"{', '.join(class_names)}")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise AnnotationError(f"{where}: 'bbox' must be [x, y, width, height] (4 finite numbers), got {bbox!r}")
    x, y, w, h = bbox
    if w < 0 or h < 0:
        raise AnnotationError(f"{where}: 'bbox' {bbox} has a negative width or height")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise AnnotationError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}")
    box = check_box([x, y, x + w, y + h], image.size, f"{where} in {image.path}")
    image.objects.append(ObjectAnnotation(name, box, bool(crowd)))


def read_coco(annotation_file: str, image_dir: str, class_names: Optional[Sequence[str]] = None) -> AnnotationSet:
    """Read a COCO instances file (see the module docstring).

    Args:
        annotation_file: the instances JSON.
        image_dir: the folder that ``images[].file_name`` is relative to (paths may not leave it).
        class_names: the class list (class id = position), each name a category name (whitespace as ``_``);
            default: every category, in increasing id order.

    Raises:
        FileNotFoundError: no annotation file. AnnotationError: malformed JSON (``file:line:column``), a bad
            entry, a missing image, an annotation of an unknown image or class, a box outside its image, no
            images; the message names the file and the entry (``images[i]``, ``annotations[j] (id ...)``).
    """
    data = _load_json(annotation_file)
    category_names, class_names = _categories(data, annotation_file, class_names)
    images = _images(data, annotation_file, image_dir)
    if not images:
        raise AnnotationError(f"{annotation_file}: 'images' is empty: the split is empty")
    known = set(class_names)
    for i, ann in enumerate(data["annotations"]):
        _add_annotation(i, ann, annotation_file, images, category_names, known)
    return AnnotationSet(list(images.values()), class_names, annotation_file)


class CocoDetection(FormatDataset):
    """A COCO instances file and its images as the course's dataset: ``__getitem__`` -> ``(image_path, image
    (3, S, S), gt_boxes (max_boxes, 5))`` with ``VOC2007DetectionTiny``'s geometry; crowd regions through
    :meth:`difficult_gt` (see ``FormatDataset``). COCO images hold up to ~90 objects: ``max_boxes`` 100."""

    def __init__(self, annotation_file: str, image_dir: str, class_names: Optional[Sequence[str]] = None,
                 image_size: int = 224, max_boxes: int = 100):
        """
        Args:
            annotation_file: the instances JSON; image_dir: the folder its ``file_name`` paths are in.
            class_names: class list (default: the file's categories in id order).
            image_size: S; max_boxes: GT rows per image (non-crowd objects).
        """
        super().__init__(read_coco(annotation_file, image_dir, class_names), image_size=image_size,
                         max_boxes=max_boxes)


def write_coco(annotations: AnnotationSet, annotation_file: str, image_dir: str, place_image) -> List[str]:
    """Write ``annotations`` as a COCO instances file whose ``file_name`` paths are relative to ``image_dir``.
    ``place_image(src, dst)`` copies or links each image into ``image_dir``. Returns the files written."""
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(annotation_file)), exist_ok=True)
    category_id = {name: i + 1 for i, name in enumerate(annotations.class_names)}
    images, anns, used = [], [], {}
    for image_id, image in enumerate(annotations.images, start=1):
        file_name = os.path.basename(image.path)
        if file_name in used:
            raise AnnotationError(f"{image.path} and {used[file_name]} would both be {file_name} in {image_dir}")
        used[file_name] = image.path
        width, height = image.size or image_size_of(image.path, image.source or annotations.source)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in image.objects:
            x1, y1, x2, y2 = obj.box
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category_id[obj.name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(obj.difficult)})
        place_image(image.path, os.path.join(image_dir, file_name))
    categories = [{"id": i, "name": name, "supercategory": ""} for name, i in category_id.items()]
    with open(annotation_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    return [annotation_file]
