"""Tests of the optional P2 level (stride 4): the FPN's extra level, its size range, the row order of
locations, targets and predictions across p2-p5, a tiny training run with checkpoint round trip, and the
Shapes size-range option. The default model must stay exactly the course's.

Expected values are worked out by hand in the comments, or come from a reference computed in the test.
"""
import dataclasses
import json
import math

import pytest
import torch
import torchvision
from torch.nn import functional as F

import one_stage_detector
import train_fcos
from conftest import HandSetMap
from common import DetectorBackboneWithFPN, get_fpn_location_coords
from eecs598 import reset_seed
from eecs598.data.datasets import ShapesDetection
from eecs598.data.shapes import generate_shapes_dataset
from eecs598.models.backbones import BACKBONES
from one_stage_detector import FCOS, fcos_match_locations_to_gt

STRIDES_P2 = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def small_fcos(**options):
    reset_seed(0)
    return FCOS(num_classes=3, fpn_channels=16, stem_channels=[16], pretrained=False, **options)


# -- the backbone's P2 -----------------------------------------------------------------------------------


def test_p2_features_shapes_strides_and_top_down_wiring():
    reset_seed(0)
    backbone = DetectorBackboneWithFPN(out_channels=8, pretrained=False, p2=True).eval()
    assert backbone.fpn_strides == STRIDES_P2
    assert backbone.fpn_params["lateral_c2"].in_channels == 32  # RegNetX-400MF's first stage: 32 channels
    images = torch.randn(1, 3, 224, 160)
    with torch.no_grad():
        feats = backbone(images)
        assert list(feats) == ["p2", "p3", "p4", "p5"]
        assert {k: tuple(v.shape) for k, v in feats.items()} == {
            "p2": (1, 8, 56, 40), "p3": (1, 8, 28, 20), "p4": (1, 8, 14, 10), "p5": (1, 8, 7, 5)}
        # Reference: the standard top-down pathway written out, one step further down to c2.
        c = backbone.backbone(images)
        params = backbone.fpn_params
        merged5 = params["lateral_c5"](c["c5"])
        merged4 = params["lateral_c4"](c["c4"]) + F.interpolate(merged5, size=(14, 10), mode="nearest")
        merged3 = params["lateral_c3"](c["c3"]) + F.interpolate(merged4, size=(28, 20), mode="nearest")
        merged2 = params["lateral_c2"](c["c2"]) + F.interpolate(merged3, size=(56, 40), mode="nearest")
        assert c["c2"].shape == (1, 32, 56, 40)
        assert torch.allclose(feats["p2"], params["output_p2"](merged2), atol=1e-6)
        assert torch.allclose(feats["p3"], params["output_p3"](merged3), atol=1e-6)


def test_p2_adds_a_branch_and_leaves_p3_to_p5_as_the_default_model_computes_them():
    reset_seed(0)
    default = DetectorBackboneWithFPN(out_channels=8, pretrained=False).eval()
    reset_seed(0)
    with_p2 = DetectorBackboneWithFPN(out_channels=8, pretrained=False, p2=True).eval()
    extra = sorted(set(with_p2.state_dict()) - set(default.state_dict()))
    assert extra == ["fpn_params.lateral_c2.bias", "fpn_params.lateral_c2.weight", "fpn_params.output_p2.bias",
                     "fpn_params.output_p2.weight"]
    default.load_state_dict({k: v for k, v in with_p2.state_dict().items() if k not in extra})
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        a, b = default(images), with_p2(images)
    assert list(a) == ["p3", "p4", "p5"]
    for level in a:
        assert torch.equal(a[level], b[level]), level


# The stride-4 node of every trunk, with the channels of its architecture: RegNetX widths (32, 64, 72 for
# 400MF / 800MF / 1.6GF), ResNet's layer1 (64; ResNet-50's bottleneck: 4 x 64), the 24-channel stage of
# MobileNetV3-Large and of EfficientNet-Lite0.
C2_CHANNELS = {"regnet_x_400mf": 32, "regnet_x_800mf": 64, "regnet_x_1_6gf": 72, "resnet18": 64, "resnet34": 64,
               "resnet50": 256, "mobilenet_v3_large": 24, "efficientnet_lite0": 24}


