"""What the grader's tests share: the sandbox they grade in and why hostile tests may have to skip.

On a machine where jobs can get their own namespaces (root, or unprivileged user namespaces: CI and the
course's grading machines) the tests grade exactly as staff do; elsewhere they fall back to process mode
(limits only), which keeps the kit's round trip tested, and the tests of what only namespaces stop skip.
"""
import os

import pytest

from eecs598.staff.sandbox import SandboxConfig, namespaces_problem

NAMESPACES_PROBLEM = namespaces_problem()
SANDBOX = SandboxConfig(mode="namespaces" if NAMESPACES_PROBLEM is None else "process")
# Command-line flags for the same choice (none where the default, namespaces, works).
SANDBOX_FLAGS = [] if NAMESPACES_PROBLEM is None else ["--sandbox", "process"]

needs_namespaces = pytest.mark.skipif(
    NAMESPACES_PROBLEM is not None,
    reason=f"the sandbox needs root or unprivileged user namespaces here: {NAMESPACES_PROBLEM}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the switch to an unprivileged user needs a root grader")
