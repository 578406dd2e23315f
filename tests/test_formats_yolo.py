"""The YOLO reader and writer (eecs598.data.formats.yolo): a round trip of the real VOC sample (course JSON -> YOLO ->
reader == the course's reader to YOLO's 6 decimals), a label line checked by hand, class names from data.yaml or a
names file, and clear errors on bad files."""
import os

import pytest
import torch

from eecs598.data.convert import convert
from eecs598.data.datasets import VOC_CLASSES, VOC2007DetectionTiny
from eecs598.data.formats import AnnotationError, YoloDetection, read_yolo
from formats_helpers import make_yolo

SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def yolo_copy(tmp_path_factory):
    from conftest import VOC_SAMPLE_DIR

    if not os.path.isdir(VOC_SAMPLE_DIR):
        pytest.skip(f"VOC sample not found at {VOC_SAMPLE_DIR}")
    root = str(tmp_path_factory.mktemp("yolo"))
    for split in SPLITS:
        convert("course-json", VOC_SAMPLE_DIR, "yolo", root, split, list(VOC_CLASSES))
    return root


def test_a_label_line_is_the_box_centre_and_size_in_fractions(yolo_copy):
    """000012.jpg (500 x 333) has one car (class 6) at (156, 97, 351, 270) in the course JSON:
    cx = 507 / 2 / 500, cy = 367 / 2 / 333, w = 195 / 500, h = 173 / 333."""
    with open(os.path.join(yolo_copy, "labels", "train", "000012.txt")) as f:
        assert f.read() == "6 0.507000 0.551051 0.390000 0.519520\n"


@pytest.mark.parametrize("split", SPLITS)
def test_course_json_to_yolo_and_back_matches_to_six_decimals(voc_sample_dir, yolo_copy, split):
    """6 decimals of a fraction of <= 500 px: each coordinate within 0.5e-6 * 500 * 2 = 5e-4 original pixels,
    less in the 224 px crop (scale <= 224 / 333)."""
    course = VOC2007DetectionTiny(voc_sample_dir, split)
    ours = YoloDetection(yolo_copy, split, max_boxes=40)
    assert len(ours) == len(course) and ours.idx_to_class == course.idx_to_class
    index = {os.path.basename(p): i for i, p in enumerate(ours.image_paths)}
    for i in range(len(course)):
        path, image, gt = course[i]
        _, our_image, our_gt = ours[index[os.path.basename(path)]]
        assert torch.equal(our_gt[:, 4], gt[:, 4]) and torch.allclose(our_gt, gt, atol=5e-4, rtol=0), path
        if i < 2:
            assert torch.equal(our_image, image)


def test_class_names_from_data_yaml_as_a_list_or_a_mapping(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML (extra 'yolo') is not installed")
    root = make_yolo(str(tmp_path), {"a": "1 0.5 0.5 0.5 0.5\n"})
    os.remove(os.path.join(root, "classes.txt"))
    for text in ("names: [cat, dog]\n", "names:\n  0: cat\n  1: dog\n"):
        with open(os.path.join(root, "data.yaml"), "w") as f:
            f.write(text)
        found = read_yolo(root, "train")
        assert found.class_names == ["cat", "dog"]
        assert [(o.name, o.box) for o in found.images[0].objects] == [("dog", (16.0, 12.0, 48.0, 36.0))]


def test_a_names_file_and_an_image_without_labels(tmp_path):
    root = make_yolo(str(tmp_path), {"a": "0 0.25 0.5 0.5 1.0\n\n", "b": None})
    found = read_yolo(root, "train")
    assert found.class_names == ["cat", "dog"] and [len(i.objects) for i in found.images] == [1, 0]
    assert found.images[0].objects[0].box == (0.0, 0.0, 32.0, 48.0)


@pytest.mark.parametrize("text, expected", [
    ("0 0.5 0.5 0.2\n", r"a\.txt:1: expected 'class_id cx cy w h' \(5 values\), got 4"),
    ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n", r"a\.txt:2: unknown class id 2; the 2 classes are ids 0\.\.1"),
    ("0 1.5 0.5 0.2 0.2\n", r"a\.txt:1: box .* lies outside the image"),
    ("cat 0.5 0.5 0.2 0.2\n", r"a\.txt:1: expected an integer class id and 4 numbers"),
    ("0 0.5 0.5 -0.2 0.2\n", r"a\.txt:1: expected finite cx cy w h with w, h >= 0"),
])
def test_bad_label_lines_are_named(tmp_path, text, expected):
    with pytest.raises(AnnotationError, match=expected):
        read_yolo(make_yolo(str(tmp_path), {"a": text}), "train")


def test_a_label_without_an_image_an_empty_split_and_missing_names(tmp_path):
    root = make_yolo(str(tmp_path), {"a": "0 0.5 0.5 0.2 0.2\n"})
    with open(os.path.join(root, "labels", "train", "ghost.txt"), "w") as f:
        f.write("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(AnnotationError, match=r"labels/train/ghost\.txt has no image in .*images/train"):
        read_yolo(root, "train")
    os.makedirs(os.path.join(root, "images", "val"))
    with pytest.raises(AnnotationError, match=r"images/val holds no images .*: the split is empty"):
        read_yolo(root, "val")
    with pytest.raises(FileNotFoundError, match=r"YOLO image folder .*images/test not found"):
        read_yolo(root, "test")
    os.remove(os.path.join(root, "classes.txt"))
    with pytest.raises(FileNotFoundError, match="YOLO class names not found"):
        read_yolo(root, "train")
