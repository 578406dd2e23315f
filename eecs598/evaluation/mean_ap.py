"""Mean average precision (mAP) for object detection, computed exactly like Cartucho/mAP.

The course notebook used to run the public Cartucho/mAP ``main.py`` on text files written by
``a4_helper.inference_with_detector``. This module computes the **same per-class AP and mAP**
offline, vectorised with NumPy (well under a second for a VOC 2007 val-sized input of 2510
images and 250k detections, see ``benchmarks/bench_eval.py``), and writes Cartucho's
``output.txt`` and ``mAP.png``.

Input files (one pair per image, same ``<id>``)::

    INPUT_DIR/ground-truth/<id>.txt        <class> <x1> <y1> <x2> <y2> [difficult]
    INPUT_DIR/detection-results/<id>.txt   <class> <confidence> <x1> <y1> <x2> <y2>

Coordinates are absolute pixels. An image without predictions must still have an (empty)
detection file: skipping it would hide its missed objects and inflate the mAP.

The rules, in plain words (they are Cartucho's, which follow PASCAL VOC 2010+):

1. **Which classes count.** A class is evaluated when it has at least one ground-truth (GT) box
   that is not marked ``difficult``. Classes that only occur in detections are ignored. The mAP
   is the plain mean of the per-class APs, classes in alphabetical order.
2. **Ranking.** For one class, the detections of all images are sorted by confidence, highest
   first. Ties keep file order (files sorted by name), then line order inside a file.
3. **Matching.** Going down that ranking, each detection is compared with every GT box of its
   class in its image (difficult ones too) and picks the one with the highest IoU (the first in
   file line order on a tie). IoU uses the pixel-inclusive VOC convention: a box
   ``[x1, x2]`` is ``x2 - x1 + 1`` pixels wide, and so is an intersection, which must be
   positive in both directions. Then, with ``min_overlap = 0.5``:

   - best IoU ``>= 0.5`` and that GT is ``difficult``: the detection is ignored (neither TP nor FP);
   - best IoU ``>= 0.5`` and that GT is still unused: true positive (TP), the GT is now used;
   - best IoU ``>= 0.5`` but that GT is already used: false positive (FP) -- there is no
     fall-back to the second-best GT, so a duplicate detection is an FP;
   - best IoU ``< 0.5`` (or no GT of that class in the image): FP.
4. **Precision / recall** after each ranked detection: ``recall = TP / #GT`` (non-difficult GT
   only) and ``precision = TP / (TP + FP)``.
5. **AP** is the area under the precision-recall curve after making precision monotone
   (each precision is replaced by the best precision at any higher recall), the VOC2010+
   "all-point" rule. A class with GT but no detections has AP 0.

Deviations from Cartucho's ``main.py`` (none changes an AP of well-formed input):

- Precision is defined as 0 where ``TP + FP == 0`` (the top-ranked detections of a class only hit
  difficult GT boxes); Cartucho crashes there with ``ZeroDivisionError``. AP does not depend on
  this value, see ``_class_pr``.
- Blank lines are skipped (Cartucho errors on them), and ``difficult`` must be the 6th token of
  a GT line (Cartucho looks for the substring anywhere in the line).
- Files are read as UTF-8 and a leading byte-order mark is removed, with a note (Cartucho reads it as
  part of the first class name, a phantom class); bytes that are not UTF-8 are an error naming the
  file and line.
- Non-finite numbers (``nan``, ``inf``) in any file and ground-truth boxes with ``x2 < x1`` or
  ``y2 < y1`` are input errors (``file:line`` in the message); Cartucho silently scores them.
  (Inverted *detection* boxes are accepted, as in Cartucho: they simply never match.)
- ``min_overlap`` must be a number in ``[0, 1]``.
- Input errors (missing folder or file, malformed line, no ground truth) raise exceptions whose
  messages name the file and line and say how to fix the input; Cartucho prints and exits.
- No ``--ignore`` / ``--set-class-iou`` options, no animation, no ``.temp_files``; the output
  folder is not deleted first (only ``output.txt`` and ``mAP.png`` are overwritten).

Usage::

    from eecs598.evaluation.mean_ap import evaluate_map
    result = evaluate_map("mAP/input", output_dir="mAP/output")   # prints per-class AP and mAP
    result.map, result.ap["dog"]

    python -m eecs598.mean_ap mAP/input            # writes mAP/output/output.txt and mAP.png
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .cartucho import BoxFiles, read_input_folders

__all__ = ["MapResult", "Matching", "match_detections", "compute_map", "evaluate_map", "voc_ap", "plot_ap_bars",
           "format_output_txt", "main"]


@dataclass
class MapResult:
    """What ``evaluate_map`` / ``compute_map`` return.

    Attributes:
        ap: AP in ``[0, 1]`` of each evaluated class (>= 1 non-difficult GT box), alphabetical.
        map: mean of ``ap.values()``.
        num_gt: number of non-difficult GT boxes per evaluated class.
        num_det: number of detections per class, for every class found in the detection files
            (also classes that are not evaluated), alphabetical.
        num_tp: true positives per class in ``num_det``; ``num_det - num_tp`` is what Cartucho
            reports as ``fp`` (it includes the ignored detections on difficult boxes).
        precision: per evaluated class, ``(D_c,)`` float64 precision after each ranked detection
            (``D_c`` = detections of that class, ignored ones included).
        recall: per evaluated class, ``(D_c,)`` float64 recall after each ranked detection.
        min_overlap: the IoU threshold used.
    """

    ap: Dict[str, float]
    map: float
    num_gt: Dict[str, int]
    num_det: Dict[str, int]
    num_tp: Dict[str, int]
    precision: Dict[str, np.ndarray] = field(repr=False)
    recall: Dict[str, np.ndarray] = field(repr=False)
    min_overlap: float = 0.5

    def lines(self) -> List[str]:
        """Cartucho's console lines: ``"xx.xx% = <class> AP "`` per class, then ``"mAP = xx.xx%"``."""
        out = ["{0:.2f}%".format(ap * 100) + " = " + name + " AP " for name, ap in self.ap.items()]
        return out + ["mAP = {0:.2f}%".format(self.map * 100)]


