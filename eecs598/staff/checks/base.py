"""The checks behind ``python -m eecs598.grade`` (course staff only: never shipped to students).

Every graded function (see ``points.json``) has a list of checks. A check is a function of an
:class:`Env`, which holds the student's modules and the reference solution's; it raises
``AssertionError`` with a message a student can act on when the function is wrong. Checks marked
``published`` repeat the notebook's own checks (and the public student tests); the others are hidden:
other image and batch sizes, float64, CUDA when a GPU is present (skipped otherwise), row order on
non-square feature maps, NMS against torchvision on the notebook's 5000-box workload, a short
learning run.

Isolation: the runner (``eecs598.staff.runner``) replaces every *other* graded function, and the
functions the course gives (matching, ``class_spec_nms``), by the reference solution's inside the
student's modules before the checks run. So a check of ``FCOS.forward`` uses the reference head,
locations and deltas, and a bug loses the points of the function it is in and no others.

Expected values come from the notebook's published numbers, from formulas written out here
(locations, deltas, centerness, the FPN's top-down sum), from torchvision (NMS) or, for the two parts
of ``FCOS`` (losses, inference), from the reference solution run on the same weights and inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["Check", "Env", "CHECKS", "GIVEN_FUNCTIONS", "check"]

# Functions the course gives to students; the reference's replace the student's copies while grading.
GIVEN_FUNCTIONS = (
    ("common.py", "class_spec_nms"),
    ("one_stage_detector.py", "fcos_match_locations_to_gt"),
    ("one_stage_detector.py", "match_locations_to_gt_batched"),
)


@dataclass
class Check:
    function: str  # graded function, as in points.json
    name: str
    description: str
    run: Callable[["Env"], None]
    published: bool = False
    needs_cuda: bool = False


CHECKS: Dict[str, List[Check]] = {}


def check(function: str, published: bool = False, needs_cuda: bool = False):
    """Register the decorated ``f(env)`` as a check of ``function``; its docstring's first line is the
    description shown to students."""

    def register(run: Callable[["Env"], None]) -> Callable[["Env"], None]:
        description = (run.__doc__ or run.__name__).strip().splitlines()[0]
        CHECKS.setdefault(function, []).append(Check(function, run.__name__, description, run, published, needs_cuda))
        return run

    return register


class Env:
    """What a check sees: ``student(file)`` and ``reference(file)`` modules (``"common.py"``,
    ``"one_stage_detector.py"``), already isolated by the runner, and a cache for models."""

    def __init__(self, students: Dict[str, Optional[ModuleType]], references: Dict[str, ModuleType],
                 import_errors: Dict[str, str]):
        self._students = students
        self._references = references
        self._import_errors = import_errors
        self.cache: Dict[object, object] = {}

    def student(self, file: str) -> ModuleType:
        module = self._students.get(file)
        if module is None:
            raise AssertionError(f"{file} could not be imported: {self._import_errors.get(file, 'missing')}")
        return module

    def reference(self, file: str) -> ModuleType:
        return self._references[file]

    def student_attr(self, file: str, name: str):
        module = self.student(file)
        if not hasattr(module, name):
            raise AssertionError(f"{file} defines no {name}; keep the names of the starter code")
        return getattr(module, name)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def assert_close(actual, expected: torch.Tensor, what: str, rtol: float = 1e-5, atol: float = 1e-6,
                 check_dtype: bool = True) -> None:
    """Shape, dtype, device and values of ``actual`` against ``expected``, with a message that points at
    the first wrong element."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype}, expected {expected.dtype}")
    if actual.device != expected.device:
        raise AssertionError(f"{what}: on device {actual.device}, expected {expected.device}")
    actual_d, expected_d = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad = ~torch.isclose(actual_d, expected_d, rtol=rtol, atol=atol, equal_nan=False)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} values differ; at index {list(index)} got "
            f"{actual_d[index].item():.8g}, expected {expected_d[index].item():.8g}"
        )


def assert_same_keys(actual, expected_keys, what: str) -> None:
    if not isinstance(actual, dict):
        raise AssertionError(f"{what}: expected a dict, got {type(actual).__name__}")
    if list(actual.keys()) != list(expected_keys):
        raise AssertionError(f"{what}: keys {list(actual.keys())}, expected {list(expected_keys)} (in this order)")


def _construct(cls, *args, **kwargs):
    """``cls(*args, pretrained=False, **kwargs)``; without the ``pretrained`` switch (an older starter
    code) the plain call, which falls back to random weights offline."""
    try:
        return cls(*args, pretrained=False, **kwargs)
    except TypeError as error:
        if "pretrained" not in str(error):
            raise
        return cls(*args, **kwargs)


def cuda_device() -> torch.device:
    return torch.device("cuda")


def notebook_nms_workload(seed: int, num_boxes: int = 5000):
    """The notebook's NMS input: ``reset_seed(seed)``, integer boxes from ``(100 * rand).round()``,
    widths and heights ``+1``, ``randn`` scores."""
    torch.manual_seed(seed)
    boxes = (100.0 * torch.rand(num_boxes, 4)).round()
    boxes[:, 2] = boxes[:, 2] + boxes[:, 0] + 1.0
    boxes[:, 3] = boxes[:, 3] + boxes[:, 1] + 1.0
    scores = torch.randn(num_boxes)
    return boxes, scores


def synthetic_detection_batch(batch_size: int, height: int, width: int, num_classes: int,
                              boxes_per_image=(3, 1, 0), dtype=torch.float32, seed: int = 0):
    """Images with bright rectangles and their GT rows ``(x1, y1, x2, y2, class)``, padded with ``-1``
    rows (every image has at least one padding row; the third image, if any, has no box)."""
    generator = torch.Generator().manual_seed(seed)
    num_rows = max(boxes_per_image) + 1
    images = 0.3 * torch.randn(batch_size, 3, height, width, generator=generator)
    gt_boxes = torch.full((batch_size, num_rows, 5), -1.0)
    for i in range(batch_size):
        for j in range(boxes_per_image[i % len(boxes_per_image)]):
            box_w = int(torch.randint(max(4, width // 8), max(5, (9 * width) // 10), (1,), generator=generator))
            box_h = int(torch.randint(max(4, height // 8), max(5, (9 * height) // 10), (1,), generator=generator))
            x1 = int(torch.randint(0, width - box_w + 1, (1,), generator=generator))
            y1 = int(torch.randint(0, height - box_h + 1, (1,), generator=generator))
            class_id = (i + 2 * j) % num_classes
            images[i, class_id % 3, y1:y1 + box_h, x1:x1 + box_w] += 2.0
            gt_boxes[i, j] = torch.tensor([x1, y1, x1 + box_w, y1 + box_h, class_id], dtype=torch.float32)
    return images.to(dtype), gt_boxes.to(dtype)
