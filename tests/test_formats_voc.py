"""The VOC XML reader (eecs598.data.formats.voc_xml) against the course's JSON on the real VOC sample, its errors on
bad files, the difficult objects' way into the mAP files, and a VOC-XML training run from the command line.

The course JSON (voc07_{train,val}.json) is the course staff's own conversion of the same XML files, so it is an
independent reference: what the reader gives must equal it exactly.
"""
import os
import xml.etree.ElementTree as ET

import pytest
import torch
from torch.utils.data import DataLoader

from eecs598.data.datasets import VOC_CLASSES, VOC2007DetectionTiny
from eecs598.data.formats import AnnotationError, VOCXmlDetection, read_voc_xml
from eecs598.evaluation.inference import inference_with_detector
from formats_helpers import make_voc, voc_xml

SPLITS = ("train", "val")


def voc_root(sample_dir):
    return os.path.join(sample_dir, "VOCdevkit", "VOC2007")


@pytest.mark.parametrize("split", SPLITS)
def test_the_reader_gives_the_course_json_boxes_classes_and_images(voc_sample_dir, split):
    ours = VOCXmlDetection(voc_root(voc_sample_dir), split)
    course = VOC2007DetectionTiny(voc_sample_dir, split)
    assert ours.image_paths == course.image_paths and ours.idx_to_class == course.idx_to_class
    for index in range(len(course)):
        path, image, gt = ours[index]
        course_path, course_image, course_gt = course[index]
        assert path == course_path and torch.equal(gt, course_gt), path
        if index < 3:
            assert torch.equal(image, course_image)


def _xml_objects(path):
    """``[(name, [x1, y1, x2, y2] floats, difficult)]`` of a VOC XML file, read with ElementTree."""
    return [(o.findtext("name"), [float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
             o.findtext("difficult") == "1") for o in ET.parse(path).getroot().findall("object")]


def test_the_course_json_is_the_xml_without_its_difficult_objects(voc_sample_dir):
    """What the course staff's conversion did (documented in docs/data.md): every non-difficult object in XML
    order with its coordinates exactly as written (1-based, no shift, no crop: the crop happens when an image is
    loaded), and no difficult object at all."""
    import json

    kept = dropped = 0
    for split in SPLITS:
        with open(os.path.join(voc_sample_dir, f"voc07_{split}.json")) as f:
            entries = json.load(f)
        for image_path, objects in entries:
            image_id = os.path.splitext(os.path.basename(image_path))[0]
            xml = _xml_objects(os.path.join(voc_root(voc_sample_dir), "Annotations", image_id + ".xml"))
            assert [(o["name"], o["xyxy"]) for o in objects] == [(n, b) for n, b, d in xml if not d], image_id
            kept, dropped = kept + len(objects), dropped + sum(d for _, _, d in xml)
    assert (kept, dropped) == (153, 48)


def test_difficult_objects_are_kept_apart_and_written_flagged_into_the_map_files(voc_sample_dir, tmp_path):
    """The mAP files of the VOC-XML dataset are the course's files plus one ``difficult`` line per difficult
    object that the crop leaves (training rows never hold them)."""
    class NoDetections(torch.nn.Module):
        num_classes = 20

        def forward(self, images, test_score_thresh=None, test_nms_thresh=None):
            return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0)

    ours = VOCXmlDetection(voc_root(voc_sample_dir), "val")
    course = VOC2007DetectionTiny(voc_sample_dir, "val")
    assert ours.num_difficult == 34
    for dataset, folder in ((ours, "ours"), (course, "course")):
        inference_with_detector(NoDetections(), DataLoader(dataset, batch_size=1), dataset.idx_to_class, 0.05, 0.5,
                                output_dir=str(tmp_path / folder), progress=False)
    flagged = 0
    by_id = {os.path.splitext(os.path.basename(path))[0]: path for path in ours.image_paths}
    for name in sorted(os.listdir(tmp_path / "course" / "ground-truth")):
        ours_lines = (tmp_path / "ours" / "ground-truth" / name).read_text().splitlines()
        course_lines = (tmp_path / "course" / "ground-truth" / name).read_text().splitlines()
        hard = [line for line in ours_lines if line.endswith(" difficult")]
        assert [line for line in ours_lines if line not in hard] == course_lines
        assert len(hard) == len(ours.difficult_gt(by_id[name[:-len(".txt")]]))
        flagged += len(hard)
    assert flagged == 32  # 34 difficult objects, 2 of them emptied by the 224 px centre crop


# --------------------------------------------------------------------------------------------------
# Bad input: each error names the file and the line
# --------------------------------------------------------------------------------------------------

GOOD = {"a": [("cat", (5, 6, 30, 40), 0), ("dog", (1, 1, 10, 10), 1)]}


def test_a_small_folder_reads_with_its_difficult_object(tmp_path):
    found = read_voc_xml(make_voc(str(tmp_path), GOOD), "train", ["cat", "dog"])
    objects = found.images[0].objects
    assert [(o.name, o.box, o.difficult) for o in objects] == [("cat", (5, 6, 30, 40), False),
                                                                ("dog", (1, 1, 10, 10), True)]
    assert found.images[0].size == (64, 48) and found.num_difficult() == 1


