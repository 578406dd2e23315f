"""Tests of the train_fcos.py entry point: a tiny end-to-end Shapes run, eval-only, and the VOC preset."""
import json
import os
import subprocess
import sys

import pytest
import torch

import a4_helper
import eecs598.data.datasets
import eecs598.tools.train
import train_fcos

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-train", "12", "--num-val", "4", "--image-size", "64", "--max-iters", "2", "--batch-size", "4",
        "--fpn-channels", "16", "--stem-channels", "16", "--log-period", "1", "--no-progress", "--threads", "1"]


def test_tiny_shapes_run_writes_every_output(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(run_dir), *TINY]
    threads = torch.get_num_threads()
    metrics = train_fcos.main(argv)
    assert torch.get_num_threads() == threads, "main() restores the caller's thread count"
    for name in ("checkpoint.pt", "loss_curve.png", "detections.png", "ap_per_class.png", "metrics.json",
                 "mAP/output/output.txt"):
        assert (run_dir / name).is_file(), name
    assert sorted(os.listdir(run_dir / "mAP/input/ground-truth")) == [f"{i:06d}.txt" for i in range(4)]
    assert sorted(os.listdir(run_dir / "mAP/input/detection-results")) == [f"{i:06d}.txt" for i in range(4)]
    with open(run_dir / "metrics.json") as f:
        stored = json.load(f)
    assert stored["iterations"] == 2 and stored["num_val_images"] == 4
    assert 0.0 <= stored["mAP"] <= 1.0 and set(stored["ap_per_class"]) <= {"circle", "cross", "square", "star",
                                                                            "triangle"}
    assert stored["settings"]["optimizer"] == "adamw" and stored["settings"]["pretrained"] is False
    assert set(stored["seconds"]) == {"data", "train", "eval", "total"}
    assert stored["mAP"] == metrics["mAP"]

    # results.csv: a header naming the losses and the monitoring columns, one row per log period (1 here).
    with open(run_dir / "results.csv") as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    assert rows[0] == ["iteration", "loss_cls", "loss_box", "loss_ctr", "total", "lr", "seconds_per_iter",
                       "eta_seconds", "peak_memory_mib"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2]
    assert float(rows[2][4]) == pytest.approx(metrics["final_loss_avg50"]["total"] * 2 - float(rows[1][4]), rel=1e-5)

    # --eval-only rebuilds the model from the checkpoint's saved settings (here: other sizes on the command
    # line are overridden) and re-evaluates without training: the same mAP, in its own metrics file.
    again = train_fcos.main(argv + ["--eval-only", "--fpn-channels", "32"])
    assert again["iterations"] == 2 and again["seconds"]["train"] == 0.0
    assert again["mAP"] == pytest.approx(stored["mAP"], abs=1e-12)
    assert (run_dir / "metrics_eval.json").is_file()
    with open(run_dir / "metrics.json") as f:
        assert json.load(f)["mAP"] == stored["mAP"]  # the training metrics were not overwritten


def test_eval_only_without_a_checkpoint_fails_before_generating_data(tmp_path):
    argv = ["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(tmp_path / "run"),
            *TINY, "--eval-only"]
    with pytest.raises(train_fcos.UsageError, match="--eval-only: there is no checkpoint to evaluate at"):
        train_fcos.main(argv)
    assert not (tmp_path / "shapes").exists()


def test_periodic_evaluation_keeps_last_and_best(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(run_dir), *TINY,
            "--max-iters", "4", "--eval-period", "2", "--eval-images", "2"]
    train_fcos.main(argv)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert last["iteration"] == 4 and best["iteration"] in (2, 4)
    assert best["score"] >= last["score"] or best["iteration"] == 4


def test_voc_preset_is_the_assignment_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = train_fcos.parse_args(["--dataset", "voc"])
    assert (args.max_iters, args.batch_size, args.learning_rate, args.optimizer) == (9000, 16, 8e-3, "sgd")
    assert (args.fpn_channels, args.stem_channels, args.image_size, args.pretrained) == (128, [128, 128], 224, True)
    assert args.data_dir == "data" and args.device == "cuda"  # without a GPU, check_args refuses it (below)
    args = train_fcos.parse_args(["--dataset", "voc", "--lr", "0.01", "--grad-clip", "0", "--no-pretrained"])
    assert args.learning_rate == 0.01 and args.grad_clip_norm is None and args.pretrained is False


