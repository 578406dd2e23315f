"""Grade FCOS submissions (course staff only; not shipped to students).

    python -m eecs598.grade SUBMISSION [SUBMISSION ...] [--json FILE] [--gradescope-results FILE]
                            [--only FUNCTION[,FUNCTION]] [--workers N] [--time-scale X] [--threads N]
                            [--sandbox {auto,namespaces,process}] [--sandbox-user USER] [--keep-logs DIR]
    python -m eecs598.grade --gradescope-bundle autograder.zip [--hidden-visibility VISIBILITY]

A submission is a folder (or the zip written by ``python -m eecs598.submit``, or a folder holding just that
zip) with the student's ``common.py`` and ``one_stage_detector.py``. Each graded function of
``eecs598/staff/points.json`` is run in a sandbox of its own (:mod:`.sandbox`, :mod:`.supervisor`): a
process forked from a server that imported torch and never the reference solution, walled in (namespaces,
an unprivileged user, read-only view without the solution, resource limits) before the student's code is
loaded. There only the student's functions run (:mod:`.runner`), with every other graded function the
checks go through replaced by the reference's definition (:mod:`.isolation`), and only their **outputs**
come back, as plain data (:mod:`.wire`). This process, which runs no student code, computes the inputs and
expected values from the reference solution itself and judges (:mod:`.trusted`, :mod:`.checks`).

Output: a table per submission, ``--json FILE`` (staff results, every check), ``--gradescope-results FILE``
(Gradescope's ``results.json``). Exit status 0 when graded; 2 when the grader cannot grade (bad options,
points file or solution, no sandbox): such failures are never charged to a student.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import types
from typing import List, Optional, Sequence

from . import release, sandbox, supervisor, wire
from .checks import CHECKS
from .isolation import IsolationError, injection_for, parse_sources
from .report import format_table, gradescope_results, to_json
from .submissions import read_submission
from .trusted import (VISIBILITIES, FunctionResult, GraderError, Reference, SubmissionResult, judge_run,
                      load_points)

__all__ = ["FunctionResult", "SubmissionResult", "GraderError", "grade_submissions", "format_table", "to_json",
           "gradescope_results", "main", "REPO_ROOT", "POINTS_PATH"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POINTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "points.json")
_SUPERVISOR_GRACE_S = sandbox.SETUP_TIMEOUT_S + 30.0
_PRELOAD = ["eecs598.staff.supervisor", "eecs598.staff.runner", "eecs598.models.backbones", "eecs598.models.options"]
_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _plain_main_module():
    """Hide the caller's ``__main__`` while a process starts: forkserver children re-import it (to unpickle
    functions defined there), which the supervisor never needs and which breaks or misbehaves for scripts
    without a ``__name__`` guard, code piped to ``python -`` or a notebook."""
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


def _wait_for_forkserver_exit(timeout_s: float = 10.0) -> None:
    """Wait until the lost forkserver is a zombie: its pipe ends close a moment before, and multiprocessing
    starts a new server only once ``waitpid`` sees the old one gone (it reaps it then; we only look)."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    deadline = time.monotonic() + timeout_s
    while pid is not None and time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.05)


def _context():
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # imported once by the server, before any student code
    return context


