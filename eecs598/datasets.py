"""Detection datasets in the course's JSON layout: PASCAL VOC 2007 (with a verified download) and Shapes.

- ``DetectionJsonDataset``: reads the course's JSON layout with a resize + centre-crop transform; boxes go
  through exactly torchvision's geometry (``resize_crop_geometry``, ``map_boxes_to_crop``).
- ``VOC2007DetectionTiny``: the course's VOC 2007 subset (train 2501 / val 2510 images, 20 classes).
- ``download_voc2007``: fetches and md5-checks the course's three files.
- ``ShapesDetection``: the offline, procedurally generated Shapes dataset (``eecs598.shapes``).

Conventions: boxes are XYXY in absolute pixels of the (cropped) input image; a GT row is
``(x1, y1, x2, y2, class_id)`` and padding rows are all ``-1``.
"""
import hashlib
import http.client
import json
import math
import os
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .shapes import SHAPE_CLASSES, generate_shapes_dataset

__all__ = [
    "VOC_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "VOC_URL_BASE", "VOC_FILES_MD5",
    "resize_crop_geometry", "map_boxes_to_crop", "ImageFileError", "load_rgb_image", "DetectionJsonDataset",
    "DownloadError", "download_voc2007", "VOC2007DetectionTiny", "ShapesDetection",
]

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


class ImageFileError(OSError):
    """An image file that cannot be read or is refused; the message names the file and the fix."""


_SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb_image(path: str) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image (decoded in full, so truncation shows up here).

    16-bit greyscale images (PIL modes ``I;16*``, and ``I`` from a 16-bit PNG) are scaled to 8 bits
    (``round(v / 257)``: 0 -> 0, 65535 -> 255); converting them directly would clip every value above 255
    and give an almost white image. 16-bit colour PNGs already come out of PIL as 8-bit RGB.

    Raises:
        ImageFileError (an OSError): the file is missing, truncated or corrupt, not an image, an image of
            an unsupported kind (32-bit integer or float pixels), or larger than PIL's decompression-bomb
            limit; the message names ``path``.
    """
    try:
        with Image.open(path) as f:
            if f.mode in _SIXTEEN_BIT_GREY_MODES or (f.mode == "I" and f.format == "PNG"):
                values = np.asarray(f).astype(np.float64)  # (H, W) in 0..65535
                grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
                return Image.fromarray(grey, "L").convert("RGB")
            if f.mode in ("I", "F"):
                raise ImageFileError(
                    f"Image {path} has {'32-bit integer' if f.mode == 'I' else 'floating-point'} pixels (PIL mode "
                    f"{f.mode!r}), which cannot be mapped to 8-bit RGB without knowing their range; convert it to an "
                    f"8-bit RGB JPEG or PNG.")
            return f.convert("RGB")
    except ImageFileError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageFileError(
            f"Image {path} is refused as a possible decompression bomb: {e} If the file is trusted, raise "
            f"PIL.Image.MAX_IMAGE_PIXELS (or set it to None) before loading; otherwise remove it from the dataset."
        ) from e
    except Exception as e:  # OSError, SyntaxError, ValueError, struct.error...: PIL's many ways to fail
        raise ImageFileError(f"Cannot read image {path} ({type(e).__name__}: {e}). The file is missing, corrupt, "
                             f"truncated or not an image; replace it (re-download or regenerate the dataset).") from e


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

        self._refuse_duplicates()
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


PARTIAL_MARKER = ".partial-"  # temporaries: "<file name>.partial-<random>", ".VOCdevkit.partial-<random>"


class DownloadError(RuntimeError):
    """A file of the dataset could not be downloaded or extracted.

    Attributes:
        url: what was being fetched (or the archive being extracted).
        reason: a short description of what went wrong (the message adds the manual-download steps).
    """

    def __init__(self, message: str, url: str, reason: str):
        super().__init__(message)
        self.url, self.reason = url, reason


def _remove_download_orphans(dataset_dir: str) -> None:
    """Delete temporaries that a killed download or extraction left in ``dataset_dir``."""
    prefixes = tuple([name + PARTIAL_MARKER for name in VOC_FILES_MD5] + [".VOCdevkit" + PARTIAL_MARKER])
    legacy = {name + ".part" for name in VOC_FILES_MD5}  # the name earlier versions used
    removed = []
    for entry in os.listdir(dataset_dir):
        if entry.startswith(prefixes) or entry in legacy:
            path = os.path.join(dataset_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(entry)
    if removed:
        print(f"Removed {len(removed)} unfinished download file(s) in {dataset_dir}: {', '.join(sorted(removed))}")


class _TooSlow(Exception):
    """A transfer that passed its deadline or fell below the minimum rate."""


def _fetch(url: str, path: str, timeout: float, deadline: Optional[float], min_rate: float, window: float,
           progress: bool) -> None:
    """Download ``url`` into the file ``path``, bounded in time.

    Three limits, so that no server can keep it waiting forever: ``timeout`` seconds without a single byte
    (socket timeout); less than ``min_rate`` bytes/s over any ``window`` seconds (a server that trickles a
    few bytes now and then); and ``deadline`` seconds in all (default: 60 s + the announced size at
    ``min_rate``). Bytes are read as they arrive (``read1``), so the limits are checked at least every
    ``timeout`` seconds.

    Raises:
        DownloadError: naming ``url`` and the reason (``path`` may then hold part of the file).
    """
    start = time.monotonic()
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "fcos-a4 (python urllib)"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(path, "wb") as out:
            total = response.length  # Content-Length, or None
            limit = deadline if deadline is not None else 60.0 + (total or 0) / min_rate
            window_start, window_bytes = start, 0
            with _progress_bar(total, os.path.basename(url), progress) as bar:
                while True:
                    chunk = response.read1(1 << 16)  # returns as soon as some bytes are there
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    now = time.monotonic()
                    if now - start > limit:
                        raise _TooSlow(f"not finished after {limit:g} s (the deadline for this file), "
                                           f"{_size(received)} of {_size(total)} received")
                    if now - window_start >= window:
                        rate = (received - window_bytes) / (now - window_start)
                        if rate < min_rate:
                            raise _TooSlow(f"only {rate:.0f} bytes/s over {now - window_start:.1f} s (minimum "
                                               f"{min_rate:g}), {_size(received)} of {_size(total)} received")
                        window_start, window_bytes = now, received
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
            out.flush()
            os.fsync(out.fileno())
    except Exception as e:
        if isinstance(e, _TooSlow):
            reason = str(e)
        elif isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP error {e.code} ({e.reason})"
        elif isinstance(e, urllib.error.URLError):
            reason = f"cannot connect ({e.reason})"
        elif isinstance(e, socket.timeout):  # (an alias of TimeoutError)
            reason = f"no data for {timeout:g} s ({_size(received)} received)"
        elif isinstance(e, http.client.IncompleteRead):
            reason = f"the connection closed early ({_size(received)} of {_size(received + (e.expected or 0))})"
        else:
            reason = f"{type(e).__name__}: {e}"
        raise DownloadError(f"Could not download {url}: {reason}.", url, reason) from e


def _size(num_bytes: Optional[int]) -> str:
    if num_bytes is None:
        return "? bytes"
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 100_000 else f"{num_bytes} bytes"


def _progress_bar(total: Optional[int], name: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                dynamic_ncols=True, leave=False)


def _extract_voc_tar(tar_path: str, dataset_dir: str) -> None:
    """Extract the VOC tar's ``VOCdevkit/VOC2007`` into ``dataset_dir`` through a temporary folder.

    The images appear in ``dataset_dir/VOCdevkit/VOC2007`` only once the whole archive is extracted; an
    incomplete ``VOC2007`` folder from an earlier attempt is replaced, other folders in ``VOCdevkit`` are
    left alone. Nothing temporary is left after a failure.

    Raises:
        DownloadError: the archive is damaged or holds no ``VOCdevkit/VOC2007``.
    """
    print(f"Extracting {tar_path} ...")
    tmp = tempfile.mkdtemp(prefix=".VOCdevkit" + PARTIAL_MARKER, dir=dataset_dir)
    try:
        try:
            with tarfile.open(tar_path) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")  # refuses absolute paths and ".." members
                else:
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            reason = f"the archive is damaged ({type(e).__name__}: {e}); delete it and download it again"
            raise DownloadError(f"Could not extract {tar_path}: {reason}.", tar_path, reason) from e
        extracted = os.path.join(tmp, "VOCdevkit", "VOC2007")
        if not os.path.isdir(extracted):
            reason = "it holds no VOCdevkit/VOC2007 folder (not the VOC 2007 trainval archive)"
            raise DownloadError(f"Could not extract {tar_path}: {reason}.", tar_path, reason)
        destination = os.path.join(dataset_dir, "VOCdevkit", "VOC2007")
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        if os.path.exists(destination):  # incomplete (fewer JPEGs than the archive): move it out of the way
            os.replace(destination, os.path.join(tmp, "previous-VOC2007"))
        os.replace(extracted, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_voc2007(dataset_dir: str, url_base: str = VOC_URL_BASE, timeout: float = 10.0, *,
                     deadline: Optional[float] = None, min_rate: float = 10_000.0, rate_window: float = 30.0,
                     progress: bool = True) -> None:
    """Download and extract the course's VOC 2007 files into ``dataset_dir``.

    Each file is downloaded to a temporary ``<name>.partial-<random>`` beside its target, md5-verified and
    only then renamed, so an interrupted download never looks complete, and no temporary file survives a
    failure (leftovers of a killed process are removed by the next call). Files already present with the
    right md5 are skipped; the tar is only fetched and extracted when the JPEGs are missing. The tar is
    extracted through a temporary folder too.

    Args:
        dataset_dir: target directory (created if needed).
        url_base: URL prefix of the three files.
        timeout: seconds without any data before giving up (also the connection timeout), so that an
            offline machine fails fast instead of hanging.
        deadline: seconds allowed per file in all (None: 60 s + the file's announced size at ``min_rate``).
        min_rate, rate_window: give up when fewer than ``min_rate`` bytes/s arrive over ``rate_window`` s.
        progress: show a progress bar per file.

    Raises:
        DownloadError (a RuntimeError): a download failed, was too slow, or a file has the wrong md5; the
            message says how to download by hand (``.url`` and ``.reason`` hold the short version).
    """
    for name, value in (("timeout", timeout), ("min_rate", min_rate), ("rate_window", rate_window),
                        ("deadline", 1.0 if deadline is None else deadline)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0):
            raise ValueError(f"download_voc2007: {name} must be a finite number > 0, got {value!r}")
    os.makedirs(dataset_dir, exist_ok=True)
    _remove_download_orphans(dataset_dir)
    images_present = _voc_images_present(dataset_dir)
    for name, md5 in VOC_FILES_MD5.items():
        target = os.path.join(dataset_dir, name)
        if name.endswith(".tar") and images_present:
            continue
        if os.path.isfile(target):
            if _md5(target) == md5:
                continue
            print(f"{target} exists but its md5 is wrong; downloading it again.")
        url = url_base + name
        print(f"Downloading {url} -> {target}")
        fd, part = tempfile.mkstemp(prefix=name + PARTIAL_MARKER, dir=dataset_dir)
        os.close(fd)
        try:
            _fetch(url, part, timeout, deadline, min_rate, rate_window, progress)
            actual = _md5(part)
            if actual != md5:
                reason = f"its md5 is {actual}, expected {md5} (a corrupted or changed file)"
                raise DownloadError(f"Downloaded {url}, but {reason}.", url, reason)
            os.replace(part, target)
        except DownloadError as e:
            raise DownloadError(f"{e}\n" + _voc_manual_instructions(dataset_dir, url_base), e.url, e.reason) from e
        finally:  # any failure, Ctrl-C included: no temporary file stays behind
            if os.path.exists(part):
                os.remove(part)
    if not images_present:
        _extract_voc_tar(os.path.join(dataset_dir, "VOCtrainval_06-Nov-2007.tar"), dataset_dir)


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
