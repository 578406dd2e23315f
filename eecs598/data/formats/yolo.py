"""YOLO txt labels (Darknet / Ultralytics): ``images/<split>/x.jpg`` with ``labels/<split>/x.txt`` beside them.

Each label line is ``class_id cx cy w h``, the box centre and size as fractions of the image's width and
height; an image without a label file has no objects (a background image, as in Ultralytics). Class names
come from ``data.yaml``'s ``names`` (a list, or ``{id: name}``; reading it needs PyYAML: the extra
``yolo``) or from a names file (``classes.txt``, ``obj.names``: one name per line). YOLO has no
``difficult`` flag.

Where the images are: ``data.yaml``'s ``<split>`` entry (a folder relative to the root), else
``ROOT/images/<split>/``, else (no split) ``ROOT/images/``; labels are in the same place with the last
``images`` folder replaced by ``labels`` (Ultralytics' rule). Folders are read non-recursively, sorted.

- :func:`read_yolo` / :class:`YoloDetection`; :func:`write_yolo`: the other way round (6 decimals).
"""
import math
import os
from typing import List, Optional, Tuple

from .base import (IMAGE_EXTENSIONS, AnnotationError, AnnotationSet, FormatDataset, ImageAnnotation, ObjectAnnotation,
                   check_box, check_class_names, image_size_of)

__all__ = ["YoloDetection", "read_yolo", "write_yolo", "yolo_class_names", "yolo_folders"]

NAMES_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")


def _have_yaml() -> bool:
    import importlib.util

    return importlib.util.find_spec("yaml") is not None


def _read_yaml(path: str) -> dict:
    try:
        import yaml
    except ImportError:
        raise ImportError(f"reading {path} needs PyYAML: pip install -e '.[yolo]' (or pip install pyyaml), or "
                          f"give the class names as a names file (one per line)") from None
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise AnnotationError(f"{path}{line}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a mapping with 'names', got {type(data).__name__}")
    return data


def _names_of_yaml(path: str) -> List[str]:
    names = _read_yaml(path).get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise AnnotationError(f"{path}: 'names' must map the ids 0..{len(names) - 1}, got ids {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list):
        raise AnnotationError(f"{path}: 'names' must be a list of class names or {{id: name}}, got {names!r}")
    return check_class_names([str(n) for n in names], path)


def yolo_class_names(root: str, names=None) -> Tuple[List[str], str]:
    """``(class names, where they came from)``: ``names`` (a list, a ``.yaml`` file or a names file), else
    the first of ``data.yaml``, ``dataset.yaml``, ``classes.txt``, ``obj.names`` in ``root``."""
    if names is not None and not isinstance(names, str):
        return check_class_names(names, "names"), "names"
    order = NAMES_FILES if _have_yaml() else NAMES_FILES[2:] + NAMES_FILES[:2]  # without PyYAML: names files first
    candidates = [names] if names is not None else [os.path.join(root, n) for n in order]
    for path in candidates:
        if os.path.isfile(path):
            if path.endswith((".yaml", ".yml")):
                return _names_of_yaml(path), path
            with open(path, encoding="utf-8") as f:
                return check_class_names([line.strip() for line in f if line.strip()], path), path
    raise FileNotFoundError(f"YOLO class names not found: {names}" if names is not None else
                            f"YOLO class names not found in {root} (looked for {', '.join(NAMES_FILES)}); pass "
                            f"the names (a data.yaml, a names file or a list)")


def yolo_folders(root: str, split: Optional[str]) -> Tuple[str, str]:
    """``(image folder, label folder)`` of ``split`` (see the module docstring)."""
    image_dir = None
    yaml_path = os.path.join(root, "data.yaml")
    default = os.path.join(root, "images", split) if split is not None else None
    if split is not None and os.path.isfile(yaml_path) and (_have_yaml() or not os.path.isdir(default)):
        entry = _read_yaml(yaml_path).get(split)
        if isinstance(entry, str) and os.path.isdir(os.path.join(root, entry)):
            image_dir = os.path.normpath(os.path.join(root, entry))
    if image_dir is None:
        image_dir = os.path.join(root, "images", split) if split is not None else os.path.join(root, "images")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"YOLO image folder {image_dir} not found (expected ROOT/images/<split>/ and "
                                f"ROOT/labels/<split>/, or a '{split}:' folder in ROOT/data.yaml)")
    parts = os.path.normpath(image_dir).split(os.sep)
    if "images" not in parts:
        raise AnnotationError(f"{image_dir}: the image folder must be inside a folder named 'images' (its labels "
                              f"are found by replacing it with 'labels')")
    last = len(parts) - 1 - parts[::-1].index("images")
    return image_dir, os.sep.join(parts[:last] + ["labels"] + parts[last + 1:])


