"""Checks of ``FCOS.forward`` (losses) and ``FCOS.inference``."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

from .base import (Env, _construct, assert_close, check, cuda_device,
                   synthetic_detection_batch)


# ================================================================================================
# one_stage_detector.py: FCOS.forward (training losses) and FCOS.inference
# ================================================================================================

FORWARD = "FCOS.forward"
INFERENCE = "FCOS.inference"
_LOSS_NAMES = ("loss_cls", "loss_box", "loss_ctr")


def _fcos_pair(env: Env, num_classes: int = 5, channels: int = 16, stems=(16,), dtype=torch.float32):
    """``(student FCOS, reference FCOS)`` with the same fresh weights, in training mode, normaliser 150.

    Built once per configuration (building costs more than most checks) and reset to the initial
    weights, buffers, normaliser and gradients on every call."""
    key = ("fcos", num_classes, channels, tuple(stems))
    if key not in env.cache:
        torch.manual_seed(0)
        reference = _construct(env.reference("one_stage_detector.py").FCOS, num_classes, channels, list(stems))
        student = _construct(env.student_attr("one_stage_detector.py", "FCOS"), num_classes, channels, list(stems))
        initial_state = {name: value.clone() for name, value in reference.state_dict().items()}
        env.cache[key] = (student, reference, initial_state)
    student, reference, initial_state = env.cache[key]
    for model in (reference, student):
        model.float()
        missing, _ = model.load_state_dict(initial_state, strict=False)
        if missing:
            raise AssertionError(f"FCOS lacks the parameters {missing[:3]}...; keep self.backbone and self.pred_net")
        model.to(dtype).train()
        model.zero_grad(set_to_none=True)
        model._normalizer = 150.0
    return student, reference


def _losses(model: nn.Module, images, gt_boxes, what: str) -> Dict[str, torch.Tensor]:
    losses = model(images, gt_boxes)
    if not isinstance(losses, dict) or set(losses) != set(_LOSS_NAMES):
        raise AssertionError(f"{what}: training forward must return a dict with keys {list(_LOSS_NAMES)}, got "
                             f"{list(losses) if isinstance(losses, dict) else type(losses).__name__}")
    for name, value in losses.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise AssertionError(f"{what}: {name} must be a scalar tensor")
        if not bool(torch.isfinite(value)):
            raise AssertionError(f"{what}: {name} is {value.item()}")
    return losses


def _compare_losses(env: Env, student, reference, images, gt_boxes, what: str, rtol: float) -> None:
    for model in (student, reference):
        model._normalizer = 150.0
    with torch.no_grad():
        expected = reference(images, gt_boxes)
        actual = _losses(student, images, gt_boxes, what)
    for name in _LOSS_NAMES:
        assert_close(actual[name], expected[name], f"{what}: {name}", rtol=rtol, atol=1e-7)
    normalizer = float(getattr(student, "_normalizer", float("nan")))
    if not math.isclose(normalizer, float(reference._normalizer), rel_tol=1e-6):
        raise AssertionError(f"{what}: self._normalizer is {normalizer} after the forward pass, expected "
                             f"{float(reference._normalizer)} (0.9 * old + 0.1 * foreground locations per image)")


@check(FORWARD, published=True)
def fcos_losses_and_eval_published(env: Env) -> None:
    """Published: a training forward returns three finite scalar losses; eval returns (boxes, classes, scores)."""
    student, _ = _fcos_pair(env)  # the notebook's check, on a smaller model
    images, gt_boxes = synthetic_detection_batch(2, 128, 128, 5)
    _losses(student, images, gt_boxes, "2 images of 128x128")
    student.eval()
    with torch.no_grad():
        outputs = student(images[:1], test_score_thresh=0.05, test_nms_thresh=0.5)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
        raise AssertionError("eval mode must return (pred_boxes, pred_classes, pred_scores)")


@check(FORWARD)
def fcos_losses_match_reference(env: Env) -> None:
    """Hidden: the three losses and the normaliser equal the reference's (batch 2, 128x128, padded GT)."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 128, 128, 5, seed=1)
    _compare_losses(env, student, reference, images, gt_boxes, "batch 2 at 128x128", rtol=1e-4)


