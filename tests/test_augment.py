"""Tests for eecs598/augment.py: horizontal flip and scale jitter of images with their boxes, worked out by
hand (pixel blocks whose new position is known, box corners through the documented formula)."""
import pytest
import torch

from eecs598.data.augment import (draw_flip_scale_params, flip_scale_batch, hflip, random_flip_scale,
                             random_flip_scale_batch, scale_jitter, transform_boxes)

PAD = [-1.0] * 5


def block_image(height, width, x1, y1, x2, y2):
    """(3, H, W) zeros with ones on pixels [y1, y2) x [x1, x2)."""
    image = torch.zeros(3, height, width)
    image[:, y1:y2, x1:x2] = 1.0
    return image


def test_hflip_by_hand_and_padding_rows_kept():
    image = torch.arange(3 * 4 * 6, dtype=torch.float32).reshape(3, 4, 6)
    gt = torch.tensor([[1.0, 0.0, 3.0, 2.0, 4.0], PAD, [0.0, 1.0, 6.0, 4.0, 0.0]])
    before = (image.clone(), gt.clone())
    flipped, boxes = hflip(image, gt)
    for j in range(6):
        assert torch.equal(flipped[..., j], image[..., 5 - j])
    # (x1, x2) -> (W - x2, W - x1) with W = 6.
    assert boxes.tolist() == [[3.0, 0.0, 5.0, 2.0, 4.0], PAD, [0.0, 1.0, 6.0, 4.0, 0.0]]
    assert torch.equal(image, before[0]) and torch.equal(gt, before[1])  # inputs untouched
    again, boxes_again = hflip(flipped, boxes)
    assert torch.equal(again, image) and torch.equal(boxes_again, gt)


def test_hflip_box_still_covers_its_pixels():
    image = block_image(10, 20, 2, 3, 7, 8)  # object on columns 2..6
    gt = torch.tensor([[2.0, 3.0, 7.0, 8.0, 1.0]])
    flipped, boxes = hflip(image, gt)
    x1, y1, x2, y2 = (int(v) for v in boxes[0, :4])
    assert (x1, x2) == (13, 18)  # 20 - 7, 20 - 2
    assert flipped[:, y1:y2, x1:x2].min() == 1 and flipped.sum() == image.sum()


def test_scale_jitter_zoom_in_by_hand():
    """Scale 2 with offset (-50, -50) on 100x100: x -> 2x - 50. Box [30, 30, 60, 60] -> [10, 10, 70, 70];
    [0, 0, 20, 20] -> [-50, -50, -10, -10], off the canvas -> -1 row; [40, 40, 90, 90] -> [30, 30, 130, 130]
    clipped to [30, 30, 100, 100]; a -1 row stays -1."""
    image = block_image(100, 100, 30, 30, 60, 60)
    gt = torch.tensor([[30.0, 30.0, 60.0, 60.0, 1.0], [0.0, 0.0, 20.0, 20.0, 2.0], PAD,
                       [40.0, 40.0, 90.0, 90.0, 3.0]])
    out, boxes = scale_jitter(image, gt, 2.0, (-50.0, -50.0))
    assert boxes.tolist() == [[10.0, 10.0, 70.0, 70.0, 1.0], PAD, PAD, [30.0, 30.0, 100.0, 100.0, 3.0]]
    # Pixels: output column j samples input x = (j + 0.5 + 50) / 2; columns 11..68 fall between two
    # block pixels (value 1), column 10 samples x = 30.25 (3/4 of pixel 30, 1/4 of pixel 29), <= 8 and
    # >= 71 only background.
    assert torch.allclose(out[:, 11:69, 11:69], torch.ones(3, 58, 58), atol=1e-6)
    assert out[0, 40, 10].item() == pytest.approx(0.75, abs=1e-6)
    assert out[:, :9].abs().max() == 0 and out[:, :, 71:].abs().max() == 0


def test_scale_jitter_zoom_out_by_hand():
    """Scale 0.5 with offset (10, 20) on 100x100: (x, y) -> (x/2 + 10, y/2 + 20). Box [20, 40, 60, 80] ->
    [20, 40, 40, 60]; the image lands on [10, 60) x [20, 70) and the rest of the canvas is 0."""
    image = block_image(100, 100, 20, 40, 60, 80) + 0.5
    gt = torch.tensor([[20.0, 40.0, 60.0, 80.0, 7.0]])
    out, boxes = scale_jitter(image, gt, 0.5, (10.0, 20.0))
    assert boxes.tolist() == [[20.0, 40.0, 40.0, 60.0, 7.0]]
    placed = out[:, 20:70, 10:60]  # every pixel of the placed image, edge rows included (no dark seam)
    assert torch.allclose(placed, torch.where(placed > 1, 1.5, 0.5), atol=1e-6)
    assert torch.allclose(out[:, 42:58, 22:38], torch.full((3, 16, 16), 1.5), atol=1e-6)  # the object
    assert out[:, :19].abs().max() == 0 and out[:, 71:].abs().max() == 0
    assert out[:, :, :9].abs().max() == 0 and out[:, :, 61:].abs().max() == 0


def test_scale_one_offset_zero_is_the_identity():
    torch.manual_seed(0)
    image = torch.randn(3, 17, 23)
    gt = torch.tensor([[1.5, 2.0, 20.0, 16.0, 2.0], PAD])
    out, boxes = scale_jitter(image, gt, 1.0)
    assert torch.allclose(out, image, atol=1e-5)
    assert torch.equal(boxes, gt)


