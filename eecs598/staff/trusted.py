"""The trusted side of grading: the points file, the reference solution, and the verdicts.

Nothing here runs student code. :class:`Reference` loads the solution in the grader's own process (never in
the forkserver the sandboxes fork from), makes every check's inputs and computes expected values by running
the same probe on the reference; :func:`judge_run` turns one sandboxed run's answers (bytes, read with the
bounds of :mod:`.wire`) into a :class:`FunctionResult`. Every message shown to a student is written here;
what came from the sandbox (an exception's type, the submission's file:line and text) is checked and cut
short first.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from eecs598.tools.stubs import find_unimplemented

from . import wire
from .checks import CHECKS, REVEAL, Env
from .checks import base as checks_base

__all__ = ["GraderError", "FunctionResult", "SubmissionResult", "Reference", "load_points", "judge_run",
           "MODULE_FILES", "VISIBILITIES"]

MODULE_FILES = ("common.py", "one_stage_detector.py")
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,60}$")
_WHERE = re.compile(r"^(common|one_stage_detector)\.py:\d{1,7}$")
_MESSAGE_CHARS = 600


class GraderError(ValueError):
    """The grader itself cannot grade (bad options, points file or solution, a sandbox that does not start):
    an error of the command, never a student's 0."""


@dataclass
class FunctionResult:
    function: str
    file: str
    max_points: float
    points: float = 0.0
    checks: List[dict] = field(default_factory=list)
    status: str = "graded"  # graded | timeout | crashed | oversized
    message: str = ""  # first failure, time limit or crash
    seconds: float = 0.0  # wall time of the sandboxed run
    cpu_seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(check["status"] == "passed" for check in self.checks)

    @property
    def total(self) -> int:
        return sum(check["status"] != "skipped" for check in self.checks)


@dataclass
class SubmissionResult:
    submission: str
    functions: List[FunctionResult]
    import_errors: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # summed wall time of its sandboxed runs

    @property
    def points(self) -> float:
        return round(sum(result.points for result in self.functions), 2)

    @property
    def max_points(self) -> float:
        return round(sum(result.max_points for result in self.functions), 2)

    def by_function(self) -> Dict[str, FunctionResult]:
        return {result.function: result for result in self.functions}


# ------------------------------------------------------------------------------------------------
# the points file
# ------------------------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_points(path: str) -> dict:
    """The points file: ``{"partial_credit": bool, "functions": [{"function", "file", "points",
    "time_limit_s"}, ...], optional "hidden_visibility", "exception_chars", "sandbox"}``, validated:
    :class:`GraderError` naming the file and the entry for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            points = json.load(f)
    except (OSError, ValueError) as error:
        raise GraderError(f"points file {path}: {error}") from None
    functions = points.get("functions") if isinstance(points, dict) else None
    if not isinstance(functions, list) or not functions:
        raise GraderError(f"points file {path}: 'functions' must be a non-empty list")
    seen = set()
    for entry in functions:
        if not isinstance(entry, dict):
            raise GraderError(f"points file {path}: every function entry must be an object, got {entry!r}")
        missing = {"function", "file", "points", "time_limit_s"} - set(entry)
        name = entry.get("function")
        if missing:
            raise GraderError(f"points file {path}: entry {name!r} lacks {sorted(missing)}")
        if entry["file"] not in MODULE_FILES:
            raise GraderError(f"points file {path}: {name}: file must be one of {MODULE_FILES}, got {entry['file']!r}")
        if name in seen:
            raise GraderError(f"points file {path}: {name} is listed twice")
        if name not in CHECKS:
            raise GraderError(f"points file {path}: {name!r} has no checks in eecs598/staff/checks/")
        if not _number(entry["points"]) or entry["points"] < 0:
            raise GraderError(f"points file {path}: {name}: points must be a finite number >= 0, got {entry['points']!r}")
        if not _number(entry["time_limit_s"]) or entry["time_limit_s"] <= 0:
            raise GraderError(f"points file {path}: {name}: time_limit_s must be a finite number of seconds > 0, got "
                              f"{entry['time_limit_s']!r}")
        seen.add(name)
    if not isinstance(points.get("partial_credit", False), bool):
        raise GraderError(f"points file {path}: partial_credit must be true or false")
    if points.get("hidden_visibility", "after_published") not in VISIBILITIES:
        raise GraderError(f"points file {path}: hidden_visibility must be one of {VISIBILITIES}")
    chars = points.get("exception_chars", 200)
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 0:
        raise GraderError(f"points file {path}: exception_chars must be a whole number >= 0, got {chars!r}")
    return points


# ------------------------------------------------------------------------------------------------
# the reference solution
# ------------------------------------------------------------------------------------------------


def _load_private(name: str, path: str, common: Optional[types.ModuleType] = None) -> types.ModuleType:
    """Import ``path`` under a private module name (``common`` bound to ``common`` while it runs)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("common")
    if common is not None:
        sys.modules["common"] = common
    try:
        spec.loader.exec_module(module)
    finally:
        if common is not None:
            if saved is None:
                sys.modules.pop("common", None)
            else:
                sys.modules["common"] = saved
    return module


