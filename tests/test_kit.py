"""Tests of the course kit: eecs598.staff.release, eecs598.staff.grade (with eecs598.staff), eecs598.tools.submit.

The round trip the course relies on, end to end:

- the release replaces exactly the marked regions: putting the solution's regions back gives the
  solution files byte for byte; it imports, its stubs name themselves, its notebook stops at the first
  unimplemented function with that name, and its student tests skip (and pass once the solution is in);
- grading: the solution (submitted as the zip ``eecs598.tools.submit`` writes) gets full marks, the untouched
  release zero for every graded function, and each planted bug of ``eecs598/staff/bugs`` loses exactly
  the points of the function it breaks and no others; a hanging function hits its time limit, a network
  call fails, a module that does not import costs only its own file's functions.

All grading runs share one forkserver (torch is imported once); the submissions are graded in a single
``grade_submissions`` call with two workers, in the sandbox (``tests/grader_support.py`` picks process
mode on a machine without namespaces). The hostile submissions are ``tests/test_grader_hostile.py``.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

from eecs598.staff import grade, release
from eecs598.tools import submit
from eecs598.staff import bugs as kit_bugs
from eecs598.staff import checks as kit_checks
from eecs598.staff import selftest
from eecs598.staff.trusted import load_points

from grader_support import SANDBOX

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("common.py", "one_stage_detector.py")


def _read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")


# ------------------------------------------------------------------------------------------------
# fixtures: one release, one grading run
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kit") / "release"
    release.build_release(str(out))
    return str(out)


@pytest.fixture(scope="module")
def solved_dir(release_dir, tmp_path_factory):
    """The release with the solution's regions put back: what a perfect student hands in."""
    solved = str(tmp_path_factory.mktemp("kit") / "solved")
    shutil.copytree(release_dir, solved)
    for file in MODULES:
        restored = release.reinsert_solutions(_read(os.path.join(release_dir, file)), _read(os.path.join(REPO_ROOT, file)), file)
        with open(os.path.join(solved, file), "w", encoding="utf-8", newline="") as f:
            f.write(restored)
    return solved


@pytest.fixture(scope="module")
def graded(release_dir, solved_dir, tmp_path_factory):
    """Grade the solution's submission zip, the untouched release and every planted bug, in one run."""
    scratch = tmp_path_factory.mktemp("grading")
    solution_zip = submit.make_a4_submission(solved_dir, "jdoe", "12345678", out_dir=str(scratch))
    submissions = {"solution": solution_zip, "release": release_dir}
    for bug in kit_bugs.load_bugs():
        submissions[bug.name] = kit_bugs.write_buggy_submission(bug, str(scratch / bug.name))
    results = grade.grade_submissions(list(submissions.values()), workers=2, sandbox_config=SANDBOX)
    return dict(zip(submissions, results))


# ------------------------------------------------------------------------------------------------
# markers and stubs
# ------------------------------------------------------------------------------------------------

SAMPLE = textwrap.dedent('''\
    import math


    ### BEGIN SOLUTION
    def _helper(x):
        return 2 * x
    ### END SOLUTION


    class Net:
        def __init__(self, size):
            self.size = size
            ### BEGIN SOLUTION
            self.table = [_helper(i) for i in range(size)]
            ### END SOLUTION

        def forward(self, x):
            """Doubles."""
            ### BEGIN SOLUTION
            y = _helper(x)
            ### END SOLUTION
            if x < 0:
                return None
            ### BEGIN SOLUTION
            return y + math.floor(0.5)
            ### END SOLUTION


    def given(values):
        ### BEGIN SOLUTION
        return sorted(values, key=_helper)
        ### RELEASE
        # # Plain sort in the release.
        # return sorted(values)
        #
        ### END SOLUTION
''')


