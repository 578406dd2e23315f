"""Tests of eecs598.evaluation.sweeps and .errors (``python -m eecs598.analysis``): the one-pass threshold sweep against separate runs, the error types on
hand-built cases, the confusion matrix, and the evaluator's exposed matching against the reference."""
import contextlib
import csv
import io
import os
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from conftest import make_fcos
from map_reference import read_input, reference_ap
from test_mean_ap import make_input, write_random_input

from a4_helper import ShapesDetection, inference_with_detector
from eecs598.evaluation import errors as error_analysis
from eecs598.evaluation import sweeps
from eecs598.evaluation.cartucho import read_box_files
from eecs598.evaluation.mean_ap import evaluate_map, match_detections, voc_ap

try:
    import pycocotools  # noqa: F401

    HAVE_PYCOCOTOOLS = True
except ImportError:
    HAVE_PYCOCOTOOLS = False


def read_input_dir(input_dir):
    gt = read_box_files(os.path.join(input_dir, "ground-truth"), "gt")
    det = read_box_files(os.path.join(input_dir, "detection-results"), "det")
    return gt, det


# ----------------------------------------------------------------------------------------------
# threshold sweep
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_and_model(tmp_path_factory):
    """6 Shapes val images at 64 px and a tiny FCOS whose head outputs get fixed noise, so that scores
    spread over [0.05, 0.8], all 5 classes occur and boxes vary (a random FCOS scores every location
    about the same)."""
    root = tmp_path_factory.mktemp("shapes")
    dataset = ShapesDetection(str(root), "val", image_size=64, num_train=4, num_val=6, quiet=True)
    torch.manual_seed(0)
    model = make_fcos(num_classes=5, fpn_channels=16, stem_channels=(16, 16))

    def spread(module, inputs, outputs):
        generator = torch.Generator().manual_seed(0)
        return [{k: v + shift + std * torch.randn(v.shape, generator=generator) for k, v in d.items()}
                for d, std, shift in zip(outputs, (2.0, 0.7, 1.0), (-1.0, 1.5, 0.0))]

    model.pred_net.register_forward_hook(spread)
    return dataset, model


def test_sweep_equals_separate_runs(shapes_and_model, tmp_path):
    dataset, model = shapes_and_model
    # Images in reverse file order: the Cartucho files are ranked by file name, not by loader order.
    loader = DataLoader(Subset(dataset, list(range(len(dataset)))[::-1]), batch_size=1)
    pool = sweeps.collect_detections(model, loader, dataset.idx_to_class, min_score=0.05, progress=False)
    assert pool.image_ids == ["000005", "000004", "000003", "000002", "000001", "000000"]
    score_threshs, nms_threshs = (0.05, 0.2, 0.4), (0.3, 0.5, 0.6)
    rows = sweeps.sweep_thresholds(pool, score_threshs, nms_threshs)
    assert [(r["score_thresh"], r["nms_thresh"]) for r in rows] == [(s, n) for s in score_threshs
                                                                    for n in nms_threshs]
    for row in rows:
        input_dir = str(tmp_path / f"{row['score_thresh']}_{row['nms_thresh']}")
        with contextlib.redirect_stdout(io.StringIO()):
            inference_with_detector(model, loader, dataset.idx_to_class, row["score_thresh"], row["nms_thresh"],
                                    output_dir=input_dir, progress=False)
        separate = evaluate_map(input_dir, quiet=True)
        assert row["mAP"] == separate.map and row["ap_per_class"] == separate.ap, row
        # The detections themselves, as the evaluator reads them from the files: identical.
        gt_files, det_files = read_input_dir(input_dir)
        gt, det = pool.box_files(pool.keep(row["score_thresh"], row["nms_thresh"]))
        for mine, theirs in ((gt, gt_files), (det, det_files)):
            assert mine.file_ids == theirs.file_ids and mine.classes == theirs.classes
            for name in ("image_index", "class_index", "boxes", "scores", "difficult"):
                a, b = getattr(mine, name), getattr(theirs, name)
                assert (a is None and b is None) or np.array_equal(a, b), name
        assert row["detections"] == len(det_files)
        assert row["tp"] == sum(separate.num_tp.values())
    # The data exercise the sweep: thresholds change the detections and the mAP, some detections are right.
    assert len({r["detections"] for r in rows}) >= 6 and len({r["mAP"] for r in rows}) >= 3
    assert max(r["mAP"] for r in rows) > 0 and min(r["detections"] for r in rows) > 0