def _rewrite(root, text, image_id="a"):
    with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
        f.write(text)


@pytest.mark.parametrize("case, expected", [
    ("unknown class", r"a\.xml:8: unknown class 'horse'"),
    ("box outside", r"a\.xml:10: box \[70\.0, 5\.0, 80\.0, 9\.0\] lies outside the 64x48 image"),
    ("not a number", r"a\.xml:11: <xmin> must be a number, got 'five'"),
    ("malformed", r"a\.xml:\d+:\d+: malformed XML \(mismatched tag\)"),
    ("entity", r"a\.xml:1: DTD and entity declarations are refused"),
    ("no bndbox", r"a\.xml:7: <object> has no <bndbox>"),
])
def test_bad_annotations_name_the_file_and_line(tmp_path, case, expected):
    root = make_voc(str(tmp_path), GOOD)
    text = {"unknown class": voc_xml([("horse", (1, 1, 5, 5), 0)]),
            "box outside": voc_xml([("cat", (70, 5, 80, 9), 0)]),
            "not a number": voc_xml([("cat", ("five", 5, 8, 9), 0)]),
            "malformed": voc_xml([("cat", (1, 1, 5, 5), 0)]).replace("</ymax>", "</ymin>"),
            "entity": '<!DOCTYPE a [<!ENTITY x "xx">]>\n' + voc_xml([]),
            "no bndbox": "<annotation>\n<size><width>64</width><height>48</height></size>\n\n\n\n\n"
                         "<object><name>cat</name></object>\n</annotation>\n"}[case]
    _rewrite(root, text)
    with pytest.raises(AnnotationError, match=expected):
        read_voc_xml(root, "train", ["cat", "dog"])


def test_a_missing_image_an_annotation_or_a_split_is_named(tmp_path):
    root = make_voc(str(tmp_path), {"a": GOOD["a"], "b": []})
    os.remove(os.path.join(root, "JPEGImages", "b.jpg"))
    with pytest.raises(AnnotationError, match=r"b\.xml: image .*JPEGImages/b\.jpg not found"):
        read_voc_xml(root, "train", ["cat", "dog"])
    os.remove(os.path.join(root, "Annotations", "b.xml"))
    with pytest.raises(AnnotationError, match=r"train\.txt:2: no annotation .*b\.xml for image id 'b'"):
        read_voc_xml(root, "train", ["cat", "dog"])
    with pytest.raises(FileNotFoundError, match=r"val\.txt not found; splits there: train"):
        read_voc_xml(root, "val", ["cat", "dog"])
    open(os.path.join(root, "ImageSets", "Main", "empty.txt"), "w").close()
    with pytest.raises(AnnotationError, match=r"empty\.txt lists no image ids: the split is empty"):
        read_voc_xml(root, "empty", ["cat", "dog"])


def test_a_class_list_with_repeated_names_is_refused(tmp_path):
    with pytest.raises(AnnotationError, match=r"distinct, got \['cat'\]"):
        read_voc_xml(make_voc(str(tmp_path), GOOD), "train", ["cat", "dog", "cat"])


# --------------------------------------------------------------------------------------------------
# train_fcos.py --dataset voc-xml
# --------------------------------------------------------------------------------------------------

def test_a_voc_xml_training_run_and_its_evaluation_work_from_the_command_line(voc_sample_dir, tmp_path, capsys):
    import train_fcos
    from eecs598.tools.detector import load_detector

    run_dir = str(tmp_path / "run")
    common = ["--dataset", "voc-xml", "--run-dir", run_dir, "--no-progress", "--threads", "1"]
    status = train_fcos.cli(common + [
        "--data-dir", voc_root(voc_sample_dir), "--device", "cpu", "--no-pretrained", "--image-size", "64",
        "--batch-size", "2", "--max-iters", "2", "--fpn-channels", "16", "--stem-channels", "16",
        "--max-val-images", "4"])
    assert status == 0, capsys.readouterr().err
    loaded = load_detector(os.path.join(run_dir, "checkpoint.pt"))
    assert loaded.class_names == list(VOC_CLASSES) and loaded.run_config["dataset"] == "voc-xml"
    ground_truth = os.path.join(run_dir, "mAP", "input", "ground-truth")
    assert any(line.endswith(" difficult") for name in os.listdir(ground_truth)
               for line in open(os.path.join(ground_truth, name)).read().splitlines())
    assert train_fcos.cli(common + ["--eval-only", "--max-val-images", "4"]) == 0
    assert os.path.isfile(os.path.join(run_dir, "metrics_eval.json"))


def test_bad_custom_data_is_one_line_naming_the_file(tmp_path, capsys):
    import train_fcos

    root = make_voc(str(tmp_path / "voc"), GOOD)
    _rewrite(root, voc_xml([("horse", (1, 1, 5, 5), 0)]))
    status = train_fcos.cli(["--dataset", "voc-xml", "--data-dir", root, "--device", "cpu", "--classes", "cat,dog",
                             "--run-dir", str(tmp_path / "run")])
    assert status == 2
    assert "error: --dataset voc-xml: " in capsys.readouterr().err
