"""Tests of eecs598.data: the JSON datasets (real VOC sample and synthetic files), images, the VOC download.

- The course's VOC JSON on 48 real VOC 2007 images (``voc_sample_dir``): sizes, classes, boxes mapped by hand
  through the resize and centre crop, and the geometry against torchvision's own transforms.
- Bad annotation files and images are refused with the file (and entry) named: malformed entries, duplicate
  entries, corrupt or truncated JPEGs, 16-bit PNGs (scaled, not clipped to white), decompression bombs.
- ``download_voc2007`` against a local HTTP server on 127.0.0.1 (never the real network): md5 checks, skipping
  valid files, extraction through a temporary folder, and the failures of issue 10 (a server trickling bytes,
  stalling, closing early, refusing; Ctrl-C) end in time and leave no temporary file anywhere.

Expected numbers are worked out by hand in the comments, never taken from the code under test.
"""
import hashlib
import http.server
import io
import json
import os
import signal
import socket
import tarfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import eecs598.data
import eecs598.data.download
from a4_helper import DetectionJsonDataset, ShapesDetection, VOC2007DetectionTiny, download_voc2007
from eecs598.data import DownloadError, ImageFileError, load_rgb_image, resize_crop_geometry
from tiny_training import INF, NAN, assert_message

# The 20 VOC classes in alphabetical order, typed out by hand.
VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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




# ==================================================================================================
# Bad annotation files and images: refused, naming the file
# ==================================================================================================

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
    ("image_size_float", lambda d: _json_dataset(d, [], image_size=64.0), ["image_size", "int", "64.0"]),
    ("image_size_str", lambda d: _json_dataset(d, [], image_size="64"), ["image_size", "int", "'64'"]),
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


