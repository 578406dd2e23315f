"""Checks of ``get_fpn_location_coords``: expected values from the textbook formula written out here."""
from __future__ import annotations

import torch

from .base import Check, assert_close, assert_same_keys, cuda_device, entry, register

LOCATIONS = "get_fpn_location_coords"


def _expected_locations(height: int, width: int, stride: int, dtype=torch.float32) -> torch.Tensor:
    """The textbook x-major list: x slow, y fast."""
    rows = [[stride * (x + 0.5), stride * (y + 0.5)] for x in range(width) for y in range(height)]
    return torch.tensor(rows, dtype=dtype).reshape(-1, 2)


@register
class LocationsPublished224(Check):
    """Published: the first five p3/p4/p5 locations of a 224x224 input."""

    check_name = "locations_published_224"
    function = LOCATIONS
    published = True

    def probe(self, env, x):
        get_locations = env.student_attr("common.py", LOCATIONS)
        shapes = {"p3": torch.Size([2, 64, 28, 28]), "p4": torch.Size([2, 64, 14, 14]), "p5": torch.Size([2, 64, 7, 7])}
        return {"locations": get_locations(shapes, {"p3": 8, "p4": 16, "p5": 32})}

    def judge(self, answer, x, ref):
        locations = answer["locations"]
        assert_same_keys(locations, ["p3", "p4", "p5"], "returned dict")
        expected_first = {
            "p3": [[4.0, 4.0], [4.0, 12.0], [4.0, 20.0], [4.0, 28.0], [4.0, 36.0]],
            "p4": [[8.0, 8.0], [8.0, 24.0], [8.0, 40.0], [8.0, 56.0], [8.0, 72.0]],
            "p5": [[16.0, 16.0], [16.0, 48.0], [16.0, 80.0], [16.0, 112.0], [16.0, 144.0]],
        }
        for name, size in (("p3", 28), ("p4", 14), ("p5", 7)):
            level = locations[name]
            if not isinstance(level, torch.Tensor) or tuple(level.shape) != (size * size, 2):
                shape = tuple(level.shape) if isinstance(level, torch.Tensor) else type(level).__name__
                raise AssertionError(f"{name} locations have shape {shape}, expected {(size * size, 2)}")
            assert_close(level[:5], torch.tensor(expected_first[name]), f"first five {name} locations", rtol=0, atol=0)


@register
class LocationsXMajorNonSquare(Check):
    """Hidden: non-square maps (H=3, W=5 and H=5, W=2) are flattened x-major (x slow, y fast)."""

    check_name = "locations_x_major_non_square"
    function = LOCATIONS
    _SIZES = ((3, 5), (5, 2))

    def probe(self, env, x):
        get_locations = env.student_attr("common.py", LOCATIONS)
        return {f"{h}x{w}": get_locations({"p3": (1, 8, h, w)}, {"p3": 8}) for h, w in self._SIZES}

    def judge(self, answer, x, ref):
        for height, width in self._SIZES:
            what = f"locations of a map with H={height}, W={width}"
            level = entry(answer[f"{height}x{width}"], "p3", what)
            assert_close(level, _expected_locations(height, width, 8),
                         f"{what} (rows x-major: x slow, y fast; column 0 is x)", rtol=0, atol=0)


@register
class LocationsAnyLevelsAndStrides(Check):
    """Hidden: level names and strides come from the arguments (strides 4 and 64, two levels)."""

    function = LOCATIONS

    def probe(self, env, x):
        get_locations = env.student_attr("common.py", LOCATIONS)
        return {"locations": get_locations({"fine": (2, 3, 4, 6), "coarse": (2, 3, 1, 2)}, {"fine": 4, "coarse": 64})}

    def judge(self, answer, x, ref):
        locations = answer["locations"]
        assert_same_keys(locations, ["fine", "coarse"], "returned dict")
        assert_close(locations["fine"], _expected_locations(4, 6, 4), "level 'fine' (stride 4)", rtol=0, atol=0)
        assert_close(locations["coarse"], _expected_locations(1, 2, 64), "level 'coarse' (stride 64)", rtol=0, atol=0)


@register
class LocationsDtypeArgument(Check):
    """Hidden: dtype=torch.float64 gives float64 locations (default float32)."""

    function = LOCATIONS

    def probe(self, env, x):
        get_locations = env.student_attr("common.py", LOCATIONS)
        return {"float64": get_locations({"p4": (1, 1, 3, 4)}, {"p4": 16}, dtype=torch.float64),
                "default": get_locations({"p4": (1, 1, 3, 4)}, {"p4": 16})}

    def judge(self, answer, x, ref):
        assert_close(entry(answer["float64"], "p4", "float64 locations"), _expected_locations(3, 4, 16, torch.float64),
                     "float64 locations", rtol=0, atol=0)
        default = entry(answer["default"], "p4", "default locations")
        if not isinstance(default, torch.Tensor) or default.dtype != torch.float32:
            raise AssertionError(f"default dtype must be float32, got {getattr(default, 'dtype', type(default).__name__)}")


@register
class LocationsCuda(Check):
    """Hidden: device='cuda' puts the locations on the GPU."""

    function = LOCATIONS
    needs_cuda = True

    def probe(self, env, x):
        get_locations = env.student_attr("common.py", LOCATIONS)
        level = get_locations({"p3": (1, 1, 3, 5)}, {"p3": 8}, device="cuda")["p3"]
        return {"p3": level, "device": level.device.type if isinstance(level, torch.Tensor) else None}

    def judge(self, answer, x, ref):
        if answer["device"] != cuda_device().type:
            raise AssertionError(f"locations are on {answer['device']}, expected the CUDA device")
        assert_close(answer["p3"], _expected_locations(3, 5, 8), "CUDA locations", rtol=0, atol=0)
