"""Tests of eecs598.evaluation.coco: agreement with pycocotools called directly on the same boxes, the box
convention on hand-computed cases, difficult boxes, the command line, and the message without pycocotools."""
import json
import random
import sys

import numpy as np
import pytest

from test_mean_ap import make_input

from eecs598.evaluation import coco as coco_eval

try:
    import pycocotools  # noqa: F401

    HAVE_PYCOCOTOOLS = True
except ImportError:
    HAVE_PYCOCOTOOLS = False
needs_pycocotools = pytest.mark.skipif(
    not HAVE_PYCOCOTOOLS, reason="pycocotools is not installed (optional extra: pip install -e '.[coco]')")


def random_boxes(seed, n_images=40, classes=("bird", "car", "cat", "dog")):
    """Per image: GT ``(class, x1, y1, x2, y2, difficult)`` and detections ``(class, score, x1, y1, x2, y2)``
    with boxes of all three COCO sizes, jittered copies, duplicates, wrong classes and random boxes."""
    rng = random.Random(seed)
    data = {}
    for i in range(n_images):
        gts, dets = [], []
        for _ in range(rng.randint(0, 5)):
            w, h = rng.choice([rng.uniform(4, 30), rng.uniform(35, 90), rng.uniform(100, 200)]), rng.uniform(4, 150)
            x1, y1 = round(rng.uniform(0, 300), 2), round(rng.uniform(0, 300), 2)
            box = [x1, y1, round(x1 + w, 2), round(y1 + h, 2)]
            cls = rng.choice(classes)
            gts.append((cls, *box, rng.random() < 0.1))
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                jittered = [round(v + rng.uniform(-0.15, 0.15) * (w if k % 2 == 0 else h), 2)
                            for k, v in enumerate(box)]
                jittered[2], jittered[3] = max(jittered[2], jittered[0]), max(jittered[3], jittered[1])
                dets.append((cls if rng.random() < 0.85 else rng.choice(classes + ("zebra",)),
                             round(rng.random(), 6), *jittered))
        for _ in range(rng.randint(0, 4)):
            x1, y1 = round(rng.uniform(0, 300), 2), round(rng.uniform(0, 300), 2)
            dets.append((rng.choice(classes), round(rng.random(), 6), x1, y1, round(x1 + rng.uniform(2, 120), 2),
                         round(y1 + rng.uniform(2, 120), 2)))
        rng.shuffle(dets)
        data[f"{i:04d}"] = (gts, dets)
    return data


def write_cartucho(root, data):
    gt = {k: [f"{c} {x1!r} {y1!r} {x2!r} {y2!r}" + (" difficult" if d else "") for c, x1, y1, x2, y2, d in g]
          for k, (g, _) in data.items()}
    det = {k: [f"{c} {s!r} {x1!r} {y1!r} {x2!r} {y2!r}" for c, s, x1, y1, x2, y2 in d] for k, (_, d) in data.items()}
    return make_input(root, gt, det)


