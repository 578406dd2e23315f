"""Tests of eecs598.train.checkpoint and of resuming training: atomic writes, verified reads, kills at any moment.

- Damaged checkpoints (truncated, empty, garbage, a flipped bit, a foreign file) give an error naming the file
  and are left alone; a crash while writing never replaces the last good checkpoint and leaves no temporary.
- A checkpoint path that cannot be written is refused before the first step.
- Resume: a training process is SIGKILLed once (``test_sigkill_then_resume...``) and at ten random moments,
  some of them in the middle of a save (``test_random_sigkills...``, the fault injection of issue 10); every
  checkpoint left behind loads, every resume continues with exactly the uninterrupted history, and the
  temporaries of interrupted saves are removed at the next start. Both use ``kill_harness``.

Expected values come from the specification (an uninterrupted run; an error names its file), never from the
output of the code under test.
"""
import io
import os
import random
import time
import zipfile

import numpy as np
import pytest
import torch

from a4_helper import load_checkpoint
from eecs598.train.checkpoint import CheckpointError, check_writable, remove_orphan_partials, save_atomic
from kill_harness import TrainingChild, partial_files, train_shapes_fcos, train_tiny_detector
from torch.utils.data import DataLoader

from a4_helper import train_detector
from tiny_training import TinyDataset, TinyDetector, assert_message, assert_same_state, snapshot, tiny_shapes, \
    train_tiny


@pytest.fixture(autouse=True)
def no_child_left_running():
    """A failing test must not leave a forked training process behind."""
    yield
    TrainingChild.kill_all()


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    tiny_shapes(root)
    return str(root)


# ==================================================================================================
# Damaged checkpoints, crashes while writing, unwritable paths
# ==================================================================================================

BALLAST = 1_000_000  # 4 MB of weights, 12 MB of checkpoint with AdamW's moments: a save takes a while
ADAMW = dict(optimizer="adamw", learning_rate=0.01, warmup_iters=2, grad_clip_norm=5.0)


def train_fake(max_iters, **kwargs):
    """``TinyDetector`` with ballast weights and AdamW: ``(history, model)`` (fast; real-sized checkpoints)."""
    return train_tiny(max_iters=max_iters, ballast=BALLAST, options=ADAMW, **kwargs)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """Bytes of a real 2-iteration checkpoint."""
    path = tmp_path_factory.mktemp("good") / "checkpoint.pt"
    train_fake(2, checkpoint_path=str(path), checkpoint_period=1)
    return path.read_bytes()


