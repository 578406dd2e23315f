"""``python -m eecs598.grade``: the staff command under the name people type; the code is :mod:`eecs598.staff.grade`.

It imports the staff wing, so the student release leaves it out with that wing.
"""
import sys

from eecs598.staff.grade import *  # noqa: F401,F403
from eecs598.staff.grade import main

if __name__ == "__main__":
    sys.exit(main())
