"""Choosing CPU threads the same way everywhere (command line, notebook)."""
import os
import time
from typing import Optional

import torch

__all__ = ["busy_cores", "choose_cpu_threads"]


def busy_cores(seconds: float = 0.5) -> Optional[float]:
    """Cores kept busy by other processes right now (from /proc/stat over ``seconds``), or the load average;
    None when neither can be read."""
    def snapshot():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    try:
        total0, idle0 = snapshot()
        time.sleep(seconds)
        total1, idle1 = snapshot()
        return (1 - (idle1 - idle0) / max(1, total1 - total0)) * (os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None


def choose_cpu_threads() -> int:
    """torch's default thread count (one per core), or 1 when other processes already keep cores busy.

    Each convolution is split over all threads and waits for the slowest; when other jobs occupy a core,
    that wait dominates (measured on 2 cores: 2 threads beside one other busy job ran over 10x slower
    than on a quiet machine, 1 thread about 2x; the notebook's smoke run took 173 s with 2 threads on 2
    busy cores and 17 s with 1). Results differ only in rounding.
    """
    threads = torch.get_num_threads()
    busy = busy_cores()
    if threads > 1 and busy is not None and busy >= 0.5:
        print(f"Other processes keep {busy:.1f} of {os.cpu_count()} cores busy: using 1 CPU thread instead of "
              f"{threads} (torch.set_num_threads to override).")
        return 1
    return threads
