"""``train_fcos.py``: train FCOS and evaluate its mAP, on the offline Shapes dataset (CPU demo) or VOC 2007 (GPU).

Examples::

    python train_fcos.py --dataset shapes --run-dir runs/shapes-demo            # `make demo`, CPU
    python train_fcos.py --dataset voc --data-dir data --download --run-dir runs/voc --device cuda
    python train_fcos.py --dataset voc --run-dir runs/voc --eval-only             # re-evaluate checkpoint.pt
    torchrun --nproc_per_node 4 train_fcos.py --dataset voc --device cuda ...    # 4 GPUs, data-parallel

Everything lands in the run directory: ``checkpoint.pt``, ``results.csv`` (a row per log period),
``loss_curve.png``, ``detections.png``, ``ap_per_class.png``, ``metrics.json`` (mAP, per-class AP,
iterations, wall times, settings; ``--eval-only`` writes ``metrics_eval.json``), the Cartucho/mAP files in
``mAP/input/{ground-truth,detection-results}`` with ``mAP/output/output.txt``, and with ``--eval-period``
``last.pt`` / ``best.pt``. The options and their checks are in :mod:`eecs598.tools.train_args`.
"""
import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import matplotlib.pyplot as plt
import torch
from torch.utils.data import DataLoader, Subset

from .. import reset_seed
from ..data.datasets import ShapesDetection, VOC2007DetectionTiny
from ..data.shapes import generate_shapes_dataset
from ..data.download import VOC_URL_BASE, DownloadError
from ..evaluation import errors, sweeps
from ..evaluation.evaluator import inference_on_dataset
from ..evaluation.figures import draw_detections
from ..evaluation.inference import MapEvaluator, inference_with_detector
from ..evaluation.mean_ap import evaluate_map, plot_ap_bars
from ..recipes import DATASETS, FROM_SCRATCH, NMS_THRESH, SCORE_THRESH_VIS, from_scratch_overrides
from ..train import distributed as dist_utils
from ..train.api import train_detector
from ..train.checkpoint import CheckpointError, load_checkpoint
from ..train.hooks import CsvLogHook, PeriodicEvalHook, TensorBoardHook
from ..train.runtime import choose_cpu_threads
from ..utils import plot_loss_history
from .dataset_args import CUSTOM_DATASETS, build_custom_datasets
from .detector import build_fcos, load_checkpoint_weights
from .train_args import (RUN_CONFIG_KEYS, UsageError, check_args, check_voc_files, model_options, parse_args,
                         settings_problem, train_settings)

__all__ = ["main", "cli", "run", "build_datasets", "build_datasets_once", "build_model", "train", "evaluate", "quick_map"]

# Settings of the run recorded in metrics.json.
_REPORTED_SETTINGS = (
    "image_size", "batch_size", "max_iters", "learning_rate", "weight_decay", "optimizer", "warmup_iters",
    "grad_clip_norm", "ema_decay", "cls_loss_weight", "fpn_channels", "stem_channels", "pretrained",
    "pretrained_loaded", "device", "num_workers", "seed", "score_thresh", "nms_thresh", "data_dir",
    "precision", "fused_optimizer", "no_step_sync", "image_cache", "compile_model", "preset", "backbone",
    "backbone_weights", "head_norm", "box_loss", "center_sampling_radius", "p6p7", "p2", "shape_size", "augment",
    "tta", "accumulate_steps", "freeze_bn", "memory_format")


