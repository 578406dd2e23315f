"""Detections on whole photos with a trained detector: the core that predict, export checks and the demo page share.

A photo is seen whole (no centre crop): resized so that its shorter side is the training ``image_size``
(longer side capped), padded to a multiple of 32 (``eecs598.data.transforms.prepare_image``), and the
detector's boxes are mapped back to the photo's own pixels.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..data.transforms import boxes_to_original, prepare_image
from ..evaluation.evaluator import detect_batch

__all__ = ["PhotoDetections", "detect_photos"]


@dataclass
class PhotoDetections:
    """The detections of one photo, in its own pixels.

    Attributes:
        boxes: ``(K, 4)`` float32 XYXY in original-image pixels, clipped to the image.
        classes: ``(K,)`` long class ids; scores: ``(K,)`` float32, by decreasing score.
        size: ``(width, height)`` of the photo.
    """

    boxes: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    size: tuple

    def as_records(self, class_names: Sequence[str]) -> List[Dict]:
        """``[{"box": [x1, y1, x2, y2], "class": name, "class_id": id, "score": s}, ...]`` (JSON-ready)."""
        return [{"box": [round(v, 2) for v in box], "class": class_names[c], "class_id": c, "score": round(s, 6)}
                for box, c, s in zip(self.boxes.tolist(), self.classes.tolist(), self.scores.tolist())]


@torch.no_grad()
def detect_photos(model: nn.Module, photos: Sequence, image_size: int, score_thresh: float = 0.3,
                  nms_thresh: float = 0.5, tta: Optional[Dict] = None, device="cpu",
                  max_size: Optional[int] = None) -> List[PhotoDetections]:
    """Run ``model`` (eval mode) on whole photos, as one batch.

    Args:
        model: an ``FCOS`` (anything whose eval-mode call returns ``(boxes, classes, scores)``).
        photos: PIL images or ``(H, W, 3)`` uint8 arrays, any sizes.
        image_size: the shorter side the photos are resized to (the checkpoint's training size).
        score_thresh, nms_thresh: the detector's thresholds.
        tta: test-time augmentation options (``eecs598.models.tta.detect_with_tta``), or None.
        device: where the model runs.
        max_size: cap on the resized longer side (see ``prepare_image``).

    Returns:
        One :class:`PhotoDetections` per photo, in order.
    """
    prepared = [prepare_image(photo, image_size, max_size) for photo in photos]
    height = max(tensor.shape[1] for tensor, _, _ in prepared)
    width = max(tensor.shape[2] for tensor, _, _ in prepared)
    batch = torch.zeros(len(prepared), 3, height, width)  # zero = the mean colour after normalisation
    for i, (tensor, _, _) in enumerate(prepared):
        batch[i, :, :tensor.shape[1], :tensor.shape[2]] = tensor
    model.eval()
    dtype = next(model.parameters()).dtype
    outputs = detect_batch(model, batch.to(device=device, dtype=dtype), score_thresh, nms_thresh, tta)
    results = []
    for (boxes, classes, scores), (_, scale, size) in zip(outputs, prepared):
        keep = classes != -1
        results.append(PhotoDetections(boxes_to_original(boxes[keep].float().cpu(), scale, size),
                                       classes[keep].long().cpu(), scores[keep].float().cpu(), size))
    return results
