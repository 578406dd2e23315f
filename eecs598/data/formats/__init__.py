"""Detection datasets in the formats people have, all with the course's output and geometry.

| format | reader (``Dataset``) | layout |
|---|---|---|
| ``coco`` | :class:`CocoDetection`, :func:`read_coco` | ``annotations/instances_<split>.json`` + ``<split>/`` images |
| ``voc-xml`` | :class:`VOCXmlDetection`, :func:`read_voc_xml` | ``Annotations/*.xml``, ``ImageSets/Main/<split>.txt``, ``JPEGImages/`` |
| ``yolo`` | :class:`YoloDetection`, :func:`read_yolo` | ``images/<split>/``, ``labels/<split>/*.txt``, ``data.yaml`` or ``classes.txt`` |
| ``course-json`` | ``DetectionJsonDataset``, :func:`read_course_json` | ``voc07_<split>.json`` + ``VOCdevkit/VOC2007/JPEGImages/`` |

Every reader returns an :class:`AnnotationSet` (boxes in each image's own pixels) and every ``Dataset`` is a
:class:`FormatDataset`: ``VOC2007DetectionTiny``'s ``__getitem__`` output and resize + centre-crop geometry,
with difficult objects (VOC ``difficult``, COCO ``iscrowd``) kept apart for the evaluation
(``difficult_gt``). ``python -m eecs598.data.convert`` converts between the formats. See docs/data.md.
"""
from .base import (AnnotationError, AnnotationSet, FormatDataset, ImageAnnotation, ObjectAnnotation, parse_class_list)
from .coco import CocoDetection, coco_paths, read_coco, write_coco
from .course_json import read_course_json, write_course_json
from .voc_xml import VOCXmlDetection, read_voc_xml, write_voc_xml
from .yolo import YoloDetection, read_yolo, write_yolo

__all__ = ["AnnotationError", "AnnotationSet", "FormatDataset", "ImageAnnotation", "ObjectAnnotation",
           "parse_class_list", "CocoDetection", "coco_paths", "read_coco", "write_coco", "read_course_json",
           "write_course_json", "VOCXmlDetection", "read_voc_xml", "write_voc_xml", "YoloDetection", "read_yolo",
           "write_yolo"]