def main(argv: Optional[List[str]] = None) -> dict:
    """Run the whole job (see the module docstring); returns the metrics written to metrics.json."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # log lines appear at once also when redirected to a file
    threads = torch.get_num_threads()
    try:
        args = parse_args(argv)
        check_args(args)
        return run(args)
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)


def cli(argv: Optional[List[str]] = None) -> int:
    """``python train_fcos.py ...``: :func:`main`, with user mistakes answered in one or two lines, in the
    command line's own words, and exit status 2 (a KeyboardInterrupt: 130). Anything else is a bug and
    keeps its traceback."""
    def fail(message: str, status: int = 2) -> int:
        print(f"train_fcos.py: error: {message}", file=sys.stderr)
        return status

    try:
        main(argv)
    except UsageError as e:
        return fail(str(e))
    except DownloadError as e:
        return fail(f"--download failed: {e.reason} ({e.url}).\nWithout internet: copy voc07_train.json, "
                    f"voc07_val.json and VOCtrainval_06-Nov-2007.tar from {VOC_URL_BASE} into --data-dir by hand, "
                    f"extract the tar there, and run again without --download.")
    except CheckpointError as e:
        return fail(f"{str(e).split('. ')[0]}.\nDelete it to train from scratch (or pass another --run-dir).")
    except dist_utils.DistributedSetupError as e:  # torchrun's variables, or processes that did not meet
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted. Run the same command with --resume to continue from the last checkpoint.", 130)
    return 0


def _set_up_process(args: argparse.Namespace):
    """Join torchrun's process group (if any), choose the device and CPU threads; returns the context."""
    context = dist_utils.init_from_environment("cuda" if str(args.device).startswith("cuda") else "cpu")
    if context.enabled and args.device.startswith("cuda"):
        args.device = f"cuda:{context.local_rank}"
    if args.threads is None and args.device == "cpu":
        args.threads = choose_cpu_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return context


def run(args: argparse.Namespace) -> dict:
    """Datasets, training, evaluation and figures for parsed command-line ``args``."""
    context = _set_up_process(args)
    os.makedirs(args.run_dir, exist_ok=True)
    checkpoint_path = os.path.join(args.run_dir, "checkpoint.pt")
    checkpoint = load_for_evaluation(args, checkpoint_path) if args.eval_only else None
    start, cpu_start = time.time(), time.process_time()
    train_set, val_set = build_datasets_once(args, context, train=checkpoint is None)
    data_seconds = time.time() - start

    reset_seed(args.seed)
    model = build_model(args, num_classes=len(val_set.class_to_idx))
    if checkpoint is not None:
        load_checkpoint_weights(model, checkpoint, checkpoint_path)
        history, iterations, train_seconds = checkpoint["history"], checkpoint["state"]["iteration"], 0.0
    else:
        t0 = time.time()
        history = train(args, model, train_set, val_set, checkpoint_path, context)
        train_seconds, iterations = time.time() - t0, args.max_iters
    if not context.is_main:
        return {}
    plt.close(plot_loss_history(history, path=os.path.join(args.run_dir, "loss_curve.png")))
    t0 = time.time()
    result, eval_set = evaluate(args, model, val_set)
    eval_seconds = time.time() - t0
    draw_detections(model, val_set, os.path.join(args.run_dir, "detections.png"), args.device,
                    score_thresh=SCORE_THRESH_VIS, nms_thresh=NMS_THRESH)
    seconds = {"data": round(data_seconds, 1), "train": round(train_seconds, 1), "eval": round(eval_seconds, 1),
               "total": round(time.time() - start, 1)}
    metrics = _metrics(args, result, history, iterations, seconds, time.process_time() - cpu_start,
                       None if train_set is None else len(train_set), len(eval_set), context.world_size)
    metrics.update(evaluation_extras(args, model, eval_set, val_set.idx_to_class,
                                     os.path.join(args.run_dir, "mAP", "input")))
    metrics_name = "metrics_eval.json" if args.eval_only else "metrics.json"
    with open(os.path.join(args.run_dir, metrics_name), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"\nmAP@0.5 = {result.map:.2%} on {len(eval_set)} {args.dataset} val images "
          f"(train {train_seconds:.0f}s, eval {eval_seconds:.0f}s).")
    print(f"Outputs in {args.run_dir}/: checkpoint.pt, results.csv, loss_curve.png, detections.png, "
          f"ap_per_class.png, {metrics_name}, mAP/input (Cartucho files), mAP/output/output.txt")
    return metrics


