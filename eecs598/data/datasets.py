"""Detection datasets in the course's JSON layout: PASCAL VOC 2007 (with a verified download) and Shapes.

- ``DetectionJsonDataset``: reads the course's JSON layout with a resize + centre-crop transform; boxes go
  through exactly torchvision's geometry (``resize_crop_geometry``, ``map_boxes_to_crop``).
- ``VOC2007DetectionTiny``: the course's VOC 2007 subset (train 2501 / val 2510 images, 20 classes).
- ``download_voc2007``: fetches and md5-checks the course's three files.
- ``ShapesDetection``: the offline, procedurally generated Shapes dataset (``eecs598.data.shapes``).

Conventions: boxes are XYXY in absolute pixels of the (cropped) input image; a GT row is
``(x1, y1, x2, y2, class_id)`` and padding rows are all ``-1``.
"""
import json
import math
import os
from typing import Any, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .download import VOC_URL_BASE, download_voc2007, voc_manual_instructions
from .images import ImageFileError, load_rgb_image
from .shapes import SHAPE_CLASSES, generate_shapes_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, map_boxes_to_crop

__all__ = ["VOC_CLASSES", "DetectionJsonDataset", "VOC2007DetectionTiny", "ShapesDetection"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse_repeated_names(class_names: Sequence[str]) -> None:
    """Class ids are positions in ``class_names``: a repeated name would map to its last position only, so
    every object of it would train (and be scored) as that class."""
    positions = {}
    for idx, name in enumerate(class_names):
        positions.setdefault(name, []).append(idx)
    repeated = {name: idx for name, idx in positions.items() if len(idx) > 1}
    if repeated:
        listed = ", ".join(f"{name!r} at {idx}" for name, idx in repeated.items())
        raise ValueError(f"class_names must not repeat a name (class ids are positions in the list), got {listed}")


class DetectionJsonDataset(Dataset):
    """Detection dataset in the course's JSON layout, resized and centre-cropped to ``S x S``.

    The JSON file holds a list of ``[image_path, [{"name": class_name, "xyxy": [x1, y1, x2, y2]}, ...]]``
    entries (extra keys such as ``"part"`` are ignored). ``image_path`` is relative to ``dataset_dir``, with
    an optional ``./here/`` prefix (the course's files use ``./here/VOCdevkit/VOC2007/JPEGImages/...``).
    The whole file is validated when the dataset is built (entry structure, class names, coordinates,
    object count, image files present), so a bad file fails at once instead of in a training worker.

    Transform: ``Resize(S)`` (shorter side), ``CenterCrop(S)``, ``ToTensor()``, ImageNet ``Normalize``.
    Boxes go through exactly the same resize and crop (``resize_crop_geometry``), are clamped to
    ``[0, S]``, boxes left empty by the crop become ``-1`` rows, and rows are padded with ``-1`` to
    ``max_boxes``.

    Attributes:
        class_to_idx: ``{class_name: class_id}``; idx_to_class: the inverse.
        image_size: S.
    """

    def __init__(
        self,
        dataset_dir: str,
        json_file: str,
        class_names: Sequence[str],
        image_size: int = 224,
        max_boxes: int = 40,
        missing_hint: str = "",
    ):
        """
        Args:
            dataset_dir: root directory; image paths in the JSON are relative to it.
            json_file: the JSON file, relative to ``dataset_dir`` (or absolute).
            class_names: class names; class ids are their positions.
            image_size: S, side of the square output images (an int >= 32).
            max_boxes: number of GT rows returned per image (images with more objects are an error).
            missing_hint: appended to "not found" errors, e.g. how to download or generate the data.
        """
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 32:
            raise ValueError(f"image_size must be an int >= 32 (the FPN's coarsest stride is 32), got {image_size!r}")
        if not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes must be an int >= 1, got {max_boxes!r}")
        self.dataset_dir = dataset_dir
        self.image_size = image_size
        self.max_boxes = max_boxes
        _refuse_repeated_names(class_names)
        self.class_to_idx = {name: idx for idx, name in enumerate(class_names)}
        self.idx_to_class = {idx: name for idx, name in enumerate(class_names)}
        self.json_path = json_file if os.path.isabs(json_file) else os.path.join(dataset_dir, json_file)
        hint = f" {missing_hint}" if missing_hint else ""

        entries = self._load_entries(hint)

        self.image_paths: List[str] = []
        self._boxes: List[torch.Tensor] = []  # per image (K, 4) float32, original pixels
        self._classes: List[torch.Tensor] = []  # per image (K,) float32 class ids
        for i, entry in enumerate(entries):
            self._parse_entry(i, entry)

        self._refuse_duplicates()
        missing = [p for p in self.image_paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.image_paths)} images listed in {self.json_path} are missing, "
                f"e.g. {missing[0]}.{hint}")
        self._refuse_boxes_outside()

        self.transform = transforms.Compose([
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ])

    def _load_entries(self, hint: str) -> List[Any]:
        """The annotation entries, ``[[image_path, [{"name": ..., "xyxy": [...]}, ...]], ...]``, read from
        ``self.json_path``. The readers of other formats (``eecs598.data.formats``) override this to hand over
        their own files in this layout, so that every format shares the validation, the geometry and
        ``__getitem__`` below."""
        if not os.path.isfile(self.json_path):
            raise FileNotFoundError(f"Annotation file {self.json_path} not found.{hint}")
        try:
            with open(self.json_path) as f:
                entries = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.json_path} is not valid JSON ({e}).{hint}") from e
        if not isinstance(entries, list):
            raise ValueError(f"{self.json_path}: expected a list of [image_path, objects] entries, "
                             f"got {type(entries).__name__}")
        if not entries:
            raise ValueError(f"{self.json_path} contains no entries: the dataset is empty.")
        return entries

    def _refuse_duplicates(self) -> None:
        """Each image may appear once: a second entry would be trained on twice as often and, at inference,
        write the same ``<id>.txt`` files twice (``inference_with_detector`` would stop at it)."""
        first_entry = {}
        for i, path in enumerate(self.image_paths):
            key = os.path.normcase(os.path.abspath(path))
            if key in first_entry:
                raise ValueError(
                    f"{self.json_path}: entries {first_entry[key]} and {i} both list the image {path}. Each image "
                    f"must appear once: merge their objects into one entry.")
            first_entry[key] = i

    def _refuse_boxes_outside(self) -> None:
        """A box wholly outside its image (another image's box, or coordinates of another scale) would become a
        ``-1`` padding row without a word: it is an error naming the entry. The sizes come from the image files'
        headers (PIL reads no pixels: about 0.1 ms an image, see benchmarks/reliability_figures.py); a file
        whose header cannot be read is left to ``__getitem__``, whose ``ImageFileError`` names it and its entry."""
        for i, (path, boxes) in enumerate(zip(self.image_paths, self._boxes)):
            if boxes.numel() == 0:
                continue
            try:
                with Image.open(path) as f:
                    width, height = f.size
            except Exception:  # noqa: BLE001 -- PIL's many ways to fail; reported when the image is loaded
                continue
            outside = (boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
            if outside.any():
                j = int(outside.nonzero()[0, 0])
                raise ValueError(
                    f"{self.json_path}: entry {i} ({path}), object {j}: the box {boxes[j].tolist()} lies wholly "
                    f"outside its {width}x{height} image (boxes are XYXY pixels of that image); fix the entry or "
                    f"its image.")

    def _parse_entry(self, i: int, entry: Any) -> None:
        """Validate JSON entry ``i`` and store its image path, boxes and class ids."""
        where = f"{self.json_path}: entry {i}"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list)):
            raise ValueError(f"{where} must be [image_path (str), [objects]], got {str(entry)[:200]}")
        path, objects = entry
        where = f"{where} ({path})"
        if len(objects) > self.max_boxes:
            raise ValueError(f"{where} has {len(objects)} objects, more than max_boxes={self.max_boxes}.")
        boxes, classes = [], []
        for j, obj in enumerate(objects):
            if not isinstance(obj, dict) or "name" not in obj or "xyxy" not in obj:
                raise ValueError(f"{where}, object {j}: expected {{'name': ..., 'xyxy': [x1, y1, x2, y2]}}, "
                                 f"got {str(obj)[:200]}")
            if obj["name"] not in self.class_to_idx:
                raise ValueError(f"{where}, object {j}: unknown class name {obj['name']!r}; "
                                 f"known classes: {', '.join(self.class_to_idx)}")
            xyxy = obj["xyxy"]
            if not (isinstance(xyxy, list) and len(xyxy) == 4 and all(_is_number(v) for v in xyxy)
                    and xyxy[0] <= xyxy[2] and xyxy[1] <= xyxy[3]):
                raise ValueError(f"{where}, object {j}: 'xyxy' must be 4 finite numbers with x1 <= x2 and "
                                 f"y1 <= y2, got {xyxy!r}")
            boxes.append(xyxy)
            classes.append(self.class_to_idx[obj["name"]])
        rel = path[len("./here/"):] if path.startswith("./here/") else path
        self.image_paths.append(rel if os.path.isabs(rel) else os.path.join(self.dataset_dir, rel))
        self._boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        self._classes.append(torch.tensor(classes, dtype=torch.float32))

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Tuple[str, torch.Tensor, torch.Tensor]:
        """Load one image and its GT.

        Returns:
            image_path: path of the JPEG (``dataset_dir`` joined with the JSON path).
            image: ``(3, S, S)`` float32, ImageNet-normalised.
            gt_boxes: ``(max_boxes, 5)`` float32 rows ``(x1, y1, x2, y2, class_id)`` in crop pixels, in
                JSON order; boxes emptied by the crop and the padding are ``-1`` rows.
        """
        image_path = self.image_paths[index]
        try:
            image = load_rgb_image(image_path)
        except ImageFileError as e:
            raise ImageFileError(f"{e} (entry {index} of {self.json_path})") from e.__cause__
        width, height = image.size
        image = self.transform(image)

        boxes, valid = map_boxes_to_crop(self._boxes[index], width, height, self.image_size)
        rows = torch.cat([boxes, self._classes[index][:, None]], dim=1)
        rows[~valid] = -1
        gt_boxes = torch.full((self.max_boxes, 5), -1.0)
        gt_boxes[: rows.shape[0]] = rows
        return image_path, image, gt_boxes

