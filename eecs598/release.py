"""``python -m eecs598.release``: the staff command under the name people type; the code is :mod:`eecs598.staff.release`.

It imports the staff wing, so the student release leaves it out with that wing.
"""
import sys

from eecs598.staff.release import *  # noqa: F401,F403
from eecs598.staff.release import main

if __name__ == "__main__":
    sys.exit(main())
