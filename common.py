"""Pieces shared by detectors: the RegNetX-400MF + FPN backbone, FPN location coordinates and NMS.

Conventions used throughout this package:

* Boxes are ``(x1, y1, x2, y2)`` in absolute pixels of the network's input image, with
  ``x1 <= x2`` and ``y1 <= y2`` (XYXY). A "GT row" is ``(x1, y1, x2, y2, class_id)``; padding or
  background rows are all ``-1``.
* FPN levels are named ``"p3"``, ``"p4"``, ``"p5"`` and have strides 8, 16 and 32 (options: ``"p2"``,
  stride 4, before them; ``"p6"``, ``"p7"``, strides 64 and 128, after them). Every dict of levels lists
  them from the finest to the coarsest.
* Locations and per-location predictions of one level are flattened **x-major**: row
  ``i = x_index * H + y_index`` (x is the slow index, y the fast one). Every function that flattens
  a ``(H, W)`` grid in this package uses this one order, so that row ``i`` of a location tensor and
  row ``i`` of a prediction tensor always describe the same pixel.
"""
import math
import numbers
import operator
import os
import socket
import warnings
from typing import Dict, Optional, Set, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models
from torchvision.models import feature_extraction

from eecs598.models.backbones import BACKBONES, build_classifier, efficientnet_lite0_weights_path, load_trunk_weights

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
# Backbones already warned about since that failure (another backbone's missing file still warns once).
_warned_backbones: Set[str] = set()


def imagenet_weights_path(backbone: str = "regnet_x_400mf") -> str:
    """Path where torchvision caches the ImageNet weights of ``backbone`` (and where we look offline).

    It is ``$TORCH_HOME/hub/checkpoints/<file name of the official URL>`` (``~/.cache/torch`` by
    default). Copying the weight file there makes ``DetectorBackboneWithFPN`` load it without
    network. ``backbone`` is a torchvision name of ``eecs598.models.backbones.BACKBONES`` (default: the
    assignment's RegNetX-400MF).
    """
    weights = BACKBONES[backbone].torchvision_weights if backbone in BACKBONES else None
    if weights is None:
        raise ValueError(f"imagenet_weights_path: {backbone!r} has no torchvision weights; choose one of "
                         f"{sorted(k for k, v in BACKBONES.items() if v.torchvision_weights is not None)}")
    file_name = os.path.basename(weights.url)
    return os.path.join(torch.hub.get_dir(), "checkpoints", file_name)


def _load_imagenet_state_dict(backbone: str = "regnet_x_400mf") -> Optional[Dict[str, torch.Tensor]]:
    """Return the ImageNet state dict of ``backbone``'s classifier, or ``None`` (after one warning)
    if offline. After one failed download no other is attempted in this process."""
    global _weights_unavailable_reason, _warned_backbones
    url, display_name = BACKBONES[backbone].torchvision_weights.url, BACKBONES[backbone].display_name
    path = imagenet_weights_path(backbone)
    if not os.path.isfile(path) and _weights_unavailable_reason is None:
        _warned_backbones = set()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old_timeout = socket.getdefaulttimeout()
        # urllib has no overall timeout of its own: without this a firewalled network hangs forever.
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            torch.hub.download_url_to_file(url, path, progress=True)
        except Exception as error:  # no network, DNS failure, timeout, HTTP error, full disk ...
            _weights_unavailable_reason = f"{type(error).__name__}: {error}"
        finally:
            socket.setdefaulttimeout(old_timeout)
    if not os.path.isfile(path) and _weights_unavailable_reason is not None and backbone not in _warned_backbones:
        _warned_backbones.add(backbone)
        warnings.warn(
            f"Could not download the ImageNet weights of {display_name} from "
            f"{url} ({_weights_unavailable_reason}). The backbone starts from "
            "RANDOM initialisation, so training needs far more iterations and a stable recipe "
            "(see a4_helper.FROM_SCRATCH). To use the pretrained weights offline, download that "
            f"file elsewhere and copy it to {path} (directory {os.path.dirname(path)}), or pass "
            "pretrained=False to skip this attempt (or backbone_weights=FILE to load a local file).",
            RuntimeWarning,
            stacklevel=5,
        )
    if not os.path.isfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(
            f"The {display_name} weight file {path} exists but cannot be read ({error}). "
            "Delete it so that it is downloaded again, or replace it with a good copy."
        ) from error


