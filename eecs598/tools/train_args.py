"""The command line of ``train_fcos.py``: options, their per-dataset defaults, and the checks that run first.

Every default comes from :mod:`eecs598.recipes`; the training settings are validated by
:class:`eecs598.train.settings.TrainSettings` (the same messages as ``train_detector``, under the flag's name),
the model options by :func:`eecs598.models.options.check_model_options`. Mistakes are answered in one or two
lines before any data is generated or a model is built.
"""
import argparse
import os
from typing import List, Optional

import torch

from ..errors import SettingError
from ..models.backbones import BACKBONES, build_classifier, load_trunk_weights
from ..models.options import check_model_options
from ..recipes import (AUGMENT_CHOICES, DATASETS, NMS_THRESH, OWN_DATASETS, PRESETS, SCORE_THRESH_MAP, SCORE_THRESH_VIS,
                       TTA_CHOICES, get_preset)
from ..train.checkpoint import check_writable
from ..train.settings import TrainSettings
from .dataset_args import CUSTOM_DATASETS, CUSTOM_RUN_CONFIG_KEYS, add_custom_dataset_options, check_custom_data
from .detector import MODEL_OPTION_KEYS

__all__ = ["RUN_CONFIG_KEYS", "UsageError", "build_parser", "parse_args", "settings_problem", "check_args",
           "train_settings", "model_options"]

# Settings that define the model and the data: saved in the checkpoint, so --eval-only rebuilds exactly them.
RUN_CONFIG_KEYS = ("dataset", "data_dir", "image_size", "fpn_channels", "stem_channels", "pretrained",
                   "num_train", "num_val", "preset", "backbone", "backbone_weights", "head_norm", "box_loss",
                   "center_sampling_radius", "p6p7", "p2", "shape_size") + CUSTOM_RUN_CONFIG_KEYS

# The flag of each setting, for messages in the command line's words.
_FLAGS = {"learning_rate": "--lr", "weight_decay": "--weight-decay", "max_iters": "--max-iters",
          "warmup_iters": "--warmup-iters", "grad_clip_norm": "--grad-clip", "ema_decay": "--ema-decay",
          "loss_weights": "--cls-loss-weight", "optimizer": "--optimizer", "precision": "--precision",
          "center_sampling_radius": "--center-sampling", "box_loss": "--box-loss", "head_norm": "--head-norm",
          "backbone": "--backbone", "backbone_weights": "--backbone-weights", "p6p7": "--p6p7",
          "p2": "--fpn-p2", "augment": "--augment", "accumulate_steps": "--accumulate", "freeze_bn": "--freeze-bn"}
# What a flag accepts beyond the setting itself.
_FLAG_NOTES = {"--grad-clip": " (0 disables clipping)", "--ema-decay": " (0 disables the average)",
               "--center-sampling": " (0 disables centre sampling)"}


def _preset(key: str) -> str:
    """Help-text suffix listing a setting's per-dataset defaults, e.g. ``(shapes: 8, voc: 16)``."""
    return "(" + ", ".join(f"{name}: {preset[key]}" for name, preset in DATASETS.items()) + ")"


