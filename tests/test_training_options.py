"""Training options of issue 20 / 21: gradient accumulation, frozen BatchNorm, the memory format, and the guard
looking at the gradients (a finite loss with an infinite gradient) with errors naming what was not finite.

- Accumulation: 4 micro-batches of 4 images equal one batch of 16 (float64, frozen BatchNorm) against a plain
  batch-16 run, weights and losses; without the normaliser correction they do not (the test can fail). Iteration
  counts, LR schedule, checkpoints and resumes in optimiser steps (``Scalar``: loss = w, so each step moves w by
  exactly the LR); fp16, ``--no-step-sync`` and a bad micro-batch.
- Frozen BatchNorm: the trunk's layers become ``FrozenBatchNorm2d`` with the same statistics and outputs, are not
  trained, and checkpoints without ``num_batches_tracked`` load in ``load_detector`` and ``--eval-only``.
- Memory format: ``auto`` resolves by device, ``contiguous`` trains the same losses, FCOS built directly is
  unchanged.
- The command line's flags ``--accumulate``, ``--freeze-bn``, ``--memory-format``.
"""
import math

import numpy as np
import pytest
import torch
from conftest import make_fcos
from tiny_training import (
    INF,
    Scalar,
    TinyDataset,
    TinyDetector,
    assert_message,
    assert_same_state,
    snapshot,
    tiny_fcos,
    tiny_shapes,
    train_tiny,
    train_tiny_fcos,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.ops import FrozenBatchNorm2d

import eecs598
import train_fcos
from a4_helper import train_detector
from eecs598.train import HookBase
from eecs598.train.api import resolve_memory_format
from eecs598.train.checkpoint import load_checkpoint
from eecs598.train.distributed import DistributedContext


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory):
    """16 train Shapes images of 64 x 64 px."""
    return tiny_shapes(tmp_path_factory.mktemp("shapes"), num_train=16, num_val=2)[0]


def collate_float64(samples):
    paths, images, gt_boxes = default_collate(samples)
    return paths, images.double(), gt_boxes.double()


def float64_fcos():
    eecs598.reset_seed(0)
    return make_fcos(num_classes=5, fpn_channels=16, stem_channels=(16,)).double()


class Plain(nn.Module):
    """FCOS without ``begin_accumulation`` / ``end_accumulation``: each micro-batch updates the normaliser."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, images, gt_boxes):
        return self.detector(images, gt_boxes)


def train_float64(model, dataset, batch_size, accumulate_steps, iters=3):
    return train_detector(model, DataLoader(dataset, batch_size=batch_size, collate_fn=collate_float64),
                          learning_rate=0.01, max_iters=iters, log_period=1, plot=False, progress=False,
                          data_seed=3, freeze_bn=True, accumulate_steps=accumulate_steps)


def max_relative_difference(state, reference):
    return max(float((state[k] - v).abs().max() / v.abs().max().clamp(min=1e-30))
               for k, v in reference.items() if v.is_floating_point())


# ==================================================================================================
# Gradient accumulation
# ==================================================================================================

def test_four_micro_batches_of_four_equal_one_batch_of_sixteen(shapes16):
    # The reference: the course's step on all 16 images at once (accumulate_steps=1, one batch per step).
    big = float64_fcos()
    big_history = train_float64(big, shapes16, batch_size=16, accumulate_steps=1)
    small = float64_fcos()
    small_history = train_float64(small, shapes16, batch_size=4, accumulate_steps=4)
    assert len(small_history["total"]) == 3  # optimiser steps, not micro-batches
    for name in big_history:
        np.testing.assert_allclose(small_history[name], big_history[name], rtol=1e-12, err_msg=name)
    assert small.loss_normalizer == pytest.approx(big.loss_normalizer, rel=1e-14)
    assert small.state_dict().keys() == big.state_dict().keys()
    assert max_relative_difference(small.state_dict(), big.state_dict()) < 1e-12
    # The weights really moved (the comparison is not of two untouched models), and the normaliser correction
    # is what makes them equal: without it each micro-batch moves the normaliser EMA, and the weights differ.
    assert max_relative_difference(float64_fcos().state_dict(), {k: v for k, v in big.state_dict().items()
                                                                 if "running" not in k}) > 1e-2
    naive = float64_fcos()
    train_float64(Plain(naive), shapes16, batch_size=4, accumulate_steps=4)
    assert max_relative_difference(naive.state_dict(), big.state_dict()) > 1e-3
    assert abs(naive.loss_normalizer - big.loss_normalizer) > 1.0


class OneProcessGroup(DistributedContext):
    """A distributed context over a gloo process group of one: the DDP wrapper and its reductions, in-process."""

    @property
    def enabled(self):
        return True


def test_under_ddp_only_the_last_micro_batch_all_reduces_and_the_result_is_one_big_batch(shapes16, monkeypatch):
    import torch.distributed as dist

    entered = []
    no_sync = nn.parallel.DistributedDataParallel.no_sync

    def counting_no_sync(self):
        entered.append(1)
        return no_sync(self)

    monkeypatch.setattr(nn.parallel.DistributedDataParallel, "no_sync", counting_no_sync)
    big = float64_fcos()
    big_history = train_float64(big, shapes16, batch_size=8, accumulate_steps=1, iters=2)
    dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:0")
    try:
        small = float64_fcos()
        history = train_detector(small, DataLoader(shapes16, batch_size=4, collate_fn=collate_float64),
                                 learning_rate=0.01, max_iters=2, plot=False, progress=False, data_seed=3,
                                 freeze_bn=True, accumulate_steps=2, distributed=OneProcessGroup())
    finally:
        dist.destroy_process_group()
    assert len(entered) == 2  # one no_sync() per step: micro-batch 0 of 2 (the last one all-reduces)
    np.testing.assert_allclose(history["total"], big_history["total"], rtol=1e-12)
    assert max_relative_difference(small.state_dict(), big.state_dict()) < 1e-12


class Blank(Dataset):
    """4 black 8 px images without objects."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return f"{i}.jpg", torch.zeros(3, 8, 8), torch.full((1, 5), -1.0)


