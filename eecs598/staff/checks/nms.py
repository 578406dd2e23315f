"""Checks of ``nms``: expected indices from ``torchvision.ops.nms``, computed on the trusted side."""
from __future__ import annotations

import torch
import torchvision

from .base import REVEAL, Check, cuda_device, notebook_nms_workload, register, type_name

NMS = "nms"
_THRESHOLDS = (0.3, 0.5, 0.7)


def _assert_same_keep(keep, expected: torch.Tensor, what: str) -> None:
    if not isinstance(keep, torch.Tensor):
        raise AssertionError(f"{what}: nms must return a torch.Tensor of indices, got {type_name(keep)}")
    if keep.dtype != torch.long:
        raise AssertionError(f"{what}: indices must be torch.long, got {keep.dtype}")
    keep, expected = keep.cpu(), expected.cpu()
    if keep.dim() != 1 or not torch.equal(keep, expected):
        kept, wanted = keep.reshape(-1).tolist(), expected.tolist()
        first = next((i for i, (a, b) in enumerate(zip(kept, wanted)) if a != b), min(len(kept), len(wanted)))
        message = f"{what}: kept {len(kept)} boxes"
        if REVEAL.get():
            message += (f", torchvision keeps {len(wanted)}; first difference at position {first}: "
                        f"{kept[first:first + 3]} vs {wanted[first:first + 3]}")
        else:
            message += f", not the same indices as torchvision (first difference at position {first})"
        raise AssertionError(message)


def _workload_inputs(seed: int, num_boxes: int, dtype=torch.float32):
    boxes, scores = notebook_nms_workload(seed=seed, num_boxes=num_boxes)
    return {"boxes": boxes.to(dtype), "scores": scores.to(dtype)}


@register
class NmsNotebookWorkload(Check):
    """Published: identical to torchvision.ops.nms on the notebook's 5000 boxes at IoU 0.3, 0.5, 0.7."""

    function = NMS
    published = True

    def inputs(self, ref):
        return _workload_inputs(seed=0, num_boxes=5000)

    def probe(self, env, x):
        nms = env.student_attr("common.py", NMS)
        return {str(t): nms(x["boxes"], x["scores"], t) for t in _THRESHOLDS}

    def judge(self, answer, x, ref):
        for t in _THRESHOLDS:
            _assert_same_keep(answer[str(t)], torchvision.ops.nms(x["boxes"], x["scores"], t),
                              f"notebook workload, IoU threshold {t}")


@register
class NmsOtherWorkloads(Check):
    """Hidden: identical to torchvision on the notebook workload with seeds 1 and 2 and 2000 boxes."""

    function = NMS

    def inputs(self, ref):
        return {f"seed{seed}": _workload_inputs(seed=seed, num_boxes=2000) for seed in (1, 2)}

    def probe(self, env, x):
        nms = env.student_attr("common.py", NMS)
        return {f"{key} {t}": nms(data["boxes"], data["scores"], t) for key, data in x.items() for t in _THRESHOLDS}

    def judge(self, answer, x, ref):
        for key, data in x.items():
            for t in _THRESHOLDS:
                _assert_same_keep(answer[f"{key} {t}"], torchvision.ops.nms(data["boxes"], data["scores"], t),
                                  f"2000 boxes ({key}), IoU threshold {t}")


@register
class NmsIouExactlyAtThreshold(Check):
    """Hidden: a box whose IoU equals the threshold is kept (suppress only IoU strictly greater)."""

    function = NMS

    def probe(self, env, x):
        nms = env.student_attr("common.py", NMS)
        outputs = {}
        for dtype in (torch.float32, torch.float64):
            boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=dtype)  # IoU = 50 / 100
            scores = torch.tensor([0.9, 0.8], dtype=dtype)
            outputs[f"{dtype} 0.5"] = nms(boxes, scores, 0.5)
            outputs[f"{dtype} 0.49"] = nms(boxes, scores, 0.49)
        return outputs

    def judge(self, answer, x, ref):
        for dtype in (torch.float32, torch.float64):
            _assert_same_keep(answer[f"{dtype} 0.5"], torch.tensor([0, 1]), f"IoU exactly 0.5 at threshold 0.5 ({dtype})")
            _assert_same_keep(answer[f"{dtype} 0.49"], torch.tensor([0]), f"IoU 0.5 at threshold 0.49 ({dtype})")


