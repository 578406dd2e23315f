"""Small models, datasets and helpers shared by the engine, checkpoint, inference and dataset tests.

- ``TinyDetector`` / ``TinyDataset`` / ``Scalar``: a fake detector (a conv and a linear layer) that returns
  FCOS-like losses, and 16 px images: a training step costs a millisecond, and faults are easy to inject.
- ``tiny_shapes`` / ``RandomAugment`` / ``train_tiny_fcos``: the real FCOS (RegNetX-400MF with random weights,
  ``pretrained=False``, 16-channel FPN and head) on 64 px Shapes images, augmented with Python's, NumPy's and
  torch's *global* RNGs as a student would write it.
- ``assert_message``, ``time_limit``, ``snapshot`` / ``assert_same_state``: checking helpers.

Everything here runs on one intra-op thread: results are bit-identical only for a fixed thread count.
"""
import contextlib
import random
import signal
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import eecs598
from a4_helper import ShapesDetection, train_detector
from conftest import make_fcos
from eecs598.data.shapes import SHAPE_CLASSES, generate_shapes_dataset

NUM_CLASSES = len(SHAPE_CLASSES)  # 5
IMAGE_SIZE = 64
# The stable from-scratch recipe (a4_helper.FROM_SCRATCH) with a short warm-up, so that warm-up and both
# MultiStepLR milestones (60% and 90% of max_iters) happen inside short runs: a resume must restore them.
RECIPE = dict(optimizer="adamw", learning_rate=2e-3, weight_decay=1e-4, warmup_iters=5, grad_clip_norm=5.0)
NAN, INF = float("nan"), float("inf")


# ==================================================================================================
# The fake detector
# ==================================================================================================

class TinyDataset(Dataset):
    """``n`` 3x16x16 images with one box each; ``augment`` adds noise from the global torch RNG."""

    def __init__(self, n=10, augment=True):
        self.n, self.augment = n, augment

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 16, 16, generator=g)
        if self.augment:
            image = image + 0.1 * torch.rand(3, 16, 16)  # random "augmentation": must be seeded per sample
        gt = torch.full((4, 5), -1.0)
        gt[0] = torch.tensor([1.0 + i, 2.0, 8.0 + i, 12.0, float(i % 3)])
        return f"img/{i:06d}.jpg", image, gt


class TinyDetector(nn.Module):
    """Returns FCOS-like losses from a conv, a BatchNorm and a linear layer.

    ``nan_at``: NaN loss_box at that call; ``crash_at``: KeyboardInterrupt at that call; ``sleep``: seconds per
    call (leaves time to kill a process between two checkpoints); ``ballast``: size of an extra trained
    weight vector, which makes checkpoints as large as a real model's (4 bytes per element, times 3 with
    AdamW's two moments) without making steps slower."""

    def __init__(self, nan_at=None, crash_at=None, sleep=0.0, ballast=0):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.ballast = nn.Parameter(torch.randn(ballast)) if ballast else None
        self.nan_at, self.crash_at, self.sleep, self.calls = nan_at, crash_at, sleep, 0
        self._normalizer = 150.0

    def training_state(self):  # the engine saves and restores it through these public methods
        return {"normalizer": self._normalizer}

    def load_training_state(self, state):
        self._normalizer = state["normalizer"]

    def forward(self, images, gt_boxes=None, test_score_thresh=None, test_nms_thresh=None):
        out = self.fc(F.relu(self.norm(self.conv(images))).mean((2, 3)))  # (B, 3)
        if self.sleep:
            time.sleep(self.sleep)
        if self.crash_at is not None and self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        valid = (gt_boxes[..., 4] >= 0).float()
        target = (gt_boxes[..., :4].clamp(min=0).sum(-1) * valid).sum(1) / 50
        self._normalizer = 0.9 * self._normalizer + 0.1 * float(valid.sum())
        loss_box = (out[:, 1] - target).abs().mean()
        if self.nan_at is not None and self.calls == self.nan_at:
            loss_box = loss_box * float("nan")
        self.calls += 1
        loss_ctr = F.softplus(out[:, 2]).mean() / self._normalizer
        if self.ballast is not None:
            loss_ctr = loss_ctr + 1e-3 * self.ballast.square().mean()
        return {"loss_cls": ((out[:, 0] - valid.sum(1)) ** 2).mean(), "loss_box": loss_box, "loss_ctr": loss_ctr}