def _metrics(args, result, history, iterations: int, seconds: dict, cpu_seconds: float, num_train: int,
             num_val: int, processes: int) -> dict:
    """The content of metrics.json."""
    return {
        "dataset": args.dataset, "mAP": result.map, "ap_per_class": result.ap, "iterations": iterations,
        "final_loss_avg50": {k: sum(v[-50:]) / max(1, len(v[-50:])) for k, v in history.items()},
        "seconds": seconds,
        # CPU time of this process: compare with wall time x threads to see whether the machine was busy.
        "cpu_seconds": round(cpu_seconds, 1), "num_train_images": num_train, "num_val_images": num_val,
        "settings": {k: getattr(args, k) for k in _REPORTED_SETTINGS},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "processes": processes,
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }


def load_for_evaluation(args: argparse.Namespace, checkpoint_path: str) -> dict:
    """``--eval-only``: load the checkpoint BEFORE any data work, and take the model/data settings it saved.

    The saved settings pass the command line's own checks (:func:`~eecs598.tools.train_args.settings_problem`):
    a checkpoint edited to say ``image_size=100000`` is refused in the flags' words, naming the file.
    """
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"--eval-only: no checkpoint at {checkpoint_path}; train first (without "
                                f"--eval-only) or point --run-dir at a finished run")
    checkpoint = load_checkpoint(checkpoint_path)
    saved = checkpoint.get("run_config") or {}
    if not isinstance(saved, dict):
        raise UsageError(f"--eval-only: {checkpoint_path} holds no saved settings (its run_config is a "
                         f"{type(saved).__name__}); it was not written by train_fcos.py")
    changed = {k: (getattr(args, k), v) for k, v in saved.items() if k in RUN_CONFIG_KEYS and getattr(args, k) != v
               and k in args.explicit}
    if changed:
        print(f"--eval-only: using the checkpoint's settings {{name: (given, saved)}}: {changed}")
    for key, value in saved.items():
        if key in RUN_CONFIG_KEYS:
            setattr(args, key, value)
    problem = settings_problem(args)
    if problem:
        raise UsageError(f"--eval-only: the settings saved in {checkpoint_path} are ones the command line refuses: "
                         f"{problem}.\nThe file was changed after training (or not written by train_fcos.py): "
                         f"train again, or evaluate another run.")
    if args.dataset == "voc" and not args.download:
        check_voc_files(args.data_dir, splits=("val",))
    return checkpoint


def build_datasets(args, train: bool = True, prepare: bool = True):
    """Train and val datasets of the chosen kind. ``train=False`` (``--eval-only``): the train split is
    neither generated nor read, and ``None`` is returned for it. ``prepare=False``: only read what is on disk
    (no Shapes generation, no ``--download``)."""
    if args.dataset in CUSTOM_DATASETS:  # one's own data: COCO, VOC XML, YOLO (eecs598.data.formats)
        return build_custom_datasets(args, UsageError, train=train)
    download = args.download and prepare
    if args.dataset == "shapes":
        kwargs = dict(image_size=args.image_size, num_train=args.num_train, num_val=args.num_val, seed=0)
        if prepare:  # Shapes are 14-64 px (the generator's default), never larger than the image (--image-size
            # 32), unless --shape-size chose the range.
            min_size, max_size = getattr(args, "shape_size", None) or (14, min(64, args.image_size))
            generate_shapes_dataset(args.data_dir, min_size=min_size, max_size=max_size, progress=not args.no_progress,
                                    splits=("train", "val") if train else ("val",), **kwargs)
        train_set = ShapesDetection(args.data_dir, "train", generate=False, **kwargs) if train else None
        val_set = ShapesDetection(args.data_dir, "val", generate=False, **kwargs)
    else:
        train_set = (VOC2007DetectionTiny(args.data_dir, "train", download=download, image_size=args.image_size)
                     if train else None)
        val_set = VOC2007DetectionTiny(args.data_dir, "val", download=download and not train,
                                       image_size=args.image_size)
    return train_set, val_set


