"""Threshold sweeps: every (score, NMS) setting from one inference pass.

**Threshold sweeps.** ``collect_detections`` runs the detector once over a loader and keeps every
candidate scoring above the lowest threshold of interest, *before* NMS (``test_nms_thresh=1.0``
suppresses nothing: an IoU is never above 1). ``DetectionPool.evaluate(score, nms)`` then keeps the
candidates scoring ``> score`` and applies ``common.class_spec_nms`` at ``nms``. Greedy NMS commutes
with a score threshold (whether a box survives depends only on the boxes ranked above it, which all
pass any threshold it passes), so this gives exactly the detections, and the Cartucho mAP, of separate
``inference_with_detector(..., score_thresh=score, nms_thresh=nms)`` runs, including the rounding of
the text files (boxes 2 decimals, scores 6). ``sweep_thresholds`` evaluates a grid of settings, e.g.
the course's drawing setting 0.4 / 0.6 against the evaluation setting 0.05 / 0.5;
``format_sweep_table``, ``write_sweep_csv`` and ``plot_sweep`` show it.

Usage::

    pool = collect_detections(model, val_loader, dataset.idx_to_class, min_score=0.05)
    rows = sweep_thresholds(pool)                       # list of dicts, one per (score, nms)
    print(format_sweep_table(rows)); plot_sweep(rows, path="sweep.png")
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision

from .cartucho import BoxFiles
from .evaluator import DatasetEvaluator, ImageResult, check_idx_to_class, image_id_of, inference_on_dataset
from .mean_ap import MapResult, compute_map

__all__ = ["DEFAULT_SCORE_THRESHS", "DEFAULT_NMS_THRESHS", "DetectionPool", "DetectionCollector", "collect_detections",
           "sweep_thresholds", "format_sweep_table", "write_sweep_csv", "plot_sweep"]

DEFAULT_SCORE_THRESHS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_NMS_THRESHS = (0.3, 0.4, 0.5, 0.6, 0.7)
# (score, NMS) settings circled in plot_sweep: the course's evaluation and drawing settings.
MARKED_SETTINGS = ((0.05, 0.5), (0.4, 0.6))


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _as_written(values: np.ndarray, decimals: int) -> np.ndarray:
    """``values`` (float64) exactly as ``f"{v:.{decimals}f}"`` writes them and ``float()`` reads them back:
    what the Cartucho text files hold (correctly rounded decimals, unlike ``np.round``)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    return np.char.mod(f"%.{decimals}f", values.ravel()).astype(np.float64).reshape(values.shape)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _make_box_files(file_ids: List[str], file_of_row: np.ndarray, class_of_row: np.ndarray,
                    class_names: Sequence[str], boxes: np.ndarray, scores: Optional[np.ndarray] = None,
                    difficult: Optional[np.ndarray] = None) -> BoxFiles:
    """A ``BoxFiles`` equal to what ``read_box_files`` returns for the same rows written to files.

    Args:
        file_ids: ``F`` ids, sorted as Cartucho lists the files (by ``<id>.txt``).
        file_of_row: ``(N,)`` int64 index into ``file_ids``; rows of one file keep their given order
            (= line order), files are put in ``file_ids`` order with a stable sort.
        class_of_row: ``(N,)`` int64 index into ``class_names``.
        boxes, scores, difficult: ``(N, 4)``, ``(N,)``, ``(N,)`` row values.
    """
    order = np.argsort(file_of_row, kind="stable")  # (N,) file order, then line order
    present = sorted({class_names[c] for c in np.unique(class_of_row).tolist()})
    lut = np.full(len(class_names), -1, dtype=np.int64)  # class id -> index into present
    for i, name in enumerate(present):
        lut[list(class_names).index(name)] = i
    return BoxFiles(
        file_ids=list(file_ids),
        paths=[f"{file_id}.txt" for file_id in file_ids],  # in memory: only used in error messages
        image_index=file_of_row[order].astype(np.int64),
        classes=present,
        class_index=lut[class_of_row[order]],
        boxes=boxes[order].reshape(-1, 4),
        scores=None if scores is None else scores[order],
        # GT rows carry a difficult flag (False unless given); detection rows carry none.
        difficult=None if scores is not None else (
            np.zeros(len(order), dtype=bool) if difficult is None else difficult[order]),
    )


# ----------------------------------------------------------------------------------------------
# one inference pass -> any (score, NMS) setting
# ----------------------------------------------------------------------------------------------


