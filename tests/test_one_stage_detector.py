"""Tests for one_stage_detector.py: the published notebook checks, the matcher's rules at their exact
boundaries, prediction/location alignment on a non-square input, losses, inference and learning.

Expected numbers come from the published notebook checks or are worked out by hand in comments.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

import one_stage_detector
from common import get_fpn_location_coords
from conftest import HandSetMap, make_fcos
from eecs598 import reset_seed
from eecs598.grad import rel_error
from one_stage_detector import (
    FCOSPredictionNetwork,
    fcos_apply_deltas_to_locations,
    fcos_get_deltas_from_locations,
    fcos_make_centerness_targets,
    fcos_match_locations_to_gt,
)

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def test_hello(capsys):
    one_stage_detector.hello_one_stage_detector()
    assert capsys.readouterr().out == "Hello from one_stage_detector.py!\n"


# -- published notebook checks ---------------------------------------------------------------------


def test_deltas_round_trip_published_check():
    input_boxes = torch.tensor([[10, 15, 100, 115, 1], [30, 20, 40, 30, 1], [120, 100, 200, 200, 1]],
                               dtype=torch.float32)
    input_locations = torch.tensor([[30, 40], [32, 29], [125, 150]], dtype=torch.float32)
    deltas = fcos_get_deltas_from_locations(input_locations, input_boxes, stride=8)
    # Hand calculation for the first row: (30-10, 40-15, 100-30, 115-40) / 8.
    assert deltas[0].tolist() == [20 / 8, 25 / 8, 70 / 8, 75 / 8]
    output_boxes = fcos_apply_deltas_to_locations(deltas, input_locations, stride=8)
    assert rel_error(input_boxes[:, :4], output_boxes) == 0


def test_background_deltas_published_check():
    background_box = torch.tensor([[-1, -1, -1, -1, -1]], dtype=torch.float32)
    input_location = torch.tensor([[100, 200]], dtype=torch.float32)
    deltas = fcos_get_deltas_from_locations(input_location, background_box, stride=8)
    assert deltas.tolist() == [[-1, -1, -1, -1]]
    output_box = fcos_apply_deltas_to_locations(deltas, input_location, stride=8)
    assert output_box.tolist() == [[100, 200, 100, 200]]


def test_deltas_accept_four_column_boxes_and_float64():
    boxes = torch.tensor([[10, 15, 100, 115]], dtype=torch.float64)
    deltas = fcos_get_deltas_from_locations(torch.tensor([[30.0, 40.0]], dtype=torch.float64), boxes, stride=16)
    assert deltas.dtype == torch.float64
    assert deltas.tolist() == [[20 / 16, 25 / 16, 70 / 16, 75 / 16]]


def test_centerness_published_check():
    input_boxes = torch.tensor([[10, 15, 100, 115, 1], [30, 20, 40, 30, 1], [-1, -1, -1, -1, -1]],
                               dtype=torch.float32)
    input_locations = torch.tensor([[30, 40], [32, 29], [125, 150]], dtype=torch.float32)
    expected_centerness = torch.tensor([0.30860671401, 0.1666666716, -1.0])
    deltas = fcos_get_deltas_from_locations(input_locations, input_boxes, stride=8)
    centerness = fcos_make_centerness_targets(deltas)
    assert rel_error(centerness, expected_centerness) < 1e-7


def test_centerness_hand_values():
    # Centre of a box -> 1; (l, t, r, b) = (1, 2, 3, 6) -> sqrt(1*2 / (3*6)) = 1/3.
    deltas = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    assert torch.allclose(fcos_make_centerness_targets(deltas), torch.tensor([1.0, 1 / 3], dtype=torch.float64))


# -- head --------------------------------------------------------------------------------------------


def test_prediction_network_shapes_published_check():
    head = FCOSPredictionNetwork(num_classes=20, in_channels=64, stem_channels=[128, 64])
    feats = {"p3": torch.randn(2, 64, 28, 28), "p4": torch.randn(2, 64, 14, 14), "p5": torch.randn(2, 64, 7, 7)}
    class_logits, boxreg_deltas, centerness_logits = head(feats)
    for name, num_locations in (("p3", 784), ("p4", 196), ("p5", 49)):
        assert class_logits[name].shape == (2, num_locations, 20)
        assert boxreg_deltas[name].shape == (2, num_locations, 4)
        assert centerness_logits[name].shape == (2, num_locations, 1)


def test_prediction_network_structure_and_init():
    head = FCOSPredictionNetwork(num_classes=5, in_channels=16, stem_channels=[32, 24])
    convs = [m for m in head.stem_cls if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(16, 32), (32, 24)]
    assert [type(m) for m in head.stem_box] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    for conv in (head.pred_cls, head.pred_box, head.pred_ctr):
        assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert (head.pred_cls.out_channels, head.pred_box.out_channels, head.pred_ctr.out_channels) == (5, 4, 1)
    # Prior p = 0.01: bias = -log(99) = -4.59512.
    assert torch.allclose(head.pred_cls.bias, torch.full((5,), -math.log(99.0)))
    assert torch.all(head.pred_box.bias == 0) and torch.all(head.pred_ctr.bias == 0)
    assert abs(head.pred_box.weight.std().item() - 0.01) < 0.003


def test_centerness_is_predicted_from_the_box_stem():
    head = FCOSPredictionNetwork(num_classes=3, in_channels=8, stem_channels=[8])
    feats = {"p3": torch.randn(1, 8, 5, 7)}
    _, _, ctr_before = head(feats)
    with torch.no_grad():
        head.stem_cls[0].weight.add_(1.0)  # changing the class stem must not change centerness
    _, _, ctr_after = head(feats)
    assert torch.equal(ctr_before["p3"], ctr_after["p3"])


def test_prediction_rows_align_with_location_rows_on_non_square_input():
    """A box predicted at feature cell (h, w) of p3 must decode around pixel (8w+4, 8h+4).

    The maps are set by hand in (B, C, H, W) layout; the head's own flattening and the locations'
    row order must agree for the decoded box to land there (a transposed pairing would put it at
    a different place, or outside the 160x256 image).
    """
    model = make_fcos(num_classes=3)
    model.eval()
    height, width = 160, 256
    sizes = {name: (height // s, width // s) for name, s in STRIDES.items()}  # p3: 20 x 32
    cell_h, cell_w, class_id = 3, 25, 2
    cls_maps, box_maps, ctr_maps = {}, {}, {}
    for name, (h, w) in sizes.items():
        cls_maps[(h, w)] = torch.full((1, 3, h, w), -20.0)
        box_maps[(h, w)] = torch.zeros(1, 4, h, w)
        ctr_maps[(h, w)] = torch.full((1, 1, h, w), 20.0)
    p3 = sizes["p3"]
    cls_maps[p3][0, class_id, cell_h, cell_w] = 20.0
    # (l, t, r, b) = (1, 2, 3, 1.5) strides = (8, 16, 24, 12) pixels.
    box_maps[p3][0, :, cell_h, cell_w] = torch.tensor([1.0, 2.0, 3.0, 1.5])
    model.pred_net.pred_cls = HandSetMap(cls_maps)
    model.pred_net.pred_box = HandSetMap(box_maps)
    model.pred_net.pred_ctr = HandSetMap(ctr_maps)

    boxes, classes, scores = model(torch.randn(1, 3, height, width), test_score_thresh=0.5)
    center_x, center_y = 8 * cell_w + 4, 8 * cell_h + 4  # (204, 28)
    assert boxes.tolist() == [[center_x - 8, center_y - 16, center_x + 24, center_y + 12]]
    assert classes.tolist() == [class_id]
    assert scores.shape == (1,) and scores[0] > 0.99


# -- matcher -----------------------------------------------------------------------------------------


def single_location_per_level(x, y):
    return {name: torch.tensor([[float(x), float(y)]]) for name in STRIDES}


def matched_levels(gt_boxes, x=100.0, y=100.0):
    """Names of the levels at which the one location (x, y) is matched to a box (not background)."""
    matched = fcos_match_locations_to_gt(single_location_per_level(x, y), STRIDES, gt_boxes)
    return {name: rows[0].tolist() for name, rows in matched.items() if rows[0, 4] != -1}


@pytest.mark.parametrize(
    "left_distance,expected_level",
    [
        (63.5, "p3"),  # largest distance 63.5 < 64
        (64.0, None),  # exactly 64: neither p3 (< 64) nor p4 (> 64)
        (64.5, "p4"),
        (127.5, "p4"),
        (128.0, None),  # exactly 128: neither p4 (< 128) nor p5 (> 128)
        (128.5, "p5"),
        (500.0, "p5"),  # p5 has no upper bound
    ],
)
def test_matcher_range_bounds(left_distance, expected_level):
    # Location (100, 100); box edges at distances (l, 10, 10, 10): the largest distance is l.
    box = torch.tensor([[100 - left_distance, 90, 110, 110, 4]], dtype=torch.float64)
    matched = matched_levels(box)
    if expected_level is None:
        assert matched == {}
    else:
        assert matched == {expected_level: box[0].tolist()}


def test_matcher_requires_strictly_inside():
    on_edge = torch.tensor([[100.0, 90.0, 130.0, 110.0, 1.0]])  # l = 0: on the left edge
    assert matched_levels(on_edge) == {}
    outside = torch.tensor([[101.0, 90.0, 130.0, 110.0, 1.0]])
    assert matched_levels(outside) == {}


def test_matcher_nested_boxes_smaller_wins_in_any_order():
    big = [60.0, 60.0, 140.0, 140.0, 1.0]  # largest distance 40 -> p3, area 6400
    small = [80.0, 80.0, 120.0, 130.0, 2.0]  # largest distance 30 -> p3, area 2000
    for rows in ([big, small], [small, big]):
        assert matched_levels(torch.tensor(rows)) == {"p3": small}


def test_matcher_padding_rows_never_match():
    padding = [-1.0] * 5
    box = [90.0, 90.0, 110.0, 110.0, 0.0]
    assert matched_levels(torch.tensor([padding, box, padding])) == {"p3": box}
    assert matched_levels(torch.tensor([padding, padding])) == {}


def test_matcher_image_without_boxes():
    locations = get_fpn_location_coords({"p3": (1, 1, 28, 28), "p4": (1, 1, 14, 14), "p5": (1, 1, 7, 7)}, STRIDES)
    for gt in (torch.zeros(0, 5), torch.full((40, 5), -1.0)):
        matched = fcos_match_locations_to_gt(locations, STRIDES, gt)
        for name, num in (("p3", 784), ("p4", 196), ("p5", 49)):
            assert matched[name].shape == (num, 5)
            assert torch.all(matched[name] == -1)


def test_matcher_on_grid_counts_by_hand():
    # Box [0, 0, 48, 32] on a 224 image: p3 centres at 4, 12, ... strictly inside: x in {4..44} (6),
    # y in {4..28} (4); the largest distance is at most 44 < 64 -> all 24 at p3. At p4 (centres 8,
    # 24, 40) the largest distance is < 64 -> none (p4 needs > 64).
    locations = get_fpn_location_coords({"p3": (1, 1, 28, 28), "p4": (1, 1, 14, 14), "p5": (1, 1, 7, 7)}, STRIDES)
    matched = fcos_match_locations_to_gt(locations, STRIDES, torch.tensor([[0.0, 0.0, 48.0, 32.0, 7.0]]))
    assert int((matched["p3"][:, 4] == 7).sum()) == 24
    assert int((matched["p4"][:, 4] != -1).sum()) == 0
    assert int((matched["p5"][:, 4] != -1).sum()) == 0


# -- loss demos (the notebook's loss cells with fixed inputs; values by hand) ---------------------


def _focal_by_hand(logit, target, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    ce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return alpha_t * ce * (1 - p_t) ** gamma


def test_focal_loss_demo_values():
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.0, -0.3], [1.5, -2.0, 0.2, 0.7, -0.1]]], dtype=torch.float64)
    targets = torch.tensor([[[0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]], dtype=torch.float64)
    loss = sigmoid_focal_loss(logits, targets)  # the library the FCOS module uses
    expected = torch.tensor([[[_focal_by_hand(l, t) for l, t in zip(row_l, row_t)]
                              for row_l, row_t in zip(logits[0].tolist(), targets[0].tolist())]],
                            dtype=torch.float64)
    assert rel_error(loss, expected) < 1e-12


def test_box_and_centerness_loss_demo_values():
    # The notebook's cell: two p5 locations, a foreground and a background GT, stride 32.
    locations = torch.tensor([[32.0, 32.0], [64.0, 32.0]], dtype=torch.float64)
    gt_boxes = torch.tensor([[1, 2, 40, 50, 2], [-1, -1, -1, -1, -1]], dtype=torch.float64)
    pred_deltas = torch.tensor([[0.5, 1.0, 0.0, 1.5], [0.3, 0.3, 0.3, 0.3]], dtype=torch.float64)
    pred_ctr_logits = torch.tensor([0.1, 0.4], dtype=torch.float64)

    gt_deltas = fcos_get_deltas_from_locations(locations, gt_boxes, stride=32)
    # By hand: (32-1, 32-2, 40-32, 50-32) / 32 = (0.96875, 0.9375, 0.25, 0.5625).
    loss_box = 0.25 * F.l1_loss(pred_deltas, gt_deltas, reduction="none")
    loss_box[gt_deltas < 0] *= 0.0
    expected_box = [0.25 * abs(0.5 - 0.96875), 0.25 * abs(1.0 - 0.9375), 0.25 * 0.25, 0.25 * abs(1.5 - 0.5625)]
    assert rel_error(loss_box, torch.tensor([expected_box, [0.0] * 4], dtype=torch.float64)) < 1e-12

    centerness = fcos_make_centerness_targets(gt_deltas)
    # By hand: sqrt(min(31, 8) * min(30, 18) / (max(31, 8) * max(30, 18))) = sqrt(144 / 930).
    target = math.sqrt(144 / 930)
    assert rel_error(centerness, torch.tensor([target, -1.0], dtype=torch.float64)) < 1e-12
    loss_ctr = F.binary_cross_entropy_with_logits(pred_ctr_logits, centerness, reduction="none")
    loss_ctr[centerness < 0] *= 0.0
    p = 1 / (1 + math.exp(-0.1))
    expected_ctr = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    assert rel_error(loss_ctr, torch.tensor([expected_ctr, 0.0], dtype=torch.float64)) < 1e-12


# -- FCOS module ---------------------------------------------------------------------------------------


def test_fcos_attributes():
    model = make_fcos(num_classes=7)
    assert model.num_classes == 7
    assert model._normalizer == 150
    assert isinstance(model.pred_net, FCOSPredictionNetwork)
    assert model.backbone.out_channels == 32


def test_fcos_losses_finite_with_padding_and_backward():
    reset_seed(0)
    model = make_fcos(num_classes=5)
    model.train()
    images = torch.randn(2, 3, 224, 224)
    gt_boxes = torch.tensor(
        [[[10, 20, 100, 150, 3], [50, 50, 200, 220, 1], [-1, -1, -1, -1, -1]],
         [[0, 0, 40, 40, 0], [-1, -1, -1, -1, -1], [-1, -1, -1, -1, -1]]], dtype=torch.float32)
    losses = model(images, gt_boxes)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_box"] > 0 and losses["loss_ctr"] > 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_fcos_losses_for_a_batch_without_any_box():
    model = make_fcos(num_classes=5)
    model.train()
    losses = model(torch.randn(2, 3, 128, 128), torch.full((2, 4, 5), -1.0))
    assert all(torch.isfinite(v) for v in losses.values())
    # No foreground: box and centerness losses are exactly zero; the EMA decays towards 0.
    assert losses["loss_box"] == 0 and losses["loss_ctr"] == 0 and losses["loss_cls"] > 0
    assert model._normalizer == pytest.approx(0.9 * 150)
    sum(losses.values()).backward()
    losses = model(torch.randn(1, 3, 96, 96), torch.zeros(1, 0, 5))  # M = 0 also works
    assert all(torch.isfinite(v) for v in losses.values())


def test_fcos_normalizer_is_ema_of_foreground_per_image():
    model = make_fcos(num_classes=2)
    model.train()
    # One 224 image, box [0, 0, 48, 32]: 24 foreground p3 locations (see the grid test above).
    gt = torch.tensor([[[0.0, 0.0, 48.0, 32.0, 1.0]]])
    model(torch.randn(1, 3, 224, 224), gt)
    assert model._normalizer == pytest.approx(0.9 * 150 + 0.1 * 24)


def test_loss_is_sum_over_locations_divided_by_normalizer_times_batch():
    """Independent recomputation of loss_cls from the head's raw outputs."""
    reset_seed(1)
    model = make_fcos(num_classes=3)
    model.train()
    images = torch.randn(2, 3, 64, 64)
    gt = torch.full((2, 1, 5), -1.0)  # background only: cls targets are all zero
    feats = model.backbone(images)
    logits, _, _ = model.pred_net(feats)
    all_logits = torch.cat(list(logits.values()), dim=1)
    p = torch.sigmoid(all_logits)
    expected = (0.75 * -torch.log(1 - p) * p ** 2).sum() / ((0.9 * 150) * 2)
    losses = model(images, gt)
    assert torch.allclose(losses["loss_cls"], expected, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("size", [(224, 224), (192, 320)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fcos_train_and_eval_sizes_batches_dtypes(batch_size, size, dtype):
    reset_seed(0)
    model = make_fcos(num_classes=4, fpn_channels=16, stem_channels=(16,)).to(dtype)
    height, width = size
    images = torch.randn(batch_size, 3, height, width, dtype=dtype)
    gt = torch.full((batch_size, 2, 5), -1.0, dtype=dtype)
    gt[:, 0] = torch.tensor([10.0, 20.0, 90.0, 150.0, 1.0], dtype=dtype)
    model.train()
    losses = model(images, gt)
    assert all(torch.isfinite(v) and v.dtype == dtype for v in losses.values())

    model.eval()
    outputs = model(images, test_score_thresh=0.0, test_nms_thresh=0.5)
    per_image = [outputs] if batch_size == 1 else list(zip(*outputs))
    assert len(per_image) == batch_size
    for boxes, classes, scores in per_image:
        assert boxes.dtype == dtype and scores.dtype == dtype and classes.dtype == torch.long
        assert boxes.shape[0] == classes.shape[0] == scores.shape[0] > 0
        assert torch.all(boxes[:, 0::2] >= 0) and torch.all(boxes[:, 0::2] <= width)
        assert torch.all(boxes[:, 1::2] >= 0) and torch.all(boxes[:, 1::2] <= height)
        assert torch.all(boxes[:, 2] >= boxes[:, 0]) and torch.all(boxes[:, 3] >= boxes[:, 1])
        assert torch.all(scores[:-1] >= scores[1:])
        assert torch.all((classes >= 0) & (classes < 4))


def test_fcos_eval_default_thresholds_and_score_threshold():
    model = make_fcos(num_classes=4)
    model.eval()
    image = torch.randn(1, 3, 128, 128)
    # Fresh head: class probability 0.01 and centerness 0.5 -> score sqrt(0.005) = 0.0707 < 0.3.
    boxes, classes, scores = model(image)
    assert boxes.shape == (0, 4) and classes.shape == (0,) and scores.shape == (0,)
    boxes, classes, scores = model(image, test_score_thresh=0.05)
    assert scores.numel() > 0 and torch.all(scores > 0.05)


def test_fcos_rejects_bad_inputs_with_clear_messages():
    model = make_fcos(num_classes=3)
    model.train()
    image = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64), torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="images must have shape"):
        model(torch.randn(1, 1, 64, 64), torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="gt_boxes must have shape"):
        model(image, torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="class ids"):
        model(image, torch.tensor([[[0.0, 0.0, 10.0, 10.0, 3.0]]]))
    with pytest.raises(ValueError, match="x2 >= x1"):
        model(image, torch.tensor([[[20.0, 0.0, 10.0, 10.0, 1.0]]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        model(image, torch.tensor([[[0.0, 0.0, float("nan"), 10.0, 1.0]]]))
    bad = image.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        model(bad, torch.zeros(1, 0, 5))
    with pytest.raises(ValueError, match="gt_boxes is required"):
        model(image)
    with pytest.raises(ValueError, match="B = 0"):
        model(torch.zeros(0, 3, 64, 64), torch.zeros(0, 1, 5))
    model.eval()
    with pytest.raises(ValueError, match="test_score_thresh"):
        model(image, test_score_thresh=1.5)


# -- learning ------------------------------------------------------------------------------------------


def synthetic_batch(num_images=4, size=128, seed=0):
    """Bright rectangles of two classes (class 0 red-ish, class 1 blue-ish) on dark noise."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.randn(num_images, 3, size, size, generator=generator)
    gt = torch.full((num_images, 3, 5), -1.0)
    for i in range(num_images):
        for j in range(2):
            w, h = torch.randint(24, 72, (2,), generator=generator).tolist()
            x1, y1 = torch.randint(0, size - max(w, h), (2,), generator=generator).tolist()
            cls = (i + j) % 2
            images[i, cls * 2, y1:y1 + h, x1:x1 + w] += 2.0
            gt[i, j] = torch.tensor([x1, y1, x1 + w, y1 + h, cls], dtype=torch.float32)
    return images, gt


def total_loss_at_fixed_normalizer(model, images, gt):
    model._normalizer = 150.0  # forward updates the EMA first: same start -> same divisor both times
    with torch.no_grad():
        return sum(model(images, gt).values()).item()


def test_small_fcos_learns_synthetic_boxes():
    """150 AdamW steps with warm-up and clipping (stable from random init) at least halve the loss.

    (Plain SGD at the assignment's learning rate diverges from a random backbone; see a4_helper.)
    """
    reset_seed(0)
    model = make_fcos(num_classes=2, fpn_channels=32, stem_channels=(32, 32))
    model.train()
    images, gt = synthetic_batch(size=96)
    before = total_loss_at_fixed_normalizer(model, images, gt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: min(1.0, (it + 1) / 20))
    for _ in range(150):
        losses = model(images, gt)
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
    after = total_loss_at_fixed_normalizer(model, images, gt)
    assert after < 0.5 * before, (before, after)


# -- bad inputs: clear messages, no state change ----------------------------------------------------
# (Moved from the former tests/test_reliability.py; float64/float16 images and stem widths: issue 10, item 8.)

@pytest.fixture(scope="module")
def fcos3():
    """Tiny FCOS with 3 classes (valid class ids 0, 1, 2)."""
    reset_seed(0)
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
    "images_float64_into_float32_model": (True, _image(1, 3, 64, 64, dtype=torch.float64), GOOD_BOXES, {},
                                          TypeError, ["images", "torch.float64", "torch.float32", "model.to("]),
    "images_float16_into_float32_model": (False, _image(1, 3, 64, 64, dtype=torch.float16), None, {}, TypeError,
                                          ["images", "torch.float16", "torch.float32", "images.to("]),
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


def _assert_message(error, *fragments):
    missing = [fragment for fragment in fragments if fragment not in str(error)]
    assert not missing, f"error message {str(error)!r} ({type(error).__name__}) lacks {missing}"


@pytest.mark.parametrize("case", list(FCOS_CASES))
def test_fcos_forward_rejects_bad_input_with_a_clear_message(fcos3, case):
    train, images, gt_boxes, thresholds, error_type, fragments = FCOS_CASES[case]
    fcos3.train(train)
    normalizer = fcos3._normalizer
    running_mean = fcos3.backbone.backbone.stem[1].running_mean.clone()
    with pytest.raises(error_type) as error:
        if train:
            fcos3(images, gt_boxes, **thresholds)
        else:
            fcos3(images, **thresholds)
    _assert_message(error.value, *fragments)
    assert fcos3._normalizer == normalizer, "a rejected batch must not update the loss normaliser"
    assert torch.equal(fcos3.backbone.backbone.stem[1].running_mean, running_mean), "nor BatchNorm statistics"


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
        _assert_message(error, name, received)
    else:
        assert all(torch.isfinite(value) for value in losses.values()), losses


def test_matching_dtypes_other_than_float32_still_work(fcos3):
    # The dtype check compares images with the weights: a float64 model takes float64 images (see the
    # sizes/dtypes test above), and autocast (mixed precision) mixes dtypes on purpose.
    fcos3.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = fcos3(_image(1, 3, 64, 64, dtype=torch.bfloat16), GOOD_BOXES)  # bfloat16 images, float32 weights
    assert all(torch.isfinite(value) for value in losses.values())


@pytest.mark.parametrize("stem_channels", [[0], [-8], [16, 0], [16.0], [True]])
def test_stem_channels_must_be_positive_ints(stem_channels):
    with pytest.raises(ValueError) as error:
        FCOSPredictionNetwork(num_classes=3, in_channels=16, stem_channels=stem_channels)
    _assert_message(error.value, "stem_channels", "positive ints", str(stem_channels))
    with pytest.raises(ValueError, match="stem_channels"):
        make_fcos(num_classes=3, fpn_channels=16, stem_channels=stem_channels)


# -- the loss normaliser after batches without objects (issue 10, item 9) ---------------------------------------

def test_empty_batches_cannot_pull_the_normaliser_below_half_its_last_value():
    """The issue: after a long run of batches without objects the plain EMA fell to ~2.5 and the next normal
    batch's losses were ~50x too large. Now empty batches follow the course's EMA but stop at half the value
    after the last batch with objects.

    By hand, from 125 (after a batch with objects): the plain EMA after 37 empty batches would be
    125 * 0.9**37 = 2.54; bounded, 125 * 0.9**k stays above 62.5 for k <= 6 (125 * 0.9**6 = 66.4) and is held at
    62.5 from k = 7 (125 * 0.9**7 = 59.8). Then one image with 24 foreground locations (the 224 px image with
    box [0, 0, 48, 32] of the grid test above): 0.9 * 62.5 + 0.1 * 24 = 58.65, where 125 would give
    0.9 * 125 + 2.4 = 114.9: that batch's losses are 114.9 / 58.65 = 1.96x the steady ones, not
    114.9 / (0.9 * 2.54 + 2.4) = 24.5x."""
    reset_seed(0)
    model = make_fcos(num_classes=2, fpn_channels=16, stem_channels=(16,))
    model.train()
    image = torch.randn(1, 3, 224, 224)
    gt = torch.tensor([[[0.0, 0.0, 48.0, 32.0, 1.0]]])
    empty = torch.zeros(2, 100, dtype=torch.bool)  # is_foreground of a batch of 2 images without objects

    model.load_training_state({"normalizer": 125.0, "normalizer_anchor": 125.0})
    steady = model(image, gt)
    assert model.loss_normalizer == pytest.approx(114.9)

    model.load_training_state({"normalizer": 125.0, "normalizer_anchor": 125.0})
    values = []
    for _ in range(37):
        model._update_normalizer(empty)
        values.append(model.loss_normalizer)
    expected = [max(125 * 0.9 ** k, 62.5) for k in range(1, 38)]
    assert values == pytest.approx(expected, rel=1e-12)
    after = model(image, gt)
    assert model.loss_normalizer == pytest.approx(58.65)
    for name in steady:
        assert (after[name] / steady[name]).item() == pytest.approx(114.9 / 58.65, rel=1e-5), name
    model.load_training_state({"normalizer": 150.0})
