"""Containment of student code: one fresh, walled-in process per (submission, graded function).

The grader starts :func:`supervise` in a process forked from its forkserver (which imported torch once and
never the reference solution). That **supervisor** runs no student code; it forks the **sandboxed** process,
reads its answers through a pipe (at most ``output_mb``), kills it at the time limit, and writes the outcome
for the grader. The sandboxed process, before any student code runs:

======================================  ======================================================  ==================
defence                                 what it stops                                           needs
======================================  ======================================================  ==================
new PID namespace, killed as a whole    a child outliving the time limit (to rewrite a result   root or user
(SIGKILL of its init at the limit)      later), signalling or tracing the grader or other jobs  namespaces
new network, IPC and UTS namespaces     connections (127.0.0.1 included: a new namespace has    root or user
                                        only a down loopback), shared memory with the host      namespaces
new mount namespace, ``pivot_root``     reading the solution, the hidden checks' code, other    root or user
into a view of read-only binds          submissions or the grader's files (only the             namespaces
                                        interpreter, its libraries and the released ``eecs598``
                                        package are there); writing or deleting the kit, a
                                        ``.pyc`` or ``sitecustomize.py`` for the next run
size-limited tmpfs ``/scratch``         filling the grader's disk; state surviving the job (the  root or user
(cwd, HOME, TMPDIR), dropped after      folder lives in the job's mount namespace)              namespaces
unprivileged user (``nobody`` when the  everything root could do; as ``nobody`` in a user       root (the switch)
grader is root), no capabilities,       namespace of its own, process counts are per job
``no_new_privs``
``setrlimit``: CPU time, address        a hung, memory-, file-, process- or fd-hungry function  nothing
space, file size, processes, open       taking the machine (and a fork bomb other jobs)
files, no core dumps
``setsid``, fds closed, clean           leftover handles to the grader, its environment's       nothing
environment, no bytecode written        secrets, ``.pyc`` files
======================================  ======================================================  ==================

Without root and without unprivileged user namespaces only the last two rows hold (``mode="process"``): the
grader then refuses unless asked for it explicitly, since the solution stays readable.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import platform
import pwd
import resource
import signal
import sys
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

__all__ = ["SandboxConfig", "View", "build_view", "enter", "user_ids", "SANDBOX_ROOT_FILES", "SETUP_EXIT"]

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
SETUP_EXIT = 121  # the sandboxed process could not be set up (reported on the setup pipe)
SETUP_TIMEOUT_S = 60.0
SANDBOX_SUBMISSION = "/submission"
SANDBOX_SCRATCH = "/scratch"
# Top-level names never exposed inside a bound folder: copies of the solution a non-editable install puts
# into site-packages (and their bytecode), and the solution's notebook.
SANDBOX_ROOT_FILES = ("common.py", "one_stage_detector.py", "a4_helper.py", "train_fcos.py", "one_stage_detector.ipynb")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class SandboxConfig:
    """Containment settings (``points.json`` ``"sandbox"`` section, command-line flags override).

    Attributes:
        mode: ``"auto"`` (namespaces where the machine allows them, else refuse), ``"namespaces"`` or
            ``"process"`` (limits only: for trusted code such as the self-test).
        user: the unprivileged user student code runs as when the grader is root.
        memory_mb: address space on top of what the process holds when it starts (torch's libraries).
        scratch_mb, file_size_mb, processes, open_files: the other limits.
        output_mb: the most answer bytes read from one run; more fails the run's remaining checks.
    """

    mode: str = "auto"
    user: str = "nobody"
    memory_mb: int = 4096
    scratch_mb: int = 256
    file_size_mb: int = 64
    processes: int = 64
    open_files: int = 256
    output_mb: int = 256

    def validate(self) -> None:
        if self.mode not in ("auto", "namespaces", "process"):
            raise ValueError(f"sandbox mode must be auto, namespaces or process, got {self.mode!r}")
        for name in ("memory_mb", "scratch_mb", "file_size_mb", "processes", "open_files", "output_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sandbox {name} must be a whole number >= 1, got {value!r}")
        if os.geteuid() == 0:
            user_ids(self.user)


def user_ids(user: str):
    """``(uid, gid)`` of ``user`` (a name or a number), or ``ValueError`` naming the setting."""
    try:
        entry = pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(str(user))
    except (KeyError, ValueError):
        raise ValueError(f"sandbox user {user!r} does not exist on this machine; create it or set another "
                         "(--sandbox-user)") from None
    if entry.pw_uid == 0:
        raise ValueError("the sandbox user must not be root")
    return entry.pw_uid, entry.pw_gid


@dataclass
class View:
    """What the sandbox's file system holds besides ``/scratch``, ``/submission``, ``/proc`` and ``/tmp``."""

    binds: List[List[str]] = field(default_factory=list)  # [host path, sandbox path], read-only
    links: List[List[str]] = field(default_factory=list)  # [sandbox path, symlink target]
    hidden: List[str] = field(default_factory=list)  # sandbox paths covered by an empty file or folder
    devices: List[str] = field(default_factory=list)  # device nodes bound at the same path
    sys_path: List[str] = field(default_factory=list)  # the interpreter's search path inside


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def build_view(kit_copy: str, package_dir: str, forbidden: Sequence[str], gpu: bool = False) -> View:
    """The read-only view of the sandbox: system libraries, the interpreter and its site folders, and the
    released ``eecs598`` package (``kit_copy``) at the path of the package the grader runs
    (``package_dir``), so that modules already imported keep their paths.

    A folder is never bound if it is, or contains, one of ``forbidden`` (the solution, the grader's
    scratch, the submissions): a site folder inside the solution's checkout (a virtual environment) is
    fine, the checkout itself is not.
    """
    real_forbidden = [os.path.realpath(path) for path in forbidden]
    view = View()
    needed = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", os.path.join(sys.base_prefix, "lib")]
    for path in needed:
        clash = [f for f in real_forbidden if os.path.exists(path) and _inside(f, os.path.realpath(path))]
        if clash:
            raise ValueError(f"{clash[0]} lies inside {path}, which the sandbox must see; move it elsewhere")
    for top in needed[:-1]:
        if os.path.islink(top):
            view.links.append([top, os.readlink(top)])
        elif os.path.isdir(top):
            view.binds.append([top, top])
    candidates = ["/etc/ld.so.cache", os.path.join(sys.base_prefix, "lib"), os.path.join(sys.prefix, "lib")]
    candidates += [entry for entry in sys.path if entry and os.path.isabs(entry)]
    bound: List[str] = [os.path.realpath(path) for path, _ in view.binds]
    for path in candidates:
        real = os.path.realpath(path)
        if not os.path.exists(real) or any(_inside(real, b) for b in bound):
            continue
        if any(_inside(f, real) for f in real_forbidden):
            continue  # binding it would expose the solution, the grader's files or the submissions
        bound.append(real)
        view.binds.append([real, real])
        view.sys_path.append(real)
        view.hidden += _hidden_entries(real, os.path.realpath(package_dir))
    view.sys_path = [os.path.realpath(p) for p in sys.path if p and os.path.isabs(p)
                     and any(_inside(os.path.realpath(p), b) for b in bound)]
    view.binds.append([os.path.realpath(kit_copy), os.path.realpath(package_dir)])
    view.devices = [f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom")]
    if gpu:
        view.devices += sorted(f"/dev/{name}" for name in os.listdir("/dev") if name.startswith("nvidia"))
        if os.path.isdir("/sys"):
            view.binds.append(["/sys", "/sys"])
    return view


def _hidden_entries(folder: str, package_dir: str) -> List[str]:
    """Entries at the top of a bound folder that could hold a copy of the solution."""
    hidden = []
    for name in SANDBOX_ROOT_FILES + ("eecs598", "__pycache__"):
        path = os.path.join(folder, name)
        if name == "__pycache__" and os.path.isdir(path):
            stems = tuple(os.path.splitext(n)[0] + "." for n in SANDBOX_ROOT_FILES)
            if not any(entry.startswith(stems) for entry in os.listdir(path)):
                continue
        if os.path.lexists(path) and not _inside(package_dir, os.path.realpath(path)):
            hidden.append(path)
    return hidden


# ------------------------------------------------------------------------------------------------
# system calls
# ------------------------------------------------------------------------------------------------


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int, data: Optional[str] = None) -> None:
    encode = lambda value: value.encode() if value is not None else None  # noqa: E731
    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
           f"mount {source or fstype} on {target}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _write_id_maps(uid: int, gid: int, pid: str = "self") -> None:
    """Map root of a new user namespace to ``uid``/``gid`` (the only ids one may map to oneself)."""
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _drop_capabilities() -> None:
    """No capabilities left, and none to regain: bounding set emptied, then permitted/effective cleared."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    for capability in range(64):
        _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(capability), 0, 0, 0)  # EINVAL past the last one
    _check(_libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()), "capset")


# ------------------------------------------------------------------------------------------------
# entering the sandbox (in the forked process, before any student code)
# ------------------------------------------------------------------------------------------------


def _bind(root: str, host: str, inside: str, device: bool = False) -> None:
    """Bind ``host`` read-only at ``root + inside`` (a folder or a file)."""
    target = root + inside
    if os.path.isdir(host):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()
    _mount(host, target, None, MS_BIND)  # not recursive: a mount below it (writable, say) is not brought along
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (0 if device else MS_NODEV)
    _mount(None, target, None, flags)


def _cover(root: str, inside: str) -> None:
    """Hide ``inside`` (already bound) behind an empty read-only folder or an empty file."""
    target = root + inside
    if os.path.isdir(target) and not os.path.islink(target):
        _mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
    elif os.path.exists(target):
        _mount("/dev/null", target, None, MS_BIND)


def _build_root(root: str, job: dict, files: Dict[str, str], owner: Optional[tuple]) -> None:
    """Mount the view under ``root`` (a tmpfs), the student's files at ``/submission``, a fresh ``/proc``
    and the size-limited ``/scratch``; then make the tmpfs read-only."""
    view, config = job["view"], job["sandbox"]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    for host, inside in view["binds"]:
        _bind(root, host, inside)
    for inside in view["hidden"]:
        _cover(root, inside)
    for device in view["devices"]:
        if os.path.exists(device):
            _bind(root, device, device, device=True)
    for inside, target in view["links"]:
        os.symlink(target, root + inside)
    os.makedirs(root + SANDBOX_SUBMISSION)
    for name, text in files.items():
        path = os.path.join(root + SANDBOX_SUBMISSION, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o444)
    os.makedirs(root + SANDBOX_SCRATCH)
    ownership = f",uid={owner[0]},gid={owner[1]}" if owner else ""
    _mount("tmpfs", root + SANDBOX_SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(config['scratch_mb'])}m,mode=0700{ownership}")
    os.makedirs(root + "/tmp", exist_ok=True)  # read-only: TMPDIR is /scratch/tmp
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # of the job's PID namespace
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _pivot(root: str) -> None:
    """Make ``root`` the file system root and detach the old one (``chroot`` where ``pivot_root``'s number
    is not known; capabilities are dropped afterwards either way, so neither can be undone)."""
    os.chdir(root)
    number = _PIVOT_ROOT.get(platform.machine())
    if number is None:
        os.chroot(".")
    else:
        _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def _set_limits(config: dict, time_limit_s: float, gpu: bool) -> None:
    """CPU time, address space (on top of the current size; not with a GPU, whose driver reserves huge
    ranges), file size, processes, open files, no core dumps."""
    cpu = max(1, int(time_limit_s) + 1)
    limits = {resource.RLIMIT_CPU: (cpu, cpu + 2), resource.RLIMIT_FSIZE: (config["file_size_mb"] << 20,) * 2,
              resource.RLIMIT_NPROC: (config["processes"],) * 2, resource.RLIMIT_NOFILE: (config["open_files"],) * 2,
              resource.RLIMIT_CORE: (0, 0)}
    if not gpu:
        with open("/proc/self/status") as f:
            size_kb = int(next(line for line in f if line.startswith("VmSize:")).split()[1])
        limits[resource.RLIMIT_AS] = ((size_kb << 10) + (config["memory_mb"] << 20),) * 2
    for kind, (soft, hard) in limits.items():
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))


def _switch_user(config: dict) -> None:
    uid, gid = config["uid"], config["gid"]
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _become_unprivileged(config: dict) -> None:
    """Namespaces mode. As root: switch to the sandbox user, then enter a user namespace of its own (so that
    its process count is this job's alone; the limit is set afterwards, see :func:`enter`). Without root the
    supervisor already made that namespace. Either way: no capabilities left."""
    if config["root"]:
        _switch_user(config)
        _prctl(PR_SET_DUMPABLE, 1)  # the id maps below are files of this process
        _unshare(CLONE_NEWUSER)
        _write_id_maps(config["uid"], config["gid"])


def _process_folders(job: dict, files: Dict[str, str]):
    """Process mode: the student's files and the scratch folder in the job's folder (removed afterwards)."""
    scratch = job["scratch_dir"]
    submission = os.path.join(scratch, "submission")
    os.makedirs(os.path.join(scratch, "tmp"), exist_ok=True)
    os.makedirs(submission)
    for name, text in files.items():
        with open(os.path.join(submission, name), "w", encoding="utf-8") as f:
            f.write(text)
    if job["sandbox"]["root"]:
        for folder in (scratch, submission, os.path.join(scratch, "tmp")):
            os.chown(folder, job["sandbox"]["uid"], job["sandbox"]["gid"])
    return submission, scratch


def _finish_process(answer_fd: int, setup_fd: int, scratch: str) -> None:
    """Signals at their defaults, dying with the supervisor, only the answer and setup pipes open (and
    stdout/stderr, the log pipe), stdin from /dev/null, a plain environment."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(number, signal.SIG_DFL)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    keep = sorted({0, 1, 2, answer_fd, setup_fd})
    for low, high in zip([-1] + keep, keep + [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]):
        if high - low > 1:
            os.closerange(low + 1, high)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": os.path.join(scratch, "tmp"),
                       "MPLBACKEND": "Agg", "TORCH_HOME": os.path.join(scratch, "torch"), "LANG": "C.UTF-8",
                       "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"})


