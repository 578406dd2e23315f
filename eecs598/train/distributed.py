"""Data-parallel training across processes (``torchrun``): set-up, synced BatchNorm, reductions.

Launch with ``torchrun --nproc_per_node N train_fcos.py ...``: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`init_from_environment` checks them and joins the
process group (NCCL on GPUs, gloo on CPUs). N processes with ``b`` images each then behave like one process
with ``N * b`` images:

- the data order gives rank ``r`` slice ``r`` of every global batch (``eecs598.data.sampling``);
- BatchNorm statistics are computed over the global batch (:func:`convert_sync_batchnorm`: torch's
  ``SyncBatchNorm`` on GPUs, :class:`GlooSyncBatchNorm` on CPUs, where torch has none);
- FCOS's loss normaliser counts the foreground locations of all ranks (``FCOS.distributed_reduce``);
- ``DistributedDataParallel`` averages the gradients, and the logged losses are averaged over ranks.

Three waits, three limits (seconds, each from an environment variable):

- joining (``EECS598_RENDEZVOUS_TIMEOUT``, default 60): every process registers in the store at
  ``MASTER_ADDR:MASTER_PORT``; one that is missing after this long ends every waiting process with a
  :class:`DistributedSetupError` naming the missing ranks (torch's own wait is 30 minutes, in silence);
- waiting for rank 0's exclusive work, i.e. periodic evaluation, generating or downloading the data
  (``EECS598_BARRIER_TIMEOUT``, default 1800): :meth:`DistributedContext.barrier` waits on the store, not in
  a collective, so an evaluation longer than the join limit (or than NCCL's 10-minute collective watchdog)
  is fine; a rank that does not arrive in time is named;
- the collectives of a training step keep torch's own process-group timeout (30 min gloo, 10 min NCCL).
"""
import datetime
import math
import os
import time
import warnings
from typing import List, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedContext", "DistributedSetupError", "LaunchEnvironment", "read_launch_environment",
           "init_from_environment", "convert_sync_batchnorm", "GlooSyncBatchNorm", "all_reduce_sum",
           "all_reduce_mean", "shard_batch_size", "RENDEZVOUS_TIMEOUT_ENV", "BARRIER_TIMEOUT_ENV"]

RENDEZVOUS_TIMEOUT_ENV, DEFAULT_RENDEZVOUS_TIMEOUT = "EECS598_RENDEZVOUS_TIMEOUT", 60.0
BARRIER_TIMEOUT_ENV, DEFAULT_BARRIER_TIMEOUT = "EECS598_BARRIER_TIMEOUT", 1800.0
_LAUNCH_HINT = "launch with torchrun, which sets them all: torchrun --nproc_per_node N train_fcos.py ..."


class DistributedSetupError(RuntimeError):
    """The launch environment is wrong, or the processes did not meet in time; the message names the
    variable (or the missing ranks) and the fix. ``train_fcos.py`` prints it as one line (exit status 2)."""


class LaunchEnvironment:
    """What ``torchrun`` put in the environment, checked: ``rank`` in ``[0, world_size)``, ``local_rank``,
    the store's ``master_addr`` / ``master_port``, and the two limits in seconds."""

    def __init__(self, rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int,
                 rendezvous_timeout: float, barrier_timeout: float):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.master_addr, self.master_port = master_addr, master_port
        self.rendezvous_timeout, self.barrier_timeout = rendezvous_timeout, barrier_timeout


class DistributedContext:
    """Rank, world size and device of this process (``world_size == 1``: not distributed).

    ``store`` (set by :func:`init_from_environment`) carries :meth:`barrier`; without it the barrier is
    ``torch.distributed.barrier``.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, store=None,
                 barrier_timeout: float = DEFAULT_BARRIER_TIMEOUT, key_prefix: str = "eecs598"):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.store, self.barrier_timeout, self.key_prefix = store, barrier_timeout, key_prefix
        self._barriers = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and evaluation files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process of the group (a no-op when not distributed).

        Used after work that rank 0 does alone (evaluation, data generation): the others wait on the store
        for up to ``barrier_timeout`` seconds, outside any collective, and a rank that does not arrive is
        named in a :class:`DistributedSetupError`.
        """
        if not self.enabled:
            return
        if self.store is None:
            if dist.is_initialized():
                dist.barrier()
            return
        self._barriers += 1
        _meet(self.store, f"{self.key_prefix}/barrier/{self._barriers}", self.rank, self.world_size,
              self.barrier_timeout, what=f"a wait for rank 0's work (barrier {self._barriers})",
              variable=BARRIER_TIMEOUT_ENV)