@check(FORWARD)
def fcos_losses_other_sizes_and_batches(env: Env) -> None:
    """Hidden: losses equal the reference's for batch 3 at 96x160 (one image without boxes) and batch 1."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(3, 96, 160, 5, seed=2)
    _compare_losses(env, student, reference, images, gt_boxes, "batch 3 at 96x160", rtol=1e-4)
    images, gt_boxes = synthetic_detection_batch(1, 160, 96, 5, boxes_per_image=(4,), seed=3)
    _compare_losses(env, student, reference, images, gt_boxes, "batch 1 at 160x96", rtol=1e-4)


@check(FORWARD)
def fcos_normalizer_is_an_ema(env: Env) -> None:
    """Hidden: over two calls the normaliser follows 0.9 * old + 0.1 * foreground per image."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 128, 128, 5, seed=4)
    student._normalizer = reference._normalizer = 150.0
    with torch.no_grad():
        for step in (1, 2):
            expected = reference(images, gt_boxes)
            actual = _losses(student, images, gt_boxes, f"call {step}")
            for name in _LOSS_NAMES:
                assert_close(actual[name], expected[name], f"call {step}: {name}", rtol=1e-4, atol=1e-7)
            if not math.isclose(float(student._normalizer), float(reference._normalizer), rel_tol=1e-6):
                raise AssertionError(f"after call {step} self._normalizer is {float(student._normalizer)}, expected "
                                     f"{float(reference._normalizer)}")


@check(FORWARD)
def fcos_losses_float64(env: Env) -> None:
    """Hidden: a float64 model gives float64 losses equal to the reference's."""
    student, reference = _fcos_pair(env, dtype=torch.float64)
    images, gt_boxes = synthetic_detection_batch(2, 64, 96, 5, dtype=torch.float64, seed=5)
    _compare_losses(env, student, reference, images, gt_boxes, "float64 batch", rtol=1e-9)
    losses = student(images, gt_boxes)
    if any(value.dtype != torch.float64 for value in losses.values()):
        raise AssertionError(f"float64 model: loss dtypes {[str(v.dtype) for v in losses.values()]}")


@check(FORWARD)
def fcos_losses_reach_every_part(env: Env) -> None:
    """Hidden: backward of the losses gives finite, non-zero gradients to the FPN and the head."""
    student, _ = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 96, 96, 5, seed=6)
    losses = _losses(student, images, gt_boxes, "batch 2 at 96x96")
    sum(losses.values()).backward()
    for part in ("pred_net.pred_cls", "pred_net.pred_box", "pred_net.pred_ctr", "backbone.fpn_params"):
        grads = [p.grad for name, p in student.named_parameters() if name.startswith(part)]
        if not grads or any(g is None for g in grads):
            raise AssertionError(f"the losses give no gradient to {part}")
        if not all(bool(torch.isfinite(g).all()) for g in grads) or all(float(g.abs().sum()) == 0 for g in grads):
            raise AssertionError(f"the gradients of {part} are zero or not finite")


@check(FORWARD)
def fcos_eval_mode_dispatches_to_inference(env: Env) -> None:
    """Hidden: eval-mode forward returns inference() of the predictions (as the reference)."""
    student, reference = _fcos_pair(env)
    student.eval()
    reference.eval()
    images, _ = synthetic_detection_batch(1, 96, 128, 5, seed=7)
    with torch.no_grad():
        actual = student(images, test_score_thresh=0.0, test_nms_thresh=0.6)
        expected = reference(images, test_score_thresh=0.0, test_nms_thresh=0.6)
    _compare_detections(actual, expected, "eval forward of one 96x128 image")


