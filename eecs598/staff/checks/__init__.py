"""The checks behind ``python -m eecs598.grade`` (course staff only: never shipped to students).

The registry, :class:`Env` and shared helpers are in :mod:`.base` (its docstring describes the checks and
their isolation); each graded function's checks are in one module, imported here so that they register.
"""
from . import boxes, fcos, fpn, head, locations, nms  # noqa: F401  (registers the checks)
from .base import CHECKS, GIVEN_FUNCTIONS, Check, Env, check

__all__ = ["Check", "Env", "CHECKS", "GIVEN_FUNCTIONS", "check"]
