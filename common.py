"""Pieces shared by detectors: the RegNetX-400MF + FPN backbone, FPN location coordinates and NMS.

Conventions used throughout this package:

* Boxes are ``(x1, y1, x2, y2)`` in absolute pixels of the network's input image, with
  ``x1 <= x2`` and ``y1 <= y2`` (XYXY). A "GT row" is ``(x1, y1, x2, y2, class_id)``; padding or
  background rows are all ``-1``.
* FPN levels are named ``"p3"``, ``"p4"``, ``"p5"`` and have strides 8, 16 and 32.
* Locations and per-location predictions of one level are flattened **x-major**: row
  ``i = x_index * H + y_index`` (x is the slow index, y the fast one). Every function that flattens
  a ``(H, W)`` grid in this package uses this one order, so that row ``i`` of a location tensor and
  row ``i`` of a prediction tensor always describe the same pixel.
"""
import os
import socket
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models
from torchvision.models import feature_extraction

__all__ = [
    "hello_common",
    "DetectorBackboneWithFPN",
    "get_fpn_location_coords",
    "nms",
    "class_spec_nms",
    "imagenet_weights_path",
]


def hello_common():
    print("Hello from common.py!")


# ---------------------------------------------------------------------------------------------
# ImageNet weights (with an offline fallback)
# ---------------------------------------------------------------------------------------------

# The assignment's `regnet_x_400mf(pretrained=True)` means these weights.
_REGNET_WEIGHTS = models.RegNet_X_400MF_Weights.IMAGENET1K_V1
_DOWNLOAD_TIMEOUT_S = 10.0
# Outcome of the first download attempt in this process: later models neither retry nor re-warn.
_weights_unavailable_reason: Optional[str] = None


