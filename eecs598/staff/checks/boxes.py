"""Checks of the box encoding: deltas, their inverse, centerness (expected values from the formulas here)."""
from __future__ import annotations

import math

import torch

from .base import Check, assert_close, cuda_device, register

GET_DELTAS = "fcos_get_deltas_from_locations"
APPLY_DELTAS = "fcos_apply_deltas_to_locations"
CENTERNESS = "fcos_make_centerness_targets"

_NOTEBOOK_BOXES = torch.tensor([[10, 15, 100, 115, 1], [30, 20, 40, 30, 1], [120, 100, 200, 200, 1]], dtype=torch.float32)
_NOTEBOOK_LOCATIONS = torch.tensor([[30, 40], [32, 29], [125, 150]], dtype=torch.float32)


def _random_matched_boxes(num: int, dtype=torch.float64, seed: int = 0):
    """``num`` locations and boxes around them, with class ids, and the four distances."""
    generator = torch.Generator().manual_seed(seed)
    locations = torch.rand(num, 2, generator=generator, dtype=dtype) * 200
    distances = torch.rand(num, 4, generator=generator, dtype=dtype) * 90 + 1
    boxes = torch.cat([locations - distances[:, :2], locations + distances[:, 2:],
                       torch.randint(0, 20, (num, 1), generator=generator).to(dtype)], dim=1)
    return locations, boxes, distances


def _expected_deltas(locations, boxes, stride):
    return torch.stack([locations[:, 0] - boxes[:, 0], locations[:, 1] - boxes[:, 1],
                        boxes[:, 2] - locations[:, 0], boxes[:, 3] - locations[:, 1]], dim=1) / stride


def _expected_centerness(deltas: torch.Tensor) -> torch.Tensor:
    values = []
    for left, top, right, bottom in deltas.tolist():
        if left == top == right == bottom == -1:
            values.append(-1.0)
        else:
            values.append(math.sqrt(min(left, right) * min(top, bottom) / (max(left, right) * max(top, bottom))))
    return torch.tensor(values, dtype=deltas.dtype)


def _assert_empty(value, shape, what: str) -> None:
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise AssertionError(f"{what} must give shape {shape}, got {got}")


# ------------------------------------------------------------------------------------------------
# fcos_get_deltas_from_locations
# ------------------------------------------------------------------------------------------------


@register
class DeltasRoundTripPublished(Check):
    """Published: the notebook's three boxes -> deltas (stride 8) -> boxes gives them back exactly."""

    function = GET_DELTAS
    published = True

    def probe(self, env, x):
        get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
        return {"deltas": get_deltas(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, stride=8)}

    def judge(self, answer, x, ref):
        deltas = answer["deltas"]
        assert_close(deltas, _expected_deltas(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, 8), "deltas of the notebook's boxes",
                     rtol=1e-6, atol=1e-6)
        apply_deltas = ref.module("one_stage_detector.py").fcos_apply_deltas_to_locations
        assert_close(apply_deltas(deltas, _NOTEBOOK_LOCATIONS, stride=8), _NOTEBOOK_BOXES[:, :4],
                     "boxes decoded from your deltas", rtol=1e-6, atol=1e-5)


@register
class DeltasBackgroundPublished(Check):
    """Published: a background row (all -1) gives deltas of exactly -1."""

    function = GET_DELTAS
    published = True

    def probe(self, env, x):
        get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
        return {"deltas": get_deltas(torch.tensor([[100.0, 200.0]]), torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0]]),
                                     stride=8)}

    def judge(self, answer, x, ref):
        assert_close(answer["deltas"], -torch.ones(1, 4), "deltas of a background row", rtol=0, atol=0)


@register
class DeltasFormulaOtherStrides(Check):
    """Hidden: (xc - x1, yc - y1, x2 - xc, y2 - yc) / stride for strides 16 and 32, float64."""

    function = GET_DELTAS

    def inputs(self, ref):
        locations, boxes, _ = _random_matched_boxes(50)
        return {"locations": locations, "boxes": boxes}

    def probe(self, env, x):
        get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
        return {str(stride): get_deltas(x["locations"], x["boxes"], stride) for stride in (16, 32)}

    def judge(self, answer, x, ref):
        for stride in (16, 32):
            assert_close(answer[str(stride)], _expected_deltas(x["locations"], x["boxes"], stride),
                         f"float64 deltas at stride {stride}", rtol=1e-12, atol=1e-12)


