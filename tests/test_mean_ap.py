"""Tests for eecs598.evaluation.mean_ap (Cartucho/mAP-compatible evaluator).

Expected numbers are worked out by hand in the comments. Notation: ranked detections are listed
as TP / FP / ign (ignored: matched to a difficult GT); "cum" are cumulative counts;
AP = sum over recall steps of (step width) * (best precision at this or any higher recall).
"""
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from eecs598.evaluation.cartucho import _parse_detections_quickly, _parse_lines_slowly, read_box_files
from eecs598.evaluation.mean_ap import MapResult, evaluate_map, main, plot_ap_bars

sys.path.insert(0, os.path.dirname(__file__))
from map_reference import reference_map  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# helpers


def make_input(root, gt, det):
    """Write ``root/ground-truth/<id>.txt`` and ``root/detection-results/<id>.txt``.

    ``gt`` / ``det`` map an image id to the file's text (a list of lines or a raw string);
    ``None`` means: do not write that file.
    """
    for sub, files in (("ground-truth", gt), ("detection-results", det)):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        for file_id, lines in files.items():
            if lines is None:
                continue
            text = lines if isinstance(lines, str) else "".join(line + "\n" for line in lines)
            with open(os.path.join(root, sub, file_id + ".txt"), "w") as f:
                f.write(text)
    return str(root)


def run(tmp_path, gt, det, **kwargs) -> MapResult:
    return evaluate_map(make_input(tmp_path / "input", gt, det), quiet=True, **kwargs)


# matching rules


