"""Tests of a4_helper: the course's module name keeps re-exporting the eecs598 code under the course's names.

The behaviour itself is tested where it lives: tests/test_datasets.py, test_engine.py, test_checkpoint.py,
test_inference.py.
"""
import a4_helper
import eecs598.train.checkpoint
import eecs598.data
import eecs598.recipes
import eecs598.train
import eecs598.evaluation.inference
import eecs598.utils

# Where each re-exported name lives, typed out by hand (a4_helper's docstring lists the same).
HOMES = {
    "VOC2007DetectionTiny": eecs598.data, "ShapesDetection": eecs598.data,
    "DetectionJsonDataset": eecs598.data, "download_voc2007": eecs598.data,
    "resize_crop_geometry": eecs598.data, "map_boxes_to_crop": eecs598.data,
    "VOC_CLASSES": eecs598.data, "IMAGENET_MEAN": eecs598.data, "IMAGENET_STD": eecs598.data,
    "train_detector": eecs598.train, "FROM_SCRATCH": eecs598.recipes, "TrainSettings": eecs598.train,
    "load_checkpoint": eecs598.train.checkpoint, "inference_with_detector": eecs598.evaluation.inference,
    "plot_loss_history": eecs598.utils,
}


def test_hello_helper(capsys):
    a4_helper.hello_helper()
    assert capsys.readouterr().out == "Hello from a4_helper.py!\n"


def test_star_import_gives_exactly_all():
    namespace = {}
    exec("from a4_helper import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(a4_helper.__all__)
    # The contract's names (what the notebook and a course autograder import) are among them.
    for name in ("hello_helper", "VOC2007DetectionTiny", "train_detector", "inference_with_detector"):
        assert name in namespace, name


def test_each_re_export_is_the_eecs598_object():
    assert set(a4_helper.__all__) == set(HOMES) | {"hello_helper"}
    for name, module in HOMES.items():
        assert getattr(a4_helper, name) is getattr(module, name), name
