"""Grade FCOS submissions (course staff only; not shipped to students).

    python -m eecs598.grade SUBMISSION [SUBMISSION ...] [--json FILE] [--only FUNCTION[,FUNCTION]]
                            [--workers N] [--isolation {forkserver,spawn}] [--time-scale X]

A submission is a folder (or the zip written by ``python -m eecs598.submit``) holding the student's
``common.py`` and ``one_stage_detector.py`` (the notebook may be there too; it is not graded). Each
graded function listed in ``eecs598/staff/points.json`` is exercised in a **fresh process**
(``eecs598.staff.runner``) with a time limit and no network, with every other graded function replaced by
the reference solution's, so a bug costs the points of the function it is in and no others. The checks
(``eecs598/staff/checks.py``) are the notebook's published ones plus hidden ones.

Fresh processes: with ``--isolation forkserver`` (the default on Linux and macOS) a server process
imports torch and torchvision once, before any student code, and every grading process is forked from
it: a new process with untouched module state that starts in milliseconds instead of the ~3 s an
``import torch`` costs. ``--isolation spawn`` starts a new interpreter per function instead.

Output: a table per submission (points, passed checks, the first failure's message) and, with
``--json FILE``, a Gradescope-style results object (``score``, ``max_score``, ``tests`` with one entry
per function, ``extra_data`` with every check); a list of them for several submissions.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import types
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

__all__ = ["FunctionResult", "SubmissionResult", "grade_submissions", "format_table", "to_json", "main"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POINTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "points.json")
REQUIRED_FILES = ("common.py", "one_stage_detector.py")


@dataclass
class FunctionResult:
    function: str
    file: str
    max_points: float
    points: float = 0.0
    checks: List[dict] = field(default_factory=list)
    status: str = "graded"  # graded | timeout | crashed
    message: str = ""  # first failure, time limit or crash
    seconds: float = 0.0  # wall time of the grading process
    cpu_seconds: float = 0.0  # CPU time it used (0 if it did not finish)

    @property
    def passed(self) -> int:
        return sum(check["status"] == "passed" for check in self.checks)

    @property
    def run(self) -> int:
        return sum(check["status"] in ("passed", "failed") for check in self.checks)

    @property
    def total(self) -> int:
        return sum(check["status"] != "skipped" for check in self.checks)


@dataclass
class SubmissionResult:
    submission: str
    functions: List[FunctionResult]
    import_errors: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # summed wall time of its grading processes

    @property
    def points(self) -> float:
        return round(sum(result.points for result in self.functions), 2)

    @property
    def max_points(self) -> float:
        return round(sum(result.max_points for result in self.functions), 2)

    def by_function(self) -> Dict[str, FunctionResult]:
        return {result.function: result for result in self.functions}


# ------------------------------------------------------------------------------------------------
# submissions
# ------------------------------------------------------------------------------------------------


def _unpack(submission: str, scratch: str) -> str:
    """A folder holding the student's modules: the submission itself, or its zip extracted into
    ``scratch`` (a zip with everything in one top-level folder works too)."""
    if os.path.isdir(submission):
        return os.path.abspath(submission)
    if not zipfile.is_zipfile(submission):
        raise FileNotFoundError(f"submission {submission} is neither a folder nor a zip file")
    target = tempfile.mkdtemp(prefix="submission-", dir=scratch)
    with zipfile.ZipFile(submission) as archive:
        for member in archive.namelist():
            path = os.path.realpath(os.path.join(target, member))
            if not path.startswith(os.path.realpath(target) + os.sep):
                raise ValueError(f"{submission}: unsafe path {member!r} in the zip")
        archive.extractall(target)
    entries = [name for name in os.listdir(target) if not name.startswith(("__MACOSX", "."))]
    if not any(os.path.isfile(os.path.join(target, name)) for name in REQUIRED_FILES) and len(entries) == 1 \
            and os.path.isdir(os.path.join(target, entries[0])):
        return os.path.join(target, entries[0])
    return target


# ------------------------------------------------------------------------------------------------
# grading
# ------------------------------------------------------------------------------------------------


def _context(isolation: str):
    if isolation == "auto":
        isolation = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(isolation)
    if isolation == "forkserver":
        # Imported once by the server, before any student code; every grading process forks from it.
        context.set_forkserver_preload(["eecs598.staff.runner"])
    return context


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _plain_main_module():
    """Hide the caller's ``__main__`` while a grading process starts.

    multiprocessing's spawn and forkserver children re-import the parent's ``__main__`` (to unpickle
    functions defined there). The grading target lives in ``eecs598.staff.runner``, so that import is never
    needed, and it breaks or misbehaves when ``__main__`` is a script without a ``__name__`` guard, code
    piped to ``python -`` (``<stdin>``) or a notebook. An empty stand-in avoids all of that.
    """
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


def _score(entry: dict, checks: List[dict], partial_credit: bool) -> float:
    graded = [check for check in checks if check["status"] != "skipped"]
    if not graded:
        return 0.0
    passed = sum(check["status"] == "passed" for check in graded)
    if partial_credit:
        return round(entry["points"] * passed / len(graded), 2)
    return float(entry["points"]) if passed == len(graded) else 0.0


def _grade_one(context, job: dict, entry: dict, time_limit: float, partial_credit: bool):
    from eecs598.staff import checks as kit_checks  # the check list, to report checks that never ran
    from eecs598.staff.runner import run_function

    start = time.perf_counter()
    process = context.Process(target=run_function, args=(job,), daemon=True)
    with _START_LOCK, _plain_main_module():
        process.start()
    process.join(time_limit)
    status, message = "graded", ""
    if process.is_alive():
        process.kill()
        process.join()
        status, message = "timeout", f"time limit of {time_limit:.0f} s exceeded"
    elif process.exitcode != 0:
        status = "crashed"
        message = f"the grading process died (exit code {process.exitcode}); last output: {_tail(job['log_path'])}"
    seconds = time.perf_counter() - start

    payload = {"checks": [], "import_errors": {}}
    if os.path.isfile(job["result_path"]):
        with open(job["result_path"], encoding="utf-8") as f:
            payload = json.load(f)
    checks = payload["checks"]
    for check in checks:
        if check["status"] == "running":  # the one that was running when time ran out or the process died
            check.update(status="failed", message=message or "did not finish")
    done = {check["name"] for check in checks}
    for check in kit_checks.CHECKS[entry["function"]]:
        if check.name not in done:
            checks.append({"name": check.name, "description": check.description, "published": check.published,
                           "status": "failed", "message": "not run: " + (message or "the grading process stopped")})
    result = FunctionResult(entry["function"], entry["file"], float(entry["points"]), checks=checks, status=status,
                            seconds=round(seconds, 2))
    result.cpu_seconds = float(payload.get("cpu_seconds", 0.0))
    result.points = _score(entry, checks, partial_credit) if status == "graded" else 0.0
    failures = [check for check in checks if check["status"] == "failed"]
    result.message = message or (f"{failures[0]['name']}: {failures[0]['message']}" if failures else "")
    return result, payload.get("import_errors", {})


def _tail(path: str, limit: int = 400) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-limit:].strip() or "(none)"
    except OSError:
        return "(none)"


def grade_submissions(
    submissions: Sequence[str],
    only: Optional[Sequence[str]] = None,
    workers: int = 2,
    isolation: str = "auto",
    time_scale: float = 1.0,
    threads: int = 1,
    solution_dir: str = REPO_ROOT,
    points_path: str = POINTS_PATH,
    keep_logs: Optional[str] = None,
) -> List[SubmissionResult]:
    """Grade each submission (folder or zip); every graded function runs in its own fresh process.

    Args:
        submissions: folders or zip files.
        only: names of graded functions to run (default: all in the points file).
        workers: grading processes at a time.
        isolation: ``"forkserver"``, ``"spawn"`` or ``"auto"`` (forkserver where available).
        time_scale: multiplies every function's time limit (slower machines).
        threads: torch CPU threads per grading process.
        solution_dir: the reference solution (default: this repository).
        points_path: the points file.
        keep_logs: a folder to keep each process's output and result file in (default: deleted).

    Returns:
        One :class:`SubmissionResult` per submission, in order.
    """
    from eecs598.staff.runner import load_points

    points = load_points(points_path)
    entries = points["functions"]
    if only:
        unknown = sorted(set(only) - {entry["function"] for entry in entries})
        if unknown:
            raise ValueError(f"unknown function(s) {unknown}; graded functions: {[e['function'] for e in entries]}")
        entries = [entry for entry in entries if entry["function"] in only]
    os.environ.setdefault("MPLBACKEND", "Agg")  # inherited by the forkserver: no GUI backend for matplotlib
    context = _context(isolation)
    scratch = tempfile.mkdtemp(prefix="fcos-grading-")
    try:
        folders = [_unpack(submission, scratch) for submission in submissions]
        jobs = []
        for index, folder in enumerate(folders):
            for entry in entries:
                tag = f"{index:03d}-{entry['function'].replace('.', '_')}"
                jobs.append((index, entry, {
                    "submission": folder, "solution": os.path.abspath(solution_dir), "function": entry["function"],
                    "result_path": os.path.join(scratch, tag + ".json"), "log_path": os.path.join(scratch, tag + ".log"),
                    "threads": threads, "points_path": os.path.abspath(points_path),
                }))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(_grade_one, context, job, entry, entry["time_limit_s"] * time_scale,
                                   bool(points.get("partial_credit", False)))
                       for _, entry, job in jobs]
            outcomes = [future.result() for future in futures]
        results = [SubmissionResult(submission, []) for submission in submissions]
        for (index, _, _), (function_result, import_errors) in zip(jobs, outcomes):
            results[index].functions.append(function_result)
            results[index].import_errors.update(import_errors)
        for result in results:  # process time spent on it (the processes of several submissions overlap)
            result.seconds = round(sum(function.seconds for function in result.functions), 2)
        if keep_logs:
            os.makedirs(keep_logs, exist_ok=True)
            for name in os.listdir(scratch):
                if name.endswith((".json", ".log")):
                    shutil.copy(os.path.join(scratch, name), keep_logs)
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------------


def _points_text(value: float) -> str:
    return f"{value:g}"


def format_table(result: SubmissionResult, width: int = 50) -> str:
    """The per-function table: points, passed checks (skipped ones, e.g. CUDA without a GPU, not
    counted) and the first failure's message."""
    name_width = max(len("function"), *(len(r.function) for r in result.functions))
    file_width = max(len("file"), *(len(r.file) for r in result.functions))
    lines = [f"Submission: {result.submission}"]
    for file, error in sorted(result.import_errors.items()):
        lines.append(f"  ! {file} does not import: {error}")
    header = f"{'function':<{name_width}}  {'file':<{file_width}}  {'points':>9}  {'checks':>6}  first failure"
    lines += [header, "-" * len(header)]
    for r in result.functions:
        message = r.message.replace("\n", " ")
        if len(message) > width:
            message = message[: width - 3] + "..."
        points = f"{_points_text(r.points)} / {_points_text(r.max_points)}"
        lines.append(f"{r.function:<{name_width}}  {r.file:<{file_width}}  {points:>9}  "
                     f"{f'{r.passed}/{r.total}':>6}  {message}".rstrip())
    lines.append("-" * len(header))
    total = f"{_points_text(result.points)} / {_points_text(result.max_points)}"
    lines.append(f"{'total':<{name_width}}  {'':<{file_width}}  {total:>9}")
    failed = [r for r in result.functions if r.message]
    if failed:
        lines.append("First failures in full:")
        lines += [f"  {r.function}: {r.message}" for r in failed]
    return "\n".join(lines)


