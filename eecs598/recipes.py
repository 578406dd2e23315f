"""Every recipe in one place, as plain data: dataset defaults, detector presets, named options, thresholds.

The command line (``train_fcos.py``), the Makefile (``make demo`` is ``--preset demo``), the benchmarks and
the model report read these dicts; nothing else defines a recipe.

- ``DATASETS``: per-dataset defaults of the command line (data, image size, batch, iterations, optimiser,
  model widths). Every value can be overridden by a flag. ``OWN_DATASETS``: the same for one's own data
  (``--dataset coco|voc-xml|yolo``).
- ``PRESETS``: named detector recipes, each a dict of four parts (``None`` means "off"):

  - ``"model"``: keyword options of ``one_stage_detector.FCOS`` (backbone, head norm, box loss...);
  - ``"train"``: ``train_detector`` settings applied on top of the dataset's (for every preset but
    ``course``, and only where the command line did not choose them);
  - ``"augment"``: on-device training augmentation (``eecs598.data.augment.random_flip_scale_batch``);
  - ``"tta"``: test-time augmentation at evaluation (``eecs598.models.tta.detect_with_tta``).

  ``course`` is the assignment's detector and recipe exactly; ``improved`` adds what the FCOS follow-ups
  (FCOS-plus, the journal version) and the Shapes runs found to help (GIoU, centre sampling 1.5, GroupNorm
  head, flip + scale jitter, a 200-iteration warm-up and clipping at 10); ``improved_tta`` adds flip TTA;
  ``demo`` is the CPU demo of ``make demo`` (the improved model without augmentation, 1600 iterations,
  flip TTA: measured in docs/tuning.md).
- ``FROM_SCRATCH``: the optimiser recipe for a randomly initialised trunk (plain SGD at the course's LR
  diverges there); the command line switches to it when the ImageNet weights cannot be loaded and no
  optimiser setting was chosen (:func:`from_scratch_overrides`).

Use::

    from eecs598.recipes import get_preset
    recipe = get_preset("improved")
    model = FCOS(20, 128, [128, 128], pretrained=True, **recipe["model"])
    history = train_detector(model, loader, max_iters=9000, learning_rate=8e-3, **recipe["train"])
"""
import copy
from typing import Any, Dict, Iterable

__all__ = ["DATASETS", "OWN_DATASETS", "PRESETS", "FROM_SCRATCH", "AUGMENT_CHOICES", "TTA_CHOICES", "SCORE_THRESH_MAP",
           "SCORE_THRESH_VIS", "NMS_THRESH", "get_preset", "from_scratch_overrides"]

# Per-dataset defaults of the command line.
DATASETS: Dict[str, Dict[str, Any]] = {
    # CPU demo from a random backbone (no ImageNet weights offline; with them, a 128 px toy task would not
    # show that the detector itself learns). AdamW + warm-up + clipping is the stable FROM_SCRATCH recipe;
    # loss_cls x2 because boxes are found early and classes learnt late (docs/tuning.md).
    "shapes": dict(data_dir="data/shapes", image_size=128, batch_size=8, max_iters=4000, learning_rate=2e-3,
                   weight_decay=1e-4, optimizer="adamw", warmup_iters=100, grad_clip_norm=5.0, ema_decay=None,
                   cls_loss_weight=2.0, fpn_channels=64, stem_channels=[64, 64], pretrained=False, device="cpu",
                   num_workers=0, num_train=3000, num_val=300),
    # The assignment's GPU setting (ImageNet backbone, plain SGD).
    "voc": dict(data_dir="data", image_size=224, batch_size=16, max_iters=9000, learning_rate=8e-3,
                weight_decay=1e-4, optimizer="sgd", warmup_iters=0, grad_clip_norm=None, ema_decay=None,
                cls_loss_weight=1.0, fpn_channels=128, stem_channels=[128, 128], pretrained=True, device="cuda",
                num_workers=4),
}
# One's own data (train_fcos.py --dataset coco|voc-xml|yolo; eecs598.data.formats, docs/data.md): the
# assignment's GPU setting, each with its folder. Kept apart from DATASETS, the course's datasets with their
# fixed class lists (the model report builds one model per DATASETS entry); the class list comes from the data.
OWN_DATASETS: Dict[str, Dict[str, Any]] = {
    kind: dict(DATASETS["voc"], data_dir=folder)
    for kind, folder in (("coco", "data/coco"), ("voc-xml", "data/VOCdevkit/VOC2007"), ("yolo", "data/yolo"))}

