"""What ``eecs598.predict`` reads and writes: its inputs, drawn pictures, videos frame by frame, detection files.

- :func:`expand_inputs`: image files, folders, glob patterns and video files -> a list of :class:`Source`,
  and the inputs that name nothing readable (each with its reason).
- :func:`read_photo`: an image file as RGB, turned upright by its EXIF orientation (as a browser shows it).
- :func:`video_frames` / :class:`VideoWriter`: frames decoded and encoded one at a time with PyAV (the
  optional extra ``video``: ``pip install -e '.[video]'``), never the whole video in memory.
- :func:`draw_detections_on_photo`: boxes, class names and scores on a copy of the picture.
- :class:`DetectionFiles`: ``detections.jsonl`` (one JSON line per image or video frame) and a COCO results
  file (``coco_results.json``, ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``) with
  ``coco_images.json`` (its images and categories), so that
  ``COCO("coco_images.json").loadRes("coco_results.json")`` works; both written as they go.
"""
import glob
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.formats.base import IMAGE_EXTENSIONS
from ..data.images import load_rgb_image

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "VIDEO_HINT", "Source", "expand_inputs", "read_photo",
           "video_errors", "video_frames", "VideoUnavailable", "VideoWriter", "draw_detections_on_photo", "DetectionFiles", "OutputNames"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
VIDEO_HINT = "reading and writing videos needs PyAV: pip install -e '.[video]' (or pip install av)"


@dataclass
class Source:
    """One thing to run on: ``path`` and ``kind`` (``"image"`` or ``"video"``)."""

    path: str
    kind: str


def _kind(path: str) -> str:
    return "video" if path.lower().endswith(VIDEO_EXTENSIONS) else "image"


def _media_in(paths: Sequence[str]) -> List[str]:
    return sorted(p for p in paths if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[Source], List[Tuple[str, str]]]:
    """``(sources, failures)`` for command-line inputs, in the order given.

    A file is an image unless its extension is a video's (a file that is not an image then fails when
    read, with PIL's reason). A folder gives its images and videos (not its subfolders), sorted. A glob
    pattern (``*``, ``?``, ``[``; ``**`` for subfolders) gives its matching images and videos, sorted. A
    path met twice is run once. ``failures``: ``(input, reason)`` for inputs that give nothing.
    """
    sources, failures, seen = [], [], set()
    for item in inputs:
        if os.path.isdir(item):
            found = _media_in([os.path.join(item, n) for n in os.listdir(item)])
            if not found:
                failures.append((item, "the folder holds no image or video files"))
        elif os.path.isfile(item):
            found = [item]
        elif glob.has_magic(item):
            found = _media_in(glob.glob(item, recursive=True))
            if not found:
                failures.append((item, "the pattern matches no image or video file"))
        else:
            failures.append((item, "no such file or folder"))
            found = []
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                sources.append(Source(path, _kind(path)))
    return sources, failures


_ORIENTATION = 0x0112  # the EXIF tag; the transposes that make each value upright (as ImageOps.exif_transpose)
_T = getattr(Image, "Transpose", Image)  # Pillow >= 9.1 has the enum; older ones the module constants
_UPRIGHT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
            7: _T.TRANSVERSE, 8: _T.ROTATE_90}


def read_photo(path: str) -> Image.Image:
    """The image file at ``path`` as 8-bit RGB, rotated upright by its EXIF orientation tag (phone photos).

    Raises:
        eecs598.data.images.ImageFileError: missing, unreadable, truncated or refused (message names ``path``).
    """
    image = load_rgb_image(path)
    try:
        with Image.open(path) as original:
            orientation = original.getexif().get(_ORIENTATION, 1)
    except Exception:  # the pixels were read above; a broken EXIF block only loses the rotation
        orientation = 1
    method = _UPRIGHT.get(orientation)
    return image if method is None else image.transpose(method)


class VideoUnavailable(RuntimeError):
    """PyAV (the optional extra ``video``) is not installed."""


def _require_av():
    try:
        import av
    except ImportError:
        raise VideoUnavailable(VIDEO_HINT) from None
    return av


def video_errors() -> tuple:
    """The exceptions that mean "this file is not a readable video" (PyAV's, OSError, ValueError)."""
    try:
        import av
    except ImportError:
        return (OSError, ValueError, VideoUnavailable)
    return (OSError, ValueError, VideoUnavailable, av.FFmpegError)


def video_frames(path: str) -> Iterator[Tuple[int, float, np.ndarray, float]]:
    """Decode the first video stream of ``path`` frame by frame: ``(index, time_s, (H, W, 3) uint8 RGB, fps)``.

    Raises:
        VideoUnavailable: PyAV is missing (:data:`VIDEO_HINT`). OSError / ValueError (PyAV's errors): the
            file is not a readable video.
    """
    av = _require_av()
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        for index, frame in enumerate(container.decode(stream)):
            time_s = float(frame.time) if frame.time is not None else index / fps
            yield index, time_s, frame.to_ndarray(format="rgb24"), fps


