"""Grade reports: the console table, the staff JSON and Gradescope's ``results.json``.

Every message in them was written by the trusted side (:mod:`.trusted`): check messages never show a hidden
check's expected values, and what came from the student's run is an exception's type, the submission's
file:line and its text cut short. Nothing the sandbox printed is shown (``--keep-logs`` keeps it for staff).
"""
from __future__ import annotations

from typing import List

from .trusted import SubmissionResult

__all__ = ["format_table", "to_json", "gradescope_results"]


def _points_text(value: float) -> str:
    return f"{value:g}"


def format_table(result: SubmissionResult, width: int = 50) -> str:
    """The per-function table: points, passed checks (skipped ones, e.g. CUDA without a GPU, not counted) and
    the first failure's message."""
    name_width = max(len("function"), *(len(r.function) for r in result.functions))
    file_width = max(len("file"), *(len(r.file) for r in result.functions))
    lines = [f"Submission: {result.submission}"]
    for file, error in sorted(result.import_errors.items()):
        lines.append(f"  ! {file}: {error}")
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
    """Staff results: ``score``, ``max_score``, ``execution_time``, ``tests`` (one per graded function,
    ``output`` holding the first failure) and ``extra_data`` (every check, how each run ended)."""
    tests = []
    for number, r in enumerate(result.functions, start=1):
        output = f"{r.passed}/{r.total} checks passed."
        if r.message:
            output += f" First failure: {r.message}"
        tests.append({
            "name": f"{r.function} ({r.file})", "number": str(number), "score": r.points, "max_score": r.max_points,
            "status": "passed" if r.points == r.max_points else "failed", "output": output,
            "extra_data": {"function": r.function, "file": r.file, "grading_status": r.status, "seconds": r.seconds,
                           "cpu_seconds": r.cpu_seconds, "checks": r.checks},
        })
    return {"score": result.points, "max_score": result.max_points, "execution_time": result.seconds,
            "tests": tests, "extra_data": {"submission": result.submission, "import_errors": result.import_errors}}


def _function_output(checks: List[dict], hidden_visible: bool) -> str:
    lines = []
    hidden = [c for c in checks if not c["published"] and c["status"] != "skipped"]
    for check in checks:
        if check["status"] == "skipped" or (not check["published"] and not hidden_visible):
            continue
        mark = "passed" if check["status"] == "passed" else "FAILED"
        lines.append(f"[{mark}] {check['description']}" + (f"\n    {check['message']}" if check["message"] else ""))
    if hidden and not hidden_visible:
        passed = sum(c["status"] == "passed" for c in hidden)
        lines.append(f"{passed} of {len(hidden)} hidden checks passed.")
    return "\n".join(lines)


def gradescope_results(result: SubmissionResult, hidden_visibility: str = "after_published") -> dict:
    """Gradescope's ``results.json``: one scored test per graded function (its published checks in full,
    the hidden ones as a count unless ``hidden_visibility`` is ``"visible"``) and one unscored test per
    hidden check with ``hidden_visibility`` (Gradescope shows it to the student then; staff always see it)."""
    tests = []
    for r in result.functions:
        output = _function_output(r.checks, hidden_visibility == "visible")
        if r.status != "graded":
            output = f"{r.message}\n{output}".strip()
        tests.append({"name": f"{r.function} ({r.file})", "score": r.points, "max_score": r.max_points,
                      "status": "passed" if r.points == r.max_points else "failed", "output": output,
                      "visibility": "visible"})
    for r in result.functions:
        for check in r.checks:
            if not check["published"] and check["status"] != "skipped" and hidden_visibility != "visible":
                tests.append({"name": f"{r.function}: {check['name']}", "score": 0.0, "max_score": 0.0,
                              "status": "passed" if check["status"] == "passed" else "failed",
                              "output": f"{check['description']}\n{check['message']}".strip(),
                              "visibility": hidden_visibility})
    for number, test in enumerate(tests, start=1):
        test["number"] = str(number)
    problems = "\n".join(f"{file}: {error}" for file, error in sorted(result.import_errors.items()))
    return {"score": result.points, "execution_time": round(result.seconds, 2),
            "output": problems or "All graded functions were run.", "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}
