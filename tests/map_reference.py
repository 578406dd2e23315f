"""Reference mAP: Cartucho/mAP ``main.py``'s algorithm restated one detection at a time.

Plain Python, no NumPy, kept literal so that it is obviously correct; ``eecs598.evaluation.mean_ap`` must
agree with it. Differences from ``main.py``: files are parsed once (not once per class), bad input
is not diagnosed, blank lines are skipped, and precision is 0 where TP + FP == 0 (``main.py``
divides 0/0 there; the value cannot change AP, see ``eecs598.evaluation.mean_ap._class_pr``).
"""
import glob
import os


def _read(path):
    """Token lists of the non-blank lines of a file."""
    with open(path) as f:
        return [line.split() for line in f.read().split("\n") if line.strip()]


def _voc_ap(rec, prec):
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def read_input(input_dir):
    """Parse ``input_dir/{ground-truth,detection-results}`` -> ``(ground_truth, detections)``."""
    gt_paths = sorted(glob.glob(os.path.join(input_dir, "ground-truth", "*.txt")))
    dr_paths = sorted(glob.glob(os.path.join(input_dir, "detection-results", "*.txt")))

    ground_truth = {}  # file_id -> list of GT objects in line order
    for path in gt_paths:
        file_id = os.path.basename(path)[:-4]
        ground_truth[file_id] = []
        for tokens in _read(path):
            difficult = len(tokens) == 6 and tokens[5] == "difficult"
            ground_truth[file_id].append({"class_name": tokens[0], "difficult": difficult,
                                          "bbox": [float(x) for x in tokens[1:5]]})

    detections = []  # (class, confidence, file_id, bbox) in file order, then line order
    for path in dr_paths:
        file_id = os.path.basename(path)[:-4]
        for tokens in _read(path):
            detections.append((tokens[0], float(tokens[1]), file_id, [float(x) for x in tokens[2:6]]))
    return ground_truth, detections


def reference_ap(ground_truth, detections, min_overlap=0.5):
    """Return ``(ap_per_class: dict, mAP: float)`` for the output of ``read_input``."""
    gt_counter_per_class = {}
    for objects in ground_truth.values():
        for obj in objects:
            if not obj["difficult"]:
                gt_counter_per_class[obj["class_name"]] = gt_counter_per_class.get(obj["class_name"], 0) + 1
    gt_classes = sorted(gt_counter_per_class)

    used = set()  # (file_id, line index) of GT boxes already matched; Cartucho's "used" flag
    ap_dictionary = {}
    for class_name in gt_classes:
        dr_data = [d for d in detections if d[0] == class_name]
        dr_data.sort(key=lambda d: d[1], reverse=True)  # stable
        tp = [0] * len(dr_data)
        fp = [0] * len(dr_data)
        for idx, (_, _, file_id, bb) in enumerate(dr_data):
            ovmax = -1
            gt_match = None
            for line_index, obj in enumerate(ground_truth[file_id]):
                if obj["class_name"] == class_name:
                    bbgt = obj["bbox"]
                    bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
                    iw = bi[2] - bi[0] + 1
                    ih = bi[3] - bi[1] + 1
                    if iw > 0 and ih > 0:
                        ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                              + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
                        ov = iw * ih / ua
                        if ov > ovmax:
                            ovmax = ov
                            gt_match = (file_id, line_index)
            if ovmax >= min_overlap:
                if not ground_truth[file_id][gt_match[1]]["difficult"]:
                    if gt_match not in used:
                        tp[idx] = 1
                        used.add(gt_match)
                    else:
                        fp[idx] = 1
            else:
                fp[idx] = 1
        for i in range(1, len(dr_data)):  # cumulative sums
            tp[i] += tp[i - 1]
            fp[i] += fp[i - 1]
        rec = [t / gt_counter_per_class[class_name] for t in tp]
        prec = [t / (t + f) if t + f > 0 else 0.0 for t, f in zip(tp, fp)]
        ap_dictionary[class_name] = _voc_ap(rec, prec)
    mean_ap = sum(ap_dictionary.values()) / len(ap_dictionary)
    return ap_dictionary, mean_ap


def reference_map(input_dir, min_overlap=0.5):
    """Return ``(ap_per_class: dict, mAP: float)`` for ``input_dir/{ground-truth,detection-results}``."""
    return reference_ap(*read_input(input_dir), min_overlap=min_overlap)