# ---------------------------------------------------------------------------------------------
# Backbone + FPN
# ---------------------------------------------------------------------------------------------


def _build_trunk(backbone: str, pretrained: bool, backbone_weights: Optional[str],
                 with_c2: bool = False) -> Tuple[nn.Module, Dict[str, int], str]:
    """The feature extractor of ``backbone`` (returning ``{"c3", "c4", "c5"}``, and ``"c2"`` (stride 4) too
    with ``with_c2``), its channels, and where its weights came from (``"file:<path>"``,
    ``"imagenet:<path>"`` or ``"random"``).

    Weights: ``backbone_weights`` (a local file) if given, else ImageNet weights if ``pretrained``
    (torchvision download with the offline fallback of :func:`_load_imagenet_state_dict`, or the
    Lite0 package), else random initialisation.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    spec = BACKBONES[backbone]
    classifier = build_classifier(backbone)
    source = "random"
    if backbone_weights is not None:
        load_trunk_weights(classifier, backbone, os.fspath(backbone_weights))
        source = f"file:{os.fspath(backbone_weights)}"
    elif pretrained and spec.torchvision_weights is not None:
        state_dict = _load_imagenet_state_dict(backbone)
        if state_dict is not None:
            classifier.load_state_dict(state_dict)
            source = f"imagenet:{imagenet_weights_path(backbone)}"
    elif pretrained:
        try:
            path = efficientnet_lite0_weights_path()
        except ImportError as error:
            warnings.warn(f"{error} The backbone starts from RANDOM initialisation; pass pretrained=False to "
                          "silence this.", RuntimeWarning, stacklevel=4)
        else:
            load_trunk_weights(classifier, backbone, path)
            source = f"imagenet:{path}"
    tracer_kwargs = {"leaf_modules": list(spec.leaf_modules)} if spec.leaf_modules else None
    return_nodes, channels = dict(spec.return_nodes), dict(spec.channels)
    if with_c2:  # an earlier node of the same graph: the trunk's parameters (and state-dict keys) are unchanged
        if spec.c2_node is None:
            raise ValueError(f"p2=True needs a stride-4 feature of the trunk, and backbone {backbone!r} has none; "
                             f"use p2=False or another backbone")
        return_nodes[spec.c2_node], channels["c2"] = "c2", spec.c2_channels
    trunk = feature_extraction.create_feature_extractor(classifier, return_nodes=return_nodes,
                                                        tracer_kwargs=tracer_kwargs)
    return trunk, channels, source


def _add_p6p7_params(fpn_params: nn.ModuleDict, out_channels: int) -> None:
    """Add the convs of P6 (of P5) and P7 (of relu(P6)): 3x3, stride 2, padding 1, ``out_channels`` wide."""
    fpn_params["output_p6"] = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
    fpn_params["output_p7"] = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)


def _p6p7_features(fpn_params: nn.ModuleDict, p6_input: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``{"p6": conv(p6_input), "p7": conv(relu(p6))}``; sizes ``ceil(size / 2)`` of their inputs."""
    p6 = fpn_params["output_p6"](p6_input)
    return {"p6": p6, "p7": fpn_params["output_p7"](F.relu(p6))}


def _add_p2_params(fpn_params: nn.ModuleDict, c2_channels: int, out_channels: int) -> None:
    """Add P2's lateral 1x1 conv (of c2) and its 3x3 output conv, as for the other levels."""
    fpn_params["lateral_c2"] = nn.Conv2d(c2_channels, out_channels, 1)
    fpn_params["output_p2"] = nn.Conv2d(out_channels, out_channels, 3, padding=1)