def imagenet_weights_path() -> str:
    """Path where torchvision caches the RegNetX-400MF ImageNet weights (and where we look offline).

    It is ``$TORCH_HOME/hub/checkpoints/<file name of the official URL>`` (``~/.cache/torch`` by
    default). Copying the weight file there makes ``DetectorBackboneWithFPN`` load it without
    network.
    """
    file_name = os.path.basename(_REGNET_WEIGHTS.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def _load_imagenet_state_dict() -> Optional[Dict[str, torch.Tensor]]:
    """Return the ImageNet state dict of RegNetX-400MF, or ``None`` (after one warning) if offline."""
    global _weights_unavailable_reason
    path = imagenet_weights_path()
    if not os.path.isfile(path) and _weights_unavailable_reason is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old_timeout = socket.getdefaulttimeout()
        # urllib has no overall timeout of its own: without this a firewalled network hangs forever.
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            torch.hub.download_url_to_file(_REGNET_WEIGHTS.url, path, progress=True)
        except Exception as error:  # no network, DNS failure, timeout, HTTP error, full disk ...
            _weights_unavailable_reason = f"{type(error).__name__}: {error}"
        finally:
            socket.setdefaulttimeout(old_timeout)
        if _weights_unavailable_reason is not None:
            warnings.warn(
                "Could not download the ImageNet weights of RegNetX-400MF from "
                f"{_REGNET_WEIGHTS.url} ({_weights_unavailable_reason}). The backbone starts from "
                "RANDOM initialisation, so training needs far more iterations and a stable recipe "
                "(see a4_helper.FROM_SCRATCH). To use the pretrained weights offline, download that "
                f"file elsewhere and copy it to {path} (directory {os.path.dirname(path)}), or pass "
                "pretrained=False to skip this attempt.",
                RuntimeWarning,
                stacklevel=4,
            )
    if not os.path.isfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(
            f"The RegNetX-400MF weight file {path} exists but cannot be read ({error}). "
            "Delete it so that it is downloaded again, or replace it with a good copy."
        ) from error


# ---------------------------------------------------------------------------------------------
# Backbone + FPN
# ---------------------------------------------------------------------------------------------


class DetectorBackboneWithFPN(nn.Module):
    """RegNetX-400MF backbone with a three-level (P3-P5) Feature Pyramid Network.

    The backbone gives ``c3``, ``c4``, ``c5`` with 64, 160 and 400 channels at strides 8, 16 and 32.
    The FPN turns them into ``p3``, ``p4``, ``p5`` with ``out_channels`` channels each: a 1x1
    lateral conv per level, a top-down pathway that adds the nearest-upsampled coarser merged map,
    and a 3x3 output conv per level (Lin et al., 2017). There is no P6/P7, unlike the FCOS paper.
    """

    def __init__(self, out_channels: int, pretrained: bool = True):
        """
        Args:
            out_channels: channels of every FPN level.
            pretrained: load ImageNet weights into the backbone. Without network the weights are
                looked up at :func:`imagenet_weights_path`; if absent, a warning is raised once
                and the backbone keeps its random initialisation. ``False`` skips the attempt.
        """
        super().__init__()
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        self.out_channels = out_channels

        regnet = models.regnet_x_400mf(weights=None)
        if pretrained:
            state_dict = _load_imagenet_state_dict()
            if state_dict is not None:
                regnet.load_state_dict(state_dict)

        # Only the trunk is needed: its block2/3/4 outputs are c3/c4/c5.
        self.backbone = feature_extraction.create_feature_extractor(
            regnet,
            return_nodes={
                "trunk_output.block2": "c3",
                "trunk_output.block3": "c4",
                "trunk_output.block4": "c5",
            },
        )
        backbone_channels = {"c3": 64, "c4": 160, "c5": 400}

        self.fpn_params = nn.ModuleDict()
        for level, c_name in (("p3", "c3"), ("p4", "c4"), ("p5", "c5")):
            self.fpn_params[f"lateral_{c_name}"] = nn.Conv2d(backbone_channels[c_name], out_channels, 1)
        for level in ("p3", "p4", "p5"):
            self.fpn_params[f"output_{level}"] = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    @property
    def fpn_strides(self) -> Dict[str, int]:
        """Total stride of each FPN level with respect to the input image."""
        return {"p3": 8, "p4": 16, "p5": 32}

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            images: ``(B, 3, H, W)`` ImageNet-normalised images.

        Returns:
            Dict with keys ``"p3"``, ``"p4"``, ``"p5"`` (in this order) of shapes
            ``(B, out_channels, ceil(H/8), ceil(W/8))`` etc. (exactly ``H/8`` when divisible).
        """
        backbone_feats = self.backbone(images)
        lateral = {c: self.fpn_params[f"lateral_{c}"](backbone_feats[c]) for c in ("c3", "c4", "c5")}

        # Top-down: upsample to the finer map's exact size (not a fixed factor of 2), so that
        # inputs whose sides are not multiples of 32 work too.
        merged_c5 = lateral["c5"]
        merged_c4 = lateral["c4"] + F.interpolate(merged_c5, size=lateral["c4"].shape[-2:], mode="nearest")
        merged_c3 = lateral["c3"] + F.interpolate(merged_c4, size=lateral["c3"].shape[-2:], mode="nearest")

        return {
            "p3": self.fpn_params["output_p3"](merged_c3),
            "p4": self.fpn_params["output_p4"](merged_c4),
            "p5": self.fpn_params["output_p5"](merged_c5),
        }


# ---------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------


def get_fpn_location_coords(
    shape_per_fpn_level: Dict[str, Tuple],
    strides_per_fpn_level: Dict[str, int],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> Dict[str, torch.Tensor]:
    """Image-pixel centres of the receptive fields of every FPN feature location.

    Location ``(x_index, y_index)`` of a level with stride ``s`` sits at
    ``(s * (x_index + 0.5), s * (y_index + 0.5))``.

    Args:
        shape_per_fpn_level: level name -> feature shape ``(B, C, H, W)`` (only H and W are used).
        strides_per_fpn_level: level name -> stride.
        dtype, device: of the returned tensors.

    Returns:
        Level name -> ``(H * W, 2)`` tensor of ``(x, y)`` centres, flattened **x-major**
        (row ``x_index * H + y_index``). For a 224x224 input the first p3 rows are
        ``[4, 4], [4, 12], [4, 20], ...``.
    """
    location_coords = {}
    for level_name, feat_shape in shape_per_fpn_level.items():
        stride = strides_per_fpn_level[level_name]
        height, width = int(feat_shape[-2]), int(feat_shape[-1])
        xs = stride * (torch.arange(width, dtype=dtype, device=device) + 0.5)
        ys = stride * (torch.arange(height, dtype=dtype, device=device) + 0.5)
        # indexing="ij" with (xs, ys) makes x the slow index: the x-major order.
        grid_x, grid_y = torch.meshgrid(xs, ys, indexing="ij")  # [W, H] each
        location_coords[level_name] = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)
    return location_coords


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression
# ---------------------------------------------------------------------------------------------

# Boxes are processed in score order, in blocks of this many (see `nms`).
_NMS_BLOCK_SIZE = 256


def _iou_exceeds(boxes_a: torch.Tensor, areas_a: torch.Tensor, boxes_b: torch.Tensor,
                 areas_b: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``(A, B)`` bool: ``IoU(a, b) > threshold``, computed with the same float operations as
    ``torchvision.ops.nms`` (``inter / (area_a + area_b - inter)``) so that boxes whose IoU sits
    exactly at the threshold are decided identically."""
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # [A, B, 2]
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # [A, B, 2]
    wh = (bottom_right - top_left).clamp_(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [A, B]
    union = (areas_a[:, None] + areas_b[None, :]) - inter
    return (inter / union) > threshold


def _float_threshold(iou_threshold: float, dtype: torch.dtype, device) -> torch.Tensor:
    """The threshold as a scalar tensor of ``dtype`` such that ``x > result`` (in ``dtype``) holds
    exactly when ``x > iou_threshold`` holds in double precision, as torchvision compares.

    A plain ``tensor > 0.3`` would round 0.3 to float32 (0.30000001) and disagree with torchvision
    for an IoU of exactly float32(0.3). The largest ``dtype`` value <= the threshold is the right
    stand-in: for a ``dtype`` value x, ``x > t`` iff ``x > floor_dtype(t)``.
    """
    t = torch.tensor(iou_threshold, dtype=dtype, device=device)
    if t.double() > iou_threshold:
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype, device=device))
    return t


