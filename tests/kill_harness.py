"""Start a training run in a child process and SIGKILL it at a chosen moment: the fault-injection harness.

The child is forked from the test process, where torch and the code under test are already imported, so
it starts in milliseconds instead of the ~4 s a fresh interpreter needs; tests can afford a dozen kills.
(Forking a process that has used torch's CPU thread pool is what DataLoader workers do too: the child sets
one intra-op thread before any work.) The child writes its output to a log file, runs one function,
writes that function's JSON-serialisable result to a file and leaves with ``os._exit``: it never returns
into pytest.

Usage::

    child = TrainingChild(train_shapes_fcos, dict(...), tmp_path / "run1")
    child.wait_until(lambda: os.path.exists(checkpoint), "the first checkpoint")
    child.kill()                 # SIGKILL, reaped; asserts that the kill really interrupted it
    result = TrainingChild(...).result()     # or: run to the end and read the result
"""
import glob
import io
import json
import os
import signal
import sys
import time
import traceback

import torch
from torch.utils.data import DataLoader

import eecs598
from a4_helper import ShapesDetection, train_detector
from tiny_training import IMAGE_SIZE, RECIPE, RandomAugment, TinyDataset, TinyDetector, tiny_fcos

TIMEOUT = 120.0  # seconds any single child may take before the test fails instead of waiting forever


class TrainingChild:
    """``target(**kwargs)`` running in a forked child process.

    Attributes:
        pid: the child's process id.
        log_path, result_path: its stdout+stderr, and the JSON of ``target``'s return value once it finished.
    """

    started_children = []  # every child started, so that a failing test can kill the ones still running

    def __init__(self, target, kwargs, prefix):
        self.log_path, self.result_path = f"{prefix}.log", f"{prefix}.json"
        self.status = None
        open(self.log_path, "w").close()  # exists from the start: the parent may read it at once
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child_main(target, kwargs, self.log_path, self.result_path)  # never returns
        self.pid = pid
        TrainingChild.started_children.append(self)

    def alive(self):
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_until(self, condition, what, timeout=TIMEOUT, poll=0.002):
        """Poll ``condition()`` until true; fails if the child ends first or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.alive(), f"the child ended before {what}:\n{self.log()}"
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {what} after {timeout} s:\n{self.log()}")
            time.sleep(poll)

    @classmethod
    def kill_all(cls):
        """SIGKILL and reap every child still running (test teardown)."""
        while cls.started_children:
            child = cls.started_children.pop()
            if child.status is None:
                child.kill()

    def kill(self):
        """SIGKILL the child and reap it; True if the kill interrupted it, False if it had already finished."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            _, self.status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(self.status):
            assert os.WTERMSIG(self.status) == signal.SIGKILL
            return True
        assert os.WEXITSTATUS(self.status) == 0, f"the child failed:\n{self.log()}"
        return False

    def result(self, timeout=TIMEOUT):
        """Wait for the child to finish normally and return ``target``'s result."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the child did not finish within {timeout} s:\n{self.log()}")
            time.sleep(0.01)
        assert os.WIFEXITED(self.status) and os.WEXITSTATUS(self.status) == 0, f"the child failed:\n{self.log()}"
        with open(self.result_path) as f:
            return json.load(f)


def _child_main(target, kwargs, log_path, result_path):
    status = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        torch.set_num_threads(1)
        result = target(**kwargs)
        with open(result_path, "w") as f:
            json.dump(result, f)
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
        finally:
            os._exit(status)


def partial_files(checkpoint):
    """Temporary files of an unfinished save of ``checkpoint`` (``<name>.partial-*``)."""
    return set(glob.glob(glob.escape(str(checkpoint)) + ".partial-*"))


# ==================================================================================================
# Training targets (run in the child)
# ==================================================================================================

def train_shapes_fcos(data_dir, checkpoint, max_iters, checkpoint_period, resume):
    """The real tiny FCOS on tiny Shapes with random augmentation (``tiny_training``)."""
    model = tiny_fcos(seed=0)
    calls = _count_forward_calls(model)
    dataset = RandomAugment(ShapesDetection(data_dir, "train", image_size=IMAGE_SIZE, generate=False, quiet=True))
    history = train_detector(model, DataLoader(dataset, batch_size=2), max_iters=max_iters, log_period=1,
                             checkpoint_path=checkpoint, checkpoint_period=checkpoint_period, resume=resume,
                             plot=False, progress=False, **RECIPE)
    return {"history": history, "forward_calls": len(calls)}


def train_tiny_detector(checkpoint, max_iters, resume, sleep=0.0, checkpoint_period=1, ballast=0):
    """The fake ``TinyDetector`` (``tiny_training``) with AdamW, warm-up and clipping, 4 images per batch."""
    eecs598.reset_seed(0)
    model = TinyDetector(sleep=sleep, ballast=ballast)
    _count_forward_calls(model)
    history = train_detector(model, DataLoader(TinyDataset(), batch_size=4), max_iters=max_iters, log_period=1,
                             checkpoint_path=checkpoint, checkpoint_period=checkpoint_period, resume=resume,
                             plot=False, progress=False, **dict(RECIPE, learning_rate=0.01))
    return {"history": history, "forward_calls": model.calls}


def _count_forward_calls(model):
    """Print ``forward N`` (flushed) before each forward pass: the parent sees how far the child got."""
    calls = []

    def count(module, args):
        calls.append(1)
        print(f"forward {len(calls)}", flush=True)

    model.register_forward_pre_hook(count)
    return calls
