"""Optimiser, learning-rate schedule and weight average.

The schedule is a pure function of the iteration (:func:`learning_rate_factor`), so a resumed run needs no
scheduler state.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from .settings import TrainSettings, lr_milestones

__all__ = ["build_optimizer", "extended_milestones", "learning_rate_factor", "WeightEMA"]


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

