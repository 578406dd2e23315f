"""Checks of ``FCOS.forward`` (losses) and ``FCOS.inference``.

Every check builds the student's ``FCOS(5, 16, [16])`` and loads the reference model's initial weights
(made by the trusted side from seed 0), so the student's outputs can be compared with the reference's on
the same weights and inputs; the backbone and head inside are the reference's (isolation). The learning
run's result is judged by the trusted side itself: it evaluates the reference loss at the weights the
student's training produced.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from .base import (Check, assert_close, construct, cuda_device, devices, entry, register, synthetic_detection_batch,
                   tensor, type_name)

FORWARD = "FCOS.forward"
INFERENCE = "FCOS.inference"
_LOSS_NAMES = ("loss_cls", "loss_box", "loss_ctr")
_CONFIG = (5, 16, (16,))


def _trusted_state(ref) -> Dict[str, torch.Tensor]:
    """The reference FCOS's initial weights and buffers (seed 0), made once per grading run."""
    if "fcos state" not in ref.cache:
        torch.manual_seed(0)
        model = construct(ref.module("one_stage_detector.py").FCOS, _CONFIG[0], _CONFIG[1], list(_CONFIG[2]))
        ref.cache["fcos state"] = {name: value.clone() for name, value in model.state_dict().items()}
    return ref.cache["fcos state"]


def _model(env, x, dtype=torch.float32):
    """The student's FCOS, built once per process, reset to the trusted weights, in training mode, normaliser
    150 (the course's start)."""
    if "fcos" not in env.cache:
        torch.manual_seed(0)
        env.cache["fcos"] = construct(env.student_attr("one_stage_detector.py", "FCOS"), _CONFIG[0], _CONFIG[1],
                                      list(_CONFIG[2]))
    model = env.cache["fcos"]
    model.float()
    missing, _ = model.load_state_dict(x["state"], strict=False)
    if missing:
        raise KeyError(f"FCOS lacks the parameters {missing[:3]}...; keep self.backbone and self.pred_net")
    model.to(dtype).train()
    model.zero_grad(set_to_none=True)
    model._normalizer = 150.0
    return model


def _batch_inputs(ref, *batch_args, **batch_kwargs):
    images, gt_boxes = synthetic_detection_batch(*batch_args, **batch_kwargs)
    return {"state": _trusted_state(ref), "images": images, "gt_boxes": gt_boxes}


def _losses_and_normalizer(model, images, gt_boxes) -> dict:
    model._normalizer = 150.0
    with torch.no_grad():
        losses = model(images, gt_boxes)
    return {"losses": losses, "normalizer": float(model._normalizer)}


def _check_losses(losses, what: str) -> Dict[str, torch.Tensor]:
    if not isinstance(losses, dict) or set(losses) != set(_LOSS_NAMES):
        raise AssertionError(f"{what}: training forward must return a dict with keys {list(_LOSS_NAMES)}, got "
                             f"{list(losses)[:5] if isinstance(losses, dict) else type_name(losses)}")
    for name, value in losses.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise AssertionError(f"{what}: {name} must be a scalar tensor")
        if not bool(torch.isfinite(value)):
            raise AssertionError(f"{what}: {name} is {value.item()}")
    return losses


def _compare_losses(actual: dict, expected: dict, what: str, rtol: float) -> None:
    losses = _check_losses(entry(actual, "losses", what), what)
    for name in _LOSS_NAMES:
        assert_close(losses[name], expected["losses"][name], f"{what}: {name}", rtol=rtol, atol=1e-7)
    normalizer = actual["normalizer"]
    if not isinstance(normalizer, float) or not math.isclose(normalizer, expected["normalizer"], rel_tol=1e-6):
        raise AssertionError(f"{what}: self._normalizer is {normalizer} after the forward pass, not the course's "
                             "0.9 * old + 0.1 * foreground locations per image")


# ================================================================================================
# FCOS.forward
# ================================================================================================


