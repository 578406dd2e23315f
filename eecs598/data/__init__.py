"""The data wing: datasets, the VOC download, the Shapes generator, augmentation, sampling, the device cache.

Imports nothing from the other wings (see the README's layout table).
"""
from .datasets import VOC_CLASSES, DetectionJsonDataset, ShapesDetection, VOC2007DetectionTiny
from .download import VOC_FILES_MD5, VOC_URL_BASE, DownloadError, download_voc2007
from .images import ImageFileError, load_rgb_image
from .shapes import SHAPE_CLASSES, generate_shapes_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, map_boxes_to_crop, normalize, resize_crop_geometry, unnormalize

__all__ = ["VOC_CLASSES", "DetectionJsonDataset", "ShapesDetection", "VOC2007DetectionTiny", "VOC_FILES_MD5",
           "VOC_URL_BASE", "DownloadError", "download_voc2007", "ImageFileError", "load_rgb_image", "SHAPE_CLASSES",
           "generate_shapes_dataset", "IMAGENET_MEAN", "IMAGENET_STD", "map_boxes_to_crop", "normalize",
           "resize_crop_geometry", "unnormalize"]
