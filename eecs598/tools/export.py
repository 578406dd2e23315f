"""``python -m eecs598.export``: a trained FCOS as one ONNX graph, images in -> detections out, and its check.

The graph is the whole eval path of ``FCOS.inference``: backbone + FPN + head, then (inside the graph) the
scores ``sqrt(sigmoid(class) * sigmoid(centerness))``, the best class per location, the strict score
threshold, the box decoding (deltas clamped at 0, times the level's stride, around the location, clipped to
the input) and class-specific NMS (ONNX's standard ``NonMaxSuppression``, one call for the whole batch,
IoU strictly above the threshold suppresses). Nothing custom: any ONNX runtime runs it.

Graph (opset 17 by default):

- inputs: ``images`` float32 ``(B, 3, H, W)``, RGB, NCHW, pixel values in ``[0, 1]`` normalised with the
  ImageNet mean/std, ``H`` and ``W`` multiples of 32 (``eecs598.data.transforms.prepare_image`` makes one
  from a photo: shorter side resized to the training ``image_size``, padded right/bottom with 0, i.e. the
  mean colour); ``score_thresh`` and ``nms_thresh``: float32 scalars, so one file serves every threshold.
- outputs, one row per detection, sorted by image then by decreasing score: ``boxes`` float32 ``(K, 4)``
  XYXY in input pixels; ``scores`` float32 ``(K,)``; ``classes`` int64 ``(K,)``; ``batch_index`` int64
  ``(K,)`` (the image of each row; ONNX's NMS returns ``[batch, class, box]`` triplets).
- metadata (``metadata_props``): class names, mean/std, input range and layout, the resize rule, the default
  thresholds and the model's settings, so that a user of the file needs nothing else.

Thresholds are graph inputs rather than constants: the demo page runs once at a low threshold, and a user can
pick theirs. The graph compares in float32 (as PyTorch does for ``scores > 0.3``); the course's NMS compares
the IoU with the threshold in double precision, so :class:`OnnxDetector` feeds the largest float32 not above
it (:func:`nms_threshold_as_float32`), which gives the same decisions.

The check (``--verify``, :func:`verify_export`): onnxruntime against the PyTorch model through
``eecs598.tools.detect.detect_photos`` (the core of ``python -m eecs598.predict``) on the same photos and
thresholds: the same number of detections per image, every detection matched to one of the same class with
its box within 1e-3 px and its score within 1e-4.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: it turns the NMS into the
standard operator through :class:`_ClassNMS`'s ``symbolic``. PyTorch calls it "legacy"; if a future release
drops it, :func:`export_onnx` says so.
"""
import argparse
import copy
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..data.images import load_rgb_image
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, boxes_to_original, prepare_image
from .detect import PhotoDetections, detect_photos
from .detector import MODEL_OPTION_KEYS, LoadedDetector, load_detector

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "ExportGraph", "export_onnx", "export_checkpoint", "OnnxDetector",
           "nms_threshold_as_float32", "photo_batch", "match_detections", "VerifyReport", "verify_export",
           "sample_photos", "main"]

INPUT_NAMES = ("images", "score_thresh", "nms_thresh")
OUTPUT_NAMES = ("boxes", "scores", "classes", "batch_index")
DEFAULT_OPSET = 17
SIZE_DIVISOR = 32
DEFAULT_SCORE_THRESH, DEFAULT_NMS_THRESH = 0.3, 0.5  # FCOS.inference's defaults
VERIFY_BOX_TOL, VERIFY_SCORE_TOL = 1e-3, 1e-4
_NOT_A_CANDIDATE = -1.0  # score of (location, class) pairs that must not enter NMS
_EXTRA_HINT = "install the optional extra: pip install -e '.[export]' (onnx and onnxruntime)"
_DEFAULT_VOC_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "shared", "data", "voc07-sample")


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(f"{module} is needed for the ONNX export and its check: {_EXTRA_HINT}") from error


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------


