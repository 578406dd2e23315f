"""A checkpoint in train_fcos.py's format of a small random FCOS whose head gives spread scores and wide boxes,
for the export and demo-page tests (building one is ~100x faster than training one).

A fresh head gives every location nearly the same score and zero-size boxes, which would leave the score
threshold and NMS untested: its convs are re-drawn (Kaiming), the class and centerness layers amplified (scores
from ~0.2 to ~0.7, different in every photo) and the box layer biased to ~4 strides (neighbouring boxes overlap
with IoU ~0.6, so NMS suppresses).
"""
import torch

from eecs598 import reset_seed

CLASSES = ["circle", "square", "triangle"]
IMAGE_SIZE = 64


def save_checkpoint(path, image_size=IMAGE_SIZE, seed=0, **options):
    """Write the checkpoint at ``path`` (model options such as ``head_norm="group"`` go to FCOS); returns ``path``."""
    from eecs598.tools.detector import build_fcos
    from eecs598.train.checkpoint import CHECKPOINT_FORMAT, rng_state

    reset_seed(seed)
    model = build_fcos(len(CLASSES), 16, [16], pretrained=False, **options)
    with torch.no_grad():
        for conv in model.pred_net.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                conv.bias.zero_()
        head = model.pred_net
        head.pred_cls.weight.mul_(5.0)
        head.pred_ctr.weight.mul_(5.0)
        head.pred_cls.bias.fill_(-2.0)
        head.pred_box.weight.mul_(0.05)
        head.pred_box.bias.fill_(2.0)
    run_config = {"dataset": "shapes", "image_size": image_size, "fpn_channels": 16, "stem_channels": [16],
                  "class_names": CLASSES, **options}
    # Every entry train_detector writes (load_checkpoint refuses a checkpoint without them); no step was taken.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.save({"format": CHECKPOINT_FORMAT, "settings": {"max_iters": 0}, "state": {"iteration": 0},
                "model": model.state_dict(), "detector_state": None, "optimizer": optimizer.state_dict(),
                "ema": None, "history": {}, "rng": rng_state(), "run_config": run_config}, path)
    return path
