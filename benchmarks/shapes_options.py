"""Effect of each FCOS recipe option on the Shapes data, on the CPU (short runs), and the from-scratch
loss-spike study.

Every run: same generated data, same seed, same iteration budget; only the named option changes. Reports
mAP@0.5 on the val images (Cartucho rules, score 0.05 / NMS 0.5), and for every run the loss at the end of
the warm-up and the largest loss after it.

    .venv/bin/python benchmarks/shapes_options.py --runs baseline improved giou center gn aug --iters 1500
    .venv/bin/python benchmarks/shapes_options.py --study spike       # SGD from a random trunk

Numbers are in the README section "Stronger detector options". A run takes minutes per 1000 iterations
on 2 CPU cores (FPN/stems 64, 128 px, batch 8).
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import eecs598  # noqa: E402
from a4_helper import ShapesDetection, inference_with_detector, train_detector  # noqa: E402
from eecs598.data.augment import random_flip_scale  # noqa: E402
from eecs598.evaluation.mean_ap import evaluate_map  # noqa: E402
from eecs598.models.tta import detect_with_tta  # noqa: E402
from eecs598.recipes import DATASETS  # noqa: E402
from one_stage_detector import FCOS  # noqa: E402

# The Shapes recipe (eecs598.recipes.DATASETS["shapes"]): AdamW 2e-3, warm-up 100, clipping 5, loss_cls x2.
SHAPES_TRAIN = {k: DATASETS["shapes"][k] for k in ("optimizer", "learning_rate", "weight_decay", "warmup_iters",
                                                     "grad_clip_norm")}
SHAPES_TRAIN["loss_weights"] = {"loss_cls": DATASETS["shapes"]["cls_loss_weight"]}
# The course's VOC optimiser (plain SGD, lr 8e-3) from a random trunk, with a warm-up: the spike study.
SGD_SCRATCH = dict(optimizer="sgd", learning_rate=8e-3, weight_decay=1e-4, warmup_iters=100, grad_clip_norm=None)

RUNS = {
    # name: (FCOS keyword options, train overrides, augmentation or None, TTA or None)
    "baseline": ({}, {}, None, None),
    "giou": (dict(box_loss="giou"), {}, None, None),
    "center": (dict(center_sampling_radius=1.5), {}, None, None),
    "gn": (dict(head_norm="group"), {}, None, None),
    "p6p7": (dict(p6p7=True), {}, None, None),
    "aug": ({}, {}, dict(flip_prob=0.5, scale_range=(0.8, 1.25)), None),
    # Evaluated without and with flip TTA (mAP, mAP_tta).
    "improved": (dict(box_loss="giou", center_sampling_radius=1.5, head_norm="group"), {},
                 dict(flip_prob=0.5, scale_range=(0.8, 1.25)), dict(flip=True, scales=(1.0,))),
}
SPIKE_RUNS = {
    "sgd": ({}, dict(SGD_SCRATCH), None, None),
    "sgd+clip10": ({}, dict(SGD_SCRATCH, grad_clip_norm=10.0), None, None),
    "sgd+gn": (dict(head_norm="group"), dict(SGD_SCRATCH), None, None),
    "sgd+gn+clip10": (dict(head_norm="group"), dict(SGD_SCRATCH, grad_clip_norm=10.0), None, None),
    "sgd lr/4": ({}, dict(SGD_SCRATCH, learning_rate=2e-3), None, None),
}


class Augmented(Dataset):
    """A detection dataset whose training samples are flipped / rescaled (``eecs598.data.augment``). The draws
    use torch's global RNG, which ``train_detector`` seeds per sample: runs are reproducible."""

    def __init__(self, dataset, **augment):
        self.dataset, self.augment = dataset, augment

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        path, image, gt = self.dataset[index]
        image, gt = random_flip_scale(image, gt, None, **self.augment)
        return path, image, gt


class WithTTA(nn.Module):
    """Makes ``detect_with_tta`` look like an FCOS in eval mode to ``inference_with_detector``."""

    def __init__(self, detector, **tta):
        super().__init__()
        self.detector, self.tta, self.num_classes = detector, tta, detector.num_classes

    def forward(self, images, test_score_thresh=None, test_nms_thresh=None):
        return detect_with_tta(self.detector, images, test_score_thresh, test_nms_thresh, **self.tta)


def run_one(name, spec, args, train_set, val_set):
    model_options, train_overrides, augment, tta = spec
    eecs598.reset_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FCOS(len(train_set.class_to_idx), 64, [64, 64], pretrained=False, **model_options)
    data = Augmented(train_set, **augment) if augment else train_set
    train = dict(SHAPES_TRAIN if args.study == "options" else {}, **train_overrides)
    start = time.time()
    try:
        history = train_detector(model, DataLoader(data, batch_size=args.batch_size), max_iters=args.iters,
                                 log_period=10 ** 9, plot=False, progress=False, data_seed=args.seed, **train)
        diverged = None
    except FloatingPointError as error:
        history, diverged = None, str(error).split(".")[0]
    seconds = time.time() - start
    result = {"name": name, "model": model_options, "train": train_overrides, "augment": augment, "tta": tta,
              "train_seconds": round(seconds, 1), "diverged": diverged}
    if history is not None:
        total = history["total"]
        warmup = train.get("warmup_iters", 0)
        after = total[warmup:] or total
        result.update(loss_at_warmup_end=round(total[min(max(warmup - 1, 0), len(total) - 1)], 3), max_loss_after_warmup=round(max(after), 3),
                      iteration_of_max=warmup + after.index(max(after)),
                      final_loss_avg50=round(sum(total[-50:]) / len(total[-50:]), 4))
        if args.trace:
            result["loss_trace"] = [round(v, 3) for v in total]
    if history is not None and args.study == "options":
        # Plain inference, and with TTA too when the run names one (same weights).
        for key, detector in (("mAP", model), ("mAP_tta", WithTTA(model, **tta) if tta else None)):
            if detector is None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                inference_with_detector(detector, DataLoader(val_set, batch_size=1), val_set.idx_to_class, 0.05, 0.5,
                                        output_dir=os.path.join(tmp, "input"), progress=False)
                result[key] = round(evaluate_map(os.path.join(tmp, "input"), plot=False, quiet=True).map, 4)
    print(json.dumps({k: v for k, v in result.items() if k != "loss_trace"}), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=["options", "spike"], default="options")
    parser.add_argument("--runs", nargs="+", default=None, help="names from RUNS (options) or SPIKE_RUNS (spike)")
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default="data/shapes")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="keep the per-iteration loss in the JSON output")
    parser.add_argument("--out", default=None, help="write all results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = RUNS if args.study == "options" else SPIKE_RUNS
    names = args.runs or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {list(table)}")
    kwargs = dict(image_size=128, num_train=args.num_train, num_val=args.num_val, seed=0, quiet=True)
    train_set = ShapesDetection(args.data_dir, "train", generate=True, **kwargs)
    val_set = ShapesDetection(args.data_dir, "val", generate=False, **kwargs)
    results = [run_one(name, table[name], args, train_set, val_set) for name in names]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
