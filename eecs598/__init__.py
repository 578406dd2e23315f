"""Small utilities shared by the EECS 498/598 assignments (seeding, gradient checks, drawing)."""
import random

import numpy as np
import torch

from . import grad, utils  # noqa: F401  (``eecs598.grad.rel_error`` works after ``import eecs598``)

__all__ = ["reset_seed", "grad", "utils"]


def reset_seed(number: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``number``.

    Args:
        number: the seed, an ``int``.
    """
    random.seed(number)
    np.random.seed(number)
    torch.manual_seed(number)  # also seeds all CUDA devices
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(number)