def to_json(result: SubmissionResult) -> dict:
    """Gradescope-style results: ``score``, ``max_score``, ``execution_time``, ``tests`` (one per graded
    function, ``output`` holding the first failure) and ``extra_data`` (every check)."""
    tests = []
    for number, r in enumerate(result.functions, start=1):
        output = f"{r.passed}/{r.total} checks passed."
        if r.message:
            output += f" First failure: {r.message}"
        tests.append({
            "name": f"{r.function} ({r.file})",
            "number": str(number),
            "score": r.points,
            "max_score": r.max_points,
            "status": "passed" if r.points == r.max_points else "failed",
            "output": output,
            "extra_data": {"function": r.function, "file": r.file, "grading_status": r.status,
                           "seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "checks": r.checks},
        })
    return {
        "score": result.points,
        "max_score": result.max_points,
        "execution_time": result.seconds,
        "tests": tests,
        "extra_data": {"submission": result.submission, "import_errors": result.import_errors},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.grade",
        description="Grade FCOS submissions: every graded function of eecs598/staff/points.json runs in a fresh "
                    "process with a time limit and no network, against the published and hidden checks, with "
                    "the other graded functions replaced by the reference solution's.",
    )
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="folder with common.py and one_stage_detector.py, or the zip from eecs598.tools.submit")
    parser.add_argument("--json", metavar="FILE", help="write Gradescope-style results JSON here (a list for "
                        "several submissions)")
    parser.add_argument("--only", metavar="FUNCTION[,FUNCTION]",
                        help="grade only these functions, e.g. 'nms,FCOS.inference'")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="grading processes at a time (default: %(default)s)")
    parser.add_argument("--isolation", choices=("auto", "forkserver", "spawn"), default="auto",
                        help="how fresh processes start: forked from a server that imported torch (fast), or "
                             "a new interpreter each (default: forkserver where available)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every time limit of the points file by this (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per grading process (default: 1)")
    parser.add_argument("--solution", default=REPO_ROOT, metavar="DIR",
                        help="reference solution repository (default: %(default)s)")
    parser.add_argument("--points", default=POINTS_PATH, metavar="FILE", help="points file (default: %(default)s)")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep every grading process's output and results here")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    try:
        results = grade_submissions(args.submissions, only=only, workers=args.workers, isolation=args.isolation,
                                    time_scale=args.time_scale, threads=args.threads, solution_dir=args.solution,
                                    points_path=args.points, keep_logs=args.keep_logs)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for index, result in enumerate(results):
        if index:
            print()
        print(format_table(result))
    if args.json:
        payload = [to_json(result) for result in results]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload[0] if len(payload) == 1 else payload, f, indent=2)
        print(f"\nWrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
