"""``python -m eecs598.analysis``: error analysis of Cartucho files, under the name people type.

The code is :mod:`eecs598.evaluation.errors` (error analysis) and :mod:`eecs598.evaluation.sweeps`
(threshold sweeps).
"""
import sys

from eecs598.evaluation.errors import *  # noqa: F401,F403
from eecs598.evaluation.errors import main
from eecs598.evaluation.sweeps import *  # noqa: F401,F403

if __name__ == "__main__":
    sys.exit(main())