def _p2_feature(fpn_params: nn.ModuleDict, c2: torch.Tensor, merged_c3: torch.Tensor) -> torch.Tensor:
    """P2, one more step of the top-down pathway: ``output_p2(lateral_c2(c2) + upsample(merged_c3))``.

    Args:
        c2: ``(B, C2, ceil(H/4), ceil(W/4))`` trunk feature at stride 4.
        merged_c3: ``(B, out_channels, ceil(H/8), ceil(W/8))`` the merged map P3's output conv reads
            (lateral of c3 plus the upsampled coarser maps), upsampled (nearest) to c2's exact size.

    Returns:
        ``(B, out_channels, ceil(H/4), ceil(W/4))``.
    """
    lateral = fpn_params["lateral_c2"](c2)
    merged_c2 = lateral + F.interpolate(merged_c3, size=lateral.shape[-2:], mode="nearest")
    return fpn_params["output_p2"](merged_c2)


class DetectorBackboneWithFPN(nn.Module):
    """RegNetX-400MF backbone with a three-level (P3-P5) Feature Pyramid Network.

    The backbone gives ``c3``, ``c4``, ``c5`` with 64, 160 and 400 channels at strides 8, 16 and 32.
    The FPN turns them into ``p3``, ``p4``, ``p5`` with ``out_channels`` channels each: a 1x1
    lateral conv per level, a top-down pathway that adds the nearest-upsampled coarser merged map,
    and a 3x3 output conv per level (Lin et al., 2017). There is no P6/P7, unlike the FCOS paper.

    Options (keyword-only, defaults = the above): another trunk (``backbone=``, see
    ``eecs598.models.backbones``), a local weight file (``backbone_weights=``), P6/P7 (``p6p7=True``) and
    P2 (``p2=True``, stride 4, for small objects).
    """

    def __init__(self, out_channels: int, pretrained: bool = True, *, backbone: str = "regnet_x_400mf",
                 backbone_weights: Optional[str] = None, p6p7: bool = False, p2: bool = False):
        """
        Args:
            out_channels: channels of every FPN level.
            pretrained: load ImageNet weights into the backbone. Without network the weights are
                looked up at :func:`imagenet_weights_path`; if absent, a warning is raised once
                and the backbone keeps its random initialisation. ``False`` skips the attempt.
            backbone: trunk name, one of ``eecs598.models.backbones.BACKBONES`` (``regnet_x_400mf``,
                ``regnet_x_800mf``, ``regnet_x_1_6gf``, ``resnet18``, ``resnet34``, ``resnet50``,
                ``mobilenet_v3_large``, ``efficientnet_lite0``). ``efficientnet_lite0`` takes its
                ImageNet weights from the optional package of the ``lite0`` extra.
            backbone_weights: path of a local state dict of the trunk's classifier (e.g. saved with
                ``torch.save(torchvision.models.resnet50(weights=...).state_dict(), FILE)``); it
                replaces ``pretrained`` (no download). Missing or unexpected keys raise an error
                naming the file and the keys.
            p6p7: add P6 and P7 (strides 64 and 128), as in the FCOS paper: P6 = stride-2 3x3 conv of
                P5 (FCOS's choice; RetinaNet's is C5), P7 = stride-2 3x3 conv of ``relu(P6)``.
            p2: add P2 (stride 4) before P3, for small objects: the trunk's stride-4 feature ``c2`` (RegNet's
                first stage; every trunk of ``BACKBONES`` has one, see its ``c2_node``) gets a lateral 1x1
                conv, the top-down pathway continues one step (``lateral_c2 + upsample(merged c3 map)``)
                and a 3x3 output conv gives ``p2`` (Lin et al.'s FPN goes down to P2 too). The default
                model's convs, keys and outputs are unchanged; the new weights are ``lateral_c2`` and
                ``output_p2``. P2 has 4x the locations of P3, so the shared head runs on ~4x as many
                locations (P2-P5: 1 + 1/4 + 1/16 + 1/64 of H*W/16, against P3-P5's 0.33 of it).

        Attributes (besides the contract's): ``backbone_name``; ``weights_source``: where the trunk's
        weights came from, ``"imagenet:<file>"``, ``"file:<backbone_weights>"`` or ``"random"`` (e.g.
        offline), so that callers can tell whether the ImageNet start really happened.
        """
        super().__init__()
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        self.out_channels = out_channels
        self.backbone_name = backbone
        self.p6p7 = bool(p6p7)
        self.p2 = bool(p2)

        # Only the trunk is needed: its stride 8/16/32 outputs are c3/c4/c5 (block2/3/4 of RegNet).
        self.backbone, backbone_channels, self.weights_source = _build_trunk(backbone, pretrained, backbone_weights,
                                                                             with_c2=self.p2)

        self.fpn_params = nn.ModuleDict()
        ### BEGIN SOLUTION
        for level, c_name in (("p3", "c3"), ("p4", "c4"), ("p5", "c5")):
            self.fpn_params[f"lateral_{c_name}"] = nn.Conv2d(backbone_channels[c_name], out_channels, 1)
        for level in ("p3", "p4", "p5"):
            self.fpn_params[f"output_{level}"] = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        ### END SOLUTION
        if p6p7:
            _add_p6p7_params(self.fpn_params, out_channels)
        if self.p2:
            _add_p2_params(self.fpn_params, backbone_channels["c2"], out_channels)

    @property
    def fpn_strides(self) -> Dict[str, int]:
        """Total stride of each FPN level with respect to the input image, finest level first."""
        strides = {"p2": 4} if self.p2 else {}
        strides.update({"p3": 8, "p4": 16, "p5": 32})
        if self.p6p7:
            strides.update({"p6": 64, "p7": 128})
        return strides

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            images: ``(B, 3, H, W)`` ImageNet-normalised images.

        Returns:
            Dict with keys ``"p3"``, ``"p4"``, ``"p5"`` (in this order) of shapes
            ``(B, out_channels, ceil(H/8), ceil(W/8))`` etc. (exactly ``H/8`` when divisible); with
            ``p2=True`` ``"p2"`` ``(B, out_channels, ceil(H/4), ceil(W/4))`` comes first, with ``p6p7``
            ``"p6"``, ``"p7"`` last.
        """
        backbone_feats = self.backbone(images)  # {"c3", "c4", "c5"} (and "c2" with p2)
        fpn_feats = {"p3": None, "p4": None, "p5": None}
        if self.p2:  # optional P2 (not part of the assignment): the finest level, so the first key
            fpn_feats = {"p2": None, **fpn_feats}
        ### BEGIN SOLUTION
        lateral = {c: self.fpn_params[f"lateral_{c}"](backbone_feats[c]) for c in ("c3", "c4", "c5")}

        # Top-down: upsample to the finer map's exact size (not a fixed factor of 2), so that
        # inputs whose sides are not multiples of 32 work too.
        merged_c5 = lateral["c5"]
        merged_c4 = lateral["c4"] + F.interpolate(merged_c5, size=lateral["c4"].shape[-2:], mode="nearest")
        merged_c3 = lateral["c3"] + F.interpolate(merged_c4, size=lateral["c3"].shape[-2:], mode="nearest")

        fpn_feats["p3"] = self.fpn_params["output_p3"](merged_c3)
        fpn_feats["p4"] = self.fpn_params["output_p4"](merged_c4)
        fpn_feats["p5"] = self.fpn_params["output_p5"](merged_c5)
        if self.p2:  # optional P2: the top-down pathway one step further (not part of the assignment)
            fpn_feats["p2"] = _p2_feature(self.fpn_params, backbone_feats["c2"], merged_c3)
        ### END SOLUTION
        unset = [level for level, feature in fpn_feats.items() if feature is None]
        if unset:
            raise RuntimeError(f"DetectorBackboneWithFPN.forward left the levels {unset} unset: compute every "
                               f"level of {list(fpn_feats)} (p2 continues the top-down pathway below p3)")
        if self.p6p7:  # optional P6/P7 (not part of the assignment)
            fpn_feats.update(_p6p7_features(self.fpn_params, fpn_feats["p5"]))
        return fpn_feats


# ---------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------


def _check_location_inputs(shape_per_fpn_level, strides_per_fpn_level, dtype) -> None:
    """Refuse what ``get_fpn_location_coords`` would turn into wrong locations (a stride of 0 puts every
    location at 0, NaN everywhere, a fractional size is truncated) or an obscure error."""
    where = "get_fpn_location_coords"
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{where}: dtype must be a floating-point torch dtype (centres sit at half strides, "
                        f"e.g. 4.0), got {dtype!r}")
    for level, shape in shape_per_fpn_level.items():
        if level not in strides_per_fpn_level:
            raise ValueError(f"{where}: level {level!r} has no stride in strides_per_fpn_level "
                             f"(levels with strides: {sorted(strides_per_fpn_level)})")
        stride = strides_per_fpn_level[level]
        is_number = isinstance(stride, numbers.Real) or (isinstance(stride, torch.Tensor) and stride.numel() == 1)
        if isinstance(stride, bool) or not is_number or not (math.isfinite(float(stride)) and float(stride) > 0):
            raise ValueError(f"{where}: the stride of level {level!r} must be a finite number > 0 (pixels per "
                             f"feature location), got {stride!r}")
        try:
            sizes = [operator.index(size) for size in tuple(shape)[-2:]]
        except TypeError:  # not a sequence, or a size that is not an integer (2.5, a float tensor)
            sizes = []
        if len(sizes) < 2 or min(sizes) < 0:
            raise ValueError(f"{where}: the shape of level {level!r} must end in (H, W), ints >= 0 (e.g. a "
                             f"feature map's .shape), got {shape!r}")


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

    Raises:
        ValueError / TypeError: a level without a stride, a stride that is not a finite number > 0, a
            feature size that is not an int >= 0, or a ``dtype`` that is not floating point (centres sit at
            half strides, e.g. 4.0, and an integer dtype cannot hold them).
    """
    _check_location_inputs(shape_per_fpn_level, strides_per_fpn_level, dtype)
    ### BEGIN SOLUTION
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
    ### END SOLUTION


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression
# ---------------------------------------------------------------------------------------------
### BEGIN SOLUTION
#
# Greedy NMS is sequential: whether a box survives depends on which better boxes survived. It is
# vectorised by blocks. Boxes are visited in score order, a block at a time (every box in a block
# has survived all boxes kept before it):
#   1) the block is resolved among itself from its small [block, block] overlap matrix;
#   2) the boxes it keeps delete every later box they overlap, with one [kept, rest] IoU tile.
# So each box is compared with the kept boxes that come before it, until one of them deletes it:
# about the pairs torchvision's C++ loop visits, but a few dozen tensor ops per block instead of one
# scalar IoU at a time (~1-2 ns per pair in float32 against ~13 ns). Two choices matter for speed:
# "is any IoU above the threshold" is taken as a float max-reduction then one compare per column
# (a bool [kept, rest] matrix and .any() cost ~10x more per element), and the ops run on one thread
# (see _OneCpuThread). Timings against torchvision: benchmarks/bench_nms.py.

