"""Tests of the demo page (eecs598.tools.app): its HTTP answers, and a real headless Chromium using it.

The reference for the detections is ``eecs598.tools.detect.detect_photos`` (the core of
``python -m eecs598.predict``) on the same photo with the same thresholds.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (``.ci/run``
installs the first two, the ``dev`` extra the third); it skips with the reason where one is missing. The same
routine takes the README's screenshot:

    python tests/test_app.py --checkpoint runs/shapes-demo/checkpoint.pt --image PHOTO --out docs/images/app.png
"""
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:  # run as a script (the screenshot) as well as under pytest
    sys.path.insert(0, TESTS)

from conftest import REPO_ROOT, VOC_SAMPLE_DIR  # noqa: E402
from eecs598.data.images import load_rgb_image  # noqa: E402
from eecs598.tools import app  # noqa: E402
from eecs598.tools.detect import detect_photos  # noqa: E402
from eecs598.tools.detector import load_detector  # noqa: E402
from tiny_checkpoint import save_checkpoint  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
VOC_PHOTO = os.path.join(VOC_SAMPLE_DIR, "VOCdevkit", "VOC2007", "JPEGImages", "000005.jpg")
FLOOR, SHOWN, NMS = 0.05, 0.3, 0.5


class RunningPage:
    """``make_server`` on a free loopback port, served from a background thread until ``close()``."""

    def __init__(self, service, limits=None, display_thresh=SHOWN):
        self.service = service
        self.server = app.make_server(service, port=0, limits=limits, display_thresh=display_thresh, quiet=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.url

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(str(tmp_path_factory.mktemp("app") / "checkpoint.pt"))


@pytest.fixture(scope="module")
def page(checkpoint):
    running = RunningPage(app.torch_service(checkpoint, score_floor=FLOOR, nms_thresh=NMS),
                          limits=app.AppLimits(max_upload_bytes=2 * 2 ** 20, max_pixels=4_000_000))
    yield running
    running.close()


def request(url, data=None, headers=None):
    """``(status, headers, body bytes)``; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def expected_records(checkpoint, photo_path, score_thresh):
    """predict's detections: detect_photos on the photo at that threshold, as JSON records."""
    loaded = load_detector(checkpoint)
    result, = detect_photos(loaded.model, [load_rgb_image(photo_path)], loaded.image_size, score_thresh, NMS)
    return result.as_records(loaded.class_names)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def test_the_page_is_served_and_loads_nothing_from_elsewhere(page):
    status, headers, body = request(page.url)
    html = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html") and 'id="threshold"' in html
    assert "http" not in html and "//" not in html  # no address of another site, not even protocol-relative
    for name in ("app.js", "app.css"):
        status, _, body = request(page.url + name)
        assert status == 200 and b"http" not in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = request(page.url + "api/info")
    info = json.loads(body)
    assert status == 200 and info["class_names"] == ["circle", "square", "triangle"] and info["score_floor"] == FLOOR


@pytest.mark.parametrize("path", ["/../pyproject.toml", "/%2e%2e/pyproject.toml", "/app_static/app.js",
                                  "/..%2f..%2fetc/passwd", "//etc/passwd", "/app.py"])
def test_nothing_outside_the_page_files_is_served(page, path):
    status, _, body = request(page.url.rstrip("/") + path)
    assert status == 404 and b"[project]" not in body and b"root:" not in body


def test_an_upload_gets_predicts_detections(page, checkpoint, voc_sample_dir):
    with open(VOC_PHOTO, "rb") as f:
        status, _, body = request(page.url + "api/detect", f.read())
    answer = json.loads(body)
    assert status == 200 and (answer["width"], answer["height"]) == (500, 375)
    assert answer["image"].startswith("data:image/jpeg;base64,")
    assert answer["detections"] == expected_records(checkpoint, VOC_PHOTO, FLOOR) != []


def _png(width, height):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")  # a few kB for millions of pixels
    return buffer.getvalue()


@pytest.mark.parametrize("name, data, status, words", [
    ("text", b"hello, this is not a photo\n" * 10, 415, "not an image"),
    ("empty", b"", 400, "empty"),
    ("truncated JPEG", None, 400, "corrupt or truncated"),
    ("too many pixels", "png", 413, "megapixels"),
])
def test_bad_files_get_a_message_not_a_traceback(page, voc_sample_dir, name, data, status, words):
    if data is None:
        with open(VOC_PHOTO, "rb") as f:
            data = f.read()[:5000]
    elif data == "png":
        data = _png(2500, 2000)  # 5 MP > the page's 4 MP limit
    got, headers, body = request(page.url + "api/detect", data)
    answer = json.loads(body)
    assert got == status and words in answer["error"] and "Traceback" not in answer["error"], answer


def test_a_file_over_the_size_limit_is_refused_unread(page):
    """The headers announce 2 MiB + 1 byte and no body follows: the answer must come anyway (the server never
    waits for, nor reads, a body over the limit)."""
    import http.client
    from urllib.parse import urlsplit

    calls = page.service.calls
    address = urlsplit(page.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.putrequest("POST", "/api/detect")
        connection.putheader("Content-Length", str(2 * 2 ** 20 + 1))
        connection.endheaders()
        response = connection.getresponse()
        status, body = response.status, response.read()
    finally:
        connection.close()
    assert status == 413 and "MiB" in json.loads(body)["error"] and page.service.calls == calls


def test_the_server_listens_on_localhost_by_default(checkpoint):
    parser = app._parser()
    assert parser.parse_args(["--checkpoint", "x"]).host == "127.0.0.1"
    running = RunningPage(app.torch_service(checkpoint))
    try:
        assert running.server.server_address[0] == "127.0.0.1"
    finally:
        running.close()


def test_command_line_help_and_errors(tmp_path, capsys):
    help_text = subprocess.run([sys.executable, "-m", "eecs598.app", "--help"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0 and "--checkpoint" in help_text.stdout and "127.0.0.1" in help_text.stdout
    assert app.main(["--checkpoint", str(tmp_path / "none.pt"), "--port", "0"]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_the_exported_model_can_serve_the_page(checkpoint, tmp_path, voc_sample_dir):
    """``--onnx``: the same detections as the PyTorch page, within the export's tolerances."""
    pytest.importorskip("onnxruntime", reason="the --onnx page needs onnxruntime (extra 'export')")
    from eecs598.tools import export

    onnx_path = str(tmp_path / "model.onnx")
    export.export_checkpoint(checkpoint, onnx_path)
    service = app.onnx_service(onnx_path, score_floor=SHOWN)
    got = service.detect(load_rgb_image(VOC_PHOTO))
    expected = expected_records(checkpoint, VOC_PHOTO, SHOWN)
    assert len(got) == len(expected) > 0
    for a, b in zip(sorted(got, key=lambda r: -r["score"]), sorted(expected, key=lambda r: -r["score"])):
        assert a["class"] == b["class"] and abs(a["score"] - b["score"]) <= 1e-4
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 0.011  # records round boxes to 0.01 px


# ---------------------------------------------------------------------------------------------
# A real browser
# ---------------------------------------------------------------------------------------------


def start_browser(user_data_dir, width=1300, height=900):
    """Headless Debian Chromium through Selenium with the system chromedriver (nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return {condition};"))


def shown_detections(driver):
    """The rows of the page's detection list, as records."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#detections tr.detection')].map(row => ({
            box: JSON.parse(row.dataset.box), class: row.dataset.class,
            class_id: parseInt(row.dataset.classId), score: parseFloat(row.dataset.score)}));""")


def upload(driver, url, photo_path):
    """Open the page, choose the photo in its file input, wait for the answer (drawn, or an error shown)."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, "document.body.dataset.ready === 'true'")
    driver.find_element(By.ID, "file").send_keys(os.path.abspath(photo_path))
    wait_for(driver, "['done', 'error'].includes(document.body.dataset.state)")


def set_slider(driver, value):
    driver.execute_script("""const s = document.getElementById('threshold'); s.value = arguments[0];
                             s.dispatchEvent(new Event('input'));""", str(value))


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"no headless browser: {CHROMIUM} and {CHROMEDRIVER} come from Debian's chromium and "
                    f"chromium-driver packages (.ci/run installs them)")
    pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium (dev extra)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = start_browser(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_in_a_browser_a_photo_shows_predicts_detections_and_the_slider_redraws_locally(
        browser, page, checkpoint, voc_sample_dir, tmp_path):
    calls = page.service.calls
    upload(browser, page.url, VOC_PHOTO)
    assert browser.execute_script("return document.getElementById('error').hidden") is True
    shown = shown_detections(browser)
    assert shown == expected_records(checkpoint, VOC_PHOTO, SHOWN) != []
    canvas = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
    assert canvas == [500, 375]
    browser.save_screenshot(str(tmp_path / "app.png"))
    assert (tmp_path / "app.png").stat().st_size > 10_000

    set_slider(browser, 0.45)
    higher = shown_detections(browser)
    assert higher == expected_records(checkpoint, VOC_PHOTO, 0.45) and len(higher) < len(shown)
    assert "0.45" in browser.find_element("id", "summary").text
    assert page.service.calls == calls + 1  # one network run for the photo, none for the slider


def test_in_a_browser_a_bad_file_gets_a_message_on_the_page(browser, page, tmp_path):
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("these are notes, not a photo\n")
    upload(browser, page.url, str(not_a_photo))
    message = browser.find_element("id", "error").text
    assert "not an image" in message and "Traceback" not in message
    assert shown_detections(browser) == []


# ---------------------------------------------------------------------------------------------
# The README's screenshot, with the same routine
# ---------------------------------------------------------------------------------------------


def take_screenshot(checkpoint_path, photo_path, out_path, display_thresh=0.5, width=1100, height=780):
    """Serve ``checkpoint_path``, upload ``photo_path`` in headless Chromium, save the page as a PNG (256
    colours, a few tens of kB, for the docs)."""
    from PIL import Image

    running = RunningPage(app.torch_service(checkpoint_path, score_floor=FLOOR, nms_thresh=NMS),
                          display_thresh=display_thresh)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = start_browser(profile, width, height)
    try:
        upload(driver, running.url, photo_path)
        time.sleep(0.5)
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        shot.quantize(colors=256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.FLOYDSTEINBERG).save(
            out_path, optimize=True)
        return shown_detections(driver)
    finally:
        driver.quit()
        running.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Screenshot of the demo page with a photo (for the README)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--display-thresh", type=float, default=0.5)
    args = parser.parse_args()
    rows = take_screenshot(args.checkpoint, args.image, args.out, args.display_thresh)
    print(f"wrote {args.out}: {len(rows)} detections shown")
