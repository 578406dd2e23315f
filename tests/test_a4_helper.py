"""Tests of a4_helper: the course's module name keeps re-exporting the eecs598 code under the course's names.

The behaviour itself is tested where it lives: tests/test_datasets.py, test_engine.py, test_checkpoint.py,
test_inference.py.
"""
import a4_helper
import eecs598.checkpoint
import eecs598.datasets
import eecs598.engine
import eecs598.inference
import eecs598.utils

# Where each re-exported name lives, typed out by hand (a4_helper's docstring lists the same).
HOMES = {
    "VOC2007DetectionTiny": eecs598.datasets, "ShapesDetection": eecs598.datasets,
    "DetectionJsonDataset": eecs598.datasets, "download_voc2007": eecs598.datasets,
    "resize_crop_geometry": eecs598.datasets, "map_boxes_to_crop": eecs598.datasets,
    "VOC_CLASSES": eecs598.datasets, "IMAGENET_MEAN": eecs598.datasets, "IMAGENET_STD": eecs598.datasets,
    "train_detector": eecs598.engine, "FROM_SCRATCH": eecs598.engine, "TrainSettings": eecs598.engine,
    "load_checkpoint": eecs598.checkpoint, "inference_with_detector": eecs598.inference,
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
