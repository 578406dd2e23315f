"""Tests for eecs598/models/tta.py: test-time augmentation (flip and scales) merged before one class-specific NMS.

A hand-set detector makes the expected boxes a hand calculation: its "backbone" takes a weighted mean of
the image over 8x8 cells (one level, stride 8; a uniform cell gives its value), and its head reads the pooled value of channel c as the logit of
class c (``20 * value - 10``), predicts the same asymmetric box deltas everywhere and centerness ~1.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import make_fcos
from eecs598 import reset_seed
from eecs598.models.tta import detect_with_tta, pre_nms_candidates
from one_stage_detector import FCOS, FCOSPredictionNetwork

DELTAS = (1.0, 0.5, 2.0, 0.5)  # (l, t, r, b) in strides: 8 px left, 4 up, 16 right, 4 down


class PoolPyramid(nn.Module):
    """Weighted mean of each 8x8 cell, per channel; the weights grow with x (1..8) so that the features
    are not mirror-symmetric (as a real CNN's are not): a mirrored pass then never ties in score with the
    original pass, except on uniform cells."""

    fpn_strides = {"p3": 8}

    def forward(self, images):
        weight = (torch.arange(1, 9, dtype=images.dtype) / 36.0).expand(8, 8) / 8.0  # rows sum to 1/8
        weight = weight.expand(3, 1, 8, 8).contiguous()
        return {"p3": F.conv2d(images, weight, stride=8, groups=3)}


class HandDetector(FCOS):
    """A real ``FCOS`` (its own decoding and NMS) with the hand-set backbone and head put in."""

    def __init__(self):
        super().__init__(num_classes=2, fpn_channels=3, stem_channels=[], pretrained=False)
        self.backbone = PoolPyramid()
        self.pred_net = FCOSPredictionNetwork(num_classes=2, in_channels=3, stem_channels=[])
        with torch.no_grad():
            for conv in (self.pred_net.pred_cls, self.pred_net.pred_box, self.pred_net.pred_ctr):
                conv.weight.zero_()
            for c in range(2):
                self.pred_net.pred_cls.weight[c, c, 1, 1] = 20.0  # centre tap of channel c
            self.pred_net.pred_cls.bias.fill_(-10.0)
            self.pred_net.pred_box.bias.copy_(torch.tensor(DELTAS))
            self.pred_net.pred_ctr.bias.fill_(10.0)
        self.eval()


def bright_cell_image(x_index, y_index, channel=0, size=64):
    image = torch.zeros(1, 3, size, size)
    image[0, channel, 8 * y_index:8 * (y_index + 1), 8 * x_index:8 * (x_index + 1)] = 1.0
    return image


def as_rows(result):
    boxes, classes, scores = result
    return sorted(tuple(round(v, 4) for v in box) + (int(c),) for box, c in zip(boxes.tolist(), classes.tolist()))


def test_hand_detector_without_tta():
    """Bright cell (x 1, y 2): location (12, 20) -> box (12 - 8, 20 - 4, 12 + 16, 20 + 4)."""
    boxes, classes, scores = detect_with_tta(HandDetector(), bright_cell_image(1, 2), 0.5, 0.5, flip=False)
    assert boxes.tolist() == [[4.0, 16.0, 28.0, 24.0]] and classes.tolist() == [0]
    # Score: sqrt(sigmoid(10) * sigmoid(10)) = sigmoid(10).
    assert scores.item() == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-6)


def test_flip_pass_boxes_are_mapped_back_by_hand():
    """Mirrored image: the bright cell is at x index 6, location (52, 20), box (44, 16, 68, 24) clipped to
    (44, 16, 64, 24); mirrored back x -> 64 - x: (0, 16, 20, 24). IoU with the original (4, 16, 28, 24):
    16 * 8 / (192 + 160 - 128) = 0.571: both kept at NMS 0.6; at 0.5 the first of the equal scores (the
    original pass) suppresses it."""
    detector, image = HandDetector(), bright_cell_image(1, 2)
    assert as_rows(detect_with_tta(detector, image, 0.5, 0.6, flip=True)) == [(0.0, 16.0, 20.0, 24.0, 0),
                                                                                (4.0, 16.0, 28.0, 24.0, 0)]
    boxes, _, _ = detect_with_tta(detector, image, 0.5, 0.5, flip=True)
    assert boxes.tolist() == [[4.0, 16.0, 28.0, 24.0]]


def test_scaled_pass_boxes_are_mapped_back_by_hand():
    """Scale 2: the 128x128 copy has the bright block on [16, 32) x [32, 48); the cells (2..3, 4..5) are
    ones except one bilinear edge row/column of 0.75, means >= 0.9, logits > 8, so four locations x in
    {20, 28}, y in {36, 44} fire (their neighbours see only 0.25 edges: logits < -9); boxes (x - 8, y - 4, x + 16, y + 4) halved: x1 in {6, 10}, y1 in {16, 20}, 12 x 4 px each.
    Neighbours in x overlap with IoU 0.5 (kept at NMS 0.6), in y they only touch."""
    rows = as_rows(detect_with_tta(HandDetector(), bright_cell_image(1, 2), 0.5, 0.6, flip=False, scales=(2.0,)))
    assert rows == [(6.0, 16.0, 18.0, 20.0, 0), (6.0, 20.0, 18.0, 24.0, 0),
                    (10.0, 16.0, 22.0, 20.0, 0), (10.0, 20.0, 22.0, 24.0, 0)]


def test_classes_never_suppress_each_other_across_passes():
    """The same cell bright in channel 0 and channel 1: class 0 and class 1 boxes coincide; with flip
    the mirrored passes' boxes coincide with them too (IoU 1) and are suppressed within each class."""
    image = bright_cell_image(3, 3, channel=0) + bright_cell_image(3, 3, channel=1)
    detector = HandDetector()
    # Both channels give the same logit, the head picks the first maximum: class 0. Make class 1 win
    # elsewhere: a second cell bright in channel 1 only.
    image += bright_cell_image(5, 1, channel=1)
    rows = as_rows(detect_with_tta(detector, image, 0.5, 0.5, flip=True))
    # Cell (3, 3): location (28, 28) -> (20, 24, 44, 32); mirrored pass: cell 4, location (36, 28),
    # box (28, 24, 52, 32) -> back (12, 24, 36, 32): IoU 16*8 / (2*192 - 128) = 0.5, not > 0.5: kept.
    # Cell (5, 1): location (44, 12) -> (36, 8, 60, 16); mirrored: cell 2, (20, 12) -> (12, 8, 36, 16)
    # -> back (28, 8, 52, 16): IoU 0.5 again, kept.
    assert rows == [(12.0, 24.0, 36.0, 32.0, 0), (20.0, 24.0, 44.0, 32.0, 0),
                    (28.0, 8.0, 52.0, 16.0, 1), (36.0, 8.0, 60.0, 16.0, 1)]


def test_flip_equivariance():
    """For any detector, TTA with flip on the mirrored image gives the mirror of TTA on the image: the
    pooled candidates are the same set mirrored. Random image, hand-set head in float64 (no score ties:
    the features are not mirror-symmetric)."""
    torch.manual_seed(0)
    detector = HandDetector().double()
    image = torch.rand(1, 3, 64, 96, dtype=torch.float64) * 0.7 + 0.1
    for scales in ((1.0,), (1.0, 1.5)):
        boxes, classes, scores = detect_with_tta(detector, image, 0.3, 0.4, flip=True, scales=scales)
        m_boxes, m_classes, m_scores = detect_with_tta(detector, image.flip(-1), 0.3, 0.4, flip=True, scales=scales)
        assert boxes.shape[0] > 5
        mirrored = torch.stack([96 - boxes[:, 2], boxes[:, 1], 96 - boxes[:, 0], boxes[:, 3]], dim=1)
        assert torch.allclose(m_scores, scores, atol=1e-9)
        assert torch.equal(m_classes, classes)
        assert torch.allclose(m_boxes, mirrored, atol=1e-9)


def test_identity_when_tta_is_off():
    """flip=False, scales=(1.0,) is exactly the detector's own eval output, on a real (small) FCOS."""
    reset_seed(0)
    model = make_fcos(num_classes=4)
    model.eval()
    image = torch.randn(1, 3, 96, 128)
    for score_thresh, nms_thresh in ((0.05, 0.5), (0.07, 0.3), (None, None)):
        expected = model(image, test_score_thresh=score_thresh, test_nms_thresh=nms_thresh)
        result = detect_with_tta(model, image, score_thresh, nms_thresh, flip=False, scales=(1.0,))
        for a, b in zip(result, expected):
            assert torch.equal(a, b)
    assert model(image, test_score_thresh=0.05, test_nms_thresh=0.5)[0].shape[0] > 0


def test_tta_on_a_real_fcos_returns_the_eval_triple():
    reset_seed(0)
    model = make_fcos(num_classes=4)
    model.eval()
    image = torch.randn(1, 3, 96, 128)
    boxes, classes, scores = detect_with_tta(model, image, 0.05, 0.5, flip=True, scales=(0.75, 1.0, 1.25))
    assert boxes.shape == (scores.shape[0], 4) and classes.dtype == torch.long
    assert scores.shape[0] > 0 and bool((scores[:-1] >= scores[1:]).all())
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= 128 and boxes[:, 1::2].max() <= 96
    # Candidates of the single-scale pass are those of FCOS.inference before NMS: NMS of them = eval.
    cand_boxes, cand_classes, cand_scores = pre_nms_candidates(model, image, 0.05)[0]
    assert cand_boxes.shape[0] >= model(image, test_score_thresh=0.05, test_nms_thresh=0.5)[0].shape[0]


def test_input_checks():
    detector = HandDetector()
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        detect_with_tta(detector, torch.zeros(2, 3, 64, 64), 0.5, 0.5)
    with pytest.raises(ValueError, match="scales"):
        detect_with_tta(detector, torch.zeros(1, 3, 64, 64), 0.5, 0.5, scales=(0.0,))
    with pytest.raises(ValueError, match="nms_thresh"):
        detect_with_tta(detector, torch.zeros(1, 3, 64, 64), 0.5, 1.5)
    detector.train()
    with pytest.raises(ValueError, match="eval"):
        detect_with_tta(detector, torch.zeros(1, 3, 64, 64), 0.5, 0.5)