def test_duplicate_detection_is_false_positive(tmp_path):
    # 2 GT. Ranked: 0.9 on GT1 -> TP, 0.8 on GT1 again -> FP (used), 0.7 on GT2 -> TP.
    # cum tp 1,1,2 fp 0,1,1 -> recall .5,.5,1 precision 1,.5,2/3.
    # AP = .5 * 1 + .5 * 2/3 = 5/6.
    r = run(tmp_path,
            {"a": ["cat 0 0 9 9", "cat 100 100 109 109"]},
            {"a": ["cat 0.9 0 0 9 9", "cat 0.8 0 0 9 9", "cat 0.7 100 100 109 109"]})
    assert r.ap == {"cat": pytest.approx(5 / 6, abs=1e-15)}
    np.testing.assert_allclose(r.recall["cat"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(r.precision["cat"], [1.0, 0.5, 2 / 3])
    assert r.num_gt == {"cat": 2} and r.num_det == {"cat": 3} and r.num_tp == {"cat": 2}


def test_best_gt_already_used_gives_fp_without_fallback(tmp_path):
    # GT A = [0,0,9,9] (100 px), GT B = [0,0,9,11] (120 px). Both detections are [0,0,9,9]:
    # IoU with A = 1, with B = 100/120 = .83, so both pick A. First -> TP, second -> FP although
    # B would match. recall .5,.5, precision 1,.5 -> AP = .5 * 1 = 0.5 (a fall-back would give 1).
    r = run(tmp_path,
            {"a": ["cat 0 0 9 9", "cat 0 0 9 11"]},
            {"a": ["cat 0.9 0 0 9 9", "cat 0.8 0 0 9 9"]})
    assert r.ap["cat"] == 0.5
    assert r.num_tp["cat"] == 1


def test_difficult_gt_is_ignored_and_not_counted(tmp_path):
    # dog: GT D (difficult) = [0,0,9,9], GT N = [20,20,29,29]; #GT = 1 (N only).
    # Ranked: 0.9 on D -> ign, 0.8 on N -> TP, 0.7 on nothing -> FP.
    # cum tp 0,1,1 fp 0,0,1 -> recall 0,1,1; precision 0/0 (defined 0),1,.5. AP = 1 * 1 = 1.
    # (Counting the ignored one as FP would give .5; counting D in #GT would give .5.)
    # cow has only a difficult GT -> not evaluated, even though it has a detection.
    r = run(tmp_path,
            {"a": ["dog 0 0 9 9 difficult", "dog 20 20 29 29", "cow 0 0 9 9 difficult"]},
            {"a": ["dog 0.9 0 0 9 9", "dog 0.8 20 20 29 29", "dog 0.7 50 50 59 59", "cow 0.9 0 0 9 9"]})
    assert r.ap == {"dog": 1.0}
    assert r.map == 1.0
    np.testing.assert_array_equal(r.recall["dog"], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(r.precision["dog"], [0.0, 1.0, 0.5])
    assert r.num_gt == {"dog": 1}
    assert r.num_det == {"cow": 1, "dog": 3} and r.num_tp == {"cow": 0, "dog": 1}


def test_first_gt_in_line_order_wins_an_iou_tie(tmp_path):
    # Two identical GT boxes, the FIRST one difficult; the detection has IoU 1 with both.
    # Strict ov > ovmax keeps the first -> ignored -> no TP: recall 0, AP 0.
    r = run(tmp_path / "first_difficult",
            {"a": ["dog 0 0 9 9 difficult", "dog 0 0 9 9"]}, {"a": ["dog 0.9 0 0 9 9"]})
    assert r.ap == {"dog": 0.0}
    # Swapped lines: the non-difficult one is first -> TP, recall 1, precision 1 -> AP 1.
    r = run(tmp_path / "first_normal",
            {"a": ["dog 0 0 9 9", "dog 0 0 9 9 difficult"]}, {"a": ["dog 0.9 0 0 9 9"]})
    assert r.ap == {"dog": 1.0}


def test_tied_scores_keep_file_order_then_line_order(tmp_path):
    # Across files: GT a, b = [0,0,9,9] each (#GT 2). Detections: a 0.9 TP; a 0.5 miss (FP);
    # b 0.5 hit. Tie at 0.5 -> file a first: TP, FP, TP -> recall .5,.5,1 precision 1,.5,2/3
    # -> AP = .5 + .5 * 2/3 = 5/6. (b first would give TP,TP,FP -> AP 1.)
    # Ties compare float values: "0.5" and "0.500000" are equal.
    r = run(tmp_path / "files",
            {"b": ["cat 0 0 9 9"], "a": ["cat 0 0 9 9"]},
            {"b": ["cat 0.500000 0 0 9 9"], "a": ["cat 0.9 0 0 9 9", "cat 0.5 50 50 59 59"]})
    assert r.ap["cat"] == pytest.approx(5 / 6, abs=1e-15)
    # Within a file: #GT 1; line 1 miss, line 2 hit, same score -> FP, TP -> recall 0,1,
    # precision 0,.5 -> AP = 1 * .5 = 0.5. (Line 2 first would give AP 1.)
    r = run(tmp_path / "lines", {"a": ["cat 0 0 9 9"]},
            {"a": ["cat 0.5 50 50 59 59", "cat 0.5 0 0 9 9"]})
    assert r.ap["cat"] == 0.5


def test_iou_is_pixel_inclusive_and_threshold_is_inclusive(tmp_path):
    gt = {"a": ["cat 0 0 9 9"]}  # 10 x 10 = 100 px
    # [0,0,9,4]: 10 x 5 = 50 px inside the GT -> IoU 50 / (100 + 50 - 50) = 0.5 exactly -> TP.
    # (Plain areas would give 36 / 81 = .44 -> FP.)
    assert run(tmp_path / "at", gt, {"a": ["cat 0.9 0 0 9 4"]}).ap["cat"] == 1.0
    # [0,-1,9,4]: 10 x 6 = 60 px, intersection still 50 -> 50 / 110 = .45 -> FP.
    assert run(tmp_path / "below", gt, {"a": ["cat 0.9 0 -1 9 4"]}).ap["cat"] == 0.0
    # [0,0,9,3.9]: intersection 10 x 4.9 = 49 px, union 100 -> .49 -> FP.
    assert run(tmp_path / "frac", gt, {"a": ["cat 0.9 0 0 9 3.9"]}).ap["cat"] == 0.0
    # Touching boxes [10,0,19,9]: width 9 - 10 + 1 = 0 -> no overlap -> FP.
    assert run(tmp_path / "touch", gt, {"a": ["cat 0.9 10 0 19 9"]}).ap["cat"] == 0.0
    # min_overlap is a parameter: 0.5 IoU is not enough for 0.6.
    assert run(tmp_path / "at6", gt, {"a": ["cat 0.9 0 0 9 4"]}, min_overlap=0.6).ap["cat"] == 0.0


def test_class_sets(tmp_path):
    # cat: one TP -> AP 1. dog: GT, no detections -> AP 0, still in the mean -> mAP .5.
    # zebra: detections only -> ignored (counted in num_det).
    r = run(tmp_path,
            {"a": ["cat 0 0 9 9", "dog 20 20 29 29"]},
            {"a": ["zebra 0.99 0 0 9 9", "cat 0.9 0 0 9 9"]})
    assert r.ap == {"cat": 1.0, "dog": 0.0}
    assert list(r.ap) == ["cat", "dog"]
    assert r.map == 0.5
    assert r.num_det == {"cat": 1, "zebra": 1} and r.num_tp == {"cat": 1, "zebra": 0}
    assert len(r.recall["dog"]) == 0


def test_empty_detection_files_count_missed_objects(tmp_path):
    # GT in a and b (#GT 2); b has an empty detection file, c has no GT and no detections.
    # Ranked: TP -> recall .5, precision 1 -> AP .5.
    r = run(tmp_path / "some",
            {"a": ["cat 0 0 9 9"], "b": ["cat 0 0 9 9"], "c": []},
            {"a": ["cat 0.9 0 0 9 9"], "b": "", "c": "\n \n"})
    assert r.ap == {"cat": 0.5}
    # No detections at all: every class has AP 0 (recall never leaves 0).
    r = run(tmp_path / "none", {"a": ["cat 0 0 9 9", "dog 1 1 5 5"]}, {"a": ""})
    assert r.ap == {"cat": 0.0, "dog": 0.0} and r.map == 0.0 and r.num_det == {}


def test_odd_whitespace_parses_like_clean_input(tmp_path):
    # Tabs, repeated spaces, CRLF line ends and blank lines do not change anything.
    clean = run(tmp_path / "clean", {"a": ["cat 0 0 9 9", "cat 20 20 29 29 difficult"]},
                {"a": ["cat 0.9 0 0 9 9", "cat 0.8 20 20 29 29", "cat 0.7 40 40 49 49"]})
    odd = run(tmp_path / "odd", {"a": "cat\t0 0  9 9\r\n\r\ncat 20 20 29 29 difficult"},
              {"a": "\ncat 0.9\t0 0 9 9\r\n  cat 0.8 20 20 29 29   \n\ncat 0.7 40 40 49 49\u00a0\n"})
    assert odd.ap == clean.ap and odd.num_det == clean.num_det
    # Clean: TP, ign, FP -> recall 1,1,1 precision 1,1,.5 -> AP 1.
    assert clean.ap == {"cat": 1.0}


# input errors


def test_malformed_lines_name_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"a\.txt:2: expected '<class> <x1> <y1> <x2> <y2>"):
        run(tmp_path / "gt", {"a": ["cat 0 0 9 9", "cat 0 0 9"]}, {"a": []})
    with pytest.raises(ValueError, match=r"a\.txt:1: non-numeric"):
        run(tmp_path / "gt2", {"a": ["cat 0 0 9 x9"]}, {"a": []})
    with pytest.raises(ValueError, match=r"b\.txt:3: non-numeric.*<class> <confidence>"):
        run(tmp_path / "det", {"a": ["cat 0 0 9 9"], "b": []},
            {"a": ["cat 0.9 0 0 9 9"], "b": ["cat 0.9 0 0 9 9", "", "cat high 0 0 9 9"]})
    with pytest.raises(ValueError, match=r"a\.txt:1: expected '<class> <confidence>.*got 5"):
        run(tmp_path / "det2", {"a": ["cat 0 0 9 9"]}, {"a": ["cat 0 0 9 9"]})
    with pytest.raises(ValueError, match=r"a\.txt:2: expected '<class> <confidence>.*got 7"):
        run(tmp_path / "det3", {"a": ["cat 0 0 9 9"]}, {"a": ["cat 0.9 0 0 9 9", "cat 0.9 0 0 9 9 1"]})


def test_missing_files_and_empty_ground_truth(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Detection file not found: .*detection-results.b\.txt.*empty"):
        run(tmp_path / "no_det", {"a": ["cat 0 0 9 9"], "b": ["cat 0 0 9 9"]}, {"a": []})
    with pytest.raises(FileNotFoundError, match=r"Ground-truth file not found: .*ground-truth.b\.txt"):
        run(tmp_path / "no_gt", {"a": ["cat 0 0 9 9"]}, {"a": [], "b": []})
    with pytest.raises(ValueError, match="No ground-truth files"):
        run(tmp_path / "none", {}, {})
    with pytest.raises(ValueError, match="no boxes"):
        run(tmp_path / "only_difficult", {"a": ["cat 0 0 9 9 difficult"]}, {"a": []})
    with pytest.raises(FileNotFoundError, match="folder not found"):
        evaluate_map(str(tmp_path / "does_not_exist"), quiet=True)


# outputs


DUPLICATE_CASE = ({"a": ["cat 0 0 9 9", "cat 100 100 109 109"]},
                  {"a": ["cat 0.9 0 0 9 9", "cat 0.8 0 0 9 9", "cat 0.7 100 100 109 109",
                         "zebra 0.3 0 0 9 9"]})


def test_output_files_and_printing(tmp_path, capsys):
    input_dir = make_input(tmp_path / "input", *DUPLICATE_CASE)
    out = tmp_path / "output"
    r = evaluate_map(input_dir, output_dir=str(out))
    # Same case as test_duplicate_detection_is_false_positive: AP 5/6 = 83.33%.
    assert capsys.readouterr().out == "83.33% = cat AP \nmAP = 83.33%\n"
    assert (out / "output.txt").read_text() == (
        "# AP and precision/recall per class\n"
        "83.33% = cat AP \n"
        " Precision: ['1.00', '0.50', '0.67']\n"
        " Recall :['0.50', '0.50', '1.00']\n"
        "\n"
        "\n# mAP of all classes\n"
        "mAP = 83.33%\n"
        "\n# Number of ground-truth objects per class\n"
        "cat: 2\n"
        "\n# Number of detected objects per class\n"
        "cat: 3 (tp:2, fp:1)\n"
        "zebra: 1 (tp:0, fp:1)\n"
    )
    png = (out / "mAP.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert r.map == pytest.approx(5 / 6)


def test_plot_ap_bars_sorts_ascending(tmp_path):
    fig = plot_ap_bars({"cat": 0.9, "dog": 0.1, "cow": 0.5}, 0.5, path=str(tmp_path / "p.png"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dog", "cow", "cat"]
    # Bars and their labels in percent, the title's unit.
    assert [p.get_width() for p in ax.patches] == pytest.approx([10.0, 50.0, 90.0])
    assert [t.get_text() for t in ax.texts] == [" 10.0%", " 50.0%", " 90.0%"]
    assert ax.get_title() == "mAP = 50.00%" and ax.get_xlabel() == "Average Precision (%)"
    assert os.path.getsize(tmp_path / "p.png") > 1000


def test_cli(tmp_path, capsys):
    input_dir = make_input(tmp_path / "mAP" / "input", *DUPLICATE_CASE)
    # In-process: default output folder is INPUT_DIR/../output, like Cartucho's mAP/output.
    assert main([input_dir, "--no-plot"]) == 0
    assert capsys.readouterr().out.endswith("mAP = 83.33%\n")
    assert (tmp_path / "mAP" / "output" / "output.txt").exists()
    assert not (tmp_path / "mAP" / "output" / "mAP.png").exists()
    assert main([str(tmp_path / "missing")]) == 2
    assert "folder not found" in capsys.readouterr().err
    # The real command line (one subprocess: importing the eecs598 package loads torch).
    proc = subprocess.run(
        [sys.executable, "-m", "eecs598.mean_ap", input_dir, "--output", str(tmp_path / "o"),
         "--min-overlap", "0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "83.33% = cat AP \nmAP = 83.33%\n"
    assert (tmp_path / "o" / "mAP.png").exists() and (tmp_path / "o" / "output.txt").exists()


# agreement with the per-detection reference


def write_random_input(root, seed, n_images=300, classes=("bird", "car", "cat", "dog", "person")):
    """Random files with difficult boxes, duplicates, near-threshold boxes and tied scores."""
    rng = random.Random(seed)
    gt, det = {}, {}
    for i in range(n_images):
        gt_lines, det_lines = [], []
        for _ in range(rng.randint(0, 4)):
            x1, y1 = rng.randint(0, 200), rng.randint(0, 200)
            box = [x1, y1, x1 + rng.randint(2, 60), y1 + rng.randint(2, 60)]
            cls = rng.choice(classes)
            gt_lines.append(f"{cls} {' '.join(map(str, box))}" + (" difficult" if rng.random() < 0.2 else ""))
            for _ in range(rng.choice([0, 1, 1, 2, 3])):  # jittered copies, some duplicates
                j = [v + rng.choice([0, 0, 1, -1, rng.uniform(-8, 8)]) for v in box]
                j = [round(v, 2) for v in j]
                c = cls if rng.random() < 0.9 else rng.choice(classes + ("zebra",))
                det_lines.append(f"{c} {rng.randint(0, 20) / 20} {' '.join(map(str, j))}")
        for _ in range(rng.randint(0, 6)):  # random boxes
            x1, y1 = rng.uniform(0, 200), rng.uniform(0, 200)
            box = [x1, y1, x1 + rng.uniform(1, 80), y1 + rng.uniform(1, 80)]
            det_lines.append(f"{rng.choice(classes)} {rng.randint(0, 20) / 20} "
                             + " ".join(f"{v:.2f}" for v in box))
        rng.shuffle(det_lines)
        gt[f"{i:06d}"], det[f"{i:06d}"] = gt_lines, det_lines
    return make_input(root, gt, det)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_reference_on_random_files(tmp_path, seed):
    input_dir = write_random_input(tmp_path, seed)
    ref_ap, ref_map = reference_map(input_dir)
    r = evaluate_map(input_dir, quiet=True)
    assert list(r.ap) == list(ref_ap) and len(ref_ap) == 5
    for name in ref_ap:
        assert abs(r.ap[name] - ref_ap[name]) <= 1e-12, name
    assert abs(r.map - ref_map) <= 1e-12
    assert 0.05 < r.map < 0.95  # the data exercise both TPs and FPs
    # The fast detection parser and the line-by-line one agree.
    det_dir = os.path.join(input_dir, "detection-results")
    paths = sorted(os.path.join(det_dir, n) for n in os.listdir(det_dir))
    texts = [open(p).read() for p in paths]
    fast, slow = _parse_detections_quickly(texts), _parse_lines_slowly(texts, paths, is_gt=False)
    assert fast is not None
    assert fast[0] == slow[0] and list(fast[1]) == slow[1]
    np.testing.assert_array_equal(fast[2], slow[2])
    assert len(read_box_files(det_dir, "det")) == sum(slow[0])


# input errors: bad numbers, bad min_overlap, byte-order marks, bytes that are not UTF-8
# (moved from the former tests/test_reliability.py; BOM and encoding: issue 10, item 6)


def _assert_message(error, *fragments):
    missing = [fragment for fragment in fragments if fragment not in str(error)]
    assert not missing, f"error message {str(error)!r} lacks {missing}"


@pytest.mark.parametrize("min_overlap", [1.5, -0.1, float("nan"), "0.5", None])
def test_evaluator_rejects_min_overlap_outside_0_1(tmp_path, min_overlap):
    input_dir = make_input(tmp_path, {"1": ["circle 0 0 9 9"]}, {"1": ["circle 0.9 0 0 9 9"]})
    assert evaluate_map(input_dir, quiet=True).map == 1.0  # the files themselves are fine
    with pytest.raises(ValueError) as error:
        evaluate_map(input_dir, min_overlap=min_overlap, quiet=True)
    _assert_message(error.value, "min_overlap", "[0, 1]", repr(min_overlap))


def test_evaluator_cli_reports_a_bad_min_overlap(tmp_path, capsys):
    input_dir = make_input(tmp_path / "input", {"1": ["circle 0 0 9 9"]}, {"1": ["circle 0.9 0 0 9 9"]})
    assert main([input_dir, "--min-overlap", "1.5", "--quiet", "--no-plot"]) == 2
    _assert_message(capsys.readouterr().err, "min_overlap", "[0, 1]", "1.5")


@pytest.mark.parametrize("gt_line, det_line, bad_folder, bad_token", [
    ("circle 0 0 9 9", "circle nan 0 0 9 9", "detection-results", "nan"),
    ("circle 0 0 9 9", "circle 0.9 0 0 inf 9", "detection-results", "inf"),
    ("circle 0 0 nan 9", "circle 0.9 0 0 9 9", "ground-truth", "nan"),
    ("circle 0 -inf 9 9", "circle 0.9 0 0 9 9", "ground-truth", "-inf"),
    ("circle 9 0 0 9", "circle 0.9 0 0 9 9", "ground-truth", "circle 9 0 0 9"),  # x2 < x1
    ("circle 0 9 9 0", "circle 0.9 0 0 9 9", "ground-truth", "circle 0 9 9 0"),  # y2 < y1
])
def test_evaluator_rejects_non_finite_numbers_and_inverted_gt_boxes(tmp_path, gt_line, det_line, bad_folder,
                                                                    bad_token):
    input_dir = make_input(tmp_path, {"000001": ["circle 20 20 40 40", gt_line]},
                           {"000001": ["circle 0.5 20 20 40 40", det_line]})
    with pytest.raises(ValueError) as error:
        evaluate_map(input_dir, quiet=True)
    _assert_message(error.value, os.path.join(input_dir, bad_folder, "000001.txt") + ":2", bad_token)


@pytest.mark.parametrize("where", ["ground-truth", "detection-results", "both"])
def test_a_leading_byte_order_mark_is_removed_with_a_note(tmp_path, capsys, where):
    """A UTF-8 BOM (what some Windows editors write first) used to become part of the first class name: a
    phantom class. By hand: two images, one correct detection each -> AP(circle) = AP(square) = 1, mAP 1.0.
    (Before, with a BOM in one of the two files, the ground truth and the detection of image 1 had different
    class names: AP 0 for that class and mAP 0.5.)"""
    bom = "\ufeff"
    gt = {"1": "circle 0 0 9 9\n", "2": "square 20 20 40 40\n"}
    det = {"1": "circle 0.9 0 0 9 9\n", "2": "square 0.8 20 20 40 40\n"}
    if where in ("ground-truth", "both"):
        gt["1"] = bom + gt["1"]
    if where in ("detection-results", "both"):
        det["1"] = bom + det["1"]
    input_dir = make_input(tmp_path, gt, det)
    with open(os.path.join(input_dir, "ground-truth", "1.txt"), "rb") as f:
        assert f.read(3) == (b"\xef\xbb\xbf" if where != "detection-results" else b"cir")  # a real BOM on disk
    result = evaluate_map(input_dir, quiet=True)
    assert result.ap == {"circle": 1.0, "square": 1.0} and result.map == 1.0
    err = capsys.readouterr().err
    assert err.count("byte-order mark") == (2 if where == "both" else 1)
    assert os.path.join(input_dir, where if where != "both" else "detection-results", "1.txt") in err


@pytest.mark.parametrize("data, line, byte", [
    (b"circle 0 0 9 9\ncaf\xe9 1 1 5 5\n", 2, "0xe9"),  # Latin-1 "cafe"
    ("circle 0 0 9 9\n".encode("utf-16"), 1, "0xff"),  # UTF-16, starting with its own BOM FF FE
])
def test_bytes_that_are_not_utf8_are_named_by_file_and_line(tmp_path, data, line, byte):
    input_dir = make_input(tmp_path, {"1": None}, {"1": ["circle 0.9 0 0 9 9"]})
    path = os.path.join(input_dir, "ground-truth", "1.txt")
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(ValueError) as error:
        evaluate_map(input_dir, quiet=True)
    _assert_message(error.value, f"{path}:{line}", byte, "UTF-8")
    assert not isinstance(error.value, UnicodeDecodeError)
