"""Tests for the eecs598 utilities: seeding, rel_error and the drawing helpers."""
import random

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import eecs598
from eecs598.grad import rel_error
from eecs598.utils import detection_visualizer, tensor_to_image


def test_reset_seed_makes_all_generators_repeat():
    eecs598.reset_seed(123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    eecs598.reset_seed(123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_rel_error_hand_values():
    x = torch.tensor([1.0, 2.0, 3.0])
    y = torch.tensor([1.0, 2.0, 4.0])
    # max|x - y| = 1; max(|x| + |y|) = 7.
    assert rel_error(x, y) == pytest.approx(1 / 7)
    assert rel_error(x, x) == 0
    assert isinstance(rel_error(x, y), float)
    assert rel_error(torch.zeros(2), torch.zeros(2)) == 0  # eps keeps 0 / 0 away


def test_rel_error_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        rel_error(torch.zeros(2), torch.zeros(3))


def test_tensor_to_image():
    tensor = torch.zeros(3, 2, 4)
    tensor[0, 0, 0] = 1.0
    tensor[1, 1, 3] = 0.5
    image = tensor_to_image(tensor)
    assert image.shape == (2, 4, 3) and image.dtype == np.uint8
    assert image[0, 0, 0] == 255 and image[1, 3, 1] == 128 and image[0, 1, 2] == 0


def test_detection_visualizer_draws_gt_predictions_and_points():
    image = torch.rand(3, 64, 80)
    gt = torch.tensor([[5.0, 5.0, 30.0, 40.0, 1.0], [-1, -1, -1, -1, -1]])
    pred = torch.tensor([[10.0, 10.0, 50.0, 60.0, 0.0, 0.875]])
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    fig = detection_visualizer(image, {0: "cat", 1: "dog"}, bbox=gt, pred=pred, points=points, show=False)
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # padding row skipped
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["cat, 0.88", "dog"]
    assert ax.collections and ax.collections[0].get_offsets().shape == (2, 2)
    plt.close(fig)


def test_detection_visualizer_accepts_uint8_image_and_no_boxes():
    fig = detection_visualizer(np.zeros((10, 10, 3), np.uint8), {}, show=False)
    assert len(fig.axes[0].patches) == 0
    plt.close(fig)
