"""Tests for the opt-in FCOS recipe options: GIoU box loss, centre sampling, GroupNorm head, P6/P7 levels,
and that the defaults are exactly the assignment's detector (losses of a fixed batch, state-dict keys).

Expected values are worked out by hand in comments, or recomputed here by a small, obviously-correct
reference (Python loops over locations and boxes, torchvision's loss functions on pixel boxes).
"""
import math

import pytest
import torch
import torchvision
from torch.nn import functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

import one_stage_detector
from common import DetectorBackboneWithFPN, get_fpn_location_coords
from conftest import make_fcos
from eecs598 import reset_seed
from one_stage_detector import FCOS, FCOSPredictionNetwork, fcos_match_locations_to_gt

STRIDES = {"p3": 8, "p4": 16, "p5": 32}
STRIDES_P7 = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


# -- helpers ----------------------------------------------------------------------------------------


def constant_head(model: FCOS, box_bias=0.0, ctr_bias=0.0) -> FCOS:
    """Zero the weights of the three prediction convs, so that every location predicts its biases:
    class probability sigmoid(-log 99) = 0.01 (the prior init), box deltas ``box_bias``, centerness
    sigmoid(ctr_bias)."""
    with torch.no_grad():
        for conv in (model.pred_net.pred_cls, model.pred_net.pred_box, model.pred_net.pred_ctr):
            conv.weight.zero_()
        model.pred_net.pred_box.bias.fill_(box_bias)
        model.pred_net.pred_ctr.bias.fill_(ctr_bias)
    return model


def reference_match(locations, strides, gt_boxes, radius=None):
    """Obviously-correct matcher: Python loops over locations and boxes. ``gt_boxes`` (M, 5)."""
    names = list(strides)
    result = {}
    for i, name in enumerate(names):
        lower = 0.0 if i == 0 else 4.0 * strides[name]
        upper = math.inf if i == len(names) - 1 else 8.0 * strides[name]
        rows = []
        for x, y in locations[name].tolist():
            best, best_area = [-1.0] * 5, math.inf
            for x1, y1, x2, y2, c in gt_boxes.tolist():
                if c == -1:
                    continue
                distances = (x - x1, y - y1, x2 - x, y2 - y)
                ok = min(distances) > 0 and lower < max(distances) < upper
                if radius is not None:
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    ok = ok and abs(x - cx) < radius * strides[name] and abs(y - cy) < radius * strides[name]
                area = (x2 - x1) * (y2 - y1)
                if ok and area < best_area:
                    best, best_area = [x1, y1, x2, y2, c], area
            rows.append(best)
        result[name] = torch.tensor(rows, dtype=gt_boxes.dtype)
    return result


