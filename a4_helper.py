"""Helpers for the FCOS assignment: detection datasets, the training loop and inference / mAP export.

Contents (``from a4_helper import *`` gives all of them):

- ``DetectionJsonDataset``: reads the course's JSON layout (VOC or Shapes) with a resize + centre-crop
  transform, boxes mapped with exactly torchvision's geometry.
- ``VOC2007DetectionTiny``: the course's PASCAL VOC 2007 subset (optionally downloaded, md5-verified).
- ``ShapesDetection``: the offline, procedurally generated Shapes dataset (``eecs598.shapes``).
- ``train_detector``: SGD (or AdamW) training with checkpoint / exact resume, NaN guard, loss plot.
- ``FROM_SCRATCH``: the stable optimiser preset for a randomly initialised backbone.
- ``inference_with_detector``: draws predictions, or writes Cartucho/mAP input files.

Conventions: boxes are XYXY in absolute pixels of the (cropped) input image; a GT row is
``(x1, y1, x2, y2, class_id)`` and padding rows are all ``-1``.
"""
import hashlib
import json
import math
import os
import random
import socket
import tarfile
import tempfile
import time
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

import eecs598
from eecs598.shapes import SHAPE_CLASSES, generate_shapes_dataset


def hello_helper():
    """Print a greeting, to check that the module was imported."""
    print("Hello from a4_helper.py!")


# ==================================================================================================
# Datasets
# ==================================================================================================

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VOC_URL_BASE = "https://web.eecs.umich.edu/~justincj/data/"
# md5 of the course's files (also listed in the README); the tar is the official VOC 2007 trainval archive.
VOC_FILES_MD5 = {
    "VOCtrainval_06-Nov-2007.tar": "c52e279531787c972589f7e41ab4ae64",
    "voc07_train.json": "21ab74d443b760521c8d089efbc55052",
    "voc07_val.json": "e6f6209f240ba25486d9bb098849f6c7",
}
VOC_NUM_TRAINVAL_IMAGES = 5011  # JPEGs in the official trainval archive


def resize_crop_geometry(width: int, height: int, image_size: int) -> Tuple[int, int, int, int]:
    """Geometry of torchvision's ``Resize(image_size)`` (shorter side) followed by ``CenterCrop(image_size)``.

    Args:
        width, height: original image size in pixels.
        image_size: S, the shorter side after resizing and the side of the square crop.

    Returns:
        ``(new_width, new_height, left, top)``: the integer size torchvision resizes to, and the crop's
        offset in the resized image (``int(round((new - S) / 2))``, as ``CenterCrop`` computes it).
    """
    # torchvision's rule for Resize(int): the shorter side becomes S, the longer one int(S * long / short).
    # (Written out rather than calling torchvision's private helper, whose name may change.)
    if width <= height:
        new_width, new_height = image_size, int(image_size * height / width)
    else:
        new_width, new_height = int(image_size * width / height), image_size
    left = int(round((new_width - image_size) / 2.0))
    top = int(round((new_height - image_size) / 2.0))
    return new_width, new_height, left, top