# ----------------------------------------------------------------------------------------------
# computing AP
# ----------------------------------------------------------------------------------------------


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ all-point AP: area under the precision-recall curve with monotone precision.

    Args:
        recall: ``(D,)`` non-decreasing recall after each ranked detection.
        precision: ``(D,)`` precision after each ranked detection.

    Returns:
        AP as a Python float; 0.0 for ``D == 0``.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))  # (D+2,)
    mpre = np.concatenate(([0.0], precision, [0.0]))  # (D+2,)
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # best precision at this or any higher recall
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1  # points where recall changes
    terms = (mrec[i] - mrec[i - 1]) * mpre[i]
    # cumsum adds left to right like Cartucho's loop, so AP is bit-identical (np.sum would use
    # pairwise summation and could differ in the last bit).
    return float(np.cumsum(terms)[-1]) if terms.size else 0.0


def _pixel_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU in the pixel-inclusive VOC convention, ``-inf`` where boxes do not overlap.

    Args:
        det_boxes: ``(D, 4)`` float64 ``(x1, y1, x2, y2)``.
        gt_boxes: ``(D, K, 4)`` float64 candidate GT boxes of each detection.

    Returns:
        ``(D, K)`` float64. The arithmetic is written in Cartucho's order, so values are bit-
        identical (this matters for IoUs exactly at the threshold).
    """
    bb = det_boxes[:, None, :]  # (D, 1, 4)
    iw = np.minimum(bb[..., 2], gt_boxes[..., 2]) - np.maximum(bb[..., 0], gt_boxes[..., 0]) + 1
    ih = np.minimum(bb[..., 3], gt_boxes[..., 3]) - np.maximum(bb[..., 1], gt_boxes[..., 1]) + 1
    ua = ((bb[..., 2] - bb[..., 0] + 1) * (bb[..., 3] - bb[..., 1] + 1)
          + (gt_boxes[..., 2] - gt_boxes[..., 0] + 1) * (gt_boxes[..., 3] - gt_boxes[..., 1] + 1)
          - iw * ih)
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = iw * ih / ua
    return np.where((iw > 0) & (ih > 0), ov, -np.inf)


def _best_gt_per_detection(gt: BoxFiles, gt_cls: np.ndarray, det: BoxFiles, det_cls: np.ndarray,
                           n_cls: int, chunk_elems: int = 1 << 21) -> Tuple[np.ndarray, np.ndarray]:
    """For each detection, its best-IoU GT box of the same class in the same image.

    G = GT boxes, D = detections, K = most GT boxes of one class in one image.

    Returns:
        ``best_gt (D,)`` int64 index into the GT rows (-1: no GT of that class in the image) and
        ``best_iou (D,)`` float64 (``-inf`` when nothing overlaps). Ties go to the first GT in
        line order, as Cartucho's strict ``ov > ovmax`` does.
    """
    D = len(det)
    best_gt = np.full(D, -1, dtype=np.int64)
    best_iou = np.full(D, -np.inf)
    if D == 0 or len(gt) == 0:
        return best_gt, best_iou

    # Group GT rows by (image, class); a stable sort keeps line order inside each group.
    gt_key = gt.image_index * n_cls + gt_cls  # (G,)
    order = np.argsort(gt_key, kind="stable")  # (G,)
    keys, start, size = np.unique(gt_key[order], return_index=True, return_counts=True)
    K = int(size.max())
    group = np.repeat(np.arange(len(keys)), size)  # (G,) group of each sorted row
    slot = np.arange(len(order)) - start[group]  # (G,) position inside the group
    padded = np.full((len(keys), K), -1, dtype=np.int64)  # (groups, K) GT row or -1
    padded[group, slot] = order

    det_key = det.image_index * n_cls + det_cls  # (D,)
    g = np.minimum(np.searchsorted(keys, det_key), len(keys) - 1)
    has_gt = np.flatnonzero(keys[g] == det_key)  # detections with >= 1 candidate GT
    step = max(1, chunk_elems // K)  # bounded memory even if one image has many boxes
    for lo in range(0, len(has_gt), step):
        rows = has_gt[lo : lo + step]  # (d,)
        cand = padded[g[rows]]  # (d, K)
        iou = _pixel_iou(det.boxes[rows], gt.boxes[cand])  # (d, K); cand -1 gathers junk ...
        iou[cand < 0] = -np.inf  # ... that is masked here
        iou[np.isnan(iou)] = -np.inf  # degenerate boxes (Cartucho would crash on 0/0)
        k = np.argmax(iou, axis=1)  # first maximum -> first GT in line order
        best_iou[rows] = iou[np.arange(len(rows)), k]
        best_gt[rows] = cand[np.arange(len(rows)), k]
    return best_gt, best_iou


def _class_pr(tp: np.ndarray, fp: np.ndarray, n_gt: int) -> Tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each ranked detection of one class (``(D_c,)`` each)."""
    tp_cum = np.cumsum(tp, dtype=np.int64)
    fp_cum = np.cumsum(fp, dtype=np.int64)
    recall = tp_cum / n_gt
    # TP + FP == 0 happens only while the top-ranked detections are all ignored (matched to
    # difficult GT); Cartucho divides 0/0 there. We use precision 0: those points have recall 0
    # like the curve's start, so they are not recall steps, and the monotone envelope is a max
    # taken from the right, so values to their left never influence AP.
    denom = tp_cum + fp_cum
    precision = np.divide(tp_cum, denom, out=np.zeros(len(tp), dtype=np.float64), where=denom > 0)
    return recall, precision


