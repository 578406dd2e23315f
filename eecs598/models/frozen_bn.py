"""Frozen BatchNorm: a trunk's ``BatchNorm2d`` layers replaced by ``torchvision.ops.FrozenBatchNorm2d``.

Why: BatchNorm in training mode normalises with the statistics of the current batch. With small batches
(4 images per step, as with gradient accumulation on a small GPU) those statistics are noisy, and the
running statistics learnt on ImageNet drift towards them. A frozen layer keeps the statistics and the
affine parameters it had and applies them as a fixed per-channel scale and shift, in training and in
evaluation alike (detectron2 and torchvision's detection references do the same for their trunks).

A frozen layer's ``weight`` / ``bias`` / ``running_mean`` / ``running_var`` are buffers, not parameters
(the optimiser does not see them), and its state-dict entries lack ``num_batches_tracked``:
:func:`holds_frozen_batchnorm` recognises such a state dict, so that loading code can freeze the model it
rebuilt before loading it (``eecs598.tools.detector.load_checkpoint_weights``).
"""
from typing import Mapping

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["count_frozen_batchnorm", "freeze_batchnorm", "holds_frozen_batchnorm"]


def _frozen_copy(norm: nn.BatchNorm2d, name: str) -> FrozenBatchNorm2d:
    """A ``FrozenBatchNorm2d`` with ``norm``'s eps, statistics and affine parameters (same device and dtype)."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f"freeze_batchnorm: the BatchNorm2d {name!r} keeps no running statistics "
                         f"(track_running_stats=False), so there is nothing to freeze it with")
    like = norm.running_mean
    frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps).to(device=like.device, dtype=like.dtype)
    with torch.no_grad():
        frozen.running_mean.copy_(norm.running_mean)
        frozen.running_var.copy_(norm.running_var)
        if norm.affine:
            frozen.weight.copy_(norm.weight)
            frozen.bias.copy_(norm.bias)
    return frozen


def freeze_batchnorm(module: nn.Module, prefix: str = "") -> int:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by a ``FrozenBatchNorm2d`` holding its
    eps, running statistics and affine parameters; returns how many were replaced.

    In FCOS these are exactly the trunk's layers (the FPN has no norm, and the head's optional norm is
    GroupNorm, which normalises each image on its own and needs no freezing). Subclasses of BatchNorm2d
    (e.g. a synced BatchNorm) are replaced too.

    Raises:
        ValueError: a BatchNorm2d without running statistics (``track_running_stats=False``), naming it.
    """
    replaced = 0
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _frozen_copy(child, path))
            replaced += 1
        else:
            replaced += freeze_batchnorm(child, prefix=f"{path}.")
    return replaced


def count_frozen_batchnorm(module: nn.Module) -> int:
    """How many ``FrozenBatchNorm2d`` layers ``module`` holds."""
    return sum(isinstance(m, FrozenBatchNorm2d) for m in module.modules())


def holds_frozen_batchnorm(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the state dict of a model whose BatchNorm layers were frozen: it holds BatchNorm statistics
    (``*.running_mean``) but no ``*.num_batches_tracked`` counter (``FrozenBatchNorm2d`` keeps none)."""
    has_statistics = any(key.endswith(".running_mean") for key in state_dict)
    return has_statistics and not any(key.endswith(".num_batches_tracked") for key in state_dict)
