"""Shapes: a small, procedurally generated detection dataset for offline demos and tests.

Each image shows 1..``max_objects`` filled shapes (circle, square, triangle, star, cross) of random size,
position, colour and rotation on a textured, noisy background; shapes may overlap and occlude each other.
The dataset is written in the course's VOC JSON layout so that the same loader reads both::

    root/
      shapes_train.json     [[ "./here/images/train/000000.jpg", [{"name": "circle", "xyxy": [x1,y1,x2,y2]}, ...]], ...]
      shapes_val.json
      shapes_meta.json      the generation parameters (a finished, valid dataset is recognised by it)
      images/train/*.jpg, images/val/*.jpg

Boxes are XYXY in absolute pixels of the generated ``image_size x image_size`` image: the tight box of the
drawn shape (PIL fills pixels from ``floor(x1)`` to ``x2`` inclusive, so ``x2 - x1`` is the width minus one
pixel, the VOC convention).

Generation is deterministic: image ``i`` of a split is drawn from its own NumPy generator seeded with
``(seed, split, i)``, so the same seed gives byte-identical JSON and identical pixels, and changing
``num_train`` does not change the images that remain. Train and val come from the same distribution.
"""
import json
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

__all__ = ["SHAPE_CLASSES", "generate_shapes_dataset", "render_shapes_image", "shapes_dataset_ready"]

# Class names: no spaces, because the Cartucho/mAP text format splits lines on whitespace.
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "cross", "square", "star", "triangle")

# Bump when the drawing code changes, so that stale datasets on disk are regenerated.
GENERATOR_VERSION = 1
META_NAME = "shapes_meta.json"
SPLIT_IDS = {"train": 0, "val": 1}
MAX_COVER = 0.5  # a new shape may cover at most this fraction of an earlier shape's box
NOISE_STD = 12.0  # per-pixel Gaussian noise, in 0..255 units
JPEG_QUALITY = 90  # of the saved images


# --------------------------------------------------------------------------------------------------
# helpers: geometry of one shape
# --------------------------------------------------------------------------------------------------

