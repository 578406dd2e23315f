"""``python -m eecs598.coco_eval``: the command under the name people type; the code is :mod:`eecs598.evaluation.coco`."""
import sys

from eecs598.evaluation.coco import *  # noqa: F401,F403  (the module's public names, for scripts that import this one)
from eecs598.evaluation.coco import main

if __name__ == "__main__":
    sys.exit(main())
