"""Every training hook: checkpoints, the console log, results.csv, TensorBoard, periodic evaluation.

A hook subclasses :class:`HookBase` and overrides any of ``before_train`` / ``before_step`` /
``after_step`` / ``after_train`` (each gets the :class:`~eecs598.train.loop.Trainer`); it is passed to
``train_detector(..., hooks=[...])`` and the loop itself never changes for it.

Distributed runs: a hook with ``main_process_only = True`` (the default) is only called on rank 0; a hook
that must take part on every rank (it syncs, or the others must wait for it) sets it to ``False`` and
writes through ``trainer.save_on_main``. That is the only rank-0 gating of the training side.
"""
import csv
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from ..data.transforms import unnormalize

__all__ = ["HookBase", "CheckpointHook", "ConsoleLogHook", "CsvLogHook", "TensorBoardHook", "PeriodicEvalHook",
           "RESULTS_COLUMNS"]

# Columns of results.csv besides the losses (which follow "iteration" in the detector's order, then "total").
RESULTS_COLUMNS = ("lr", "seconds_per_iter", "eta_seconds", "peak_memory_mib")


class HookBase:
    """A unit of work around the loop; every method is a no-op unless overridden.

    ``trainer.state.iteration`` is the number of steps completed: in ``after_step`` the step just taken
    is ``trainer.state.iteration - 1``.
    """

    #: Only call this hook on the main process (rank 0) of a distributed run.
    main_process_only = True

    def before_train(self, trainer) -> None:
        """Once, before the first step (also after a resume)."""

    def before_step(self, trainer) -> None:
        """Before every step."""

    def after_step(self, trainer) -> None:
        """After every completed step."""

    def after_train(self, trainer) -> None:
        """Once, after the last step or when training stops with an exception."""


def _at_period(trainer, period: int) -> bool:
    """True after every ``period``-th step and after the last one."""
    iteration = trainer.state.iteration
    return iteration % period == 0 or iteration == trainer.settings.max_iters


class CheckpointHook(HookBase):
    """Saves the full training state every ``period`` iterations and at the end (atomically).

    Runs on every rank so that every rank checks its guard before rank 0 writes (a bad step stops all
    ranks at the same iteration instead of leaving the others waiting in the next all-reduce).
    """

    main_process_only = False

    def __init__(self, path: str, period: int, save_state: Callable[[Any], Dict[str, Any]]):
        self.path, self.period, self.save_state = path, period, save_state

    def after_step(self, trainer) -> None:
        if _at_period(trainer, self.period):
            trainer.sync()  # never save a state the guard has not checked
            trainer.save_on_main(lambda: self.save_state(trainer), self.path)


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleLogHook(HookBase):
    """The course's ``[Iter i][loss: x][loss_cls: ...]`` lines every ``log_period`` iterations, plus the
    learning rate, seconds per iteration and ETA (and peak memory on a GPU); and a tqdm bar."""

    def __init__(self, log_period: int, progress: bool = True):
        self.log_period, self.progress = log_period, progress
        self.bar = None

    def before_train(self, trainer) -> None:
        self.start_time, self.start_iter = time.time(), trainer.state.iteration
        self.bar = tqdm(total=trainer.settings.max_iters, initial=trainer.state.iteration, disable=not self.progress,
                        desc="train", dynamic_ncols=True)

    def after_step(self, trainer) -> None:
        iteration = trainer.state.iteration - 1  # the step just taken
        self.bar.update(1)
        if iteration % self.log_period != 0:
            return
        values = trainer.sync()
        done = trainer.state.iteration - self.start_iter
        seconds_per_iter = (time.time() - self.start_time) / max(1, done)
        eta = seconds_per_iter * (trainer.settings.max_iters - trainer.state.iteration)
        text = f"[Iter {iteration}][loss: {values['total']:.3f}]"
        text += "".join(f"[{k}: {v:.3f}]" for k, v in values.items() if k != "total")
        text += (f"[lr: {trainer.optimizer.param_groups[0]['lr']:.2e}][{seconds_per_iter:.3f} s/it]"
                 f"[eta: {format_seconds(eta)}]")
        if trainer.device.type == "cuda":
            text += f"[mem: {torch.cuda.max_memory_allocated(trainer.device) / 2**20:.0f} MiB]"
        tqdm.write(text, file=sys.stdout)
        self.bar.set_postfix(loss=f"{values['total']:.3f}", refresh=False)

    def after_train(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class CsvLogHook(HookBase):
    """Appends one row per ``log_period`` iterations to ``path``: the iteration, the mean of each loss over
    the iterations since the previous row, the learning rate, seconds per iteration, ETA and (on a GPU)
    peak memory. A resumed run appends to the same file (rows after the resume point are dropped first)."""

    def __init__(self, path: str, log_period: int):
        self.path, self.log_period = path, log_period
        self.last_iteration, self.last_time = 0, 0.0

    def before_train(self, trainer) -> None:
        self.last_iteration, self.last_time = trainer.state.iteration, time.time()
        if os.path.isfile(self.path):
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= trainer.state.iteration]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    def after_step(self, trainer) -> None:
        if not _at_period(trainer, self.log_period):
            return
        iteration = trainer.state.iteration
        trainer.sync()
        history = trainer.log.history
        names = list(trainer.log.ordered())
        start = self.last_iteration
        means = [sum(history[n][start:iteration]) / max(1, iteration - start) for n in names]
        now = time.time()
        seconds_per_iter = (now - self.last_time) / max(1, iteration - start)
        self.last_iteration, self.last_time = iteration, now
        eta = seconds_per_iter * (trainer.settings.max_iters - iteration)
        memory = (torch.cuda.max_memory_allocated(trainer.device) / 2**20 if trainer.device.type == "cuda"
                  else float("nan"))
        new_file = not os.path.isfile(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["iteration", *names, *RESULTS_COLUMNS])
            writer.writerow([iteration, *(f"{m:.6g}" for m in means), f"{trainer.optimizer.param_groups[0]['lr']:.6g}",
                             f"{seconds_per_iter:.4f}", f"{eta:.0f}", "" if math.isnan(memory) else f"{memory:.0f}"])


