"""Cartucho/mAP input files: reading them into arrays (``read_box_files``) and writing them (``CartuchoWriter``).

One pair of files per image, same ``<id>``::

    INPUT_DIR/ground-truth/<id>.txt        <class> <x1> <y1> <x2> <y2> [difficult]
    INPUT_DIR/detection-results/<id>.txt   <class> <confidence> <x1> <y1> <x2> <y2>

Coordinates are absolute pixels. An image without predictions must still have an (empty) detection file:
skipping it would hide its missed objects and inflate the mAP. Input errors (a missing folder or file, a
malformed line, no ground truth) raise exceptions whose messages name the file and line and say how to
fix the input. The AP arithmetic on what is read here is in :mod:`eecs598.evaluation.mean_ap`.
"""
from __future__ import annotations

import glob
import io
import itertools
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["GT_FORMAT", "DET_FORMAT", "BoxFiles", "read_box_files", "check_pairs", "read_input_folders",
           "CartuchoWriter"]

GT_FORMAT = "<class> <x1> <y1> <x2> <y2> [difficult]"
DET_FORMAT = "<class> <confidence> <x1> <y1> <x2> <y2>"


# ----------------------------------------------------------------------------------------------
# data containers
# ----------------------------------------------------------------------------------------------


@dataclass
class BoxFiles:
    """All boxes of one folder of ``<id>.txt`` files, flattened in file order, then line order.

    N = number of boxes in all files, F = number of files.

    Attributes:
        file_ids: ``F`` image ids (file names without ``.txt``), sorted like Cartucho's glob list.
        paths: ``F`` file paths, in the same order.
        image_index: ``(N,)`` int64, index into ``file_ids`` of each box's file.
        classes: the distinct class names found, sorted.
        class_index: ``(N,)`` int64, index into ``classes`` of each box's class.
        boxes: ``(N, 4)`` float64 ``(x1, y1, x2, y2)`` in pixels, inclusive pixel convention.
        scores: ``(N,)`` float64 confidences (detections) or ``None`` (ground truth).
        difficult: ``(N,)`` bool, the ``difficult`` flag (ground truth) or ``None`` (detections).
    """

    file_ids: List[str]
    paths: List[str]
    image_index: np.ndarray
    classes: List[str]
    class_index: np.ndarray
    boxes: np.ndarray
    scores: Optional[np.ndarray] = None
    difficult: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.class_index)


# ----------------------------------------------------------------------------------------------
# reading files
# ----------------------------------------------------------------------------------------------


def _list_txt_files(folder: str, what: str) -> List[str]:
    """Sorted ``folder/*.txt`` paths (Cartucho: ``glob`` then ``sort``); error if no folder."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{what} folder not found: {folder}\n"
            "Expected INPUT_DIR/ground-truth/ and INPUT_DIR/detection-results/ with one "
            "<image id>.txt per image (a4_helper.inference_with_detector(..., output_dir=INPUT_DIR) "
            "writes both)."
        )
    return sorted(glob.glob(os.path.join(folder, "*.txt")))


def _file_id(path: str) -> str:
    return os.path.basename(path)[: -len(".txt")]


_BOM = "\ufeff"


def _read_text(path: str) -> str:
    """A file's text: UTF-8, universal newlines (like Cartucho's ``readlines()``), one leading BOM removed.

    A byte-order mark (what some Windows editors put first in a UTF-8 file) would otherwise become part
    of the first class name and create a phantom class. Non-UTF-8 input is an error naming the file, line
    and byte, instead of a bare ``UnicodeDecodeError``.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); save the file as "
            "UTF-8 (or plain ASCII)"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _strip_boms(texts: List[str], paths: Sequence[str]) -> List[str]:
    """Remove one leading byte-order mark per file, with a single note naming the files concerned."""
    with_bom = [path for text, path in zip(texts, paths) if text.startswith(_BOM)]
    if not with_bom:
        return texts
    print(f"Note: removed the UTF-8 byte-order mark at the start of {len(with_bom)} file(s), e.g. {with_bom[0]}.",
          file=sys.stderr)
    return [text[1:] if text.startswith(_BOM) else text for text in texts]