class Reference(checks_base.Reference):
    """The reference solution, in this (trusted) process only: inputs and expected values of the checks."""

    def __init__(self, solution_dir: str):
        self.solution_dir = os.path.abspath(solution_dir)
        self.texts: Dict[str, str] = {}
        for file in MODULE_FILES:
            path = os.path.join(self.solution_dir, file)
            if not os.path.isfile(path):
                raise GraderError(f"--solution {solution_dir} holds no {file}: give the solution repository")
            with open(path, encoding="utf-8") as f:
                self.texts[file] = f.read()
            stubs = find_unimplemented(self.texts[file], file)
            if stubs:
                raise GraderError(f"--solution {solution_dir} is a student release, not the solution: "
                                  f"{', '.join(stubs[:3])} not implemented")
        try:
            common = _load_private("_fcos_reference_common", os.path.join(self.solution_dir, "common.py"))
            detector = _load_private("_fcos_reference_one_stage_detector",
                                     os.path.join(self.solution_dir, "one_stage_detector.py"), common=common)
        except Exception as error:
            raise GraderError(f"the solution in {solution_dir} does not import: {type(error).__name__}: {error}") from None
        self.modules = {"common.py": common, "one_stage_detector.py": detector}
        self.env = Env(dict(self.modules), {})
        self.cache: Dict[object, object] = {}
        self.lock = threading.RLock()
        self._expected: Dict[str, Any] = {}

    def module(self, file: str) -> types.ModuleType:
        return self.modules[file]

    def inputs(self, function: str) -> Dict[str, Any]:
        """Every check's inputs for ``function``, as one plain-data dict by check name."""
        with self.lock:
            return {check.name: check.inputs(self) for check in CHECKS[function]}

    def precompute(self, function: str, inputs: Dict[str, Any], has_cuda: bool) -> None:
        """The reference outputs every judge of ``function`` compares with (run ahead, beside the sandboxes)."""
        for check in CHECKS[function]:
            if check.compares_with_reference and (has_cuda or not check.needs_cuda):
                self.expected(check, inputs[check.name])

    def expected(self, check, x: Dict[str, Any]) -> Any:
        """The reference's outputs for ``check`` (its probe run here, once per grading run), in the same form
        as a decoded answer."""
        with self.lock:
            if check.name not in self._expected:
                torch.manual_seed(0)
                try:
                    outputs = check.probe(self.env, x)
                except Exception as error:
                    raise GraderError(f"the reference solution fails the probe of {check.name}: "
                                      f"{type(error).__name__}: {error}") from None
                self._expected[check.name] = wire.decode(wire.encode(outputs))
            return self._expected[check.name]


# ------------------------------------------------------------------------------------------------
# verdicts
# ------------------------------------------------------------------------------------------------


def student_error(error: Any, max_chars: int) -> str:
    """An exception reported by the sandbox, as a message: a built-in type name, the text cut to
    ``max_chars`` printable characters, the submission's ``(file.py:line)``; anything malformed is left out."""
    if not isinstance(error, dict):
        return "an exception (not described)"
    kind = error.get("type") if isinstance(error.get("type"), str) and _TYPE.match(error.get("type")) else "Exception"
    text = error.get("text") if isinstance(error.get("text"), str) else ""
    text = "".join(c if c.isprintable() else " " for c in text[:max_chars]).strip()
    where = error.get("where") if isinstance(error.get("where"), str) and _WHERE.match(error.get("where")) else None
    message = f"{kind}: {text}" if text else kind
    return message + (f" ({where})" if where else "")


