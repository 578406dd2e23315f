"""The resumable, seeded data order used by the training engine.

The order of every batch is a pure function of ``(data_seed, epoch, position)``: epoch ``e`` is a
permutation seeded by ``(data_seed, e)``, and every sample is loaded with Python's, NumPy's and torch's
global RNGs seeded from its position. So a run resumed from a checkpoint (which stores only
``(data_seed, epoch, offset)``) sees exactly the batches, and the random augmentations, of an
uninterrupted one, whatever ``num_workers`` is.

With several processes (``torch.distributed``), each *global* batch of ``batch_size * world_size``
positions is cut into ``world_size`` consecutive slices and rank ``r`` loads slice ``r``: the union over
ranks is exactly the batch a single process with the global batch size would load.
"""
import random
from typing import Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["SeededSamples", "ResumableBatchSampler", "epoch_order", "seed_worker", "make_batch_stream"]


class SeededSamples(Dataset):
    """Wraps a dataset so that each sample is loaded with RNGs seeded from its position in the data order.

    Keys are ``(index, seed)`` pairs. Random augmentations inside the dataset then depend only on
    (data seed, epoch, position), not on which worker loads the sample or on whether the run was resumed.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        # Save and restore: with num_workers=0 this runs in the training process, whose RNGs must not move.
        states = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)  # CPU only: never touches CUDA RNGs
        try:
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.default_generator.set_state(states[2])


def epoch_order(num_samples: int, data_seed: int, epoch: int, shuffle: bool) -> Tuple[torch.Tensor, np.ndarray]:
    """Sample order ``(num_samples,)`` long and per-position sample seeds ``(num_samples,)`` uint32 of one
    epoch, a pure function of ``(data_seed, epoch)``."""
    words = np.random.SeedSequence([data_seed, epoch]).generate_state(num_samples + 2, dtype=np.uint32)
    if shuffle:
        generator = torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
        order = torch.randperm(num_samples, generator=generator)
    else:
        order = torch.arange(num_samples)
    return order, words[2:]


class ResumableBatchSampler:
    """Infinite batch sampler over epochs whose position ``(epoch, offset)`` can be saved and restored.

    Yields lists of ``(index, sample_seed)`` keys for :class:`SeededSamples`: this rank's slice of each
    global batch. ``offset`` counts global batches consumed in the current epoch.

    Args:
        num_samples: dataset size.
        batch_size: images per batch *per process*.
        drop_last: drop an epoch's last incomplete global batch (always done with ``world_size > 1``, so
            that every rank gets a full, equal slice).
        shuffle: a new seeded permutation every epoch (else the dataset order).
        data_seed, epoch, offset: the position to start from.
        rank, world_size: this process's slice of each global batch.
    """

    def __init__(self, num_samples: int, batch_size: int, drop_last: bool, shuffle: bool, data_seed: int,
                 epoch: int = 0, offset: int = 0, rank: int = 0, world_size: int = 1):
        self.num_samples, self.batch_size, self.shuffle = num_samples, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        self.drop_last = drop_last or world_size > 1
        self.data_seed, self.epoch, self.offset = data_seed, epoch, offset
        if self.drop_last:
            self.batches_per_epoch = num_samples // self.global_batch_size
        else:
            self.batches_per_epoch = -(-num_samples // self.global_batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{num_samples} samples make no complete batch of {self.global_batch_size} "
                             f"(batch_size {batch_size} x {world_size} processes) with drop_last")

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, offset = self.epoch, self.offset
        while True:
            order, seeds = epoch_order(self.num_samples, self.data_seed, epoch, self.shuffle)
            for b in range(offset, self.batches_per_epoch):
                start = b * self.global_batch_size + self.rank * self.batch_size
                stop = min(start + self.batch_size, self.num_samples, (b + 1) * self.global_batch_size)
                yield [(int(order[p]), int(seeds[p])) for p in range(start, stop)]
            epoch, offset = epoch + 1, 0

    def advance(self) -> None:
        """Record that one more batch was consumed by the training loop (workers may prefetch further)."""
        self.offset += 1
        if self.offset == self.batches_per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed (set from the
    loader's generator), so that workers do not share NumPy states."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_batch_stream(train_loader: DataLoader, sampler: ResumableBatchSampler, pin_memory: bool):
    """An endless iterator of batches over ``train_loader.dataset`` in ``sampler``'s order.

    The new loader keeps ``train_loader``'s ``num_workers``, ``collate_fn`` and ``prefetch_factor``; its
    sampler and ``shuffle`` are replaced by ``sampler`` (see ``train_detector``'s ``resumable_order``).
    """
    num_workers = train_loader.num_workers
    seed = sampler.data_seed + 1_000_003 * sampler.epoch + sampler.offset
    loader = DataLoader(
        SeededSamples(train_loader.dataset), batch_sampler=sampler, num_workers=num_workers,
        collate_fn=train_loader.collate_fn, pin_memory=pin_memory, worker_init_fn=seed_worker,
        # Own generator: creating the iterator draws the workers' base seed from it instead of from the
        # global RNG, which would shift the RNG state of a resumed run.
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=train_loader.prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
    )
    return iter(loader)
