"""The trusted process between the grader and one sandboxed run of student code.

The grader starts :func:`supervise` for every (submission, graded function) in a process forked from its
forkserver: a process that never imported the reference solution and runs no student code. It

1. reads the job the grader prepared (the student's two files, the inputs as one :mod:`.wire` message, the
   injection of other functions' references, the limits) while it can still read the grader's files;
2. in namespaces mode makes the job's PID, network, IPC and UTS namespaces (and, without root, its user
   namespace), then forks the sandboxed process, which walls itself in (:func:`.sandbox.enter`), reports
   "set up" on a pipe and only then loads the student's code (:func:`.runner.run`);
3. reads the answers (at most ``output_mb``) and the output (the first 64 KiB, for ``--keep-logs``) from
   two pipes until the process ends or the time limit passes, then kills it (in namespaces mode the whole
   PID namespace dies with it: nothing outlives the job) and reaps it;
4. writes ``answers.bin``, ``log.txt`` and, last, ``status.json`` into the job's folder, which the sandbox
   never sees.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import tempfile
import time
from typing import Dict, List, Tuple

from . import sandbox

__all__ = ["supervise", "LOG_LIMIT"]

LOG_LIMIT = 64 << 10
_DRAIN_S = 1.0


def _read_job(job_dir: str) -> Tuple[dict, Dict[str, str], dict]:
    with open(os.path.join(job_dir, "job.json"), encoding="utf-8") as f:
        job = json.load(f)
    files = {}
    for name, path in job["files"].items():
        with open(path, encoding="utf-8") as f:
            files[name] = f.read()
    with open(job["inputs"], "rb") as f:
        inputs = f.read()
    with open(job["injection"], encoding="utf-8") as f:
        injection = json.load(f)
    fallback = None
    if job.get("fallback_common"):
        with open(job["fallback_common"], encoding="utf-8") as f:
            fallback = f.read()
    payload = {"function": job["function"], "checks": job["checks"], "threads": job["threads"], "inputs": inputs,
               "injection": injection, "fallback_common": fallback, "exception_chars": job["exception_chars"]}
    return job, files, payload


def _child(job: dict, files: Dict[str, str], payload: dict, pipes: dict) -> None:
    """The sandboxed process: wall in, say so, run the student's code; never returns."""
    from . import runner  # imported by the forkserver already; no file access needed here

    for name in ("setup_r", "answer_r", "log_r"):
        os.close(pipes[name])
    try:
        os.dup2(pipes["log_w"], 1)
        os.dup2(pipes["log_w"], 2)
        os.close(pipes["log_w"])
        submission = sandbox.enter(job, files, pipes["answer_w"], pipes["setup_w"])
        os.write(pipes["setup_w"], b"OK\n")
        os.close(pipes["setup_w"])
    except BaseException as error:  # reported to the grader as its own failure, not the student's
        report = b"ERROR " + sandbox.describe_setup_failure(error).encode("utf-8", "replace")
        for fd in (pipes["setup_w"], 2):
            try:
                os.write(fd, report)
                break
            except OSError:
                continue
        os._exit(sandbox.SETUP_EXIT)
    try:
        runner.run(payload, submission, pipes["answer_w"])
    finally:
        os._exit(0)


def _read_setup(fd: int, pid: int, timeout_s: float) -> bytes:
    """What the sandboxed process said on the setup pipe before closing it (or dying)."""
    data = bytearray()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(data) < 4096:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return bytes(data)


def _read_into(fd: int, buffer: bytearray, cap: int) -> bool:
    """Read what ``fd`` has into ``buffer`` (keeping at most ``cap + 1`` bytes); ``False`` at end of file."""
    chunk = os.read(fd, 1 << 20)
    if not chunk:
        return False
    room = cap + 1 - len(buffer)
    if room > 0:
        buffer += chunk[:room]
    return True


