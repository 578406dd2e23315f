"""Checks of ``get_fpn_location_coords``."""
from __future__ import annotations


import torch

from .base import (Env, assert_close, assert_same_keys, check, cuda_device)


# ================================================================================================
# common.py: get_fpn_location_coords
# ================================================================================================

LOCATIONS = "get_fpn_location_coords"


def _expected_locations(height: int, width: int, stride: int, dtype=torch.float32) -> torch.Tensor:
    """The textbook x-major list: x slow, y fast."""
    rows = [[stride * (x + 0.5), stride * (y + 0.5)] for x in range(width) for y in range(height)]
    return torch.tensor(rows, dtype=dtype).reshape(-1, 2)


@check(LOCATIONS, published=True)
def locations_published_224(env: Env) -> None:
    """Published: the first five p3/p4/p5 locations of a 224x224 input."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    shapes = {"p3": torch.Size([2, 64, 28, 28]), "p4": torch.Size([2, 64, 14, 14]), "p5": torch.Size([2, 64, 7, 7])}
    locations = get_locations(shapes, {"p3": 8, "p4": 16, "p5": 32})
    assert_same_keys(locations, ["p3", "p4", "p5"], "returned dict")
    expected_first = {
        "p3": [[4.0, 4.0], [4.0, 12.0], [4.0, 20.0], [4.0, 28.0], [4.0, 36.0]],
        "p4": [[8.0, 8.0], [8.0, 24.0], [8.0, 40.0], [8.0, 56.0], [8.0, 72.0]],
        "p5": [[16.0, 16.0], [16.0, 48.0], [16.0, 80.0], [16.0, 112.0], [16.0, 144.0]],
    }
    for name, size in (("p3", 28), ("p4", 14), ("p5", 7)):
        if tuple(locations[name].shape) != (size * size, 2):
            raise AssertionError(f"{name} locations have shape {tuple(locations[name].shape)}, expected {(size * size, 2)}")
        assert_close(locations[name][:5], torch.tensor(expected_first[name]), f"first five {name} locations",
                     rtol=0, atol=0)


@check(LOCATIONS)
def locations_x_major_non_square(env: Env) -> None:
    """Hidden: non-square maps (H=3, W=5 and H=5, W=2) are flattened x-major (x slow, y fast)."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    for height, width in ((3, 5), (5, 2)):
        locations = get_locations({"p3": (1, 8, height, width)}, {"p3": 8})
        assert_close(locations["p3"], _expected_locations(height, width, 8),
                     f"locations of a map with H={height}, W={width} (rows x-major: x slow, y fast; column 0 is x)",
                     rtol=0, atol=0)


@check(LOCATIONS)
def locations_any_levels_and_strides(env: Env) -> None:
    """Hidden: level names and strides come from the arguments (strides 4 and 64, two levels)."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    locations = get_locations({"fine": (2, 3, 4, 6), "coarse": (2, 3, 1, 2)}, {"fine": 4, "coarse": 64})
    assert_same_keys(locations, ["fine", "coarse"], "returned dict")
    assert_close(locations["fine"], _expected_locations(4, 6, 4), "level 'fine' (stride 4)", rtol=0, atol=0)
    assert_close(locations["coarse"], _expected_locations(1, 2, 64), "level 'coarse' (stride 64)", rtol=0, atol=0)


@check(LOCATIONS)
def locations_dtype_argument(env: Env) -> None:
    """Hidden: dtype=torch.float64 gives float64 locations (default float32)."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    locations = get_locations({"p4": (1, 1, 3, 4)}, {"p4": 16}, dtype=torch.float64)
    assert_close(locations["p4"], _expected_locations(3, 4, 16, torch.float64), "float64 locations", rtol=0, atol=0)
    locations = get_locations({"p4": (1, 1, 3, 4)}, {"p4": 16})
    if locations["p4"].dtype != torch.float32:
        raise AssertionError(f"default dtype must be float32, got {locations['p4'].dtype}")


@check(LOCATIONS, needs_cuda=True)
def locations_cuda(env: Env) -> None:
    """Hidden: device='cuda' puts the locations on the GPU."""
    get_locations = env.student_attr("common.py", LOCATIONS)
    locations = get_locations({"p3": (1, 1, 3, 5)}, {"p3": 8}, device="cuda")
    assert_close(locations["p3"], _expected_locations(3, 5, 8).to(cuda_device()), "CUDA locations", rtol=0, atol=0)
