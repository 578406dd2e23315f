"""Training speed of the VOC recipe on one GPU: the course's path against each speed option, in one run.

For every variant the script trains FCOS (RegNetX-400MF, FPN/stems 128, batch 16, 224 px, SGD lr 8e-3) from
the same seed for ``--iters`` iterations through ``train_detector`` and reports iterations/s measured after
``--warmup`` iterations (the clock starts and stops after a device synchronisation), images/s and peak GPU
memory. Variants (a failing one is reported and the others still run):

    course        the default path: DataLoader with workers, fp32, a host sync every step, and the memory
                  format chosen for the device (memory_format="auto": contiguous on CUDA, channels-last on CPUs)
    course-nhwc   the course path with channels-last weights and activations (oneDNN's choice on CPUs; a public
                  GPU benchmark measured RegNetX-400MF training about a third slower with it)
    sync-free     + no per-step host sync, fused optimiser
    cache         + the device-resident image cache (no CPU data path)
    bf16          + bf16 autocast
    bf16-nhwc     bf16 with channels-last (cuDNN's bf16 convolutions prefer NHWC on recent GPUs)
    fp16          + fp16 autocast with a gradient scaler (instead of bf16)
    compile       bf16 + torch.compile of trunk and head   [--compile; compilation excluded by the warm-up]
    cuda-graphs   bf16 + torch.compile(mode="reduce-overhead"): CUDA graphs replay each part's kernels in one
                  launch; it helps most where launches dominate, i.e. at small batches   [--compile]
    bf16@bN, cuda-graphs@bN   the same two at the small batch ``--small-batch`` (default 4)   [--compile]

``--time-budget S`` skips the variants (and loss runs) that would start after S seconds, saying so; ``--out``
writes every figure as JSON.

It then trains fp32 and each mixed precision for ``--loss-iters`` fixed-seed iterations and prints the mean
total loss of the last 50, to show that the faster settings learn the same.

Data: ``--data-dir`` with the course's VOC layout (``voc07_train.json`` + ``VOCdevkit/``; e.g. a copy of
``shared/data/voc07-224``), else random 224x224 JPEG-decoded-like tensors with random boxes (speed only).

    python benchmarks/bench_gpu_train.py --device cuda --data-dir data/voc07-224 --compile --out bench.json
    python benchmarks/bench_gpu_train.py --device cpu --iters 6 --warmup 2 --loss-iters 4 --image-size 64  # smoke

On a lent GPU, ``benchmarks/gpu_session.sh`` runs it with the session's budget (docs/benchmarks.md).
"""
import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import describe_machine  # noqa: E402

import eecs598  # noqa: E402
from a4_helper import VOC2007DetectionTiny, train_detector  # noqa: E402
from eecs598.train import HookBase  # noqa: E402
from eecs598.train.api import resolve_memory_format  # noqa: E402
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


class Timer(HookBase):
    """Wall time between the end of iteration ``warmup`` and the end of training, device-synchronised."""

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
        if self.start is not None:
            self.seconds = time.perf_counter() - self.start


class CudaGraphStep(HookBase):
    """Tells the CUDA-graph trees that a new training step begins (their outputs of the last one may be reused)."""

    def before_step(self, trainer):
        torch.compiler.cudagraph_mark_step_begin()


def compile_parts(model, mode: str, backend: str) -> None:
    """``torch.compile`` trunk and head as ``train_detector(compile_model=...)`` does, but with a ``mode``
    (``"reduce-overhead"``: CUDA graphs). A backend other than inductor takes no mode (CPU dry runs: eager)."""
    options = dict(mode=mode) if backend == "inductor" else dict(backend=backend)
    for part in (model.backbone, model.pred_net):
        part.forward = torch.compile(part.forward, **options)