# A randomly initialised trunk (no ImageNet weights, e.g. offline): the course's plain SGD at lr 5e-3
# diverges to NaN within ~150 iterations there. AdamW adapts the step per parameter, the warm-up avoids
# the large first steps of a random network, and clipping stops rare loss spikes.
# Use as ``train_detector(model, loader, max_iters=..., **FROM_SCRATCH)``.
FROM_SCRATCH = dict(optimizer="adamw", learning_rate=2e-3, weight_decay=1e-4, warmup_iters=100,
                    grad_clip_norm=5.0)

# The assignment's detector: every value is the default of its FCOS argument.
_COURSE_MODEL = dict(backbone="regnet_x_400mf", backbone_weights=None, p6p7=False, head_norm=None, box_loss="l1",
                     center_sampling_radius=None, p2=False)
_IMPROVED_MODEL = dict(_COURSE_MODEL, head_norm="group", box_loss="giou", center_sampling_radius=1.5)

# Named choices of the command line's --augment and --tta.
AUGMENT_CHOICES: Dict[str, Any] = {
    "none": None,
    "flip": {"flip_prob": 0.5, "scale_range": None},
    "flip-scale": {"flip_prob": 0.5, "scale_range": (0.8, 1.25)},
}
TTA_CHOICES: Dict[str, Any] = {
    "none": None,
    "flip": {"flip": True, "scales": (1.0,)},
    "flip-scale": {"flip": True, "scales": (0.8, 1.0, 1.25)},
}

PRESETS: Dict[str, Dict[str, Any]] = {
    "course": {"model": dict(_COURSE_MODEL), "train": dict(warmup_iters=0, grad_clip_norm=None),
               "augment": None, "tta": None},
    # P6/P7 stay off: at 224 px no VOC box reaches P6's 256 px lower bound, so they only add cost.
    "improved": {"model": dict(_IMPROVED_MODEL), "train": dict(warmup_iters=200, grad_clip_norm=10.0),
                 "augment": dict(AUGMENT_CHOICES["flip-scale"]), "tta": None},
    "improved_tta": {"model": dict(_IMPROVED_MODEL), "train": dict(warmup_iters=200, grad_clip_norm=10.0),
                     "augment": dict(AUGMENT_CHOICES["flip-scale"]), "tta": dict(TTA_CHOICES["flip"])},
    # `make demo`: augmentation slows learning in so short a run (1700 iterations: 50.8% with, 71.8% without).
    "demo": {"model": dict(_IMPROVED_MODEL), "train": dict(warmup_iters=100, grad_clip_norm=5.0, max_iters=1600),
             "augment": None, "tta": dict(TTA_CHOICES["flip"])},
}

SCORE_THRESH_MAP = 0.05  # evaluation: low, so that the precision-recall curve reaches high recall
SCORE_THRESH_VIS = 0.4  # the notebook's threshold for drawing
NMS_THRESH = 0.5


def get_preset(name: str) -> Dict[str, Any]:
    """A deep copy of ``PRESETS[name]`` (safe to modify).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def from_scratch_overrides(optimizer: str, chosen: Iterable[str]) -> Dict[str, Any]:
    """What replaces the optimiser settings when the trunk starts from random weights.

    Args:
        optimizer: the optimiser the run would use (``"sgd"`` or ``"adamw"``).
        chosen: the setting names the user chose explicitly (e.g. on the command line).

    Returns:
        ``FROM_SCRATCH`` when the run would use plain SGD and the user chose none of the optimiser
        settings (``optimizer``, ``learning_rate``, ``warmup_iters``, ``grad_clip_norm``); else ``{}``.
    """
    if optimizer != "sgd" or {"optimizer", "learning_rate", "warmup_iters", "grad_clip_norm"} & set(chosen):
        return {}
    return dict(FROM_SCRATCH)
