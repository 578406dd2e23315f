"""``python -m eecs598.app``: a page to try a trained detector in a browser, served from this machine.

Design (why a small local server rather than the model in the browser): the server runs the very code
``python -m eecs598.predict`` runs (``eecs598.tools.detect.detect_photos`` on the PyTorch model, or
onnxruntime on an exported file with ``--onnx``), so the page shows exactly predict's detections, with no
JavaScript copy of the preprocessing to keep in step and no multi-megabyte runtime to ship. It uses only the
standard library's ``http.server`` and works offline: the page loads nothing from the internet (its
Content-Security-Policy forbids it).

Per photo the network runs once, at a low score threshold (``--score-floor``, 0.05); the page's slider
then filters the returned detections in the browser (``score > slider``) and redraws without asking the
server again. That equals a run at the slider's threshold: greedy NMS only lets higher-scoring boxes
suppress a box, so the boxes above a threshold do not depend on the boxes below it.

Safety: it listens on 127.0.0.1 unless ``--host`` says otherwise; an upload is refused above
``--max-upload-mb`` (before its body is read) or ``--max-megapixels`` (before it is decoded), and a file
that is not a decodable image gets a message, shown on the page; only the three page files are served
(a fixed table, no file-system paths from the URL).
"""
import argparse
import base64
import io
import ipaddress
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from PIL import Image

from ..data.images import ImageFileError, load_rgb_image

__all__ = ["UploadRejected", "AppLimits", "DetectorService", "torch_service", "onnx_service", "decode_upload",
           "AppServer", "make_server", "main"]

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app_static")
# URL path -> (file in STATIC_DIR, content type). Nothing else is ever read from disk for a request.
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/index.html": ("index.html", "text/html; charset=utf-8"),
                "/app.js": ("app.js", "text/javascript; charset=utf-8"),
                "/app.css": ("app.css", "text/css; charset=utf-8")}
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
PREVIEW_MAX_SIDE = 1600  # the photo sent back for display is at most this large (boxes stay in full pixels)
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


