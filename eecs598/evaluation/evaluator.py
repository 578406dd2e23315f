"""The one loop over a dataset: run the detector once per batch and hand its detections to every consumer.

A consumer is a :class:`DatasetEvaluator` (``reset`` / ``process`` / ``evaluate``, after detectron2's): the
Cartucho file writer, the pool of candidates for threshold sweeps, the detection drawings and figure, the
quick mAP of periodic evaluation. :func:`inference_on_dataset` is the only code that walks a loader at
evaluation time; everything else is a consumer.

Symbols: B images per batch, K detections of one image, M GT rows per image.
"""
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["ImageResult", "DatasetEvaluator", "inference_on_dataset", "detect_batch", "check_idx_to_class",
           "image_id_of"]


@dataclass
class ImageResult:
    """One image of a batch with the detector's output for it (all on the CPU).

    Attributes:
        image_path: the path the loader gave.
        image: ``(3, H, W)`` the network input (normalised), on the detector's device.
        gt: ``(M', 5)`` float64 GT rows ``(x1, y1, x2, y2, class_id)`` without the ``-1`` padding rows.
        boxes: ``(K, 4)`` XYXY in input pixels; classes: ``(K,)`` long; scores: ``(K,)``; by decreasing score,
            in the detector's dtype.
    """

    image_path: str
    image: torch.Tensor
    gt: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        """``(K, 6)`` float64 rows ``(x1, y1, x2, y2, class_id, score)`` (the drawing and file format)."""
        return torch.cat([self.boxes.double(), self.classes.double()[:, None], self.scores.double()[:, None]], dim=1)


class DatasetEvaluator:
    """A consumer of :func:`inference_on_dataset`; every method is a no-op unless overridden."""

    def reset(self) -> None:
        """Called once before the first batch."""

    def process(self, result: ImageResult) -> None:
        """Called once per image, in loader order."""

    def evaluate(self) -> Any:
        """Called once after the last batch; its return value is this consumer's result."""
        return None

    def abort(self) -> None:
        """Called instead of :meth:`evaluate` when the loop fails (undo partial work)."""


def image_id_of(image_path: str) -> str:
    """The image id used in file names: the file name without its extension."""
    return os.path.splitext(os.path.basename(image_path))[0]


def check_idx_to_class(idx_to_class: Dict[int, str], num_classes: Optional[int], caller: str) -> List[str]:
    """Class names ``0..C-1`` as a list; every id of the detector needs a name without whitespace (the mAP
    files are whitespace-separated) and no name may repeat (two ids would merge into one class)."""
    if num_classes is not None:
        missing = [c for c in range(num_classes) if c not in idx_to_class]
        if missing:
            raise ValueError(f"{caller}: idx_to_class must name every class id 0..{num_classes - 1} of the "
                             f"detector, got no name for class ids {missing}")
    bad = [n for n in idx_to_class.values() if not isinstance(n, str) or not n or any(c.isspace() for c in n)]
    if bad:
        raise ValueError(f"{caller}: class names must be non-empty without whitespace (the mAP files are "
                         f"whitespace-separated), got {bad}")
    names = list(idx_to_class.values())
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{caller}: class names must be distinct, got {repeated} more than once in idx_to_class "
                         f"(their detections would be scored as one class)")
    return [idx_to_class[i] for i in sorted(idx_to_class)]


def detect_batch(detector: nn.Module, images: torch.Tensor, score_thresh: float, nms_thresh: float,
                 tta: Optional[Dict] = None) -> List[Sequence[torch.Tensor]]:
    """The detector's ``(boxes, classes, scores)`` for each image of ``images (B, 3, H, W)``.

    Plain inference calls ``detector(images, test_score_thresh=..., test_nms_thresh=...)`` once for the batch
    (``FCOS`` returns lists for ``B > 1``); ``tta`` runs :func:`eecs598.models.tta.detect_with_tta` per image.
    """
    if tta is not None:
        from ..models.tta import detect_with_tta

        return [detect_with_tta(detector, images[i:i + 1], score_thresh, nms_thresh, **tta)
                for i in range(images.shape[0])]
    boxes, classes, scores = detector(images, test_score_thresh=score_thresh, test_nms_thresh=nms_thresh)
    if isinstance(boxes, torch.Tensor):  # one image: tensors, not lists
        return [(boxes, classes, scores)]
    return list(zip(boxes, classes, scores))


def _unpack(batch, index: int, caller: str):
    """``(image_paths, images (B,3,H,W), gt_boxes (B,M,5))`` from a loader batch, with a clear error."""
    if not (isinstance(batch, (list, tuple)) and len(batch) == 3):
        kind = type(batch).__name__ + (f" with keys {list(batch)[:5]}" if isinstance(batch, dict) else "")
        raise TypeError(f"{caller}: batch {index} of the loader must be (image_paths, images, gt_boxes), as the "
                        f"course's datasets yield; got a {kind}")
    image_paths, images, gt_boxes = batch
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{caller}: expected images of shape (B, 3, H, W), got {shape} in batch {index}")
    return image_paths, images, gt_boxes


@torch.no_grad()
def inference_on_dataset(
    detector: nn.Module,
    loader,
    evaluators: Sequence[DatasetEvaluator],
    score_thresh: float,
    nms_thresh: float,
    *,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    tta: Optional[Dict] = None,
    progress: bool = True,
    desc: str = "inference",
    caller: str = "inference_on_dataset",
) -> List[Any]:
    """Run ``detector`` (eval mode) once over ``loader`` and feed every image to every evaluator.

    Args:
        detector: in eval mode ``detector(images, test_score_thresh=..., test_nms_thresh=...)`` returns
            ``(boxes, classes, scores)`` (lists of them for several images), as ``FCOS`` does.
        loader: yields ``(image_paths, images (B,3,H,W), gt_boxes (B,M,5))``.
        evaluators: the consumers (see :class:`DatasetEvaluator`).
        score_thresh, nms_thresh: the detector's thresholds (``nms_thresh=1.0`` suppresses nothing).
        dtype, device: the detector and the images are moved to these.
        tta: test-time augmentation options (``eecs598.models.tta.detect_with_tta``), or None.
        progress, desc: a tqdm bar with this label.
        caller: named in error messages.

    Returns:
        ``[evaluator.evaluate() for evaluator in evaluators]``. If anything fails, every evaluator's
        ``abort()`` is called and the exception propagates.
    """
    detector.to(dtype=dtype, device=device)
    detector.eval()
    for evaluator in evaluators:
        evaluator.reset()
    try:
        for index, batch in enumerate(tqdm(loader, disable=not progress, desc=desc, dynamic_ncols=True)):
            image_paths, images, gt_boxes = _unpack(batch, index, caller)
            images = images.to(dtype=dtype, device=device)
            for i, (boxes, classes, scores) in enumerate(detect_batch(detector, images, score_thresh, nms_thresh,
                                                                      tta)):
                gt = gt_boxes[i]
                keep = classes != -1
                result = ImageResult(image_paths[i], images[i], gt[gt[:, 4] != -1].cpu().double(), boxes[keep].cpu(),
                                     classes[keep].cpu().long(), scores[keep].cpu())
                for evaluator in evaluators:
                    evaluator.process(result)
        results = [evaluator.evaluate() for evaluator in evaluators]
    except BaseException:
        for evaluator in evaluators:
            evaluator.abort()
        raise
    return results
