"""The checks behind ``python -m eecs598.grade`` (course staff only: never shipped to students).

Every graded function (see ``points.json``) has a list of checks. A check is a function of an
:class:`Env`, which holds the student's modules and the reference solution's; it raises
``AssertionError`` with a message a student can act on when the function is wrong. Checks marked
``published`` repeat the notebook's own checks (and the public student tests); the others are hidden:
other image and batch sizes, float64, CUDA when a GPU is present (skipped otherwise), row order on
non-square feature maps, NMS against torchvision on the notebook's 5000-box workload, a short
learning run.

Isolation: the runner (``eecs598.kit.runner``) replaces every *other* graded function, and the
functions the course gives (matching, ``class_spec_nms``), by the reference solution's inside the
student's modules before the checks run. So a check of ``FCOS.forward`` uses the reference head,
locations and deltas, and a bug loses the points of the function it is in and no others.

Expected values come from the notebook's published numbers, from formulas written out here
(locations, deltas, centerness, the FPN's top-down sum), from torchvision (NMS) or, for the two parts
of ``FCOS`` (losses, inference), from the reference solution run on the same weights and inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, List, Optional

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

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


# ================================================================================================
# common.py: DetectorBackboneWithFPN
# ================================================================================================

BACKBONE = "DetectorBackboneWithFPN"


def _student_backbone(env: Env, out_channels: int) -> nn.Module:
    key = ("backbone", out_channels)
    if key not in env.cache:
        torch.manual_seed(0)
        env.cache[key] = _construct(env.student_attr("common.py", BACKBONE), out_channels).eval()
    return env.cache[key]


def _fpn_expected(model: nn.Module, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Standard top-down FPN with the student's lateral convs (found by their input channels) and
    identity output convs (set by :func:`_identity_output_convs`)."""
    feats = model.backbone(images)
    lateral = {}
    for conv in model.fpn_params.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1):
            lateral[conv.in_channels] = conv
    merged5 = lateral[400](feats["c5"])
    merged4 = lateral[160](feats["c4"]) + F.interpolate(merged5, size=feats["c4"].shape[-2:], mode="nearest")
    merged3 = lateral[64](feats["c3"]) + F.interpolate(merged4, size=feats["c3"].shape[-2:], mode="nearest")
    return {"p3": merged3, "p4": merged4, "p5": merged5}


def _fpn_convs(model: nn.Module):
    """``(lateral 1x1 convs, output 3x3 convs)`` of ``model.fpn_params``, with a message if that is not
    what it holds."""
    fpn_params = getattr(model, "fpn_params", None)
    if not isinstance(fpn_params, nn.ModuleDict):
        raise AssertionError(f"self.fpn_params must be an nn.ModuleDict, got {type(fpn_params).__name__}")
    convs = [m for m in fpn_params.modules() if isinstance(m, nn.Conv2d)]
    laterals = [c for c in convs if c.kernel_size == (1, 1)]
    outputs = [c for c in convs if c.kernel_size == (3, 3)]
    if len(laterals) != 3 or len(outputs) != 3 or len(convs) != 6:
        raise AssertionError(
            f"self.fpn_params must hold 3 lateral 1x1 convs and 3 output 3x3 convs, found {len(laterals)} "
            f"1x1, {len(outputs)} 3x3 and {len(convs) - len(laterals) - len(outputs)} other convs"
        )
    return laterals, outputs


def _identity_output_convs(model: nn.Module) -> None:
    _, outputs = _fpn_convs(model)
    with torch.no_grad():
        for conv in outputs:
            conv.weight.zero_()
            channels = min(conv.in_channels, conv.out_channels)
            conv.weight[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            if conv.bias is not None:
                conv.bias.zero_()


@check(BACKBONE, published=True)
def fpn_shapes_224(env: Env) -> None:
    """Published: p3/p4/p5 of a (2, 3, 224, 224) batch are (2, 64, 28|14|7, 28|14|7), in this order."""
    model = _student_backbone(env, 64)
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 224, 224))
    assert_same_keys(feats, ["p3", "p4", "p5"], "forward output")
    for name, size in (("p3", 28), ("p4", 14), ("p5", 7)):
        if tuple(feats[name].shape) != (2, 64, size, size):
            raise AssertionError(f"{name} has shape {tuple(feats[name].shape)}, expected {(2, 64, size, size)}")


@check(BACKBONE)
def fpn_layers(env: Env) -> None:
    """fpn_params holds 1x1 laterals 64/160/400 -> C and 3x3 (padding 1) output convs C -> C."""
    model = _student_backbone(env, 16)
    laterals, outputs = _fpn_convs(model)
    if sorted(c.in_channels for c in laterals) != [64, 160, 400] or any(c.out_channels != 16 for c in laterals):
        raise AssertionError(
            "lateral 1x1 convs must map the backbone's 64, 160 and 400 channels to out_channels=16, got "
            f"{sorted((c.in_channels, c.out_channels) for c in laterals)}"
        )
    for conv in outputs:
        if (conv.in_channels, conv.out_channels) != (16, 16) or conv.padding != (1, 1) or conv.stride != (1, 1):
            raise AssertionError(
                f"output 3x3 convs must be out_channels -> out_channels with stride 1 and padding 1, got {conv}"
            )
    if model.fpn_strides != {"p3": 8, "p4": 16, "p5": 32}:
        raise AssertionError(f"fpn_strides changed: {model.fpn_strides}")


@check(BACKBONE)
def fpn_top_down_sum(env: Env) -> None:
    """Hidden: outputs are the standard top-down FPN (nearest upsampling) on a non-square 96x160 batch."""
    model = _student_backbone(env, 16)
    _identity_output_convs(model)
    images = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model(images)
        expected = _fpn_expected(model, images)
    assert_same_keys(feats, ["p3", "p4", "p5"], "forward output")
    for name in ("p3", "p4", "p5"):
        assert_close(feats[name], expected[name], f"{name} (lateral conv + upsampled coarser level, then the 3x3 conv)",
                     rtol=1e-4, atol=1e-5)