def test_regions_stub_kinds_and_release_text():
    regions = release.find_regions(SAMPLE, "sample.py")
    assert [(r.qualname, r.stub, r.part, r.parts) for r in regions] == [
        (None, "pass", 1, 1), ("Net.__init__", "pass", 1, 1), ("Net.forward", "raise", 1, 2),
        ("Net.forward", "raise", 2, 2), ("given", "given", 1, 1)]
    released = release.release_source(SAMPLE, "sample.py")
    assert "_helper" not in released and "### " not in released
    assert 'Replace "pass" statement with your code' in released
    assert "    # Plain sort in the release.\n    return sorted(values)\n\n" in released

    namespace = {}
    exec(compile(released, "sample.py", "exec"), namespace)
    net = namespace["Net"](3)  # __init__ keeps working: its region became `pass`
    assert net.size == 3 and not hasattr(net, "table")
    with pytest.raises(NotImplementedError, match=r"Net\.forward \(part 1 of 2\) is not implemented yet: write it in sample\.py"):
        net.forward(1)
    assert namespace["given"]([3, 1, 2]) == [1, 2, 3]
    assert release.reinsert_solutions(released, SAMPLE, "sample.py") == SAMPLE


@pytest.mark.parametrize("text, message", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", r"x\.py:2: ### BEGIN SOLUTION without a matching"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", r"x\.py:3: ### END SOLUTION without an open"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", r"x\.py:2: .*cannot nest"),
    ("def f():\n    # ### BEGIN SOLUTION\n    return 1\n", r"x\.py:2: malformed marker"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n  ### END SOLUTION\n", r"x\.py:4: .*indented differently"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### RELEASE\n    return 2\n    ### END SOLUTION\n",
     r"x\.py:5: every line after ### RELEASE must be release code commented out"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n    return 1\n", r"x\.py:2: empty solution region"),
])
def test_bad_markers_are_reported_with_file_and_line(text, message):
    with pytest.raises(release.ReleaseError, match=message):
        release.release_source(text, "x.py")


def test_marked_functions_are_the_students_and_all_graded():
    assert release.student_functions(REPO_ROOT) == [
        ("common.py", "DetectorBackboneWithFPN.__init__"), ("common.py", "DetectorBackboneWithFPN.forward"),
        ("common.py", "get_fpn_location_coords"), ("common.py", "nms"),
        ("one_stage_detector.py", "FCOSPredictionNetwork.__init__"),
        ("one_stage_detector.py", "FCOSPredictionNetwork.forward"),
        ("one_stage_detector.py", "fcos_get_deltas_from_locations"),
        ("one_stage_detector.py", "fcos_apply_deltas_to_locations"),
        ("one_stage_detector.py", "fcos_make_centerness_targets"),
        ("one_stage_detector.py", "FCOS.forward"), ("one_stage_detector.py", "FCOS.inference"),
    ]
    graded_functions = {(entry["file"], entry["function"]) for entry in load_points(grade.POINTS_PATH)["functions"]}
    for file, qualname in release.student_functions(REPO_ROOT):
        assert any(file == graded_file and (qualname == name or qualname.startswith(name + "."))
                   for graded_file, name in graded_functions), f"{qualname} is student work but never graded"
    points = load_points(grade.POINTS_PATH)
    assert sum(entry["points"] for entry in points["functions"]) == 100
    for entry in points["functions"]:
        assert any(c.published for c in kit_checks.CHECKS[entry["function"]]), entry["function"]
        assert any(not c.published for c in kit_checks.CHECKS[entry["function"]]), entry["function"]


# ------------------------------------------------------------------------------------------------
# the release
# ------------------------------------------------------------------------------------------------


def test_release_ships_student_files_only(release_dir):
    shipped = sorted(os.path.relpath(os.path.join(root, name), release_dir)
                     for root, _, names in os.walk(release_dir) for name in names)
    assert {"common.py", "one_stage_detector.py", "one_stage_detector.ipynb", "a4_helper.py", "README.md",
            "requirements.txt", "eecs598/submit.py", "eecs598/mean_ap.py", "tests/test_common.py",
            "tests/test_one_stage_detector.py", "tests/conftest.py"} <= set(shipped)
    leaked = [path for path in shipped if path.startswith("eecs598/staff") or path in ("eecs598/grade.py", "eecs598/release.py")]
    assert not leaked and not any(path.startswith(("benchmarks", "train_fcos")) for path in shipped)
    assert "eecs598/tools/model_report.py" in shipped and "eecs598/evaluation/mean_ap.py" in shipped
    for path in shipped:
        text = _read(os.path.join(release_dir, path))
        assert "BEGIN SOLUTION" not in text and "eecs598.staff" not in text, path
    readme = _read(os.path.join(release_dir, "README.md"))
    assert "| `one_stage_detector.py` | `FCOS.inference` |" in readme and "python -m eecs598.submit" in readme
    notebook = json.loads(_read(os.path.join(release_dir, "one_stage_detector.ipynb")))
    assert all(cell["outputs"] == [] and cell["execution_count"] is None
               for cell in notebook["cells"] if cell["cell_type"] == "code")