def test_help_runs():
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train_fcos.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--dataset" in out and "--download" in out and "--resume" in out


def test_voc_branch_runs_on_the_sample(voc_sample_dir, tmp_path):
    argv = ["--dataset", "voc", "--data-dir", voc_sample_dir, "--run-dir", str(tmp_path / "run"), "--device", "cpu",
            "--no-pretrained", "--image-size", "64", "--max-iters", "1", "--batch-size", "4", "--fpn-channels", "16",
            "--stem-channels", "16", "--num-workers", "0", "--max-val-images", "3", "--no-progress", "--threads", "1"]
    metrics = train_fcos.main(argv)
    assert metrics["num_train_images"] == 24 and metrics["num_val_images"] == 3
    # A random backbone with the preset's plain SGD would diverge: the FROM_SCRATCH recipe is used instead.
    assert metrics["settings"]["optimizer"] == "adamw" and metrics["settings"]["grad_clip_norm"] == a4_helper.FROM_SCRATCH["grad_clip_norm"]
    assert len(os.listdir(tmp_path / "run" / "mAP" / "input" / "ground-truth")) == 3


def test_thread_choice_falls_back_to_one_thread_on_a_busy_cpu(monkeypatch):
    import eecs598.train.runtime as runtime

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(runtime, "busy_cores", lambda: 1.0)  # another job keeps one core busy
    assert runtime.choose_cpu_threads() == 1
    monkeypatch.setattr(runtime, "busy_cores", lambda: 0.1)  # quiet machine: one thread per core
    assert runtime.choose_cpu_threads() == 2
    monkeypatch.setattr(runtime, "busy_cores", lambda: None)  # cannot tell: keep torch's default
    assert runtime.choose_cpu_threads() == 2


# ==================================================================================================
# User mistakes: one or two lines in the CLI's own words, exit status 2, no work done first (issue 10, item 10)
# ==================================================================================================

@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--max-iters", "0"), ("--score-thresh", "1.5"),
                                           ("--nms-thresh", "-0.1"), ("--cls-loss-weight", "-1"),
                                           ("--cls-loss-weight", "nan")])
