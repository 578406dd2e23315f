"""Train and evaluate FCOS with named recipes (``eecs598.recipes``) at the same budget, one command.

VOC (needs a GPU for the real budget; the pre-cropped copy in ../shared/data/voc07-224 is enough):

    python -m zipfile -e ../shared/data/voc07-224/voc07-224.zip /tmp/
    .venv/bin/python benchmarks/compare_presets.py --dataset voc --data-dir /tmp/voc07-224 --device cuda \
        --presets course improved --backbone-weights regnet_x_400mf-imagenet.pth --out runs/voc_presets.json

Shapes on the CPU (small budget):

    .venv/bin/python benchmarks/compare_presets.py --dataset shapes --iters 600 --presets course improved

For every preset: the same trunk and weights, seed, data order, iterations, batch size, optimiser and learning
rate (the dataset's); the preset changes only the model options, warm-up/clipping, augmentation and TTA. Each
is evaluated on all val images at two threshold pairs (score 0.4 / NMS 0.6, the course's, and 0.05 / 0.5) and
prints one JSON line; ``--out`` writes them all, with wall times.

Options for a timed GPU session (``benchmarks/gpu_session.sh``):

- ``--speed fastest``: train with the speed options (no per-step host sync, fused optimiser, device image cache,
  bf16 autocast) and the augmentation on the device (``train_detector(augment=...)``, the same flip / scale
  jitter as the CPU wrapper of ``--speed course``, the default);
- ``--time-budget S``: the same iterations for every preset, the most that fit in S seconds (at most
  ``--iters``): a probe trains each preset ``--probe-iters`` iterations and runs inference on a few val images,
  and the iterations follow from the measured seconds per iteration, per image and per set-up (model, image
  cache); the plan is printed. The LR milestones (60% / 90%) scale with the iterations;
- ``--image-size``, ``--batch-size``, ``--max-val-images``: smaller runs (CPU dry runs).

Both threshold pairs are read from one inference pass per preset (``eecs598.evaluation.sweeps``: the same files
and mAP as two ``inference_with_detector`` runs, tests/test_analysis.py); a TTA preset is evaluated per pair.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import eecs598  # noqa: E402
from a4_helper import ShapesDetection, VOC2007DetectionTiny, inference_with_detector, train_detector  # noqa: E402
from eecs598.evaluation.mean_ap import evaluate_map  # noqa: E402
from eecs598.evaluation.sweeps import collect_detections  # noqa: E402
from eecs598 import recipes  # noqa: E402
from eecs598.train import HookBase  # noqa: E402
from eecs598.recipes import PRESETS, get_preset  # noqa: E402
from one_stage_detector import FCOS  # noqa: E402
from shapes_options import Augmented, WithTTA  # noqa: E402

FASTEST = dict(sync_every_step=False, fused_optimizer=True, image_cache=True, precision="bf16")


def _dataset_settings(name):
    """The dataset's own settings (eecs598.recipes.DATASETS): every recipe preset runs with these."""
    d = recipes.DATASETS[name]
    return dict(image_size=d["image_size"], batch_size=d["batch_size"], iters=d["max_iters"], optimizer=d["optimizer"],
                learning_rate=d["learning_rate"], fpn_channels=d["fpn_channels"], stem_channels=d["stem_channels"],
                loss_weights=None if d["cls_loss_weight"] == 1.0 else {"loss_cls": d["cls_loss_weight"]})


DATASETS = {name: _dataset_settings(name) for name in ("voc", "shapes")}
THRESHOLDS = ((0.4, 0.6), (0.05, 0.5))


def build_data(args):
    if args.dataset == "voc":
        size = args.image_size or 224
        train_set, val_set = (VOC2007DetectionTiny(args.data_dir, "train", image_size=size),
                              VOC2007DetectionTiny(args.data_dir, "val", image_size=size))
    else:
        kwargs = dict(image_size=args.image_size or 128, num_train=3000, num_val=300, seed=0, quiet=True)
        train_set = ShapesDetection(args.data_dir, "train", generate=True, **kwargs)
        val_set = ShapesDetection(args.data_dir, "val", **kwargs)
    if args.max_val_images is not None:
        val_set = _subset(val_set, args.max_val_images)
    return train_set, val_set