class Calls(HookBase):
    """Records ``(optimiser steps done, forward calls so far)`` after every step."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def after_step(self, trainer):
        self.seen.append((trainer.state.iteration, int(self.model.calls)))


class CountingScalar(Scalar):
    """loss = w (w drops by exactly lr_t per SGD step without momentum); counts forward calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images, gt_boxes):
        self.calls += 1
        return super().forward(images, gt_boxes)


def scalar_run(model, iters, **kwargs):
    options = dict(learning_rate=0.1, weight_decay=0.0, momentum=0.0, max_iters=iters, plot=False, progress=False)
    options.update(kwargs)
    return train_detector(model, DataLoader(Blank(), batch_size=2), **options)


def test_iterations_schedule_and_checkpoints_count_optimiser_steps(tmp_path):
    model = CountingScalar()
    calls = Calls(model)
    path = str(tmp_path / "run.pt")
    history = scalar_run(model, 5, accumulate_steps=3, warmup_iters=2, warmup_factor=0.5, checkpoint_path=path,
                         checkpoint_period=2, hooks=[calls])
    # 5 steps of 3 micro-batches. LR by hand: warm-up 0.1 * (0.5, 0.75), then 0.1; x0.1 from int(0.6*5) = 3,
    # x0.01 from int(0.9*5) = 4. The micro-batch gradients (each 1, weighted 1/3) add up to 1 per step.
    steps = -np.diff(history["loss_cls"] + [model.w.item()])
    np.testing.assert_allclose(steps, [0.05, 0.075, 0.1, 0.01, 0.001], rtol=1e-12)
    assert calls.seen == [(i, 3 * i) for i in range(1, 6)]
    saved = load_checkpoint(path)
    assert saved["state"]["iteration"] == 5 and saved["settings"]["accumulate_steps"] == 3
    # 15 batches of 2 from 4 images (2 batches per epoch): epoch 7, one batch into it.
    assert (saved["state"]["epoch"], saved["state"]["offset"]) == (7, 1)


class StopAfter(HookBase):
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer):
        if trainer.state.iteration == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_accumulating_run_resumes_exactly(tmp_path):
    options = dict(learning_rate=0.01, accumulate_steps=3)
    reference, reference_model = train_tiny(max_iters=7, options=options)
    path = str(tmp_path / "run.pt")
    with pytest.raises(KeyboardInterrupt):
        train_tiny(path, max_iters=7, checkpoint_period=2, options=dict(options, hooks=[StopAfter(5)]))
    assert load_checkpoint(path)["state"]["iteration"] == 4
    resumed, model = train_tiny(path, resume=True, max_iters=7, checkpoint_period=2, options=options)
    assert resumed == reference
    assert_same_state(model, snapshot(reference_model))
    with pytest.raises(ValueError, match="accumulate_steps"):  # a resume with another accumulation is refused
        train_tiny(path, resume=True, max_iters=7, options=dict(options, accumulate_steps=2))


