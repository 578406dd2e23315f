"""Train a tiny FCOS for a few iterations, single-process or as one rank of ``torchrun``; save the
history and final weights. Used by tests/test_distributed.py (run as a script).

``DDP_TEST_ACCUMULATE=N``: ``accumulate_steps=N`` with frozen BatchNorm, each loader batch 1/N of the
process's share of the global batch (set to 1 for the reference it is compared with).

``DDP_TEST_EVAL_SECONDS=S``: a periodic evaluation every 2 iterations that takes S seconds and appends
``"<rank> <iteration>"`` to ``<out_path>.evals`` (so the test sees which ranks evaluated, and when).
"""
import os
import sys
import time

import torch

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]

import eecs598  # noqa: E402
from a4_helper import ShapesDetection, train_detector  # noqa: E402
from conftest import make_fcos  # noqa: E402
from eecs598.train.distributed import convert_sync_batchnorm, init_from_environment, shard_batch_size  # noqa: E402
from eecs598.train.hooks import PeriodicEvalHook  # noqa: E402
from torch.utils.data import DataLoader, default_collate  # noqa: E402


def collate_float64(samples):
    """float64 images and boxes: the comparison with one process is then exact up to ~1e-12, not float32's
    rounding amplified by a random network."""
    paths, images, gt_boxes = default_collate(samples)
    return paths, images.double(), gt_boxes.double()


def slow_evaluation(out_path: str, context, seconds: float) -> PeriodicEvalHook:
    """A periodic evaluation that takes ``seconds`` and records which rank ran it at which iteration."""
    calls = []

    def evaluate() -> float:
        time.sleep(seconds)
        with open(out_path + ".evals", "a") as f:
            f.write(f"{context.rank} {len(calls) * 2 + 2}\n")
        calls.append(1)
        return 0.0

    folder = os.path.dirname(out_path)
    return PeriodicEvalHook(2, evaluate, os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt"))


def main(data_dir: str, out_path: str, global_batch: int, iters: int, checkpoint: str = "") -> None:
    """``checkpoint == "reference"``: one process whose BatchNorm layers are the same synced ones (over a
    process group of one), so that the two runs differ only in how the work is split."""
    torch.set_num_threads(1)
    reference = checkpoint == "reference"
    if reference:
        checkpoint = ""
        torch.distributed.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:0")
    context = init_from_environment("cpu")
    dataset = ShapesDetection(data_dir, "train", image_size=64, generate=False, quiet=True)
    eecs598.reset_seed(0)
    model = make_fcos(num_classes=5, fpn_channels=16, stem_channels=(16,)).double()
    if reference:
        convert_sync_batchnorm(model, "cpu")
    # DDP_TEST_ACCUMULATE=N: each optimiser step over N micro-batches of the process's share (BatchNorm frozen,
    # so that the split cannot change the statistics: the step must equal one global batch).
    accumulate = int(os.environ.get("DDP_TEST_ACCUMULATE", "1"))
    loader = DataLoader(dataset, batch_size=shard_batch_size(global_batch, context.world_size) // accumulate,
                        collate_fn=collate_float64)
    accumulation = {"accumulate_steps": accumulate, "freeze_bn": True} if "DDP_TEST_ACCUMULATE" in os.environ else {}
    eval_seconds = os.environ.get("DDP_TEST_EVAL_SECONDS")
    hooks = [slow_evaluation(out_path, context, float(eval_seconds))] if eval_seconds else []
    history = train_detector(model, loader, max_iters=iters, log_period=1, optimizer="sgd", learning_rate=float(os.environ.get("DDP_TEST_LR", "0.001")),
                             data_seed=7, plot=False, progress=False, distributed=context,
                             checkpoint_path=checkpoint or None, checkpoint_period=2, hooks=hooks, **accumulation)
    if context.is_main:
        state = {k: v for k, v in model.state_dict().items()}
        torch.save({"history": history, "state": state, "normalizer": model.loss_normalizer}, out_path)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *(sys.argv[5:6]))
