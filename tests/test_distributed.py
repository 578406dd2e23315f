"""Data-parallel training (``torchrun``, gloo on CPU) equals one process with the same global batch."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from eecs598.train.distributed import DistributedContext, DistributedSetupError, init_from_environment, shard_batch_size
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


def test_two_processes_accumulating_two_micro_batches_match_one_process_with_the_global_batch(tmp_path):
    """torchrun x accumulation: 2 processes x 2 micro-batches of 1 image = 1 process x 1 batch of 4, BatchNorm
    frozen in both. DDP syncs gradients once per step (no_sync for the first micro-batch) and FCOS's loss
    normaliser counts the foreground of both micro-batches of both processes, so losses, weights and the
    normaliser agree to float64 rounding; a per-process or per-micro-batch normaliser would be off by > 1e-3."""
    data = str(tmp_path / "shapes")
    generate_shapes_dataset(data, num_train=8, num_val=1, image_size=64, seed=0, quiet=True)
    single, double = str(tmp_path / "single.pt"), str(tmp_path / "double.pt")
    _run([sys.executable, SCRIPT, data, single, "4", "3", "reference"], env={"DDP_TEST_ACCUMULATE": "1"})
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, data,
          double, "4", "3"], env={"DDP_TEST_ACCUMULATE": "2"})
    one, two = torch.load(single), torch.load(double)
    assert len(one["history"]["total"]) == len(two["history"]["total"]) == 3  # optimiser steps, not micro-batches
    for name in one["history"]:
        assert two["history"][name] == pytest.approx(one["history"][name], rel=1e-9), name
    for name, value in one["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(two["state"][name], value, rtol=1e-9, atol=1e-10, msg=name)
    assert two["normalizer"] == pytest.approx(one["normalizer"], rel=1e-9)


# -- launch environment, rendezvous and waits (docs/reliability.md) ------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCH = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("changes, message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer"),
    ({"WORLD_SIZE": "0"}, r"WORLD_SIZE=0 must be >= 1 .*--nproc_per_node, which must be >= 1"),
    ({"RANK": None}, r"WORLD_SIZE=2 asks for a distributed run but RANK .* is not set: launch with torchrun"),
    ({"RANK": "2"}, r"RANK=2 must be in \[0, 2\) .*one of 0\.\.1 for WORLD_SIZE=2"),
    ({"RANK": "-1"}, r"RANK=-1 must be in \[0, 2\)"),
    ({"RANK": "one"}, "RANK='one' is not an integer"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
    ({"MASTER_ADDR": None}, "MASTER_ADDR .* is not set"),
    ({"MASTER_PORT": None}, "MASTER_PORT .* is not set"),
    ({"MASTER_PORT": "70000"}, r"MASTER_PORT=70000 must be in \[1, 65536\)"),
    ({"EECS598_RENDEZVOUS_TIMEOUT": "0"}, "EECS598_RENDEZVOUS_TIMEOUT='0' must be a number of seconds > 0"),
    ({"EECS598_BARRIER_TIMEOUT": "soon"}, "EECS598_BARRIER_TIMEOUT='soon' must be a number of seconds > 0"),
    ({"WORLD_SIZE": "1", "RANK": "1"}, r"RANK=1 must be in \[0, 1\)"),
], ids=["world-abc", "world-0", "no-rank", "rank-2", "rank-neg", "rank-word", "local-x", "no-addr", "no-port",
        "port-70000", "join-limit-0", "barrier-limit-word", "rank-1-of-1"])
def test_launch_variables_are_checked_before_anything_waits(monkeypatch, changes, message):
    """Each bad value is named with the fix, before a store is contacted (MASTER_PORT 29500 has no one
    listening: a check that came too late would wait there instead)."""
    for name, value in {**LAUNCH, **changes}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(DistributedSetupError, match=message):
        init_from_environment("cpu")


def test_no_launch_variables_is_one_process(monkeypatch):
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    context = init_from_environment("cpu")
    assert (context.rank, context.world_size, context.enabled) == (0, 1, False)


def test_command_line_answers_a_bad_launch_variable_in_one_line(tmp_path, monkeypatch, capsys):
    import train_fcos

    monkeypatch.setenv("WORLD_SIZE", "abc")
    status = train_fcos.cli(["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir",
                             str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("train_fcos.py: error: WORLD_SIZE='abc' is not an integer") and "Traceback" not in err
    assert "torchrun --nproc_per_node N train_fcos.py" in err
    assert not (tmp_path / "shapes").exists()  # checked before any data is generated


def test_a_missing_peer_ends_the_rendezvous_in_seconds_naming_it(tmp_path):
    """Rank 0 alone (WORLD_SIZE=2) and rank 1 alone (no rank 0 to reach), each with a 3 s limit: both stop
    with one line and exit status 2 instead of waiting 30 minutes in silence."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "EECS598_RENDEZVOUS_TIMEOUT": "3", "WORLD_SIZE": "2",
            "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    argv = [sys.executable, os.path.join(os.path.dirname(TESTS_DIR), "train_fcos.py"), "--dataset", "shapes",
            "--device", "cpu", "--no-progress"]
    runs = [subprocess.Popen(argv + ["--data-dir", str(tmp_path / f"d{rank}"), "--run-dir", str(tmp_path / f"r{rank}")],
                             env={**base, "RANK": str(rank), "MASTER_PORT": str(_free_port())}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    try:
        results = [run.communicate(timeout=120) for run in runs]
    finally:  # a process still waiting (no limit) must not outlive the test
        for run in runs:
            run.kill()
    alone, orphan = (results[0][1], results[1][1])
    assert [run.returncode for run in runs] == [2, 2], results
    assert ("train_fcos.py: error: rank 0 waited 3 s (EECS598_RENDEZVOUS_TIMEOUT=3) in the rendezvous at "
            "127.0.0.1:") in alone
    assert "1 of WORLD_SIZE=2 processes arrived, rank(s) 1 did not" in alone
    assert "train_fcos.py: error: rank 1 could not reach the rendezvous at MASTER_ADDR:MASTER_PORT=" in orphan
    assert "within 3 s (EECS598_RENDEZVOUS_TIMEOUT): rank 0 is not running" in orphan
    assert not (tmp_path / "d0").exists() and not (tmp_path / "d1").exists()


def test_a_barrier_names_the_rank_that_did_not_arrive():
    """Rank 1 waits for rank 0 (evaluating, say) longer than EECS598_BARRIER_TIMEOUT: the error names rank 0."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    context = DistributedContext(rank=1, world_size=2, store=store, barrier_timeout=1)
    with pytest.raises(DistributedSetupError, match=r"rank 1 waited 1 s \(EECS598_BARRIER_TIMEOUT=1\) in a wait for "
                                                    r"rank 0's work \(barrier 1\): 1 of WORLD_SIZE=2 processes "
                                                    r"arrived, rank\(s\) 0 did not"):
        context.barrier()
    store.set("eecs598/barrier/2/0", "1")  # rank 0 is at the next barrier already: it passes at once
    context.barrier()


def test_rank_1_waits_for_rank_0s_data_and_leaves_its_folders_alone(tmp_path, monkeypatch):
    """Under torchrun rank 1 used to generate the Shapes data too, removing the hidden folder rank 0 was
    writing into (``.shapes.partial-*``) as an "orphan"; now it waits for rank 0, then only reads."""
    import eecs598.tools.train as job
    import train_fcos

    data = tmp_path / "shapes"
    generate_shapes_dataset(str(data), num_train=12, num_val=4, image_size=64, seed=0, quiet=True)
    rank0_writing = tmp_path / ".shapes.partial-rank0"
    rank0_writing.mkdir()
    waited = []

    class Rank1(DistributedContext):
        def barrier(self):
            waited.append(True)

    class DataBuilt(Exception):
        pass

    def stop(*args, **kwargs):
        raise DataBuilt

    monkeypatch.setattr(job.dist_utils, "init_from_environment", lambda device_type: Rank1(rank=1, world_size=2))
    monkeypatch.setattr(job, "build_model", stop)
    with pytest.raises(DataBuilt):
        train_fcos.main(["--dataset", "shapes", "--data-dir", str(data), "--run-dir", str(tmp_path / "run"),
                         "--num-train", "12", "--num-val", "4", "--image-size", "64", "--device", "cpu",
                         "--no-progress", "--threads", "1"])
    assert waited == [True]
    assert rank0_writing.is_dir()


def _rank_logs(log_dir) -> dict:
    """torchrun --log-dir D --redirects 3: ``{rank: stdout}`` from ``D/<run id>/attempt_0/<rank>/stdout.log``."""
    logs = {}
    for folder, _, names in os.walk(log_dir):
        if "stdout.log" in names:
            with open(os.path.join(folder, "stdout.log")) as f:
                logs[int(os.path.basename(folder))] = f.read()
    return logs


def test_torchrun_periodic_evaluation_and_data_on_rank_0_only(tmp_path):
    """train_fcos.py under torchrun (2 gloo processes) on Shapes that do not exist yet, with --eval-period:
    rank 0 generates the data and evaluates; rank 1 does neither, and both finish."""
    run_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--log-dir",
          str(log_dir), "--redirects", "3", os.path.join(os.path.dirname(TESTS_DIR), "train_fcos.py"),
          "--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(run_dir),
          "--num-train", "12", "--num-val", "4", "--image-size", "64", "--max-iters", "4", "--batch-size", "4",
          "--fpn-channels", "16", "--stem-channels", "16", "--log-period", "1", "--no-progress", "--threads", "1",
          "--device", "cpu", "--eval-period", "2", "--eval-images", "2"], env={"EECS598_RENDEZVOUS_TIMEOUT": "30"})
    logs = _rank_logs(log_dir)
    assert sorted(logs) == [0, 1]
    assert logs[0].count("Generated Shapes dataset") == 1 and "Generated" not in logs[1]
    assert "unfinished Shapes dataset" not in logs[0] + logs[1]
    assert logs[0].count("[eval: ") == 2 and "[eval: " not in logs[1]
    assert torch.load(run_dir / "last.pt", weights_only=True)["iteration"] == 4


def test_ranks_wait_for_an_evaluation_longer_than_the_rendezvous_limit(tmp_path):
    """Rank 0 evaluates for 4 s, twice; rank 1 waits at the barrier although the join limit is 2 s (a process
    group built with the join limit as its timeout would fail there)."""
    data = str(tmp_path / "shapes")
    generate_shapes_dataset(data, num_train=8, num_val=1, image_size=64, seed=0, quiet=True)
    out = tmp_path / "double.pt"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT, data,
          str(out), "4", "4"], env={"DDP_TEST_EVAL_SECONDS": "4", "EECS598_RENDEZVOUS_TIMEOUT": "2"})
    assert (tmp_path / "double.pt.evals").read_text().split("\n") == ["0 2", "0 4", ""]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 4


def test_cpu_synced_batchnorm_keeps_the_dtype_and_values_of_a_float64_model():
    """convert_sync_batchnorm on the CPU used to build float32 layers and round a float64 model's BatchNorm
    into them (found by the accumulation test above, whose reference is converted before freezing)."""
    from eecs598.train.distributed import GlooSyncBatchNorm, convert_sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1 / 3, 2 / 3, 1.0, 4 / 3], dtype=torch.float64))
        model[1].running_var.fill_(1 / 7)
    expected = {name: value.clone() for name, value in model[1].state_dict().items()}
    convert_sync_batchnorm(model, "cpu")
    assert isinstance(model[1], GlooSyncBatchNorm)
    for name, value in model[1].state_dict().items():
        assert value.dtype == expected[name].dtype, name
        assert torch.equal(value, expected[name]), name
