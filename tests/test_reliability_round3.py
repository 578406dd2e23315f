"""Reliability, round 3 (issue 21, items 2, 3 and 7 and the obscure messages): hostile inputs against
``--eval-only``, weight files and checkpoints, FPN locations, dataset files, and a few command lines.

Every test here failed before its fix (docs/reliability.md lists what each fault now gets). Where the old
behaviour was a catastrophe (an image size of 100000 generating 18 GB images, 10^6 training images drawn
for an evaluation) the Shapes renderer is replaced by one that fails at once, so that the old code fails
the test quickly instead of exhausting the machine.
"""
import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import common
import eecs598.data.shapes
import eecs598.tools.train
import one_stage_detector
import train_fcos
from a4_helper import DetectionJsonDataset, ShapesDetection, load_checkpoint, train_detector
from eecs598.models.backbones import build_classifier, load_trunk_weights
from eecs598.tools import model_report
from eecs598.tools.detector import load_detector
from eecs598.train.checkpoint import CheckpointError, set_rng_state

TINY = ["--num-train", "8", "--num-val", "4", "--image-size", "64", "--max-iters", "1", "--batch-size", "4",
        "--fpn-channels", "16", "--stem-channels", "16", "--log-period", "1", "--no-progress", "--threads", "1"]


def _cli(argv, capsys):
    """``train_fcos.cli`` -> (exit status, stderr); argparse's own exits count as statuses."""
    try:
        status = train_fcos.cli(argv)
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err


def _one_or_two_lines(err: str) -> bool:
    return err.startswith("train_fcos.py: error: ") and 1 <= len(err.strip().splitlines()) <= 2 \
        and "Traceback" not in err