@check(BACKBONE)
def fpn_other_sizes_and_batches(env: Env) -> None:
    """Hidden: batch 1 at 160x256 and batch 3 at 64x96 give (B, C, H/8|16|32, W/8|16|32)."""
    model = _student_backbone(env, 16)
    for batch, height, width in ((1, 160, 256), (3, 64, 96)):
        with torch.no_grad():
            feats = model(torch.randn(batch, 3, height, width))
        assert_same_keys(feats, ["p3", "p4", "p5"], "forward output")
        for name, stride in (("p3", 8), ("p4", 16), ("p5", 32)):
            expected = (batch, 16, height // stride, width // stride)
            if tuple(feats[name].shape) != expected:
                raise AssertionError(
                    f"input {(batch, 3, height, width)}: {name} has shape {tuple(feats[name].shape)}, expected {expected}"
                )


@check(BACKBONE)
def fpn_float64(env: Env) -> None:
    """Hidden: a float64 model on float64 images returns float64 maps with the top-down values."""
    model = _student_backbone(env, 16).double()
    try:
        _identity_output_convs(model)
        images = torch.randn(2, 3, 64, 128, dtype=torch.float64)
        with torch.no_grad():
            feats = model(images)
            expected = _fpn_expected(model, images)
        for name in ("p3", "p4", "p5"):
            assert_close(feats[name], expected[name], f"float64 {name}", rtol=1e-9, atol=1e-10)
    finally:
        model.float()


@check(BACKBONE, needs_cuda=True)
def fpn_cuda(env: Env) -> None:
    """Hidden: on the GPU the maps stay on the GPU and equal the CPU ones."""
    model = _student_backbone(env, 16)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        cpu = model(images)
        gpu = model.to(cuda_device())(images.to(cuda_device()))
    model.cpu()
    for name in ("p3", "p4", "p5"):
        assert_close(gpu[name].cpu(), cpu[name], f"CUDA {name}", rtol=1e-2, atol=1e-3)
        if gpu[name].device.type != "cuda":
            raise AssertionError(f"{name} is on {gpu[name].device}, expected the input's CUDA device")


# ================================================================================================
# common.py: get_fpn_location_coords
# ================================================================================================

LOCATIONS = "get_fpn_location_coords"


def _expected_locations(height: int, width: int, stride: int, dtype=torch.float32) -> torch.Tensor:
    """The textbook x-major list: x slow, y fast."""
    rows = [[stride * (x + 0.5), stride * (y + 0.5)] for x in range(width) for y in range(height)]
    return torch.tensor(rows, dtype=dtype).reshape(-1, 2)


@check(LOCATIONS, published=True)
def locations_published_224(env: Env) -> None:
    """Published: the first five p3/p4/p5 locations of a 224x224 input."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    shapes = {"p3": torch.Size([2, 64, 28, 28]), "p4": torch.Size([2, 64, 14, 14]), "p5": torch.Size([2, 64, 7, 7])}
    locations = get_locations(shapes, {"p3": 8, "p4": 16, "p5": 32})
    assert_same_keys(locations, ["p3", "p4", "p5"], "returned dict")
    expected_first = {
        "p3": [[4.0, 4.0], [4.0, 12.0], [4.0, 20.0], [4.0, 28.0], [4.0, 36.0]],
        "p4": [[8.0, 8.0], [8.0, 24.0], [8.0, 40.0], [8.0, 56.0], [8.0, 72.0]],
        "p5": [[16.0, 16.0], [16.0, 48.0], [16.0, 80.0], [16.0, 112.0], [16.0, 144.0]],
    }
    for name, size in (("p3", 28), ("p4", 14), ("p5", 7)):
        if tuple(locations[name].shape) != (size * size, 2):
            raise AssertionError(f"{name} locations have shape {tuple(locations[name].shape)}, expected {(size * size, 2)}")
        assert_close(locations[name][:5], torch.tensor(expected_first[name]), f"first five {name} locations",
                     rtol=0, atol=0)


@check(LOCATIONS)
def locations_x_major_non_square(env: Env) -> None:
    """Hidden: non-square maps (H=3, W=5 and H=5, W=2) are flattened x-major (x slow, y fast)."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    for height, width in ((3, 5), (5, 2)):
        locations = get_locations({"p3": (1, 8, height, width)}, {"p3": 8})
        assert_close(locations["p3"], _expected_locations(height, width, 8),
                     f"locations of a map with H={height}, W={width} (rows x-major: x slow, y fast; column 0 is x)",
                     rtol=0, atol=0)


@check(LOCATIONS)
def locations_any_levels_and_strides(env: Env) -> None:
    """Hidden: level names and strides come from the arguments (strides 4 and 64, two levels)."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    locations = get_locations({"fine": (2, 3, 4, 6), "coarse": (2, 3, 1, 2)}, {"fine": 4, "coarse": 64})
    assert_same_keys(locations, ["fine", "coarse"], "returned dict")
    assert_close(locations["fine"], _expected_locations(4, 6, 4), "level 'fine' (stride 4)", rtol=0, atol=0)
    assert_close(locations["coarse"], _expected_locations(1, 2, 64), "level 'coarse' (stride 64)", rtol=0, atol=0)


@check(LOCATIONS)
def locations_dtype_argument(env: Env) -> None:
    """Hidden: dtype=torch.float64 gives float64 locations (default float32)."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    locations = get_locations({"p4": (1, 1, 3, 4)}, {"p4": 16}, dtype=torch.float64)
    assert_close(locations["p4"], _expected_locations(3, 4, 16, torch.float64), "float64 locations", rtol=0, atol=0)
    locations = get_locations({"p4": (1, 1, 3, 4)}, {"p4": 16})
    if locations["p4"].dtype != torch.float32:
        raise AssertionError(f"default dtype must be float32, got {locations['p4'].dtype}")


@check(LOCATIONS, needs_cuda=True)
def locations_cuda(env: Env) -> None:
    """Hidden: device='cuda' puts the locations on the GPU."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    locations = get_locations({"p3": (1, 1, 3, 5)}, {"p3": 8}, device="cuda")
    assert_close(locations["p3"], _expected_locations(3, 5, 8).to(cuda_device()), "CUDA locations", rtol=0, atol=0)


# ================================================================================================
# common.py: nms
# ================================================================================================

NMS = "nms"


def _assert_same_keep(keep, expected: torch.Tensor, what: str) -> None:
    if not isinstance(keep, torch.Tensor):
        raise AssertionError(f"{what}: nms must return a torch.Tensor of indices, got {type(keep).__name__}")
    if keep.dtype != torch.long:
        raise AssertionError(f"{what}: indices must be torch.long, got {keep.dtype}")
    keep, expected = keep.cpu(), expected.cpu()
    if not torch.equal(keep, expected):
        kept, wanted = keep.tolist(), expected.tolist()
        first = next((i for i, (a, b) in enumerate(zip(kept, wanted)) if a != b), min(len(kept), len(wanted)))
        raise AssertionError(
            f"{what}: kept {len(kept)} boxes, torchvision keeps {len(wanted)}; first difference at position "
            f"{first}: {kept[first:first + 3]} vs {wanted[first:first + 3]}"
        )


@check(NMS, published=True)
def nms_notebook_workload(env: Env) -> None:
    """Published: identical to torchvision.ops.nms on the notebook's 5000 boxes at IoU 0.3, 0.5, 0.7."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=0)
    for threshold in (0.3, 0.5, 0.7):
        _assert_same_keep(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold),
                          f"notebook workload, IoU threshold {threshold}")