class _ClassNMS(torch.autograd.Function):
    """Class-specific NMS over a batch, as ONNX's ``NonMaxSuppression`` computes it.

    ``forward(boxes (B, N, 4), scores (B, C, N), iou_threshold ())`` -> ``(K, 3)`` int64 rows
    ``[batch, class, box]`` of the kept boxes. A (location, class) pair enters NMS when its score is above
    ``_NOT_A_CANDIDATE`` (the graph puts every other pair at it). Eager mode (only used while tracing the
    export) runs ``torchvision.ops.batched_nms``; the export emits the standard operator.
    """

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold):  # noqa: D102 (documented above)
        from torchvision.ops import batched_nms

        rows = [torch.zeros(0, 3, dtype=torch.long)]
        for b in range(scores.shape[0]):
            candidates = (scores[b] > _NOT_A_CANDIDATE / 2).nonzero()  # [M, 2] (class, box)
            classes, index = candidates[:, 0], candidates[:, 1]
            keep = batched_nms(boxes[b, index], scores[b, classes, index], classes, float(iou_threshold))
            rows.append(torch.stack([torch.full_like(index[keep], b), classes[keep], index[keep]], dim=1))
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold):  # noqa: D102
        # Keep every box (max_output_boxes_per_class = N, from the shape); candidates are marked by score.
        num_boxes = g.op("Slice", g.op("Shape", boxes), g.op("Constant", value_t=torch.tensor([1])),
                         g.op("Constant", value_t=torch.tensor([2])))
        iou = g.op("Reshape", iou_threshold, g.op("Constant", value_t=torch.tensor([1])))
        # Candidates have scores > score_thresh >= 0, the others _NOT_A_CANDIDATE: any cut in between
        # separates them, whether the runtime's own score test is > or >=.
        floor = g.op("Constant", value_t=torch.tensor([_NOT_A_CANDIDATE / 2], dtype=torch.float32))
        # center_point_box=0: corners (ONNX names them [y1, x1, y2, x2]; the IoU is the same for XYXY).
        return g.op("NonMaxSuppression", boxes, scores, num_boxes, iou, floor, center_point_box_i=0)


def _locations(feature: torch.Tensor, stride: int) -> torch.Tensor:
    """``(H * W, 2)`` centres ``stride * (index + 0.5)`` of a ``(B, C, H, W)`` map, x-major (row
    ``x * H + y``), as ``common.get_fpn_location_coords``, but from the traced shape so that the graph
    keeps a dynamic image size (that function takes the sizes as Python ints, which a trace freezes)."""
    xs = (torch.arange(feature.shape[-1], dtype=feature.dtype) + 0.5) * stride
    ys = (torch.arange(feature.shape[-2], dtype=feature.dtype) + 0.5) * stride
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