def build_parser() -> argparse.ArgumentParser:
    """The command line (options grouped as in ``--help``)."""
    parser = _ArgumentParser(
        prog="train_fcos.py",
        description="Train FCOS (RegNetX-400MF + P3-P5 FPN) and evaluate mAP@0.5 on the offline Shapes dataset "
                    "(CPU demo) or PASCAL VOC 2007 (GPU). Defaults in parentheses are per dataset.",
        epilog="Examples:\n"
               "  python train_fcos.py --dataset shapes --run-dir runs/shapes-demo\n"
               "  python train_fcos.py --dataset voc --data-dir data --download --run-dir runs/voc --device cuda\n"
               "  python train_fcos.py --dataset voc --run-dir runs/voc --eval-only\n"
               "  python train_fcos.py --dataset voc-xml --data-dir data/VOCdevkit/VOC2007 --device cuda\n"
               "  torchrun --nproc_per_node 4 train_fcos.py --dataset voc --device cuda --run-dir runs/voc4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--dataset", choices=sorted(DATASETS) + sorted(OWN_DATASETS), default="shapes",
        help="which dataset and preset (default: shapes); coco, voc-xml, yolo: your own data (docs/data.md)")
    add("--run-dir", default=None, help="output directory (default: runs/<dataset>)")
    add("--data-dir", default=None, help=f"dataset directory {_preset('data_dir')}")
    add("--download", action="store_true", help="voc: download and extract the dataset first (md5-checked)")
    add("--device", default=None, help=f"cpu or cuda {_preset('device')}")
    add("--seed", type=int, default=0, help="seed for model init and data order (default: 0)")
    add("--threads", type=int, default=None,
        help="CPU threads for torch (default: one per core, or 1 if other processes keep the CPU busy: "
             "several threads on an oversubscribed CPU wait for each other and run many times slower)")
    _add_training_options(parser)
    _add_schedule_options(parser)
    _add_speed_options(parser)
    _add_evaluation_options(parser)
    add_custom_dataset_options(parser)
    return parser


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--fpn-channels", type=int, default=None, help=f"FPN width {_preset('fpn_channels')}")
    g.add_argument("--stem-channels", type=int, nargs="+", default=None,
                   help=f"head stem widths {_preset('stem_channels')}")
    g.add_argument("--pretrained", dest="pretrained", action="store_true", default=None,
                   help=f"start from ImageNet weights {_preset('pretrained')}")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random backbone")
    g = parser.add_argument_group("recipe options (eecs598/recipes.py; flags override the preset)")
    g.add_argument("--preset", choices=sorted(PRESETS), default="course",
                   help="course (default: the assignment's detector and recipe), improved (GIoU, centre "
                        "sampling, GroupNorm head, flip + scale jitter, warm-up + clipping), improved_tta (+ flip "
                        "TTA) or demo (make demo's CPU recipe)")
    g.add_argument("--backbone", choices=tuple(BACKBONES), default=None, help="trunk (default: regnet_x_400mf)")
    g.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="load the trunk from this local state dict (no download)")
    g.add_argument("--head-norm", choices=["none", "group"], default=None, help="GroupNorm in the head stems")
    g.add_argument("--box-loss", choices=["l1", "giou"], default=None, help="box regression loss")
    g.add_argument("--center-sampling", dest="center_sampling_radius", type=float, default=None, metavar="RADIUS",
                   help="positives only within RADIUS strides of the box centre (0 disables)")
    g.add_argument("--p6p7", dest="p6p7", action="store_true", default=None, help="add P6/P7 levels")
    g.add_argument("--fpn-p2", dest="p2", action="store_true", default=None,
                   help="add a P2 level (stride 4) for small objects: P2 takes sizes under 32 px, P3 32-64")
    g.add_argument("--augment", choices=list(AUGMENT_CHOICES), default=None,
                   help="on-device training augmentation: horizontal flip, and scale jitter 0.8-1.25")
    g.add_argument("--tta", choices=list(TTA_CHOICES), default=None,
                   help="test-time augmentation at evaluation: flip, and scales 0.8/1/1.25")


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--image-size", type=int, default=None, help=f"square input size in px {_preset('image_size')}")
    g.add_argument("--batch-size", type=int, default=None, help=_preset("batch_size"))
    g.add_argument("--max-iters", type=int, default=None, help=_preset("max_iters"))
    g.add_argument("--lr", dest="learning_rate", type=float, default=None,
                   help=f"base learning rate {_preset('learning_rate')}")
    g.add_argument("--weight-decay", type=float, default=None, help=_preset("weight_decay"))
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=None,
                   help=f"{_preset('optimizer')}; with a random backbone plain SGD is replaced by "
                        "eecs598.recipes.FROM_SCRATCH unless optimiser settings are given")
    g.add_argument("--warmup-iters", type=int, default=None, help=f"linear LR warm-up {_preset('warmup_iters')}")
    g.add_argument("--grad-clip", dest="grad_clip_norm", type=float, default=None,
                   help=f"clip the gradient norm, 0 disables {_preset('grad_clip_norm')}")
    g.add_argument("--ema-decay", type=float, default=None,
                   help=f"evaluate an exponential moving average of the weights, 0 disables {_preset('ema_decay')}")
    g.add_argument("--cls-loss-weight", type=float, default=None,
                   help=f"weight of loss_cls in the optimised total {_preset('cls_loss_weight')}")
    g.add_argument("--accumulate", dest="accumulate_steps", type=int, default=1, metavar="N",
                   help="gradient accumulation: each optimiser step runs over N batches of --batch-size, so "
                        "--batch-size 4 --accumulate 4 trains like batch 16; iteration counts (--max-iters, "
                        "periods, warm-up) are optimiser steps (default: 1)")
    g.add_argument("--freeze-bn", action="store_true",
                   help="freeze the trunk's BatchNorm (torchvision FrozenBatchNorm2d: statistics and affine "
                        "parameters kept); advisable with small batches, e.g. with --accumulate (default: off, "
                        "the course's)")
    g.add_argument("--num-workers", type=int, default=None, help=f"DataLoader workers {_preset('num_workers')}")
    g.add_argument("--log-period", type=int, default=50, help="iterations between log lines (default: 50)")
    g.add_argument("--checkpoint-period", type=int, default=200,
                   help="iterations between checkpoints (default: 200)")
    g.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt (exactly)")
    g.add_argument("--extend", action="store_true",
                   help="with --resume: allow a larger --max-iters than the checkpoint's; LR milestones already "
                        "passed stay, the others move to 60%%/90%% of the new --max-iters")
    g.add_argument("--eval-only", action="store_true",
                   help="skip training; rebuild the model and data from RUN_DIR/checkpoint.pt's saved settings, "
                        "evaluate, write metrics_eval.json")


