"""``python -m eecs598.predict``: run a trained checkpoint on your own photos, folders, glob patterns and videos.

Example::

    python -m eecs598.predict --checkpoint runs/shapes-demo/checkpoint.pt photos/ 'more/*.jpg' clip.mp4 --out preds

The model is rebuilt from the settings saved in the checkpoint (``eecs598.tools.detector.load_detector``, as
``train_fcos.py --eval-only`` does) and sees each photo whole, at its training scale (no centre crop:
``eecs598.tools.detect.detect_photos``); boxes come back in the photo's own pixels. ``--out DIR`` receives
each picture with its boxes, class names and scores drawn (videos as ``.mp4``, frame by frame), and the
machine-readable files of :class:`eecs598.tools.predict_io.DetectionFiles`: ``detections.jsonl`` (a JSON
line per photo or video frame) and ``coco_results.json`` + ``coco_images.json`` (pycocotools' ``loadRes``).
Inputs that cannot be read are skipped and listed with their reasons at the end; the exit status is 0 when
every input was read, 1 when some were not, 2 for a usage error (a bad option, checkpoint or device).

Photos are batched (``--batch-size``) only with photos of the same network input size, so padding never
changes a photo's detections: each photo gets exactly ``detect_photos([photo])``'s detections.
``predict()`` does the same from Python; docs/predict.md has the details and the measured speed.
"""
import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.images import ImageFileError
from ..data.transforms import inference_size
from ..recipes import NMS_THRESH, SCORE_THRESH_VIS, TTA_CHOICES
from .detect import PhotoDetections, detect_photos
from .detector import LoadedDetector, load_detector
from .predict_io import (VIDEO_HINT, DetectionFiles, OutputNames, Source, VideoWriter, draw_detections_on_photo,
                         expand_inputs, read_photo, video_errors, video_frames)

__all__ = ["PhotoResult", "PredictReport", "predict", "build_parser", "main"]

STRIDE = 32  # the FPN's coarsest stride: inputs are padded to a multiple of it (prepare_image)


@dataclass
class PhotoResult:
    """The detections of one photo or video frame.

    Attributes:
        input: the file; frame: the frame index in a video (None for a photo); time_s: its time in the video.
        width, height: the picture's size; detections: ``[{"box": [x1, y1, x2, y2], "class", "class_id",
        "score"}]`` in its pixels, by decreasing score; image_id: its id in the COCO files (None without
        ``out_dir``); output: the drawn picture or video written (None if none).
    """

    input: str
    frame: Optional[int]
    time_s: Optional[float]
    width: int
    height: int
    detections: List[Dict]
    image_id: Optional[int] = None
    output: Optional[str] = None