def _unit_polygon(name: str) -> np.ndarray:
    """Vertices ``(K, 2)`` of a shape inscribed in the unit circle, centred at the origin, pointing up."""
    if name == "square":
        angles = np.deg2rad([45, 135, 225, 315])
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if name == "triangle":
        angles = np.deg2rad([-90, 30, 150])  # image y points down, so -90 deg is "up"
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if name == "star":
        angles = np.deg2rad(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
    if name == "cross":
        a, b = 1.0, 0.35  # arm half-length and half-width
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                         [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
    raise ValueError(f"no polygon for shape {name!r}")


_UNIT_POLYGONS = {name: _unit_polygon(name) for name in SHAPE_CLASSES if name != "circle"}


def _shape_outline(name: str, cx: float, cy: float, radius: float, angle_deg: float) -> np.ndarray:
    """Vertices ``(K, 2)`` in pixels of a shape with circumradius ``radius`` rotated by ``angle_deg``."""
    theta = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return _UNIT_POLYGONS[name] @ rot.T * radius + np.array([cx, cy])


def _box_iou_and_cover(box: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """IoU of ``box`` (4,) with each of ``boxes`` (K, 4), and the fraction of each of ``boxes`` it covers."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / (area + areas - inter), inter / areas


# --------------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------------

def render_shapes_image(
    rng: np.random.Generator,
    image_size: int = 128,
    min_size: int = 14,
    max_size: int = 64,
    max_objects: int = 6,
    max_iou: float = 0.3,
) -> Tuple[np.ndarray, List[Dict]]:
    """Draw one Shapes image.

    Args:
        rng: the NumPy generator that decides everything about this image.
        image_size: side S of the square image in pixels.
        min_size, max_size: range of the shapes' box size in pixels (log-uniform, so small and large shapes
            are equally common on a log scale).
        max_objects: each image holds 1..max_objects shapes (uniform).
        max_iou: a new shape is re-drawn (up to 30 times, then dropped) if its box has IoU above this
            with an earlier one, or if it would cover more than ``MAX_COVER`` of an earlier (lower) shape's
            box, so every labelled shape stays recognisable although shapes overlap and occlude.

    Returns:
        image: ``(S, S, 3)`` uint8 RGB array.
        objects: list of ``{"name": class_name, "xyxy": [x1, y1, x2, y2]}`` (floats, absolute pixels).
    """
    s = image_size
    # Background texture: a coarse random colour field, bilinearly upsampled (smooth blotches), plus a few
    # thin clutter lines; objects must be found by shape, not by "anything that is not flat".
    coarse = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    canvas = Image.fromarray(coarse, "RGB").resize((s, s), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 4))):
        pts = rng.uniform(0, s, size=4)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.line([(pts[0], pts[1]), (pts[2], pts[3])], fill=colour, width=int(rng.integers(1, 3)))
    background = np.asarray(canvas, dtype=np.float32)

    num_objects = int(rng.integers(1, max_objects + 1))
    boxes = np.zeros((0, 4))
    objects = []
    for _ in range(num_objects):
        for _attempt in range(30):
            name = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
            angle = float(rng.uniform(-25, 25))
            cx, cy = rng.uniform(size / 2, s - size / 2, size=2)
            if name == "circle":
                outline = None
                box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
            else:
                # Scale so that the drawn outline's larger box side equals `size`.
                outline = _shape_outline(name, cx, cy, 1.0, angle)
                extent = (outline.max(0) - outline.min(0)).max()
                outline = _shape_outline(name, cx, cy, size / extent, angle)
                box = np.concatenate([outline.min(0), outline.max(0)])
            box = np.clip(box, 0, s - 1)
            if len(boxes):
                iou, cover = _box_iou_and_cover(box, boxes)
                if (iou > max_iou).any() or (cover > MAX_COVER).any():
                    continue
            # Colour: far enough from the background under the shape to be visible (not necessarily easy).
            x1, y1, x2, y2 = box.astype(int)
            local = background[y1:y2 + 1, x1:x2 + 1].reshape(-1, 3).mean(0)
            candidates = rng.integers(0, 256, size=(8, 3))
            far = np.linalg.norm(candidates - local, axis=1) > 90
            colour = tuple(int(c) for c in candidates[int(np.argmax(far))])
            if outline is None:
                draw.ellipse(box.tolist(), fill=colour)
            else:
                draw.polygon([tuple(p) for p in outline.tolist()], fill=colour)
            boxes = np.concatenate([boxes, box[None]])
            objects.append({"name": name, "xyxy": [round(float(v), 1) for v in box]})
            break

    image = np.asarray(canvas, dtype=np.float32) + rng.normal(0, NOISE_STD, size=(s, s, 3)).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), objects


# --------------------------------------------------------------------------------------------------
# the dataset on disk
# --------------------------------------------------------------------------------------------------

def _read_meta(root: str) -> Optional[Dict]:
    try:
        with open(os.path.join(root, META_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _temporary_prefix(root: str) -> str:
    """Name prefix of the temporary directories that generating ``root`` creates beside it."""
    return "." + os.path.basename(os.path.abspath(root)) + ".partial-"


def _remove_orphan_temporaries(root: str) -> List[str]:
    """Delete the temporary directories of ``root`` that a killed generator left; returns their paths.

    Only ``.<basename(root)>.partial-*`` entries beside ``root`` are touched (generating the same ``root``
    from two processes at once is not supported, so any such directory is an orphan).
    """
    parent = os.path.dirname(os.path.abspath(root))
    if not os.path.isdir(parent):
        return []
    prefix = _temporary_prefix(root)
    removed = [os.path.join(parent, name) for name in os.listdir(parent) if name.startswith(prefix)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        print(f"Removed {len(removed)} unfinished Shapes dataset folder(s) left beside {root} by an interrupted "
              f"generation.")
    return removed


def shapes_dataset_ready(root: str, params: Dict) -> bool:
    """True if ``root`` holds a complete Shapes dataset generated with exactly ``params``."""
    meta = _read_meta(root)
    if meta is None or meta.get("params") != params:
        return False
    for split in params.get("splits", SPLIT_IDS):
        if not os.path.isfile(os.path.join(root, f"shapes_{split}.json")):
            return False
        image_dir = os.path.join(root, "images", split)
        if not os.path.isdir(image_dir) or len(os.listdir(image_dir)) != params[f"num_{split}"]:
            return False
    return True


def generate_shapes_dataset(
    root: str = "data/shapes",
    num_train: int = 3000,
    num_val: int = 300,
    image_size: int = 128,
    seed: int = 0,
    min_size: int = 14,
    max_size: int = 64,
    max_objects: int = 6,
    force: bool = False,
    quiet: bool = False,
    *,
    splits: Tuple[str, ...] = ("train", "val"),
    progress: bool = True,
) -> str:
    """Generate the Shapes dataset in ``root`` (skipped when it is already there with the same parameters).

    The files are written into a hidden temporary directory beside ``root``
    (``.<basename(root)>.partial-<random>``) and moved in place at the end; the parameter file
    ``shapes_meta.json`` is written last, so an interrupted run is simply redone next time. Temporary
    directories that a killed run left for ``root`` are removed when the next call starts. A progress bar
    shows the images drawn (about 9 ms each at 128 px on one core: benchmarks/reliability_figures.py).

    Args:
        root: output directory.
        num_train, num_val: number of images per split (>= 1).
        image_size: side of the square images in pixels (>= 32).
        seed: master seed, an int >= 0; the same seed (and parameters) gives byte-identical JSON and
            identical pixels.
        min_size, max_size: range of the shapes' box sizes in pixels.
        max_objects: each image holds between 1 and ``max_objects`` shapes.
        force: regenerate even if a matching dataset exists.
        quiet: do not print messages (nor the progress bar).
        progress: show the progress bar (unless ``quiet``).
        splits: ``("val",)`` generates the val split alone (an evaluation needs no training images; its images
            are the same as in the full dataset, and a full dataset with the same parameters is reused).

    Returns:
        ``root``.
    """
    params = _generation_params(num_train, num_val, image_size, seed, min_size, max_size, max_objects, splits)
    full = _generation_params(num_train, num_val, image_size, seed, min_size, max_size, max_objects, SPLIT_IDS)
    _remove_orphan_temporaries(root)
    if not force and any(shapes_dataset_ready(root, p) for p in (full, params)):
        if not quiet:
            print(f"Shapes dataset already present in {root} (same parameters), skipping generation.")
        return root
    start = time.time()
    _generate_into(root, params, quiet or not progress, start)
    if not quiet:
        counts = " + ".join(f"{params[f'num_{split}']} {split}" for split in params.get("splits", SPLIT_IDS))
        print(f"Generated Shapes dataset in {root}: {counts} images of {image_size}x{image_size} px in "
              f"{time.time() - start:.1f}s.")
    return root


def _generation_params(num_train, num_val, image_size, seed, min_size, max_size, max_objects, splits) -> Dict:
    """The validated parameters, as stored in ``shapes_meta.json`` (``splits`` only when not both)."""
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("image_size", image_size, 32),
                             ("min_size", min_size, 4), ("max_objects", max_objects, 1), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            why = " (NumPy seeds are non-negative)" if name == "seed" else ""
            raise ValueError(f"generate_shapes_dataset: {name} must be an int >= {low}{why}, got {value!r}")
    if not min_size <= max_size <= image_size:
        raise ValueError(f"generate_shapes_dataset: need min_size <= max_size <= image_size, got "
                         f"{min_size}, {max_size}, {image_size}")
    if isinstance(splits, str) or not splits or any(split not in SPLIT_IDS for split in splits):
        raise ValueError(f"generate_shapes_dataset: splits must be a non-empty tuple of 'train' and 'val', "
                         f"got {splits!r}")
    params = dict(version=GENERATOR_VERSION, num_train=int(num_train), num_val=int(num_val),
                  image_size=int(image_size), seed=int(seed), min_size=int(min_size), max_size=int(max_size),
                  max_objects=int(max_objects), jpeg_quality=JPEG_QUALITY, classes=list(SHAPE_CLASSES))
    chosen = [split for split in SPLIT_IDS if split in splits]
    if chosen != list(SPLIT_IDS):
        for split in SPLIT_IDS:
            if split not in chosen:
                del params[f"num_{split}"]  # not generated: it does not change what is on disk
        params["splits"] = chosen
    return params


def _generate_into(root: str, params: Dict, no_bar: bool, start: float) -> None:
    """Draw the splits of ``params`` into a temporary directory beside ``root``, then swap them in."""
    parent = os.path.dirname(os.path.abspath(root))
    splits = params.get("splits", list(SPLIT_IDS))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_temporary_prefix(root), dir=parent)
    try:
        bar = tqdm(total=sum(params[f"num_{split}"] for split in splits), desc="Generating Shapes", unit="img",
                   disable=no_bar, dynamic_ncols=True)
        with bar:
            for split in splits:
                os.makedirs(os.path.join(tmp, "images", split))
                entries = []
                for i in range(params[f"num_{split}"]):
                    rng = np.random.default_rng([params["seed"], SPLIT_IDS[split], i])
                    image, objects = render_shapes_image(rng, params["image_size"], params["min_size"],
                                                         params["max_size"], params["max_objects"])
                    rel = f"images/{split}/{i:06d}.jpg"
                    Image.fromarray(image).save(os.path.join(tmp, rel), quality=JPEG_QUALITY)
                    entries.append([f"./here/{rel}", objects])
                    bar.update()
                with open(os.path.join(tmp, f"shapes_{split}.json"), "w") as f:
                    json.dump(entries, f)

        # Swap in: drop the old marker first, so that a crash in between never leaves a "valid" mix.
        os.makedirs(root, exist_ok=True)
        meta_path = os.path.join(root, META_NAME)
        if os.path.exists(meta_path):
            os.remove(meta_path)
        if os.path.isdir(os.path.join(root, "images")):
            shutil.rmtree(os.path.join(root, "images"))
        os.replace(os.path.join(tmp, "images"), os.path.join(root, "images"))
        for split in SPLIT_IDS:
            target = os.path.join(root, f"shapes_{split}.json")
            if split in splits:
                os.replace(os.path.join(tmp, f"shapes_{split}.json"), target)
            elif os.path.exists(target):
                os.remove(target)  # its images were just replaced: a stale list would point at nothing
        with open(os.path.join(tmp, META_NAME), "w") as f:
            json.dump({"params": params, "seconds": round(time.time() - start, 2)}, f, indent=1)
        os.replace(os.path.join(tmp, META_NAME), meta_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
