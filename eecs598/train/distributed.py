"""Data-parallel training across processes (``torchrun``): set-up, synced BatchNorm, reductions.

Launch with ``torchrun --nproc_per_node N train_fcos.py ...``: torchrun sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` and :func:`init_from_environment` joins the process group (NCCL on GPUs, gloo on CPUs).
N processes with ``b`` images each then behave like one process with ``N * b`` images:

- the data order gives rank ``r`` slice ``r`` of every global batch (``eecs598.data.sampling``);
- BatchNorm statistics are computed over the global batch (:func:`convert_sync_batchnorm`: torch's
  ``SyncBatchNorm`` on GPUs, :class:`GlooSyncBatchNorm` on CPUs, where torch has none);
- FCOS's loss normaliser counts the foreground locations of all ranks (``FCOS.distributed_reduce``);
- ``DistributedDataParallel`` averages the gradients, and the logged losses are averaged over ranks.
"""
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedContext", "init_from_environment", "convert_sync_batchnorm", "GlooSyncBatchNorm",
           "all_reduce_sum", "all_reduce_mean", "shard_batch_size"]


class DistributedContext:
    """Rank, world size and device of this process (``world_size == 1``: not distributed)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and evaluation files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process of the group (a no-op when not distributed)."""
        if self.enabled and dist.is_initialized():
            dist.barrier()


def init_from_environment(device_type: str) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (no-op without it).

    Args:
        device_type: ``"cuda"`` (NCCL backend, one GPU per process: ``cuda:LOCAL_RANK``) or ``"cpu"`` (gloo).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, local_rank)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (a new tensor; differentiable)."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated in favour of a still-private module; works as documented
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(tensor.clone())


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all processes (not differentiable; for logged values)."""
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced)
    return reduced / dist.get_world_size()


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the batches of all processes, for CPUs.

    Per channel it all-reduces ``(sum x, sum x^2, count)`` with a differentiable all-reduce, so the
    gradient also flows through the other processes' statistics, exactly as with one big batch. Running
    statistics are updated like ``nn.BatchNorm2d`` (unbiased variance). Eval mode is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        local_count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        stats = all_reduce_sum(torch.cat([x.sum((0, 2, 3)), local_count]))
        count = stats[-1]
        mean = stats[:channels] / count
        # Two passes (mean, then squared deviations) rather than E[x^2] - mean^2, which cancels badly.
        centered = x - mean.view(1, -1, 1, 1)
        var = all_reduce_sum((centered * centered).sum((0, 2, 3))) / count  # biased: what BatchNorm divides by
        with torch.no_grad():
            momentum = 0.1 if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * count / (count - 1))
            self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        output = centered * scale.view(1, -1, 1, 1)
        return output + self.bias.view(1, -1, 1, 1) if self.affine else output


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every ``BatchNorm2d`` with a synced one (weights and statistics kept)."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlooSyncBatchNorm):
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            synced.to(device=child.weight.device if child.affine else child.running_mean.device)
            setattr(module, name, synced)
        else:
            convert_sync_batchnorm(child, device_type)
    return module


def shard_batch_size(global_batch_size: int, world_size: int) -> int:
    """Images per process for a global batch; refuses a global batch that does not divide evenly."""
    if global_batch_size % world_size:
        raise ValueError(f"the global batch size {global_batch_size} does not divide over {world_size} processes; "
                         f"use a multiple of {world_size} (each process gets batch_size / {world_size} images)")
    return global_batch_size // world_size

