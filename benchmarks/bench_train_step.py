"""Benchmark one FCOS training iteration: ours (one_stage_detector.FCOS) vs torchvision's FCOS (CPU).

What it measures: wall time of one training step (forward with losses, backward, SGD step) on a
batch of 16 random 224x224 images with 1-5 random GT boxes each (3 on average), for
  * ours:         ``one_stage_detector.FCOS(20, 128, [128, 128], pretrained=False)``;
  * torchvision:  ``torchvision.models.detection.FCOS`` on the SAME RegNetX-400MF trunk (random
                  init, nodes trunk_output.block2/3/4), a 3-level ``FeaturePyramidNetwork``
                  (128 channels, no extra blocks / no P6-P7) and an ``FCOSHead`` of the same
                  width and depth (128 channels, num_convs=2). Its head has a GroupNorm after
                  every stem conv, ours has none, so a second variant replaces those GroupNorms by
                  ``nn.Identity`` (same convs and FLOPs as ours; the fair comparison). Its
                  transform is set up not to resize (min_size = max_size = 224) and to normalise
                  with mean 0 / std 1 (the images are already normalised); one anchor per location,
                  sizes 8/16/32 = the strides.
Both get the same images and boxes. It also times our target assignment + loss alone (the code of
FCOS.forward after the prediction head, forward and backward, run with the network's outputs
cached) and reports its share of our step.

Goals: ratio ours / torchvision <= 1.0; target assignment + loss < 10% of our step.

Rerun from the repository root:  python benchmarks/bench_train_step.py  [--repeats R] [--threads N]
"""
import argparse
import copy

import torch
from torch import nn
from torchvision import models
from torchvision.models.detection import FCOS as TorchvisionFCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FeaturePyramidNetwork

from _timing import describe_machine, load_average, median, paired_ratio, set_threads, time_interleaved

from common import get_fpn_location_coords  # noqa: E402  (REPO put on sys.path by _timing)
from one_stage_detector import (  # noqa: E402
    FCOS,
    fcos_get_deltas_from_locations,
    fcos_make_centerness_targets,
    match_locations_to_gt_batched,
)

NUM_CLASSES, CHANNELS, BATCH, SIZE = 20, 128, 16, 224


# -- torchvision's FCOS on our backbone -------------------------------------------------------------


class _RegNetFPN(nn.Module):
    """RegNetX-400MF trunk (c3-c5) + torchvision's FeaturePyramidNetwork (p3-p5), as torchvision's
    detection models expect a backbone: ``out_channels`` attribute, dict of feature maps."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = create_feature_extractor(
            models.regnet_x_400mf(weights=None),
            {"trunk_output.block2": "p3", "trunk_output.block3": "p4", "trunk_output.block4": "p5"},
        )
        self.fpn = FeaturePyramidNetwork([64, 160, 400], channels)  # no extra_blocks: no P6/P7
        self.out_channels = channels

    def forward(self, images):
        return self.fpn(self.body(images))


def build_torchvision_fcos(group_norm: bool, **fcos_kwargs) -> TorchvisionFCOS:
    """torchvision's FCOS on ``_RegNetFPN``; ``group_norm=False`` replaces the head's GroupNorms
    by ``nn.Identity`` (then its convs are exactly ours). ``fcos_kwargs`` go to ``FCOS``."""
    head = FCOSHead(CHANNELS, num_anchors=1, num_classes=NUM_CLASSES, num_convs=2)
    if not group_norm:
        for stem in (head.classification_head.conv, head.regression_head.conv):
            for index, layer in enumerate(stem):
                if isinstance(layer, nn.GroupNorm):
                    stem[index] = nn.Identity()
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,)), aspect_ratios=((1.0,),) * 3)
    return TorchvisionFCOS(
        _RegNetFPN(CHANNELS), NUM_CLASSES, min_size=SIZE, max_size=SIZE,
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], anchor_generator=anchors, head=head,
        **fcos_kwargs,
    )


# -- our post-head code alone -----------------------------------------------------------------------


class _CachedBackbone(nn.Module):
    """Stands in for DetectorBackboneWithFPN: returns precomputed FPN features."""

    def __init__(self, features, strides):
        super().__init__()
        self.features, self.strides = features, strides

    @property
    def fpn_strides(self):
        return self.strides

    def forward(self, images):
        return self.features


class _CachedHead(nn.Module):
    """Stands in for FCOSPredictionNetwork: returns precomputed outputs (leaf tensors with grad)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, features):
        return self.outputs