def _subset(dataset, count: int):
    """The first ``count`` images, keeping the dataset's class maps (the evaluators read them)."""
    subset = Subset(dataset, range(min(count, len(dataset))))
    subset.idx_to_class, subset.class_to_idx = dataset.idx_to_class, dataset.class_to_idx
    return subset


def evaluate_pairs(detector, val_set, device, num_workers) -> dict:
    """mAP at every pair of THRESHOLDS from one inference pass (TTA wrappers: one pass per pair)."""
    if isinstance(detector, WithTTA):
        return {f"score {s} / nms {n}": round(evaluate(detector, val_set, s, n, device, num_workers), 4)
                for s, n in THRESHOLDS}
    loader = DataLoader(val_set, batch_size=1, num_workers=num_workers)
    pool = collect_detections(detector, loader, val_set.idx_to_class, min_score=min(s for s, _ in THRESHOLDS),
                              device=device, progress=False)
    return {f"score {s} / nms {n}": round(pool.evaluate(s, n).map, 4) for s, n in THRESHOLDS}


def evaluate(detector, val_set, score_thresh, nms_thresh, device, num_workers):
    with tempfile.TemporaryDirectory() as tmp:
        loader = DataLoader(val_set, batch_size=1, num_workers=num_workers)
        inference_with_detector(detector, loader, val_set.idx_to_class, score_thresh, nms_thresh,
                                output_dir=os.path.join(tmp, "input"), device=device, progress=False)
        return evaluate_map(os.path.join(tmp, "input"), plot=False, quiet=True).map


