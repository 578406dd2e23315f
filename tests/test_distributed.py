"""Data-parallel training (``torchrun``, gloo on CPU) equals one process with the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

from eecs598.train.distributed import shard_batch_size
from eecs598.data.sampling import ResumableBatchSampler
from eecs598.data.shapes import generate_shapes_dataset

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(TESTS_DIR, "ddp_train_script.py")


def test_ranks_split_each_global_batch_into_consecutive_slices():
    whole = ResumableBatchSampler(20, 4, drop_last=True, shuffle=True, data_seed=3)
    parts = [ResumableBatchSampler(20, 2, drop_last=True, shuffle=True, data_seed=3, rank=r, world_size=2)
             for r in (0, 1)]
    streams = [iter(whole)] + [iter(p) for p in parts]
    for _ in range(12):  # 5 global batches per epoch: crosses two epoch boundaries
        expected, rank0, rank1 = (next(s) for s in streams)
        assert rank0 + rank1 == expected


def test_synced_batchnorm_equals_batchnorm_over_the_whole_batch():
    """GlooSyncBatchNorm in a process group of one is nn.BatchNorm2d: outputs, input gradients, statistics."""
    import torch.distributed as dist

    from eecs598.train.distributed import GlooSyncBatchNorm

    dist.init_process_group("gloo", rank=0, world_size=1, init_method="tcp://127.0.0.1:0")
    try:
        torch.manual_seed(0)
        reference = torch.nn.BatchNorm2d(8).double()
        with torch.no_grad():
            reference.weight.uniform_(0.5, 2)
            reference.bias.uniform_(-1, 1)
        synced = GlooSyncBatchNorm(8).double()
        synced.load_state_dict(reference.state_dict())
        x = (torch.randn(4, 8, 3, 5, dtype=torch.float64) * 2 + 1).requires_grad_(True)
        weights = torch.randn(4, 8, 3, 5, dtype=torch.float64)
        outputs, grads = [], []
        for layer in (reference, synced):
            y = layer(x)
            (y * weights).sum().backward()
            outputs.append(y.detach())
            grads.append(x.grad.clone())
            x.grad = None
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(synced.weight.grad, reference.weight.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(synced.running_var, reference.running_var, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(synced.running_mean, reference.running_mean, rtol=1e-12, atol=1e-12)
    finally:
        dist.destroy_process_group()


def test_global_batch_must_divide_over_processes():
    assert shard_batch_size(16, 4) == 4
    with pytest.raises(ValueError, match="global batch size 10 does not divide over 4 processes"):
        shard_batch_size(10, 4)


def _run(args, env=None):
    result = subprocess.run(args, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path):
    data = str(tmp_path / "shapes")
    generate_shapes_dataset(data, num_train=8, num_val=1, image_size=64, seed=0, quiet=True)
    single, double = str(tmp_path / "single.pt"), str(tmp_path / "double.pt")
    _run([sys.executable, SCRIPT, data, single, "4", "4", "reference"])
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, data,
          double, "4", "4", str(tmp_path / "ckpt.pt")])
    one, two = torch.load(single), torch.load(double)
    # The same arithmetic split over two processes: equal up to float64 summation order. (Per-process
    # BatchNorm statistics or a per-process loss normaliser would differ by more than 1e-3.)
    for name in one["history"]:
        assert two["history"][name] == pytest.approx(one["history"][name], rel=1e-10), name
    assert one["state"].keys() == two["state"].keys()
    for name, value in one["state"].items():
        if not value.is_floating_point():
            assert torch.equal(two["state"][name], value), name
        elif "running_" in name:
            # BatchNorm statistics of a random network span many magnitudes and include near-cancelling
            # means: their summation order shows at ~1e-8 relative.
            torch.testing.assert_close(two["state"][name], value, rtol=1e-6, atol=1e-6 * float(value.abs().max()))
        else:
            # atol: BatchNorm biases with near-cancelling gradients (1e-12 off on values of 1e-4).
            torch.testing.assert_close(two["state"][name], value, rtol=1e-9, atol=1e-10, msg=name)
    assert two["normalizer"] == pytest.approx(one["normalizer"], rel=1e-9)
    assert os.path.isfile(tmp_path / "ckpt.pt")  # written by rank 0