def _check_min_overlap(min_overlap) -> float:
    """``min_overlap`` as a float; ValueError unless it is a real number in ``[0, 1]``."""
    if isinstance(min_overlap, (bool, np.bool_)) or not isinstance(
            min_overlap, (int, float, np.integer, np.floating)):
        raise ValueError(f"min_overlap must be a number in [0, 1] (an IoU), got {min_overlap!r} "
                         f"of type {type(min_overlap).__name__}")
    if not 0.0 <= min_overlap <= 1.0:  # also rejects NaN
        raise ValueError(f"min_overlap must be in [0, 1] (an IoU), got {min_overlap!r}")
    return float(min_overlap)


@dataclass
class Matching:
    """The evaluator's decision for every detection (what ``compute_map`` scores), for error analysis.

    D = detections, G = GT boxes, C = classes in ``names``. Row indices refer to the ``BoxFiles``
    passed to ``match_detections``.

    Attributes:
        names: the class names of GT and detections together, alphabetical; class ids index it.
        gt_cls: ``(G,)`` int64 class id of each GT box.
        det_cls: ``(D,)`` int64 class id of each detection.
        best_gt: ``(D,)`` int64 the best-IoU GT box of the detection's class in its image (-1: none).
        best_iou: ``(D,)`` float64 pixel-inclusive IoU with ``best_gt`` (``-inf``: no overlap).
        tp: ``(D,)`` bool true positives.
        fp: ``(D,)`` bool false positives (duplicates included).
        ignored: ``(D,)`` bool matched to a ``difficult`` GT: neither TP nor FP.
        rank: ``(D,)`` int64 detection rows by class id, then by decreasing confidence (ties in
            file order, then line order): each class is a contiguous slice, in ranking order.
        min_overlap: the IoU threshold used.
    """

    names: List[str]
    gt_cls: np.ndarray
    det_cls: np.ndarray
    best_gt: np.ndarray
    best_iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    ignored: np.ndarray
    rank: np.ndarray
    min_overlap: float