@check(NMS)
def nms_other_workloads(env: Env) -> None:
    """Hidden: identical to torchvision on the notebook workload with seeds 1 and 2 and 2000 boxes."""
    nms = env.student_attr("common.py", NMS)
    for seed in (1, 2):
        boxes, scores = notebook_nms_workload(seed=seed, num_boxes=2000)
        for threshold in (0.3, 0.5, 0.7):
            _assert_same_keep(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold),
                              f"2000 boxes (seed {seed}), IoU threshold {threshold}")


@check(NMS)
def nms_iou_exactly_at_threshold(env: Env) -> None:
    """Hidden: a box whose IoU equals the threshold is kept (suppress only IoU strictly greater)."""
    nms = env.student_attr("common.py", NMS)
    for dtype in (torch.float32, torch.float64):
        boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=dtype)  # IoU = 50 / 100
        scores = torch.tensor([0.9, 0.8], dtype=dtype)
        _assert_same_keep(nms(boxes, scores, 0.5), torch.tensor([0, 1]), f"IoU exactly 0.5 at threshold 0.5 ({dtype})")
        _assert_same_keep(nms(boxes, scores, 0.49), torch.tensor([0]), f"IoU 0.5 at threshold 0.49 ({dtype})")


@check(NMS)
def nms_ties_and_duplicates(env: Env) -> None:
    """Hidden: equal scores keep input order; duplicates are suppressed (as torchvision)."""
    nms = env.student_attr("common.py", NMS)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    _assert_same_keep(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5), "four boxes with equal scores")


@check(NMS)
def nms_float64_and_empty(env: Env) -> None:
    """Hidden: float64 boxes agree with torchvision; empty input gives an empty long tensor."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=5, num_boxes=1000)
    boxes, scores = boxes.double(), scores.double()
    _assert_same_keep(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5), "float64 boxes")
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.long or tuple(keep.shape) != (0,):
        raise AssertionError(f"empty input must give an empty torch.long tensor of shape (0,), got {keep!r}")


@check(NMS)
def nms_written_by_hand(env: Env) -> None:
    """Hidden: nms does not call torchvision's NMS."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=3, num_boxes=300)
    expected = torchvision.ops.nms(boxes, scores, 0.5)

    def forbidden(*args, **kwargs):
        raise AssertionError("nms must be written by hand: it called torchvision's NMS")

    ops = torch.ops.torchvision
    saved = [(torchvision.ops, "nms"), (torchvision.ops, "batched_nms"), (torchvision.ops.boxes, "nms"),
             (torchvision.ops.boxes, "batched_nms"), (ops, "nms")]
    originals = [(owner, name, getattr(owner, name)) for owner, name in saved]
    try:
        for owner, name, _ in originals:
            setattr(owner, name, forbidden)
        keep = nms(boxes, scores, 0.5)
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    _assert_same_keep(keep, expected, "300 boxes")


@check(NMS, needs_cuda=True)
def nms_cuda(env: Env) -> None:
    """Hidden: CUDA boxes give the same indices, on the GPU."""
    nms = env.student_attr("common.py", NMS)
    boxes, scores = notebook_nms_workload(seed=4, num_boxes=2000)
    keep = nms(boxes.to(cuda_device()), scores.to(cuda_device()), 0.5)
    if keep.device.type != "cuda":
        raise AssertionError(f"indices are on {keep.device}, expected the boxes' CUDA device")
    _assert_same_keep(keep, torchvision.ops.nms(boxes, scores, 0.5), "CUDA boxes")


# ================================================================================================
# one_stage_detector.py: FCOSPredictionNetwork
# ================================================================================================

HEAD = "FCOSPredictionNetwork"


