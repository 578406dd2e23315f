"""Opt-in engine options, checked on the CPU against the default path: mixed precision, fused optimiser
steps, sync-free steps (and their fault guard), the device-resident image cache, torch.compile, and
extending a finished run."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import eecs598
from a4_helper import ShapesDetection, load_checkpoint, train_detector
from conftest import make_fcos
from eecs598.train import HookBase, TrainSettings, extended_milestones, learning_rate_factor
from eecs598.data.shapes import generate_shapes_dataset


FOUR = []  # the fixed 4-image subset, one object per module (its id keys the run cache)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes_dataset(root, num_train=12, num_val=1, image_size=64, seed=0, quiet=True)
    dataset = ShapesDetection(root, "train", image_size=64, generate=False, quiet=True)
    FOUR[:] = [torch.utils.data.Subset(dataset, range(4))]
    return dataset


_RUNS = {}


def run_fcos(dataset, iters=12, **options):
    """Train the tiny FCOS; runs with the same arguments are computed once per module (they are
    deterministic), so that several tests can compare against one reference run."""
    key = (id(dataset), iters, repr(sorted(options.items())))
    if key not in _RUNS:
        _RUNS[key] = _train_fcos(dataset, iters, **options)
    return _RUNS[key]


def _train_fcos(dataset, iters, **options):
    eecs598.reset_seed(0)
    model = make_fcos(num_classes=5, fpn_channels=16, stem_channels=(16,))
    options = {"optimizer": "adamw", "learning_rate": 1e-3, "log_period": 4, **options}
    history = train_detector(model, DataLoader(dataset, batch_size=4), max_iters=iters, plot=False,
                             progress=False, data_seed=5, **options)
    return history, model


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimizer_follows_the_same_trajectory(shapes, optimizer):
    reference, reference_model = run_fcos(shapes, iters=4, optimizer=optimizer)
    fused, fused_model = run_fcos(shapes, iters=4, optimizer=optimizer, fused_optimizer=True)
    # Same update rule, other kernels: rounding differences only (Adam divides by sqrt(v), which makes
    # rounding in tiny gradients visible sooner, hence few iterations).
    np.testing.assert_allclose(fused["total"], reference["total"], rtol=1e-4 if optimizer == "sgd" else 2e-3)
    if optimizer == "sgd":  # (Adam's sign-like steps on near-zero gradients differ by a whole step)
        for (name, a), b in zip(reference_model.named_parameters(), fused_model.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=name)


def test_sync_free_steps_give_exactly_the_synced_history(shapes):
    synced, synced_model = run_fcos(shapes, fused_optimizer=True)
    free, free_model = run_fcos(shapes, fused_optimizer=True, sync_every_step=False)
    assert free == synced
    for (name, a), b in zip(synced_model.state_dict().items(), free_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_sync_free_steps_need_a_kernel_that_can_skip_a_step(shapes):
    with pytest.raises(ValueError, match="sync_every_step=False needs fused_optimizer=True"):
        run_fcos(shapes, sync_every_step=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_float32(shapes, precision):
    # One fixed batch of 4 images, so that the loss falls steadily and the runs can be compared.
    reference, _ = run_fcos(FOUR[0], iters=10)
    mixed, _ = run_fcos(FOUR[0], iters=10, precision=precision)
    assert np.isfinite(mixed["total"]).all()
    # Iteration 0: the same weights, the forward pass in 16-bit: agreement to about 1%.
    assert mixed["total"][0] == pytest.approx(reference["total"][0], rel=2e-2)
    # Then the same trajectory: the first steps within 3%, the mean of the last five within 10% (single
    # steps of a random network at 64 px may spike; the losses move by +-40% over these steps as the loss
    # normaliser adapts and the head learns).
    np.testing.assert_allclose(mixed["total"][:5], reference["total"][:5], rtol=0.03)
    assert np.mean(mixed["total"][-5:]) == pytest.approx(np.mean(reference["total"][-5:]), rel=0.1)


def test_image_cache_serves_the_same_batches_as_the_loader(shapes):
    loader_run, loader_model = run_fcos(shapes)
    cached_run, cached_model = run_fcos(shapes, image_cache=True)
    np.testing.assert_allclose(cached_run["total"], loader_run["total"], rtol=1e-6)


def test_compiled_model_matches_eager(shapes):
    # The "eager" backend runs the captured graphs without generating code: checks the wiring quickly.
    eager, _ = run_fcos(shapes, iters=3)
    compiled, _ = run_fcos(shapes, iters=3, compile_model="eager")
    np.testing.assert_allclose(compiled["total"], eager["total"], rtol=1e-5)


class Scalar(nn.Module):
    """loss = w; each SGD step (momentum 0, no decay) subtracts exactly the LR; NaN at call ``nan_at``."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))
        self.nan_at = nan_at

    def forward(self, images, gt_boxes):
        self.calls += 1  # a buffer changed by the forward pass, like BatchNorm's statistics
        loss = self.w * 1.0
        if self.nan_at is not None and int(self.calls) - 1 == self.nan_at:
            loss = loss * float("nan")
        return {"loss_cls": loss}