def test_fp16_skips_the_step_whose_micro_batch_overflows():
    model = CountingScalar()
    calls = []

    def overflow_in_the_second_micro_batch_of_step_1(grad):
        calls.append(1)
        return grad * INF if len(calls) == 5 else None  # calls 0-2: step 0; 3-5: step 1

    model.w.register_hook(overflow_in_the_second_micro_batch_of_step_1)
    scalar_run(model, 3, accumulate_steps=3, precision="fp16", milestones=(10,))
    # Steps 0 and 2 landed (lr 0.1 each), step 1 was skipped by the gradient scaler: no error, as for any fp16
    # overflow, and the scaler's step and update ran once per optimiser step (else steps would be lost).
    assert model.w.item() == pytest.approx(-0.2, abs=1e-12)


def test_fp16_without_step_sync_skips_every_step_after_a_bad_one():
    model = CountingScalar()
    calls = []

    def poison_step_5(module, args, losses):  # a Python counter: the guard's buffer restore cannot undo it
        calls.append(1)
        return {"loss_cls": losses["loss_cls"] * math.nan} if len(calls) == 6 else None

    model.register_forward_hook(poison_step_5)
    with pytest.raises(FloatingPointError) as error:
        scalar_run(model, 10, log_period=4, precision="fp16", sync_every_step=False)
    assert_message(error.value, "non-finite loss at iteration 5: loss_cls=nan", "later steps were skipped")
    # Steps 0-4 landed (lr 0.1); 5 was bad, and 6 and 7 (lr 0.01 from int(0.6*10) = 6) were skipped as the
    # message says (they landed before: w was -0.52).
    assert model.w.item() == pytest.approx(-0.5, abs=1e-12)


def test_sync_free_accumulation_skips_the_bad_step_and_says_which(tmp_path):
    model = TinyDetector(nan_at=7)  # forward call 7: step 3, micro-batch 1 of 2
    snapshots = {}

    class Keep(HookBase):
        def after_step(self, trainer):
            snapshots[trainer.state.iteration - 1] = snapshot(model)

    loader = DataLoader(TinyDataset(4, augment=False), batch_size=2)
    eecs598.reset_seed(0)
    with pytest.raises(FloatingPointError) as error:
        train_detector(model, loader, learning_rate=0.01, max_iters=8, log_period=4, plot=False, progress=False,
                       fused_optimizer=True, sync_every_step=False, accumulate_steps=2, hooks=[Keep()])
    assert_message(error.value, "non-finite loss at iteration 3: loss_box=nan", "after iteration 2",
                   "later steps were skipped")
    assert "loss_cls=" not in str(error.value), "only the non-finite values are named"
    state, _ = snapshot(model)
    good, _ = snapshots[2]
    assert all(torch.equal(state[k], good[k]) for k in good), "weights and BatchNorm buffers of step 2"


def test_a_bad_micro_batch_fails_the_whole_step_and_restores_it(shapes16):
    model = tiny_fcos()
    after = {}

    class Keep(HookBase):
        def after_step(self, trainer):
            after[trainer.state.iteration - 1] = snapshot(model)

    calls = []

    def poison(module, args, losses):  # forward call 5: step 2, micro-batch 1 of 2
        calls.append(1)
        return dict(losses, loss_ctr=losses["loss_ctr"] * math.nan) if len(calls) == 6 else None

    model.register_forward_hook(poison)
    with pytest.raises(FloatingPointError) as error:
        train_tiny_fcos(shapes16, 4, model=model, accumulate_steps=2, hooks=[Keep()])
    assert_message(error.value, "non-finite loss at iteration 2 (micro-batch 1 of 2): loss_ctr=nan",
                   "after iteration 1")
    # Micro-batch 0 of step 2 had updated BatchNorm's statistics: put back, with the loss normaliser.
    assert_same_state(model, after[1], "after the failed step")


def test_accumulate_steps_is_validated():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="accumulate_steps must be an int >= 1"):
            scalar_run(Scalar(), 1, accumulate_steps=bad)


# ==================================================================================================
# A finite loss with a non-finite gradient (issue 21 item 4) and what the errors name (item 5)
# ==================================================================================================

def inf_gradient_at(model, step):
    """A tensor hook that turns ``model.w``'s gradient into -inf at its ``step``-th call (the loss stays finite)."""
    calls = []

    def hook(grad):
        calls.append(1)
        return grad * -INF if len(calls) == step + 1 else None
    model.w.register_hook(hook)