class VOC2007DetectionTiny(DetectionJsonDataset):
    """The course's PASCAL VOC 2007 detection subset (train 2501 / val 2510 images, 20 classes).

    Files: ``dataset_dir/voc07_{split}.json`` and ``dataset_dir/VOCdevkit/VOC2007/JPEGImages/``.
    ``__getitem__`` returns ``(image_path, image (3, S, S) float32, gt_boxes (40, 5) float32)``; see
    ``DetectionJsonDataset`` for the transform and the box mapping.
    """

    def __init__(self, dataset_dir: str, split: str = "train", download: bool = False, image_size: int = 224):
        """
        Args:
            dataset_dir: directory holding (or receiving) the JSON files and ``VOCdevkit``.
            split: ``"train"`` or ``"val"``.
            download: fetch and extract the files first (``download_voc2007``; skipped for files present).
            image_size: S, side of the square crop.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if download:
            download_voc2007(dataset_dir)
        hint = ("Pass download=True to fetch it, or download it by hand:\n"
                + voc_manual_instructions(dataset_dir, VOC_URL_BASE))
        super().__init__(dataset_dir, f"voc07_{split}.json", VOC_CLASSES, image_size=image_size,
                         max_boxes=40, missing_hint=hint)


class ShapesDetection(DetectionJsonDataset):
    """The offline Shapes dataset (see ``eecs598.data.shapes``), read with the same loader as VOC.

    ``__getitem__`` returns ``(image_path, image (3, S, S) float32, gt_boxes (max_boxes, 5) float32)``.
    """

    def __init__(
        self,
        dataset_dir: str = "data/shapes",
        split: str = "train",
        image_size: int = 128,
        generate: bool = True,
        num_train: int = 3000,
        num_val: int = 300,
        seed: int = 0,
        max_boxes: int = 40,
        quiet: bool = False,
        size_range: Optional[Tuple[int, int]] = None,
    ):
        """
        Args:
            dataset_dir: where the dataset lives (generated there when ``generate=True``).
            split: ``"train"`` or ``"val"``.
            image_size: S; also the size the images are generated at, so no resizing happens.
            generate: generate the dataset first (skipped when present with the same parameters).
            num_train, num_val, seed: generation parameters (see ``generate_shapes_dataset``).
            max_boxes: GT rows per image.
            quiet: do not print generation messages.
            size_range: ``(min_size, max_size)`` of the shapes' boxes in pixels (``generate_shapes_dataset``'s
                ``min_size`` / ``max_size``, log-uniform); ``None``: its defaults ``(14, 64)``, so the data
                are byte-identical to a dataset generated without it. E.g. ``(6, 24)`` for small objects.
                Only used when ``generate=True``.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if generate:
            sizes = {}
            if size_range is not None:
                if not (isinstance(size_range, (tuple, list)) and len(size_range) == 2):
                    raise ValueError(f"ShapesDetection: size_range must be None or (min_size, max_size) in pixels, "
                                     f"got {size_range!r}")
                sizes = dict(min_size=size_range[0], max_size=size_range[1])
            generate_shapes_dataset(dataset_dir, num_train=num_train, num_val=num_val, image_size=image_size,
                                    seed=seed, quiet=quiet, **sizes)
        hint = ("Generate it with ShapesDetection(..., generate=True) or "
                "eecs598.data.shapes.generate_shapes_dataset(root).")
        super().__init__(dataset_dir, f"shapes_{split}.json", SHAPE_CLASSES, image_size=image_size,
                         max_boxes=max_boxes, missing_hint=hint)
