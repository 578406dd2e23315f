"""The figures that docs/reliability.md and the command line's messages quote (issue 21, round 3).

1. FCOS positives on the VOC sample (../shared/data/voc07-sample, 24 train images) at 32 / 64 / 128 /
   224 px with the course's matching rule: positive locations per image and per level, and objects that
   cover no location at all. Why VOC at 32 px with the plain recipe diverges for a reason other than the
   backbone (``eecs598.tools.train.divergence_advice``).
2. Drawing Shapes images (128 px): milliseconds per image, the figure behind the progress bar and the
   ``--num-train`` / ``--num-val`` bound of 10^6 (``eecs598.tools.train_args._MAXIMA``).
3. Reading image sizes from the file headers when a dataset is built (the check that no box lies wholly
   outside its image): milliseconds per image.

Usage: ``.venv/bin/python benchmarks/reliability_figures.py [--voc-dir DIR] [--images N]``
"""
import argparse
import glob
import os
import tempfile
import time

from _timing import REPO, describe_machine

from PIL import Image

from common import get_fpn_location_coords
from eecs598.data.datasets import VOC2007DetectionTiny
from eecs598.data.shapes import generate_shapes_dataset
from one_stage_detector import fcos_match_locations_to_gt

STRIDES = {"p3": 8, "p4": 16, "p5": 32}


def positives(voc_dir: str, size: int) -> str:
    dataset = VOC2007DetectionTiny(voc_dir, "train", image_size=size)
    shapes = {level: (1, 1, -(-size // s), -(-size // s)) for level, s in STRIDES.items()}
    locations = get_fpn_location_coords(shapes, STRIDES)
    per_level, objects, unmatched = dict.fromkeys(STRIDES, 0), 0, 0
    for index in range(len(dataset)):
        gt = dataset[index][2]
        gt = gt[gt[:, 4] >= 0]
        matched = fcos_match_locations_to_gt(locations, STRIDES, gt)
        hit = set()
        for level, rows in matched.items():
            foreground = rows[:, 4] >= 0
            per_level[level] += int(foreground.sum())
            hit |= {tuple(row.tolist()) for row in rows[foreground]}
        objects += len(gt)
        unmatched += len(gt) - len(hit)
    total = sum(per_level.values())
    levels = " ".join(f"{k} {v / len(dataset):5.1f}" for k, v in per_level.items())
    return (f"{size:4d} px: {total / len(dataset):5.1f} positive locations per image ({levels}); "
            f"{unmatched} of {objects} objects cover no location")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc-dir", default=os.path.join(os.path.dirname(REPO), "shared", "data", "voc07-sample"))
    parser.add_argument("--images", type=int, default=200, help="Shapes images to draw (default: 200)")
    args = parser.parse_args()
    print(describe_machine())

    if os.path.isdir(args.voc_dir):
        print(f"\n1. FCOS positives on {args.voc_dir} (train split):")
        for size in (32, 64, 128, 224):
            print("  " + positives(args.voc_dir, size))
    else:
        print(f"\n1. skipped: no VOC sample at {args.voc_dir}")

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        generate_shapes_dataset(os.path.join(root, "shapes"), num_train=args.images, num_val=1, quiet=True)
        per_image = (time.perf_counter() - start) / (args.images + 1)
    print(f"\n2. Shapes at 128 px: {per_image * 1e3:.1f} ms per image drawn and saved "
          f"(10^6 images: {per_image * 1e6 / 3600:.1f} h)")

    files = sorted(glob.glob(os.path.join(args.voc_dir, "VOCdevkit", "VOC2007", "JPEGImages", "*.jpg")))
    if files:
        rounds = 20
        start = time.perf_counter()
        for _ in range(rounds):
            for path in files:
                with Image.open(path) as f:
                    f.size
        print(f"\n3. image size from the header: {(time.perf_counter() - start) / rounds / len(files) * 1e3:.2f} ms "
              f"per image ({len(files)} VOC JPEGs, {rounds} rounds; VOC train 2501 images: "
              f"{(time.perf_counter() - start) / rounds / len(files) * 2501:.1f} s)")


if __name__ == "__main__":
    main()
