"""Reliability: deterministic runs, resumable training, validated inputs (with fault injection).

Everything runs the real (tiny) FCOS on a tiny generated Shapes dataset: RegNetX-400MF backbone with random
weights (``pretrained=False``: never downloads), 16-channel FPN and head, 64 px images, a few dozen iterations,
one intra-op thread (on a shared 2-core machine, oversubscribed OpenMP threads make CPU convolutions up to
100x slower).

1. Determinism: ``eecs598.reset_seed(s)`` + the same data -> bit-identical 50-iteration loss histories and
   weights, also with ``num_workers=2`` and a dataset whose random augmentation draws from Python's, NumPy's
   and torch's global RNGs.
2. Resume: a real training process is SIGKILLed once its checkpoint exists; resuming gives exactly the losses
   of an uninterrupted run. Damaged checkpoints (truncated, empty, garbage, a flipped bit, a foreign file)
   give an error naming the file and are left alone; a crash while writing never replaces the last good one.
3. Input validation at the public entry points: ``FCOS.forward``, the datasets, ``train_detector``,
   ``train_fcos.py``'s command line, ``inference_with_detector`` and the mAP evaluator. A bad input gives a
   ``ValueError`` / ``TypeError`` whose message names the argument, what was expected and what was received
   (asserted fragment by fragment), never a crash deep inside torch, a hang, or a silent NaN.

Expected values come from the specification (two runs agree; an error names its argument), never from the
output of the code under test.
"""
import contextlib
import importlib.util
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

import a4_helper
import eecs598
import train_fcos
from a4_helper import (DetectionJsonDataset, ShapesDetection, VOC2007DetectionTiny, inference_with_detector,
                       load_checkpoint, train_detector)
from conftest import make_fcos
from eecs598.mean_ap import compute_map, evaluate_map, read_box_files
from eecs598.mean_ap import main as map_main
from eecs598.shapes import SHAPE_CLASSES, generate_shapes_dataset

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)

