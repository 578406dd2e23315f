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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import eecs598  # noqa: E402
from a4_helper import ShapesDetection, VOC2007DetectionTiny, inference_with_detector, train_detector  # noqa: E402
from eecs598.evaluation.mean_ap import evaluate_map  # noqa: E402
from eecs598 import recipes  # noqa: E402
from eecs598.recipes import PRESETS, get_preset  # noqa: E402
from one_stage_detector import FCOS  # noqa: E402
from shapes_options import Augmented, WithTTA  # noqa: E402



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
        return (VOC2007DetectionTiny(args.data_dir, "train", image_size=224),
                VOC2007DetectionTiny(args.data_dir, "val", image_size=224))
    kwargs = dict(image_size=128, num_train=3000, num_val=300, seed=0, quiet=True)
    return ShapesDetection(args.data_dir, "train", generate=True, **kwargs), ShapesDetection(args.data_dir, "val", **kwargs)


def evaluate(detector, val_set, score_thresh, nms_thresh, device, num_workers):
    with tempfile.TemporaryDirectory() as tmp:
        loader = DataLoader(val_set, batch_size=1, num_workers=num_workers)
        inference_with_detector(detector, loader, val_set.idx_to_class, score_thresh, nms_thresh,
                                output_dir=os.path.join(tmp, "input"), device=device, progress=False)
        return evaluate_map(os.path.join(tmp, "input"), plot=False, quiet=True).map


def run_preset(name, args, data, train_set, val_set):
    recipe = get_preset(name)
    eecs598.reset_seed(args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model_options = dict(recipe["model"], backbone=args.backbone, backbone_weights=args.backbone_weights)
        model = FCOS(len(train_set.class_to_idx), data["fpn_channels"], data["stem_channels"],
                     pretrained=not args.no_pretrained, **model_options)
    for w in caught:
        print(f"WARNING: {w.message}", file=sys.stderr)
    dataset = Augmented(train_set, **recipe["augment"]) if recipe["augment"] else train_set
    loader = DataLoader(dataset, batch_size=data["batch_size"], num_workers=args.num_workers,
                        pin_memory=args.device.startswith("cuda"), drop_last=True)
    train = dict(optimizer=data["optimizer"], learning_rate=data["learning_rate"], weight_decay=1e-4,
                 loss_weights=data["loss_weights"], **recipe["train"])
    start = time.time()
    train_detector(model, loader, max_iters=args.iters, log_period=args.log_period, device=args.device, plot=False,
                   progress=False, data_seed=args.seed, **train)
    train_seconds = time.time() - start
    detector = WithTTA(model, **recipe["tta"]) if recipe["tta"] else model
    start = time.time()
    maps = {f"score {s} / nms {n}": round(evaluate(detector, val_set, s, n, args.device, args.num_workers), 4)
            for s, n in THRESHOLDS}
    result = dict(preset=name, recipe=recipe, trunk=args.backbone, weights=model.backbone.weights_source,
                  iterations=args.iters, batch_size=data["batch_size"], mAP=maps, train_minutes=round(train_seconds / 60, 2),
                  eval_minutes=round((time.time() - start) / 60, 2), val_images=len(val_set))
    print(json.dumps(result, default=str), flush=True)
    return result


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
    args = parser.parse_args()
    data = DATASETS[args.dataset]
    args.iters = args.iters or data["iters"]
    args.data_dir = args.data_dir or ("data" if args.dataset == "voc" else "data/shapes")
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    train_set, val_set = build_data(args)
    results = [run_preset(name, args, data, train_set, val_set) for name in args.presets]
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
