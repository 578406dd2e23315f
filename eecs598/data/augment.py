"""Training augmentations for detection: horizontal flip and scale jitter, with boxes transformed exactly.

Pure functions (inputs are never modified) on an image ``(3, H, W)`` with its GT rows ``(M, 5)``, and a
batched version on ``(B, 3, H, W)`` + ``(B, M, 5)`` that runs on the images' device (one ``grid_sample``
for the whole batch), for a device-resident image cache.

Geometry (pixel-edge coordinates: pixel ``j`` covers ``[j, j + 1)``; boxes are XYXY in these units, as
everywhere in this package). The output canvas has the input's size ``(H, W)``; an input point
``(x, y)`` goes to::

    u = scale * f(x) + offset_x,   v = scale * y + offset_y,   f(x) = W - x if flipped else x

So ``scale > 1`` zooms in (part of the image is cut off), ``scale < 1`` zooms out (the rest of the
canvas is filled with 0, the mean colour of an ImageNet-normalised image), and ``offset`` places the
scaled image on the canvas. Boxes are mapped by the same formula (x1 and x2 swap under a flip), then
clipped to the canvas; a box left with zero width or height becomes a ``-1`` row, like the boxes a
dataset's crop empties. ``-1`` padding rows stay ``-1`` and keep their positions, so ``M`` never changes.

Pixels are resampled bilinearly at the output pixel centres (``align_corners=False``): a pure flip is
exact (``torch.flip``); for a zoom out the bilinear sampling does not low-pass filter first, which is
fine for the moderate factors of scale jitter (0.75-1.33). Within the scaled image's extent the edge pixels are repeated up to its
border (no dark seam); an output pixel whose centre falls outside the scaled image is 0.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

__all__ = [
    "hflip",
    "scale_jitter",
    "transform_boxes",
    "flip_scale_batch",
    "draw_flip_scale_params",
    "random_flip_scale",
    "random_flip_scale_batch",
]


# -- helpers ------------------------------------------------------------------------------------------


def _check_image_and_boxes(image: torch.Tensor, gt_boxes: torch.Tensor, batched: bool) -> None:
    dims = 4 if batched else 3
    layout = "(B, 3, H, W)" if batched else "(3, H, W)"
    if image.dim() != dims or image.shape[-3] != 3:
        raise ValueError(f"image must have shape {layout}, got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be floating point, got {image.dtype}")
    box_layout = "(B, M, 5)" if batched else "(M, 5)"
    if gt_boxes.dim() != dims - 1 or gt_boxes.shape[-1] != 5 or (batched and gt_boxes.shape[0] != image.shape[0]):
        raise ValueError(f"gt_boxes must have shape {box_layout} with rows (x1, y1, x2, y2, class_id), "
                         f"got {tuple(gt_boxes.shape)} for images {tuple(image.shape)}")


def _per_image(value, batch_size: int, dtype, device, name: str, last: Tuple[int, ...] = ()) -> torch.Tensor:
    """A scalar, sequence or tensor -> a ``(B, *last)`` tensor."""
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    try:
        return tensor.expand(batch_size, *last) if tensor.dim() <= len(last) else tensor.reshape(batch_size, *last)
    except RuntimeError as error:
        raise ValueError(f"{name} must be one value or one per image ({batch_size}), got shape "
                         f"{tuple(tensor.shape)}") from error


# -- boxes --------------------------------------------------------------------------------------------


def transform_boxes(gt_boxes: torch.Tensor, flip, scale, offset, width: int, height: int) -> torch.Tensor:
    """Map GT rows through ``u = scale * f(x) + offset_x``, ``v = scale * y + offset_y`` (see the module
    docstring), clip them to the ``width x height`` canvas, and turn emptied boxes into ``-1`` rows.

    Args:
        gt_boxes: ``(B, M, 5)`` or ``(M, 5)`` rows ``(x1, y1, x2, y2, class_id)``; padding rows ``-1``.
        flip: bool, or ``(B,)`` bool per image: flip horizontally first (``f(x) = width - x``).
        scale: float or ``(B,)``, > 0.
        offset: ``(offset_x, offset_y)`` or ``(B, 2)``, in output pixels.
        width, height: canvas size (the input's).

    Returns:
        Same shape and dtype as ``gt_boxes``; a new tensor.
    """
    single = gt_boxes.dim() == 2
    boxes = gt_boxes[None] if single else gt_boxes
    batch_size, dtype, device = boxes.shape[0], boxes.dtype, boxes.device
    flip = _per_image(flip, batch_size, torch.bool, device, "flip")[:, None]  # [B, 1]
    scale = _per_image(scale, batch_size, dtype, device, "scale")[:, None]
    offset = _per_image(offset, batch_size, dtype, device, "offset", (2,))[:, None, :]  # [B, 1, 2]

    x1 = torch.where(flip, width - boxes[..., 2], boxes[..., 0])  # [B, M]
    x2 = torch.where(flip, width - boxes[..., 0], boxes[..., 2])
    x1 = (scale * x1 + offset[..., 0]).clamp(0, width)
    x2 = (scale * x2 + offset[..., 0]).clamp(0, width)
    y1 = (scale * boxes[..., 1] + offset[..., 1]).clamp(0, height)
    y2 = (scale * boxes[..., 3] + offset[..., 1]).clamp(0, height)
    mapped = torch.stack([x1, y1, x2, y2, boxes[..., 4]], dim=-1)
    keep = (boxes[..., 4] != -1) & (x2 > x1) & (y2 > y1)  # [B, M]
    out = torch.where(keep[..., None], mapped, torch.full_like(mapped, -1))
    return out[0] if single else out


# -- images -------------------------------------------------------------------------------------------


def flip_scale_batch(images: torch.Tensor, gt_boxes: torch.Tensor, flip, scale, offset) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flip and/or rescale every image of a batch with its own parameters, in one ``grid_sample``.

    Args:
        images: ``(B, 3, H, W)`` float images (any normalisation; 0 fills uncovered canvas).
        gt_boxes: ``(B, M, 5)`` GT rows, ``-1`` padding.
        flip: bool or ``(B,)`` bool; scale: float or ``(B,)``; offset: ``(2,)`` or ``(B, 2)`` ``(x, y)``,
            as in :func:`transform_boxes`.

    Returns:
        ``(images (B, 3, H, W), gt_boxes (B, M, 5))``, new tensors on the inputs' device and dtype.
    """
    _check_image_and_boxes(images, gt_boxes, batched=True)
    batch_size, _, height, width = images.shape
    dtype, device = images.dtype, images.device
    flip_t = _per_image(flip, batch_size, torch.bool, device, "flip")
    scale_t = _per_image(scale, batch_size, dtype, device, "scale")
    offset_t = _per_image(offset, batch_size, dtype, device, "offset", (2,))
    if not bool((scale_t > 0).all()):
        raise ValueError(f"scale must be > 0, got {scale_t.tolist()}")

    # Output pixel centres -> input coordinates (inverse of the forward map), then grid_sample's
    # normalised coordinates: -1 and 1 are the outer edges of the input (align_corners=False).
    u = torch.arange(width, dtype=dtype, device=device) + 0.5  # [W]
    v = torch.arange(height, dtype=dtype, device=device) + 0.5  # [H]
    x = (u[None, :] - offset_t[:, :1]) / scale_t[:, None]  # [B, W]
    x = torch.where(flip_t[:, None], width - x, x)
    y = (v[None, :] - offset_t[:, 1:]) / scale_t[:, None]  # [B, H]
    grid = torch.stack([(2 * x / width - 1)[:, None, :].expand(-1, height, -1),
                        (2 * y / height - 1)[:, :, None].expand(-1, -1, width)], dim=-1)  # [B, H, W, 2]
    # Inside the image's extent [0, W] x [0, H] the edge pixels are repeated (as a resize does: a
    # sample between the outer edge and the first pixel centre must not blend with a zero border);
    # outside it the canvas is empty (0).
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside_x = (x >= 0) & (x <= width)  # [B, W]
    inside_y = (y >= 0) & (y <= height)  # [B, H]
    out = out * (inside_y[:, None, :, None] & inside_x[:, None, None, :]).to(out.dtype)
    return out, transform_boxes(gt_boxes, flip_t, scale_t, offset_t, width, height)


def hflip(image: torch.Tensor, gt_boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mirror an image left-right with its boxes: pixel column ``j`` -> ``W - 1 - j``, box
    ``(x1, y1, x2, y2)`` -> ``(W - x2, y1, W - x1, y2)``; ``-1`` rows stay ``-1``. Exact.

    Args:
        image: ``(3, H, W)`` float image.
        gt_boxes: ``(M, 5)`` GT rows.

    Returns:
        ``(image (3, H, W), gt_boxes (M, 5))``, new tensors.
    """
    _check_image_and_boxes(image, gt_boxes, batched=False)
    width = image.shape[-1]
    return image.flip(-1), transform_boxes(gt_boxes, True, 1.0, (0.0, 0.0), width, image.shape[-2])


def scale_jitter(image: torch.Tensor, gt_boxes: torch.Tensor, scale: float,
                 offset: Sequence[float] = (0.0, 0.0)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rescale an image by ``scale`` and place it at ``offset`` on a canvas of the same size.

    ``(x, y) -> (scale * x + offset_x, scale * y + offset_y)``: e.g. ``scale=2, offset=(-W/2, -H/2)``
    shows the central quarter enlarged; ``scale=0.5, offset=(0, 0)`` the whole image in the top-left
    quarter with zeros elsewhere. Boxes are mapped by the same formula, clipped, and emptied boxes
    become ``-1`` rows.

    Args:
        image: ``(3, H, W)`` float image.
        gt_boxes: ``(M, 5)`` GT rows.
        scale: > 0.
        offset: ``(offset_x, offset_y)`` in output pixels.

    Returns:
        ``(image (3, H, W), gt_boxes (M, 5))``, new tensors.
    """
    _check_image_and_boxes(image, gt_boxes, batched=False)
    images, boxes = flip_scale_batch(image[None], gt_boxes[None], False, float(scale), tuple(offset))
    return images[0], boxes[0]


# -- random versions ----------------------------------------------------------------------------------


def draw_flip_scale_params(batch_size: int, height: int, width: int, generator: Optional[torch.Generator] = None, *,
                           flip_prob: float = 0.5, scale_range: Optional[Tuple[float, float]] = (0.8, 1.25),
                           device=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-image augmentation parameters.

    flip ~ Bernoulli(``flip_prob``); scale ~ Uniform(``scale_range``) (``None``: 1); offset: uniform over
    the placements that keep the canvas inside the scaled image when zooming in (no empty border) and
    the scaled image inside the canvas when zooming out: ``offset = t * (1 - scale) * (W, H)``,
    ``t ~ Uniform(0, 1)^2``.

    Args:
        generator: draws come from it (on its device), so runs are reproducible; None: torch's global RNG.
        device: where the returned tensors go (default: the generator's device, else CPU).

    Returns:
        ``flip (B,) bool, scale (B,) float32, offset (B, 2) float32``.
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    if scale_range is not None and not (0 < scale_range[0] <= scale_range[1]):
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, or None, got {scale_range}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    uniforms = torch.rand(batch_size, 4, generator=generator, device=draw_device)  # flip, scale, tx, ty
    flip = uniforms[:, 0] < flip_prob
    if scale_range is None:
        scale = torch.ones(batch_size, device=draw_device)
    else:
        scale = scale_range[0] + (scale_range[1] - scale_range[0]) * uniforms[:, 1]
    offset = uniforms[:, 2:] * (1 - scale[:, None]) * torch.tensor([float(width), float(height)], device=draw_device)
    target = draw_device if device is None else torch.device(device)
    return flip.to(target), scale.to(target), offset.to(target)


def random_flip_scale_batch(images: torch.Tensor, gt_boxes: torch.Tensor, generator: Optional[torch.Generator] = None, *,
                            flip_prob: float = 0.5, scale_range: Optional[Tuple[float, float]] = (0.8, 1.25)
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and scale jitter of every image of a batch, on the images' device.

    Parameters come from :func:`draw_flip_scale_params` (with ``generator``: a CPU generator or one on
    the images' device), the transform from :func:`flip_scale_batch`.

    Args:
        images: ``(B, 3, H, W)``; gt_boxes: ``(B, M, 5)`` with ``-1`` padding rows.

    Returns:
        ``(images, gt_boxes)`` of the same shapes, new tensors.
    """
    _check_image_and_boxes(images, gt_boxes, batched=True)
    flip, scale, offset = draw_flip_scale_params(images.shape[0], images.shape[-2], images.shape[-1], generator,
                                                 flip_prob=flip_prob, scale_range=scale_range, device=images.device)
    return flip_scale_batch(images, gt_boxes, flip, scale.to(images.dtype), offset.to(images.dtype))


def random_flip_scale(image: torch.Tensor, gt_boxes: torch.Tensor, generator: Optional[torch.Generator] = None, *,
                      flip_prob: float = 0.5, scale_range: Optional[Tuple[float, float]] = (0.8, 1.25)
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`random_flip_scale_batch` for one image ``(3, H, W)`` with ``(M, 5)`` GT rows (e.g. in a
    dataset's ``__getitem__``)."""
    _check_image_and_boxes(image, gt_boxes, batched=False)
    images, boxes = random_flip_scale_batch(image[None], gt_boxes[None], generator, flip_prob=flip_prob,
                                            scale_range=scale_range)
    return images[0], boxes[0]
