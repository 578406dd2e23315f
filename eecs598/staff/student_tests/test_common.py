"""Public tests of common.py: the notebook's published checks. A test of a function you have not
implemented yet is skipped; run ``python -m pytest tests`` as you go."""
import torch
import torchvision

import eecs598
from common import DetectorBackboneWithFPN, class_spec_nms, get_fpn_location_coords, nms


def test_fpn_shapes(skip_unimplemented):
    backbone = DetectorBackboneWithFPN(out_channels=64, pretrained=False)
    with skip_unimplemented(), torch.no_grad():
        feats = backbone(torch.randn(2, 3, 224, 224))
    assert list(feats) == ["p3", "p4", "p5"]
    assert {name: tuple(feat.shape) for name, feat in feats.items()} == {
        "p3": (2, 64, 28, 28), "p4": (2, 64, 14, 14), "p5": (2, 64, 7, 7)}


def test_fpn_location_coords(skip_unimplemented):
    shapes = {"p3": (2, 64, 28, 28), "p4": (2, 64, 14, 14), "p5": (2, 64, 7, 7)}
    with skip_unimplemented():
        locations = get_fpn_location_coords(shapes, {"p3": 8, "p4": 16, "p5": 32})
    expected = {
        "p3": [[4.0, 4.0], [4.0, 12.0], [4.0, 20.0], [4.0, 28.0], [4.0, 36.0]],
        "p4": [[8.0, 8.0], [8.0, 24.0], [8.0, 40.0], [8.0, 56.0], [8.0, 72.0]],
        "p5": [[16.0, 16.0], [16.0, 48.0], [16.0, 80.0], [16.0, 112.0], [16.0, 144.0]],
    }
    for name, size in (("p3", 28), ("p4", 14), ("p5", 7)):
        assert locations[name].shape == (size * size, 2)
        assert locations[name][:5].tolist() == expected[name]


def _notebook_nms_workload():
    eecs598.reset_seed(0)
    boxes = (100.0 * torch.rand(5000, 4)).round()
    boxes[:, 2] = boxes[:, 2] + boxes[:, 0] + 1.0
    boxes[:, 3] = boxes[:, 3] + boxes[:, 1] + 1.0
    return boxes, torch.randn(5000)


def test_nms_identical_to_torchvision(skip_unimplemented):
    boxes, scores = _notebook_nms_workload()
    for iou_threshold in (0.3, 0.5, 0.7):
        with skip_unimplemented():
            keep = nms(boxes, scores, iou_threshold)
        assert keep.dtype == torch.long
        assert torch.equal(keep, torchvision.ops.nms(boxes, scores, iou_threshold)), iou_threshold


def test_class_spec_nms_with_your_nms(skip_unimplemented):
    boxes, scores = _notebook_nms_workload()
    boxes, scores = boxes[:1000], scores[:1000]
    class_ids = torch.arange(1000) % 7
    with skip_unimplemented():
        keep = class_spec_nms(boxes, scores, class_ids, 0.5)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, class_ids, 0.5))
