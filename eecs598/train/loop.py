"""The training loop: :class:`Trainer` runs steps and calls its hooks; nothing else lives in the loop.

Symbols: B images per batch, L number of losses the detector returns.
"""
import dataclasses
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import checkpoint as ckpt
from .guard import NonFiniteGuard, add_note, deferred_interrupt, raise_non_finite
from .optim import WeightEMA, learning_rate_factor
from .settings import TrainSettings, check_loss_weight_names

__all__ = ["LossLog", "TrainState", "Trainer"]


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
        hooks: :class:`~eecs598.train.hooks.HookBase` objects; on ranks other than 0 only those with
            ``main_process_only = False`` are called.
        reduce_values: maps the ``(L+1,)`` loss vector to its mean over processes (distributed runs).
        rank: this process's rank (seeds its augmentation; rank 0 writes files).
        barrier: waits for every process (distributed runs); None: a no-op.
    """

    def __init__(self, detector, model, optimizer, settings: TrainSettings, batches: Iterator, advance: Callable,
                 device: torch.device, state: TrainState, log: LossLog, ema: Optional[WeightEMA] = None,
                 sync_period: int = 1, hooks: Sequence[Any] = (),
                 reduce_values: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, rank: int = 0,
                 barrier: Optional[Callable[[], None]] = None):
        self.detector, self.model, self.optimizer, self.settings = detector, model, optimizer, settings
        self.batches, self.advance, self.device = batches, advance, device
        self.state, self.log, self.ema = state, log, ema
        self.is_main = rank == 0
        # Rank-0 gating of hooks happens here and in save_on_main, nowhere else.
        self.hooks = [h for h in hooks if self.is_main or not getattr(h, 'main_process_only', True)]
        self._barrier = barrier
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
        from ..data.augment import random_flip_scale_batch

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
        with deferred_interrupt():
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

    def save_on_main(self, make_state: Callable[[], Dict[str, Any]], path: str) -> None:
        """Write ``make_state()`` to ``path`` atomically, on the main process only (built only there)."""
        if self.is_main:
            ckpt.save_atomic(make_state(), path)

    def barrier(self) -> None:
        """Wait until every process gets here (distributed runs; a no-op otherwise)."""
        if self._barrier is not None:
            self._barrier()

    def train(self) -> Dict[str, List[float]]:
        for hook in self.hooks:
            hook.before_train(self)
        try:
            while self.state.iteration < self.settings.max_iters:
                for hook in self.hooks:
                    hook.before_step(self)
                self.run_step()
                if self.state.iteration % self.sync_period == 0 or self.state.iteration == self.settings.max_iters:
                    self.sync()
                for hook in self.hooks:
                    hook.after_step(self)
            self.sync()
        except BaseException as error:
            if not isinstance(error, FloatingPointError):  # that message already describes the state
                add_note(error, self.describe_state())
            raise
        finally:
            for hook in self.hooks:
                hook.after_train(self)
        return self.log.ordered()
