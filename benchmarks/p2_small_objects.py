"""P2 (stride 4) against the course's P3-P5 pyramid on Shapes with small shapes: COCO AP, AP_small, step time.

Both detectors are trained in this one run with the same seed, the same generated data, the same data order
and the same iteration budget; only ``FCOS(..., p2=True)`` differs. Then, in the same run, their training
steps are timed interleaved (one step of each per round, alternating order, median of the per-round ratios:
``benchmarks/_timing.py``), so the ratio compares the two under the same load.

Settings (the defaults): Shapes at 128 px with box sizes 6-40 px (``ShapesDetection(size_range=(6, 40))``:
log-uniform, so about 88% of the objects are COCO "small", area < 32**2), 2000 training and 300 val images,
the ``demo`` preset's model (GroupNorm head, GIoU, centre sampling 1.5; FPN/stems 64, random trunk: no
ImageNet weights offline) and the Shapes optimiser (AdamW 2e-3, warm-up 100, clipping 5, loss_cls x2),
batch 8, 1500 iterations, evaluation at score 0.05 / NMS 0.5 without TTA. COCO metrics by pycocotools
(extra ``coco``) on the same Cartucho files as the mAP.

    .venv/bin/python benchmarks/p2_small_objects.py                      # about 20-25 min on 1 thread
    .venv/bin/python benchmarks/p2_small_objects.py --iters 200 --num-train 200 --num-val 50   # a smoke run

Figures: docs/training.md ("Small objects: the P2 level").
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import describe_machine, load_average, median, paired_ratio, time_interleaved  # noqa: E402

import eecs598  # noqa: E402
from a4_helper import ShapesDetection, inference_with_detector, train_detector  # noqa: E402
from eecs598.evaluation.coco import evaluate_coco  # noqa: E402
from eecs598.evaluation.mean_ap import evaluate_map  # noqa: E402
from eecs598.recipes import DATASETS, get_preset  # noqa: E402
from one_stage_detector import FCOS  # noqa: E402

SHAPES = DATASETS["shapes"]
TRAIN = {k: SHAPES[k] for k in ("optimizer", "learning_rate", "weight_decay", "warmup_iters", "grad_clip_norm")}
TRAIN["loss_weights"] = {"loss_cls": SHAPES["cls_loss_weight"]}
MODEL = get_preset("demo")["model"]
RUNS = {"P3-P5": False, "P2-P5": True}  # name -> p2


def build(num_classes: int, p2: bool, seed: int) -> FCOS:
    eecs598.reset_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretrained=False: nothing to warn about, but be quiet regardless
        return FCOS(num_classes, SHAPES["fpn_channels"], list(SHAPES["stem_channels"]), pretrained=False,
                    **dict(MODEL, p2=p2))


def evaluate(model, val_set) -> dict:
    """mAP@0.5 (Cartucho rules) and the COCO metrics of ``model`` on ``val_set``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "input")
        inference_with_detector(model, DataLoader(val_set, batch_size=1), val_set.idx_to_class, 0.05, 0.5,
                                output_dir=folder, progress=False)
        result = {"mAP50_voc": evaluate_map(folder, plot=False, quiet=True).map}
        result.update(evaluate_coco(folder, quiet=True).metrics())
    return result


def train_and_evaluate(name: str, p2: bool, args, train_set, val_set) -> dict:
    model = build(len(train_set.class_to_idx), p2, args.seed)
    start = time.time()
    train_detector(model, DataLoader(train_set, batch_size=args.batch_size), max_iters=args.iters,
                   log_period=10 ** 9, plot=False, progress=False, data_seed=args.seed, **TRAIN)
    seconds = time.time() - start
    result = {"name": name, "p2": p2, "train_seconds": round(seconds, 1),
              "seconds_per_iter": round(seconds / args.iters, 4), "load_after": load_average()}
    result.update(evaluate(model, val_set))
    print(json.dumps(result), flush=True)
    return result


def step_time_ratio(args, train_set) -> dict:
    """Median seconds per training step (forward, losses, backward, AdamW step) of each model, timed interleaved
    on one fixed batch, and the median of the per-round ratios P2-P5 / P3-P5."""
    _, images, gt = next(iter(DataLoader(train_set, batch_size=args.batch_size)))

    def stepper(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        model.train()

        def step():
            losses = model(images, gt)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
        return step

    steps = {name: stepper(build(len(train_set.class_to_idx), p2, args.seed)) for name, p2 in RUNS.items()}
    times = time_interleaved(steps, repeats=args.timing_rounds, warmup=2)
    return {"step_seconds": {name: round(median(t), 4) for name, t in times.items()},
            "step_ratio_p2": round(paired_ratio(times["P2-P5"], times["P3-P5"]), 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--size-range", type=int, nargs=2, default=(6, 40), metavar=("MIN", "MAX"),
                        help="box sizes of the shapes in px (default: 6 40)")
    parser.add_argument("--data-dir", default="data/shapes-small")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-rounds", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe_machine(), flush=True)
    data = dict(image_size=args.image_size, num_train=args.num_train, num_val=args.num_val, seed=0, quiet=True,
                size_range=tuple(args.size_range))
    train_set = ShapesDetection(args.data_dir, "train", generate=True, **data)
    val_set = ShapesDetection(args.data_dir, "val", generate=False, **data)
    results = [train_and_evaluate(name, p2, args, train_set, val_set) for name, p2 in RUNS.items()]
    timing = step_time_ratio(args, train_set)
    print(json.dumps(timing))
    base, p2 = results
    print(f"\nShapes {args.image_size} px, shapes {args.size_range[0]}-{args.size_range[1]} px, {args.iters} iterations, "
          f"batch {args.batch_size}, {args.threads} thread(s), seed {args.seed}; load average now {load_average()}")
    print("| pyramid | COCO AP | AP50 | AP_small | AP_medium | mAP@0.5 (VOC rules) | training s | step s (interleaved) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        medium = "n/a" if r["AP_medium"] is None else f"{100 * r['AP_medium']:.1f}"
        print(f"| {r['name']} | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} | {100 * r['AP_small']:.1f} | {medium} | "
              f"{100 * r['mAP50_voc']:.1f} | {r['train_seconds']:.0f} | {timing['step_seconds'][r['name']]:.3f} |")
    print(f"AP_small {100 * base['AP_small']:.1f} -> {100 * p2['AP_small']:.1f}; step time x{timing['step_ratio_p2']:.2f} "
          f"(median of {args.timing_rounds} interleaved rounds); training wall time "
          f"x{p2['train_seconds'] / base['train_seconds']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "machine": describe_machine(), "results": results, "timing": timing},
                      f, indent=1)


if __name__ == "__main__":
    main()
