"""Running a trained detector over a dataset: draw its predictions, or export Cartucho/mAP files."""
import os
import time
from typing import Dict, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from . import utils
from .datasets import IMAGENET_MEAN, IMAGENET_STD
from .mean_ap import CartuchoWriter

__all__ = ["inference_with_detector", "unnormalize"]


def unnormalize(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` ImageNet-normalised image -> ``(3, H, W)`` float32 in ``[0, 1]`` on the CPU."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().cpu().float() * std + mean).clamp(0, 1)


def _check_arguments(detector, test_loader, idx_to_class, score_thresh, nms_thresh) -> None:
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0):
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


def _unpack(batch, index: int):
    """``(image_paths, images (1,3,H,W), gt_boxes (1,M,5))`` from a test batch, with a clear error."""
    if not (isinstance(batch, (list, tuple)) and len(batch) == 3):
        kind = type(batch).__name__ + (f" with keys {list(batch)[:5]}" if isinstance(batch, dict) else "")
        raise TypeError(f"inference_with_detector: batch {index} of test_loader must be (image_paths, images, "
                        f"gt_boxes), as the course's datasets yield; got a {kind}")
    image_paths, images, gt_boxes = batch
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"inference_with_detector: expected batches of 1 image (1, 3, H, W), got {shape} in "
                         f"batch {index}")
    return image_paths, images, gt_boxes


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
    tta: Optional[Dict] = None,
    detect=None,
) -> None:
    """Run a detector on every image of ``test_loader`` and draw or export its predictions.

    With ``output_dir=None`` each image is drawn with ``eecs598.utils.detection_visualizer`` (GT red,
    predictions green). Otherwise Cartucho/mAP input files are written, one pair per image, **including
    images without predictions** (an empty detection file, so their missed objects count):
    ``output_dir/ground-truth/<id>.txt`` and ``output_dir/detection-results/<id>.txt``, where ``<id>`` is
    the image file name without extension (see :class:`eecs598.mean_ap.CartuchoWriter`). The set is
    written all or nothing: the previous results are replaced only once every image succeeded, and stay
    untouched after a failure. Coordinates are pixels of the network input (the ``S x S`` crop).

    Args:
        detector: in eval mode ``detector(image (1,3,H,W), test_score_thresh=..., test_nms_thresh=...)`` returns
            ``(boxes (N,4) XYXY, classes (N,) long, scores (N,))``.
        test_loader: batch size 1, yielding ``(image_paths, images, gt_boxes (1,M,5))``.
        idx_to_class: class id -> name (names must not contain whitespace).
        score_thresh: score threshold in [0, 1].
        nms_thresh: NMS IoU threshold in [0, 1].
        output_dir: None to draw, else the mAP input directory (e.g. ``"mAP/input"``).
        dtype, device: the detector and images are moved to these.
        progress: show a tqdm progress bar.
        tta: test-time augmentation, e.g. ``{"flip": True, "scales": (1.0, 1.25)}``: candidates of the image,
            its mirror and rescaled copies are merged before one class-specific NMS
            (``eecs598.tta.detect_with_tta``). None: plain inference (the course's).
        detect: optional ``detect(detector, images, score_thresh, nms_thresh) -> (boxes, classes, scores)``
            used instead of calling ``detector`` (e.g. test-time augmentation).
    """
    _check_arguments(detector, test_loader, idx_to_class, score_thresh, nms_thresh)
    if tta is not None:
        if detect is not None:
            raise ValueError("inference_with_detector: pass either tta or detect, not both")
        from .tta import detect_with_tta

        options = dict(tta)
        detect = lambda model, images, score, nms: detect_with_tta(model, images, score, nms, **options)  # noqa: E731
    detector.to(dtype=dtype, device=device)
    detector.eval()
    writer = CartuchoWriter(output_dir, idx_to_class) if output_dir is not None else None
    start = time.time()
    try:
        for index, batch in enumerate(tqdm(test_loader, disable=not progress, desc="inference", dynamic_ncols=True)):
            image_paths, images, gt_boxes = _unpack(batch, index)
            images = images.to(dtype=dtype, device=device)
            with torch.no_grad():
                if detect is None:
                    boxes, classes, scores = detector(images, test_score_thresh=score_thresh,
                                                      test_nms_thresh=nms_thresh)
                else:
                    boxes, classes, scores = detect(detector, images, score_thresh, nms_thresh)
            gt = gt_boxes[0]
            gt = gt[gt[:, 4] != -1].cpu().double()
            keep = classes != -1
            predictions = torch.cat([boxes[keep].cpu().double(), classes[keep].cpu().double()[:, None],
                                     scores[keep].cpu().double()[:, None]], dim=1)  # (N, 6): x1 y1 x2 y2 class score
            if writer is None:
                utils.detection_visualizer(unnormalize(images[0]), idx_to_class, gt, predictions)
                continue
            image_id = os.path.splitext(os.path.basename(image_paths[0]))[0]
            writer.add(image_id, image_paths[0], gt, predictions)
    except BaseException:
        if writer is not None:
            writer.abort()
            print(f"inference_with_detector failed; the previous results in {output_dir} were left untouched.")
        raise
    if writer is not None:
        writer.commit()
    print(f"Total inference time: {time.time() - start:.1f}s")