def make_batch(seed: int = 0):
    """Random normalised images and 1-5 random boxes per image (ours: (B, 5, 5) padded with -1;
    torchvision: a list of {"boxes", "labels"} dicts)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator)
    gt_boxes = torch.full((BATCH, 5, 5), -1.0)
    targets = []
    for i in range(BATCH):
        count = int(torch.randint(1, 6, (1,), generator=generator))
        xy = torch.rand(count, 2, generator=generator) * (SIZE - 40)
        wh = 16 + torch.rand(count, 2, generator=generator) * (SIZE - xy - 16)
        boxes = torch.cat([xy, xy + wh], dim=1).round()
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
        gt_boxes[i, :count, :4], gt_boxes[i, :count, 4] = boxes, labels.float()
        targets.append({"boxes": boxes, "labels": labels})
    return images, gt_boxes, targets


def make_step(model, inputs):
    """One SGD training step of ``model`` on ``inputs()`` as a closure."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step():
        losses = model(*inputs())
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def training_steps(ours, images, gt_boxes, targets):
    """The contenders: our FCOS (channels-last by construction), torchvision's FCOS with its GroupNorm head,
    with Identity norms (the same convs as ours), and the latter with channels-last weights too."""
    tv_gn, tv_plain = build_torchvision_fcos(True).train(), build_torchvision_fcos(False).train()
    # torchvision's transform must hand the network the images unchanged (no resize, no padding).
    batched, _ = tv_gn.transform(list(images), copy.deepcopy(targets))
    assert batched.tensors.shape == images.shape and torch.equal(batched.tensors, images)
    # (torchvision's transform re-batches the images as NCHW, so only its weights can be converted.)
    tv_plain_nhwc = copy.deepcopy(tv_plain).to(memory_format=torch.channels_last)
    return {
        "ours": make_step(ours, lambda: (images, gt_boxes)),
        "torchvision (GroupNorm head)": make_step(tv_gn, lambda: (list(images), targets)),
        "torchvision (Identity norm)": make_step(tv_plain, lambda: (list(images), targets)),
        "torchvision (Identity norm), channels_last": make_step(tv_plain_nhwc, lambda: (list(images), targets)),
    }, tv_plain