@register
class NmsTiesAndDuplicates(Check):
    """Hidden: equal scores keep input order; duplicates are suppressed (as torchvision)."""

    function = NMS
    _BOXES = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)

    def probe(self, env, x):
        return {"keep": env.student_attr("common.py", NMS)(self._BOXES, torch.full((4,), 0.5), 0.5)}

    def judge(self, answer, x, ref):
        _assert_same_keep(answer["keep"], torchvision.ops.nms(self._BOXES, torch.full((4,), 0.5), 0.5),
                          "four boxes with equal scores")


@register
class NmsFloat64AndEmpty(Check):
    """Hidden: float64 boxes agree with torchvision; empty input gives an empty long tensor."""

    function = NMS

    def inputs(self, ref):
        return _workload_inputs(seed=5, num_boxes=1000, dtype=torch.float64)

    def probe(self, env, x):
        nms = env.student_attr("common.py", NMS)
        return {"float64": nms(x["boxes"], x["scores"], 0.5), "empty": nms(torch.zeros(0, 4), torch.zeros(0), 0.5)}

    def judge(self, answer, x, ref):
        _assert_same_keep(answer["float64"], torchvision.ops.nms(x["boxes"], x["scores"], 0.5), "float64 boxes")
        keep = answer["empty"]
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.long or tuple(keep.shape) != (0,):
            raise AssertionError(f"empty input must give an empty torch.long tensor of shape (0,), got {keep!r}"[:300])


@register
class NmsWrittenByHand(Check):
    """Hidden: nms does not call torchvision's NMS."""

    function = NMS

    def inputs(self, ref):
        return _workload_inputs(seed=3, num_boxes=300)

    def probe(self, env, x):
        """Replaces torchvision's NMS entry points while the student's nms runs and reports whether one was
        called. (Best effort: code that set out to keep a reference to them beforehand is not caught; the
        indices must still be right.)"""
        nms = env.student_attr("common.py", NMS)
        called = []

        def forbidden(*args, **kwargs):
            called.append(True)
            raise RuntimeError("nms must be written by hand: it called torchvision's NMS")

        ops = torch.ops.torchvision
        names = [(torchvision.ops, "nms"), (torchvision.ops, "batched_nms"), (torchvision.ops.boxes, "nms"),
                 (torchvision.ops.boxes, "batched_nms"), (ops, "nms")]
        originals = [(owner, name, getattr(owner, name)) for owner, name in names]
        try:
            for owner, name, _ in originals:
                setattr(owner, name, forbidden)
            keep = nms(x["boxes"], x["scores"], 0.5)
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
        return {"keep": keep, "called_torchvision": bool(called)}

    def judge(self, answer, x, ref):
        if answer["called_torchvision"] is not False:
            raise AssertionError("nms must be written by hand: it called torchvision's NMS")
        _assert_same_keep(answer["keep"], torchvision.ops.nms(x["boxes"], x["scores"], 0.5), "300 boxes")


@register
class NmsCuda(Check):
    """Hidden: CUDA boxes give the same indices, on the GPU."""

    function = NMS
    needs_cuda = True

    def inputs(self, ref):
        return _workload_inputs(seed=4, num_boxes=2000)

    def probe(self, env, x):
        keep = env.student_attr("common.py", NMS)(x["boxes"].to(cuda_device()), x["scores"].to(cuda_device()), 0.5)
        return {"keep": keep, "device": getattr(getattr(keep, "device", None), "type", None)}

    def judge(self, answer, x, ref):
        if answer["device"] != "cuda":
            raise AssertionError(f"indices are on {answer['device']}, expected the boxes' CUDA device")
        _assert_same_keep(answer["keep"], torchvision.ops.nms(x["boxes"], x["scores"], 0.5), "CUDA boxes")
