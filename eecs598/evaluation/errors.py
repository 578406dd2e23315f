"""Error analysis: what kind of mistake every false positive and every miss is.

It uses the evaluator's own matching (``eecs598.evaluation.mean_ap.match_detections``: same
ranking, same best-IoU GT, same pixel-inclusive IoU). With ``t = min_overlap`` (0.5) and
``t_bg = background_iou`` (0.1), every false positive gets exactly one type, the first that applies:

1. ``duplicate``: its best GT of its class has IoU ``>= t`` but a higher-ranked detection already
   took that GT;
2. ``wrong_class``: it covers a GT box of *another* class with IoU ``>= t`` (right box, wrong label);
3. ``poor_localisation``: it overlaps a GT box of its own class with ``t_bg <= IoU < t``;
4. ``background``: everything else (no GT of its class within IoU ``t_bg``, no other object covered).

Every missed GT box (not ``difficult``, no true positive) gets one type too:

1. ``wrong_class``: a ``wrong_class`` false positive points at it (its best other-class GT);
2. ``poor_localisation``: some detection of its class overlaps it with IoU ``>= t_bg``;
3. ``not_detected``: nothing of its class near it.

The confusion matrix has a row per true class plus ``background`` and a column per predicted class
plus ``missed``: a TP of class c counts at ``[c, c]``, a ``wrong_class`` FP of class p on a GT of class
g at ``[g, p]``, any other FP of class p at ``[background, p]``, a miss of class g that no
``wrong_class`` FP explains at ``[g, missed]``. Detections matched to ``difficult`` GT are ignored
everywhere, as by the evaluator. ``plot_pr_curves`` draws the evaluator's per-class precision/recall
(raw and monotone, whose area is the AP); ``plot_worst_images`` shows the images with most errors.

Usage::

    pool = collect_detections(model, val_loader, dataset.idx_to_class, min_score=0.05)
    rows = sweep_thresholds(pool)                       # list of dicts, one per (score, nms)
    print(format_sweep_table(rows)); plot_sweep(rows, path="sweep.png")
    gt, det = pool.box_files(pool.keep(0.4, 0.5))
    errors = analyze_errors(gt, det)
    print(format_error_summary(errors)); plot_confusion_matrix(errors, path="confusion.png")

    python -m eecs598.analysis mAP/input --output analysis/ --score-thresh 0.4   # from Cartucho files
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.transforms import unnormalize
from .cartucho import BoxFiles, check_pairs, read_box_files
from .mean_ap import MapResult, Matching, _pixel_iou, compute_map, match_detections
from .sweeps import _check_fraction, _figure

__all__ = ["FP_TYPES", "MISS_TYPES", "ErrorAnalysis", "analyze_errors", "format_error_summary", "plot_pr_curves",
           "plot_error_breakdown", "plot_confusion_matrix", "plot_worst_images", "image_loader", "filter_by_score",
           "write_error_analysis", "main"]

FP_TYPES = ("wrong_class", "poor_localisation", "duplicate", "background")
MISS_TYPES = ("wrong_class", "poor_localisation", "not_detected")


# ----------------------------------------------------------------------------------------------
# error analysis
# ----------------------------------------------------------------------------------------------


@dataclass
class ErrorAnalysis:
    """What ``analyze_errors`` returns. D = detections, G = GT boxes, F = files, C = classes.

    Attributes:
        matching: the evaluator's ``Matching`` (TP / FP / ignored, best GT, ranking).
        class_names: ``C`` names (= ``matching.names``); class ids index it.
        file_ids: ``F`` image ids, file order.
        fp_type: ``(D,)`` int8 index into ``FP_TYPES`` for false positives, -1 for TP / ignored.
        confused_gt: ``(D,)`` int64 the other-class GT row a ``wrong_class`` FP covers, else -1.
        miss_type: ``(G,)`` int8 index into ``MISS_TYPES`` for missed GT, -1 for found or difficult.
        confusion: ``(C+1, C+1)`` int64: rows true class + ``background``, columns predicted class +
            ``missed`` (see the module docstring).
        image_tp, image_fp, image_missed: ``(F,)`` int64 counts per file.
        min_overlap, background_iou: the thresholds used.
    """

    matching: Matching
    class_names: List[str]
    file_ids: List[str]
    fp_type: np.ndarray
    confused_gt: np.ndarray
    miss_type: np.ndarray
    confusion: np.ndarray
    image_tp: np.ndarray
    image_fp: np.ndarray
    image_missed: np.ndarray
    min_overlap: float
    background_iou: float

    def fp_counts(self) -> Dict[str, int]:
        """Number of false positives of each type, in ``FP_TYPES`` order."""
        counts = np.bincount(self.fp_type[self.fp_type >= 0], minlength=len(FP_TYPES))
        return {name: int(n) for name, n in zip(FP_TYPES, counts)}

    def miss_counts(self) -> Dict[str, int]:
        """Number of missed GT boxes of each type, in ``MISS_TYPES`` order."""
        counts = np.bincount(self.miss_type[self.miss_type >= 0], minlength=len(MISS_TYPES))
        return {name: int(n) for name, n in zip(MISS_TYPES, counts)}

    def per_class(self) -> Dict[str, Dict[str, int]]:
        """Per class: ``tp``, each FP type (by detected class) and ``missed_<type>`` (by GT class)."""
        C = len(self.class_names)
        m = self.matching
        table = {}
        tp = np.bincount(m.det_cls[m.tp], minlength=C)
        fp = np.zeros((C, len(FP_TYPES)), dtype=np.int64)
        np.add.at(fp, (m.det_cls[self.fp_type >= 0], self.fp_type[self.fp_type >= 0]), 1)
        miss = np.zeros((C, len(MISS_TYPES)), dtype=np.int64)
        np.add.at(miss, (m.gt_cls[self.miss_type >= 0], self.miss_type[self.miss_type >= 0]), 1)
        for c, name in enumerate(self.class_names):
            row = {"tp": int(tp[c])}
            row.update({t: int(fp[c, i]) for i, t in enumerate(FP_TYPES)})
            row.update({f"missed_{t}": int(miss[c, i]) for i, t in enumerate(MISS_TYPES)})
            table[name] = row
        return table

    def worst_files(self, num: int = 8) -> List[int]:
        """Indices into ``file_ids`` of up to ``num`` files with the most errors (FP + missed), most first;
        ties in file order; files without errors are left out."""
        errors = self.image_fp + self.image_missed
        order = np.argsort(-errors, kind="stable")
        return [int(i) for i in order[:num] if errors[i] > 0]


def _same_image_pairs(gt: BoxFiles, det: BoxFiles, chunk_elems: int = 1 << 21):
    """Yield ``(rows (d,), cand (d, K), iou (d, K))``: every detection against every GT box of its image.

    K = most GT boxes in one image; ``cand`` holds GT rows or -1 (padding, IoU ``-inf``). IoU is the
    evaluator's pixel-inclusive one, ``-inf`` without overlap. Chunks bound the memory.
    """
    F = len(gt.file_ids)
    order = np.argsort(gt.image_index, kind="stable")  # (G,)
    counts = np.bincount(gt.image_index, minlength=F)  # (F,)
    K = max(1, int(counts.max(initial=0)))
    start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    padded = np.full((F, K), -1, dtype=np.int64)  # (F, K) GT rows of each image
    sorted_images = gt.image_index[order]
    padded[sorted_images, np.arange(len(order)) - start[sorted_images]] = order
    step = max(1, chunk_elems // K)
    for lo in range(0, len(det), step):
        rows = np.arange(lo, min(len(det), lo + step))
        cand = padded[det.image_index[rows]]  # (d, K)
        if len(gt) == 0:
            yield rows, cand, np.full(cand.shape, -np.inf)
            continue
        iou = _pixel_iou(det.boxes[rows], gt.boxes[cand])  # (d, K); cand -1 gathers junk ...
        iou[(cand < 0) | np.isnan(iou)] = -np.inf  # ... masked here, like degenerate boxes
        yield rows, cand, iou


def analyze_errors(gt: BoxFiles, det: BoxFiles, min_overlap: float = 0.5,
                   background_iou: float = 0.1) -> ErrorAnalysis:
    """Classify every false positive and every missed GT box (rules in the module docstring).

    Args:
        gt, det: as for ``eecs598.evaluation.mean_ap.compute_map`` (``det.image_index`` indexes ``gt.file_ids``).
        min_overlap: IoU for a true positive (``t``), as in the evaluator.
        background_iou: IoU below which a detection is on background (``t_bg``), ``<= min_overlap``.

    Returns:
        an ``ErrorAnalysis``.
    """
    background_iou = _check_fraction("background_iou", background_iou)
    m = match_detections(gt, det, min_overlap)
    t = m.min_overlap
    if background_iou > t:
        raise ValueError(f"background_iou ({background_iou}) must be <= min_overlap ({t})")
    D, G, C, F = len(det), len(gt), len(m.names), len(gt.file_ids)

    other_best = np.full(D, -np.inf)  # (D,) best IoU with a non-difficult GT of another class
    other_gt = np.full(D, -1, dtype=np.int64)  # (D,) that GT
    gt_own_best = np.full(G, -np.inf)  # (G,) best IoU with a (non-ignored) detection of its class
    for rows, cand, iou in _same_image_pairs(gt, det):
        valid = cand >= 0
        same = valid & (m.gt_cls[cand] == m.det_cls[rows, None])  # (d, K)
        other = np.where(valid & ~same & ~gt.difficult[cand], iou, -np.inf)
        k = np.argmax(other, axis=1)
        other_best[rows] = other[np.arange(len(rows)), k]
        other_gt[rows] = np.where(np.isfinite(other_best[rows]), cand[np.arange(len(rows)), k], -1)
        own = same & ~m.ignored[rows, None]
        np.maximum.at(gt_own_best, cand[own], iou[own])

    fp = m.fp
    duplicate = fp & (m.best_iou >= t)
    wrong = fp & ~duplicate & (other_best >= t)
    poor = fp & ~duplicate & ~wrong & (m.best_iou >= background_iou)
    background = fp & ~duplicate & ~wrong & ~poor
    fp_type = np.full(D, -1, dtype=np.int8)
    for i, mask in enumerate((wrong, poor, duplicate, background)):  # FP_TYPES order
        fp_type[mask] = i
    confused_gt = np.where(wrong, other_gt, -1)

    found = np.zeros(G, dtype=bool)
    found[m.best_gt[m.tp]] = True
    missed = ~found & ~gt.difficult
    confused = np.zeros(G, dtype=bool)
    confused[other_gt[wrong]] = True
    miss_wrong = missed & confused
    miss_poor = missed & ~confused & (gt_own_best >= background_iou)
    miss_none = missed & ~confused & ~miss_poor
    miss_type = np.full(G, -1, dtype=np.int8)
    for i, mask in enumerate((miss_wrong, miss_poor, miss_none)):  # MISS_TYPES order
        miss_type[mask] = i

    # Confusion matrix: (true, predicted) pairs, flattened into one bincount.
    true = np.concatenate([m.det_cls[m.tp], m.gt_cls[other_gt[wrong]], np.full(int((fp & ~wrong).sum()), C),
                           m.gt_cls[miss_poor | miss_none]])
    pred = np.concatenate([m.det_cls[m.tp], m.det_cls[wrong], m.det_cls[fp & ~wrong],
                           np.full(int((miss_poor | miss_none).sum()), C)])
    confusion = np.bincount(true * (C + 1) + pred, minlength=(C + 1) ** 2).reshape(C + 1, C + 1)

    return ErrorAnalysis(
        matching=m, class_names=list(m.names), file_ids=list(gt.file_ids), fp_type=fp_type,
        confused_gt=confused_gt, miss_type=miss_type, confusion=confusion.astype(np.int64),
        image_tp=np.bincount(det.image_index[m.tp], minlength=F),
        image_fp=np.bincount(det.image_index[fp], minlength=F),
        image_missed=np.bincount(gt.image_index[missed], minlength=F),
        min_overlap=t, background_iou=background_iou,
    )


def format_error_summary(errors: ErrorAnalysis) -> str:
    """Plain-text report: totals of each FP and miss type, then a per-class table."""
    fpc, mc = errors.fp_counts(), errors.miss_counts()
    num_fp, num_missed = sum(fpc.values()), sum(mc.values())
    num_tp = int(errors.matching.tp.sum())

    def share(n, total):
        return f"{n} ({n / total:.0%})" if total else str(n)

    lines = [f"true positives: {num_tp}",
             f"false positives: {num_fp} = " + ", ".join(f"{k} {share(v, num_fp)}" for k, v in fpc.items()),
             f"missed GT boxes: {num_missed} = " + ", ".join(f"{k} {share(v, num_missed)}" for k, v in mc.items()),
             f"(IoU for a match {errors.min_overlap:g}, background below IoU {errors.background_iou:g})", ""]
    table = errors.per_class()
    columns = ["tp", *FP_TYPES, *(f"missed_{t}" for t in MISS_TYPES)]
    width = max([5] + [len(n) for n in table])
    lines.append(f"{'class':<{width}} " + " ".join(f"{c:>{max(6, len(c))}}" for c in columns))
    for name, row in table.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{row[c]:>{max(6, len(c))}}" for c in columns))
    return "\n".join(lines)


def plot_pr_curves(result: MapResult, path: Optional[str] = None, cols: int = 5):
    """Per-class precision-recall curves from the evaluator (``MapResult.precision`` / ``recall``).

    Each panel shows the raw precision after each ranked detection (thin) and the monotone envelope
    whose area is the class's AP (filled). Returns the matplotlib ``Figure`` (saved at ``path``).
    """
    names = list(result.ap)
    cols = max(1, min(cols, len(names)))
    rows = -(-len(names) // cols)
    fig = _figure(path, (2.6 * cols, 2.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        rec, prec = result.recall[name], result.precision[name]
        if len(rec):
            # Precision on (r[i-1], r[i]] is the envelope at r[i] ("pre" steps): the area is voc_ap's sum.
            envelope = np.maximum.accumulate(prec[::-1])[::-1]
            x, y = np.concatenate(([0.0], rec)), np.concatenate((envelope[:1], envelope))
            ax.plot(rec, prec, lw=0.8, color="gray")
            ax.fill_between(x, y, step="pre", alpha=0.3, color="royalblue")
            ax.step(x, y, where="pre", color="royalblue")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name}: AP {result.ap[name]:.1%}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names):]:
        ax.axis("off")
    fig.supxlabel("recall")
    fig.supylabel("precision")
    fig.suptitle(f"Precision-recall per class (IoU {result.min_overlap:g}); mAP {result.map:.1%}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_error_breakdown(errors: ErrorAnalysis, path: Optional[str] = None):
    """Stacked bars per class: detections (TP + each FP type) and GT boxes (found + each miss type)."""
    table = errors.per_class()
    names = list(table)
    fig = _figure(path, (12, 0.35 * len(names) + 1.8))
    ax_det, ax_gt = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(names))
    colours = {"tp": "tab:green", "wrong_class": "tab:purple", "poor_localisation": "tab:orange",
               "duplicate": "tab:olive", "background": "tab:red", "not_detected": "tab:gray"}
    left = np.zeros(len(names))
    for key in ("tp", *FP_TYPES):
        values = np.array([table[n][key] for n in names], dtype=float)
        ax_det.barh(y, values, left=left, color=colours[key], label=key)
        left += values
    left = np.zeros(len(names))
    for key, colour_key in (("tp", "tp"), *((f"missed_{t}", t) for t in MISS_TYPES)):
        values = np.array([table[n][key] for n in names], dtype=float)
        ax_gt.barh(y, values, left=left, color=colours[colour_key], label="found" if key == "tp" else key)
        left += values
    ax_det.set_yticks(y)
    ax_det.set_yticklabels(names)
    ax_det.set_title("detections: TP and false-positive types")
    ax_gt.set_title("GT boxes: found and miss types")
    for ax in (ax_det, ax_gt):
        ax.set_xlabel("boxes")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_confusion_matrix(errors: ErrorAnalysis, path: Optional[str] = None):
    """The ``(C+1, C+1)`` confusion matrix with counts in the cells (rows true, columns predicted)."""
    C = len(errors.class_names)
    fig = _figure(path, (0.5 * C + 3, 0.5 * C + 2.5))
    ax = fig.subplots()
    cm = errors.confusion
    row_sum = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(cm / row_sum, cmap="Blues", vmin=0, vmax=1)  # colour: share of the row
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                color="white" if cm[i, j] / row_sum[i, 0] > 0.5 else "black")
    ax.set_xticks(range(C + 1))
    ax.set_xticklabels(errors.class_names + ["missed"], rotation=90)
    ax.set_yticks(range(C + 1))
    ax.set_yticklabels(errors.class_names + ["background"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (counts; colour = share of the row)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_worst_images(errors: ErrorAnalysis, gt: BoxFiles, det: BoxFiles, load_image: Callable[[str], object],
                      path: Optional[str] = None, num_images: int = 8, cols: int = 4):
    """The images with most errors: GT boxes red, true positives green, false positives orange with their type.

    Args:
        errors, gt, det: the analysis and the boxes it was computed from.
        load_image: image id -> image as ``(3, H, W)`` float tensor in ``[0, 1]`` or ``(H, W, 3)`` uint8,
            in the pixel frame of the boxes (e.g. ``image_loader(dataset)``).
        path: save the figure there (PNG) if given.
        num_images, cols: how many images, how many per row.

    Returns:
        the matplotlib ``Figure`` (``None`` when no image has an error).
    """
    from ..utils import detection_visualizer

    files = errors.worst_files(num_images)
    if not files:
        return None
    m = errors.matching
    names = {i: n for i, n in enumerate(errors.class_names)}
    cols = max(1, min(cols, len(files)))
    rows = -(-len(files) // cols)
    fig = _figure(path, (3.4 * cols, 3.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, f in zip(axes, files):
        g = gt.image_index == f
        d = det.image_index == f
        gt_rows = np.concatenate([gt.boxes[g], m.gt_cls[g, None]], axis=1)
        tp = d & m.tp
        tp_rows = np.concatenate([det.boxes[tp], m.det_cls[tp, None], det.scores[tp, None]], axis=1)
        detection_visualizer(load_image(errors.file_ids[f]), names, gt_rows, tp_rows, show=False, ax=ax)
        for i in np.flatnonzero(d & (errors.fp_type >= 0)):
            x1, y1, x2, y2 = det.boxes[i]
            ax.add_patch(_rectangle(x1, y1, x2, y2, "orange"))
            ax.text(x1, y2, f"{names[m.det_cls[i]]} {det.scores[i]:.2f} {FP_TYPES[errors.fp_type[i]]}",
                    fontsize=6, va="top", color="black", bbox=dict(facecolor="orange", alpha=0.7, pad=1,
                                                                   edgecolor="none"))
        ax.set_title(f"{errors.file_ids[f]}: {errors.image_fp[f]} FP, {errors.image_missed[f]} missed", fontsize=8)
    for ax in axes[len(files):]:
        ax.axis("off")
    fig.suptitle("Worst images: GT red, true positives green, false positives orange (with their type)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _rectangle(x1, y1, x2, y2, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5, linestyle="--")


def image_loader(dataset) -> Callable[[str], torch.Tensor]:
    """``load_image`` for ``plot_worst_images`` from a course dataset (or a ``Subset`` of one).

    The image id is the file name without extension; images are un-normalised (ImageNet mean / std) back
    to ``(3, S, S)`` in ``[0, 1]``, the frame of the mAP files.
    """
    base, indices = dataset, None
    if isinstance(dataset, torch.utils.data.Subset):
        base, indices = dataset.dataset, list(dataset.indices)
    paths = getattr(base, "image_paths", None)
    if paths is None:
        raise TypeError(f"image_loader: {type(base).__name__} has no image_paths attribute; pass your own "
                        "load_image(image_id) -> (3, H, W) tensor in [0, 1]")
    positions = range(len(paths)) if indices is None else indices
    index_of = {os.path.splitext(os.path.basename(paths[i]))[0]: i for i in positions}

    def load(image_id: str) -> torch.Tensor:
        if image_id not in index_of:
            raise KeyError(f"image_loader: image id {image_id!r} is not in the dataset")
        return unnormalize(base[index_of[image_id]][1])

    return load


def filter_by_score(det: BoxFiles, score_thresh: float) -> BoxFiles:
    """The detections scoring ``> score_thresh`` (an operating point for error analysis), same layout."""
    keep = det.scores > _check_fraction("score_thresh", score_thresh)
    used = np.unique(det.class_index[keep])
    lut = np.full(len(det.classes), -1, dtype=np.int64)
    lut[used] = np.arange(len(used))
    return BoxFiles(file_ids=det.file_ids, paths=det.paths, image_index=det.image_index[keep],
                    classes=[det.classes[i] for i in used], class_index=lut[det.class_index[keep]],
                    boxes=det.boxes[keep], scores=det.scores[keep], difficult=None)


def write_error_analysis(errors: ErrorAnalysis, gt: BoxFiles, det: BoxFiles, result: Optional[MapResult],
                         output_dir: str, load_image: Optional[Callable] = None, num_images: int = 8) -> Dict:
    """Write ``errors.txt``, ``errors.png``, ``confusion_matrix.png``, with ``result`` ``pr_curves.png``
    and with ``load_image`` ``worst_images.png`` into ``output_dir``; returns a JSON-ready summary."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "errors.txt"), "w") as f:
        f.write(format_error_summary(errors) + "\n")
    plot_error_breakdown(errors, path=os.path.join(output_dir, "errors.png"))
    plot_confusion_matrix(errors, path=os.path.join(output_dir, "confusion_matrix.png"))
    if result is not None:
        plot_pr_curves(result, path=os.path.join(output_dir, "pr_curves.png"))
    if load_image is not None:
        plot_worst_images(errors, gt, det, load_image, path=os.path.join(output_dir, "worst_images.png"),
                          num_images=num_images)
    return {"true_positives": int(errors.matching.tp.sum()), "false_positives": errors.fp_counts(),
            "missed": errors.miss_counts(), "classes": errors.class_names,
            "confusion_matrix": errors.confusion.tolist()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: error analysis of Cartucho/mAP input files (no model needed).

    ``python -m eecs598.analysis INPUT_DIR [--output DIR] [--score-thresh 0.4] [--min-overlap 0.5]``
    writes ``pr_curves.png`` (all detections in the files), and at the operating point
    ``--score-thresh`` ``errors.txt``, ``errors.png`` and ``confusion_matrix.png``. Returns 0, or 2
    after printing an input error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.analysis",
        description="Per-class PR curves, false-positive / miss breakdown and confusion matrix of "
                    "INPUT_DIR/{ground-truth,detection-results} (Cartucho/mAP input files).")
    parser.add_argument("input_dir", metavar="INPUT_DIR")
    parser.add_argument("--output", metavar="DIR", default=None, help="default: INPUT_DIR/../analysis")
    parser.add_argument("--score-thresh", type=float, default=0.4,
                        help="operating point for the error breakdown (default 0.4, the course's drawing threshold)")
    parser.add_argument("--min-overlap", type=float, default=0.5, help="IoU for a true positive (default 0.5)")
    parser.add_argument("--background-iou", type=float, default=0.1,
                        help="below this IoU a false positive is on background (default 0.1)")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.input_dir)), "analysis")
    try:
        gt_dir = os.path.join(args.input_dir, "ground-truth")
        det_dir = os.path.join(args.input_dir, "detection-results")
        gt, det = read_box_files(gt_dir, "gt"), read_box_files(det_dir, "det")
        check_pairs(gt, det, gt_dir, det_dir)
        result = compute_map(gt, det, min_overlap=args.min_overlap)
        operating = filter_by_score(det, args.score_thresh)
        errors = analyze_errors(gt, operating, min_overlap=args.min_overlap, background_iou=args.background_iou)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_error_analysis(errors, gt, operating, result, output)
    print(f"At score > {args.score_thresh:g}:\n" + format_error_summary(errors))
    print(f"Wrote pr_curves.png, errors.txt, errors.png, confusion_matrix.png to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