def pycocotools_directly(data):
    """The COCO dataset and results written out by hand from the same boxes, evaluated by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({g[0] for gts, _ in data.values() for g in gts})
    images, annotations, results = [], [], []
    for image_id, key in enumerate(sorted(data), start=1):
        images.append({"id": image_id})
        gts, dets = data[key]
        for c, x1, y1, x2, y2, difficult in gts:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": names.index(c) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(difficult)})
        for c, s, x1, y1, x2, y2 in dets:
            if c in names:
                results.append({"image_id": image_id, "category_id": names.index(c) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": annotations,
                       "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    coco_gt.createIndex()
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator, names


@needs_pycocotools
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_pycocotools_called_directly(tmp_path, seed):
    data = random_boxes(seed)
    result = coco_eval.evaluate_coco(write_cartucho(tmp_path, data), quiet=True)
    evaluator, names = pycocotools_directly(data)
    assert np.abs(result.stats - np.array(evaluator.stats)).max() <= 1e-9
    assert (result.stats > 0.05).sum() >= 9  # the data exercise AP and AR of all three sizes
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    for k, name in enumerate(names):
        p = precision[:, :, k]
        assert abs(result.ap_per_class[name] - p[p > -1].mean()) <= 1e-9, name
    assert result.num_gt == sum(len(g) for g, _ in data.values())
    assert result.metrics()["AP"] == result.stats[0] and set(result.metrics()) == set(coco_eval.COCO_METRIC_NAMES)


@needs_pycocotools
def test_box_convention_and_area_ranges_by_hand(tmp_path):
    # GT 10x10 (small, area 100); the detection [0,0,10,6.8] has continuous IoU 68/100 = 0.68: a match at the
    # IoU thresholds 0.50, 0.55, 0.60, 0.65 -> AP = 4/10. (With VOC's +1 pixels it would be 11*7.8/121 = 0.709,
    # 5 thresholds, AP 0.5.)
    input_dir = make_input(tmp_path, {"a": ["cat 0 0 10 10"]}, {"a": ["cat 0.9 0 0 10 6.8"]})
    result = coco_eval.evaluate_coco(input_dir, quiet=True)
    metrics = result.metrics()
    assert metrics["AP"] == pytest.approx(0.4, abs=1e-12) and metrics["AP_small"] == pytest.approx(0.4, abs=1e-12)
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-12) and metrics["AP75"] == 0.0
    assert metrics["AR1"] == pytest.approx(0.4, abs=1e-12) and metrics["AR100"] == pytest.approx(0.4, abs=1e-12)
    assert metrics["AP_medium"] is None and metrics["AP_large"] is None  # no GT box of those sizes
    assert result.ap_per_class == {"cat": pytest.approx(0.4, abs=1e-12)}
    # Area = w * h of the GT box in pixels: 40 x 40 = 1600 is medium (32**2 < 1600 < 96**2).
    input_dir = make_input(tmp_path / "m", {"a": ["cat 0 0 40 40"]}, {"a": ["cat 0.9 0 0 40 40"]})
    metrics = coco_eval.evaluate_coco(input_dir, quiet=True).metrics()
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["AP_small"] is None
    assert metrics["AP_medium"] == pytest.approx(1.0, abs=1e-12)


@needs_pycocotools
def test_difficult_is_ignored_and_empty_detections_score_zero(tmp_path):
    # The detection on the difficult box scores highest; ignored, the TP keeps precision 1 at every recall.
    input_dir = make_input(tmp_path / "d", {"a": ["cat 0 0 40 40", "cat 100 100 140 140 difficult"]},
                           {"a": ["cat 0.9 100 100 140 140", "cat 0.8 0 0 40 40"]})
    assert coco_eval.evaluate_coco(input_dir, quiet=True).metrics()["AP"] == pytest.approx(1.0, abs=1e-12)
    input_dir = make_input(tmp_path / "e", {"a": ["cat 0 0 40 40"], "b": ["dog 5 5 20 20"]}, {"a": [], "b": []})
    result = coco_eval.evaluate_coco(input_dir, quiet=True)
    assert result.num_det == 0 and result.metrics()["AP"] == 0.0 and result.metrics()["AR100"] == 0.0
    assert result.ap_per_class == {"cat": 0.0, "dog": 0.0}


@needs_pycocotools
def test_cli_prints_summary_and_writes_json(tmp_path, capsys):
    data = random_boxes(2, n_images=10)
    input_dir = write_cartucho(tmp_path, data)
    assert coco_eval.main([input_dir, "--json", str(tmp_path / "out" / "coco.json")]) == 0
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    with open(tmp_path / "out" / "coco.json") as f:
        stored = json.load(f)
    evaluator, _ = pycocotools_directly(data)
    assert stored["metrics"]["AP"] == pytest.approx(evaluator.stats[0], abs=1e-9)
    assert coco_eval.main([str(tmp_path / "missing")]) == 2
    assert "ground-truth" in capsys.readouterr().err.lower()


def test_without_pycocotools_the_message_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import pycocotools.* now raises ImportError
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[coco\]'"):
        coco_eval.require_pycocotools()
    input_dir = make_input(tmp_path, {"a": ["cat 0 0 10 10"]}, {"a": []})
    assert coco_eval.main([input_dir]) == 1
    assert "pip install -e '.[coco]'" in capsys.readouterr().err