def _parse_lines_slowly(texts: Sequence[str], paths: Sequence[str], is_gt: bool):
    """Line-by-line parser: the definition of the file format, with ``file:line`` errors.

    Returns ``(rows_per_file, names, numbers (N, 4|5), difficult (N,))``.
    """
    n_numbers, fmt = (4, GT_FORMAT) if is_gt else (5, DET_FORMAT)
    rows_per_file, names, numbers, difficult = [], [], [], []
    for text, path in zip(texts, paths):
        n_rows = 0
        for line_no, line in enumerate(text.split("\n"), start=1):
            tokens = line.split()
            if not tokens:  # blank line
                continue
            is_difficult = is_gt and len(tokens) == 6 and tokens[5] == "difficult"
            if len(tokens) != 1 + n_numbers + is_difficult:
                raise ValueError(
                    f"{path}:{line_no}: expected '{fmt}' ({1 + n_numbers} values"
                    + (", optionally followed by 'difficult'" if is_gt else "")
                    + f"), got {len(tokens)} values: {line.strip()!r}"
                )
            try:
                values = [float(t) for t in tokens[1 : 1 + n_numbers]]
            except ValueError:
                raise ValueError(
                    f"{path}:{line_no}: non-numeric value in {line.strip()!r}; expected '{fmt}'"
                ) from None
            if not all(math.isfinite(v) for v in values):
                raise ValueError(
                    f"{path}:{line_no}: expected finite numbers in '{fmt}', got NaN or inf in "
                    f"{line.strip()!r}"
                )
            if is_gt and (values[2] < values[0] or values[3] < values[1]):
                raise ValueError(
                    f"{path}:{line_no}: expected a ground-truth box with x1 <= x2 and y1 <= y2, got "
                    f"{line.strip()!r}"
                )
            names.append(tokens[0])
            numbers.append(values)
            difficult.append(is_difficult)
            n_rows += 1
        rows_per_file.append(n_rows)
    numbers = np.array(numbers, dtype=np.float64).reshape(-1, n_numbers)
    return rows_per_file, names, numbers, np.array(difficult, dtype=bool)


# Printable ASCII plus tab and newline: on such text str.split() and np.loadtxt agree on what
# separates tokens and lines.
_PLAIN_CHARS = bytes(range(0x20, 0x7F)) + b"\t\n"


def _is_plain(text: str) -> bool:
    return text.isascii() and not text.encode("ascii").translate(None, _PLAIN_CHARS)