# A block holds `_NMS_TILE_SIZE // (boxes left)` boxes, clamped to [min, max]: while many boxes are
# left, small blocks keep each [kept, rest] tile near 2**18 elements (1 MiB of float32, cache-sized);
# when few are left, larger blocks mean fewer Python iterations. Above ~256 the intra-block
# resolution (a [block, block] matrix-vector product per round) starts to dominate.
_NMS_MIN_BLOCK_SIZE = 64
_NMS_MAX_BLOCK_SIZE = 256
_NMS_TILE_SIZE = 2 ** 18


def _pairwise_iou(columns_a: torch.Tensor, columns_b: torch.Tensor) -> torch.Tensor:
    """``(A, B)`` IoU between two sets of boxes stored as columns: ``(5, A)`` and ``(5, B)``
    tensors with rows ``x1, y1, x2, y2, area``.

    Uses the same float operations as ``torchvision.ops.nms`` (``inter / (area_a + area_b -
    inter)``), so that an IoU exactly at the threshold is decided the same way. Why this layout:
    boxes run along the last (contiguous) dimension, so every op works on long contiguous rows;
    x and y share one op on a ``(2, A, B)`` tensor; in-place ops reuse that one buffer. A pair of
    zero-area boxes gives 0 / 0 = NaN, which compares False against a threshold, as in torchvision.
    """
    a, b = columns_a[:, :, None], columns_b[:, None, :]  # [5, A, 1], [5, 1, B]
    wh = torch.minimum(a[2:4], b[2:4])  # [2, A, B]: min(x2), min(y2)
    wh -= torch.maximum(a[:2], b[:2])  # minus max(x1), max(y1)
    wh.clamp_(min=0)
    inter = wh[0].mul_(wh[1])  # [A, B]: width * height
    union = torch.add(a[4], b[4], out=wh[1])  # heights no longer needed
    union -= inter
    return inter.div_(union)


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
    without a loop over boxes: the whole vector is updated at once, ``keep <- (keep @ S == 0)``,
    starting from "all kept", until it stops changing. ``keep[i]`` depends only on earlier entries,
    so after round t the first t entries are final, and the greedy answer is the only vector the
    update leaves unchanged: the loop ends exactly at it. In practice after a few rounds, since
    suppression chains are short; the slowest case, a chain of boxes each overlapping only the
    next, settles one box per round. (A round is four tensor ops, a matrix-vector product counts
    the kept suppressors of every box.)
    """
    suppresses_f = suppresses.to(torch.float32)
    keep = torch.ones(suppresses.shape[0], dtype=torch.float32, device=suppresses.device)
    while True:
        new_keep = ((keep @ suppresses_f) == 0).to(torch.float32)
        if torch.equal(new_keep, keep):
            return keep.bool()
        keep = new_keep


def _greedy_nms_in_order(columns: torch.Tensor, class_ids: Optional[torch.Tensor],
                         threshold: torch.Tensor) -> torch.Tensor:
    """Greedy NMS over boxes already sorted in the order it must visit them (see the section
    comment above for the method).

    Args:
        columns: ``(5, N)`` rows ``x1, y1, x2, y2, area`` of the boxes, in visiting order.
        class_ids: ``None`` (boxes of one class), or ``(N,)`` non-decreasing class ids: boxes of
            different classes never suppress each other; within a class, the visiting order.
        threshold: from :func:`_float_threshold`.

    Returns:
        ``(K,)`` increasing positions (in ``0 .. N-1``) of the kept boxes.
    """
    positions = torch.arange(columns.shape[1], device=columns.device)
    kept_positions = []
    while positions.shape[0] > 0:
        # Size the block by the boxes its kept boxes will be tested against: the rest of the class.
        num_left = positions.shape[0]
        if class_ids is not None:
            num_left = int(torch.searchsorted(class_ids, class_ids[:1], right=True))
        block_size = min(max(_NMS_TILE_SIZE // num_left, _NMS_MIN_BLOCK_SIZE), _NMS_MAX_BLOCK_SIZE)
        block, columns = columns[:, :block_size], columns[:, block_size:]
        block_positions, positions = positions[:block_size], positions[block_size:]

        # 1) Resolve the block among itself: suppresses[j, i] = earlier box j would drop box i.
        suppresses = _pairwise_iou(block, block) > threshold
        if class_ids is not None:
            block_classes, class_ids = class_ids[:block_size], class_ids[block_size:]
            suppresses &= block_classes[:, None] == block_classes[None, :]
        keep = _resolve_greedy(suppresses.triu_(1))
        kept_positions.append(block_positions[keep])

        # 2) The kept boxes delete the later boxes they overlap. With classes, only the block's
        # last class has later boxes (the first `num_targets`): keep only that class's boxes on
        # both sides. One of them is always kept (its first box in the block cannot be suppressed).
        num_targets = positions.shape[0]
        if class_ids is not None:
            keep &= block_classes == block_classes[-1]
            num_targets = int(torch.searchsorted(class_ids, block_classes[-1:], right=True))
        if num_targets == 0:
            continue
        max_iou = _pairwise_iou(block[:, keep], columns[:, :num_targets]).amax(dim=0)  # [num_targets]
        # `not >` rather than `<=`: a NaN (0 / 0 from two zero-area boxes) must not suppress.
        survives = ~(max_iou > threshold)
        if num_targets < positions.shape[0]:
            survives = torch.cat([survives, survives.new_ones(positions.shape[0] - num_targets)])
        survivor_index = survives.nonzero().squeeze(1)
        columns, positions = columns[:, survivor_index], positions[survivor_index]
        if class_ids is not None:
            class_ids = class_ids[survivor_index]
    return torch.cat(kept_positions)
### END SOLUTION


def _check_nms_inputs(function_name: str, boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float):
    for name, value in (("boxes", boxes), ("scores", scores)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{function_name}: {name} must be a torch.Tensor, got {type(value).__name__}; "
                            f"convert it with torch.as_tensor({name})")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{function_name}: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"{function_name}: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}"
        )
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"{function_name}: iou_threshold must be in [0, 1], got {iou_threshold}")


def _nms_columns(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` boxes -> ``(5, N)`` float rows ``x1, y1, x2, y2, area`` (areas as torchvision's)."""
    if not boxes.is_floating_point():
        boxes = boxes.float()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return torch.cat([boxes.T, areas[None]])