def python_giou_loss(a, b):
    """1 - GIoU of two XYXY boxes given as Python sequences (Rezatofighi et al., 2019)."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area_a + area_b - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return 1 - (inter / union - (hull - union) / hull)


def reference_losses(model, images, gt_boxes, normalizer_before, box_loss="l1", radius=None):
    """The FCOS losses recomputed from the head's raw outputs with the reference matcher and
    torchvision / torch.nn.functional losses on pixel boxes."""
    feats = model.backbone(images)
    cls_logits, box_deltas, ctr_logits = model.pred_net(feats)
    strides = model.backbone.fpn_strides
    locations = get_fpn_location_coords({k: v.shape for k, v in feats.items()}, strides)
    batch_size = images.shape[0]
    total = {"loss_cls": 0.0, "loss_box": 0.0, "loss_ctr": 0.0}
    num_fg = 0
    for b in range(batch_size):
        matched = reference_match(locations, strides, gt_boxes[b], radius)
        for name, stride in strides.items():
            m = matched[name]
            fg = m[:, 4] != -1
            num_fg += int(fg.sum())
            targets = torch.zeros_like(cls_logits[name][b])
            targets[fg, m[fg, 4].long()] = 1.0
            total["loss_cls"] += sigmoid_focal_loss(cls_logits[name][b], targets, reduction="sum")
            loc = locations[name][fg]
            gt = m[fg, :4]
            gt_deltas = torch.stack([loc[:, 0] - gt[:, 0], loc[:, 1] - gt[:, 1], gt[:, 2] - loc[:, 0],
                                     gt[:, 3] - loc[:, 1]], dim=1) / stride
            pred = box_deltas[name][b][fg]
            if box_loss == "l1":
                total["loss_box"] += 0.25 * (pred - gt_deltas).abs().sum()
            else:
                d = pred.clamp(min=0) * stride
                pred_boxes = torch.stack([loc[:, 0] - d[:, 0], loc[:, 1] - d[:, 1], loc[:, 0] + d[:, 2],
                                          loc[:, 1] + d[:, 3]], dim=1)
                total["loss_box"] += generalized_box_iou_loss(pred_boxes, gt, reduction="sum")
            l, t, r, bt = gt_deltas.unbind(1)
            ctr = torch.sqrt(torch.minimum(l, r) * torch.minimum(t, bt) / (torch.maximum(l, r) * torch.maximum(t, bt)))
            total["loss_ctr"] += F.binary_cross_entropy_with_logits(ctr_logits[name][b][fg, 0], ctr, reduction="sum")
    normalizer = (0.9 * normalizer_before + 0.1 * num_fg / batch_size) * batch_size
    return {k: v / normalizer for k, v in total.items()}, num_fg


def fixed_batch():
    """Two 64x96 images; boxes of several sizes (p3 and p4 objects, nested boxes) and padding rows."""
    reset_seed(3)
    images = torch.randn(2, 3, 64, 96)
    gt = torch.full((2, 4, 5), -1.0)
    gt[0, 0] = torch.tensor([4.0, 6.0, 60.0, 58.0, 1.0])
    gt[0, 1] = torch.tensor([10.0, 12.0, 30.0, 40.0, 2.0])  # inside the first: the smaller wins
    gt[0, 2] = torch.tensor([40.0, 0.0, 96.0, 64.0, 0.0])
    gt[1, 0] = torch.tensor([0.0, 0.0, 90.0, 63.0, 3.0])
    return images, gt


# -- the defaults are the assignment's detector -------------------------------------------------------


def test_default_losses_of_a_fixed_batch_by_hand():
    """Constant predictions make every loss a hand formula.

    Image 0 of a 2 x 64 x 64 batch has one box [8, 8, 40, 40] (class 3); image 1 has none. Locations
    per image: p3 8x8 + p4 4x4 + p5 2x2 = 84. Foreground: p3 locations strictly inside the box,
    x, y in {12, 20, 28, 36}: 16 (largest distance <= 28 < 64; the p4 location (24, 24) has
    largest distance 16, outside (64, 128)). Normaliser: 0.9 * 150 + 0.1 * 16 / 2 = 135.8, times B = 2.
    """
    reset_seed(0)
    model = constant_head(make_fcos(num_classes=5))
    model.train()
    gt = torch.full((2, 2, 5), -1.0)
    gt[0, 0] = torch.tensor([8.0, 8.0, 40.0, 40.0, 3.0])
    losses = model(torch.randn(2, 3, 64, 64), gt)

    normalizer = (0.9 * 150 + 0.1 * 16 / 2) * 2
    p = 0.01
    focal_negative = 0.75 * p ** 2 * -math.log(1 - p)  # alpha_t = 1 - 0.25, p_t = 1 - p
    focal_positive = 0.25 * (1 - p) ** 2 * -math.log(p)
    expected_cls = ((2 * 84 * 5 - 16) * focal_negative + 16 * focal_positive) / normalizer
    # Predicted deltas 0: |l| + |r| = 32 / 8 and |t| + |b| = 32 / 8 at every foreground location.
    expected_box = 0.25 * 16 * 8 / normalizer
    # Centerness logit 0: BCE(0.5, t) = log 2 whatever the target t.
    expected_ctr = 16 * math.log(2) / normalizer
    assert model._normalizer == pytest.approx(135.8)
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(expected_box, rel=1e-6)
    assert losses["loss_ctr"].item() == pytest.approx(expected_ctr, rel=1e-6)


def test_default_losses_of_a_fixed_batch_match_an_independent_reference():
    reset_seed(0)
    model = make_fcos(num_classes=4)
    model.train()
    images, gt = fixed_batch()
    losses = model(images, gt)
    expected, num_fg = reference_losses(model, images, gt, normalizer_before=150.0)
    assert num_fg > 20  # the batch really has foreground at several levels
    for name in ("loss_cls", "loss_box", "loss_ctr"):
        assert losses[name].item() == pytest.approx(expected[name].item(), rel=1e-5), name


def test_explicit_default_options_change_nothing():
    images, gt = fixed_batch()
    results = []
    for kwargs in ({}, dict(backbone="regnet_x_400mf", backbone_weights=None, p6p7=False, head_norm=None,
                            box_loss="l1", center_sampling_radius=None)):
        reset_seed(0)
        model = FCOS(num_classes=4, fpn_channels=32, stem_channels=[32, 32], pretrained=False, **kwargs)
        model.train()
        results.append((list(model.state_dict()), model(images, gt)))
    assert results[0][0] == results[1][0]
    for name in results[0][1]:
        assert torch.equal(results[0][1][name], results[1][1][name])


def test_default_state_dict_keys_unchanged():
    """The checkpoint format: torchvision's RegNetX-400MF trunk keys (minus its classifier), the FPN's
    3 lateral + 3 output convs, and the head's two conv+ReLU stems and three prediction convs."""
    model = make_fcos(num_classes=20, stem_channels=(32, 32))
    trunk_keys = [k for k in torchvision.models.regnet_x_400mf().state_dict() if not k.startswith("fc.")]
    fpn = [f"backbone.fpn_params.{n}.{p}" for n in ("lateral_c3", "lateral_c4", "lateral_c5", "output_p3",
                                                    "output_p4", "output_p5") for p in ("weight", "bias")]
    head = [f"pred_net.{stem}.{i}.{p}" for stem in ("stem_cls", "stem_box") for i in (0, 2) for p in ("weight", "bias")]
    head += [f"pred_net.{conv}.{p}" for conv in ("pred_cls", "pred_box", "pred_ctr") for p in ("weight", "bias")]
    expected = ["backbone.backbone." + k for k in trunk_keys] + fpn + head
    keys = list(model.state_dict())
    assert sorted(keys) == sorted(expected)
    assert len(keys) == len(expected) == len(trunk_keys) + 12 + 14


