"""``python -m eecs598.mean_ap``: the command under the name people type; the code is :mod:`eecs598.evaluation.mean_ap`."""
import sys

from eecs598.evaluation.cartucho import *  # noqa: F401,F403  (the public names, for scripts that import this one)
from eecs598.evaluation.mean_ap import *  # noqa: F401,F403
from eecs598.evaluation.mean_ap import main

if __name__ == "__main__":
    sys.exit(main())