def map_boxes_to_crop(boxes: torch.Tensor, width: int, height: int, image_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map XYXY boxes of an original image into its resized, centre-cropped ``S x S`` version.

    Args:
        boxes: ``(M, 4)`` float XYXY boxes in original-image pixels.
        width, height: original image size.
        image_size: S.

    Returns:
        boxes: ``(M, 4)`` boxes in crop pixels, clamped to ``[0, S]``.
        valid: ``(M,)`` bool, False for boxes that the crop left with zero width or height.
    """
    new_width, new_height, left, top = resize_crop_geometry(width, height, image_size)
    scale = boxes.new_tensor([new_width / width, new_height / height] * 2)
    offset = boxes.new_tensor([left, top] * 2)
    mapped = (boxes * scale - offset).clamp(0, image_size)
    valid = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return mapped, valid


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        self.class_to_idx = {name: idx for idx, name in enumerate(class_names)}
        self.idx_to_class = {idx: name for idx, name in enumerate(class_names)}
        self.json_path = json_file if os.path.isabs(json_file) else os.path.join(dataset_dir, json_file)
        hint = f" {missing_hint}" if missing_hint else ""

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

        self.image_paths: List[str] = []
        self._boxes: List[torch.Tensor] = []  # per image (K, 4) float32, original pixels
        self._classes: List[torch.Tensor] = []  # per image (K,) float32 class ids
        for i, entry in enumerate(entries):
            self._parse_entry(i, entry)

        missing = [p for p in self.image_paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.image_paths)} images listed in {self.json_path} are missing, "
                f"e.g. {missing[0]}.{hint}")

        self.transform = transforms.Compose([
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ])

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
            with Image.open(image_path) as f:
                image = f.convert("RGB")  # decodes the whole file, so truncation shows up here
        except (OSError, SyntaxError, ValueError) as e:
            raise OSError(f"Cannot read image {image_path} (entry {index} of {self.json_path}): {e}. The file "
                          f"is corrupt or truncated; replace it (re-download or regenerate the dataset).") from e
        width, height = image.size
        image = self.transform(image)

        boxes, valid = map_boxes_to_crop(self._boxes[index], width, height, self.image_size)
        rows = torch.cat([boxes, self._classes[index][:, None]], dim=1)
        rows[~valid] = -1
        gt_boxes = torch.full((self.max_boxes, 5), -1.0)
        gt_boxes[: rows.shape[0]] = rows
        return image_path, image, gt_boxes


def _md5(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _voc_manual_instructions(dataset_dir: str, url_base: str) -> str:
    lines = [f"  {url_base}{name}  ->  {os.path.join(dataset_dir, name)}  (md5 {md5})"
             for name, md5 in VOC_FILES_MD5.items()]
    return ("Download these files by hand (e.g. on a machine with internet access):\n" + "\n".join(lines)
            + f"\nthen extract the tar inside {dataset_dir} (tar xf VOCtrainval_06-Nov-2007.tar), so that "
            f"{os.path.join(dataset_dir, 'VOCdevkit', 'VOC2007', 'JPEGImages')} holds the JPEGs, and build the "
            f"dataset with download=False.")


def _voc_images_present(dataset_dir: str) -> bool:
    image_dir = os.path.join(dataset_dir, "VOCdevkit", "VOC2007", "JPEGImages")
    return os.path.isdir(image_dir) and len(os.listdir(image_dir)) >= VOC_NUM_TRAINVAL_IMAGES


def download_voc2007(dataset_dir: str, url_base: str = VOC_URL_BASE, timeout: float = 10.0) -> None:
    """Download (with ``wget``) and extract the course's VOC 2007 files into ``dataset_dir``.

    Each file goes to a temporary ``.part`` name, is md5-verified and only then renamed, so an interrupted
    download never looks complete. Files already present with the right md5 are skipped; the tar is only
    fetched and extracted when the JPEGs are missing.

    Args:
        dataset_dir: target directory (created if needed).
        url_base: URL prefix of the three files.
        timeout: socket timeout in seconds, so that an offline machine fails fast instead of hanging.

    Raises:
        RuntimeError: a download failed or a file has the wrong md5; the message says how to download by hand.
    """
    import wget  # imported here: only needed for downloading

    os.makedirs(dataset_dir, exist_ok=True)
    images_present = _voc_images_present(dataset_dir)
    for name, md5 in VOC_FILES_MD5.items():
        target = os.path.join(dataset_dir, name)
        if name.endswith(".tar") and images_present:
            continue
        if os.path.isfile(target):
            if _md5(target) == md5:
                continue
            print(f"{target} exists but its md5 is wrong; downloading it again.")
        part = target + ".part"
        if os.path.exists(part):
            os.remove(part)  # wget would otherwise pick another name instead of overwriting
        url = url_base + name
        print(f"Downloading {url} -> {target}")
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            wget.download(url, out=part, bar=None)
        except Exception as e:  # URLError, socket.timeout, HTTPError, ...
            # wget first writes "<name>*.tmp" in the working directory; don't leave it behind.
            for leftover in os.listdir("."):
                if leftover.startswith(os.path.basename(part)) and leftover.endswith(".tmp"):
                    os.remove(leftover)
            if os.path.exists(part):
                os.remove(part)
            raise RuntimeError(f"Could not download {url} ({type(e).__name__}: {e}).\n"
                               + _voc_manual_instructions(dataset_dir, url_base)) from e
        finally:
            socket.setdefaulttimeout(old_timeout)
        actual = _md5(part)
        if actual != md5:
            os.remove(part)
            raise RuntimeError(f"Downloaded {url} has md5 {actual}, expected {md5} (corrupted or changed file).\n"
                               + _voc_manual_instructions(dataset_dir, url_base))
        os.replace(part, target)
    if not images_present:
        tar_path = os.path.join(dataset_dir, "VOCtrainval_06-Nov-2007.tar")
        print(f"Extracting {tar_path} ...")
        with tarfile.open(tar_path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dataset_dir, filter="data")  # refuses absolute paths and ".." members
            else:
                tar.extractall(dataset_dir)


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
                + _voc_manual_instructions(dataset_dir, VOC_URL_BASE))
        super().__init__(dataset_dir, f"voc07_{split}.json", VOC_CLASSES, image_size=image_size,
                         max_boxes=40, missing_hint=hint)


class ShapesDetection(DetectionJsonDataset):
    """The offline Shapes dataset (see ``eecs598.shapes``), read with the same loader as VOC.

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
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if generate:
            generate_shapes_dataset(dataset_dir, num_train=num_train, num_val=num_val, image_size=image_size,
                                    seed=seed, quiet=quiet)
        hint = ("Generate it with ShapesDetection(..., generate=True) or "
                "eecs598.shapes.generate_shapes_dataset(root).")
        super().__init__(dataset_dir, f"shapes_{split}.json", SHAPE_CLASSES, image_size=image_size,
                         max_boxes=max_boxes, missing_hint=hint)


# ==================================================================================================
# Training
# ==================================================================================================

# Stable setting for a randomly initialised backbone (no ImageNet weights, e.g. offline): the contract's
# plain SGD at lr 5e-3 diverges to NaN within ~150 iterations there. AdamW adapts the step per parameter,
# the warm-up avoids the large first steps of a random network, and clipping stops rare loss spikes.
# Use as ``train_detector(model, loader, max_iters=..., **FROM_SCRATCH)``.
FROM_SCRATCH = dict(optimizer="adamw", learning_rate=2e-3, weight_decay=1e-4, warmup_iters=100,
                    grad_clip_norm=5.0)

_CHECKPOINT_FORMAT = "a4_helper.train_detector/1"


class _SeededSamples(Dataset):
    """Wraps a dataset so that each sample is loaded with RNGs seeded from its position in the data order.

    Keys are ``(index, seed)`` pairs. Random augmentations inside the dataset then depend only on
    (data seed, epoch, position), not on which worker loads the sample or on whether the run was resumed.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        # Save and restore: with num_workers=0 this runs in the training process, whose RNGs must not move.
        states = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)  # CPU only: never touches CUDA RNGs
        try:
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.default_generator.set_state(states[2])


def _epoch_order(num_samples: int, data_seed: int, epoch: int, shuffle: bool) -> Tuple[torch.Tensor, np.ndarray]:
    """Sample order and per-position sample seeds of one epoch, a pure function of (data_seed, epoch)."""
    words = np.random.SeedSequence([data_seed, epoch]).generate_state(num_samples + 2, dtype=np.uint32)
    if shuffle:
        generator = torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
        order = torch.randperm(num_samples, generator=generator)
    else:
        order = torch.arange(num_samples)
    return order, words[2:]


class _ResumableBatchSampler:
    """Infinite batch sampler over epochs whose position ``(epoch, offset)`` can be saved and restored.

    Yields lists of ``(index, sample_seed)`` keys for ``_SeededSamples``. Epoch ``e`` is a permutation
    seeded by ``(data_seed, e)``, so the order of any batch is known without replaying the earlier ones.
    """

    def __init__(self, num_samples: int, batch_size: int, drop_last: bool, shuffle: bool, data_seed: int,
                 epoch: int = 0, offset: int = 0):
        self.num_samples, self.batch_size, self.drop_last, self.shuffle = num_samples, batch_size, drop_last, shuffle
        self.data_seed, self.epoch, self.offset = data_seed, epoch, offset
        self.batches_per_epoch = (num_samples // batch_size if drop_last else -(-num_samples // batch_size))

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, offset = self.epoch, self.offset
        while True:
            order, seeds = _epoch_order(self.num_samples, self.data_seed, epoch, self.shuffle)
            for b in range(offset, self.batches_per_epoch):
                positions = range(b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples))
                yield [(int(order[p]), int(seeds[p])) for p in positions]
            epoch, offset = epoch + 1, 0

    def advance(self) -> None:
        """Record that one more batch was consumed by the training loop (workers may prefetch further)."""
        self.offset += 1
        if self.offset == self.batches_per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0


def _seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed (set from the
    loader's generator), so that workers do not share NumPy states."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _rng_state() -> Dict[str, Any]:
    """All global RNG states, as tensors and plain Python values (loadable with ``weights_only=True``)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``: a crash
    mid-write leaves the previous checkpoint intact."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the checkpoint the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a ``train_detector`` checkpoint on the CPU.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: the file is truncated, corrupt or not a ``train_detector`` checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} not found.")
    # torch.save writes a zip archive with a CRC-32 per member, but torch.load never checks them: a flipped
    # bit in a weight would be loaded silently. testzip() reads every member and verifies its CRC.
    try:
        with zipfile.ZipFile(path) as archive:
            damaged_member = archive.testzip()
    except Exception as e:  # BadZipFile (truncated, empty, not a checkpoint at all), OSError, ...
        raise RuntimeError(f"Checkpoint {path} is truncated or corrupt (not a complete zip archive: "
                           f"{type(e).__name__}: {e}). It was left untouched; delete it (or pass resume=False) "
                           f"to train from scratch.") from e
    if damaged_member is not None:
        raise RuntimeError(f"Checkpoint {path} is corrupt: the CRC-32 check of its member {damaged_member} failed "
                           f"(the file changed after it was written). It was left untouched; delete it (or pass "
                           f"resume=False) to train from scratch.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"Checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e}). It was left "
                           f"untouched; delete it (or pass resume=False) to train from scratch.") from e
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != _CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path} is not a train_detector checkpoint (format {_CHECKPOINT_FORMAT}).")
    return checkpoint


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"train_detector: {name} must be an int >= {minimum}, got {value!r}")