def enter(job: dict, files: Dict[str, str], answer_fd: int, setup_fd: int) -> str:
    """Wall in the calling (freshly forked, single-threaded) process as the job says; returns the folder
    holding the student's files. Namespaces mode: the caller already is PID 1 of a new PID namespace (and,
    without root, in the supervisor's user namespace)."""
    config = job["sandbox"]
    os.setsid()
    if config["mode"] == "namespaces":
        _unshare(CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _build_root(job["root_dir"], job, files, (config["uid"], config["gid"]) if config["root"] else None)
        _pivot(job["root_dir"])
        submission, scratch = SANDBOX_SUBMISSION, SANDBOX_SCRATCH
    else:
        submission, scratch = _process_folders(job, files)
    _finish_process(answer_fd, setup_fd, scratch)
    if config["mode"] == "namespaces":
        _become_unprivileged(config)
        _set_limits(config, job["time_limit_s"], job["gpu"])
        _drop_capabilities()
    else:
        _set_limits(config, job["time_limit_s"], job["gpu"])
        if config["root"]:
            _switch_user(config)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of user clears it
    os.makedirs(os.path.join(scratch, "tmp"), exist_ok=True)
    os.chdir(scratch)
    sys.dont_write_bytecode = True
    sys.path[:] = [submission] + list(job["view"]["sys_path"])
    importlib.invalidate_caches()
    return submission


def describe_setup_failure(error: BaseException) -> str:
    """One line (or a few) for the grader's error: the setup's exception, with where it happened."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return ("".join(traceback.format_exception_only(type(error), error)).strip() + where)[:2000]


def namespaces_problem() -> Optional[str]:
    """Why this machine cannot give a job its namespaces (``None`` when it can): tried in a forked child."""
    if not sys.platform.startswith("linux"):
        return f"namespaces are Linux-only (this is {sys.platform})"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # single-threaded after fork, as the supervisor is
        os.close(read)
        try:
            flags = CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS
            if os.geteuid() != 0:
                uid, gid = os.getuid(), os.getgid()
                _unshare(flags | CLONE_NEWUSER)
                _write_id_maps(uid, gid)
            else:
                _unshare(flags)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
        except BaseException as error:
            os.write(write, str(error).encode()[:500])
            os._exit(1)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    return None if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else (message or f"wait status {status}")
