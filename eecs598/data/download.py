"""The course's VOC 2007 download: three files, md5-checked, bounded in time, nothing half-written left."""
import hashlib
import http.client
import math
import os
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from typing import Optional

__all__ = ["VOC_URL_BASE", "VOC_FILES_MD5", "DownloadError", "download_voc2007", "voc_manual_instructions"]

VOC_URL_BASE = "https://web.eecs.umich.edu/~justincj/data/"
# md5 of the course's files (also listed in the README); the tar is the official VOC 2007 trainval archive.
VOC_FILES_MD5 = {
    "VOCtrainval_06-Nov-2007.tar": "c52e279531787c972589f7e41ab4ae64",
    "voc07_train.json": "21ab74d443b760521c8d089efbc55052",
    "voc07_val.json": "e6f6209f240ba25486d9bb098849f6c7",
}
VOC_NUM_TRAINVAL_IMAGES = 5011  # JPEGs in the official trainval archive


def _md5(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def voc_manual_instructions(dataset_dir: str, url_base: str) -> str:
    lines = [f"  {url_base}{name}  ->  {os.path.join(dataset_dir, name)}  (md5 {md5})"
             for name, md5 in VOC_FILES_MD5.items()]
    return ("Download these files by hand (e.g. on a machine with internet access):\n" + "\n".join(lines)
            + f"\nthen extract the tar inside {dataset_dir} (tar xf VOCtrainval_06-Nov-2007.tar), so that "
            f"{os.path.join(dataset_dir, 'VOCdevkit', 'VOC2007', 'JPEGImages')} holds the JPEGs, and build the "
            f"dataset with download=False.")


def _voc_images_present(dataset_dir: str) -> bool:
    image_dir = os.path.join(dataset_dir, "VOCdevkit", "VOC2007", "JPEGImages")
    return os.path.isdir(image_dir) and len(os.listdir(image_dir)) >= VOC_NUM_TRAINVAL_IMAGES


PARTIAL_MARKER = ".partial-"  # temporaries: "<file name>.partial-<random>", ".VOCdevkit.partial-<random>"


class DownloadError(RuntimeError):
    """A file of the dataset could not be downloaded or extracted.

    Attributes:
        url: what was being fetched (or the archive being extracted).
        reason: a short description of what went wrong (the message adds the manual-download steps).
    """

    def __init__(self, message: str, url: str, reason: str):
        super().__init__(message)
        self.url, self.reason = url, reason


def _remove_download_orphans(dataset_dir: str) -> None:
    """Delete temporaries that a killed download or extraction left in ``dataset_dir``."""
    prefixes = tuple([name + PARTIAL_MARKER for name in VOC_FILES_MD5] + [".VOCdevkit" + PARTIAL_MARKER])
    legacy = {name + ".part" for name in VOC_FILES_MD5}  # the name earlier versions used
    removed = []
    for entry in os.listdir(dataset_dir):
        if entry.startswith(prefixes) or entry in legacy:
            path = os.path.join(dataset_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(entry)
    if removed:
        print(f"Removed {len(removed)} unfinished download file(s) in {dataset_dir}: {', '.join(sorted(removed))}")


class _TooSlow(Exception):
    """A transfer that passed its deadline or fell below the minimum rate."""


def _fetch(url: str, path: str, timeout: float, deadline: Optional[float], min_rate: float, window: float,
           progress: bool) -> None:
    """Download ``url`` into the file ``path``, bounded in time.

    Three limits, so that no server can keep it waiting forever: ``timeout`` seconds without a single byte
    (socket timeout); less than ``min_rate`` bytes/s over any ``window`` seconds (a server that trickles a
    few bytes now and then); and ``deadline`` seconds in all (default: 60 s + the announced size at
    ``min_rate``). Bytes are read as they arrive (``read1``), so the limits are checked at least every
    ``timeout`` seconds.

    Raises:
        DownloadError: naming ``url`` and the reason (``path`` may then hold part of the file).
    """
    start = time.monotonic()
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "fcos-a4 (python urllib)"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(path, "wb") as out:
            total = response.length  # Content-Length, or None
            limit = deadline if deadline is not None else 60.0 + (total or 0) / min_rate
            window_start, window_bytes = start, 0
            with _progress_bar(total, os.path.basename(url), progress) as bar:
                while True:
                    chunk = response.read1(1 << 16)  # returns as soon as some bytes are there
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    now = time.monotonic()
                    if now - start > limit:
                        raise _TooSlow(f"not finished after {limit:g} s (the deadline for this file), "
                                           f"{_size(received)} of {_size(total)} received")
                    if now - window_start >= window:
                        rate = (received - window_bytes) / (now - window_start)
                        if rate < min_rate:
                            raise _TooSlow(f"only {rate:.0f} bytes/s over {now - window_start:.1f} s (minimum "
                                               f"{min_rate:g}), {_size(received)} of {_size(total)} received")
                        window_start, window_bytes = now, received
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
            out.flush()
            os.fsync(out.fileno())
    except Exception as e:
        if isinstance(e, _TooSlow):
            reason = str(e)
        elif isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP error {e.code} ({e.reason})"
        elif isinstance(e, urllib.error.URLError):
            reason = f"cannot connect ({e.reason})"
        elif isinstance(e, socket.timeout):  # (an alias of TimeoutError)
            reason = f"no data for {timeout:g} s ({_size(received)} received)"
        elif isinstance(e, http.client.IncompleteRead):
            reason = f"the connection closed early ({_size(received)} of {_size(received + (e.expected or 0))})"
        else:
            reason = f"{type(e).__name__}: {e}"
        raise DownloadError(f"Could not download {url}: {reason}.", url, reason) from e


def _size(num_bytes: Optional[int]) -> str:
    if num_bytes is None:
        return "? bytes"
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 100_000 else f"{num_bytes} bytes"


def _progress_bar(total: Optional[int], name: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                dynamic_ncols=True, leave=False)


def _extract_voc_tar(tar_path: str, dataset_dir: str) -> None:
    """Extract the VOC tar's ``VOCdevkit/VOC2007`` into ``dataset_dir`` through a temporary folder.

    The images appear in ``dataset_dir/VOCdevkit/VOC2007`` only once the whole archive is extracted; an
    incomplete ``VOC2007`` folder from an earlier attempt is replaced, other folders in ``VOCdevkit`` are
    left alone. Nothing temporary is left after a failure.

    Raises:
        DownloadError: the archive is damaged or holds no ``VOCdevkit/VOC2007``.
    """
    print(f"Extracting {tar_path} ...")
    tmp = tempfile.mkdtemp(prefix=".VOCdevkit" + PARTIAL_MARKER, dir=dataset_dir)
    try:
        try:
            with tarfile.open(tar_path) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")  # refuses absolute paths and ".." members
                else:
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            reason = f"the archive is damaged ({type(e).__name__}: {e}); delete it and download it again"
            raise DownloadError(f"Could not extract {tar_path}: {reason}.", tar_path, reason) from e
        extracted = os.path.join(tmp, "VOCdevkit", "VOC2007")
        if not os.path.isdir(extracted):
            reason = "it holds no VOCdevkit/VOC2007 folder (not the VOC 2007 trainval archive)"
            raise DownloadError(f"Could not extract {tar_path}: {reason}.", tar_path, reason)
        destination = os.path.join(dataset_dir, "VOCdevkit", "VOC2007")
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        if os.path.exists(destination):  # incomplete (fewer JPEGs than the archive): move it out of the way
            os.replace(destination, os.path.join(tmp, "previous-VOC2007"))
        os.replace(extracted, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_voc2007(dataset_dir: str, url_base: str = VOC_URL_BASE, timeout: float = 10.0, *,
                     deadline: Optional[float] = None, min_rate: float = 10_000.0, rate_window: float = 30.0,
                     progress: bool = True) -> None:
    """Download and extract the course's VOC 2007 files into ``dataset_dir``.

    Each file is downloaded to a temporary ``<name>.partial-<random>`` beside its target, md5-verified and
    only then renamed, so an interrupted download never looks complete, and no temporary file survives a
    failure (leftovers of a killed process are removed by the next call). Files already present with the
    right md5 are skipped; the tar is only fetched and extracted when the JPEGs are missing. The tar is
    extracted through a temporary folder too.

    Args:
        dataset_dir: target directory (created if needed).
        url_base: URL prefix of the three files.
        timeout: seconds without any data before giving up (also the connection timeout), so that an
            offline machine fails fast instead of hanging.
        deadline: seconds allowed per file in all (None: 60 s + the file's announced size at ``min_rate``).
        min_rate, rate_window: give up when fewer than ``min_rate`` bytes/s arrive over ``rate_window`` s.
        progress: show a progress bar per file.

    Raises:
        DownloadError (a RuntimeError): a download failed, was too slow, or a file has the wrong md5; the
            message says how to download by hand (``.url`` and ``.reason`` hold the short version).
    """
    for name, value in (("timeout", timeout), ("min_rate", min_rate), ("rate_window", rate_window),
                        ("deadline", 1.0 if deadline is None else deadline)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0):
            raise ValueError(f"download_voc2007: {name} must be a finite number > 0, got {value!r}")
    os.makedirs(dataset_dir, exist_ok=True)
    _remove_download_orphans(dataset_dir)
    images_present = _voc_images_present(dataset_dir)
    for name, md5 in VOC_FILES_MD5.items():
        target = os.path.join(dataset_dir, name)
        if name.endswith(".tar") and images_present:
            continue
        if os.path.isfile(target):
            if _md5(target) == md5:
                continue
            print(f"{target} exists but its md5 is wrong; downloading it again.")
        url = url_base + name
        print(f"Downloading {url} -> {target}")
        fd, part = tempfile.mkstemp(prefix=name + PARTIAL_MARKER, dir=dataset_dir)
        os.close(fd)
        try:
            _fetch(url, part, timeout, deadline, min_rate, rate_window, progress)
            actual = _md5(part)
            if actual != md5:
                reason = f"its md5 is {actual}, expected {md5} (a corrupted or changed file)"
                raise DownloadError(f"Downloaded {url}, but {reason}.", url, reason)
            os.replace(part, target)
        except DownloadError as e:
            raise DownloadError(f"{e}\n" + voc_manual_instructions(dataset_dir, url_base), e.url, e.reason) from e
        finally:  # any failure, Ctrl-C included: no temporary file stays behind
            if os.path.exists(part):
                os.remove(part)
    if not images_present:
        _extract_voc_tar(os.path.join(dataset_dir, "VOCtrainval_06-Nov-2007.tar"), dataset_dir)
