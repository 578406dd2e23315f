"""Tests for common.py: FPN backbone shapes, location coordinates and hand-written NMS.

NMS results are compared with torchvision.ops.nms (an independent implementation) and with a tiny,
obviously-correct loop written below; location values come from the published notebook check.
"""
import os
import time
import urllib.error
import warnings

import pytest
import torch
import torchvision

import common
from common import DetectorBackboneWithFPN, class_spec_nms, get_fpn_location_coords, nms
from eecs598.grad import rel_error


# -- helpers -------------------------------------------------------------------------------------


def notebook_nms_workload(num_boxes: int, seed: int):
    """The notebook's NMS benchmark input: integer boxes in [0, 200], widths >= 1, randn scores."""
    generator = torch.Generator().manual_seed(seed)
    boxes = (100 * torch.rand(num_boxes, 4, generator=generator)).round()
    boxes[:, 2] = boxes[:, 2] + boxes[:, 0] + 1
    boxes[:, 3] = boxes[:, 3] + boxes[:, 1] + 1
    scores = torch.randn(num_boxes, generator=generator)
    return boxes, scores


def reference_nms(boxes, scores, threshold):
    """Textbook greedy NMS, one box at a time, IoU in float64 (fine away from exact ties)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        x1, y1, x2, y2 = boxes[i].tolist()
        suppressed = False
        for j in kept:
            a1, b1, a2, b2 = boxes[j].tolist()
            iw = max(0.0, min(x2, a2) - max(x1, a1))
            ih = max(0.0, min(y2, b2) - max(y1, b1))
            inter = iw * ih
            union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
            if inter / union > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


# -- hello ---------------------------------------------------------------------------------------


def test_hello_common(capsys):
    common.hello_common()
    assert capsys.readouterr().out == "Hello from common.py!\n"


# -- backbone + FPN --------------------------------------------------------------------------------


def test_backbone_shapes_224():
    backbone = DetectorBackboneWithFPN(out_channels=64, pretrained=False)
    assert backbone.fpn_strides == {"p3": 8, "p4": 16, "p5": 32}
    assert backbone.out_channels == 64
    assert len(backbone.fpn_params) == 6
    feats = backbone(torch.randn(2, 3, 224, 224))
    assert list(feats.keys()) == ["p3", "p4", "p5"]
    assert feats["p3"].shape == (2, 64, 28, 28)
    assert feats["p4"].shape == (2, 64, 14, 14)
    assert feats["p5"].shape == (2, 64, 7, 7)


def test_backbone_intermediate_channels():
    backbone = DetectorBackboneWithFPN(out_channels=16, pretrained=False)
    c_feats = backbone.backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in c_feats.items()} == {
        "c3": (1, 64, 8, 12), "c4": (1, 160, 4, 6), "c5": (1, 400, 2, 3)
    }


@pytest.mark.parametrize("height,width", [(192, 320), (200, 249)])
def test_backbone_non_square_and_odd_sizes(height, width):
    backbone = DetectorBackboneWithFPN(out_channels=8, pretrained=False)
    feats = backbone(torch.randn(1, 3, height, width))
    for name, stride in backbone.fpn_strides.items():
        # RegNet's stride-2 convs (padding 1) round up.
        assert feats[name].shape[-2:] == (-(-height // stride), -(-width // stride))


def test_offline_weights_warn_once_and_fall_back(monkeypatch, tmp_path):
    """No network: construction returns quickly, warns once naming the file and directory."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(common, "_weights_unavailable_reason", None)
    calls = []

    def unreachable(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DetectorBackboneWithFPN(out_channels=8)
        DetectorBackboneWithFPN(out_channels=8)
    assert time.monotonic() - start < 60, "building without network must not hang"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    expected_path = os.path.join(str(tmp_path), "checkpoints", "regnet_x_400mf-adf1edd5.pth")
    assert expected_path in messages[0]
    assert os.path.join(str(tmp_path), "checkpoints") in messages[0]
    assert "pretrained=False" in messages[0]
    assert len(calls) == 1, "the download is attempted once per process, not per model"


def test_pretrained_false_does_not_try_download(monkeypatch):
    def must_not_download(*args, **kwargs):
        raise AssertionError("pretrained=False must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", must_not_download)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DetectorBackboneWithFPN(out_channels=8, pretrained=False)


def test_weights_found_offline_in_cache_dir(monkeypatch, tmp_path):
    """A weight file placed where the warning says is loaded without network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("no download expected")))
    reference = torchvision.models.regnet_x_400mf(weights=None)
    path = common.imagenet_weights_path()
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = DetectorBackboneWithFPN(out_channels=8, pretrained=True)
    loaded = backbone.backbone.state_dict()
    assert torch.equal(loaded["stem.0.weight"], reference.state_dict()["stem.0.weight"])


# -- locations -----------------------------------------------------------------------------------


def test_fpn_locations_published_check():
    shapes = {"p3": (2, 64, 28, 28), "p4": (2, 64, 14, 14), "p5": (2, 64, 7, 7)}
    locations = get_fpn_location_coords(shapes, {"p3": 8, "p4": 16, "p5": 32})
    expected = {
        "p3": torch.tensor([[4.0, 4.0], [4.0, 12.0], [4.0, 20.0], [4.0, 28.0], [4.0, 36.0]]),
        "p4": torch.tensor([[8.0, 8.0], [8.0, 24.0], [8.0, 40.0], [8.0, 56.0], [8.0, 72.0]]),
        "p5": torch.tensor([[16.0, 16.0], [16.0, 48.0], [16.0, 80.0], [16.0, 112.0], [16.0, 144.0]]),
    }
    for name in expected:
        assert locations[name].shape == (shapes[name][2] * shapes[name][3], 2)
        assert rel_error(locations[name][:5], expected[name]) == 0


def test_fpn_locations_x_major_on_non_square_map():
    # H = 2 rows, W = 3 columns, stride 10: x is the slow index.
    locations = get_fpn_location_coords({"p3": (1, 1, 2, 3)}, {"p3": 10}, dtype=torch.float64)["p3"]
    expected = torch.tensor([[5, 5], [5, 15], [15, 5], [15, 15], [25, 5], [25, 15]], dtype=torch.float64)
    assert locations.dtype == torch.float64
    assert torch.equal(locations, expected)


# -- nms -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_identical_to_torchvision_on_notebook_workload(seed, threshold):
    boxes, scores = notebook_nms_workload(5000, seed)
    ours = nms(boxes, scores, threshold)
    theirs = torchvision.ops.nms(boxes, scores, threshold)
    assert ours.dtype == torch.long
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_textbook_loop_on_small_random_sets(seed):
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.rand(60, 4, generator=generator, dtype=torch.float64) * 50
    boxes[:, 2:] = boxes[:, :2] + 1 + torch.rand(60, 2, generator=generator, dtype=torch.float64) * 30
    scores = torch.rand(60, generator=generator, dtype=torch.float64)
    assert nms(boxes, scores, 0.4).tolist() == reference_nms(boxes, scores, 0.4)


def test_nms_tied_scores_keep_input_order():
    # Three identical boxes with equal scores and one disjoint box with the same score.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    ours = nms(boxes, scores, 0.5)
    assert ours.tolist() == [0, 2]
    assert torch.equal(ours, torchvision.ops.nms(boxes, scores, 0.5))


def test_nms_many_ties_agree_with_torchvision():
    boxes, _ = notebook_nms_workload(2000, seed=7)
    scores = torch.randint(0, 5, (2000,), generator=torch.Generator().manual_seed(3)).float()
    for threshold in (0.3, 0.5, 0.7):
        assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_iou_exactly_at_threshold(dtype):
    # Box 1 covers half of box 0: IoU = 50 / 100 = 0.5 exactly -> NOT suppressed at 0.5 (strict >),
    # suppressed at 0.49.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=dtype)
    scores = torch.tensor([0.9, 0.8], dtype=dtype)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    # IoU = 30 / 100: in float32 that is 0.300000012 > 0.3 (double), so torchvision suppresses;
    # in float64 it is exactly 0.3 and kept. Both must agree with torchvision.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 3]], dtype=dtype)
    for threshold in (0.3, 0.7, 0.1):
        assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_nms_boundary_ious_on_grid_agree_with_torchvision():
    """Integer boxes on a small grid produce many IoUs that are simple fractions (1/2, 1/3, 3/10 ...)."""
    coords = torch.tensor([0.0, 2.0, 3.0, 5.0, 6.0, 10.0])
    grid = torch.cartesian_prod(coords, coords, coords, coords)
    boxes = grid[(grid[:, 2] > grid[:, 0]) & (grid[:, 3] > grid[:, 1])]
    scores = torch.randn(boxes.shape[0], generator=torch.Generator().manual_seed(0))
    for threshold in (0.2, 0.25, 0.3, 1 / 3, 0.4, 0.5, 0.6, 2 / 3, 0.75):
        assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)), threshold


def test_nms_empty_input():
    kept = nms(torch.zeros(0, 4), torch.zeros(0))
    assert kept.dtype == torch.long and kept.shape == (0,)


def test_nms_float64():
    boxes, scores = notebook_nms_workload(1000, seed=5)
    boxes, scores = boxes.double(), scores.double()
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_nms_rejects_bad_threshold_and_shapes():
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(torch.zeros(1, 4), torch.zeros(1), 1.5)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3))


def test_class_spec_nms_never_suppresses_across_classes():
    # Identical boxes of three different classes: all kept, sorted by score.
    boxes = torch.tensor([[0, 0, 10, 10]] * 3 + [[1, 1, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.3])
    class_ids = torch.tensor([0, 1, 2, 1])
    assert class_spec_nms(boxes, scores, class_ids, 0.5).tolist() == [1, 2, 0]


def test_class_spec_nms_with_negative_coordinates():
    # With boxes.max() + 1 as offset, class 1's box would land on class 0's; the span offset does not.
    boxes = torch.tensor([[-20.0, -20.0, -10.0, -10.0], [-20.0, -20.0, -10.0, -10.0]])
    kept = class_spec_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
    assert kept.tolist() == [0, 1]


@pytest.mark.parametrize("seed", [0, 1])
def test_class_spec_nms_agrees_with_torchvision_batched_nms(seed):
    boxes, scores = notebook_nms_workload(3000, seed)
    class_ids = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(seed))
    ours = class_spec_nms(boxes, scores, class_ids, 0.5)
    theirs = torchvision.ops.batched_nms(boxes, scores, class_ids, 0.5)
    assert torch.equal(ours, theirs)


def test_class_spec_nms_empty_input():
    kept = class_spec_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert kept.dtype == torch.long and kept.shape == (0,) and kept.device == torch.device("cpu")


# -- nms: inputs that stress the blocked algorithm -----------------------------------------------


def chain_of_boxes(num_boxes: int, step: float):
    """Boxes 10 wide sliding right by ``step``: each overlaps its neighbour with IoU
    ``(10 - step) / (10 + step)`` and the box after next with ``(10 - 2 step) / (10 + 2 step)``."""
    x1 = torch.arange(num_boxes, dtype=torch.float32) * step
    return torch.stack([x1, torch.zeros(num_boxes), x1 + 10, torch.full((num_boxes,), 10.0)], dim=1)


@pytest.mark.parametrize("step, threshold", [(2.0, 0.5), (3.0, 0.5), (1.0, 0.7)])
def test_nms_long_suppression_chain_agrees_with_torchvision(step, threshold):
    # With decreasing scores along the chain, box i's fate depends on box i-1's, which depends on
    # box i-2's, ... through every block: the intra-block resolution needs one round per two boxes
    # (the slowest case), and each block must start from the previous block's survivors.
    boxes = chain_of_boxes(700, step)
    scores = -torch.arange(700, dtype=torch.float32)
    kept = nms(boxes, scores, threshold)
    assert kept.tolist() == list(range(0, 700, 2))
    assert torch.equal(kept, torchvision.ops.nms(boxes, scores, threshold))
    scores = torch.rand(700, generator=torch.Generator().manual_seed(0))
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_nms_zero_area_boxes_agree_with_torchvision():
    # About 20% of these boxes have zero width or height: IoUs of 0 / 0 = NaN must never suppress.
    generator = torch.Generator().manual_seed(0)
    boxes = (20 * torch.rand(3000, 4, generator=generator)).round()
    boxes[:, 2:] = boxes[:, :2] + (5 * torch.rand(3000, 2, generator=generator)).round()
    scores = torch.randn(3000, generator=generator)
    for threshold in (0.0, 0.3, 0.7, 1.0):
        assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_nms_many_duplicates_and_large_input_agree_with_torchvision():
    # 20000 boxes drawn from 300 distinct ones: most are deleted by the first kept blocks.
    distinct, _ = notebook_nms_workload(300, seed=11)
    generator = torch.Generator().manual_seed(12)
    boxes = distinct[torch.randint(0, 300, (20000,), generator=generator)]
    scores = torch.randn(20000, generator=generator)
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_nms_accepts_boxes_that_require_grad_and_restores_thread_count():
    boxes, scores = notebook_nms_workload(500, seed=3)
    threads = torch.get_num_threads()
    kept = nms(boxes.requires_grad_(), scores, 0.5)
    assert torch.get_num_threads() == threads
    assert torch.equal(kept, torchvision.ops.nms(boxes.detach(), scores, 0.5))


@pytest.mark.parametrize("num_boxes", [800, 4000])  # torchvision's two code paths: offsets / per class
def test_class_spec_nms_non_integer_float64_boxes_agree_with_batched_nms(num_boxes):
    generator = torch.Generator().manual_seed(num_boxes)
    boxes = torch.rand(num_boxes, 4, generator=generator, dtype=torch.float64) * 300
    boxes[:, 2:] = boxes[:, :2] + 1 + torch.rand(num_boxes, 2, generator=generator, dtype=torch.float64) * 80
    scores = torch.rand(num_boxes, generator=generator, dtype=torch.float64)
    class_ids = torch.randint(0, 5, (num_boxes,), generator=generator)
    for threshold in (0.3, 0.5):
        ours = class_spec_nms(boxes, scores, class_ids, threshold)
        assert torch.equal(ours, torchvision.ops.batched_nms(boxes, scores, class_ids, threshold))


def test_class_spec_nms_skewed_class_sizes_agree_with_per_class_nms():
    # One class with most boxes, many tiny classes (blocks then span several classes), and unsorted,
    # non-contiguous class ids.
    boxes, scores = notebook_nms_workload(3000, seed=4)
    generator = torch.Generator().manual_seed(5)
    class_ids = torch.where(torch.rand(3000, generator=generator) < 0.8, torch.tensor(7),
                            torch.randint(0, 60, (3000,), generator=generator) * 3)
    ours = class_spec_nms(boxes, scores, class_ids, 0.5)
    expected = torch.cat([
        (class_ids == c).nonzero().squeeze(1)[torchvision.ops.nms(boxes[class_ids == c], scores[class_ids == c], 0.5)]
        for c in class_ids.unique()
    ])
    expected = expected[scores[expected].sort(descending=True, stable=True).indices]
    assert torch.equal(ours, expected)


# -- obscure inputs made clear (issue 10, item 8) ------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "list"])
def test_nms_refuses_arrays_and_lists_with_a_clear_type_error(kind):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    scores = torch.tensor([0.9, 0.8])
    convert = (lambda t: t.numpy()) if kind == "numpy" else (lambda t: t.tolist())
    expected_type = "ndarray" if kind == "numpy" else "list"
    for args, name in (((convert(boxes), scores), "boxes"), ((boxes, convert(scores)), "scores")):
        with pytest.raises(TypeError, match=rf"nms: {name} must be a torch.Tensor, got {expected_type}.*as_tensor"):
            nms(*args, 0.5)
    with pytest.raises(TypeError, match=rf"class_spec_nms: class_ids must be a torch.Tensor, got {expected_type}"):
        class_spec_nms(boxes, scores, convert(torch.tensor([0, 1])), 0.5)


def test_class_spec_nms_accepts_boolean_class_ids_like_torchvision():
    # Two overlapping boxes of class True and one of class False on top of them: only the True pair suppresses.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    class_ids = torch.tensor([True, True, False])
    expected = torchvision.ops.batched_nms(boxes, scores, class_ids, 0.5)
    assert expected.tolist() == [0, 2]  # IoU(0, 1) = 81 / 119 > 0.5
    assert class_spec_nms(boxes, scores, class_ids, 0.5).tolist() == expected.tolist()