class Blank(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return "x.jpg", torch.zeros(3, 8, 8), torch.full((1, 5), -1.0)


def scalar_run(model, iters, **kwargs):
    return train_detector(model, DataLoader(Blank(), batch_size=2), learning_rate=0.1, weight_decay=0.0,
                          momentum=0.0, max_iters=iters, plot=False, progress=False, **kwargs)


def test_sync_free_guard_keeps_the_last_good_step():
    model = Scalar(nan_at=5)
    with pytest.raises(FloatingPointError, match=r"iteration 5.*after iteration 4"):
        scalar_run(model, 10, log_period=4, fused_optimizer=True, sync_every_step=False)
    good = Scalar()
    scalar_run(good, 5, log_period=4, fused_optimizer=True, sync_every_step=False, milestones=(6, 9))
    # Steps 0..4 landed (lr 0.1 each, milestones of the 10-iteration run at 6 and 9); 5..7 were skipped.
    assert model.w.item() == pytest.approx(-0.5, abs=1e-12) == good.w.item()
    assert int(model.calls) == 5, "the float buffer changed by the failing forward passes was put back"


def test_extending_a_finished_run_keeps_the_passed_milestones(tmp_path):
    checkpoint = str(tmp_path / "run.pt")
    model = Scalar()
    scalar_run(model, 10, checkpoint_path=checkpoint)  # milestones 6 and 9: w = -(6 * 0.1 + 3 * 0.01 + 0.001)
    assert model.w.item() == pytest.approx(-0.631, abs=1e-12)
    with pytest.raises(ValueError, match="pass extend=True"):
        scalar_run(Scalar(), 15, checkpoint_path=checkpoint, resume=True)
    model = Scalar()
    history = scalar_run(model, 15, checkpoint_path=checkpoint, resume=True, extend=True)
    # Both milestones were passed: the 5 added steps run at the final LR 0.001.
    assert model.w.item() == pytest.approx(-0.636, abs=1e-12)
    assert len(history["total"]) == 15
    assert load_checkpoint(checkpoint)["settings"]["milestones"] == [6, 9]


def test_extended_milestones_by_hand():
    assert extended_milestones([6, 9], 20, 10) == (6, 9)  # finished: both passed
    assert extended_milestones([6, 9], 20, 7) == (6, 18)  # 9 not reached: moves to 90% of 20
    assert extended_milestones([6, 9], 20, 3) == (12, 18)  # interrupted early: the longer run's schedule
    settings = TrainSettings(max_iters=10, warmup_iters=2, warmup_factor=0.5)
    assert [learning_rate_factor(t, settings) for t in (0, 1, 2, 6, 9)] == pytest.approx(
        [0.5, 0.75, 1.0, 0.1, 0.01])


class StopAfter(HookBase):
    """Hook: raise after iteration ``n`` (a crash between checkpoints)."""

    def __init__(self, n):
        self.n = n

    def after_step(self, trainer):
        if trainer.state.iteration == self.n:
            raise RuntimeError("simulated crash")


def test_on_device_augmentation_changes_the_batches_and_resumes_exactly(shapes, tmp_path):
    augment = {"flip_prob": 0.5, "scale_range": (0.8, 1.25)}
    plain, _ = run_fcos(shapes, iters=4)
    augmented, _ = run_fcos(shapes, iters=4, augment=augment)
    assert augmented["total"][0] != plain["total"][0]  # the very first batch is already transformed
    checkpoint = str(tmp_path / "ckpt.pt")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_fcos(shapes, 4, augment=augment, checkpoint_path=checkpoint, checkpoint_period=2, hooks=[StopAfter(3)])
    resumed, _ = _train_fcos(shapes, 4, augment=augment, checkpoint_path=checkpoint, checkpoint_period=2, resume=True)
    assert resumed == augmented


def test_augment_settings_are_validated():
    with pytest.raises(ValueError, match="augment\\['flip_prob'\\] must be in \\[0, 1\\]"):
        TrainSettings(augment={"flip_prob": 2})
    with pytest.raises(ValueError, match="scale_range"):
        TrainSettings(augment={"scale_range": (1.5, 0.5)})
    with pytest.raises(ValueError, match="keys 'flip_prob' and/or 'scale_range'"):
        TrainSettings(augment={"flip": 0.5})