@pytest.mark.parametrize("name", sorted(C2_CHANNELS))
def test_every_trunk_gives_a_stride_4_c2(name):
    backbone = DetectorBackboneWithFPN(out_channels=8, pretrained=False, backbone=name, p2=True).eval()
    with torch.no_grad():
        c = backbone.backbone(torch.randn(1, 3, 64, 96))
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert c["c2"].shape == (1, C2_CHANNELS[name], 16, 24)
    assert c["c3"].shape[-2:] == (8, 12)
    assert feats["p2"].shape == (1, 8, 16, 24)


def test_registry_covers_every_trunk():
    assert set(C2_CHANNELS) == set(BACKBONES)
    assert {k: v.c2_channels for k, v in BACKBONES.items()} == C2_CHANNELS


def test_a_trunk_without_a_stride_4_feature_is_refused_clearly(monkeypatch):
    monkeypatch.setitem(BACKBONES, "no_c2_trunk", dataclasses.replace(BACKBONES["resnet18"], c2_node=None,
                                                                      c2_channels=None))
    with pytest.raises(ValueError, match="p2 needs a stride-4 feature .* 'no_c2_trunk' has none; use p2=False"):
        FCOS(3, 8, [8], pretrained=False, backbone="no_c2_trunk", p2=True)
    with pytest.raises(ValueError, match="p2=True needs a stride-4 feature"):
        DetectorBackboneWithFPN(out_channels=8, pretrained=False, backbone="no_c2_trunk", p2=True)
    FCOS(3, 8, [8], pretrained=False, backbone="no_c2_trunk")  # without P2 the trunk is fine
    with pytest.raises(ValueError, match="p2 must be True or False"):
        FCOS(3, 8, [8], pretrained=False, p2="yes")


def test_default_model_is_unchanged():
    """Same keys as the course's model (torchvision's trunk keys, 3 laterals + 3 output convs, the head), the
    same losses whether ``p2=False`` is spelled out or not."""
    default = small_fcos()
    trunk = [f"backbone.backbone.{k}" for k in torchvision.models.regnet_x_400mf().state_dict() if not k.startswith("fc.")]
    fpn = [f"backbone.fpn_params.{n}.{p}" for n in ("lateral_c3", "lateral_c4", "lateral_c5", "output_p3", "output_p4",
                                                    "output_p5") for p in ("weight", "bias")]
    head = [f"pred_net.{stem}.{i}.{p}" for stem in ("stem_cls", "stem_box") for i in (0,) for p in ("weight", "bias")]
    head += [f"pred_net.{conv}.{p}" for conv in ("pred_cls", "pred_box", "pred_ctr") for p in ("weight", "bias")]
    assert sorted(default.state_dict()) == sorted(trunk + fpn + head)
    assert default.backbone.fpn_strides == STRIDES
    explicit = small_fcos(p2=False)
    images = torch.randn(2, 3, 64, 64)
    gt = torch.tensor([[[4.0, 4.0, 40.0, 30.0, 1.0]], [[10.0, 20.0, 60.0, 62.0, 2.0]]])
    default.train(), explicit.train()
    a, b = default(images, gt), explicit(images, gt)
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- size ranges -------------------------------------------------------------------------------------------


def test_p2_size_ranges_by_hand():
    # (4 * stride, 8 * stride), open at the first and the last level: P2 (0, 32), P3 (32, 64), ...
    assert one_stage_detector._level_size_ranges(STRIDES_P2) == {
        "p2": (0.0, 32.0), "p3": (32.0, 64.0), "p4": (64.0, 128.0), "p5": (128.0, math.inf)}


@pytest.mark.parametrize("left_distance,expected_level", [
    (31.5, "p2"), (32.0, None), (32.5, "p3"), (63.5, "p3"), (64.0, None), (64.5, "p4"), (128.5, "p5")])
