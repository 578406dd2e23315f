"""``python -m eecs598.data.convert``: convert a detection dataset between COCO, VOC XML, YOLO and the course's JSON.

Examples::

    # a VOC folder's train split -> COCO (data/coco/annotations/instances_train.json + data/coco/train/)
    python -m eecs598.data.convert --from voc-xml data/VOCdevkit/VOC2007 --to coco data/coco --split train
    # COCO -> YOLO with two splits
    python -m eecs598.data.convert --from coco data/coco --to yolo data/yolo --split train --split val
    # the course's JSON (voc07_val.json) -> VOC XML
    python -m eecs598.data.convert --from course-json data --to voc-xml data/voc-xml --split val --classes voc

Each format is a folder (see docs/data.md for the layouts): ``coco`` ``ROOT/annotations/instances_<split>.json``
+ ``ROOT/<split>/``; ``voc-xml`` ``ROOT/{Annotations,ImageSets/Main,JPEGImages}``; ``yolo``
``ROOT/images/<split>/`` + ``ROOT/labels/<split>/`` + ``data.yaml``/``classes.txt``; ``course-json``
``ROOT/voc07_<split>.json`` + ``ROOT/VOCdevkit/VOC2007/JPEGImages/``. Images are copied into the new layout
(``--link`` makes symbolic links instead). Boxes are kept in each image's pixels; what a format cannot hold
is said, never dropped silently: YOLO and the course's JSON have no ``difficult`` flag, so difficult objects
(VOC's, COCO's crowd regions) are left out there and counted in the report.
"""
import argparse
import os
import shutil
import sys
from typing import Callable, Dict, List, Optional

from .formats.base import AnnotationError, AnnotationSet, parse_class_list
from .formats.coco import coco_paths, read_coco, write_coco
from .formats.course_json import read_course_json, write_course_json
from .formats.voc_xml import read_voc_xml, write_voc_xml
from .formats.yolo import read_yolo, write_yolo
from .images import ImageFileError

__all__ = ["FORMATS", "read_split", "write_split", "convert", "main"]

FORMATS = ("coco", "voc-xml", "yolo", "course-json")
_NO_DIFFICULT = ("yolo", "course-json")  # formats without a difficult flag


def read_split(kind: str, root: str, split: str, class_names: Optional[List[str]] = None) -> AnnotationSet:
    """One split of the dataset of format ``kind`` in ``root``. ``class_names``: the class list (required
    for ``course-json``; default for ``voc-xml``: the VOC classes; ``coco`` / ``yolo``: the files' own)."""
    if kind == "coco":
        return read_coco(*coco_paths(root, split), class_names)
    if kind == "voc-xml":
        return read_voc_xml(root, split, class_names or parse_class_list("voc"))
    if kind == "yolo":
        return read_yolo(root, split, class_names)
    if kind == "course-json":
        return read_course_json(root, split, class_names or parse_class_list("voc"))
    raise ValueError(f"unknown format {kind!r}; choose one of {', '.join(FORMATS)}")


def _placer(link: bool) -> Callable[[str, str], None]:
    """``place(src, dst)``: copy (or symlink) an image into the new layout, unless it is already there."""
    def place(src: str, dst: str) -> None:
        if os.path.abspath(src) == os.path.abspath(dst):
            return
        if os.path.lexists(dst):
            os.remove(dst)
        if link:
            os.symlink(os.path.abspath(src), dst)
        else:
            shutil.copyfile(src, dst)
    return place


def write_split(kind: str, annotations: AnnotationSet, root: str, split: str, link: bool = False) -> List[str]:
    """Write ``annotations`` as split ``split`` of format ``kind`` in ``root``; returns the files written."""
    place = _placer(link)
    if kind == "coco":
        annotation_file, image_dir = coco_paths(root, split)
        return write_coco(annotations, annotation_file, image_dir, place)
    if kind == "voc-xml":
        return write_voc_xml(annotations, root, split, place)
    if kind == "yolo":
        return write_yolo(annotations, root, split, place)
    if kind == "course-json":
        return write_course_json(annotations, root, split, place)
    raise ValueError(f"unknown format {kind!r}; choose one of {', '.join(FORMATS)}")


def convert(source_kind: str, source: str, target_kind: str, target: str, split: str,
            class_names: Optional[List[str]] = None, link: bool = False) -> Dict[str, int]:
    """Convert one split; returns counts: ``images``, ``objects``, ``difficult`` and ``left_out`` (difficult
    objects the target format cannot hold)."""
    if os.path.abspath(source) == os.path.abspath(target):
        raise ValueError(f"the target folder {target} is the source folder: write the conversion elsewhere")
    annotations = read_split(source_kind, source, split, class_names)
    difficult = annotations.num_difficult()
    write_split(target_kind, annotations, target, split, link)
    return {"images": len(annotations.images), "objects": sum(len(i.objects) for i in annotations.images),
            "difficult": difficult, "left_out": difficult if target_kind in _NO_DIFFICULT else 0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.data.convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a detection dataset between COCO JSON, VOC XML folders, YOLO txt labels and the "
                    "course's JSON (voc07_<split>.json). Layouts: docs/data.md.",
        epilog=__doc__.split("Examples::")[1].split("Each format")[0])
    parser.add_argument("--from", dest="source_kind", choices=FORMATS, required=True, help="the source's format")
    parser.add_argument("source", help="the source dataset's folder")
    parser.add_argument("--to", dest="target_kind", choices=FORMATS, required=True, help="the target's format")
    parser.add_argument("target", help="the folder to write (created; other splits already there are kept)")
    parser.add_argument("--split", action="append", default=None,
                        help="split to convert, repeatable (default: train and val)")
    parser.add_argument("--classes", default=None,
                        help="class list: voc, shapes, a,b,c or a file with one name per line (default: the "
                             "source's own; course-json and voc-xml: the 20 VOC classes)")
    parser.add_argument("--link", action="store_true", help="symlink the images instead of copying them")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        class_names = parse_class_list(args.classes) if args.classes else None
        for split in args.split or ["train", "val"]:
            counts = convert(args.source_kind, args.source, args.target_kind, args.target, split, class_names,
                             args.link)
            note = (f"; {counts['left_out']} difficult objects left out ({args.target_kind} has no difficult flag)"
                    if counts["left_out"] else f" ({counts['difficult']} difficult)" if counts["difficult"] else "")
            print(f"{split}: {counts['images']} images, {counts['objects']} objects{note} -> {args.target}")
    except (AnnotationError, FileNotFoundError, ImageFileError, ImportError, ValueError, OSError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
