"""Tests of eecs598.evaluation.inference (``inference_with_detector``) and the all-or-nothing Cartucho file writer.

- The files written for each image (one pair per image, also without predictions), by hand.
- Arguments refused before any work, with messages naming the argument and the value received.
- All or nothing (issue 10, item 2): a failure part-way (two images with the same id, a truncated JPEG in the
  middle of the set, Ctrl-C, an error while swapping the folders in) leaves the previous results byte for byte
  and no temporary folder; ``evaluate_map`` never scores a half-written set.
- The real tiny FCOS trained and exported on the VOC sample (integration).
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import eecs598
import eecs598.evaluation.cartucho
from a4_helper import FROM_SCRATCH, DetectionJsonDataset, VOC2007DetectionTiny, inference_with_detector, \
    train_detector
from conftest import make_fcos
from eecs598.evaluation.mean_ap import evaluate_map
from tiny_training import NAN, NUM_CLASSES, assert_message, tiny_shapes


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory):
    return tiny_shapes(tmp_path_factory.mktemp("shapes"))[1]


# ==================================================================================================
# The files, by hand
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


INFERENCE_CASES = {
    # id: (test loader from the val set, idx_to_class, score_thresh, nms_thresh, message fragments)
    "score_thresh_above_1": (1, None, 1.5, 0.5, ["score_thresh", "[0, 1]", "1.5"]),
    "score_thresh_negative": (1, None, -0.1, 0.5, ["score_thresh", "[0, 1]", "-0.1"]),
    "score_thresh_nan": (1, None, NAN, 0.5, ["score_thresh", "[0, 1]", "nan"]),
    "nms_thresh_above_1": (1, None, 0.3, 1.01, ["nms_thresh", "[0, 1]", "1.01"]),
    "nms_thresh_nan": (1, None, 0.3, NAN, ["nms_thresh", "[0, 1]", "nan"]),
    "loader_batch_size_2": (2, None, 0.3, 0.5, ["batch_size=1", "2"]),
    "loader_batch_size_none": (None, None, 0.3, 0.5, ["batch_size", "1", "None"]),
    "empty_loader": ("empty", None, 0.3, 0.5, ["test_loader", "empty"]),
    "idx_to_class_missing_ids": (1, {0: "circle", 1: "cross"}, 0.0, 0.5, ["idx_to_class", "2"]),
    "class_name_with_space": (1, {0: "traffic light", 1: "b", 2: "c", 3: "d", 4: "e"}, 0.0, 0.5,
                              ["class names", "whitespace", "traffic light"]),
}


@pytest.mark.parametrize("case", list(INFERENCE_CASES))
def test_inference_rejects_bad_input_with_a_clear_message(tmp_path, shapes_val, case):
    batch_size, idx_to_class, score_thresh, nms_thresh, fragments = INFERENCE_CASES[case]
    if batch_size == "empty":
        loader = DataLoader(Subset(shapes_val, []), batch_size=1)
    else:
        loader = DataLoader(shapes_val, batch_size=batch_size)
    model = ScriptedDetector()
    model.num_classes = NUM_CLASSES
    with pytest.raises((ValueError, TypeError)) as error:
        inference_with_detector(model, loader, idx_to_class or shapes_val.idx_to_class, score_thresh, nms_thresh,
                                output_dir=str(tmp_path / "mAP" / "input"), progress=False)
    assert_message(error.value, *fragments)
    assert model.calls == 0 and not (tmp_path / "mAP").exists()


# ==================================================================================================
# All or nothing
# ==================================================================================================

NAMES = {0: "cat", 1: "dog", 2: "person"}


def _folder_bytes(root):
    """``{relative path: bytes}`` of every file under ``root``, hidden ones included."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


@pytest.fixture
def previous_results(tmp_path):
    """An output folder holding a complete earlier set of results: ``(folder, its files)``."""
    out = tmp_path / "mAP" / "input"
    inference_with_detector(ScriptedDetector(), DataLoader(ListDataset(_inference_items()), batch_size=1), NAMES,
                            0.3, 0.5, output_dir=str(out), progress=False)
    files = _folder_bytes(out)
    assert len(files) == 6
    return out, files


