"""Checks of ``DetectorBackboneWithFPN``."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

from .base import (Env, _construct, assert_close, assert_same_keys, check, cuda_device)


# ================================================================================================
# common.py: DetectorBackboneWithFPN
# ================================================================================================

BACKBONE = "DetectorBackboneWithFPN"


def _student_backbone(env: Env, out_channels: int) -> nn.Module:
    key = ("backbone", out_channels)
    if key not in env.cache:
        torch.manual_seed(0)
        env.cache[key] = _construct(env.student_attr("common.py", BACKBONE), out_channels).eval()
    return env.cache[key]


def _fpn_expected(model: nn.Module, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Standard top-down FPN with the student's lateral convs (found by their input channels) and
    identity output convs (set by :func:`_identity_output_convs`)."""
    feats = model.backbone(images)
    lateral = {}
    for conv in model.fpn_params.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1):
            lateral[conv.in_channels] = conv
    merged5 = lateral[400](feats["c5"])
    merged4 = lateral[160](feats["c4"]) + F.interpolate(merged5, size=feats["c4"].shape[-2:], mode="nearest")
    merged3 = lateral[64](feats["c3"]) + F.interpolate(merged4, size=feats["c3"].shape[-2:], mode="nearest")
    return {"p3": merged3, "p4": merged4, "p5": merged5}


def _fpn_convs(model: nn.Module):
    """``(lateral 1x1 convs, output 3x3 convs)`` of ``model.fpn_params``, with a message if that is not
    what it holds."""
    fpn_params = getattr(model, "fpn_params", None)
    if not isinstance(fpn_params, nn.ModuleDict):
        raise AssertionError(f"self.fpn_params must be an nn.ModuleDict, got {type(fpn_params).__name__}")
    convs = [m for m in fpn_params.modules() if isinstance(m, nn.Conv2d)]
    laterals = [c for c in convs if c.kernel_size == (1, 1)]
    outputs = [c for c in convs if c.kernel_size == (3, 3)]
    if len(laterals) != 3 or len(outputs) != 3 or len(convs) != 6:
        raise AssertionError(
            f"self.fpn_params must hold 3 lateral 1x1 convs and 3 output 3x3 convs, found {len(laterals)} "
            f"1x1, {len(outputs)} 3x3 and {len(convs) - len(laterals) - len(outputs)} other convs"
        )
    return laterals, outputs


def _identity_output_convs(model: nn.Module) -> None:
    _, outputs = _fpn_convs(model)
    with torch.no_grad():
        for conv in outputs:
            conv.weight.zero_()
            channels = min(conv.in_channels, conv.out_channels)
            conv.weight[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            if conv.bias is not None:
                conv.bias.zero_()


@check(BACKBONE, published=True)
def fpn_shapes_224(env: Env) -> None:
    """Published: p3/p4/p5 of a (2, 3, 224, 224) batch are (2, 64, 28|14|7, 28|14|7), in this order."""
    model = _student_backbone(env, 64)
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 224, 224))
    assert_same_keys(feats, ["p3", "p4", "p5"], "forward output")
    for name, size in (("p3", 28), ("p4", 14), ("p5", 7)):
        if tuple(feats[name].shape) != (2, 64, size, size):
            raise AssertionError(f"{name} has shape {tuple(feats[name].shape)}, expected {(2, 64, size, size)}")


@check(BACKBONE)
def fpn_layers(env: Env) -> None:
    """fpn_params holds 1x1 laterals 64/160/400 -> C and 3x3 (padding 1) output convs C -> C."""
    model = _student_backbone(env, 16)
    laterals, outputs = _fpn_convs(model)
    if sorted(c.in_channels for c in laterals) != [64, 160, 400] or any(c.out_channels != 16 for c in laterals):
        raise AssertionError(
            "lateral 1x1 convs must map the backbone's 64, 160 and 400 channels to out_channels=16, got "
            f"{sorted((c.in_channels, c.out_channels) for c in laterals)}"
        )
    for conv in outputs:
        if (conv.in_channels, conv.out_channels) != (16, 16) or conv.padding != (1, 1) or conv.stride != (1, 1):
            raise AssertionError(
                f"output 3x3 convs must be out_channels -> out_channels with stride 1 and padding 1, got {conv}"
            )
    if model.fpn_strides != {"p3": 8, "p4": 16, "p5": 32}:
        raise AssertionError(f"fpn_strides changed: {model.fpn_strides}")


@check(BACKBONE)
def fpn_top_down_sum(env: Env) -> None:
    """Hidden: outputs are the standard top-down FPN (nearest upsampling) on a non-square 96x160 batch."""
    model = _student_backbone(env, 16)
    _identity_output_convs(model)
    images = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model(images)
        expected = _fpn_expected(model, images)
    assert_same_keys(feats, ["p3", "p4", "p5"], "forward output")
    for name in ("p3", "p4", "p5"):
        assert_close(feats[name], expected[name], f"{name} (lateral conv + upsampled coarser level, then the 3x3 conv)",
                     rtol=1e-4, atol=1e-5)


@check(BACKBONE)
def fpn_other_sizes_and_batches(env: Env) -> None:
    """Hidden: batch 1 at 160x256 and batch 3 at 64x96 give (B, C, H/8|16|32, W/8|16|32)."""
    model = _student_backbone(env, 16)
    for batch, height, width in ((1, 160, 256), (3, 64, 96)):
        with torch.no_grad():
            feats = model(torch.randn(batch, 3, height, width))
        assert_same_keys(feats, ["p3", "p4", "p5"], "forward output")
        for name, stride in (("p3", 8), ("p4", 16), ("p5", 32)):
            expected = (batch, 16, height // stride, width // stride)
            if tuple(feats[name].shape) != expected:
                raise AssertionError(
                    f"input {(batch, 3, height, width)}: {name} has shape {tuple(feats[name].shape)}, expected {expected}"
                )


@check(BACKBONE)
def fpn_float64(env: Env) -> None:
    """Hidden: a float64 model on float64 images returns float64 maps with the top-down values."""
    model = _student_backbone(env, 16).double()
    try:
        _identity_output_convs(model)
        images = torch.randn(2, 3, 64, 128, dtype=torch.float64)
        with torch.no_grad():
            feats = model(images)
            expected = _fpn_expected(model, images)
        for name in ("p3", "p4", "p5"):
            assert_close(feats[name], expected[name], f"float64 {name}", rtol=1e-9, atol=1e-10)
    finally:
        model.float()


@check(BACKBONE, needs_cuda=True)
def fpn_cuda(env: Env) -> None:
    """Hidden: on the GPU the maps stay on the GPU and equal the CPU ones."""
    model = _student_backbone(env, 16)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        cpu = model(images)
        gpu = model.to(cuda_device())(images.to(cuda_device()))
    model.cpu()
    for name in ("p3", "p4", "p5"):
        assert_close(gpu[name].cpu(), cpu[name], f"CUDA {name}", rtol=1e-2, atol=1e-3)
        if gpu[name].device.type != "cuda":
            raise AssertionError(f"{name} is on {gpu[name].device}, expected the input's CUDA device")