def test_bad_numbers_are_refused_before_doing_any_work(tmp_path, capsys, option, value):
    data_dir, run_dir = tmp_path / "shapes", tmp_path / "run"
    argv = ["--dataset", "shapes", "--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY, option, value]
    try:
        status = train_fcos.cli(argv)
    except SystemExit as exit:  # argparse's own checks
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2
    assert option in err and value in err, err
    assert err.startswith("train_fcos.py: error: ") and len(err.strip().splitlines()) <= 2, err
    # Fail fast: no dataset generated, no model trained, before the user learns about a typo.
    assert not data_dir.exists(), f"the dataset was generated before {option} {value} was refused"
    assert not (run_dir / "checkpoint.pt").exists(), f"a model was trained before {option} {value} was refused"


def _offline_download(monkeypatch):
    real = eecs598.data.datasets.download_voc2007
    monkeypatch.setattr(eecs598.data.datasets, "download_voc2007",
                        lambda root, **kwargs: real(root, url_base="http://127.0.0.1:9/", timeout=2.0, progress=False))


MISTAKES = {
    # id: (argv, set-up, words the answer must contain)
    "device_gpu": (["--dataset", "shapes", "--device", "gpu"], None, ["--device", "'gpu'", "cpu, cuda"]),
    "explicit_cuda_without_gpu": (["--dataset", "shapes", "--device", "cuda"], "no_gpu",
                                  ["--device cuda", "CUDA is not available", "--device cpu"]),
    "voc_on_a_cpu_without_device_cpu": (["--dataset", "voc"], "no_gpu",
                                        ["--dataset voc", "CUDA is not available", "--device cpu"]),
    "voc_data_missing": (["--dataset", "voc", "--device", "cpu"], None,
                         ["VOC 2007 is not in --data-dir", "voc07_train.json", "--download"]),
    "voc_download_offline": (["--dataset", "voc", "--device", "cpu", "--download"], "offline",
                             ["--download failed", "cannot connect", "127.0.0.1:9", "without --download"]),
    "eval_only_before_training": (["--dataset", "shapes", "--eval-only"], None,
                                  ["--eval-only", "no checkpoint", "checkpoint.pt", "without --eval-only"]),
    "eval_only_damaged_checkpoint": (["--dataset", "shapes", "--eval-only"], "damaged_checkpoint",
                                     ["checkpoint.pt", "truncated or corrupt", "Delete it"]),
    "run_dir_not_writable": (["--dataset", "shapes"], "run_dir_under_a_file",
                             ["cannot write into --run-dir", "notes.txt", "Not a directory"]),
    "ctrl_c": (["--dataset", "shapes"], "ctrl_c", ["interrupted", "--resume"]),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_user_mistakes_get_a_short_answer_in_the_clis_words(tmp_path, monkeypatch, capsys, case):
    argv, setup, words = MISTAKES[case]
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    if setup == "no_gpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif setup == "offline":
        _offline_download(monkeypatch)
    elif setup == "damaged_checkpoint":
        run_dir.mkdir()
        (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    elif setup == "run_dir_under_a_file":
        (tmp_path / "notes.txt").write_text("a file")
        run_dir = tmp_path / "notes.txt" / "run"
    elif setup == "ctrl_c":
        monkeypatch.setattr(eecs598.tools.train, "run", lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    status = train_fcos.cli([*argv, "--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY])
    err = capsys.readouterr().err
    assert status == (130 if case == "ctrl_c" else 2)
    assert err.startswith("train_fcos.py: error: ") and 1 <= len(err.strip().splitlines()) <= 2, err
    missing = [word for word in words if word not in err]
    assert not missing, f"{err!r} lacks {missing}"
    assert "Traceback" not in err and "download=True" not in err and "pretrained=" not in err
    assert not data_dir.exists() or case == "voc_download_offline", "work was done before the refusal"
    if setup not in ("damaged_checkpoint", "offline", "ctrl_c"):
        assert not run_dir.exists(), "--run-dir was created before the refusal"
    if case == "voc_download_offline":
        assert os.listdir(data_dir) == [], "the failed download left files behind"


def test_dataloader_workers_never_exceed_the_cores(tmp_path, capsys):
    args = train_fcos.parse_args(["--dataset", "shapes", "--run-dir", str(tmp_path), "--num-workers", "512"])
    train_fcos.check_args(args)
    assert 1 <= args.num_workers <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert args.num_workers == min(os.cpu_count(), len(os.sched_getaffinity(0)))
    assert f"--num-workers 512 is more than the {args.num_workers} core(s)" in capsys.readouterr().out
    args = train_fcos.parse_args(["--dataset", "shapes", "--run-dir", str(tmp_path), "--num-workers", "1"])
    train_fcos.check_args(args)
    assert args.num_workers == 1


def test_the_command_line_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train_fcos.py"), "--cls-loss-weight", "-1",
                             "--run-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "shapes")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "train_fcos.py: error: --cls-loss-weight must be a finite number >= 0, got -1.0 (a negative weight would train "
        "towards a worse model) (see train_fcos.py --help)"]
    assert not (tmp_path / "shapes").exists()


def test_improved_preset_sets_the_recipe_and_eval_only_rebuilds_that_model(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(run_dir), *TINY,
            "--preset", "improved", "--box-loss", "l1", "--tta", "flip"]
    metrics = train_fcos.main(argv)
    settings = metrics["settings"]
    # From the preset: GroupNorm head, centre sampling, flip + scale jitter; --box-loss overrides the preset's GIoU.
    assert (settings["head_norm"], settings["center_sampling_radius"], settings["box_loss"]) == ("group", 1.5, "l1")
    assert settings["augment"] == {"flip_prob": 0.5, "scale_range": (0.8, 1.25)}
    assert settings["tta"] == {"flip": True, "scales": (1.0,)}
    # --eval-only without the recipe flags: the checkpoint's model options rebuild the same model.
    again = train_fcos.main(["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(run_dir),
                             *TINY, "--eval-only", "--tta", "flip"])
    assert again["settings"]["head_norm"] == "group" and again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-12)


def test_course_preset_is_the_default_model():
    args = train_fcos.parse_args(["--dataset", "shapes"])
    assert args.preset == "course"
    assert (args.backbone, args.head_norm, args.box_loss, args.center_sampling_radius, args.p6p7) == (
        "regnet_x_400mf", None, "l1", None, False)
    assert args.augment is None and args.tta is None