def _add_speed_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("speed (GPU)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (default), or mixed precision: bf16 autocast, fp16 autocast + gradient scaler")
    g.add_argument("--fused-optimizer", action="store_true", help="fused optimiser kernels (one launch per step)")
    g.add_argument("--no-step-sync", action="store_true",
                   help="no host sync per step: losses fetched every --log-period iterations (implies "
                        "--fused-optimizer unless --precision fp16); a bad step is still never applied")
    g.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                   help="layout of weights and activations: auto (default) is channels_last on the CPU (faster "
                        "with oneDNN) and contiguous (NCHW) on CUDA")
    g.add_argument("--image-cache", action="store_true",
                   help="decode the training set once and keep it on the device (VOC at 224 px: 377 MB)")
    g.add_argument("--compile", dest="compile_model", action="store_true", help="torch.compile backbone and head")
    g = parser.add_argument_group("monitoring")
    g.add_argument("--eval-period", type=int, default=None,
                   help="evaluate mAP every K iterations on --eval-images val images, keeping last.pt and best.pt")
    g.add_argument("--eval-images", type=int, default=100, help="val images for --eval-period (default: 100)")
    g.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard logs to RUN_DIR/tensorboard (pip install -e '.[tensorboard]')")


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("shapes data")
    g.add_argument("--num-train", type=int, default=None, help="generated training images (default: 3000)")
    g.add_argument("--num-val", type=int, default=None, help="generated validation images (default: 300)")
    g.add_argument("--shape-size", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="box sizes of the generated shapes in px, log-uniform (default: 14 64, at most "
                        "--image-size); e.g. 6 24 for a small-object set")
    g = parser.add_argument_group("evaluation")
    g.add_argument("--score-thresh", type=float, default=SCORE_THRESH_MAP,
                   help=f"score threshold for the mAP files (default: {SCORE_THRESH_MAP})")
    g.add_argument("--nms-thresh", type=float, default=NMS_THRESH,
                   help=f"class-specific NMS IoU threshold (default: {NMS_THRESH})")
    g.add_argument("--max-val-images", type=int, default=None, help="evaluate on the first N val images only")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--coco", action="store_true", help="also COCO-style AP@[.5:.95], AP50, AP75, AP/AR by size "
                   "(pycocotools, extra 'coco'): metrics.json and RUN_DIR/analysis/coco_metrics.json")
    g.add_argument("--sweep", action="store_true", help="score x NMS threshold sweep from one extra inference pass: "
                   "RUN_DIR/analysis/sweep.{csv,md,png}")
    g.add_argument("--error-analysis", action="store_true", help="PR curves, false-positive / miss types, confusion "
                   f"matrix and worst images (at score > {SCORE_THRESH_VIS}) in RUN_DIR/analysis/")


