"""Benchmark one FCOS training step on the CPU with channels-last (NHWC) weights against contiguous (NCHW) ones.

What it measures: wall time of one training step (forward with losses, backward, SGD step) of
``one_stage_detector.FCOS(20, 128, [128, 128], pretrained=False)`` on a batch of random 224x224 images with
1-5 random boxes each (the batch of ``bench_train_step.py``), for two copies of the same model: one as
``FCOS`` builds it (channels-last, what ``train_detector(memory_format="auto")`` keeps on the CPU) and one
converted with ``model.to(memory_format=torch.contiguous_format)`` (what ``"auto"`` picks on CUDA; ``forward``
gives its input the weights' layout). Calls alternate, after a warm-up; the ratio is the median over rounds of
contiguous / channels-last (above 1: channels-last is faster). Batch 16 (the course's) and batch 4 (a micro-batch
of ``--accumulate 4``).

This is the CPU (oneDNN) figure behind ``memory_format="auto"``; the GPU side (contiguous on CUDA) comes from
public GPU benchmarks and cannot be measured on a machine without a GPU.

Rerun from the repository root:  python benchmarks/bench_memory_format.py  [--repeats R] [--threads N]
"""
import argparse
import copy

import torch

from _timing import describe_machine, load_average, median, paired_ratio, set_threads, time_interleaved

from one_stage_detector import FCOS  # noqa: E402  (REPO put on sys.path by _timing)

NUM_CLASSES, CHANNELS, SIZE = 20, 128, 224


def make_batch(batch: int, seed: int = 0):
    """Random normalised images ``(batch, 3, SIZE, SIZE)`` and 1-5 random boxes per image ``(batch, 5, 5)``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    gt_boxes = torch.full((batch, 5, 5), -1.0)
    for i in range(batch):
        count = int(torch.randint(1, 6, (1,), generator=generator))
        xy = torch.rand(count, 2, generator=generator) * (SIZE - 40)
        wh = 16 + torch.rand(count, 2, generator=generator) * (SIZE - xy - 16)
        gt_boxes[i, :count, :4] = torch.cat([xy, xy + wh], dim=1).round()
        gt_boxes[i, :count, 4] = torch.randint(0, NUM_CLASSES, (count,), generator=generator).float()
    return images, gt_boxes


def make_step(model, images, gt_boxes):
    """One SGD training step of ``model`` on the fixed batch, as a closure."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step():
        losses = model(images, gt_boxes)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def measure(batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    channels_last = FCOS(NUM_CLASSES, CHANNELS, [CHANNELS, CHANNELS], pretrained=False).train()
    contiguous = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
    assert channels_last.memory_format is torch.channels_last
    assert contiguous.memory_format is torch.contiguous_format
    images, gt_boxes = make_batch(batch)
    steps = {"channels_last": make_step(channels_last, images, gt_boxes),
             "contiguous": make_step(contiguous, images, gt_boxes)}
    times = time_interleaved(steps, repeats=repeats, warmup=1)
    ratio = paired_ratio(times["contiguous"], times["channels_last"])
    print(f"batch {batch:2d}: channels_last {median(times['channels_last']):.3f} s, contiguous "
          f"{median(times['contiguous']):.3f} s per step (medians of {repeats}); contiguous / channels_last = "
          f"{ratio:.2f} (load average now {load_average()})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 4])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) first (default: torch's default; 1 on a busy machine)")
    args = parser.parse_args()
    set_threads(args.threads)
    print(__doc__.split("\n")[0])
    print(describe_machine())
    print(f"FCOS({NUM_CLASSES}, {CHANNELS}, [{CHANNELS}, {CHANNELS}]), {SIZE}x{SIZE} random images, SGD\n")
    for batch in args.batches:
        measure(batch, args.repeats)


if __name__ == "__main__":
    main()