def _x_major(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, W*H, C), row x * H + y."""
    return feature_map.permute(0, 3, 2, 1).reshape(feature_map.shape[0], -1, feature_map.shape[1])


def _student_head(env: Env, num_classes: int, in_channels: int, stem_channels: List[int]) -> nn.Module:
    torch.manual_seed(0)
    return env.student_attr("one_stage_detector.py", HEAD)(num_classes, in_channels, stem_channels)


def _head_outputs(head: nn.Module, feats: Dict[str, torch.Tensor]):
    with torch.no_grad():
        outputs = head(feats)
    if not isinstance(outputs, (list, tuple)) or len(outputs) != 3:
        raise AssertionError("forward must return [class_logits, boxreg_deltas, centerness_logits]")
    for what, output in zip(("class logits", "box deltas", "centerness logits"), outputs):
        assert_same_keys(output, list(feats.keys()), what)
    return outputs


@check(HEAD, published=True)
def head_shapes_224(env: Env) -> None:
    """Published: outputs (2, 784|196|49, 20), (.., 4), (.., 1) for 224x224 features."""
    head = _student_head(env, 20, 64, [64, 64])
    feats = {name: torch.randn(2, 64, size, size) for name, size in (("p3", 28), ("p4", 14), ("p5", 7))}
    outputs = _head_outputs(head, feats)
    for what, output, channels in zip(("class logits", "box deltas", "centerness logits"), outputs, (20, 4, 1)):
        for name, rows in (("p3", 784), ("p4", 196), ("p5", 49)):
            if tuple(output[name].shape) != (2, rows, channels):
                raise AssertionError(f"{what} of {name}: shape {tuple(output[name].shape)}, expected {(2, rows, channels)}")


@check(HEAD)
def head_layers(env: Env) -> None:
    """Hidden: stem_cls/stem_box are conv3x3+ReLU pairs following stem_channels; 3x3 pred_cls/box/ctr."""
    head = _student_head(env, 7, 8, [32, 16])
    for stem_name in ("stem_cls", "stem_box"):
        stem = getattr(head, stem_name, None)
        if not isinstance(stem, nn.Sequential):
            raise AssertionError(f"{stem_name} must be an nn.Sequential, got {type(stem).__name__}")
        layers = list(stem)
        kinds = [type(layer).__name__ for layer in layers]
        if kinds != ["Conv2d", "ReLU", "Conv2d", "ReLU"]:
            raise AssertionError(f"{stem_name} for stem_channels [32, 16] must be Conv2d, ReLU, Conv2d, ReLU; got {kinds}")
        for conv, (c_in, c_out) in zip(layers[0::2], ((8, 32), (32, 16))):
            if (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) != (c_in, c_out, (3, 3), (1, 1), (1, 1)):
                raise AssertionError(f"{stem_name}: expected a 3x3 conv {c_in} -> {c_out} with stride 1, padding 1; got {conv}")
    for name, c_out in (("pred_cls", 7), ("pred_box", 4), ("pred_ctr", 1)):
        conv = getattr(head, name, None)
        if not isinstance(conv, nn.Conv2d):
            raise AssertionError(f"{name} must be an nn.Conv2d, got {type(conv).__name__}")
        if (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) != (16, c_out, (3, 3), (1, 1), (1, 1)):
            raise AssertionError(f"{name}: expected a 3x3 conv 16 -> {c_out} with stride 1, padding 1; got {conv}")


@check(HEAD)
def head_initialisation(env: Env) -> None:
    """Hidden: conv weights ~ Normal(0, 0.01), biases 0, pred_cls bias -log((1 - 0.01) / 0.01)."""
    head = _student_head(env, 20, 64, [64, 64])
    prior_bias = -math.log((1 - 0.01) / 0.01)
    for name in ("pred_cls", "pred_box", "pred_ctr"):
        if not isinstance(getattr(head, name, None), nn.Conv2d):
            raise AssertionError(f"{name} must be an nn.Conv2d, got {type(getattr(head, name, None)).__name__}")
    for name, module in head.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        weight = module.weight.detach()
        if weight.numel() >= 5000 and not (0.008 < float(weight.std()) < 0.012 and abs(float(weight.mean())) < 0.002):
            raise AssertionError(f"{name}.weight: std {float(weight.std()):.4f}, mean {float(weight.mean()):.4f}; "
                                 "expected Normal(0, 0.01)")
        if module.bias is None:
            raise AssertionError(f"{name} has no bias")
        expected = prior_bias if name == "pred_cls" else 0.0
        assert_close(module.bias.detach(), torch.full_like(module.bias.detach(), expected), f"{name}.bias", rtol=1e-6, atol=1e-6)


def _check_head_rows(env: Env, dtype: torch.dtype, device: torch.device) -> None:
    head = _student_head(env, 6, 8, [12]).to(device=device, dtype=dtype)
    with torch.no_grad():  # large random weights: every pixel gives clearly different outputs
        for parameter in head.parameters():
            parameter.copy_(torch.randn(parameter.shape, dtype=dtype) * 0.3)
    generator = torch.Generator().manual_seed(2)
    feats = {"p3": torch.randn(2, 8, 3, 5, generator=generator, dtype=dtype).to(device),
             "p4": torch.randn(2, 8, 5, 2, generator=generator, dtype=dtype).to(device)}
    class_logits, box_deltas, ctr_logits = _head_outputs(head, feats)
    with torch.no_grad():
        for name, feature in feats.items():
            box_feature = head.stem_box(feature)
            expected = {
                "class logits": _x_major(head.pred_cls(head.stem_cls(feature))),
                "box deltas": _x_major(head.pred_box(box_feature)),
                "centerness logits (predicted from the box stem)": _x_major(head.pred_ctr(box_feature)),
            }
            for (what, wanted), output in zip(expected.items(), (class_logits, box_deltas, ctr_logits)):
                height, width = feature.shape[-2:]
                assert_close(output[name], wanted,
                             f"{what} of a map with H={height}, W={width}: row i must be the pixel of location "
                             "row i (x-major: x slow, y fast)",
                             rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-5 if dtype == torch.float32 else 1e-12)


@check(HEAD)
def head_rows_follow_locations(env: Env) -> None:
    """Hidden: on non-square maps prediction rows are flattened x-major, like the locations."""
    _check_head_rows(env, torch.float32, torch.device("cpu"))


@check(HEAD)
def head_float64(env: Env) -> None:
    """Hidden: a float64 head on float64 features gives float64 outputs in x-major order."""
    _check_head_rows(env, torch.float64, torch.device("cpu"))


@check(HEAD, needs_cuda=True)
def head_cuda(env: Env) -> None:
    """Hidden: the head runs on the GPU and keeps the x-major order."""
    _check_head_rows(env, torch.float32, cuda_device())


# ================================================================================================
# one_stage_detector.py: deltas and centerness
# ================================================================================================

GET_DELTAS = "fcos_get_deltas_from_locations"
APPLY_DELTAS = "fcos_apply_deltas_to_locations"
CENTERNESS = "fcos_make_centerness_targets"

_NOTEBOOK_BOXES = torch.tensor([[10, 15, 100, 115, 1], [30, 20, 40, 30, 1], [120, 100, 200, 200, 1]], dtype=torch.float32)
_NOTEBOOK_LOCATIONS = torch.tensor([[30, 40], [32, 29], [125, 150]], dtype=torch.float32)


def _random_matched_boxes(num: int, dtype=torch.float64, seed: int = 0):
    """``num`` locations and boxes around them, with class ids."""
    generator = torch.Generator().manual_seed(seed)
    locations = torch.rand(num, 2, generator=generator, dtype=dtype) * 200
    distances = torch.rand(num, 4, generator=generator, dtype=dtype) * 90 + 1
    boxes = torch.cat([locations - distances[:, :2], locations + distances[:, 2:],
                       torch.randint(0, 20, (num, 1), generator=generator).to(dtype)], dim=1)
    return locations, boxes, distances


def _expected_deltas(locations, boxes, stride):
    return torch.stack([locations[:, 0] - boxes[:, 0], locations[:, 1] - boxes[:, 1],
                        boxes[:, 2] - locations[:, 0], boxes[:, 3] - locations[:, 1]], dim=1) / stride


@check(GET_DELTAS, published=True)
def deltas_round_trip_published(env: Env) -> None:
    """Published: the notebook's three boxes -> deltas (stride 8) -> boxes gives them back exactly."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    apply_deltas = env.reference("one_stage_detector.py").fcos_apply_deltas_to_locations
    deltas = get_deltas(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, stride=8)
    assert_close(deltas, _expected_deltas(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, 8), "deltas of the notebook's boxes",
                 rtol=1e-6, atol=1e-6)
    assert_close(apply_deltas(deltas, _NOTEBOOK_LOCATIONS, stride=8), _NOTEBOOK_BOXES[:, :4],
                 "boxes decoded from your deltas", rtol=1e-6, atol=1e-5)


