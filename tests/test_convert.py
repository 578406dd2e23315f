"""``python -m eecs598.data.convert``: its --help, a chain of conversions that must come back to the start, what a
format cannot hold said (never dropped silently), and errors as one line with exit status 2."""
import os

import pytest
import torch

from eecs598.data.convert import main
from eecs598.data.formats import VOCXmlDetection, read_voc_xml
from formats_helpers import make_voc


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: python -m eecs598.data.convert")
    assert "--from {coco,voc-xml,yolo,course-json}" in out and "--to coco data/coco --split train" in out


def test_voc_xml_to_coco_to_yolo_and_coco_to_voc_xml(tmp_path, capsys):
    """VOC -> COCO -> VOC keeps boxes, classes and difficult flags; COCO -> YOLO says it left the difficult
    object out."""
    source = make_voc(str(tmp_path / "voc"), {"a": [("cat", (5, 6, 30, 40), 0), ("dog", (1, 1, 10, 10), 1)],
                                              "b": [("dog", (2, 3, 60, 47), 0)]})
    coco, back, yolo = (str(tmp_path / name) for name in ("coco", "back", "yolo"))
    classes = ["--classes", "cat,dog", "--split", "train"]
    assert main(["--from", "voc-xml", source, "--to", "coco", coco] + classes) == 0
    assert main(["--from", "coco", coco, "--to", "voc-xml", back, "--split", "train", "--link"]) == 0
    assert main(["--from", "coco", coco, "--to", "yolo", yolo, "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "train: 2 images, 3 objects (1 difficult) -> " in out
    assert "1 difficult objects left out (yolo has no difficult flag)" in out
    original, round_trip = (read_voc_xml(root, "train", ["cat", "dog"]) for root in (source, back))
    assert [[(o.name, o.box, o.difficult) for o in i.objects] for i in round_trip.images] == \
        [[(o.name, o.box, o.difficult) for o in i.objects] for i in original.images]
    assert os.path.islink(os.path.join(back, "JPEGImages", "a.jpg"))
    with open(os.path.join(yolo, "labels", "train", "a.txt")) as f:
        assert len(f.read().splitlines()) == 1
    a, b = VOCXmlDetection(source, "train", ["cat", "dog"]), VOCXmlDetection(back, "train", ["cat", "dog"])
    assert torch.equal(a[0][2], b[0][2]) and torch.equal(a.difficult_gt(a.image_paths[0]),
                                                          b.difficult_gt(b.image_paths[0]))


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["--from", "voc-xml", str(tmp_path), "--to", "coco", str(tmp_path / "out"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert: error: VOC split file ") and err.count("\n") == 1
    source = make_voc(str(tmp_path / "voc"), {"a": []})
    assert main(["--from", "voc-xml", source, "--to", "yolo", source, "--split", "train"]) == 2
    assert "is the source folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--from", "pascal", source, "--to", "coco", str(tmp_path / "x")])