class VideoWriter:
    """Encodes RGB frames one at a time into an H.264 MP4 (MPEG-4 part 2 where libx264 is missing).

    Frames must all have the size of the first; odd sizes are padded by one pixel (H.264 in yuv420p needs
    even sides). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str, fps: float):
        av = _require_av()
        self.path, self._av = path, av
        self.container = av.open(path, mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        from fractions import Fraction

        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self.size: Optional[Tuple[int, int]] = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Encode one ``(H, W, 3)`` uint8 RGB frame."""
        height, width = frame.shape[:2]
        if self.size is None:
            self.size = (width + width % 2, height + height % 2)
            self.stream.width, self.stream.height = self.size
        if (width + width % 2, height + height % 2) != self.size:
            raise ValueError(f"{self.path}: frame {self.frames} is {width}x{height}, the first was {self.size}")
        if self.size != (width, height):
            frame = np.pad(frame, ((0, self.size[1] - height), (0, self.size[0] - width), (0, 0)))
        for packet in self.stream.encode(self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                          format="rgb24")):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            if self.size is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40), (128, 0, 0),
            (170, 255, 195), (128, 128, 0), (0, 0, 128), (255, 225, 25))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def draw_detections_on_photo(image, records: Sequence[Dict]) -> Image.Image:
    """A copy of ``image`` (PIL or ``(H, W, 3)`` uint8) with each record's box and ``"class score"`` label.

    ``records``: ``[{"box": [x1, y1, x2, y2], "class": name, "class_id": id, "score": s}]`` in the image's
    pixels (``PhotoDetections.as_records``). One colour per class id.
    """
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    width, font = max(1, round(side / 200)), _font(max(10, round(side / 32)))
    for record in sorted(records, key=lambda r: r["score"]):  # the best drawn last, on top
        color = _PALETTE[record["class_id"] % len(_PALETTE)]
        x1, y1, x2, y2 = record["box"]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        label = f"{record['class']} {record['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        lift = bottom - top + 2 * width
        top_y = y1 - lift if y1 - lift >= 0 else y1
        draw.rectangle([x1, top_y, x1 + right - left + 2 * width, top_y + lift], fill=color)
        draw.text((x1 + width, top_y + width - (top - y1)), label, fill=(255, 255, 255), font=font)
    return image


class OutputNames:
    """Distinct output file names in one folder: ``photo.jpg``, then ``photo_2.jpg`` for a second ``photo``;
    never the input file itself (``--out`` may be the photos' own folder: they are not overwritten)."""

    def __init__(self, folder: str):
        self.folder, self.used = folder, set()

    def __call__(self, source_path: str, extension: str) -> str:
        stem = os.path.splitext(os.path.basename(source_path))[0]
        name, n = stem + extension, 1
        while name in self.used or os.path.realpath(os.path.join(self.folder, name)) == os.path.realpath(source_path):
            n += 1
            name = f"{stem}_{n}{extension}"
        self.used.add(name)
        return os.path.join(self.folder, name)


class DetectionFiles:
    """``detections.jsonl`` + ``coco_results.json`` + ``coco_images.json`` in ``out_dir``, written as they go.

    Image ids are ``1, 2, ...`` in the order photos and frames are added; category ids are class id + 1.
    """

    def __init__(self, out_dir: str, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self.paths = {name: os.path.join(out_dir, name) for name in
                      ("detections.jsonl", "coco_results.json", "coco_images.json")}
        self.lines = open(self.paths["detections.jsonl"], "w", encoding="utf-8")
        self.results = open(self.paths["coco_results.json"], "w", encoding="utf-8")
        self.results.write("[")
        self.images: List[Dict] = []
        self.num_results = 0

    def add(self, line: Dict, file_name: str) -> int:
        """Write one photo's or frame's JSON line (``line`` gets its ``image_id``) and COCO results; returns
        the image id."""
        image_id = len(self.images) + 1
        width, height = line["width"], line["height"]
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        self.lines.write(json.dumps({"image_id": image_id, **line}) + "\n")
        for record in line["detections"]:
            x1, y1, x2, y2 = record["box"]
            result = {"image_id": image_id, "category_id": record["class_id"] + 1,
                      "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                      "score": record["score"]}
            self.results.write(("," if self.num_results else "") + "\n" + json.dumps(result))
            self.num_results += 1
        return image_id

    def close(self) -> None:
        if self.lines.closed:
            return
        self.lines.close()
        self.results.write("\n]\n")
        self.results.close()
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.class_names)]
        with open(self.paths["coco_images.json"], "w", encoding="utf-8") as f:
            json.dump({"images": self.images, "annotations": [], "categories": categories}, f)