def build_datasets_once(args, context, train: bool = True):
    """:func:`build_datasets` under ``torchrun``: rank 0 generates (or downloads) the data alone while the others
    wait (``context.barrier``), then they read what it wrote. Every rank generating into one folder removed
    the others' temporary folders (``.shapes.partial-*``) and swapped the images out under their readers."""
    if not context.enabled:
        return build_datasets(args, train=train)
    if context.is_main:
        datasets = build_datasets(args, train=train)
        context.barrier()
        return datasets
    context.barrier()  # up to $EECS598_BARRIER_TIMEOUT s (default 1800): a download can take a while
    return build_datasets(args, train=train, prepare=False)


def build_model(args, num_classes: int) -> torch.nn.Module:
    """FCOS; records whether the ImageNet weights were really loaded (offline they are not) and, when they
    were not, replaces plain SGD by the from-scratch recipe unless optimiser settings were chosen."""
    if getattr(args, "eval_only", False):  # the checkpoint's weights replace the trunk's: no download, no file
        options = dict(model_options(args), backbone_weights=None)
        args.pretrained_loaded = None
        return build_fcos(num_classes, args.fpn_channels, args.stem_channels, False, **options)
    model = build_fcos(num_classes, args.fpn_channels, args.stem_channels, args.pretrained, **model_options(args))
    args.pretrained_loaded = model.backbone.weights_source != "random"
    if not args.pretrained_loaded:
        overrides = from_scratch_overrides(args.optimizer, args.explicit)
        if overrides:
            print(f"Random backbone (no ImageNet weights): using the FROM_SCRATCH optimiser recipe {overrides} "
                  f"instead of plain SGD.")
            for key, value in overrides.items():
                setattr(args, key, value)
    return model


def _hooks(args, model, train_set, val_set) -> list:
    """results.csv, optional TensorBoard and periodic evaluation (with last.pt / best.pt)."""
    hooks = [CsvLogHook(os.path.join(args.run_dir, "results.csv"), args.log_period)]
    tensorboard = None
    if args.tensorboard:
        tensorboard = TensorBoardHook(os.path.join(args.run_dir, "tensorboard"), args.log_period,
                                      train_set.idx_to_class, next(iter(DataLoader(train_set, batch_size=4))))
        hooks.append(tensorboard)
    if args.eval_period is not None:
        hooks.append(PeriodicEvalHook(
            args.eval_period, lambda: quick_map(args, model, val_set),
            os.path.join(args.run_dir, "last.pt"), os.path.join(args.run_dir, "best.pt"),
            on_score=None if tensorboard is None else (lambda it, score: tensorboard.add_scalar("val/mAP", score, it))))
    return hooks


def train(args, model, train_set, val_set, checkpoint_path: str, context) -> Dict[str, List[float]]:
    """Train ``model`` with the settings in ``args``."""
    batch_size = dist_utils.shard_batch_size(args.batch_size, context.world_size)
    num_workers = min(args.num_workers, os.cpu_count() or 1)
    train_loader = DataLoader(train_set, batch_size=batch_size, num_workers=num_workers,
                              pin_memory=args.device.startswith("cuda"))
    if context.is_main:
        print(f"Training FCOS on {args.dataset} ({len(train_set)} images, {args.image_size}px) for "
              f"{args.max_iters} iterations on {args.device}"
              + (f" x {context.world_size} processes" if context.enabled else "")
              + f": {args.optimizer} lr {args.learning_rate}, batch {args.batch_size}"
              + (f" x {args.accumulate_steps} accumulated (optimiser steps of {args.batch_size * args.accumulate_steps} "
                 f"images)" if args.accumulate_steps > 1 else "")
              + (", frozen BatchNorm" if args.freeze_bn else "")
              + f", warm-up {args.warmup_iters}, "
              f"clip {args.grad_clip_norm}, loss_cls weight {args.cls_loss_weight}, fpn {args.fpn_channels}, "
              f"stem {args.stem_channels}, pretrained {args.pretrained_loaded}, precision {args.precision}.")
    run_config = {k: getattr(args, k) for k in RUN_CONFIG_KEYS}
    run_config["class_names"] = [train_set.idx_to_class[i] for i in range(len(train_set.idx_to_class))]
    try:
        return train_detector(
            model, train_loader, device=args.device, log_period=args.log_period,
            sync_every_step=not args.no_step_sync, image_cache=args.image_cache, compile_model=args.compile_model,
            memory_format=args.memory_format,
            distributed=context, run_config=run_config, checkpoint_path=checkpoint_path,
            checkpoint_period=args.checkpoint_period, resume=args.resume, extend=args.extend, plot=False,
            progress=not args.no_progress, hooks=_hooks(args, model, train_set, val_set), **train_settings(args))
    except FloatingPointError as e:
        raise TrainingDiverged(f"training diverged: {str(e).split('. ')[0].replace('train_detector: ', '')}.\n"
                               f"{divergence_advice(args)}") from e