@dataclass
class DetectionPool:
    """Every detection candidate of one inference pass above ``min_score``, before NMS, with the GT.

    I = images (loader order), G = GT boxes, D = candidates, C = classes. Boxes are XYXY in pixels of
    the network input. Within each image the candidates are in the detector's output order (decreasing
    score, ties in the detector's location order), images one after the other.

    Attributes:
        image_ids: ``I`` image ids (file names without extension), the Cartucho file names.
        image_paths: ``I`` image paths as the loader gave them.
        class_names: ``C`` names, class id -> name.
        gt_image, gt_class: ``(G,)`` int64 image position and class id of each GT box.
        gt_boxes: ``(G, 4)`` float64 as written in the GT files (2 decimals).
        det_image, det_class: ``(D,)`` long CPU tensors.
        det_scores: ``(D,)`` raw scores in the detector's dtype (compared with score thresholds).
        det_boxes: ``(D, 4)`` raw boxes in the detector's dtype (what NMS sees).
        det_scores_file: ``(D,)`` float64 scores as written in the detection files (6 decimals).
        det_boxes_file: ``(D, 4)`` float64 boxes as written in the detection files (2 decimals).
        min_score: candidates have scores ``> min_score``; settings below it cannot be evaluated.
    """

    image_ids: List[str]
    image_paths: List[str]
    class_names: List[str]
    gt_image: np.ndarray
    gt_class: np.ndarray
    gt_boxes: np.ndarray
    det_image: torch.Tensor
    det_class: torch.Tensor
    det_scores: torch.Tensor
    det_boxes: torch.Tensor
    det_scores_file: np.ndarray
    det_boxes_file: np.ndarray
    min_score: float
    _nms_kept: Dict[float, torch.Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.det_scores.shape[0])

    def keep(self, score_thresh: float, nms_thresh: float) -> np.ndarray:
        """Candidates that ``FCOS.inference(test_score_thresh=score_thresh, test_nms_thresh=nms_thresh)``
        would return, as ``(K,)`` int64 indices in pool order (by image, then decreasing score).

        Args:
            score_thresh: keep scores ``> score_thresh``; in ``[min_score, 1]``.
            nms_thresh: class-specific NMS IoU threshold in ``[0, 1]``.
        """
        score_thresh = _check_fraction("score_thresh", score_thresh)
        nms_thresh = _check_fraction("nms_thresh", nms_thresh)
        if score_thresh < self.min_score:
            raise ValueError(f"score_thresh {score_thresh} is below the pool's min_score {self.min_score}: the "
                             "candidates below it were not kept. Collect again with a lower min_score.")
        if nms_thresh not in self._nms_kept:
            # One call for all images: (image, class) pairs are the NMS groups, so boxes of different
            # images or classes never meet, exactly as in per-image class_spec_nms calls.
            groups = self.det_image * len(self.class_names) + self.det_class  # (D,)
            kept = torchvision.ops.batched_nms(self.det_boxes, self.det_scores, groups, nms_thresh)
            self._nms_kept[nms_thresh] = kept.sort().values  # back to pool order
        kept = self._nms_kept[nms_thresh]
        # The same comparison as FCOS.inference (tensor of the detector's dtype > Python float).
        return kept[self.det_scores[kept] > score_thresh].numpy().astype(np.int64)

    def _file_rank(self) -> Tuple[List[str], np.ndarray]:
        """File ids sorted like Cartucho's file list (by ``<id>.txt``) and each image's rank in it."""
        order = sorted(range(len(self.image_ids)), key=lambda i: self.image_ids[i] + ".txt")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return [self.image_ids[i] for i in order], rank

    def box_files(self, kept: Optional[np.ndarray] = None) -> Tuple[BoxFiles, BoxFiles]:
        """The ``(gt, det)`` that ``read_box_files`` would return for Cartucho files of these detections.

        Args:
            kept: ``(K,)`` candidate indices (e.g. from ``keep``); ``None`` = all candidates.
        """
        file_ids, rank = self._file_rank()
        gt = _make_box_files(file_ids, rank[self.gt_image], self.gt_class, self.class_names, self.gt_boxes)
        if kept is None:
            kept = np.arange(len(self), dtype=np.int64)
        det = _make_box_files(file_ids, rank[self.det_image.numpy()[kept]], self.det_class.numpy()[kept],
                              self.class_names, self.det_boxes_file[kept], scores=self.det_scores_file[kept])
        return gt, det

    def evaluate(self, score_thresh: float, nms_thresh: float, min_overlap: float = 0.5) -> MapResult:
        """Cartucho mAP at one setting: equal to ``inference_with_detector`` + ``evaluate_map`` there."""
        gt, det = self.box_files(self.keep(score_thresh, nms_thresh))
        return compute_map(gt, det, min_overlap=min_overlap)


