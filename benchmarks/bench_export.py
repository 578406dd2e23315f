"""Benchmark the ONNX export: CPU latency per image of onnxruntime against eager PyTorch, in one run, with the
same thread count, and the size of the exported file.

Two models:
1) ``--checkpoint`` (default ``runs/shapes-demo/checkpoint.pt``, the model ``make demo`` trains): on its own
   kind of photo, the first ``--images`` Shapes validation images (``data/shapes/images/val``, 128 x 128),
   or the VOC sample photos when that folder is missing.
2) The assignment's VOC model layout, ``FCOS(20, 128, [128, 128])`` (RegNetX-400MF, P3-P5), randomly initialised
   (timings do not depend on the weights), on the 48 VOC sample photos at image size 224 (shorter side 224,
   padded to a multiple of 32, e.g. 224 x 320). Its random head scores every location ~0.07, so nothing passes
   the threshold: this row times the network and the decoding, with an empty NMS.

For each: the photos are prepared once (``prepare_image``, batch 1, the same tensors for both); then the
eager model ``model(images, test_score_thresh, test_nms_thresh)`` under ``torch.no_grad()`` and the
onnxruntime session (CPU provider, ``intra_op_num_threads`` = torch's threads, 1 inter-op thread) are
called in turn (``_timing.time_interleaved``, alternating order, after warm-ups), each call running all the
photos one at a time; reported as the median per image. The detection counts of both are printed (they must
be equal; ``python -m eecs598.export --verify`` checks the boxes).

Rerun from the repository root:  python benchmarks/bench_export.py  [--threads N] [--repeats R] [--images N]
"""
import argparse
import os
import sys
import tempfile

import torch

from _timing import REPO, describe_machine, median, paired_ratio, set_threads, time_interleaved

from eecs598.data.images import load_rgb_image  # noqa: E402  (REPO put on sys.path by _timing)
from eecs598.data.transforms import prepare_image  # noqa: E402
from eecs598.tools.detector import build_fcos, load_detector  # noqa: E402
from eecs598.tools.export import OnnxDetector, export_onnx  # noqa: E402

VOC_JPEGS = os.path.join(os.path.dirname(REPO), "shared", "data", "voc07-sample", "VOCdevkit", "VOC2007", "JPEGImages")
SHAPES_VAL = os.path.join(REPO, "data", "shapes", "images", "val")


def photos_in(folder: str, limit: int):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".png")))[:limit]
    return [load_rgb_image(os.path.join(folder, n)) for n in names]


def compare(label, model, class_names, image_size, photos, args, path):
    """Export ``model`` to ``path``, time both runtimes on ``photos`` (batch 1), print one table row."""
    export_onnx(model, path, class_names, image_size)
    runner = OnnxDetector(path, threads=torch.get_num_threads())
    inputs = [prepare_image(photo, image_size)[0][None] for photo in photos]
    arrays = [x.numpy() for x in inputs]
    model.eval()

    def eager():
        with torch.no_grad():
            return sum(len(model(x, test_score_thresh=args.score_thresh, test_nms_thresh=0.5)[0]) for x in inputs)

    def onnxruntime():
        return sum(len(runner.run(a, args.score_thresh, 0.5)[0]) for a in arrays)

    counts = (eager(), onnxruntime())
    times = time_interleaved({"eager": eager, "onnxruntime": onnxruntime}, repeats=args.repeats, warmup=2)
    per_image = {name: 1000 * median(values) / len(inputs) for name, values in times.items()}
    ratio = paired_ratio(times["onnxruntime"], times["eager"])
    sizes = sorted({tuple(x.shape[-2:]) for x in inputs})
    size_text = f"{sizes[0][0]}x{sizes[0][1]}" + (f" .. {sizes[-1][0]}x{sizes[-1][1]}" if len(sizes) > 1 else "")
    print(f"{label}: {len(inputs)} photos, inputs {size_text}, detections eager {counts[0]}, onnxruntime {counts[1]}"
          + ("" if counts[0] == counts[1] else "  <-- MISMATCH"))
    print(f"| {label} | {per_image['eager']:.1f} ms | {per_image['onnxruntime']:.1f} ms | {ratio:.2f} | "
          f"{os.path.getsize(path) / 2**20:.1f} MiB | {torch.get_num_threads()} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=os.path.join(REPO, "runs", "shapes-demo", "checkpoint.pt"))
    parser.add_argument("--threads", type=int, default=None, help="threads of both runtimes (default: torch's)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=48, help="photos per call (default 48)")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    args = parser.parse_args()
    set_threads(args.threads)
    print(describe_machine())
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider; batch 1; score_thresh {args.score_thresh}, "
          f"NMS 0.5; median of {args.repeats} interleaved repeats after 2 warm-ups")
    print("| model, photos | eager PyTorch per image | onnxruntime per image | ratio (ort / eager) | ONNX file "
          "| threads |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        if os.path.isfile(args.checkpoint):
            loaded = load_detector(args.checkpoint)
            folder = SHAPES_VAL if os.path.isdir(SHAPES_VAL) else VOC_JPEGS
            name = "Shapes val" if folder == SHAPES_VAL else "VOC sample"
            compare(f"{os.path.relpath(args.checkpoint, REPO)} ({loaded.image_size} px), {name}", loaded.model,
                    loaded.class_names, loaded.image_size, photos_in(folder, args.images), args,
                    os.path.join(workdir, "demo.onnx"))
        else:
            print(f"(no {args.checkpoint}: run `make demo` first for the demo model's row)")
        if os.path.isdir(VOC_JPEGS):
            torch.manual_seed(0)
            model = build_fcos(20, 128, [128, 128], pretrained=False)
            compare("course VOC layout FCOS(20, 128, [128, 128]), random weights, 224 px, VOC sample", model,
                    [f"class{i}" for i in range(20)], 224, photos_in(VOC_JPEGS, args.images), args,
                    os.path.join(workdir, "voc.onnx"))
        else:
            print(f"(no VOC sample at {VOC_JPEGS}: the VOC-layout row is skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