class UploadRejected(Exception):
    """An upload the page must explain: ``status`` (HTTP) and a ``message`` for a person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = int(status), message


@dataclass
class AppLimits:
    """Upload limits: bytes of the file, and pixels (width * height) of the decoded image."""

    max_upload_bytes: int = 20 * 2 ** 20
    max_pixels: int = 40_000_000


def decode_upload(data: bytes, max_pixels: int) -> Image.Image:
    """The uploaded bytes as an 8-bit RGB PIL image, decoded as ``eecs598.data.images.load_rgb_image`` does.

    The header is read first: the format must be one of :data:`ACCEPTED_FORMATS` and the size at most
    ``max_pixels`` before any pixel is decoded (a small file can claim a huge image).

    Raises:
        UploadRejected: empty, not an image (415), too many pixels (413), corrupt or truncated (400).
    """
    if not data:
        raise UploadRejected(HTTPStatus.BAD_REQUEST, "The file is empty.")
    try:
        with Image.open(io.BytesIO(data)) as header:
            image_format, (width, height) = header.format, header.size
    except Image.DecompressionBombError:
        raise UploadRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "The image has far too many pixels to decode.")
    except Exception:  # PIL.UnidentifiedImageError and the other ways a header cannot be read
        raise UploadRejected(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             "This file is not an image (or not one this page reads): choose a JPEG, PNG, GIF, "
                             "BMP, WebP or TIFF photo.")
    if image_format not in ACCEPTED_FORMATS:
        raise UploadRejected(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             f"{image_format} images are not accepted: choose a JPEG, PNG, GIF, BMP, WebP or TIFF.")
    if width * height > max_pixels:
        raise UploadRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"The image is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); this "
                             f"page accepts up to {max_pixels / 1e6:.0f} megapixels. Resize it and try again.")
    try:
        return load_rgb_image(io.BytesIO(data))
    except ImageFileError as error:
        cause = error.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        raise UploadRejected(HTTPStatus.BAD_REQUEST,
                             f"The {image_format} file could not be decoded: it is corrupt or truncated{detail}.")


# ---------------------------------------------------------------------------------------------
# The detector behind the page
# ---------------------------------------------------------------------------------------------


class DetectorService:
    """One detector for all requests (one photo at a time: the model is not re-entrant).

    Attributes:
        class_names, score_floor, nms_thresh, description: what the page is told.
        calls: photos run so far (the browser test checks the slider does not add any).
    """

    def __init__(self, detect: Callable[[Image.Image], List[Dict]], class_names: Sequence[str],
                 score_floor: float, nms_thresh: float, description: str):
        for name, value in (("score floor", score_floor), ("NMS threshold", nms_thresh)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"the {name} must be in [0, 1], got {value}")
        self._detect, self._lock = detect, threading.Lock()
        self.class_names, self.score_floor, self.nms_thresh = list(class_names), score_floor, nms_thresh
        self.description, self.calls = description, 0

    def detect(self, image: Image.Image) -> List[Dict]:
        """``PhotoDetections.as_records`` of the photo at ``score_floor``, by decreasing score."""
        with self._lock:
            self.calls += 1
            return self._detect(image)


def torch_service(checkpoint: str, score_floor: float = 0.05, nms_thresh: float = 0.5,
                  device: str = "cpu") -> DetectorService:
    """The PyTorch model of a ``train_fcos.py`` checkpoint, through ``detect_photos`` (predict's core)."""
    from .detect import detect_photos
    from .detector import load_detector

    loaded = load_detector(checkpoint, device=device)

    def detect(image):
        result, = detect_photos(loaded.model, [image], loaded.image_size, score_floor, nms_thresh, device=device)
        return result.as_records(loaded.class_names)

    return DetectorService(detect, loaded.class_names, score_floor, nms_thresh,
                           f"PyTorch, {os.path.basename(checkpoint)}, image_size {loaded.image_size}")


def onnx_service(path: str, score_floor: float = 0.05, nms_thresh: float = 0.5,
                 threads: Optional[int] = None) -> DetectorService:
    """An exported ``.onnx`` file run with onnxruntime (``eecs598.tools.export.OnnxDetector``)."""
    from .export import OnnxDetector

    runner = OnnxDetector(path, threads=threads)

    def detect(image):
        result, = runner.detect([image], score_floor, nms_thresh)
        return result.as_records(runner.class_names)

    return DetectorService(detect, runner.class_names, score_floor, nms_thresh,
                           f"onnxruntime, {os.path.basename(path)}, image_size {runner.image_size}")


def _preview_data_url(image: Image.Image) -> str:
    """The photo as the page shows it (the pixels the detector saw), a JPEG ``data:`` URL, longer side capped."""
    preview = image
    if max(image.size) > PREVIEW_MAX_SIDE:
        scale = PREVIEW_MAX_SIDE / max(image.size)
        preview = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                               Image.BILINEAR)
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class AppServer(ThreadingHTTPServer):
    """The page's server: static page files, ``GET /api/info`` and ``POST /api/detect`` (the photo's bytes)."""

    daemon_threads = True

    def __init__(self, address, service: DetectorService, limits: AppLimits, display_thresh: float,
                 quiet: bool = False):
        super().__init__(address, _Handler)
        self.service, self.limits, self.display_thresh, self.quiet = service, limits, display_thresh, quiet
        self.pages = {}
        for url, (name, content_type) in STATIC_FILES.items():
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                self.pages[url] = (f.read(), content_type)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def info(self) -> Dict:
        return {"class_names": self.service.class_names, "score_floor": self.service.score_floor,
                "nms_thresh": self.service.nms_thresh, "display_thresh": self.display_thresh,
                "max_upload_bytes": self.limits.max_upload_bytes, "max_pixels": self.limits.max_pixels,
                "backend": self.service.description}