class DetectionCollector(DatasetEvaluator):
    """Gathers every candidate and GT box of the images seen into a :class:`DetectionPool`.

    Feed it from :func:`~eecs598.evaluation.evaluator.inference_on_dataset` run with ``nms_thresh=1.0`` (no
    suppression) and ``score_thresh=min_score``.
    """

    def __init__(self, idx_to_class: Dict[int, str], min_score: float):
        self.class_names = check_idx_to_class(idx_to_class, len(idx_to_class), "collect_detections")
        self.min_score = min_score

    def reset(self) -> None:
        self.image_ids, self.image_paths, self.seen = [], [], set()
        self.gts, self.boxes, self.classes, self.scores = [], [], [], []

    def process(self, result: ImageResult) -> None:
        image_id = image_id_of(result.image_path)
        if image_id in self.seen:
            raise ValueError(f"collect_detections: two images share the id {image_id!r} ({result.image_path})")
        self.seen.add(image_id)
        self.image_ids.append(image_id)
        self.image_paths.append(result.image_path)
        self.gts.append(result.gt)  # (M_i, 5)
        self.boxes.append(result.boxes)
        self.classes.append(result.classes)
        self.scores.append(result.scores)

    def evaluate(self) -> "DetectionPool":
        if not self.image_ids:
            raise ValueError("collect_detections: test_loader is empty (0 images)")
        gt_all = torch.cat(self.gts).numpy()  # (G, 5)
        det_boxes, det_scores = torch.cat(self.boxes), torch.cat(self.scores)  # (D, 4), (D,)
        sizes = torch.tensor([len(s) for s in self.scores])
        return DetectionPool(
            image_ids=self.image_ids,
            image_paths=self.image_paths,
            class_names=self.class_names,
            gt_image=np.repeat(np.arange(len(self.gts)), [len(g) for g in self.gts]).astype(np.int64),
            gt_class=gt_all[:, 4].astype(np.int64),
            gt_boxes=_as_written(gt_all[:, :4], 2),
            det_image=torch.repeat_interleave(torch.arange(len(self.scores)), sizes),
            det_class=torch.cat(self.classes),
            det_scores=det_scores,
            det_boxes=det_boxes,
            # As inference_with_detector writes them: the double value of each number, correctly rounded.
            det_scores_file=_as_written(det_scores.double().numpy(), 6),
            det_boxes_file=_as_written(det_boxes.double().numpy(), 2).reshape(-1, 4),
            min_score=self.min_score,
        )


def collect_detections(
    detector: torch.nn.Module,
    test_loader,
    idx_to_class: Dict[int, str],
    min_score: float = 0.05,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    *,
    progress: bool = True,
) -> DetectionPool:
    """One inference pass keeping every candidate scoring ``> min_score``, without NMS.

    Args:
        detector: in eval mode ``detector(image (1,3,H,W), test_score_thresh=..., test_nms_thresh=...)``
            returns ``(boxes (N,4) XYXY, classes (N,) long, scores (N,))`` sorted by decreasing score
            (the contract's ``FCOS``); it is called with ``test_nms_thresh=1.0``.
        test_loader: DataLoader with batch size 1 yielding ``(image_paths, images, gt_boxes (1,M,5))``,
            as for ``a4_helper.inference_with_detector``.
        idx_to_class: class id -> name (names without whitespace: they become file tokens).
        min_score: the lowest score threshold that will be evaluated, in ``[0, 1]``.
        dtype, device: the detector and images are moved to these (NMS later runs on the CPU).
        progress: show a tqdm progress bar.

    Returns:
        a ``DetectionPool``.
    """
    min_score = _check_fraction("min_score", min_score)
    if getattr(test_loader, "batch_size", 1) != 1:
        raise ValueError(f"collect_detections: test_loader must have batch_size=1, got {test_loader.batch_size}")
    if set(idx_to_class) != set(range(len(idx_to_class))):
        raise ValueError(f"collect_detections: idx_to_class must map 0..C-1 to names, got keys {sorted(idx_to_class)}")
    collector = DetectionCollector(idx_to_class, min_score)
    return inference_on_dataset(detector, test_loader, [collector], min_score, 1.0, dtype=dtype, device=device,
                                progress=progress, desc="inference (sweep)", caller="collect_detections")[0]