def pieces_outside_the_network(ours, tv_plain, images, gt_boxes, targets):
    """Closures timing what surrounds the network: our targets + loss (FCOS.forward with cached backbone and
    head outputs), our assignment alone, and torchvision's transform + anchors + loss."""
    with torch.no_grad():
        features = ours.backbone(images)
        head_outputs = ours.pred_net(features)
    head_outputs = [{k: v.detach().requires_grad_() for k, v in d.items()} for d in head_outputs]
    post_head = FCOS(NUM_CLASSES, CHANNELS, [CHANNELS, CHANNELS], pretrained=False).train()
    post_head.backbone = _CachedBackbone(features, ours.backbone.fpn_strides)
    post_head.pred_net = _CachedHead(head_outputs)
    strides = ours.backbone.fpn_strides
    locations = get_fpn_location_coords({k: v.shape for k, v in features.items()}, strides)
    tv_images, _ = tv_plain.transform(list(images), targets)
    tv_features = list(tv_plain.backbone(tv_images.tensors).values())
    with torch.no_grad():
        tv_head_outputs = {k: v.detach().requires_grad_() for k, v in tv_plain.head(tv_features).items()}
    tv_features = [f.detach() for f in tv_features]

    def targets_and_loss():
        sum(post_head(images, gt_boxes).values()).backward()

    def assignment_only():
        matched = match_locations_to_gt_batched(locations, strides, gt_boxes)
        deltas = [fcos_get_deltas_from_locations(locations[k], matched[k], strides[k]) for k in locations]
        return [fcos_make_centerness_targets(d) for d in deltas]

    def torchvision_rest():
        image_list, tv_targets = tv_plain.transform(list(images), targets)
        anchors = tv_plain.anchor_generator(image_list, tv_features)
        num_anchors_per_level = [f.size(2) * f.size(3) for f in tv_features]
        sum(tv_plain.compute_loss(tv_targets, tv_head_outputs, anchors, num_anchors_per_level).values()).backward()

    return {"ours: targets + loss": targets_and_loss, "  of which matching, deltas, centerness": assignment_only,
            "torchvision: transform, anchors, loss": torchvision_rest}


def report(times, steps, pieces, repeats: int) -> None:
    t = {name: median(values) for name, values in times.items()}
    print(f"training steps: median of {repeats} interleaved repeats after a warm-up "
          f"(load average now {load_average()}); ratio = median over rounds of ours / this")
    print(f"{'':45s}{'seconds':>9s}{'ratio':>8s}")
    ratio = {name: paired_ratio(times["ours"], times[name]) if name != "ours" else 1.0 for name in steps}
    for name in steps:
        print(f"{name:45s}{t[name]:9.3f}{ratio[name]:8.2f}")
    print(f"\noutside the network (forward and backward), median of {10 * repeats} repeats:")
    for name in pieces:
        print(f"  {name:45s}{1e3 * t[name]:8.1f} ms")
    share = t["ours: targets + loss"] / t["ours"]
    print(f"our target assignment + loss: {100 * share:.1f}% of our step")
    worst = max(ratio["torchvision (GroupNorm head)"], ratio["torchvision (Identity norm)"])
    print(f"\ngoal ratio ours / torchvision <= 1.0: {ratio['torchvision (GroupNorm head)']:.2f} vs torchvision's "
          f"GroupNorm head, {ratio['torchvision (Identity norm)']:.2f} vs the same head without norm (the same convs "
          "as ours): " + ("met" if worst <= 1.0 else "NOT met"))
    print(f"goal target assignment + loss < 10% of our step: {100 * share:.1f}%: "
          + ("met" if share < 0.10 else "NOT met"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) first (default: torch's default; 1 on a busy machine)")
    args = parser.parse_args()
    set_threads(args.threads)
    print(__doc__.split("\n")[0])
    print(describe_machine())
    torch.manual_seed(0)
    images, gt_boxes, targets = make_batch()
    print(f"batch {BATCH} x 3 x {SIZE} x {SIZE}, {int((gt_boxes[..., 4] >= 0).sum())} GT boxes, "
          f"{NUM_CLASSES} classes, FPN and stems {CHANNELS} channels, SGD(lr=1e-4, momentum=0.9)\n")
    ours = FCOS(NUM_CLASSES, CHANNELS, [CHANNELS, CHANNELS], pretrained=False).train()
    steps, tv_plain = training_steps(ours, images, gt_boxes, targets)
    pieces = pieces_outside_the_network(ours, tv_plain, images, gt_boxes, targets)
    times = time_interleaved(steps, repeats=args.repeats, warmup=1)
    # The pieces outside the network take milliseconds: more repeats, so that a process switch on a
    # shared machine (which costs milliseconds too) does not decide the median.
    times.update(time_interleaved(pieces, repeats=10 * args.repeats, warmup=2))
    report(times, steps, pieces, args.repeats)


if __name__ == "__main__":
    main()