class TensorBoardHook(HookBase):
    """Losses, learning rate and gradient norm every ``log_period`` iterations; a few training images with
    their boxes at the start; ``add_scalar`` for metrics from :class:`PeriodicEvalHook`.

    Needs the ``tensorboard`` package (optional extra: ``pip install -e '.[tensorboard]'``); checked when the
    hook is built, so a missing package fails before training.
    """

    def __init__(self, log_dir: str, log_period: int, idx_to_class: Optional[Dict[int, str]] = None,
                 sample_batch=None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]' "
                              "(or pip install tensorboard)") from e
        self._writer_class = SummaryWriter
        self.log_dir, self.log_period = log_dir, log_period
        self.idx_to_class, self.sample_batch = idx_to_class, sample_batch
        self.writer = None

    def before_train(self, trainer) -> None:
        self.writer = self._writer_class(self.log_dir)
        if self.sample_batch is None:
            return
        _, images, gt_boxes = self.sample_batch
        for i in range(min(4, images.shape[0])):
            boxes = gt_boxes[i][gt_boxes[i][:, 4] != -1]
            labels = [self.idx_to_class.get(int(c), str(int(c))) for c in boxes[:, 4]] if self.idx_to_class else None
            self.writer.add_image_with_boxes(f"train/image_{i}", unnormalize(images[i]), boxes[:, :4],
                                             global_step=trainer.state.iteration, labels=labels)

    def after_step(self, trainer) -> None:
        iteration = trainer.state.iteration
        if iteration % self.log_period:
            return
        values = trainer.sync()
        for name, value in values.items():
            self.writer.add_scalar(f"loss/{name}", value, iteration)
        self.writer.add_scalar("lr", trainer.optimizer.param_groups[0]["lr"], iteration)
        if trainer.last_grad_norm is not None:
            self.writer.add_scalar("grad_norm", float(trainer.last_grad_norm), iteration)

    def add_scalar(self, tag: str, value: float, iteration: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, iteration)

    def after_train(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class PeriodicEvalHook(HookBase):
    """Every ``period`` iterations (and at the end): ``evaluate()`` -> a score (e.g. mAP on a val subset),
    saved with the model weights as ``last`` and, when it is the best so far, ``best``.

    Distributed runs: rank 0 evaluates and writes, the other ranks wait for it (``trainer.barrier``: under
    ``torchrun`` a wait on the store of up to ``$EECS598_BARRIER_TIMEOUT`` seconds, default 1800, outside any
    collective, so an evaluation may take longer than the 60 s join limit; ``eecs598.train.distributed``).

    Args:
        period: iterations between evaluations.
        evaluate: callable returning a float (higher is better); it may switch the model to eval mode,
            the hook switches it back to training mode.
        last_path, best_path: where the weights (``{"model": state_dict, "iteration", "score"}``) go.
        on_score: optional callback ``(iteration, score)``, e.g. to log to TensorBoard.
    """

    main_process_only = False

    def __init__(self, period: int, evaluate: Callable[[], float], last_path: str, best_path: str,
                 on_score: Optional[Callable[[int, float], None]] = None):
        self.period, self.evaluate, self.last_path, self.best_path = period, evaluate, last_path, best_path
        self.on_score = on_score
        self.best = -math.inf
        self.scores: List[Dict[str, float]] = []

    def before_train(self, trainer) -> None:
        if os.path.isfile(self.best_path):  # a resumed run keeps the best of its first part
            self.best = float(torch.load(self.best_path, map_location="cpu", weights_only=True)["score"])

    def after_step(self, trainer) -> None:
        if not _at_period(trainer, self.period):
            return
        trainer.sync()
        if trainer.is_main:
            self._evaluate_and_save(trainer)
        trainer.barrier()

    def _evaluate_and_save(self, trainer) -> None:
        iteration, model = trainer.state.iteration, trainer.detector
        weights = trainer.ema.state if trainer.ema is not None else None
        backup = None
        if weights is not None:  # evaluate what training would hand back: the weight average
            backup = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(weights)
        try:
            score = float(self.evaluate())
        finally:
            if backup is not None:
                model.load_state_dict(backup)
            model.train()
        self.scores.append({"iteration": iteration, "score": score})
        print(f"[Iter {iteration - 1}][eval: {score:.4f}]" + (" (best so far)" if score > self.best else ""))
        if self.on_score is not None:
            self.on_score(iteration, score)
        record = {"model": weights if weights is not None else model.state_dict(), "iteration": iteration,
                  "score": score}
        trainer.save_on_main(lambda: record, self.last_path)
        if score > self.best:
            self.best = score
            trainer.save_on_main(lambda: record, self.best_path)
