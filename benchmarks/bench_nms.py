"""Benchmark the hand-written NMS of common.py against torchvision's C++ kernel (CPU).

What it measures: wall time of ``common.nms`` and ``torchvision.ops.nms`` on the notebook's NMS
workload (N boxes ``(100 * rand).round()``, widths and heights ``+ 1``, ``randn`` scores) for
N = 500, 5000, 20000, IoU thresholds 0.3 / 0.5 / 0.7 and several seeds; and of
``common.class_spec_nms`` against ``torchvision.ops.batched_nms`` with 20 random classes. Every
call of ours must return the IDENTICAL index list (asserted; for class_spec_nms up to the order of
boxes with equal scores, which batched_nms leaves to an unstable sort). Times are medians over interleaved
repeats after a warm-up (benchmarks/_timing.py); the ratio ours / torchvision is the figure to read.

Goal: ratio <= 1.0 on the notebook workload (N = 5000, all three thresholds).

Rerun from the repository root:  python benchmarks/bench_nms.py  [--quick]
"""
import argparse
import math

import torch
import torchvision

from _timing import describe_machine, median, time_interleaved

from common import class_spec_nms, nms  # noqa: E402  (REPO put on sys.path by _timing)


def notebook_workload(num_boxes: int, seed: int):
    """The notebook's NMS benchmark input: integer boxes, widths and heights >= 1, randn scores."""
    generator = torch.Generator().manual_seed(seed)
    boxes = (100 * torch.rand(num_boxes, 4, generator=generator)).round()
    boxes[:, 2] += boxes[:, 0] + 1
    boxes[:, 3] += boxes[:, 1] + 1
    scores = torch.randn(num_boxes, generator=generator)
    return boxes, scores


def same_up_to_tie_order(ours, theirs, scores) -> bool:
    """Identical, or the same kept set in the same score order where only boxes of EQUAL score
    swap places. (For more than 1000 CPU boxes batched_nms merges its per-class results with an
    unstable sort; ours orders equal scores by index, as torchvision.ops.nms does. 20000 randn
    float32 scores contain a few ties.)"""
    if torch.equal(ours, theirs):
        return True
    return torch.equal(ours.sort().values, theirs.sort().values) and torch.equal(scores[ours], scores[theirs])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and repeats")
    args = parser.parse_args()

    print(__doc__.split("\n")[0])
    print(describe_machine())
    print("(common.nms runs its ops on one CPU thread whatever the torch setting; torchvision's "
          "kernel is single-threaded too)\n")

    # (num_boxes, seeds, repeats): repeats shrink as one call gets slower, to stay within minutes.
    cases = [(500, [0, 1, 2], 31), (5000, [0, 1, 2], 11), (20000, [0], 5)]
    if args.quick:
        cases = [(500, [0], 11), (5000, [0], 5), (20000, [0], 3)]
    thresholds = (0.3, 0.5, 0.7)

    header = (f"{'boxes':>6s} {'IoU thr':>7s} {'seed':>4s} {'kept':>5s} {'ours ms':>9s} {'torchvision ms':>15s} "
              f"{'ratio':>6s}")
    print("nms vs torchvision.ops.nms (median ms; ratio = ours / torchvision)")
    print(header)
    ratios = {}
    for num_boxes, seeds, repeats in cases:
        for threshold in thresholds:
            for seed in seeds:
                boxes, scores = notebook_workload(num_boxes, seed)
                ours, theirs = nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)
                assert torch.equal(ours, theirs), f"different kept lists: N={num_boxes} thr={threshold} seed={seed}"
                times = time_interleaved({
                    "ours": lambda: nms(boxes, scores, threshold),
                    "torchvision": lambda: torchvision.ops.nms(boxes, scores, threshold),
                }, repeats=repeats, warmup=2)
                t_ours, t_tv = median(times["ours"]), median(times["torchvision"])
                ratios[(num_boxes, threshold, seed)] = t_ours / t_tv
                print(f"{num_boxes:6d} {threshold:7.1f} {seed:4d} {len(theirs):5d} {1e3 * t_ours:9.2f} "
                      f"{1e3 * t_tv:15.2f} {t_ours / t_tv:6.2f}")

    print("\nclass_spec_nms vs torchvision.ops.batched_nms, 20 classes (median ms)")
    print(header)
    class_ratios = {}
    for num_boxes, seeds, repeats in cases:
        for threshold in thresholds:
            seed = seeds[0]
            boxes, scores = notebook_workload(num_boxes, seed)
            class_ids = torch.randint(0, 20, (num_boxes,), generator=torch.Generator().manual_seed(seed + 100))
            ours = class_spec_nms(boxes, scores, class_ids, threshold)
            theirs = torchvision.ops.batched_nms(boxes, scores, class_ids, threshold)
            assert same_up_to_tie_order(ours, theirs, scores), f"different kept lists: N={num_boxes} thr={threshold}"
            times = time_interleaved({
                "ours": lambda: class_spec_nms(boxes, scores, class_ids, threshold),
                "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, class_ids, threshold),
            }, repeats=repeats, warmup=2)
            t_ours, t_tv = median(times["ours"]), median(times["torchvision"])
            class_ratios[(num_boxes, threshold)] = t_ours / t_tv
            print(f"{num_boxes:6d} {threshold:7.1f} {seed:4d} {len(theirs):5d} {1e3 * t_ours:9.2f} "
                  f"{1e3 * t_tv:15.2f} {t_ours / t_tv:6.2f}")

    print("\nsummary (ratio = ours / torchvision, < 1 means ours is faster; kept lists checked identical)")
    for num_boxes, _, _ in cases:
        values = [r for (n, _, _), r in ratios.items() if n == num_boxes]
        geo = math.exp(sum(map(math.log, values)) / len(values))
        print(f"  nms, {num_boxes:5d} boxes: worst ratio {max(values):.2f}, geometric mean {geo:.2f}")
    for num_boxes, _, _ in cases:
        values = [r for (n, _), r in class_ratios.items() if n == num_boxes]
        print(f"  class_spec_nms, {num_boxes:5d} boxes: worst ratio {max(values):.2f}")
    worst = max(r for (n, _, _), r in ratios.items() if n == 5000)
    print(f"goal (notebook workload, 5000 boxes, thresholds 0.3/0.5/0.7): worst ratio {worst:.2f} <= 1.0: "
          + ("met" if worst <= 1.0 else "NOT met"))


if __name__ == "__main__":
    main()
