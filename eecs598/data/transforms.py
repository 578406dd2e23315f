"""Image and box geometry shared by every dataset, the detector's users and its exports.

- ``IMAGENET_MEAN`` / ``IMAGENET_STD``: the normalisation every backbone here expects (defined once).
- ``resize_crop_geometry`` / ``map_boxes_to_crop``: torchvision's ``Resize(S)`` + ``CenterCrop(S)``, for
  images and for their boxes (the course's training and evaluation frame).
- ``normalize`` / ``unnormalize``: ``[0, 1]`` RGB tensors to the network's input and back.
- ``prepare_image`` / ``boxes_to_original``: a whole photo (no crop) as one network input at the training
  scale, padded to a multiple of 32, and its predicted boxes back in the photo's pixels (predict, export).

Conventions: boxes are XYXY in absolute pixels; images are ``(3, H, W)`` float tensors.
"""
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "unnormalize", "resize_crop_geometry",
           "map_boxes_to_crop", "inference_size", "prepare_image", "boxes_to_original"]

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


def inference_size(width: int, height: int, image_size: int, max_size: int, stride: int = 32) -> Tuple[int, int, float]:
    """The network input size for a whole image at the scale the detector was trained at.

    The image is resized so that its shorter side is ``image_size`` (as ``Resize(image_size)`` in training),
    unless its longer side would then exceed ``max_size``: then the longer side is ``max_size``. The result
    is then padded on the right and bottom up to a multiple of ``stride`` (nothing is cropped away).

    Returns:
        ``(resized_width, resized_height, scale)`` with ``resized = round(original * scale)``; the padded
        size is ``ceil(resized / stride) * stride`` in each direction.
    """
    if width < 1 or height < 1:
        raise ValueError(f"inference_size: the image must have a positive size, got {width}x{height}")
    scale = image_size / min(width, height)
    if max(width, height) * scale > max_size:
        scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def prepare_image(image, image_size: int, max_size: Optional[int] = None, stride: int = 32):
    """A whole RGB image (PIL or ``(H, W, 3)`` uint8 array) as one network input, and how to map boxes back.

    Resize (bilinear, antialiased) to :func:`inference_size`, ImageNet-normalise, and pad right/bottom with
    zeros (the mean colour after normalisation) to a multiple of ``stride``. Boxes predicted on the result
    map back to original pixels by dividing by ``scale`` and clipping to ``(0, 0, width, height)``
    (:func:`boxes_to_original`).

    Args:
        image: PIL image (any mode; converted to RGB) or ``(H, W, 3)`` uint8 array.
        image_size: the shorter side after resizing (a checkpoint's training ``image_size``).
        max_size: cap on the longer side after resizing (default ``round(image_size * 1333 / 800)``, the
            ratio of detectron2's defaults).
        stride: pad to a multiple of this (the FPN's coarsest stride).

    Returns:
        ``(tensor (3, H', W') float32, scale, (width, height))``: the input, the resize factor and the
        original size.
    """
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    width, height = image.size
    max_size = round(image_size * 1333 / 800) if max_size is None else max_size
    new_width, new_height, scale = inference_size(width, height, image_size, max_size, stride)
    resized = image.resize((new_width, new_height), Image.BILINEAR) if (new_width, new_height) != (width, height) \
        else image
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    padded = torch.zeros(3, -(-new_height // stride) * stride, -(-new_width // stride) * stride)
    padded[:, :new_height, :new_width] = normalize(pixels)
    return padded, scale, (width, height)


def boxes_to_original(boxes: torch.Tensor, scale: float, original_size: Tuple[int, int]) -> torch.Tensor:
    """``(K, 4)`` XYXY boxes on a :func:`prepare_image` input -> original-image pixels (clipped to it)."""
    width, height = original_size
    out = boxes / scale
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out
