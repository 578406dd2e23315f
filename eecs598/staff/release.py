"""Build the student release of the assignment from this solution (course staff only; not shipped).

The student's work is marked in the solution's source with nbgrader's markers, each on a line of its
own. They are plain Python comments, so the solution runs, imports and tests exactly as without them::

    def fcos_make_centerness_targets(deltas):
        \"\"\"...docstring, shipped to students...\"\"\"
        ### BEGIN SOLUTION
        left, top, right, bottom = deltas.unbind(dim=-1)
        ...
        return torch.where(...)
        ### END SOLUTION

Rules (``python -m eecs598.release`` refuses a file that breaks one, naming the file and line):

- ``### BEGIN SOLUTION`` and ``### END SOLUTION`` are whole lines, at the same indentation, not nested;
  every line between them is indented at least as much (or blank).
- In the release a region becomes the course banner ("Replace "pass" statement with your code" ...
  "END OF YOUR CODE") around a stub:

  - inside a function or method: ``raise NotImplementedError("<Class.method> is not implemented yet
    ...")``, so a call names the missing function (an unimplemented ``forward`` stops the notebook
    with that message);
  - inside ``__init__``, or outside any function (a block of solution-only helper functions):
    ``pass``, the course's own stub; an ``__init__`` must still construct, its class's methods raise.

  A function with several regions (``FCOS.forward``: predictions, then losses) gets "part k of n".
- A region may end with a ``### RELEASE`` line followed by commented-out code (``# `` in front of each
  line, at the region's indentation): then it is **given code that differs in the release**, not
  student work. The release gets the uncommented code instead of the solution lines and no banner.
  ``common.class_spec_nms`` uses this: the solution's version runs on NMS internals that are the
  student's work, the release's calls the student's ``nms`` once per class.
- Markers work the same in the code cells of notebooks. Markdown cells cannot hold regions.

What the release holds (``build_release``): the solution modules with their regions replaced,
``a4_helper.py``, the ``eecs598`` package without its staff wing (the ``eecs598/staff/`` folder with the
grader, hidden checks, points and planted bugs, and every module that imports it), the notebook with its regions
replaced and every output and execution count cleared, a student ``README.md``, ``requirements.txt``
and student tests (``tests/``) that skip until the function they test is implemented.

Round trip: ``reinsert_solutions(release_text, solution_text)`` puts the solution regions back into a
release file and gives the solution file back exactly (``tests/test_kit.py`` checks this): the release
changes nothing outside the marked regions.

Usage::

    python -m eecs598.release --out ../fcos-release        # DIR must be new or empty (or --force)
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

from .regions import (BEGIN_MARKER, END_MARKER, RELEASE_MARKER, Region, ReleaseError, find_regions,  # noqa: F401
                      reinsert_notebook, reinsert_solutions, release_notebook, release_source)

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "RELEASE_MARKER",
    "ReleaseError",
    "Region",
    "find_regions",
    "release_source",
    "release_notebook",
    "reinsert_solutions",
    "reinsert_notebook",
    "student_functions",
    "build_release",
    "main",
]

STAFF_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(STAFF_DIR))
KIT_DIR = STAFF_DIR  # the release's data: student tests and README template

# Files of the solution that students get. Python files and notebooks go through the region replacement
# (a file without regions is copied unchanged). The whole eecs598/ package ships too, except the staff
# wing: the eecs598/staff/ folder and every module that imports it (the command shims release.py and
# grade.py), found by reading the imports, not from a list of names.
RELEASED_ROOT_FILES = ("common.py", "one_stage_detector.py", "a4_helper.py", "one_stage_detector.ipynb", ".gitignore")
STAFF_PACKAGE = "eecs598.staff"
STUDENT_TESTS_DIR = os.path.join(KIT_DIR, "student_tests")
STUDENT_README_TEMPLATE = os.path.join(KIT_DIR, "student_README.md")

# ------------------------------------------------------------------------------------------------
# The whole release
# ------------------------------------------------------------------------------------------------


def imports_staff(source: str) -> bool:
    """Does this Python source import the staff wing (``eecs598.staff``, or ``.staff`` from ``eecs598``)?"""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False  # not importable anyway; release_source reports it
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        if any(n == STAFF_PACKAGE or n.startswith(STAFF_PACKAGE + ".") or n.lstrip(".").split(".")[0] == "staff"
               and n.startswith(".") for n in names):
            return True
    return False


def released_files(solution_dir: str = REPO_ROOT) -> List[str]:
    """Paths (relative to ``solution_dir``, ``/``-separated) of the solution files that ship."""
    files = [name for name in RELEASED_ROOT_FILES if os.path.isfile(os.path.join(solution_dir, name))]
    package = os.path.join(solution_dir, "eecs598")
    for folder, subfolders, names in os.walk(package):
        relative_folder = os.path.relpath(folder, solution_dir).replace(os.sep, "/")
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__"
                               and f"{relative_folder}/{d}" != "eecs598/staff")
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")):
                continue
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    if imports_staff(f.read()):
                        continue
            files.append(f"{relative_folder}/{name}")
    return files


def student_functions(solution_dir: str = REPO_ROOT) -> List[Tuple[str, str]]:
    """``(file, qualname)`` of every function holding student work, in file order (once each)."""
    found: List[Tuple[str, str]] = []
    for relative in released_files(solution_dir):
        if not relative.endswith(".py"):
            continue
        with open(os.path.join(solution_dir, relative), encoding="utf-8") as f:
            regions = find_regions(f.read(), relative)
        for region in regions:
            if region.is_student_work and region.qualname and (relative, region.qualname) not in found:
                found.append((relative, region.qualname))
    return found


def _requirements(solution_dir: str) -> List[str]:
    """Runtime and ``dev`` requirements from pyproject.toml (tomllib; a plain scan on Python < 3.11)."""
    path = os.path.join(solution_dir, "pyproject.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11: the two arrays are plain lists of strings
        requirements = []
        for key in ("dependencies", "dev"):
            block = re.search(rf"^{key}\s*=\s*\[(.*?)\]", text, re.MULTILINE | re.DOTALL)
            if block:
                requirements += re.findall(r'"([^"]+)"', re.sub(r"#.*", "", block.group(1)))
        return requirements
    project = tomllib.loads(text)["project"]
    return list(project.get("dependencies", [])) + list(project.get("optional-dependencies", {}).get("dev", []))


def _student_readme(solution_dir: str) -> str:
    with open(STUDENT_README_TEMPLATE, encoding="utf-8") as f:
        template = f.read()
    rows = "\n".join(f"| `{file}` | `{qualname}` |" for file, qualname in student_functions(solution_dir))
    return template.replace("{{FUNCTION_TABLE}}", rows)


def _check_output_dir(out_dir: str, solution_dir: str, force: bool) -> None:
    """Refuse an ``out_dir`` that is, holds or lies inside the solution (``--force`` or not: replacing it
    would delete solution files), is not a folder, or is a non-empty folder without ``force``."""
    out_real, solution_real = os.path.realpath(out_dir), os.path.realpath(solution_dir)
    if out_real == solution_real or out_real.startswith(solution_real + os.sep) \
            or solution_real.startswith(out_real + os.sep):
        relation = ("is the solution" if out_real == solution_real else "is inside the solution"
                    if out_real.startswith(solution_real + os.sep) else "contains the solution")
        raise ReleaseError(f"--out {out_dir} {relation} ({solution_dir}); write the release outside it")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ReleaseError(f"--out {out_dir} exists and is not a directory")
    if os.path.islink(out_dir):
        raise ReleaseError(f"--out {out_dir} is a symbolic link; give the folder itself")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ReleaseError(f"--out {out_dir} is not empty; choose a new directory or pass --force to replace it")


def _swap_in(partial: str, out_dir: str) -> None:
    """Put the finished release ``partial`` (a sibling of ``out_dir``) in place of ``out_dir`` whole: the old
    folder is renamed aside first and deleted only after the new one is in place."""
    old = None
    if os.path.isdir(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.rename(out_dir, old)
    try:
        os.rename(partial, out_dir)
    except OSError:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_release(out_dir: str, solution_dir: str = REPO_ROOT, force: bool = False) -> List[str]:
    """Write the student release of ``solution_dir`` into ``out_dir``.

    The release is written into a hidden temporary folder beside ``out_dir`` and swapped in whole when it is
    complete, so a failure (bad markers, a full disk) leaves ``out_dir`` as it was.

    Args:
        out_dir: new or empty directory (``force=True`` replaces an existing one); never the solution, a
            folder inside it or one that contains it.
        solution_dir: the solution repository (default: the one this module belongs to).
        force: replace a non-empty ``out_dir``.

    Returns:
        The written paths, relative to ``out_dir``.

    Raises:
        ReleaseError: bad markers, a release that is not valid Python, a release file that still holds a
            marker or a reference to the staff tools, or an ``out_dir`` refused above.
    """
    _check_output_dir(out_dir, solution_dir, force)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.partial-", dir=parent)
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(partial, 0o777 & ~umask)  # mkdtemp makes it private; the release is an ordinary folder
    try:
        written = _write_release(partial, solution_dir)
        _swap_in(partial, os.path.abspath(out_dir))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return written


def _write_release(out_dir: str, solution_dir: str) -> List[str]:
    """Write every release file into the (new, empty) ``out_dir``; returns their relative paths."""
    written = []

    def write(relative: str, text: str) -> None:
        path = os.path.join(out_dir, *relative.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        written.append(relative)

    for relative in released_files(solution_dir):
        with open(os.path.join(solution_dir, *relative.split("/")), encoding="utf-8", newline="") as f:
            text = f.read()
        if relative.endswith(".py"):
            text = release_source(text, relative)
        elif relative.endswith(".ipynb"):
            text = release_notebook(text, relative)
        write(relative, text)
    for name in sorted(os.listdir(STUDENT_TESTS_DIR)):
        if name.endswith(".py"):
            with open(os.path.join(STUDENT_TESTS_DIR, name), encoding="utf-8") as f:
                write(f"tests/{name}", f.read())
    write("README.md", _student_readme(solution_dir))
    write("requirements.txt", "\n".join(_requirements(solution_dir)) + "\n")

    # Nothing staff-only may leak: no marker, no hidden-check package, no staff tool.
    leaks = re.compile(r"### (BEGIN|END) SOLUTION|### RELEASE\b|eecs598\.staff")
    for relative in written:
        with open(os.path.join(out_dir, *relative.split("/")), encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if leaks.search(line):
                    raise ReleaseError(f"release file {relative}:{number} still holds staff material: {line.strip()!r}")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.release",
        description="Write the student release of this solution: every '### BEGIN SOLUTION' ... "
                    "'### END SOLUTION' region replaced by the course banner and a stub, notebook outputs "
                    "cleared, hidden checks left out, plus a student README, requirements.txt and student "
                    "tests that skip until the function they test is implemented.",
    )
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory; must be new or empty unless --force is given")
    parser.add_argument("--solution", default=REPO_ROOT, metavar="DIR",
                        help="solution repository to release (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="delete a non-empty --out directory first")
    args = parser.parse_args(argv)
    try:
        written = build_release(args.out, solution_dir=args.solution, force=args.force)
    except (ReleaseError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    functions = student_functions(args.solution)
    print(f"Wrote the student release to {args.out}: {len(written)} files, {len(functions)} functions to implement:")
    for file, qualname in functions:
        print(f"  {file}: {qualname}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
