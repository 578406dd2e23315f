"""``train_detector``: the course's entry point, which builds the loop, its data stream and its hooks."""
import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.sampling import ResumableBatchSampler, make_batch_stream
from ..data.device_cache import DeviceImageCache
from ..models.frozen_bn import count_frozen_batchnorm, freeze_batchnorm
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .distributed import DistributedContext
from .hooks import CheckpointHook, ConsoleLogHook, HookBase
from .loop import LossLog, Trainer, TrainState
from .optim import WeightEMA, build_optimizer, extended_milestones
from .settings import TrainSettings, _fail, _is_int, check_loss_weight_names

__all__ = ["train_detector", "MEMORY_FORMATS", "resolve_memory_format"]


def _check_loader(train_loader, resumable_order: bool) -> Tuple[Any, Optional[int]]:
    """``(dataset, batch_size)`` of a DataLoader-like ``train_loader``, validated (dataset None: plain iterable)."""
    dataset = getattr(train_loader, "dataset", None) if resumable_order else None
    batch_size = getattr(train_loader, "batch_size", None)
    if dataset is None:
        return None, batch_size
    if not _is_int(batch_size) or batch_size < 1:
        _fail(f"train_loader.batch_size must be an int >= 1, got {batch_size!r}")
    if len(dataset) == 0:
        _fail("train_loader.dataset is empty (0 samples)")
    if getattr(train_loader, "drop_last", False) and len(dataset) < batch_size:
        _fail(f"drop_last=True with batch_size={batch_size} but only {len(dataset)} samples: no batch would "
              f"ever be produced")
    return dataset, batch_size


def _cycle(train_loader, skip: int) -> Iterator:
    """Iterate ``train_loader`` over and over (``resumable_order=False``), skipping ``skip`` batches first."""
    while True:
        produced = False
        for batch in train_loader:
            produced = True
            if skip:
                skip -= 1
                continue
            yield batch
        if not produced:  # an empty iterable, or a one-shot iterator already used up: never loop forever
            _fail("train_loader yielded no batches in a whole pass (it is empty, or an iterator that is "
                  "exhausted); pass a DataLoader or a list of batches")


def _restore(path: str, settings: TrainSettings, extend: bool, detector, optimizer, ema) -> Tuple[TrainSettings, TrainState, LossLog]:
    """Load a checkpoint into detector/optimiser/EMA and the RNGs; returns the (possibly extended) settings."""
    saved = ckpt.load_checkpoint(path)
    iteration = saved["state"]["iteration"]
    ignore = ("max_iters", "milestones") if extend else ()
    different = settings.resume_differences(saved["settings"], ignore=ignore)
    if different:
        hint = (" To train a run further, pass extend=True (--extend) with the larger max_iters."
                if set(different) <= {"max_iters", "milestones"} else "")
        _fail(f"cannot resume from {path}: settings differ (checkpoint vs now): {different}.{hint}")
    if extend:
        if settings.max_iters < iteration:
            _fail(f"extend: max_iters={settings.max_iters} is below the {iteration} iterations already done "
                  f"in {path}")
        milestones = extended_milestones(saved["settings"]["milestones"], settings.max_iters, iteration)
        settings = dataclasses.replace(settings, milestones=milestones)
    detector.load_state_dict(saved["model"])
    if saved.get("detector_state") is not None and hasattr(detector, "load_training_state"):
        detector.load_training_state(saved["detector_state"])
    optimizer.load_state_dict(saved["optimizer"])
    if ema is not None:
        ema.load_state(saved["ema"])
    ckpt.set_rng_state(saved["rng"])
    print(f"Resuming from {path} at iteration {iteration}"
          + (f"; milestones now {list(settings.milestones)}" if extend else "") + ".")
    return settings, TrainState(**saved["state"]), LossLog(saved["history"])


def _checkpoint_saver(detector, optimizer, ema, run_config: Optional[Dict[str, Any]]) -> Callable[[Trainer], Dict[str, Any]]:
    def state(trainer: Trainer) -> Dict[str, Any]:
        return {
            "format": ckpt.CHECKPOINT_FORMAT, "settings": trainer.settings.as_dict(),
            "state": dataclasses.asdict(trainer.state), "model": detector.state_dict(),
            "detector_state": detector.training_state() if hasattr(detector, "training_state") else None,
            "optimizer": optimizer.state_dict(), "ema": None if ema is None else ema.state,
            "history": trainer.log.history, "rng": ckpt.rng_state(), "run_config": run_config,
        }
    return state


