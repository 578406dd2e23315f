"""Shared helpers of the benchmark scripts: machine description and interleaved A/B timing.

The machines these run on are often shared (other processes, training runs), so absolute times
drift from one second to the next. Every comparison is therefore measured *interleaved*: one call
of each contender per round, in alternating order, after warm-up calls, and reported as the median
over rounds; the ratio of two medians from the same run is what to compare, not the absolute times.
"""
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torchvision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def describe_machine() -> str:
    """One block of text: CPU, cores, load, versions and torch's thread settings."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable by this process), "
        f"load average (1/5/15 min): {load_average()}",
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"torch threads: {torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op",
    ]
    try:
        if os.getloadavg()[0] > 0.75 * usable:
            advice = "compare the ratios, or rerun when it is idle"
            lines.append(f"WARNING: the machine is busy (1-min load {os.getloadavg()[0]:.1f} on {usable} cores): "
                         f"absolute times are inflated and noisy; {advice}")
    except OSError:
        pass
    return "\n".join(lines)


def time_interleaved(functions: Dict[str, Callable[[], object]], repeats: int,
                     warmup: int = 1) -> Dict[str, List[float]]:
    """Wall times (seconds) of ``repeats`` calls of each function, interleaved.

    Each round calls every function once; the order alternates between rounds (A B, then B A) so
    that neither side systematically runs right after the other's cache or memory effects.
    ``warmup`` rounds run first and are discarded (lazy initialisation, allocator growth).
    """
    names = list(functions)
    times = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        round_names = names if round_index % 2 == 0 else names[::-1]
        for name in round_names:
            start = time.perf_counter()
            functions[name]()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def median(values: List[float]) -> float:
    return statistics.median(values)


def paired_ratio(times_a: List[float], times_b: List[float]) -> float:
    """Median over rounds of ``a / b``, the two calls of a round being adjacent in time.

    On a machine whose load drifts, this cancels most of the drift (both calls of a round see
    about the same load); prefer it to ``median(a) / median(b)`` when few repeats are affordable.
    """
    return statistics.median(a / b for a, b in zip(times_a, times_b))


def paired_difference(times_a: List[float], times_b: List[float]) -> float:
    """Median over rounds of ``a - b`` (see :func:`paired_ratio`)."""
    return statistics.median(a - b for a, b in zip(times_a, times_b))


def set_threads(requested) -> None:
    """Apply a script's ``--threads`` option. Without one, a busy machine gets 1 thread (and a
    note saying so): there, a multi-threaded op regularly waits a whole scheduler time slice for a
    descheduled thread, which made steps 5-100x slower and the comparisons meaningless."""
    if requested is not None:
        torch.set_num_threads(requested)
        return
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        busy = os.getloadavg()[0] > 0.75 * usable
    except OSError:
        busy = False
    if busy and torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        print(f"NOTE: the machine is busy (1-min load {os.getloadavg()[0]:.1f} on {usable} cores): using 1 torch "
              "thread for a stable comparison; pass --threads N to force N")
