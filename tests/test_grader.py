"""Tests of the grader's parts and of the kit's own failures (issue 21): the wire format, reading hostile
submissions, the injection of other functions' references, the release's output folder, the validation of
options and points, the submission check's stubs, stray child output and temporary folders, and the
Gradescope bundle run against a fake ``/autograder`` tree.

The hostile submissions themselves are ``tests/test_grader_hostile.py``.
"""
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile

import pytest
import torch

from eecs598.staff import grade, isolation, release, wire
from eecs598.staff.submissions import MAX_MODULE_BYTES, read_submission
from eecs598.staff.sandbox import SandboxConfig
from eecs598.staff.trusted import load_points
from eecs598.tools import stubs, submit

from grader_support import SANDBOX_FLAGS, needs_namespaces

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("common.py", "one_stage_detector.py")


def _read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", **extra)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("grader") / "release"
    release.build_release(str(out))
    return str(out)


@pytest.fixture(scope="module")
def solution_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grader") / "solution"
    folder.mkdir()
    for file in MODULES:
        shutil.copy(os.path.join(REPO_ROOT, file), folder / file)
    return str(folder)


# ------------------------------------------------------------------------------------------------
# the wire format
# ------------------------------------------------------------------------------------------------


def test_wire_round_trip_keeps_values_dtypes_and_order():
    value = {"b": torch.arange(6, dtype=torch.int64).reshape(2, 3), "a": [1, 2.5, None, True, "x"],
             "mask": torch.tensor([True, False]), "empty": torch.zeros(0, 4, dtype=torch.float64),
             "nan": float("nan"), "nested": {"t": (torch.ones(2),)}, "object": object()}
    decoded = wire.decode(wire.encode(value))
    assert list(decoded) == list(value)
    assert torch.equal(decoded["b"], value["b"]) and decoded["b"].dtype == torch.int64
    assert decoded["mask"].dtype == torch.bool and decoded["empty"].shape == (0, 4)
    assert decoded["a"] == [1, 2.5, None, True, "x"] and decoded["nan"] != decoded["nan"]
    assert isinstance(decoded["nested"]["t"], list) and torch.equal(decoded["nested"]["t"][0], torch.ones(2))
    assert wire.type_name(decoded["object"]) == "object"


def _message(header: bytes, blob: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "big") + header + blob


@pytest.mark.parametrize("message", [
    b"", b"\x00" * 3, (4096).to_bytes(8, "big") + b"{}",  # header longer than the message
    _message(b"[1", b"junk"),  # bad JSON
    _message(b"[1]", b"not safetensors"),
    _message(b'{"__tensor__":"t9"}'),  # a tensor it does not hold
    _message(b'{"__eval__":"x"}'),  # a form encode never writes
    _message(b"[" * 200_000 + b"]" * 200_000),  # nested far too deep
], ids=["empty", "short", "header-too-long", "not-json", "not-safetensors", "missing-tensor", "unknown-form", "deep"])
def test_wire_refuses_malformed_messages(message):
    with pytest.raises(wire.MalformedAnswer):
        wire.decode(message)


def test_wire_stream_stops_at_a_damaged_frame():
    good = wire.frame(wire.encode({"event": "start"}))
    stream = good + good[:-3] + good
    assert wire.decode_stream(stream) == [{"event": "start"}]
    assert wire.decode_stream(b"garbage" + good) == []


# ------------------------------------------------------------------------------------------------
# reading submissions
# ------------------------------------------------------------------------------------------------


