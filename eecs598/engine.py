"""The training engine behind ``a4_helper.train_detector``: a short loop with small units around it.

Reading order:

- :class:`TrainSettings`: every setting that shapes the trajectory, validated once; a checkpoint stores
  it and a resume compares it.
- :func:`build_optimizer`, :func:`learning_rate_factor`: SGD/AdamW and the warm-up + step schedule as a
  pure function of the iteration (so a resume needs no scheduler state).
- :class:`WeightEMA`: an exponential moving average of the weights.
- :class:`NonFiniteGuard`: stops before a non-finite loss or gradient lands, and puts the BatchNorm
  statistics that the failing forward pass already changed back (after any other failure in a step too).
- :class:`LossLog`: losses stay on the device and are fetched every ``sync_period`` iterations.
- :class:`Trainer`: ``run_step`` (forward, backward, step) and ``train`` (the loop calling the hooks).
- Hooks (``before_train`` / ``after_step`` / ``after_train``): :class:`CheckpointHook`,
  :class:`ConsoleLogHook`; more plug in without editing the loop.
- :func:`train_detector`: builds all of that from the course's arguments.

Symbols: B images per batch, L number of losses the detector returns.
"""
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .sampling import ResumableBatchSampler, make_batch_stream

__all__ = ["FROM_SCRATCH", "TrainSettings", "build_optimizer", "lr_milestones", "learning_rate_factor",
           "WeightEMA", "NonFiniteGuard", "LossLog", "Trainer", "CheckpointHook", "ConsoleLogHook",
           "train_detector"]

# Stable setting for a randomly initialised backbone (no ImageNet weights, e.g. offline): the contract's
# plain SGD at lr 5e-3 diverges to NaN within ~150 iterations there. AdamW adapts the step per parameter,
# the warm-up avoids the large first steps of a random network, and clipping stops rare loss spikes.
# Use as ``train_detector(model, loader, max_iters=..., **FROM_SCRATCH)``.
FROM_SCRATCH = dict(optimizer="adamw", learning_rate=2e-3, weight_decay=1e-4, warmup_iters=100,
                    grad_clip_norm=5.0)

PRECISIONS = ("fp32", "bf16", "fp16")


