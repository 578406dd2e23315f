"""Tests of eecs598.tools.detect: whole photos in, boxes in the photos' own pixels out."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_fcos
from eecs598 import reset_seed
from eecs598.data.transforms import normalize
from eecs598.tools.detect import detect_photos


@pytest.fixture(scope="module")
def model():
    reset_seed(0)
    detector = make_fcos(num_classes=3, fpn_channels=16, stem_channels=(16,))
    return detector.eval()


def test_a_photo_is_seen_whole_and_boxes_come_back_in_its_pixels(model):
    """A 96 x 64 photo at image_size 64: resized by 1 (shorter side already 64) to 96 x 64 (a multiple of 32):
    the network input is the normalised photo itself, so its boxes must be the detector's own on that
    tensor (scale 1), clipped to 96 x 64."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    result, = detect_photos(model, [Image.fromarray(pixels)], image_size=64, score_thresh=0.05, nms_thresh=0.5)
    tensor = normalize(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0)[None]
    with torch.no_grad():
        boxes, classes, scores = model(tensor, test_score_thresh=0.05, test_nms_thresh=0.5)
    assert result.size == (96, 64) and len(result.scores) == len(scores) > 0
    assert torch.allclose(result.boxes, boxes, atol=1e-4) and torch.equal(result.classes, classes)


class FixedBox(torch.nn.Module):
    """Eval-mode stand-in: one box (8, 8, 40, 40) of class 1, score 0.9, on every input; records the input."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, images, test_score_thresh=None, test_nms_thresh=None):
        self.seen.append(tuple(images.shape))
        one = (torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([1]), torch.tensor([0.9]))
        return one if images.shape[0] == 1 else tuple([t] * images.shape[0] for t in one)


def test_boxes_are_divided_by_the_resize_factor_and_clipped():
    """192 x 128 at image_size 64: scale 64 / 128 = 0.5, input 96 x 64; (8, 8, 40, 40) -> (16, 16, 80, 80).
    A 40 x 30 photo at image_size 64: scale 64 / 30, input 85 x 64 padded to 96 x 64; the box maps to
    (3.75, 3.75, 18.75, 18.75) and is then clipped to the photo (x2 <= 40, y2 <= 30: unchanged here)."""
    detector = FixedBox()
    large, small = detect_photos(detector, [np.zeros((128, 192, 3), np.uint8), np.zeros((30, 40, 3), np.uint8)],
                                 image_size=64)
    assert detector.seen == [(2, 3, 64, 96)]  # one batch, padded to the larger input
    assert large.boxes.tolist() == [[16.0, 16.0, 80.0, 80.0]] and large.size == (192, 128)
    assert torch.allclose(small.boxes, torch.tensor([[3.75, 3.75, 18.75, 18.75]]))
    assert small.classes.tolist() == [1] and small.scores.tolist() == pytest.approx([0.9])


def test_records_are_json_ready(model):
    result, = detect_photos(model, [np.zeros((64, 64, 3), dtype=np.uint8)], image_size=64, score_thresh=0.0)
    records = result.as_records(["a", "b", "c"])
    assert len(records) == len(result.scores)
    assert set(records[0]) == {"box", "class", "class_id", "score"} and records[0]["class"] in "abc"
