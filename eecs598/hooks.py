"""Optional training hooks: a results CSV, TensorBoard, and periodic evaluation with best/last weights.

Each hook has ``before_train(trainer)``, ``after_step(trainer)`` and/or ``after_train(trainer)`` and is
passed to ``train_detector(..., hooks=[...])``; the loop itself never changes for them.
"""
import csv
import math
import os
import time
from typing import Callable, Dict, List, Optional

import torch

from . import checkpoint as ckpt

__all__ = ["CsvLogHook", "TensorBoardHook", "PeriodicEvalHook", "RESULTS_COLUMNS"]

# Columns of results.csv besides the losses (which follow "iteration" in the detector's order, then "total").
RESULTS_COLUMNS = ("lr", "seconds_per_iter", "eta_seconds", "peak_memory_mib")


class CsvLogHook:
    """Appends one row per ``log_period`` iterations to ``path``: the iteration, the mean of each loss over
    the iterations since the previous row, the learning rate, seconds per iteration, ETA and (on a GPU)
    peak memory. A resumed run appends to the same file (rows after the resume point are dropped first)."""

    def __init__(self, path: str, log_period: int, is_writer: bool = True):
        self.path, self.log_period, self.is_writer = path, log_period, is_writer
        self.last_iteration, self.last_time = 0, 0.0

    def before_train(self, trainer) -> None:
        self.last_iteration, self.last_time = trainer.state.iteration, time.time()
        if self.is_writer and os.path.isfile(self.path):
            with open(self.path, newline="") as f:
                rows = list(csv.reader(f))
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= trainer.state.iteration]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    def after_step(self, trainer) -> None:
        iteration = trainer.state.iteration
        if not self.is_writer or (iteration % self.log_period and iteration != trainer.settings.max_iters):
            return
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


class TensorBoardHook:
    """Losses, learning rate and gradient norm every ``log_period`` iterations; a few training images with
    their boxes at the start; ``add_scalar`` for metrics from :class:`PeriodicEvalHook`.

    Needs the ``tensorboard`` package (optional extra: ``pip install -e '.[tensorboard]'``).
    """

    def __init__(self, log_dir: str, log_period: int, idx_to_class: Optional[Dict[int, str]] = None,
                 sample_batch=None, is_writer: bool = True):
        self.log_dir, self.log_period, self.is_writer = log_dir, log_period, is_writer
        self.idx_to_class, self.sample_batch = idx_to_class, sample_batch
        self.writer = None
        if is_writer:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]' "
                                  "(or pip install tensorboard)") from e
            self.writer = SummaryWriter(log_dir)

    def before_train(self, trainer) -> None:
        if self.writer is not None and self.sample_batch is not None:
            from .inference import unnormalize

            _, images, gt_boxes = self.sample_batch
            for i in range(min(4, images.shape[0])):
                boxes = gt_boxes[i][gt_boxes[i][:, 4] != -1]
                labels = [self.idx_to_class.get(int(c), str(int(c))) for c in boxes[:, 4]] if self.idx_to_class else None
                self.writer.add_image_with_boxes(f"train/image_{i}", unnormalize(images[i]), boxes[:, :4],
                                                 global_step=trainer.state.iteration, labels=labels)

    def after_step(self, trainer) -> None:
        iteration = trainer.state.iteration
        if self.writer is None or iteration % self.log_period:
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


class PeriodicEvalHook:
    """Every ``period`` iterations (and at the end): ``evaluate()`` -> a score (e.g. mAP on a val subset),
    saved with the model weights as ``last`` and, when it is the best so far, ``best``.

    Args:
        period: iterations between evaluations.
        evaluate: callable returning a float (higher is better); it may switch the model to eval mode,
            the hook switches it back to training mode.
        last_path, best_path: where the weights (``{"model": state_dict, "iteration", "score"}``) go.
        on_score: optional callback ``(iteration, score)``, e.g. to log to TensorBoard.
    """

    def __init__(self, period: int, evaluate: Callable[[], float], last_path: str, best_path: str,
                 on_score: Optional[Callable[[int, float], None]] = None, is_writer: bool = True):
        self.period, self.evaluate, self.last_path, self.best_path = period, evaluate, last_path, best_path
        self.on_score, self.is_writer = on_score, is_writer
        self.best = -math.inf
        self.scores: List[Dict[str, float]] = []

    def before_train(self, trainer) -> None:
        if os.path.isfile(self.best_path):  # a resumed run keeps the best of its first part
            self.best = float(torch.load(self.best_path, map_location="cpu", weights_only=True)["score"])

    def after_step(self, trainer) -> None:
        iteration = trainer.state.iteration
        if iteration % self.period and iteration != trainer.settings.max_iters:
            return
        trainer.sync()
        model = trainer.detector
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
        if not self.is_writer:
            return
        record = {"model": weights if weights is not None else model.state_dict(), "iteration": iteration,
                  "score": score}
        ckpt.save_atomic(record, self.last_path)
        if score > self.best:
            self.best = score
            ckpt.save_atomic(record, self.best_path)