def build_preset_model(name, args, data, num_classes):
    """The preset's FCOS on the chosen trunk and weights (warnings printed, e.g. weights missing offline)."""
    recipe = get_preset(name)
    eecs598.reset_seed(args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe["model"].update(backbone=args.backbone, backbone_weights=args.backbone_weights)  # what is trained
        model_options = dict(recipe["model"])
        model = FCOS(num_classes, data["fpn_channels"], data["stem_channels"], pretrained=not args.no_pretrained,
                     **model_options)
    for w in caught:
        print(f"WARNING: {w.message}", file=sys.stderr)
    return recipe, model


def train_preset(name, args, data, train_set, iters: int, hooks=()):
    """Train preset ``name`` for ``iters`` iterations; returns ``(recipe, model, seconds)``."""
    recipe, model = build_preset_model(name, args, data, len(train_set.class_to_idx))
    train = dict(optimizer=data["optimizer"], learning_rate=data["learning_rate"], weight_decay=1e-4,
                 loss_weights=data["loss_weights"], **recipe["train"])
    dataset = train_set
    if args.speed == "fastest":
        train.update(FASTEST, augment=recipe["augment"])  # flip / scale jitter on the device, batch by batch
    elif recipe["augment"]:
        dataset = Augmented(train_set, **recipe["augment"])
    loader = DataLoader(dataset, batch_size=data["batch_size"], num_workers=args.num_workers,
                        pin_memory=args.device.startswith("cuda"), drop_last=True)
    start = time.time()
    train_detector(model, loader, max_iters=iters, log_period=max(1, min(args.log_period, iters)),
                   device=args.device, plot=False, progress=False, data_seed=args.seed, hooks=list(hooks), **train)
    return recipe, model, time.time() - start


def run_preset(name, args, data, train_set, val_set):
    recipe, model, train_seconds = train_preset(name, args, data, train_set, args.iters)
    detector = WithTTA(model, **recipe["tta"]) if recipe["tta"] else model
    start = time.time()
    maps = evaluate_pairs(detector, val_set, args.device, args.num_workers)
    result = dict(preset=name, recipe=recipe, trunk=args.backbone, weights=model.backbone.weights_source,
                  iterations=args.iters, batch_size=data["batch_size"], image_size=train_set.image_size,
                  speed=args.speed, mAP=maps, train_minutes=round(train_seconds / 60, 2),
                  eval_minutes=round((time.time() - start) / 60, 2), val_images=len(val_set), gpu=args.gpu)
    print(json.dumps(result, default=str), flush=True)
    return result


class _StepClock(HookBase):
    """Seconds per iteration after the first ``skip`` iterations (device-synchronised at both ends)."""

    def __init__(self, skip: int, device: str):
        self.skip, self.device, self.start, self.per_iter = skip, device, None, None

    def _now(self, trainer):
        trainer.sync()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    def after_step(self, trainer):
        if trainer.state.iteration == self.skip:
            self.start = self._now(trainer)
        elif trainer.state.iteration == trainer.settings.max_iters and self.start is not None:
            self.per_iter = (self._now(trainer) - self.start) / (trainer.settings.max_iters - self.skip)


def plan_iterations(args, data, train_set, val_set) -> int:
    """The most iterations (<= ``args.iters``) that every preset can train, and be evaluated, within
    ``args.time_budget`` seconds counted from ``args.started``, from a probe of each preset (printed)."""
    skip = max(1, args.probe_iters // 3)
    probe_val = _subset(val_set, 8)
    per_iter, fixed, eval_seconds = {}, {}, 0.0
    for name in args.presets:
        clock = _StepClock(skip, args.device)
        recipe, model, seconds = train_preset(name, args, data, train_set, args.probe_iters, hooks=[clock])
        per_iter[name] = clock.per_iter or seconds / args.probe_iters
        fixed[name] = max(0.0, seconds - per_iter[name] * args.probe_iters)  # model set-up, image cache, warm-up
        start = time.time()
        evaluate_pairs(WithTTA(model, **recipe["tta"]) if recipe["tta"] else model, probe_val, args.device, 0)
        eval_seconds += (time.time() - start) / len(probe_val) * len(val_set)
    left = args.time_budget - (time.time() - args.started) - sum(fixed.values()) - 1.3 * eval_seconds
    fits = int(0.9 * left / sum(per_iter.values())) if left > 0 else 0
    iters = max(1, min(args.iters, fits - fits % 100 if fits >= 1000 else fits))
    print(f"plan: {', '.join(f'{n} {1 / s:.1f} it/s' for n, s in per_iter.items())} at batch {data['batch_size']}; "
          f"set-up {sum(fixed.values()):.0f} s, evaluation ~{eval_seconds:.0f} s of {len(val_set)} val images; "
          f"{max(0.0, left):.0f} s left for training -> {iters} iterations per preset "
          f"({'the full budget' if iters == args.iters else f'{args.iters} did not fit'})", flush=True)
    return iters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="shapes")
    parser.add_argument("--data-dir", default=None, help="default: data (voc) or data/shapes (shapes)")
    parser.add_argument("--presets", nargs="+", default=["course", "improved"], choices=sorted(PRESETS))
    parser.add_argument("--iters", type=int, default=None, help="default: the dataset's (voc 9000, shapes 4000)")
    parser.add_argument("--backbone", default="regnet_x_400mf")
    parser.add_argument("--backbone-weights", default=None, help="local ImageNet state dict of the trunk")
    parser.add_argument("--no-pretrained", action="store_true", help="random trunk")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-period", type=int, default=500)
    parser.add_argument("--out", default=None)
    parser.add_argument("--speed", choices=["course", "fastest"], default="course",
                        help="fastest: sync-free, fused optimiser, device image cache, bf16, augmentation on the device")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for all presets: the most iterations that fit (<= --iters), from a probe")
    parser.add_argument("--probe-iters", type=int, default=40, help="iterations of each preset's probe")
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 (voc) / 128 (shapes)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the dataset's (voc 16, shapes 8)")
    parser.add_argument("--max-val-images", type=int, default=None, help="evaluate on the first N val images")
    args = parser.parse_args()
    args.started = time.time()
    data = dict(DATASETS[args.dataset])
    if args.batch_size:
        data["batch_size"] = args.batch_size
    args.iters = args.iters or data["iters"]
    args.data_dir = args.data_dir or ("data" if args.dataset == "voc" else "data/shapes")
    args.gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    print(f"GPU: {args.gpu}" if args.gpu else f"device: {args.device} (no GPU: not a GPU figure)", flush=True)
    if args.gpu:
        torch.backends.cudnn.benchmark = True
    train_set, val_set = build_data(args)
    if args.time_budget:
        args.iters = plan_iterations(args, data, train_set, val_set)
    results = [run_preset(name, args, data, train_set, val_set) for name in args.presets]
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
