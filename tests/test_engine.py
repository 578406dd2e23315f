"""Tests of eecs598.train (``train_detector``): the loop, the schedule, determinism, faults inside a step.

- The loop and its numbers, on fakes whose result is known by hand (``Scalar``: loss = w).
- Determinism: ``eecs598.reset_seed`` + the same data -> bit-identical runs of the real tiny FCOS, also with
  DataLoader workers and an augmentation drawing from Python's, NumPy's and torch's global RNGs.
- Faults inside a step (issue 10, item 1): a NaN loss, a NaN gradient, a failing loader, an exception or
  Ctrl-C in the forward pass, Ctrl-C during the optimiser step, a failing hook. After each the detector holds
  exactly every parameter and buffer (and the loss normaliser) of the last completed step, compared with a
  copy taken then, and the message says which step that is.
- Arguments refused before any step, with messages naming the argument, what was expected and what was given.

Resume and checkpoints: tests/test_checkpoint.py.
"""
import math
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from a4_helper import train_detector
from eecs598.train.hooks import HookBase
from tiny_training import (NAN, INF, RandomAugment, Scalar, TinyDataset, TinyDetector, assert_message,
                           assert_same_state, snapshot, tiny_fcos, tiny_shapes, time_limit, train_tiny,
                           train_tiny_fcos)


@pytest.fixture(scope="module")
def shapes_train(tmp_path_factory):
    """8 train Shapes images of 64 x 64 px, generated once for the module."""
    return tiny_shapes(tmp_path_factory.mktemp("shapes"))[0]


# ==================================================================================================
# The loop and its numbers
# ==================================================================================================

def test_training_returns_finite_history_and_logs(capsys):
    history, _ = train_tiny(max_iters=6)
    assert list(history) == ["loss_cls", "loss_box", "loss_ctr", "total"]
    assert all(len(v) == 6 for v in history.values())
    assert all(np.isfinite(v).all() for v in history.values())
    np.testing.assert_allclose(np.sum([history[k] for k in ("loss_cls", "loss_box", "loss_ctr")], 0),
                               history["total"], rtol=1e-6)
    out = capsys.readouterr().out
    assert "[Iter 0][loss: " in out and "[Iter 5][loss: " in out and "[loss_ctr: " in out
    assert "[Iter 1]" not in out


def test_learning_rate_schedule_by_hand():
    model = Scalar()  # loss = w, so w drops by exactly lr_t each step
    loader = DataLoader(TinyDataset(4, augment=False), batch_size=2)
    history = train_detector(model, loader, learning_rate=0.1, weight_decay=0.0, max_iters=10, momentum=0.0,
                             warmup_iters=4, warmup_factor=0.001, plot=False, progress=False)
    steps = -np.diff(history["loss_cls"] + [model.w.item()])
    # warm-up: 0.1 * (0.001 + 0.999 * t / 4) for t = 0..3; then 0.1; x0.1 from int(0.6*10) = 6; x0.01 from 9.
    expected = [0.1 * (0.001 + 0.999 * t / 4) for t in range(4)] + [0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
    np.testing.assert_allclose(steps, expected, rtol=1e-9, atol=1e-12)


def test_weight_average_by_hand():
    model = Scalar()
    train_detector(model, DataLoader(TinyDataset(4, augment=False), batch_size=2), learning_rate=0.1,
                   weight_decay=0.0, momentum=0.0, max_iters=10, ema_decay=0.9, plot=False, progress=False)
    # Iterates: w_0 = 0, then lr_t = 0.1 (t < 6), 0.01 (6 <= t < 9), 0.001 (t = 9) is subtracted each step.
    lrs = [0.1] * 6 + [0.01] * 3 + [0.001]
    w, average = 0.0, 0.0
    for t, lr in enumerate(lrs):
        w -= lr
        decay = min(0.9, (1 + t) / (10 + t))
        average = decay * average + (1 - decay) * w
    assert model.w.item() == pytest.approx(average, rel=1e-12)
    assert average != pytest.approx(w)  # the average is not the last iterate


def test_weight_average_survives_resume(tmp_path):
    def run(checkpoint=None, resume=False, crash_at=None):
        return train_tiny(checkpoint, resume=resume, crash_at=crash_at,
                          options=dict(learning_rate=0.01, ema_decay=0.9))[1]

    uninterrupted = run()
    checkpoint = str(tmp_path / "ckpt.pt")
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, crash_at=7)
    resumed = run(checkpoint, resume=True)
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_loss_weights_scale_the_optimised_total():
    model = Scalar()
    history = train_detector(model, DataLoader(TinyDataset(4, augment=False), batch_size=2), learning_rate=0.1,
                             weight_decay=0.0, momentum=0.0, max_iters=3, loss_weights={"loss_cls": 3.0},
                             plot=False, progress=False)
    # d(3w)/dw = 3; milestones int(0.6*3) = 1 and int(0.9*3) = 2, so lr_0 = 0.1, lr_1 = 0.01, lr_2 = 0.001
    # and w = -3 * (0.1 + 0.01 + 0.001) = -0.333.
    assert model.w.item() == pytest.approx(-0.333, rel=1e-12)
    assert history["loss_cls"] == pytest.approx([0.0, -0.3, -0.33])  # unweighted
    assert history["total"] == pytest.approx([0.0, -0.9, -0.99])  # weighted


