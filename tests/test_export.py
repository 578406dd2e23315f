"""Tests of the ONNX export (eecs598.tools.export): onnxruntime against the PyTorch model.

The reference is the PyTorch detector itself through ``eecs598.tools.detect.detect_photos`` (the core of
``python -m eecs598.predict``), never the export's own code. The models are small and randomly initialised,
with their head re-drawn so that scores spread and boxes overlap (``tiny_checkpoint``).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from eecs598.tools.detect import detect_photos
from eecs598.tools.detector import load_detector

onnx = pytest.importorskip("onnx", reason="the ONNX export needs the optional extra: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the export check needs onnxruntime (extra 'export')")

from eecs598.tools import export  # noqa: E402  (after the skips)

from tiny_checkpoint import CLASSES, IMAGE_SIZE, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(loaded PyTorch detector, path of its ONNX export) for the course's model layout."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint = save_checkpoint(str(folder / "checkpoint.pt"))
    onnx_path = str(folder / "model.onnx")
    loaded = export.export_checkpoint(checkpoint, onnx_path)
    return loaded, onnx_path


@pytest.fixture(scope="module")
def voc_photos():
    from conftest import VOC_SAMPLE_DIR

    if not os.path.isdir(VOC_SAMPLE_DIR):
        pytest.skip(f"VOC sample not found at {VOC_SAMPLE_DIR} (it lives in ../shared beside the checkout)")
    return export.sample_photos(VOC_SAMPLE_DIR)


def test_the_file_is_standard_onnx_with_the_preprocessing_in_its_metadata(exported):
    loaded, onnx_path = exported
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model)
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}  # standard operators only
    ops = {node.op_type for node in model.graph.node}
    assert "NonMaxSuppression" in ops and all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["std"]) == [0.229, 0.224, 0.225]
    assert meta["image_size"] == "64" and meta["max_size"] == str(round(64 * 1333 / 800))
    assert "NCHW" in meta["layout"] and "[0, 1]" in meta["input_range"] and meta["size_divisor"] == "32"
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims[0] == ["batch", 3, "height", "width"] and dims[1] == [] and dims[2] == []


def test_onnxruntime_matches_pytorch_on_the_voc_sample_and_on_empty_images(exported, voc_photos):
    """48 VOC photos in batches of 4 of different padded sizes at 0.3, half of them at 0.5, each again at
    score_thresh = 1 (no detection can exist): same count per photo, boxes within 1e-3 px, scores within 1e-4."""
    loaded, onnx_path = exported
    for photos, score_thresh in ((voc_photos, 0.3), (voc_photos[1::2], 0.5)):
        report = export.verify_export(onnx_path, loaded, photos, score_thresh=score_thresh, nms_thresh=0.5)
        assert report.ok, report.failures[:5]
        assert report.images == len(photos) and report.detections > 100, report.summary()
        assert report.max_box_diff <= 1e-3 and report.max_score_diff <= 1e-4
    assert report.empty_images >= 2  # at 0.5 several photos have no detection


def test_the_graph_runs_nms_class_by_class_as_the_course_does(exported, voc_photos):
    """At score_thresh 0 every location enters NMS: the kept count must be far below the location count (NMS
    ran) and still equal PyTorch's; within a photo, rows come by decreasing score."""
    loaded, onnx_path = exported
    runner = export.OnnxDetector(onnx_path)
    photos = [image for _, image in voc_photos[:3]]
    batch, _ = export.photo_batch(photos, loaded.image_size, runner.max_size)
    boxes, scores, classes, batch_index = runner.run(batch.numpy(), 0.0, 0.5)
    locations = sum((batch.shape[2] // s) * (batch.shape[3] // s) for s in (8, 16, 32))
    expected = detect_photos(loaded.model, photos, loaded.image_size, 0.0, 0.5)
    for i, ref in enumerate(expected):
        rows = batch_index == i
        assert rows.sum() == len(ref.scores) < 0.6 * locations
        assert np.all(np.diff(scores[rows]) <= 0)
    assert set(classes.tolist()) == {0, 1, 2} and np.all(np.diff(batch_index) >= 0)


def test_nms_threshold_rounding_keeps_the_course_decisions():
    """The course's NMS compares the float32 IoU with the threshold in double precision: an IoU of exactly
    float32(0.3) = 0.30000001 is above 0.3 (suppressed). The float32 stand-in must say the same."""
    iou = np.float32(0.3)
    t = export.nms_threshold_as_float32(0.3)
    assert (iou > t) == (float(iou) > 0.3) is True
    assert export.nms_threshold_as_float32(0.5) == np.float32(0.5)


@pytest.mark.parametrize("options", [dict(head_norm="group"), dict(p6p7=True), dict(backbone="mobilenet_v3_large"),
                                     dict(p2=True)],
                         ids=["groupnorm-head", "p6p7", "mobilenet-backbone", "p2"])
def test_every_option_that_changes_the_graph_exports_and_verifies(tmp_path, voc_photos, options):
    checkpoint = save_checkpoint(str(tmp_path / "checkpoint.pt"), **options)
    onnx_path = str(tmp_path / "model.onnx")
    loaded = export.export_checkpoint(checkpoint, onnx_path)
    settings = json.loads(export.OnnxDetector(onnx_path).metadata["model_settings"])
    assert all(settings[k] == v for k, v in options.items())
    report = export.verify_export(onnx_path, loaded, voc_photos[::4], score_thresh=0.3)
    assert report.ok and report.detections > 20, (report.summary(), report.failures[:5])


def test_command_line_exports_and_verifies(tmp_path, voc_sample_dir, capsys):
    checkpoint = save_checkpoint(str(tmp_path / "checkpoint.pt"))
    out = tmp_path / "model.onnx"
    few = tmp_path / "few"
    few.mkdir()
    jpegs = os.path.join(voc_sample_dir, "VOCdevkit", "VOC2007", "JPEGImages")
    for name in sorted(os.listdir(jpegs))[:3]:
        os.symlink(os.path.join(jpegs, name), few / name)
    threads = torch.get_num_threads()
    status = export.main(["--checkpoint", checkpoint, "--out", str(out), "--verify", "--verify-images", str(few),
                          "--threads", "1"])
    torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert status == 0 and out.is_file() and "verify: OK: 3 photos" in printed, printed


def test_command_line_help_and_errors(tmp_path, capsys):
    help_text = subprocess.run([sys.executable, "-m", "eecs598.export", "--help"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--verify" in help_text.stdout and "--checkpoint" in help_text.stdout
    status = export.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert status == 2 and "none.pt" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []  # no half-written file left behind
    status = export.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "no" / "m.onnx")])
    assert status == 2 and "does not exist" in capsys.readouterr().err


def test_a_checkpoint_that_was_not_trained_here_is_refused(tmp_path):
    """A valid engine checkpoint without train_fcos.py's run_config: the model cannot be rebuilt."""
    path = save_checkpoint(str(tmp_path / "bare.pt"))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["run_config"] = None
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="no model settings"):
        export.export_checkpoint(str(path), str(tmp_path / "m.onnx"))


def test_loaded_checkpoint_is_the_saved_model(tmp_path):
    """The fixture's checkpoint round-trips (else every comparison above would compare a wrong model)."""
    path = save_checkpoint(str(tmp_path / "c.pt"))
    loaded = load_detector(path)
    assert loaded.class_names == CLASSES and loaded.image_size == IMAGE_SIZE
    assert loaded.model.pred_net.pred_box.bias.tolist() == [2.0] * 4