@pytest.mark.parametrize("sync", [True, False])
def test_an_infinite_gradient_of_a_finite_loss_never_lands_without_clipping(tmp_path, sync):
    model = Scalar()
    inf_gradient_at(model, 3)
    path = str(tmp_path / "run.pt")
    options = {} if sync else dict(fused_optimizer=True, sync_every_step=False)
    with pytest.raises(FloatingPointError) as error:
        scalar_run(model, 8, milestones=(10,), checkpoint_path=path, checkpoint_period=1, log_period=2, **options)
    # Steps 0-2 landed (w = -0.3); step 3's gradient was -inf: it did not (today it made w +inf and saved it).
    assert model.w.item() == pytest.approx(-0.3, abs=1e-12)
    assert_message(error.value, "non-finite gradient (largest |gradient| = inf) at iteration 3",
                   "while every loss was finite (loss_cls=-0.3", "after iteration 2")
    saved = load_checkpoint(path)  # refuses non-finite weights: none were written
    assert saved["state"]["iteration"] == 3 and saved["model"]["w"].item() == pytest.approx(-0.3, abs=1e-12)


def test_sync_free_error_with_clipping_names_the_gradient_not_the_finite_losses():
    model = Scalar()
    inf_gradient_at(model, 2)
    with pytest.raises(FloatingPointError) as error:
        scalar_run(model, 8, milestones=(10,), grad_clip_norm=10.0, fused_optimizer=True, sync_every_step=False,
                   log_period=4)
    message = str(error.value)
    assert "non-finite loss" not in message, message  # was: "non-finite loss at iteration 2: {finite values}"
    assert_message(error.value, "non-finite gradient norm (inf) at iteration 2", "loss_cls=-0.2",
                   "after iteration 1", "later steps were skipped")
    assert model.w.item() == pytest.approx(-0.2, abs=1e-12)


def test_sync_free_error_names_only_the_non_finite_losses():
    with pytest.raises(FloatingPointError) as error:
        train_tiny(max_iters=10, nan_at=3, options=dict(learning_rate=0.01, fused_optimizer=True,
                                                        sync_every_step=False))
    assert_message(error.value, "non-finite loss at iteration 3: loss_box=nan.", "after iteration 2")
    assert "loss_cls" not in str(error.value) and "loss_ctr" not in str(error.value)


# ==================================================================================================
# Frozen BatchNorm
# ==================================================================================================

def test_freeze_bn_keeps_the_statistics_and_stops_training_them(shapes16):
    model = tiny_fcos()
    trunk = model.backbone.backbone
    names = [name for name, m in trunk.named_modules() if isinstance(m, nn.BatchNorm2d)]
    before = {f"{n}.{t}": trunk.get_submodule(n).get_buffer(t) if "running" in t
              else trunk.get_submodule(n).get_parameter(t) for n in names
              for t in ("weight", "bias", "running_mean", "running_var")}
    before = {k: v.detach().clone() for k, v in before.items()}
    conv = next(p for p in trunk.parameters() if p.dim() == 4).detach().clone()
    train_tiny_fcos(shapes16, 2, model=model, freeze_bn=True, learning_rate=1e-2)
    assert len(names) > 0 and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 0
    assert all(isinstance(trunk.get_submodule(n), FrozenBatchNorm2d) for n in names)
    # Statistics and affine parameters are those the layers had, after two steps that moved the convs.
    after = trunk.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not torch.equal(next(p for p in trunk.parameters() if p.dim() == 4), conv)
    assert not any("num_batches_tracked" in k for k in model.state_dict())


def test_a_frozen_layer_computes_what_batchnorm_computes_in_eval_mode():
    from eecs598.models.frozen_bn import freeze_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, eps=1e-3))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 2)
        net[1].bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 9, 9)
    expected = net.eval()(x)
    assert freeze_batchnorm(net) == 1 and isinstance(net[1], FrozenBatchNorm2d) and net[1].eps == 1e-3
    torch.testing.assert_close(net.train()(x), expected, rtol=1e-5, atol=1e-6)  # the same in training mode


def test_the_head_keeps_its_group_norm():
    from eecs598.models.frozen_bn import freeze_batchnorm
    from one_stage_detector import FCOS

    model = FCOS(5, 16, [16], pretrained=False, head_norm="group")
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.backbone.modules())
    assert freeze_batchnorm(model) == norms > 0  # the trunk's layers; the FPN has none
    assert sum(isinstance(m, nn.GroupNorm) for m in model.pred_net.modules()) == 2  # one per head stem


# ==================================================================================================
# Memory format
# ==================================================================================================

def test_auto_memory_format_follows_the_device():
    assert resolve_memory_format("auto", torch.device("cpu")) is torch.channels_last
    assert resolve_memory_format("auto", torch.device("cuda")) is torch.contiguous_format
    assert resolve_memory_format("channels_last", torch.device("cuda")) is torch.channels_last
    assert resolve_memory_format("contiguous", torch.device("cpu")) is torch.contiguous_format


