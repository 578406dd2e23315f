"""Benchmark ``eecs598.predict`` end to end on the CPU: images/s at batch 1 and 8, per thread count.

What is timed is one ``predict()`` call over a folder of photos with an output folder, i.e. what
``python -m eecs598.predict --checkpoint CKPT PHOTOS --out DIR`` does after loading the model: decode each photo,
resize + pad it (``prepare_image``), the forward pass, NMS, boxes back to the photo's pixels, draw them, save
the drawn JPEG/PNG, write ``detections.jsonl`` and the COCO files. Model: the Shapes demo checkpoint of
``make demo`` (``runs/shapes-demo/checkpoint.pt``: FCOS with a random-init RegNetX-400MF trunk, FPN/stems 64,
GroupNorm head, trained at 128 px), or a random model of that architecture if the checkpoint is missing (said
in the output; the speed hardly depends on the weights).

Image sets:
  * ``voc``: the 48 photos of ../shared/data/voc07-sample (mostly 500 x 375 / 375 x 500 / 500 x 333), resized to
    a 128 px shorter side: network inputs of 192 x 128 or 128 x 192 (and a few others). Only consecutive photos
    of one input size share a batch, so batch 8 runs fewer than 8 photos per forward pass here (printed);
  * ``shapes``: the first 48 Shapes val images (128 x 128, all one input size: full batches).

Score threshold 0.4, NMS 0.5 (predict's defaults), no TTA. Each (set, batch, threads) is timed ``--repeats``
times, interleaved with the others, after a warm-up round; the median is reported.

    python benchmarks/bench_predict.py [--repeats R] [--threads 1,2] [--picture docs/images/predict.png]

``--picture`` also writes the figure of docs/predict.md: predict's drawn output on four Shapes val images.
"""
import argparse
import glob
import os
import sys
import tempfile

import torch
from PIL import Image

from _timing import REPO, describe_machine, median, time_interleaved

from eecs598.tools.detector import LoadedDetector, build_fcos, load_detector  # noqa: E402 (REPO on sys.path)
from eecs598.tools.predict import predict  # noqa: E402

VOC_PHOTOS = os.path.join(os.path.dirname(REPO), "shared", "data", "voc07-sample", "VOCdevkit", "VOC2007", "JPEGImages")
SHAPES_VAL = os.path.join(REPO, "data", "shapes", "images", "val")
DEMO_CHECKPOINT = os.path.join(REPO, "runs", "shapes-demo", "checkpoint.pt")


def load_model(path: str) -> LoadedDetector:
    if os.path.isfile(path):
        print(f"model: {path}")
        return load_detector(path)
    print(f"NOTE: {path} not found (run `make demo`): timing a random model of the demo's architecture instead")
    torch.manual_seed(0)
    model = build_fcos(5, 64, [64, 64], pretrained=False, head_norm="group", box_loss="giou",
                       center_sampling_radius=1.5).eval()
    return LoadedDetector(model, ["circle", "cross", "square", "star", "triangle"], 128, {})


def forward_batches(loaded: LoadedDetector, paths, batch_size: int) -> list:
    """Batch sizes of the forward passes predict makes for ``paths``."""
    sizes = []
    hook = loaded.model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        predict(loaded, paths, batch_size=batch_size, progress=False)
    finally:
        hook.remove()
    return sizes


def write_picture(loaded: LoadedDetector, path: str) -> None:
    """predict's drawn output on four Shapes val images, as one 2 x 2 PNG."""
    photos = sorted(glob.glob(os.path.join(SHAPES_VAL, "*.jpg")))[:4]
    with tempfile.TemporaryDirectory() as out:
        report = predict(loaded, photos, out, progress=False)
        tiles = [Image.open(r.output).convert("RGB") for r in report.results]
    width, height = tiles[0].size
    grid = Image.new("RGB", (2 * width + 4, 2 * height + 4), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % 2) * (width + 4), (i // 2) * (height + 4)))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # 128 colours without dithering: a fifth of the bytes, and the boxes and labels stay exact.
    grid.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} kB): "
          + "; ".join(f"{os.path.basename(r.input)}: {len(r.detections)} detections" for r in report.results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=DEMO_CHECKPOINT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--picture", default=None, help="also write the figure of docs/predict.md here")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # lines appear as they are measured, also in a log file
    print(describe_machine())
    loaded = load_model(args.checkpoint)
    sets = {}
    if os.path.isdir(VOC_PHOTOS):
        sets["voc"] = sorted(glob.glob(os.path.join(VOC_PHOTOS, "*.jpg")))
    if os.path.isdir(SHAPES_VAL):
        sets["shapes"] = sorted(glob.glob(os.path.join(SHAPES_VAL, "*.jpg")))[:48]
    if not sets:
        raise SystemExit(f"no photos: neither {VOC_PHOTOS} nor {SHAPES_VAL} (run `make demo`) exists")
    for name, paths in sets.items():
        for batch_size in (1, 8):
            passes = forward_batches(loaded, paths, batch_size)
            print(f"{name}: {len(paths)} photos, batch {batch_size}: {len(passes)} forward passes "
                  f"(mean {sum(passes) / len(passes):.1f} photos each)")
    with tempfile.TemporaryDirectory() as out:
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            calls = {(name, batch): (lambda p=paths, b=batch: predict(loaded, p, out, batch_size=b, progress=False))
                     for name, paths in sets.items() for batch in (1, 8)}
            times = time_interleaved(calls, repeats=args.repeats)
            for (name, batch), seconds in times.items():
                print(f"threads {threads}, {name}, batch {batch}: {len(sets[name]) / median(seconds):.1f} images/s "
                      f"(median of {args.repeats}: {median(seconds):.2f} s for {len(sets[name])} photos)")
    if args.picture:
        write_picture(loaded, args.picture)


if __name__ == "__main__":
    main()