def _parse_detections_quickly(texts: Sequence[str]):
    """Fast path for detection files (~5x faster than the loop for 250k lines), or ``None``.

    It returns a result only when it is provably the same as ``_parse_lines_slowly``: plain
    ASCII text, every non-blank line has >= 6 tokens with tokens 2-6 numeric (``np.loadtxt``
    succeeds) and finite, and the total token count is exactly 6 per line. Anything else ->
    ``None`` and the caller uses the slow parser, which also produces the error messages.
    """
    text = "\n".join(texts) + "\n"
    if not _is_plain(text):
        return None
    tokens_per_file = [t.split() for t in texts]
    n_tokens = sum(map(len, tokens_per_file))
    if n_tokens == 0:
        return [0] * len(texts), [], np.zeros((0, 5)), np.zeros(0, dtype=bool)
    try:
        numbers = np.loadtxt(io.StringIO(text), dtype=np.float64, usecols=(1, 2, 3, 4, 5),
                             comments=None, ndmin=2)  # (N, 5)
    except ValueError:
        return None
    if n_tokens != 6 * len(numbers) or not np.isfinite(numbers).all():
        return None
    # Now every line has exactly 6 tokens: class names are every 6th token.
    rows_per_file = [len(t) // 6 for t in tokens_per_file]
    names = list(itertools.chain.from_iterable(t[0::6] for t in tokens_per_file))
    return rows_per_file, names, numbers, np.zeros(len(numbers), dtype=bool)


def read_box_files(folder: str, kind: str) -> BoxFiles:
    """Read every ``folder/*.txt`` file (sorted by name) into flat arrays.

    Args:
        folder: a ``ground-truth`` or ``detection-results`` folder.
        kind: ``"gt"`` (lines ``<class> <x1> <y1> <x2> <y2> [difficult]``) or ``"det"``
            (lines ``<class> <confidence> <x1> <y1> <x2> <y2>``).

    Returns:
        a ``BoxFiles``; rows are in file order, then line order. Blank lines are skipped.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: a malformed line or non-UTF-8 bytes; the message names ``file:line`` (and the
            expected format).
    """
    if kind not in ("gt", "det"):
        raise ValueError(f"kind must be 'gt' or 'det', got {kind!r}")
    is_gt = kind == "gt"
    paths = _list_txt_files(folder, "Ground-truth" if is_gt else "Detection-results")
    texts = _strip_boms([_read_text(p) for p in paths], paths)
    parsed = None if is_gt else _parse_detections_quickly(texts)
    if parsed is None:
        parsed = _parse_lines_slowly(texts, paths, is_gt)
    rows_per_file, names, numbers, difficult = parsed
    classes = sorted(set(names))
    class_index = {name: i for i, name in enumerate(classes)}
    image_index = np.repeat(np.arange(len(paths), dtype=np.int64), rows_per_file)
    return BoxFiles(
        file_ids=[_file_id(p) for p in paths],
        paths=paths,
        image_index=image_index,
        classes=classes,
        class_index=np.fromiter(map(class_index.__getitem__, names), np.int64, len(names)),
        boxes=numbers[:, -4:].copy(),
        scores=None if is_gt else numbers[:, 0].copy(),
        difficult=difficult if is_gt else None,
    )


def check_pairs(gt: BoxFiles, det: BoxFiles, gt_dir: str, det_dir: str) -> None:
    """Every GT file needs a detection file with the same id, and vice versa."""
    if not gt.file_ids:
        raise ValueError(
            f"No ground-truth files found in {gt_dir}: the mAP is undefined. Write one "
            "<image id>.txt per image (a4_helper.inference_with_detector(..., output_dir=...))."
        )
    gt_ids, det_ids = set(gt.file_ids), set(det.file_ids)
    no_det = [i for i in gt.file_ids if i not in det_ids]
    if no_det:
        raise FileNotFoundError(
            f"Detection file not found: {os.path.join(det_dir, no_det[0] + '.txt')}"
            + (f" (and {len(no_det) - 1} more)" if len(no_det) > 1 else "")
            + ". Every ground-truth file needs a detection file with the same name; an image "
            "without predictions needs an EMPTY file (skipping it hides its missed objects). "
            "Run inference again (inference_with_detector writes one per image) or write an "
            "empty file."
        )
    no_gt = [i for i in det.file_ids if i not in gt_ids]
    if no_gt:
        raise FileNotFoundError(
            f"Ground-truth file not found: {os.path.join(gt_dir, no_gt[0] + '.txt')}"
            + (f" (and {len(no_gt) - 1} more)" if len(no_gt) > 1 else "")
            + ". Every detection file needs a ground-truth file with the same name. Delete the "
            "stray detection files, or regenerate both folders in one inference run."
        )


def read_input_folders(caller: str, input_dir: Optional[str], gt_dir: Optional[str] = None,
                       det_dir: Optional[str] = None) -> Tuple[BoxFiles, BoxFiles]:
    """Read and pair ``ground-truth/`` and ``detection-results/`` (of ``input_dir``, unless given directly).

    Returns:
        ``(gt, det)`` with ``gt.file_ids == det.file_ids``.

    Raises:
        ValueError: neither ``input_dir`` nor both folders given (``caller`` names the function), a malformed
            line, or no ground truth; FileNotFoundError: a missing folder or an unpaired file.
    """
    if gt_dir is None or det_dir is None:
        if input_dir is None:
            raise ValueError(f"{caller} needs input_dir, or both gt_dir and det_dir")
        gt_dir = gt_dir or os.path.join(input_dir, "ground-truth")
        det_dir = det_dir or os.path.join(input_dir, "detection-results")
    gt = read_box_files(gt_dir, "gt")
    det = read_box_files(det_dir, "det")
    check_pairs(gt, det, gt_dir, det_dir)
    return gt, det

# ==================================================================================================
# Writing the input files (the other side of read_box_files)
# ==================================================================================================

class CartuchoWriter:
    """Writes Cartucho/mAP input files for a set of images, all or nothing.

    Files go to a hidden temporary folder inside ``output_dir`` (``.partial-<random>``); :meth:`commit`
    swaps its ``ground-truth`` and ``detection-results`` folders in for the previous ones, :meth:`abort`
    (or an exception inside a ``with`` block) deletes it, leaving the previous results untouched. So a
    failure part-way never leaves a half-written set that ``evaluate_map`` would score as complete.

    Formats (one pair per image, also for an image without predictions):
    ``ground-truth/<id>.txt``: ``<class> <x1> <y1> <x2> <y2>`` (2 decimals);
    ``detection-results/<id>.txt``: ``<class> <score> <x1> <y1> <x2> <y2>`` (score 6 decimals).
    """

    FOLDERS = ("ground-truth", "detection-results")

    def __init__(self, output_dir: str, idx_to_class: Dict[int, str]):
        self.output_dir, self.idx_to_class = output_dir, idx_to_class
        os.makedirs(output_dir, exist_ok=True)
        self._remove_orphans()
        self.tmp_dir = tempfile.mkdtemp(prefix=".partial-", dir=output_dir)
        for folder in self.FOLDERS:
            os.makedirs(os.path.join(self.tmp_dir, folder))
        self.ids: Dict[str, str] = {}

    def _remove_orphans(self) -> None:
        """Delete temporary folders left by a process killed while writing."""
        for name in os.listdir(self.output_dir):
            if name.startswith(".partial-") or name.startswith(".previous-"):
                shutil.rmtree(os.path.join(self.output_dir, name), ignore_errors=True)

    def add(self, image_id: str, source: str, gt_rows, predictions, difficult_rows=None) -> None:
        """Write one image's files.

        Args:
            image_id: file stem (e.g. ``"000012"``); must be unique within the set.
            source: where the image came from (named in the duplicate-id error).
            gt_rows: ``(K, 5)`` rows ``(x1, y1, x2, y2, class_id)`` (no ``-1`` rows), tensor or array.
            predictions: ``(N, 6)`` rows ``(x1, y1, x2, y2, class_id, score)``.
            difficult_rows: ``(D, 5)`` rows like ``gt_rows`` written after them with the ``difficult`` flag
                (the mAP ignores detections on them), or None.
        """
        if image_id in self.ids:
            raise ValueError(f"two test images share the id {image_id!r} ({self.ids[image_id]} and {source}); "
                             f"their mAP files would overwrite each other. Give every image a distinct file name.")
        self.ids[image_id] = source
        names = self.idx_to_class
        gt_lines = [f"{names[int(c)]} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n" for x1, y1, x2, y2, c in _rows(gt_rows)]
        if difficult_rows is not None:
            gt_lines += [f"{names[int(c)]} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} difficult\n"
                         for x1, y1, x2, y2, c in _rows(difficult_rows)]
        det_lines = [f"{names[int(c)]} {s:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n"
                     for x1, y1, x2, y2, c, s in _rows(predictions)]
        for folder, lines in zip(self.FOLDERS, (gt_lines, det_lines)):
            with open(os.path.join(self.tmp_dir, folder, image_id + ".txt"), "w") as f:
                f.writelines(lines)

    def commit(self) -> None:
        """Replace the previous ``ground-truth`` / ``detection-results`` folders with the new ones."""
        import shutil
        previous = tempfile.mkdtemp(prefix=".previous-", dir=self.output_dir)
        replaced, moved_out, moved_in = 0, [], []
        # Both old folders go first, then both new ones: a process killed in between leaves a folder missing
        # (evaluate_map then fails loudly), never new ground truth beside old detections. An exception in
        # between puts the old folders back.
        try:
            for folder in self.FOLDERS:
                target = os.path.join(self.output_dir, folder)
                if os.path.exists(target):
                    replaced += len(os.listdir(target))
                    os.replace(target, os.path.join(previous, folder))
                    moved_out.append(folder)
            for folder in self.FOLDERS:
                os.replace(os.path.join(self.tmp_dir, folder), os.path.join(self.output_dir, folder))
                moved_in.append(folder)
        except BaseException:
            for folder in moved_in:
                os.replace(os.path.join(self.output_dir, folder), os.path.join(self.tmp_dir, folder))
            for folder in moved_out:
                os.replace(os.path.join(previous, folder), os.path.join(self.output_dir, folder))
            shutil.rmtree(previous, ignore_errors=True)
            self.abort()
            raise
        if replaced:
            print(f"Replaced the previous results in {self.output_dir} ({replaced} files) with "
                  f"{2 * len(self.ids)} new files.")
        shutil.rmtree(previous, ignore_errors=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> "CartuchoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _rows(values) -> List[List[float]]:
    """Tensor / array / list of rows -> list of float lists."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double()
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1).tolist() if len(values) else []