def _zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return str(path)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_hostile_zips_cost_the_submission_not_the_batch(tmp_path):
    regular = stat.S_IFREG | 0o644
    link = stat.S_IFLNK | 0o777
    cases = {
        "traversal": [("../../evil_common.py", "x = 1", regular), ("/abs/one_stage_detector.py", "x = 1", regular)],
        "link": [("common.py", os.path.join(REPO_ROOT, "common.py"), link), ("one_stage_detector.py", "x = 1", regular)],
        "twice": [("common.py", "a = 1", regular), ("sub/common.py", "b = 1", regular), ("common.py", "c = 1", regular)],
        "bomb": [("common.py", b"\0" * (MAX_MODULE_BYTES + 10), regular)],
        "folder": [("common.py/", b"", stat.S_IFDIR | 0o755)],
    }
    for name, members in cases.items():
        submission = read_submission(_zip(tmp_path / f"{name}.zip", members))
        assert "common.py" not in submission.files, name
        assert submission.problems["common.py"], name
    assert not any(p.name == "evil_common.py" for p in tmp_path.parent.rglob("evil_common.py"))
    nested = read_submission(_zip(tmp_path / "nested.zip", [("a4/common.py", "x = 1", regular),
                                                           ("a4/one_stage_detector.py", "y = 2", regular)]))
    assert nested.files == {"common.py": "x = 1", "one_stage_detector.py": "y = 2"} and not nested.problems
    (tmp_path / "not-a-zip.zip").write_text("hello")
    with pytest.raises(grade.GraderError, match="neither a folder nor a zip"):
        read_submission(str(tmp_path / "not-a-zip.zip"))


def test_a_link_to_the_solution_in_a_folder_is_not_read(tmp_path):
    (tmp_path / "common.py").symlink_to(os.path.join(REPO_ROOT, "common.py"))
    (tmp_path / "one_stage_detector.py").write_text("x = 1\n")
    submission = read_submission(str(tmp_path))
    assert "common.py" not in submission.files and "not a regular file" in submission.problems["common.py"]


# ------------------------------------------------------------------------------------------------
# isolation: the injected references never lead back to the graded function
# ------------------------------------------------------------------------------------------------


def test_injection_holds_other_functions_only():
    graded = {entry["function"]: entry["file"] for entry in load_points(grade.POINTS_PATH)["functions"]}
    texts = {file: _read(os.path.join(REPO_ROOT, file)) for file in MODULES}
    for function, file in graded.items():
        spec = isolation.injection_for(function, graded, texts)
        injected = "\n".join(entry["source"] + "".join(source for _, source in entry["methods"])
                             for entry in spec["files"])
        lines = texts[file].split("\n")
        own = [line.strip() for region in release.find_regions(texts[file], file) if region.is_student_work
               and region.qualname and (region.qualname == function or region.qualname.startswith(function + "."))
               for line in lines[region.begin + 1:region.end] if len(line.strip()) > 25]
        assert own and not any(line in injected for line in own), function  # not one line of its own solution
        exported = {name for entry in spec["files"] for name in entry["exports"]}
        exported |= {dotted for entry in spec["files"] for dotted, _ in entry["methods"]}
        assert function not in exported
        if function not in ("FCOS.forward", "FCOS.inference"):
            assert spec["files"] == [], function  # nothing of the solution in the sandbox at all
    inference = isolation.injection_for("FCOS.inference", graded, texts)
    common = next(entry for entry in inference["files"] if entry["file"] == "common.py")
    # The given class_spec_nms is the release's (it calls nms), not the solution's NMS internals.
    assert "nms(boxes[members], scores[members], iou_threshold)" in common["source"]


