"""``python -m eecs598.export``: the command under the name people type; the code is :mod:`eecs598.tools.export`."""
import sys

from eecs598.tools.export import *  # noqa: F401,F403  (the module's public names, for scripts that import this one)
from eecs598.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
