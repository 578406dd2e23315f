"""The detector's optional settings, validated in one place (``FCOS`` and the command line both call it)."""
import math
from typing import Optional

from ..errors import SettingError
from .backbones import BACKBONES

__all__ = ["HEAD_NORMS", "BOX_LOSSES", "check_model_options"]

HEAD_NORMS = (None, "group")
BOX_LOSSES = ("l1", "giou")


def check_model_options(backbone: str = "regnet_x_400mf", backbone_weights: Optional[str] = None,
                        p6p7: bool = False, head_norm: Optional[str] = None, box_loss: str = "l1",
                        center_sampling_radius: Optional[float] = None, where: str = "FCOS", *,
                        p2: bool = False) -> None:
    """Refuse a value that ``FCOS(..., **options)`` cannot take (see ``one_stage_detector.FCOS``).

    Raises:
        SettingError (a ValueError) naming the option, what it must be and the value given.
    """
    def refuse(field: str, requirement: str) -> None:
        raise SettingError(where, field, requirement)

    if backbone not in BACKBONES:
        refuse("backbone", f"must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if backbone_weights is not None and not isinstance(backbone_weights, str):
        refuse("backbone_weights", f"must be None or the path of a weight file, got {type(backbone_weights).__name__}")
    if not isinstance(p6p7, bool):
        refuse("p6p7", f"must be True or False, got {p6p7!r}")
    if not isinstance(p2, bool):
        refuse("p2", f"must be True or False, got {p2!r}")
    if p2 and BACKBONES[backbone].c2_node is None:
        with_c2 = ", ".join(name for name, spec in BACKBONES.items() if spec.c2_node is not None)
        refuse("p2", f"needs a stride-4 feature (c2) of the trunk, and backbone {backbone!r} has none; "
                     f"use p2=False, or one of {with_c2}")
    if head_norm not in HEAD_NORMS:
        refuse("head_norm", f"must be None or 'group', got {head_norm!r}")
    if box_loss not in BOX_LOSSES:
        refuse("box_loss", f"must be 'l1' or 'giou', got {box_loss!r}")
    if center_sampling_radius is not None and not (
            isinstance(center_sampling_radius, (int, float)) and not isinstance(center_sampling_radius, bool)
            and math.isfinite(center_sampling_radius) and center_sampling_radius > 0):
        refuse("center_sampling_radius", f"must be None or a number > 0 (in strides, e.g. 1.5), "
                                         f"got {center_sampling_radius!r}")