def test_fcos_built_directly_stays_channels_last():
    model = make_fcos(num_classes=5, fpn_channels=16, stem_channels=(16,))
    assert model.memory_format is torch.channels_last
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_contiguous_training_gives_the_losses_of_channels_last(shapes16):
    reference, _ = train_tiny_fcos(shapes16, 3)
    history, model = train_tiny_fcos(shapes16, 3, memory_format="contiguous")
    assert model.memory_format is torch.contiguous_format
    assert all(p.is_contiguous() for p in model.parameters())
    np.testing.assert_allclose(history["total"], reference["total"], rtol=1e-4)
    model.eval()
    boxes, classes, scores = model(torch.zeros(1, 3, 64, 64), test_score_thresh=0.0)
    assert boxes.shape[1] == 4 and len(classes) == len(scores)


def test_memory_format_is_validated():
    with pytest.raises(ValueError, match="memory_format must be one of auto, channels_last, contiguous"):
        scalar_run(Scalar(), 1, memory_format="nhwc")


# ==================================================================================================
# The command line
# ==================================================================================================

def test_the_command_line_flags_reach_train_detector(monkeypatch):
    args = train_fcos.parse_args(["--accumulate", "4", "--freeze-bn", "--memory-format", "contiguous",
                                  "--batch-size", "4"])
    assert (args.accumulate_steps, args.freeze_bn, args.memory_format) == (4, True, "contiguous")
    defaults = train_fcos.parse_args([])
    assert (defaults.accumulate_steps, defaults.freeze_bn, defaults.memory_format) == (1, False, "auto")
    from eecs598.tools.train_args import train_settings
    assert train_settings(args)["accumulate_steps"] == 4 and train_settings(args)["freeze_bn"] is True


def test_the_command_line_refuses_a_bad_accumulation(capsys):
    with pytest.raises(SystemExit) as stop:
        train_fcos.parse_args(["--accumulate", "0"])
    assert stop.value.code == 2
    assert "--accumulate must be an int >= 1, got 0" in capsys.readouterr().err


def test_a_frozen_accumulating_run_trains_evaluates_and_loads(tmp_path, monkeypatch):
    import eecs598.tools.train
    from eecs598.tools.detector import load_detector

    calls = []

    def recording_train_detector(*args, **kwargs):
        calls.append(kwargs)
        return train_detector(*args, **kwargs)

    monkeypatch.setattr(eecs598.tools.train, "train_detector", recording_train_detector)
    run_dir = tmp_path / "run"
    argv = ["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(run_dir),
            "--num-train", "8", "--num-val", "2", "--image-size", "64", "--max-iters", "2", "--batch-size", "2",
            "--fpn-channels", "16", "--stem-channels", "16", "--no-progress", "--threads", "1",
            "--accumulate", "2", "--freeze-bn", "--memory-format", "channels_last"]
    metrics = train_fcos.main(argv)
    assert [(c["accumulate_steps"], c["freeze_bn"], c["memory_format"]) for c in calls] == [(2, True, "channels_last")]
    assert metrics["iterations"] == 2 and metrics["settings"]["accumulate_steps"] == 2
    checkpoint = load_checkpoint(str(run_dir / "checkpoint.pt"))
    assert checkpoint["settings"]["freeze_bn"] is True and (checkpoint["state"]["epoch"], checkpoint["state"]["offset"]) == (1, 0)  # 2 x 2 of 4 batches
    assert not any("num_batches_tracked" in k for k in checkpoint["model"])
    again = train_fcos.main(argv + ["--eval-only"])  # rebuilds a plain FCOS, freezes it, loads the weights
    assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-12)
    loaded = load_detector(str(run_dir / "checkpoint.pt"))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in loaded.model.modules())
    boxes, classes, scores = loaded.model(torch.zeros(1, 3, 64, 64))
    assert boxes.shape[-1] == 4 and len(classes) == len(scores)


def test_a_checkpoint_from_before_these_settings_still_resumes(tmp_path):
    path = str(tmp_path / "run.pt")
    train_tiny(path, max_iters=4, checkpoint_period=2)
    saved = torch.load(path, weights_only=True)
    for key in ("accumulate_steps", "freeze_bn"):  # what a checkpoint of the previous version holds
        del saved["settings"][key]
    torch.save(saved, path)
    history, _ = train_tiny(path, resume=True, max_iters=6, checkpoint_period=2, options=dict(learning_rate=0.01,
                                                                                              extend=True))
    assert len(history["total"]) == 6  # the missing settings count as their defaults: 1 and False