def _parse_label_line(line: str, where: str, size, class_names) -> ObjectAnnotation:
    tokens = line.split()
    if len(tokens) != 5:
        raise AnnotationError(f"{where}: expected 'class_id cx cy w h' (5 values), got {len(tokens)}: "
                              f"{line.strip()!r}")
    try:
        class_id, values = int(tokens[0]), [float(t) for t in tokens[1:]]
    except ValueError:
        raise AnnotationError(f"{where}: expected an integer class id and 4 numbers, got {line.strip()!r}") from None
    if not 0 <= class_id < len(class_names):
        raise AnnotationError(f"{where}: unknown class id {class_id}; the {len(class_names)} classes are ids "
                              f"0..{len(class_names) - 1}")
    cx, cy, w, h = values
    if not all(math.isfinite(v) for v in values) or w < 0 or h < 0:
        raise AnnotationError(f"{where}: expected finite cx cy w h with w, h >= 0, got {line.strip()!r}")
    if cx + w / 2 < 0 or cy + h / 2 < 0 or cx - w / 2 > 1 or cy - h / 2 > 1:
        raise AnnotationError(f"{where}: box {values} lies outside the image (coordinates are fractions in [0, 1])")
    width, height = size
    box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    return ObjectAnnotation(class_names[class_id], check_box(box, size, where))


def _read_labels(label_path: str, size, class_names) -> List[ObjectAnnotation]:
    with open(label_path, encoding="utf-8") as f:
        return [_parse_label_line(line, f"{label_path}:{n}", size, class_names)
                for n, line in enumerate(f, start=1) if line.strip()]


def read_yolo(root: str, split: Optional[str] = "train", names=None) -> AnnotationSet:
    """Read one split of a YOLO dataset (see the module docstring).

    Args:
        root: the dataset folder (``images/``, ``labels/``, ``data.yaml`` or ``classes.txt``).
        split: the subfolder of ``images/`` (or a ``data.yaml`` entry); None: ``images/`` itself.
        names: the class names (a list, a ``.yaml`` file or a names file); default: found in ``root``.

    Raises:
        FileNotFoundError: no image folder or no class names. AnnotationError: a label file without an
            image, two images with one name, a malformed line, an unknown class id, a box outside the image,
            no images; the message names the file and line.
    """
    class_names, names_source = yolo_class_names(root, names)
    image_dir, label_dir = yolo_folders(root, split)
    files = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise AnnotationError(f"{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}): the split is empty")
    stems = {}
    for file_name in files:
        stem = os.path.splitext(file_name)[0]
        if stem in stems:
            raise AnnotationError(f"{image_dir}: {stems[stem]} and {file_name} would share the label file {stem}.txt")
        stems[stem] = file_name
    if os.path.isdir(label_dir):
        orphans = sorted(f for f in os.listdir(label_dir) if f.endswith(".txt") and f[:-4] not in stems)
        if orphans:
            raise AnnotationError(f"{os.path.join(label_dir, orphans[0])} has no image in {image_dir}"
                                  + (f" (and {len(orphans) - 1} more label files)" if len(orphans) > 1 else ""))
    images = []
    for stem, file_name in stems.items():
        path = os.path.join(image_dir, file_name)
        label_path = os.path.join(label_dir, stem + ".txt")
        size = image_size_of(path, label_path)
        objects = _read_labels(label_path, size, class_names) if os.path.isfile(label_path) else []
        images.append(ImageAnnotation(path, objects, size, label_path))
    return AnnotationSet(images, class_names, label_dir if os.path.isdir(label_dir) else image_dir)


