"""Tests of a4_helper: datasets (real VOC sample + synthetic files), download, training loop, inference export.

Expected numbers are worked out by hand in the comments, never taken from the code under test.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import a4_helper
import eecs598
import eecs598.datasets
from a4_helper import (FROM_SCRATCH, DetectionJsonDataset, VOC2007DetectionTiny, inference_with_detector,
                       train_detector)

# The 20 VOC classes in alphabetical order, typed out by hand.
VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


def test_hello_helper(capsys):
    a4_helper.hello_helper()
    assert capsys.readouterr().out == "Hello from a4_helper.py!\n"


def test_star_import_gives_contract_names():
    namespace = {}
    exec("from a4_helper import *", namespace)
    for name in ("hello_helper", "VOC2007DetectionTiny", "train_detector", "inference_with_detector",
                 "ShapesDetection", "DetectionJsonDataset", "FROM_SCRATCH"):
        assert name in namespace, name


# ==================================================================================================
# VOC sample (real JPEGs and annotation lines)
# ==================================================================================================

def _json_entries(voc_dir, split):
    with open(os.path.join(voc_dir, f"voc07_{split}.json")) as f:
        return json.load(f)


def test_voc_sample_sizes_shapes_and_classes(voc_sample_dir):
    for split in ("train", "val"):
        dataset = VOC2007DetectionTiny(voc_sample_dir, split=split)
        assert len(dataset) == 24
        assert dataset.image_size == 224
        assert dataset.idx_to_class == dict(enumerate(VOC_NAMES))
        assert dataset.class_to_idx == {name: i for i, name in enumerate(VOC_NAMES)}
        path, image, gt_boxes = dataset[0]
        assert isinstance(path, str) and path.endswith(".jpg") and os.path.isfile(path)
        assert image.shape == (3, 224, 224) and image.dtype == torch.float32
        assert gt_boxes.shape == (40, 5) and gt_boxes.dtype == torch.float32


def test_voc_sample_boxes_inside_crop_and_class_ids_match_json(voc_sample_dir):
    for split in ("train", "val"):
        dataset = VOC2007DetectionTiny(voc_sample_dir, split=split)
        entries = _json_entries(voc_sample_dir, split)
        for index, (json_path, objects) in enumerate(entries):
            path, _, gt = dataset[index]
            assert os.path.basename(path) == os.path.basename(json_path)
            rows = gt[: len(objects)]
            padding = gt[len(objects):]
            assert (padding == -1).all()
            valid = rows[:, 4] != -1
            assert valid.any(), f"every sample image keeps at least one box ({json_path})"
            assert (rows[~valid] == -1).all()
            kept = rows[valid]
            assert (kept[:, :4] >= 0).all() and (kept[:, :4] <= 224).all()
            assert (kept[:, 2] > kept[:, 0]).all() and (kept[:, 3] > kept[:, 1]).all()
            expected_ids = torch.tensor([VOC_NAMES.index(o["name"]) for o in objects], dtype=torch.float32)
            assert torch.equal(kept[:, 4], expected_ids[valid])


def test_voc_box_mapping_by_hand(voc_sample_dir):
    # val 000800.jpg is 500 x 375. Resize(224): short side 375 -> 224, long side int(224*500/375) = int(298.67)
    # = 298; CenterCrop(224): left = round((298 - 224) / 2) = 37, top = 0. sx = 298/500 = 0.596, sy = 224/375.
    dataset = VOC2007DetectionTiny(voc_sample_dir, split="val")
    entries = _json_entries(voc_sample_dir, "val")
    index = next(i for i, e in enumerate(entries) if e[0].endswith("000800.jpg"))
    _, image, gt = dataset[index]
    sy = 224 / 375
    expected = torch.tensor([
        # car [235,165,328,208]: x 235*0.596-37 = 103.06, 328*0.596-37 = 158.488; y 165*sy = 98.56, 208*sy
        [103.06, 98.56, 158.488, 208 * sy, 6],
        # car [443,174,500,206]: x1 = 443*0.596-37 = 227.03 > 224, so the crop leaves nothing: -1 row
        [-1, -1, -1, -1, -1],
        # car [78,170,113,192]: x 78*0.596-37 = 9.488, 113*0.596-37 = 30.348
        [9.488, 170 * sy, 30.348, 192 * sy, 6],
        # car [38,170,71,188]: x1 = 22.648-37 < 0 -> clamped to 0; x2 = 42.316-37 = 5.316
        [0.0, 170 * sy, 5.316, 188 * sy, 6],
    ])
    torch.testing.assert_close(gt[:4], expected, rtol=0, atol=1e-3)
    assert (gt[4:] == -1).all()


def test_voc_thirty_objects_keep_their_rows(voc_sample_dir):
    # val 004349.jpg (500 x 376) has 30 birds. Resize: 297 x 224 (int(297.87)), left = round(36.5) = 36,
    # sx = 297/500 = 0.594. Only the birds with x1*0.594 - 36 >= 224, i.e. x1 >= 437.7, leave the crop:
    # objects 6 ([443,175,500,221]) and 23 ([448,20,488,70]).
    dataset = VOC2007DetectionTiny(voc_sample_dir, split="val")
    entries = _json_entries(voc_sample_dir, "val")
    index = next(i for i, e in enumerate(entries) if e[0].endswith("004349.jpg"))
    assert len(entries[index][1]) == 30
    _, _, gt = dataset[index]
    dropped = [6, 23]
    for row in range(30):
        if row in dropped:
            assert (gt[row] == -1).all()
        else:
            assert gt[row, 4] == VOC_NAMES.index("bird")
    assert (gt[30:] == -1).all()
    # First bird [88,50,156,88]: x 88*0.594-36 = 16.272, 156*0.594-36 = 56.664; y * 224/376.
    torch.testing.assert_close(gt[0, :4], torch.tensor([16.272, 50 * 224 / 376, 56.664, 88 * 224 / 376]),
                               rtol=0, atol=1e-3)


def test_voc_part_annotations_are_ignored(voc_sample_dir):
    dataset = VOC2007DetectionTiny(voc_sample_dir, split="train")
    entries = _json_entries(voc_sample_dir, "train")
    index = next(i for i, e in enumerate(entries) if any("part" in o for o in e[1]))
    _, _, gt = dataset[index]
    assert int((gt[:, 4] != -1).sum()) <= len(entries[index][1])


# ==================================================================================================
# Synthetic files: exact geometry and errors
# ==================================================================================================

def _write_dataset(root, entries, image_sizes=None):
    """Write a JSON dataset in ``root``; ``image_sizes`` maps relative path -> (w, h) of a grey image."""
    os.makedirs(root, exist_ok=True)
    for rel, (w, h) in (image_sizes or {}).items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        Image.new("RGB", (w, h), (128, 128, 128)).save(os.path.join(root, rel))
    with open(os.path.join(root, "data.json"), "w") as f:
        json.dump(entries, f)
    return os.path.join(root, "data.json")


def test_mapped_box_lands_on_the_object_pixels(tmp_path):
    # A 100 x 60 black image with a white rectangle at x 70..89, y 10..39 (pixel indices; XYXY box
    # [70, 10, 90, 40] in continuous coordinates). Resize(32): 60 -> 32, 100 -> int(32*100/60) = 53;
    # left = round(21/2) = 10 (Python rounds 10.5 to even). Box: x 70*0.53-10 = 27.1, 90*0.53-10 = 37.7 -> 32;
    # y 10*32/60 = 5.33, 40*32/60 = 21.33.
    image = np.zeros((60, 100, 3), np.uint8)
    image[10:40, 70:90] = 255
    Image.fromarray(image).save(tmp_path / "img.png")
    json_path = _write_dataset(tmp_path, [["./here/img.png", [{"name": "b", "xyxy": [70, 10, 90, 40]},
                                                                {"name": "a", "xyxy": [0, 0, 5, 60]}]]])
    dataset = DetectionJsonDataset(str(tmp_path), json_path, ["a", "b"], image_size=32, max_boxes=3)
    _, tensor, gt = dataset[0]
    torch.testing.assert_close(gt[0], torch.tensor([27.1, 10 * 32 / 60, 32.0, 40 * 32 / 60, 1.0]),
                               rtol=0, atol=1e-4)
    # The second box, x 0..5 -> 0*0.53-10 < 0 and 5*0.53-10 < 0: outside the crop -> -1 row.
    assert (gt[1] == -1).all() and (gt[2] == -1).all()
    # The bright pixels of the output lie inside the mapped box (1 px of resampling blur allowed).
    pixels = tensor[0] * 0.229 + 0.485
    ys, xs = torch.nonzero(pixels > 0.5, as_tuple=True)
    assert xs.min() >= 27.1 - 1 and xs.max() + 1 <= 32 and ys.min() >= 5.33 - 1 and ys.max() + 1 <= 21.33 + 1


def test_missing_json_names_path_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        VOC2007DetectionTiny(str(tmp_path), split="val")
    message = str(info.value)
    assert os.path.join(str(tmp_path), "voc07_val.json") in message
    assert "download=True" in message and "21ab74d443b760521c8d089efbc55052" in message


def test_missing_image_names_path(tmp_path):
    json_path = _write_dataset(tmp_path, [["./here/JPEGImages/000001.jpg", [{"name": "a", "xyxy": [1, 1, 5, 5]}]]])
    with pytest.raises(FileNotFoundError, match="000001.jpg"):
        DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32, missing_hint="Run make data.")


def test_corrupt_jpeg_names_file(tmp_path):
    json_path = _write_dataset(tmp_path, [["./here/bad.jpg", [{"name": "a", "xyxy": [1, 1, 5, 5]}]]])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 10)
    dataset = DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)
    with pytest.raises(OSError, match="bad.jpg"):
        dataset[0]


def test_truncated_jpeg_names_file(tmp_path):
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "cut.jpg", quality=90)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    json_path = _write_dataset(tmp_path, [["./here/cut.jpg", [{"name": "a", "xyxy": [1, 1, 5, 5]}]]])
    dataset = DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)
    with pytest.raises(OSError, match="cut.jpg"):
        dataset[0]


@pytest.mark.parametrize("entry, pattern", [
    (["./here/x.jpg"], r"entry 1"),  # missing objects list
    (["./here/x.jpg", [{"name": "a"}]], r"entry 1 \(./here/x.jpg\), object 0"),
    (["./here/x.jpg", [{"name": "a", "xyxy": [5, 5, 1, 1]}]], r"entry 1 \(./here/x.jpg\).*x1 <= x2"),
    (["./here/x.jpg", [{"name": "a", "xyxy": [1, 1, "5", 5]}]], r"entry 1 \(./here/x.jpg\)"),
    (["./here/x.jpg", [{"name": "zebra", "xyxy": [1, 1, 5, 5]}]], r"entry 1 \(./here/x.jpg\).*'zebra'"),
])
def test_malformed_entries_name_the_entry(tmp_path, entry, pattern):
    good = ["./here/g.jpg", [{"name": "a", "xyxy": [1, 1, 5, 5]}]]
    json_path = _write_dataset(tmp_path, [good, entry], {"g.jpg": (40, 40), "x.jpg": (40, 40)})
    with pytest.raises(ValueError, match=pattern):
        DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)


def test_more_objects_than_max_boxes_names_image(tmp_path):
    objects = [{"name": "a", "xyxy": [1, 1, 5, 5]}] * 3
    json_path = _write_dataset(tmp_path, [["./here/many.jpg", objects]], {"many.jpg": (40, 40)})
    with pytest.raises(ValueError, match=r"many.jpg.*3 objects.*max_boxes=2"):
        DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32, max_boxes=2)


def test_empty_dataset_and_bad_image_size(tmp_path):
    json_path = _write_dataset(tmp_path, [])
    with pytest.raises(ValueError, match="empty"):
        DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)
    json_path = _write_dataset(tmp_path, [["./here/g.jpg", []]], {"g.jpg": (40, 40)})
    for bad in (16, 64.0, "64"):
        with pytest.raises(ValueError, match="image_size"):
            DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=bad)


# ==================================================================================================
# Download (never touches the real network)
# ==================================================================================================

def test_download_offline_fails_fast_with_instructions(tmp_path):
    # Port 9 (discard) on localhost is closed here: the connection is refused at once, like an offline
    # machine with a firewall. The message must tell how to get the files by hand.
    old_timeout = socket.getdefaulttimeout()
    start = time.time()
    with pytest.raises(RuntimeError) as info:
        a4_helper.download_voc2007(str(tmp_path), url_base="http://127.0.0.1:9/", timeout=2.0)
    assert time.time() - start < 10
    message = str(info.value)
    assert "http://127.0.0.1:9/VOCtrainval_06-Nov-2007.tar" in message
    assert "c52e279531787c972589f7e41ab4ae64" in message and "tar xf" in message
    assert socket.getdefaulttimeout() == old_timeout
    assert not any(name.endswith((".part", ".tmp")) for name in os.listdir(tmp_path))


def test_download_verifies_md5_renames_and_skips_valid_files(tmp_path, monkeypatch):
    import wget

    payloads = {"a.json": b"first file", "b.json": b"second file"}
    md5s = {name: hashlib.md5(data).hexdigest() for name, data in payloads.items()}
    calls = []

    def fake_download(url, out=None, bar=None):
        calls.append(url)
        assert out.endswith(".part") and socket.getdefaulttimeout() == 3.0
        with open(out, "wb") as f:
            f.write(payloads[url.rsplit("/", 1)[1]])
        return out

    monkeypatch.setattr(wget, "download", fake_download)
    monkeypatch.setattr(eecs598.datasets, "VOC_FILES_MD5", md5s)
    monkeypatch.setattr(eecs598.datasets, "VOC_NUM_TRAINVAL_IMAGES", 1)
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "1.jpg").write_bytes(b"")
    (tmp_path / "b.json").write_bytes(b"second file")  # already there with the right md5
    a4_helper.download_voc2007(str(tmp_path), url_base="http://example.invalid/", timeout=3.0)
    assert calls == ["http://example.invalid/a.json"]
    assert (tmp_path / "a.json").read_bytes() == b"first file"
    assert not (tmp_path / "a.json.part").exists()

    # A download with the wrong md5 is discarded and reported; the target never appears.
    (tmp_path / "a.json").unlink()
    monkeypatch.setitem(payloads, "a.json", b"tampered")
    with pytest.raises(RuntimeError, match="md5"):
        a4_helper.download_voc2007(str(tmp_path), url_base="http://example.invalid/", timeout=3.0)
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "a.json.part").exists()


# ==================================================================================================
# Training loop (tiny fake detector: fast, and lets tests inject NaNs and crashes)
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
    """Returns FCOS-like losses; ``nan_at``: NaN loss_box at that call; ``crash_at``: raise at that call."""

    def __init__(self, nan_at=None, crash_at=None, sleep=0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.nan_at, self.crash_at, self.sleep, self.calls = nan_at, crash_at, sleep, 0
        self._normalizer = 150.0

    def training_state(self):  # the engine saves and restores it through these public methods
        return {"normalizer": self._normalizer}

    def load_training_state(self, state):
        self._normalizer = state["normalizer"]

    def forward(self, images, gt_boxes=None, test_score_thresh=None, test_nms_thresh=None):
        out = self.fc(F.relu(self.conv(images)).mean((2, 3)))  # (B, 3)
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
        return {"loss_cls": ((out[:, 0] - valid.sum(1)) ** 2).mean(),
                "loss_box": loss_box,
                "loss_ctr": F.softplus(out[:, 2]).mean() / self._normalizer}


def _train_tiny(checkpoint_path=None, resume=False, max_iters=12, num_workers=0, seed=0, **detector_kwargs):
    eecs598.reset_seed(seed)
    model = TinyDetector(**detector_kwargs)
    loader = DataLoader(TinyDataset(), batch_size=4, num_workers=num_workers)
    history = train_detector(model, loader, learning_rate=0.01, max_iters=max_iters, log_period=5,
                             checkpoint_path=checkpoint_path, checkpoint_period=3, resume=resume, plot=False,
                             progress=False)
    return history, model


def test_training_returns_finite_history_and_logs(capsys):
    history, _ = _train_tiny(max_iters=6)
    assert list(history) == ["loss_cls", "loss_box", "loss_ctr", "total"]
    assert all(len(v) == 6 for v in history.values())
    assert all(np.isfinite(v).all() for v in history.values())
    np.testing.assert_allclose(np.sum([history[k] for k in ("loss_cls", "loss_box", "loss_ctr")], 0),
                               history["total"], rtol=1e-6)
    out = capsys.readouterr().out
    assert "[Iter 0][loss: " in out and "[Iter 5][loss: " in out and "[loss_ctr: " in out
    assert "[Iter 1]" not in out


def test_two_runs_with_same_seed_are_bit_identical():
    first, _ = _train_tiny(max_iters=10)
    second, _ = _train_tiny(max_iters=10)
    assert first == second
    other, _ = _train_tiny(max_iters=10, seed=1)
    assert other != first


def test_worker_processes_do_not_change_the_losses():
    # Each sample is loaded with RNGs seeded from its position, so workers give the same augmentations.
    in_process, _ = _train_tiny(max_iters=6, num_workers=0)
    with_workers, _ = _train_tiny(max_iters=6, num_workers=2)
    assert in_process == with_workers


def test_nan_loss_raises_naming_iteration_and_loss():
    eecs598.reset_seed(0)
    model = TinyDetector(nan_at=3)
    loader = DataLoader(TinyDataset(), batch_size=4)
    with pytest.raises(FloatingPointError, match=r"iteration 3: loss_box=nan"):
        train_detector(model, loader, max_iters=10, plot=False, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the NaN step must not be applied"


def test_learning_rate_schedule_by_hand():
    model = Scalar()  # loss = w, so w drops by exactly lr_t each step
    loader = DataLoader(TinyDataset(4, augment=False), batch_size=2)
    history = train_detector(model, loader, learning_rate=0.1, weight_decay=0.0, max_iters=10, momentum=0.0,
                             warmup_iters=4, warmup_factor=0.001, plot=False, progress=False)
    steps = -np.diff(history["loss_cls"] + [model.w.item()])
    # warm-up: 0.1 * (0.001 + 0.999 * t / 4) for t = 0..3; then 0.1; x0.1 from int(0.6*10) = 6; x0.01 from 9.
    expected = [0.1 * (0.001 + 0.999 * t / 4) for t in range(4)] + [0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
    np.testing.assert_allclose(steps, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(max_iters=0), "max_iters must be an int >= 1, got 0"),
    (dict(learning_rate=0.0), "learning_rate must be a finite number > 0, got 0.0"),
    (dict(optimizer="adam"), "optimizer must be 'sgd' or 'adamw', got 'adam'"),
    (dict(resume=True), "resume=True needs a checkpoint_path"),
])
def test_invalid_arguments(kwargs, pattern):
    loader = DataLoader(TinyDataset(), batch_size=4)
    with pytest.raises(ValueError, match=pattern):
        train_detector(TinyDetector(), loader, plot=False, progress=False, **kwargs)


def test_empty_dataset_and_zero_batch_size():
    with pytest.raises(ValueError, match=r"dataset is empty"):
        train_detector(TinyDetector(), DataLoader(TinyDataset(0), batch_size=4), plot=False, progress=False)

    class ZeroBatchLoader:
        dataset, batch_size = TinyDataset(), 0

    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        train_detector(TinyDetector(), ZeroBatchLoader(), plot=False, progress=False)


def test_checkpoint_resume_after_crash_equals_uninterrupted_run(tmp_path):
    reference, _ = _train_tiny(max_iters=12)
    checkpoint = str(tmp_path / "ckpt.pt")
    with pytest.raises(KeyboardInterrupt):
        _train_tiny(checkpoint, max_iters=12, crash_at=7)  # checkpoints after iterations 3 and 6
    assert a4_helper.load_checkpoint(checkpoint)["state"]["iteration"] == 6
    assert [f for f in os.listdir(tmp_path)] == ["ckpt.pt"], "no temporary files left behind"
    resumed, model = _train_tiny(checkpoint, resume=True, max_iters=12, seed=123)  # seed: restored from ckpt
    assert resumed == reference
    assert model.calls == 6  # only iterations 6..11 were run again
    final = a4_helper.load_checkpoint(checkpoint)
    assert final["state"]["iteration"] == 12 and final["history"] == reference
    # Resuming a finished run does nothing and returns the stored history.
    again, model = _train_tiny(checkpoint, resume=True, max_iters=12)
    assert again == reference and model.calls == 0


def test_resume_with_other_settings_is_refused(tmp_path):
    checkpoint = str(tmp_path / "ckpt.pt")
    _train_tiny(checkpoint, max_iters=3)
    with pytest.raises(ValueError, match="max_iters"):
        _train_tiny(checkpoint, resume=True, max_iters=6)


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    _train_tiny(str(checkpoint), max_iters=3)
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(RuntimeError, match=r"ckpt.pt is truncated or corrupt"):
        _train_tiny(str(checkpoint), resume=True, max_iters=3)
    assert checkpoint.read_bytes() == good[: len(good) // 2]


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoint = str(tmp_path / "ckpt.pt")
    real_save, saves = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        saves.append(obj["state"]["iteration"])
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _train_tiny(checkpoint, max_iters=12)
    assert saves == [3, 6]
    assert a4_helper.load_checkpoint(checkpoint)["state"]["iteration"] == 3
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    """A training process killed with SIGKILL resumes to exactly the uninterrupted losses."""
    def command(checkpoint, out, resume, sleep):
        code = (f"import sys, json; sys.path[:0] = [{REPO_ROOT!r}, {TESTS_DIR!r}]\n"
                "import torch; torch.set_num_threads(1)\n"
                "from test_a4_helper import _train_tiny\n"
                f"h, _ = _train_tiny({checkpoint!r}, resume={resume}, max_iters=30, sleep={sleep})\n"
                f"json.dump(h, open({out!r}, 'w'))\n")
        return [sys.executable, "-c", code]

    reference = subprocess.Popen(command(str(tmp_path / "ref.pt"), str(tmp_path / "ref.json"), False, 0.0))
    checkpoint = str(tmp_path / "ckpt.pt")
    victim = subprocess.Popen(command(checkpoint, str(tmp_path / "victim.json"), False, 0.05))
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(checkpoint) and a4_helper.load_checkpoint(checkpoint)["state"]["iteration"] >= 9:
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    stopped_at = a4_helper.load_checkpoint(checkpoint)["state"]["iteration"]
    assert 9 <= stopped_at < 30, "the kill should land mid-run"
    subprocess.run(command(checkpoint, str(tmp_path / "resumed.json"), True, 0.0), check=True, timeout=120)
    assert reference.wait(timeout=120) == 0
    with open(tmp_path / "ref.json") as f, open(tmp_path / "resumed.json") as g:
        assert json.load(f) == json.load(g)


# ==================================================================================================
# Inference export
# ==================================================================================================

class ScriptedDetector(nn.Module):
    """Eval-mode detector returning fixed predictions per call (none for the second image)."""

    OUTPUTS = [
        (torch.tensor([[1.0, 2.5, 30.125, 40.0], [0.0, 0.0, 5.0, 5.0]]), torch.tensor([1, 0]),
         torch.tensor([0.9123456, 0.5])),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0)),
        (torch.tensor([[3.0, 4.0, 10.0, 12.0]]), torch.tensor([2]), torch.tensor([0.25])),
    ]

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls, self.thresholds = 0, []

    def forward(self, images, gt_boxes=None, test_score_thresh=None, test_nms_thresh=None):
        assert not self.training and not torch.is_grad_enabled()
        self.thresholds.append((test_score_thresh, test_nms_thresh))
        out = self.OUTPUTS[self.calls]
        self.calls += 1
        return out


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _gt(rows):
    gt = torch.full((4, 5), -1.0)
    gt[: len(rows)] = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    return gt


def _inference_items():
    image = torch.zeros(3, 16, 16)
    return [("d/000001.jpg", image, _gt([[1, 2, 3, 4, 0], [5.555, 6, 7, 8.125, 2]])),
            ("d/000002.jpg", image, _gt([[0, 0, 16, 16, 1]])),
            ("d/000003.jpg", image, _gt([]))]


def test_inference_writes_one_file_pair_per_image(tmp_path, capsys):
    out = tmp_path / "mAP" / "input"
    (out / "detection-results").mkdir(parents=True)
    (out / "detection-results" / "stale.txt").write_text("cat 0.5 1 1 2 2\n")
    detector = ScriptedDetector()
    loader = DataLoader(ListDataset(_inference_items()), batch_size=1)
    inference_with_detector(detector, loader, {0: "cat", 1: "dog", 2: "person"}, 0.3, 0.6, output_dir=str(out),
                            progress=False)
    assert detector.thresholds == [(0.3, 0.6)] * 3
    assert sorted(os.listdir(out / "ground-truth")) == ["000001.txt", "000002.txt", "000003.txt"]
    assert sorted(os.listdir(out / "detection-results")) == ["000001.txt", "000002.txt", "000003.txt"]
    read = lambda kind, name: (out / kind / name).read_text()
    # float32(5.555) = 5.55499982..., and 8.125 is exact, rounded half to even: "5.55", "8.12".
    assert read("ground-truth", "000001.txt") == "cat 1.00 2.00 3.00 4.00\nperson 5.55 6.00 7.00 8.12\n"
    assert read("ground-truth", "000002.txt") == "dog 0.00 0.00 16.00 16.00\n"
    assert read("ground-truth", "000003.txt") == ""
    assert read("detection-results", "000001.txt") == "dog 0.912346 1.00 2.50 30.12 40.00\ncat 0.500000 0.00 0.00 5.00 5.00\n"
    assert read("detection-results", "000002.txt") == ""  # no predictions: an empty file, not a missing one
    assert read("detection-results", "000003.txt") == "person 0.250000 3.00 4.00 10.00 12.00\n"
    printed = capsys.readouterr().out
    assert "Total inference time: " in printed and "Replaced the previous results" in printed


def test_inference_argument_checks(tmp_path):
    items = _inference_items()
    with pytest.raises(ValueError, match="batch_size=1"):
        inference_with_detector(ScriptedDetector(), DataLoader(ListDataset(items), batch_size=2), {0: "a"}, 0.3, 0.5,
                                output_dir=str(tmp_path))
    for score, nms in ((-0.1, 0.5), (0.3, 1.5)):
        with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
            inference_with_detector(ScriptedDetector(), DataLoader(ListDataset(items), batch_size=1), {0: "a"},
                                    score, nms, output_dir=str(tmp_path))


def test_inference_draws_unnormalised_images(monkeypatch):
    drawn = []
    monkeypatch.setattr(eecs598.utils, "detection_visualizer",
                        lambda image, idx_to_class, bbox=None, pred=None, **kw: drawn.append((image, bbox, pred)))
    # A normalised image whose un-normalised value is 0.25 everywhere: (0.25 - mean) / std per channel.
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    image = ((0.25 - mean) / std)[:, None, None].expand(3, 8, 8).clone()
    items = [(p, image, gt) for p, _, gt in _inference_items()]
    inference_with_detector(ScriptedDetector(), DataLoader(ListDataset(items), batch_size=1),
                            {0: "cat", 1: "dog", 2: "person"}, 0.3, 0.5, progress=False)
    assert len(drawn) == 3
    torch.testing.assert_close(drawn[0][0], torch.full((3, 8, 8), 0.25))
    assert drawn[0][1].shape == (2, 5) and drawn[2][1].shape == (0, 5)  # padding rows removed
    assert drawn[0][2].shape == (2, 6) and drawn[0][2][0, 4] == 1 and abs(drawn[0][2][0, 5] - 0.9123456) < 1e-6


# ==================================================================================================
# The real FCOS on the real VOC sample (integration)
# ==================================================================================================

def test_fcos_trains_and_exports_on_voc_sample(voc_sample_dir, tmp_path):
    from conftest import make_fcos

    eecs598.reset_seed(0)
    train_set = VOC2007DetectionTiny(voc_sample_dir, "train", image_size=64)
    model = make_fcos(num_classes=20, fpn_channels=16, stem_channels=(16,))
    history = train_detector(model, DataLoader(train_set, batch_size=4), max_iters=3, log_period=1, plot=False,
                             progress=False, **FROM_SCRATCH)
    assert all(len(v) == 3 and np.isfinite(v).all() for v in history.values())
    val_set = torch.utils.data.Subset(VOC2007DetectionTiny(voc_sample_dir, "val", image_size=64), range(3))
    inference_with_detector(model, DataLoader(val_set, batch_size=1), train_set.idx_to_class, 0.05, 0.5,
                            output_dir=str(tmp_path), progress=False)
    assert len(os.listdir(tmp_path / "ground-truth")) == 3 and len(os.listdir(tmp_path / "detection-results")) == 3


class Scalar(nn.Module):
    """loss = w: with plain SGD (momentum 0, no weight decay) w drops by exactly lr_t each step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, images, gt_boxes):
        return {"loss_cls": self.w * 1.0}


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
        eecs598.reset_seed(0)
        model = TinyDetector(crash_at=crash_at)
        train_detector(model, DataLoader(TinyDataset(), batch_size=4), learning_rate=0.01, max_iters=12,
                       ema_decay=0.9, checkpoint_path=checkpoint, checkpoint_period=3, resume=resume, plot=False,
                       progress=False)
        return model

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


@pytest.mark.parametrize("width,height,size", [(500, 375, 224), (375, 500, 224), (333, 500, 128), (1, 3000, 32),
                                               (640, 427, 96), (224, 224, 224), (101, 77, 64)])
def test_resize_crop_geometry_matches_torchvision_transforms(width, height, size):
    """The box mapping's geometry equals what torchvision's public Resize/CenterCrop do to an image."""
    from PIL import Image
    from torchvision import transforms

    from a4_helper import resize_crop_geometry

    resized = transforms.Resize(size)(Image.new("RGB", (width, height)))
    new_width, new_height, left, top = resize_crop_geometry(width, height, size)
    assert (new_width, new_height) == resized.size
    # CenterCrop's offsets: int(round((new - S) / 2)).
    assert (left, top) == (int(round((resized.size[0] - size) / 2.0)), int(round((resized.size[1] - size) / 2.0)))