@pytest.fixture
def no_rendering(monkeypatch):
    """Any Shapes image drawn fails the test at once (what the old code did here took minutes or 18 GB)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a Shapes image was generated")

    monkeypatch.setattr(eecs598.data.shapes, "render_shapes_image", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny Shapes run: ``(run directory, data directory)``; tests copy its checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    run_dir, data_dir = root / "run", root / "shapes"
    train_fcos.main(["--dataset", "shapes", "--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY])
    return run_dir, data_dir


def _resaved(trained, tmp_path, change) -> str:
    """A copy of the trained checkpoint, changed by ``change(checkpoint)`` and saved again (valid CRCs), in a
    run directory of its own; returns that run directory."""
    checkpoint = torch.load(trained[0] / "checkpoint.pt", weights_only=True)
    change(checkpoint)
    run_dir = tmp_path / "edited-run"
    run_dir.mkdir()
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    return str(run_dir)


# ==================================================================================================
# Item 2: --eval-only validates the checkpoint's saved settings like the command line's, builds only val
# ==================================================================================================

@pytest.mark.parametrize("key, value, flag", [
    ("image_size", 100000, "--image-size"),  # 18 GB and killed, before
    ("image_size", 16, "--image-size"),
    ("num_val", 0, "--num-val"),
    ("stem_channels", 16, "--stem-channels"),
    ("fpn_channels", -1, "--fpn-channels"),
    ("dataset", "imagenet", "--dataset"),
    ("box_loss", "huber", "--box-loss"),
])
def test_eval_only_refuses_saved_settings_the_command_line_refuses(trained, tmp_path, capsys, no_rendering, key,
                                                                    value, flag):
    run_dir = _resaved(trained, tmp_path, lambda c: c["run_config"].update({key: value}))
    data_dir = tmp_path / "fresh-data"
    status, err = _cli(["--dataset", "shapes", "--run-dir", run_dir, "--data-dir", str(data_dir), *TINY,
                        "--eval-only"], capsys)
    assert status == 2 and _one_or_two_lines(err), err
    assert flag in err and (repr(value) in err or str(value) in err), err
    assert os.path.join(run_dir, "checkpoint.pt") in err, "the message names the checkpoint"
    assert not data_dir.exists(), "data was generated before the refusal"


def test_eval_only_builds_only_the_val_split(trained, tmp_path, monkeypatch):
    # A checkpoint whose run claims 10^6 training images (allowed) must not draw them to evaluate 4 val images.
    run_dir = _resaved(trained, tmp_path, lambda c: c["run_config"].update(num_train=10 ** 6,
                                                                          data_dir=str(tmp_path / "val-only")))
    drawn = []
    real_render = eecs598.data.shapes.render_shapes_image

    def counting_render(*args, **kwargs):
        drawn.append(1)
        if len(drawn) > 20:
            raise AssertionError("more images drawn than the 4 val images")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(eecs598.data.shapes, "render_shapes_image", counting_render)
    metrics = train_fcos.main(["--dataset", "shapes", "--run-dir", run_dir, *TINY, "--eval-only"])
    assert len(drawn) == 4 and metrics["num_val_images"] == 4 and metrics["num_train_images"] is None
    root = tmp_path / "val-only"
    assert sorted(os.listdir(root / "images")) == ["val"] and not (root / "shapes_train.json").exists()
    # The val images are the full dataset's own: the same mAP as the trained run's evaluation.
    with open(trained[0] / "metrics.json") as f:
        assert metrics["mAP"] == pytest.approx(json.load(f)["mAP"], abs=1e-12)
    assert not [d for d in os.listdir(tmp_path) if ".partial-" in d], "no temporary folder left behind"


def test_eval_only_reuses_the_full_dataset_without_drawing_anything(trained, capsys, no_rendering):
    run_dir, data_dir = trained
    metrics = train_fcos.main(["--dataset", "shapes", "--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY,
                               "--eval-only"])
    assert metrics["num_val_images"] == 4 and "skipping generation" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("--image-size", "100000"), ("--fpn-channels", "0"),
                                           ("--stem-channels", "0"), ("--num-train", "10000000")])
def test_the_command_line_refuses_sizes_no_machine_can_hold(tmp_path, capsys, no_rendering, option, value):
    data_dir = tmp_path / "shapes"
    status, err = _cli(["--dataset", "shapes", "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "run"),
                        *TINY, option, value], capsys)
    assert status == 2 and _one_or_two_lines(err) and option in err and value in err, err
    assert not data_dir.exists()


def test_shapes_at_the_smallest_image_size_the_command_line_allows(tmp_path):
    # --image-size 32 passes the command line's check, but the generator's shapes went up to 64 px: a ValueError
    # traceback. Now no shape is larger than the image.
    args = train_fcos.parse_args(["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), *TINY,
                                  "--image-size", "32"])
    train_set, val_set = eecs598.tools.train.build_datasets(args)
    _, image, gt = train_set[0]
    boxes = gt[gt[:, 4] >= 0]
    assert image.shape == (3, 32, 32) and len(boxes) >= 1 and len(val_set) == 4
    assert ((boxes[:, 2] - boxes[:, 0]) <= 32).all() and (boxes[:, :4] >= 0).all() and (boxes[:, :4] <= 32).all()


def test_shapes_generation_shows_progress(tmp_path, capsys):
    eecs598.data.shapes.generate_shapes_dataset(str(tmp_path / "shapes"), num_train=3, num_val=2, image_size=64,
                                                min_size=10, max_size=32)
    captured = capsys.readouterr()
    assert "Generating Shapes" in captured.err and "5/5" in captured.err, captured.err


# ==================================================================================================
# Item 3: weights are checked for dtype and finiteness when loaded, naming the file
# ==================================================================================================

def _first_float_key(state_dict):
    return next(k for k, v in state_dict.items() if v.is_floating_point() and v.numel() > 1)


def _poison(state_dict, key, count, value):
    """Set the first ``count`` values of ``state_dict[key]`` to ``value`` (a changed copy of the tensor)."""
    tensor = state_dict[key].clone()
    flat = tensor.reshape(-1).clone()
    flat[:count] = value
    state_dict[key] = flat.reshape(tensor.shape)


def test_a_checkpoint_resaved_with_nan_weights_is_refused(trained, tmp_path, capsys):
    key = _first_float_key(torch.load(trained[0] / "checkpoint.pt", weights_only=True)["model"])
    run_dir = _resaved(trained, tmp_path, lambda c: _poison(c["model"], key, 3, float("nan")))
    path = os.path.join(run_dir, "checkpoint.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert path in str(error.value) and key in str(error.value) and "3 of" in str(error.value)
    status, err = _cli(["--dataset", "shapes", "--run-dir", run_dir, *TINY, "--eval-only"], capsys)
    assert status == 2 and _one_or_two_lines(err) and path in err and "NaN" in err, err


def test_a_weight_average_with_infinities_is_refused(trained, tmp_path):
    def poison(checkpoint):
        checkpoint["ema"] = {k: v.clone() for k, v in checkpoint["model"].items()}
        _poison(checkpoint["ema"], _first_float_key(checkpoint["ema"]), 1, float("inf"))

    run_dir = _resaved(trained, tmp_path, poison)
    with pytest.raises(CheckpointError, match="weight average holds NaN or infinite"):
        load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))


def test_a_checkpoint_with_integer_weights_is_refused_by_load_detector(trained, tmp_path):
    def truncate(checkpoint):
        checkpoint["model"] = {k: v.to(torch.int64) for k, v in checkpoint["model"].items()}

    path = os.path.join(_resaved(trained, tmp_path, truncate), "checkpoint.pt")
    with pytest.raises(CheckpointError) as error:
        load_detector(path)
    assert path in str(error.value) and "int64 where the model holds float32" in str(error.value)


@pytest.fixture(scope="module")
def resnet18_files(tmp_path_factory):
    """torchvision's ResNet-18 state dict saved as int64, and with every float NaN."""
    root = tmp_path_factory.mktemp("trunks")
    state = torchvision.models.resnet18().state_dict()
    int64, nan = root / "resnet18-int64.pth", root / "resnet18-nan.pth"
    torch.save({k: v.to(torch.int64) for k, v in state.items()}, int64)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}, nan)
    return {"int64": str(int64), "nan": str(nan)}