def train_once(dataset, args, iters: int, warmup: int, batch_size: int = 16, compile_mode=None, **options):
    """Train a fresh model for ``iters`` iterations; returns ``(history, iterations/s after warmup)``."""
    eecs598.reset_seed(0)
    torch._dynamo.reset()  # each compiled variant compiles its own model
    model = FCOS(num_classes=20, fpn_channels=128, stem_channels=[128, 128], pretrained=False)
    hooks = [Timer(warmup, torch.device(args.device))]
    if compile_mode is not None:
        compile_parts(model, compile_mode, args.compile_backend)
        if args.device.startswith("cuda") and compile_mode == "reduce-overhead":
            hooks.append(CudaGraphStep())
    if options.get("compile_model") and args.compile_backend != "inductor":
        options["compile_model"] = args.compile_backend
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=args.num_workers,
                        pin_memory=args.device.startswith("cuda"))
    history = train_detector(model, loader, learning_rate=8e-3, max_iters=iters, log_period=max(1, iters // 4),
                             device=args.device, plot=False, progress=False, data_seed=0, hooks=hooks,
                             warmup_iters=min(100, iters // 10), grad_clip_norm=5.0, **options)
    return history, (iters - warmup) / hooks[0].seconds


_FAST = dict(sync_every_step=False, fused_optimizer=True)
VARIANTS = {
    "course": {},
    "course-nhwc": dict(memory_format="channels_last"),
    "sync-free": dict(_FAST),
    "cache": dict(_FAST, image_cache=True),
    "bf16": dict(_FAST, image_cache=True, precision="bf16"),
    "bf16-nhwc": dict(_FAST, image_cache=True, precision="bf16", memory_format="channels_last"),
    "fp16": dict(_FAST, image_cache=True, precision="fp16"),
    "compile": dict(_FAST, image_cache=True, precision="bf16", compile_model=True),
    "cuda-graphs": dict(_FAST, image_cache=True, precision="bf16", compile_mode="reduce-overhead"),
}
COMPILED = ("compile", "cuda-graphs")
SMALL_BATCH = ("bf16", "cuda-graphs")  # also run at --small-batch images


def _plan(args):
    """``[(label, variant name, batch size)]`` in the order they run."""
    names = args.variants or [n for n in VARIANTS if n not in COMPILED or args.compile]
    plan = [(n, n, args.batch_size) for n in names]
    if args.small_batch and args.variants is None and args.compile:
        plan += [(f"{n}@b{args.small_batch}", n, args.small_batch) for n in SMALL_BATCH]
    return plan


def run_variants(dataset, args, started: float, report: dict) -> None:
    """Time every planned variant; failures and budget skips are recorded, never fatal."""
    device = torch.device(args.device)
    for label, name, batch in _plan(args):
        if args.time_budget and time.time() - started > args.time_budget:
            report["skipped"].append(label)
            print(f"{label:16s} skipped: the {args.time_budget:.0f} s budget is spent", flush=True)
            continue
        options = dict(VARIANTS[name])
        layout = resolve_memory_format(options.get("memory_format", "auto"), device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.time()
        try:
            _, rate = train_once(dataset, args, args.iters, args.warmup, batch, **options)
        except Exception as error:  # an option that fails on this machine: say so, measure the others
            report["errors"][label] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(f"{label:16s} FAILED: {report['errors'][label]}", flush=True)
            continue
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        course = report["rates"].get("course", {}).get("it_s")
        report["rates"][label] = dict(it_s=round(rate, 3), images_s=round(rate * batch, 1), batch=batch,
                                      memory_format=str(layout).replace("torch.", ""), options=options,
                                      peak_mib=None if peak is None else round(peak), wall_s=round(time.time() - t0, 1))
        ratio = f"x{rate / course:.2f} vs course" if course and batch == args.batch_size else "(own batch)"
        print(f"{label:16s} {rate:8.2f} it/s {rate * batch:8.1f} img/s  {ratio:16s} "
              f"{'' if peak is None else f'peak {peak:.0f} MiB  '}{str(layout).replace('torch.', '')}  "
              f"options: {options}", flush=True)


def run_losses(dataset, args, started: float, report: dict) -> None:
    """fp32, bf16 and fp16 for ``--loss-iters`` fixed-seed iterations: the mean total loss of the last 50."""
    print(f"\nLoss after {args.loss_iters} fixed-seed iterations (mean total of the last 50):")
    reference = None
    for precision in ("fp32", "bf16", "fp16"):
        if args.time_budget and time.time() - started > args.time_budget:
            report["skipped"].append(f"loss-{precision}")
            print(f"{precision}: skipped: the {args.time_budget:.0f} s budget is spent", flush=True)
            continue
        try:
            history, _ = train_once(dataset, args, args.loss_iters, min(args.warmup, args.loss_iters - 1),
                                    args.batch_size, **VARIANTS["cache"], precision=precision)
        except Exception as error:
            report["errors"][f"loss-{precision}"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(f"{precision}: FAILED: {report['errors'][f'loss-{precision}']}", flush=True)
            continue
        tail = history["total"][-50:]
        value = sum(tail) / len(tail)
        reference = reference if reference is not None else value
        report["losses"][precision] = round(value, 5)
        print(f"{precision}: {value:.4f}  ({value / reference - 1:+.1%} vs the first one measured)", flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=None, help="VOC layout (voc07_train.json, VOCdevkit/); else random")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default: the course's 16)")
    parser.add_argument("--small-batch", type=int, default=4, help="batch of the small-batch pair (0: none)")
    parser.add_argument("--iters", type=int, default=300, help="iterations per speed run")
    parser.add_argument("--warmup", type=int, default=50, help="iterations before the clock starts")
    parser.add_argument("--loss-iters", type=int, default=600, help="iterations of the fp32-vs-mixed loss runs")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile and CUDA graphs (slow to start)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled variants (eager: a quick CPU dry run)")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS), help="a subset")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; later variants are skipped")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.time()
    print(describe_machine())
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    print(f"GPU: {gpu}" if gpu else f"device: {args.device} (no GPU: a dry run, not a GPU figure)")
    if gpu:
        torch.backends.cudnn.benchmark = True
    if args.data_dir:
        dataset = VOC2007DetectionTiny(args.data_dir, "train", image_size=args.image_size)
        data = f"{len(dataset)} VOC train images from {args.data_dir} at {args.image_size} px"
    else:
        dataset = RandomDetection(2501, args.image_size)
        data = f"2501 random {args.image_size} px images with random boxes (speed only)"
    print(f"data: {data}; batch {args.batch_size}, {args.iters} iterations per variant, clock after {args.warmup}")
    report = dict(gpu=gpu, device=args.device, torch=torch.__version__, data=data, settings=vars(args), rates={},
                  losses={}, errors={}, skipped=[])
    try:
        run_variants(dataset, args, started, report)
        run_losses(dataset, args, started, report)
    finally:
        report["seconds"] = round(time.time() - started, 1)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1, default=str)
    print(f"\nbench_gpu_train: {len(report['rates'])} variants measured on {gpu or args.device}, "
          f"{len(report['errors'])} failed, {len(report['skipped'])} skipped, {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