class TrainingDiverged(UsageError, FloatingPointError):
    """The engine's ``FloatingPointError``, re-worded for the command line with the likely cause in its flags."""


def divergence_advice(args: argparse.Namespace) -> str:
    """Why a run with these settings may have diverged, and what to change, in the command line's words.

    The engine cannot tell a random trunk from a recipe used far from where it was tuned; the command line
    knows both. Measured on the VOC sample: at 32 px 26 of its 59 training objects cover no location and
    P4/P5 get no positive at all (7 positive locations per image against 56 at 224 px, docs/reliability.md).
    """
    recipe = DATASETS[args.dataset]
    causes = []
    if args.pretrained_loaded is False and args.optimizer == "sgd":
        causes.append("the backbone is random (no ImageNet weights) and plain SGD diverges from there: leave out "
                      "the optimiser flags so that the FROM_SCRATCH recipe (AdamW, warm-up, clipping) is used")
    if args.image_size * 2 <= recipe["image_size"]:
        # FCOS gives P4 the boxes whose farthest side is over 64 px from the location: none at 64 px or less.
        levels = ", and none reaches P4/P5" if args.image_size <= 64 else ""
        causes.append(f"--image-size {args.image_size} is far below the {recipe['image_size']} px the "
                      f"--dataset {args.dataset} recipe is tuned for: its objects shrink to a few pixels, many cover "
                      f"no location{levels}; train at --image-size {recipe['image_size']}, or with a steadier recipe "
                      f"({_STEADY_FLAGS})")
    if not causes:
        causes.append(f"--optimizer {args.optimizer} at --lr {args.learning_rate} takes too large steps for these "
                      f"settings: lower --lr, or use a steadier recipe ({_STEADY_FLAGS})")
    advice = "; and ".join(causes)
    return advice[0].upper() + advice[1:] + "."


# eecs598.recipes.FROM_SCRATCH as flags: it trained VOC at 32 px for 1000 iterations without diverging.
_STEADY_FLAGS = (f"--optimizer {FROM_SCRATCH['optimizer']} --lr {FROM_SCRATCH['learning_rate']} --warmup-iters "
                 f"{FROM_SCRATCH['warmup_iters']} --grad-clip {FROM_SCRATCH['grad_clip_norm']:g}")


def quick_map(args, model, val_set) -> float:
    """mAP@0.5 on the first ``--eval-images`` val images (periodic evaluation during training)."""
    subset = Subset(val_set, range(min(args.eval_images, len(val_set))))
    evaluator = MapEvaluator(val_set.idx_to_class, difficult_gt=getattr(val_set, "difficult_gt", None))
    result, = inference_on_dataset(model, DataLoader(subset, batch_size=1), [evaluator],
                                   args.score_thresh, args.nms_thresh, device=args.device, progress=False,
                                   caller="periodic evaluation")
    return result.map


