"""Shared set-up of the public tests: the assignment folder first on ``sys.path`` (the modules are
imported flat, as the notebook does), a headless matplotlib, and the ``skip_unimplemented`` fixture."""
import contextlib
import os
import sys

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_flush_denormal(True)  # denormal floats make CPU convs of small random models much slower


@contextlib.contextmanager
def _skip_if_not_implemented():
    try:
        yield
    except NotImplementedError as error:
        pytest.skip(f"not implemented yet: {error}")


@pytest.fixture
def skip_unimplemented():
    """``with skip_unimplemented(): ...`` skips the test when the code inside raises
    ``NotImplementedError`` (a function you have not written yet); any other error fails it."""
    return _skip_if_not_implemented
