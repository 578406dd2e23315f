"""The training loop: :class:`Trainer` runs steps and calls its hooks; nothing else lives in the loop.

Symbols: B images per batch, L number of losses the detector returns.
"""
import contextlib
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

    def _augment(self, images: torch.Tensor, gt_boxes: torch.Tensor, iteration: int, micro: int):
        """On-device flip / scale jitter, seeded by (data seed, iteration, rank[, micro-batch]): a resumed run
        repeats it."""
        from ..data.augment import random_flip_scale_batch

        key = [self.state.data_seed, iteration, self.rank] + ([micro] if micro else [])
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        generator = torch.Generator(device=images.device).manual_seed(seed)
        return random_flip_scale_batch(images, gt_boxes, generator, **self.settings.augment)

    def _next_batch(self, iteration: int, micro: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The next loader batch on the device (augmented if asked): one micro-batch of the step."""
        images, gt_boxes = _unpack_batch(next(self.batches), iteration)
        images = images.to(self.device, non_blocking=True)
        gt_boxes = gt_boxes.to(self.device, non_blocking=True)
        if self.settings.augment is not None:
            images, gt_boxes = self._augment(images, gt_boxes, iteration, micro)
        return images, gt_boxes

    def run_step(self) -> None:
        """Forward, non-finite check, backward (of each micro-batch), clip, optimiser step, EMA: one iteration.

        One iteration is one optimiser step over ``settings.accumulate_steps`` loader batches (micro-batches),
        all fetched first. All or nothing: a failure anywhere before the optimiser step (the loader, a bad
        batch, the forward or backward pass of any micro-batch, a non-finite loss or gradient,
        ``KeyboardInterrupt``) leaves the detector exactly as the previous step left it (the forward passes'
        BatchNorm statistics and the loss normaliser are put back, gradients are cleared). The optimiser step,
        the EMA update and the bookkeeping run with Ctrl-C deferred, so an interrupt cannot apply half a
        step; it is raised right after the step completes.
        """
        iteration = self.state.iteration
        self.phase = "data"
        # A failing loader has changed nothing yet (the data position moves only when the step is applied).
        micro_batches = [self._next_batch(iteration, micro) for micro in range(self.settings.accumulate_steps)]
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.settings.learning_rate * learning_rate_factor(iteration, self.settings)

        self.phase = "forward"
        self.guard.before_forward()
        try:
            names, values, ok, grad_norm = self._forward_backward(iteration, micro_batches)
        except BaseException:
            self._end_accumulation(apply=False)
            self.guard.restore()
            self.optimizer.zero_grad(set_to_none=True)
            raise
        if not self.guard.sync:
            self.guard.observe(iteration, ok, values, grad_norm)

        self.phase = "commit"
        with deferred_interrupt():
            self._optimizer_step()
            if self.ema is not None:
                self.ema.update(self.detector, iteration)
            self.log.append(names, values)
            for _ in micro_batches:
                self.advance()
            self.state.iteration = iteration + 1
            self.phase = "done"

    def _forward_backward(self, iteration: int, micro_batches: List[Tuple[torch.Tensor, torch.Tensor]]):
        """Losses and backward pass of every micro-batch, host-side non-finite checks (sync mode), clipping.

        Micro-batch ``i`` of ``b_i`` images is back-propagated with weight ``b_i / B`` (``B``: the step's
        images), so the gradients add up to those of the mean over all ``B`` images. A detector with
        ``begin_accumulation`` / ``end_accumulation`` (FCOS: its loss normaliser) sees the micro-batches as
        one batch: the returned ratio corrects the summed gradients and losses (see
        ``FCOS.end_accumulation``). One micro-batch is exactly the course's step (weight 1, no correction).

        Returns ``(names, values (L+1,) float64 on the device, ok, grad_norm)``: ``ok`` is a device bool, False
        for a non-finite loss or gradient (only used with ``sync=False``; sync mode raises instead), and
        ``grad_norm`` what :meth:`_check_gradients` measured (None with the fp16 scaler and no clipping).
        """
        images_in_step = sum(int(images.shape[0]) for images, _ in micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        if len(micro_batches) > 1 and hasattr(self.detector, "begin_accumulation"):
            self.detector.begin_accumulation()
        values = None
        for micro, (images, gt_boxes) in enumerate(micro_batches):
            share = images.shape[0] / images_in_step  # 1.0 without accumulation
            with self._gradient_sync(last=micro == len(micro_batches) - 1):
                names, micro_values = self._micro_step(iteration, micro, images, gt_boxes, share)
            values = micro_values * share if values is None else values + micro_values * share
        correction = self._end_accumulation(apply=True)
        if correction is not None:
            correction = correction.to(values.device)
            values = values * correction
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, correction.to(grads[0].dtype))
        ok = torch.isfinite(values[-1])
        grad_norm = self._check_gradients(iteration, names, values)
        if grad_norm is not None and self.scaler is None:
            ok = ok & torch.isfinite(grad_norm)
        return names, values, ok, grad_norm

    def _micro_step(self, iteration: int, micro: int, images: torch.Tensor, gt_boxes: torch.Tensor, share: float):
        """Forward pass of one micro-batch, its non-finite check (sync mode), backward of ``share * total``.

        Returns ``(names, values (L+1,) float64)``: the losses and the weighted total, averaged over
        processes in a distributed run (every process then judges the same numbers).
        """
        losses = self._losses(images, gt_boxes)
        if self.log.names is None:
            check_loss_weight_names(self.weights, list(losses))
        total = sum(loss * self.weights[name] if name in self.weights else loss for name, loss in losses.items())
        names = [*losses, "total"]
        # float64 on the host side: the history holds exactly the values the losses had.
        values = torch.stack([loss.detach().double() for loss in [*losses.values(), total]])
        if self.reduce_values is not None:
            values = self.reduce_values(values)
        if self.guard.sync:
            row = values.cpu().tolist()
            if not math.isfinite(row[-1]):
                steps = self.settings.accumulate_steps
                raise_non_finite(iteration, dict(zip(names, row)), micro_batch=(micro, steps) if steps > 1 else None)
        if share != 1.0:
            total = total * share
        (self.scaler.scale(total) if self.scaler else total).backward()
        return names, values

    def _gradient_sync(self, last: bool):
        """DDP all-reduces the gradients in the backward pass of a step's last micro-batch only."""
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _end_accumulation(self, apply: bool) -> Optional[torch.Tensor]:
        """The detector's normaliser correction after a step's micro-batches (None: no accumulation)."""
        end = getattr(self.detector, "end_accumulation", None)
        if self.settings.accumulate_steps == 1 or end is None:
            return None
        return end(apply=apply)

    def _check_gradients(self, iteration: int, names: List[str], values: torch.Tensor) -> Optional[torch.Tensor]:
        """Clip the gradients (``grad_clip_norm``) and check that they are finite.

        With clipping this is the global 2-norm that ``clip_grad_norm_`` returns. Without, the largest
        ``|gradient|``: finite exactly when every gradient is, and never an overflow of finite ones (a finite
        loss can have an infinite gradient, e.g. ``sqrt`` at 0, and the step must not land). In sync mode a
        non-finite value raises here, before the optimiser step. With the fp16 gradient scaler and no
        clipping nothing is measured (None): the scaler finds non-finite gradients and skips the step.
        """
        if self.settings.grad_clip_norm is not None:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip_norm, foreach=True)
            self.last_grad_norm = norm.detach()
            kind = "gradient norm"
        elif self.scaler is not None:
            return None
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, norm_type=math.inf, foreach=True)
            kind = "largest |gradient|"
        if self.guard.sync and self.scaler is None and not math.isfinite(float(norm)):
            raise_non_finite(iteration, dict(zip(names, values.tolist())), grad_norm=float(norm), norm_kind=kind)
        return norm.detach()

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            # An fp16 step whose gradients overflow is skipped by the scaler (that is its job); a poisoned
            # (non-finite) loss makes every gradient NaN, so the guard's failures are skipped the same way.
            if not self.guard.sync:
                # Sync-free: once a step went bad, every later one is skipped too (as found_inf does below):
                # gradients multiplied by NaN instead of 1 make the scaler skip them, without a host sync.
                grads = [p.grad for p in self.params if p.grad is not None]
                if grads:
                    poison = torch.where(self.guard.healthy, 1.0, math.nan).to(grads[0].dtype)
                    torch._foreach_mul_(grads, poison)
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
            kind = "largest |gradient|" if self.settings.grad_clip_norm is None else "gradient norm"
            self.guard.check(self.log.names or [], norm_kind=kind)
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