def _integer(environ: Mapping[str, str], name: str, default: Optional[int], low: int, high: Optional[int],
             meaning: str) -> int:
    """An integer environment variable in ``[low, high)``, or a :class:`DistributedSetupError` saying why not."""
    text = environ.get(name)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise DistributedSetupError(f"WORLD_SIZE={environ.get('WORLD_SIZE')} asks for a distributed run but {name} "
                                    f"({meaning}) is not set: {_LAUNCH_HINT}")
    try:
        value = int(text.strip())
    except ValueError:
        raise DistributedSetupError(f"{name}={text!r} is not an integer ({name} is {meaning}): "
                                    f"{_LAUNCH_HINT}") from None
    if value < low or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise DistributedSetupError(f"{name}={value} must be {bound} ({name} is {meaning}): {_LAUNCH_HINT}")
    return value


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment (``default`` when unset)."""
    text = environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise DistributedSetupError(f"{name}={text!r} must be a number of seconds > 0 (unset: {default:g})")
    return value


def read_launch_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[LaunchEnvironment]:
    """Check ``torchrun``'s variables before anything waits on them; ``None`` for a single process.

    ``WORLD_SIZE`` unset or 1 is a single process; otherwise ``RANK`` (in ``[0, WORLD_SIZE)``), ``MASTER_ADDR``
    and ``MASTER_PORT`` (1-65535) must be set, ``LOCAL_RANK`` defaults to 0. ``WORLD_SIZE=0`` is refused:
    ``torchrun --nproc_per_node 0`` stops inside torchrun (a bare ``AssertionError``, torch 2.14) before any
    process of ours starts, so a 0 here was set by hand.

    Raises:
        DistributedSetupError: naming the variable, its value and the fix.
    """
    environ = os.environ if environ is None else environ
    world_size = _integer(environ, "WORLD_SIZE", 1, 1, None,
                          "the number of processes; torchrun sets it to nnodes x --nproc_per_node, which must be "
                          ">= 1; unset it to train in one process")
    rank = _integer(environ, "RANK", None if world_size > 1 else 0, 0, world_size,
                    f"this process's rank, one of 0..{world_size - 1} for WORLD_SIZE={world_size}")
    local_rank = _integer(environ, "LOCAL_RANK", 0, 0, None, "this process's index on its machine")
    if world_size == 1:
        return None
    address = environ.get("MASTER_ADDR", "").strip()
    if not address:
        raise DistributedSetupError(f"WORLD_SIZE={world_size} asks for a distributed run but MASTER_ADDR (the host "
                                    f"of rank 0, where the processes meet) is not set: {_LAUNCH_HINT}")
    port = _integer(environ, "MASTER_PORT", None, 1, 65536, "the TCP port on MASTER_ADDR where the processes meet")
    return LaunchEnvironment(rank, world_size, local_rank, address, port,
                             _seconds(environ, RENDEZVOUS_TIMEOUT_ENV, DEFAULT_RENDEZVOUS_TIMEOUT),
                             _seconds(environ, BARRIER_TIMEOUT_ENV, DEFAULT_BARRIER_TIMEOUT))


def init_from_environment(device_type: str, rendezvous_timeout: Optional[float] = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (no-op without it).

    The variables are checked first (:func:`read_launch_environment`); then every process registers in the
    store at ``MASTER_ADDR:MASTER_PORT`` and waits at most ``rendezvous_timeout`` seconds (default
    ``$EECS598_RENDEZVOUS_TIMEOUT``, else 60) for the others; only then is the process group built.

    Args:
        device_type: ``"cuda"`` (NCCL backend, one GPU per process: ``cuda:LOCAL_RANK``) or ``"cpu"`` (gloo).
        rendezvous_timeout: seconds to wait for the other processes to join.

    Raises:
        DistributedSetupError: a bad variable, ``LOCAL_RANK`` without its GPU, a port in use, rank 0 not
            reachable, or ranks missing after the timeout (named).
    """
    launch = read_launch_environment()
    if launch is None:
        return DistributedContext()
    if rendezvous_timeout is not None:
        launch.rendezvous_timeout = float(rendezvous_timeout)
    if dist.is_initialized():  # the caller built the group itself: use it as it is
        return DistributedContext(launch.rank, launch.world_size, launch.local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if launch.local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(f"LOCAL_RANK={launch.local_rank} needs GPU cuda:{launch.local_rank}, but this "
                                        f"machine shows {torch.cuda.device_count()} GPU(s): give torchrun "
                                        f"--nproc_per_node <= {torch.cuda.device_count()}")
        torch.cuda.set_device(launch.local_rank)
    store = _rendezvous(launch)
    prefix = f"eecs598/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    _meet(store, f"{prefix}/join", launch.rank, launch.world_size, launch.rendezvous_timeout,
          what=f"the rendezvous at {launch.master_addr}:{launch.master_port}", variable=RENDEZVOUS_TIMEOUT_ENV)
    store.set_timeout(datetime.timedelta(seconds=launch.barrier_timeout))
    # The collectives keep torch's default timeout (30 min gloo, 10 min NCCL): the join was checked above.
    dist.init_process_group(backend=backend, store=dist.PrefixStore("default_pg", store), rank=launch.rank,
                            world_size=launch.world_size)
    return DistributedContext(launch.rank, launch.world_size, launch.local_rank, store=store,
                              barrier_timeout=launch.barrier_timeout, key_prefix=prefix)