# ------------------------------------------------------------------------------------------------
# issue 21.1: the release never deletes the solution; it is swapped in whole
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def solution_copy(tmp_path):
    """A copy of the solution checkout (its release inputs), so that a failing test cannot harm this one."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in release.RELEASED_ROOT_FILES + ("pyproject.toml",):
        if os.path.isfile(os.path.join(REPO_ROOT, name)):
            shutil.copy(os.path.join(REPO_ROOT, name), copy / name)
    shutil.copytree(os.path.join(REPO_ROOT, "eecs598"), copy / "eecs598",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_release_refuses_an_output_folder_inside_or_around_the_solution(solution_copy, capsys):
    before = sorted(p.relative_to(solution_copy) for p in solution_copy.rglob("*"))
    for out in (solution_copy / "eecs598", solution_copy, solution_copy / "eecs598" / "new", solution_copy.parent):
        code = release.main(["--out", str(out), "--force", "--solution", str(solution_copy)])
        assert code == 2, out
        assert "solution" in capsys.readouterr().err
    assert sorted(p.relative_to(solution_copy) for p in solution_copy.rglob("*")) == before


def test_a_failing_release_leaves_the_previous_one_in_place(solution_copy, tmp_path):
    out = tmp_path / "release"
    release.build_release(str(out), solution_dir=str(solution_copy))
    readme = (out / "README.md").read_text()
    broken = solution_copy / "common.py"
    broken.write_text(broken.read_text().replace("### END SOLUTION", "### END SOLUTON", 1))
    with pytest.raises(release.ReleaseError):
        release.build_release(str(out), solution_dir=str(solution_copy), force=True)
    assert (out / "README.md").read_text() == readme and (out / "common.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release", "repo"]  # no partial folder left


# ------------------------------------------------------------------------------------------------
# issue 21.6: the kit's own failures are errors of the command, never a student's 0
# ------------------------------------------------------------------------------------------------


def _points_with(tmp_path, name, **changes):
    points = load_points(grade.POINTS_PATH)
    points["functions"][0].update(changes)
    path = tmp_path / name
    path.write_text(json.dumps(points))
    return str(path)


@pytest.mark.parametrize("arguments, message", [
    (["--time-scale", "0"], "--time-scale must be a finite number > 0"),
    (["--time-scale", "-1"], "--time-scale must be a finite number > 0"),
    (["--time-scale", "nan"], "--time-scale must be a finite number > 0"),
    (["--threads", "0"], "--threads must be a whole number >= 1"),
    (["--workers", "0"], "--workers must be a whole number >= 1"),
    (["--points", "NEGATIVE"], "points must be a finite number >= 0"),
    (["--points", "WORDS"], "time_limit_s must be a finite number of seconds > 0"),
    (["--solution", "EMPTY"], "holds no common.py"),
    (["--solution", "RELEASE"], "is a student release, not the solution"),
], ids=["time-scale-0", "time-scale-negative", "time-scale-nan", "threads-0", "workers-0", "negative-points",
        "time-limit-not-a-number", "solution-empty", "solution-is-a-release"])
def test_grader_failures_are_errors_not_zeros(arguments, message, tmp_path, solution_dir, release_dir, capsys):
    replacements = {"NEGATIVE": _points_with(tmp_path, "negative.json", points=-5),
                    "WORDS": _points_with(tmp_path, "words.json", time_limit_s="ten"),
                    "EMPTY": str(tmp_path), "RELEASE": release_dir}
    arguments = [replacements.get(a, a) for a in arguments]
    code = grade.main([solution_dir, "--only", "fcos_make_centerness_targets"] + SANDBOX_FLAGS + arguments)
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err, captured.err + captured.out
    assert "Submission:" not in captured.out  # refused before anything was graded


def test_submit_finds_every_kind_of_stub_left_in(release_dir):
    text = _read(os.path.join(release_dir, "common.py"))
    stub = 'raise NotImplementedError("nms is not implemented yet: write it in common.py")'
    assert text.count(stub) == 1
    for replacement in ("pass", "...", "# nothing yet", stub):
        found = submit.find_unimplemented(text.replace(stub, replacement), "common.py")
        assert any(entry.endswith(": nms") for entry in found), replacement
    implemented = text.replace(stub, "return boxes.new_zeros(0, dtype=torch.long)")
    assert not any(entry.endswith(": nms") for entry in submit.find_unimplemented(implemented, "common.py"))
    # The formats are defined once, where the student's side can read them without the staff wing.
    assert stubs.raise_statement("nms", "common.py") == stub
    assert "eecs598.staff" not in _read(os.path.join(REPO_ROOT, "eecs598", "tools", "submit.py"))


def test_submit_check_only_refuses_a_banner_with_pass(release_dir, tmp_path, capsys):
    """A finished folder but for nms, whose banner holds `pass` instead of the release's raise."""
    folder = tmp_path / "student"
    folder.mkdir()
    shutil.copy(os.path.join(REPO_ROOT, "one_stage_detector.py"), folder)
    shutil.copy(os.path.join(release_dir, "one_stage_detector.ipynb"), folder)
    text = _read(os.path.join(REPO_ROOT, "common.py"))
    region = next(r for r in release.find_regions(text, "common.py") if r.qualname == "nms")
    lines = text.split("\n")
    banner = stubs.banner(region.indent, stubs.todo_line("nms"), stubs.REPLACE_RAISE, "pass")
    (folder / "common.py").write_text("\n".join(lines[:region.begin] + banner + lines[region.end + 1:]))
    code = submit.main(["--dir", str(folder), "--check-only"])
    err = capsys.readouterr().err
    assert code == 1 and "not implemented yet: common.py:" in err and err.strip().endswith(": nms"), err