class YoloDetection(FormatDataset):
    """A YOLO dataset as the course's dataset: ``__getitem__`` -> ``(image_path, image (3, S, S), gt_boxes
    (max_boxes, 5))`` with ``VOC2007DetectionTiny``'s geometry (see ``FormatDataset``)."""

    def __init__(self, root: str, split: Optional[str] = "train", names=None, image_size: int = 224,
                 max_boxes: int = 100):
        """
        Args:
            root: the dataset folder; split: the subfolder of ``images/`` (None: ``images/`` itself).
            names: class names (list, ``.yaml`` or names file; default: ``data.yaml`` / ``classes.txt`` in root).
            image_size: S; max_boxes: GT rows per image.
        """
        super().__init__(read_yolo(root, split, names), image_size=image_size, max_boxes=max_boxes)


def _yaml_string(text: str) -> str:
    """A double-quoted YAML scalar (JSON's string syntax is valid YAML)."""
    import json

    return json.dumps(text)


def write_yolo(annotations: AnnotationSet, root: str, split: str, place_image) -> List[str]:
    """Write ``annotations`` as ``root/images/<split>/`` + ``root/labels/<split>/`` with ``classes.txt`` and a
    ``data.yaml`` naming every split folder present. Difficult objects are left out (YOLO has no such
    flag; the converter says how many). Returns the files written."""
    names_file = os.path.join(root, "classes.txt")
    if os.path.isfile(names_file):
        with open(names_file, encoding="utf-8") as f:
            existing = [line.strip() for line in f if line.strip()]
        if existing != list(annotations.class_names):
            raise AnnotationError(f"{names_file} lists other classes ({existing}) than this split's "
                                  f"({annotations.class_names}); write into another folder")
    image_dir, label_dir = os.path.join(root, "images", split), os.path.join(root, "labels", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    class_id = {name: i for i, name in enumerate(annotations.class_names)}
    written, used = [], {}
    for image in annotations.images:
        file_name = os.path.basename(image.path)
        stem = os.path.splitext(file_name)[0]
        if stem in used:
            raise AnnotationError(f"{image.path} and {used[stem]} would share the label file {stem}.txt")
        used[stem] = image.path
        width, height = image.size or image_size_of(image.path, image.source or annotations.source)
        lines = [f"{class_id[o.name]} {(o.box[0] + o.box[2]) / 2 / width:.6f} {(o.box[1] + o.box[3]) / 2 / height:.6f} "
                 f"{(o.box[2] - o.box[0]) / width:.6f} {(o.box[3] - o.box[1]) / height:.6f}\n"
                 for o in image.objects if not o.difficult]
        label_path = os.path.join(label_dir, stem + ".txt")
        with open(label_path, "w", encoding="utf-8") as f:
            f.writelines(lines)
        place_image(image.path, os.path.join(image_dir, file_name))
        written.append(label_path)
    with open(names_file, "w", encoding="utf-8") as f:
        f.writelines(f"{name}\n" for name in annotations.class_names)
    splits = sorted(d for d in os.listdir(os.path.join(root, "images")) if os.path.isdir(os.path.join(root, "images", d)))
    yaml_path = os.path.join(root, "data.yaml")
    with open(yaml_path, "w", encoding="utf-8") as f:
        f.write("# written by python -m eecs598.data.convert\npath: .\n")
        f.writelines(f"{s}: {_yaml_string('images/' + s)}\n" for s in splits)
        f.write("names: [" + ", ".join(_yaml_string(n) for n in annotations.class_names) + "]\n")
    return written + [names_file, yaml_path]