@pytest.mark.parametrize("kind, words", [("int64", "int64 where the model holds float32"), ("nan", "NaN")])
def test_backbone_weights_of_the_wrong_dtype_or_not_finite_are_refused(resnet18_files, kind, words):
    path = resnet18_files[kind]
    with pytest.raises(ValueError) as error:
        load_trunk_weights(build_classifier("resnet18"), "resnet18", path)
    assert path in str(error.value) and words in str(error.value)


def test_a_float16_trunk_file_still_loads_exactly(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    classifier = build_classifier("resnet18")
    load_trunk_weights(classifier, "resnet18", str(path))
    assert torch.equal(classifier.state_dict()["conv1.weight"], state["conv1.weight"].half().float())


@pytest.mark.parametrize("kind", ["int64", "nan"])
def test_the_command_line_answers_a_bad_backbone_file_before_any_data(resnet18_files, tmp_path, capsys, kind):
    data_dir = tmp_path / "shapes"
    status, err = _cli(["--dataset", "shapes", "--data-dir", str(data_dir), "--run-dir", str(tmp_path / "run"),
                        *TINY, "--backbone", "resnet18", "--backbone-weights", resnet18_files[kind]], capsys)
    assert status == 2 and _one_or_two_lines(err), err
    assert f"--backbone-weights {resnet18_files[kind]}" in err and "random" not in err, err
    assert not data_dir.exists()


# ==================================================================================================
# Item 7: FPN locations, dataset boxes, class lists
# ==================================================================================================

SHAPE = {"p3": (1, 8, 3, 2)}


@pytest.mark.parametrize("shapes, strides, dtype, words", [
    (SHAPE, {"p3": 0}, torch.float32, "stride of level 'p3' must be a finite number > 0"),
    (SHAPE, {"p3": float("nan")}, torch.float32, "stride of level 'p3'"),
    (SHAPE, {"p3": -8}, torch.float32, "stride of level 'p3'"),
    (SHAPE, {"p3": True}, torch.float32, "stride of level 'p3'"),
    (SHAPE, {"p4": 16}, torch.float32, "level 'p3' has no stride"),
    ({"p3": (1, 8, 2.5, 2)}, {"p3": 8}, torch.float32, "shape of level 'p3' must end in \\(H, W\\), ints >= 0"),
    ({"p3": (1, 8, -2, 2)}, {"p3": 8}, torch.float32, "shape of level 'p3'"),
    ({"p3": (4,)}, {"p3": 8}, torch.float32, "shape of level 'p3'"),
    (SHAPE, {"p3": 8}, torch.int64, "dtype must be a floating-point torch dtype"),
])
def test_fpn_locations_refuse_inputs_that_give_wrong_locations(shapes, strides, dtype, words):
    with pytest.raises((ValueError, TypeError), match=f"get_fpn_location_coords: (the )?{words}"):
        common.get_fpn_location_coords(shapes, strides, dtype=dtype)


def test_fpn_locations_still_accept_sizes_and_strides_of_every_integer_kind():
    # torch.Size, NumPy integers, float strides: the contract's centres (hand-computed: stride * (i + 0.5)).
    got = common.get_fpn_location_coords({"p3": torch.Size([1, 8, 2, 1]), "p4": (1, 8, np.int64(1), 2)},
                                         {"p3": 8.0, "p4": np.int64(16)}, dtype=torch.float64)
    assert got["p3"].tolist() == [[4.0, 4.0], [4.0, 12.0]] and got["p3"].dtype == torch.float64
    assert got["p4"].tolist() == [[8.0, 8.0], [24.0, 8.0]]


def _json_dataset(tmp_path, boxes, size=(64, 48), class_names=("cat", "dog")):
    Image.new("RGB", size, (90, 120, 30)).save(tmp_path / "a.jpg")
    objects = [{"name": "cat", "xyxy": box} for box in boxes]
    (tmp_path / "set.json").write_text(json.dumps([["./here/a.jpg", objects]]))
    return DetectionJsonDataset(str(tmp_path), "set.json", list(class_names), image_size=32)


@pytest.mark.parametrize("box", [[70, 10, 90, 20], [10, 50, 20, 60], [-20, 5, -1, 9], [5, -30, 9, 0]])
def test_a_box_wholly_outside_its_image_is_refused_naming_the_entry(tmp_path, box):
    with pytest.raises(ValueError) as error:
        _json_dataset(tmp_path, [[1, 1, 10, 10], box])
    message = str(error.value)
    assert "entry 0" in message and "object 1" in message and "64x48" in message and "outside" in message, message


def test_a_box_partly_outside_its_image_is_still_clamped_as_before(tmp_path):
    dataset = _json_dataset(tmp_path, [[40, 0, 80, 48]], size=(64, 48))  # crosses the right border
    _, _, gt = dataset[0]
    # By hand, torchvision's rules: Resize(32) of 64x48 gives int(32 * 64 / 48) = 42 x 32, CenterCrop(32) cuts
    # round((42 - 32) / 2) = 5 px on the left; x1 = 40 * 42 / 64 - 5 = 21.25, x2 = 80 * 42 / 64 - 5 = 47.5 -> 32.
    assert gt[0, :4].tolist() == pytest.approx([21.25, 0, 32, 32], abs=1e-5)


def test_a_class_list_that_repeats_a_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"class_names must not repeat a name.*'cat' at \[0, 2\]"):
        _json_dataset(tmp_path, [[1, 1, 10, 10]], class_names=("cat", "dog", "cat"))