# ==================================================================================================
# Determinism (the real tiny FCOS)
# ==================================================================================================

DETERMINISM_ITERS = 8  # warm-up (5 iterations) and both milestones (4, 7) inside the run


@pytest.fixture(scope="module")
def reference_run(shapes_train):
    """An in-process (num_workers=0) run with seed 0: ``(history, snapshot)``."""
    history, model = train_tiny_fcos(RandomAugment(shapes_train), DETERMINISM_ITERS)
    return history, snapshot(model)


def test_same_seed_gives_bit_identical_runs(shapes_train, reference_run):
    reference, reference_state = reference_run
    assert list(reference) == ["loss_cls", "loss_box", "loss_ctr", "total"]
    assert all(len(v) == DETERMINISM_ITERS and all(map(math.isfinite, v)) for v in reference.values())
    history, model = train_tiny_fcos(RandomAugment(shapes_train), DETERMINISM_ITERS)
    assert history == reference  # Python floats compared exactly: bit-identical
    assert_same_state(model, reference_state)
    # Not vacuous: another seed changes the very first loss (initial weights, data order, augmentation).
    other, _ = train_tiny_fcos(RandomAugment(shapes_train), 1, seed=1)
    assert other["total"][0] != reference["total"][0]


def test_worker_processes_give_the_same_bit_identical_run(shapes_train, reference_run):
    # The samples' RNGs depend on their position in the data order only, not on the process loading them.
    reference, reference_state = reference_run
    history, model = train_tiny_fcos(RandomAugment(shapes_train), DETERMINISM_ITERS, num_workers=2)
    assert history == reference
    assert_same_state(model, reference_state)


# ==================================================================================================
# Faults inside a step: the detector keeps the state of the last completed step (issue 10, item 1)
# ==================================================================================================

class Snapshots(HookBase):
    """Hook: a copy of every parameter, buffer and the training state before training and after each step."""

    def __init__(self, model):
        self.model, self.after = model, {}

    def before_train(self, trainer):
        self.trainer = trainer
        self.after[-1] = snapshot(self.model)

    def after_step(self, trainer):
        self.after[trainer.state.iteration - 1] = snapshot(self.model)


class FailingSamples(Dataset):
    """Shapes samples; loading the ``fail_at``-th sample (counting loads) raises ``error``."""

    def __init__(self, base, fail_at, error):
        self.base, self.fail_at, self.error, self.loads = base, fail_at, error, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        self.loads += 1
        if self.loads == self.fail_at + 1:
            raise self.error
        return self.base[index]


def _at_call(k, action):
    """A hook (forward, forward-pre, tensor or optimiser) running ``action(*hook arguments)`` at its ``k``-th
    call (0-based) and returning its result then (None, i.e. "no change", at the other calls)."""
    calls = []

    def hook(*args):
        calls.append(1)
        return action(*args) if len(calls) == k + 1 else None
    return hook


def _raise(error):
    def action(*args):
        raise error
    return action


FAIL_AT = 2  # the failing iteration; 0 and 1 complete


