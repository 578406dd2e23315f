"""The checks behind ``python -m eecs598.grade`` (course staff only: never shipped to students).

The :class:`Check` class (inputs on the trusted side, a probe in the sandbox, a judge on the trusted side),
the registry and shared helpers are in :mod:`.base`, whose docstring describes the design; each graded
function's checks are in one module, imported here so that they register.
"""
from . import boxes, fcos, fpn, head, locations, nms  # noqa: F401  (registers the checks)
from .base import CHECKS, GIVEN_FUNCTIONS, NEEDS, REVEAL, Check, Env, register

__all__ = ["Check", "Env", "CHECKS", "GIVEN_FUNCTIONS", "NEEDS", "REVEAL", "register"]