def test_sweep_table_csv_plot_and_threshold_checks(shapes_and_model, tmp_path):
    dataset, model = shapes_and_model
    pool = sweeps.collect_detections(model, DataLoader(dataset, batch_size=1), dataset.idx_to_class,
                                       min_score=0.2, progress=False)
    with pytest.raises(ValueError, match="below the pool's min_score 0.2"):
        pool.keep(0.1, 0.5)
    with pytest.raises(ValueError, match="nms_thresh must be a number in"):
        pool.keep(0.3, 1.5)
    rows = sweeps.sweep_thresholds(pool, (0.2, 0.4), (0.5, 0.6))
    table = sweeps.format_sweep_table(rows).splitlines()
    assert table[0] == "| mAP (score \\ NMS) | 0.5 | 0.6 |" and len(table) == 4
    assert table[2].startswith("| 0.2 | ") and table[2].endswith("% |")
    sweeps.write_sweep_csv(rows, str(tmp_path / "sweep.csv"))
    with open(tmp_path / "sweep.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 4 and float(lines[1]["nms_thresh"]) == 0.6 and float(lines[2]["score_thresh"]) == 0.4
    assert {f"AP_{c}" for c in rows[0]["ap_per_class"]} <= set(lines[0])
    assert float(lines[0]["mAP"]) == rows[0]["mAP"]
    sweeps.plot_sweep(rows, path=str(tmp_path / "sweep.png"))
    assert os.path.getsize(tmp_path / "sweep.png") > 0


# ----------------------------------------------------------------------------------------------
# error analysis on hand-built cases
# ----------------------------------------------------------------------------------------------

# One image. GT (pixel-inclusive sizes: a box [x1, x2] is x2 - x1 + 1 pixels wide):
#   A cat [10,10,50,50] (41x41)   B dog [100,100,150,150]   C cat [200,10,240,50]   D dog [10,100,50,140]
HAND_GT = ["cat 10 10 50 50", "dog 100 100 150 150", "cat 200 10 240 50", "dog 10 100 50 140"]
HAND_DET = [
    "cat 0.9 10 10 50 50",      # TP on A (IoU 1)
    "cat 0.8 11 11 50 50",      # duplicate: A again, IoU 40*40/41*41 = 0.95, A already used
    "cat 0.7 100 100 150 150",  # wrong class: covers dog B with IoU 1; no cat there
    "dog 0.6 10 100 25 140",    # poor localisation: dog D with IoU 16*41 / 41*41 = 0.39
    "dog 0.5 300 300 320 320",  # background: overlaps nothing
    "dog 0.4 200 10 215 50",    # background: covers cat C with IoU 0.39 only (< 0.5), no dog nearby
]


def test_each_error_type_on_a_hand_built_image(tmp_path):
    input_dir = make_input(tmp_path, {"img": HAND_GT}, {"img": HAND_DET})
    gt, det = read_input_dir(input_dir)
    errors = error_analysis.analyze_errors(gt, det)
    assert errors.class_names == ["cat", "dog"]
    assert errors.matching.tp.tolist() == [True, False, False, False, False, False]
    types = [None if t < 0 else error_analysis.FP_TYPES[t] for t in errors.fp_type]
    assert types == [None, "duplicate", "wrong_class", "poor_localisation", "background", "background"]
    assert errors.confused_gt.tolist() == [-1, -1, 1, -1, -1, -1]  # the wrong-class cat points at dog B
    misses = [None if t < 0 else error_analysis.MISS_TYPES[t] for t in errors.miss_type]
    assert misses == [None, "wrong_class", "not_detected", "poor_localisation"]  # A found; B, C, D missed
    assert errors.fp_counts() == {"wrong_class": 1, "poor_localisation": 1, "duplicate": 1, "background": 2}
    assert errors.miss_counts() == {"wrong_class": 1, "poor_localisation": 1, "not_detected": 1}
    # rows true (cat, dog, background), columns predicted (cat, dog, missed):
    # TP cat; wrong-class cat on dog B; duplicate cat -> background; poor-loc and background dogs ->
    # background; misses C (cat) and D (dog); B's miss is explained by the wrong-class cat.
    assert errors.confusion.tolist() == [[1, 0, 1],
                                         [1, 0, 1],
                                         [1, 3, 0]]
    assert errors.image_tp.tolist() == [1] and errors.image_fp.tolist() == [5]
    assert errors.image_missed.tolist() == [3]
    assert errors.per_class()["dog"] == {"tp": 0, "wrong_class": 0, "poor_localisation": 1, "duplicate": 0,
                                         "background": 2, "missed_wrong_class": 1, "missed_poor_localisation": 1,
                                         "missed_not_detected": 0}
    summary = error_analysis.format_error_summary(errors)
    assert "false positives: 5 = wrong_class 1 (20%), poor_localisation 1 (20%), duplicate 1 (20%), " \
           "background 2 (40%)" in summary


def test_thresholds_move_the_boundaries(tmp_path):
    input_dir = make_input(tmp_path, {"img": HAND_GT}, {"img": HAND_DET})
    gt, det = read_input_dir(input_dir)
    # With a TP IoU of 0.35 the dog at IoU 0.39 is a true positive on D, and the dog at IoU 0.39 on
    # cat C becomes a wrong-class detection (C then counts as a wrong-class miss).
    errors = error_analysis.analyze_errors(gt, det, min_overlap=0.35)
    types = [None if t < 0 else error_analysis.FP_TYPES[t] for t in errors.fp_type]
    assert types == [None, "duplicate", "wrong_class", None, "background", "wrong_class"]
    assert [None if t < 0 else error_analysis.MISS_TYPES[t] for t in errors.miss_type] == [None, "wrong_class",
                                                                                     "wrong_class", None]
    # background_iou above 0.39 turns the poorly localised dog into background, and D into not_detected.
    errors = error_analysis.analyze_errors(gt, det, background_iou=0.4)
    assert error_analysis.FP_TYPES[errors.fp_type[3]] == "background"
    assert error_analysis.MISS_TYPES[errors.miss_type[3]] == "not_detected"
    with pytest.raises(ValueError, match="background_iou"):
        error_analysis.analyze_errors(gt, det, background_iou=0.6)


def test_difficult_boxes_are_neither_errors_nor_misses(tmp_path):
    input_dir = make_input(tmp_path, {"img": ["cat 10 10 50 50", "dog 100 100 150 150 difficult"]},
                           {"img": ["dog 0.9 100 100 150 150", "cat 0.8 100 100 150 150", "cat 0.7 10 10 50 50"]})
    gt, det = read_input_dir(input_dir)
    errors = error_analysis.analyze_errors(gt, det)
    assert errors.matching.ignored.tolist() == [True, False, False]
    # The cat on the difficult dog is not a wrong-class error: difficult boxes count neither way.
    assert errors.fp_type.tolist() == [-1, error_analysis.FP_TYPES.index("background"), -1]
    assert errors.miss_type.tolist() == [-1, -1]
    assert errors.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_match_detections_reproduces_the_reference_ap(tmp_path):
    """The exposed matching (TP/FP flags in rank order) gives the reference evaluator's AP per class."""
    input_dir = write_random_input(tmp_path, seed=3, n_images=120)
    ref_ap, _ = reference_ap(*read_input(input_dir))
    gt, det = read_input_dir(input_dir)
    m = match_detections(gt, det)
    assert not (m.tp & m.fp).any() and not (m.tp & m.ignored).any() and not (m.fp & m.ignored).any()
    for name, ap in ref_ap.items():
        c = m.names.index(name)
        ranked = m.rank[m.det_cls[m.rank] == c]
        assert np.all(np.diff(det.scores[ranked]) <= 0)
        n_gt = int(((m.gt_cls == c) & ~gt.difficult).sum())
        tp, fp = np.cumsum(m.tp[ranked]), np.cumsum(m.fp[ranked])
        precision = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=tp + fp > 0)
        assert abs(voc_ap(tp / n_gt, precision) - ap) <= 1e-12, name
    # and the error analysis of the same data: every FP has one type, every non-difficult miss one type
    errors = error_analysis.analyze_errors(gt, det)
    assert ((errors.fp_type >= 0) == m.fp).all()
    found = np.zeros(len(gt), dtype=bool)
    found[m.best_gt[m.tp]] = True
    assert ((errors.miss_type >= 0) == (~found & ~gt.difficult)).all()
    assert errors.confusion.diagonal()[:-1].sum() == m.tp.sum()
    assert errors.confusion[-1].sum() + errors.confusion[:-1, :-1].sum() - m.tp.sum() == m.fp.sum()


