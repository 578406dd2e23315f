"""The grading child process: load a submission, isolate one graded function, run its checks.

``eecs598.staff.grade`` starts one fresh process per (submission, graded function) and calls
:func:`run_function` in it. That process

1. cuts itself off the network (``socket`` connections and name lookups raise ``OSError``, proxies
   point nowhere, ``TORCH_HOME`` is an empty folder, so no weight download can even start) and works
   in a scratch directory;
2. imports the reference solution, then the student's ``common.py`` and ``one_stage_detector.py`` from
   the submission folder under their own names (the student's ``from common import ...`` finds the
   student's ``common``). If the student's ``common.py`` does not import, ``one_stage_detector.py`` is
   imported against the reference ``common`` so its functions can still be graded;
3. replaces, inside the student's modules, every other graded function and the given ones
   (``checks.GIVEN_FUNCTIONS``) by the reference solution's;
4. runs the function's checks in order, writing the results to a JSON file after each one, so a
   process killed at the time limit still reports the checks it finished.

The network cut-off guards against accidents (a ``pretrained=True`` left in), not against a student
who sets out to break it; run the grader in a container without network for that.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import tempfile
import time
import traceback
import warnings
from typing import Dict, List, Optional

import torch
import torchvision  # noqa: F401  (imported before any student code, as in the forkserver)

from eecs598.staff import checks as kit_checks

__all__ = ["run_function", "load_points", "POINTS_PATH", "MODULE_FILES"]

POINTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "points.json")
MODULE_FILES = ("common.py", "one_stage_detector.py")


def load_points(path: str = POINTS_PATH) -> dict:
    """The points file: ``{"partial_credit": bool, "functions": [{"function", "file", "points",
    "time_limit_s"}, ...]}``, validated."""
    with open(path, encoding="utf-8") as f:
        points = json.load(f)
    seen = set()
    for entry in points.get("functions", []):
        missing = {"function", "file", "points", "time_limit_s"} - set(entry)
        if missing:
            raise ValueError(f"{path}: entry {entry} lacks {sorted(missing)}")
        if entry["file"] not in MODULE_FILES:
            raise ValueError(f"{path}: {entry['function']}: file must be one of {MODULE_FILES}, got {entry['file']}")
        if entry["function"] in seen:
            raise ValueError(f"{path}: {entry['function']} is listed twice")
        if entry["function"] not in kit_checks.CHECKS:
            raise ValueError(f"{path}: {entry['function']} has no checks in eecs598/staff/checks.py")
        seen.add(entry["function"])
    return points


# ------------------------------------------------------------------------------------------------
# sandbox
# ------------------------------------------------------------------------------------------------


def _refuse_network(*args, **kwargs):
    raise OSError("network access is disabled while grading")


def disable_network() -> None:
    """Make every new connection and name lookup in this process fail at once."""
    socket.socket.connect = _refuse_network
    socket.socket.connect_ex = _refuse_network
    socket.create_connection = _refuse_network
    socket.getaddrinfo = _refuse_network
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ftp_proxy", "all_proxy"):
        os.environ[name] = "http://127.0.0.1:9"
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = ""


def _load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _describe_exception(error: BaseException, submission_dir: Optional[str] = None) -> str:
    """``"Type: message (file.py:line)"``, naming the last line of the submission in the traceback."""
    text = f"{type(error).__name__}: {error}".strip()
    if submission_dir is not None:
        submission_dir = os.path.realpath(submission_dir)
        frames = [frame for frame in traceback.extract_tb(error.__traceback__)
                  if os.path.realpath(frame.filename).startswith(submission_dir + os.sep)]
        if frames:
            text += f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    return text


def load_modules(submission_dir: str, solution_dir: str):
    """``(students, references, import_errors)``: module dicts keyed by file name."""
    for name in ("common", "one_stage_detector"):
        sys.modules.pop(name, None)
    references = {}
    for file in MODULE_FILES:
        references[file] = _load_module(file[:-3], os.path.join(solution_dir, file))
    for file in MODULE_FILES:  # keep them alive under other names; free the real names for the student's
        sys.modules["_kit_reference_" + file[:-3]] = sys.modules.pop(file[:-3])

    students: Dict[str, Optional[object]] = {}
    import_errors: Dict[str, str] = {}
    sys.path.insert(0, submission_dir)
    for file in MODULE_FILES:
        path = os.path.join(submission_dir, file)
        if not os.path.isfile(path):
            students[file], import_errors[file] = None, f"{file} is missing from the submission"
            continue
        try:
            students[file] = _load_module(file[:-3], path)
        except BaseException as error:  # SyntaxError, ImportError, an exception at import, sys.exit ...
            students[file] = None
            import_errors[file] = _describe_exception(error, submission_dir)
            if file == "common.py":  # grade one_stage_detector.py against the reference common
                sys.modules["common"] = references["common.py"]
    return students, references, import_errors


def _resolve(module, dotted: str):
    owner = module
    for part in dotted.split(".")[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return None, None
    return owner, dotted.split(".")[-1]


def isolate(function: str, points: dict, students: dict, references: dict) -> None:
    """Replace every graded function but ``function``, and the given functions, by the reference's in
    the student's modules (and wherever the student's modules imported them)."""
    targets = [(entry["file"], entry["function"]) for entry in points["functions"] if entry["function"] != function]
    targets += list(kit_checks.GIVEN_FUNCTIONS)
    live_modules = [module for module in students.values() if module is not None]
    for file, dotted in targets:
        student_module, reference_module = students.get(file), references[file]
        reference_owner, name = _resolve(reference_module, dotted)
        if reference_owner is None or not hasattr(reference_owner, name):
            continue
        if "." in dotted:  # a method: patch the student's class
            if student_module is None:
                continue
            student_owner, _ = _resolve(student_module, dotted)
            if isinstance(student_owner, type):
                setattr(student_owner, name, reference_owner.__dict__.get(name, getattr(reference_owner, name)))
            continue
        replacement = getattr(reference_owner, name)
        original = getattr(student_module, name, None) if student_module is not None else None
        if student_module is not None:
            setattr(student_module, name, replacement)
        if original is not None:
            for module in live_modules:
                for global_name, value in list(vars(module).items()):
                    if value is original:
                        setattr(module, global_name, replacement)


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------


def _write(path: str, payload: dict) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(payload, f)
    os.replace(temporary, path)


def run_function(job: dict) -> None:
    """Child-process entry: grade ``job["function"]`` of the submission in ``job["submission"]``.

    ``job`` keys: ``submission``, ``solution`` (reference repository), ``function``, ``result_path``
    (JSON written here), ``log_path`` (the child's stdout and stderr), ``threads``.
    """
    log = os.open(job["log_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    disable_network()
    scratch = tempfile.mkdtemp(prefix="fcos-grade-")
    os.environ["TORCH_HOME"] = os.path.join(scratch, "torch-home")
    os.environ["MPLBACKEND"] = "Agg"
    os.chdir(scratch)
    torch.set_num_threads(int(job.get("threads", 1)))
    torch.set_flush_denormal(True)  # denormals make CPU convs of small random models much slower
    warnings.simplefilter("ignore")

    function = job["function"]
    payload = {"function": function, "checks": [], "import_errors": {}, "finished": False}
    _write(job["result_path"], payload)
    points = load_points(job.get("points_path", POINTS_PATH))
    students, references, import_errors = load_modules(job["submission"], job["solution"])
    payload["import_errors"] = import_errors
    isolate(function, points, students, references)
    env = kit_checks.Env(students, references, import_errors)
    has_cuda = torch.cuda.is_available()

    results: List[dict] = payload["checks"]
    for check in kit_checks.CHECKS[function]:
        result = {"name": check.name, "description": check.description, "published": check.published}
        if check.needs_cuda and not has_cuda:
            result.update(status="skipped", message="no CUDA device on the grading machine", seconds=0.0)
            results.append(result)
            continue
        result.update(status="running")
        results.append(result)
        _write(job["result_path"], payload)  # a check that hangs is reported as the one that ran out of time
        start = time.perf_counter()
        torch.manual_seed(0)
        try:
            check.run(env)
            result.update(status="passed", message="")
        except AssertionError as error:
            result.update(status="failed", message=str(error) or "assertion failed")
        except BaseException as error:  # the student's code raised: NotImplementedError, shape errors ...
            result.update(status="failed", message=_describe_exception(error, job["submission"]))
        result["seconds"] = round(time.perf_counter() - start, 3)
        _write(job["result_path"], payload)
        sys.stdout.flush()
    payload["finished"] = True
    payload["cpu_seconds"] = round(time.process_time(), 3)
    _write(job["result_path"], payload)
