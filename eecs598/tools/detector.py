"""Building the course's FCOS from saved settings, and loading a trained one from its checkpoint.

Used by ``train_fcos.py`` (training and ``--eval-only``) and by every tool that takes ``--checkpoint``: the
model is rebuilt from the ``run_config`` the checkpoint stores, so nothing about the model is typed twice.
"""
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..data.datasets import VOC_CLASSES
from ..data.shapes import SHAPE_CLASSES
from ..models.frozen_bn import freeze_batchnorm, holds_frozen_batchnorm
from ..models.weights import dtype_problems
from ..train.checkpoint import CheckpointError, load_checkpoint

__all__ = ["MODEL_OPTION_KEYS", "build_fcos", "checkpoint_weights", "load_checkpoint_weights", "class_names_of",
           "LoadedDetector", "load_detector"]

# Model options of FCOS (keyword-only arguments), as the command line and the run config name them.
MODEL_OPTION_KEYS = ("backbone", "backbone_weights", "p6p7", "head_norm", "box_loss", "center_sampling_radius", "p2")
_KNOWN_CLASSES = {"voc": list(VOC_CLASSES), "shapes": list(SHAPE_CLASSES)}


def build_fcos(num_classes: int, fpn_channels: int, stem_channels: Sequence[int], pretrained: bool,
               **model_options) -> nn.Module:
    """``one_stage_detector.FCOS`` with these settings; its warnings (e.g. ImageNet weights unreachable
    offline) are printed as one ``WARNING:`` line each instead of Python's warning format."""
    from one_stage_detector import FCOS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = FCOS(num_classes=num_classes, fpn_channels=fpn_channels, stem_channels=list(stem_channels),
                     pretrained=pretrained, **model_options)
    for w in caught:
        print(f"WARNING: {w.message}", file=sys.stderr)
    return model


def checkpoint_weights(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The weights a finished run hands on: the weight average if training kept one, else the model's."""
    return checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"]


def load_checkpoint_weights(model: nn.Module, checkpoint: Dict[str, Any], path: str) -> None:
    """Load :func:`checkpoint_weights` into ``model`` (rebuilt from the checkpoint's settings).

    :func:`~eecs598.train.checkpoint.load_checkpoint` has already refused NaN or infinite weights; this also
    refuses integer tensors where the model holds floats (``load_state_dict`` would copy them as if they were
    weights) and weights that do not fit the model the settings describe. Weights of a run trained with
    ``freeze_bn`` (BatchNorm statistics without ``num_batches_tracked``) first freeze the model's BatchNorm
    layers the same way, so ``load_detector``, ``--eval-only``, predict and export load them.

    Raises:
        CheckpointError: naming ``path`` and the first few offending keys.
    """
    weights = checkpoint_weights(checkpoint)
    if holds_frozen_batchnorm(weights) and not holds_frozen_batchnorm(model.state_dict()):
        freeze_batchnorm(model)  # trained with freeze_bn: the same FrozenBatchNorm2d layers (no batch counters)
    wrong_kind = dtype_problems(weights, model.state_dict())
    if wrong_kind:
        raise CheckpointError(f"Checkpoint {path} holds weights of the wrong type ({'; '.join(wrong_kind)}), so it "
                              f"was not saved by the training engine.")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(str(e).split()).replace(". ", "; ")[:300]  # one sentence: the CLI shows the first
        raise CheckpointError(f"Checkpoint {path} holds weights that do not fit the model its saved settings describe "
                              f"({detail}), so the file was changed after training.") from e


def class_names_of(run_config: Dict[str, Any]) -> Optional[List[str]]:
    """Class names in class-id order from a checkpoint's run config (``class_names``, or the dataset's)."""
    names = run_config.get("class_names")
    if names is not None:
        return list(names)
    return _KNOWN_CLASSES.get(run_config.get("dataset"))


@dataclass
class LoadedDetector:
    """A trained detector with what its checkpoint says about it.

    Attributes:
        model: the ``FCOS``, in eval mode, with the checkpoint's weights (the weight average if kept).
        class_names: class id -> name list.
        image_size: the side of the training images (the input scale the model learnt).
        run_config: the checkpoint's saved settings.
    """

    model: nn.Module
    class_names: List[str]
    image_size: int
    run_config: Dict[str, Any]


def load_detector(checkpoint_path: str, device="cpu") -> LoadedDetector:
    """Rebuild the model a ``train_fcos.py`` checkpoint was trained with and load its weights.

    Raises:
        eecs598.train.checkpoint.CheckpointError: the file is missing, truncated or corrupt, or its weights are
            not finite, of the wrong type or do not fit its settings.
        ValueError: the checkpoint has no saved settings (not written by ``train_fcos.py``).
    """
    checkpoint = load_checkpoint(checkpoint_path, training_state=False)  # only the weights are needed here
    config = checkpoint.get("run_config") or {}
    names = class_names_of(config)
    missing = [k for k in ("fpn_channels", "stem_channels", "image_size") if k not in config]
    if missing or names is None:
        raise ValueError(f"{checkpoint_path} holds no model settings ({', '.join(missing) or 'class_names'} "
                         f"missing): it was not written by train_fcos.py, so the model cannot be rebuilt")
    options = {k: config[k] for k in MODEL_OPTION_KEYS if k in config}
    options.pop("backbone_weights", None)  # the trained weights follow; the trunk file is not needed
    model = build_fcos(len(names), config["fpn_channels"], config["stem_channels"], pretrained=False, **options)
    load_checkpoint_weights(model, checkpoint, checkpoint_path)
    model.to(device).eval()
    return LoadedDetector(model, names, int(config["image_size"]), config)