@register
class FcosLossesAndEvalPublished(Check):
    """Published: a training forward returns three finite scalar losses; eval returns (boxes, classes, scores)."""

    function = FORWARD
    published = True

    def inputs(self, ref):
        return _batch_inputs(ref, 2, 128, 128, 5)

    def probe(self, env, x):
        model = _model(env, x)
        losses = model(x["images"], x["gt_boxes"])
        model.eval()
        with torch.no_grad():
            outputs = model(x["images"][:1], test_score_thresh=0.05, test_nms_thresh=0.5)
        return {"losses": losses, "eval": outputs}

    def judge(self, answer, x, ref):
        _check_losses(answer["losses"], "2 images of 128x128")
        outputs = answer["eval"]
        if not isinstance(outputs, list) or len(outputs) != 3:
            raise AssertionError("eval mode must return (pred_boxes, pred_classes, pred_scores)")


class _LossesMatch(Check):
    """Losses and normaliser of the student's forward against the reference's, batch by batch."""

    compares_with_reference = True
    function = FORWARD
    batches = {"batch 2 at 128x128": dict(batch_size=2, height=128, width=128, num_classes=5, seed=1)}
    dtype = torch.float32
    rtol = 1e-4

    def inputs(self, ref):
        x = {"state": _trusted_state(ref)}
        for what, kwargs in self.batches.items():
            images, gt_boxes = synthetic_detection_batch(**kwargs, dtype=self.dtype)
            x[what] = {"images": images, "gt_boxes": gt_boxes}
        return x

    def probe(self, env, x):
        model = _model(env, x, self.dtype)
        return {what: _losses_and_normalizer(model, x[what]["images"], x[what]["gt_boxes"]) for what in self.batches}

    def judge(self, answer, x, ref):
        expected = ref.expected(self, x)
        for what in self.batches:
            _compare_losses(answer[what], expected[what], what, self.rtol)
            if self.dtype == torch.float64 and any(v.dtype != torch.float64 for v in answer[what]["losses"].values()):
                raise AssertionError(f"float64 model: loss dtypes {[str(v.dtype) for v in answer[what]['losses'].values()]}")


@register
class FcosLossesMatchReference(_LossesMatch):
    """Hidden: the three losses and the normaliser equal the reference's (batch 2, 128x128, padded GT)."""


@register
class FcosLossesOtherSizesAndBatches(_LossesMatch):
    """Hidden: losses equal the reference's for batch 3 at 96x160 (one image without boxes) and batch 1."""

    batches = {"batch 3 at 96x160": dict(batch_size=3, height=96, width=160, num_classes=5, seed=2),
               "batch 1 at 160x96": dict(batch_size=1, height=160, width=96, num_classes=5, boxes_per_image=(4,), seed=3)}


@register
class FcosNormalizerIsAnEma(Check):
    """Hidden: over two calls the normaliser follows 0.9 * old + 0.1 * foreground per image."""

    compares_with_reference = True
    function = FORWARD

    def inputs(self, ref):
        return _batch_inputs(ref, 2, 128, 128, 5, seed=4)

    def probe(self, env, x):
        model = _model(env, x)
        calls = []
        with torch.no_grad():
            for _ in range(2):
                calls.append({"losses": model(x["images"], x["gt_boxes"]), "normalizer": float(model._normalizer)})
        return {"calls": calls}

    def judge(self, answer, x, ref):
        expected = ref.expected(self, x)["calls"]
        calls = answer["calls"]
        if not isinstance(calls, list) or len(calls) != 2:
            raise AssertionError("two training calls must give two results")
        for step, (actual, wanted) in enumerate(zip(calls, expected), start=1):
            _compare_losses(actual, wanted, f"call {step}", rtol=1e-4)


@register
class FcosLossesFloat64(_LossesMatch):
    """Hidden: a float64 model gives float64 losses equal to the reference's."""

    batches = {"float64 batch": dict(batch_size=2, height=64, width=96, num_classes=5, seed=5)}
    dtype = torch.float64
    rtol = 1e-9