class _OneCpuThread:
    """Context manager: run torch CPU ops on one thread inside, restore the thread count after.

    Why: the NMS tensors are a few MiB at most, so splitting each op across cores saves little,
    while every parallel op ends in a barrier that waits for the slowest thread. On a machine whose
    cores are busy (a training run, other processes) a descheduled thread stalls that barrier for a
    whole scheduler time slice: we measured NMS 10-100x slower with 2 threads on 2 busy cores than
    with 1. torchvision's NMS kernel is single-threaded too. No effect on CUDA tensors.
    """

    def __init__(self, device: torch.device):
        self.active = device.type == "cpu"
        self.previous = 1

    def __enter__(self):
        if self.active:
            self.previous = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc_info):
        if self.active:
            torch.set_num_threads(self.previous)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy non-maximum suppression, written by hand, with exactly ``torchvision.ops.nms``'s result.

    Repeatedly keep the highest-scoring remaining box and drop every remaining box whose IoU with
    it is **strictly greater** than ``iou_threshold``. IoU uses plain areas ``(x2-x1)*(y2-y1)``.
    Ties in score keep their input order (stable sort), as torchvision does.

    How it is vectorised (details in the comment above ``_NMS_MIN_BLOCK_SIZE``): boxes are taken
    in score order, a block of 64-256 at a time. The block is resolved among itself: with its
    upper-triangular overlap matrix ``S``, ``keep[i] = not any(keep[j] and S[j, i] for j < i)`` is
    solved a round at a time, every round deciding all boxes whose better overlapping boxes are
    decided. Then the block's kept boxes delete, in one IoU tile, every later box they overlap, so
    the next block again holds only boxes that survived all boxes kept so far. Slowest case: a long
    chain of boxes each overlapping only its neighbours, which costs one round per two boxes.

    Args:
        boxes: ``(N, 4)`` float XYXY boxes with ``x1 <= x2``, ``y1 <= y2``.
        scores: ``(N,)`` scores.
        iou_threshold: suppress boxes with IoU strictly above this, in ``[0, 1]``.

    Returns:
        ``(K,)`` ``torch.long`` indices into ``boxes`` of the kept boxes, by decreasing score, on
        ``boxes.device``.
    """
    ### BEGIN SOLUTION
    _check_nms_inputs("nms", boxes, scores, iou_threshold)
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    with torch.no_grad(), _OneCpuThread(boxes.device):
        order = torch.sort(scores, descending=True, stable=True).indices
        columns = _nms_columns(boxes[order])
        threshold = _float_threshold(float(iou_threshold), columns.dtype, columns.device)
        return order[_greedy_nms_in_order(columns, None, threshold)]
    ### END SOLUTION


def class_spec_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    class_ids: torch.Tensor,
    iou_threshold: float = 0.5,
) -> torch.Tensor:
    """Class-specific NMS: boxes of different classes never suppress each other.

    The result is greedy :func:`nms` run on each class separately, merged by decreasing score
    (ties in input order): what ``torchvision.ops.batched_nms`` returns. Rather than the usual
    offset trick (shift each class's boxes by ``class_id * (boxes.max() + 1)`` so that classes
    cannot overlap, then one :func:`nms`), the boxes are visited class by class, so a box is only
    ever compared with boxes of its own class: with C classes that is about C times fewer IoUs, and
    the IoUs are computed on the unshifted coordinates (shifting by a large offset rounds them).

    Args:
        boxes: ``(N, 4)`` XYXY boxes.
        scores: ``(N,)`` scores.
        class_ids: ``(N,)`` integer (or bool) class ids.
        iou_threshold: as in :func:`nms`.

    Returns:
        ``(K,)`` ``torch.long`` indices of kept boxes, by decreasing score, on ``boxes.device``.
    """
    _check_nms_inputs("class_spec_nms", boxes, scores, iou_threshold)
    if not isinstance(class_ids, torch.Tensor):
        raise TypeError(f"class_spec_nms: class_ids must be a torch.Tensor, got {type(class_ids).__name__}; "
                        f"convert it with torch.as_tensor(class_ids)")
    if class_ids.dtype == torch.bool:  # two classes, as torchvision's batched_nms accepts
        class_ids = class_ids.long()
    if class_ids.shape != boxes.shape[:1]:
        raise ValueError(
            f"class_spec_nms: class_ids must have shape ({boxes.shape[0]},), got {tuple(class_ids.shape)}"
        )
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    ### BEGIN SOLUTION
    with torch.no_grad(), _OneCpuThread(boxes.device):
        order = torch.sort(scores, descending=True, stable=True).indices  # rank -> box index
        # Visit class by class; within a class by score (a stable sort keeps the score order).
        sorted_class_ids, by_class = torch.sort(class_ids[order], stable=True)
        columns = _nms_columns(boxes[order[by_class]])
        threshold = _float_threshold(float(iou_threshold), columns.dtype, columns.device)
        kept = _greedy_nms_in_order(columns, sorted_class_ids, threshold)
        # Back to score order: sorting the kept score ranks gives decreasing score, ties by index.
        return order[by_class[kept].sort().values]
    ### RELEASE
    # kept = []
    # for class_id in torch.unique(class_ids):
    #     members = torch.nonzero(class_ids == class_id).squeeze(1)
    #     kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    # # Decreasing score over all classes, ties by index: stable-sort the index-sorted list by score.
    # kept = torch.cat(kept).sort().values
    # return kept[torch.sort(scores[kept], descending=True, stable=True).indices]
    ### END SOLUTION
