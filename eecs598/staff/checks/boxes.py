"""Checks of the box encoding: deltas, their inverse, centerness."""
from __future__ import annotations

import math

import torch

from .base import (Env, assert_close, check, cuda_device)


# ================================================================================================
# one_stage_detector.py: deltas and centerness
# ================================================================================================

GET_DELTAS = "fcos_get_deltas_from_locations"
APPLY_DELTAS = "fcos_apply_deltas_to_locations"
CENTERNESS = "fcos_make_centerness_targets"

_NOTEBOOK_BOXES = torch.tensor([[10, 15, 100, 115, 1], [30, 20, 40, 30, 1], [120, 100, 200, 200, 1]], dtype=torch.float32)
_NOTEBOOK_LOCATIONS = torch.tensor([[30, 40], [32, 29], [125, 150]], dtype=torch.float32)


def _random_matched_boxes(num: int, dtype=torch.float64, seed: int = 0):
    """``num`` locations and boxes around them, with class ids."""
    generator = torch.Generator().manual_seed(seed)
    locations = torch.rand(num, 2, generator=generator, dtype=dtype) * 200
    distances = torch.rand(num, 4, generator=generator, dtype=dtype) * 90 + 1
    boxes = torch.cat([locations - distances[:, :2], locations + distances[:, 2:],
                       torch.randint(0, 20, (num, 1), generator=generator).to(dtype)], dim=1)
    return locations, boxes, distances


def _expected_deltas(locations, boxes, stride):
    return torch.stack([locations[:, 0] - boxes[:, 0], locations[:, 1] - boxes[:, 1],
                        boxes[:, 2] - locations[:, 0], boxes[:, 3] - locations[:, 1]], dim=1) / stride


@check(GET_DELTAS, published=True)
def deltas_round_trip_published(env: Env) -> None:
    """Published: the notebook's three boxes -> deltas (stride 8) -> boxes gives them back exactly."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    apply_deltas = env.reference("one_stage_detector.py").fcos_apply_deltas_to_locations
    deltas = get_deltas(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, stride=8)
    assert_close(deltas, _expected_deltas(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, 8), "deltas of the notebook's boxes",
                 rtol=1e-6, atol=1e-6)
    assert_close(apply_deltas(deltas, _NOTEBOOK_LOCATIONS, stride=8), _NOTEBOOK_BOXES[:, :4],
                 "boxes decoded from your deltas", rtol=1e-6, atol=1e-5)


@check(GET_DELTAS, published=True)
def deltas_background_published(env: Env) -> None:
    """Published: a background row (all -1) gives deltas of exactly -1."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    deltas = get_deltas(torch.tensor([[100.0, 200.0]]), torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0]]), stride=8)
    assert_close(deltas, -torch.ones(1, 4), "deltas of a background row", rtol=0, atol=0)


@check(GET_DELTAS)
def deltas_formula_other_strides(env: Env) -> None:
    """Hidden: (xc - x1, yc - y1, x2 - xc, y2 - yc) / stride for strides 16 and 32, float64."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    locations, boxes, _ = _random_matched_boxes(50)
    for stride in (16, 32):
        assert_close(get_deltas(locations, boxes, stride), _expected_deltas(locations, boxes, stride),
                     f"float64 deltas at stride {stride}", rtol=1e-12, atol=1e-12)


@check(GET_DELTAS)
def deltas_mixed_rows_and_four_columns(env: Env) -> None:
    """Hidden: background rows among foreground rows; boxes given with 4 columns; N = 0."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    locations, boxes, _ = _random_matched_boxes(8, dtype=torch.float32, seed=1)
    background = torch.tensor([False, True, False, False, True, True, False, False])
    boxes[background] = -1
    expected = _expected_deltas(locations, boxes, 8)
    expected[background] = -1
    assert_close(get_deltas(locations, boxes, 8), expected, "deltas with background rows 1, 4, 5", rtol=1e-5, atol=1e-5)
    assert_close(get_deltas(locations, boxes[:, :4], 8), expected, "deltas of (N, 4) boxes", rtol=1e-5, atol=1e-5)
    empty = get_deltas(torch.zeros(0, 2), torch.zeros(0, 5), 8)
    if tuple(empty.shape) != (0, 4):
        raise AssertionError(f"no locations must give deltas of shape (0, 4), got {tuple(empty.shape)}")


@check(GET_DELTAS, needs_cuda=True)
def deltas_cuda(env: Env) -> None:
    """Hidden: CUDA inputs give CUDA deltas."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    locations, boxes, _ = _random_matched_boxes(10, dtype=torch.float32)
    expected = _expected_deltas(locations, boxes, 8).to(cuda_device())
    assert_close(get_deltas(locations.to(cuda_device()), boxes.to(cuda_device()), 8), expected, "CUDA deltas",
                 rtol=1e-5, atol=1e-5)


@check(APPLY_DELTAS, published=True)
def apply_round_trip_published(env: Env) -> None:
    """Published: decoding the deltas of the notebook's boxes gives them back exactly."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    deltas = env.reference("one_stage_detector.py").fcos_get_deltas_from_locations(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, 8)
    assert_close(apply_deltas(deltas, _NOTEBOOK_LOCATIONS, stride=8), _NOTEBOOK_BOXES[:, :4],
                 "decoded notebook boxes", rtol=1e-6, atol=1e-5)