class Scalar(nn.Module):
    """loss = w: with plain SGD (momentum 0, no weight decay) w drops by exactly lr_t each step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, images, gt_boxes):
        return {"loss_cls": self.w * 1.0}


def train_tiny(checkpoint_path=None, resume=False, max_iters=12, num_workers=0, seed=0, checkpoint_period=3,
               options=None, **detector_kwargs):
    """Seed, build a ``TinyDetector`` and train it (SGD, lr 0.01, or ``options``), with checkpoints every
    ``checkpoint_period`` iterations: ``(history, model)``."""
    eecs598.reset_seed(seed)
    model = TinyDetector(**detector_kwargs)
    loader = DataLoader(TinyDataset(), batch_size=4, num_workers=num_workers)
    history = train_detector(model, loader, max_iters=max_iters, log_period=5, checkpoint_path=checkpoint_path,
                             checkpoint_period=checkpoint_period, resume=resume, plot=False, progress=False,
                             **(options or dict(learning_rate=0.01)))
    return history, model


# ==================================================================================================
# The real FCOS on Shapes
# ==================================================================================================

def tiny_shapes(root, num_train=8, num_val=2):
    """Generate a tiny 64 px Shapes dataset in ``root``: ``(train, val)`` datasets."""
    generate_shapes_dataset(str(root), num_train=num_train, num_val=num_val, image_size=IMAGE_SIZE, seed=0,
                            quiet=True)
    return tuple(ShapesDetection(str(root), split, image_size=IMAGE_SIZE, generate=False, quiet=True)
                 for split in ("train", "val"))


class RandomAugment(Dataset):
    """Random horizontal flip (Python ``random``), brightness (NumPy) and pixel noise (torch), all from the
    *global* RNGs, as a student's augmentation would be written. Runs only repeat if every sample is loaded with
    seeded RNGs, in the main process and in DataLoader workers alike."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        path, image, gt = self.base[index]
        gt = gt.clone()
        if random.random() < 0.5:
            image = image.flip(-1)
            real = gt[:, 4] != -1
            width = image.shape[-1]
            x1, x2 = gt[real, 0].clone(), gt[real, 2].clone()
            gt[real, 0], gt[real, 2] = width - x2, width - x1
        image = image * float(np.random.uniform(0.8, 1.2)) + 0.1 * torch.randn_like(image)
        return path, image, gt


def tiny_fcos(seed=0):
    """The real FCOS with random weights, 16-channel FPN and a one-conv 16-channel head, seeded."""
    eecs598.reset_seed(seed)
    return make_fcos(num_classes=NUM_CLASSES, fpn_channels=16, stem_channels=(16,))


def train_tiny_fcos(dataset, max_iters, seed=0, num_workers=0, batch_size=2, model=None, **kwargs):
    """Seed, build the tiny FCOS (unless given), train with ``RECIPE``: ``(history, model)``."""
    model = tiny_fcos(seed) if model is None else model
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    options = dict(RECIPE, max_iters=max_iters, log_period=10**6, plot=False, progress=False)
    options.update(kwargs)
    return train_detector(model, loader, **options), model


# ==================================================================================================
# Checking helpers
# ==================================================================================================

def snapshot(module):
    """Copies of every parameter and buffer (``state_dict``) and of the detector's extra training state."""
    state = {name: value.detach().clone() for name, value in module.state_dict().items()}
    extra = module.training_state() if hasattr(module, "training_state") else None
    return state, extra


def assert_same_state(module, expected, what="the detector"):
    """Every parameter and buffer of ``module`` equals ``expected`` (from ``snapshot``) bit for bit."""
    state, extra = snapshot(module)
    expected_state, expected_extra = expected
    assert state.keys() == expected_state.keys()
    different = [name for name in state if not torch.equal(state[name], expected_state[name])]
    assert not different, f"{what}: {len(different)} tensors differ, e.g. {different[:4]}"
    assert extra == expected_extra, f"{what}: training state {extra} != {expected_extra}"


def assert_message(error, *fragments):
    """Every fragment (plain text, not a regex) must appear in the exception's message (and notes)."""
    message = str(error) + "".join("\n" + note for note in getattr(error, "__notes__", []))
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"error message {message!r} ({type(error).__name__}) lacks {missing}"


@contextlib.contextmanager
def time_limit(seconds, what):
    """Fail (instead of hanging the test run) if the body takes longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"{what} did not return within {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
