"""Check your assignment folder and write the zip file to upload.

    python -m eecs598.submit --uniqname YOUR_UNIQNAME --umid YOUR_UMID      (in the assignment folder)

or, from the notebook, ``eecs598.tools.submit.make_a4_submission(REPO_DIR, "uniqname", "12345678")``.

Checks, before anything is written:

- ``common.py``, ``one_stage_detector.py`` and ``one_stage_detector.ipynb`` are present;
- no function is left unimplemented: no "TODO: Implement" banner of the release still holds its stub
  (``raise NotImplementedError("... is not implemented yet ...")`` or ``pass``), only ``pass`` or ``...``,
  or nothing (:mod:`eecs598.tools.stubs`);
- both modules import in a fresh Python process and define every function the course grades;
- (warnings only) the notebook has been run and none of its outputs is an error.

The zip ``<uniqname>_<umid>_A4.zip`` holds those three files, plus ``fcos_detector.pt`` (the weights the
notebook saves) when it exists.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from typing import List, Optional, Sequence, Tuple

from eecs598.tools import stubs

__all__ = ["REQUIRED_FILES", "OPTIONAL_FILES", "find_unimplemented", "check_submission", "make_a4_submission", "main"]

REQUIRED_FILES = ("common.py", "one_stage_detector.py", "one_stage_detector.ipynb")
OPTIONAL_FILES = ("fcos_detector.pt",)
GRADED_NAMES = {
    "common.py": ("DetectorBackboneWithFPN", "get_fpn_location_coords", "nms", "class_spec_nms"),
    "one_stage_detector.py": ("FCOSPredictionNetwork", "fcos_get_deltas_from_locations",
                              "fcos_apply_deltas_to_locations", "fcos_make_centerness_targets", "FCOS"),
}
IMPORT_TIMEOUT_S = 300


class SubmissionError(ValueError):
    """The folder cannot be submitted; the message lists every problem."""


def find_unimplemented(text: str, file: str) -> List[str]:
    """``"file:line: name"`` for every region of the release still unimplemented in ``text``: its stub, or
    only ``pass`` / ``...`` / nothing, left in a "TODO: Implement" banner (the formats are
    :mod:`eecs598.tools.stubs`, shared with the release that writes them)."""
    return stubs.find_unimplemented(text, file)


def _import_problems(folder: str) -> List[str]:
    """Import both modules in a fresh interpreter (the folder first on sys.path); report failures and
    missing names."""
    script = (
        "import importlib, json, sys\n"
        f"names = {json.dumps({file[:-3]: list(names) for file, names in GRADED_NAMES.items()})}\n"
        "missing = []\n"
        "for module_name, wanted in names.items():\n"
        "    module = importlib.import_module(module_name)\n"
        "    missing += [f'{module_name}.py defines no {name}' for name in wanted if not hasattr(module, name)]\n"
        "print('MISSING=' + json.dumps(missing))\n"
    )
    environment = dict(os.environ, MPLBACKEND="Agg")
    try:
        completed = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True,
                                   timeout=IMPORT_TIMEOUT_S, env=environment)
    except subprocess.TimeoutExpired:
        return [f"importing common.py and one_stage_detector.py took more than {IMPORT_TIMEOUT_S} s; remove "
                "top-level code that trains or tests (put it in the notebook)"]
    if completed.returncode != 0:
        error_lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        return ["your modules do not import: " + " | ".join(error_lines[-3:])]
    marker = [line for line in completed.stdout.splitlines() if line.startswith("MISSING=")]
    return json.loads(marker[-1][len("MISSING="):]) if marker else []


def _notebook_warnings(path: str) -> Tuple[List[str], List[str]]:
    """``(problems, warnings)`` of the notebook."""
    try:
        with open(path, encoding="utf-8") as f:
            notebook = json.load(f)
    except (OSError, ValueError) as error:
        return [f"{os.path.basename(path)} is not a valid notebook: {error}"], []
    code_cells = [cell for cell in notebook.get("cells", []) if cell.get("cell_type") == "code"]
    warnings = []
    if not any(cell.get("outputs") for cell in code_cells):
        warnings.append("the notebook has no outputs: run it from top to bottom and save it before submitting")
    errors = [output.get("ename", "error") for cell in code_cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    if errors:
        warnings.append(f"the notebook's saved outputs contain {len(errors)} error(s) ({errors[0]}); the graders see them")
    return [], warnings


def check_submission(folder: str, import_check: bool = True) -> Tuple[List[str], List[str]]:
    """``(problems, warnings)`` of an assignment folder; it can be submitted when ``problems`` is empty."""
    problems: List[str] = []
    warnings: List[str] = []
    for file in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(folder, file)):
            problems.append(f"{file} is missing from {folder}")
    unimplemented = []
    for file in ("common.py", "one_stage_detector.py"):
        path = os.path.join(folder, file)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                unimplemented += find_unimplemented(f.read(), file)
    problems += [f"not implemented yet: {entry}" for entry in unimplemented]
    notebook = os.path.join(folder, "one_stage_detector.ipynb")
    if os.path.isfile(notebook):
        notebook_problems, notebook_warnings = _notebook_warnings(notebook)
        problems += notebook_problems
        warnings += notebook_warnings
    if import_check and all(os.path.isfile(os.path.join(folder, f)) for f in GRADED_NAMES):
        problems += _import_problems(folder)
    return problems, warnings


def make_a4_submission(assignment_path: str, uniquename: Optional[str] = None, umid: Optional[str] = None,
                       out_dir: Optional[str] = None, import_check: bool = True) -> str:
    """Check ``assignment_path`` and write ``<uniquename>_<umid>_A4.zip`` into ``out_dir`` (default: the
    assignment folder). Asks for the names on a terminal when they are not given.

    Returns:
        The zip file's path.

    Raises:
        SubmissionError: listing every problem found (nothing is written then).
    """
    if not uniquename:
        uniquename = _ask("uniqname")
    if not umid:
        umid = _ask("umid")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", uniquename):
        raise SubmissionError(f"uniqname {uniquename!r} must be letters and digits only")
    if not re.fullmatch(r"[0-9]+", umid):
        raise SubmissionError(f"umid {umid!r} must be digits only")
    problems, warnings = check_submission(assignment_path, import_check=import_check)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        raise SubmissionError("cannot submit yet:\n" + "\n".join(f"  - {problem}" for problem in problems))
    out_dir = out_dir or assignment_path
    os.makedirs(out_dir, exist_ok=True)
    zip_path = os.path.join(out_dir, f"{uniquename}_{umid}_A4.zip")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in REQUIRED_FILES + OPTIONAL_FILES:
            path = os.path.join(assignment_path, file)
            if os.path.isfile(path):
                archive.write(path, arcname=file)
                print(f"  added {file}")
            elif file in OPTIONAL_FILES:
                print(f"  ({file} not found: not included)")
    return zip_path


def _ask(what: str) -> str:
    if not sys.stdin or not sys.stdin.isatty():
        raise SubmissionError(f"no {what} given: pass --{what}")
    return input(f"Enter your {what} (e.g. {'jdoe' if what == 'uniqname' else '12345678'}): ").strip()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.submit",
        description="Check that common.py, one_stage_detector.py and one_stage_detector.ipynb are present and "
                    "complete (nothing left unimplemented, the modules import) and write the zip to upload.",
    )
    parser.add_argument("--dir", default=".", help="assignment folder (default: the current folder)")
    parser.add_argument("--uniqname", help="your uniqname (asked for when missing)")
    parser.add_argument("--umid", help="your UMID (asked for when missing)")
    parser.add_argument("--out-dir", help="where to write the zip (default: the assignment folder)")
    parser.add_argument("--check-only", action="store_true", help="only run the checks, write no zip")
    args = parser.parse_args(argv)
    try:
        if args.check_only:
            problems, warnings = check_submission(args.dir)
            for warning in warnings:
                print(f"warning: {warning}")
            if problems:
                raise SubmissionError("cannot submit yet:\n" + "\n".join(f"  - {p}" for p in problems))
            print("All checks passed.")
            return 0
        zip_path = make_a4_submission(args.dir, args.uniqname, args.umid, out_dir=args.out_dir)
    except SubmissionError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(f"Wrote {zip_path}: upload this file.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
