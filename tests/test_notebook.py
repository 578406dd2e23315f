"""Tests for one_stage_detector.ipynb: it is committed clean, it only imports the modules' logic, and it runs.

``test_notebook_runs_headless_in_smoke_mode`` is the suite's slow test (about 20-60 s on 2 CPU cores): it
executes every cell with nbclient in smoke mode (``FCOS_SMOKE=1``: offline Shapes data, tiny iteration counts,
128 px images, ``pretrained=False``), so every published check in the notebook (they are ``assert``-ed there)
runs on CI. How the run is isolated:

- the kernel is *this* interpreter: a temporary ``python3`` kernelspec whose argv starts with
  ``sys.executable`` is put first on ``JUPYTER_PATH`` (an installed ``python3`` spec may name a bare
  ``python`` that resolves to another environment);
- the kernel's working directory is the repository root (the notebook finds the modules there), and every file
  it writes (Shapes data, weights, training checkpoint, mAP files) goes to ``tmp_path`` through
  ``FCOS_DATA_DIR`` and ``FCOS_OUTPUT_DIR``, so a test run leaves nothing in the checkout;
- ``MPLBACKEND=Agg`` (headless) and ``OMP_NUM_THREADS=1``: with two OpenMP threads on a 2-core machine that
  other processes also use, spin-waiting threads made training steps 30-100x slower in our measurements.

A failing cell fails the test with nbclient's ``CellExecutionError``, whose message shows the cell's source
and its traceback; the executed notebook is also written to ``tmp_path/executed.ipynb`` for inspection.
"""
import importlib
import json
import os
import pkgutil
import re
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_PATH = os.path.join(REPO_ROOT, "one_stage_detector.ipynb")
CELL_TIMEOUT_S = 180  # per cell; the slowest smoke cell takes a few seconds
TOTAL_BUDGET_S = 300  # the whole smoke run must stay well under this on a 2-core CI machine


def _read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_PATH, as_version=4)


def _code_sources(nb: nbformat.NotebookNode) -> str:
    return "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")


def _stdout_of(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream" and o.name == "stdout")


def test_notebook_is_valid_and_committed_without_outputs():
    nb = _read_notebook()
    nbformat.validate(nb)
    stale = [index for index, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not stale, (f"code cells {stale} of {NOTEBOOK_PATH} hold outputs or execution counts; clear them "
                       "(e.g. `jupyter nbconvert --clear-output --inplace`) before committing")
    assert nb.metadata.kernelspec.name == "python3"


def test_notebook_does_not_reimplement_module_functions():
    """The notebook imports and explains the modules' functions; a `def nms(...)` in a cell would silently
    shadow the tested implementation."""
    import a4_helper
    import common
    import one_stage_detector
    import eecs598

    module_names = set(common.__all__) | set(one_stage_detector.__all__)
    for info in pkgutil.walk_packages(eecs598.__path__, "eecs598."):
        module_names |= set(getattr(importlib.import_module(info.name), "__all__", ()))
    module_names |= {name for name, value in vars(a4_helper).items()
                     if callable(value) and getattr(value, "__module__", None) == "a4_helper"}
    defined_in_cells = set(re.findall(r"^\s*(?:def|class)\s+(\w+)", _code_sources(_read_notebook()), re.MULTILINE))
    assert not defined_in_cells & module_names, (
        f"the notebook re-defines {sorted(defined_in_cells & module_names)}; import them from the modules instead")


@pytest.mark.slow
def test_notebook_runs_headless_in_smoke_mode(tmp_path, monkeypatch):
    # A "python3" kernelspec that runs this very interpreter, found before any installed one.
    jupyter_dir = tmp_path / "jupyter"
    kernel_dir = jupyter_dir / "kernels" / "python3"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test interpreter)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_dir), os.environ.get("JUPYTER_PATH")])))

    output_dir, data_dir = tmp_path / "outputs", tmp_path / "data"
    # The kernel inherits this process's environment.
    for name, value in {"FCOS_SMOKE": "1", "FCOS_OUTPUT_DIR": str(output_dir), "FCOS_DATA_DIR": str(data_dir),
                        "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)

    nb = _read_notebook()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": REPO_ROOT}})
    start = time.monotonic()
    try:
        client.execute()  # raises CellExecutionError (cell source + traceback) on the first failing cell
    finally:
        nbformat.write(nb, str(tmp_path / "executed.ipynb"))
    elapsed = time.monotonic() - start
    print(f"one_stage_detector.ipynb executed in smoke mode in {elapsed:.1f}s")

    setup_output = next(_stdout_of(cell) for cell in nb.cells if "Smoke mode:" in _stdout_of(cell))
    assert f"Python: {sys.executable}\n" in setup_output, "the kernel did not run the test's interpreter"
    assert "Smoke mode: True" in setup_output
    # The run wrote its files where it was told to.
    assert (output_dir / "fcos_smoke_detector.pt").is_file()
    assert (output_dir / "fcos_smoke_checkpoint.pt").is_file()
    assert (output_dir / "mAP" / "output" / "output.txt").is_file()
    assert (output_dir / "predictions" / "detections.jsonl").is_file()  # the last section: predict()
    assert (data_dir / "shapes-smoke" / "shapes_train.json").is_file()
    assert elapsed < TOTAL_BUDGET_S, (f"the smoke run took {elapsed:.0f}s, more than {TOTAL_BUDGET_S}s: keep the "
                                      "smoke-mode settings of the notebook small")
