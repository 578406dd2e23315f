"""Training speed of the VOC recipe on one GPU: the course's path against each speed option, in one run.

For every variant the script trains FCOS (RegNetX-400MF, FPN/stems 128, batch 16, 224 px, SGD lr 8e-3) from
the same seed for ``--iters`` iterations through ``train_detector`` and reports iterations/s measured after
``--warmup`` iterations (the clock starts and stops after a device synchronisation). Variants:

    course       the default path: DataLoader with workers, fp32, a host sync every step
    sync-free    + no per-step host sync, fused optimiser
    cache        + the device-resident image cache (no CPU data path)
    bf16         + bf16 autocast
    fp16         + fp16 autocast with a gradient scaler (instead of bf16)
    compile      + torch.compile (bf16)   [--compile; compilation time excluded by the warm-up]

It then trains fp32 and each mixed precision for ``--loss-iters`` fixed-seed iterations and prints the mean
total loss of the last 50, to show that the faster settings learn the same.

Data: ``--data-dir`` with the course's VOC layout (``voc07_train.json`` + ``VOCdevkit/``; e.g. a copy of
``shared/data/voc07-224``), else random 224x224 JPEG-decoded-like tensors with random boxes (speed only).

    python benchmarks/bench_gpu_train.py --device cuda --data-dir data/voc07-224
    python benchmarks/bench_gpu_train.py --device cpu --iters 6 --warmup 2 --loss-iters 4 --image-size 64  # smoke
"""
import argparse
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import describe_machine  # noqa: E402

import eecs598  # noqa: E402
from a4_helper import VOC2007DetectionTiny, train_detector  # noqa: E402
from one_stage_detector import FCOS  # noqa: E402


class RandomDetection(Dataset):
    """``count`` random images (ImageNet-normalised 8-bit pixels) with 1-6 random boxes each, fixed by index."""

    def __init__(self, count: int, image_size: int, num_classes: int = 20):
        self.count, self.size, self.num_classes = count, image_size, num_classes
        self.idx_to_class = {i: f"class{i}" for i in range(num_classes)}

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        pixels = torch.randint(0, 256, (3, self.size, self.size), generator=g).float() / 255
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        gt = torch.full((40, 5), -1.0)
        n = int(torch.randint(1, 7, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * self.size * 0.7
        wh = (torch.rand(n, 2, generator=g) * 0.6 + 0.1) * self.size
        gt[:n, :2], gt[:n, 2:4] = xy, (xy + wh).clamp(max=self.size)
        gt[:n, 4] = torch.randint(0, self.num_classes, (n,), generator=g).float()
        return f"random/{index:06d}.jpg", (pixels - mean) / std, gt


class Timer:
    """Hook: wall time between the end of iteration ``warmup`` and the end of training, device-synchronised."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.start, self.seconds = warmup, device, None, None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def after_step(self, trainer):
        if trainer.state.iteration == self.warmup:
            trainer.sync()
            self._sync()
            self.start = time.perf_counter()

    def after_train(self, trainer):
        self._sync()
        self.seconds = time.perf_counter() - self.start


def train_once(dataset, args, iters: int, warmup: int, **options):
    eecs598.reset_seed(0)
    model = FCOS(num_classes=20, fpn_channels=128, stem_channels=[128, 128], pretrained=False)
    loader = DataLoader(dataset, batch_size=16, num_workers=args.num_workers,
                        pin_memory=args.device.startswith("cuda"))
    timer = Timer(warmup, torch.device(args.device))
    history = train_detector(model, loader, learning_rate=8e-3, max_iters=iters, log_period=max(1, iters // 4),
                             device=args.device, plot=False, progress=False, data_seed=0, hooks=[timer],
                             warmup_iters=min(100, iters // 10), grad_clip_norm=5.0, **options)
    return history, (iters - warmup) / timer.seconds


VARIANTS = {
    "course": {},
    "sync-free": dict(sync_every_step=False, fused_optimizer=True),
    "cache": dict(sync_every_step=False, fused_optimizer=True, image_cache=True),
    "bf16": dict(sync_every_step=False, fused_optimizer=True, image_cache=True, precision="bf16"),
    "fp16": dict(sync_every_step=False, fused_optimizer=True, image_cache=True, precision="fp16"),
    "compile": dict(sync_every_step=False, fused_optimizer=True, image_cache=True, precision="bf16",
                    compile_model=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=None, help="VOC layout (voc07_train.json, VOCdevkit/); else random")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=300, help="iterations per speed run")
    parser.add_argument("--warmup", type=int, default=50, help="iterations before the clock starts")
    parser.add_argument("--loss-iters", type=int, default=600, help="iterations of the fp32-vs-mixed loss runs")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to start)")
    parser.add_argument("--variants", nargs="+", default=None, help=f"subset of {list(VARIANTS)}")
    args = parser.parse_args()
    print(describe_machine())
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}")
        torch.backends.cudnn.benchmark = True
    if args.data_dir:
        dataset = VOC2007DetectionTiny(args.data_dir, "train", image_size=args.image_size)
        print(f"data: {len(dataset)} VOC train images from {args.data_dir} at {args.image_size} px")
    else:
        dataset = RandomDetection(2501, args.image_size)
        print(f"data: 2501 random {args.image_size} px images with random boxes (speed only)")

    names = args.variants or [n for n in VARIANTS if n != "compile" or args.compile]
    rates = {}
    for name in names:
        _, rates[name] = train_once(dataset, args, args.iters, args.warmup, **VARIANTS[name])
        print(f"{name:10s} {rates[name]:8.2f} it/s   x{rates[name] / rates.get('course', rates[name]):.2f} "
              f"vs course   options: {VARIANTS[name]}", flush=True)

    print(f"\nLoss after {args.loss_iters} fixed-seed iterations (mean total of the last 50):")
    reference = None
    for precision in ("fp32", "bf16", "fp16"):
        history, _ = train_once(dataset, args, args.loss_iters, min(args.warmup, args.loss_iters - 1),
                                sync_every_step=False, fused_optimizer=True, image_cache=True, precision=precision)
        tail = history["total"][-50:]
        value = sum(tail) / len(tail)
        reference = reference if reference is not None else value
        print(f"{precision}: {value:.4f}  ({value / reference - 1:+.1%} vs fp32)", flush=True)


if __name__ == "__main__":
    main()
