"""Shared fixtures: the repository root on sys.path (the modules are imported flat, as the notebook
and the course autograder do), a headless matplotlib, and the real VOC sample beside the checkout."""
import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")  # tests never open windows

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

VOC_SAMPLE_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "voc07-sample")

# Denormal floats make CPU convolutions of tiny, randomly initialised models several times slower.
torch.set_flush_denormal(True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for every test module, its module fixtures included (conftest autouse fixtures are
    set up first). Bit-identity checks need a fixed thread count (the split of a convolution's reduction over
    threads changes the rounding), and on a shared 2-core machine one thread per test process is fastest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def voc_sample_dir():
    """Path of ../shared/data/voc07-sample (48 real VOC 2007 images); skips when it is absent."""
    if not os.path.isdir(VOC_SAMPLE_DIR):
        pytest.skip(f"VOC sample not found at {VOC_SAMPLE_DIR} (it lives in ../shared beside the checkout)")
    return VOC_SAMPLE_DIR


def make_fcos(num_classes=20, fpn_channels=32, stem_channels=(32, 32)):
    """A small randomly initialised FCOS that never touches the network."""
    from one_stage_detector import FCOS

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pretrained=False must not warn
        return FCOS(num_classes=num_classes, fpn_channels=fpn_channels, stem_channels=list(stem_channels),
                    pretrained=False)


class HandSetMap(torch.nn.Module):
    """Stands in for a head conv in the row-order tests: returns a fixed (B, C, H, W) map for the level whose
    feature has the matching (H, W)."""

    def __init__(self, maps_by_size):
        super().__init__()
        self.maps_by_size = maps_by_size

    def forward(self, features):
        return self.maps_by_size[tuple(features.shape[-2:])]
