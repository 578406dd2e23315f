"""Benchmark the mAP evaluator against the per-detection reference on a VOC-val-sized input.

What it measures: wall time of ``eecs598.evaluation.mean_ap.evaluate_map`` (quiet, no output files) and of
``tests/map_reference.py`` (Cartucho/mAP's algorithm, one detection at a time, files parsed once)
on synthetic Cartucho input files shaped like the VOC 2007 val split: 2510 images, the 20 VOC
classes, ~2.5 GT boxes per image (~10% difficult), ~100 detections per image (jittered copies of
the GT, duplicates and random boxes; scores rounded to 3 decimals, so many ties). It checks that
every AP agrees and reports the median of 3 timed runs after one warm-up, with our time split into
parsing files and computing AP.

Rerun from the repository root:  python benchmarks/bench_eval.py  [--images N] [--repeats R]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from eecs598.evaluation.cartucho import check_pairs, read_box_files  # noqa: E402
from eecs598.evaluation.mean_ap import compute_map, evaluate_map  # noqa: E402
from map_reference import read_input, reference_ap, reference_map  # noqa: E402

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def write_input(root, n_images, dets_per_image=100, seed=0):
    """Write ``root/ground-truth`` and ``root/detection-results``; return the number of detections."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "ground-truth"))
    os.makedirs(os.path.join(root, "detection-results"))
    n_det = 0
    for i in range(n_images):
        n_gt = rng.integers(1, 5)  # 1..4, mean 2.5
        xy = rng.uniform(0, 180, (n_gt, 2))
        gt = np.concatenate([xy, xy + rng.uniform(10, 120, (n_gt, 2))], axis=1).round(2)
        gt_cls = rng.integers(0, 20, n_gt)
        difficult = rng.random(n_gt) < 0.1
        # ~30% of detections near a GT box (several per box: duplicates), the rest anywhere.
        n_near = int(0.3 * dets_per_image)
        src = rng.integers(0, n_gt, n_near)
        near = gt[src] + rng.normal(0, 6, (n_near, 4))
        near_cls = np.where(rng.random(n_near) < 0.8, gt_cls[src], rng.integers(0, 20, n_near))
        n_far = dets_per_image - n_near
        xy = rng.uniform(0, 200, (n_far, 2))
        far = np.concatenate([xy, xy + rng.uniform(5, 100, (n_far, 2))], axis=1)
        boxes = np.concatenate([near, far]).round(2)
        cls = np.concatenate([near_cls, rng.integers(0, 20, n_far)])
        scores = np.concatenate([rng.uniform(0.2, 1.0, n_near), rng.uniform(0.0, 0.6, n_far)]).round(3)
        order = rng.permutation(len(boxes))
        with open(os.path.join(root, "ground-truth", f"{i:06d}.txt"), "w") as f:
            for b, c, d in zip(gt, gt_cls, difficult):
                f.write(f"{VOC_CLASSES[c]} {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f}"
                        + (" difficult\n" if d else "\n"))
        with open(os.path.join(root, "detection-results", f"{i:06d}.txt"), "w") as f:
            for j in order:
                b = boxes[j]
                f.write(f"{VOC_CLASSES[cls[j]]} {scores[j]:.3f} {b[0]:.2f} {b[1]:.2f} {b[2]:.2f} {b[3]:.2f}\n")
        n_det += len(boxes)
    return n_det


def timed(fn, repeats):
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2510)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        n_det = write_input(tmp, args.images)
        print(f"wrote {args.images} image pairs, {n_det} detections in {time.perf_counter() - t0:.1f}s")
        gt_dir, det_dir = os.path.join(tmp, "ground-truth"), os.path.join(tmp, "detection-results")

        def parse():
            gt, det = read_box_files(gt_dir, "gt"), read_box_files(det_dir, "det")
            check_pairs(gt, det, gt_dir, det_dir)
            return gt, det

        t_ref, (ref_ap, ref_map) = timed(lambda: reference_map(tmp), args.repeats)
        t_ref_parse, ref_input = timed(lambda: read_input(tmp), args.repeats)
        t_ref_compute, _ = timed(lambda: reference_ap(*ref_input), args.repeats)
        t_ours, ours = timed(lambda: evaluate_map(tmp, quiet=True), args.repeats)
        t_parse, (gt, det) = timed(parse, args.repeats)
        t_compute, _ = timed(lambda: compute_map(gt, det), args.repeats)

    assert list(ours.ap) == list(ref_ap), (list(ours.ap), list(ref_ap))
    max_diff = max(abs(ours.ap[c] - ref_ap[c]) for c in ref_ap)
    print(f"classes evaluated: {len(ref_ap)}   mAP ours {ours.map:.6f}  reference {ref_map:.6f}")
    print(f"max |AP ours - AP reference| over classes: {max_diff:.1e}   |mAP diff|: {abs(ours.map - ref_map):.1e}")
    assert max_diff <= 1e-12 and abs(ours.map - ref_map) <= 1e-12, "evaluator disagrees with the reference"
    print(f"\nmedian of {args.repeats} runs after a warm-up, seconds")
    print(f"{'':22s}{'reference':>11s}{'ours':>9s}{'speed-up':>10s}")
    for label, ref, us in (("total", t_ref, t_ours), ("  read files", t_ref_parse, t_parse),
                           ("  match + AP", t_ref_compute, t_compute)):
        print(f"{label:22s}{ref:11.3f}{us:9.3f}{ref / us:9.1f}x")
    goal = 20.0
    print(f"\nmatching + AP: {t_ref_compute / t_compute:.1f}x faster (goal >= {goal:.0f}x: "
          + ("met" if t_ref_compute / t_compute >= goal else "NOT met") + "); "
          f"end to end {t_ref / t_ours:.1f}x, where reading {len(gt.file_ids) * 2} small files in "
          "Python is most of our time.")


if __name__ == "__main__":
    main()
