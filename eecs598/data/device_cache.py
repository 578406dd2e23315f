"""A device-resident copy of a whole training set, for GPU training without a CPU data path.

The 2,501 VOC train images at 224 px are 2501 x 3 x 224 x 224 bytes = 377 MB as uint8: they fit on any
training GPU many times over. :class:`DeviceImageCache` decodes every sample once (through the dataset's
own ``__getitem__``, in a DataLoader with workers), stores the images as uint8 and the GT rows as float32
on the device, and then serves batches by indexing: no decoding, no host-to-device copy, no worker
processes per step. The order comes from the same :class:`~eecs598.data.sampling.ResumableBatchSampler` as
the DataLoader path, so a run is resumable and sees the same batches either way.

The cache holds what ``dataset[i]`` returned once: randomness inside the dataset is frozen. Use the
engine's on-device augmentation instead (``augment`` option of ``train_detector``).
"""
from typing import Iterator, Tuple

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DeviceImageCache"]


# Refuse (MemoryError with the numbers) a cache that would need more than this many bytes of device memory.
MAX_CACHE_BYTES = 8e9


class DeviceImageCache:
    """All images ``(N, 3, S, S)`` uint8 and GT rows ``(N, M, 5)`` float32 of a dataset, on one device.

    Args:
        dataset: yields ``(image_path, image (3,S,S) ImageNet-normalised float, gt_boxes (M,5))``; every
            image must have the same size.
        device: where to keep the tensors.
        num_workers: DataLoader workers used once, to decode the images.
        progress: show a progress bar while filling the cache.
    """

    def __init__(self, dataset, device, num_workers: int = 0, progress: bool = True):
        self.device = torch.device(device)
        _, first, first_gt = dataset[0]
        count = len(dataset)
        needed = count * first.numel()
        if needed > MAX_CACHE_BYTES:
            raise MemoryError(f"DeviceImageCache: {count} images of {tuple(first.shape)} need {needed / 1e9:.2f} GB "
                              f"as uint8, more than the cache's limit of {MAX_CACHE_BYTES / 1e9:.2f} GB; train without "
                              f"the cache")
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self.images = torch.empty((count, *first.shape), dtype=torch.uint8, device=self.device)
        self.gt_boxes = torch.empty((count, *first_gt.shape), dtype=torch.float32, device=self.device)
        self.paths = [""] * count
        loader = DataLoader(dataset, batch_size=64, num_workers=num_workers, shuffle=False)
        start = 0
        for paths, images, gt_boxes in tqdm(loader, desc="caching images on " + str(self.device),
                                            disable=not progress, dynamic_ncols=True):
            stop = start + images.shape[0]
            self.images[start:stop] = self._to_uint8(images, paths)
            self.gt_boxes[start:stop] = gt_boxes.to(self.device, torch.float32)
            self.paths[start:stop] = list(paths)
            start = stop

    def _to_uint8(self, images: torch.Tensor, paths) -> torch.Tensor:
        """Undo the ImageNet normalisation exactly (``ToTensor`` values are k / 255), checking that it is."""
        images = images.to(self.device, torch.float32)
        pixels = (images * self.std + self.mean) * 255
        rounded = pixels.round()
        error = (rounded - pixels).abs().max()
        if error > 1e-3 or rounded.min() < 0 or rounded.max() > 255:
            raise ValueError(f"DeviceImageCache: the images (e.g. {paths[0]}) are not ImageNet-normalised 8-bit "
                             f"pixels (rounding error {float(error):.3g}); the cache stores exactly those")
        return rounded.to(torch.uint8)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(images (B,3,S,S) float32 normalised, gt_boxes (B,M,5))`` for dataset indices ``(B,)``."""
        indices = indices.to(self.device)
        images = (self.images[indices].float() / 255 - self.mean) / self.std
        return images, self.gt_boxes[indices]

    def stream(self, sampler) -> Iterator[Tuple[list, torch.Tensor, torch.Tensor]]:
        """Endless ``(paths, images, gt_boxes)`` batches in ``sampler``'s order (keys ``(index, seed)``)."""
        for keys in sampler:
            indices = torch.tensor([index for index, _ in keys], dtype=torch.long)
            images, gt_boxes = self.batch(indices)
            yield [self.paths[i] for i in indices.tolist()], images, gt_boxes
