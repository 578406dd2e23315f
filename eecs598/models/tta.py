"""Test-time augmentation (TTA) for FCOS: horizontal flip and multi-scale inference, merged before NMS.

The detector is run on the image, its mirror image and rescaled copies. Each pass gives its candidate
detections before NMS (score threshold, decoding and clipping exactly as ``FCOS.inference``); their boxes
are mapped back to the original image exactly (a mirror ``x -> W' - x``, then the scale ``W / W'``, ``H / H'``
of that pass's actual size), all candidates are pooled, and class-specific NMS runs once on the pool. So an
object found in several passes keeps its best-scoring box, and one found in only one pass is kept too.

Usage::

    detector.eval()
    boxes, classes, scores = detect_with_tta(detector, image, score_thresh=0.05, nms_thresh=0.5,
                                             flip=True, scales=(1.0, 1.25))

With ``flip=False, scales=(1.0,)`` the result is exactly ``detector(image, score_thresh, nms_thresh)``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

__all__ = ["pre_nms_candidates", "detect_with_tta"]

Detections = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _thresholds(score_thresh: Optional[float], nms_thresh: Optional[float]) -> Tuple[float, float]:
    score = 0.3 if score_thresh is None else float(score_thresh)
    nms = 0.5 if nms_thresh is None else float(nms_thresh)
    for name, value in (("score_thresh", score), ("nms_thresh", nms)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"detect_with_tta: {name} must be in [0, 1], got {value}")
    return score, nms


@torch.no_grad()
def pre_nms_candidates(detector: nn.Module, images: torch.Tensor, score_thresh: float) -> List[Detections]:
    """Candidate detections of each image before NMS: the detector's own decoding, NMS switched off.

    Calls ``detector(images, test_score_thresh=score_thresh, test_nms_thresh=1.0)``: an IoU is never above 1,
    so class-specific NMS keeps every candidate (score ``> score_thresh``, box decoded and clipped to the
    image exactly as ``FCOS.inference`` does).

    Args:
        detector: an ``FCOS`` in eval mode (anything with its eval-mode call).
        images: ``(B, 3, H, W)`` normalised images.
        score_thresh: in ``[0, 1]``.

    Returns:
        One ``(boxes (K, 4), classes (K,) long, scores (K,))`` per image, by decreasing score.
    """
    boxes, classes, scores = detector(images, test_score_thresh=score_thresh, test_nms_thresh=1.0)
    if isinstance(boxes, torch.Tensor):  # one image: tensors, not lists
        return [(boxes, classes, scores)]
    return list(zip(boxes, classes, scores))


def _resize(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize of ``(1, 3, H, W)`` to ``(round(H * scale), round(W * scale))`` (antialiased when
    shrinking); ``scale == 1`` returns the image itself."""
    if scale == 1.0:
        return image
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)


@torch.no_grad()
def detect_with_tta(
    detector: nn.Module,
    image: torch.Tensor,
    score_thresh: Optional[float] = None,
    nms_thresh: Optional[float] = None,
    flip: bool = True,
    scales: Sequence[float] = (1.0,),
) -> Detections:
    """Detections of one image with test-time augmentation: flip and/or several scales, one NMS.

    For every scale ``s`` in ``scales`` the image is resized to ``(round(H s), round(W s))`` and, with
    ``flip``, mirrored too: ``len(scales) * (2 if flip else 1)`` passes (a scale's mirror runs in the same
    batch). The candidates of each pass (:func:`pre_nms_candidates`, threshold ``score_thresh``) are mapped
    back to the original image: ``x -> W_s - x`` for a mirrored pass (x1 and x2 swap), then
    ``x * W / W_s`` and ``y * H / H_s``. Then class-specific NMS with ``nms_thresh`` over all of them.

    Args:
        detector: ``FCOS`` in eval mode (``detector.eval()``).
        image: ``(1, 3, H, W)`` normalised image.
        score_thresh, nms_thresh: as ``FCOS.forward``'s ``test_score_thresh`` / ``test_nms_thresh``
            (``None``: 0.3 / 0.5).
        flip: add the mirrored passes.
        scales: resize factors (> 0); include 1.0 for the original size.

    Returns:
        ``(boxes (K, 4), classes (K,) long, scores (K,))`` in original image pixels, by decreasing score:
        the triple that ``FCOS`` returns in eval mode.
    """
    if detector.training:
        raise ValueError("detect_with_tta: the detector is in training mode; call detector.eval() first")
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"detect_with_tta: image must have shape (1, 3, H, W), got {tuple(image.shape)}")
    scales = [float(s) for s in scales]
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"detect_with_tta: scales must be a non-empty list of numbers > 0, got {scales}")
    score_thresh, nms_thresh = _thresholds(score_thresh, nms_thresh)
    height, width = image.shape[-2:]

    boxes_all, classes_all, scores_all = [], [], []
    for scale in scales:
        resized = _resize(image, scale)
        batch = torch.cat([resized, resized.flip(-1)]) if flip else resized
        passes = pre_nms_candidates(detector, batch, score_thresh)
        scaled_height, scaled_width = resized.shape[-2:]
        to_original = torch.tensor([width / scaled_width, height / scaled_height] * 2,
                                   dtype=image.dtype, device=image.device)
        for mirrored, (boxes, classes, scores) in zip((False, True), passes):
            if mirrored:
                boxes = torch.stack([scaled_width - boxes[:, 2], boxes[:, 1], scaled_width - boxes[:, 0], boxes[:, 3]],
                                    dim=1)
            boxes_all.append(boxes * to_original if scale != 1.0 else boxes)
            classes_all.append(classes)
            scores_all.append(scores)

    boxes, classes, scores = torch.cat(boxes_all), torch.cat(classes_all), torch.cat(scores_all)
    # torchvision's batched NMS keeps exactly what common.class_spec_nms keeps (tests/test_common.py).
    keep = torchvision.ops.batched_nms(boxes, scores, classes, iou_threshold=nms_thresh)
    return boxes[keep], classes[keep], scores[keep]