# ------------------------------------------------------------------------------------------------
# issue 21 (obscure): no child traceback on the grader's console, no temporary folder left behind
# ------------------------------------------------------------------------------------------------


def _patched_solution(folder, solution_dir, file, old, new):
    """A submission folder: the solution's two modules, with ``old`` replaced by ``new`` once in ``file``."""
    folder.mkdir()
    for module in MODULES:
        shutil.copy(os.path.join(solution_dir, module), folder / module)
    text = _read(folder / file)
    assert old in text, f"{old!r} is not in the solution's {file}"
    (folder / file).write_text(text.replace(old, new, 1))
    return folder


@pytest.fixture(scope="module")
def crashing_run(tmp_path_factory, solution_dir):
    """The grade command on a submission whose nms prints a traceback and exits, with a fresh TMPDIR."""
    scratch = tmp_path_factory.mktemp("crash")
    body = '    ### BEGIN SOLUTION\n    _check_nms_inputs("nms", boxes, scores, iou_threshold)'
    crash = ('    import sys as _s\n    _s.stderr.write("Traceback (most recent call last):\\n  SECRET-CHILD-OUTPUT\\n")\n'
             '    _s.stderr.flush()\n    os._exit(3)\n')
    submission = _patched_solution(scratch / "submission", solution_dir, "common.py", body, crash + body)
    temporary = scratch / "tmp"
    temporary.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "eecs598.grade", str(submission), "--only", "nms", "--workers", "1"] + SANDBOX_FLAGS,
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env=_env(TMPDIR=str(temporary)))
    return completed, temporary


def test_a_crashing_child_prints_nothing_on_the_graders_console(crashing_run):
    completed, _ = crashing_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "0 / 15" in completed.stdout and "ended early (exit status 3)" in completed.stdout
    output = completed.stdout + completed.stderr
    assert "Traceback" not in output and "SECRET-CHILD-OUTPUT" not in output


def test_grading_leaves_no_temporary_folder(crashing_run):
    _, temporary = crashing_run
    assert sorted(os.listdir(temporary)) == []


# ------------------------------------------------------------------------------------------------
# Gradescope
# ------------------------------------------------------------------------------------------------


def test_gradescope_bundle_runs_against_a_fake_autograder_tree(tmp_path, solution_dir):
    bundle = tmp_path / "autograder.zip"
    assert grade.main(["--gradescope-bundle", str(bundle), "--hidden-visibility", "after_due_date"]) == 0
    root = tmp_path / "autograder"
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        assert {"setup.sh", "run_autograder", "requirements-grader.txt", "common.py",
                "eecs598/staff/points.json", "eecs598/staff/grade.py"} <= set(names)
        assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
        archive.extractall(root / "source")
    assert subprocess.run(["bash", "-n", str(root / "source" / "setup.sh")]).returncode == 0
    requirements = (root / "source" / "requirements-grader.txt").read_text()
    assert "torch" in requirements and "safetensors" in requirements and "pytest" not in requirements
    (root / "submission").mkdir()
    with zipfile.ZipFile(root / "submission" / "jdoe_12345678_A4.zip", "w") as archive:  # the upload, unopened
        for file in MODULES:
            archive.write(os.path.join(solution_dir, file), file)
    completed = subprocess.run(
        ["bash", str(root / "source" / "run_autograder"), "--only", "nms,fcos_make_centerness_targets"] + SANDBOX_FLAGS,
        capture_output=True, text=True, timeout=600,
        env=_env(AUTOGRADER_ROOT=str(root), FCOS_GRADER_PYTHON=sys.executable))
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 20 and results["stdout_visibility"] == "hidden"
    scored = [test for test in results["tests"] if test["max_score"] > 0]
    assert [test["name"] for test in scored] == ["nms (common.py)", "fcos_make_centerness_targets (one_stage_detector.py)"]
    assert all(set(test) >= {"name", "number", "score", "max_score", "status", "output", "visibility"}
               for test in results["tests"])
    hidden = [test for test in results["tests"] if test["max_score"] == 0]
    assert hidden and all(test["visibility"] == "after_due_date" for test in hidden)
    assert all("hidden checks passed" in test["output"] for test in scored)


