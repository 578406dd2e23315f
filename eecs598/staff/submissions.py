"""Reading a submission without trusting it: a folder or a zip, the two graded modules and nothing else.

Nothing is extracted: the two modules are read from the folder (regular files only: a symbolic link could
point at the solution) or from the zip's members (at the top or inside one top-level folder), each at most
:data:`MAX_MODULE_BYTES`, so path traversal, links, zip bombs, duplicate or encrypted members cannot touch
the grading machine. A problem costs the submission the functions of that file (reported like an import
error), never the batch; only a path that is neither a folder nor a zip is the caller's error.
"""
from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .trusted import MODULE_FILES, GraderError

__all__ = ["Submission", "read_submission", "MAX_MODULE_BYTES"]

MAX_MODULE_BYTES = 4 << 20
MAX_ZIP_MEMBERS = 10_000


@dataclass
class Submission:
    label: str
    files: Dict[str, str] = field(default_factory=dict)  # file name -> text
    problems: Dict[str, str] = field(default_factory=dict)  # file name -> why it is not there


def _decode(data: bytes, file: str, submission: Submission) -> None:
    if len(data) > MAX_MODULE_BYTES:
        submission.problems[file] = f"{file} is larger than {MAX_MODULE_BYTES >> 20} MiB"
        return
    try:
        submission.files[file] = data.decode("utf-8")
    except UnicodeDecodeError:
        submission.problems[file] = f"{file} is not UTF-8 text"


def _read_folder(folder: str, submission: Submission) -> None:
    for file in MODULE_FILES:
        path = os.path.join(folder, file)
        try:
            info = os.lstat(path)
        except OSError:
            submission.problems[file] = f"{file} is missing from the submission"
            continue
        if not stat.S_ISREG(info.st_mode):
            submission.problems[file] = f"{file} is not a regular file (a link or folder is not accepted)"
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_MODULE_BYTES + 1)
        except OSError as error:
            submission.problems[file] = f"{file} cannot be read ({error.strerror})"
            continue
        _decode(data, file, submission)


def _member_for(infos: List[zipfile.ZipInfo], file: str) -> List[zipfile.ZipInfo]:
    """The zip members that are ``file`` at the top or one folder down (``__MACOSX`` left out)."""
    found = []
    for info in infos:
        parts = [part for part in info.filename.replace("\\", "/").split("/") if part not in ("", ".")]
        if parts and parts[-1] == file and len(parts) <= 2 and parts[0] != "__MACOSX":
            found.append(info)
    top = [info for info in found if "/" not in info.filename.strip("/").replace("\\", "/")]
    return top or found


def _read_zip(path: str, submission: Submission) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_ZIP_MEMBERS:
                raise zipfile.BadZipFile(f"more than {MAX_ZIP_MEMBERS} members")
            for file in MODULE_FILES:
                members = _member_for(infos, file)
                if not members:
                    submission.problems[file] = f"{file} is missing from the submission"
                elif len(members) > 1:
                    submission.problems[file] = f"the zip holds {file} more than once"
                elif stat.S_ISLNK(members[0].external_attr >> 16) or members[0].is_dir():
                    submission.problems[file] = f"{file} in the zip is a link or folder, not a file"
                elif members[0].flag_bits & 0x1:
                    submission.problems[file] = f"{file} in the zip is encrypted"
                elif members[0].file_size > MAX_MODULE_BYTES:
                    submission.problems[file] = f"{file} is larger than {MAX_MODULE_BYTES >> 20} MiB"
                else:
                    with archive.open(members[0]) as f:
                        _decode(f.read(MAX_MODULE_BYTES + 1), file, submission)
    except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, NotImplementedError, EOFError, ValueError) as error:
        for file in MODULE_FILES:
            submission.files.pop(file, None)
            submission.problems[file] = f"the zip cannot be read ({type(error).__name__})"


def _single_zip(folder: str) -> Optional[str]:
    """A folder holding no module but exactly one zip (an upload area such as Gradescope's): that zip."""
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    zips = [name for name in names if name.lower().endswith(".zip")]
    if len(zips) == 1 and not any(name in names for name in MODULE_FILES):
        path = os.path.join(folder, zips[0])
        return path if os.path.isfile(path) and not os.path.islink(path) else None
    return None


def read_submission(path: str) -> Submission:
    """The graded modules of a submission (a folder, a folder with one zip, or a zip)."""
    submission = Submission(path)
    if os.path.isdir(path):
        inner = _single_zip(path)
        _read_zip(inner, submission) if inner else _read_folder(path, submission)
    elif os.path.isfile(path) and zipfile.is_zipfile(path):
        _read_zip(path, submission)
    else:
        raise GraderError(f"submission {path} is neither a folder nor a zip file")
    return submission