def _rendezvous(launch: LaunchEnvironment):
    """The ``TCPStore`` the processes meet in: hosted by rank 0, or by torchrun's agent when it serves one."""
    address, port = launch.master_addr, launch.master_port
    # torchrun's agent hosts a store at its own MASTER_ADDR:MASTER_PORT and says so (as torch's env:// does).
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    hosts = launch.rank == 0 and not agent_serves
    where = f"MASTER_ADDR:MASTER_PORT={address}:{port}"
    try:
        return dist.TCPStore(address, port, launch.world_size, is_master=hosts,
                             timeout=datetime.timedelta(seconds=launch.rendezvous_timeout), wait_for_workers=False,
                             multi_tenant=hosts)
    except (RuntimeError, OSError) as e:  # DistNetworkError / DistStoreError are RuntimeErrors
        if hosts:
            raise DistributedSetupError(f"rank 0 cannot host the rendezvous at {where} ({_first_line(e)}): the port "
                                        f"is taken (another run?) or the address is not this machine's; choose "
                                        f"another port (torchrun --master_port P) or fix MASTER_ADDR") from None
        raise DistributedSetupError(
            f"rank {launch.rank} could not reach the rendezvous at {where} within {launch.rendezvous_timeout:g} s "
            f"({RENDEZVOUS_TIMEOUT_ENV}): rank 0 is not running, or MASTER_ADDR/MASTER_PORT do not point at it. "
            f"Start rank 0 (torchrun starts every rank: torchrun --nproc_per_node {launch.world_size} "
            f"train_fcos.py ...), or give it longer: {RENDEZVOUS_TIMEOUT_ENV}=<seconds>") from None


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _rank_list(ranks: List[int]) -> str:
    """``"1, 2, 3"``; long lists cut after 8 ranks with their count."""
    shown = ", ".join(str(r) for r in ranks[:8])
    return shown if len(ranks) <= 8 else f"{shown}, ... ({len(ranks)} ranks)"


def _meet(store, prefix: str, rank: int, world_size: int, timeout: float, what: str, variable: str) -> None:
    """Set ``prefix/rank`` in ``store`` and wait until every rank has; name the ranks missing after ``timeout`` s.

    Rank 0 arriving last is the usual case (it was evaluating or writing data while the others waited).
    """
    keys = [f"{prefix}/{r}" for r in range(world_size)]
    store.set(keys[rank], "1")
    start = time.monotonic()
    try:
        store.wait(keys, datetime.timedelta(seconds=timeout))
        return
    except RuntimeError as e:  # a timeout, or rank 0's store gone with its process
        waited = time.monotonic() - start
        try:
            missing = [r for r, key in enumerate(keys) if not store.check([key])]
        except RuntimeError:
            raise DistributedSetupError(f"rank {rank}: the store at rank 0 went away during {what} "
                                        f"({_first_line(e)}): rank 0 stopped; see its own error") from None
    if not missing:  # the last one arrived just as the wait ended
        return
    joined = world_size - len(missing)
    raise DistributedSetupError(
        f"rank {rank} waited {waited:.0f} s ({variable}={timeout:g}) in {what}: {joined} of WORLD_SIZE={world_size} "
        f"processes arrived, rank(s) {_rank_list(missing)} did not. Start every rank (torchrun --nproc_per_node "
        f"{world_size} train_fcos.py ... starts them all; by hand, each process needs its own RANK), or give them "
        f"longer: {variable}=<seconds>")


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
            like = child.weight if child.affine else child.running_mean
            synced.to(device=like.device, dtype=like.dtype)  # a float64 model stays float64
            synced.load_state_dict(child.state_dict())
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

