"""``python -m eecs598.predict`` and ``predict()``: a checkpoint on one's own photos, folders, globs and videos.

The reference for every detection is ``eecs598.tools.detect.detect_photos`` on the photo alone (what the ONNX export
and the browser demo are checked against): whatever the batch size and the mix of photo sizes, ``predict`` must give
each photo exactly those detections. The COCO results are checked with pycocotools' own ``loadRes``.
"""
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_fcos
from eecs598 import reset_seed
from eecs598.tools.detect import detect_photos
from eecs598.tools.detector import LoadedDetector
from eecs598.tools.predict import main, predict
from eecs598.train.checkpoint import CHECKPOINT_FORMAT

CLASSES = ["circle", "square", "star"]
IMAGE_SIZE = 64
THRESH = dict(score_thresh=0.05, nms_thresh=0.5)


@pytest.fixture(scope="module")
def model():
    """A random FCOS whose boxes are 2 strides wide (box bias 2) and whose class scores differ (std 0.05)."""
    reset_seed(0)
    detector = make_fcos(num_classes=3, fpn_channels=16, stem_channels=(16,))
    with torch.no_grad():
        detector.pred_net.pred_box.bias.fill_(2.0)
        detector.pred_net.pred_cls.weight.normal_(0, 0.05)
    return detector.eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """A checkpoint as train_fcos.py writes it (format, weights, run config with the class names)."""
    path = str(tmp_path_factory.mktemp("run") / "checkpoint.pt")
    config = {"fpn_channels": 16, "stem_channels": [16], "image_size": IMAGE_SIZE, "class_names": CLASSES,
              "dataset": "custom"}
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "run_config": config}, path)
    return path