class ExportGraph(nn.Module):
    """``FCOS.inference`` for a batch as one traceable module, reusing the model's backbone and head.

    ``forward(images (B, 3, H, W), score_thresh (), nms_thresh ())`` -> ``(boxes (K, 4), scores (K,),
    classes (K,) int64, batch_index (K,) int64)``, rows by image then decreasing score, boxes in input
    pixels. Per image, the rows are the detections ``FCOS.eval()(images[b:b+1])`` returns (same rules, see
    the module docstring), computed for all FPN levels at once.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.pred_net = model.backbone, model.pred_net
        self.num_classes = model.num_classes

    def _head(self, images: torch.Tensor):
        """Scores, best classes, decoded and clipped boxes of every location: ``(B, N)``, ``(B, N)``, ``(B, N, 4)``."""
        features = self.backbone(images)
        class_logits, box_deltas, centerness_logits = self.pred_net(features)
        strides = self.backbone.fpn_strides
        locations = [_locations(features[name], strides[name]) for name in features]
        location_strides = torch.cat([torch.full_like(loc[:, :1], strides[name])
                                      for name, loc in zip(features, locations)])  # [N, 1]
        locations = torch.cat(locations)  # [N, 2]
        probs = torch.cat(list(class_logits.values()), dim=1).sigmoid()  # [B, N, C]
        ctr = torch.cat(list(centerness_logits.values()), dim=1).sigmoid()  # [B, N, 1]
        scores, classes = torch.sqrt(probs * ctr).max(dim=2)
        distances = torch.cat(list(box_deltas.values()), dim=1).clamp(min=0) * location_strides  # [B, N, 4]
        xy = locations.repeat(1, 2)  # [N, 4] (xc, yc, xc, yc)
        boxes = torch.cat([xy[:, :2] - distances[..., :2], xy[:, 2:] + distances[..., 2:]], dim=-1)
        # Clip to the input; the limits come from the traced shape (a Python int would be frozen).
        zero = torch.zeros((), dtype=boxes.dtype)
        limits = torch.stack([torch.full((), images.shape[-1], dtype=boxes.dtype),
                              torch.full((), images.shape[-2], dtype=boxes.dtype)]).repeat(2)  # [W, H, W, H]
        boxes = torch.min(torch.max(boxes, zero), limits)
        return scores, classes, boxes

    def forward(self, images: torch.Tensor, score_thresh: torch.Tensor, nms_thresh: torch.Tensor):
        scores, classes, boxes = self._head(images)
        # NMS per (image, class): only a location's best class, and only above the threshold, is a candidate.
        candidate = (classes[..., None] == torch.arange(self.num_classes)) & (scores > score_thresh)[..., None]
        class_scores = torch.where(candidate, scores[..., None], torch.full_like(candidate, _NOT_A_CANDIDATE,
                                                                                 dtype=scores.dtype))
        kept = _ClassNMS.apply(boxes, class_scores.transpose(1, 2).contiguous(), nms_thresh)  # [K, 3]
        batch_index, kept_classes = kept[:, 0], kept[:, 1]
        flat = batch_index * boxes.shape[1] + kept[:, 2]
        kept_boxes = boxes.reshape(-1, 4).index_select(0, flat)
        kept_scores = scores.reshape(-1).index_select(0, flat)
        # By image, then by decreasing score: one sort of a float64 key (exact for any score in [0, 1]).
        order = torch.sort(batch_index.double() * 4.0 - kept_scores.double()).indices
        return kept_boxes[order], kept_scores[order], kept_classes[order], batch_index[order]


def _metadata(class_names: Sequence[str], image_size: int, max_size: int, settings: Dict) -> Dict[str, str]:
    """The model's ``metadata_props``: everything a user of the file needs to feed it and read its output."""
    return {
        "format": "eecs598.fcos/onnx-1",
        "class_names": json.dumps(list(class_names)),
        "input": "images: float32 (B, 3, H, W), RGB, NCHW; pixel values scaled to [0, 1], then (x - mean) / std "
                 "per channel; H and W multiples of 32, padding right/bottom with 0 (the mean colour)",
        "input_range": "[0, 1] before normalisation",
        "layout": "NCHW, RGB",
        "mean": json.dumps(list(IMAGENET_MEAN)), "std": json.dumps(list(IMAGENET_STD)),
        "resize": "bilinear (antialiased), shorter side to image_size, longer side at most max_size",
        "image_size": str(image_size), "max_size": str(max_size), "size_divisor": str(SIZE_DIVISOR),
        "outputs": "boxes float32 (K, 4) XYXY in input pixels (divide by the resize factor for the photo's), "
                   "scores float32 (K,), classes int64 (K,), batch_index int64 (K,); rows by image then score",
        "thresholds": "score_thresh: keep scores strictly above it; nms_thresh: class-specific NMS, IoU strictly "
                      "above it suppresses (both float32 scalar inputs)",
        "default_score_thresh": str(DEFAULT_SCORE_THRESH), "default_nms_thresh": str(DEFAULT_NMS_THRESH),
        "model_settings": json.dumps(settings, sort_keys=True),
    }