@check(GET_DELTAS, published=True)
def deltas_background_published(env: Env) -> None:
    """Published: a background row (all -1) gives deltas of exactly -1."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    deltas = get_deltas(torch.tensor([[100.0, 200.0]]), torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0]]), stride=8)
    assert_close(deltas, -torch.ones(1, 4), "deltas of a background row", rtol=0, atol=0)


@check(GET_DELTAS)
def deltas_formula_other_strides(env: Env) -> None:
    """Hidden: (xc - x1, yc - y1, x2 - xc, y2 - yc) / stride for strides 16 and 32, float64."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    locations, boxes, _ = _random_matched_boxes(50)
    for stride in (16, 32):
        assert_close(get_deltas(locations, boxes, stride), _expected_deltas(locations, boxes, stride),
                     f"float64 deltas at stride {stride}", rtol=1e-12, atol=1e-12)


@check(GET_DELTAS)
def deltas_mixed_rows_and_four_columns(env: Env) -> None:
    """Hidden: background rows among foreground rows; boxes given with 4 columns; N = 0."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    locations, boxes, _ = _random_matched_boxes(8, dtype=torch.float32, seed=1)
    background = torch.tensor([False, True, False, False, True, True, False, False])
    boxes[background] = -1
    expected = _expected_deltas(locations, boxes, 8)
    expected[background] = -1
    assert_close(get_deltas(locations, boxes, 8), expected, "deltas with background rows 1, 4, 5", rtol=1e-5, atol=1e-5)
    assert_close(get_deltas(locations, boxes[:, :4], 8), expected, "deltas of (N, 4) boxes", rtol=1e-5, atol=1e-5)
    empty = get_deltas(torch.zeros(0, 2), torch.zeros(0, 5), 8)
    if tuple(empty.shape) != (0, 4):
        raise AssertionError(f"no locations must give deltas of shape (0, 4), got {tuple(empty.shape)}")


@check(GET_DELTAS, needs_cuda=True)
def deltas_cuda(env: Env) -> None:
    """Hidden: CUDA inputs give CUDA deltas."""
    get_deltas = env.student_attr("one_stage_detector.py", GET_DELTAS)
    locations, boxes, _ = _random_matched_boxes(10, dtype=torch.float32)
    expected = _expected_deltas(locations, boxes, 8).to(cuda_device())
    assert_close(get_deltas(locations.to(cuda_device()), boxes.to(cuda_device()), 8), expected, "CUDA deltas",
                 rtol=1e-5, atol=1e-5)


@check(APPLY_DELTAS, published=True)
def apply_round_trip_published(env: Env) -> None:
    """Published: decoding the deltas of the notebook's boxes gives them back exactly."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    deltas = env.reference("one_stage_detector.py").fcos_get_deltas_from_locations(_NOTEBOOK_LOCATIONS, _NOTEBOOK_BOXES, 8)
    assert_close(apply_deltas(deltas, _NOTEBOOK_LOCATIONS, stride=8), _NOTEBOOK_BOXES[:, :4],
                 "decoded notebook boxes", rtol=1e-6, atol=1e-5)


@check(APPLY_DELTAS, published=True)
def apply_background_published(env: Env) -> None:
    """Published: background deltas (-1) decode to the location itself, [100, 200, 100, 200]."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    box = apply_deltas(-torch.ones(1, 4), torch.tensor([[100.0, 200.0]]), stride=8)
    assert_close(box, torch.tensor([[100.0, 200.0, 100.0, 200.0]]), "box decoded from background deltas", rtol=0, atol=0)


@check(APPLY_DELTAS)
def apply_formula_and_clamp(env: Env) -> None:
    """Hidden: boxes (xc - l, yc - t, xc + r, yc + b) * stride in float64; negative deltas clamp to 0."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    locations, boxes, distances = _random_matched_boxes(50)
    for stride in (16, 32):
        assert_close(apply_deltas(distances / stride, locations, stride), boxes[:, :4],
                     f"float64 boxes at stride {stride}", rtol=1e-12, atol=1e-10)
    box = apply_deltas(torch.tensor([[-0.5, 2.0, -3.0, 1.0]]), torch.tensor([[50.0, 60.0]]), 8)
    assert_close(box, torch.tensor([[50.0, 44.0, 50.0, 68.0]]),
                 "deltas (-0.5, 2, -3, 1) at (50, 60), stride 8 (negative deltas count as 0)", rtol=0, atol=1e-6)
    empty = apply_deltas(torch.zeros(0, 4), torch.zeros(0, 2), 8)
    if tuple(empty.shape) != (0, 4):
        raise AssertionError(f"no deltas must give boxes of shape (0, 4), got {tuple(empty.shape)}")


@check(APPLY_DELTAS, needs_cuda=True)
def apply_cuda(env: Env) -> None:
    """Hidden: CUDA inputs give CUDA boxes."""
    apply_deltas = env.student_attr("one_stage_detector.py", APPLY_DELTAS)
    locations, boxes, distances = _random_matched_boxes(10, dtype=torch.float32)
    assert_close(apply_deltas((distances / 8).to(cuda_device()), locations.to(cuda_device()), 8),
                 boxes[:, :4].to(cuda_device()), "CUDA boxes", rtol=1e-5, atol=1e-4)


def _expected_centerness(deltas: torch.Tensor) -> torch.Tensor:
    values = []
    for left, top, right, bottom in deltas.tolist():
        if left == top == right == bottom == -1:
            values.append(-1.0)
        else:
            values.append(math.sqrt(min(left, right) * min(top, bottom) / (max(left, right) * max(top, bottom))))
    return torch.tensor(values, dtype=deltas.dtype)