def _resolve_greedy(suppresses: torch.Tensor) -> torch.Tensor:
    """Greedy NMS on a precomputed ``(M, M)`` upper-triangular bool overlap matrix.

    Returns the ``(M,)`` bool mask with ``keep[i] = not any(keep[j] and suppresses[j, i] for j < i)``
    without a loop over boxes: every round decides all boxes it can at once. A box none of whose
    possible suppressors is kept or still undecided is kept; a box with a kept suppressor is
    dropped. The first undecided box is always decided, so this ends; in practice after a few
    rounds, since most suppression chains are short.
    """
    # Matrix-vector products count blockers faster than materialising an [M, M] boolean "and".
    suppresses_f = suppresses.to(torch.float32)
    undecided = torch.ones(suppresses.shape[0], dtype=torch.bool, device=suppresses.device)
    keep = torch.zeros_like(undecided)
    while True:
        maybe_kept = (keep | undecided).to(torch.float32)
        newly_kept = undecided & ((maybe_kept @ suppresses_f) == 0)
        keep |= newly_kept
        dropped = undecided & ((keep.to(torch.float32) @ suppresses_f) > 0)
        undecided &= ~(newly_kept | dropped)
        if not bool(undecided.any()):
            return keep


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy non-maximum suppression, written by hand, with exactly ``torchvision.ops.nms``'s result.

    Repeatedly keep the highest-scoring remaining box and drop every remaining box whose IoU with
    it is **strictly greater** than ``iou_threshold``. IoU uses plain areas ``(x2-x1)*(y2-y1)``.
    Ties in score keep their input order (stable sort), as torchvision does.

    How it is vectorised: boxes are visited in score order in blocks of ``_NMS_BLOCK_SIZE``.
    A block is first tested against all boxes kept so far (one ``[block, kept]`` IoU matrix).
    The survivors are resolved among themselves with the block's upper-triangular overlap matrix
    ``S``: ``keep[i] = not any(keep[j] and S[j, i] for j < i)`` is iterated as a whole vector until
    it stops changing. The greedy answer is the only fixed point of that update (``keep[i]`` is
    determined by earlier entries alone), so the iteration ends exactly at the greedy result,
    usually after a few rounds.

    Args:
        boxes: ``(N, 4)`` float XYXY boxes.
        scores: ``(N,)`` scores.
        iou_threshold: suppress boxes with IoU strictly above this, in ``[0, 1]``.

    Returns:
        ``(K,)`` ``torch.long`` indices into ``boxes`` of the kept boxes, by decreasing score, on
        ``boxes.device``.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"nms: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"nms: iou_threshold must be in [0, 1], got {iou_threshold}")
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    if not boxes.is_floating_point():
        boxes = boxes.float()

    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    sorted_areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    threshold = _float_threshold(float(iou_threshold), sorted_boxes.dtype, sorted_boxes.device)

    kept_positions = []  # positions (into the sorted order) of kept boxes, per block
    kept_boxes = sorted_boxes[:0]
    kept_areas = sorted_areas[:0]
    num_boxes = sorted_boxes.shape[0]
    for start in range(0, num_boxes, _NMS_BLOCK_SIZE):
        block_boxes = sorted_boxes[start:start + _NMS_BLOCK_SIZE]
        block_areas = sorted_areas[start:start + _NMS_BLOCK_SIZE]
        positions = torch.arange(start, start + block_boxes.shape[0], device=boxes.device)

        # 1) Suppression by boxes kept in earlier blocks.
        if kept_boxes.shape[0] > 0:
            alive = ~_iou_exceeds(kept_boxes, kept_areas, block_boxes, block_areas, threshold).any(dim=0)
            block_boxes, block_areas, positions = block_boxes[alive], block_areas[alive], positions[alive]
        if block_boxes.shape[0] == 0:
            continue

        # 2) Greedy resolution inside the block. suppresses[j, i]: box j (earlier) would drop box i.
        suppresses = _iou_exceeds(block_boxes, block_areas, block_boxes, block_areas, threshold).triu_(1)
        keep = _resolve_greedy(suppresses)

        kept_positions.append(positions[keep])
        kept_boxes = torch.cat([kept_boxes, block_boxes[keep]])
        kept_areas = torch.cat([kept_areas, block_areas[keep]])

    return order[torch.cat(kept_positions)]


def class_spec_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor,
    iou_threshold: float = 0.5,
) -> torch.Tensor:
    """Class-specific NMS: boxes of different classes never suppress each other.

    Each box is shifted by ``class_id * (span + 1)``, where ``span`` is the extent of all
    coordinates, so boxes of different classes cannot overlap; then one :func:`nms` call runs.
    (The usual ``class_id * (boxes.max() + 1)`` offset is only safe for non-negative
    coordinates; the span is safe for any.)

    Args:
        boxes: ``(N, 4)`` XYXY boxes.
        scores: ``(N,)`` scores.
        class_ids: ``(N,)`` integer class ids.
        iou_threshold: as in :func:`nms`.

    Returns:
        ``(K,)`` ``torch.long`` indices of kept boxes, by decreasing score, on ``boxes.device``.
    """
    if class_ids.shape != boxes.shape[:1]:
        raise ValueError(
            f"class_spec_nms: class_ids must have shape ({boxes.shape[0]},), got {tuple(class_ids.shape)}"
        )
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    span = boxes.max() - boxes.min()
    offsets = class_ids.to(boxes) * (span + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
