"""Checks of ``FCOSPredictionNetwork``: layer layout, initialisation, and outputs against the reference head
loaded with the same (trusted) weights."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Check, assert_close, assert_same_keys, devices, entry, randn, register, tensor, type_name

HEAD = "FCOSPredictionNetwork"
_OUTPUT_NAMES = ("class logits", "box deltas", "centerness logits")


def _build_head(env, num_classes: int, in_channels: int, stem_channels) -> nn.Module:
    torch.manual_seed(0)
    return env.student_attr("one_stage_detector.py", HEAD)(num_classes, in_channels, list(stem_channels))


def _check_outputs(outputs, levels, what: str):
    """The three per-level dicts of a head's forward, or an ``AssertionError``."""
    if not isinstance(outputs, list) or len(outputs) != 3:
        raise AssertionError(f"{what}: forward must return [class_logits, boxreg_deltas, centerness_logits], got "
                             f"{type_name(outputs)}")
    for name, output in zip(_OUTPUT_NAMES, outputs):
        assert_same_keys(output, list(levels), f"{what}: {name}")
    return outputs


def _describe_conv(module) -> object:
    """A conv layer as plain data: ``[type, in, out, kernel, stride, padding]`` (the type only otherwise)."""
    if isinstance(module, nn.Conv2d):
        return ["Conv2d", module.in_channels, module.out_channels, list(module.kernel_size), list(module.stride),
                list(module.padding) if isinstance(module.padding, tuple) else module.padding]
    return [type(module).__name__]


@register
class HeadShapes224(Check):
    """Published: outputs (2, 784|196|49, 20), (.., 4), (.., 1) for 224x224 features."""

    check_name = "head_shapes_224"
    function = HEAD
    published = True

    def inputs(self, ref):
        return {name: randn(2, 64, size, size, seed=index) for index, (name, size) in
                enumerate((("p3", 28), ("p4", 14), ("p5", 7)))}

    def probe(self, env, x):
        head = _build_head(env, 20, 64, [64, 64])
        with torch.no_grad():
            return {"outputs": head(dict(x))}

    def judge(self, answer, x, ref):
        outputs = _check_outputs(answer["outputs"], ("p3", "p4", "p5"), "224x224 features")
        for what, output, channels in zip(_OUTPUT_NAMES, outputs, (20, 4, 1)):
            for name, rows in (("p3", 784), ("p4", 196), ("p5", 49)):
                shape = tuple(tensor(output[name], f"{what} of {name}").shape)
                if shape != (2, rows, channels):
                    raise AssertionError(f"{what} of {name}: shape {shape}, expected {(2, rows, channels)}")


@register
class HeadLayers(Check):
    """Hidden: stem_cls/stem_box are conv3x3+ReLU pairs following stem_channels; 3x3 pred_cls/box/ctr."""

    function = HEAD

    def probe(self, env, x):
        head = _build_head(env, 7, 8, [32, 16])
        layout = {}
        for name in ("stem_cls", "stem_box"):
            stem = getattr(head, name, None)
            layout[name] = ([_describe_conv(layer) for layer in stem] if isinstance(stem, nn.Sequential)
                            else type(stem).__name__)
        for name in ("pred_cls", "pred_box", "pred_ctr"):
            layout[name] = _describe_conv(getattr(head, name, None))
        return layout

    def judge(self, answer, x, ref):
        for stem_name in ("stem_cls", "stem_box"):
            layers = answer[stem_name]
            if not isinstance(layers, list):
                raise AssertionError(f"{stem_name} must be an nn.Sequential, got {layers}")
            kinds = [layer[0] if isinstance(layer, list) and layer else "?" for layer in layers]
            if kinds != ["Conv2d", "ReLU", "Conv2d", "ReLU"]:
                raise AssertionError(f"{stem_name} for stem_channels [32, 16] must be Conv2d, ReLU, Conv2d, ReLU; got {kinds}")
            for conv, (c_in, c_out) in zip(layers[0::2], ((8, 32), (32, 16))):
                if conv[1:] != [c_in, c_out, [3, 3], [1, 1], [1, 1]]:
                    raise AssertionError(f"{stem_name}: expected a 3x3 conv {c_in} -> {c_out} with stride 1, padding 1; "
                                         f"got in/out/kernel/stride/padding {conv[1:]}")
        for name, c_out in (("pred_cls", 7), ("pred_box", 4), ("pred_ctr", 1)):
            conv = answer[name]
            if not isinstance(conv, list) or conv[:1] != ["Conv2d"]:
                raise AssertionError(f"{name} must be an nn.Conv2d, got {conv[0] if isinstance(conv, list) else conv}")
            if conv[1:] != [16, c_out, [3, 3], [1, 1], [1, 1]]:
                raise AssertionError(f"{name}: expected a 3x3 conv 16 -> {c_out} with stride 1, padding 1; "
                                     f"got in/out/kernel/stride/padding {conv[1:]}")


