"""Training hooks: results.csv rows and resume, TensorBoard scalars (skipped without the extra)."""
import csv

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from a4_helper import train_detector
from eecs598.train.hooks import CsvLogHook, TensorBoardHook


class Quadratic(nn.Module):
    """loss_a = w^2, loss_b = 2 w^2: known values at every step of plain SGD."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, images, gt_boxes):
        return {"loss_a": self.w ** 2, "loss_b": 2 * self.w ** 2}


class Blank(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return f"{i}.jpg", torch.zeros(3, 8, 8), torch.full((1, 5), -1.0)


def run(iters, hooks, **kwargs):
    model = Quadratic()
    train_detector(model, DataLoader(Blank(), batch_size=2), learning_rate=0.1, weight_decay=0.0, momentum=0.0,
                   max_iters=iters, log_period=2, plot=False, progress=False, hooks=hooks, milestones=(100, 100),
                   **kwargs)
    return model


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_results_csv_rows_are_period_means(tmp_path):
    path = str(tmp_path / "results.csv")
    run(5, [CsvLogHook(path, 2)])
    rows = read_rows(path)
    assert rows[0] == ["iteration", "loss_a", "loss_b", "total", "lr", "seconds_per_iter", "eta_seconds",
                       "peak_memory_mib"]
    # w_t = (1 - 0.1 * 2 * 3)^t = 0.4^t (d total / dw = 6 w): loss_a = 0.16^t; rows after 2, 4 and 5 steps.
    assert [int(r[0]) for r in rows[1:]] == [2, 4, 5]
    expected_a = [(1 + 0.16) / 2, (0.16 ** 2 + 0.16 ** 3) / 2, 0.16 ** 4]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(expected_a, rel=1e-5)
    assert [float(r[3]) for r in rows[1:]] == pytest.approx([3 * a for a in expected_a], rel=1e-5)
    assert [float(r[4]) for r in rows[1:]] == pytest.approx([0.1] * 3)
    assert rows[1][7] == ""  # no GPU: no peak memory


def test_results_csv_of_a_resumed_run_has_each_row_once(tmp_path):
    path, checkpoint = str(tmp_path / "results.csv"), str(tmp_path / "ckpt.pt")
    run(4, [CsvLogHook(path, 2)], checkpoint_path=checkpoint, checkpoint_period=2)
    with open(path, "a") as f:
        f.write("6,1,1,1,1,1,1,\n")  # a row written after the checkpoint by a run that then died
    run(8, [CsvLogHook(path, 2)], checkpoint_path=checkpoint, checkpoint_period=2, resume=True, extend=True)
    assert [int(r[0]) for r in read_rows(path)[1:]] == [2, 4, 6, 8]


def test_tensorboard_logs_losses_and_learning_rate(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install -e '.[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = str(tmp_path / "tb")
    run(4, [TensorBoardHook(log_dir, 2)], grad_clip_norm=100.0)
    events = EventAccumulator(log_dir)
    events.Reload()
    assert {"loss/loss_a", "loss/loss_b", "loss/total", "lr", "grad_norm"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/loss_a")] == [2, 4]
    assert [e.value for e in events.Scalars("loss/loss_a")] == pytest.approx([0.16, 0.16 ** 3], rel=1e-5)
    # |d total / dw| = 6 |w| at the step just taken (w = 0.4^1 before step 1, 0.4^3 before step 3).
    assert [e.value for e in events.Scalars("grad_norm")] == pytest.approx([6 * 0.4, 6 * 0.4 ** 3], rel=1e-5)