# ------------------------------------------------------------------------------------------------
# the sandbox's own failures and its fallback
# ------------------------------------------------------------------------------------------------


@needs_namespaces
def test_a_sandbox_that_cannot_be_set_up_reports_why(tmp_path):
    """The supervisor (in a forked child here, as in the grader) says what failed before any student code."""
    from eecs598.staff import supervisor
    from eecs598.staff.sandbox import View

    job = {"sandbox": dict(dataclasses.asdict(SandboxConfig(mode="namespaces")), root=os.geteuid() == 0,
                           uid=65534, gid=65534),
           "view": dataclasses.asdict(View()), "root_dir": str(tmp_path / "missing" / "root"),
           "scratch_dir": str(tmp_path / "scratch"), "time_limit_s": 5.0, "gpu": False}
    payload = {"function": "nms", "checks": [], "threads": 1, "inputs": wire.encode({}), "injection": {"files": []},
               "fallback_common": None, "exception_chars": 200}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the supervisor's namespaces must not be this test process's
        try:
            outcome = supervisor.contain(job, {}, payload)
            os.write(write, json.dumps(outcome.get("setup_error")).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        error = json.loads(f.read() or "null")
    os.waitpid(pid, 0)
    assert error and "missing" in error, error


def test_process_mode_grades_trusted_code(solution_dir):
    results = grade.grade_submissions([solution_dir], only=["fcos_make_centerness_targets"], workers=1,
                                      sandbox_config=SandboxConfig(mode="process"))
    assert results[0].points == 5, grade.format_table(results[0])


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc to find the forkserver")
def test_a_forkserver_lost_mid_job_reruns_the_job_instead_of_failing_the_batch(tmp_path, solution_dir):
    """The forkserver and the supervisor it started are killed while the student's function runs: the job
    runs again from a new forkserver and earns its points (before: GraderError, exit code 255)."""
    import multiprocessing.forkserver
    import signal
    import threading

    signature = "def fcos_make_centerness_targets(deltas: torch.Tensor) -> torch.Tensor:\n"
    submission = _patched_solution(tmp_path / "submission", solution_dir, "one_stage_detector.py", signature,
                                   signature + "    __import__('time').sleep(3.0)\n")
    killed = []

    def kill_forkserver_mid_job():
        server = multiprocessing.forkserver._forkserver
        for _ in range(1200):  # up to 120 s for the first supervisor to be running
            pid = server._forkserver_pid
            if pid is not None and _children(pid):
                break
            threading.Event().wait(0.1)
        else:
            return
        threading.Event().wait(1.5)  # the sandbox is set up and the student's function sleeps
        supervisors = _children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in supervisors:
            os.kill(child, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_forkserver_mid_job, daemon=True)
    killer.start()
    results = grade.grade_submissions([str(submission)], only=["fcos_make_centerness_targets"], workers=1,
                                      time_scale=10.0)
    killer.join(timeout=5)
    assert killed, "the forkserver was never seen with a running supervisor"
    assert results[0].points == 5, grade.format_table(results[0])
