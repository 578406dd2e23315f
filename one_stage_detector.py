"""FCOS: a fully convolutional one-stage object detector (Tian et al., ICCV 2019).

Reads top to bottom: the prediction head, target assignment (which GT box each location must
predict), box encoding, centerness, and the ``FCOS`` module that ties them into training losses
and inference.

Symbols used in comments and shapes:
    B = images in the batch            M = GT boxes per image (padded with -1 rows)
    N = locations of one FPN level     C = object classes (background is not a class)
    H, W = feature map height, width   "x-major" = rows flattened with x slow, y fast (see common.py)

Boxes are ``(x1, y1, x2, y2)`` in input-image pixels; a GT row is ``(x1, y1, x2, y2, class_id)``
and background/padding rows are all ``-1``.
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from common import DetectorBackboneWithFPN, class_spec_nms, get_fpn_location_coords
from eecs598.models.options import check_model_options

TensorDict = Dict[str, torch.Tensor]

__all__ = [
    "TensorDict",
    "hello_one_stage_detector",
    "FCOSPredictionNetwork",
    "fcos_match_locations_to_gt",
    "fcos_get_deltas_from_locations",
    "fcos_apply_deltas_to_locations",
    "fcos_make_centerness_targets",
    "FCOS",
]


def hello_one_stage_detector():
    print("Hello from one_stage_detector.py!")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


### BEGIN SOLUTION
def _flatten_x_major(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, W * H, C)`` with row ``x * H + y``: the order of
    ``common.get_fpn_location_coords``. (A plain ``(B, H, W, C)`` flatten would pair each
    prediction with the transposed location.)"""
    batch_size, channels = feature_map.shape[:2]
    return feature_map.permute(0, 3, 2, 1).reshape(batch_size, -1, channels)
### END SOLUTION


def _is_background(rows: torch.Tensor) -> torch.Tensor:
    """``(..., 4|5)`` box rows -> ``(...)`` bool, True where the four coordinates are all -1."""
    return (rows[..., :4] == -1).all(dim=-1)


