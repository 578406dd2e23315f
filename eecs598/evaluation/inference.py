"""Running a trained detector over a dataset: draw its predictions, or export Cartucho/mAP files.

``inference_with_detector`` is the course's function; it is :func:`~eecs598.evaluation.evaluator.inference_on_dataset`
with one of the consumers below.
"""
import tempfile
import time
from typing import Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import Subset

from .. import utils
from ..data.transforms import unnormalize
from .cartucho import CartuchoWriter
from .evaluator import DatasetEvaluator, ImageResult, check_idx_to_class, image_id_of, inference_on_dataset
from .mean_ap import MapResult, evaluate_map

__all__ = ["inference_with_detector", "CartuchoExporter", "DetectionDrawer", "MapEvaluator", "difficult_gt_of"]


class CartuchoExporter(DatasetEvaluator):
    """Writes the Cartucho/mAP input files of every image, all or nothing (:class:`CartuchoWriter`).

    ``evaluate()`` swaps the new ``ground-truth`` / ``detection-results`` folders in for the old ones;
    ``abort()`` leaves the previous results untouched. ``difficult_gt(image_path) -> (D, 5)`` rows, when
    given (a dataset's ``difficult_gt``, see ``eecs598.data.formats``), adds each image's difficult objects
    to its ground-truth file with the ``difficult`` flag.
    """

    def __init__(self, output_dir: str, idx_to_class: Dict[int, str], announce_failure: bool = True,
                 difficult_gt: Optional[Callable[[str], torch.Tensor]] = None):
        self.output_dir, self.idx_to_class, self.announce_failure = output_dir, idx_to_class, announce_failure
        self.difficult_gt = difficult_gt
        self.writer: Optional[CartuchoWriter] = None

    def reset(self) -> None:
        self.writer = CartuchoWriter(self.output_dir, self.idx_to_class)

    def process(self, result: ImageResult) -> None:
        difficult = None if self.difficult_gt is None else self.difficult_gt(result.image_path)
        self.writer.add(image_id_of(result.image_path), result.image_path, result.gt, result.predictions, difficult)

    def evaluate(self) -> str:
        self.writer.commit()
        return self.output_dir

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            if self.announce_failure:
                print(f"inference_with_detector failed; the previous results in {self.output_dir} were left "
                      f"untouched.")


class DetectionDrawer(DatasetEvaluator):
    """Shows every image with its GT (red) and predictions (green), as the course's notebook does."""

    def __init__(self, idx_to_class: Dict[int, str]):
        self.idx_to_class = idx_to_class

    def process(self, result: ImageResult) -> None:
        utils.detection_visualizer(unnormalize(result.image), self.idx_to_class, result.gt, result.predictions)


class MapEvaluator(DatasetEvaluator):
    """Cartucho mAP of the images seen, through files in a private temporary folder (removed afterwards).

    ``evaluate()`` returns the :class:`~eecs598.evaluation.mean_ap.MapResult`. Used by periodic
    evaluation during training: each process has its own folder, so nothing is shared between ranks.
    """

    def __init__(self, idx_to_class: Dict[int, str], difficult_gt: Optional[Callable[[str], torch.Tensor]] = None):
        self.idx_to_class, self.difficult_gt = idx_to_class, difficult_gt
        self.folder: Optional[tempfile.TemporaryDirectory] = None
        self.exporter: Optional[CartuchoExporter] = None

    def reset(self) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="fcos-map-")
        self.exporter = CartuchoExporter(self.folder.name, self.idx_to_class, announce_failure=False,
                                         difficult_gt=self.difficult_gt)
        self.exporter.reset()

    def process(self, result: ImageResult) -> None:
        self.exporter.process(result)

    def evaluate(self) -> MapResult:
        try:
            return evaluate_map(self.exporter.evaluate(), output_dir=None, plot=False, quiet=True)
        finally:
            self.folder.cleanup()

    def abort(self) -> None:
        if self.folder is not None:
            self.exporter.abort()
            self.folder.cleanup()