@check(FORWARD)
def fcos_short_learning_run(env: Env) -> None:
    """Hidden: 20 AdamW steps on two synthetic images at least halve the total loss."""
    student, _ = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 64, 64, 2, boxes_per_image=(2,), seed=0)

    def total_loss() -> float:
        student._normalizer = 150.0
        with torch.no_grad():
            return float(sum(_losses(student, images, gt_boxes, "learning run").values()))

    before = total_loss()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for _ in range(20):
        loss = sum(_losses(student, images, gt_boxes, "learning run").values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimizer.step()
    after = total_loss()
    if not after < 0.5 * before:
        raise AssertionError(f"20 training steps took the total loss from {before:.4f} to {after:.4f}; "
                             "expected at least a halving")


@check(FORWARD, needs_cuda=True)
def fcos_losses_cuda(env: Env) -> None:
    """Hidden: on the GPU the losses equal the CPU ones."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 96, 96, 5, seed=8)
    for model in (student, reference):
        model._normalizer = 150.0
    with torch.no_grad():
        expected = reference(images, gt_boxes)
        student.to(cuda_device())
        actual = _losses(student, images.to(cuda_device()), gt_boxes.to(cuda_device()), "CUDA batch")
    for name in _LOSS_NAMES:
        assert_close(actual[name].cpu(), expected[name], f"CUDA {name}", rtol=1e-2, atol=1e-4)


def _compare_detections(actual, expected, what: str, rtol: float = 1e-5, atol: float = 1e-4) -> None:
    if not isinstance(actual, (tuple, list)) or len(actual) != 3:
        raise AssertionError(f"{what}: must return (pred_boxes, pred_classes, pred_scores), got {type(actual).__name__}")
    boxes, classes, scores = actual
    expected_boxes, expected_classes, expected_scores = expected
    for name, value, wanted in (("pred_boxes", boxes, expected_boxes), ("pred_classes", classes, expected_classes),
                                ("pred_scores", scores, expected_scores)):
        if not isinstance(value, torch.Tensor):
            raise AssertionError(f"{what}: {name} must be a tensor, got {type(value).__name__}")
        if value.shape[0] != wanted.shape[0]:
            raise AssertionError(f"{what}: {value.shape[0]} detections, expected {wanted.shape[0]}")
    assert_close(boxes, expected_boxes, f"{what}: pred_boxes", rtol=rtol, atol=atol)
    if classes.dtype != torch.long:
        raise AssertionError(f"{what}: pred_classes must be torch.long, got {classes.dtype}")
    assert_close(classes, expected_classes, f"{what}: pred_classes", rtol=0, atol=0)
    assert_close(scores, expected_scores, f"{what}: pred_scores (sqrt(class prob * centerness), by decreasing score)",
                 rtol=rtol, atol=1e-6)


def _inference_inputs(env: Env, height: int, width: int, num_classes: int, dtype=torch.float32, seed: int = 0,
                      class_offset: float = -1.0, delta_scale: float = 6.0):
    """Random head outputs for one image: ``(images, locations, cls, deltas, ctr)`` dicts per level."""
    generator = torch.Generator().manual_seed(seed)
    strides = {"p3": 8, "p4": 16, "p5": 32}
    shapes = {name: (1, 1, math.ceil(height / s), math.ceil(width / s)) for name, s in strides.items()}
    locations = env.reference("common.py").get_fpn_location_coords(shapes, strides, dtype=dtype)
    cls, deltas, ctr = {}, {}, {}
    for name, locs in locations.items():
        num = locs.shape[0]
        cls[name] = (3 * torch.randn(1, num, num_classes, generator=generator) + class_offset).to(dtype)
        deltas[name] = (delta_scale * torch.rand(1, num, 4, generator=generator)).to(dtype)
        ctr[name] = (2 * torch.randn(1, num, 1, generator=generator)).to(dtype)
    images = torch.zeros(1, 3, height, width, dtype=dtype)
    return images, locations, cls, deltas, ctr


def _inference_model(env: Env):
    if "inference_model" not in env.cache:
        student, _ = _fcos_pair(env)
        env.cache["inference_model"] = student.eval()
    return env.cache["inference_model"]


def _compare_inference(env: Env, what: str, height: int, width: int, dtype=torch.float32, seed: int = 0,
                       score_thresh=0.3, nms_thresh=0.5, device="cpu", **kwargs) -> None:
    model = _inference_model(env)
    reference_inference = env.reference("one_stage_detector.py").FCOS.inference
    images, locations, cls, deltas, ctr = _inference_inputs(env, height, width, 5, dtype=dtype, seed=seed, **kwargs)
    expected = reference_inference(model, images, locations, cls, deltas, ctr,
                                   test_score_thresh=score_thresh, test_nms_thresh=nms_thresh)
    move = lambda tensors: {name: t.to(device) for name, t in tensors.items()}  # noqa: E731
    model.to(device)
    try:
        actual = model.inference(images.to(device), move(locations), move(cls), move(deltas), move(ctr),
                                 test_score_thresh=score_thresh, test_nms_thresh=nms_thresh)
    finally:
        model.cpu()
    if device != "cpu":
        if not all(isinstance(t, torch.Tensor) and t.device.type == "cuda" for t in actual):
            raise AssertionError(f"{what}: outputs must stay on the inputs' CUDA device")
        actual = tuple(t.cpu() for t in actual)
    tolerance = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {}
    _compare_detections(actual, expected, what, **tolerance)


@check(INFERENCE, published=True)
def inference_outputs_published(env: Env) -> None:
    """Published: eval forward of one image returns boxes (N, 4), classes (N,) long, scores (N,) by score."""
    model = _inference_model(env)
    images, _ = synthetic_detection_batch(1, 128, 128, 5, seed=9)
    with torch.no_grad():
        outputs = model(images, test_score_thresh=0.05, test_nms_thresh=0.5)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
        raise AssertionError("inference must return (pred_boxes, pred_classes, pred_scores)")
    boxes, classes, scores = outputs
    num = boxes.shape[0]
    if tuple(boxes.shape) != (num, 4) or tuple(classes.shape) != (num,) or tuple(scores.shape) != (num,):
        raise AssertionError(f"shapes {tuple(boxes.shape)}, {tuple(classes.shape)}, {tuple(scores.shape)}; expected "
                             "(N, 4), (N,), (N,)")
    if classes.dtype != torch.long:
        raise AssertionError(f"pred_classes must be torch.long, got {classes.dtype}")
    if num > 1 and not bool((scores[:-1] >= scores[1:]).all()):
        raise AssertionError("pred_scores must be sorted by decreasing score")


@check(INFERENCE)
def inference_matches_reference(env: Env) -> None:
    """Hidden: detections equal the reference's on random head outputs for a 128x128 image."""
    _compare_inference(env, "128x128 image", 128, 128)


@check(INFERENCE)
def inference_non_square_image(env: Env) -> None:
    """Hidden: on a 96x160 image boxes are decoded at the right locations and clipped to W=160, H=96."""
    _compare_inference(env, "96x160 image", 96, 160, seed=1, delta_scale=12.0)


@check(INFERENCE)
def inference_thresholds(env: Env) -> None:
    """Hidden: thresholds are used (0.5 / 0.3) and None means the defaults 0.3 / 0.5."""
    _compare_inference(env, "score 0.5, NMS 0.3", 128, 96, seed=2, score_thresh=0.5, nms_thresh=0.3)
    _compare_inference(env, "thresholds None (defaults 0.3 / 0.5)", 128, 96, seed=3, score_thresh=None, nms_thresh=None)


@check(INFERENCE)
def inference_without_detections(env: Env) -> None:
    """Hidden: when no score passes the threshold the outputs are empty: (0, 4), (0,), (0,)."""
    model = _inference_model(env)
    images, locations, cls, deltas, ctr = _inference_inputs(env, 64, 64, 5, class_offset=-40.0)
    boxes, classes, scores = model.inference(images, locations, cls, deltas, ctr, test_score_thresh=0.3,
                                             test_nms_thresh=0.5)
    if (tuple(boxes.shape), tuple(classes.shape), tuple(scores.shape)) != ((0, 4), (0,), (0,)):
        raise AssertionError(f"empty result shapes {tuple(boxes.shape)}, {tuple(classes.shape)}, {tuple(scores.shape)}; "
                             "expected (0, 4), (0,), (0,)")
    if classes.dtype != torch.long:
        raise AssertionError(f"pred_classes must be torch.long, got {classes.dtype}")


@check(INFERENCE)
def inference_float64(env: Env) -> None:
    """Hidden: float64 head outputs give float64 boxes and scores equal to the reference's."""
    _compare_inference(env, "float64 inputs", 96, 96, dtype=torch.float64, seed=4)


@check(INFERENCE, needs_cuda=True)
def inference_cuda(env: Env) -> None:
    """Hidden: CUDA head outputs give CUDA detections equal to the CPU reference's."""
    _compare_inference(env, "CUDA inputs", 96, 128, seed=5, device="cuda")
