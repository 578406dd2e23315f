"""Planted student bugs: small text patches of the solution, each breaking one graded function.

A bug file (``eecs598/staff/bugs/<name>.diff``) is a unified diff without line numbers::

    # Planted bug: centerness without the square root.
    # Breaks: fcos_make_centerness_targets
    --- one_stage_detector.py
    @@
    -    centerness = torch.sqrt((numerator / denominator).clamp(min=0))
    +    centerness = (numerator / denominator).clamp(min=0)

Each ``@@`` hunk's old lines (context ``' '`` and removed ``'-'``) must occur exactly once in the file,
and its changed lines must lie inside a ``### BEGIN SOLUTION`` region (a student only writes there);
hunks are found by content, so the patches survive edits elsewhere in the solution. ``# Breaks:``
names the graded function (as in ``points.json``) that must lose its points, and only it.
"""
from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from eecs598.staff import release

__all__ = ["Bug", "BUGS_DIR", "load_bugs", "apply_bug", "write_buggy_submission"]

BUGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bugs")


@dataclass
class Bug:
    name: str
    description: str
    breaks: str
    # file -> hunks, each (old lines, new lines)
    hunks: Dict[str, List[Tuple[List[str], List[str]]]] = field(default_factory=dict)


def parse_bug(text: str, name: str) -> Bug:
    description, breaks = [], None
    hunks: Dict[str, List[Tuple[List[str], List[str]]]] = {}
    current_file = None
    old: List[str] = []
    new: List[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if current_file is None and line.startswith("#"):
            body = line[1:].strip()
            if body.lower().startswith("breaks:"):
                breaks = body.split(":", 1)[1].strip()
            else:
                description.append(body.removeprefix("Planted bug:").strip())
        elif line.startswith("--- "):
            current_file = line[4:].strip()
            hunks.setdefault(current_file, [])
        elif line.startswith("@@"):
            if current_file is None:
                raise ValueError(f"{name}.diff:{number}: @@ before a '--- FILE' line")
            old, new = [], []
            hunks[current_file].append((old, new))
        elif line == "" and number == len(text.split("\n")):
            continue  # final newline
        elif line[:1] in (" ", "-", "+") and current_file is not None and hunks[current_file]:
            if line[0] in " -":
                old.append(line[1:])
            if line[0] in " +":
                new.append(line[1:])
        else:
            raise ValueError(f"{name}.diff:{number}: cannot parse {line!r}")
    if breaks is None:
        raise ValueError(f"{name}.diff: no '# Breaks: FUNCTION' line")
    if not hunks:
        raise ValueError(f"{name}.diff: no hunks")
    return Bug(name, " ".join(description).strip(), breaks, hunks)


def load_bugs(directory: str = BUGS_DIR) -> List[Bug]:
    """Every ``*.diff`` bug of ``directory``, sorted by name."""
    bugs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.diff"))):
        with open(path, encoding="utf-8") as f:
            bugs.append(parse_bug(f.read(), os.path.splitext(os.path.basename(path))[0]))
    return bugs


def apply_bug(bug: Bug, sources: Dict[str, str]) -> Dict[str, str]:
    """Return ``sources`` (file name -> solution text) with ``bug`` applied.

    Raises:
        ValueError: a hunk whose old lines are not found exactly once, or that changes lines outside the
            solution regions.
    """
    patched = dict(sources)
    for file, hunks in bug.hunks.items():
        lines = patched[file].split("\n")
        for old, new in hunks:
            starts = [i for i in range(len(lines) - len(old) + 1) if lines[i:i + len(old)] == old]
            if len(starts) != 1:
                raise ValueError(f"bug {bug.name}: the lines {old!r} occur {len(starts)} times in {file}, expected once")
            start = starts[0]
            regions = release.find_regions("\n".join(lines), file)
            if not any(region.is_student_work and region.begin < start and start + len(old) <= region.end
                       for region in regions):
                raise ValueError(f"bug {bug.name}: its change to {file} at line {start + 1} is outside the "
                                 "student's solution regions")
            lines[start:start + len(old)] = new
        patched[file] = "\n".join(lines)
    return patched


def write_buggy_submission(bug: Bug, out_dir: str, solution_dir: str = release.REPO_ROOT) -> str:
    """Write a submission folder: the solution's ``common.py`` and ``one_stage_detector.py`` with
    ``bug`` applied. Returns ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    sources = {}
    for file in ("common.py", "one_stage_detector.py"):
        with open(os.path.join(solution_dir, file), encoding="utf-8", newline="") as f:
            sources[file] = f.read()
    for file, text in apply_bug(bug, sources).items():
        with open(os.path.join(out_dir, file), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return out_dir


def copy_solution_submission(out_dir: str, solution_dir: str = release.REPO_ROOT) -> str:
    """A submission folder holding the solution's two modules unchanged."""
    os.makedirs(out_dir, exist_ok=True)
    for file in ("common.py", "one_stage_detector.py"):
        shutil.copy(os.path.join(solution_dir, file), out_dir)
    return out_dir
