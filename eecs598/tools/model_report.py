"""Model report: parameters, GFLOPs, latency and throughput of each detector configuration.

Every row comes from a ``ModelSpec``: a name, a builder returning the ``nn.Module``, the input size, the
network call whose FLOPs and speed are measured, the end-to-end call (decoding + NMS included) and
the sub-modules whose parameters are listed separately. ``fcos_specs()`` gives today's configurations
(RegNetX-400MF + P3-P5 FPN + the course's FCOS head, at each dataset setting of ``eecs598.recipes.DATASETS``);
another backbone plugs in as one more ``ModelSpec``.

What is measured (batch B, input ``S x S``, random weights, ``model.eval()``, ``torch.no_grad()``):

- **params**: ``numel`` of all parameters, and of each listed part (backbone, FPN, head).
- **GFLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one network forward of one image
  (backbone + FPN + head, no decoding or NMS). It counts 2 FLOPs per multiply-add of convolutions and
  matrix products (bias, BatchNorm, activations and additions are not counted); GMACs are half of it.
- **latency**: median wall time of one network forward of one image, and of the whole eval forward
  ``model(image, test_score_thresh=0.05, test_nms_thresh=0.5)`` (decoding + class-specific NMS). With
  random weights nearly every location scores above 0.05 (a trained model keeps far fewer), so the
  end-to-end figure is an upper bound of the post-processing cost.
- **throughput**: ``B`` divided by the median time of one network forward of a batch of ``B`` images.

Medians over ``repeats`` timed calls after ``warmup`` untimed ones; on CUDA each call is synchronised.

Usage::

    python -m eecs598.model_report                      # all presets, CPU, markdown table
    python -m eecs598.model_report --device cuda --batch-size 32 --json report.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..data.datasets import VOC_CLASSES
from ..data.shapes import SHAPE_CLASSES
from ..recipes import DATASETS
from .detector import build_fcos

__all__ = ["ModelSpec", "fcos_specs", "count_parameters", "count_flops", "median_seconds", "measure",
           "model_report", "format_report", "environment", "main"]


def _fcos_network(model: nn.Module, images: torch.Tensor):
    """Backbone + FPN + head of the course's FCOS, as in its forward (NHWC input), without post-processing."""
    return model.pred_net(model.backbone(images.contiguous(memory_format=torch.channels_last)))


def _fcos_detect(model: nn.Module, images: torch.Tensor):
    """The whole eval forward at the course's evaluation thresholds (decoding + class-specific NMS)."""
    return model(images, test_score_thresh=0.05, test_nms_thresh=0.5)


@dataclass
class ModelSpec:
    """One row of the report.

    Attributes:
        name: row label.
        backbone: backbone name (a column of the table).
        preset: preset / head configuration (a column of the table).
        build: returns the model (random weights are fine: nothing here depends on their values).
        image_size: S, the square input size in pixels.
        network: ``network(model, images (B,3,S,S))`` the forward whose FLOPs and speed are measured.
        detect: ``detect(model, image (1,3,S,S))`` the end-to-end eval call, or ``None`` to skip it.
        parts: column label -> sub-module path (``model.get_submodule``) for the parameter split.
    """

    name: str
    backbone: str
    preset: str
    build: Callable[[], nn.Module]
    image_size: int
    network: Callable[[nn.Module, torch.Tensor], object] = _fcos_network
    detect: Optional[Callable[[nn.Module, torch.Tensor], object]] = _fcos_detect
    parts: Dict[str, str] = field(default_factory=lambda: {
        "backbone": "backbone.backbone", "FPN": "backbone.fpn_params", "head": "pred_net"})


