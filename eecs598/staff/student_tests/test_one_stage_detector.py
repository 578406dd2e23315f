"""Public tests of one_stage_detector.py: the notebook's published checks. A test of a function you have
not implemented yet is skipped; run ``python -m pytest tests`` as you go."""
import torch

import eecs598
from common import get_fpn_location_coords
from one_stage_detector import (FCOS, FCOSPredictionNetwork, fcos_apply_deltas_to_locations,
                                fcos_get_deltas_from_locations, fcos_make_centerness_targets)

INPUT_BOXES = torch.Tensor([[10, 15, 100, 115, 1], [30, 20, 40, 30, 1], [120, 100, 200, 200, 1]])
INPUT_LOCATIONS = torch.Tensor([[30, 40], [32, 29], [125, 150]])


def test_prediction_network_shapes(skip_unimplemented):
    pred_net = FCOSPredictionNetwork(num_classes=20, in_channels=64, stem_channels=[64, 64])
    feats = {"p3": torch.randn(2, 64, 28, 28), "p4": torch.randn(2, 64, 14, 14), "p5": torch.randn(2, 64, 7, 7)}
    with skip_unimplemented(), torch.no_grad():
        outputs = pred_net(feats)
    rows = {"p3": 784, "p4": 196, "p5": 49}
    for output, channels in zip(outputs, (20, 4, 1)):
        assert {name: tuple(value.shape) for name, value in output.items()} == {
            name: (2, count, channels) for name, count in rows.items()}


def test_prediction_rows_follow_location_rows(skip_unimplemented):
    """The notebook's check on a non-square map (H = 3, W = 5): prediction row i is location row i's pixel."""
    eecs598.reset_seed(0)
    pred_net = FCOSPredictionNetwork(num_classes=20, in_channels=64, stem_channels=[64, 64])
    feature = torch.randn(1, 64, 3, 5)
    with skip_unimplemented(), torch.no_grad():
        locations = get_fpn_location_coords({"p3": feature.shape}, {"p3": 8})["p3"]
        class_logits = pred_net({"p3": feature})[0]["p3"][0]
        class_map = pred_net.pred_cls(pred_net.stem_cls(feature))[0]
    x_index = (locations[:, 0] / 8 - 0.5).long()
    y_index = (locations[:, 1] / 8 - 0.5).long()
    assert torch.allclose(class_logits, class_map[:, y_index, x_index].T, rtol=0, atol=1e-6)


def test_deltas_round_trip(skip_unimplemented):
    with skip_unimplemented():
        deltas = fcos_get_deltas_from_locations(INPUT_LOCATIONS, INPUT_BOXES, stride=8)
        output_boxes = fcos_apply_deltas_to_locations(deltas, INPUT_LOCATIONS, stride=8)
    assert torch.equal(output_boxes, INPUT_BOXES[:, :4])


def test_background_deltas(skip_unimplemented):
    location = torch.Tensor([[100, 200]])
    with skip_unimplemented():
        deltas = fcos_get_deltas_from_locations(location, torch.Tensor([[-1, -1, -1, -1, -1]]), stride=8)
        box = fcos_apply_deltas_to_locations(deltas, location, stride=8)
    assert torch.equal(deltas, -torch.ones(1, 4))
    assert torch.equal(box, torch.Tensor([[100, 200, 100, 200]]))


def test_centerness(skip_unimplemented):
    boxes = INPUT_BOXES.clone()
    boxes[2] = -1
    with skip_unimplemented():
        deltas = fcos_get_deltas_from_locations(INPUT_LOCATIONS, boxes, stride=8)
        centerness = fcos_make_centerness_targets(deltas)
    assert torch.allclose(centerness, torch.Tensor([0.30860671401, 0.1666666716, -1.0]), rtol=1e-6, atol=1e-7)


def test_fcos_losses_and_inference_run(skip_unimplemented):
    eecs598.reset_seed(0)
    detector = FCOS(num_classes=5, fpn_channels=32, stem_channels=[32, 32], pretrained=False)
    images = torch.randn(2, 3, 128, 128)
    gt_boxes = torch.Tensor([[[10, 20, 100, 110, 3], [-1, -1, -1, -1, -1]], [[0, 0, 60, 40, 1], [40, 40, 128, 128, 0]]])
    detector.train()
    with skip_unimplemented():
        losses = detector(images, gt_boxes)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    assert all(torch.isfinite(loss) and loss.dim() == 0 for loss in losses.values())
    detector.eval()
    with skip_unimplemented(), torch.no_grad():
        boxes, classes, scores = detector(images[:1], test_score_thresh=0.05, test_nms_thresh=0.5)
    assert boxes.shape == (len(scores), 4) and classes.shape == scores.shape == (len(scores),)
    assert classes.dtype == torch.long