class _Handler(BaseHTTPRequestHandler):
    server_version = "fcos-demo"
    timeout = 60  # seconds a client may take to send its request (a stalled upload does not hold a thread)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Dict) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        if path in self.server.pages:
            self._send(HTTPStatus.OK, *self.server.pages[path])
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.server.info())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"Nothing at {path[:100]}."})

    def do_POST(self):  # noqa: N802
        if urlsplit(self.path).path != "/api/detect":
            self._json(HTTPStatus.NOT_FOUND, {"error": "Photos go to /api/detect."})
            return
        try:
            data = self._read_body()
            image = decode_upload(data, self.server.limits.max_pixels)
        except UploadRejected as rejected:
            self._json(rejected.status, {"error": rejected.message})
            return
        started = time.perf_counter()
        try:
            detections = self.server.service.detect(image)
        except Exception as error:  # the page gets a sentence, the console the traceback
            traceback.print_exc(file=sys.stderr)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"The detector failed on this photo ({type(error).__name__}); see the server's "
                                 f"console for details."})
            return
        self._json(HTTPStatus.OK, {
            "width": image.width, "height": image.height, "image": _preview_data_url(image),
            "detections": detections, "score_floor": self.server.service.score_floor,
            "elapsed_ms": round(1000 * (time.perf_counter() - started), 1)})

    def _read_body(self) -> bytes:
        """The request body, refused unread when it is larger than the limit."""
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            raise UploadRejected(HTTPStatus.LENGTH_REQUIRED, "The upload has no valid Content-Length.")
        limit = self.server.limits.max_upload_bytes
        if int(length) > limit:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise UploadRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"The file is {int(length) / 2**20:.1f} MiB; this page accepts up to "
                                 f"{limit / 2**20:.0f} MiB.")
        return self.rfile.read(int(length))

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        if not self.server.quiet:
            super().log_message(format, *args)


def make_server(service: DetectorService, host: str = "127.0.0.1", port: int = 8000,
                limits: Optional[AppLimits] = None, display_thresh: float = 0.3, quiet: bool = False) -> AppServer:
    """An :class:`AppServer` bound to ``host:port`` (port 0: any free port); call ``serve_forever()``."""
    if not service.score_floor <= display_thresh <= 1.0:
        raise ValueError(f"the display threshold {display_thresh} must lie in [score floor {service.score_floor}, 1]")
    return AppServer((host, port), service, limits or AppLimits(), display_thresh, quiet=quiet)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.app",
        description="Serve a page to try a trained detector: pick or drop a photo, see its boxes with class names "
                    "and scores, move the score slider. Offline; listens on 127.0.0.1 by default.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="RUN_DIR/checkpoint.pt written by train_fcos.py (PyTorch)")
    source.add_argument("--onnx", help="a file written by python -m eecs598.export (onnxruntime)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--score-floor", type=float, default=0.05,
                        help="the network's score threshold; the slider goes from here to 1 (default 0.05)")
    parser.add_argument("--display-thresh", type=float, default=0.3, help="the slider's start (default 0.3)")
    parser.add_argument("--nms-thresh", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted file (default 20 MiB)")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest accepted image (default 40 MP)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the detector")
    parser.add_argument("--device", default="cpu", help="device of the PyTorch model (default cpu)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        service = (torch_service(args.checkpoint, args.score_floor, args.nms_thresh, args.device) if args.checkpoint
                   else onnx_service(args.onnx, args.score_floor, args.nms_thresh, args.threads))
        limits = AppLimits(int(args.max_upload_mb * 2 ** 20), int(args.max_megapixels * 1e6))
        server = make_server(service, args.host, args.port, limits, args.display_thresh)
    except (ImportError, OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(f"WARNING: listening on {args.host}: other machines can reach this page and send it files",
              file=sys.stderr)
    print(f"Serving the detector ({service.description}) at {server.url}  (Ctrl+C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
