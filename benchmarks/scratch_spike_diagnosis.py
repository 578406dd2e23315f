"""Why FCOS from a random trunk blows up under the course's SGD (lr 8e-3) after the warm-up: per-iteration
losses, gradient norms (trunk / FPN / head) and activation scales (FPN outputs, head stems, head outputs).

    .venv/bin/python benchmarks/scratch_spike_diagnosis.py --head-norm none  --iters 180   # NaN at ~174
    .venv/bin/python benchmarks/scratch_spike_diagnosis.py --head-norm group --iters 180   # stays bounded

Prints one JSON line every 10 iterations and at every iteration whose loss exceeds 5. Findings are in the
README section "Stronger detector options".
"""
import argparse
import json
import math
import os
import sys
import warnings

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import eecs598  # noqa: E402
from a4_helper import ShapesDetection  # noqa: E402
from one_stage_detector import FCOS  # noqa: E402


def rms(tensor):
    return tensor.detach().float().pow(2).mean().sqrt().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-norm", choices=["none", "group"], default="none")
    parser.add_argument("--lr", type=float, default=8e-3)
    parser.add_argument("--warmup-iters", type=int, default=100)
    parser.add_argument("--iters", type=int, default=180)
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--data-dir", default="data/shapes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = ShapesDetection(args.data_dir, "train", generate=True, image_size=128, num_train=3000, num_val=300,
                              seed=0, quiet=True)
    eecs598.reset_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = FCOS(5, 64, [64, 64], pretrained=False, head_norm=None if args.head_norm == "none" else "group")
    model.train()
    loader = DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    groups = {name: [p for n, p in model.named_parameters() if n.startswith(prefix)]
              for name, prefix in (("trunk", "backbone.backbone."), ("fpn", "backbone.fpn"), ("head", "pred_net."))}
    activations = {}
    for name in ("stem_cls", "stem_box", "pred_cls", "pred_box"):
        getattr(model.pred_net, name).register_forward_hook(
            lambda module, inputs, output, name=name: activations.__setitem__(name + "_rms", round(rms(output), 3)))
    iteration = 0
    while iteration < args.iters:
        for _, images, gt_boxes in loader:
            if iteration >= args.iters:
                break
            factor = min(1.0, 1e-3 + (1 - 1e-3) * iteration / args.warmup_iters) if args.warmup_iters else 1.0
            for group in optimizer.param_groups:
                group["lr"] = args.lr * factor
            with torch.no_grad():
                fpn = {k: round(rms(v), 2) for k, v in model.backbone(images).items()}
            losses = model(images, gt_boxes)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            grad_norms = {f"grad_{k}": round(math.sqrt(sum(float((p.grad ** 2).sum()) for p in ps if p.grad is not None)), 2)
                          for k, ps in groups.items()}
            if args.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            row = dict(iteration=iteration, lr=round(args.lr * factor, 5), loss=round(total.item(), 3),
                       **{k: round(v.item(), 3) for k, v in losses.items()}, **grad_norms, **activations,
                       **{f"{k}_rms": v for k, v in fpn.items()})
            if iteration % 10 == 0 or not total.item() < 5:
                print(json.dumps(row), flush=True)
            if not math.isfinite(total.item()):
                return
            iteration += 1


if __name__ == "__main__":
    main()
