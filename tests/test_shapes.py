"""Tests of the procedurally generated Shapes dataset (eecs598.data.shapes) and its loader (a4_helper.ShapesDetection)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from a4_helper import DetectionJsonDataset, ShapesDetection
from eecs598.data.shapes import SHAPE_CLASSES, generate_shapes_dataset, render_shapes_image

SMALL = dict(num_train=6, num_val=3, image_size=64, min_size=10, max_size=32)


def _read(root, rel):
    with open(os.path.join(root, rel), "rb") as f:
        return f.read()


def _iou_matrix(boxes):
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    return inter / (area[:, None] + area[None, :] - inter)


def test_same_seed_gives_identical_files_and_pixels(tmp_path):
    a = generate_shapes_dataset(str(tmp_path / "a"), seed=3, quiet=True, **SMALL)
    b = generate_shapes_dataset(str(tmp_path / "b"), seed=3, quiet=True, **SMALL)
    for split, n in (("train", 6), ("val", 3)):
        assert _read(a, f"shapes_{split}.json") == _read(b, f"shapes_{split}.json")
        for i in range(n):
            rel = f"images/{split}/{i:06d}.jpg"
            assert _read(a, rel) == _read(b, rel)
            assert np.array_equal(np.asarray(Image.open(os.path.join(a, rel))),
                                  np.asarray(Image.open(os.path.join(b, rel))))
    c = generate_shapes_dataset(str(tmp_path / "c"), seed=4, quiet=True, **SMALL)
    assert _read(a, "shapes_train.json") != _read(c, "shapes_train.json")
    # Train and val are different images.
    assert _read(a, "images/train/000000.jpg") != _read(a, "images/val/000000.jpg")
    assert not [d for d in os.listdir(tmp_path) if ".partial-" in d], "temporary dirs removed"


def test_existing_dataset_is_reused_and_regenerated_when_parameters_change(tmp_path, capsys):
    root = str(tmp_path / "shapes")
    generate_shapes_dataset(root, quiet=True, **SMALL)
    image = os.path.join(root, "images", "train", "000000.jpg")
    os.utime(image, (1, 1))  # a marker: regeneration would write a new file
    generate_shapes_dataset(root, **SMALL)
    assert "skipping generation" in capsys.readouterr().out
    assert os.stat(image).st_mtime == 1
    generate_shapes_dataset(root, quiet=True, **dict(SMALL, num_train=7))
    assert os.stat(image).st_mtime != 1
    assert len(os.listdir(os.path.join(root, "images", "train"))) == 7
    with open(os.path.join(root, "shapes_meta.json")) as f:
        assert json.load(f)["params"]["num_train"] == 7
    # A missing marker file (interrupted run) means "not ready": regenerate.
    os.remove(os.path.join(root, "shapes_meta.json"))
    generate_shapes_dataset(root, **dict(SMALL, num_train=7))
    assert "Generated Shapes dataset" in capsys.readouterr().out


def test_layout_is_read_by_the_generic_loader(tmp_path):
    root = str(tmp_path / "shapes")
    dataset = ShapesDetection(root, "train", image_size=64, num_train=8, num_val=4, quiet=True)
    assert isinstance(dataset, DetectionJsonDataset)
    assert len(dataset) == 8 and len(ShapesDetection(root, "val", image_size=64, generate=False)) == 4
    assert dataset.idx_to_class == dict(enumerate(SHAPE_CLASSES))
    with open(os.path.join(root, "shapes_train.json")) as f:
        entries = json.load(f)
    for index, (path, objects) in enumerate(entries):
        image_path, image, gt = dataset[index]
        assert image.shape == (3, 64, 64) and gt.shape == (40, 5)
        # Generated at the loader's size: Resize/CenterCrop are the identity, boxes come through unchanged.
        expected = torch.tensor([o["xyxy"] + [SHAPE_CLASSES.index(o["name"])] for o in objects])
        torch.testing.assert_close(gt[: len(objects)], expected, rtol=0, atol=1e-4)
        assert (gt[len(objects):] == -1).all()
        assert image_path.endswith(path[len("./here/"):])


def test_missing_dataset_without_generation_says_how_to_generate(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate"):
        ShapesDetection(str(tmp_path / "nothing"), "train", generate=False)


def test_shapes_vary_in_class_size_position_colour_and_overlap():
    boxes_per_image, names, colours, counts = [], [], [], []
    for i in range(150):
        image, objects = render_shapes_image(np.random.default_rng([0, 0, i]), image_size=128, min_size=14,
                                             max_size=64, max_objects=6)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        boxes = np.array([o["xyxy"] for o in objects])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 127).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        boxes_per_image.append(boxes)
        names += [o["name"] for o in objects]
        counts.append(len(objects))
        for x1, y1, x2, y2 in boxes.astype(int):
            colours.append(image[(y1 + y2) // 2, (x1 + x2) // 2].astype(float))
        for o, box in zip(objects, boxes):
            if o["name"] == "circle":  # circles are drawn in square boxes (unless cut by the border);
                # coordinates are stored with 1 decimal, so the sides may differ by 2 x 0.05.
                assert abs((box[2] - box[0]) - (box[3] - box[1])) <= 0.1 + 1e-9 or box.max() == 127
    assert set(names) == set(SHAPE_CLASSES)
    assert min(counts) == 1 and max(counts) == 6
    sides = np.concatenate([np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) for b in boxes_per_image])
    assert sides.min() < 18 and sides.max() > 55 and sides.max() <= 64 + 1e-6
    centres = np.concatenate([(b[:, :2] + b[:, 2:]) / 2 for b in boxes_per_image])
    assert centres.min() < 20 and centres.max() > 108
    assert np.std(np.array(colours), axis=0).min() > 40, "object colours vary"
    overlapping = sum(int((np.triu(_iou_matrix(b), 1) > 0).any()) for b in boxes_per_image)
    assert overlapping >= 15, "some shapes overlap"
    worst = max(np.triu(_iou_matrix(b), 1).max() for b in boxes_per_image if len(b) > 1)
    assert worst <= 0.3 + 1e-9, "but no shape hides another one"


def test_train_and_val_come_from_the_same_distribution(tmp_path):
    root = generate_shapes_dataset(str(tmp_path / "s"), num_train=200, num_val=200, quiet=True)
    stats = {}
    for split in ("train", "val"):
        with open(os.path.join(root, f"shapes_{split}.json")) as f:
            entries = json.load(f)
        boxes = np.array([o["xyxy"] for _, objects in entries for o in objects])
        stats[split] = (len(boxes) / len(entries), np.median(boxes[:, 2] - boxes[:, 0]))
    assert abs(stats["train"][0] - stats["val"][0]) < 0.5
    assert abs(stats["train"][1] - stats["val"][1]) < 5


@pytest.mark.parametrize("kwargs", [dict(num_train=0), dict(image_size=16), dict(min_size=40, max_size=20),
                                    dict(image_size=64, max_size=80), dict(num_val=2.5)])
def test_invalid_parameters(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_shapes_dataset(str(tmp_path / "x"), **dict(dict(num_train=2, num_val=2, image_size=64,
                                                                min_size=10, max_size=32), **kwargs))


def test_temporaries_of_a_killed_generator_are_removed_at_the_next_start(tmp_path, capsys):
    """Issue 10, item 5: a generator killed mid-way used to leave its hidden temporary folder forever."""
    from kill_harness import TrainingChild

    root = tmp_path / "shapes"
    child = TrainingChild(generate_shapes_dataset, dict(root=str(root), num_train=400, num_val=10, image_size=64,
                                                        quiet=True), tmp_path / "generator")
    try:
        child.wait_until(lambda: any(".partial-" in name for name in os.listdir(tmp_path)), "temporary folder")
    finally:
        killed = child.kill()
    assert killed, "the generator finished before the kill"
    orphans = [name for name in os.listdir(tmp_path) if name.startswith(".shapes.partial-")]
    assert len(orphans) == 1
    (tmp_path / ".shapes-2.partial-abc").mkdir()  # another dataset's temporary: not ours to remove

    generate_shapes_dataset(str(root), **SMALL)
    assert "Removed 1 unfinished Shapes dataset folder(s)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [".shapes-2.partial-abc", "generator.log", "shapes"]
    assert len(os.listdir(root / "images" / "train")) == SMALL["num_train"]
