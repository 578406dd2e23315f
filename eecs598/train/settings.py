"""Training settings: every value that shapes a run's trajectory, validated once, in one place.

:class:`TrainSettings` is what a checkpoint stores and a resume compares. Its validation is the only one:
``train_detector`` raises its messages as they are, and the command line (``train_fcos.py``) shows the same
messages with the option's flag in place of the field name (:class:`SettingError` carries the field).
"""
import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import SettingError

__all__ = ["PRECISIONS", "SettingError", "TrainSettings", "lr_milestones", "check_loss_weight_names"]

PRECISIONS = ("fp32", "bf16", "fp16")


def _fail(message: str) -> None:
    raise ValueError(f"train_detector: {message}")


def _refuse(field: str, requirement: str) -> None:
    """Raise the one message a bad setting gets (``train_detector`` and the command line show it)."""
    raise SettingError("train_detector", field, requirement)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)



@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Every training setting that changes the trajectory; validated on construction.

    The first fields are the course's (``train_detector``'s positional arguments); the rest are
    opt-in options whose defaults give the course's behaviour. A checkpoint stores ``as_dict()`` and a
    resume refuses a checkpoint whose settings differ (see :meth:`resume_differences`).

    Attributes:
        learning_rate, weight_decay, max_iters: as in the course.
        optimizer: ``"sgd"`` (momentum ``momentum``) or ``"adamw"``.
        warmup_iters, warmup_factor: linear LR warm-up from ``warmup_factor * lr`` over that many iterations.
        milestones: iterations where the LR is multiplied by 0.1; default ``(int(0.6 * max_iters),
            int(0.9 * max_iters))`` as the course's ``MultiStepLR``.
        grad_clip_norm: clip the global gradient norm (None: no clipping).
        ema_decay: keep an EMA of the weights and hand it back at the end (None: off).
        loss_weights: ``{loss_name: weight}`` for the optimised total (missing names: 1).
        shuffle: a new seeded permutation of the data every epoch.
        precision: ``"fp32"``; ``"bf16"`` (autocast) or ``"fp16"`` (autocast + gradient scaler).
        fused_optimizer: use the optimiser's fused kernels (one kernel for all parameters).
        augment: random horizontal flip / scale jitter of every training batch on the device, e.g.
            ``{"flip_prob": 0.5, "scale_range": (0.8, 1.25)}`` (``eecs598.data.augment.random_flip_scale_batch``;
            seeded by data seed and iteration, so resumable). None: off (the course's).
        accumulate_steps: micro-batches (loader batches) per optimiser step (gradient accumulation); every
            count of the run (``max_iters``, warm-up, milestones, log and checkpoint periods) is in optimiser
            steps. 1: one batch per step (the course's).
        freeze_bn: replace the trunk's ``BatchNorm2d`` by ``torchvision.ops.FrozenBatchNorm2d`` (statistics and
            affine parameters kept and no longer trained; ``eecs598.models.frozen_bn``). False: the course's.
        batch_size, num_samples, world_size: facts about the data (a resume must see the same).
    """

    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    max_iters: int = 5000
    optimizer: str = "sgd"
    momentum: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 1e-3
    milestones: Optional[Tuple[int, ...]] = None
    grad_clip_norm: Optional[float] = None
    ema_decay: Optional[float] = None
    loss_weights: Optional[Dict[str, float]] = None
    shuffle: bool = True
    precision: str = "fp32"
    fused_optimizer: bool = False
    augment: Optional[Dict[str, Any]] = None
    accumulate_steps: int = 1
    freeze_bn: bool = False
    batch_size: Optional[int] = None
    num_samples: Optional[int] = None
    world_size: int = 1

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        for name, minimum in (("max_iters", 1), ("warmup_iters", 0), ("world_size", 1), ("accumulate_steps", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                _refuse(name, f"must be an int >= {minimum}, got {value!r}")
            set_(name, int(value))
        if not (_is_real(self.learning_rate) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            _refuse("learning_rate", f"must be a finite number > 0, got {self.learning_rate!r}")
        if not (_is_real(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            _refuse("weight_decay", f"must be a finite number >= 0, got {self.weight_decay!r}")
        if not (_is_real(self.momentum) and 0 <= self.momentum < 1):
            _refuse("momentum", f"must be in [0, 1), got {self.momentum!r}")
        if not (_is_real(self.warmup_factor) and 0 < self.warmup_factor <= 1):
            _refuse("warmup_factor", f"must be in (0, 1], got {self.warmup_factor!r}")
        if self.optimizer not in ("sgd", "adamw"):
            _refuse("optimizer", f"must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.ema_decay is not None and not (_is_real(self.ema_decay) and 0.0 < self.ema_decay < 1.0):
            _refuse("ema_decay", f"must be in (0, 1) or None, got {self.ema_decay!r}")
        if self.grad_clip_norm is not None and not (_is_real(self.grad_clip_norm) and self.grad_clip_norm > 0
                                                    and math.isfinite(self.grad_clip_norm)):
            _refuse("grad_clip_norm", f"must be a finite number > 0 or None, got {self.grad_clip_norm!r}")
        if not isinstance(self.freeze_bn, (bool, np.bool_)):
            _refuse("freeze_bn", f"must be True or False, got {self.freeze_bn!r}")
        set_("freeze_bn", bool(self.freeze_bn))
        if self.precision not in PRECISIONS:
            _refuse("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        set_("learning_rate", float(self.learning_rate))
        set_("weight_decay", float(self.weight_decay))
        set_("momentum", float(self.momentum))
        set_("warmup_factor", float(self.warmup_factor))
        if self.grad_clip_norm is not None:
            set_("grad_clip_norm", float(self.grad_clip_norm))
        if self.ema_decay is not None:
            set_("ema_decay", float(self.ema_decay))
        set_("loss_weights", _check_loss_weights(self.loss_weights))
        set_("augment", _check_augment(self.augment))
        if self.milestones is None:
            set_("milestones", lr_milestones(self.max_iters))
        else:
            set_("milestones", tuple(int(m) for m in self.milestones))

    def as_dict(self) -> Dict[str, Any]:
        """Plain-value dict (stored in checkpoints; ``TrainSettings(**d)`` rebuilds it)."""
        values = dataclasses.asdict(self)
        values["milestones"] = list(self.milestones)
        return values

    def resume_differences(self, saved: Dict[str, Any], ignore: Sequence[str] = ()) -> Dict[str, Tuple]:
        """``{name: (saved value, this value)}`` for every setting that differs from ``saved``.

        A setting missing from ``saved`` (a checkpoint written before the setting existed) counts as its
        default, which is the behaviour that checkpoint was trained with.
        """
        mine = self.as_dict()
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        saved = {k: saved.get(k, defaults[k]) for k in mine}
        return {k: (saved[k], v) for k, v in mine.items() if k not in ignore and saved[k] != v}


def _check_loss_weights(loss_weights: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
    """Validate the weights' values (names are checked against the detector's losses later)."""
    if loss_weights is None or len(loss_weights) == 0:
        return None
    if not isinstance(loss_weights, dict):
        _refuse("loss_weights", f"must be a dict {{loss_name: weight}}, got {type(loss_weights).__name__}")
    checked = {}
    for name, weight in sorted(loss_weights.items()):
        if not isinstance(name, str):
            _fail(f"loss_weights keys must be loss names (str), got {name!r}")
        if not (_is_real(weight) and math.isfinite(weight) and weight >= 0):
            _refuse(f"loss_weights[{name!r}]", f"must be a finite number >= 0, got {weight!r} (a negative weight "
                  f"would train towards a worse model)")
        checked[name] = float(weight)
    return checked


def _check_augment(augment: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Validate the on-device augmentation settings (``flip_prob`` in [0, 1], ``scale_range`` lo <= hi)."""
    if not augment:
        return None
    if not isinstance(augment, dict) or set(augment) - {"flip_prob", "scale_range"}:
        _refuse("augment", f"must be None or a dict with keys 'flip_prob' and/or 'scale_range', got {augment!r}")
    flip_prob = augment.get("flip_prob", 0.0)
    if not (_is_real(flip_prob) and 0.0 <= flip_prob <= 1.0):
        _refuse("augment['flip_prob']", f"must be in [0, 1], got {flip_prob!r}")
    scale_range = augment.get("scale_range")
    if scale_range is not None:
        if not (isinstance(scale_range, (list, tuple)) and len(scale_range) == 2
                and all(_is_real(v) and math.isfinite(v) and v > 0 for v in scale_range)
                and scale_range[0] <= scale_range[1]):
            _refuse("augment['scale_range']", f"must be (low, high) with 0 < low <= high, got {scale_range!r}")
        scale_range = (float(scale_range[0]), float(scale_range[1]))
    return {"flip_prob": float(flip_prob), "scale_range": scale_range}


def check_loss_weight_names(loss_weights: Optional[Dict[str, float]], loss_names: Sequence[str]) -> None:
    """Refuse weights for losses the detector does not return (a typo would otherwise be ignored)."""
    unknown = sorted(set(loss_weights or {}) - set(loss_names))
    if unknown:
        _fail(f"loss_weights names {unknown} are not losses of this detector; valid names: "
              f"{', '.join(loss_names)}")


def lr_milestones(max_iters: int) -> Tuple[int, int]:
    """The course's ``MultiStepLR`` milestones: 60% and 90% of ``max_iters``."""
    return int(0.6 * max_iters), int(0.9 * max_iters)