def _stem_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm for a head stem: 32 groups as in the FCOS paper (8 channels each at its width 256),
    or fewer so that every group has at least 4 channels: ``gcd(32, channels // 4)`` groups (16 for
    64 channels, 8 for 32). A group of one channel would be instance norm, which fails on the 1x1
    maps of small images at P7 and normalises each channel's contrast away."""
    return nn.GroupNorm(max(math.gcd(32, channels // 4), 1), channels)


def _inside_center_region(x: torch.Tensor, y: torch.Tensor, gt_coords: torch.Tensor, stride: int,
                          radius: float) -> torch.Tensor:
    """Centre sampling (FCOS "center sampling", from FCOS-plus): is each location within
    ``radius * stride`` of each box centre in both x and y (an L-inf ball, strictly)?

    Combined with the "strictly inside the box" test of the matcher, this is "strictly inside the
    square of half-side ``radius * stride`` around the box centre, clipped to the box".

    Args:
        x, y: ``(1, N, 1)`` location coordinates.
        gt_coords: ``(B, M, 4)`` boxes.
        stride: the level's stride; radius: in strides (1.5 in FCOS).

    Returns:
        ``(B, N, M)`` bool.
    """
    center_x = (gt_coords[:, None, :, 0] + gt_coords[:, None, :, 2]) / 2  # [B, 1, M]
    center_y = (gt_coords[:, None, :, 1] + gt_coords[:, None, :, 3]) / 2
    half_side = radius * stride
    return ((x - center_x).abs() < half_side) & ((y - center_y).abs() < half_side)


def _giou_box_loss(pred_deltas: torch.Tensor, gt_deltas: torch.Tensor, is_foreground: torch.Tensor) -> torch.Tensor:
    """Per-location GIoU loss (``torchvision.ops.generalized_box_iou_loss``) of the decoded boxes.

    Both boxes are decoded around the same location with the same stride, so they are decoded at the
    origin with stride 1, ``(-l, -t, r, b)``: GIoU is invariant to translating and scaling both boxes,
    so this equals the loss of the boxes in image pixels. Predicted deltas are clamped at 0 as in
    :func:`fcos_apply_deltas_to_locations` (the box must contain its location). Background rows
    are replaced by a valid dummy box before the loss and then zeroed.

    Args:
        pred_deltas, gt_deltas: ``(B, N, 4)`` stride-normalised ``(l, t, r, b)``.
        is_foreground: ``(B, N)`` bool.

    Returns:
        ``(B, N, 1)`` loss in ``[0, 2]`` for foreground rows, 0 for background.
    """
    fg = is_foreground[..., None]
    gt_deltas = torch.where(fg, gt_deltas, torch.ones_like(gt_deltas))
    # Clamp at 0 as the decoding does, but let the gradient through unchanged (straight-through): with a
    # plain clamp, a coordinate predicted negative gets no gradient, and a head whose deltas all went
    # negative (seen on Shapes from a random trunk) predicts degenerate boxes forever.
    pred_deltas = pred_deltas + (pred_deltas.clamp(min=0) - pred_deltas).detach()
    signs = pred_deltas.new_tensor([-1.0, -1.0, 1.0, 1.0])
    loss = generalized_box_iou_loss(pred_deltas * signs, gt_deltas * signs, reduction="none")
    return (loss * is_foreground)[..., None]


# ---------------------------------------------------------------------------------------------
# Prediction head
# ---------------------------------------------------------------------------------------------


def _checked_stem_channels(stem_channels) -> List[int]:
    """``stem_channels`` as a list, or a ``ValueError`` saying what it must be (an int such as 16 is the
    usual slip: one conv of 16 channels is ``[16]``)."""
    hint = ""
    if isinstance(stem_channels, int) and not isinstance(stem_channels, bool):
        hint = f": an int, not a list; for one conv of {stem_channels} channels pass [{stem_channels}]"
    elif isinstance(stem_channels, (str, bytes)) or not hasattr(stem_channels, "__iter__"):
        hint = f": a {type(stem_channels).__name__}, not a list"
    if hint:
        raise ValueError(f"stem_channels must be a list of positive ints (the width of each stem conv), got "
                         f"{stem_channels!r}{hint}")
    stem_channels = list(stem_channels)
    bad = [c for c in stem_channels if not isinstance(c, int) or isinstance(c, bool) or c < 1]
    if bad:
        raise ValueError(f"stem_channels must be a list of positive ints (the width of each stem conv), got "
                         f"{stem_channels} (bad: {bad})")
    return stem_channels


class FCOSPredictionNetwork(nn.Module):
    """FCOS head shared by all FPN levels: two conv stems, then class / box / centerness layers.

    ``stem_cls`` feeds the class logits; ``stem_box`` feeds both the box deltas and the
    centerness logit (the FCOS paper's later, better variant predicts centerness from the box
    branch). Every conv is 3x3, stride 1, padding 1, so each output location stays aligned with its
    input location.
    """

    def __init__(self, num_classes: int, in_channels: int, stem_channels: List[int], *, norm: Optional[str] = None):
        """
        Args:
            num_classes: number of object classes C (no background class).
            in_channels: channels of the FPN features.
            stem_channels: output channels of each conv3x3 + ReLU of both stems, e.g. ``[128, 128]``.
            norm: ``None`` (the assignment's head) or ``"group"``: conv3x3 + GroupNorm + ReLU in the
                stems (see :func:`_stem_norm`), as in the FCOS paper; it keeps the head's activations
                at a fixed scale whatever the FPN features do.
        """
        super().__init__()
        stem_channels = _checked_stem_channels(stem_channels)
        if norm not in (None, "group"):
            raise ValueError(f"FCOSPredictionNetwork: norm must be None or 'group', got {norm!r}")

        ### BEGIN SOLUTION
        def make_stem() -> nn.Sequential:
            layers = []
            channels = in_channels
            for out_channels in stem_channels:
                layers += [nn.Conv2d(channels, out_channels, 3, stride=1, padding=1), nn.ReLU()]
                if norm is not None:
                    layers.insert(-1, _stem_norm(out_channels))
                channels = out_channels
            return nn.Sequential(*layers)

        self.stem_cls = make_stem()
        self.stem_box = make_stem()
        head_in = stem_channels[-1] if len(stem_channels) > 0 else in_channels
        self.pred_cls = nn.Conv2d(head_in, num_classes, 3, stride=1, padding=1)
        self.pred_box = nn.Conv2d(head_in, 4, 3, stride=1, padding=1)
        self.pred_ctr = nn.Conv2d(head_in, 1, 3, stride=1, padding=1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)
        # Start every class probability at p = 0.01: with ~99% background locations, a 0.5 start
        # makes the first focal-loss steps huge and unstable (RetinaNet's prior initialisation).
        prior = 0.01
        nn.init.constant_(self.pred_cls.bias, -math.log((1 - prior) / prior))
        ### END SOLUTION

    def forward(self, feats_per_fpn_level: TensorDict) -> List[TensorDict]:
        """
        Args:
            feats_per_fpn_level: level name -> ``(B, in_channels, H, W)`` features.

        Returns:
            ``[class_logits, boxreg_deltas, centerness_logits]``: dicts with the input's keys and
            tensors of shape ``(B, H*W, C)``, ``(B, H*W, 4)``, ``(B, H*W, 1)``, rows in x-major
            order (matching ``get_fpn_location_coords``). Raw outputs, no sigmoid.
        """
        ### BEGIN SOLUTION
        class_logits, boxreg_deltas, centerness_logits = {}, {}, {}
        for level_name, feature in feats_per_fpn_level.items():
            cls_feature = self.stem_cls(feature)
            box_feature = self.stem_box(feature)
            class_logits[level_name] = _flatten_x_major(self.pred_cls(cls_feature))
            boxreg_deltas[level_name] = _flatten_x_major(self.pred_box(box_feature))
            centerness_logits[level_name] = _flatten_x_major(self.pred_ctr(box_feature))
        return [class_logits, boxreg_deltas, centerness_logits]
        ### END SOLUTION


# ---------------------------------------------------------------------------------------------
# Target assignment
# ---------------------------------------------------------------------------------------------


def _level_size_ranges(strides_per_fpn_level: Dict[str, int]) -> Dict[str, Tuple[float, float]]:
    """Level -> open interval for the largest location-to-edge distance it is responsible for:
    ``(4 * stride, 8 * stride)``, with the first level open to 0 and the last to infinity, so that
    every object size has exactly one level (p3 < 64 < p4 < 128 < p5 for strides 8/16/32). With P6/P7
    (strides 64/128) this gives the FCOS paper's ranges: p5 (128, 256), p6 (256, 512), p7 (512, inf).

    With P2 (stride 4, first) the same rule gives p2 (0, 32), p3 (32, 64), p4 (64, 128), p5 (128, inf):
    P2 takes the locations whose largest distance is under 32 px (boxes up to ~64 px across, seen from
    their centre), P3 keeps 32-64, the coarser levels keep theirs. Why this choice rather than a new
    table: every level still regresses distances of 4 to 8 of its strides (the delta targets of
    :func:`fcos_get_deltas_from_locations` keep one scale across levels, the reason the paper ties the
    ranges to the strides), and a model with P2 differs from the course's only below 32 px, where a
    stride-8 grid has at most a few locations inside an object. Order of the dict = order of the levels."""
    names = list(strides_per_fpn_level.keys())
    ranges = {}
    for i, name in enumerate(names):
        stride = strides_per_fpn_level[name]
        lower = 0.0 if i == 0 else 4.0 * stride
        upper = math.inf if i == len(names) - 1 else 8.0 * stride
        ranges[name] = (lower, upper)
    return ranges


@torch.no_grad()
def match_locations_to_gt_batched(
    locations_per_fpn_level: TensorDict,
    strides_per_fpn_level: Dict[str, int],
    gt_boxes: torch.Tensor,
    *,
    center_sampling_radius: Optional[float] = None,
) -> TensorDict:
    """Batched :func:`fcos_match_locations_to_gt`: ``gt_boxes`` is ``(B, M, 5)`` and each returned
    tensor is ``(B, N, 5)``. Vectorised over images, locations and boxes."""
    batch_size, num_boxes = gt_boxes.shape[:2]
    size_ranges = _level_size_ranges(strides_per_fpn_level)
    gt_coords = gt_boxes[..., :4]  # [B, M, 4]
    is_real_box = gt_boxes[..., 4] != -1  # [B, M]; -1 padding rows never match
    gt_areas = (gt_coords[..., 2] - gt_coords[..., 0]) * (gt_coords[..., 3] - gt_coords[..., 1])  # [B, M]

    matched_gt_boxes = {}
    for level_name, centers in locations_per_fpn_level.items():
        num_locations = centers.shape[0]
        if num_boxes == 0:
            matched_gt_boxes[level_name] = gt_boxes.new_full((batch_size, num_locations, 5), -1)
            continue
        centers = centers.to(gt_boxes.dtype)
        x = centers[None, :, None, 0]  # [1, N, 1]
        y = centers[None, :, None, 1]
        # Distances from each location to the four edges of each box: [B, N, M, 4] as (l, t, r, b).
        edge_distances = torch.stack(
            [
                x - gt_coords[:, None, :, 0],
                y - gt_coords[:, None, :, 1],
                gt_coords[:, None, :, 2] - x,
                gt_coords[:, None, :, 3] - y,
            ],
            dim=-1,
        )
        lower, upper = size_ranges[level_name]
        largest_distance = edge_distances.max(dim=-1).values  # [B, N, M]
        is_candidate = (
            (edge_distances.min(dim=-1).values > 0)  # strictly inside the box
            & (largest_distance > lower)
            & (largest_distance < upper)
            & is_real_box[:, None, :]
        )
        if center_sampling_radius is not None:
            is_candidate &= _inside_center_region(x, y, gt_coords, strides_per_fpn_level[level_name],
                                                  center_sampling_radius)
        # Among candidate boxes the smallest one wins (the paper's rule for ambiguous locations).
        candidate_areas = torch.where(is_candidate, gt_areas[:, None, :], torch.full_like(largest_distance, math.inf))
        smallest_area, box_index = candidate_areas.min(dim=-1)  # [B, N]
        matched = torch.gather(gt_boxes, 1, box_index[..., None].expand(-1, -1, 5))  # [B, N, 5]
        # masked_fill rather than boolean indexing: no device-to-host sync (the engine's sync-free steps)
        matched = matched.masked_fill(torch.isinf(smallest_area)[..., None], -1)
        matched_gt_boxes[level_name] = matched
    return matched_gt_boxes


@torch.no_grad()
def fcos_match_locations_to_gt(
    locations_per_fpn_level: TensorDict,
    strides_per_fpn_level: Dict[str, int],
    gt_boxes: torch.Tensor,
    *,
    center_sampling_radius: Optional[float] = None,
) -> TensorDict:
    """Assign each location of each FPN level one GT box of one image (or background).

    A location matches box m when it lies strictly inside the box (all of its distances
    ``l, t, r, b`` to the box edges are > 0) and the largest of the four distances lies strictly
    inside the level's range: ``(0, 64)`` for p3, ``(64, 128)`` for p4, ``(128, inf)`` for p5
    (``(4 * stride, 8 * stride)`` in general, open-ended at the first and last level; with a P2 level
    first, p2 ``(0, 32)`` and p3 ``(32, 64)``, see :func:`_level_size_ranges`). When several
    boxes qualify, the one with the smallest area wins. Rows of ``gt_boxes`` with class -1 are
    padding and never match.

    Args:
        locations_per_fpn_level: level -> ``(N, 2)`` ``(x, y)`` location centres.
        strides_per_fpn_level: level -> stride.
        gt_boxes: ``(M, 5)`` GT rows ``(x1, y1, x2, y2, class_id)`` of ONE image.
        center_sampling_radius: ``None`` (the rule above) or a radius r in strides (FCOS uses 1.5):
            a location must in addition lie strictly within ``r * stride`` of the box centre in x
            and in y, i.e. inside that square clipped to the box (:func:`_inside_center_region`).
            Only locations near the centre, whose features see the object, are then positives.

    Returns:
        level -> ``(N, 5)`` matched GT row per location (same dtype as ``gt_boxes``); ``-1`` rows for
        background.
    """
    matched = match_locations_to_gt_batched(locations_per_fpn_level, strides_per_fpn_level, gt_boxes[None],
                                            center_sampling_radius=center_sampling_radius)
    return {level_name: boxes[0] for level_name, boxes in matched.items()}


# ---------------------------------------------------------------------------------------------
# Box encoding and centerness
# ---------------------------------------------------------------------------------------------


def fcos_get_deltas_from_locations(
    locations: torch.Tensor, gt_boxes: torch.Tensor, stride: int
) -> torch.Tensor:
    """Encode boxes as FCOS deltas: distances from each location to the box's four edges.

    Args:
        locations: ``(N, 2)`` ``(xc, yc)`` location centres.
        gt_boxes: ``(N, 4)`` or ``(N, 5)`` boxes matched to those locations (a 5th column is
            ignored); all-``-1`` rows are background. Leading batch dims broadcast: ``(B, N, 5)``.
        stride: the level's stride; deltas are divided by it so every level predicts similar
            magnitudes.

    Returns:
        ``(N, 4)`` deltas ``(xc - x1, yc - y1, x2 - xc, y2 - yc) / stride``; exactly ``-1`` for
        background rows.
    """
    ### BEGIN SOLUTION
    xc, yc = locations[..., 0], locations[..., 1]
    deltas = torch.stack(
        [xc - gt_boxes[..., 0], yc - gt_boxes[..., 1], gt_boxes[..., 2] - xc, gt_boxes[..., 3] - yc],
        dim=-1,
    ) / stride
    return torch.where(_is_background(gt_boxes)[..., None], torch.full_like(deltas, -1), deltas)
    ### END SOLUTION


def fcos_apply_deltas_to_locations(
    deltas: torch.Tensor, locations: torch.Tensor, stride: int
) -> torch.Tensor:
    """Decode FCOS deltas back into boxes (inverse of :func:`fcos_get_deltas_from_locations`).

    Negative deltas cannot describe a box that contains its location, so they are clamped to 0
    first; background deltas ``(-1, -1, -1, -1)`` thus give the degenerate box ``(xc, yc, xc, yc)``.

    Args:
        deltas: ``(N, 4)`` ``(l, t, r, b)`` divided by ``stride``.
        locations: ``(N, 2)`` ``(xc, yc)`` location centres.
        stride: the level's stride.

    Returns:
        ``(N, 4)`` XYXY boxes ``(xc - l, yc - t, xc + r, yc + b) * stride``-scaled.
    """
    ### BEGIN SOLUTION
    distances = deltas.clamp(min=0) * stride
    xc, yc = locations[..., 0], locations[..., 1]
    return torch.stack(
        [xc - distances[..., 0], yc - distances[..., 1], xc + distances[..., 2], yc + distances[..., 3]],
        dim=-1,
    )
    ### END SOLUTION


def fcos_make_centerness_targets(deltas: torch.Tensor) -> torch.Tensor:
    """Centerness of each location within its matched box: 1 at the centre, -> 0 at an edge.

    ``sqrt(min(l, r) * min(t, b) / (max(l, r) * max(t, b)))``; scale-free, so stride-normalised
    deltas give the same value as pixel distances. Used to down-weight low-quality boxes predicted
    far from an object's centre.

    Args:
        deltas: ``(N, 4)`` ``(l, t, r, b)``; background rows are all ``-1``.

    Returns:
        ``(N,)`` centerness in ``[0, 1]``; ``-1`` for background rows.
    """
    ### BEGIN SOLUTION
    left, top, right, bottom = deltas.unbind(dim=-1)
    numerator = torch.minimum(left, right) * torch.minimum(top, bottom)
    # A location on a box edge has max(...) = 0 only if the box is degenerate; avoid 0/0 = NaN.
    denominator = (torch.maximum(left, right) * torch.maximum(top, bottom)).clamp(min=torch.finfo(deltas.dtype).tiny)
    centerness = torch.sqrt((numerator / denominator).clamp(min=0))
    return torch.where(_is_background(deltas), torch.full_like(centerness, -1), centerness)
    ### END SOLUTION


# ---------------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------------


class FCOS(nn.Module):
    """FCOS detector: RegNetX-400MF + FPN backbone, shared prediction head, focal/L1/BCE losses.

    Training (``model.train()``): ``model(images, gt_boxes)`` returns the three losses.
    Inference (``model.eval()``): ``model(images)`` returns ``(boxes, classes, scores)``.
    """

    def __init__(self, num_classes: int, fpn_channels: int, stem_channels: List[int], pretrained: bool = True, *,
                 backbone: str = "regnet_x_400mf", backbone_weights: Optional[str] = None, p6p7: bool = False,
                 head_norm: Optional[str] = None, box_loss: str = "l1",
                 center_sampling_radius: Optional[float] = None, p2: bool = False):
        """
        Args:
            num_classes: number of object classes C.
            fpn_channels: channels of every FPN level.
            stem_channels: channels of the head's stem convs, e.g. ``[128, 128]``.
            pretrained: try to load ImageNet weights into the backbone (see
                ``common.DetectorBackboneWithFPN``; offline it warns once and uses random init).

        Keyword-only options (the defaults are the assignment's detector, exactly):
            backbone, backbone_weights: the trunk and a local weight file for it (see
                ``common.DetectorBackboneWithFPN`` and ``eecs598.models.backbones``).
            p6p7: add P6/P7 (strides 64/128; size ranges p5 (128, 256), p6 (256, 512), p7 (512, inf)).
            head_norm: ``"group"``: GroupNorm in the head stems (see ``FCOSPredictionNetwork``).
            box_loss: ``"l1"`` (``0.25 * L1`` of the stride-normalised deltas, the assignment's) or
                ``"giou"``: ``torchvision.ops.generalized_box_iou_loss`` of the decoded boxes (weight 1
                per foreground location, as torchvision's FCOS; it lies in [0, 2]); same normaliser.
            center_sampling_radius: e.g. 1.5: positives only near box centres (see
                :func:`fcos_match_locations_to_gt`); ``None``: the assignment's rule.
            p2: add P2 (stride 4) for small objects (see ``common.DetectorBackboneWithFPN``); size ranges
                p2 (0, 32), p3 (32, 64), p4 and p5 unchanged (:func:`_level_size_ranges`). Locations,
                targets and predictions list the levels in one order, p2 first.
        """
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        check_model_options(backbone=backbone, backbone_weights=backbone_weights, p6p7=p6p7, head_norm=head_norm,
                            box_loss=box_loss, center_sampling_radius=center_sampling_radius, p2=p2)
        stem_channels = _checked_stem_channels(stem_channels)  # before the backbone is built (seconds)
        self.num_classes = num_classes
        self.box_loss = box_loss
        self.center_sampling_radius = None if center_sampling_radius is None else float(center_sampling_radius)
        self.backbone = DetectorBackboneWithFPN(out_channels=fpn_channels, pretrained=pretrained, backbone=backbone,
                                                backbone_weights=backbone_weights, p6p7=p6p7, p2=p2)
        self.pred_net = FCOSPredictionNetwork(num_classes, fpn_channels, list(stem_channels), norm=head_norm)
        # Foreground locations per image, as an EMA. The losses are sums over locations divided by
        # it: dividing by the current batch's count instead makes the loss scale jump with the
        # number of objects in a batch (and explode for a batch with almost none). 150 is a
        # typical count for VOC at 224 px, so the first iterations are already well scaled.
        self._normalizer = 150.0
        self._normalizer_anchor = 150.0  # the normaliser after the last batch with objects
        # Both become 0-dim float64 tensors on the training device at the first update, so that the
        # update needs no host sync; a number assigned from outside (e.g. a grader's 150.0) works too.
        # Set by a distributed training engine: sums a tensor over processes (see _update_normalizer).
        self.distributed_reduce = None
        # Checks of the input *values* (NaN, class ids, inverted boxes) need a device-to-host copy per
        # call; the engine's sync-free mode turns them off (its guard then catches what they would).
        self.check_input_values = True
        # Gradient accumulation (see begin_accumulation): None, or the summed (foreground count, images)
        # of the micro-batches of the current optimiser step.
        self._accumulated = None
        # Channels-last ("NHWC") weights: oneDNN's CPU convolutions (RegNet's grouped ones most of
        # all) run faster on NHWC data (benchmarks/bench_memory_format.py). .to(device/dtype) and
        # load_state_dict keep the layout; forward gives the input the layout of the weights, so
        # model.to(memory_format=torch.contiguous_format) (train_detector does it on CUDA) switches both.
        self.to(memory_format=torch.channels_last)

    # -- training state -------------------------------------------------------------------------

    #: Names of the losses ``forward`` returns in training mode (``train_detector`` checks
    #: ``loss_weights`` against them).
    loss_names = ("loss_cls", "loss_box", "loss_ctr")

    @property
    def loss_normalizer(self) -> float:
        """The EMA of foreground locations per image that divides the losses (starts at 150)."""
        return float(self._normalizer)

    def training_state(self) -> Dict[str, float]:
        """State besides ``state_dict()`` that training changes and a resume must restore."""
        return {"normalizer": float(self._normalizer), "normalizer_anchor": float(self._normalizer_anchor)}

    def load_training_state(self, state: Dict[str, float]) -> None:
        """Restore :meth:`training_state`."""
        value = float(state["normalizer"])
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"FCOS.load_training_state: the normaliser must be a finite number > 0, got {value}")
        self._normalizer, self._normalizer_anchor = value, float(state.get("normalizer_anchor", value))

    @property
    def memory_format(self) -> torch.memory_format:
        """Layout of the conv weights, which ``forward`` gives its input: ``torch.channels_last`` after
        ``__init__``, ``torch.contiguous_format`` after ``model.to(memory_format=torch.contiguous_format)``."""
        weight = next((p for p in self.backbone.parameters() if p.dim() == 4), None)
        if weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        return torch.contiguous_format

    def begin_accumulation(self) -> None:
        """Start the micro-batches of one optimiser step (gradient accumulation, ``train_detector``).

        Until :meth:`end_accumulation`, training forward passes divide their loss sums by the normaliser as
        it was before the step (times their own batch size) and add their foreground counts and image
        counts to a running sum instead of updating the EMA.
        """
        device = next(self.parameters()).device
        self._normalizer = torch.as_tensor(self._normalizer, dtype=torch.float64, device=device)
        self._accumulated = 0.0

    def end_accumulation(self, apply: bool = True) -> torch.Tensor:
        """End the micro-batches of a step: update the EMA once with their summed counts, as for one batch
        of all their images, and return ``old / new`` normaliser (0-dim float64).

        Each micro-batch ``i`` of ``b_i`` images returned ``S_i / (old * b_i)``; weighted by ``b_i / B``
        (``B = sum b_i``) and multiplied by the returned ratio, their sum is ``sum S_i / (new * B)``: the
        losses, and gradients, of one batch of ``B`` images. ``apply=False`` (a failed step) leaves the EMA
        as it was and returns 1.
        """
        accumulated, self._accumulated = getattr(self, "_accumulated", None), None
        if not apply or not isinstance(accumulated, torch.Tensor):
            return torch.ones((), dtype=torch.float64)
        old = torch.as_tensor(self._normalizer, dtype=torch.float64, device=accumulated.device)
        self._apply_normalizer_update(accumulated[0], accumulated[1])
        return old / self._normalizer

    def _update_normalizer(self, is_foreground: torch.Tensor) -> None:
        """The course's EMA ``0.9 * old + 0.1 * num_fg / B``, summed over processes when distributed.

        Batches without any foreground location follow the same EMA but cannot pull it below half of
        its value after the last batch with objects: a long run of object-free batches would
        otherwise drive it towards 0 and multiply the next normal batch's losses by ~50. Computed on
        the device (no host sync). Between :meth:`begin_accumulation` and :meth:`end_accumulation` the
        counts are summed instead.
        """
        count = is_foreground.sum().to(torch.float64)
        batch_size = count.new_tensor(float(is_foreground.shape[0]))
        if self.distributed_reduce is not None:
            count, batch_size = self.distributed_reduce(torch.stack([count, batch_size]))
        if getattr(self, "_accumulated", None) is not None:
            self._accumulated = self._accumulated + torch.stack([count, batch_size]).detach()
            return
        self._apply_normalizer_update(count, batch_size)

    def _apply_normalizer_update(self, count: torch.Tensor, batch_size: torch.Tensor) -> None:
        """One EMA step with ``count`` foreground locations over ``batch_size`` images (0-dim float64)."""
        old = torch.as_tensor(self._normalizer, dtype=torch.float64, device=count.device)
        anchor = torch.as_tensor(self._normalizer_anchor, dtype=torch.float64, device=count.device)
        updated = 0.9 * old + 0.1 * count / batch_size
        self._normalizer = torch.where(count > 0, updated, torch.maximum(updated, 0.5 * anchor))
        self._normalizer_anchor = torch.where(count > 0, updated, anchor)

    # -- input checks ---------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"FCOS.forward: images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"FCOS.forward: images must have shape (B, 3, H, W), got {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError("FCOS.forward: images is an empty batch (B = 0); pass at least one image")
        if not images.is_floating_point():
            raise TypeError(
                f"FCOS.forward: images must be floating point (normalised), got dtype {images.dtype}"
            )
        weight = next(self.parameters(), None)  # the backbone's first conv
        weight_dtype = weight.dtype if weight is not None else images.dtype
        if images.dtype != weight_dtype and not torch.is_autocast_enabled(images.device.type):
            raise TypeError(
                f"FCOS.forward: images have dtype {images.dtype} but the model's weights are {weight_dtype}; "
                f"convert one of them: images.to({weight_dtype}) or model.to({images.dtype})"
            )
        if getattr(self, "check_input_values", True) and not bool(torch.isfinite(images).all()):
            raise ValueError("FCOS.forward: images contain NaN or inf values")
        height, width = images.shape[-2:]
        if self.training and images.shape[0] * math.ceil(height / 32) * math.ceil(width / 32) < 2:
            # Otherwise BatchNorm fails deep inside torch ("Expected more than 1 value per channel").
            raise ValueError(
                "FCOS.forward: in training mode BatchNorm needs more than one value per channel at "
                f"stride 32 (B * ceil(H/32) * ceil(W/32) >= 2), got images of shape {tuple(images.shape)}; "
                "use a batch of >= 2 images or images larger than 32 px"
            )

    def _check_gt_boxes(self, images: torch.Tensor, gt_boxes: Optional[torch.Tensor]) -> None:
        if gt_boxes is None:
            raise ValueError(
                "FCOS.forward: gt_boxes is required in training mode (a (B, M, 5) tensor padded "
                "with -1 rows); call model.eval() for inference"
            )
        if not isinstance(gt_boxes, torch.Tensor):
            raise TypeError(f"FCOS.forward: gt_boxes must be a torch.Tensor, got {type(gt_boxes).__name__}")
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 5 or gt_boxes.shape[0] != images.shape[0]:
            raise ValueError(
                f"FCOS.forward: gt_boxes must have shape (B={images.shape[0]}, M, 5) with rows "
                f"(x1, y1, x2, y2, class_id), got {tuple(gt_boxes.shape)}"
            )
        if not getattr(self, "check_input_values", True):
            return
        if not bool(torch.isfinite(gt_boxes).all()):
            raise ValueError("FCOS.forward: gt_boxes contain NaN or inf values")
        classes = gt_boxes[..., 4]
        real = classes != -1
        bad_class = real & ((classes < 0) | (classes >= self.num_classes) | (classes != classes.round()))
        if bool(bad_class.any()):
            value = classes[bad_class][0].item()
            raise ValueError(
                f"FCOS.forward: gt_boxes class ids must be integers in [0, {self.num_classes - 1}] "
                f"(or -1 for padding rows), got {value}"
            )
        inverted = real & ((gt_boxes[..., 2] < gt_boxes[..., 0]) | (gt_boxes[..., 3] < gt_boxes[..., 1]))
        if bool(inverted.any()):
            row = gt_boxes[inverted][0].tolist()
            raise ValueError(f"FCOS.forward: gt_boxes must be XYXY with x2 >= x1 and y2 >= y1, got row {row}")

    # -- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        gt_boxes: Optional[torch.Tensor] = None,
        test_score_thresh: Optional[float] = None,
        test_nms_thresh: Optional[float] = None,
    ):
        """
        Args:
            images: ``(B, 3, H, W)`` ImageNet-normalised images.
            gt_boxes: training only: ``(B, M, 5)`` GT rows ``(x1, y1, x2, y2, class_id)`` in
                input pixels, padded with ``-1`` rows.
            test_score_thresh, test_nms_thresh: inference only; ``None`` means 0.3 and 0.5.

        Returns:
            Training: ``{"loss_cls", "loss_box", "loss_ctr"}`` scalar tensors.
            Inference: see :meth:`inference`.
        """
        self._check_images(images)
        if self.training:
            if isinstance(gt_boxes, torch.Tensor) and not gt_boxes.is_floating_point():
                gt_boxes = gt_boxes.to(images.dtype)  # integer pixel boxes are fine; -1 stays -1
            self._check_gt_boxes(images, gt_boxes)

        ### BEGIN SOLUTION
        # Input in the weights' layout (NHWC by default, see __init__): one copy, every conv output follows.
        feats_per_fpn_level = self.backbone(images.contiguous(memory_format=self.memory_format))
        pred_cls_logits, pred_boxreg_deltas, pred_ctr_logits = self.pred_net(feats_per_fpn_level)
        strides_per_fpn_level = self.backbone.fpn_strides
        locations_per_fpn_level = get_fpn_location_coords(
            {name: feature.shape for name, feature in feats_per_fpn_level.items()},
            strides_per_fpn_level,
            dtype=images.dtype,
            device=images.device,
        )
        ### END SOLUTION

        if not self.training:
            return self.inference(
                images, locations_per_fpn_level, pred_cls_logits, pred_boxreg_deltas, pred_ctr_logits,
                test_score_thresh=test_score_thresh, test_nms_thresh=test_nms_thresh,
            )

        ### BEGIN SOLUTION
        # Targets: matched GT rows, deltas and centerness per location, concatenated over levels
        # in the same order as the predictions.
        matched_per_level = match_locations_to_gt_batched(locations_per_fpn_level, strides_per_fpn_level, gt_boxes,
                                                          center_sampling_radius=self.center_sampling_radius)
        matched_gt_boxes = torch.cat([matched_per_level[name] for name in locations_per_fpn_level], dim=1)  # [B, N, 5]
        matched_gt_deltas = torch.cat(
            [
                fcos_get_deltas_from_locations(locations_per_fpn_level[name], matched_per_level[name],
                                               strides_per_fpn_level[name])
                for name in locations_per_fpn_level
            ],
            dim=1,
        )  # [B, N, 4]
        pred_cls_logits = torch.cat(list(pred_cls_logits.values()), dim=1)  # [B, N, C]
        pred_boxreg_deltas = torch.cat(list(pred_boxreg_deltas.values()), dim=1)  # [B, N, 4]
        pred_ctr_logits = torch.cat(list(pred_ctr_logits.values()), dim=1)  # [B, N, 1]
        if torch.is_autocast_enabled(images.device.type):
            # Mixed precision: the losses are sums over thousands of locations; take them in float32.
            pred_cls_logits, pred_boxreg_deltas, pred_ctr_logits = (
                t.float() for t in (pred_cls_logits, pred_boxreg_deltas, pred_ctr_logits))
            matched_gt_deltas = matched_gt_deltas.float()

        batch_size = images.shape[0]
        is_foreground = matched_gt_boxes[..., 4] != -1  # [B, N]
        self._update_normalizer(is_foreground)

        # Classification: one-hot targets, all-zero rows for background.
        gt_classes = matched_gt_boxes[..., 4].long()
        cls_targets = F.one_hot(gt_classes.clamp(min=0), self.num_classes).to(pred_cls_logits.dtype)
        cls_targets = cls_targets * is_foreground[..., None]
        loss_cls = sigmoid_focal_loss(pred_cls_logits, cls_targets, alpha=0.25, gamma=2.0, reduction="none")

        # Box regression (0.25 * L1 on stride-normalised deltas) and centerness: foreground only.
        if self.box_loss == "giou":
            loss_box = _giou_box_loss(pred_boxreg_deltas, matched_gt_deltas, is_foreground)
        else:
            loss_box = 0.25 * F.l1_loss(pred_boxreg_deltas, matched_gt_deltas, reduction="none")
            loss_box = loss_box * is_foreground[..., None]
        ctr_targets = fcos_make_centerness_targets(matched_gt_deltas.reshape(-1, 4)).reshape(batch_size, -1)
        loss_ctr = F.binary_cross_entropy_with_logits(
            pred_ctr_logits.squeeze(-1), ctr_targets.clamp(min=0), reduction="none"
        )
        loss_ctr = loss_ctr * is_foreground

        normalizer = (self._normalizer * batch_size).to(pred_cls_logits.dtype)  # float64 EMA -> the losses' dtype
        return {
            "loss_cls": loss_cls.sum() / normalizer,
            "loss_box": loss_box.sum() / normalizer,
            "loss_ctr": loss_ctr.sum() / normalizer,
        }
        ### END SOLUTION

    @torch.no_grad()
    def inference(
        self,
        images: torch.Tensor,
        locations_per_fpn_level: TensorDict,
        pred_cls_logits: TensorDict,
        pred_boxreg_deltas: TensorDict,
        pred_ctr_logits: TensorDict,
        test_score_thresh: Optional[float] = 0.3,
        test_nms_thresh: Optional[float] = 0.5,
    ) -> Union[Tuple[torch.Tensor, torch.Tensor, torch.Tensor], Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]]:
        """Turn head outputs into final detections.

        Per location: score = ``sqrt(sigmoid(class_logit) * sigmoid(centerness_logit))`` for each
        class, keep the best class, keep scores ``> test_score_thresh``, decode the box with the
        level's stride, clip it to the image, then class-specific NMS over all levels.

        Returns:
            For a batch of one image (the usual case): ``(pred_boxes (K, 4), pred_classes (K,)
            long, pred_scores (K,))`` sorted by decreasing score. For ``B > 1`` each of the three
            is a list with one such tensor per image.
        """
        score_thresh = 0.3 if test_score_thresh is None else float(test_score_thresh)
        nms_thresh = 0.5 if test_nms_thresh is None else float(test_nms_thresh)
        for name, value in (("test_score_thresh", score_thresh), ("test_nms_thresh", nms_thresh)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FCOS.inference: {name} must be in [0, 1], got {value}")
        ### BEGIN SOLUTION
        height, width = images.shape[-2:]
        strides = self.backbone.fpn_strides

        per_image = []
        for image_index in range(images.shape[0]):
            boxes_all, classes_all, scores_all = [], [], []
            for level_name, locations in locations_per_fpn_level.items():
                class_probs = pred_cls_logits[level_name][image_index].sigmoid()  # [N, C]
                ctr_probs = pred_ctr_logits[level_name][image_index].sigmoid()  # [N, 1]
                level_scores, level_classes = torch.sqrt(class_probs * ctr_probs).max(dim=1)  # [N]
                keep = level_scores > score_thresh
                level_boxes = fcos_apply_deltas_to_locations(
                    pred_boxreg_deltas[level_name][image_index][keep], locations[keep], strides[level_name]
                )
                level_boxes[:, 0::2] = level_boxes[:, 0::2].clamp(min=0, max=width)
                level_boxes[:, 1::2] = level_boxes[:, 1::2].clamp(min=0, max=height)
                boxes_all.append(level_boxes)
                classes_all.append(level_classes[keep])
                scores_all.append(level_scores[keep])
            boxes, classes, scores = torch.cat(boxes_all), torch.cat(classes_all), torch.cat(scores_all)
            keep = class_spec_nms(boxes, scores, classes, iou_threshold=nms_thresh)
            per_image.append((boxes[keep], classes[keep], scores[keep]))

        if len(per_image) == 1:
            return per_image[0]
        boxes_list, classes_list, scores_list = (list(items) for items in zip(*per_image))
        return boxes_list, classes_list, scores_list
        ### END SOLUTION
