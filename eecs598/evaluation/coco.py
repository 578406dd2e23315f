"""COCO-style box metrics (AP@[.5:.95], AP50, AP75, AP small/medium/large, AR@1/10/100) with pycocotools.

The numbers come from ``pycocotools.cocoeval.COCOeval`` itself; this module only converts the
Cartucho/mAP input folders written by ``a4_helper.inference_with_detector`` (the same detections the
Cartucho-compatible ``eecs598.evaluation.mean_ap`` scores) into COCO dictionaries in memory, runs it, and reports.
pycocotools is an optional dependency: ``pip install -e '.[coco]'``.

Conversion (how a Cartucho line becomes a COCO annotation):

- **Boxes.** Cartucho's ``x1 y1 x2 y2`` (absolute pixels of the evaluated image) become COCO's
  ``[x, y, w, h] = [x1, y1, x2 - x1, y2 - y1]``: the continuous convention that pycocotools uses for
  IoU, **not** the pixel-inclusive ``+1`` of the VOC/Cartucho mAP. (So COCO's AP50 differs from the
  Cartucho mAP@0.5 also because of the IoU convention, besides COCO's 101-point interpolation, its
  10 IoU thresholds and its limit of 100 detections per image and class.)
- **Area** of a GT box (which decides small / medium / large) is ``w * h`` in pixels of the evaluated
  image, i.e. of the network input (224 px crops for VOC, 128 px for Shapes), not of the original
  photo. Ranges are pycocotools' defaults: small ``< 32**2``, medium ``32**2 .. 96**2``, large
  ``> 96**2``. A metric whose range holds no GT box is reported as ``None`` (pycocotools: ``-1``).
- **Difficult** GT boxes become ``iscrowd=1`` regions: pycocotools ignores them (a detection matched
  to one is neither TP nor FP), as the VOC rules do; for crowd regions pycocotools measures overlap as
  intersection over the *detection's* area.
- **Classes** are the class names found in the ground-truth files, alphabetical, with category ids
  ``1..C``; detections of any other class are dropped (Cartucho ignores them too). Image ids are
  ``1..N`` in file-name order.

Usage::

    from eecs598.evaluation.coco import evaluate_coco
    result = evaluate_coco("mAP/input")          # prints pycocotools' 12-line summary
    result.metrics()["AP"], result.ap_per_class["dog"]

    python -m eecs598.coco_eval mAP/input [--json coco_metrics.json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cartucho import BoxFiles, read_input_folders

__all__ = [
    "COCO_METRIC_NAMES",
    "CocoResult",
    "PYCOCOTOOLS_HINT",
    "require_pycocotools",
    "to_coco",
    "coco_evaluate",
    "evaluate_coco",
    "main",
]

# The order of COCOeval.stats for box detection.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                     "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")

PYCOCOTOOLS_HINT = ("COCO-style metrics need pycocotools, an optional extra of this project: "
                    "pip install -e '.[coco]'   (or: pip install pycocotools)")


def require_pycocotools():
    """Import pycocotools' ``COCO`` and ``COCOeval``.

    Returns:
        the classes ``(COCO, COCOeval)``.

    Raises:
        ImportError: pycocotools is not installed; the message says which extra to install.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError(f"{PYCOCOTOOLS_HINT} ({e})") from e
    return COCO, COCOeval


@dataclass
class CocoResult:
    """What ``coco_evaluate`` / ``evaluate_coco`` return.

    Attributes:
        stats: ``(12,)`` float64, pycocotools' ``COCOeval.stats`` in ``[0, 1]`` in the order of
            ``COCO_METRIC_NAMES``; ``-1`` where undefined (no GT box in that area range).
        ap_per_class: AP@[.5:.95] (all areas, 100 detections) per class that has a GT box that is
            not difficult, from ``COCOeval.eval["precision"]``, alphabetical.
        summary: the 12 lines pycocotools' ``summarize()`` prints.
        num_images, num_gt, num_det: images, GT boxes (difficult ones included), detections used.
    """

    stats: np.ndarray = field(repr=False)
    ap_per_class: Dict[str, float]
    summary: str = field(repr=False)
    num_images: int = 0
    num_gt: int = 0
    num_det: int = 0

    def metrics(self) -> Dict[str, Optional[float]]:
        """``{"AP": ..., "AP50": ..., ..., "AR_large": ...}`` as Python floats, ``None`` where pycocotools
        reports ``-1`` (undefined). JSON-ready."""
        return {name: (None if value < 0 else float(value)) for name, value in zip(COCO_METRIC_NAMES, self.stats)}