def test_every_module_the_release_ships_imports_there(release_dir):
    """Each shipped module imports in the release alone (the solution's checkout is not on the path): a module
    that reaches for something the release leaves out (train_fcos, the staff wing) fails here."""
    modules = sorted(os.path.relpath(os.path.join(root, name), release_dir)[:-3].replace(os.sep, ".")
                     for root, _, names in os.walk(os.path.join(release_dir, "eecs598")) for name in names
                     if name.endswith(".py"))
    modules = [m[:-len(".__init__")] if m.endswith(".__init__") else m for m in modules] + ["common",
                                                                                           "one_stage_detector",
                                                                                           "a4_helper"]
    script = textwrap.dedent('''
        import importlib, os, sys
        release = os.path.realpath(os.getcwd())
        sys.path[:] = [release] + [p for p in sys.path if p and os.path.realpath(p) != REPO]
        # The solution's editable install would find its own modules (train_fcos...) from anywhere: drop it.
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                            and "__editable__" not in type(f).__module__]
        failed = []
        for name in NAMES:
            try:
                importlib.import_module(name)
            except Exception as error:
                failed.append(f"{name}: {type(error).__name__}: {error}")
        prefix = os.path.realpath(sys.prefix) + os.sep  # the virtual environment may live in the checkout
        outside = sorted(n for n, m in list(sys.modules.items()) if getattr(m, "__file__", None)
                         and os.path.realpath(m.__file__).startswith(REPO + os.sep)
                         and not os.path.realpath(m.__file__).startswith(prefix))
        failed += [f"{n}: imported from the solution, not the release" for n in outside]
        print("\\n".join(failed) or "OK")
    ''').replace("NAMES", repr(modules)).replace("REPO", repr(os.path.realpath(REPO_ROOT)))
    env = dict(_subprocess_env(), PYTHONPATH="")
    completed = subprocess.run([sys.executable, "-c", script], cwd=release_dir, capture_output=True, text=True,
                               env=env, timeout=300)
    assert completed.returncode == 0 and completed.stdout.strip() == "OK", completed.stdout + completed.stderr[-3000:]
    assert len(modules) > 30


def test_release_round_trip_gives_the_solution_back_exactly(release_dir):
    assert selftest.round_trip_problems(release_dir) == []
    for file in MODULES:  # and the release really differs: every region was replaced
        assert _read(os.path.join(release_dir, file)) != _read(os.path.join(REPO_ROOT, file))