@register
class FcosLossesReachEveryPart(Check):
    """Hidden: backward of the losses gives the FPN and the head the reference's (finite, non-zero) gradients."""

    compares_with_reference = True
    function = FORWARD
    _PARTS = ("pred_net.pred_cls", "pred_net.pred_box", "pred_net.pred_ctr", "backbone.fpn_params")

    def inputs(self, ref):
        return _batch_inputs(ref, 2, 96, 96, 5, seed=6)

    def probe(self, env, x):
        model = _model(env, x)
        sum(model(x["images"], x["gt_boxes"]).values()).backward()
        return {"grads": {name: p.grad for name, p in model.named_parameters() if name.startswith(self._PARTS)}}

    def judge(self, answer, x, ref):
        grads, expected = answer["grads"], ref.expected(self, x)["grads"]
        for part in self._PARTS:
            names = [name for name in expected if name.startswith(part)]
            if any(grads.get(name) is None for name in names):
                raise AssertionError(f"the losses give no gradient to {part}")
            values = [tensor(grads[name], f"gradient of {name}").double() for name in names]
            if not all(bool(torch.isfinite(g).all()) for g in values) or all(float(g.abs().sum()) == 0 for g in values):
                raise AssertionError(f"the gradients of {part} are zero or not finite")
            for name, value in zip(names, values):
                wanted = expected[name].double()
                if value.shape != wanted.shape or float((value - wanted).norm()) > 1e-3 * float(wanted.norm()) + 1e-8:
                    raise AssertionError(f"the gradient of {name} differs from the reference losses' gradient")


@register
class FcosEvalModeDispatchesToInference(Check):
    """Hidden: eval-mode forward returns inference() of the predictions (as the reference)."""

    compares_with_reference = True
    function = FORWARD

    def inputs(self, ref):
        return _batch_inputs(ref, 1, 96, 128, 5, seed=7)

    def probe(self, env, x):
        model = _model(env, x).eval()
        with torch.no_grad():
            return {"detections": model(x["images"], test_score_thresh=0.0, test_nms_thresh=0.6)}

    def judge(self, answer, x, ref):
        _compare_detections(answer["detections"], ref.expected(self, x)["detections"], "eval forward of one 96x128 image")