def test_figures_and_cli(shapes_and_model, tmp_path, capsys):
    dataset, model = shapes_and_model
    pool = sweeps.collect_detections(model, DataLoader(dataset, batch_size=1), dataset.idx_to_class,
                                       min_score=0.05, progress=False)
    gt, det = pool.box_files(pool.keep(0.2, 0.5))
    errors = error_analysis.analyze_errors(gt, det)
    summary = error_analysis.write_error_analysis(errors, gt, det, pool.evaluate(0.05, 0.5), str(tmp_path / "out"),
                                            load_image=error_analysis.image_loader(dataset), num_images=4)
    for name in ("errors.txt", "errors.png", "confusion_matrix.png", "pr_curves.png", "worst_images.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 0, name
    assert summary["false_positives"] == errors.fp_counts()
    assert np.array(summary["confusion_matrix"]).shape == (6, 6)
    assert errors.worst_files(3) == sorted(range(6), key=lambda f: -(errors.image_fp[f] + errors.image_missed[f]))[:3]

    input_dir = make_input(tmp_path / "input", {"img": HAND_GT}, {"img": HAND_DET})
    assert error_analysis.main([input_dir, "--output", str(tmp_path / "cli"), "--score-thresh", "0.45"]) == 0
    out = capsys.readouterr().out
    # score > 0.45 drops the last dog: 4 false positives remain
    assert "false positives: 4 = wrong_class 1 (25%), poor_localisation 1 (25%), duplicate 1 (25%)" in out
    assert os.path.isfile(tmp_path / "cli" / "confusion_matrix.png")
    assert error_analysis.main([str(tmp_path / "nowhere")]) == 2


# ----------------------------------------------------------------------------------------------
# train_fcos.py --coco --sweep --error-analysis
# ----------------------------------------------------------------------------------------------


def test_train_fcos_writes_the_analysis_outputs(tmp_path, capsys):
    import train_fcos

    argv = ["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir", str(tmp_path / "run"),
            "--num-train", "8", "--num-val", "4", "--image-size", "64", "--max-iters", "1", "--batch-size", "4",
            "--fpn-channels", "16", "--stem-channels", "16", "--no-progress", "--threads", "1", "--sweep",
            "--error-analysis"] + (["--coco"] if HAVE_PYCOCOTOOLS else [])
    metrics = train_fcos.main(argv)
    out_dir = tmp_path / "run" / "analysis"
    for name in ("sweep.csv", "sweep.md", "sweep.png", "pr_curves.png", "errors.txt", "errors.png",
                 "confusion_matrix.png"):
        assert os.path.getsize(out_dir / name) > 0, name
    # The sweep's row at the run's own setting (score 0.05, NMS 0.5) is the run's mAP.
    (own,) = [r for r in metrics["sweep"] if (r["score_thresh"], r["nms_thresh"]) == (0.05, 0.5)]
    assert own["mAP"] == metrics["mAP"]
    assert len(metrics["sweep"]) == len(sweeps.DEFAULT_SCORE_THRESHS) * len(sweeps.DEFAULT_NMS_THRESHS)
    assert metrics["errors"]["score_thresh"] == 0.4 and set(metrics["errors"]["false_positives"]) == set(
        error_analysis.FP_TYPES)
    if HAVE_PYCOCOTOOLS:
        from eecs598.evaluation.coco import evaluate_coco

        direct = evaluate_coco(str(tmp_path / "run" / "mAP" / "input"), quiet=True)
        assert metrics["coco"] == direct.metrics()
    assert "Threshold sweep (mAP@0.5)" in capsys.readouterr().out


def test_train_fcos_coco_flag_without_pycocotools_names_the_extra(monkeypatch, capsys):
    import train_fcos

    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit):
        train_fcos.parse_args(["--coco"])
    assert "pip install -e '.[coco]'" in capsys.readouterr().err