def match_detections(gt: BoxFiles, det: BoxFiles, min_overlap: float = 0.5) -> Matching:
    """Rank and match every detection exactly as ``compute_map`` does (rules 2 and 3 of the module
    docstring): TP / FP / ignored flags and the GT box each detection was compared with.

    Args:
        gt, det, min_overlap: as for ``compute_map`` (``det.image_index`` indexes ``gt.file_ids``).

    Returns:
        a ``Matching``.

    Raises:
        ValueError: ``min_overlap`` outside ``[0, 1]``.
    """
    min_overlap = _check_min_overlap(min_overlap)
    # Shared integer class ids, ordered alphabetically.
    names = sorted(set(gt.classes) | set(det.classes))
    gt_cls = np.searchsorted(names, gt.classes)[gt.class_index].astype(np.int64)  # (G,) ids into names
    det_cls = np.searchsorted(names, det.classes)[det.class_index].astype(np.int64)  # (D,)
    n_cls = len(names)

    # 1. Best GT of each detection; whether that match counts.
    best_gt, best_iou = _best_gt_per_detection(gt, gt_cls, det, det_cls, n_cls)
    matched = best_iou >= min_overlap  # (D,)
    ignored = matched & gt.difficult[best_gt]  # (D,) matched to a difficult GT
    candidate = matched & ~ignored  # (D,) TP if it is the first to claim its GT

    # 2. Rank: by class, then by confidence descending. Both sorts are stable, so ties keep file
    #    order, then line order (= row order), exactly like Python's sort(reverse=True).
    #    Same as np.lexsort((-det.scores, det_cls)), but faster: NumPy radix-sorts small ints.
    by_score = np.argsort(-det.scores, kind="stable")  # (D,)
    small_cls = det_cls[by_score].astype(np.min_scalar_type(n_cls))  # uint8 for < 256 classes
    rank = by_score[np.argsort(small_cls, kind="stable")]  # (D,)

    # 3. A GT box is "used" by the first candidate (in rank order) that picks it; every later
    #    candidate for the same GT is a duplicate -> FP. Each GT belongs to a single class, so one
    #    np.unique over all classes at once gives each GT's first claimant.
    claimants = rank[candidate[rank]]  # candidates in rank order
    _, first = np.unique(best_gt[claimants], return_index=True)
    tp = np.zeros(len(det), dtype=bool)
    tp[claimants[first]] = True
    fp = ~tp & ~ignored
    return Matching(names=names, gt_cls=gt_cls, det_cls=det_cls, best_gt=best_gt, best_iou=best_iou, tp=tp,
                    fp=fp, ignored=ignored, rank=rank, min_overlap=min_overlap)


