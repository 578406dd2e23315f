"""``train_fcos.py --dataset coco|voc-xml|yolo``: the options of one's own datasets, and building them.

The readers are in :mod:`eecs598.data.formats`; every one gives ``VOC2007DetectionTiny``'s output and geometry.
Layouts under ``--data-dir`` (docs/data.md):

- ``voc-xml``: ``Annotations/``, ``ImageSets/Main/<split>.txt``, ``JPEGImages/`` (e.g. ``VOCdevkit/VOC2007``);
- ``coco``: ``annotations/instances_<split>.json`` and ``<split>/`` (COCO 2017's), or ``--train-ann`` /
  ``--train-images`` / ``--val-ann`` / ``--val-images``;
- ``yolo``: ``images/<split>/``, ``labels/<split>/`` and ``data.yaml`` or ``classes.txt``.

The settings (splits, class list, paths) are saved in the checkpoint's run config, with the class list as
read, so ``--eval-only`` and ``python -m eecs598.predict`` name the classes as training did.
"""
import argparse
import os

from ..data.formats import (AnnotationError, CocoDetection, VOCXmlDetection, YoloDetection, coco_paths,
                            parse_class_list)
from ..data.images import ImageFileError

__all__ = ["CUSTOM_DATASETS", "CUSTOM_RUN_CONFIG_KEYS", "add_custom_dataset_options", "build_custom_datasets",
           "check_custom_data"]

CUSTOM_DATASETS = ("coco", "voc-xml", "yolo")
# Saved in the checkpoint with the other run settings (eecs598.tools.train_args.RUN_CONFIG_KEYS).
CUSTOM_RUN_CONFIG_KEYS = ("train_split", "val_split", "classes", "max_boxes", "train_ann", "val_ann", "train_images",
                          "val_images")


def add_custom_dataset_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("your own data (--dataset coco, voc-xml, yolo; layouts in docs/data.md)")
    g.add_argument("--train-split", default=None, help="training split (default: train): ImageSets/Main/<split>.txt, "
                   "images/<split>/, or instances_<split>.json + <split>/")
    g.add_argument("--val-split", default=None, help="evaluation split (default: val)")
    g.add_argument("--classes", default=None, metavar="LIST",
                   help="class list: a,b,c, a file with one name per line (yolo: also a data.yaml), voc or shapes "
                        "(default: voc-xml the 20 VOC classes; coco the file's categories; yolo data.yaml or "
                        "classes.txt)")
    g.add_argument("--max-boxes", type=int, default=None,
                   help="GT rows per image; an image with more objects is an error (voc-xml: 40, coco/yolo: 100)")
    for split in ("train", "val"):
        g.add_argument(f"--{split}-ann", default=None, metavar="FILE",
                       help=f"coco: the {split} instances JSON (default: DATA_DIR/annotations/instances_<split>.json)")
        g.add_argument(f"--{split}-images", default=None, metavar="DIR",
                       help=f"coco: the folder of the {split} images (default: DATA_DIR/<split>)")


def check_custom_data(args: argparse.Namespace, usage_error) -> None:
    """Refuse a missing ``--data-dir`` or a bad ``--max-boxes`` before anything is built."""
    if args.max_boxes is not None and args.max_boxes < 1:
        raise usage_error(f"--max-boxes must be >= 1, got {args.max_boxes}")
    if not os.path.isdir(args.data_dir):
        raise usage_error(f"--dataset {args.dataset}: --data-dir {args.data_dir} is not a folder (see docs/data.md "
                          f"for the layout it should hold)")


def _class_list(args):
    """The ``--classes`` value as a list, or a YOLO ``.yaml`` path (read by the YOLO reader), or None."""
    if args.classes is None or (args.dataset == "yolo" and isinstance(args.classes, str)
                                and args.classes.endswith((".yaml", ".yml"))):
        return args.classes
    return parse_class_list(args.classes)


def _build(args, split: str, which: str):
    size = dict(image_size=args.image_size, max_boxes=args.max_boxes)
    classes = _class_list(args)
    if args.dataset == "voc-xml":
        return VOCXmlDetection(args.data_dir, split, classes or parse_class_list("voc"), **size)
    if args.dataset == "yolo":
        return YoloDetection(args.data_dir, split, classes, **size)
    annotation_file, image_dir = coco_paths(args.data_dir, split)
    return CocoDetection(getattr(args, f"{which}_ann") or annotation_file,
                         getattr(args, f"{which}_images") or image_dir, classes, **size)


def build_custom_datasets(args: argparse.Namespace, usage_error, train: bool = True):
    """``(train_set, val_set)`` of ``--dataset coco|voc-xml|yolo``; a reader's error (it names the file and
    line or entry) becomes ``usage_error`` in the command line's words. Sets ``args.classes`` to the class
    list read, so that the checkpoint records it. ``train=False`` (``--eval-only``, where ``args.classes``
    is the checkpoint's list): the train split is not read and ``None`` is returned for it."""
    if args.max_boxes is None:
        args.max_boxes = 40 if args.dataset == "voc-xml" else 100
    train_set = None
    try:
        if train:
            train_set = _build(args, args.train_split or "train", "train")
            args.classes = [train_set.idx_to_class[i] for i in range(len(train_set.idx_to_class))]
        val_set = _build(args, args.val_split or "val", "val")
    except (AnnotationError, FileNotFoundError, ImageFileError, ImportError) as e:
        raise usage_error(f"--dataset {args.dataset}: {e}") from None
    except ValueError as e:  # DetectionJsonDataset's checks (e.g. more objects than --max-boxes)
        hint = " (raise --max-boxes)" if "max_boxes" in str(e) else ""
        raise usage_error(f"--dataset {args.dataset}: {e}{hint}") from None
    train_difficult = train_set.num_difficult if train_set is not None else 0
    if train_difficult + val_set.num_difficult:
        print(f"{args.dataset}: {train_difficult} + {val_set.num_difficult} difficult objects (train + val) "
              f"are left out of training and ignored by the mAP (docs/data.md).")
    return train_set, val_set