@check(CENTERNESS, published=True)
def centerness_published(env: Env) -> None:
    """Published: [0.30860671401, 0.1666666716, -1.0] for the notebook's boxes (the last is background)."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    boxes = _NOTEBOOK_BOXES.clone()
    boxes[2] = -1
    deltas = env.reference("one_stage_detector.py").fcos_get_deltas_from_locations(_NOTEBOOK_LOCATIONS, boxes, 8)
    assert_close(centerness(deltas), torch.tensor([0.30860671401, 0.1666666716, -1.0]), "centerness targets",
                 rtol=1e-6, atol=1e-7)


@check(CENTERNESS)
def centerness_formula_float64(env: Env) -> None:
    """Hidden: sqrt(min(l,r) min(t,b) / (max(l,r) max(t,b))) in float64, background rows -1 among them."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    _, _, distances = _random_matched_boxes(40, seed=3)
    deltas = distances / 8
    deltas[[3, 17, 18]] = -1
    assert_close(centerness(deltas), _expected_centerness(deltas), "float64 centerness", rtol=1e-12, atol=1e-12)


@check(CENTERNESS)
def centerness_scale_free_and_empty(env: Env) -> None:
    """Hidden: scaling the deltas does not change the centerness; N = 0 gives shape (0,)."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    _, _, distances = _random_matched_boxes(20, dtype=torch.float32, seed=4)
    assert_close(centerness(distances * 4), centerness(distances / 8), "centerness of deltas at stride 8 vs pixels",
                 rtol=1e-5, atol=1e-6)
    assert_close(centerness(distances), _expected_centerness(distances), "float32 centerness", rtol=1e-5, atol=1e-6)
    empty = centerness(torch.zeros(0, 4))
    if tuple(empty.shape) != (0,):
        raise AssertionError(f"no deltas must give shape (0,), got {tuple(empty.shape)}")


@check(CENTERNESS, needs_cuda=True)
def centerness_cuda(env: Env) -> None:
    """Hidden: CUDA deltas give a CUDA centerness."""
    centerness = env.student_attr("one_stage_detector.py", CENTERNESS)
    _, _, distances = _random_matched_boxes(20, dtype=torch.float32, seed=4)
    assert_close(centerness(distances.to(cuda_device())), _expected_centerness(distances).to(cuda_device()),
                 "CUDA centerness", rtol=1e-5, atol=1e-6)


# ================================================================================================
# one_stage_detector.py: FCOS.forward (training losses) and FCOS.inference
# ================================================================================================

FORWARD = "FCOS.forward"
INFERENCE = "FCOS.inference"
_LOSS_NAMES = ("loss_cls", "loss_box", "loss_ctr")


def _fcos_pair(env: Env, num_classes: int = 5, channels: int = 16, stems=(16,), dtype=torch.float32):
    """``(student FCOS, reference FCOS)`` with the same fresh weights, in training mode, normaliser 150.

    Built once per configuration (building costs more than most checks) and reset to the initial
    weights, buffers, normaliser and gradients on every call."""
    key = ("fcos", num_classes, channels, tuple(stems))
    if key not in env.cache:
        torch.manual_seed(0)
        reference = _construct(env.reference("one_stage_detector.py").FCOS, num_classes, channels, list(stems))
        student = _construct(env.student_attr("one_stage_detector.py", "FCOS"), num_classes, channels, list(stems))
        initial_state = {name: value.clone() for name, value in reference.state_dict().items()}
        env.cache[key] = (student, reference, initial_state)
    student, reference, initial_state = env.cache[key]
    for model in (reference, student):
        model.float()
        missing, _ = model.load_state_dict(initial_state, strict=False)
        if missing:
            raise AssertionError(f"FCOS lacks the parameters {missing[:3]}...; keep self.backbone and self.pred_net")
        model.to(dtype).train()
        model.zero_grad(set_to_none=True)
        model._normalizer = 150.0
    return student, reference


def _losses(model: nn.Module, images, gt_boxes, what: str) -> Dict[str, torch.Tensor]:
    losses = model(images, gt_boxes)
    if not isinstance(losses, dict) or set(losses) != set(_LOSS_NAMES):
        raise AssertionError(f"{what}: training forward must return a dict with keys {list(_LOSS_NAMES)}, got "
                             f"{list(losses) if isinstance(losses, dict) else type(losses).__name__}")
    for name, value in losses.items():
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise AssertionError(f"{what}: {name} must be a scalar tensor")
        if not bool(torch.isfinite(value)):
            raise AssertionError(f"{what}: {name} is {value.item()}")
    return losses


def _compare_losses(env: Env, student, reference, images, gt_boxes, what: str, rtol: float) -> None:
    for model in (student, reference):
        model._normalizer = 150.0
    with torch.no_grad():
        expected = reference(images, gt_boxes)
        actual = _losses(student, images, gt_boxes, what)
    for name in _LOSS_NAMES:
        assert_close(actual[name], expected[name], f"{what}: {name}", rtol=rtol, atol=1e-7)
    normalizer = float(getattr(student, "_normalizer", float("nan")))
    if not math.isclose(normalizer, float(reference._normalizer), rel_tol=1e-6):
        raise AssertionError(f"{what}: self._normalizer is {normalizer} after the forward pass, expected "
                             f"{float(reference._normalizer)} (0.9 * old + 0.1 * foreground locations per image)")


@check(FORWARD, published=True)
def fcos_losses_and_eval_published(env: Env) -> None:
    """Published: a training forward returns three finite scalar losses; eval returns (boxes, classes, scores)."""
    student, _ = _fcos_pair(env)  # the notebook's check, on a smaller model
    images, gt_boxes = synthetic_detection_batch(2, 128, 128, 5)
    _losses(student, images, gt_boxes, "2 images of 128x128")
    student.eval()
    with torch.no_grad():
        outputs = student(images[:1], test_score_thresh=0.05, test_nms_thresh=0.5)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
        raise AssertionError("eval mode must return (pred_boxes, pred_classes, pred_scores)")


@check(FORWARD)
def fcos_losses_match_reference(env: Env) -> None:
    """Hidden: the three losses and the normaliser equal the reference's (batch 2, 128x128, padded GT)."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 128, 128, 5, seed=1)
    _compare_losses(env, student, reference, images, gt_boxes, "batch 2 at 128x128", rtol=1e-4)


