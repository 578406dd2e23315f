"""The course's helper module: datasets, training and inference, re-exported under the course's names.

The code lives in the ``eecs598`` package; this module keeps the names the notebook and a course
autograder import (``from a4_helper import *`` gives exactly ``__all__``):

- datasets (``eecs598.data``): ``VOC2007DetectionTiny``, ``ShapesDetection``, ``DetectionJsonDataset``,
  ``download_voc2007``, ``resize_crop_geometry``, ``map_boxes_to_crop``, ``VOC_CLASSES``,
  ``IMAGENET_MEAN``, ``IMAGENET_STD``;
- training (``eecs598.train``): ``train_detector``, ``TrainSettings``, ``load_checkpoint``; the from-scratch
  recipe ``FROM_SCRATCH`` (``eecs598.recipes``);
- inference (``eecs598.evaluation.inference``): ``inference_with_detector``; plots (``eecs598.utils``):
  ``plot_loss_history``.

Conventions: boxes are XYXY in absolute pixels of the (cropped) input image; a GT row is
``(x1, y1, x2, y2, class_id)`` and padding rows are all ``-1``.
"""
from eecs598.data import (IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, DetectionJsonDataset, ShapesDetection,
                          VOC2007DetectionTiny, download_voc2007, map_boxes_to_crop, resize_crop_geometry)
from eecs598.evaluation.inference import inference_with_detector
from eecs598.recipes import FROM_SCRATCH
from eecs598.train.api import train_detector
from eecs598.train.checkpoint import load_checkpoint
from eecs598.train.settings import TrainSettings
from eecs598.utils import plot_loss_history

__all__ = [
    "hello_helper",
    "VOC2007DetectionTiny", "ShapesDetection", "DetectionJsonDataset", "download_voc2007",
    "resize_crop_geometry", "map_boxes_to_crop", "VOC_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD",
    "train_detector", "FROM_SCRATCH", "TrainSettings", "load_checkpoint",
    "inference_with_detector", "plot_loss_history",
]


def hello_helper():
    """Print a greeting, to check that the module was imported."""
    print("Hello from a4_helper.py!")