def _photo(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """PNG photos of three network input sizes, mixed: 64x64 (-> 64x64), 100x64 (-> 128x64), 64x96 (-> 64x96)."""
    folder = tmp_path_factory.mktemp("photos")
    sizes = [(64, 64), (100, 64), (64, 64), (64, 96), (64, 64), (100, 64), (64, 64)]
    paths = []
    for i, (width, height) in enumerate(sizes):
        paths.append(str(folder / f"p{i}.png"))
        _photo(width, height, i).save(paths[-1])
    return paths


def _same(records, reference, class_names=CLASSES):
    """``records`` (predict's JSON) are ``reference`` (detect_photos' PhotoDetections) to JSON's rounding."""
    assert len(records) == len(reference.scores) > 0
    assert [r["class"] for r in records] == [class_names[c] for c in reference.classes.tolist()]
    assert np.allclose([r["box"] for r in records], reference.boxes.numpy(), atol=0.006)
    assert np.allclose([r["score"] for r in records], reference.scores.numpy(), atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_photo_gets_exactly_its_own_detect_photos_detections(model, photos, batch_size):
    loaded = LoadedDetector(model, CLASSES, IMAGE_SIZE, {})
    report = predict(loaded, photos, batch_size=batch_size, progress=False, **THRESH)
    assert report.ok and [r.input for r in report.results] == photos
    for path, result in zip(photos, report.results):
        alone, = detect_photos(model, [Image.open(path).convert("RGB")], IMAGE_SIZE, **THRESH)
        assert (result.width, result.height) == alone.size
        _same(result.detections, alone)


class ShapeRecorder(torch.nn.Module):
    """Eval-mode stand-in that records its input shapes; one box (8, 8, 40, 40), class 1, score 0.9."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, images, test_score_thresh=None, test_nms_thresh=None):
        self.seen.append(tuple(images.shape))
        one = (torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([1]), torch.tensor([0.9]))
        return one if images.shape[0] == 1 else tuple([t] * images.shape[0] for t in one)


def test_batches_hold_only_photos_of_one_input_size_and_boxes_come_back_in_photo_pixels(photos):
    """Inputs 64x64, 128x64, 64x64, 64x96, 64x64, 128x64, 64x64 at batch 3: consecutive photos of one size share a
    batch, so nothing is ever padded further. The 100x64 photo is scaled by 1 (shorter side 64): its box stays
    (8, 8, 40, 40); the 64x96 one too."""
    recorder = ShapeRecorder()
    report = predict(LoadedDetector(recorder, CLASSES, IMAGE_SIZE, {}), photos, batch_size=3, progress=False)
    assert recorder.seen == [(1, 3, 64, 64), (1, 3, 64, 128), (1, 3, 64, 64), (1, 3, 96, 64), (1, 3, 64, 64),
                             (1, 3, 64, 128), (1, 3, 64, 64)]
    assert report.results[1].detections == [{"box": [8.0, 8.0, 40.0, 40.0], "class": "square", "class_id": 1,
                                             "score": 0.9}]
    same_size = [photos[0], photos[2], photos[4], photos[6], photos[3]]
    recorder.seen.clear()
    predict(LoadedDetector(recorder, CLASSES, IMAGE_SIZE, {}), same_size, batch_size=3, progress=False)
    assert recorder.seen == [(3, 3, 64, 64), (1, 3, 64, 64), (1, 3, 96, 64)]


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    """EXIF orientation 6 (rotate 90 degrees clockwise to view): a 60 x 40 JPEG is seen as 40 x 60."""
    recorder = ShapeRecorder()
    image = _photo(60, 40, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "turned.jpg", exif=exif.tobytes())
    result, = predict(LoadedDetector(recorder, CLASSES, IMAGE_SIZE, {}), str(tmp_path / "turned.jpg"),
                      progress=False).results
    assert (result.width, result.height) == (40, 60)


def test_the_command_line_runs_a_checkpoint_on_folders_globs_and_files(checkpoint, photos, tmp_path, capsys):
    """A folder, a glob, a missing file and a corrupt one: the readable photos are run, the others listed with
    their reasons at the end, and the exit status is 1."""
    folder = os.path.dirname(photos[0])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    status = main(["--checkpoint", checkpoint, folder, os.path.join(folder, "p1.*"), str(tmp_path / "missing.png"),
                   str(broken), "--out", str(out), "--score-thresh", "0.05", "--batch-size", "4", "--no-progress",
                   "--threads", "1"])
    captured = capsys.readouterr()
    assert status == 1
    assert "2 input(s) could not be read and were skipped:" in captured.err
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in captured.err
    assert f"{broken}: Cannot read image {broken} (UnidentifiedImageError" in captured.err
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert [line["input"] for line in lines] == photos  # p1 met twice (folder and glob): run once
    for path in photos:
        drawn = Image.open(out / os.path.basename(path))
        assert drawn.size == Image.open(path).size
    coco = pytest.importorskip("pycocotools.coco", reason="pycocotools (extra 'coco') is not installed")
    ground = coco.COCO(str(out / "coco_images.json"))
    results = ground.loadRes(str(out / "coco_results.json"))
    assert len(results.getAnnIds()) == sum(len(line["detections"]) for line in lines)
    first = results.loadAnns(results.getAnnIds(imgIds=[1]))[0]
    x1, y1, x2, y2 = lines[0]["detections"][0]["box"]
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.011)
    assert first["category_id"] == lines[0]["detections"][0]["class_id"] + 1


def test_classes_filter_and_usage_errors(checkpoint, photos, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["--checkpoint", checkpoint, photos[0], "--out", out, "--classes", "star", "--score-thresh",
                 "0.05", "--no-progress", "--no-draw"]) == 0
    lines = [json.loads(line) for line in open(os.path.join(out, "detections.jsonl"))]
    assert lines[0]["detections"] and {d["class"] for d in lines[0]["detections"]} == {"star"}
    assert not os.path.exists(os.path.join(out, "p0.png"))
    assert main(["--checkpoint", checkpoint, photos[0], "--out", out, "--classes", "dog"]) == 2
    assert "unknown class names ['dog']" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "none.pt"), photos[0], "--out", out]) == 2
    assert "predict: error: Checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", checkpoint, photos[0], "--out", out, "--score-thresh", "2"])
    assert exit_info.value.code == 2


def test_help_of_python_m_eecs598_predict(monkeypatch, capsys):
    """``python -m eecs598.predict --help``, run in this process (runpy is what ``-m`` uses)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["eecs598.predict", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("eecs598.predict", run_name="__main__")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: python -m eecs598.predict")
    assert "--checkpoint" in out and "--batch-size" in out and "Exit status" in out


def test_a_video_is_read_and_written_frame_by_frame(model, tmp_path):
    av = pytest.importorskip("av", reason="PyAV (extra 'video') is not installed")
    path = str(tmp_path / "clip.mp4")
    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.asarray(_photo(96, 64, i)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(path) as container:  # the frames as the decoder gives them: the reference's input
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    report = predict(LoadedDetector(model, CLASSES, IMAGE_SIZE, {}), [path], str(tmp_path / "out"), batch_size=4,
                     progress=False, **THRESH)
    assert report.ok and report.num_frames == len(decoded) == 6
    assert [r.frame for r in report.results] == list(range(6))
    for frame, result in zip(decoded, report.results):
        _same(result.detections, detect_photos(model, [frame], IMAGE_SIZE, **THRESH)[0])
    with av.open(str(tmp_path / "out" / "clip.mp4")) as container:
        written = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(written) == 6 and written[0].shape == (64, 96, 3)
    lines = (tmp_path / "out" / "detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(6))


def test_a_video_without_pyav_or_unreadable_is_listed_not_fatal(model, tmp_path, monkeypatch):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 100)
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    report = predict(LoadedDetector(model, CLASSES, IMAGE_SIZE, {}), [str(fake)], progress=False)
    assert report.failures == [(str(fake), "reading and writing videos needs PyAV: pip install -e '.[video]' "
                                           "(or pip install av)")]
    monkeypatch.undo()
    pytest.importorskip("av", reason="PyAV (extra 'video') is not installed")
    report = predict(LoadedDetector(model, CLASSES, IMAGE_SIZE, {}), [str(fake)], progress=False)
    assert [path for path, _ in report.failures] == [str(fake)] and report.num_frames == 0


def test_out_may_be_the_photos_own_folder_without_overwriting_them(tmp_path):
    photo = tmp_path / "p.png"
    _photo(64, 64, 0).save(photo)
    before = photo.read_bytes()
    report = predict(LoadedDetector(ShapeRecorder(), CLASSES, IMAGE_SIZE, {}), str(tmp_path), str(tmp_path),
                     progress=False)
    assert photo.read_bytes() == before and report.results[0].output == str(tmp_path / "p_2.png")
    assert (tmp_path / "p_2.png").is_file()