def test_flip_then_scale_boxes_by_hand():
    """W = 100, flip then scale 2, offset (-100, 0): x -> 2 (100 - x) - 100. Box x in [10, 30] -> the
    ends go to 80 and 40, so [40, 80]; y in [5, 20] -> [10, 40]."""
    gt = torch.tensor([[[10.0, 5.0, 30.0, 20.0, 1.0]]])
    assert transform_boxes(gt, True, 2.0, (-100.0, 0.0), 100, 100).tolist() == [[[40.0, 10.0, 80.0, 40.0, 1.0]]]
    # The pixels agree: a block on [10, 30) x [5, 20) ends up on [40, 80) x [10, 40).
    image = block_image(100, 100, 10, 5, 30, 20)[None]
    out, boxes = flip_scale_batch(image, gt, True, 2.0, (-100.0, 0.0))
    assert torch.allclose(out[0, :, 11:39, 41:79], torch.ones(3, 28, 38), atol=1e-6)
    assert out[0, :, :, :39].abs().max() == 0 and out[0, :, :, 81:].abs().max() == 0


def test_batched_equals_per_image_calls():
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 48)
    gt = torch.tensor([[[1.0, 2.0, 30.0, 20.0, 0.0], PAD],
                       [[10.0, 10.0, 47.0, 31.0, 1.0], [0.0, 0.0, 5.0, 5.0, 2.0]],
                       [PAD, PAD]])
    flip = torch.tensor([True, False, True])
    scale = torch.tensor([1.2, 0.8, 1.0])
    offset = torch.tensor([[-4.0, -3.0], [2.0, 5.0], [0.0, 0.0]])
    out, boxes = flip_scale_batch(images, gt, flip, scale, offset)
    for b in range(3):
        image, box = images[b], gt[b]
        if flip[b]:
            image, box = hflip(image, box)
        expected_image, expected_boxes = scale_jitter(image, box, float(scale[b]), offset[b].tolist())
        assert torch.allclose(out[b], expected_image, atol=1e-5)
        assert torch.allclose(boxes[b], expected_boxes, atol=1e-5)
    assert boxes[2].tolist() == [PAD, PAD]


def test_random_params_are_reproducible_and_in_range():
    gen = torch.Generator().manual_seed(0)
    flip, scale, offset = draw_flip_scale_params(2000, 64, 96, gen, flip_prob=0.5, scale_range=(0.75, 1.25))
    assert 0.45 < flip.float().mean() < 0.55
    assert scale.min() >= 0.75 and scale.max() <= 1.25 and scale.min() < 0.76 and scale.max() > 1.24
    size = torch.tensor([96.0, 64.0])
    low = torch.minimum(torch.zeros(2), (1 - scale[:, None]) * size)
    high = torch.maximum(torch.zeros(2), (1 - scale[:, None]) * size)
    assert bool(((offset >= low - 1e-4) & (offset <= high + 1e-4)).all())
    again = draw_flip_scale_params(2000, 64, 96, torch.Generator().manual_seed(0), flip_prob=0.5,
                                   scale_range=(0.75, 1.25))
    assert all(torch.equal(a, b) for a, b in zip((flip, scale, offset), again))
    never, ones, zeros = draw_flip_scale_params(5, 8, 8, gen, flip_prob=0.0, scale_range=None)
    assert not never.any() and torch.equal(ones, torch.ones(5)) and torch.equal(zeros, torch.zeros(5, 2))


def test_random_batch_applies_the_drawn_params():
    torch.manual_seed(2)
    images = torch.randn(4, 3, 40, 56)
    gt = torch.tensor([[[5.0, 6.0, 50.0, 30.0, 1.0], PAD]] * 4)
    out, boxes = random_flip_scale_batch(images, gt, torch.Generator().manual_seed(7), scale_range=(0.8, 1.25))
    flip, scale, offset = draw_flip_scale_params(4, 40, 56, torch.Generator().manual_seed(7), scale_range=(0.8, 1.25))
    expected_images, expected_boxes = flip_scale_batch(images, gt, flip, scale, offset)
    assert torch.equal(out, expected_images) and torch.equal(boxes, expected_boxes)
    assert (boxes[:, 1] == -1).all()


def test_zoom_in_never_shows_the_empty_border():
    """With scale >= 1 the drawn offset keeps the whole canvas inside the image: an all-ones image stays
    all ones (up to bilinear rounding)."""
    images = torch.ones(16, 3, 24, 40)
    gt = torch.full((16, 1, 5), -1.0)
    out, _ = random_flip_scale_batch(images, gt, torch.Generator().manual_seed(3), scale_range=(1.0, 1.5))
    assert torch.allclose(out, images, atol=1e-5)


def test_single_image_random_version_and_input_checks():
    image = block_image(16, 16, 4, 4, 8, 8)
    gt = torch.tensor([[4.0, 4.0, 8.0, 8.0, 0.0]])
    out, boxes = random_flip_scale(image, gt, torch.Generator().manual_seed(0), flip_prob=1.0, scale_range=None)
    assert torch.equal(boxes, torch.tensor([[8.0, 4.0, 12.0, 8.0, 0.0]]))
    assert torch.allclose(out, image.flip(-1), atol=1e-6)
    with pytest.raises(ValueError, match=r"image must have shape \(3, H, W\)"):
        hflip(torch.zeros(1, 3, 4, 4), gt)
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \(M, 5\)"):
        hflip(image, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="scale must be > 0"):
        scale_jitter(image, gt, 0.0)
    with pytest.raises(ValueError, match="scale_range"):
        random_flip_scale(image, gt, scale_range=(1.2, 0.8))
