"""Tests of eecs598.data.transforms: normalisation, and whole-image inputs for predict / export."""
import numpy as np
import pytest
import torch
from PIL import Image

from eecs598.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, boxes_to_original, inference_size, normalize,
                                     prepare_image, unnormalize)


def test_normalize_and_unnormalize_are_inverse_and_use_imagenet_statistics():
    image = torch.rand(3, 5, 7)
    out = normalize(image)
    assert torch.allclose(out[1, 2, 3], (image[1, 2, 3] - IMAGENET_MEAN[1]) / IMAGENET_STD[1])
    assert torch.allclose(unnormalize(out), image, atol=1e-6)


@pytest.mark.parametrize("size, expected", [
    ((500, 375), (299, 224, 224 / 375)),   # landscape VOC photo: shorter side 224
    ((375, 500), (224, 299, 224 / 375)),   # portrait
    ((224, 224), (224, 224, 1.0)),
    ((2000, 100), (373, 19, 373 / 2000)),  # a panorama: the longer side is capped at 373 = round(224 * 1333 / 800)
])
def test_inference_size_by_hand(size, expected):
    width, height, scale = inference_size(*size, image_size=224, max_size=373)
    assert (width, height) == expected[:2] and scale == pytest.approx(expected[2])


def test_prepare_image_pads_to_a_multiple_of_32_with_the_mean_colour_and_maps_boxes_back():
    pixels = np.full((375, 500, 3), 255, dtype=np.uint8)  # white, 500 wide x 375 high
    tensor, scale, original = prepare_image(Image.fromarray(pixels), 224)
    assert original == (500, 375) and scale == pytest.approx(224 / 375)
    assert tensor.shape == (3, 224, 320)  # 299 wide -> padded to 320; 224 high already a multiple of 32
    white = normalize(torch.ones(3, 1, 1))[:, 0, 0]
    assert torch.allclose(tensor[:, 100, 100], white, atol=1e-5)
    assert torch.equal(tensor[:, :, 299:], torch.zeros(3, 224, 21))  # padding = 0 = the mean colour
    boxes = torch.tensor([[0.0, 0.0, 299.0, 224.0], [10.0, 20.0, 400.0, 60.0]])
    back = boxes_to_original(boxes, scale, original)
    # 299 / (224 / 375) = 500.56 -> clipped to the photo's 500; 224 / (224 / 375) = 375.
    assert torch.allclose(back[0], torch.tensor([0.0, 0.0, 500.0, 375.0]), atol=1e-4)
    assert torch.allclose(back[1], torch.tensor([10 * 375 / 224, 20 * 375 / 224, 500.0, 60 * 375 / 224]), atol=1e-4)


def test_prepare_image_accepts_arrays_and_greyscale():
    tensor, _, original = prepare_image(np.zeros((40, 60, 3), dtype=np.uint8), 32)
    assert original == (60, 40) and tensor.shape == (3, 32, 64)
    tensor, _, _ = prepare_image(Image.new("L", (64, 64), 128), 64)
    assert tensor.shape == (3, 64, 64)
