"""The checks behind ``python -m eecs598.grade`` (course staff only: never shipped to students).

Every graded function (see ``points.json``) has a list of checks. A check has three parts, and each runs
on one side of the sandbox's wall:

- :meth:`Check.inputs` (trusted grader): the tensors and numbers the student's function gets, made from
  fixed seeds and, where a model is involved, the reference solution's weights;
- :meth:`Check.probe` (sandbox, with the student's code): builds the student's module or calls the
  student's function on those inputs and returns its **outputs** as plain data (:mod:`..wire`); it never
  decides anything;
- :meth:`Check.judge` (trusted grader, no student code): compares the outputs with expected values it
  computes itself, from formulas written out here, torchvision, or the same probe run on the reference
  solution in the grader's own process (:meth:`Reference.expected`); it raises ``AssertionError`` with a
  message a student can act on. A hidden check's message never shows an expected value (:data:`REVEAL`).

Checks marked ``published`` repeat the notebook's own checks (and the public student tests); the others
are hidden: other image and batch sizes, float64, CUDA when a GPU is present (skipped otherwise), row
order on non-square feature maps, NMS against torchvision on the notebook's 5000-box workload, a short
learning run.

Isolation: inside the sandbox, the other graded functions a check needs (the backbone, head and box
functions under ``FCOS.forward``, say) are the reference solution's, injected one function at a time
(``eecs598.staff.isolation``); never the reference of the function being graded.
"""
from __future__ import annotations

import contextvars
import re
from types import ModuleType
from typing import Any, ClassVar, Dict, List, Optional

import torch

from ..wire import Opaque, type_name

__all__ = ["Check", "Env", "CHECKS", "GIVEN_FUNCTIONS", "NEEDS", "REVEAL", "register", "assert_close",
           "assert_same_keys", "tensor", "entry", "construct", "cuda_device", "devices", "randn", "notebook_nms_workload",
           "synthetic_detection_batch", "Opaque", "type_name"]

# Functions the course gives to students; where a check runs through one, the release's version is used.
GIVEN_FUNCTIONS = (
    ("common.py", "class_spec_nms"),
    ("one_stage_detector.py", "fcos_match_locations_to_gt"),
    ("one_stage_detector.py", "match_locations_to_gt_batched"),
)

# The other graded functions a function's checks run through, beyond those its reference calls itself
# (found from the source): FCOS builds the backbone and head in __init__, and its forward dispatches to
# inference in eval mode (and inference's published check goes through forward); a student's forward may
# call the given per-image matching instead of the batched one.
NEEDS: Dict[str, tuple] = {
    "FCOS.forward": ("DetectorBackboneWithFPN", "FCOSPredictionNetwork", "FCOS.inference", "fcos_match_locations_to_gt"),
    "FCOS.inference": ("DetectorBackboneWithFPN", "FCOSPredictionNetwork", "FCOS.forward", "fcos_match_locations_to_gt"),
}

# Whether the check being judged is published: a hidden check's messages leave expected values out.
REVEAL: contextvars.ContextVar[bool] = contextvars.ContextVar("REVEAL", default=True)

CHECKS: Dict[str, List["Check"]] = {}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Check:
    """One check of a graded function; subclass it and :func:`register` the class.

    The check's name is the class name in snake case (``NmsNotebookWorkload`` -> ``nms_notebook_workload``),
    unless the class sets ``check_name``; its description is the first line of the class docstring (shown to
    students).
    """

    function: ClassVar[str] = ""
    published: ClassVar[bool] = False
    needs_cuda: ClassVar[bool] = False
    # The judge compares with the reference's outputs (Reference.expected): computed ahead, once per run.
    compares_with_reference: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__dict__.get("check_name") or _snake(type(self).__name__)

    @property
    def description(self) -> str:
        return (type(self).__doc__ or self.name).strip().splitlines()[0]

    def inputs(self, ref: "Reference") -> Dict[str, Any]:
        """Trusted: what the probe gets (plain data)."""
        return {}

    def probe(self, env: "Env", x: Dict[str, Any]) -> Dict[str, Any]:
        """Sandbox: run the student's code on ``x`` and return its outputs (plain data)."""
        raise NotImplementedError

    def judge(self, answer: Dict[str, Any], x: Dict[str, Any], ref: "Reference") -> None:
        """Trusted: raise ``AssertionError`` if ``answer`` (the decoded outputs) is wrong."""
        raise NotImplementedError


def register(cls):
    """Class decorator: add a :class:`Check` subclass to :data:`CHECKS` (in definition order)."""
    CHECKS.setdefault(cls.function, []).append(cls())
    return cls