def plot_loss_history(history: Dict[str, List[float]], path: Optional[str] = None, ax: Optional[plt.Axes] = None,
                      smooth: int = 20) -> plt.Figure:
    """Plot the per-iteration losses returned by ``train_detector`` (raw: faint; moving average: solid).

    Args:
        history: ``{loss_name: [value per iteration]}``, e.g. the return value of ``train_detector``.
        path: save the figure there (PNG) if given.
        ax: draw into this axes instead of a new figure.
        smooth: window of the moving average in iterations.

    Returns:
        The matplotlib ``Figure``.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    else:
        fig = ax.figure
    for name, values in history.items():
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            continue
        line, = ax.plot(values, alpha=0.25, linewidth=0.8)
        window = max(1, min(smooth, values.size))
        average = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, values.size), average, color=line.get_color(), label=name,
                linewidth=2 if name == "total" else 1.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def train_detector(
    detector: nn.Module,
    train_loader,
    learning_rate: float = 5e-3,
    weight_decay: float = 1e-4,
    max_iters: int = 5000,
    log_period: int = 20,
    device: str = "cpu",
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 1e-3,
    grad_clip_norm: Optional[float] = None,
    ema_decay: Optional[float] = None,
    loss_weights: Optional[Dict[str, float]] = None,
    shuffle: bool = True,
    data_seed: Optional[int] = None,
    checkpoint_path: Optional[str] = None,
    checkpoint_period: int = 200,
    resume: bool = False,
    plot: bool = True,
    plot_path: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, List[float]]:
    """Train a detector that returns a dict of losses, e.g. ``FCOS``, for ``max_iters`` iterations.

    Optimiser: SGD (momentum 0.9) or AdamW over the trainable parameters; LR ``MultiStepLR`` x0.1 at 60% and
    90% of ``max_iters``, optionally after a linear warm-up. The loader is cycled forever in a seeded,
    resumable order: ``train_detector`` builds its own ``DataLoader`` over ``train_loader.dataset`` with the
    loader's ``batch_size``, ``num_workers``, ``collate_fn``, ``drop_last`` and ``pin_memory``, and an
    epoch-seeded sampler (``shuffle=True``: a new permutation per epoch). With ``eecs598.reset_seed(s)``
    before building the model, runs are bit-identical on the CPU, and a resumed run continues with exactly
    the losses of an uninterrupted one. (A loader without ``.dataset`` is simply iterated over and over.)

    Args:
        detector: module; ``detector(images (B,3,H,W), gt_boxes (B,M,5))`` returns ``{loss_name: scalar}``.
        train_loader: DataLoader yielding ``(image_paths, images (B,3,H,W), gt_boxes (B,M,5))``.
        learning_rate: base LR (> 0).
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay.
        max_iters: number of iterations (>= 1).
        log_period: print ``[Iter i][loss: x][loss_cls: ...]...`` every ``log_period`` iterations.
        device: where to train, e.g. ``"cpu"`` or ``"cuda"``.
        optimizer: ``"sgd"`` (the assignment's) or ``"adamw"`` (see ``FROM_SCRATCH``).
        momentum: SGD momentum.
        warmup_iters: linear LR warm-up from ``warmup_factor * learning_rate`` over this many iterations.
        warmup_factor: LR factor at iteration 0 of the warm-up.
        grad_clip_norm: clip the global gradient norm to this value (None: no clipping).
        ema_decay: keep an exponential moving average of the weights and float buffers (decay ramped up as
            ``min(ema_decay, (1 + t) / (10 + t))``) and load it into ``detector`` at the end, so that the
            returned model is the average of the last few hundred iterates rather than the last, noisy one.
            None: no averaging (the assignment's behaviour).
        loss_weights: optimise ``sum(weight * loss)`` with these per-loss weights (missing names: 1.0), e.g.
            ``{"loss_cls": 2.0}``. The history records the unweighted losses and the weighted ``"total"``.
        shuffle: shuffle the data order every epoch (seeded).
        data_seed: seed of the data order; None draws it from torch's global RNG (so ``reset_seed`` fixes it).
        checkpoint_path: save a checkpoint there every ``checkpoint_period`` iterations and at the end
            (atomically: temp file + ``os.replace``). It holds model, optimiser, schedulers, iteration,
            loss history, RNG states and the data-order position.
        checkpoint_period: iterations between checkpoints.
        resume: continue from ``checkpoint_path`` if it exists (the settings must match).
        plot: draw the loss history at the end (shown with an interactive matplotlib backend).
        plot_path: also save that figure there.
        progress: show a tqdm progress bar.

    Returns:
        history: ``{"loss_cls": [...], "loss_box": [...], "loss_ctr": [...], "total": [...]}`` (the detector's
        loss names plus ``"total"``), one Python float per iteration, index = iteration.

    Raises:
        ValueError: invalid arguments, empty dataset, batch size < 1, or a checkpoint with other settings.
        FloatingPointError: a loss (or, with clipping, the gradient norm) is NaN/inf; the step is not taken.
        RuntimeError: the checkpoint to resume from is truncated or corrupt.
    """
    # ---- argument checks ------------------------------------------------------------------------
    _check_positive_int("max_iters", max_iters)
    _check_positive_int("log_period", log_period)
    _check_positive_int("checkpoint_period", checkpoint_period)
    _check_positive_int("warmup_iters", warmup_iters, minimum=0)
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"train_detector: learning_rate must be a finite number > 0, got {learning_rate!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"train_detector: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise ValueError(f"train_detector: momentum must be in [0, 1), got {momentum!r}")
    if not (isinstance(warmup_factor, (int, float)) and 0 < warmup_factor <= 1):
        raise ValueError(f"train_detector: warmup_factor must be in (0, 1], got {warmup_factor!r}")
    if data_seed is not None and (not isinstance(data_seed, (int, np.integer)) or isinstance(data_seed, bool)
                                  or not 0 <= data_seed < 2**32):
        raise ValueError(f"train_detector: data_seed must be None or an int in [0, 2**32), got {data_seed!r}")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"train_detector: optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"train_detector: ema_decay must be in (0, 1) or None, got {ema_decay!r}")
    if grad_clip_norm is not None and not grad_clip_norm > 0:
        raise ValueError(f"train_detector: grad_clip_norm must be > 0 or None, got {grad_clip_norm!r}")
    if resume and checkpoint_path is None:
        raise ValueError("train_detector: resume=True needs a checkpoint_path")
    dataset = getattr(train_loader, "dataset", None)
    batch_size = getattr(train_loader, "batch_size", None)
    if dataset is not None:
        if batch_size is None or batch_size < 1:
            raise ValueError(f"train_detector: train_loader.batch_size must be an int >= 1, got {batch_size!r}")
        if len(dataset) == 0:
            raise ValueError("train_detector: train_loader.dataset is empty (0 samples)")
        if getattr(train_loader, "drop_last", False) and len(dataset) < batch_size:
            raise ValueError(f"train_detector: drop_last=True with batch_size={batch_size} but only "
                             f"{len(dataset)} samples: no batch would ever be produced")

    device = torch.device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats in late training slow CPU kernels several-fold
    detector.to(device)
    detector.train()

    # ---- optimiser and LR schedule --------------------------------------------------------------
    params = [p for p in detector.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    # Both schedulers are "chainable" (each multiplies the current LR), so stepping both every
    # iteration gives LR = base * warm-up factor * 0.1^(milestones passed).
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.6 * max_iters), int(0.9 * max_iters)])]
    if warmup_iters > 0:
        schedulers.append(torch.optim.lr_scheduler.LinearLR(opt, start_factor=warmup_factor, end_factor=1.0,
                                                            total_iters=warmup_iters))

    settings = dict(learning_rate=float(learning_rate), weight_decay=float(weight_decay), max_iters=int(max_iters),
                    optimizer=optimizer, momentum=float(momentum), warmup_iters=int(warmup_iters),
                    warmup_factor=float(warmup_factor),
                    grad_clip_norm=None if grad_clip_norm is None else float(grad_clip_norm), shuffle=bool(shuffle),
                    ema_decay=None if ema_decay is None else float(ema_decay),
                    loss_weights=None if not loss_weights else {k: float(v) for k, v in sorted(loss_weights.items())},
                    batch_size=batch_size, num_samples=None if dataset is None else len(dataset))

    # Weight average: float tensors are averaged, integer buffers (BatchNorm's batch counter) copied.
    ema_state = None
    if ema_decay is not None:
        ema_state = {k: v.detach().clone() for k, v in detector.state_dict().items()}
        ema_float = [k for k, v in ema_state.items() if v.is_floating_point()]

    def update_ema(iteration: int) -> None:
        decay = min(ema_decay, (1 + iteration) / (10 + iteration))
        current = detector.state_dict()
        averages = [ema_state[k] for k in ema_float]
        torch._foreach_mul_(averages, decay)
        torch._foreach_add_(averages, [current[k].detach() for k in ema_float], alpha=1 - decay)
        for k, v in current.items():
            if not v.is_floating_point():
                ema_state[k].copy_(v)

    # ---- state: fresh or from a checkpoint ------------------------------------------------------
    history: Dict[str, List[float]] = {}
    start_iter, epoch, offset = 0, 0, 0
    if resume and os.path.isfile(checkpoint_path):
        checkpoint = load_checkpoint(checkpoint_path)
        different = {k: (checkpoint["settings"].get(k), v) for k, v in settings.items()
                     if checkpoint["settings"].get(k) != v}
        if different:
            raise ValueError(f"train_detector: cannot resume from {checkpoint_path}: settings differ "
                             f"(checkpoint vs now): {different}")
        detector.load_state_dict(checkpoint["model"])
        if checkpoint.get("normalizer") is not None:
            detector._normalizer = checkpoint["normalizer"]  # FCOS keeps its loss normaliser as a plain float
        opt.load_state_dict(checkpoint["optimizer"])
        if ema_state is not None:
            for k, v in checkpoint["ema"].items():
                ema_state[k].copy_(v)
        for scheduler, state in zip(schedulers, checkpoint["schedulers"]):
            scheduler.load_state_dict(state)
        history = {k: list(v) for k, v in checkpoint["history"].items()}
        start_iter = checkpoint["iteration"]
        data_seed, epoch, offset = (checkpoint["data"][k] for k in ("seed", "epoch", "offset"))
        _set_rng_state(checkpoint["rng"])
        print(f"Resuming from {checkpoint_path} at iteration {start_iter}.")
    elif resume:
        print(f"No checkpoint at {checkpoint_path} yet; training from scratch.")
    if data_seed is None:
        data_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())

    # ---- data: an infinite, resumable batch stream ----------------------------------------------
    if dataset is not None:
        sampler = _ResumableBatchSampler(len(dataset), batch_size, bool(getattr(train_loader, "drop_last", False)),
                                         shuffle, data_seed, epoch, offset)
        num_workers = getattr(train_loader, "num_workers", 0)
        loader = DataLoader(
            _SeededSamples(dataset), batch_sampler=sampler, num_workers=num_workers,
            collate_fn=train_loader.collate_fn,
            pin_memory=bool(getattr(train_loader, "pin_memory", False)) and device.type == "cuda",
            worker_init_fn=_seed_worker,
            # Own generator: creating the iterator draws the workers' base seed from it instead of from the
            # global RNG, which would shift the RNG state of a resumed run.
            generator=torch.Generator().manual_seed(data_seed + 1_000_003 * epoch + offset),
            prefetch_factor=getattr(train_loader, "prefetch_factor", None) if num_workers > 0 else None,
        )
        batches = iter(loader)
    else:
        sampler = None

        def cycle():
            skip = offset
            while True:
                produced = False
                for batch in train_loader:
                    produced = True
                    if skip:
                        skip -= 1
                        continue
                    yield batch
                if not produced:  # an empty iterable, or a one-shot iterator already used up: never loop forever
                    raise ValueError("train_detector: train_loader yielded no batches in a whole pass (it is empty, "
                                     "or an iterator that is exhausted); pass a DataLoader or a list of batches")
        batches = cycle()

    def advance():
        nonlocal epoch, offset
        if sampler is not None:
            sampler.advance()
            epoch, offset = sampler.epoch, sampler.offset
        else:
            offset += 1

    def save_checkpoint(iteration: int) -> None:
        _save_atomic({
            "format": _CHECKPOINT_FORMAT, "iteration": iteration, "settings": settings,
            "model": detector.state_dict(), "normalizer": getattr(detector, "_normalizer", None),
            "optimizer": opt.state_dict(), "schedulers": [s.state_dict() for s in schedulers], "ema": ema_state,
            "history": history, "rng": _rng_state(), "data": {"seed": data_seed, "epoch": epoch, "offset": offset},
        }, checkpoint_path)

    # ---- the loop ---------------------------------------------------------------------------------
    bar = tqdm(total=max_iters, initial=start_iter, disable=not progress, desc="train", dynamic_ncols=True)
    try:
        for iteration in range(start_iter, max_iters):
            batch = next(batches)
            advance()
            images, gt_boxes = batch[-2].to(device, non_blocking=True), batch[-1].to(device, non_blocking=True)

            losses = detector(images, gt_boxes)
            weights = loss_weights or {}
            total = sum(loss * weights[name] if name in weights else loss for name, loss in losses.items())
            values = {name: float(loss.item()) for name, loss in losses.items()}
            values["total"] = float(total.item())
            if not math.isfinite(values["total"]):
                bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v) and k != "total")
                raise FloatingPointError(
                    f"train_detector: non-finite loss at iteration {iteration}: {bad or 'total=' + str(values['total'])}. "
                    f"No update was made with it. From a random backbone use **FROM_SCRATCH (AdamW, warm-up, "
                    f"clipping), or lower learning_rate / set grad_clip_norm.")

            opt.zero_grad(set_to_none=True)
            total.backward()
            if grad_clip_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
                if not torch.isfinite(norm):
                    raise FloatingPointError(f"train_detector: non-finite gradient norm at iteration {iteration} "
                                             f"(losses {values}); no update was made.")
            opt.step()
            for scheduler in schedulers:
                scheduler.step()
            if ema_state is not None:
                update_ema(iteration)

            for name, value in values.items():
                history.setdefault(name, []).append(value)
            if iteration % log_period == 0:
                text = f"[Iter {iteration}][loss: {values['total']:.3f}]"
                text += "".join(f"[{k}: {v:.3f}]" for k, v in values.items() if k != "total")
                tqdm.write(text)
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.3f}", refresh=False)
            if checkpoint_path is not None and ((iteration + 1) % checkpoint_period == 0 or iteration + 1 == max_iters):
                save_checkpoint(iteration + 1)
    finally:
        bar.close()
        del batches  # shuts the loader's workers down

    if ema_state is not None:
        detector.load_state_dict(ema_state)
    # Put "total" last so that the history reads in the order the losses were logged.
    history = {k: history[k] for k in [*[k for k in history if k != "total"], "total"] if k in history}
    if plot or plot_path:
        fig = plot_loss_history(history, path=plot_path)
        if plot and "agg" not in matplotlib.get_backend().lower():
            plt.show()
        else:
            plt.close(fig)
    return history


# ==================================================================================================
# Inference
# ==================================================================================================

def inference_with_detector(
    detector: nn.Module,
    test_loader,
    idx_to_class: Dict[int, str],
    score_thresh: float,
    nms_thresh: float,
    output_dir: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    *,
    progress: bool = True,
) -> None:
    """Run a detector on every image of ``test_loader`` and draw or export its predictions.

    With ``output_dir=None`` each image is drawn with ``eecs598.utils.detection_visualizer`` (GT red,
    predictions green). Otherwise Cartucho/mAP input files are written, one pair per image, **including
    images without predictions** (an empty detection file, so their missed objects count):

    - ``output_dir/ground-truth/<id>.txt``: ``<class> <x1> <y1> <x2> <y2>`` (2 decimals; -1 rows skipped);
    - ``output_dir/detection-results/<id>.txt``: ``<class> <score> <x1> <y1> <x2> <y2>`` (score 6 decimals);

    where ``<id>`` is the image file name without extension. ``.txt`` files left in these two directories by
    a previous run are removed first. Coordinates are pixels of the network input (the ``S x S`` crop).

    Args:
        detector: in eval mode ``detector(image (1,3,H,W), test_score_thresh=..., test_nms_thresh=...)`` returns
            ``(boxes (N,4) XYXY, classes (N,) long, scores (N,))``.
        test_loader: DataLoader with batch size 1 yielding ``(image_paths, images, gt_boxes (1,M,5))``.
        idx_to_class: class id -> name (names must not contain whitespace).
        score_thresh: score threshold in [0, 1].
        nms_thresh: NMS IoU threshold in [0, 1].
        output_dir: None to draw, else the mAP input directory (e.g. ``"mAP/input"``).
        dtype, device: the detector and images are moved to these.
        progress: show a tqdm progress bar.
    """
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"inference_with_detector: {name} must be in [0, 1], got {value!r}")
    if getattr(test_loader, "batch_size", 1) != 1:
        raise ValueError(f"inference_with_detector: test_loader must have batch_size=1, got "
                         f"{test_loader.batch_size}")
    if hasattr(test_loader, "__len__") and len(test_loader) == 0:
        raise ValueError("inference_with_detector: test_loader is empty (0 images): there is nothing to run on")
    num_classes = getattr(detector, "num_classes", None)
    if num_classes is not None:
        missing = [c for c in range(num_classes) if c not in idx_to_class]
        if missing:
            raise ValueError(f"inference_with_detector: idx_to_class must name every class id 0..{num_classes - 1} "
                             f"of the detector, got no name for class ids {missing}")
    bad_names = [n for n in idx_to_class.values() if not n or any(c.isspace() for c in n)]
    if bad_names:
        raise ValueError(f"inference_with_detector: class names must be non-empty without whitespace (the mAP "
                         f"files are whitespace-separated), got {bad_names}")

    detector.to(dtype=dtype, device=device)
    detector.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    if output_dir is not None:
        gt_dir = os.path.join(output_dir, "ground-truth")
        det_dir = os.path.join(output_dir, "detection-results")
        for directory in (gt_dir, det_dir):
            os.makedirs(directory, exist_ok=True)
            stale = [f for f in os.listdir(directory) if f.endswith(".txt")]
            for f in stale:
                os.remove(os.path.join(directory, f))
            if stale:
                print(f"Removed {len(stale)} stale .txt files from {directory} (previous run).")
        written = set()

    start = time.time()
    for image_paths, images, gt_boxes in tqdm(test_loader, disable=not progress, desc="inference", dynamic_ncols=True):
        if images.shape[0] != 1:
            raise ValueError(f"inference_with_detector: expected batches of 1 image, got {images.shape[0]}")
        with torch.no_grad():
            pred_boxes, pred_classes, pred_scores = detector(images.to(dtype=dtype, device=device),
                                                             test_score_thresh=score_thresh,
                                                             test_nms_thresh=nms_thresh)
        gt = gt_boxes[0]
        gt = gt[gt[:, 4] != -1].cpu().double()
        keep = pred_classes != -1
        preds = torch.cat([pred_boxes[keep].cpu().double(), pred_classes[keep].cpu().double()[:, None],
                           pred_scores[keep].cpu().double()[:, None]], dim=1)  # (N, 6): x1 y1 x2 y2 class score

        if output_dir is None:
            image = (images[0].cpu().float() * std + mean).clamp(0, 1)  # undo the ImageNet normalisation
            eecs598.utils.detection_visualizer(image, idx_to_class, gt, preds)
            continue
        image_id = os.path.splitext(os.path.basename(image_paths[0]))[0]
        if image_id in written:
            raise ValueError(f"inference_with_detector: two test images share the id {image_id!r} "
                             f"({image_paths[0]}); their mAP files would overwrite each other")
        written.add(image_id)
        gt_lines = [f"{idx_to_class[int(c)]} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n"
                    for x1, y1, x2, y2, c in gt.tolist()]
        det_lines = [f"{idx_to_class[int(c)]} {s:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n"
                     for x1, y1, x2, y2, c, s in preds.tolist()]
        with open(os.path.join(gt_dir, image_id + ".txt"), "w") as f:
            f.writelines(gt_lines)
        with open(os.path.join(det_dir, image_id + ".txt"), "w") as f:
            f.writelines(det_lines)

    print(f"Total inference time: {time.time() - start:.1f}s")