# -- GIoU box loss -------------------------------------------------------------------------------------


def test_giou_loss_hand_value_for_one_location():
    """Location (12, 12) of box [8, 8, 40, 40] at stride 8: GT deltas (0.5, 0.5, 3.5, 3.5); predicted
    deltas (1, 1, 1, 1). In pixels: predicted box [4, 4, 20, 20] (area 256), GT [8, 8, 40, 40] (1024),
    intersection [8, 20]^2 = 144, union 1136, hull [4, 40]^2 = 1296.
    GIoU = 144/1136 - 160/1296; loss = 1 - GIoU = 0.996696..."""
    expected = 1 - (144 / 1136 - 160 / 1296)
    pred = torch.tensor([[[1.0, 1.0, 1.0, 1.0]]])
    gt = torch.tensor([[[0.5, 0.5, 3.5, 3.5]]])
    loss = one_stage_detector._giou_box_loss(pred, gt, torch.tensor([[True]]))
    assert loss.shape == (1, 1, 1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert python_giou_loss([4, 4, 20, 20], [8, 8, 40, 40]) == pytest.approx(expected)


def test_giou_loss_equals_torchvision_on_pixel_boxes_and_zero_for_background():
    reset_seed(0)
    stride = 16
    locations = torch.rand(50, 2) * 200
    gt_deltas = torch.rand(1, 50, 4) * 5 + 0.1
    pred = torch.randn(1, 50, 4) * 2  # some negative: clamped to 0 as at inference
    fg = torch.rand(1, 50) < 0.6
    gt_deltas[~fg] = -1

    def decode(d):
        d = d.clamp(min=0) * stride
        return torch.stack([locations[:, 0] - d[:, 0], locations[:, 1] - d[:, 1],
                            locations[:, 0] + d[:, 2], locations[:, 1] + d[:, 3]], dim=1)

    expected = generalized_box_iou_loss(decode(pred[0]), decode(gt_deltas[0]), reduction="none")
    loss = one_stage_detector._giou_box_loss(pred, gt_deltas, fg)[0, :, 0]
    assert torch.allclose(loss[fg[0]], expected[fg[0]], atol=1e-5)
    assert torch.all(loss[~fg[0]] == 0)


def test_fcos_giou_losses_by_hand():
    """The by-hand batch above with box_loss='giou' and predicted deltas (1, 1, 1, 1): loss_box is the
    sum over the 16 foreground locations of the hand GIoU formula; cls and ctr are unchanged."""
    reset_seed(0)
    model = constant_head(make_fcos(num_classes=5), box_bias=1.0)
    model.box_loss = "giou"
    model.train()
    gt = torch.full((2, 2, 5), -1.0)
    gt[0, 0] = torch.tensor([8.0, 8.0, 40.0, 40.0, 3.0])
    losses = model(torch.randn(2, 3, 64, 64), gt)
    box = [8, 8, 40, 40]
    total = sum(python_giou_loss([x - 8, y - 8, x + 8, y + 8], box) for x in (12, 20, 28, 36) for y in (12, 20, 28, 36))
    normalizer = (0.9 * 150 + 0.1 * 16 / 2) * 2
    assert losses["loss_box"].item() == pytest.approx(total / normalizer, rel=1e-5)
    assert losses["loss_ctr"].item() == pytest.approx(16 * math.log(2) / normalizer, rel=1e-6)


def test_fcos_giou_and_center_sampling_match_the_reference():
    reset_seed(0)
    model = FCOS(num_classes=4, fpn_channels=32, stem_channels=[32, 32], pretrained=False, box_loss="giou",
                 center_sampling_radius=1.5)
    model.train()
    images, gt = fixed_batch()
    losses = model(images, gt)
    expected, num_fg = reference_losses(model, images, gt, 150.0, box_loss="giou", radius=1.5)
    assert num_fg > 5
    for name in ("loss_cls", "loss_box", "loss_ctr"):
        assert losses[name].item() == pytest.approx(expected[name].item(), rel=1e-5), name
    sum(losses.values()).backward()
    assert model.pred_net.pred_box.weight.grad.abs().sum() > 0


# -- centre sampling -----------------------------------------------------------------------------------


def _count_matches(box, radius, size=(256, 256)):
    shapes = {name: (1, 1, -(-size[0] // s), -(-size[1] // s)) for name, s in STRIDES.items()}
    locations = get_fpn_location_coords(shapes, STRIDES)
    gt = torch.tensor([box + [1.0]])
    matched = fcos_match_locations_to_gt(locations, STRIDES, gt, center_sampling_radius=radius)
    return {name: int((m[:, 4] != -1).sum()) for name, m in matched.items()}, matched, locations


def test_center_sampling_small_box_by_hand():
    """Box [0, 0, 40, 40], centre (20, 20). Without centre sampling every p3 location strictly inside
    is positive: x, y in {4, 12, 20, 28, 36} -> 25. With radius 1.5 at stride 8 (half side 12):
    |x - 20| < 12 -> x in {12, 20, 28} (4 and 36 are 16 away) -> 9."""
    assert _count_matches([0.0, 0.0, 40.0, 40.0], None)[0] == {"p3": 25, "p4": 0, "p5": 0}
    counts, matched, locations = _count_matches([0.0, 0.0, 40.0, 40.0], 1.5)
    assert counts == {"p3": 9, "p4": 0, "p5": 0}
    positive = locations["p3"][matched["p3"][:, 4] != -1]
    assert sorted(set(positive[:, 0].tolist())) == [12.0, 20.0, 28.0]


def test_center_sampling_strict_boundary_and_level_ranges_by_hand():
    """Box [0, 0, 160, 96], centre (80, 48). Without centre sampling: p4 (stride 16, locations 8 + 16i)
    needs largest distance in (64, 128): x in (32, 128) -> 6 columns x 6 rows (y in 8..88) = 36; p5
    (locations 16 + 32i) needs > 128: x in {16, 144}, y in {16, 48, 80} -> 6; p3 none (>= 80 > 64).
    With radius 1.5: p4 half side 24, |x - 80| < 24 -> x in {72, 88} (56 and 104 are exactly 24
    away: excluded, the test is strict), |y - 48| < 24 -> y in {40, 56} -> 4; p5 half side 48:
    x = 16 and 144 are 64 away -> 0."""
    assert _count_matches([0.0, 0.0, 160.0, 96.0], None)[0] == {"p3": 0, "p4": 36, "p5": 6}
    counts, matched, locations = _count_matches([0.0, 0.0, 160.0, 96.0], 1.5)
    assert counts == {"p3": 0, "p4": 4, "p5": 0}
    positive = locations["p4"][matched["p4"][:, 4] != -1]
    assert sorted(map(tuple, positive.tolist())) == [(72.0, 40.0), (72.0, 56.0), (88.0, 40.0), (88.0, 56.0)]


def test_center_sampling_matches_the_reference_on_random_boxes():
    reset_seed(5)
    shapes = {name: (1, 1, 160 // s, 224 // s) for name, s in STRIDES.items()}
    locations = get_fpn_location_coords(shapes, STRIDES)
    xy = torch.rand(12, 2) * torch.tensor([224.0, 160.0])
    wh = torch.rand(12, 2) * 150 + 4
    gt = torch.cat([xy, xy + wh, torch.randint(0, 5, (12, 1)).float()], dim=1)
    gt[-2:] = -1
    for radius in (None, 1.0, 1.5, 2.5):
        matched = fcos_match_locations_to_gt(locations, STRIDES, gt, center_sampling_radius=radius)
        expected = reference_match(locations, STRIDES, gt, radius)
        for name in STRIDES:
            assert torch.equal(matched[name], expected[name]), (radius, name)


# -- GroupNorm head ------------------------------------------------------------------------------------


def test_group_norm_head_structure():
    head = FCOSPredictionNetwork(num_classes=3, in_channels=16, stem_channels=[64, 48], norm="group")
    kinds = [type(m).__name__ for m in head.stem_cls]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "Conv2d", "GroupNorm", "ReLU"]
    # gcd(32, 64 // 4) = 16 groups of 4 channels; gcd(32, 48 // 4) = 4 groups of 12; 256 channels: 32 groups.
    assert (head.stem_box[1].num_groups, head.stem_box[4].num_groups) == (16, 4)
    assert one_stage_detector._stem_norm(256).num_groups == 32
    default = FCOSPredictionNetwork(num_classes=3, in_channels=16, stem_channels=[64, 48])
    assert [type(m).__name__ for m in default.stem_cls] == ["Conv2d", "ReLU", "Conv2d", "ReLU"]


def test_group_norm_head_is_invariant_to_the_scale_of_its_input():
    """conv (zero bias at init) then GroupNorm: scaling the FPN features by 100 changes nothing (up to
    GroupNorm's eps, relative to the small activations of the 0.01-std init); the plain head's outputs
    scale with the input."""
    reset_seed(0)
    feats = {"p3": torch.randn(2, 16, 6, 5), "p4": torch.randn(2, 16, 3, 3)}
    scaled = {k: 100 * v for k, v in feats.items()}
    gn_head = FCOSPredictionNetwork(num_classes=3, in_channels=16, stem_channels=[32, 32], norm="group")
    for a, b in zip(gn_head(feats), gn_head(scaled)):
        for name in feats:
            assert torch.allclose(a[name], b[name], atol=1e-3)
    plain = FCOSPredictionNetwork(num_classes=3, in_channels=16, stem_channels=[32, 32])
    assert not torch.allclose(plain(feats)[1]["p3"], plain(scaled)[1]["p3"], atol=1e-1)


# -- P6 / P7 -----------------------------------------------------------------------------------------


def test_p6p7_level_size_ranges_by_hand():
    assert one_stage_detector._level_size_ranges(STRIDES_P7) == {
        "p3": (0.0, 64.0), "p4": (64.0, 128.0), "p5": (128.0, 256.0), "p6": (256.0, 512.0), "p7": (512.0, math.inf)}


@pytest.mark.parametrize("largest_distance,expected_level", [(60, "p3"), (100, "p4"), (200, "p5"), (300, "p6"),
                                                             (511, "p6"), (600, "p7")])
def test_p6p7_matcher_assigns_each_size_to_one_level(largest_distance, expected_level):
    """One location per level at (1000, 1000); box with left distance ``largest_distance`` and 10 px on
    the other sides: only the level whose range holds it matches."""
    locations = {name: torch.tensor([[1000.0, 1000.0]]) for name in STRIDES_P7}
    gt = torch.tensor([[1000.0 - largest_distance, 990.0, 1010.0, 1010.0, 2.0]])
    matched = fcos_match_locations_to_gt(locations, STRIDES_P7, gt)
    assert [name for name, m in matched.items() if m[0, 4] != -1] == [expected_level]


def test_p6p7_backbone_levels_shapes_and_wiring():
    backbone = DetectorBackboneWithFPN(out_channels=8, pretrained=False, p6p7=True)
    assert backbone.fpn_strides == STRIDES_P7
    assert backbone.fpn_params["output_p6"].in_channels == 8  # P6 is computed from P5, as in FCOS
    assert backbone.fpn_params["output_p6"].stride == (2, 2)
    backbone.eval()
    images = torch.randn(1, 3, 224, 160)
    with torch.no_grad():
        feats = backbone(images)
        assert list(feats) == ["p3", "p4", "p5", "p6", "p7"]
        assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
            "p3": (28, 20), "p4": (14, 10), "p5": (7, 5), "p6": (4, 3), "p7": (2, 2)}
        assert torch.allclose(feats["p6"], backbone.fpn_params["output_p6"](feats["p5"]), atol=1e-6)
        assert torch.allclose(feats["p7"], backbone.fpn_params["output_p7"](F.relu(feats["p6"])), atol=1e-6)


def test_fcos_with_all_options_trains_and_infers():
    reset_seed(0)
    model = FCOS(num_classes=3, fpn_channels=32, stem_channels=[32, 32], pretrained=False, p6p7=True,
                 head_norm="group", box_loss="giou", center_sampling_radius=1.5)
    assert "backbone.fpn_params.output_p7.weight" in model.state_dict()
    images = torch.randn(2, 3, 128, 96)
    gt = torch.tensor([[[10.0, 10.0, 120.0, 90.0, 1.0], [-1, -1, -1, -1, -1]],
                       [[0.0, 20.0, 30.0, 60.0, 2.0], [40.0, 0.0, 96.0, 128.0, 0.0]]])
    model.train()
    losses = model(images, gt)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    boxes, classes, scores = model(images[:1], test_score_thresh=0.0, test_nms_thresh=0.5)
    assert boxes.shape[1] == 4 and classes.dtype == torch.long and scores.shape == classes.shape
    assert boxes.shape[0] > 0


def test_invalid_options_have_clear_errors():
    with pytest.raises(ValueError, match="box_loss"):
        FCOS(3, 8, [8], pretrained=False, box_loss="iou")
    with pytest.raises(ValueError, match="center_sampling_radius"):
        FCOS(3, 8, [8], pretrained=False, center_sampling_radius=0)
    with pytest.raises(ValueError, match="norm"):
        FCOS(3, 8, [8], pretrained=False, head_norm="batch")


# -- presets -------------------------------------------------------------------------------------------


def test_course_preset_is_exactly_the_default_detector():
    from eecs598.recipes import get_preset

    course = get_preset("course")
    assert course["augment"] is None and course["tta"] is None
    images, gt = fixed_batch()
    results = []
    for kwargs in ({}, course["model"]):
        reset_seed(0)
        model = FCOS(num_classes=4, fpn_channels=32, stem_channels=[32, 32], pretrained=False, **kwargs)
        model.train()
        results.append((list(model.state_dict()), model(images, gt)))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


def test_presets_are_valid_keyword_arguments():
    import inspect

    import a4_helper
    from eecs598.data.augment import random_flip_scale
    from eecs598.recipes import PRESETS, get_preset
    from eecs598.models.tta import detect_with_tta

    import dataclasses

    from eecs598.train import TrainSettings

    # train_detector's own keywords plus the TrainSettings fields it takes as **options
    train_parameters = set(inspect.signature(a4_helper.train_detector).parameters)
    train_parameters |= {f.name for f in dataclasses.fields(TrainSettings)}
    for name in PRESETS:
        recipe = get_preset(name)
        assert set(recipe) == {"model", "train", "augment", "tta"}
        model = FCOS(num_classes=3, fpn_channels=16, stem_channels=[16], pretrained=False, **recipe["model"])
        assert set(recipe["train"]) <= set(train_parameters), name
        if recipe["augment"] is not None:
            random_flip_scale(torch.zeros(3, 32, 32), torch.full((2, 5), -1.0), **recipe["augment"])
        if recipe["tta"] is not None:
            model.eval()
            detect_with_tta(model, torch.zeros(1, 3, 64, 64), 0.5, 0.5, **recipe["tta"])
    improved = get_preset("improved")
    assert improved["model"]["box_loss"] == "giou" and improved["model"]["head_norm"] == "group"
    assert improved["model"]["center_sampling_radius"] == 1.5
    improved["model"]["box_loss"] = "l1"  # a copy: the table is untouched
    assert PRESETS["improved"]["model"]["box_loss"] == "giou"
    with pytest.raises(ValueError, match="unknown preset 'best'.*course"):
        get_preset("best")


def test_giou_loss_revives_negative_box_predictions():
    """Deltas predicted negative decode to a degenerate box (clamped at 0, as at inference); the GIoU loss must
    still push them up, else a head whose deltas all went negative never recovers (seen on Shapes)."""
    from one_stage_detector import _giou_box_loss

    gt = torch.tensor([[[2.0, 2.0, 2.0, 2.0]]])  # a 4x4 box centred on the location
    pred = torch.tensor([[[-0.5, -0.1, 1.0, -2.0]]], requires_grad=True)
    loss = _giou_box_loss(pred, gt, torch.tensor([[True]]))
    # Forward as at inference: (-0.5, -0.1, 1, -2) clamps to (0, 0, 1, 0): a zero-area box, IoU 0; the smallest
    # enclosing box is the GT (area 16), so GIoU = 0 - (16 - 16) / 16 = 0 and the loss is 1 - GIoU = 1.
    assert loss.item() == pytest.approx(1.0)
    loss.sum().backward()
    # With a plain clamp every gradient here is 0 (t and b are clamped; with zero height, l and r do not
    # change the overlap): the head would be stuck. Straight through, the height grows first.
    assert (pred.grad <= 0).all() and pred.grad[0, 0, 1] < 0 and pred.grad[0, 0, 3] < 0, pred.grad.tolist()
