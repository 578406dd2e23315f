"""Train FCOS and evaluate its mAP, on the offline Shapes dataset (CPU demo) or on PASCAL VOC 2007 (GPU).

    python train_fcos.py --dataset shapes --run-dir runs/shapes-demo            # `make demo`, CPU
    python train_fcos.py --dataset voc --data-dir data --download --run-dir runs/voc --device cuda
    python train_fcos.py --help

The command lives in :mod:`eecs598.tools.train` (the job) and :mod:`eecs598.tools.train_args` (its options);
this file keeps the name people type and re-exports its functions for scripts that import it.
"""
import sys

import matplotlib

matplotlib.use("Agg")  # a command-line job: write PNGs, never open windows

from eecs598.recipes import DATASETS as PRESETS  # noqa: E402  (the per-dataset defaults, under their old name)
from eecs598.tools.train import build_datasets, build_model, cli, evaluate, main, quick_map, run, train  # noqa: E402
from eecs598.tools.train_args import UsageError, build_parser, check_args, parse_args  # noqa: E402

__all__ = ["PRESETS", "build_datasets", "build_model", "cli", "evaluate", "main", "quick_map", "run", "train",
           "UsageError", "build_parser", "check_args", "parse_args"]

if __name__ == "__main__":
    sys.exit(cli())
