"""``python -m eecs598.app``: the command under the name people type; the code is :mod:`eecs598.tools.app`."""
import sys

from eecs598.tools.app import *  # noqa: F401,F403  (the module's public names, for scripts that import this one)
from eecs598.tools.app import main

if __name__ == "__main__":
    sys.exit(main())