NUM_CLASSES = len(SHAPE_CLASSES)  # 5
IMAGE_SIZE = 64
# The stable from-scratch recipe (a4_helper.FROM_SCRATCH) with a short warm-up, so that warm-up and both
# MultiStepLR milestones (60% and 90% of max_iters) happen inside the short runs: resuming must restore them.
RECIPE = dict(optimizer="adamw", learning_rate=2e-3, weight_decay=1e-4, warmup_iters=5, grad_clip_norm=5.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for the whole module, module-scoped fixtures included (an autouse fixture of the
    same scope is set up first). Bit-identity holds for a fixed thread count: the split of a convolution's
    reduction over threads changes the rounding, so all runs compared here use the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """8 train + 2 val Shapes images of 64 x 64 px, generated once for the module."""
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes_dataset(root, num_train=8, num_val=2, image_size=IMAGE_SIZE, seed=0, quiet=True)
    return root


@pytest.fixture(scope="module")
def shapes_train(shapes_dir):
    return ShapesDetection(shapes_dir, "train", image_size=IMAGE_SIZE, generate=False, quiet=True)


@pytest.fixture(scope="module")
def shapes_val(shapes_dir):
    return ShapesDetection(shapes_dir, "val", image_size=IMAGE_SIZE, generate=False, quiet=True)


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


def train_tiny(dataset, max_iters, seed=0, num_workers=0, batch_size=2, **kwargs):
    """Seed, build the tiny FCOS, train; returns ``(history, model)``."""
    eecs598.reset_seed(seed)
    model = make_fcos(num_classes=NUM_CLASSES, fpn_channels=16, stem_channels=(16,))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    options = dict(RECIPE, max_iters=max_iters, log_period=10**6, plot=False, progress=False)
    options.update(kwargs)
    return train_detector(model, loader, **options), model


def assert_message(error, *fragments):
    """Every fragment (plain text, not a regex) must appear in the exception's message."""
    message = str(error)
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


# ==================================================================================================
# 1. Determinism
# ==================================================================================================

@pytest.fixture(scope="module")
def reference_50(shapes_train):
    """An in-process (num_workers=0) 50-iteration run with seed 0: ``(history, state_dict)``."""
    history, model = train_tiny(RandomAugment(shapes_train), 50)
    return history, model.state_dict()


def _assert_same_weights(first, second):
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"weights differ after training: {different[:5]}"


def test_same_seed_gives_bit_identical_50_iteration_runs(shapes_train, reference_50):
    reference, reference_weights = reference_50
    assert list(reference) == ["loss_cls", "loss_box", "loss_ctr", "total"]
    assert all(len(values) == 50 and all(math.isfinite(v) for v in values) for values in reference.values())
    history, model = train_tiny(RandomAugment(shapes_train), 50)
    assert history == reference  # Python floats compared exactly: bit-identical
    _assert_same_weights(model.state_dict(), reference_weights)
    # Not vacuous: another seed changes the very first loss (initial weights, data order, augmentation).
    other, _ = train_tiny(RandomAugment(shapes_train), 1, seed=1)
    assert other["total"][0] != reference["total"][0]


def test_two_worker_processes_give_the_same_bit_identical_runs(shapes_train, reference_50):
    reference, reference_weights = reference_50
    first, first_model = train_tiny(RandomAugment(shapes_train), 50, num_workers=2)
    second, second_model = train_tiny(RandomAugment(shapes_train), 50, num_workers=2)
    assert first == second
    _assert_same_weights(first_model.state_dict(), second_model.state_dict())
    # The samples' RNGs depend on their position in the data order only, not on the process loading them.
    assert first == reference
    _assert_same_weights(first_model.state_dict(), reference_weights)


# ==================================================================================================
# 2. Resume: a real SIGKILL, damaged checkpoints, crashes while writing
# ==================================================================================================

RESUME_ITERS = 12
RESUME_PERIOD = 3

DRIVER = r"""
# Train the tiny FCOS on Shapes with checkpoints, printing progress:
#     python driver.py DATA_DIR CHECKPOINT|- OUT_JSON plain|slow|resume
import json
import sys
import time

for folder in ({tests!r}, {repo!r}):
    if folder not in sys.path:
        sys.path.insert(0, folder)
import torch
from torch.utils.data import DataLoader

import eecs598
from a4_helper import ShapesDetection, train_detector
from one_stage_detector import FCOS
from test_reliability import RECIPE, RandomAugment


def main(data_dir, checkpoint, out_json, mode):
    torch.set_num_threads(1)
    eecs598.reset_seed(0)
    model = FCOS({num_classes}, fpn_channels=16, stem_channels=[16], pretrained=False)
    calls = []

    def progress(module, args):
        calls.append(1)
        print(f"forward {{len(calls)}}", flush=True)
        if mode == "slow":
            time.sleep(0.25)  # leaves time to kill the process between two checkpoints

    model.register_forward_pre_hook(progress)
    dataset = RandomAugment(ShapesDetection(data_dir, "train", image_size={size}, generate=False, quiet=True))
    history = train_detector(model, DataLoader(dataset, batch_size=2), max_iters={iters}, log_period=1,
                             checkpoint_path=None if checkpoint == "-" else checkpoint,
                             checkpoint_period={period}, resume=mode == "resume", plot=False, progress=False,
                             **RECIPE)
    result = {{"history": history, "forward_calls": len(calls)}}
    with open(out_json, "w") as f:
        json.dump(result, f)
    print("done", flush=True)
    return result


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main(*sys.argv[1:5])
"""


def _driver(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(repo=REPO_ROOT, tests=TESTS_DIR, num_classes=NUM_CLASSES, size=IMAGE_SIZE,
                                  iters=RESUME_ITERS, period=RESUME_PERIOD))
    return str(path)


def test_sigkill_mid_training_then_resume_equals_uninterrupted_run(tmp_path, shapes_dir, capsys):
    """A real training process (the driver script) is SIGKILLed once its first checkpoint exists; resuming from
    that checkpoint (in this process, with the same driver code) gives exactly the losses of an uninterrupted
    run of the driver in another process."""
    driver = _driver(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    run = lambda *args, **kwargs: subprocess.Popen([sys.executable, driver, shapes_dir, *map(str, args)],
                                                   stderr=subprocess.STDOUT, **kwargs)
    with open(tmp_path / "reference.log", "w") as reference_log, open(tmp_path / "victim.log", "w") as victim_log:
        reference = run("-", tmp_path / "reference.json", "plain", stdout=reference_log)
        victim = run(checkpoint, tmp_path / "victim.json", "slow", stdout=victim_log)
        try:
            deadline = time.monotonic() + 150
            while not checkpoint.exists():
                assert victim.poll() is None, (f"the training process ended (rc {victim.returncode}) before "
                                               f"writing {checkpoint}:\n{(tmp_path / 'victim.log').read_text()}")
                assert time.monotonic() < deadline, f"no checkpoint at {checkpoint} after 150 s"
                time.sleep(0.02)
            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
    victim_output = (tmp_path / "victim.log").read_text()
    assert "forward 1" in victim_output and "[Iter 0][loss: " in victim_output  # it was training, and said so
    assert not (tmp_path / "victim.json").exists(), "the kill landed after the run had finished"
    stopped_at = load_checkpoint(str(checkpoint))["state"]["iteration"]
    assert 0 < stopped_at < RESUME_ITERS and stopped_at % RESUME_PERIOD == 0

    spec = importlib.util.spec_from_file_location("reliability_driver", driver)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    got = module.main(shapes_dir, str(checkpoint), str(tmp_path / "resumed.json"), "resume")
    assert f"Resuming from {checkpoint} at iteration {stopped_at}" in capsys.readouterr().out
    assert reference.wait(timeout=240) == 0, (tmp_path / "reference.log").read_text()
    with open(tmp_path / "reference.json") as f:
        expected = json.load(f)

    assert expected["forward_calls"] == RESUME_ITERS
    assert got["forward_calls"] == RESUME_ITERS - stopped_at, "only the remaining iterations may be run again"
    for name, values in expected["history"].items():
        assert len(values) == RESUME_ITERS
        assert got["history"][name][stopped_at:] == values[stopped_at:], f"{name} after the resume differs"
    assert got["history"] == expected["history"]  # the part restored from the checkpoint too


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, shapes_train):
    """Bytes of a real 2-iteration checkpoint of the tiny FCOS."""
    path = tmp_path_factory.mktemp("good") / "checkpoint.pt"
    train_tiny(shapes_train, 2, checkpoint_path=str(path), checkpoint_period=1)
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
def test_damaged_checkpoint_gives_an_error_naming_the_file(tmp_path, shapes_train, good_checkpoint, damage):
    path = tmp_path / "my run" / "checkpoint.pt"
    path.parent.mkdir()
    damaged = DAMAGES[damage](good_checkpoint)
    assert damaged != good_checkpoint
    path.write_bytes(damaged)
    with pytest.raises(RuntimeError) as error:
        load_checkpoint(str(path))
    assert_message(error.value, str(path))
    # Resuming from it stops before training a single step (and does not train from scratch over it).
    with pytest.raises(RuntimeError) as error:
        train_tiny(shapes_train, 2, checkpoint_path=str(path), checkpoint_period=1, resume=True)
    assert_message(error.value, str(path))
    assert path.read_bytes() == damaged, "the damaged file must be left as it was, for inspection"
    assert os.listdir(path.parent) == ["checkpoint.pt"]


@pytest.mark.parametrize("crash", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk_full", "ctrl_c"])
def test_crash_while_writing_keeps_the_last_good_checkpoint(tmp_path, shapes_train, monkeypatch, crash):
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
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as target:
                target.write(half)
        else:
            f.write(half)
            f.flush()
        raise crash

    monkeypatch.setattr(torch, "save", save_that_dies_half_way)
    with pytest.raises(type(crash)):
        train_tiny(shapes_train, 4, checkpoint_path=str(path), checkpoint_period=2)
    monkeypatch.undo()
    assert seen["saves"] == 2
    assert path.read_bytes() == seen["good"], "the half-written checkpoint replaced the last good one"
    assert load_checkpoint(str(path))["state"]["iteration"] == 2
    assert os.listdir(tmp_path) == ["checkpoint.pt"], "the half-written temporary file was left behind"
    if isinstance(crash, OSError):
        # The surviving checkpoint is a valid starting point: resuming gives the uninterrupted result.
        resumed, _ = train_tiny(shapes_train, 4, checkpoint_path=str(path), checkpoint_period=2, resume=True)
        uninterrupted, _ = train_tiny(shapes_train, 4)
        assert resumed == uninterrupted


# ==================================================================================================
# 3. Input validation
# ==================================================================================================

# -- FCOS.forward ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fcos3():
    """Tiny FCOS with 3 classes (valid class ids 0, 1, 2)."""
    eecs598.reset_seed(0)
    return make_fcos(num_classes=3, fpn_channels=16, stem_channels=(16,))


def _image(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _boxes(*rows):
    return torch.tensor([list(rows)], dtype=torch.float32)  # (1, M, 5)


GOOD_BOXES = _boxes([4.0, 4.0, 40.0, 40.0, 1.0])
NAN, INF = float("nan"), float("inf")

FCOS_CASES = {
    # id: (train?, images, gt_boxes, thresholds, error type, message fragments: argument, expected, received)
    "images_rank_3": (True, _image(3, 64, 64), GOOD_BOXES, {}, ValueError,
                      ["images", "(B, 3, H, W)", "(3, 64, 64)"]),
    "images_rank_5": (True, _image(1, 1, 3, 64, 64), GOOD_BOXES, {}, ValueError,
                      ["images", "(B, 3, H, W)", "(1, 1, 3, 64, 64)"]),
    "images_grey_1_channel": (True, _image(1, 1, 64, 64), GOOD_BOXES, {}, ValueError,
                              ["images", "(B, 3, H, W)", "(1, 1, 64, 64)"]),
    "images_rgba_4_channels": (False, _image(1, 4, 64, 64), None, {}, ValueError,
                               ["images", "(B, 3, H, W)", "(1, 4, 64, 64)"]),
    "images_channels_last": (True, _image(1, 64, 64, 3), GOOD_BOXES, {}, ValueError,
                             ["images", "(B, 3, H, W)", "(1, 64, 64, 3)"]),
    "images_uint8": (True, _image(1, 3, 64, 64).clamp(0, 1).mul(255).to(torch.uint8), GOOD_BOXES, {}, TypeError,
                     ["images", "floating", "uint8"]),
    "images_numpy": (True, _image(1, 3, 64, 64).numpy(), GOOD_BOXES, {}, TypeError,
                     ["images", "Tensor", "ndarray"]),
    "images_empty_batch": (True, _image(0, 3, 64, 64), torch.zeros(0, 1, 5), {}, ValueError,
                           ["images", "B = 0"]),
    "images_nan_train": (True, _image(1, 3, 64, 64).index_fill(3, torch.tensor([5]), NAN), GOOD_BOXES, {},
                         ValueError, ["images", "NaN"]),
    "images_inf_eval": (False, _image(1, 3, 64, 64).index_fill(2, torch.tensor([7]), INF), None, {},
                        ValueError, ["images", "inf"]),
    "gt_boxes_missing": (True, _image(1, 3, 64, 64), None, {}, ValueError, ["gt_boxes", "required"]),
    "gt_boxes_without_class_column": (True, _image(1, 3, 64, 64), GOOD_BOXES[..., :4], {}, ValueError,
                                      ["gt_boxes", "M, 5)", "(1, 1, 4)"]),
    "gt_boxes_rank_2": (True, _image(1, 3, 64, 64), GOOD_BOXES[0], {}, ValueError,
                        ["gt_boxes", "M, 5)", "(1, 5)"]),
    "gt_boxes_batch_mismatch": (True, _image(1, 3, 64, 64), GOOD_BOXES.expand(2, -1, -1), {}, ValueError,
                                ["gt_boxes", "B=1", "(2, 1, 5)"]),
    "gt_boxes_list": (True, _image(1, 3, 64, 64), GOOD_BOXES.tolist(), {}, TypeError,
                      ["gt_boxes", "Tensor", "list"]),
    "class_id_equal_to_num_classes": (True, _image(1, 3, 64, 64), _boxes([4, 4, 40, 40, 3]), {}, ValueError,
                                      ["gt_boxes", "[0, 2]", "3"]),
    "class_id_negative": (True, _image(1, 3, 64, 64), _boxes([4, 4, 40, 40, -2]), {}, ValueError,
                          ["gt_boxes", "[0, 2]", "-2"]),
    "class_id_not_integer": (True, _image(1, 3, 64, 64), _boxes([4, 4, 40, 40, 1.5]), {}, ValueError,
                             ["gt_boxes", "integers", "1.5"]),
    "box_x2_less_than_x1": (True, _image(1, 3, 64, 64), _boxes([40, 4, 20, 40, 1]), {}, ValueError,
                            ["gt_boxes", "x2 >= x1", "40.0, 4.0, 20.0"]),
    "box_y2_less_than_y1": (True, _image(1, 3, 64, 64), _boxes([4, 40, 40, 20, 1]), {}, ValueError,
                            ["gt_boxes", "y2 >= y1", "4.0, 40.0, 40.0, 20.0"]),
    "box_nan": (True, _image(1, 3, 64, 64), _boxes([4, 4, NAN, 40, 1]), {}, ValueError, ["gt_boxes", "NaN"]),
    "box_inf": (True, _image(1, 3, 64, 64), _boxes([4, 4, INF, 40, 1]), {}, ValueError, ["gt_boxes", "inf"]),
    "class_nan": (True, _image(1, 3, 64, 64), _boxes([4, 4, 40, 40, NAN]), {}, ValueError, ["gt_boxes", "NaN"]),
    "score_thresh_above_1": (False, _image(1, 3, 64, 64), None, dict(test_score_thresh=1.5), ValueError,
                             ["test_score_thresh", "[0, 1]", "1.5"]),
    "score_thresh_negative": (False, _image(1, 3, 64, 64), None, dict(test_score_thresh=-0.01), ValueError,
                              ["test_score_thresh", "[0, 1]", "-0.01"]),
    "score_thresh_nan": (False, _image(1, 3, 64, 64), None, dict(test_score_thresh=NAN), ValueError,
                         ["test_score_thresh", "[0, 1]", "nan"]),
    "nms_thresh_above_1": (False, _image(1, 3, 64, 64), None, dict(test_nms_thresh=1.01), ValueError,
                           ["test_nms_thresh", "[0, 1]", "1.01"]),
    "nms_thresh_negative": (False, _image(1, 3, 64, 64), None, dict(test_nms_thresh=-0.5), ValueError,
                            ["test_nms_thresh", "[0, 1]", "-0.5"]),
}


@pytest.mark.parametrize("case", list(FCOS_CASES))
def test_fcos_forward_rejects_bad_input_with_a_clear_message(fcos3, case):
    train, images, gt_boxes, thresholds, error_type, fragments = FCOS_CASES[case]
    fcos3.train(train)
    normalizer = fcos3._normalizer
    with pytest.raises(error_type) as error:
        if train:
            fcos3(images, gt_boxes, **thresholds)
        else:
            fcos3(images, **thresholds)
    assert_message(error.value, *fragments)
    assert fcos3._normalizer == normalizer, "a rejected batch must not update the loss normaliser"


@pytest.mark.parametrize("case", ["integer_gt_boxes", "image_16px_batch_1", "image_32px_batch_1"])
def test_fcos_forward_never_crashes_deep_inside_torch(fcos3, case):
    """Inputs a user may well pass: they must either work (finite losses) or be refused with a message naming
    the argument and the received value, not fail inside torch (integer overflow, BatchNorm internals)."""
    fcos3.train()
    if case == "integer_gt_boxes":
        images, gt_boxes = _image(1, 3, 64, 64), torch.tensor([[[4, 4, 40, 40, 1]]])  # int64 boxes
        name, received = "gt_boxes", "int64"
    else:
        size = 16 if case == "image_16px_batch_1" else 32
        images, gt_boxes, name, received = _image(1, 3, size, size), _boxes([2, 2, 12, 12, 1]), "images", str(size)
    try:
        losses = fcos3(images, gt_boxes)
    except (ValueError, TypeError) as error:
        assert_message(error, name, received)
    else:
        assert all(torch.isfinite(value) for value in losses.values()), losses


# -- datasets -----------------------------------------------------------------------------------

def _json_dataset(root, objects, class_names=("circle", "square"), **kwargs):
    """A one-image dataset in the course's JSON layout; ``objects`` is the image's object list."""
    os.makedirs(root, exist_ok=True)
    Image.new("RGB", (80, 60), (90, 120, 150)).save(os.path.join(root, "a.jpg"))
    entries = [] if objects is None else [["./here/a.jpg", objects]]
    with open(os.path.join(root, "data.json"), "w") as f:
        json.dump(entries, f)  # json writes NaN / Infinity literals, which json.load reads back as floats
    return DetectionJsonDataset(str(root), "data.json", list(class_names), **kwargs)


@pytest.mark.parametrize("case, build, fragments", [
    ("nan_coordinate", lambda d: _json_dataset(d, [{"name": "circle", "xyxy": [1, 2, NAN, 20]}], image_size=32),
     ["xyxy", "finite", "nan"]),
    ("inf_coordinate", lambda d: _json_dataset(d, [{"name": "circle", "xyxy": [1, 2, 30, INF]}], image_size=32),
     ["xyxy", "finite", "inf"]),
    ("x2_less_than_x1", lambda d: _json_dataset(d, [{"name": "circle", "xyxy": [30, 2, 10, 20]}], image_size=32),
     ["xyxy", "x1 <= x2", "[30, 2, 10, 20]"]),
    ("y2_less_than_y1", lambda d: _json_dataset(d, [{"name": "circle", "xyxy": [1, 20, 10, 2]}], image_size=32),
     ["xyxy", "y1 <= y2", "[1, 20, 10, 2]"]),
    ("box_without_4_numbers", lambda d: _json_dataset(d, [{"name": "circle", "xyxy": [1, 2, 10]}], image_size=32),
     ["xyxy", "4", "[1, 2, 10]"]),
    ("unknown_class", lambda d: _json_dataset(d, [{"name": "zebra", "xyxy": [1, 2, 10, 20]}], image_size=32),
     ["class", "'zebra'", "circle"]),
    ("empty_dataset", lambda d: _json_dataset(d, None, image_size=32), ["data.json", "empty"]),
    ("image_size_too_small", lambda d: _json_dataset(d, [], image_size=16), ["image_size", "32", "16"]),
    ("max_boxes_zero", lambda d: _json_dataset(d, [], image_size=32, max_boxes=0), ["max_boxes", "1", "0"]),
    ("shapes_empty_split", lambda d: ShapesDetection(str(d), "train", image_size=64, num_train=0, quiet=True),
     ["num_train", ">= 1", "0"]),
    ("shapes_unknown_split", lambda d: ShapesDetection(str(d), "test", image_size=64, quiet=True),
     ["split", "'train' or 'val'", "'test'"]),
    ("shapes_image_size_too_small", lambda d: ShapesDetection(str(d), "train", image_size=16, num_train=2,
                                                              num_val=1, quiet=True),
     ["image_size", "32", "16"]),
    ("voc_unknown_split", lambda d: VOC2007DetectionTiny(str(d), "trainval"), ["split", "'train' or 'val'",
                                                                             "'trainval'"]),
])
def test_datasets_reject_bad_input_with_a_clear_message(tmp_path, case, build, fragments):
    with pytest.raises((ValueError, TypeError)) as error:
        build(tmp_path / case)
    assert_message(error.value, *fragments)


# -- train_detector ------------------------------------------------------------------------------

class OneSample(Dataset):
    """``n`` copies of a 64 px sample with one box; ``nan=True`` puts a NaN pixel in the image."""

    def __init__(self, n=4, nan=False):
        self.n, self.nan = n, nan

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        image = _image(3, 64, 64)
        if self.nan:
            image[1, 10, 20] = NAN
        return f"img/{index}.jpg", image, torch.tensor([[4.0, 4.0, 40.0, 40.0, 1.0], [-1, -1, -1, -1, -1]])


TRAIN_CASES = {
    # id: (loader, train_detector keyword arguments, message fragments)
    "batch_size_none": (lambda: DataLoader(OneSample(), batch_size=None), {}, ["batch_size", ">= 1", "None"]),
    "empty_dataset": (lambda: DataLoader(Subset(OneSample(), []), batch_size=2), {},
                      ["train_loader", "empty", "0 samples"]),
    "max_iters_zero": (None, dict(max_iters=0), ["max_iters", ">= 1", "0"]),
    "max_iters_float": (None, dict(max_iters=2.5), ["max_iters", "int", "2.5"]),
    "checkpoint_period_zero": (None, dict(checkpoint_period=0), ["checkpoint_period", ">= 1", "0"]),
    "learning_rate_nan": (None, dict(learning_rate=NAN), ["learning_rate", "> 0", "nan"]),
    "learning_rate_negative": (None, dict(learning_rate=-0.01), ["learning_rate", "> 0", "-0.01"]),
    "weight_decay_negative": (None, dict(weight_decay=-1e-4), ["weight_decay", ">= 0", "-0.0001"]),
    "weight_decay_inf": (None, dict(weight_decay=INF), ["weight_decay", "must be", "inf"]),
    "momentum_negative": (None, dict(optimizer="sgd", momentum=-0.5), ["momentum", "must be", "-0.5"]),
    "momentum_nan": (None, dict(optimizer="sgd", momentum=NAN), ["momentum", "must be", "nan"]),
    "warmup_factor_zero": (None, dict(warmup_iters=2, warmup_factor=0.0), ["warmup_factor", "must be", "0.0"]),
    "warmup_factor_above_1": (None, dict(warmup_iters=2, warmup_factor=1.5), ["warmup_factor", "must be", "1.5"]),
    "grad_clip_norm_negative": (None, dict(grad_clip_norm=-1.0), ["grad_clip_norm", "> 0", "-1.0"]),
    "data_seed_string": (None, dict(data_seed="abc"), ["data_seed", "must be", "'abc'"]),
    "data_seed_negative": (None, dict(data_seed=-1), ["data_seed", "must be", "-1"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_detector_rejects_bad_arguments_with_a_clear_message(case):
    make_loader, kwargs, fragments = TRAIN_CASES[case]
    loader = make_loader() if make_loader else DataLoader(OneSample(), batch_size=2)
    model = make_fcos(num_classes=3, fpn_channels=16, stem_channels=(16,))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    options = dict(max_iters=1, plot=False, progress=False)
    options.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as error:
        train_detector(model, loader, **options)
    assert_message(error.value, *fragments)
    _assert_same_weights(model.state_dict(), before)  # refused before any step


def test_train_detector_rejects_a_nan_image_before_any_step():
    model = make_fcos(num_classes=3, fpn_channels=16, stem_channels=(16,))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        train_detector(model, DataLoader(OneSample(nan=True), batch_size=2), max_iters=2, plot=False, progress=False)
    assert_message(error.value, "images", "NaN")
    _assert_same_weights(model.state_dict(), before)


@pytest.mark.parametrize("case", ["empty_list", "exhausted_iterator"])
def test_train_detector_on_a_loader_without_batches_raises_instead_of_hanging(case):
    # A plain iterable of batches (no ``.dataset``) is documented as "iterated over and over". One that yields
    # nothing (an empty list; a one-shot iterator after its first pass) must give an error, not loop forever.
    batch = next(iter(DataLoader(OneSample(2), batch_size=2)))
    loader = [] if case == "empty_list" else iter([batch])
    model = make_fcos(num_classes=3, fpn_channels=16, stem_channels=(16,))
    with time_limit(8, f"train_detector on {case}"), pytest.raises(ValueError) as error:
        train_detector(model, loader, max_iters=3, plot=False, progress=False)
    assert_message(error.value, "train_loader")


# -- train_fcos.py command line ------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--max-iters", "0"), ("--score-thresh", "1.5"),
                                           ("--nms-thresh", "-0.1")])
def test_train_fcos_cli_rejects_bad_numbers_before_doing_any_work(tmp_path, capsys, option, value):
    data_dir, run_dir = tmp_path / "shapes", tmp_path / "run"
    argv = ["--dataset", "shapes", "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--num-train", "2",
            "--num-val", "1", "--image-size", "64", "--max-iters", "1", "--batch-size", "2", "--fpn-channels", "16",
            "--stem-channels", "16", "--log-period", "1", "--no-progress", option, value]
    with pytest.raises((SystemExit, ValueError)) as error:
        train_fcos.main(argv)
    if isinstance(error.value, SystemExit):
        assert error.value.code == 2  # argparse's usage error
        message = capsys.readouterr().err
    else:
        message = str(error.value)
    assert option in message or option[2:].replace("-", "_") in message, message
    assert value in message, message
    # Fail fast: no dataset generated, no model trained, before the user learns about a typo.
    assert not data_dir.exists(), f"the dataset was generated before {option} {value} was refused"
    assert not (run_dir / "checkpoint.pt").exists(), f"a model was trained before {option} {value} was refused"


# -- inference_with_detector ---------------------------------------------------------------------

INFERENCE_CASES = {
    # id: (test loader from the val set, idx_to_class, score_thresh, nms_thresh, message fragments)
    "score_thresh_above_1": (1, None, 1.5, 0.5, ["score_thresh", "[0, 1]", "1.5"]),
    "score_thresh_negative": (1, None, -0.1, 0.5, ["score_thresh", "[0, 1]", "-0.1"]),
    "score_thresh_nan": (1, None, NAN, 0.5, ["score_thresh", "[0, 1]", "nan"]),
    "nms_thresh_above_1": (1, None, 0.3, 1.01, ["nms_thresh", "[0, 1]", "1.01"]),
    "nms_thresh_nan": (1, None, 0.3, NAN, ["nms_thresh", "[0, 1]", "nan"]),
    "loader_batch_size_2": (2, None, 0.3, 0.5, ["batch_size", "1", "2"]),
    "loader_batch_size_none": (None, None, 0.3, 0.5, ["batch_size", "1", "None"]),
    "empty_loader": ("empty", None, 0.3, 0.5, ["test_loader", "empty"]),
    "idx_to_class_missing_ids": (1, {0: "circle", 1: "cross"}, 0.0, 0.5, ["idx_to_class", "2"]),
}


@pytest.mark.parametrize("case", list(INFERENCE_CASES))
def test_inference_with_detector_rejects_bad_input_with_a_clear_message(tmp_path, shapes_val, case):
    batch_size, idx_to_class, score_thresh, nms_thresh, fragments = INFERENCE_CASES[case]
    if batch_size == "empty":
        loader = DataLoader(Subset(shapes_val, []), batch_size=1)
    else:
        loader = DataLoader(shapes_val, batch_size=batch_size)
    model = make_fcos(num_classes=NUM_CLASSES, fpn_channels=16, stem_channels=(16,))
    with pytest.raises((ValueError, TypeError)) as error:
        inference_with_detector(model, loader, idx_to_class or shapes_val.idx_to_class, score_thresh, nms_thresh,
                                output_dir=str(tmp_path / "mAP" / "input"), progress=False)
    assert_message(error.value, *fragments)


# -- the mAP evaluator ---------------------------------------------------------------------------

def _map_input(root, gt_lines, det_lines):
    for folder, lines in (("ground-truth", gt_lines), ("detection-results", det_lines)):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        with open(os.path.join(root, folder, "000001.txt"), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    return str(root)


@pytest.mark.parametrize("min_overlap", [1.5, -0.1, NAN, "0.5", None])
def test_evaluator_rejects_min_overlap_outside_0_1(tmp_path, min_overlap):
    input_dir = _map_input(tmp_path, ["circle 0 0 9 9"], ["circle 0.9 0 0 9 9"])
    assert evaluate_map(input_dir, quiet=True).map == 1.0  # the files themselves are fine
    with pytest.raises(ValueError) as error:
        evaluate_map(input_dir, min_overlap=min_overlap, quiet=True)
    assert_message(error.value, "min_overlap", "[0, 1]", repr(min_overlap))
    gt, det = read_box_files(os.path.join(input_dir, "ground-truth"), "gt"), read_box_files(
        os.path.join(input_dir, "detection-results"), "det")
    with pytest.raises(ValueError) as error:
        compute_map(gt, det, min_overlap=min_overlap)
    assert_message(error.value, "min_overlap", "[0, 1]")


def test_evaluator_cli_reports_a_bad_min_overlap(tmp_path, capsys):
    input_dir = _map_input(tmp_path / "input", ["circle 0 0 9 9"], ["circle 0.9 0 0 9 9"])
    assert map_main([input_dir, "--min-overlap", "1.5", "--quiet", "--no-plot"]) == 2
    assert_message(capsys.readouterr().err, "min_overlap", "[0, 1]", "1.5")


@pytest.mark.parametrize("gt_line, det_line, bad_folder, bad_token", [
    ("circle 0 0 9 9", "circle nan 0 0 9 9", "detection-results", "nan"),
    ("circle 0 0 9 9", "circle 0.9 0 0 inf 9", "detection-results", "inf"),
    ("circle 0 0 nan 9", "circle 0.9 0 0 9 9", "ground-truth", "nan"),
    ("circle 0 -inf 9 9", "circle 0.9 0 0 9 9", "ground-truth", "-inf"),
    ("circle 9 0 0 9", "circle 0.9 0 0 9 9", "ground-truth", "circle 9 0 0 9"),  # x2 < x1
    ("circle 0 9 9 0", "circle 0.9 0 0 9 9", "ground-truth", "circle 0 9 9 0"),  # y2 < y1
])
def test_evaluator_rejects_non_finite_numbers_and_inverted_gt_boxes(tmp_path, gt_line, det_line, bad_folder,
                                                                    bad_token):
    input_dir = _map_input(tmp_path, ["circle 20 20 40 40", gt_line], ["circle 0.5 20 20 40 40", det_line])
    with pytest.raises(ValueError) as error:
        evaluate_map(input_dir, quiet=True)
    assert_message(error.value, os.path.join(input_dir, bad_folder, "000001.txt") + ":2", bad_token)