def test_matcher_with_p2_range_bounds(left_distance, expected_level):
    """Location (100, 100) on every level; box edges at distances (l, 10, 10, 10): the largest distance is l."""
    locations = {name: torch.tensor([[100.0, 100.0]]) for name in STRIDES_P2}
    box = torch.tensor([[100.0 - left_distance, 90.0, 110.0, 110.0, 2.0]])
    matched = fcos_match_locations_to_gt(locations, STRIDES_P2, box)
    assert [name for name, rows in matched.items() if rows[0, 4] != -1] == ([expected_level] if expected_level else [])


def test_a_box_of_side_20_lands_on_p2_only():
    """Box [40, 40, 60, 60] in a 128 x 128 image. P2 centres are 4k + 2: 42, 46, 50, 54, 58 lie strictly inside
    in x and in y, so 5 x 5 = 25 locations, each with largest distance < 20 < 32. Without P2 it goes to P3,
    whose centres 8k + 4 inside are 44 and 52: 2 x 2 = 4 locations."""
    box = torch.tensor([[40.0, 40.0, 60.0, 60.0, 1.0]])
    shapes = {name: (1, 1, 128 // s, 128 // s) for name, s in STRIDES_P2.items()}
    with_p2 = fcos_match_locations_to_gt(get_fpn_location_coords(shapes, STRIDES_P2), STRIDES_P2, box)
    assert {name: int((rows[:, 4] != -1).sum()) for name, rows in with_p2.items()} == {"p2": 25, "p3": 0, "p4": 0, "p5": 0}
    fg = with_p2["p2"][:, 4] != -1
    centres = get_fpn_location_coords({"p2": shapes["p2"]}, {"p2": 4})["p2"][fg]
    assert sorted(set(centres[:, 0].tolist())) == [42.0, 46.0, 50.0, 54.0, 58.0]
    shapes.pop("p2")
    without = fcos_match_locations_to_gt(get_fpn_location_coords(shapes, STRIDES), STRIDES, box)
    assert {name: int((rows[:, 4] != -1).sum()) for name, rows in without.items()} == {"p3": 4, "p4": 0, "p5": 0}


# -- row order: locations, targets and predictions ------------------------------------------------------------


def test_prediction_rows_align_with_location_rows_on_p2():
    """As tests/test_one_stage_detector.py's row-order test, at P2: a box predicted at p2 cell (h, w) of a
    160 x 256 input must decode around pixel (4w + 2, 4h + 2)."""
    model = small_fcos(p2=True).eval()
    height, width = 160, 256
    sizes = {name: (height // s, width // s) for name, s in STRIDES_P2.items()}  # p2: 40 x 64
    cell_h, cell_w, class_id = 3, 25, 2
    cls_maps = {hw: torch.full((1, 3, *hw), -20.0) for hw in sizes.values()}
    box_maps = {hw: torch.zeros(1, 4, *hw) for hw in sizes.values()}
    ctr_maps = {hw: torch.full((1, 1, *hw), 20.0) for hw in sizes.values()}
    cls_maps[sizes["p2"]][0, class_id, cell_h, cell_w] = 20.0
    # (l, t, r, b) = (1, 2, 3, 1.5) strides = (4, 8, 12, 6) pixels at stride 4.
    box_maps[sizes["p2"]][0, :, cell_h, cell_w] = torch.tensor([1.0, 2.0, 3.0, 1.5])
    model.pred_net.pred_cls, model.pred_net.pred_box = HandSetMap(cls_maps), HandSetMap(box_maps)
    model.pred_net.pred_ctr = HandSetMap(ctr_maps)
    boxes, classes, scores = model(torch.randn(1, 3, height, width), test_score_thresh=0.5)
    center_x, center_y = 4 * cell_w + 2, 4 * cell_h + 2  # (102, 14)
    assert boxes.tolist() == [[center_x - 4, center_y - 8, center_x + 12, center_y + 6]]
    assert classes.tolist() == [class_id] and scores[0] > 0.99


# Two boxes that do not overlap in a 96 (H) x 128 (W) image: a small one (20 x 16: every largest distance < 20,
# so P2 only) and a large one (80 x 50: largest distances 40 to 80, so P3 and P4).
ROW_ORDER_BOXES = [[100.0, 10.0, 120.0, 26.0, 1.0], [10.0, 20.0, 90.0, 70.0, 2.0]]
RANGES = {"p2": (0, 32), "p3": (32, 64), "p4": (64, 128), "p5": (128, math.inf)}


def _target_maps(height, width):
    """Reference targets in the (1, C, H, W) layout of a conv's output, from the FCOS rule written out per cell:
    cell (h, w) of a level of stride s sits at (s (w + 0.5), s (h + 0.5)). Returns per level the delta map
    (1, 4, H, W) / stride, the foreground mask (H, W) and the class map (H, W)."""
    maps = {}
    for name, s in STRIDES_P2.items():
        h, w = height // s, width // s
        ys, xs = torch.meshgrid(s * (torch.arange(h) + 0.5), s * (torch.arange(w) + 0.5), indexing="ij")  # [H, W]
        deltas, fg, classes = torch.zeros(4, h, w), torch.zeros(h, w, dtype=torch.bool), torch.full((h, w), -1)
        for x1, y1, x2, y2, c in ROW_ORDER_BOXES:
            d = torch.stack([xs - x1, ys - y1, x2 - xs, y2 - ys])  # [4, H, W]
            low, high = RANGES[name]
            hit = (d.min(0).values > 0) & (d.max(0).values > low) & (d.max(0).values < high)
            assert not (hit & fg).any()  # the boxes do not overlap: never two candidates
            deltas = torch.where(hit, d / s, deltas)
            fg, classes = fg | hit, torch.where(hit, torch.tensor(int(c)), classes)
        maps[name] = (deltas[None], fg, classes)
    return maps


def test_training_rows_of_targets_predictions_and_locations_agree_across_p2_to_p5():
    """Head maps set by hand, in (B, C, H, W) layout, to the reference targets: exact box deltas (L1 loss 0
    only if every prediction row meets its own target row) and class logits +12 at the right class of
    foreground cells, -12 elsewhere (focal loss ~0 only if the class rows meet theirs). A level concatenated
    out of order, or a transposed flattening, pairs rows with other targets: box loss > 0."""
    model = small_fcos(p2=True).train()
    height, width = 96, 128
    maps = _target_maps(height, width)
    assert {name: int(fg.sum()) for name, (_, fg, _) in maps.items()}["p2"] > 0
    assert sum(int(fg.sum()) > 0 for _, fg, _ in maps.values()) >= 3  # p2, p3 and p4 all hold positives
    box_maps, cls_maps = {}, {}
    for name, (deltas, fg, classes) in maps.items():
        size = tuple(fg.shape)
        box_maps[size] = deltas.expand(2, -1, -1, -1)
        one_hot = F.one_hot(classes.clamp(min=0), 3).permute(2, 0, 1) * fg  # [3, H, W]
        cls_maps[size] = (24.0 * one_hot - 12.0)[None].expand(2, -1, -1, -1)
    model.pred_net.pred_box, model.pred_net.pred_cls = HandSetMap(box_maps), HandSetMap(cls_maps)
    gt = torch.tensor([ROW_ORDER_BOXES, ROW_ORDER_BOXES])
    losses = model(torch.randn(2, 3, height, width), gt)
    assert losses["loss_box"].item() == 0.0
    # Focal loss of a logit of +-12 on the right side: at most 0.25 * sigmoid(-12)^2 * softplus(-12) ~ 4e-16.
    assert losses["loss_cls"].item() < 1e-9
    # The test can fail: each level given the next level's maps (resized) instead of its own.
    sizes = [tuple(fg.shape) for _, fg, _ in maps.values()]
    model.pred_net.pred_box = HandSetMap({sizes[i]: F.interpolate(box_maps[sizes[(i + 1) % 4]], size=sizes[i])
                                           for i in range(4)})
    assert model(torch.randn(2, 3, height, width), gt)["loss_box"].item() > 0.1


# -- train, infer, checkpoint round trip -----------------------------------------------------------------------


TINY = ["--num-train", "12", "--num-val", "4", "--image-size", "64", "--max-iters", "2", "--batch-size", "4",
        "--fpn-channels", "16", "--stem-channels", "16", "--log-period", "1", "--no-progress", "--threads", "1"]


def test_p2_trains_infers_and_round_trips_through_the_checkpoint(tmp_path):
    from eecs598.tools.detector import load_detector
    from eecs598.train.checkpoint import load_checkpoint

    data_dir, run_dir = tmp_path / "shapes", tmp_path / "run"
    argv = ["--dataset", "shapes", "--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY]
    metrics = train_fcos.main(argv + ["--fpn-p2", "--shape-size", "6", "24"])
    assert metrics["settings"]["p2"] is True and list(metrics["settings"]["shape_size"]) == [6, 24]
    with open(data_dir / "shapes_meta.json") as f:
        params = json.load(f)["params"]
    assert (params["min_size"], params["max_size"]) == (6, 24)

    checkpoint = load_checkpoint(str(run_dir / "checkpoint.pt"))
    assert checkpoint["run_config"]["p2"] is True
    loaded = load_detector(str(run_dir / "checkpoint.pt"))
    assert loaded.model.backbone.fpn_strides == STRIDES_P2
    state = loaded.model.state_dict()
    assert "backbone.fpn_params.output_p2.weight" in state
    assert all(torch.equal(state[k], v) for k, v in checkpoint["model"].items())

    # Inference: the rebuilt model gives the same detections as the one the run evaluated.
    image = ShapesDetection(str(data_dir), "val", image_size=64, generate=False)[0][1][None]
    boxes, classes, scores = loaded.model(image, test_score_thresh=0.0, test_nms_thresh=0.5)
    assert boxes.shape[1] == 4 and boxes.shape[0] == classes.shape[0] == scores.shape[0] > 0

    # --eval-only without the flags: the checkpoint's settings rebuild the P2 model and the same val images.
    again = train_fcos.main(argv + ["--eval-only"])
    assert again["settings"]["p2"] is True and again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-12)


def test_p2_flag_refusals_are_one_line():
    with pytest.raises(SystemExit):
        train_fcos.parse_args(["--dataset", "shapes", "--shape-size", "2", "24"])
    args = train_fcos.parse_args(["--dataset", "shapes"])
    assert args.p2 is False and args.shape_size is None
    from eecs598.tools.train_args import settings_problem

    args.shape_size = [30, 200]
    assert settings_problem(args) == "--shape-size must satisfy 4 <= MIN <= MAX <= --image-size (128), got 30 200"
    args.shape_size, args.p2 = None, "yes"
    assert settings_problem(args) == "--fpn-p2 must be True or False, got 'yes'"


# -- Shapes: the size range --------------------------------------------------------------------------------------


def test_shapes_size_range_default_is_the_generator_default_and_bytes_match(tmp_path):
    """``size_range=None`` (the default) writes byte-identical JSON to a dataset generated without it; a range
    makes every box at most its maximum (+1 px for the pixel-inclusive box convention)."""
    common = dict(image_size=64, num_train=3, num_val=2, seed=0, quiet=True)
    ShapesDetection(str(tmp_path / "a"), "train", **common)
    generate_shapes_dataset(str(tmp_path / "b"), max_size=64, **common)
    for name in ("shapes_train.json", "shapes_val.json", "images/train/000002.jpg", "images/val/000001.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    small = ShapesDetection(str(tmp_path / "c"), "train", size_range=(6, 12), **common)
    with open(tmp_path / "c" / "shapes_train.json") as f:
        sides = [max(o["xyxy"][2] - o["xyxy"][0], o["xyxy"][3] - o["xyxy"][1]) for _, objs in json.load(f) for o in objs]
    assert sides and max(sides) <= 12 + 1 and len(small) == 3
    with pytest.raises(ValueError, match="size_range must be None or"):
        ShapesDetection(str(tmp_path / "d"), "train", size_range=12, **common)