def to_coco(gt: BoxFiles, det: BoxFiles) -> Tuple[dict, List[dict]]:
    """Convert parsed Cartucho folders into a COCO ground-truth dataset and a COCO result list.

    G = GT boxes, D = detections. See the module docstring for the conventions.

    Args:
        gt: from ``read_box_files(..., "gt")``; boxes ``(G, 4)`` XYXY pixels.
        det: from ``read_box_files(..., "det")``; ``det.image_index`` indexes ``gt.file_ids``.

    Returns:
        ``(dataset, results)``: ``dataset`` has ``images`` (``id`` 1..N, ``file_name`` = the image id),
        ``annotations`` (``bbox`` ``[x, y, w, h]``, ``area = w * h``, ``iscrowd`` = difficult, ``id``
        1..G) and ``categories`` (``id`` 1..C, ``name``); ``results`` is a list of ``{"image_id",
        "category_id", "bbox", "score"}`` (for ``COCO.loadRes``), detections of classes absent from the
        ground truth left out.
    """
    categories = list(gt.classes)  # sorted by read_box_files
    category_id = {name: i + 1 for i, name in enumerate(categories)}

    def xywh(boxes: np.ndarray) -> np.ndarray:  # (N, 4) XYXY -> (N, 4) XYWH, continuous convention
        return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)

    gt_xywh = xywh(gt.boxes)  # (G, 4)
    gt_area = gt_xywh[:, 2] * gt_xywh[:, 3]  # (G,)
    gt_cat = np.array([category_id[c] for c in gt.classes], dtype=np.int64)[gt.class_index]  # (G,)
    annotations = [
        {"id": i + 1, "image_id": img + 1, "category_id": cat, "bbox": box, "area": area, "iscrowd": crowd}
        for i, (img, cat, box, area, crowd) in enumerate(zip(
            gt.image_index.tolist(), gt_cat.tolist(), gt_xywh.tolist(), gt_area.tolist(),
            gt.difficult.astype(int).tolist()))
    ]
    dataset = {
        "images": [{"id": i + 1, "file_name": file_id} for i, file_id in enumerate(gt.file_ids)],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(categories)],
    }

    # Detections: class id in GT categories, or 0 = a class the ground truth never mentions (dropped).
    det_cat = np.array([category_id.get(c, 0) for c in det.classes], dtype=np.int64)[det.class_index]  # (D,)
    known = det_cat > 0
    results = [
        {"image_id": img + 1, "category_id": cat, "bbox": box, "score": score}
        for img, cat, box, score in zip(det.image_index[known].tolist(), det_cat[known].tolist(),
                                        xywh(det.boxes[known]).tolist(), det.scores[known].tolist())
    ]
    return dataset, results


def coco_evaluate(gt: BoxFiles, det: BoxFiles, quiet: bool = True) -> CocoResult:
    """COCO box metrics of parsed Cartucho folders, computed by pycocotools' ``COCOeval``.

    Args:
        gt, det: as for ``to_coco``.
        quiet: do not print pycocotools' summary (it is kept in ``CocoResult.summary`` either way).

    Returns:
        a ``CocoResult``.

    Raises:
        ImportError: pycocotools is missing (the message names the extra to install).
        ValueError: no ground-truth box at all.
    """
    COCO, COCOeval = require_pycocotools()
    if len(gt) == 0:
        raise ValueError(f"The ground truth has no boxes in {len(gt.file_ids)} files: COCO metrics are undefined. "
                         "Check that the ground-truth files were written.")
    dataset, results = to_coco(gt, det)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress messages
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; an empty result set is still well defined (AP 0)
            coco_dt = COCO()
            coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if not quiet:
        print(summary.getvalue(), end="")

    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max-dets]; -1 = undefined.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # all areas, 100 detections -> (T, R, K)
    ap_per_class = {}
    for k, cat in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        if (values > -1).any():
            ap_per_class[coco_gt.cats[cat]["name"]] = float(values[values > -1].mean())
    return CocoResult(stats=np.asarray(evaluator.stats, dtype=np.float64), ap_per_class=ap_per_class,
                      summary=summary.getvalue(), num_images=len(dataset["images"]),
                      num_gt=len(dataset["annotations"]), num_det=len(results))


def evaluate_coco(
    input_dir: Optional[str] = None,
    quiet: bool = False,
    output_json: Optional[str] = None,
    *,
    gt_dir: Optional[str] = None,
    det_dir: Optional[str] = None,
) -> CocoResult:
    """COCO box metrics of a Cartucho/mAP input folder (``ground-truth/`` and ``detection-results/``).

    Args:
        input_dir: folder holding ``ground-truth/`` and ``detection-results/`` (e.g. ``"mAP/input"``).
            May be omitted when both ``gt_dir`` and ``det_dir`` are given.
        quiet: do not print pycocotools' summary.
        output_json: if given, write ``{"metrics": {...}, "ap_per_class": {...}, ...}`` there.
        gt_dir, det_dir: explicit folders, overriding the ones under ``input_dir``.

    Returns:
        a ``CocoResult``.

    Raises:
        ImportError: pycocotools is missing (the message names the extra to install).
        FileNotFoundError: a missing folder, or a GT file without a detection file or the reverse.
        ValueError: a malformed line (``file:line`` in the message) or no ground-truth box.
    """
    require_pycocotools()  # before reading any file
    gt, det = read_input_folders("evaluate_coco", input_dir, gt_dir, det_dir)
    result = coco_evaluate(gt, det, quiet=quiet)
    if output_json is not None:
        os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
        with open(output_json, "w") as f:
            json.dump({"metrics": result.metrics(), "ap_per_class": result.ap_per_class,
                       "num_images": result.num_images, "num_gt": result.num_gt, "num_det": result.num_det}, f,
                      indent=2)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m eecs598.coco_eval INPUT_DIR [--json PATH] [--quiet]``.

    Returns 0; 1 when pycocotools is missing; 2 after printing an input error."""
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.coco_eval",
        description="COCO-style AP@[.5:.95], AP50, AP75, AP/AR small/medium/large and AR@1/10/100 (pycocotools) "
                    "of INPUT_DIR/{ground-truth,detection-results}, the Cartucho/mAP input files.")
    parser.add_argument("input_dir", metavar="INPUT_DIR")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the metrics as JSON here")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    try:
        result = evaluate_coco(args.input_dir, quiet=args.quiet, output_json=args.json)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print("AP@[.5:.95] per class: " + ", ".join(f"{k} {v:.1%}" for k, v in result.ap_per_class.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