@register
class DeltasMixedRowsAndFourColumns(Check):
    """Hidden: background rows among foreground rows; boxes given with 4 columns; N = 0."""

    function = GET_DELTAS

    def inputs(self, ref):
        locations, boxes, _ = _random_matched_boxes(8, dtype=torch.float32, seed=1)
        background = torch.tensor([False, True, False, False, True, True, False, False])
        boxes[background] = -1
        return {"locations": locations, "boxes": boxes, "background": background}

    def probe(self, env, x):
        get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
        return {"mixed": get_deltas(x["locations"], x["boxes"], 8),
                "four_columns": get_deltas(x["locations"], x["boxes"][:, :4], 8),
                "empty": get_deltas(torch.zeros(0, 2), torch.zeros(0, 5), 8)}

    def judge(self, answer, x, ref):
        expected = _expected_deltas(x["locations"], x["boxes"], 8)
        expected[x["background"]] = -1
        assert_close(answer["mixed"], expected, "deltas with background rows 1, 4, 5", rtol=1e-5, atol=1e-5)
        assert_close(answer["four_columns"], expected, "deltas of (N, 4) boxes", rtol=1e-5, atol=1e-5)
        _assert_empty(answer["empty"], (0, 4), "no locations")


@register
class DeltasCuda(Check):
    """Hidden: CUDA inputs give CUDA deltas."""

    function = GET_DELTAS
    needs_cuda = True

    def inputs(self, ref):
        locations, boxes, _ = _random_matched_boxes(10, dtype=torch.float32)
        return {"locations": locations, "boxes": boxes}

    def probe(self, env, x):
        get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
        deltas = get_deltas(x["locations"].to(cuda_device()), x["boxes"].to(cuda_device()), 8)
        return {"deltas": deltas, "device": getattr(getattr(deltas, "device", None), "type", None)}

    def judge(self, answer, x, ref):
        if answer["device"] != "cuda":
            raise AssertionError(f"deltas are on {answer['device']}, expected the inputs' CUDA device")
        assert_close(answer["deltas"], _expected_deltas(x["locations"], x["boxes"], 8), "CUDA deltas", rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# fcos_apply_deltas_to_locations
# ------------------------------------------------------------------------------------------------


@register
class ApplyRoundTripPublished(Check):
    """Published: decoding the deltas of the notebook's boxes gives them back exactly."""

    function = APPLY_DELTAS
    published = True

    def inputs(self, ref):
        get_deltas = ref.module("one_stage_detector.py").fcos_get_deltas_from_locations
        return {"deltas": get_deltas(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, 8)}

    def probe(self, env, x):
        apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
        return {"boxes": apply_deltas(x["deltas"], _NOTEBOOK_LOCATIONS, stride=8)}

    def judge(self, answer, x, ref):
        assert_close(answer["boxes"], _NOTEBOOK_BOXES[:, :4], "decoded notebook boxes", rtol=1e-6, atol=1e-5)


@register
class ApplyBackgroundPublished(Check):
    """Published: background deltas (-1) decode to the location itself, [100, 200, 100, 200]."""

    function = APPLY_DELTAS
    published = True

    def probe(self, env, x):
        apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
        return {"boxes": apply_deltas(-torch.ones(1, 4), torch.tensor([[100.0, 200.0]]), stride=8)}

    def judge(self, answer, x, ref):
        assert_close(answer["boxes"], torch.tensor([[100.0, 200.0, 100.0, 200.0]]), "box decoded from background deltas",
                     rtol=0, atol=0)


@register
class ApplyFormulaAndClamp(Check):
    """Hidden: boxes (xc - l, yc - t, xc + r, yc + b) * stride in float64; negative deltas clamp to 0."""

    function = APPLY_DELTAS

    def inputs(self, ref):
        locations, boxes, distances = _random_matched_boxes(50)
        return {"locations": locations, "boxes": boxes, "distances": distances}

    def probe(self, env, x):
        apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
        outputs = {str(s): apply_deltas(x["distances"] / s, x["locations"], s) for s in (16, 32)}
        outputs["clamped"] = apply_deltas(torch.tensor([[-0.5, 2.0, -3.0, 1.0]]), torch.tensor([[50.0, 60.0]]), 8)
        outputs["empty"] = apply_deltas(torch.zeros(0, 4), torch.zeros(0, 2), 8)
        return outputs

    def judge(self, answer, x, ref):
        for stride in (16, 32):
            assert_close(answer[str(stride)], x["boxes"][:, :4], f"float64 boxes at stride {stride}", rtol=1e-12, atol=1e-10)
        assert_close(answer["clamped"], torch.tensor([[50.0, 44.0, 50.0, 68.0]]),
                     "deltas (-0.5, 2, -3, 1) at (50, 60), stride 8 (negative deltas count as 0)", rtol=0, atol=1e-6)
        _assert_empty(answer["empty"], (0, 4), "no deltas")


@register
class ApplyCuda(Check):
    """Hidden: CUDA inputs give CUDA boxes."""

    function = APPLY_DELTAS
    needs_cuda = True

    def inputs(self, ref):
        locations, boxes, distances = _random_matched_boxes(10, dtype=torch.float32)
        return {"locations": locations, "boxes": boxes, "distances": distances}

    def probe(self, env, x):
        apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
        boxes = apply_deltas((x["distances"] / 8).to(cuda_device()), x["locations"].to(cuda_device()), 8)
        return {"boxes": boxes, "device": getattr(getattr(boxes, "device", None), "type", None)}

    def judge(self, answer, x, ref):
        if answer["device"] != "cuda":
            raise AssertionError(f"boxes are on {answer['device']}, expected the inputs' CUDA device")
        assert_close(answer["boxes"], x["boxes"][:, :4], "CUDA boxes", rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# fcos_make_centerness_targets
# ------------------------------------------------------------------------------------------------


@register
class CenternessPublished(Check):
    """Published: [0.30860671401, 0.1666666716, -1.0] for the notebook's boxes (the last is background)."""

    function = CENTERNESS
    published = True

    def inputs(self, ref):
        boxes = _NOTEBOOK_BOXES.clone()
        boxes[2] = -1
        get_deltas = ref.module("one_stage_detector.py").fcos_get_deltas_from_locations
        return {"deltas": get_deltas(_NOTEBOOK_LOCATIONS, boxes, 8)}

    def probe(self, env, x):
        return {"centerness": env.student_attr("one_stage_detector.py", CENTERNESS)(x["deltas"])}

    def judge(self, answer, x, ref):
        assert_close(answer["centerness"], torch.tensor([0.30860671401, 0.1666666716, -1.0]), "centerness targets",
                     rtol=1e-6, atol=1e-7)


@register
class CenternessFormulaFloat64(Check):
    """Hidden: sqrt(min(l,r) min(t,b) / (max(l,r) max(t,b))) in float64, background rows -1 among them."""

    function = CENTERNESS

    def inputs(self, ref):
        _, _, distances = _random_matched_boxes(40, seed=3)
        deltas = distances / 8
        deltas[[3, 17, 18]] = -1
        return {"deltas": deltas}

    def probe(self, env, x):
        return {"centerness": env.student_attr("one_stage_detector.py", CENTERNESS)(x["deltas"])}

    def judge(self, answer, x, ref):
        assert_close(answer["centerness"], _expected_centerness(x["deltas"]), "float64 centerness", rtol=1e-12, atol=1e-12)


@register
class CenternessScaleFreeAndEmpty(Check):
    """Hidden: scaling the deltas does not change the centerness; N = 0 gives shape (0,)."""

    function = CENTERNESS

    def inputs(self, ref):
        _, _, distances = _random_matched_boxes(20, dtype=torch.float32, seed=4)
        return {"distances": distances}

    def probe(self, env, x):
        centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
        distances = x["distances"]
        return {"pixels": centerness(distances * 4), "stride_8": centerness(distances / 8),
                "plain": centerness(distances), "empty": centerness(torch.zeros(0, 4))}

    def judge(self, answer, x, ref):
        expected = _expected_centerness(x["distances"])
        assert_close(answer["pixels"], expected, "centerness of deltas in pixels", rtol=1e-5, atol=1e-6)
        assert_close(answer["stride_8"], expected, "centerness of deltas at stride 8", rtol=1e-5, atol=1e-6)
        assert_close(answer["plain"], expected, "float32 centerness", rtol=1e-5, atol=1e-6)
        _assert_empty(answer["empty"], (0,), "no deltas")


@register
class CenternessCuda(Check):
    """Hidden: CUDA deltas give a CUDA centerness."""

    function = CENTERNESS
    needs_cuda = True

    def inputs(self, ref):
        _, _, distances = _random_matched_boxes(20, dtype=torch.float32, seed=4)
        return {"distances": distances}

    def probe(self, env, x):
        value = env.student_attr("one_stage_detector.py", CENTERNESS)(x["distances"].to(cuda_device()))
        return {"centerness": value, "device": getattr(getattr(value, "device", None), "type", None)}

    def judge(self, answer, x, ref):
        if answer["device"] != "cuda":
            raise AssertionError(f"centerness is on {answer['device']}, expected the inputs' CUDA device")
        assert_close(answer["centerness"], _expected_centerness(x["distances"]), "CUDA centerness", rtol=1e-5, atol=1e-6)
