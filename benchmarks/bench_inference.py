"""Benchmark FCOS inference: per-image latency against torchvision's FCOS, and the throughput of
inference + Cartucho/mAP file writing + evaluation on Shapes images (CPU).

1) Latency (batch 1, 224x224): ``one_stage_detector.FCOS(20, 128, [128, 128], pretrained=False)``
   in eval mode against ``torchvision.models.detection.FCOS`` on the same RegNetX-400MF + 3-level
   FPN backbone and a head of the same width and depth (built as in bench_train_step.py; shipped
   GroupNorm head and a variant with Identity norms), both randomly initialised, under
   ``torch.no_grad()``. So that both run NMS on the same number of boxes:
     * both heads' box-regression biases are set to 2.0 (every location predicts a box 4 strides
       wide; a random head otherwise predicts zero-size boxes, which NMS never suppresses);
     * ours: ``test_score_thresh=0.0`` -> all 1029 locations (28*28 + 14*14 + 7*7), best class each;
     * torchvision: ``score_thresh=0.0``, ``topk_candidates=343`` per level -> 3 * 343 = 1029
       (location, class) candidates; ``detections_per_img=1029`` (no cap);
     * NMS IoU threshold 0.5 for both (our class_spec_nms, torchvision's batched_nms).
   Also timed: backbone + head alone, so that the rest (decoding, NMS, for torchvision also its
   transform) shows.
2) Throughput: ``a4_helper.inference_with_detector`` (writing the Cartucho files) and
   ``eecs598.evaluation.mean_ap.evaluate_map`` over the 300 validation images of a freshly generated Shapes
   dataset (128x128, 5 classes; generated in a temporary folder), with a random ``FCOS(5, 128,
   [128, 128])`` whose class weights are re-drawn with std 0.05 (so that scores differ) and box
   biases set to 2.0; score threshold = the median score, so about half of the 336 locations of
   an image enter NMS (a heavier load than a trained model's).

Rerun from the repository root:  python benchmarks/bench_inference.py  [--repeats R] [--threads N]
"""
import argparse
import contextlib
import io
import os
import tempfile
import time

import torch
from torch import nn

from _timing import (describe_machine, load_average, median, paired_difference, paired_ratio, set_threads,
                     time_interleaved)
from bench_train_step import build_torchvision_fcos

from one_stage_detector import FCOS  # noqa: E402  (REPO put on sys.path by _timing)

NUM_CLASSES, CHANNELS, SIZE = 20, 128, 224
BOX_BIAS = 2.0


def latency(repeats: int):
    torch.manual_seed(0)
    ours = FCOS(NUM_CLASSES, CHANNELS, [CHANNELS, CHANNELS], pretrained=False).eval()
    tv_kwargs = dict(score_thresh=0.0, nms_thresh=0.5, topk_candidates=343, detections_per_img=1029)
    tv_gn = build_torchvision_fcos(True, **tv_kwargs).eval()
    tv_plain = build_torchvision_fcos(False, **tv_kwargs).eval()
    with torch.no_grad():
        ours.pred_net.pred_box.bias.fill_(BOX_BIAS)
        for model in (tv_gn, tv_plain):
            model.head.regression_head.bbox_reg.bias.fill_(BOX_BIAS)
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    def run_ours():
        return ours(image, test_score_thresh=0.0, test_nms_thresh=0.5)

    def run_tv(model):
        return lambda: model([image[0]])

    def network_only(model, head):
        return lambda: head(model.backbone(image) if head is ours.pred_net else list(model.backbone(image).values()))

    with torch.no_grad():
        boxes, classes, scores = run_ours()
        tv_out = run_tv(tv_gn)()[0]
        print(f"detections after NMS: ours {len(boxes)} of 1029, torchvision {len(tv_out['boxes'])} of 1029")
        times = time_interleaved({
            "ours": run_ours,
            "torchvision (GroupNorm head)": run_tv(tv_gn),
            "torchvision (Identity norm)": run_tv(tv_plain),
            "ours: backbone + head only": network_only(ours, ours.pred_net),
            "torchvision (GroupNorm): backbone + head only": network_only(tv_gn, tv_gn.head),
            "torchvision (Identity): backbone + head only": network_only(tv_plain, tv_plain.head),
        }, repeats=repeats, warmup=3)
    t = {name: median(values) for name, values in times.items()}
    print(f"median of {repeats} interleaved repeats after 3 warm-ups, batch 1, {SIZE}x{SIZE} "
          f"(load average now {load_average()}); ratio and 'outside the net' are medians over rounds")
    print(f"{'':32s}{'ms':>8s}{'ours / this':>13s}{'outside the net, ms':>21s}")
    rows = (("ours", "ours: backbone + head only"),
            ("torchvision (GroupNorm head)", "torchvision (GroupNorm): backbone + head only"),
            ("torchvision (Identity norm)", "torchvision (Identity): backbone + head only"))
    for name, net in rows:
        ratio = paired_ratio(times["ours"], times[name])
        outside = paired_difference(times[name], times[net])
        print(f"{name:32s}{1e3 * t[name]:8.2f}{ratio:13.2f}{1e3 * outside:21.2f}")
    print("(outside the net: ours = decoding + class_spec_nms; torchvision = its transform, anchors, decoding, "
          "batched_nms)")
    return t