def compute_map(gt: BoxFiles, det: BoxFiles, min_overlap: float = 0.5) -> MapResult:
    """Per-class AP and mAP from parsed files (see the module docstring for the rules).

    Args:
        gt: ground truth, from ``read_box_files(..., "gt")``.
        det: detections, from ``read_box_files(..., "det")``; ``det.image_index`` must index the
            same ``file_ids`` as ``gt.image_index`` (``evaluate_map`` checks the pairing).
        min_overlap: IoU needed for a match (``>=``), 0.5 in PASCAL VOC.

    Returns:
        a ``MapResult``.

    Raises:
        ValueError: no non-difficult GT box at all (the mAP would be a mean over no class), or
            ``min_overlap`` outside ``[0, 1]``.
    """
    min_overlap = _check_min_overlap(min_overlap)
    names = sorted(set(gt.classes) | set(det.classes))
    gt_cls = np.searchsorted(names, gt.classes)[gt.class_index]  # (G,) ids into names
    det_cls = np.searchsorted(names, det.classes)[det.class_index]  # (D,)
    n_cls = len(names)

    gt_per_class = np.bincount(gt_cls[~gt.difficult], minlength=n_cls)  # non-difficult only
    det_per_class = np.bincount(det_cls, minlength=n_cls)
    evaluated = [c for c in range(n_cls) if gt_per_class[c] > 0]
    if not evaluated:
        raise ValueError(
            f"The ground truth has no boxes (or only 'difficult' ones) in {len(gt.file_ids)} "
            "files: the mAP is undefined. Check that the ground-truth files were written."
        )

    # 1.-3. Best GT of each detection, ranking, TP / FP (see match_detections).
    matching = match_detections(gt, det, min_overlap)
    tp, fp, rank = matching.tp, matching.fp, matching.rank

    # 4. Precision / recall / AP per class; each class is a contiguous slice of ``rank``.
    bounds = np.searchsorted(det_cls[rank], np.arange(n_cls + 1))
    ap, precision, recall, num_gt, num_tp = {}, {}, {}, {}, {}
    for c in range(n_cls):
        ranked = rank[bounds[c] : bounds[c + 1]]  # (D_c,) detections of class c, ranked
        if det_per_class[c] > 0:
            num_tp[names[c]] = int(tp[ranked].sum())
        if gt_per_class[c] == 0:
            continue
        rec, prec = _class_pr(tp[ranked], fp[ranked], int(gt_per_class[c]))
        ap[names[c]] = voc_ap(rec, prec)
        recall[names[c]], precision[names[c]] = rec, prec
        num_gt[names[c]] = int(gt_per_class[c])
    return MapResult(
        ap=ap,
        map=sum(ap.values()) / len(ap),  # left-to-right sum, like Cartucho
        num_gt=num_gt,
        num_det={names[c]: int(det_per_class[c]) for c in range(n_cls) if det_per_class[c] > 0},
        num_tp=num_tp,
        precision=precision,
        recall=recall,
        min_overlap=min_overlap,
    )


# ----------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------


def format_output_txt(result: MapResult) -> str:
    """The text of Cartucho's ``output.txt`` for ``result``."""
    out = ["# AP and precision/recall per class\n"]
    for name, line in zip(result.ap, result.lines()):
        prec = ["%.2f" % v for v in result.precision[name]]
        rec = ["%.2f" % v for v in result.recall[name]]
        out.append(line + "\n Precision: " + str(prec) + "\n Recall :" + str(rec) + "\n\n")
    out.append("\n# mAP of all classes\n")
    out.append(result.lines()[-1] + "\n")
    out.append("\n# Number of ground-truth objects per class\n")
    out += [f"{name}: {n}\n" for name, n in result.num_gt.items()]
    out.append("\n# Number of detected objects per class\n")
    for name, n in result.num_det.items():
        tp = result.num_tp.get(name, 0)
        out.append(f"{name}: {n} (tp:{tp}, fp:{n - tp})\n")
    return "".join(out)


