"""Checks of ``FCOSPredictionNetwork``."""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn

from .base import (Env, assert_close, assert_same_keys, check, cuda_device)


# ================================================================================================
# one_stage_detector.py: FCOSPredictionNetwork
# ================================================================================================

HEAD = "FCOSPredictionNetwork"


def _x_major(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, W*H, C), row x * H + y."""
    return feature_map.permute(0, 3, 2, 1).reshape(feature_map.shape[0], -1, feature_map.shape[1])


def _student_head(env: Env, num_classes: int, in_channels: int, stem_channels: List[int]) -> nn.Module:
    torch.manual_seed(0)
    return env.student_attr("one_stage_detector.py", HEAD)(num_classes, in_channels, stem_channels)


def _head_outputs(head: nn.Module, feats: Dict[str, torch.Tensor]):
    with torch.no_grad():
        outputs = head(feats)
    if not isinstance(outputs, (list, tuple)) or len(outputs) != 3:
        raise AssertionError("forward must return [class_logits, boxreg_deltas, centerness_logits]")
    for what, output in zip(("class logits", "box deltas", "centerness logits"), outputs):
        assert_same_keys(output, list(feats.keys()), what)
    return outputs


@check(HEAD, published=True)
def head_shapes_224(env: Env) -> None:
    """Published: outputs (2, 784|196|49, 20), (.., 4), (.., 1) for 224x224 features."""
    head = _student_head(env, 20, 64, [64, 64])
    feats = {name: torch.randn(2, 64, size, size) for name, size in (("p3", 28), ("p4", 14), ("p5", 7))}
    outputs = _head_outputs(head, feats)
    for what, output, channels in zip(("class logits", "box deltas", "centerness logits"), outputs, (20, 4, 1)):
        for name, rows in (("p3", 784), ("p4", 196), ("p5", 49)):
            if tuple(output[name].shape) != (2, rows, channels):
                raise AssertionError(f"{what} of {name}: shape {tuple(output[name].shape)}, expected {(2, rows, channels)}")


@check(HEAD)
def head_layers(env: Env) -> None:
    """Hidden: stem_cls/stem_box are conv3x3+ReLU pairs following stem_channels; 3x3 pred_cls/box/ctr."""
    head = _student_head(env, 7, 8, [32, 16])
    for stem_name in ("stem_cls", "stem_box"):
        stem = getattr(head, stem_name, None)
        if not isinstance(stem, nn.Sequential):
            raise AssertionError(f"{stem_name} must be an nn.Sequential, got {type(stem).__name__}")
        layers = list(stem)
        kinds = [type(layer).__name__ for layer in layers]
        if kinds != ["Conv2d", "ReLU", "Conv2d", "ReLU"]:
            raise AssertionError(f"{stem_name} for stem_channels [32, 16] must be Conv2d, ReLU, Conv2d, ReLU; got {kinds}")
        for conv, (c_in, c_out) in zip(layers[0::2], ((8, 32), (32, 16))):
            if (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) != (c_in, c_out, (3, 3), (1, 1), (1, 1)):
                raise AssertionError(f"{stem_name}: expected a 3x3 conv {c_in} -> {c_out} with stride 1, padding 1; got {conv}")
    for name, c_out in (("pred_cls", 7), ("pred_box", 4), ("pred_ctr", 1)):
        conv = getattr(head, name, None)
        if not isinstance(conv, nn.Conv2d):
            raise AssertionError(f"{name} must be an nn.Conv2d, got {type(conv).__name__}")
        if (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) != (16, c_out, (3, 3), (1, 1), (1, 1)):
            raise AssertionError(f"{name}: expected a 3x3 conv 16 -> {c_out} with stride 1, padding 1; got {conv}")


@check(HEAD)
def head_initialisation(env: Env) -> None:
    """Hidden: conv weights ~ Normal(0, 0.01), biases 0, pred_cls bias -log((1 - 0.01) / 0.01)."""
    head = _student_head(env, 20, 64, [64, 64])
    prior_bias = -math.log((1 - 0.01) / 0.01)
    for name in ("pred_cls", "pred_box", "pred_ctr"):
        if not isinstance(getattr(head, name, None), nn.Conv2d):
            raise AssertionError(f"{name} must be an nn.Conv2d, got {type(getattr(head, name, None)).__name__}")
    for name, module in head.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        weight = module.weight.detach()
        if weight.numel() >= 5000 and not (0.008 < float(weight.std()) < 0.012 and abs(float(weight.mean())) < 0.002):
            raise AssertionError(f"{name}.weight: std {float(weight.std()):.4f}, mean {float(weight.mean()):.4f}; "
                                 "expected Normal(0, 0.01)")
        if module.bias is None:
            raise AssertionError(f"{name} has no bias")
        expected = prior_bias if name == "pred_cls" else 0.0
        assert_close(module.bias.detach(), torch.full_like(module.bias.detach(), expected), f"{name}.bias", rtol=1e-6, atol=1e-6)


def _check_head_rows(env: Env, dtype: torch.dtype, device: torch.device) -> None:
    head = _student_head(env, 6, 8, [12]).to(device=device, dtype=dtype)
    with torch.no_grad():  # large random weights: every pixel gives clearly different outputs
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, dtype=dtype) * 0.3)
    generator = torch.Generator().manual_seed(2)
    feats = {"p3": torch.randn(2, 8, 3, 5, generator=generator, dtype=dtype).to(device),
             "p4": torch.randn(2, 8, 5, 2, generator=generator, dtype=dtype).to(device)}
    class_logits, box_deltas, ctr_logits = _head_outputs(head, feats)
    with torch.no_grad():
        for name, feature in feats.items():
            box_feature = head.stem_box(feature)
            expected = {
                "class logits": _x_major(head.pred_cls(head.stem_cls(feature))),
                "box deltas": _x_major(head.pred_box(box_feature)),
                "centerness logits (predicted from the box stem)": _x_major(head.pred_ctr(box_feature)),
            }
            for (what, wanted), output in zip(expected.items(), (class_logits, box_deltas, ctr_logits)):
                height, width = feature.shape[-2:]
                assert_close(output[name], wanted,
                             f"{what} of a map with H={height}, W={width}: row i must be the pixel of location "
                             "row i (x-major: x slow, y fast)",
                             rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-5 if dtype == torch.float32 else 1e-12)


@check(HEAD)
def head_rows_follow_locations(env: Env) -> None:
    """Hidden: on non-square maps prediction rows are flattened x-major, like the locations."""
    _check_head_rows(env, torch.float32, torch.device("cpu"))


@check(HEAD)
def head_float64(env: Env) -> None:
    """Hidden: a float64 head on float64 features gives float64 outputs in x-major order."""
    _check_head_rows(env, torch.float64, torch.device("cpu"))


@check(HEAD, needs_cuda=True)
def head_cuda(env: Env) -> None:
    """Hidden: the head runs on the GPU and keeps the x-major order."""
    _check_head_rows(env, torch.float32, cuda_device())
