"""Keeping a failing step from changing the model: the non-finite guard and the deferred Ctrl-C."""
import contextlib
import math
import signal
import sys
import threading
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["NonFiniteGuard", "raise_non_finite", "add_note", "deferred_interrupt"]


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
        self.first_bad_grad_norm: Optional[torch.Tensor] = None

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

    def observe(self, iteration: int, ok: torch.Tensor, values: torch.Tensor,
                grad_norm: Optional[torch.Tensor] = None) -> None:
        """Device-side bookkeeping (sync=False): remember the first bad iteration, its losses and gradient
        measure (``grad_norm``, None when none was taken), and keep the buffers sane."""
        newly_bad = self.healthy & ~ok
        self.first_bad_iteration = torch.where(newly_bad, iteration, self.first_bad_iteration)
        if self.first_bad_values is None:
            self.first_bad_values = torch.zeros_like(values)
        self.first_bad_values = torch.where(newly_bad, values, self.first_bad_values)
        if grad_norm is not None:
            grad_norm = grad_norm.to(torch.float64)
            if self.first_bad_grad_norm is None:
                self.first_bad_grad_norm = torch.zeros_like(grad_norm)
            self.first_bad_grad_norm = torch.where(newly_bad, grad_norm, self.first_bad_grad_norm)
        self.healthy = self.healthy & ok
        with torch.no_grad():
            for buffer, saved in zip(self.buffers, self.saved):
                buffer.copy_(torch.where(self.healthy, buffer, saved))

    def check(self, names: Sequence[str], norm_kind: str = "gradient norm") -> None:
        """Raise ``FloatingPointError`` if a step went bad since the start (one host sync).

        The message names the first bad step's non-finite losses, or, when every loss was finite, says
        that its gradient was not (``norm_kind`` names what was measured) and lists the finite losses.
        """
        if bool(self.healthy):
            return
        iteration = int(self.first_bad_iteration)
        values = dict(zip(names, self.first_bad_values.tolist()))
        grad_norm = None if self.first_bad_grad_norm is None else float(self.first_bad_grad_norm)
        raise_non_finite(iteration, values, later_steps_skipped=True, grad_norm=grad_norm, norm_kind=norm_kind)


def _describe_bad_values(values: Dict[str, float], grad_norm: Optional[float], norm_kind: str, where: str) -> str:
    """What was not finite: ``"non-finite loss ...: loss_box=nan"``, or the gradient with the finite losses."""
    listed = ", ".join(f"{k}={v}" for k, v in values.items())
    bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v) and k != "total")
    if bad:
        return f"non-finite loss {where}: {bad}"
    if not math.isfinite(values.get("total", 0.0)):
        return (f"non-finite loss {where}: total={values['total']}, the weighted sum of losses that were each "
                f"finite ({listed})")
    if grad_norm is None:
        gradient = "non-finite gradient"
    elif norm_kind == "gradient norm":
        gradient = f"non-finite gradient norm ({grad_norm})"
    else:
        gradient = f"non-finite gradient ({norm_kind} = {grad_norm})"
    return f"{gradient} {where}, while every loss was finite ({listed})"


def raise_non_finite(iteration: int, values: Dict[str, float], later_steps_skipped: bool = False,
                     grad_norm: Optional[float] = None, norm_kind: str = "gradient norm",
                     micro_batch: Optional[Tuple[int, int]] = None) -> None:
    """Raise the engine's ``FloatingPointError`` describing the bad step and the model's state.

    Args:
        iteration: the bad optimiser step.
        values: its losses (and ``"total"``); the message names the non-finite ones.
        later_steps_skipped: sync-free mode (the steps after it were skipped on the device).
        grad_norm, norm_kind: the gradient measure, when the losses were finite and the gradient was not.
        micro_batch: ``(index, count)`` of the micro-batch whose loss was bad (gradient accumulation).
    """
    where = f"at iteration {iteration}" + (f" (micro-batch {micro_batch[0]} of {micro_batch[1]})"
                                           if micro_batch else "")
    what = _describe_bad_values(values, grad_norm, norm_kind, where)
    state = (f"The detector holds exactly the weights and buffers after iteration {iteration - 1} (the last good "
             f"step; iteration {iteration} changed nothing"
             + (", later steps were skipped" if later_steps_skipped else "") + ").")
    raise FloatingPointError(
        f"train_detector: {what}. {state} From a random backbone use "
        f"**FROM_SCRATCH (AdamW, warm-up, clipping), or lower learning_rate / set grad_clip_norm.")


def add_note(error: BaseException, note: str) -> None:
    """Attach ``note`` to an exception's traceback (Python 3.11+), or print it before the traceback."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        print(note, file=sys.stderr)


@contextlib.contextmanager
def deferred_interrupt():
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