@check(FORWARD)
def fcos_losses_other_sizes_and_batches(env: Env) -> None:
    """Hidden: losses equal the reference's for batch 3 at 96x160 (one image without boxes) and batch 1."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(3, 96, 160, 5, seed=2)
    _compare_losses(env, student, reference, images, gt_boxes, "batch 3 at 96x160", rtol=1e-4)
    images, gt_boxes = synthetic_detection_batch(1, 160, 96, 5, boxes_per_image=(4,), seed=3)
    _compare_losses(env, student, reference, images, gt_boxes, "batch 1 at 160x96", rtol=1e-4)


@check(FORWARD)
def fcos_normalizer_is_an_ema(env: Env) -> None:
    """Hidden: over two calls the normaliser follows 0.9 * old + 0.1 * foreground per image."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 128, 128, 5, seed=4)
    student._normalizer = reference._normalizer = 150.0
    with torch.no_grad():
        for step in (1, 2):
            expected = reference(images, gt_boxes)
            actual = _losses(student, images, gt_boxes, f"call {step}")
            for name in _LOSS_NAMES:
                assert_close(actual[name], expected[name], f"call {step}: {name}", rtol=1e-4, atol=1e-7)
            if not math.isclose(float(student._normalizer), float(reference._normalizer), rel_tol=1e-6):
                raise AssertionError(f"after call {step} self._normalizer is {float(student._normalizer)}, expected "
                                     f"{float(reference._normalizer)}")


@check(FORWARD)
def fcos_losses_float64(env: Env) -> None:
    """Hidden: a float64 model gives float64 losses equal to the reference's."""
    student, reference = _fcos_pair(env, dtype=torch.float64)
    images, gt_boxes = synthetic_detection_batch(2, 64, 96, 5, dtype=torch.float64, seed=5)
    _compare_losses(env, student, reference, images, gt_boxes, "float64 batch", rtol=1e-9)
    losses = student(images, gt_boxes)
    if any(value.dtype != torch.float64 for value in losses.values()):
        raise AssertionError(f"float64 model: loss dtypes {[str(v.dtype) for v in losses.values()]}")


@check(FORWARD)
def fcos_losses_reach_every_part(env: Env) -> None:
    """Hidden: backward of the losses gives finite, non-zero gradients to the FPN and the head."""
    student, _ = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 96, 96, 5, seed=6)
    losses = _losses(student, images, gt_boxes, "batch 2 at 96x96")
    sum(losses.values()).backward()
    for part in ("pred_net.pred_cls", "pred_net.pred_box", "pred_net.pred_ctr", "backbone.fpn_params"):
        grads = [p.grad for name, p in student.named_parameters() if name.startswith(part)]
        if not grads or any(g is None for g in grads):
            raise AssertionError(f"the losses give no gradient to {part}")
        if not all(bool(torch.isfinite(g).all()) for g in grads) or all(float(g.abs().sum()) == 0 for g in grads):
            raise AssertionError(f"the gradients of {part} are zero or not finite")


@check(FORWARD)
def fcos_eval_mode_dispatches_to_inference(env: Env) -> None:
    """Hidden: eval-mode forward returns inference() of the predictions (as the reference)."""
    student, reference = _fcos_pair(env)
    student.eval()
    reference.eval()
    images, _ = synthetic_detection_batch(1, 96, 128, 5, seed=7)
    with torch.no_grad():
        actual = student(images, test_score_thresh=0.0, test_nms_thresh=0.6)
        expected = reference(images, test_score_thresh=0.0, test_nms_thresh=0.6)
    _compare_detections(actual, expected, "eval forward of one 96x128 image")