class UsageError(Exception):
    """A mistake in the command line or in what it points at; ``cli()`` prints it without a traceback."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line instead of the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def train_settings(args: argparse.Namespace) -> dict:
    """The ``train_detector`` settings that ``args`` chose (the keyword arguments of :class:`TrainSettings`)."""
    return dict(learning_rate=args.learning_rate, weight_decay=args.weight_decay, max_iters=args.max_iters,
                optimizer=args.optimizer, warmup_iters=args.warmup_iters, grad_clip_norm=args.grad_clip_norm,
                ema_decay=args.ema_decay,
                loss_weights=None if args.cls_loss_weight == 1.0 else {"loss_cls": args.cls_loss_weight},
                precision=args.precision, fused_optimizer=args.fused_optimizer, augment=args.augment,
                accumulate_steps=args.accumulate_steps, freeze_bn=args.freeze_bn)


def model_options(args: argparse.Namespace) -> dict:
    """The keyword options of ``FCOS`` that ``args`` chose (``--preset`` and the recipe flags)."""
    return {key: getattr(args, key) for key in MODEL_OPTION_KEYS}


def _settings_problem(args: argparse.Namespace) -> Optional[str]:
    """The training settings and model options, validated with the library's own checks, in the flags' words."""
    try:
        TrainSettings(**train_settings(args))
        check_model_options(**model_options(args))
    except SettingError as e:
        flag = _FLAGS.get(e.field.split("[")[0], e.field)
        return f"{flag} {e.requirement}{_FLAG_NOTES.get(flag, '')}"
    return None


# Command-line integers that are not training settings: (flag, attribute, minimum).
_COUNTS = (("--batch-size", "batch_size", 1), ("--image-size", "image_size", 32), ("--num-workers", "num_workers", 0),
           ("--log-period", "log_period", 1), ("--checkpoint-period", "checkpoint_period", 1),
           ("--num-train", "num_train", 1), ("--num-val", "num_val", 1), ("--max-val-images", "max_val_images", 1),
           ("--eval-period", "eval_period", 1), ("--eval-images", "eval_images", 1),
           ("--fpn-channels", "fpn_channels", 1))
# Upper bounds, where a larger value cannot be meant: an S x S float image takes 12 S^2 bytes (S = 100000:
# 120 GB; 4096 px is already far past the 800-1333 px of the FCOS paper), a conv of C channels 9 C^2
# weights, and a Shapes split of N images N x ~9 ms to draw (10^6: hours; benchmarks/reliability_figures.py).
_MAXIMA = {"image_size": 4096, "fpn_channels": 4096, "num_train": 10 ** 6, "num_val": 10 ** 6}
_MAX_STEM_CONVS, _MAX_STEM_CHANNELS = 16, 4096


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stem_problem(stem_channels) -> Optional[str]:
    if not (isinstance(stem_channels, (list, tuple)) and 1 <= len(stem_channels) <= _MAX_STEM_CONVS
            and all(_is_int(c) and 1 <= c <= _MAX_STEM_CHANNELS for c in stem_channels)):
        return (f"--stem-channels must be 1 to {_MAX_STEM_CONVS} widths, each an int in [1, {_MAX_STEM_CHANNELS}], "
                f"got {stem_channels!r}")
    return None


def _choice_problem(args: argparse.Namespace) -> Optional[str]:
    """What argparse itself guarantees on the command line (choices, types), checked again for settings that
    come from elsewhere (a checkpoint's saved ``run_config``)."""
    for option, name, choices in (("--dataset", "dataset", {**DATASETS, **OWN_DATASETS}), ("--preset", "preset", PRESETS)):
        if getattr(args, name) not in choices:
            return f"{option} must be one of {', '.join(sorted(choices))}, got {getattr(args, name)!r}"
    if not isinstance(args.data_dir, str):
        return f"--data-dir must be a directory path, got {args.data_dir!r}"
    if not isinstance(args.pretrained, bool):
        return f"--pretrained must be True or False, got {args.pretrained!r}"
    return _stem_problem(args.stem_channels)


def settings_problem(args: argparse.Namespace) -> Optional[str]:
    """The first value in ``args`` that the command line refuses, in its words (``"--image-size must be >= 32,
    got 5"``), or None. ``parse_args`` and ``--eval-only`` (for the checkpoint's saved settings) both use it."""
    problem = _choice_problem(args)
    if problem:
        return problem
    for option, name, low in _COUNTS:  # bad numbers are refused now, not after minutes of data and training
        value = getattr(args, name, None)
        high = _MAXIMA.get(name)
        if value is None:
            continue
        if not _is_int(value):
            return f"{option} must be an int, got {value!r}"
        if value < low:
            return f"{option} must be >= {low}, got {value}"
        if high is not None and value > high:
            return f"{option} must be <= {high}, got {value}"
    for option, name in (("--score-thresh", "score_thresh"), ("--nms-thresh", "nms_thresh")):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:  # also refuses nan
            return f"{option} must be in [0, 1], got {value}"
    return _shape_size_problem(args) or _settings_problem(args)


def _shape_size_problem(args: argparse.Namespace) -> Optional[str]:
    """``--shape-size MIN MAX``: two ints with ``4 <= MIN <= MAX <= --image-size`` (the generator's limits)."""
    size = getattr(args, "shape_size", None)
    if size is None:
        return None
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"--shape-size must be two ints MIN MAX, got {size!r}"
    if not 4 <= size[0] <= size[1] <= args.image_size:
        return (f"--shape-size must satisfy 4 <= MIN <= MAX <= --image-size ({args.image_size}), "
                f"got {size[0]} {size[1]}")
    return None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments; unset ones take the chosen dataset's value from ``eecs598.recipes.DATASETS``
    and the chosen ``--preset``'s recipe. Bad values exit with status 2 and one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.coco:
        from ..evaluation.coco import require_pycocotools
        try:
            require_pycocotools()
        except ImportError as e:
            parser.error(f"--coco: {e}")

    args.explicit = {k for k, v in vars(args).items() if v is not None}  # to tell defaults from choices
    for key, value in {**DATASETS, **OWN_DATASETS}[args.dataset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    apply_recipe_preset(args)
    if args.grad_clip_norm == 0:
        args.grad_clip_norm = None
    if args.ema_decay == 0:
        args.ema_decay = None
    if args.no_step_sync and args.precision != "fp16":
        args.fused_optimizer = True
    problem = settings_problem(args)
    if problem:
        parser.error(problem)
    if args.extend and not args.resume:
        parser.error("--extend continues a run: use it with --resume")
    if args.run_dir is None:
        args.run_dir = os.path.join("runs", args.dataset)
    return args  # the device, the data and the run directory are checked by check_args()


def apply_recipe_preset(args: argparse.Namespace) -> None:
    """Fill unset recipe options from ``--preset`` (``eecs598.recipes.PRESETS``): model options, training
    overrides (only where the command line did not choose them; not for ``course``, whose random-trunk
    fallback is decided after the model is built), augmentation and TTA."""
    recipe = get_preset(args.preset)
    for key, value in recipe["model"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.head_norm == "none":
        args.head_norm = None
    if args.center_sampling_radius == 0:
        args.center_sampling_radius = None
    if args.preset != "course":
        for key, value in recipe["train"].items():
            if key not in args.explicit:
                setattr(args, key, value)
    args.augment = AUGMENT_CHOICES[args.augment] if args.augment is not None else recipe["augment"]
    args.tta = TTA_CHOICES[args.tta] if args.tta is not None else recipe["tta"]


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at most ``os.cpu_count()``."""
    count = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        count = min(count, len(os.sched_getaffinity(0)))
    return max(1, count)


def _check_device(args: argparse.Namespace) -> str:
    """The device to use, or a UsageError in the CLI's words (``--device``, ``--dataset``)."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device must be cpu, cuda or cuda:N (a GPU index), got {args.device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu, cuda or cuda:N (a GPU index), got {args.device!r}")
    if device.type == "cpu":
        return str(device)
    if not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no NVIDIA GPU was found"
        if "device" in args.explicit:
            raise UsageError(f"--device {args.device}: CUDA is not available ({why}); use --device cpu")
        if args.eval_only:
            print(f"CUDA is not available ({why}): evaluating on the CPU.")
            return "cpu"
        raise UsageError(
            f"--dataset {args.dataset} trains on a GPU by default, but CUDA is not available ({why}); on the CPU its "
            f"{args.max_iters} iterations at {args.image_size} px take many hours.\nPass --device cpu to train on the "
            f"CPU anyway (e.g. with a smaller --max-iters), or try --dataset shapes (a CPU demo).")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {args.device}: there are only {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return str(device)


def check_args(args: argparse.Namespace) -> None:
    """Refuse what cannot work before generating data or building a model (raises ``UsageError``);
    adjusts ``args`` where the choice is safe (device, DataLoader workers)."""
    args.device = _check_device(args)
    checkpoint_path = os.path.join(args.run_dir, "checkpoint.pt")
    if args.eval_only and not os.path.isfile(checkpoint_path):
        raise UsageError(f"--eval-only: there is no checkpoint to evaluate at {checkpoint_path}. Train first (run "
                         f"without --eval-only), or point --run-dir at a finished run.")
    if args.dataset == "voc" and not args.download and not args.eval_only:  # --eval-only: the checkpoint's data
        check_voc_files(args.data_dir)
    if args.dataset in CUSTOM_DATASETS and not args.eval_only:
        check_custom_data(args, UsageError)
    if args.backbone_weights is not None and not args.eval_only:
        check_backbone_weights(args.backbone, args.backbone_weights)
    if not args.eval_only:
        try:
            check_writable(checkpoint_path)  # creates --run-dir
        except OSError as e:
            reason = (f"{checkpoint_path} is a directory" if os.path.isdir(checkpoint_path)
                      else getattr(e.__cause__, "strerror", None) or e.strerror or str(e))
            raise UsageError(f"cannot write into --run-dir {args.run_dir}: {reason}") from None
    cores = _usable_cores()
    if args.num_workers > cores:
        print(f"--num-workers {args.num_workers} is more than the {cores} core(s) here: using {cores}.")
        args.num_workers = cores


def check_voc_files(data_dir: str, splits=("train", "val")) -> None:
    """Refuse a ``--data-dir`` without the VOC files of ``splits`` (raises ``UsageError``)."""
    needed = [f"voc07_{split}.json" for split in splits] + [os.path.join("VOCdevkit", "VOC2007", "JPEGImages")]
    missing = [name for name in needed if not os.path.exists(os.path.join(data_dir, name))]
    if missing:
        raise UsageError(
            f"VOC 2007 is not in --data-dir {data_dir} (missing {', '.join(missing)}).\nAdd --download "
            f"to fetch it (about 460 MB), or point --data-dir at the folder that holds it.")


def check_backbone_weights(backbone: str, path: str) -> None:
    """Load ``--backbone-weights`` into the trunk's classifier once, before any data work, so that a missing,
    unreadable or unfitting file (wrong keys or shapes, integer tensors, NaN values) is answered in one line."""
    classifier = build_classifier(backbone)
    try:
        load_trunk_weights(classifier, backbone, path)
    except (OSError, RuntimeError, ValueError) as e:  # every error of load_trunk_weights is about the file
        message = str(e)
        message = message[len("backbone_weights: "):] if message.startswith("backbone_weights: ") else message
        raise UsageError(f"--backbone-weights {message}") from None