def _poison_loss(model, dataset):
    # After the whole forward pass: BatchNorm statistics and FCOS's loss normaliser have been updated.
    def poison(module, args, losses):
        return dict(losses, loss_box=losses["loss_box"] * NAN)
    model.register_forward_hook(_at_call(FAIL_AT, poison))
    return dataset


def _poison_gradient(model, dataset):
    model.pred_net.pred_box.weight.register_hook(_at_call(FAIL_AT, lambda grad: grad * NAN))
    return dataset


def _fail_loading(model, dataset):
    return FailingSamples(dataset, 2 * FAIL_AT, OSError("Cannot read image x.jpg"))  # 2 samples per batch


def _fail_in_the_head(error):
    # The head runs after the backbone, whose BatchNorm layers have already updated their statistics.
    def inject(model, dataset):
        model.pred_net.register_forward_pre_hook(_at_call(FAIL_AT, _raise(error)))
        return dataset
    return inject


FAULTS = {
    # id: (fault injector(model, dataset) -> dataset, exception type, message fragments)
    "nan_loss": (_poison_loss, FloatingPointError,
                 ["non-finite loss at iteration 2", "loss_box=nan", "after iteration 1"]),
    "nan_gradient": (_poison_gradient, FloatingPointError,
                     ["non-finite gradient norm", "iteration 2", "after iteration 1"]),
    "loader_error": (_fail_loading, OSError, ["x.jpg", "during iteration 2", "after iteration 1"]),
    "error_in_forward": (_fail_in_the_head(RuntimeError("out of memory (simulated)")), RuntimeError,
                         ["out of memory", "during iteration 2", "after iteration 1"]),
    "ctrl_c_in_forward": (_fail_in_the_head(KeyboardInterrupt()), KeyboardInterrupt,
                          ["during iteration 2", "after iteration 1"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_inside_a_step_leaves_the_state_of_the_last_completed_step(shapes_train, fault):
    inject, error_type, fragments = FAULTS[fault]
    model = tiny_fcos()
    snapshots = Snapshots(model)
    with pytest.raises(error_type) as error:
        train_tiny_fcos(inject(model, shapes_train), 6, model=model, hooks=[snapshots])
    assert_message(error.value, *fragments)
    assert max(snapshots.after) == FAIL_AT - 1  # iterations before FAIL_AT completed, FAIL_AT did not
    assert snapshots.trainer.state.iteration == FAIL_AT
    assert_same_state(model, snapshots.after[FAIL_AT - 1], f"after {fault}")


def test_the_restored_buffers_had_really_changed(shapes_train):
    """Not vacuous: when the head fails, the backbone's BatchNorm statistics already differ from the copy taken
    after the last step; afterwards they equal it again."""
    model = tiny_fcos()
    snapshots = Snapshots(model)
    changed = []

    def fail(module, args):
        last_step = snapshots.after[FAIL_AT - 1][0]
        changed.extend(name for name, value in model.state_dict().items() if not torch.equal(value, last_step[name]))
        raise KeyboardInterrupt

    model.pred_net.register_forward_pre_hook(_at_call(FAIL_AT, fail))
    with pytest.raises(KeyboardInterrupt):
        train_tiny_fcos(shapes_train, 6, model=model, hooks=[snapshots])
    assert any(name.endswith("running_mean") for name in changed), changed
    assert not any(name.endswith(".weight") for name in changed), "only buffers change before the step"
    assert_same_state(model, snapshots.after[FAIL_AT - 1])


def test_ctrl_c_during_the_optimiser_step_completes_that_step_first(shapes_train):
    """SIGINT arriving while the optimiser updates the weights (here: just before) is held back until the step,
    the EMA and the bookkeeping are done; training then stops with the state after that step, never half of it
    (updated moments with old weights, or new weights with the old iteration count)."""
    model = tiny_fcos()
    snapshots = Snapshots(model)
    after_step = {}

    class InterruptOptimizer(HookBase):
        def before_train(self, trainer):
            trainer.optimizer.register_step_pre_hook(_at_call(FAIL_AT, lambda *args: signal.raise_signal(
                signal.SIGINT)))
            trainer.optimizer.register_step_post_hook(_at_call(FAIL_AT, lambda *args: after_step.update(
                state=snapshot(model))))

    with pytest.raises(KeyboardInterrupt) as error:
        train_tiny_fcos(shapes_train, 6, model=model, hooks=[snapshots, InterruptOptimizer()], ema_decay=0.9)
    assert "state" in after_step, "the interrupt stopped the optimiser step before it was applied"
    assert snapshots.trainer.state.iteration == FAIL_AT + 1  # the step was counted
    assert_message(error.value, f"after iteration {FAIL_AT}")
    # The EMA is handed back only at the end of a run: an interrupted run keeps the raw weights.
    assert_same_state(model, after_step["state"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C handling was not restored"


def test_a_failing_hook_leaves_the_state_after_its_step(shapes_train):
    model = tiny_fcos()
    snapshots = Snapshots(model)

    class FailingHook(HookBase):
        def after_step(self, trainer):
            if trainer.state.iteration == FAIL_AT:
                raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as error:
        train_tiny_fcos(shapes_train, 6, model=model, hooks=[snapshots, FailingHook()])
    assert_message(error.value, f"after iteration {FAIL_AT - 1}")
    assert_same_state(model, snapshots.after[FAIL_AT - 1])


def test_nan_loss_of_the_fake_detector_names_iteration_and_loss():
    with pytest.raises(FloatingPointError, match=r"iteration 3: loss_box=nan") as error:
        train_tiny(max_iters=10, nan_at=3)
    assert_message(error.value, "after iteration 2")


# ==================================================================================================
# Arguments refused before any step
# ==================================================================================================

class OneSample(Dataset):
    """``n`` copies of a 64 px sample with one box; ``nan=True`` puts a NaN pixel in the image."""

    def __init__(self, n=4, nan=False):
        self.n, self.nan = n, nan

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
        if self.nan:
            image[1, 10, 20] = NAN
        return f"img/{index}.jpg", image, torch.tensor([[4.0, 4.0, 40.0, 40.0, 1.0], [-1, -1, -1, -1, -1]])


class DictSamples(Dataset):
    """What a torchvision-style dataset returns: ``{"image": ..., "boxes": ...}`` dicts."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        path, image, gt = OneSample()[index]
        return {"image": image, "boxes": gt, "path": path}


TRAIN_CASES = {
    # id: (loader, train_detector keyword arguments, message fragments)
    "batch_size_none": (lambda: DataLoader(OneSample(), batch_size=None), {}, ["batch_size", ">= 1", "None"]),
    "batch_size_zero": (lambda: type("ZeroBatchLoader", (), dict(dataset=OneSample(), batch_size=0))(), {},
                        ["batch_size must be an int >= 1, got 0"]),
    "empty_dataset": (lambda: DataLoader(Subset(OneSample(), []), batch_size=2), {},
                      ["train_loader", "empty", "0 samples"]),
    "max_iters_zero": (None, dict(max_iters=0), ["max_iters must be an int >= 1, got 0"]),
    "max_iters_float": (None, dict(max_iters=2.5), ["max_iters", "int", "2.5"]),
    "checkpoint_period_zero": (None, dict(checkpoint_period=0), ["checkpoint_period", ">= 1", "0"]),
    "resume_without_checkpoint": (None, dict(resume=True), ["resume=True needs a checkpoint_path"]),
    "learning_rate_zero": (None, dict(learning_rate=0.0), ["learning_rate must be a finite number > 0, got 0.0"]),
    "learning_rate_nan": (None, dict(learning_rate=NAN), ["learning_rate", "> 0", "nan"]),
    "learning_rate_negative": (None, dict(learning_rate=-0.01), ["learning_rate", "> 0", "-0.01"]),
    "weight_decay_negative": (None, dict(weight_decay=-1e-4), ["weight_decay", ">= 0", "-0.0001"]),
    "weight_decay_inf": (None, dict(weight_decay=INF), ["weight_decay", "must be", "inf"]),
    "optimizer_unknown": (None, dict(optimizer="adam"), ["optimizer must be 'sgd' or 'adamw', got 'adam'"]),
    "momentum_negative": (None, dict(optimizer="sgd", momentum=-0.5), ["momentum", "must be", "-0.5"]),
    "momentum_nan": (None, dict(optimizer="sgd", momentum=NAN), ["momentum", "must be", "nan"]),
    "warmup_factor_zero": (None, dict(warmup_iters=2, warmup_factor=0.0), ["warmup_factor", "must be", "0.0"]),
    "warmup_factor_above_1": (None, dict(warmup_iters=2, warmup_factor=1.5), ["warmup_factor", "must be", "1.5"]),
    "grad_clip_norm_negative": (None, dict(grad_clip_norm=-1.0), ["grad_clip_norm", "> 0", "-1.0"]),
    "data_seed_string": (None, dict(data_seed="abc"), ["data_seed", "must be", "'abc'"]),
    "data_seed_negative": (None, dict(data_seed=-1), ["data_seed", "must be", "-1"]),
    # issue 10, item 3: a typo in a loss name, a negative or non-finite weight
    "loss_weight_unknown_name": (None, dict(loss_weights={"loss_clss": 2.0}),
                                 ["loss_weights", "'loss_clss'", "loss_cls, loss_box, loss_ctr"]),
    "loss_weight_negative": (None, dict(loss_weights={"loss_cls": -1.0}), ["loss_weights['loss_cls']", ">= 0",
                                                                           "-1.0"]),
    "loss_weight_nan": (None, dict(loss_weights={"loss_box": NAN}), ["loss_weights['loss_box']", "finite", "nan"]),
    "loss_weight_inf": (None, dict(loss_weights={"loss_ctr": INF}), ["loss_weights['loss_ctr']", "finite", "inf"]),
}


@pytest.fixture(scope="module")
def untouched_fcos():
    """One tiny FCOS for the tests that must not change it: ``(model, snapshot)``."""
    model = tiny_fcos()
    return model, snapshot(model)


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_detector_rejects_bad_arguments_before_any_step(untouched_fcos, case):
    make_loader, kwargs, fragments = TRAIN_CASES[case]
    loader = make_loader() if make_loader else DataLoader(OneSample(), batch_size=2)
    model, before = untouched_fcos
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    options = dict(max_iters=1, plot=False, progress=False)
    options.update(kwargs)
    try:
        with pytest.raises((ValueError, TypeError)) as error:
            train_detector(model, loader, **options)
    finally:
        handle.remove()
    assert_message(error.value, *fragments)
    assert calls == [], "refused after a forward pass"
    assert_same_state(model, before)


def test_unknown_loss_name_without_loss_names_is_refused_at_the_first_step():
    # A detector that does not list its losses: the names are checked against the first step's losses, and
    # that step changes nothing.
    model = TinyDetector()
    before = snapshot(model)
    with pytest.raises(ValueError) as error:
        train_detector(model, DataLoader(TinyDataset(), batch_size=4), max_iters=2, loss_weights={"loss_bx": 2.0},
                       plot=False, progress=False)
    assert_message(error.value, "'loss_bx'", "loss_cls, loss_box, loss_ctr")
    assert_same_state(model, before)


@pytest.mark.parametrize("case", ["nan_image", "dict_batches"])
def test_a_bad_batch_is_refused_before_it_changes_anything(untouched_fcos, case):
    dataset = OneSample(nan=True) if case == "nan_image" else DictSamples()
    model, before = untouched_fcos
    with pytest.raises((ValueError, TypeError)) as error:
        train_detector(model, DataLoader(dataset, batch_size=2), max_iters=2, plot=False, progress=False)
    if case == "nan_image":
        assert_message(error.value, "images", "NaN")
    else:
        assert_message(error.value, "batch of iteration 0", "dict", "'image'", "(image_paths, images")
    assert_same_state(model, before)


@pytest.mark.parametrize("case", ["empty_list", "exhausted_iterator"])
def test_a_loader_without_batches_raises_instead_of_hanging(case):
    # A plain iterable of batches (no ``.dataset``) is documented as "iterated over and over". One that yields
    # nothing (an empty list; a one-shot iterator after its first pass) must give an error, not loop forever.
    batch = next(iter(DataLoader(OneSample(2), batch_size=2)))
    loader = [] if case == "empty_list" else iter([batch])
    model = TinyDetector()
    with time_limit(8, f"train_detector on {case}"), pytest.raises(ValueError) as error:
        train_detector(model, loader, max_iters=3, plot=False, progress=False)
    assert_message(error.value, "train_loader")