class CrashingDetector(ScriptedDetector):
    """``ScriptedDetector`` whose third call raises ``error``."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def forward(self, images, *args, **kwargs):
        if self.calls == 2:
            raise self.error
        return super().forward(images, *args, **kwargs)


def _failing_run(case, tmp_path):
    """A test loader, detector and expected error for each way of failing part-way."""
    items = _inference_items()
    if case == "duplicate_image_id":  # two files named 000001.jpg in different folders
        items[2] = ("other/000001.jpg",) + items[2][1:]
        return ListDataset(items), ScriptedDetector(), ValueError, ["'000001'", "d/000001.jpg", "other/000001.jpg"]
    if case == "truncated_jpeg_in_the_middle":
        image = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
        for name in ("000001", "000002", "000003"):
            Image.fromarray(image).save(tmp_path / f"{name}.jpg", quality=90)
        data = (tmp_path / "000002.jpg").read_bytes()
        (tmp_path / "000002.jpg").write_bytes(data[: len(data) // 2])
        with open(tmp_path / "data.json", "w") as f:
            f.write('[["000001.jpg", []], ["000002.jpg", []], ["000003.jpg", []]]')
        dataset = DetectionJsonDataset(str(tmp_path), "data.json", ["cat", "dog", "person"], image_size=32)
        return dataset, ScriptedDetector(), OSError, [str(tmp_path / "000002.jpg")]
    if case == "ctrl_c":
        return ListDataset(items), CrashingDetector(KeyboardInterrupt()), KeyboardInterrupt, []
    return ListDataset(items), CrashingDetector(RuntimeError("out of memory (simulated)")), RuntimeError, ["memory"]


@pytest.mark.parametrize("case", ["duplicate_image_id", "truncated_jpeg_in_the_middle", "ctrl_c", "detector_error"])
def test_a_failure_part_way_leaves_the_previous_results_untouched(tmp_path, previous_results, case, capsys):
    out, before = previous_results
    dataset, detector, error_type, fragments = _failing_run(case, tmp_path)
    with pytest.raises(error_type) as error:
        inference_with_detector(detector, DataLoader(dataset, batch_size=1), NAMES, 0.3, 0.5, output_dir=str(out),
                                progress=False)
    assert_message(error.value, *fragments)
    assert detector.calls >= 1, "the failure should come part-way, after some files were written"
    assert _folder_bytes(out) == before, "the previous results changed (or a temporary folder was left)"
    assert "the previous results in" in capsys.readouterr().out
    assert evaluate_map(str(out), quiet=True).map >= 0  # still a complete, consistent set


def test_an_error_while_swapping_the_folders_in_puts_the_old_ones_back(tmp_path, previous_results, monkeypatch):
    out, before = previous_results
    real_replace, calls = os.replace, []

    def replace(source, target):
        calls.append(target)
        if len(calls) == 3:  # both old folders are out of the way; the first new one fails to move in
            raise OSError(5, "Input/output error")
        return real_replace(source, target)

    monkeypatch.setattr(eecs598.evaluation.cartucho.os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        inference_with_detector(ScriptedDetector(), DataLoader(ListDataset(_inference_items()), batch_size=1), NAMES,
                                0.3, 0.5, output_dir=str(out), progress=False)
    monkeypatch.undo()
    assert len(calls) > 3, "the rollback moved the old folders back"
    assert _folder_bytes(out) == before


def test_orphans_of_a_killed_run_are_removed_by_the_next_one(tmp_path, previous_results):
    out, _ = previous_results
    for orphan in (".partial-k1ll3d/ground-truth", ".previous-k1ll3d/detection-results"):
        (out / orphan).mkdir(parents=True)
        (out / orphan / "000001.txt").write_text("cat 1 1 2 2\n")
    inference_with_detector(ScriptedDetector(), DataLoader(ListDataset(_inference_items()), batch_size=1), NAMES,
                            0.3, 0.5, output_dir=str(out), progress=False)
    assert sorted(os.listdir(out)) == ["detection-results", "ground-truth"]


# ==================================================================================================
# Drawing, and the real FCOS (integration)
# ==================================================================================================

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


def test_fcos_trains_and_exports_on_voc_sample(voc_sample_dir, tmp_path):
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


def test_tta_option_merges_mirrored_candidates_and_is_plain_inference_when_off(tmp_path, shapes_val):
    from conftest import make_fcos

    torch.manual_seed(0)
    model = make_fcos(num_classes=5, fpn_channels=16, stem_channels=(16,)).eval()
    loader = DataLoader(shapes_val, batch_size=1)
    names = shapes_val.idx_to_class
    plain, off, flip = (str(tmp_path / name) for name in ("plain", "off", "flip"))
    inference_with_detector(model, loader, names, 0.05, 0.5, output_dir=plain, progress=False)
    inference_with_detector(model, loader, names, 0.05, 0.5, output_dir=off, progress=False,
                            tta={"flip": False, "scales": (1.0,)})
    inference_with_detector(model, loader, names, 0.05, 0.5, output_dir=flip, progress=False,
                            tta={"flip": True, "scales": (1.0,)})
    assert _folder_bytes(off) == _folder_bytes(plain)  # TTA with nothing to add is plain inference
    det = lambda root: sorted(os.listdir(os.path.join(root, "detection-results")))  # noqa: E731
    assert det(flip) == det(plain)
    # The mirrored pass adds candidates before NMS: the merged set differs from the plain one.
    assert _folder_bytes(os.path.join(flip, "detection-results")) != _folder_bytes(os.path.join(plain, "detection-results"))