def _fail(message: str) -> None:
    raise ValueError(f"train_detector: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ==================================================================================================
# Settings
# ==================================================================================================

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
            ``{"flip_prob": 0.5, "scale_range": (0.8, 1.25)}`` (``eecs598.augment.random_flip_scale_batch``;
            seeded by data seed and iteration, so resumable). None: off (the course's).
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
    batch_size: Optional[int] = None
    num_samples: Optional[int] = None
    world_size: int = 1

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        for name, minimum in (("max_iters", 1), ("warmup_iters", 0), ("world_size", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                _fail(f"{name} must be an int >= {minimum}, got {value!r}")
            set_(name, int(value))
        if not (_is_real(self.learning_rate) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            _fail(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if not (_is_real(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            _fail(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (_is_real(self.momentum) and 0 <= self.momentum < 1):
            _fail(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (_is_real(self.warmup_factor) and 0 < self.warmup_factor <= 1):
            _fail(f"warmup_factor must be in (0, 1], got {self.warmup_factor!r}")
        if self.optimizer not in ("sgd", "adamw"):
            _fail(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.ema_decay is not None and not (_is_real(self.ema_decay) and 0.0 < self.ema_decay < 1.0):
            _fail(f"ema_decay must be in (0, 1) or None, got {self.ema_decay!r}")
        if self.grad_clip_norm is not None and not (_is_real(self.grad_clip_norm) and self.grad_clip_norm > 0
                                                    and math.isfinite(self.grad_clip_norm)):
            _fail(f"grad_clip_norm must be a finite number > 0 or None, got {self.grad_clip_norm!r}")
        if self.precision not in PRECISIONS:
            _fail(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
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
        """``{name: (saved value, this value)}`` for every setting that differs from ``saved``."""
        mine = self.as_dict()
        return {k: (saved.get(k), v) for k, v in mine.items() if k not in ignore and saved.get(k) != v}


def _check_loss_weights(loss_weights: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
    """Validate the weights' values (names are checked against the detector's losses later)."""
    if loss_weights is None or len(loss_weights) == 0:
        return None
    if not isinstance(loss_weights, dict):
        _fail(f"loss_weights must be a dict {{loss_name: weight}}, got {type(loss_weights).__name__}")
    checked = {}
    for name, weight in sorted(loss_weights.items()):
        if not isinstance(name, str):
            _fail(f"loss_weights keys must be loss names (str), got {name!r}")
        if not (_is_real(weight) and math.isfinite(weight) and weight >= 0):
            _fail(f"loss_weights[{name!r}] must be a finite number >= 0, got {weight!r} (a negative weight "
                  f"would train towards a worse model)")
        checked[name] = float(weight)
    return checked


def _check_augment(augment: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Validate the on-device augmentation settings (``flip_prob`` in [0, 1], ``scale_range`` lo <= hi)."""
    if not augment:
        return None
    if not isinstance(augment, dict) or set(augment) - {"flip_prob", "scale_range"}:
        _fail(f"augment must be None or a dict with keys 'flip_prob' and/or 'scale_range', got {augment!r}")
    flip_prob = augment.get("flip_prob", 0.0)
    if not (_is_real(flip_prob) and 0.0 <= flip_prob <= 1.0):
        _fail(f"augment['flip_prob'] must be in [0, 1], got {flip_prob!r}")
    scale_range = augment.get("scale_range")
    if scale_range is not None:
        if not (isinstance(scale_range, (list, tuple)) and len(scale_range) == 2
                and all(_is_real(v) and math.isfinite(v) and v > 0 for v in scale_range)
                and scale_range[0] <= scale_range[1]):
            _fail(f"augment['scale_range'] must be (low, high) with 0 < low <= high, got {scale_range!r}")
        scale_range = (float(scale_range[0]), float(scale_range[1]))
    return {"flip_prob": float(flip_prob), "scale_range": scale_range}


def check_loss_weight_names(loss_weights: Optional[Dict[str, float]], loss_names: Sequence[str]) -> None:
    """Refuse weights for losses the detector does not return (a typo would otherwise be ignored)."""
    unknown = sorted(set(loss_weights or {}) - set(loss_names))
    if unknown:
        _fail(f"loss_weights names {unknown} are not losses of this detector; valid names: "
              f"{', '.join(loss_names)}")


# ==================================================================================================
# Optimiser, schedule, weight average
# ==================================================================================================

def build_optimizer(params: List[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD (with ``settings.momentum``, L2 weight decay) or AdamW (decoupled weight decay) over ``params``.

    ``settings.fused_optimizer`` selects the fused kernels (one launch for all parameters); otherwise
    torch's default (``foreach`` on GPUs) is used.
    """
    fused = True if settings.fused_optimizer else None
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.learning_rate, momentum=settings.momentum,
                               weight_decay=settings.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=fused)


def lr_milestones(max_iters: int) -> Tuple[int, int]:
    """The course's ``MultiStepLR`` milestones: 60% and 90% of ``max_iters``."""
    return int(0.6 * max_iters), int(0.9 * max_iters)


def extended_milestones(old: Sequence[int], new_max_iters: int, resume_iteration: int) -> Tuple[int, ...]:
    """Milestones after extending a run to ``new_max_iters`` at ``resume_iteration``.

    A milestone the run has already passed stays where it was (its LR drop happened); one not reached yet
    moves to its position in the new schedule (60% / 90% of ``new_max_iters``). So extending a finished
    run continues at its final LR, and extending an interrupted one gives the longer run's schedule.
    """
    new = lr_milestones(new_max_iters)
    return tuple(o if o <= resume_iteration else n for o, n in zip(old, new))


def learning_rate_factor(iteration: int, settings: TrainSettings) -> float:
    """LR multiplier at ``iteration``: linear warm-up times 0.1 per milestone reached.

    Equals the course's ``MultiStepLR`` (chained with ``LinearLR`` for the warm-up): the LR used at
    iteration ``t`` is ``lr * w(t) * 0.1 ** #{m in milestones: t >= m}`` with
    ``w(t) = warmup_factor + (1 - warmup_factor) * t / warmup_iters`` for ``t < warmup_iters``, else 1.
    """
    factor = 0.1 ** sum(iteration >= m for m in settings.milestones)
    if iteration < settings.warmup_iters:
        factor *= settings.warmup_factor + (1 - settings.warmup_factor) * iteration / settings.warmup_iters
    return factor


class WeightEMA:
    """Exponential moving average of a module's float weights and buffers (integer buffers are copied).

    The decay is ramped up as ``min(decay, (1 + t) / (10 + t))``, so early averages are not dominated by
    the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._float_keys = [k for k, v in self.state.items() if v.is_floating_point()]

    @torch.no_grad()
    def update(self, module: nn.Module, iteration: int) -> None:
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        current = module.state_dict()
        averages = [self.state[k] for k in self._float_keys]
        torch._foreach_mul_(averages, decay)
        torch._foreach_add_(averages, [current[k].detach() for k in self._float_keys], alpha=1 - decay)
        for k, v in current.items():
            if not v.is_floating_point():
                self.state[k].copy_(v)

    def load_state(self, state: Dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)


# ==================================================================================================
# Fault guard and loss log
# ==================================================================================================

class NonFiniteGuard:
    """Keeps a failing step from changing the model.

    Before every forward pass it copies the buffers (BatchNorm's running statistics and batch counters),
    because the forward pass updates them before any loss is known. With ``sync=True`` (the default) a non-finite
    loss or gradient norm is found on the host before the optimiser step; the buffers are put back and
    ``FloatingPointError`` is raised, so the model holds exactly the state after the last good step.

    With ``sync=False`` nothing is fetched: a device flag ``healthy`` turns False at the first bad step,
    every later optimiser step is skipped on the device (the fused kernels' ``found_inf`` input) and the
    buffers are restored on the device (``torch.where``); :meth:`check` raises at the next sync point.

    The same copy serves any other failure inside a step (an exception in the forward or backward pass, a
    ``KeyboardInterrupt``): :meth:`restore` puts the buffers back, and with ``sync=True`` also the
    detector's extra training state (``training_state()``, e.g. FCOS's loss normaliser, which its forward
    pass updates too).
    """

    def __init__(self, module: nn.Module, sync: bool, device: torch.device):
        self.sync = sync
        self.module = module
        self.buffers = list(module.buffers())  # BatchNorm's running statistics and its batch counter
        self.saved = [b.detach().clone() for b in self.buffers]
        self.saved_training_state: Optional[Dict[str, Any]] = None
        self.healthy = torch.ones((), dtype=torch.bool, device=device)
        self.first_bad_iteration = torch.full((), -1, dtype=torch.int64, device=device)
        self.first_bad_values: Optional[torch.Tensor] = None

    def before_forward(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, [b.detach() for b in self.buffers])
        if self.sync and hasattr(self.module, "training_state"):
            # Host values (FCOS keeps a Python float here when sync=True): no device sync.
            self.saved_training_state = self.module.training_state()

    def restore(self) -> None:
        """Undo what the current step's forward pass changed: the buffers and the training state."""
        with torch.no_grad():
            if self.buffers:
                torch._foreach_copy_(self.buffers, self.saved)
        if self.saved_training_state is not None and hasattr(self.module, "load_training_state"):
            self.module.load_training_state(self.saved_training_state)

    def observe(self, iteration: int, ok: torch.Tensor, values: torch.Tensor) -> None:
        """Device-side bookkeeping (sync=False): remember the first bad iteration, keep buffers sane."""
        newly_bad = self.healthy & ~ok
        self.first_bad_iteration = torch.where(newly_bad, iteration, self.first_bad_iteration)
        if self.first_bad_values is None:
            self.first_bad_values = torch.zeros_like(values)
        self.first_bad_values = torch.where(newly_bad, values, self.first_bad_values)
        self.healthy = self.healthy & ok
        with torch.no_grad():
            for buffer, saved in zip(self.buffers, self.saved):
                buffer.copy_(torch.where(self.healthy, buffer, saved))

    def check(self, names: Sequence[str]) -> None:
        """Raise ``FloatingPointError`` if a step went bad since the start (one host sync)."""
        if bool(self.healthy):
            return
        iteration = int(self.first_bad_iteration)
        values = dict(zip(names, self.first_bad_values.tolist()))
        raise_non_finite(iteration, values, later_steps_skipped=True)


def raise_non_finite(iteration: int, values: Dict[str, float], later_steps_skipped: bool = False,
                     grad_norm: Optional[float] = None) -> None:
    """Raise the engine's ``FloatingPointError`` describing the bad step and the model's state."""
    bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v) and k != "total")
    what = f"non-finite gradient norm ({grad_norm})" if grad_norm is not None else "non-finite loss"
    state = (f"The detector holds exactly the weights and buffers after iteration {iteration - 1} (the last good "
             f"step; iteration {iteration} changed nothing"
             + (", later steps were skipped" if later_steps_skipped else "") + ").")
    raise FloatingPointError(
        f"train_detector: {what} at iteration {iteration}: {bad or values}. {state} From a random backbone use "
        f"**FROM_SCRATCH (AdamW, warm-up, clipping), or lower learning_rate / set grad_clip_norm.")


def _add_note(error: BaseException, note: str) -> None:
    """Attach ``note`` to an exception's traceback (Python 3.11+), or print it before the traceback."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        print(note, file=sys.stderr)


@contextlib.contextmanager
def _deferred_interrupt():
    """Hold back SIGINT (Ctrl-C) inside the block and deliver it, with its usual effect, right after.

    Used around the optimiser step and the bookkeeping that goes with it, so that an interrupt cannot leave
    the weights half-updated (momentum updated but not the weights, an EMA one step behind...). Outside the
    main thread signal handlers cannot be changed; the block then runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGINT) is None:  # a handler not installed from Python: leave it alone
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        signal.raise_signal(signal.SIGINT)  # now handled as usual: KeyboardInterrupt by default


def _unpack_batch(batch: Any, iteration: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images (B,3,H,W), gt_boxes (B,M,5))`` from a loader batch ``(..., images, gt_boxes)``, or a clear error."""
    expected = ("(image_paths, images (B, 3, H, W), gt_boxes (B, M, 5)) as the course's datasets return; make the "
                "dataset's __getitem__ (or the loader's collate_fn) return that tuple")
    if isinstance(batch, dict):
        raise TypeError(f"train_detector: the batch of iteration {iteration} from train_loader is a dict with keys "
                        f"{list(batch)[:6]}; expected {expected}")
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise TypeError(f"train_detector: the batch of iteration {iteration} from train_loader is a "
                        f"{type(batch).__name__}; expected {expected}")
    images, gt_boxes = batch[-2], batch[-1]
    if not isinstance(images, torch.Tensor) or not isinstance(gt_boxes, torch.Tensor):
        raise TypeError(f"train_detector: the batch of iteration {iteration} from train_loader holds "
                        f"({', '.join(type(v).__name__ for v in batch)}); expected {expected}")
    return images, gt_boxes


class LossLog:
    """Per-iteration losses, kept on the device until :meth:`flush` fetches them in one transfer.

    ``history`` maps each loss name (plus ``"total"``) to a list of Python floats, index = iteration.
    """

    def __init__(self, history: Optional[Dict[str, List[float]]] = None):
        self.history: Dict[str, List[float]] = {k: list(v) for k, v in (history or {}).items()}
        self.names: Optional[List[str]] = None
        self.pending: List[torch.Tensor] = []

    def append(self, names: List[str], values: torch.Tensor) -> None:
        self.names = names
        self.pending.append(values)

    def flush(self) -> Optional[List[float]]:
        """Move pending rows to ``history``; returns the last row (None if nothing was pending)."""
        if not self.pending:
            return None
        rows = torch.stack(self.pending).cpu().tolist()
        self.pending = []
        for row in rows:
            for name, value in zip(self.names, row):
                self.history.setdefault(name, []).append(value)
        return rows[-1]

    def ordered(self) -> Dict[str, List[float]]:
        """History with ``"total"`` last (the order the losses are logged in)."""
        return {k: self.history[k] for k in [*[k for k in self.history if k != "total"], "total"]
                if k in self.history}


# ==================================================================================================
# The loop
# ==================================================================================================

@dataclasses.dataclass
class TrainState:
    """What survives a restart, besides model/optimiser tensors: position in the run and in the data."""

    iteration: int = 0
    data_seed: int = 0
    epoch: int = 0
    offset: int = 0


class Trainer:
    """Runs ``settings.max_iters`` steps of ``model`` on ``batches``; features live in ``hooks``.

    Args:
        detector: the module whose state is trained and saved (the unwrapped one under DDP).
        model: what is called for the losses: ``detector`` or its ``DistributedDataParallel`` wrapper.
        optimizer: from :func:`build_optimizer`.
        settings: the validated :class:`TrainSettings`.
        batches: endless iterator of ``(..., images (B,3,H,W), gt_boxes (B,M,5))`` batches.
        advance: called once per consumed batch (moves the resumable data position).
        device: where images and boxes are moved.
        state, log: position and loss history (fresh or restored from a checkpoint).
        ema: optional :class:`WeightEMA`.
        sync_period: fetch losses from the device every this many iterations (1: every step, the
            course's behaviour; the non-finite check then happens before each optimiser step).
        hooks: objects with optional ``before_train(trainer)``, ``after_step(trainer)``,
            ``after_train(trainer)``.
        reduce_values: maps the ``(L+1,)`` loss vector to its mean over processes (distributed runs).
        rank: this process's rank (seeds its augmentation).
    """

    def __init__(self, detector, model, optimizer, settings: TrainSettings, batches: Iterator, advance: Callable,
                 device: torch.device, state: TrainState, log: LossLog, ema: Optional[WeightEMA] = None,
                 sync_period: int = 1, hooks: Sequence[Any] = (),
                 reduce_values: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, rank: int = 0):
        self.detector, self.model, self.optimizer, self.settings = detector, model, optimizer, settings
        self.batches, self.advance, self.device = batches, advance, device
        self.state, self.log, self.ema, self.hooks = state, log, ema, list(hooks)
        self.sync_period, self.reduce_values, self.rank = sync_period, reduce_values, rank
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.guard = NonFiniteGuard(detector, sync=sync_period == 1, device=device)
        self.scaler = torch.amp.GradScaler(device.type) if settings.precision == "fp16" else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
        self.last_values: Optional[Dict[str, float]] = None
        self.last_grad_norm: Optional[torch.Tensor] = None  # set when gradients are clipped
        self.weights = settings.loss_weights or {}
        self.phase = "data"  # where in a step we are (see describe_state)

    # -- one step --------------------------------------------------------------------------------

    def _losses(self, images: torch.Tensor, gt_boxes: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.autocast_dtype is None:
            return self.model(images, gt_boxes)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.model(images, gt_boxes)

    def _augment(self, images: torch.Tensor, gt_boxes: torch.Tensor, iteration: int):
        """On-device flip / scale jitter, seeded by (data seed, iteration, rank): a resumed run repeats it."""
        from .augment import random_flip_scale_batch

        seed = int(np.random.SeedSequence([self.state.data_seed, iteration, self.rank]).generate_state(1)[0])
        generator = torch.Generator(device=images.device).manual_seed(seed)
        return random_flip_scale_batch(images, gt_boxes, generator, **self.settings.augment)

    def run_step(self) -> None:
        """Forward, non-finite check, backward, clip, optimiser step, EMA: one iteration.

        All or nothing: a failure anywhere before the optimiser step (the loader, a bad batch, the forward
        or backward pass, a non-finite loss or gradient, ``KeyboardInterrupt``) leaves the detector exactly
        as the previous step left it (the forward pass's BatchNorm statistics are put back, gradients are
        cleared). The optimiser step, the EMA update and the bookkeeping run with Ctrl-C deferred, so an
        interrupt cannot apply half a step; it is raised right after the step completes.
        """
        iteration = self.state.iteration
        self.phase = "data"
        batch = next(self.batches)  # a failing loader has changed nothing yet
        images, gt_boxes = _unpack_batch(batch, iteration)
        images = images.to(self.device, non_blocking=True)
        gt_boxes = gt_boxes.to(self.device, non_blocking=True)
        if self.settings.augment is not None:
            images, gt_boxes = self._augment(images, gt_boxes, iteration)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.settings.learning_rate * learning_rate_factor(iteration, self.settings)

        self.phase = "forward"
        self.guard.before_forward()
        try:
            names, values, ok = self._forward_backward(iteration, images, gt_boxes)
        except BaseException:
            self.guard.restore()
            self.optimizer.zero_grad(set_to_none=True)
            raise
        if not self.guard.sync:
            self.guard.observe(iteration, ok, values)

        self.phase = "commit"
        with _deferred_interrupt():
            self._optimizer_step()
            if self.ema is not None:
                self.ema.update(self.detector, iteration)
            self.log.append(names, values)
            self.advance()
            self.state.iteration = iteration + 1
            self.phase = "done"

    def _forward_backward(self, iteration: int, images: torch.Tensor, gt_boxes: torch.Tensor):
        """Losses, host-side non-finite check (sync mode), backward and clipping.

        Returns ``(names, values (L+1,) float64 on the device, ok)``: ``ok`` is a device bool, False for a
        non-finite loss or gradient norm (only used with ``sync=False``; sync mode raises instead).
        """
        losses = self._losses(images, gt_boxes)
        if self.log.names is None:
            check_loss_weight_names(self.weights, list(losses))
        total = sum(loss * self.weights[name] if name in self.weights else loss for name, loss in losses.items())
        names = [*losses, "total"]
        # float64 on the host side: the history holds exactly the values the losses had.
        values = torch.stack([loss.detach().double() for loss in [*losses.values(), total]])
        if self.reduce_values is not None:
            values = self.reduce_values(values)  # every process then logs and judges the same numbers
        row = None
        if self.guard.sync:
            row = values.cpu().tolist()
            if not math.isfinite(row[-1]):
                raise_non_finite(iteration, dict(zip(names, row)))

        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(total) if self.scaler else total).backward()
        ok = torch.isfinite(values[-1])
        if self.settings.grad_clip_norm is not None:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip_norm, foreach=True)
            self.last_grad_norm = norm.detach()
            if self.guard.sync and self.scaler is None and not math.isfinite(float(norm)):
                raise_non_finite(iteration, dict(zip(names, row)), grad_norm=float(norm))
            if self.scaler is None:
                ok = ok & torch.isfinite(norm)
        return names, values, ok

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            # An fp16 step whose gradients overflow is skipped by the scaler (that is its job); a poisoned
            # (non-finite) loss makes every gradient NaN, so the guard's failures are skipped the same way.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.guard.sync:
            self.optimizer.step()
        else:
            # Fused kernels read "found_inf" on the device and skip the whole update (weights, momentum,
            # step counts) when it is 1: no host sync is needed to keep a bad step from landing.
            self.optimizer.found_inf = (~self.guard.healthy).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf

    def describe_state(self) -> str:
        """One sentence: which step's weights the detector holds after an exception stopped training."""
        completed = self.state.iteration  # steps completed so far; the last one is completed - 1
        if self.phase == "commit":  # only a real error gets here (Ctrl-C is deferred past the step)
            return (f"train_detector stopped inside the optimiser step of iteration {completed}: the weights may "
                    f"be partly updated. Reload the last checkpoint (resume=True) before using the detector.")
        if self.phase == "done":
            where = f"after iteration {completed - 1}"
        else:
            where = f"during iteration {completed}, before its optimiser step"
        held = (f"the weights and buffers after iteration {completed - 1} (the last completed step)" if completed
                else "its initial weights and buffers (no step was completed)")
        return f"train_detector stopped {where}: the detector holds exactly {held}."

    # -- the loop --------------------------------------------------------------------------------

    def sync(self) -> Optional[Dict[str, float]]:
        """Fetch pending losses (one transfer); raises if a step went bad since the last sync."""
        if not self.guard.sync:
            self.guard.check(self.log.names or [])
        row = self.log.flush()
        if row is not None:
            self.last_values = dict(zip(self.log.names, row))
        return self.last_values

    def train(self) -> Dict[str, List[float]]:
        for hook in self.hooks:
            getattr(hook, "before_train", lambda trainer: None)(self)
        try:
            while self.state.iteration < self.settings.max_iters:
                self.run_step()
                if self.state.iteration % self.sync_period == 0 or self.state.iteration == self.settings.max_iters:
                    self.sync()
                for hook in self.hooks:
                    getattr(hook, "after_step", lambda trainer: None)(self)
            self.sync()
        except BaseException as error:
            if not isinstance(error, FloatingPointError):  # that message already describes the state
                _add_note(error, self.describe_state())
            raise
        finally:
            for hook in self.hooks:
                getattr(hook, "after_train", lambda trainer: None)(self)
        return self.log.ordered()


# ==================================================================================================
# Hooks
# ==================================================================================================

class CheckpointHook:
    """Saves the full training state every ``period`` iterations and at the end (atomically)."""

    def __init__(self, path: str, period: int, save_state: Callable[["Trainer"], Dict[str, Any]],
                 is_writer: bool = True):
        self.path, self.period, self.save_state, self.is_writer = path, period, save_state, is_writer

    def after_step(self, trainer: Trainer) -> None:
        iteration = trainer.state.iteration
        if iteration % self.period == 0 or iteration == trainer.settings.max_iters:
            trainer.sync()  # never save a state the guard has not checked
            if self.is_writer:
                ckpt.save_atomic(self.save_state(trainer), self.path)


class ConsoleLogHook:
    """The course's ``[Iter i][loss: x][loss_cls: ...]`` lines every ``log_period`` iterations, plus the
    learning rate, seconds per iteration and ETA; and a tqdm bar."""

    def __init__(self, log_period: int, progress: bool, is_writer: bool = True):
        self.log_period, self.progress, self.is_writer = log_period, progress and is_writer, is_writer
        self.bar = None

    def before_train(self, trainer: Trainer) -> None:
        self.start_time, self.start_iter = time.time(), trainer.state.iteration
        self.bar = tqdm(total=trainer.settings.max_iters, initial=trainer.state.iteration, disable=not self.progress,
                        desc="train", dynamic_ncols=True)

    def after_step(self, trainer: Trainer) -> None:
        iteration = trainer.state.iteration - 1  # the step just taken
        self.bar.update(1)
        if iteration % self.log_period != 0 or not self.is_writer:
            return
        values = trainer.sync()
        done = trainer.state.iteration - self.start_iter
        seconds_per_iter = (time.time() - self.start_time) / max(1, done)
        eta = seconds_per_iter * (trainer.settings.max_iters - trainer.state.iteration)
        text = f"[Iter {iteration}][loss: {values['total']:.3f}]"
        text += "".join(f"[{k}: {v:.3f}]" for k, v in values.items() if k != "total")
        text += (f"[lr: {trainer.optimizer.param_groups[0]['lr']:.2e}][{seconds_per_iter:.3f} s/it]"
                 f"[eta: {_format_seconds(eta)}]")
        if trainer.device.type == "cuda":
            text += f"[mem: {torch.cuda.max_memory_allocated(trainer.device) / 2**20:.0f} MiB]"
        tqdm.write(text, file=sys.stdout)
        self.bar.set_postfix(loss=f"{values['total']:.3f}", refresh=False)

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ==================================================================================================
# train_detector: the course's entry point
# ==================================================================================================

def _check_loader(train_loader, resumable_order: bool) -> Tuple[Any, Optional[int]]:
    """``(dataset, batch_size)`` of a DataLoader-like ``train_loader``, validated (dataset None: plain iterable)."""
    dataset = getattr(train_loader, "dataset", None) if resumable_order else None
    batch_size = getattr(train_loader, "batch_size", None)
    if dataset is None:
        return None, batch_size
    if not _is_int(batch_size) or batch_size < 1:
        _fail(f"train_loader.batch_size must be an int >= 1, got {batch_size!r}")
    if len(dataset) == 0:
        _fail("train_loader.dataset is empty (0 samples)")
    if getattr(train_loader, "drop_last", False) and len(dataset) < batch_size:
        _fail(f"drop_last=True with batch_size={batch_size} but only {len(dataset)} samples: no batch would "
              f"ever be produced")
    return dataset, batch_size


def _cycle(train_loader, skip: int) -> Iterator:
    """Iterate ``train_loader`` over and over (``resumable_order=False``), skipping ``skip`` batches first."""
    while True:
        produced = False
        for batch in train_loader:
            produced = True
            if skip:
                skip -= 1
                continue
            yield batch
        if not produced:  # an empty iterable, or a one-shot iterator already used up: never loop forever
            _fail("train_loader yielded no batches in a whole pass (it is empty, or an iterator that is "
                  "exhausted); pass a DataLoader or a list of batches")


def _restore(path: str, settings: TrainSettings, extend: bool, detector, optimizer, ema) -> Tuple[TrainSettings, TrainState, LossLog]:
    """Load a checkpoint into detector/optimiser/EMA and the RNGs; returns the (possibly extended) settings."""
    saved = ckpt.load_checkpoint(path)
    iteration = saved["state"]["iteration"]
    ignore = ("max_iters", "milestones") if extend else ()
    different = settings.resume_differences(saved["settings"], ignore=ignore)
    if different:
        hint = (" To train a run further, pass extend=True (--extend) with the larger max_iters."
                if set(different) <= {"max_iters", "milestones"} else "")
        _fail(f"cannot resume from {path}: settings differ (checkpoint vs now): {different}.{hint}")
    if extend:
        if settings.max_iters < iteration:
            _fail(f"extend: max_iters={settings.max_iters} is below the {iteration} iterations already done "
                  f"in {path}")
        milestones = extended_milestones(saved["settings"]["milestones"], settings.max_iters, iteration)
        settings = dataclasses.replace(settings, milestones=milestones)
    detector.load_state_dict(saved["model"])
    if saved.get("detector_state") is not None and hasattr(detector, "load_training_state"):
        detector.load_training_state(saved["detector_state"])
    optimizer.load_state_dict(saved["optimizer"])
    if ema is not None:
        ema.load_state(saved["ema"])
    ckpt.set_rng_state(saved["rng"])
    print(f"Resuming from {path} at iteration {iteration}"
          + (f"; milestones now {list(settings.milestones)}" if extend else "") + ".")
    return settings, TrainState(**saved["state"]), LossLog(saved["history"])


def _checkpoint_saver(detector, optimizer, ema, run_config: Optional[Dict[str, Any]]) -> Callable[[Trainer], Dict[str, Any]]:
    def state(trainer: Trainer) -> Dict[str, Any]:
        return {
            "format": ckpt.CHECKPOINT_FORMAT, "settings": trainer.settings.as_dict(),
            "state": dataclasses.asdict(trainer.state), "model": detector.state_dict(),
            "detector_state": detector.training_state() if hasattr(detector, "training_state") else None,
            "optimizer": optimizer.state_dict(), "ema": None if ema is None else ema.state,
            "history": trainer.log.history, "rng": ckpt.rng_state(), "run_config": run_config,
        }
    return state


def train_detector(
    detector: nn.Module,
    train_loader,
    learning_rate: float = 5e-3,
    weight_decay: float = 1e-4,
    max_iters: int = 5000,
    log_period: int = 20,
    device: str = "cpu",
    *,
    data_seed: Optional[int] = None,
    resumable_order: bool = True,
    checkpoint_path: Optional[str] = None,
    checkpoint_period: int = 200,
    resume: bool = False,
    extend: bool = False,
    sync_every_step: bool = True,
    image_cache: bool = False,
    compile_model=False,
    distributed=None,
    run_config: Optional[Dict[str, Any]] = None,
    plot: bool = True,
    plot_path: Optional[str] = None,
    progress: bool = True,
    hooks: Sequence[Any] = (),
    **options,
) -> Dict[str, List[float]]:
    """Train a detector that returns a dict of losses (e.g. ``FCOS``) for ``max_iters`` iterations.

    The course's recipe by default: SGD (momentum 0.9) over the trainable parameters, LR x0.1 at 60% and
    90% of ``max_iters``, the loader cycled forever, ``[Iter i][loss: ...]`` lines every ``log_period``
    iterations (followed by the LR, seconds per iteration and ETA), the loss history plotted at the end.

    Data order (``resumable_order=True``, the default): the engine does NOT iterate ``train_loader``
    itself. It loads ``train_loader.dataset`` with the loader's ``batch_size``, ``num_workers``,
    ``collate_fn``, ``drop_last`` and ``pin_memory`` but REPLACES its sampler / ``shuffle`` with a seeded,
    resumable order (``eecs598.sampling``; the ``shuffle`` option: a new permutation per epoch). That makes
    runs bit-identical after ``eecs598.reset_seed`` and a resumed run equal to an uninterrupted one.
    ``resumable_order=False`` iterates ``train_loader`` as given (your sampler is used; a resume then skips
    the consumed batches of the current pass). A loader without ``.dataset`` is always iterated as given.

    Args:
        detector: module; ``detector(images (B,3,H,W), gt_boxes (B,M,5))`` returns ``{loss_name: scalar}``.
            If it has ``training_state()`` / ``load_training_state()`` (FCOS: the loss normaliser), that
            state is checkpointed too; ``loss_names`` lets ``loss_weights`` be checked before any step.
        train_loader: yields ``(image_paths, images (B,3,H,W), gt_boxes (B,M,5))``.
        learning_rate, weight_decay, max_iters, log_period, device: as in the course.
        data_seed: seed of the data order; None draws it from torch's RNG (so ``reset_seed`` fixes it).
        resumable_order: see above.
        checkpoint_path: save the full training state there every ``checkpoint_period`` iterations and at
            the end (atomically). Checked for writability before training starts.
        resume: continue from ``checkpoint_path`` if it exists (the settings must match).
        extend: with ``resume``, allow a larger ``max_iters`` than the checkpoint's (see
            :func:`extended_milestones` for the LR milestones).
        sync_every_step: True (course behaviour): losses are fetched every iteration and a non-finite loss
            stops before backward. False: losses stay on the device and are fetched every ``log_period``
            iterations (and at checkpoints); a bad step is still never applied (see :class:`NonFiniteGuard`;
            needs ``fused_optimizer=True`` unless ``precision="fp16"``).
        image_cache: keep the whole (decoded) training set on ``device`` (``eecs598.device_cache``); needs
            ``resumable_order``. Randomness inside the dataset is frozen by the cache.
        compile_model: ``torch.compile`` the backbone and head (``True``, or a backend name such as
            ``"eager"``); the first iterations are slow (compilation).
        distributed: an ``eecs598.distributed.DistributedContext`` (from ``torchrun``): data-parallel
            training, ``train_loader.batch_size`` images per process; rank 0 writes checkpoints and logs.
        run_config: plain values stored in the checkpoint (e.g. the command line's model settings).
        plot, plot_path: draw the loss history at the end (and save it there).
        progress: show a tqdm progress bar.
        hooks: extra hook objects (``before_train`` / ``after_step`` / ``after_train``).
        **options: any other :class:`TrainSettings` field: ``optimizer``, ``momentum``, ``warmup_iters``,
            ``warmup_factor``, ``grad_clip_norm``, ``ema_decay``, ``loss_weights``, ``shuffle``,
            ``precision``, ``fused_optimizer``, ``augment``, ``milestones``.

    Returns:
        ``{loss_name: [float per iteration], ..., "total": [...]}`` (unweighted losses, weighted total).

    Raises:
        ValueError: invalid arguments (``loss_weights`` naming a loss the detector does not have, when it
            lists its ``loss_names``), an empty dataset, or a checkpoint with other settings.
        FloatingPointError: a loss or gradient norm became non-finite; the message says which iteration
            and that the detector holds the state after the last good step.
        RuntimeError: the checkpoint to resume from is truncated or corrupt.
        OSError: ``checkpoint_path`` cannot be written (checked before training starts).

    Whatever stops training (one of the above, an error in the loader or in the detector, Ctrl-C), the
    detector holds exactly the weights and buffers of the last completed step, never half a step; the
    exception carries a note saying which step that is.
    """
    from .distributed import DistributedContext

    context = distributed if distributed is not None else DistributedContext()
    _check_call(options, log_period, checkpoint_period, data_seed, resume, checkpoint_path, image_cache,
                resumable_order)
    dataset, batch_size = _check_loader(train_loader, resumable_order)
    settings = TrainSettings(learning_rate=learning_rate, weight_decay=weight_decay, max_iters=max_iters,
                             batch_size=batch_size, num_samples=None if dataset is None else len(dataset),
                             world_size=context.world_size, **options)
    if not sync_every_step and not settings.fused_optimizer and settings.precision != "fp16":
        _fail("sync_every_step=False needs fused_optimizer=True (the fused kernels skip a bad step on the "
              "device) or precision='fp16' (the gradient scaler does)")
    device = torch.device(device)
    if loss_names := getattr(detector, "loss_names", None):
        check_loss_weight_names(settings.loss_weights, loss_names)  # before any step
    if checkpoint_path is not None and context.is_main:
        ckpt.check_writable(checkpoint_path)
        ckpt.remove_orphan_partials(checkpoint_path)
    model = _prepare_model(detector, device, context, sync_every_step, compile_model)

    optimizer = build_optimizer([p for p in detector.parameters() if p.requires_grad], settings)
    ema = WeightEMA(detector, settings.ema_decay) if settings.ema_decay is not None else None
    state, log = TrainState(), LossLog()
    if resume and os.path.isfile(checkpoint_path):
        settings, state, log = _restore(checkpoint_path, settings, extend, detector, optimizer, ema)
    else:
        if resume:
            print(f"No checkpoint at {checkpoint_path} yet; training from scratch.")
        state.data_seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if data_seed is None else int(data_seed)

    batches, advance = _make_batches(train_loader, dataset, settings, state, device, image_cache, context, progress)
    all_hooks = [ConsoleLogHook(log_period, progress, is_writer=context.is_main), *hooks]
    if checkpoint_path is not None:
        saver = _checkpoint_saver(detector, optimizer, ema, run_config)
        all_hooks.append(CheckpointHook(checkpoint_path, checkpoint_period, saver, is_writer=context.is_main))
    trainer = Trainer(detector, model, optimizer, settings, batches, advance, device, state, log, ema,
                      sync_period=1 if sync_every_step else log_period, hooks=all_hooks,
                      reduce_values=_mean_over_processes if context.enabled else None, rank=context.rank)
    try:
        history = trainer.train()
    finally:
        del batches  # shuts the loader's workers down
        if hasattr(detector, "check_input_values"):
            detector.check_input_values = True
    if ema is not None:
        detector.load_state_dict(ema.state)
    if context.is_main:
        _plot(history, plot, plot_path)
    return history


def _check_call(options, log_period, checkpoint_period, data_seed, resume, checkpoint_path, image_cache,
                resumable_order) -> None:
    """Validate ``train_detector``'s arguments that are not :class:`TrainSettings` fields."""
    fields = {f.name for f in dataclasses.fields(TrainSettings)} - {"batch_size", "num_samples", "world_size"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"train_detector: unexpected keyword arguments {unknown}; training options are "
                        f"{', '.join(sorted(fields))}")
    for name, value in (("log_period", log_period), ("checkpoint_period", checkpoint_period)):
        if not _is_int(value) or value < 1:
            _fail(f"{name} must be an int >= 1, got {value!r}")
    if data_seed is not None and (not _is_int(data_seed) or not 0 <= data_seed < 2**32):
        _fail(f"data_seed must be None or an int in [0, 2**32), got {data_seed!r}")
    if resume and checkpoint_path is None:
        _fail("resume=True needs a checkpoint_path")
    if image_cache and not resumable_order:
        _fail("image_cache=True needs resumable_order=True (the cache serves batches in the engine's order)")


def _prepare_model(detector: nn.Module, device: torch.device, context, sync_every_step: bool,
                   compile_model) -> nn.Module:
    """Move to ``device``, train mode; synced BatchNorm + DDP when distributed; optional compilation.

    Returns the module to call for the losses (``detector`` itself or its DDP wrapper).
    """
    from . import distributed as dist_utils

    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats in late training slow CPU kernels several-fold
    detector.to(device)
    detector.train()
    if not sync_every_step and hasattr(detector, "keep_normalizer_on_device"):
        detector.keep_normalizer_on_device(device)
    if not sync_every_step and hasattr(detector, "check_input_values"):
        detector.check_input_values = False  # value checks copy to the host; the guard catches bad values
    if compile_model:
        for part in (getattr(detector, "backbone", None), getattr(detector, "pred_net", None)):
            if part is not None:
                backend = compile_model if isinstance(compile_model, str) else "inductor"
                part.forward = torch.compile(part.forward, backend=backend)
    if not context.enabled:
        return detector
    dist_utils.convert_sync_batchnorm(detector, device.type)
    detector.to(device)
    if hasattr(detector, "distributed_reduce"):
        detector.distributed_reduce = dist_utils.all_reduce_sum
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(detector, device_ids=device_ids)


def _mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    from .distributed import all_reduce_mean

    return all_reduce_mean(values)


def _make_batches(train_loader, dataset, settings: TrainSettings, state: TrainState, device: torch.device,
                  image_cache: bool, context, progress: bool):
    """The endless batch iterator and the callback that records one consumed batch in ``state``."""
    if dataset is None:
        return _cycle(train_loader, state.offset), lambda: setattr(state, "offset", state.offset + 1)
    sampler = ResumableBatchSampler(len(dataset), settings.batch_size, bool(getattr(train_loader, "drop_last", False)),
                                    settings.shuffle, state.data_seed, state.epoch, state.offset,
                                    rank=context.rank, world_size=context.world_size)

    def advance():
        sampler.advance()
        state.epoch, state.offset = sampler.epoch, sampler.offset
    if image_cache:
        from .device_cache import DeviceImageCache

        cache = DeviceImageCache(dataset, device, num_workers=getattr(train_loader, "num_workers", 0),
                                 progress=progress and context.is_main)
        return cache.stream(sampler), advance
    pin_memory = bool(getattr(train_loader, "pin_memory", False)) and device.type == "cuda"
    return make_batch_stream(train_loader, sampler, pin_memory), advance


def _plot(history: Dict[str, List[float]], plot: bool, plot_path: Optional[str]) -> None:
    if not (plot or plot_path):
        return
    import matplotlib
    import matplotlib.pyplot as plt

    from .utils import plot_loss_history

    fig = plot_loss_history(history, path=plot_path)
    if plot and "agg" not in matplotlib.get_backend().lower():
        plt.show()
    else:
        plt.close(fig)
