"""Image and box geometry shared by every dataset, the detector's users and its exports.

- ``IMAGENET_MEAN`` / ``IMAGENET_STD``: the normalisation every backbone here expects (defined once).
- ``resize_crop_geometry`` / ``map_boxes_to_crop``: torchvision's ``Resize(S)`` + ``CenterCrop(S)``, for
  images and for their boxes (the course's training and evaluation frame).
- ``normalize`` / ``unnormalize``: ``[0, 1]`` RGB tensors to the network's input and back.

Conventions: boxes are XYXY in absolute pixels; images are ``(3, H, W)`` float tensors.
"""
from typing import Sequence, Tuple

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "unnormalize", "resize_crop_geometry",
           "map_boxes_to_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB in ``[0, 1]`` -> ImageNet-normalised, same dtype and device."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean_t) / std_t


def unnormalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``(..., 3, H, W)`` ImageNet-normalised image -> float32 in ``[0, 1]`` on the CPU (for drawing)."""
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return (image.detach().cpu().float() * std_t + mean_t).clamp(0, 1)


def resize_crop_geometry(width: int, height: int, image_size: int) -> Tuple[int, int, int, int]:
    """Geometry of torchvision's ``Resize(image_size)`` (shorter side) followed by ``CenterCrop(image_size)``.

    Args:
        width, height: original image size in pixels.
        image_size: S, the shorter side after resizing and the side of the square crop.

    Returns:
        ``(new_width, new_height, left, top)``: the integer size torchvision resizes to, and the crop's
        offset in the resized image (``int(round((new - S) / 2))``, as ``CenterCrop`` computes it).
    """
    # torchvision's rule for Resize(int): the shorter side becomes S, the longer one int(S * long / short).
    # (Written out rather than calling torchvision's private helper, whose name may change.)
    if width <= height:
        new_width, new_height = image_size, int(image_size * height / width)
    else:
        new_width, new_height = int(image_size * width / height), image_size
    left = int(round((new_width - image_size) / 2.0))
    top = int(round((new_height - image_size) / 2.0))
    return new_width, new_height, left, top


def map_boxes_to_crop(boxes: torch.Tensor, width: int, height: int, image_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map XYXY boxes of an original image into its resized, centre-cropped ``S x S`` version.

    Args:
        boxes: ``(M, 4)`` float XYXY boxes in original-image pixels.
        width, height: original image size.
        image_size: S.

    Returns:
        boxes: ``(M, 4)`` boxes in crop pixels, clamped to ``[0, S]``.
        valid: ``(M,)`` bool, False for boxes that the crop left with zero width or height.
    """
    new_width, new_height, left, top = resize_crop_geometry(width, height, image_size)
    scale = boxes.new_tensor([new_width / width, new_height / height] * 2)
    offset = boxes.new_tensor([left, top] * 2)
    mapped = (boxes * scale - offset).clamp(0, image_size)
    valid = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return mapped, valid