@register
class HeadInitialisation(Check):
    """Hidden: conv weights ~ Normal(0, 0.01), biases 0, pred_cls bias -log((1 - 0.01) / 0.01)."""

    function = HEAD

    def probe(self, env, x):
        head = _build_head(env, 20, 64, [64, 64])
        convs = {name: {"weight": module.weight, "bias": module.bias}
                 for name, module in head.named_modules() if isinstance(module, nn.Conv2d)}
        return {"convs": convs, "pred": [type(getattr(head, n, None)).__name__ for n in ("pred_cls", "pred_box", "pred_ctr")]}

    def judge(self, answer, x, ref):
        for name, kind in zip(("pred_cls", "pred_box", "pred_ctr"), answer["pred"]):
            if kind != "Conv2d":
                raise AssertionError(f"{name} must be an nn.Conv2d, got {kind}")
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for name, conv in answer["convs"].items():
            weight = tensor(entry(conv, "weight", name), f"{name}.weight").double()
            if weight.numel() >= 5000 and not (0.008 < float(weight.std()) < 0.012 and abs(float(weight.mean())) < 0.002):
                raise AssertionError(f"{name}.weight: std {float(weight.std()):.4f}, mean {float(weight.mean()):.4f}; "
                                     "expected Normal(0, 0.01)")
            bias = conv["bias"]
            if bias is None:
                raise AssertionError(f"{name} has no bias")
            expected = prior_bias if name == "pred_cls" else 0.0
            bias = tensor(bias, f"{name}.bias")
            assert_close(bias, torch.full_like(bias, expected), f"{name}.bias", rtol=1e-6, atol=1e-6)


class _HeadRows(Check):
    """Outputs on non-square maps against the reference head with the same weights: rows x-major."""

    compares_with_reference = True
    function = HEAD
    dtype = torch.float32
    device = "cpu"

    def inputs(self, ref):
        key = ("head rows weights",)
        if key not in ref.cache:  # the reference head's layout and names, large random weights
            torch.manual_seed(0)
            head = ref.module("one_stage_detector.py").FCOSPredictionNetwork(6, 8, [12])
            ref.cache[key] = {name: randn(*value.shape, seed=index, scale=0.3)
                              for index, (name, value) in enumerate(head.state_dict().items())}
        return {"weights": ref.cache[key], "p3": randn(2, 8, 3, 5, seed=20, dtype=self.dtype),
                "p4": randn(2, 8, 5, 2, seed=21, dtype=self.dtype)}

    def probe(self, env, x):
        head = _build_head(env, 6, 8, [12])
        head.load_state_dict(x["weights"], strict=True)  # names of the course's layout (stem_cls.0.weight, ...)
        head = head.to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            outputs = head({name: x[name].to(self.device) for name in ("p3", "p4")})
        return {"outputs": outputs, "devices": devices(outputs)}

    def judge(self, answer, x, ref):
        if self.device != "cpu" and any(d != "cuda" for level in answer["devices"] for d in level.values()):
            raise AssertionError("outputs must stay on the features' CUDA device")
        outputs = _check_outputs(answer["outputs"], ("p3", "p4"), "non-square maps")
        expected = ref.expected(self, x)["outputs"]
        tolerance = {"rtol": 1e-4, "atol": 1e-5} if self.dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
        for what, output, wanted in zip(_OUTPUT_NAMES, outputs, expected):
            for name in ("p3", "p4"):
                height, width = x[name].shape[-2:]
                assert_close(output[name], wanted[name],
                             f"{what} of a map with H={height}, W={width}: row i must be the pixel of location row i "
                             "(x-major: x slow, y fast)", check_dtype=True, **tolerance)


@register
class HeadRowsFollowLocations(_HeadRows):
    """Hidden: on non-square maps prediction rows are flattened x-major, like the locations."""


@register
class HeadFloat64(_HeadRows):
    """Hidden: a float64 head on float64 features gives float64 outputs in x-major order."""

    dtype = torch.float64


@register
class HeadCuda(_HeadRows):
    """Hidden: the head runs on the GPU and keeps the x-major order."""

    device = "cuda"
    needs_cuda = True