def _flip_a_bit_in_the_largest_tensor(data):
    """Flip one bit in the middle of the largest stored member of a torch zip checkpoint (a weight tensor)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    assert member.compress_type == zipfile.ZIP_STORED
    header = member.header_offset
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    position = header + 30 + name_length + extra_length + member.file_size // 2
    damaged = bytearray(data)
    damaged[position] ^= 0x10
    return bytes(damaged)


def _foreign_torch_file(data):
    buffer = io.BytesIO()
    torch.save({"model": torch.load(io.BytesIO(data), weights_only=True)["model"]}, buffer)  # weights only
    return buffer.getvalue()


DAMAGES = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "flipped_bit_in_weights": _flip_a_bit_in_the_largest_tensor,
    "not_a_train_detector_checkpoint": _foreign_torch_file,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_checkpoint_gives_an_error_naming_the_file(tmp_path, good_checkpoint, damage):
    path = tmp_path / "my run" / "checkpoint.pt"
    path.parent.mkdir()
    damaged = DAMAGES[damage](good_checkpoint)
    assert damaged != good_checkpoint
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(str(path))
    assert isinstance(error.value, RuntimeError)  # what the engine documented before CheckpointError existed
    assert_message(error.value, str(path))
    # Resuming from it stops before training a single step (and does not train from scratch over it).
    with pytest.raises(RuntimeError) as error:
        train_fake(2, checkpoint_path=str(path), checkpoint_period=1, resume=True)
    assert_message(error.value, str(path))
    assert path.read_bytes() == damaged, "the damaged file must be left as it was, for inspection"
    assert os.listdir(path.parent) == ["checkpoint.pt"]


@pytest.mark.parametrize("crash", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk_full", "ctrl_c"])
def test_crash_while_writing_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, crash):
    path = tmp_path / "checkpoint.pt"
    real_save = torch.save
    seen = {"saves": 0, "good": None}

    def save_that_dies_half_way(obj, f, *args, **kwargs):
        seen["saves"] += 1
        if seen["saves"] < 2:
            return real_save(obj, f, *args, **kwargs)
        seen["good"] = path.read_bytes()  # the checkpoint of iteration 2, on disk now
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise crash

    monkeypatch.setattr(torch, "save", save_that_dies_half_way)
    with pytest.raises(type(crash)) as error:
        train_fake(4, checkpoint_path=str(path), checkpoint_period=2)
    monkeypatch.undo()
    assert seen["saves"] == 2
    # The save of iteration 4 failed after iteration 4 itself was complete.
    assert_message(error.value, "after iteration 3")
    assert path.read_bytes() == seen["good"], "the half-written checkpoint replaced the last good one"
    assert load_checkpoint(str(path))["state"]["iteration"] == 2
    assert os.listdir(tmp_path) == ["checkpoint.pt"], "the half-written temporary file was left behind"
    if isinstance(crash, OSError):
        # The surviving checkpoint is a valid starting point: resuming gives the uninterrupted result.
        resumed, _ = train_fake(4, checkpoint_path=str(path), checkpoint_period=2, resume=True)
        uninterrupted, _ = train_fake(4)
        assert resumed == uninterrupted


@pytest.mark.parametrize("case", ["parent_is_a_file", "path_is_a_directory"])
def test_unwritable_checkpoint_path_is_refused_before_the_first_step(tmp_path, case):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    (tmp_path / "folder").mkdir()
    path = tmp_path / ("notes.txt/checkpoint.pt" if case == "parent_is_a_file" else "folder")
    with pytest.raises(OSError) as error:
        check_writable(str(path))
    assert_message(error.value, str(path))
    model = TinyDetector()
    before = snapshot(model)
    with pytest.raises(OSError) as error:
        train_detector(model, DataLoader(TinyDataset(), batch_size=4), max_iters=2, checkpoint_path=str(path),
                       plot=False, progress=False)
    assert_message(error.value, str(path), "checkpoint_path")
    assert model.calls == 0, "the path must be checked before training, not at the first save"
    assert_same_state(model, before)
    assert sorted(os.listdir(tmp_path)) == ["folder", "notes.txt"] and os.listdir(tmp_path / "folder") == []


def test_orphan_cleanup_removes_only_this_checkpoints_temporaries(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"x": torch.ones(3)}, str(path))
    orphans = [tmp_path / "checkpoint.pt.partial-abc123", tmp_path / "checkpoint.pt.partial-"]
    others = [tmp_path / "other.pt.partial-abc123", tmp_path / "checkpoint.pt.bak", tmp_path / "notes.partial-x"]
    for file in orphans + others:
        file.write_bytes(b"x" * 1000)
    removed = remove_orphan_partials(str(path))
    assert sorted(removed) == sorted(map(str, orphans))
    assert "Removed 2 unfinished checkpoint file(s) (0.0 MB)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint.pt"] + [file.name for file in others])


# ==================================================================================================
# Resume
# ==================================================================================================

def test_resume_with_other_settings_is_refused(tmp_path):
    checkpoint = str(tmp_path / "ckpt.pt")
    train_tiny(checkpoint, max_iters=3)
    with pytest.raises(ValueError, match="max_iters"):
        train_tiny(checkpoint, resume=True, max_iters=6)


def test_resuming_a_finished_run_does_nothing(tmp_path):
    checkpoint = str(tmp_path / "ckpt.pt")
    reference, _ = train_tiny(checkpoint, max_iters=6)
    again, model = train_tiny(checkpoint, resume=True, max_iters=6)
    assert again == reference and model.calls == 0


RESUME_ITERS = 4


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, shapes_dir):
    """A process training the real tiny FCOS (BatchNorm statistics, the loss normaliser, AdamW moments, warm-up
    and both LR milestones, augmentation from the global RNGs) is SIGKILLed after a checkpoint; resuming gives
    exactly the losses of an uninterrupted run, running only the iterations after the checkpoint again."""
    def child(name, checkpoint, resume):
        kwargs = dict(data_dir=shapes_dir, checkpoint=checkpoint, max_iters=RESUME_ITERS, checkpoint_period=2,
                      resume=resume)
        return TrainingChild(train_shapes_fcos, kwargs, tmp_path / name)

    reference = child("reference", None, False).result()
    assert reference["forward_calls"] == RESUME_ITERS
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    victim = child("victim", str(checkpoint), False)
    victim.wait_until(checkpoint.exists, "first checkpoint")
    assert victim.kill(), "the kill should land mid-run"
    assert "[Iter 0][loss: " in victim.log()  # it was training, and said so
    stopped_at = load_checkpoint(str(checkpoint))["state"]["iteration"]
    assert 0 < stopped_at < RESUME_ITERS and stopped_at % 2 == 0

    resumed = child("resumed", str(checkpoint), True)
    result = resumed.result()
    assert f"Resuming from {checkpoint} at iteration {stopped_at}" in resumed.log()
    assert result["forward_calls"] == RESUME_ITERS - stopped_at, "only the iterations after it are run again"
    assert result["history"] == reference["history"]
    assert os.listdir(checkpoint.parent) == ["checkpoint.pt"]


FAULT_ITERS = 16


def test_random_sigkills_during_training_never_damage_the_run(tmp_path):
    """Issue 10's fault injection: a training process with a checkpoint every iteration is SIGKILLed twelve
    times at seeded random moments (while starting or loading the checkpoint, mid-step, and - found by
    watching for the save's temporary file - in the middle of writing a checkpoint), resuming each time.

    After every kill the checkpoint on disk loads and holds a prefix of the uninterrupted history; the
    temporaries of interrupted saves are gone once the next run has started; the final run ends with exactly
    the uninterrupted history and only ``checkpoint.pt`` in its folder. (The detector is the fake
    ``TinyDetector``, with a BatchNorm layer, a loss normaliser and enough weights for slow saves: the engine
    does the same for it as for FCOS, and each life costs milliseconds instead of seconds.)"""
    def child(name, checkpoint, resume):
        kwargs = dict(checkpoint=checkpoint, max_iters=FAULT_ITERS, resume=resume, sleep=0.01, checkpoint_period=1,
                      ballast=BALLAST)
        return TrainingChild(train_tiny_detector, kwargs, tmp_path / name)

    reference = child("reference", None, False).result()["history"]
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoint.pt"
    rng = random.Random(10)
    moments = ["while saving"] * 4 + ["while starting"] * 3 + ["while training"] * 3 + ["after a save"] * 2
    rng.shuffle(moments)
    done, orphans, orphans_seen, kinds = 0, set(), set(), []
    for life, moment in enumerate(moments):
        victim = child(f"life{life}", str(checkpoint), True)
        if moment == "while starting":  # removing orphans, loading the checkpoint
            time.sleep(rng.uniform(0.0, 0.15))
        elif moment == "while saving":
            victim.wait_until(lambda: partial_files(checkpoint) - orphans, "checkpoint being written")
        elif moment == "while training":
            victim.wait_until(lambda: "forward 1\n" in victim.log(), "training step", poll=0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # soon after it completed a checkpoint ("forward 2" is printed after the first step's save)
            victim.wait_until(lambda: "forward 2\n" in victim.log(), "second step", poll=0.005)
            time.sleep(rng.uniform(0.0, 0.1))
        assert victim.kill(), f"life {life} ({moment}) finished before the kill:\n{victim.log()}"
        log = victim.log()
        assert "Traceback" not in log, log
        started = "forward 1\n" in log  # it got past removing orphans and loading the checkpoint
        kinds.append((moment, started))
        if checkpoint.exists():
            saved = load_checkpoint(str(checkpoint))  # never damaged, whenever the kill landed
            iteration = saved["state"]["iteration"]
            assert iteration >= done, "a kill lost a checkpoint that was already complete"
            assert saved["history"] == {name: values[:iteration] for name, values in reference.items()}
            done = iteration
        if started:
            assert not orphans & partial_files(checkpoint), f"life {life} left the earlier orphans {orphans}"
        orphans = partial_files(checkpoint) | (set() if started else orphans)
        orphans_seen |= orphans
    assert 0 < done < FAULT_ITERS
    assert len(orphans_seen) >= 2, "kills in the middle of a save should have left temporaries to clean"
    assert (("while starting", False) in kinds and ("while training", True) in kinds), kinds

    final = child("final", str(checkpoint), True)
    result = final.result()
    assert f"Resuming from {checkpoint} at iteration {done}" in final.log()
    if orphans:
        assert f"Removed {len(orphans)} unfinished checkpoint file(s)" in final.log()
    assert result["forward_calls"] == FAULT_ITERS - done
    assert result["history"] == reference
    assert os.listdir(run_dir) == ["checkpoint.pt"], "orphan files were left behind"