@dataclass
class PredictReport:
    """What :func:`predict` did: ``results`` (one per photo and frame, unless ``keep_results=False``),
    ``failures`` (``(input, reason)`` of inputs skipped), counts, wall time and the files written."""

    results: List[PhotoResult] = field(default_factory=list)
    failures: List[Tuple[str, str]] = field(default_factory=list)
    num_inputs: int = 0
    num_photos: int = 0
    num_frames: int = 0
    seconds: float = 0.0
    files: Dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every input was read."""
        return not self.failures


class _Batcher:
    """Collects consecutive pictures of one network input size and runs them through ``detect_photos`` as a
    batch of at most ``batch_size``; each result goes to the callback given with its picture."""

    def __init__(self, detector: LoadedDetector, batch_size: int, max_size: int, **detect_options):
        self.detector, self.batch_size, self.max_size = detector, batch_size, max_size
        self.options = detect_options
        self.pending: List[Tuple[object, Callable[[PhotoDetections], None]]] = []
        self.key: Optional[Tuple[int, int]] = None

    def input_size(self, photo) -> Tuple[int, int]:
        """The padded network input ``(width, height)`` of a photo (``prepare_image``'s arithmetic)."""
        width, height = photo.size if hasattr(photo, "size") and not isinstance(photo, np.ndarray) else \
            (photo.shape[1], photo.shape[0])
        new_width, new_height, _ = inference_size(width, height, self.detector.image_size, self.max_size, STRIDE)
        return -(-new_width // STRIDE) * STRIDE, -(-new_height // STRIDE) * STRIDE

    def add(self, photo, on_result: Callable[[PhotoDetections], None]) -> None:
        key = self.input_size(photo)
        if self.pending and key != self.key:
            self.flush()
        self.key = key
        self.pending.append((photo, on_result))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        outputs = detect_photos(self.detector.model, [photo for photo, _ in batch], self.detector.image_size,
                                max_size=self.max_size, **self.options)
        for (_, on_result), detections in zip(batch, outputs):
            on_result(detections)


class _Run:
    """One call of :func:`predict`: the batcher, the output files and the report being filled."""

    def __init__(self, detector: LoadedDetector, out_dir: Optional[str], keep_ids: Optional[set], draw: bool,
                 keep_results: bool, batcher: _Batcher):
        self.detector, self.out_dir, self.keep_ids, self.draw = detector, out_dir, keep_ids, draw
        self.keep_results, self.batcher, self.report = keep_results, batcher, PredictReport()
        self.names = OutputNames(out_dir) if out_dir else None
        self.files = DetectionFiles(out_dir, detector.class_names) if out_dir else None

    def emit(self, source: Source, frame: Optional[int], time_s: Optional[float], detections: PhotoDetections,
             output: Optional[str]) -> List[Dict]:
        """Record one picture's detections (JSON line, COCO results, report); returns its records."""
        records = [r for r in detections.as_records(self.detector.class_names)
                   if self.keep_ids is None or r["class_id"] in self.keep_ids]
        width, height = detections.size
        result = PhotoResult(source.path, frame, time_s, width, height, records, output=output)
        if self.files is not None:
            line = {"input": source.path, "frame": frame, "time_s": time_s, "width": width, "height": height,
                    "detections": records}
            file_name = source.path if frame is None else f"{source.path}#frame={frame}"
            result.image_id = self.files.add(line, file_name)
        if self.keep_results:
            self.report.results.append(result)
        return records

    def run_photo(self, source: Source) -> None:
        try:
            photo = read_photo(source.path)
        except (ImageFileError, OSError) as e:
            self.report.failures.append((source.path, str(e)))
            return
        extension = ".png" if source.path.lower().endswith(".png") else ".jpg"
        output = self.names(source.path, extension) if (self.names and self.draw) else None

        def on_result(detections: PhotoDetections) -> None:
            records = self.emit(source, None, None, detections, output)
            if output is not None:
                draw_detections_on_photo(photo, records).save(output, **({"quality": 90} if extension == ".jpg"
                                                                         else {}))

        self.report.num_photos += 1
        self.batcher.add(photo, on_result)

    def run_video(self, source: Source, progress_bar) -> None:
        self.batcher.flush()  # the photos before it are written first, in order
        output = self.names(source.path, ".mp4") if (self.names and self.draw) else None
        writer, frames, count = None, video_frames(source.path), 0
        try:
            while True:
                try:
                    index, time_s, frame, fps = next(frames)
                except StopIteration:
                    break
                except video_errors() as e:
                    why = str(e) or type(e).__name__
                    self.report.failures.append((source.path, why if count == 0 else
                                                 f"stopped at frame {count}: {why} (the frames before it were run)"))
                    break
                if output is not None and writer is None:
                    writer = VideoWriter(output, fps)
                self.batcher.add(frame, self._frame_callback(source, index, time_s, frame, writer, output))
                count += 1
                progress_bar.set_postfix(frames=count, refresh=False)
            self.batcher.flush()
        finally:
            if writer is not None:
                writer.close()
        self.report.num_frames += count

    def _frame_callback(self, source, index, time_s, frame, writer, output):
        def on_result(detections: PhotoDetections) -> None:
            records = self.emit(source, index, time_s, detections, output)
            if writer is not None:
                writer.write(np.asarray(draw_detections_on_photo(frame, records)))
        return on_result


def _class_ids(class_names: Sequence[str], classes: Optional[Sequence[str]]) -> Optional[set]:
    if classes is None:
        return None
    unknown = [c for c in classes if c not in class_names]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; the checkpoint's classes are {', '.join(class_names)}")
    return {class_names.index(c) for c in classes}


def predict(detector: Union[str, os.PathLike, LoadedDetector], inputs: Union[str, Sequence[str]],
            out_dir: Optional[str] = None, *, score_thresh: float = SCORE_THRESH_VIS, nms_thresh: float = NMS_THRESH,
            classes: Optional[Sequence[str]] = None, tta: Optional[Dict] = None, device="cpu", batch_size: int = 1,
            max_size: Optional[int] = None, draw: bool = True, progress: bool = True,
            keep_results: bool = True) -> PredictReport:
    """Run a trained detector on photos and videos (what ``python -m eecs598.predict`` does).

    Args:
        detector: a ``train_fcos.py`` checkpoint path (rebuilt with ``load_detector``) or a
            :class:`~eecs598.tools.detector.LoadedDetector` (model, class names, training image size).
        inputs: image files, folders (their images and videos), glob patterns, video files (PyAV needed).
        out_dir: where the drawn pictures, videos and detection files go (created); None: write nothing.
        score_thresh, nms_thresh: the detector's thresholds (defaults: the notebook's drawing threshold 0.4,
            NMS 0.5).
        classes: keep only detections of these class names (None: all).
        tta: test-time augmentation (``eecs598.recipes.TTA_CHOICES``' values), or None.
        device: where the model runs. batch_size: photos per forward pass (only photos of one input size
            share a batch). max_size: cap on a photo's resized longer side (default: ``prepare_image``'s).
        draw: write the drawn pictures and videos (with ``out_dir``). progress: a progress bar over inputs.
        keep_results: keep every :class:`PhotoResult` in the report (turn off for long videos).

    Returns:
        a :class:`PredictReport`; its ``failures`` list the inputs that could not be read, with reasons.
    """
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    start = time.time()
    loaded = detector if isinstance(detector, LoadedDetector) else load_detector(os.fspath(detector), device)
    loaded.model.to(device).eval()
    keep_ids = _class_ids(loaded.class_names, classes)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    max_size = round(loaded.image_size * 1333 / 800) if max_size is None else max_size  # prepare_image's default
    batcher = _Batcher(loaded, batch_size, max_size, score_thresh=score_thresh, nms_thresh=nms_thresh, tta=tta,
                       device=device)
    run = _Run(loaded, out_dir, keep_ids, draw, keep_results, batcher)
    sources, run.report.failures = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else
                                                 [os.fspath(i) for i in inputs])
    run.report.num_inputs = len(sources) + len(run.report.failures)
    try:
        bar = tqdm(sources, disable=not progress, desc="predict", unit="input", dynamic_ncols=True)
        for source in bar:
            if source.kind == "video":
                run.run_video(source, bar)
            else:
                run.run_photo(source)
        batcher.flush()
    finally:
        if run.files is not None:
            run.files.close()
            run.report.files = dict(run.files.paths)
    run.report.seconds = time.time() - start
    return run.report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a train_fcos.py checkpoint on your own images, folders, glob patterns and videos: draws "
                    "the boxes and writes detections.jsonl and COCO results into --out.",
        epilog="Example:\n  python -m eecs598.predict --checkpoint runs/shapes-demo/checkpoint.pt photos/ "
               "'more/*.jpg' clip.mp4 --out preds\nExit status: 0 all inputs read, 1 some skipped (listed), "
               "2 usage error. Details: docs/predict.md")
    add = parser.add_argument
    add("--checkpoint", required=True, help="a train_fcos.py checkpoint (RUN_DIR/checkpoint.pt)")
    add("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns (quote them) or videos "
        f"({VIDEO_HINT})")
    add("--out", required=True, metavar="DIR", help="output folder (created)")
    add("--score-thresh", type=float, default=SCORE_THRESH_VIS, help=f"default: {SCORE_THRESH_VIS}")
    add("--nms-thresh", type=float, default=NMS_THRESH, help=f"class-specific NMS IoU (default: {NMS_THRESH})")
    add("--classes", default=None, metavar="A,B", help="keep only these classes (comma-separated names)")
    add("--tta", choices=list(TTA_CHOICES), default="none", help="test-time augmentation (default: none)")
    add("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add("--batch-size", type=int, default=1, help="photos per forward pass; only photos of one input size are "
        "batched together (default: 1)")
    add("--max-size", type=int, default=None, help="cap on the resized longer side (default: image_size * 1333 / 800)")
    add("--threads", type=int, default=None, help="CPU threads (default: one per free core)")
    add("--no-draw", action="store_true", help="write only the detection files, no pictures or videos")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad options in the flags' words (exit status 2) before the model is loaded."""
    import torch

    for flag, value in (("--score-thresh", args.score_thresh), ("--nms-thresh", args.nms_thresh)):
        if not 0.0 <= value <= 1.0:
            parser.error(f"{flag} must be in [0, 1], got {value}")
    for flag, value in (("--batch-size", args.batch_size), ("--max-size", args.max_size), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")


def _report(report: PredictReport, out_dir: str) -> None:
    done = report.num_photos + report.num_frames
    rate = f", {done / report.seconds:.1f} pictures/s" if report.seconds > 0 and done else ""
    print(f"Ran on {report.num_photos} photos and {report.num_frames} video frames in {report.seconds:.1f}s{rate}. "
          f"Outputs in {out_dir}/: detections.jsonl, coco_results.json, coco_images.json and the drawn pictures.")
    if report.failures:
        print(f"{len(report.failures)} input(s) could not be read and were skipped:", file=sys.stderr)
        for path, reason in report.failures:
            print(f"  {path}: {reason}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status (0 all read, 1 some inputs skipped, 2 usage error)."""
    import torch

    from ..train.checkpoint import CheckpointError
    from ..train.runtime import choose_cpu_threads

    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or (choose_cpu_threads() if args.device == "cpu" else threads))
    try:
        loaded = load_detector(args.checkpoint, args.device)
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        _class_ids(loaded.class_names, classes)
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError) as e:  # RuntimeError: weights != settings
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    try:
        report = predict(loaded, args.inputs, args.out, score_thresh=args.score_thresh, nms_thresh=args.nms_thresh,
                         classes=classes, tta=TTA_CHOICES[args.tta], device=args.device, batch_size=args.batch_size,
                         max_size=args.max_size, draw=not args.no_draw, progress=not args.no_progress,
                         keep_results=False)
    except KeyboardInterrupt:
        print("predict: interrupted; the files in --out hold the pictures finished so far.", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)
    _report(report, args.out)
    return 0 if report.ok else 1