def _kill(pid: int) -> None:
    for kill in (lambda: os.kill(pid, signal.SIGKILL), lambda: os.killpg(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass


def _collect(pid: int, answer_r: int, log_r: int, time_limit_s: float, output_cap: int) -> dict:
    """Read both pipes until the process ends or the time runs out; kill and reap it."""
    buffers = {answer_r: bytearray(), log_r: bytearray()}
    caps = {answer_r: output_cap, log_r: LOG_LIMIT}
    open_fds: List[int] = [answer_r, log_r]
    start = time.monotonic()
    deadline = start + time_limit_s
    outcome = {"timed_out": False, "oversized": False}
    # Exited (a zombie, not yet reaped: its PID and process group cannot be reused while we kill them)?
    exited = lambda: os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None  # noqa: E731
    while not exited():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome["timed_out"] = True
            break
        ready = select.select(open_fds, [], [], min(0.05, remaining))[0] if open_fds else time.sleep(0.05) or []
        for fd in ready:
            if not _read_into(fd, buffers[fd], caps[fd]):
                open_fds.remove(fd)
        if len(buffers[answer_r]) > output_cap:
            outcome["oversized"] = True
            break
    # Namespaces mode: PID 1 of the job, whose end makes the kernel kill every process of it; process
    # mode: also what is left of its process group.
    _kill(pid)
    reaped = os.wait4(pid, 0)
    end = time.monotonic() + _DRAIN_S
    while open_fds and time.monotonic() < end:  # what was written before the end
        for fd in select.select(open_fds, [], [], 0.05)[0]:
            if not _read_into(fd, buffers[fd], caps[fd]):
                open_fds.remove(fd)
    _, status, usage = reaped
    outcome.update(
        exit_code=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        wall_seconds=round(time.monotonic() - start, 3), cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3),
        max_rss_mb=round(usage.ru_maxrss / 1024, 1), answers=bytes(buffers[answer_r][:output_cap]),
        log=bytes(buffers[log_r][:LOG_LIMIT]))
    return outcome


def _enter_job_namespaces(job: dict) -> None:
    """The job's own PID, network, IPC and UTS namespaces (and user namespace without root) for the process
    forked next."""
    flags = sandbox.CLONE_NEWPID | sandbox.CLONE_NEWNET | sandbox.CLONE_NEWIPC | sandbox.CLONE_NEWUTS
    if job["sandbox"]["root"]:
        sandbox._unshare(flags)
    else:
        uid, gid = os.getuid(), os.getgid()
        sandbox._unshare(flags | sandbox.CLONE_NEWUSER)
        sandbox._write_id_maps(uid, gid)


def contain(job: dict, files: Dict[str, str], payload: dict) -> dict:
    """Run the job's student code in the sandbox; the outcome (answers, output, how it ended)."""
    if job["sandbox"]["mode"] == "namespaces":
        _enter_job_namespaces(job)
    else:  # a folder the sandbox user can reach (the grader's own scratch is private to it)
        job = dict(job, scratch_dir=tempfile.mkdtemp(prefix="fcos-sandbox-"))
    for fd in (0, 1, 2):  # occupied, so that no pipe below gets a number the child's dup2 onto 1 and 2 replaces
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    pipes = {}
    for name in ("setup", "answer", "log"):
        pipes[f"{name}_r"], pipes[f"{name}_w"] = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(job, files, payload, pipes)
    for name in ("setup_w", "answer_w", "log_w"):
        os.close(pipes[name])
    try:
        said = _read_setup(pipes["setup_r"], pid, sandbox.SETUP_TIMEOUT_S)
        if said != b"OK\n":
            _kill(pid)
            _, status = os.waitpid(pid, 0)
            output = bytearray()
            while select.select([pipes["log_r"]], [], [], 0.2)[0] and _read_into(pipes["log_r"], output, 4000):
                pass
            return {"setup_error": said.decode("utf-8", "replace")[len("ERROR "):] or
                    f"the sandboxed process ended during its set-up (wait status {status}): "
                    f"{output.decode('utf-8', 'replace')[-2000:]}"}
        outcome = _collect(pid, pipes["answer_r"], pipes["log_r"], job["time_limit_s"], job["sandbox"]["output_mb"] << 20)
        outcome["setup_error"] = None
        return outcome
    finally:
        for name in ("setup_r", "answer_r", "log_r"):
            os.close(pipes[name])
        if job["sandbox"]["mode"] == "process":
            shutil.rmtree(job["scratch_dir"], ignore_errors=True)


def supervise(job_dir: str) -> None:
    """Entry point (a process of its own per job): run the job in ``job_dir`` and write its outcome there."""
    job, files, payload = _read_job(job_dir)
    outcome = contain(job, files, payload)
    with open(os.path.join(job_dir, "answers.bin"), "wb") as f:
        f.write(outcome.pop("answers", b""))
    with open(os.path.join(job_dir, "log.txt"), "wb") as f:
        f.write(outcome.pop("log", b""))
    temporary = os.path.join(job_dir, "status.json.partial")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(outcome, f)
    os.replace(temporary, os.path.join(job_dir, "status.json"))