@pytest.mark.parametrize("second_path", ["./here/img/a.jpg", "img/a.jpg", "./here/img/../img/a.jpg"])
def test_duplicate_image_entries_are_refused(tmp_path, second_path):
    """Issue 10, item 2: an image listed twice (however its path is spelled) is refused when the dataset is
    built, naming both entries; before, inference stopped at the second copy after running on the others."""
    objects = [{"name": "a", "xyxy": [1, 1, 5, 5]}]
    entries = [["./here/img/a.jpg", objects], ["./here/img/b.jpg", objects], [second_path, objects]]
    json_path = _write_dataset(tmp_path, entries, {"img/a.jpg": (40, 40), "img/b.jpg": (40, 40)})
    with pytest.raises(ValueError) as error:
        DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)
    assert_message(error.value, "data.json", "entries 0 and 2", "a.jpg", "once")
    # Two different images are fine.
    json_path = _write_dataset(tmp_path, entries[:2])
    assert len(DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)) == 2


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    """Issue 10, item 7: a 16-bit greyscale PNG (PIL mode I;16) used to come out almost white (every value above
    255 clipped). Values v in 0..65535 must become round(v / 257): 0 -> 0, 16448 -> 64, 32896 -> 128,
    65535 -> 255."""
    values = np.array([[0, 16448], [32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as f:
        assert f.mode == "I;16"  # what the test is about: PIL hands out 16-bit values
    image = load_rgb_image(str(tmp_path / "grey16.png"))
    assert image.mode == "RGB"
    expected = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    assert np.array_equal(np.asarray(image), np.repeat(expected[..., None], 3, axis=2))

    # Through the dataset: a 64 x 64 image, left half 0, right half 16448 (-> 64); after resizing to 32 px the
    # un-normalised mean stays 32 / 255 (the blur at the edge is symmetric), far from white (1.0).
    half = np.zeros((64, 64), dtype=np.uint16)
    half[:, 32:] = 16448
    Image.fromarray(half).save(tmp_path / "half16.png")
    json_path = _write_dataset(tmp_path, [["./here/half16.png", [{"name": "a", "xyxy": [1, 1, 5, 5]}]]])
    _, tensor, _ = DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)[0]
    pixels = tensor * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert abs(pixels.mean().item() - 32 / 255) < 0.01


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    # PIL refuses images of more than 2 * MAX_IMAGE_PIXELS pixels; a small limit makes a 40 x 40 image one.
    Image.new("RGB", (40, 40)).save(tmp_path / "huge.png")
    json_path = _write_dataset(tmp_path, [["./here/huge.png", [{"name": "a", "xyxy": [1, 1, 5, 5]}]]])
    dataset = DetectionJsonDataset(str(tmp_path), json_path, ["a"], image_size=32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageFileError) as error:
        dataset[0]
    assert_message(error.value, str(tmp_path / "huge.png"), "decompression bomb", "MAX_IMAGE_PIXELS",
                   "entry 0 of")
    assert isinstance(error.value, OSError)


@pytest.mark.parametrize("case", ["zero_bytes", "text_file", "float_tiff", "png_cut_in_half"])
def test_every_unreadable_image_names_the_file(tmp_path, case):
    path = tmp_path / ("x.tif" if case == "float_tiff" else "x.png")
    if case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "text_file":
        path.write_text("this is not an image\n")
    elif case == "float_tiff":
        Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(path)
    else:
        Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageFileError) as error:
        load_rgb_image(str(path))
    assert_message(error.value, str(path))
    if case == "float_tiff":
        assert_message(error.value, "floating-point", "8-bit RGB")


# ==================================================================================================
# The VOC download, against a local HTTP server (never the real network)
# ==================================================================================================

class FileServer:
    """An HTTP server on 127.0.0.1 in a thread. ``routes[name]`` says how ``GET /name`` is answered:

    - ``bytes``: the file, with its Content-Length;
    - ``("trickle", size, chunk, interval)``: announce ``size`` bytes, send ``chunk`` bytes every ``interval`` s;
    - ``("stall", size)``: announce ``size`` bytes, send nothing;
    - ``("close_early", data, size)``: announce ``size`` bytes, send ``data`` (fewer) and close;
    - ``int``: that HTTP status, no body.
    """

    def __init__(self):
        self.routes, self.requests, self.stop = {}, [], threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(name)
                route = server.routes.get(name, 404)
                if isinstance(route, int):
                    self.send_error(route)
                    return
                if isinstance(route, bytes):
                    route = ("close_early", route, len(route))
                self.send_response(200)
                self.send_header("Content-Length", str(route[1] if route[0] != "close_early" else route[2]))
                self.end_headers()
                try:
                    if route[0] == "close_early":
                        self.wfile.write(route[1])
                    elif route[0] == "trickle":
                        sent = 0
                        while sent < route[1] and not server.stop.wait(route[3]):
                            self.wfile.write(b"x" * route[2])
                            self.wfile.flush()
                            sent += route[2]
                    else:
                        server.stop.wait(30)
                except OSError:  # the client gave up: what the tests want
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def voc_files(monkeypatch):
    """Small stand-ins for the course's three files (a 1-image tar), with their md5 sums patched in."""
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(jpeg, "JPEG")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("VOCdevkit/VOC2007/JPEGImages/000001.jpg")
        info.size = len(jpeg.getvalue())
        tar.addfile(info, io.BytesIO(jpeg.getvalue()))
    files = {"VOCtrainval_06-Nov-2007.tar": tar_bytes.getvalue(), "voc07_train.json": b"[]", "voc07_val.json": b"[1]"}
    monkeypatch.setattr(eecs598.data.download, "VOC_FILES_MD5", {n: hashlib.md5(d).hexdigest() for n, d in files.items()})
    monkeypatch.setattr(eecs598.data.download, "VOC_NUM_TRAINVAL_IMAGES", 1)
    return files


def _no_temporaries(*folders):
    leftovers = [os.path.join(folder, name) for folder in folders for name in os.listdir(folder)
                 if ".partial-" in name or name.endswith((".part", ".tmp"))]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_download_fetches_verifies_extracts_and_skips_valid_files(tmp_path, server, voc_files, capsys):
    server.routes.update(voc_files)
    data = tmp_path / "data"
    data.mkdir()
    (data / "voc07_val.json").write_bytes(voc_files["voc07_val.json"])  # already there with the right md5
    (data / "voc07_train.json.partial-k1ll3d").write_bytes(b"half")  # left by a killed download
    (data / ".VOCdevkit.partial-k1ll3d").mkdir()  # left by a killed extraction
    download_voc2007(str(data), url_base=server.url, progress=True)
    assert sorted(server.requests) == ["VOCtrainval_06-Nov-2007.tar", "voc07_train.json"]
    for name in ("voc07_train.json", "VOCtrainval_06-Nov-2007.tar"):
        assert (data / name).read_bytes() == voc_files[name]
    assert (data / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000001.jpg").is_file()
    _no_temporaries(data)
    assert not [name for name in os.listdir(data) if name.startswith(".")], os.listdir(data)
    captured = capsys.readouterr()
    assert f"Downloading {server.url}voc07_train.json" in captured.out and "Removed 2 unfinished" in captured.out
    assert "voc07_train.json" in captured.err  # the progress bar

    server.requests.clear()
    download_voc2007(str(data), url_base=server.url, progress=False)
    assert server.requests == [], "files present with the right md5 (and the images) are not fetched again"


def test_download_with_the_wrong_md5_is_discarded(tmp_path, server, voc_files):
    server.routes.update(voc_files, **{"voc07_train.json": b"tampered"})
    with pytest.raises(DownloadError) as error:
        download_voc2007(str(tmp_path), url_base=server.url, progress=False)
    assert_message(error.value, "voc07_train.json", "md5", hashlib.md5(b"tampered").hexdigest())
    assert not (tmp_path / "voc07_train.json").exists()
    _no_temporaries(tmp_path)


def test_offline_download_fails_fast_with_instructions(tmp_path):
    # Port 9 (discard) on localhost is closed here: the connection is refused at once, like an offline
    # machine with a firewall. The message must tell how to get the files by hand.
    old_timeout = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        download_voc2007(str(tmp_path), url_base="http://127.0.0.1:9/", timeout=2.0, progress=False)
    assert time.monotonic() - start < 10
    assert_message(error.value, "http://127.0.0.1:9/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64",
                   "tar xf")
    assert error.value.url == "http://127.0.0.1:9/VOCtrainval_06-Nov-2007.tar"  # the first of the three
    assert "cannot connect" in error.value.reason
    assert socket.getdefaulttimeout() == old_timeout
    _no_temporaries(tmp_path)


SIZE = 100_000
FIRST = "VOCtrainval_06-Nov-2007.tar"  # the first file fetched
FAILURES = {
    # id: (route for the first file, download_voc2007 limits, words of the reason, seconds allowed)
    # A few bytes every 50 ms: each read returns at once, so only an overall deadline ends it.
    "trickle_past_the_deadline": (("trickle", SIZE, 10, 0.05), dict(deadline=0.6, min_rate=1.0),
                                  ["not finished after 0.6 s", "of 0.1 MB received"], 3.0),
    "trickle_below_the_minimum_rate": (("trickle", SIZE, 10, 0.05), dict(min_rate=1000.0, rate_window=0.4),
                                       ["bytes/s", "minimum 1000"], 3.0),
    "stalled_transfer": (("stall", SIZE), dict(timeout=0.5), ["no data for 0.5 s"], 3.0),
    "connection_closed_early": (("close_early", b"x" * 500, 1000), {}, ["closed early", "500 bytes of 1000"], 3.0),
    "http_404": (404, {}, ["HTTP error 404"], 3.0),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failing_transfer_ends_in_time_and_leaves_no_temporary_file(tmp_path, server, voc_files, monkeypatch,
                                                                      failure):
    """Issue 10, item 4: a server sending a few bytes every couple of seconds used to keep --download running
    forever (the socket timeout never fires) and failed transfers left temporary files next to the target."""
    route, limits, fragments, seconds = FAILURES[failure]
    server.routes[FIRST] = route
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        download_voc2007(str(tmp_path / "data"), url_base=server.url, progress=False, **limits)
    assert time.monotonic() - start < seconds
    assert error.value.url == server.url + FIRST
    assert_message(error.value, *fragments)
    assert os.listdir(tmp_path / "data") == []
    _no_temporaries(tmp_path / "data", tmp_path / "cwd")
    assert os.listdir(tmp_path / "cwd") == []


def test_ctrl_c_during_a_download_leaves_no_temporary_file(tmp_path, server, voc_files):
    server.routes[FIRST] = ("trickle", SIZE, 10, 0.02)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            download_voc2007(str(tmp_path), url_base=server.url, progress=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert server.requests == [FIRST]
    assert os.listdir(tmp_path) == []


def test_a_damaged_tar_is_reported_and_nothing_half_extracted_remains(tmp_path, server, voc_files, monkeypatch):
    damaged = voc_files["VOCtrainval_06-Nov-2007.tar"][:700]  # cut inside the JPEG member
    server.routes.update(voc_files, **{"VOCtrainval_06-Nov-2007.tar": damaged})
    monkeypatch.setitem(eecs598.data.download.VOC_FILES_MD5, "VOCtrainval_06-Nov-2007.tar", hashlib.md5(damaged).hexdigest())
    with pytest.raises(DownloadError) as error:
        download_voc2007(str(tmp_path), url_base=server.url, progress=False)
    assert_message(error.value, "VOCtrainval_06-Nov-2007.tar", "damaged")
    assert sorted(os.listdir(tmp_path)) == ["VOCtrainval_06-Nov-2007.tar", "voc07_train.json", "voc07_val.json"]


@pytest.mark.parametrize("width,height,size", [(500, 375, 224), (375, 500, 224), (333, 500, 128), (1, 3000, 32),
                                               (640, 427, 96), (224, 224, 224), (101, 77, 64)])
def test_resize_crop_geometry_matches_torchvision_transforms(width, height, size):
    """The box mapping's geometry equals what torchvision's public Resize/CenterCrop do to an image."""
    resized = transforms.Resize(size)(Image.new("RGB", (width, height)))
    new_width, new_height, left, top = resize_crop_geometry(width, height, size)
    assert (new_width, new_height) == resized.size
    # CenterCrop's offsets: int(round((new - S) / 2)).
    assert (left, top) == (int(round((resized.size[0] - size) / 2.0)), int(round((resized.size[1] - size) / 2.0)))
