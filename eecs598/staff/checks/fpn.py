"""Checks of ``DetectorBackboneWithFPN``: layout, shapes, and the top-down sum against the reference FPN run
with the same trusted weights (trunk, lateral convs; identity output convs)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Check, assert_close, assert_same_keys, construct, cuda_device, devices, randn, register, tensor

BACKBONE = "DetectorBackboneWithFPN"
_LEVELS = ("p3", "p4", "p5")
_LATERAL_CHANNELS = (64, 160, 400)


def _build_backbone(env, out_channels: int) -> nn.Module:
    key = ("backbone", out_channels)
    if key not in env.cache:
        torch.manual_seed(0)
        env.cache[key] = construct(env.student_attr("common.py", BACKBONE), out_channels).eval()
    return env.cache[key]


def _fpn_convs(model: nn.Module):
    """``(lateral 1x1 convs, output 3x3 convs)`` of ``model.fpn_params``, or an error saying what it holds."""
    fpn_params = getattr(model, "fpn_params", None)
    if not isinstance(fpn_params, nn.ModuleDict):
        raise TypeError(f"self.fpn_params must be an nn.ModuleDict, got {type(fpn_params).__name__}")
    convs = [m for m in fpn_params.modules() if isinstance(m, nn.Conv2d)]
    laterals = [c for c in convs if c.kernel_size == (1, 1)]
    outputs = [c for c in convs if c.kernel_size == (3, 3)]
    if len(laterals) != 3 or len(outputs) != 3 or len(convs) != 6:
        raise ValueError(f"self.fpn_params must hold 3 lateral 1x1 convs and 3 output 3x3 convs, found "
                         f"{len(laterals)} 1x1, {len(outputs)} 3x3 and {len(convs) - len(laterals) - len(outputs)} other")
    return laterals, outputs


def _load_weights(model: nn.Module, x) -> None:
    """The trusted trunk weights, the trusted lateral convs (found by their input channels) and identity
    output convs: the FPN's outputs are then fixed by the top-down sum alone."""
    model.backbone.load_state_dict(x["trunk"], strict=True)
    laterals, outputs = _fpn_convs(model)
    with torch.no_grad():
        for conv in laterals:
            if conv.in_channels not in _LATERAL_CHANNELS or conv.weight.shape != x[f"lateral{conv.in_channels}"].shape:
                raise ValueError(f"lateral conv {conv} does not map 64, 160 or 400 channels to out_channels")
            conv.weight.copy_(x[f"lateral{conv.in_channels}"])
            if conv.bias is not None:
                conv.bias.copy_(x[f"lateral{conv.in_channels}_bias"])
        for conv in outputs:
            conv.weight.zero_()
            channels = min(conv.in_channels, conv.out_channels)
            conv.weight[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            if conv.bias is not None:
                conv.bias.zero_()


def _trusted_weights(ref, out_channels: int = 16):
    """The reference backbone's trunk weights (seed 0) and random lateral convs, made once per run."""
    key = ("fpn weights", out_channels)
    if key not in ref.cache:
        torch.manual_seed(0)
        model = construct(ref.module("common.py").DetectorBackboneWithFPN, out_channels)
        weights = {"trunk": {name: value.clone() for name, value in model.backbone.state_dict().items()}}
        for index, channels in enumerate(_LATERAL_CHANNELS):
            weights[f"lateral{channels}"] = randn(out_channels, channels, 1, 1, seed=100 + index, scale=0.1)
            weights[f"lateral{channels}_bias"] = randn(out_channels, seed=110 + index, scale=0.1)
        ref.cache[key] = weights
    return ref.cache[key]


def _check_shapes(feats, batch: int, channels: int, height: int, width: int, what: str) -> None:
    assert_same_keys(feats, list(_LEVELS), f"{what}: forward output")
    for name, stride in zip(_LEVELS, (8, 16, 32)):
        expected = (batch, channels, height // stride, width // stride)
        shape = tuple(tensor(feats[name], f"{what}: {name}").shape)
        if shape != expected:
            raise AssertionError(f"{what}: {name} has shape {shape}, expected {expected}")


@register
class FpnShapes224(Check):
    """Published: p3/p4/p5 of a (2, 3, 224, 224) batch are (2, 64, 28|14|7, 28|14|7), in this order."""

    check_name = "fpn_shapes_224"
    function = BACKBONE
    published = True

    def inputs(self, ref):
        return {"images": randn(2, 3, 224, 224, seed=1)}

    def probe(self, env, x):
        with torch.no_grad():
            return {"feats": _build_backbone(env, 64)(x["images"])}

    def judge(self, answer, x, ref):
        _check_shapes(answer["feats"], 2, 64, 224, 224, "a 224x224 batch")


@register
class FpnLayers(Check):
    """fpn_params holds 1x1 laterals 64/160/400 -> C and 3x3 (padding 1) output convs C -> C."""

    function = BACKBONE

    def probe(self, env, x):
        model = _build_backbone(env, 16)
        fpn_params = getattr(model, "fpn_params", None)
        convs = ([[list(c.kernel_size), c.in_channels, c.out_channels, list(c.stride), list(c.padding)]
                  for c in fpn_params.modules() if isinstance(c, nn.Conv2d)] if isinstance(fpn_params, nn.Module) else None)
        return {"container": type(fpn_params).__name__, "convs": convs, "strides": dict(model.fpn_strides)}

    def judge(self, answer, x, ref):
        if answer["container"] != "ModuleDict":
            raise AssertionError(f"self.fpn_params must be an nn.ModuleDict, got {answer['container']}")
        convs = answer["convs"]
        laterals = [c for c in convs if c[0] == [1, 1]]
        outputs = [c for c in convs if c[0] == [3, 3]]
        if len(laterals) != 3 or len(outputs) != 3 or len(convs) != 6:
            raise AssertionError(f"self.fpn_params must hold 3 lateral 1x1 convs and 3 output 3x3 convs, found "
                                 f"{len(laterals)} 1x1, {len(outputs)} 3x3 and {len(convs) - len(laterals) - len(outputs)} other")
        if sorted(c[1] for c in laterals) != [64, 160, 400] or any(c[2] != 16 for c in laterals):
            raise AssertionError("lateral 1x1 convs must map the backbone's 64, 160 and 400 channels to out_channels=16, "
                                 f"got {sorted((c[1], c[2]) for c in laterals)}")
        for conv in outputs:
            if conv[1:] != [16, 16, [1, 1], [1, 1]]:
                raise AssertionError("output 3x3 convs must be out_channels -> out_channels with stride 1 and padding 1, "
                                     f"got in/out/stride/padding {conv[1:]}")
        if answer["strides"] != {"p3": 8, "p4": 16, "p5": 32}:
            raise AssertionError(f"fpn_strides changed: {answer['strides']}")


class _TopDown(Check):
    """Outputs with the trusted weights against the reference FPN's."""

    compares_with_reference = True
    function = BACKBONE
    dtype = torch.float32
    device = "cpu"
    size = (96, 160)
    tolerance = {"rtol": 1e-4, "atol": 1e-5}

    def inputs(self, ref):
        return dict(_trusted_weights(ref), images=randn(2, 3, *self.size, seed=2, dtype=self.dtype))

    def probe(self, env, x):
        model = _build_backbone(env, 16)
        _load_weights(model, x)
        model = model.to(device=self.device, dtype=self.dtype)
        try:
            with torch.no_grad():
                feats = model(x["images"].to(self.device))
        finally:
            model.to(device="cpu", dtype=torch.float32)
        return {"feats": feats, "devices": devices(feats)}

    def judge(self, answer, x, ref):
        if self.device != "cpu" and set(answer["devices"].values()) != {"cuda"}:
            raise AssertionError(f"the maps must stay on the input's CUDA device, got {answer['devices']}")
        feats, expected = answer["feats"], ref.expected(self, x)["feats"]
        assert_same_keys(feats, list(_LEVELS), "forward output")
        for name in _LEVELS:
            assert_close(feats[name], expected[name],
                         f"{name} (lateral conv + upsampled coarser level, then the 3x3 conv)", **self.tolerance)


@register
class FpnTopDownSum(_TopDown):
    """Hidden: outputs are the standard top-down FPN (nearest upsampling) on a non-square 96x160 batch."""


@register
class FpnOtherSizesAndBatches(Check):
    """Hidden: batch 1 at 160x256 and batch 3 at 64x96 give (B, C, H/8|16|32, W/8|16|32)."""

    function = BACKBONE
    _SIZES = ((1, 160, 256), (3, 64, 96))

    def inputs(self, ref):
        return {f"{b}x{h}x{w}": randn(b, 3, h, w, seed=3) for b, h, w in self._SIZES}

    def probe(self, env, x):
        model = _build_backbone(env, 16)
        with torch.no_grad():
            return {key: model(images) for key, images in x.items()}

    def judge(self, answer, x, ref):
        for batch, height, width in self._SIZES:
            _check_shapes(answer[f"{batch}x{height}x{width}"], batch, 16, height, width,
                          f"input {(batch, 3, height, width)}")


@register
class FpnFloat64(_TopDown):
    """Hidden: a float64 model on float64 images returns float64 maps with the top-down values."""

    dtype = torch.float64
    size = (64, 128)
    tolerance = {"rtol": 1e-9, "atol": 1e-10}


@register
class FpnCuda(_TopDown):
    """Hidden: on the GPU the maps stay on the GPU and equal the reference's."""

    needs_cuda = True
    device = cuda_device().type
    size = (64, 96)
    tolerance = {"rtol": 1e-2, "atol": 1e-3}