def evaluate(args, model, val_set):
    """Cartucho files for the val set (or its first ``--max-val-images``), then mAP and the AP chart."""
    if args.max_val_images is not None:
        val_set = Subset(val_set, range(min(args.max_val_images, len(val_set))))
    map_input = os.path.join(args.run_dir, "mAP", "input")
    val_loader = DataLoader(val_set, batch_size=1, num_workers=min(args.num_workers, os.cpu_count() or 1))
    idx_to_class = val_set.dataset.idx_to_class if isinstance(val_set, Subset) else val_set.idx_to_class
    inference_with_detector(model, val_loader, idx_to_class, args.score_thresh, args.nms_thresh,
                            output_dir=map_input, device=args.device, progress=not args.no_progress, tta=args.tta)
    result = evaluate_map(map_input, output_dir=os.path.join(args.run_dir, "mAP", "output"), plot=False)
    plot_ap_bars(result.ap, result.map, path=os.path.join(args.run_dir, "ap_per_class.png"))
    return result, val_set


def evaluation_extras(args, model, val_set, idx_to_class, map_input: str) -> dict:
    """The optional outputs of ``--coco``, ``--sweep`` and ``--error-analysis`` (files in ``RUN_DIR/analysis/``);
    returns the entries they add to metrics.json."""
    extra, out_dir = {}, os.path.join(args.run_dir, "analysis")
    if args.coco:  # from the Cartucho files just written: the same detections as the mAP
        from ..evaluation.coco import evaluate_coco

        coco = evaluate_coco(map_input, output_json=os.path.join(out_dir, "coco_metrics.json"))
        extra["coco"], extra["coco_ap_per_class"] = coco.metrics(), coco.ap_per_class
    if not (args.sweep or args.error_analysis):
        return extra
    scores = sorted(set(sweeps.DEFAULT_SCORE_THRESHS) | {args.score_thresh, SCORE_THRESH_VIS})
    pool = sweeps.collect_detections(model, DataLoader(val_set, batch_size=1, num_workers=args.num_workers),
                                     idx_to_class, min_score=scores[0], device=args.device,
                                     progress=not args.no_progress)
    if args.sweep:
        extra["sweep"] = _write_sweep(args, pool, scores, out_dir)
    if args.error_analysis:
        extra["errors"] = _write_errors(args, pool, val_set, out_dir)
    return extra


def _write_sweep(args, pool, scores, out_dir: str) -> list:
    nms_threshs = sorted(set(sweeps.DEFAULT_NMS_THRESHS) | {args.nms_thresh})
    rows = sweeps.sweep_thresholds(pool, scores, nms_threshs)
    sweeps.write_sweep_csv(rows, os.path.join(out_dir, "sweep.csv"))
    tables = [sweeps.format_sweep_table(rows, key) for key in ("mAP", "recall", "detections_per_image")]
    with open(os.path.join(out_dir, "sweep.md"), "w") as f:
        f.write("\n\n".join(tables) + "\n")
    sweeps.plot_sweep(rows, path=os.path.join(out_dir, "sweep.png"))
    print("\nThreshold sweep (mAP@0.5):\n" + tables[0])
    return [{k: v for k, v in r.items() if k != "ap_per_class"} for r in rows]


def _write_errors(args, pool, val_set, out_dir: str) -> dict:
    result = pool.evaluate(args.score_thresh, args.nms_thresh)  # the run's own mAP setting: PR curves
    gt, det = pool.box_files(pool.keep(SCORE_THRESH_VIS, args.nms_thresh))
    found = errors.analyze_errors(gt, det)
    summary = errors.write_error_analysis(found, gt, det, result, out_dir, load_image=errors.image_loader(val_set))
    print(f"\nErrors at score > {SCORE_THRESH_VIS}, NMS {args.nms_thresh}:\n" + errors.format_error_summary(found))
    return {"score_thresh": SCORE_THRESH_VIS, "nms_thresh": args.nms_thresh, **summary}