class Env:
    """What a probe sees: ``student(file)`` modules (``"common.py"``, ``"one_stage_detector.py"``) and a
    cache for models built once per process. In the sandbox they are the student's (isolated); in the
    grader's own process, when :class:`Reference` computes expected values, the reference solution's."""

    def __init__(self, modules: Dict[str, Optional[ModuleType]], import_errors: Dict[str, str]):
        self._modules = modules
        self._import_errors = import_errors
        self.cache: Dict[object, object] = {}

    def student(self, file: str) -> ModuleType:
        module = self._modules.get(file)
        if module is None:
            raise ImportError(f"{file} could not be imported: {self._import_errors.get(file, 'missing')}")
        return module

    def student_attr(self, file: str, name: str):
        module = self.student(file)
        if not hasattr(module, name):
            raise AttributeError(f"{file} defines no {name}; keep the names of the starter code")
        return getattr(module, name)


class Reference:
    """Interface of the trusted side seen by ``inputs`` and ``judge`` (implemented by
    ``eecs598.staff.trusted.Reference``)."""

    cache: Dict[object, object]

    def module(self, file: str) -> ModuleType:  # pragma: no cover - interface
        raise NotImplementedError

    def expected(self, check: Check, x: Dict[str, Any]) -> Dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# judging helpers (trusted side)
# ------------------------------------------------------------------------------------------------


def entry(answer: Any, key: str, what: str) -> Any:
    """``answer[key]`` of a decoded dict, or an ``AssertionError`` saying what is missing."""
    if not isinstance(answer, dict):
        raise AssertionError(f"{what}: expected a dict, got {type_name(answer)}")
    if key not in answer:
        raise AssertionError(f"{what}: no {key!r} (keys {list(answer)[:8]})")
    return answer[key]


def tensor(value: Any, what: str) -> torch.Tensor:
    """``value`` if it is a tensor, else an ``AssertionError`` naming what it is."""
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type_name(value)}")
    return value


def assert_close(actual, expected: torch.Tensor, what: str, rtol: float = 1e-5, atol: float = 1e-6,
                 check_dtype: bool = True) -> None:
    """Shape, dtype and values of ``actual`` against ``expected``, with a message that points at the first
    wrong element (and, for a published check only, the value it should have)."""
    actual = tensor(actual, what)
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype}, expected {expected.dtype}")
    if actual.dtype == torch.bool or expected.dtype == torch.bool:
        actual, expected = actual.long(), expected.long()
    actual_d, expected_d = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad = ~torch.isclose(actual_d, expected_d, rtol=rtol, atol=atol, equal_nan=False)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        message = (f"{what}: {int(bad.sum())} of {bad.numel()} values differ; at index {list(index)} got "
                   f"{actual_d[index].item():.8g}")
        if REVEAL.get():
            message += f", expected {expected_d[index].item():.8g}"
        raise AssertionError(message)


def assert_same_keys(actual, expected_keys, what: str) -> None:
    if not isinstance(actual, dict):
        raise AssertionError(f"{what}: expected a dict, got {type_name(actual)}")
    if list(actual.keys()) != list(expected_keys):
        raise AssertionError(f"{what}: keys {list(actual.keys())[:8]}, expected {list(expected_keys)} (in this order)")


# ------------------------------------------------------------------------------------------------
# probing helpers (either side) and inputs
# ------------------------------------------------------------------------------------------------


def construct(cls, *args, **kwargs):
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


def devices(outputs: Any) -> Any:
    """The device type of every tensor in ``outputs`` (same structure; other values become ``None``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.device.type
    if isinstance(outputs, (list, tuple)):
        return [devices(item) for item in outputs]
    if isinstance(outputs, dict):
        return {key: devices(value) for key, value in outputs.items() if isinstance(key, str)}
    return None


def notebook_nms_workload(seed: int, num_boxes: int = 5000):
    """The notebook's NMS input: ``reset_seed(seed)``, integer boxes from ``(100 * rand).round()``,
    widths and heights ``+1``, ``randn`` scores."""
    generator = torch.Generator().manual_seed(seed)
    boxes = (100.0 * torch.rand(num_boxes, 4, generator=generator)).round()
    boxes[:, 2] = boxes[:, 2] + boxes[:, 0] + 1.0
    boxes[:, 3] = boxes[:, 3] + boxes[:, 1] + 1.0
    scores = torch.randn(num_boxes, generator=generator)
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


def randn(*shape: int, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """A seeded normal tensor (its own generator: the same values on every machine and in every order)."""
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)