def _sample_input(image_size: int) -> torch.Tensor:
    """A (2, 3, H, W) input with H != W (multiples of 32): no size of the trace may look special."""
    side = max(SIZE_DIVISOR, -(-image_size // SIZE_DIVISOR) * SIZE_DIVISOR)
    return torch.randn(2, 3, side, side + SIZE_DIVISOR, generator=torch.Generator().manual_seed(0))


def export_onnx(model: nn.Module, path: str, class_names: Sequence[str], image_size: int, *,
                max_size: Optional[int] = None, opset: int = DEFAULT_OPSET,
                settings: Optional[Dict] = None) -> Dict[str, str]:
    """Write ``model`` (an eval-mode ``FCOS``, float32, CPU) as an ONNX file at ``path``.

    Args:
        model: the detector; its backbone and head are traced, the post-processing is :class:`ExportGraph`'s.
        path: the ``.onnx`` file to write (weights inside the file).
        class_names: class id -> name, stored in the metadata.
        image_size, max_size: the resize rule of ``prepare_image`` (stored; ``max_size`` default as there).
        opset: ONNX opset (>= 11 for ``NonMaxSuppression`` with these inputs; 17 by default).
        settings: the model's options, stored as JSON in the metadata.

    Returns:
        The metadata written into the file.
    """
    onnx = _require("onnx")
    if len(class_names) != model.num_classes:
        raise ValueError(f"export_onnx: {len(class_names)} class names for a model of {model.num_classes} classes")
    max_size = round(image_size * 1333 / 800) if max_size is None else int(max_size)
    graph = ExportGraph(copy.deepcopy(model).float().cpu().eval()).eval()  # the caller's model stays as it is
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    sample = (_sample_input(image_size), torch.tensor(0.05), torch.tensor(0.5))
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes (legacy exporter, Python values inside _ClassNMS.forward) are expected here.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, sample, path, dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, do_constant_folding=True)
        except TypeError as error:  # a torch without the TorchScript exporter's keywords
            raise RuntimeError(f"torch {torch.__version__} lacks the TorchScript-based ONNX exporter this export "
                               f"uses (torch.onnx.export(..., dynamo=False)): {error}") from error
    metadata = _metadata(class_names, image_size, max_size, settings or {})
    proto = onnx.load(path)
    proto.doc_string = "FCOS (eecs598): images -> boxes, scores, classes, batch_index; see metadata_props"
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return metadata


def export_checkpoint(checkpoint_path: str, out_path: str, opset: int = DEFAULT_OPSET) -> LoadedDetector:
    """Export the model of a ``train_fcos.py`` checkpoint (rebuilt from its saved settings); returns it."""
    loaded = load_detector(checkpoint_path)
    settings = {k: loaded.run_config[k] for k in ("fpn_channels", "stem_channels", "image_size", *MODEL_OPTION_KEYS)
                if k in loaded.run_config}
    settings.pop("backbone_weights", None)
    export_onnx(loaded.model, out_path, loaded.class_names, loaded.image_size, opset=opset, settings=settings)
    return loaded


# ---------------------------------------------------------------------------------------------
# Running the file
# ---------------------------------------------------------------------------------------------


def nms_threshold_as_float32(threshold: float) -> np.float32:
    """The largest float32 not above ``threshold``: with it, the graph's float32 test ``iou > t`` decides as
    the course's NMS does in double precision (``common._float_threshold``); 0.5 stays 0.5."""
    value = np.float32(threshold)
    if float(value) > threshold:
        value = np.nextafter(value, np.float32(-np.inf))
    return np.float32(value)


def photo_batch(photos: Sequence, image_size: int, max_size: Optional[int] = None):
    """Photos as one padded network batch, exactly as ``detect_photos`` builds it.

    Returns:
        ``(batch (B, 3, H, W) float32, [(scale, (width, height)), ...])``.
    """
    prepared = [prepare_image(photo, image_size, max_size) for photo in photos]
    height = max(tensor.shape[1] for tensor, _, _ in prepared)
    width = max(tensor.shape[2] for tensor, _, _ in prepared)
    batch = torch.zeros(len(prepared), 3, height, width)
    for i, (tensor, _, _) in enumerate(prepared):
        batch[i, :, :tensor.shape[1], :tensor.shape[2]] = tensor
    return batch, [(scale, size) for _, scale, size in prepared]


class OnnxDetector:
    """An exported detector run with onnxruntime on the CPU, with the interface of ``detect_photos``.

    Attributes:
        class_names, image_size, max_size, metadata: read from the file's metadata.
    """

    def __init__(self, path: str, threads: Optional[int] = None):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "class_names" not in self.metadata:
            raise ValueError(f"{path} has no class_names in its metadata: it was not written by eecs598.export")
        self.class_names = json.loads(self.metadata["class_names"])
        self.image_size, self.max_size = int(self.metadata["image_size"]), int(self.metadata["max_size"])

    def run(self, images: np.ndarray, score_thresh: float, nms_thresh: float) -> List[np.ndarray]:
        """The graph's four outputs for a ``(B, 3, H, W)`` float32 input."""
        for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"OnnxDetector: {name} must be in [0, 1], got {value}")
        feeds = {"images": np.ascontiguousarray(images, dtype=np.float32),
                 "score_thresh": np.array(score_thresh, dtype=np.float32),
                 "nms_thresh": np.array(nms_threshold_as_float32(float(nms_thresh)), dtype=np.float32)}
        return self.session.run(list(OUTPUT_NAMES), feeds)

    def detect(self, photos: Sequence, score_thresh: float = DEFAULT_SCORE_THRESH,
               nms_thresh: float = DEFAULT_NMS_THRESH) -> List[PhotoDetections]:
        """Detections of whole photos in their own pixels, as ``detect_photos`` returns them."""
        batch, geometry = photo_batch(photos, self.image_size, self.max_size)
        boxes, scores, classes, batch_index = self.run(batch.numpy(), score_thresh, nms_thresh)
        results = []
        for i, (scale, size) in enumerate(geometry):
            rows = batch_index == i
            results.append(PhotoDetections(boxes_to_original(torch.from_numpy(boxes[rows]), scale, size),
                                           torch.from_numpy(classes[rows]).long(), torch.from_numpy(scores[rows]),
                                           size))
        return results


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def match_detections(reference: PhotoDetections, other: PhotoDetections, box_tol: float = VERIFY_BOX_TOL,
                     score_tol: float = VERIFY_SCORE_TOL) -> Tuple[Optional[str], float, float]:
    """Pair every detection of ``reference`` with one of ``other`` (same class, box within ``box_tol`` px in
    every coordinate, score within ``score_tol``), greedily by decreasing reference score.

    Returns:
        ``(problem or None, largest box difference, largest score difference)`` over the matched pairs.
    """
    if len(reference.scores) != len(other.scores):
        return f"{len(reference.scores)} detections in PyTorch, {len(other.scores)} in onnxruntime", 0.0, 0.0
    free = torch.ones(len(other.scores), dtype=torch.bool)
    worst_box = worst_score = 0.0
    for i in torch.argsort(reference.scores, descending=True).tolist():
        box_diff = (other.boxes - reference.boxes[i]).abs().amax(dim=1)
        score_diff = (other.scores - reference.scores[i]).abs()
        fits = free & (other.classes == reference.classes[i]) & (box_diff <= box_tol) & (score_diff <= score_tol)
        if not fits.any():
            return (f"no match for detection {reference.boxes[i].tolist()} class {int(reference.classes[i])} "
                    f"score {float(reference.scores[i]):.6f}"), worst_box, worst_score
        j = int(torch.where(fits, box_diff, torch.full_like(box_diff, float("inf"))).argmin())
        free[j] = False
        worst_box, worst_score = max(worst_box, float(box_diff[j])), max(worst_score, float(score_diff[j]))
    return None, worst_box, worst_score


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_export`.

    Attributes:
        images: photos checked (each also with ``score_thresh = 1``, where no detection can exist).
        detections: detections compared (PyTorch's count, summed over photos, at the given threshold).
        empty_images: photos with no detection at the given threshold.
        max_box_diff, max_score_diff: the largest differences over matched pairs (px, score).
        failures: ``"photo: problem"`` lines; empty when the export is right.
    """

    images: int = 0
    detections: int = 0
    empty_images: int = 0
    max_box_diff: float = 0.0
    max_score_diff: float = 0.0
    failures: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        verdict = "OK" if self.ok else (
            f"FAILED ({len(self.failures)} problems; where two overlapping boxes of a class have scores closer than "
            f"the runtimes' rounding, ~1e-6, NMS may keep either: see docs/deploy.md)")
        return (f"verify: {verdict}: {self.images} photos, {self.detections} detections "
                f"({self.empty_images} photos without any, and all {self.images} again at score_thresh=1), "
                f"largest differences {self.max_box_diff:.2e} px, score {self.max_score_diff:.2e} "
                f"(limits {VERIFY_BOX_TOL:g} px, {VERIFY_SCORE_TOL:g})")


def verify_export(onnx_path: str, loaded: LoadedDetector, photos: Sequence[Tuple[str, object]],
                  score_thresh: float = 0.05, nms_thresh: float = DEFAULT_NMS_THRESH, batch_size: int = 4,
                  threads: Optional[int] = None) -> VerifyReport:
    """Compare onnxruntime on the exported file with the PyTorch model (``detect_photos``) on photos.

    The photos go in batches of ``batch_size`` (so dynamic batch and image sizes are exercised), each batch
    through both, at ``score_thresh`` and again at ``score_thresh = 1`` (no detection possible).

    Args:
        onnx_path: the exported file. loaded: the PyTorch detector it came from.
        photos: ``(name, PIL image)`` pairs.
    """
    runner = OnnxDetector(onnx_path, threads=threads)
    report = VerifyReport(images=len(photos))
    for start in range(0, len(photos), batch_size):
        names, images = zip(*photos[start:start + batch_size])
        for thresh in (score_thresh, 1.0):
            expected = detect_photos(loaded.model, images, loaded.image_size, thresh, nms_thresh,
                                     max_size=runner.max_size)
            got = runner.detect(images, thresh, nms_thresh)
            for name, ref, out in zip(names, expected, got):
                problem, box_diff, score_diff = match_detections(ref, out)
                if thresh == score_thresh:
                    report.detections += len(ref.scores)
                    report.empty_images += len(ref.scores) == 0
                report.max_box_diff = max(report.max_box_diff, box_diff)
                report.max_score_diff = max(report.max_score_diff, score_diff)
                if problem is not None:
                    report.failures.append(f"{name} (score_thresh {thresh}): {problem}")
    return report


def sample_photos(directory: str, limit: Optional[int] = None) -> List[Tuple[str, object]]:
    """``(name, image)`` for the JPEG/PNG files of ``directory`` (or of its ``VOCdevkit/VOC2007/JPEGImages``),
    sorted by name (at most ``limit``).

    (No flat synthetic images: on one, a random or half-trained model gives rows of locations with equal
    scores, where NMS's choice among ties is arbitrary and two correct runtimes may keep different boxes.
    Empty outputs are checked by the second pass of :func:`verify_export` instead.)"""
    voc = os.path.join(directory, "VOCdevkit", "VOC2007", "JPEGImages")
    folder = voc if os.path.isdir(voc) else directory
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))[:limit]
    if not names:
        raise FileNotFoundError(f"no .jpg/.png photos in {folder}")
    return [(name, load_rgb_image(os.path.join(folder, name))) for name in names]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.export",
        description="Export a trained FCOS (train_fcos.py checkpoint) to ONNX: images in, boxes/scores/classes "
                    "out, decoding and class-specific NMS inside the graph; optionally check it against PyTorch "
                    "with onnxruntime.")
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/checkpoint.pt written by train_fcos.py")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--verify", action="store_true",
                        help="compare onnxruntime with the PyTorch model on photos (exit status 1 on a mismatch)")
    parser.add_argument("--verify-images", default=_DEFAULT_VOC_SAMPLE, metavar="DIR",
                        help="photos for --verify (default: the VOC sample, ../shared/data/voc07-sample)")
    parser.add_argument("--score-thresh", type=float, default=0.05,
                        help="score threshold of the check (default 0.05: many detections to compare)")
    parser.add_argument("--nms-thresh", type=float, default=DEFAULT_NMS_THRESH, help="NMS IoU threshold (0.5)")
    parser.add_argument("--batch-size", type=int, default=4, help="photos per batch in the check (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of torch and onnxruntime")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        print(f"error: --out {args.out}: the folder {out_dir} does not exist", file=sys.stderr)
        return 2
    try:
        # Write next to the target, then rename: a failed export never leaves half a file at --out.
        with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".onnx", delete=False) as tmp:
            tmp_path = tmp.name
        try:
            loaded = export_checkpoint(args.checkpoint, tmp_path, args.opset)
            os.replace(tmp_path, args.out)
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
        print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB, {len(loaded.class_names)} classes, "
              f"image_size {loaded.image_size})")
        if not args.verify:
            return 0
        report = verify_export(args.out, loaded, sample_photos(args.verify_images), args.score_thresh,
                               args.nms_thresh, args.batch_size, args.threads)
    except (ImportError, OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in report.failures:
        print(f"  mismatch: {line}")
    print(report.summary())
    return 0 if report.ok else 1
