"""Tests of eecs598.tools.model_report: FLOP and parameter counts against hand formulas and torchvision, the
report rows and table, and the command line."""
import json

import pytest
import torch
import torchvision
from torch import nn

from conftest import make_fcos

from eecs598.recipes import DATASETS
from eecs598.tools import model_report


def conv_flops(h, w, c_in, c_out, k=3, groups=1, batch=1):
    """2 FLOPs per multiply-add: every output value needs (c_in / groups) * k * k of them."""
    return 2 * batch * h * w * c_out * (c_in // groups) * k * k


def test_count_flops_of_plain_and_grouped_convolutions():
    x = torch.randn(2, 3, 16, 16)
    assert model_report.count_flops(nn.Conv2d(3, 8, 3, padding=1), x) == conv_flops(16, 16, 3, 8, batch=2) == 221184
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    assert model_report.count_flops(grouped, torch.randn(1, 8, 8, 8)) == conv_flops(8, 8, 8, 8, groups=4) == 18432


def test_fcos_parameters_and_flops_match_hand_counts():
    c, s, k, size = 16, (16, 8), 5, 64  # FPN width, stem widths, classes, input
    model = make_fcos(num_classes=k, fpn_channels=c, stem_channels=s).eval()
    spec = model_report.ModelSpec(name="tiny", backbone="regnet_x_400mf", preset="tiny", build=lambda: model,
                                  image_size=size)
    counts = model_report.count_parameters(model, spec.parts)

    # Backbone: torchvision's RegNetX-400MF without its classifier (avgpool + fc).
    regnet = torchvision.models.regnet_x_400mf()
    assert counts["backbone"] == sum(p.numel() for p in regnet.parameters()) - (400 * 1000 + 1000)
    # FPN: 1x1 laterals from 64 / 160 / 400 channels, three 3x3 outputs, with biases.
    assert counts["FPN"] == sum(ci * c + c for ci in (64, 160, 400)) + 3 * (9 * c * c + c)
    # Head: two stems (c -> 16 -> 8), then 3x3 predictors for classes, boxes and centerness.
    stem = (9 * c * s[0] + s[0]) + (9 * s[0] * s[1] + s[1])
    assert counts["head"] == 2 * stem + sum(9 * s[1] * out + out for out in (k, 4, 1))
    assert counts["total"] == counts["backbone"] + counts["FPN"] + counts["head"]

    # FLOPs: the RegNet trunk counted on torchvision's own model, plus FPN and head by hand.
    images = torch.randn(1, 3, size, size)
    trunk = model_report.count_flops(lambda x: regnet.trunk_output(regnet.stem(x)), images)
    levels = [(size // 8, 64), (size // 16, 160), (size // 32, 400)]  # (side, backbone channels)
    fpn = sum(conv_flops(n, n, ci, c, k=1) + conv_flops(n, n, c, c) for n, ci in levels)
    head = sum(2 * (conv_flops(n, n, c, s[0]) + conv_flops(n, n, s[0], s[1]))
               + sum(conv_flops(n, n, s[1], out) for out in (k, 4, 1)) for n, _ in levels)
    assert model_report.count_flops(spec.network, model, images) == trunk + fpn + head


def test_report_rows_and_table():
    specs = [model_report.ModelSpec(name="tiny", backbone="regnet_x_400mf", preset="tiny",
                                    build=lambda: make_fcos(num_classes=3, fpn_channels=8, stem_channels=(8,)),
                                    image_size=64)]
    rows = model_report.model_report(specs, batch_size=2, warmup=0, repeats=1)
    row = rows[0]
    assert row["gflops"] > 0 and row["latency_ms"] > 0 and row["latency_e2e_ms"] > 0 and row["throughput"] > 0
    assert row["params"]["total"] == sum(p.numel() for p in specs[0].build().parameters())
    table = model_report.format_report(rows).splitlines()
    assert table[0].startswith("| backbone | preset | input | params, M (backbone / FPN / head) | GFLOPs |")
    assert table[0].endswith("throughput, img/s (batch 2) |") and len(table) == 3
    assert table[2].startswith("| regnet_x_400mf | tiny | 64 | ")
    with pytest.raises(ValueError, match="repeats"):
        model_report.median_seconds(lambda: None, repeats=0)


def test_specs_cover_every_preset_and_cli(tmp_path, capsys):

    specs = model_report.fcos_specs()
    assert [s.name for s in specs] == [f"FCOS {p}" for p in DATASETS]
    assert {s.image_size for s in specs} == {p["image_size"] for p in DATASETS.values()}
    with pytest.raises(ValueError, match="unknown preset"):
        model_report.fcos_specs(["coco"])
    threads = torch.get_num_threads()
    try:
        assert model_report.main(["--presets", "shapes", "--batch-size", "1", "--warmup", "0", "--repeats", "1",
                                  "--threads", "1", "--json", str(tmp_path / "report.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| regnet_x_400mf | shapes: FPN 64, head [64, 64], 5 classes | 128 |" in out
    with open(tmp_path / "report.json") as f:
        stored = json.load(f)
    assert stored["environment"]["torch"] == torch.__version__ and len(stored["rows"]) == 1
