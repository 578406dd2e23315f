"""The training wing: settings, optimiser and schedule, the guard, the loop, hooks, checkpoints, distributed.

Imports only ``eecs598.data``, ``eecs598.models``, ``eecs598.evaluation`` and the base modules (see the
README's layout table).
"""
from .api import train_detector
from .guard import NonFiniteGuard
from .hooks import (CheckpointHook, ConsoleLogHook, CsvLogHook, HookBase, PeriodicEvalHook, TensorBoardHook)
from .loop import LossLog, Trainer, TrainState
from .optim import WeightEMA, build_optimizer, extended_milestones, learning_rate_factor
from .settings import TrainSettings, lr_milestones

__all__ = ["train_detector", "NonFiniteGuard", "CheckpointHook", "ConsoleLogHook", "CsvLogHook", "HookBase",
           "PeriodicEvalHook", "TensorBoardHook", "LossLog", "Trainer", "TrainState", "WeightEMA", "build_optimizer",
           "extended_milestones", "learning_rate_factor", "TrainSettings", "lr_milestones"]