def _records(answers: bytes):
    """``(imported record or None, done records by check, started check names, finished)``."""
    imported, done, started, finished = None, {}, set(), False
    for record in wire.decode_stream(answers):
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            continue
        event, name = record["event"], record.get("check")
        if event == "imported" and imported is None:
            imported = record
        elif event == "start" and isinstance(name, str):
            started.add(name)
        elif event == "done" and isinstance(name, str) and name not in done:
            done[name] = record
        elif event == "finished":
            finished = True
    return imported, done, started, finished


def _run_problem(status: dict, finished: bool, time_limit_s: float) -> tuple:
    """``(status, message)`` of how the run ended."""
    if status.get("timed_out"):
        return "timeout", f"time limit of {time_limit_s:g} s exceeded"
    if status.get("oversized"):
        return "oversized", "its answers exceeded the size limit"
    if status.get("signal"):
        return "crashed", f"the process running your code was killed by signal {status['signal']}"
    if status.get("exit_code") != 0 or not finished:
        return "crashed", f"the process running your code ended early (exit status {status.get('exit_code')})"
    return "graded", ""


def _judge_check(check, record: dict, x: Any, ref: Reference, max_chars: int) -> dict:
    if "error" in record:
        return {"status": "failed", "message": student_error(record["error"], max_chars)}
    token = REVEAL.set(check.published)
    try:
        check.judge(record.get("outputs"), x, ref)
        return {"status": "passed", "message": ""}
    except AssertionError as error:
        return {"status": "failed", "message": (str(error) or "assertion failed")[:_MESSAGE_CHARS]}
    except GraderError:
        raise
    except Exception:  # outputs of another form than the probe returns: forged, or a probe undone
        return {"status": "failed", "message": "the answer is malformed (outputs of an unexpected form)"}
    finally:
        REVEAL.reset(token)


def judge_run(entry: dict, inputs: Dict[str, Any], status: dict, answers: bytes, ref: Reference,
              time_limit_s: float, partial_credit: bool, max_chars: int, has_cuda: bool):
    """``(FunctionResult, import errors)`` of one sandboxed run of ``entry["function"]``."""
    imported, done, started, finished = _records(answers)
    run_status, run_message = _run_problem(status, finished, time_limit_s)
    checks = []
    for check in CHECKS[entry["function"]]:
        result = {"name": check.name, "description": check.description, "published": check.published}
        if check.needs_cuda and not has_cuda:
            result.update(status="skipped", message="no CUDA device on the grading machine")
        elif check.name in done:
            with ref.lock:
                result.update(_judge_check(check, done[check.name], inputs.get(check.name, {}), ref, max_chars))
        elif check.name in started:
            result.update(status="failed", message=run_message or "did not finish")
        else:
            result.update(status="failed", message="not run: " + (run_message or "the run stopped"))
        checks.append(result)
    function = FunctionResult(entry["function"], entry["file"], float(entry["points"]), checks=checks,
                              status=run_status, seconds=float(status.get("wall_seconds", 0.0)),
                              cpu_seconds=float(status.get("cpu_seconds", 0.0)))
    graded = [c for c in checks if c["status"] != "skipped"]
    passed = sum(c["status"] == "passed" for c in graded)
    if run_status == "graded" and graded:
        function.points = (round(entry["points"] * passed / len(graded), 2) if partial_credit
                           else float(entry["points"]) if passed == len(graded) else 0.0)
    failures = [c for c in checks if c["status"] == "failed"]
    function.message = run_message or (f"{failures[0]['name']}: {failures[0]['message']}" if failures else "")
    errors = imported.get("import_errors") if isinstance(imported, dict) else None
    import_errors = {file: student_error(error, max_chars) for file, error in (errors or {}).items()
                     if file in MODULE_FILES + ("isolation",)} if isinstance(errors, dict) else {}
    return function, import_errors