def sweep_thresholds(
    pool: DetectionPool,
    score_threshs: Sequence[float] = DEFAULT_SCORE_THRESHS,
    nms_threshs: Sequence[float] = DEFAULT_NMS_THRESHS,
    min_overlap: float = 0.5,
) -> List[Dict]:
    """Cartucho mAP and operating-point counts for every (score, NMS) pair, from one pool.

    Args:
        pool: from ``collect_detections`` with ``min_score <= min(score_threshs)``.
        score_threshs, nms_threshs: the grid.
        min_overlap: IoU for a true positive.

    Returns:
        one dict per pair (score-major order) with ``score_thresh``, ``nms_thresh``, ``mAP``,
        ``ap_per_class`` (dict), ``detections``, ``detections_per_image``, ``tp``, ``fp``, ``precision``
        (TP / detections, all classes together) and ``recall`` (TP / GT boxes of evaluated classes).
    """
    if not score_threshs or not nms_threshs:
        raise ValueError("sweep_thresholds needs at least one score threshold and one NMS threshold")
    rows = []
    for score in score_threshs:
        for nms in nms_threshs:
            kept = pool.keep(score, nms)
            gt, det = pool.box_files(kept)
            result = compute_map(gt, det, min_overlap=min_overlap)
            tp = sum(result.num_tp.values())
            num_gt = sum(result.num_gt.values())
            rows.append({
                "score_thresh": float(score), "nms_thresh": float(nms), "mAP": result.map,
                "ap_per_class": dict(result.ap), "detections": int(len(kept)),
                "detections_per_image": len(kept) / len(pool.image_ids), "tp": tp, "fp": int(len(kept)) - tp,
                "precision": tp / len(kept) if len(kept) else 0.0, "recall": tp / num_gt,
            })
    return rows


def format_sweep_table(rows: List[Dict], value: str = "mAP") -> str:
    """Markdown table of one value (``"mAP"``, ``"precision"``, ``"recall"``, ``"detections_per_image"``...):
    a row per score threshold, a column per NMS threshold; fractions as percentages."""
    scores = sorted({r["score_thresh"] for r in rows})
    nmss = sorted({r["nms_thresh"] for r in rows})
    cell = {(r["score_thresh"], r["nms_thresh"]): r[value] for r in rows}
    percent = value in ("mAP", "precision", "recall")
    lines = [f"| {value} (score \\ NMS) | " + " | ".join(f"{n:g}" for n in nmss) + " |",
             "|---|" + "---|" * len(nmss)]
    for s in scores:
        values = [cell.get((s, n)) for n in nmss]
        text = ["" if v is None else (f"{v:.1%}" if percent else f"{v:.1f}") for v in values]
        lines.append(f"| {s:g} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def write_sweep_csv(rows: List[Dict], path: str) -> None:
    """One CSV line per setting: the scalar columns of ``sweep_thresholds``, then ``AP_<class>`` columns."""
    classes = sorted({c for r in rows for c in r["ap_per_class"]})
    scalar = ["score_thresh", "nms_thresh", "mAP", "precision", "recall", "detections", "detections_per_image",
              "tp", "fp"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(scalar + [f"AP_{c}" for c in classes])
        for r in rows:
            writer.writerow([r[k] for k in scalar] + [r["ap_per_class"].get(c, "") for c in classes])


def _figure(path: Optional[str], figsize):
    """A pyplot figure (shown inline in notebooks) without ``path``, else one unknown to pyplot (no leak)."""
    if path is None:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def plot_sweep(rows: List[Dict], path: Optional[str] = None):
    """mAP, recall and detections per image against the score threshold, a line per NMS threshold.

    Args:
        rows: from ``sweep_thresholds``.
        path: save the figure there (PNG) if given.

    The settings of ``MARKED_SETTINGS`` (evaluation 0.05 / 0.5, drawing 0.4 / 0.6) are circled when in ``rows``.

    Returns:
        the matplotlib ``Figure``.
    """
    fig = _figure(path, (13, 3.8))
    axes = fig.subplots(1, 3)
    nmss = sorted({r["nms_thresh"] for r in rows})
    for nms in nmss:
        line = sorted((r for r in rows if r["nms_thresh"] == nms), key=lambda r: r["score_thresh"])
        x = [r["score_thresh"] for r in line]
        for ax, key, scale in zip(axes, ("mAP", "recall", "detections_per_image"), (100, 100, 1)):
            ax.plot(x, [r[key] * scale for r in line], marker=".", label=f"NMS {nms:g}")
    for score, nms in MARKED_SETTINGS:
        hit = [r for r in rows if np.isclose(r["score_thresh"], score) and np.isclose(r["nms_thresh"], nms)]
        for r in hit:
            axes[0].plot(r["score_thresh"], r["mAP"] * 100, "o", mfc="none", mec="black", ms=11)
            axes[0].annotate(f"{score:g}/{nms:g}: {r['mAP']:.1%}", (r["score_thresh"], r["mAP"] * 100),
                             textcoords="offset points", xytext=(6, 6), fontsize=8)
    for ax, label in zip(axes, ("mAP@0.5 (%)", "recall (%)", "detections per image")):
        ax.set_xlabel("score threshold")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Threshold sweep (one inference pass; circled: course settings score/NMS)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