def _validate_options(workers, time_scale, threads) -> None:
    try:
        import safetensors  # noqa: F401  (the format of tensors across the sandbox's wall)
    except ImportError:
        raise GraderError("the grader needs safetensors: pip install 'safetensors>=0.4' (the project's grader extra)") from None
    for name, value in (("--workers", workers), ("--threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GraderError(f"{name} must be a whole number >= 1, got {value!r}")
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not math.isfinite(time_scale) \
            or time_scale <= 0:
        raise GraderError(f"--time-scale must be a finite number > 0, got {time_scale!r}")


def _sandbox_config(points: dict, override: Optional[sandbox.SandboxConfig]) -> sandbox.SandboxConfig:
    section = points.get("sandbox", {})
    try:
        config = override or sandbox.SandboxConfig(**section)
        config.validate()
    except (TypeError, ValueError) as error:
        raise GraderError(f"sandbox settings: {error}") from None
    return config


class _Grading:
    """One grading run: the scratch folder, the reference, the sandbox settings, the prepared functions."""

    def __init__(self, scratch: str, ref: Reference, points: dict, config: sandbox.SandboxConfig, options: dict):
        self.scratch, self.ref, self.points, self.options = scratch, ref, points, options
        self.context = _context()
        self.has_cuda = bool(__import__("torch").cuda.is_available())
        root = os.geteuid() == 0
        uid, gid = sandbox.user_ids(config.user) if root else (os.getuid(), os.getgid())
        self.sandbox = dict(dataclasses.asdict(config), root=root, uid=uid, gid=gid)
        self.graded = {entry["function"]: entry["file"] for entry in points["functions"]}
        self.parsed = parse_sources(ref.texts)
        self.prepared: dict = {}
        self.prepare_lock = threading.Lock()
        # The reference's expected outputs are computed here, one function after another, while the
        # sandboxes run; a judge waits for its function's.
        self.background = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.kit_copy = self._copy_kit()
        self.fallback_common = self._write("fallback-common.py", release.release_source(ref.texts["common.py"], "common.py"))

    def _write(self, name: str, text, binary: bool = False) -> str:
        path = os.path.join(self.scratch, name)
        with open(path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(text)
        return path

    def _copy_kit(self) -> str:
        """The released ``eecs598`` package (no staff wing) of the kit this process runs, for the sandbox."""
        import eecs598

        kit_root = os.path.dirname(os.path.dirname(os.path.abspath(eecs598.__file__)))
        target = os.path.join(self.scratch, "kit")
        for relative in release.released_files(kit_root):
            if relative.startswith("eecs598/"):
                destination = os.path.join(target, *relative.split("/"))
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                shutil.copyfile(os.path.join(kit_root, *relative.split("/")), destination)
        return os.path.join(target, "eecs598")

    def view(self, forbidden: Sequence[str], gpu: bool) -> dict:
        import eecs598

        package_dir = os.path.dirname(os.path.abspath(eecs598.__file__))
        try:
            return dataclasses.asdict(sandbox.build_view(self.kit_copy, package_dir, forbidden, gpu))
        except ValueError as error:
            raise GraderError(f"sandbox view: {error}") from None

    def prepare(self, function: str) -> dict:
        """Inputs (one wire message) and injection of ``function``, made once per run, and the reference's
        expected outputs started in the background."""
        with self.prepare_lock:
            if function not in self.prepared:
                try:
                    injection = injection_for(function, self.graded, self.ref.texts, self.parsed)
                except IsolationError as error:
                    raise GraderError(str(error)) from None
                inputs = self.ref.inputs(function)
                tag = function.replace(".", "_")
                self.prepared[function] = {
                    "inputs_data": inputs,
                    "inputs": self._write(f"inputs-{tag}.bin", wire.encode(inputs), binary=True),
                    "injection": self._write(f"injection-{tag}.json", json.dumps(injection)),
                    "expected": self.background.submit(self.ref.precompute, function, inputs, self.has_cuda),
                }
            return self.prepared[function]

    def supervise(self, job_dir: str, job: dict, timeout_s: float) -> dict:
        """Run one job through a supervisor process; its status (a grader failure raises)."""
        with open(os.path.join(job_dir, "job.json"), "w", encoding="utf-8") as f:
            json.dump(job, f)
        status_path = os.path.join(job_dir, "status.json")
        for attempt in (1, 2):
            process = self.context.Process(target=supervisor.supervise, args=(job_dir,), daemon=True)
            with _START_LOCK, _plain_main_module():
                process.start()
            process.join(timeout_s + _SUPERVISOR_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
                raise GraderError(f"the supervisor of {job['function']} did not finish")
            # 255: multiprocessing lost the forkserver that started the supervisor (it died, e.g. killed by the
            # kernel's OOM killer on a loaded machine), so the exit code is unknown. A status file is written
            # last and atomically: when it is there the supervisor finished. Without it the job runs once more
            # (the next start launches a new forkserver): a machine hiccup gives a late result, not a failed batch.
            lost_forkserver = process.exitcode == 255 and self.context.get_start_method() == "forkserver"
            if os.path.isfile(status_path) and (process.exitcode == 0 or lost_forkserver):
                break
            if attempt == 1 and lost_forkserver:
                _wait_for_forkserver_exit()
                print(f"grade: the forkserver ended while supervising {job['function']}; starting a new one to run the job "
                      "again", file=sys.stderr)
                continue
            raise GraderError(f"the supervisor of {job['function']} failed (exit code {process.exitcode}"
                              f"{': the forkserver it was started from ended' if process.exitcode == 255 else ''})")
        with open(status_path, encoding="utf-8") as f:
            status = json.load(f)
        if status.get("setup_error"):
            raise GraderError(f"the sandbox could not be set up: {status['setup_error']}")
        return status

    def job(self, entry: dict, files: dict, job_dir: str, forbidden: Sequence[str]) -> dict:
        prepared = self.prepare(entry["function"])
        checks = [c for c in CHECKS[entry["function"]] if self.has_cuda or not c.needs_cuda]
        gpu = self.has_cuda and any(c.needs_cuda for c in checks)
        os.makedirs(os.path.join(job_dir, "root"))
        return {"function": entry["function"], "checks": [c.name for c in checks],
                "time_limit_s": float(entry["time_limit_s"]) * self.options["time_scale"],
                "threads": self.options["threads"], "gpu": gpu, "exception_chars": self.points.get("exception_chars", 200),
                "sandbox": self.sandbox, "view": self.view(forbidden, gpu), "root_dir": os.path.join(job_dir, "root"),
                "scratch_dir": os.path.join(job_dir, "scratch"), "files": files, "inputs": prepared["inputs"],
                "injection": prepared["injection"], "fallback_common": self.fallback_common}

    def run(self, tag: str, entry: dict, files: dict, forbidden: Sequence[str]):
        """Grade one function of one submission: ``(FunctionResult, import errors)``."""
        job_dir = os.path.join(self.scratch, "jobs", tag)
        os.makedirs(job_dir)
        job = self.job(entry, files, job_dir, forbidden)
        status = self.supervise(job_dir, job, job["time_limit_s"])
        with open(os.path.join(job_dir, "answers.bin"), "rb") as f:
            answers = f.read((self.sandbox["output_mb"] << 20) + 1)
        prepared = self.prepare(entry["function"])
        prepared["expected"].result()  # re-raises the reference's failure (a GraderError)
        if self.options["keep_logs"]:
            for name in ("status.json", "log.txt"):
                shutil.copy(os.path.join(job_dir, name), os.path.join(self.options["keep_logs"], f"{tag}.{name}"))
        return judge_run(entry, prepared["inputs_data"], status, answers, self.ref,
                         job["time_limit_s"], bool(self.points.get("partial_credit", False)),
                         job["exception_chars"], self.has_cuda)

    def check_sandbox(self, forbidden: Sequence[str]) -> None:
        """Start one empty sandboxed run; refuse (or fall back, when asked) if the machine cannot."""
        if self.sandbox["mode"] == "process":
            return
        entry = self.points["functions"][0]
        job_dir = os.path.join(self.scratch, "jobs", "sandbox-check")
        os.makedirs(job_dir)
        job = self.job(entry, {}, job_dir, forbidden)
        job.update(checks=[], time_limit_s=30.0, sandbox=dict(self.sandbox, mode="namespaces"))
        try:
            self.supervise(job_dir, job, 30.0)
        except GraderError as error:
            raise GraderError(f"{error}. Walling student code in needs root or unprivileged user namespaces "
                              "(see docs/staff.md); to grade trusted code without, pass --sandbox process") from None
        self.sandbox["mode"] = "namespaces"


def grade_submissions(submissions: Sequence[str], only: Optional[Sequence[str]] = None, workers: int = 2,
                      time_scale: float = 1.0, threads: int = 1, solution_dir: str = REPO_ROOT,
                      points_path: str = POINTS_PATH, keep_logs: Optional[str] = None,
                      sandbox_config: Optional[sandbox.SandboxConfig] = None) -> List[SubmissionResult]:
    """Grade each submission (folder or zip); every graded function runs in a sandbox of its own.

    Args:
        submissions: folders or zip files.
        only: names of graded functions to run (default: all in the points file).
        workers: sandboxed runs at a time.
        time_scale: multiplies every function's time limit (slower machines).
        threads: torch CPU threads per sandboxed run.
        solution_dir: the reference solution (default: this repository).
        points_path: the points file.
        keep_logs: a folder to keep each run's status and output in (for staff).
        sandbox_config: containment settings (default: the points file's, else :class:`.sandbox.SandboxConfig`).

    Returns:
        One :class:`SubmissionResult` per submission, in order.

    Raises:
        GraderError: bad options, points file or solution, a sandbox that cannot start; before any student
            is graded where possible.
    """
    _validate_options(workers, time_scale, threads)
    points = load_points(points_path)
    config = _sandbox_config(points, sandbox_config)
    entries = points["functions"]
    if only:
        unknown = sorted(set(only) - {entry["function"] for entry in entries})
        if unknown:
            raise GraderError(f"unknown function(s) {unknown}; graded functions: {[e['function'] for e in entries]}")
        entries = [entry for entry in entries if entry["function"] in only]
    ref = Reference(solution_dir)
    if keep_logs:
        os.makedirs(keep_logs, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")  # inherited by the forkserver: no GUI backend for matplotlib
    with tempfile.TemporaryDirectory(prefix="fcos-grading-") as scratch:
        grading = _Grading(scratch, ref, points, config, {"time_scale": float(time_scale), "threads": threads,
                                                          "keep_logs": keep_logs})
        read = [read_submission(path) for path in submissions]
        forbidden = [solution_dir, scratch, REPO_ROOT, os.path.dirname(os.path.abspath(points_path))]
        forbidden += [os.path.abspath(path) for path in submissions]
        grading.check_sandbox(forbidden)
        jobs = []
        for index, submission in enumerate(read):
            files = {name: grading._write(f"submission-{index:03d}-{name}", text) for name, text in submission.files.items()}
            for entry in entries:
                jobs.append((index, entry, files, f"{index:03d}-{entry['function'].replace('.', '_')}"))
        # Longest first (by time limit; stable): the slow FCOS.forward runs start together, short ones fill in.
        order = sorted(range(len(jobs)), key=lambda i: -float(jobs[i][1]["time_limit_s"]))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {i: pool.submit(grading.run, jobs[i][3], jobs[i][1], jobs[i][2], forbidden) for i in order}
            try:
                outcomes = [futures[i].result() for i in range(len(jobs))]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                grading.background.shutdown(wait=True, cancel_futures=True)
    results = [SubmissionResult(submission.label, [], import_errors=dict(submission.problems)) for submission in read]
    for (index, _, _, _), (function_result, import_errors) in zip(jobs, outcomes):
        results[index].functions.append(function_result)
        for file, error in import_errors.items():
            results[index].import_errors.setdefault(file, error)
    for result in results:  # process time spent on it (the runs of several submissions overlap)
        result.seconds = round(sum(function.seconds for function in result.functions), 2)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.grade",
        description="Grade FCOS submissions: every graded function of eecs598/staff/points.json runs in a sandbox "
                    "of its own (no network, no solution, an unprivileged user, resource limits) with the other "
                    "graded functions replaced by the reference solution's; only its outputs come back and are "
                    "judged here against values computed from the reference solution.",
    )
    parser.add_argument("submissions", nargs="*", metavar="SUBMISSION",
                        help="folder with common.py and one_stage_detector.py, or the zip from eecs598.submit")
    parser.add_argument("--json", metavar="FILE", help="write staff results JSON here (a list for several submissions)")
    parser.add_argument("--gradescope-results", metavar="FILE", help="write Gradescope's results.json (one submission)")
    parser.add_argument("--gradescope-bundle", metavar="ZIP", help="write the Gradescope autograder zip and exit")
    parser.add_argument("--hidden-visibility", choices=VISIBILITIES, default=None,
                        help="when Gradescope shows hidden checks' results to students (default: the points file's, "
                             "else after_published)")
    parser.add_argument("--only", metavar="FUNCTION[,FUNCTION]", help="grade only these functions, e.g. 'nms,FCOS.inference'")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="sandboxed runs at a time (default: %(default)s)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every time limit of the points file by this (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per sandboxed run (default: 1)")
    parser.add_argument("--solution", default=REPO_ROOT, metavar="DIR", help="reference solution (default: %(default)s)")
    parser.add_argument("--points", default=POINTS_PATH, metavar="FILE", help="points file (default: %(default)s)")
    parser.add_argument("--sandbox", choices=("auto", "namespaces", "process"), default=None,
                        help="containment: namespaces (needs root or user namespaces; auto refuses without), or "
                             "process (limits only, for trusted code)")
    parser.add_argument("--sandbox-user", metavar="USER", default=None,
                        help="unprivileged user for student code when grading as root (default: nobody)")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep every run's status and output here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.gradescope_bundle:
            from .gradescope import write_bundle

            write_bundle(args.gradescope_bundle, solution_dir=args.solution, points_path=args.points,
                         hidden_visibility=args.hidden_visibility)
            print(f"Wrote {args.gradescope_bundle}: upload it as the assignment's autograder.")
            return 0
        if not args.submissions:
            parser.error("give at least one SUBMISSION, or --gradescope-bundle ZIP")
        if args.gradescope_results and len(args.submissions) != 1:
            raise GraderError("--gradescope-results takes exactly one submission")
        only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
        points = load_points(args.points)
        config = None
        if args.sandbox or args.sandbox_user:
            flags = {k: v for k, v in (("mode", args.sandbox), ("user", args.sandbox_user)) if v}
            config = dataclasses.replace(_sandbox_config(points, None), **flags)
        results = grade_submissions(args.submissions, only=only, workers=args.workers, time_scale=args.time_scale,
                                    threads=args.threads, solution_dir=args.solution, points_path=args.points,
                                    keep_logs=args.keep_logs, sandbox_config=config)
    except (GraderError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for index, result in enumerate(results):
        print(("\n" if index else "") + format_table(result))
    if args.json:
        payload = [to_json(result) for result in results]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload[0] if len(payload) == 1 else payload, f, indent=2)
        print(f"\nWrote {args.json}")
    if args.gradescope_results:
        visibility = args.hidden_visibility or points.get("hidden_visibility", "after_published")
        os.makedirs(os.path.dirname(os.path.abspath(args.gradescope_results)), exist_ok=True)
        with open(args.gradescope_results, "w", encoding="utf-8") as f:
            json.dump(gradescope_results(results[0], visibility), f, indent=2)
        print(f"\nWrote {args.gradescope_results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