def throughput(repeats: int):
    try:
        import a4_helper
        from eecs598.evaluation.mean_ap import evaluate_map
        from eecs598.data.shapes import generate_shapes_dataset
    except ImportError as error:
        print(f"throughput part skipped: {error}")
        return
    from torch.utils.data import DataLoader

    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "shapes")
        generate_shapes_dataset(root, num_train=1, num_val=300, quiet=True)
        dataset = a4_helper.ShapesDetection(root, split="val", generate=False, quiet=True)
        loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
        num_classes = len(dataset.idx_to_class)
        torch.manual_seed(0)
        model = FCOS(num_classes, CHANNELS, [CHANNELS, CHANNELS], pretrained=False).eval()
        with torch.no_grad():
            nn.init.normal_(model.pred_net.pred_cls.weight, std=0.05)
            model.pred_net.pred_box.bias.fill_(BOX_BIAS)
            # Median per-location best score over a few images -> about half the locations pass.
            best = []
            for i in range(8):
                feats = model.backbone(dataset[i][1][None])
                cls, _, ctr = model.pred_net(feats)
                for level in cls:
                    best.append(torch.sqrt(cls[level][0].sigmoid() * ctr[level][0].sigmoid()).max(dim=1).values)
            score_thresh = float(torch.cat(best).median())
        out_dir = os.path.join(tmp, "mAP", "input")

        # Warm-up on a few images, then `repeats` timed runs over all of them.
        warmup_loader = DataLoader(torch.utils.data.Subset(dataset, range(10)), batch_size=1)
        with contextlib.redirect_stdout(io.StringIO()):  # its "Total inference time" / "Removed ..." lines
            a4_helper.inference_with_detector(model, warmup_loader, dataset.idx_to_class, score_thresh, 0.5,
                                              output_dir=out_dir, progress=False)
        infer_times, eval_times, result = [], [], None
        for _ in range(repeats):
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                a4_helper.inference_with_detector(model, loader, dataset.idx_to_class, score_thresh, 0.5,
                                                  output_dir=out_dir, progress=False)
            middle = time.perf_counter()
            result = evaluate_map(out_dir, quiet=True, plot=False)
            end = time.perf_counter()
            infer_times.append(middle - start)
            eval_times.append(end - middle)
        det_dir = os.path.join(out_dir, "detection-results")
        num_dets = 0
        for file_name in os.listdir(det_dir):
            with open(os.path.join(det_dir, file_name)) as f:
                num_dets += sum(1 for _ in f)
    n = len(dataset)
    t_infer, t_eval = median(infer_times), median(eval_times)
    print(f"{n} Shapes val images (128x128, {num_classes} classes), score threshold {score_thresh:.4f}, NMS 0.5: "
          f"{num_dets / n:.1f} detections per image after NMS; mAP of the random model {result.map:.4f}")
    print(f"median of {repeats} runs after a warm-up on 10 images (load average now {load_average()})")
    print(f"  inference + writing files: {t_infer:6.2f} s  {n / t_infer:7.1f} images/s")
    print(f"  evaluate_map:              {t_eval:6.2f} s  {n / t_eval:7.1f} images/s")
    print(f"  together:                  {t_infer + t_eval:6.2f} s  {n / (t_infer + t_eval):7.1f} images/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="latency repeats (throughput: 2 runs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) first (default: torch's default; 1 on a busy machine)")
    args = parser.parse_args()
    set_threads(args.threads)
    print(__doc__.split("\n")[0])
    print(describe_machine())
    print("\n1) per-image latency")
    latency(args.repeats)
    print("\n2) throughput: inference + Cartucho files + evaluation")
    throughput(2)


if __name__ == "__main__":
    main()