@register
class FcosShortLearningRun(Check):
    """Hidden: 20 AdamW steps on two synthetic images at least halve the total loss."""

    function = FORWARD

    def inputs(self, ref):
        return _batch_inputs(ref, 2, 64, 64, 2, boxes_per_image=(2,), seed=0)

    def probe(self, env, x):
        model = _model(env, x)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(20):
            loss = sum(model(x["images"], x["gt_boxes"]).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        return {"state": model.state_dict()}

    def judge(self, answer, x, ref):
        if "learning run: loss before" not in ref.cache:
            ref.cache["learning run: loss before"] = _reference_total_loss(ref, x["state"], x)
        before = ref.cache["learning run: loss before"]
        after = _reference_total_loss(ref, entry(answer, "state", "trained weights"), x)
        if not after < 0.5 * before:
            raise AssertionError(f"20 training steps took the total loss from {before:.4f} to {after:.4f}; "
                                 "expected at least a halving")


def _reference_total_loss(ref, state, x) -> float:
    """The reference model's total training loss (normaliser 150) at ``state``, checked key by key."""
    model = ref.cache.get("fcos loss model")
    if model is None:
        torch.manual_seed(0)
        model = ref.cache["fcos loss model"] = construct(ref.module("one_stage_detector.py").FCOS, _CONFIG[0],
                                                         _CONFIG[1], list(_CONFIG[2]))
    wanted = model.state_dict()
    if not isinstance(state, dict):
        raise AssertionError(f"the trained weights must be a state dict, got {type_name(state)}")
    for name, value in wanted.items():
        got = state.get(name)
        if not isinstance(got, torch.Tensor) or got.shape != value.shape or got.dtype != value.dtype:
            raise AssertionError(f"the trained weights lack {name} (or it has another shape or dtype)")
    model.load_state_dict({name: state[name] for name in wanted}, strict=True)
    model.float().train()
    model._normalizer = 150.0
    with torch.no_grad():
        return float(sum(model(x["images"], x["gt_boxes"]).values()))


@register
class FcosLossesCuda(Check):
    """Hidden: on the GPU the losses equal the reference's."""

    compares_with_reference = True
    function = FORWARD
    needs_cuda = True

    def inputs(self, ref):
        return _batch_inputs(ref, 2, 96, 96, 5, seed=8)

    def probe(self, env, x):
        model = _model(env, x).to(cuda_device())
        try:
            with torch.no_grad():
                losses = model(x["images"].to(cuda_device()), x["gt_boxes"].to(cuda_device()))
        finally:
            model.cpu()
        return {"losses": losses, "devices": devices(losses)}

    def judge(self, answer, x, ref):
        losses = _check_losses(answer["losses"], "CUDA batch")
        expected = ref.expected(self, x)["losses"]
        for name in _LOSS_NAMES:
            assert_close(losses[name], expected[name], f"CUDA {name}", rtol=1e-2, atol=1e-4)


# ================================================================================================
# FCOS.inference
# ================================================================================================


def _compare_detections(actual, expected, what: str, rtol: float = 1e-5, atol: float = 1e-4) -> None:
    if not isinstance(actual, list) or len(actual) != 3:
        raise AssertionError(f"{what}: must return (pred_boxes, pred_classes, pred_scores), got {type_name(actual)}")
    boxes, classes, scores = actual
    for name, value, wanted in zip(("pred_boxes", "pred_classes", "pred_scores"), actual, expected):
        if not isinstance(value, torch.Tensor):
            raise AssertionError(f"{what}: {name} must be a tensor, got {type_name(value)}")
        if value.dim() == 0 or value.shape[0] != wanted.shape[0]:
            raise AssertionError(f"{what}: {value.shape[0] if value.dim() else 'no'} detections, not the "
                                 "reference's number")
    assert_close(boxes, expected[0], f"{what}: pred_boxes", rtol=rtol, atol=atol)
    if classes.dtype != torch.long:
        raise AssertionError(f"{what}: pred_classes must be torch.long, got {classes.dtype}")
    assert_close(classes, expected[1], f"{what}: pred_classes", rtol=0, atol=0)
    assert_close(scores, expected[2], f"{what}: pred_scores (sqrt(class prob * centerness), by decreasing score)",
                 rtol=rtol, atol=1e-6)


def _head_outputs(ref, height: int, width: int, dtype=torch.float32, seed: int = 0, class_offset: float = -1.0,
                  delta_scale: float = 6.0) -> dict:
    """Random head outputs for one image, and its locations from the reference (trusted side)."""
    generator = torch.Generator().manual_seed(seed)
    strides = {"p3": 8, "p4": 16, "p5": 32}
    shapes = {name: (1, 1, math.ceil(height / s), math.ceil(width / s)) for name, s in strides.items()}
    locations = ref.module("common.py").get_fpn_location_coords(shapes, strides, dtype=dtype)
    cls, deltas, ctr = {}, {}, {}
    for name, locs in locations.items():
        num = locs.shape[0]
        cls[name] = (3 * torch.randn(1, num, 5, generator=generator) + class_offset).to(dtype)
        deltas[name] = (delta_scale * torch.rand(1, num, 4, generator=generator)).to(dtype)
        ctr[name] = (2 * torch.randn(1, num, 1, generator=generator)).to(dtype)
    return {"state": _trusted_state(ref), "images": torch.zeros(1, 3, height, width, dtype=dtype),
            "locations": locations, "cls": cls, "deltas": deltas, "ctr": ctr}


class _Inference(Check):
    """The student's inference on random head outputs against the reference's, on the same model."""

    compares_with_reference = True
    function = INFERENCE
    size = (128, 128)
    head = {}
    thresholds = (0.3, 0.5)
    device = "cpu"

    def inputs(self, ref):
        return _head_outputs(ref, *self.size, **self.head)

    def probe(self, env, x):
        model = _model(env, x).eval().to(self.device)
        move = lambda tensors: {name: t.to(self.device) for name, t in tensors.items()}  # noqa: E731
        try:
            detections = model.inference(x["images"].to(self.device), move(x["locations"]), move(x["cls"]),
                                         move(x["deltas"]), move(x["ctr"]), test_score_thresh=self.thresholds[0],
                                         test_nms_thresh=self.thresholds[1])
        finally:
            model.cpu()
        return {"detections": detections, "devices": devices(detections)}

    def judge(self, answer, x, ref):
        what = self.description.split(": ", 1)[-1]
        if self.device != "cpu" and answer["devices"] != ["cuda"] * 3:
            raise AssertionError(f"{what}: outputs must stay on the inputs' CUDA device")
        dtype = self.head.get("dtype", torch.float32)
        tolerance = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {}
        _compare_detections(answer["detections"], ref.expected(self, x)["detections"], what, **tolerance)


@register
class InferenceOutputsPublished(Check):
    """Published: eval forward of one image returns boxes (N, 4), classes (N,) long, scores (N,) by score."""

    function = INFERENCE
    published = True

    def inputs(self, ref):
        return _batch_inputs(ref, 1, 128, 128, 5, seed=9)

    def probe(self, env, x):
        model = _model(env, x).eval()
        with torch.no_grad():
            return {"outputs": model(x["images"], test_score_thresh=0.05, test_nms_thresh=0.5)}

    def judge(self, answer, x, ref):
        outputs = answer["outputs"]
        if not isinstance(outputs, list) or len(outputs) != 3:
            raise AssertionError("inference must return (pred_boxes, pred_classes, pred_scores)")
        boxes, classes, scores = (tensor(value, name) for value, name in zip(outputs, ("pred_boxes", "pred_classes",
                                                                                          "pred_scores")))
        num = boxes.shape[0] if boxes.dim() else -1
        if tuple(boxes.shape) != (num, 4) or tuple(classes.shape) != (num,) or tuple(scores.shape) != (num,):
            raise AssertionError(f"shapes {tuple(boxes.shape)}, {tuple(classes.shape)}, {tuple(scores.shape)}; expected "
                                 "(N, 4), (N,), (N,)")
        if classes.dtype != torch.long:
            raise AssertionError(f"pred_classes must be torch.long, got {classes.dtype}")
        if num > 1 and not bool((scores[:-1] >= scores[1:]).all()):
            raise AssertionError("pred_scores must be sorted by decreasing score")


@register
class InferenceMatchesReference(_Inference):
    """Hidden: detections equal the reference's on random head outputs for a 128x128 image."""


@register
class InferenceNonSquareImage(_Inference):
    """Hidden: on a 96x160 image boxes are decoded at the right locations and clipped to W=160, H=96."""

    size = (96, 160)
    head = {"seed": 1, "delta_scale": 12.0}


@register
class InferenceThresholds(_Inference):
    """Hidden: thresholds are used (0.5 / 0.3) and None means the defaults 0.3 / 0.5."""

    size = (128, 96)

    def inputs(self, ref):
        return {"given": _head_outputs(ref, *self.size, seed=2), "defaults": _head_outputs(ref, *self.size, seed=3)}

    def probe(self, env, x):
        outputs = {}
        for key, thresholds in (("given", (0.5, 0.3)), ("defaults", (None, None))):
            model = _model(env, x[key]).eval()
            data = x[key]
            outputs[key] = model.inference(data["images"], data["locations"], data["cls"], data["deltas"], data["ctr"],
                                           test_score_thresh=thresholds[0], test_nms_thresh=thresholds[1])
        return outputs

    def judge(self, answer, x, ref):
        expected = ref.expected(self, x)
        _compare_detections(answer["given"], expected["given"], "score 0.5, NMS 0.3")
        _compare_detections(answer["defaults"], expected["defaults"], "thresholds None (defaults 0.3 / 0.5)")


@register
class InferenceWithoutDetections(_Inference):
    """Hidden: when no score passes the threshold the outputs are empty: (0, 4), (0,), (0,)."""

    compares_with_reference = False
    size = (64, 64)
    head = {"class_offset": -40.0}

    def judge(self, answer, x, ref):
        detections = answer["detections"]
        if not isinstance(detections, list) or len(detections) != 3:
            raise AssertionError(f"must return (pred_boxes, pred_classes, pred_scores), got {type_name(detections)}")
        shapes = tuple(tuple(tensor(d, "detections").shape) for d in detections)
        if shapes != ((0, 4), (0,), (0,)):
            raise AssertionError(f"empty result shapes {shapes}; expected (0, 4), (0,), (0,)")
        if detections[1].dtype != torch.long:
            raise AssertionError(f"pred_classes must be torch.long, got {detections[1].dtype}")


@register
class InferenceFloat64(_Inference):
    """Hidden: float64 head outputs give float64 boxes and scores equal to the reference's."""

    size = (96, 96)
    head = {"dtype": torch.float64, "seed": 4}


@register
class InferenceCuda(_Inference):
    """Hidden: CUDA head outputs give CUDA detections equal to the reference's."""

    size = (96, 128)
    head = {"seed": 5}
    device = "cuda"
    needs_cuda = True
