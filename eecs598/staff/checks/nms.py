"""Checks of ``nms``."""
from __future__ import annotations


import torch
import torchvision

from .base import (Env, check, cuda_device,
                   notebook_nms_workload)


# ================================================================================================
# common.py: nms
# ================================================================================================

NMS = "nms"


def _assert_same_keep(keep, expected: torch.Tensor, what: str) -> None:
    if not isinstance(keep, torch.Tensor):
        raise AssertionError(f"{what}: nms must return a torch.Tensor of indices, got {type(keep).__name__}")
    if keep.dtype != torch.long:
        raise AssertionError(f"{what}: indices must be torch.long, got {keep.dtype}")
    keep, expected = keep.cpu(), expected.cpu()
    if not torch.equal(keep, expected):
        kept, wanted = keep.tolist(), expected.tolist()
        first = next((i for i, (a, b) in enumerate(zip(kept, wanted)) if a != b), min(len(kept), len(wanted)))
        raise AssertionError(
            f"{what}: kept {len(kept)} boxes, torchvision keeps {len(wanted)}; first difference at position "
            f"{first}: {kept[first:first + 3]} vs {wanted[first:first + 3]}"
        )


@check(NMS, published=True)
def nms_notebook_workload(env: Env) -> None:
    """Published: identical to torchvision.ops.nms on the notebook's 5000 boxes at IoU 0.3, 0.5, 0.7."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=0)
    for threshold in (0.3, 0.5, 0.7):
        _assert_same_keep(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold),
                          f"notebook workload, IoU threshold {threshold}")


@check(NMS)
def nms_other_workloads(env: Env) -> None:
    """Hidden: identical to torchvision on the notebook workload with seeds 1 and 2 and 2000 boxes."""
    nms = env.student_attr("common.py", NMS)
    for seed in (1, 2):
        boxes, scores = notebook_nms_workload(seed=seed, num_boxes=2000)
        for threshold in (0.3, 0.5, 0.7):
            _assert_same_keep(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold),
                              f"2000 boxes (seed {seed}), IoU threshold {threshold}")


@check(NMS)
def nms_iou_exactly_at_threshold(env: Env) -> None:
    """Hidden: a box whose IoU equals the threshold is kept (suppress only IoU strictly greater)."""
    nms = env.student_attr("common.py", NMS)
    for dtype in (torch.float32, torch.float64):
        boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=dtype)  # IoU = 50 / 100
        scores = torch.tensor([0.9, 0.8], dtype=dtype)
        _assert_same_keep(nms(boxes, scores, 0.5), torch.tensor([0, 1]), f"IoU exactly 0.5 at threshold 0.5 ({dtype})")
        _assert_same_keep(nms(boxes, scores, 0.49), torch.tensor([0]), f"IoU 0.5 at threshold 0.49 ({dtype})")


@check(NMS)
def nms_ties_and_duplicates(env: Env) -> None:
    """Hidden: equal scores keep input order; duplicates are suppressed (as torchvision)."""
    nms = env.student_attr("common.py", NMS)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    _assert_same_keep(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5), "four boxes with equal scores")


@check(NMS)
def nms_float64_and_empty(env: Env) -> None:
    """Hidden: float64 boxes agree with torchvision; empty input gives an empty long tensor."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=5, num_boxes=1000)
    boxes, scores = boxes.double(), scores.double()
    _assert_same_keep(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5), "float64 boxes")
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.long or tuple(keep.shape) != (0,):
        raise AssertionError(f"empty input must give an empty torch.long tensor of shape (0,), got {keep!r}")


@check(NMS)
def nms_written_by_hand(env: Env) -> None:
    """Hidden: nms does not call torchvision's NMS."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=3, num_boxes=300)
    expected = torchvision.ops.nms(boxes, scores, 0.5)

    def forbidden(*args, **kwargs):
        raise AssertionError("nms must be written by hand: it called torchvision's NMS")

    ops = torch.ops.torchvision
    saved = [(torchvision.ops, "nms"), (torchvision.ops, "batched_nms"), (torchvision.ops.boxes, "nms"),
             (torchvision.ops.boxes, "batched_nms"), (ops, "nms")]
    originals = [(owner, name, getattr(owner, name)) for owner, name in saved]
    try:
        for owner, name, _ in originals:
            setattr(owner, name, forbidden)
        keep = nms(boxes, scores, 0.5)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    _assert_same_keep(keep, expected, "300 boxes")


@check(NMS, needs_cuda=True)
def nms_cuda(env: Env) -> None:
    """Hidden: CUDA boxes give the same indices, on the GPU."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=4, num_boxes=2000)
    keep = nms(boxes.to(cuda_device()), scores.to(cuda_device()), 0.5)
    if keep.device.type != "cuda":
        raise AssertionError(f"indices are on {keep.device}, expected the boxes' CUDA device")
    _assert_same_keep(keep, torchvision.ops.nms(boxes, scores, 0.5), "CUDA boxes")