def train_detector(
    detector: nn.Module,
    train_loader,
    learning_rate: float = 5e-3,
    weight_decay: float = 1e-4,
    max_iters: int = 5000,
    log_period: int = 20,
    device: str = "cpu",
    *,
    data_seed: Optional[int] = None,
    resumable_order: bool = True,
    checkpoint_path: Optional[str] = None,
    checkpoint_period: int = 200,
    resume: bool = False,
    extend: bool = False,
    sync_every_step: bool = True,
    image_cache: bool = False,
    compile_model=False,
    distributed=None,
    run_config: Optional[Dict[str, Any]] = None,
    plot: bool = True,
    progress: bool = True,
    hooks: Sequence[Any] = (),
    freeze_bn: bool = False,
    memory_format: str = "auto",
    accumulate_steps: int = 1,
    **options,
) -> Dict[str, List[float]]:
    """Train a detector that returns a dict of losses (e.g. ``FCOS``) for ``max_iters`` iterations.

    The course's recipe by default: SGD (momentum 0.9) over the trainable parameters, LR x0.1 at 60% and
    90% of ``max_iters``, the loader cycled forever, ``[Iter i][loss: ...]`` lines every ``log_period``
    iterations (followed by the LR, seconds per iteration and ETA), the loss history plotted at the end.

    Data order (``resumable_order=True``, the default): the engine does NOT iterate ``train_loader``
    itself. It loads ``train_loader.dataset`` with the loader's ``batch_size``, ``num_workers``,
    ``collate_fn``, ``drop_last`` and ``pin_memory`` but REPLACES its sampler / ``shuffle`` with a seeded,
    resumable order (``eecs598.data.sampling``; the ``shuffle`` option: a new permutation per epoch). That makes
    runs bit-identical after ``eecs598.reset_seed`` and a resumed run equal to an uninterrupted one.
    ``resumable_order=False`` iterates ``train_loader`` as given (your sampler is used; a resume then skips
    the consumed batches of the current pass). A loader without ``.dataset`` is always iterated as given.

    Args:
        detector: module; ``detector(images (B,3,H,W), gt_boxes (B,M,5))`` returns ``{loss_name: scalar}``.
            If it has ``training_state()`` / ``load_training_state()`` (FCOS: the loss normaliser), that
            state is checkpointed too; ``loss_names`` lets ``loss_weights`` be checked before any step.
        train_loader: yields ``(image_paths, images (B,3,H,W), gt_boxes (B,M,5))``.
        learning_rate, weight_decay, max_iters, log_period, device: as in the course.
        data_seed: seed of the data order; None draws it from torch's RNG (so ``reset_seed`` fixes it).
        resumable_order: see above.
        checkpoint_path: save the full training state there every ``checkpoint_period`` iterations and at
            the end (atomically). Checked for writability before training starts.
        resume: continue from ``checkpoint_path`` if it exists (the settings must match).
        extend: with ``resume``, allow a larger ``max_iters`` than the checkpoint's (see
            :func:`extended_milestones` for the LR milestones).
        sync_every_step: True (course behaviour): losses are fetched every iteration and a non-finite loss
            stops before backward. False: losses stay on the device and are fetched every ``log_period``
            iterations (and at checkpoints); a bad step is still never applied (see :class:`NonFiniteGuard`;
            needs ``fused_optimizer=True`` unless ``precision="fp16"``).
        image_cache: keep the whole (decoded) training set on ``device`` (``eecs598.data.device_cache``); needs
            ``resumable_order``. Randomness inside the dataset is frozen by the cache.
        compile_model: ``torch.compile`` the backbone and head (``True``, or a backend name such as
            ``"eager"``); the first iterations are slow (compilation).
        distributed: an ``eecs598.train.distributed.DistributedContext`` (from ``torchrun``): data-parallel
            training, ``train_loader.batch_size`` images per process; rank 0 writes checkpoints and logs.
        run_config: plain values stored in the checkpoint (e.g. the command line's model settings).
        plot: draw the loss history at the end.
        progress: show a tqdm progress bar.
        hooks: extra :class:`~eecs598.train.hooks.HookBase` instances (``before_train`` / ``before_step`` /
            ``after_step`` / ``after_train``).
        freeze_bn: replace the detector's ``BatchNorm2d`` layers (FCOS: the trunk's) by
            ``torchvision.ops.FrozenBatchNorm2d`` with their statistics and affine parameters, in place,
            before training (they stay frozen afterwards). False (the course's): BatchNorm trains as usual.
            Advisable with small (micro-)batches, e.g. 4 images with ``accumulate_steps=4``.
        memory_format: layout of the detector's weights (and so of FCOS's input and activations):
            ``"channels_last"``, ``"contiguous"`` (NCHW), or ``"auto"``: channels-last on the CPU (faster
            with oneDNN), contiguous on CUDA (channels-last made RegNetX-400MF training slower in public GPU
            benchmarks). ``"auto"`` leaves a detector without a ``memory_format`` attribute as it is.
        accumulate_steps: N > 1: gradient accumulation, each optimiser step runs over N loader batches
            (micro-batches), so batch b x N trains like one batch of N * b (FCOS's loss normaliser counts
            the foreground of all N; see ``Trainer._forward_backward``). ``max_iters``, ``log_period``,
            ``checkpoint_period``, warm-up, milestones and the returned history count optimiser steps;
            checkpoints are written between steps only. 1 (the course's): one batch per step.
        **options: any other :class:`TrainSettings` field: ``optimizer``, ``momentum``, ``warmup_iters``,
            ``warmup_factor``, ``grad_clip_norm``, ``ema_decay``, ``loss_weights``, ``shuffle``,
            ``precision``, ``fused_optimizer``, ``augment``, ``milestones``.

    Returns:
        ``{loss_name: [float per iteration], ..., "total": [...]}`` (unweighted losses, weighted total).

    Raises:
        ValueError: invalid arguments (``loss_weights`` naming a loss the detector does not have, when it
            lists its ``loss_names``), an empty dataset, or a checkpoint with other settings.
        FloatingPointError: a loss or gradient norm became non-finite; the message says which iteration
            and that the detector holds the state after the last good step.
        RuntimeError: the checkpoint to resume from is truncated or corrupt.
        OSError: ``checkpoint_path`` cannot be written (checked before training starts).

    Whatever stops training (one of the above, an error in the loader or in the detector, Ctrl-C), the
    detector holds exactly the weights and buffers of the last completed step, never half a step; the
    exception carries a note saying which step that is.
    """
    context = distributed if distributed is not None else DistributedContext()
    _check_call(options, log_period, checkpoint_period, data_seed, resume, checkpoint_path, image_cache,
                resumable_order, memory_format)
    dataset, batch_size = _check_loader(train_loader, resumable_order)
    for hook in hooks:
        if not isinstance(hook, HookBase):
            raise TypeError(f"train_detector: hooks must be eecs598.train.HookBase instances (subclass it and "
                            f"override before_train / before_step / after_step / after_train), got "
                            f"{type(hook).__name__}")
    settings = TrainSettings(learning_rate=learning_rate, weight_decay=weight_decay, max_iters=max_iters,
                             batch_size=batch_size, num_samples=None if dataset is None else len(dataset),
                             world_size=context.world_size, accumulate_steps=accumulate_steps, freeze_bn=freeze_bn,
                             **options)
    if not sync_every_step and not settings.fused_optimizer and settings.precision != "fp16":
        _fail("sync_every_step=False needs fused_optimizer=True (the fused kernels skip a bad step on the "
              "device) or precision='fp16' (the gradient scaler does)")
    device = torch.device(device)
    if loss_names := getattr(detector, "loss_names", None):
        check_loss_weight_names(settings.loss_weights, loss_names)  # before any step
    if checkpoint_path is not None and context.is_main:
        ckpt.check_writable(checkpoint_path)
        ckpt.remove_orphan_partials(checkpoint_path)
    checked_values = getattr(detector, "check_input_values", None)
    model = _prepare_model(detector, device, context, sync_every_step, compile_model, settings.freeze_bn,
                           memory_format)

    optimizer = build_optimizer([p for p in detector.parameters() if p.requires_grad], settings)
    ema = WeightEMA(detector, settings.ema_decay) if settings.ema_decay is not None else None
    state, log = TrainState(), LossLog()
    if resume and os.path.isfile(checkpoint_path):
        settings, state, log = _restore(checkpoint_path, settings, extend, detector, optimizer, ema)
    else:
        if resume:
            print(f"No checkpoint at {checkpoint_path} yet; training from scratch.")
        state.data_seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if data_seed is None else int(data_seed)

    batches, advance = _make_batches(train_loader, dataset, settings, state, device, image_cache, context, progress)
    all_hooks = [ConsoleLogHook(log_period, progress), *hooks]
    if checkpoint_path is not None:
        saver = _checkpoint_saver(detector, optimizer, ema, run_config)
        all_hooks.append(CheckpointHook(checkpoint_path, checkpoint_period, saver))
    trainer = Trainer(detector, model, optimizer, settings, batches, advance, device, state, log, ema,
                      sync_period=1 if sync_every_step else log_period, hooks=all_hooks,
                      reduce_values=_mean_over_processes if context.enabled else None, rank=context.rank,
                      barrier=context.barrier if context.enabled else None)
    try:
        history = trainer.train()
    finally:
        del batches  # shuts the loader's workers down
        if checked_values is not None:
            detector.check_input_values = checked_values  # the caller's setting, whatever it was
    if ema is not None:
        detector.load_state_dict(ema.state)
    if context.is_main:
        _plot(history, plot)
    return history


