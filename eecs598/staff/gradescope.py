"""The Gradescope autograder: ``python -m eecs598.grade --gradescope-bundle autograder.zip``.

The zip holds what Gradescope expects at its top (``setup.sh``, ``run_autograder``) and the grader's source
(unpacked to ``/autograder/source``): ``eecs598/`` with its staff wing and the reference solution's
``common.py`` and ``one_stage_detector.py``, which the sandbox never sees. ``setup.sh`` (run once, as root,
when Gradescope builds the image) installs the grader's dependencies into ``/opt/fcos-grader`` (the project
itself is not installed: an installed copy of the solution in site-packages would sit in the sandbox's
view); ``run_autograder`` grades ``/autograder/submission`` (the uploaded files, or the uploaded zip) into
``/autograder/results/results.json`` (:func:`.report.gradescope_results`), running student code as
``nobody`` in the sandbox. A grader failure exits non-zero without results, which Gradescope shows as an
autograder error rather than a score.

``AUTOGRADER_ROOT`` and ``FCOS_GRADER_PYTHON`` (environment) point ``run_autograder`` at another tree and
interpreter: the kit's tests run it against a fake ``/autograder``.
"""
from __future__ import annotations

import os
import re
import stat
import zipfile
from typing import List, Optional

from .release import _requirements
from .trusted import VISIBILITIES, GraderError, load_points

__all__ = ["write_bundle", "bundle_files", "SETUP_SH", "RUN_AUTOGRADER"]

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder image.
set -euo pipefail
cd /autograder/source
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update
    apt-get install -y --no-install-recommends python3 python3-venv python3-pip
fi
python3 -m venv /opt/fcos-grader
/opt/fcos-grader/bin/pip install --upgrade pip
/opt/fcos-grader/bin/pip install -r requirements-grader.txt
id nobody >/dev/null  # student code runs as this user
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: grade /autograder/submission into results/results.json.
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{FCOS_GRADER_PYTHON:-/opt/fcos-grader/bin/python}}"
cd "$ROOT/source"
mkdir -p "$ROOT/results"
exec env OMP_NUM_THREADS=1 MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -m eecs598.grade "$ROOT/submission" \\
    --solution "$ROOT/source" --gradescope-results "$ROOT/results/results.json" \\
    --workers {workers} --hidden-visibility {visibility} "$@"
"""

# Runtime requirements the grader does not need (the notebook kernel).
_NOT_FOR_GRADING = ("ipykernel",)
_DEV_ONLY = re.compile(r"^(pytest|pytest-xdist|nbclient|nbformat|tensorboard|pycocotools|efficientnet)", re.I)


def bundle_files(solution_dir: str) -> List[str]:
    """Paths (relative, ``/``-separated) of the source that goes to ``/autograder/source``."""
    files = [name for name in ("common.py", "one_stage_detector.py", "pyproject.toml")
             if os.path.isfile(os.path.join(solution_dir, name))]
    for folder, subfolders, names in os.walk(os.path.join(solution_dir, "eecs598")):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        relative = os.path.relpath(folder, solution_dir).replace(os.sep, "/")
        files += [f"{relative}/{name}" for name in sorted(names) if not name.endswith((".pyc", ".pyo"))]
    return files


def _grader_requirements(solution_dir: str) -> str:
    requirements = [r for r in _requirements(solution_dir)
                    if not r.lower().startswith(_NOT_FOR_GRADING) and not _DEV_ONLY.match(r)]
    if not any(r.lower().startswith("safetensors") for r in requirements):
        requirements.append("safetensors>=0.4")
    return "\n".join(requirements) + "\n"


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = ((stat.S_IFREG | (0o755 if executable else 0o644)) << 16)
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def write_bundle(path: str, solution_dir: str, points_path: str, hidden_visibility: Optional[str] = None,
                 workers: int = 2) -> List[str]:
    """Write the autograder zip to ``path``; returns its member names.

    Args:
        path: the zip to write.
        solution_dir: the solution repository (its ``eecs598/`` and reference modules go in).
        points_path: the points file (validated; it must be the one inside ``solution_dir/eecs598/staff``
            or it is copied over it).
        hidden_visibility: when students see the hidden checks' results (Gradescope visibility); default
            the points file's, else ``after_published``.
        workers: sandboxed runs at a time on Gradescope's machine.
    """
    points = load_points(points_path)
    visibility = hidden_visibility or points.get("hidden_visibility", "after_published")
    if visibility not in VISIBILITIES:
        raise GraderError(f"--hidden-visibility must be one of {VISIBILITIES}, got {visibility!r}")
    for name in ("common.py", "one_stage_detector.py"):
        if not os.path.isfile(os.path.join(solution_dir, name)):
            raise GraderError(f"--solution {solution_dir} holds no {name}")
    staff_points = os.path.join(solution_dir, "eecs598", "staff", "points.json")
    names = []
    with zipfile.ZipFile(path, "w") as archive:
        _add(archive, "setup.sh", SETUP_SH.encode(), executable=True)
        _add(archive, "run_autograder", RUN_AUTOGRADER.format(workers=int(workers), visibility=visibility).encode(),
             executable=True)
        _add(archive, "requirements-grader.txt", _grader_requirements(solution_dir).encode())
        names += ["setup.sh", "run_autograder", "requirements-grader.txt"]
        for relative in bundle_files(solution_dir):
            source = os.path.join(solution_dir, *relative.split("/"))
            if relative == "eecs598/staff/points.json" and os.path.abspath(points_path) != os.path.abspath(staff_points):
                source = points_path
            with open(source, "rb") as f:
                _add(archive, relative, f.read())
            names.append(relative)
    return names