def test_notebook_regions_and_outputs():
    def cell(source, outputs=()):
        return {"cell_type": "code", "execution_count": 3, "id": "c", "metadata": {"execution": {"x": 1}},
                "outputs": list(outputs), "source": source}

    notebook = {"cells": [cell(["%pip install -q x\n", "def f():\n", "    ### BEGIN SOLUTION\n", "    return 1\n",
                                "    ### END SOLUTION\n"], [{"output_type": "stream", "name": "stdout", "text": "1"}]),
                          {"cell_type": "markdown", "id": "m", "metadata": {}, "source": "text"}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    solution = json.dumps(notebook, indent=1) + "\n"
    released = json.loads(release.release_notebook(solution, "nb.ipynb"))
    code = released["cells"][0]
    assert code["outputs"] == [] and code["execution_count"] is None and "execution" not in code["metadata"]
    source = "".join(code["source"])
    assert "return 1" not in source and "raise NotImplementedError" in source and source.startswith("%pip")
    restored = json.loads(release.reinsert_notebook(json.dumps(released), solution, "nb.ipynb"))
    assert restored["cells"][0]["source"] == notebook["cells"][0]["source"]
    notebook["cells"][1]["source"] = "### BEGIN SOLUTION\nanswer\n### END SOLUTION"
    with pytest.raises(release.ReleaseError, match="only allowed in code cells"):
        release.release_notebook(json.dumps(notebook), "nb.ipynb")


def test_release_imports_and_every_stub_names_its_function(release_dir):
    script = textwrap.dedent('''
        import torch, a4_helper, eecs598, common, one_stage_detector as osd
        backbone = common.DetectorBackboneWithFPN(16, pretrained=False)   # __init__ stubs are `pass`
        head = osd.FCOSPredictionNetwork(5, 16, [16])
        calls = {
            "DetectorBackboneWithFPN.forward": lambda: backbone(torch.zeros(1, 3, 64, 64)),
            "get_fpn_location_coords": lambda: common.get_fpn_location_coords({"p3": (1, 1, 2, 2)}, {"p3": 8}),
            "nms": lambda: common.nms(torch.zeros(1, 4), torch.zeros(1)),
            "FCOSPredictionNetwork.forward": lambda: head({"p3": torch.zeros(1, 16, 2, 2)}),
            "fcos_get_deltas_from_locations": lambda: osd.fcos_get_deltas_from_locations(torch.zeros(1, 2), torch.zeros(1, 4), 8),
            "fcos_apply_deltas_to_locations": lambda: osd.fcos_apply_deltas_to_locations(torch.zeros(1, 4), torch.zeros(1, 2), 8),
            "fcos_make_centerness_targets": lambda: osd.fcos_make_centerness_targets(torch.ones(1, 4)),
            "FCOS.forward (part 1 of 2)": lambda: osd.FCOS(5, 16, [16], pretrained=False)(torch.zeros(2, 3, 64, 64), torch.zeros(2, 1, 5)),
            "FCOS.inference": lambda: osd.FCOS(5, 16, [16], pretrained=False).inference(torch.zeros(1, 3, 64, 64), {}, {}, {}, {}),
        }
        for name, call in calls.items():
            try:
                call()
            except NotImplementedError as error:
                assert str(error).startswith(name + " is not implemented yet"), (name, str(error))
            else:
                raise AssertionError(name + " did not raise NotImplementedError")
        assert common.class_spec_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0)).shape == (0,)
        print("OK")
    ''')
    completed = subprocess.run([sys.executable, "-c", script], cwd=release_dir, capture_output=True, text=True,
                               env=_subprocess_env(), timeout=300)
    assert completed.returncode == 0 and completed.stdout.strip().endswith("OK"), completed.stderr[-3000:]


def test_student_tests_skip_in_the_release_and_pass_with_the_solution(release_dir, solved_dir):
    for folder, expected in ((release_dir, "10 skipped"), (solved_dir, "10 passed")):
        completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                                   cwd=folder, capture_output=True, text=True, env=_subprocess_env(), timeout=600)
        assert completed.returncode == 0 and expected in completed.stdout, completed.stdout[-3000:]


def test_release_notebook_stops_at_the_first_unimplemented_function(release_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernel_dir = tmp_path / "jupyter" / "kernels" / "python3"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test interpreter)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name, value in {"FCOS_SMOKE": "1", "FCOS_OUTPUT_DIR": str(tmp_path / "out"),
                        "FCOS_DATA_DIR": str(tmp_path / "data"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(os.path.join(release_dir, "one_stage_detector.ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": release_dir}})
    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        client.execute()
    assert "NotImplementedError" in str(failure.value)
    assert "DetectorBackboneWithFPN.forward is not implemented yet: write it in common.py" in str(failure.value)
    # Every cell before the failing one ran: the failing cell is the first one calling the backbone.
    executed = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and c.get("execution_count")]
    failed = executed[-1]
    assert "backbone(dummy_images)" in notebook.cells[failed].source
    assert all(not any(o.get("output_type") == "error" for o in notebook.cells[i].outputs) for i in executed[:-1])


# ------------------------------------------------------------------------------------------------
# grading
# ------------------------------------------------------------------------------------------------


def test_solution_submission_gets_full_marks(graded):
    result = graded["solution"]
    assert result.points == result.max_points == 100, grade.format_table(result)
    for function in result.functions:
        assert function.passed == function.total > 0 and function.status == "graded"
    skipped = [check["name"] for f in result.functions for check in f.checks if check["status"] == "skipped"]
    assert all("cuda" in name for name in skipped)  # only the GPU checks, on a machine without one


def test_untouched_release_gets_zero_for_every_function(graded):
    result = graded["release"]
    assert result.points == 0, grade.format_table(result)
    for function in result.functions:
        assert "NotImplementedError" in function.message, function.message


@pytest.mark.parametrize("bug", kit_bugs.load_bugs(), ids=lambda bug: bug.name)
def test_planted_bug_loses_exactly_the_points_of_its_function(graded, bug):
    result = graded[bug.name]
    lost = {f.function: f.max_points - f.points for f in result.functions if f.points < f.max_points}
    broken_points = next(f.max_points for f in result.functions if f.function == bug.breaks)
    assert lost == {bug.breaks: broken_points}, grade.format_table(result)


def test_report_table_and_gradescope_json(graded, tmp_path):
    result = graded["head_row_major"]
    table = grade.format_table(result)
    assert "FCOSPredictionNetwork" in table and "0 / 10" in table and "90 / 100" in table
    assert "head_rows_follow_locations" in table  # the first failure is named
    payload = grade.to_json(result)
    assert payload["score"] == 90 and payload["max_score"] == 100 and len(payload["tests"]) == 9
    head = next(test for test in payload["tests"] if test["name"].startswith("FCOSPredictionNetwork"))
    assert head["score"] == 0 and "x-major" in head["output"]
    assert {check["status"] for check in head["extra_data"]["checks"]} >= {"passed", "failed"}
    json.dumps(payload)  # serialisable for the LMS


def _write_submission(folder, replacements):
    """The solution's modules with ``{file: (old, new)}`` text replacements."""
    os.makedirs(folder, exist_ok=True)
    for file in MODULES:
        text = _read(os.path.join(REPO_ROOT, file))
        if file in replacements:
            old, new = replacements[file]
            assert text.count(old) == 1
            text = text.replace(old, new)
        with open(os.path.join(folder, file), "w", encoding="utf-8") as f:
            f.write(text)
    return folder


def test_time_limit_network_block_and_import_errors_are_contained(tmp_path):
    nms_body = '    ### BEGIN SOLUTION\n    _check_nms_inputs("nms", boxes, scores, iou_threshold)'
    locations_body = "    ### BEGIN SOLUTION\n    location_coords = {}"
    hanging = _write_submission(tmp_path / "hanging", {"common.py": (nms_body, "    while True:\n        pass\n" + nms_body)})
    networked = _write_submission(tmp_path / "networked", {"common.py": (
        locations_body, '    import urllib.request\n    urllib.request.urlopen("http://example.com", timeout=5)\n' + locations_body)})
    broken_common = _write_submission(tmp_path / "broken", {"common.py": ("def hello_common():", "def hello_common(:")})
    points = load_points(grade.POINTS_PATH)
    for entry in points["functions"]:
        if entry["function"] == "nms":
            entry["time_limit_s"] = 5
    points_path = tmp_path / "points.json"
    points_path.write_text(json.dumps(points))
    start = time.monotonic()
    results = grade.grade_submissions(
        [hanging, networked, broken_common], only=["nms", "get_fpn_location_coords", "fcos_make_centerness_targets"],
        workers=2, points_path=str(points_path), sandbox_config=SANDBOX)
    hanging_result, networked_result, broken_result = (result.by_function() for result in results)

    assert hanging_result["nms"].status == "timeout" and hanging_result["nms"].points == 0
    assert "time limit of 5 s exceeded" in hanging_result["nms"].message
    assert hanging_result["nms"].seconds < 15  # killed at the limit, not when the batch ends
    assert hanging_result["get_fpn_location_coords"].points == 10  # the other functions are unaffected
    assert time.monotonic() - start < 240

    # No network in the sandbox: the call fails at once (a URLError, reported as its built-in base OSError),
    # naming the student's line.
    assert networked_result["get_fpn_location_coords"].points == 0
    assert "OSError: <urlopen error" in networked_result["get_fpn_location_coords"].message
    assert "common.py:" in networked_result["get_fpn_location_coords"].message
    assert networked_result["nms"].points == 15

    # common.py does not import: its functions get 0, one_stage_detector.py is graded against the release's common.
    assert broken_result["nms"].points == 0 and "SyntaxError" in broken_result["nms"].message
    assert broken_result["fcos_make_centerness_targets"].points == 5
    assert "common.py" in results[2].import_errors


def test_bug_patches_must_change_student_regions_only():
    sources = {file: _read(os.path.join(REPO_ROOT, file)) for file in MODULES}
    for bug in kit_bugs.load_bugs():
        patched = kit_bugs.apply_bug(bug, sources)
        assert patched != sources, bug.name
        assert any(entry["function"] == bug.breaks for entry in load_points(grade.POINTS_PATH)["functions"]), bug.name
    outside = kit_bugs.parse_bug("# Breaks: nms\n--- common.py\n@@\n-def hello_common():\n+def hello_common(x=1):\n", "outside")
    with pytest.raises(ValueError, match="outside the student's solution regions"):
        kit_bugs.apply_bug(outside, sources)


# ------------------------------------------------------------------------------------------------
# submitting, and the four commands
# ------------------------------------------------------------------------------------------------


def test_submit_lists_what_is_missing_and_zips_a_complete_folder(release_dir, solved_dir, graded, tmp_path):
    problems, warnings = submit.check_submission(release_dir, import_check=False)
    unimplemented = [problem.rsplit(": ", 1)[-1] for problem in problems if problem.startswith("not implemented yet")]
    assert unimplemented == ["DetectorBackboneWithFPN.__init__", "DetectorBackboneWithFPN.forward",
                             "get_fpn_location_coords", "nms", "FCOSPredictionNetwork.__init__",
                             "FCOSPredictionNetwork.forward", "fcos_get_deltas_from_locations",
                             "fcos_apply_deltas_to_locations", "fcos_make_centerness_targets", "FCOS.forward",
                             "FCOS.forward", "FCOS.inference"]
    assert any("no outputs" in warning for warning in warnings)
    with pytest.raises(submit.SubmissionError, match="cannot submit yet"):
        submit.make_a4_submission(release_dir, "jdoe", "12345678", out_dir=str(tmp_path), import_check=False)
    assert not list(tmp_path.iterdir())

    incomplete = tmp_path / "incomplete"
    shutil.copytree(solved_dir, incomplete)
    os.remove(incomplete / "one_stage_detector.ipynb")
    problems, _ = submit.check_submission(str(incomplete), import_check=False)
    assert problems == [f"one_stage_detector.ipynb is missing from {incomplete}"]

    # The fixture zipped the solved folder (after the import check) and graded that zip: full marks above.
    zip_path = graded["solution"].submission
    assert os.path.basename(zip_path) == "jdoe_12345678_A4.zip"
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["common.py", "one_stage_detector.ipynb", "one_stage_detector.py"]


@pytest.mark.parametrize("main", [release.main, grade.main, submit.main, selftest.main],
                         ids=["release", "grade", "submit", "selftest"])
def test_commands_have_help(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m eecs598." in capsys.readouterr().out


def test_grade_command_writes_json_for_a_subset(solved_dir, tmp_path, capsys):
    json_path = tmp_path / "result.json"
    assert grade.main([solved_dir, "--only", "fcos_make_centerness_targets,get_fpn_location_coords",
                       "--workers", "2", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "fcos_make_centerness_targets" in out and "15 / 15" in out
    payload = json.loads(json_path.read_text())
    assert payload["score"] == payload["max_score"] == 15 and len(payload["tests"]) == 2