def fcos_specs(presets: Optional[Sequence[str]] = None) -> List[ModelSpec]:
    """The course FCOS (RegNetX-400MF + P3-P5 FPN + FCOS head) at each dataset's settings
    (``eecs598.recipes.DATASETS``).

    Args:
        presets: dataset names to include (default: all, in ``DATASETS`` order).
    """
    num_classes = {"voc": len(VOC_CLASSES), "shapes": len(SHAPE_CLASSES)}
    names = list(DATASETS) if presets is None else list(presets)
    unknown = [p for p in names if p not in DATASETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {unknown}; known: {', '.join(DATASETS)}")
    specs = []
    for name in names:
        preset = DATASETS[name]

        def build(preset=preset, classes=num_classes[name]):
            return build_fcos(classes, preset["fpn_channels"], preset["stem_channels"], pretrained=False)

        specs.append(ModelSpec(
            name=f"FCOS {name}", backbone="regnet_x_400mf", build=build, image_size=preset["image_size"],
            preset=f"{name}: FPN {preset['fpn_channels']}, head {list(preset['stem_channels'])}, "
                   f"{num_classes[name]} classes"))
    return specs


def count_parameters(model: nn.Module, parts: Optional[Dict[str, str]] = None) -> Dict[str, int]:
    """``{"total": n, <label>: n, ...}``: parameter counts of the model and of the sub-modules in ``parts``."""
    counts = {"total": sum(p.numel() for p in model.parameters())}
    for label, path in (parts or {}).items():
        counts[label] = sum(p.numel() for p in model.get_submodule(path).parameters())
    return counts


def count_flops(fn: Callable, *args) -> int:
    """FLOPs of ``fn(*args)`` under ``torch.no_grad()``, by ``torch.utils.flop_counter.FlopCounterMode``
    (2 per multiply-add of convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*args)
    return int(counter.get_total_flops())


def median_seconds(fn: Callable[[], object], warmup: int = 2, repeats: int = 10, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (synchronised on CUDA)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    cuda = torch.device(device).type == "cuda"
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(spec: ModelSpec, device: str = "cpu", batch_size: int = 8, warmup: int = 2, repeats: int = 10,
            seed: int = 0) -> Dict:
    """Parameters, GFLOPs, latencies and throughput of one ``ModelSpec`` (see the module docstring).

    Returns:
        a dict with ``name``, ``backbone``, ``preset``, ``image_size``, ``params`` (dict of counts),
        ``gflops``, ``latency_ms`` (network, batch 1), ``latency_e2e_ms`` (``None`` without ``detect``),
        ``throughput`` (images/s at ``batch_size``) and ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    torch.manual_seed(seed)
    model = spec.build().to(device).eval()
    size = spec.image_size
    one = torch.randn(1, 3, size, size, device=device)
    batch = torch.randn(batch_size, 3, size, size, device=device)
    flops = count_flops(spec.network, model, one)
    latency = median_seconds(lambda: spec.network(model, one), warmup, repeats, device)
    latency_e2e = None if spec.detect is None else median_seconds(lambda: spec.detect(model, one), warmup, repeats,
                                                                  device)
    batch_time = median_seconds(lambda: spec.network(model, batch), warmup, repeats, device)
    return {
        "name": spec.name, "backbone": spec.backbone, "preset": spec.preset, "image_size": size,
        "params": count_parameters(model, spec.parts), "gflops": flops / 1e9,
        "latency_ms": latency * 1e3, "latency_e2e_ms": None if latency_e2e is None else latency_e2e * 1e3,
        "throughput": batch_size / batch_time, "batch_size": batch_size,
    }


def model_report(specs: Sequence[ModelSpec], device: str = "cpu", batch_size: int = 8, warmup: int = 2,
                 repeats: int = 10) -> List[Dict]:
    """``measure`` every spec, in order."""
    return [measure(spec, device=device, batch_size=batch_size, warmup=warmup, repeats=repeats) for spec in specs]


def format_report(rows: Sequence[Dict]) -> str:
    """Markdown table of ``model_report`` rows."""
    parts = [k for k in (rows[0]["params"] if rows else {}) if k != "total"]
    batch = rows[0]["batch_size"] if rows else 0
    split = f" ({' / '.join(parts)})" if parts else ""
    lines = [f"| backbone | preset | input | params, M{split} | GFLOPs | latency, ms (network) | "
             f"latency, ms (+ decode + NMS) | throughput, img/s (batch {batch}) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["params"]
        params = f"{p['total'] / 1e6:.2f}" + (f" ({' / '.join(f'{p[k] / 1e6:.2f}' for k in parts)})" if parts else "")
        e2e = "" if r["latency_e2e_ms"] is None else f"{r['latency_e2e_ms']:.1f}"
        lines.append(f"| {r['backbone']} | {r['preset']} | {r['image_size']} | {params} | {r['gflops']:.3f} | "
                     f"{r['latency_ms']:.1f} | {e2e} | {r['throughput']:.1f} |")
    return "\n".join(lines)


def environment(device: str = "cpu") -> Dict:
    """Where the numbers were measured: torch version, device name, threads, cores."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
    return {"torch": torch.__version__, "device": device, "device_name": name, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def _check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Refuse a ``--device`` that cannot run the report, in the command line's words (exit status 2)."""
    try:
        kind = torch.device(device)
    except RuntimeError:  # torch's message lists twenty device types the report cannot use
        kind = None
    if kind is None or kind.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu, cuda or cuda:N (a GPU index), got {device!r}")
    if kind.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available on this machine")
    if kind.type == "cuda" and kind.index is not None and kind.index >= torch.cuda.device_count():
        parser.error(f"--device {device}: there are only {torch.cuda.device_count()} GPU(s)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: print the report table (and optionally write JSON). Returns 0."""
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.model_report",
        description="Parameters, GFLOPs (torch.utils.flop_counter), latency and throughput of each detector "
                    "configuration (backbone x preset).")
    parser.add_argument("--presets", nargs="+", default=None, help="presets to include (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch for the throughput (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls, the median is reported (default: 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write rows and environment as JSON")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    _check_device(parser, args.device)
    rows = model_report(fcos_specs(args.presets), device=args.device, batch_size=args.batch_size,
                        warmup=args.warmup, repeats=args.repeats)
    env = environment(args.device)
    print(format_report(rows))
    print(f"\n{env['device_name']}, {env['threads']} threads of {env['cpu_count']} cores, torch {env['torch']}; "
          f"medians of {args.repeats} calls after {args.warmup} warm-up calls.")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "environment": env}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