# ==================================================================================================
# Obscure errors, now in the code's own words
# ==================================================================================================

@pytest.mark.parametrize("build", [lambda: one_stage_detector.FCOSPredictionNetwork(5, 16, 16),
                                   lambda: one_stage_detector.FCOS(5, 16, 16, pretrained=False)])
def test_stem_channels_given_as_an_int_says_to_pass_a_list(build):
    with pytest.raises(ValueError, match=r"stem_channels must be a list .* got 16: an int, not a list; for one "
                                         r"conv of 16 channels pass \[16\]"):
        build()


def test_a_negative_shapes_seed_is_refused_in_words(tmp_path):
    root = tmp_path / "shapes"
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        ShapesDetection(str(root), seed=-1, num_train=2, num_val=2, image_size=64, quiet=True)
    assert not root.exists()


def test_a_checkpoint_without_its_rng_state_is_refused_naming_the_entry(trained, tmp_path):
    run_dir = _resaved(trained, tmp_path, lambda c: c.pop("rng"))
    path = os.path.join(run_dir, "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"'rng' entry \(the random-number states a resume restores\)"):
        load_checkpoint(path)
    # A resume stops at that message too (it was a KeyError: 'rng' after the weights had been loaded).
    dataset = ShapesDetection(str(trained[1]), "train", image_size=64, generate=False)
    model = one_stage_detector.FCOS(5, 16, [16], pretrained=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    with pytest.raises(CheckpointError, match="rng"):
        train_detector(model, loader, max_iters=2, checkpoint_path=path, resume=True, progress=False, plot=False,
                       optimizer="adamw", learning_rate=2e-3)


def test_set_rng_state_refuses_what_rng_state_did_not_make():
    with pytest.raises(ValueError, match="set_rng_state: the state has no complete 'python' state"):
        set_rng_state({"torch": torch.get_rng_state()})


def test_a_diverging_run_is_answered_with_its_likely_cause_not_the_backbone(tmp_path, capsys, monkeypatch):
    def diverge(*args, **kwargs):
        raise FloatingPointError("train_detector: non-finite loss at iteration 194: loss_cls=nan. The detector holds "
                                 "exactly the weights after iteration 193. From a random backbone use **FROM_SCRATCH.")

    monkeypatch.setattr(eecs598.tools.train, "train_detector", diverge)
    monkeypatch.setattr(eecs598.tools.train, "build_fcos", _pretrained_tiny_fcos)
    status, err = _cli(["--dataset", "shapes", "--data-dir", str(tmp_path / "shapes"), "--run-dir",
                        str(tmp_path / "run"), *TINY, "--image-size", "32", "--optimizer", "sgd", "--lr", "0.008"],
                       capsys)
    assert status == 2 and _one_or_two_lines(err), err
    assert "training diverged: non-finite loss at iteration 194" in err
    assert "--image-size 32 is far below the 128 px" in err and "none reaches P4/P5" in err, err
    assert "random" not in err, "the backbone was pretrained: it is not to blame"


def _pretrained_tiny_fcos(*args, **kwargs):
    """``build_fcos``, as if the ImageNet weights had loaded (the tests have no network)."""
    model = one_stage_detector.FCOS(5, 16, [16], pretrained=False)
    model.backbone.weights_source = "imagenet:(test)"
    return model


def test_divergence_advice_names_a_random_backbone_only_when_it_is_one():
    from argparse import Namespace

    voc = dict(dataset="voc", optimizer="sgd", learning_rate=0.008)
    advice = eecs598.tools.train.divergence_advice
    assert advice(Namespace(**voc, pretrained_loaded=False, image_size=224)).startswith("The backbone is random")
    both = advice(Namespace(**voc, pretrained_loaded=False, image_size=32))
    assert "random" in both and "--image-size 32 is far below the 224 px" in both
    assert "--image-size 96" in advice(Namespace(**voc, pretrained_loaded=True, image_size=96))
    assert "P4/P5" not in advice(Namespace(**voc, pretrained_loaded=True, image_size=96))
    plain = advice(Namespace(**voc, pretrained_loaded=True, image_size=224))
    assert plain.startswith("--optimizer sgd at --lr 0.008") and "random" not in plain


def test_model_report_refuses_an_unknown_device_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        model_report.main(["--device", "foo"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--device must be cpu, cuda or cuda:N (a GPU index), got 'foo'" in err, err
    assert "Traceback" not in err and "xla" not in err