def difficult_gt_of(loader) -> Optional[Callable[[str], torch.Tensor]]:
    """The ``difficult_gt`` method of the dataset behind ``loader`` (through ``Subset``s), or None: the datasets
    of ``eecs598.data.formats`` keep VOC's difficult objects and COCO's crowd regions apart from the GT rows;
    the course's datasets have none, so their files stay exactly as before."""
    dataset = getattr(loader, "dataset", loader)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "difficult_gt", None)


def _check_arguments(detector, test_loader, idx_to_class, score_thresh, nms_thresh) -> None:
    for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0):
            raise ValueError(f"inference_with_detector: {name} must be in [0, 1], got {value!r}")
    if getattr(test_loader, "batch_size", 1) != 1:
        raise ValueError(f"inference_with_detector: test_loader must have batch_size=1, got "
                         f"{test_loader.batch_size}")
    if hasattr(test_loader, "__len__") and len(test_loader) == 0:
        raise ValueError("inference_with_detector: test_loader is empty (0 images): there is nothing to run on")
    check_idx_to_class(idx_to_class, getattr(detector, "num_classes", None), "inference_with_detector")


def inference_with_detector(
    detector: nn.Module,
    test_loader,
    idx_to_class: Dict[int, str],
    score_thresh: float,
    nms_thresh: float,
    output_dir: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    *,
    progress: bool = True,
    tta: Optional[Dict] = None,
) -> None:
    """Run a detector on every image of ``test_loader`` and draw or export its predictions.

    With ``output_dir=None`` each image is drawn with ``eecs598.utils.detection_visualizer`` (GT red,
    predictions green). Otherwise Cartucho/mAP input files are written, one pair per image, **including
    images without predictions** (an empty detection file, so their missed objects count):
    ``output_dir/ground-truth/<id>.txt`` and ``output_dir/detection-results/<id>.txt``, where ``<id>`` is
    the image file name without extension (see :class:`eecs598.evaluation.cartucho.CartuchoWriter`). The set
    is written all or nothing: the previous results are replaced only once every image succeeded, and stay
    untouched after a failure. Coordinates are pixels of the network input (the ``S x S`` crop). A dataset
    with a ``difficult_gt`` method (``eecs598.data.formats``) also gets its difficult objects written, flagged
    ``difficult`` (:func:`difficult_gt_of`).

    Args:
        detector: in eval mode ``detector(image (1,3,H,W), test_score_thresh=..., test_nms_thresh=...)`` returns
            ``(boxes (N,4) XYXY, classes (N,) long, scores (N,))``.
        test_loader: batch size 1, yielding ``(image_paths, images, gt_boxes (1,M,5))``.
        idx_to_class: class id -> name (names must not contain whitespace).
        score_thresh: score threshold in [0, 1].
        nms_thresh: NMS IoU threshold in [0, 1].
        output_dir: None to draw, else the mAP input directory (e.g. ``"mAP/input"``).
        dtype, device: the detector and images are moved to these.
        progress: show a tqdm progress bar.
        tta: test-time augmentation, e.g. ``{"flip": True, "scales": (1.0, 1.25)}``: candidates of the image,
            its mirror and rescaled copies are merged before one class-specific NMS
            (``eecs598.models.tta.detect_with_tta``). None: plain inference (the course's).
    """
    _check_arguments(detector, test_loader, idx_to_class, score_thresh, nms_thresh)
    consumer = DetectionDrawer(idx_to_class) if output_dir is None else \
        CartuchoExporter(output_dir, idx_to_class, difficult_gt=difficult_gt_of(test_loader))
    start = time.time()
    inference_on_dataset(detector, test_loader, [consumer], score_thresh, nms_thresh, dtype=dtype, device=device,
                         tta=tta, progress=progress, caller="inference_with_detector")
    print(f"Total inference time: {time.time() - start:.1f}s")