@check(APPLY_DELTAS, published=True)
def apply_background_published(env: Env) -> None:
    """Published: background deltas (-1) decode to the location itself, [100, 200, 100, 200]."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    box = apply_deltas(-torch.ones(1, 4), torch.tensor([[100.0, 200.0]]), stride=8)
    assert_close(box, torch.tensor([[100.0, 200.0, 100.0, 200.0]]), "box decoded from background deltas", rtol=0, atol=0)


@check(APPLY_DELTAS)
def apply_formula_and_clamp(env: Env) -> None:
    """Hidden: boxes (xc - l, yc - t, xc + r, yc + b) * stride in float64; negative deltas clamp to 0."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    locations, boxes, distances = _random_matched_boxes(50)
    for stride in (16, 32):
        assert_close(apply_deltas(distances / stride, locations, stride), boxes[:, :4],
                     f"float64 boxes at stride {stride}", rtol=1e-12, atol=1e-10)
    box = apply_deltas(torch.tensor([[-0.5, 2.0, -3.0, 1.0]]), torch.tensor([[50.0, 60.0]]), 8)
    assert_close(box, torch.tensor([[50.0, 44.0, 50.0, 68.0]]),
                 "deltas (-0.5, 2, -3, 1) at (50, 60), stride 8 (negative deltas count as 0)", rtol=0, atol=1e-6)
    empty = apply_deltas(torch.zeros(0, 4), torch.zeros(0, 2), 8)
    if tuple(empty.shape) != (0, 4):
        raise AssertionError(f"no deltas must give boxes of shape (0, 4), got {tuple(empty.shape)}")


@check(APPLY_DELTAS, needs_cuda=True)
def apply_cuda(env: Env) -> None:
    """Hidden: CUDA inputs give CUDA boxes."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    locations, boxes, distances = _random_matched_boxes(10, dtype=torch.float32)
    assert_close(apply_deltas((distances / 8).to(cuda_device()), locations.to(cuda_device()), 8),
                 boxes[:, :4].to(cuda_device()), "CUDA boxes", rtol=1e-5, atol=1e-4)


def _expected_centerness(deltas: torch.Tensor) -> torch.Tensor:
    values = []
    for left, top, right, bottom in deltas.tolist():
        if left == top == right == bottom == -1:
            values.append(-1.0)
        else:
            values.append(math.sqrt(min(left, right) * min(top, bottom) / (max(left, right) * max(top, bottom))))
    return torch.tensor(values, dtype=deltas.dtype)


@check(CENTERNESS, published=True)
def centerness_published(env: Env) -> None:
    """Published: [0.30860671401, 0.1666666716, -1.0] for the notebook's boxes (the last is background)."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    boxes = _NOTEBOOK_BOXES.clone()
    boxes[2] = -1
    deltas = env.reference("one_stage_detector.py").fcos_get_deltas_from_locations(_NOTEBOOK_LOCATIONS, boxes, 8)
    assert_close(centerness(deltas), torch.tensor([0.30860671401, 0.1666666716, -1.0]), "centerness targets",
                 rtol=1e-6, atol=1e-7)


@check(CENTERNESS)
def centerness_formula_float64(env: Env) -> None:
    """Hidden: sqrt(min(l,r) min(t,b) / (max(l,r) max(t,b))) in float64, background rows -1 among them."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    _, _, distances = _random_matched_boxes(40, seed=3)
    deltas = distances / 8
    deltas[[3, 17, 18]] = -1
    assert_close(centerness(deltas), _expected_centerness(deltas), "float64 centerness", rtol=1e-12, atol=1e-12)


@check(CENTERNESS)
def centerness_scale_free_and_empty(env: Env) -> None:
    """Hidden: scaling the deltas does not change the centerness; N = 0 gives shape (0,)."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    _, _, distances = _random_matched_boxes(20, dtype=torch.float32, seed=4)
    assert_close(centerness(distances * 4), centerness(distances / 8), "centerness of deltas at stride 8 vs pixels",
                 rtol=1e-5, atol=1e-6)
    assert_close(centerness(distances), _expected_centerness(distances), "float32 centerness", rtol=1e-5, atol=1e-6)
    empty = centerness(torch.zeros(0, 4))
    if tuple(empty.shape) != (0,):
        raise AssertionError(f"no deltas must give shape (0,), got {tuple(empty.shape)}")


@check(CENTERNESS, needs_cuda=True)
def centerness_cuda(env: Env) -> None:
    """Hidden: CUDA deltas give a CUDA centerness."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    _, _, distances = _random_matched_boxes(20, dtype=torch.float32, seed=4)
    assert_close(centerness(distances.to(cuda_device())), _expected_centerness(distances).to(cuda_device()),
                 "CUDA centerness", rtol=1e-5, atol=1e-6)