def _check_call(options, log_period, checkpoint_period, data_seed, resume, checkpoint_path, image_cache,
                resumable_order, memory_format) -> None:
    """Validate ``train_detector``'s arguments that are not :class:`TrainSettings` fields."""
    fields = {f.name for f in dataclasses.fields(TrainSettings)} - {"batch_size", "num_samples", "world_size",
                                                                     "accumulate_steps", "freeze_bn"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"train_detector: unexpected keyword arguments {unknown}; training options are "
                        f"{', '.join(sorted(fields))}")
    for name, value in (("log_period", log_period), ("checkpoint_period", checkpoint_period)):
        if not _is_int(value) or value < 1:
            _fail(f"{name} must be an int >= 1, got {value!r}")
    if data_seed is not None and (not _is_int(data_seed) or not 0 <= data_seed < 2**32):
        _fail(f"data_seed must be None or an int in [0, 2**32), got {data_seed!r}")
    if resume and checkpoint_path is None:
        _fail("resume=True needs a checkpoint_path")
    if image_cache and not resumable_order:
        _fail("image_cache=True needs resumable_order=True (the cache serves batches in the engine's order)")
    if memory_format not in MEMORY_FORMATS:
        _fail(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")


# The layouts train_detector(memory_format=...) accepts ("auto" resolves by device: resolve_memory_format).
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def resolve_memory_format(memory_format: str, device: torch.device) -> torch.memory_format:
    """The ``torch.memory_format`` for ``memory_format`` on ``device``: ``"auto"`` is channels-last on the CPU
    (oneDNN's convolutions are faster on it: docs/benchmarks.md) and contiguous elsewhere (on CUDA, public
    benchmarks measured channels-last RegNetX-400MF training about a third slower)."""
    if memory_format == "auto":
        memory_format = "channels_last" if device.type == "cpu" else "contiguous"
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


def _prepare_model(detector: nn.Module, device: torch.device, context, sync_every_step: bool,
                   compile_model, freeze_bn: bool = False, memory_format: str = "auto") -> nn.Module:
    """Frozen BatchNorm (optional), move to ``device`` in its memory format, train mode; synced BatchNorm + DDP
    when distributed; optional compilation.

    Returns the module to call for the losses (``detector`` itself or its DDP wrapper).
    """
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats in late training slow CPU kernels several-fold
    if freeze_bn and freeze_batchnorm(detector) == 0 and count_frozen_batchnorm(detector) == 0:
        _fail("freeze_bn=True but the detector has no BatchNorm2d layer to freeze")
    detector.to(device)
    if memory_format != "auto" or hasattr(detector, "memory_format"):
        detector.to(memory_format=resolve_memory_format(memory_format, device))
    detector.train()
    if not sync_every_step and hasattr(detector, "check_input_values"):
        detector.check_input_values = False  # value checks copy to the host; the guard catches bad values
    if compile_model:
        for part in (getattr(detector, "backbone", None), getattr(detector, "pred_net", None)):
            if part is not None:
                backend = compile_model if isinstance(compile_model, str) else "inductor"
                part.forward = torch.compile(part.forward, backend=backend)
    if not context.enabled:
        return detector
    dist_utils.convert_sync_batchnorm(detector, device.type)
    detector.to(device)
    if hasattr(detector, "distributed_reduce"):
        detector.distributed_reduce = dist_utils.all_reduce_sum
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(detector, device_ids=device_ids)


def _mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    return dist_utils.all_reduce_mean(values)


def _make_batches(train_loader, dataset, settings: TrainSettings, state: TrainState, device: torch.device,
                  image_cache: bool, context, progress: bool):
    """The endless batch iterator and the callback that records one consumed batch in ``state``."""
    if dataset is None:
        return _cycle(train_loader, state.offset), lambda: setattr(state, "offset", state.offset + 1)
    sampler = ResumableBatchSampler(len(dataset), settings.batch_size, bool(getattr(train_loader, "drop_last", False)),
                                    settings.shuffle, state.data_seed, state.epoch, state.offset,
                                    rank=context.rank, world_size=context.world_size)

    def advance():
        sampler.advance()
        state.epoch, state.offset = sampler.epoch, sampler.offset
    if image_cache:
        cache = DeviceImageCache(dataset, device, num_workers=getattr(train_loader, "num_workers", 0),
                                 progress=progress and context.is_main)
        return cache.stream(sampler), advance
    pin_memory = bool(getattr(train_loader, "pin_memory", False)) and device.type == "cuda"
    return make_batch_stream(train_loader, sampler, pin_memory), advance


def _plot(history: Dict[str, List[float]], plot: bool) -> None:
    if not plot:
        return
    import matplotlib
    import matplotlib.pyplot as plt

    from ..utils import plot_loss_history

    fig = plot_loss_history(history)
    if plot and "agg" not in matplotlib.get_backend().lower():
        plt.show()
    else:
        plt.close(fig)
