"""The code that runs in the sandbox (after :func:`.sandbox.enter`), the only code that meets the student's.

It loads the student's ``common.py`` and ``one_stage_detector.py`` from the sandbox's ``/submission`` under
their own names (the student's ``from common import ...`` finds the student's ``common``); if ``common.py``
does not import, ``one_stage_detector.py`` is imported against the release's ``common.py`` so that its
functions can still be graded. It then compiles, in a namespace of their own, the reference definitions of
the other graded functions the checks run through (:mod:`.isolation`) and puts them into the student's
modules, and runs each check's **probe** in order, sending every check's outputs (or the student's
exception: its type, the submission's file:line, its text cut short) as a :mod:`.wire` message on the answer
pipe. It decides nothing: the trusted grader judges the outputs.

Everything here may be undone by the student's code, which runs in the same process: that changes only
what this process answers, never how the answer is judged.
"""
from __future__ import annotations

import builtins
import importlib.util
import os
import sys
import time
import traceback
import types
import warnings
from typing import Dict, Optional

import torch
import torchvision  # noqa: F401  (imported before any student code, as in the forkserver)

from . import wire
from .checks import CHECKS, Env

__all__ = ["run", "describe_exception", "MODULE_FILES"]

MODULE_FILES = ("common.py", "one_stage_detector.py")
MAX_MESSAGE_BYTES = 96 << 20


def describe_exception(error: BaseException, submission_dir: Optional[str], max_chars: int) -> dict:
    """The student's exception as plain data: the built-in class it derives from (a class named by the
    submission could carry text), the submission's last ``file:line`` in the traceback, the text cut short."""
    kind = next((cls.__name__ for cls in type(error).__mro__ if getattr(builtins, cls.__name__, None) is cls),
                "BaseException")
    where = None
    if submission_dir is not None:
        frames = [frame for frame in traceback.extract_tb(error.__traceback__)
                  if os.path.dirname(os.path.abspath(frame.filename)) == submission_dir]
        if frames:
            where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
    try:
        text = str(error)
    except Exception:
        text = ""
    return {"type": kind, "where": where, "text": text[:max_chars]}


class _Answers:
    """Frames on the answer pipe."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, value: dict) -> None:
        try:
            message = wire.encode(value)
        except Exception as error:
            message = wire.encode({key: value[key] for key in ("event", "check") if key in value} |
                                  {"error": {"type": type(error).__name__, "where": None,
                                             "text": "the outputs could not be encoded"}})
        if len(message) > MAX_MESSAGE_BYTES:
            message = wire.encode({key: value[key] for key in ("event", "check") if key in value} |
                                  {"error": {"type": "MemoryError", "where": None, "text": "the outputs are too large"}})
        data = memoryview(wire.frame(message))
        while data:
            data = data[os.write(self.fd, data):]


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


def load_students(submission_dir: str, fallback_common: Optional[str], max_chars: int):
    """``(students, import_errors)``: the student's modules by file (``None`` where one does not import)."""
    for name in ("common", "one_stage_detector"):
        sys.modules.pop(name, None)
    students: Dict[str, Optional[types.ModuleType]] = {}
    import_errors: Dict[str, dict] = {}
    for file in MODULE_FILES:
        path = os.path.join(submission_dir, file)
        students[file] = None
        if not os.path.isfile(path):
            import_errors[file] = {"type": "FileNotFoundError", "where": None, "text": f"{file} is missing from the submission"}
        else:
            try:
                students[file] = _load_module(file[:-3], path)
            except BaseException as error:  # SyntaxError, ImportError, an exception at import, sys.exit ...
                import_errors[file] = describe_exception(error, submission_dir, max_chars)
        if file == "common.py" and students[file] is None and fallback_common is not None:
            fallback = types.ModuleType("common")
            fallback.__file__ = "<the release's common.py>"
            exec(compile(fallback_common, fallback.__file__, "exec"), fallback.__dict__)
            sys.modules["common"] = fallback
    return students, import_errors


def _replace(module: types.ModuleType, name: str, replacement, modules) -> None:
    """``module.name = replacement``, and wherever the student's modules imported the old object."""
    original = getattr(module, name, None)
    setattr(module, name, replacement)
    if original is None:
        return
    for other in modules:
        for global_name, value in list(vars(other).items()):
            if value is original:
                setattr(other, global_name, replacement)


def inject(injection: dict, students: Dict[str, Optional[types.ModuleType]]) -> None:
    """Put the reference definitions of the other functions (one namespace per file) into the modules."""
    modules = {"common.py": sys.modules.get("common"), "one_stage_detector.py": students["one_stage_detector.py"]}
    live = [module for module in modules.values() if module is not None]
    for entry in injection["files"]:
        module = modules.get(entry["file"])
        if module is None:
            continue  # that file did not import: its own checks fail anyway
        namespace = {"__name__": "_kit_isolation_" + entry["file"][:-3], "__builtins__": builtins}
        for statement in entry["imports"].splitlines():
            try:  # the student's module may lack a name the reference imports: that name is then missing
                exec(compile(statement, "<imports>", "exec"), namespace)
            except Exception:
                continue
        for name in entry["student_names"]:
            if hasattr(module, name):
                namespace[name] = getattr(module, name)
        exec(compile(entry["source"], f"<reference definitions for {entry['file']}>", "exec"), namespace)
        for name in entry["exports"]:
            _replace(module, name, namespace[name], live)
        for dotted, source in entry["methods"]:
            class_name, method = dotted.split(".")
            owner = getattr(module, class_name, None)
            exec(compile(source, f"<reference {dotted}>", "exec"), namespace)
            if isinstance(owner, type):
                setattr(owner, method, namespace.pop(method))


def _prepare(threads: int) -> None:
    torch.set_num_threads(max(1, int(threads)))
    torch.set_flush_denormal(True)  # denormals make CPU convs of small random models much slower
    warnings.simplefilter("ignore")


def run(payload: dict, submission_dir: str, answer_fd: int) -> None:
    """Grade-side probe loop: import, isolate, probe each check, answer."""
    answers = _Answers(answer_fd)
    _prepare(payload["threads"])
    max_chars = int(payload["exception_chars"])
    inputs = wire.decode(payload["inputs"])  # the grader's own message: trusted
    students, import_errors = load_students(submission_dir, payload["fallback_common"], max_chars)
    try:
        inject(payload["injection"], students)
    except Exception as error:
        import_errors["isolation"] = describe_exception(error, submission_dir, max_chars)
    answers.send({"event": "imported", "import_errors": import_errors})
    env = Env(students, {file: f"{e['type']}: {e['text']}" for file, e in import_errors.items()})
    checks = {check.name: check for check in CHECKS[payload["function"]]}
    for name in payload["checks"]:
        answers.send({"event": "start", "check": name})
        torch.manual_seed(0)
        start = time.perf_counter()
        try:
            outputs = checks[name].probe(env, inputs.get(name, {}))
            message = {"event": "done", "check": name, "outputs": outputs}
        except BaseException as error:  # the student's code raised: NotImplementedError, shape errors, exit ...
            message = {"event": "done", "check": name, "error": describe_exception(error, submission_dir, max_chars)}
        message["seconds"] = round(time.perf_counter() - start, 3)
        answers.send(message)
        sys.stdout.flush()
    answers.send({"event": "finished"})