def plot_ap_bars(ap: Dict[str, float], map_value: float, path: Optional[str] = None, ax=None):
    """Horizontal bar chart of per-class AP, sorted ascending, titled with the mAP (Cartucho's mAP.png).

    Args:
        ap: class name -> AP in ``[0, 1]``.
        map_value: the mAP in ``[0, 1]``, shown in the title.
        path: if given, the figure is saved there (PNG).
        ax: draw into this matplotlib ``Axes``. If ``None``: with ``path`` a standalone figure is
            made (not registered with pyplot, so nothing opens or leaks in scripts and tests);
            without ``path`` a pyplot figure is made, which a notebook shows inline.

    Returns:
        the matplotlib ``Figure``.
    """
    items = sorted(ap.items(), key=lambda kv: kv[1])  # ascending; the best class ends on top
    if ax is None:
        size = (6.4, max(2.5, 0.3 * len(items) + 1.2))
        if path is None:
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=size)
        else:
            from matplotlib.figure import Figure

            fig = Figure(figsize=size)
            ax = fig.add_subplot()
    fig = ax.figure
    values = [100 * v for _, v in items]  # percent, the unit of the title (Cartucho mixes 0-1 bars, % title)
    ax.barh(range(len(items)), values, color="royalblue")
    for i, v in enumerate(values):
        ax.text(v, i, " {0:.1f}%".format(v), va="center", color="royalblue", fontweight="bold")
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([name for name, _ in items])
    ax.set_xlim(0, 115)
    ax.set_xlabel("Average Precision (%)")
    ax.set_title("mAP = {0:.2f}%".format(map_value * 100))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


# ----------------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------------

def evaluate_map(
    input_dir: Optional[str] = None,
    min_overlap: float = 0.5,
    output_dir: Optional[str] = None,
    plot: bool = True,
    quiet: bool = False,
    *,
    gt_dir: Optional[str] = None,
    det_dir: Optional[str] = None,
) -> MapResult:
    """Evaluate Cartucho/mAP input files: per-class AP and mAP.

    Args:
        input_dir: folder holding ``ground-truth/`` and ``detection-results/`` (the notebook's
            ``"mAP/input"``). May be omitted when both ``gt_dir`` and ``det_dir`` are given.
        min_overlap: IoU needed for a true positive (``>=``).
        output_dir: if given, write ``output.txt`` (Cartucho's layout) and, with ``plot``,
            ``mAP.png`` there (the folder is created; other files in it are left alone). ``None``
            writes nothing. Cartucho writes next to its script, i.e. ``mAP/output`` for the
            notebook; the command line uses ``INPUT_DIR/../output`` likewise.
        plot: write ``mAP.png`` (only used with ``output_dir``).
        quiet: do not print the per-class lines and the mAP.
        gt_dir, det_dir: explicit folders, overriding the ones under ``input_dir``.

    Returns:
        a ``MapResult``.

    Raises:
        FileNotFoundError: a missing folder, or a GT file without a detection file or the reverse.
        ValueError: a malformed line (``file:line`` in the message), no ground truth, or
            ``min_overlap`` outside ``[0, 1]``.
    """
    min_overlap = _check_min_overlap(min_overlap)  # before reading any file
    gt, det = read_input_folders("evaluate_map", input_dir, gt_dir, det_dir)
    result = compute_map(gt, det, min_overlap=min_overlap)
    if not quiet:
        print("\n".join(result.lines()))
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "output.txt"), "w") as f:
            f.write(format_output_txt(result))
        if plot:
            plot_ap_bars(result.ap, result.map, path=os.path.join(output_dir, "mAP.png"))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m eecs598.mean_ap INPUT_DIR [--output DIR] [--min-overlap 0.5]
    [--no-plot] [--quiet]``. Returns 0, or 2 after printing an input error."""
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.mean_ap",
        description="Cartucho/mAP-compatible mAP of INPUT_DIR/{ground-truth,detection-results}.",
    )
    parser.add_argument("input_dir", metavar="INPUT_DIR")
    parser.add_argument("--output", metavar="DIR", default=None,
                        help="where output.txt and mAP.png go (default: INPUT_DIR/../output)")
    parser.add_argument("--min-overlap", type=float, default=0.5, help="IoU threshold (default 0.5)")
    parser.add_argument("--no-plot", action="store_true", help="do not write mAP.png")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    output = args.output
    if output is None:
        output = os.path.join(os.path.dirname(os.path.abspath(args.input_dir)), "output")
    try:
        evaluate_map(args.input_dir, min_overlap=args.min_overlap, output_dir=output,
                     plot=not args.no_plot, quiet=args.quiet)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