@check(FORWARD)
def fcos_short_learning_run(env: Env) -> None:
    """Hidden: 20 AdamW steps on two synthetic images at least halve the total loss."""
    student, _ = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 64, 64, 2, boxes_per_image=(2,), seed=0)

    def total_loss() -> float:
        student._normalizer = 150.0
        with torch.no_grad():
            return float(sum(_losses(student, images, gt_boxes, "learning run").values()))

    before = total_loss()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for _ in range(20):
        loss = sum(_losses(student, images, gt_boxes, "learning run").values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimizer.step()
    after = total_loss()
    if not after < 0.5 * before:
        raise AssertionError(f"20 training steps took the total loss from {before:.4f} to {after:.4f}; "
                             "expected at least a halving")


@check(FORWARD, needs_cuda=True)
def fcos_losses_cuda(env: Env) -> None:
    """Hidden: on the GPU the losses equal the CPU ones."""
    student, reference = _fcos_pair(env)
    images, gt_boxes = synthetic_detection_batch(2, 96, 96, 5, seed=8)
    for model in (student, reference):
        model._normalizer = 150.0
    with torch.no_grad():
        expected = reference(images, gt_boxes)
        student.to(cuda_device())
        actual = _losses(student, images.to(cuda_device()), gt_boxes.to(cuda_device()), "CUDA batch")
    for name in _LOSS_NAMES:
        assert_close(actual[name].cpu(), expected[name], f"CUDA {name}", rtol=1e-2, atol=1e-4)


def _compare_detections(actual, expected, what: str, rtol: float = 1e-5, atol: float = 1e-4) -> None:
    if not isinstance(actual, (tuple, list)) or len(actual) != 3:
        raise AssertionError(f"{what}: must return (pred_boxes, pred_classes, pred_scores), got {type(actual).__name__}")
    boxes, classes, scores = actual
    expected_boxes, expected_classes, expected_scores = expected
    for name, value, wanted in (("pred_boxes", boxes, expected_boxes), ("pred_classes", classes, expected_classes),
                                ("pred_scores", scores, expected_scores)):
        if not isinstance(value, torch.Tensor):
            raise AssertionError(f"{what}: {name} must be a tensor, got {type(value).__name__}")
        if value.shape[0] != wanted.shape[0]:
            raise AssertionError(f"{what}: {value.shape[0]} detections, expected {wanted.shape[0]}")
    assert_close(boxes, expected_boxes, f"{what}: pred_boxes", rtol=rtol, atol=atol)
    if classes.dtype != torch.long:
        raise AssertionError(f"{what}: pred_classes must be torch.long, got {classes.dtype}")
    assert_close(classes, expected_classes, f"{what}: pred_classes", rtol=0, atol=0)
    assert_close(scores, expected_scores, f"{what}: pred_scores (sqrt(class prob * centerness), by decreasing score)",
                 rtol=rtol, atol=1e-6)


def _inference_inputs(env: Env, height: int, width: int, num_classes: int, dtype=torch.float32, seed: int = 0,
                      class_offset: float = -1.0, delta_scale: float = 6.0):
    """Random head outputs for one image: ``(images, locations, cls, deltas, ctr)`` dicts per level."""
    generator = torch.Generator().manual_seed(seed)
    strides = {"p3": 8, "p4": 16, "p5": 32}
    shapes = {name: (1, 1, math.ceil(height / s), math.ceil(width / s)) for name, s in strides.items()}
    locations = env.reference("common.py").get_fpn_location_coords(shapes, strides, dtype=dtype)
    cls, deltas, ctr = {}, {}, {}
    for name, locs in locations.items():
        num = locs.shape[0]
        cls[name] = (3 * torch.randn(1, num, num_classes, generator=generator) + class_offset).to(dtype)
        deltas[name] = (delta_scale * torch.rand(1, num, 4, generator=generator)).to(dtype)
        ctr[name] = (2 * torch.randn(1, num, 1, generator=generator)).to(dtype)
    images = torch.zeros(1, 3, height, width, dtype=dtype)
    return images, locations, cls, deltas, ctr


def _inference_model(env: Env):
    if "inference_model" not in env.cache:
        student, _ = _fcos_pair(env)
        env.cache["inference_model"] = student.eval()
    return env.cache["inference_model"]


def _compare_inference(env: Env, what: str, height: int, width: int, dtype=torch.float32, seed: int = 0,
                       score_thresh=0.3, nms_thresh=0.5, device="cpu", **kwargs) -> None:
    model = _inference_model(env)
    reference_inference = env.reference("one_stage_detector.py").FCOS.inference
    images, locations, cls, deltas, ctr = _inference_inputs(env, height, width, 5, dtype=dtype, seed=seed, **kwargs)
    expected = reference_inference(model, images, locations, cls, deltas, ctr,
                                   test_score_thresh=score_thresh, test_nms_thresh=nms_thresh)
    move = lambda tensors: {name: t.to(device) for name, t in tensors.items()}  # noqa: E731
    model.to(device)
    try:
        actual = model.inference(images.to(device), move(locations), move(cls), move(deltas), move(ctr),
                                 test_score_thresh=score_thresh, test_nms_thresh=nms_thresh)
    finally:
        model.cpu()
    if device != "cpu":
        if not all(isinstance(t, torch.Tensor) and t.device.type == "cuda" for t in actual):
            raise AssertionError(f"{what}: outputs must stay on the inputs' CUDA device")
        actual = tuple(t.cpu() for t in actual)
    tolerance = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {}
    _compare_detections(actual, expected, what, **tolerance)


@check(INFERENCE, published=True)
def inference_outputs_published(env: Env) -> None:
    """Published: eval forward of one image returns boxes (N, 4), classes (N,) long, scores (N,) by score."""
    model = _inference_model(env)
    images, _ = synthetic_detection_batch(1, 128, 128, 5, seed=9)
    with torch.no_grad():
        outputs = model(images, test_score_thresh=0.05, test_nms_thresh=0.5)
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 3:
        raise AssertionError("inference must return (pred_boxes, pred_classes, pred_scores)")
    boxes, classes, scores = outputs
    num = boxes.shape[0]
    if tuple(boxes.shape) != (num, 4) or tuple(classes.shape) != (num,) or tuple(scores.shape) != (num,):
        raise AssertionError(f"shapes {tuple(boxes.shape)}, {tuple(classes.shape)}, {tuple(scores.shape)}; expected "
                             "(N, 4), (N,), (N,)")
    if classes.dtype != torch.long:
        raise AssertionError(f"pred_classes must be torch.long, got {classes.dtype}")
    if num > 1 and not bool((scores[:-1] >= scores[1:]).all()):
        raise AssertionError("pred_scores must be sorted by decreasing score")


@check(INFERENCE)
def inference_matches_reference(env: Env) -> None:
    """Hidden: detections equal the reference's on random head outputs for a 128x128 image."""
    _compare_inference(env, "128x128 image", 128, 128)


@check(INFERENCE)
def inference_non_square_image(env: Env) -> None:
    """Hidden: on a 96x160 image boxes are decoded at the right locations and clipped to W=160, H=96."""
    _compare_inference(env, "96x160 image", 96, 160, seed=1, delta_scale=12.0)


@check(INFERENCE)
def inference_thresholds(env: Env) -> None:
    """Hidden: thresholds are used (0.5 / 0.3) and None means the defaults 0.3 / 0.5."""
    _compare_inference(env, "score 0.5, NMS 0.3", 128, 96, seed=2, score_thresh=0.5, nms_thresh=0.3)
    _compare_inference(env, "thresholds None (defaults 0.3 / 0.5)", 128, 96, seed=3, score_thresh=None, nms_thresh=None)


@check(INFERENCE)
def inference_without_detections(env: Env) -> None:
    """Hidden: when no score passes the threshold the outputs are empty: (0, 4), (0,), (0,)."""
    model = _inference_model(env)
    images, locations, cls, deltas, ctr = _inference_inputs(env, 64, 64, 5, class_offset=-40.0)
    boxes, classes, scores = model.inference(images, locations, cls, deltas, ctr, test_score_thresh=0.3,
                                             test_nms_thresh=0.5)
    if (tuple(boxes.shape), tuple(classes.shape), tuple(scores.shape)) != ((0, 4), (0,), (0,)):
        raise AssertionError(f"empty result shapes {tuple(boxes.shape)}, {tuple(classes.shape)}, {tuple(scores.shape)}; "
                             "expected (0, 4), (0,), (0,)")
    if classes.dtype != torch.long:
        raise AssertionError(f"pred_classes must be torch.long, got {classes.dtype}")


@check(INFERENCE)
def inference_float64(env: Env) -> None:
    """Hidden: float64 head outputs give float64 boxes and scores equal to the reference's."""
    _compare_inference(env, "float64 inputs", 96, 96, dtype=torch.float64, seed=4)


@check(INFERENCE, needs_cuda=True)
def inference_cuda(env: Env) -> None:
    """Hidden: CUDA head outputs give CUDA detections equal to the CPU reference's."""
    _compare_inference(env, "CUDA inputs", 96, 128, seed=5, device="cuda")
