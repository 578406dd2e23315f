"""Check the whole release / grade loop after editing the solution, its markers, the checks or the points:

    python -m eecs598.staff.selftest [--workers N] [--keep DIR]

1. builds the student release (``eecs598.staff.release``) into a scratch folder;
2. round trip: putting the solution regions back into every released module and the notebook gives
   the solution files back exactly;
3. grades, in one run, the solution (must get full marks), the untouched release (must get zero for
   every graded function) and one submission per planted bug of ``eecs598/staff/bugs/`` (each must lose
   exactly the points of the function its ``# Breaks:`` line names, and keep all others).

Prints one line per expectation and exits with 1 if any fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

from eecs598.staff import grade, release
from eecs598.staff import bugs as kit_bugs
from eecs598.staff.sandbox import SandboxConfig

__all__ = ["round_trip_problems", "grading_problems", "run_selftest", "main"]


def round_trip_problems(release_dir: str, solution_dir: str = release.REPO_ROOT) -> List[str]:
    """Files of the release whose solution regions, put back, do not give the solution file exactly."""
    problems = []
    for relative in release.released_files(solution_dir):
        if not relative.endswith((".py", ".ipynb")):
            continue
        with open(os.path.join(solution_dir, relative), encoding="utf-8", newline="") as f:
            solution_text = f.read()
        with open(os.path.join(release_dir, relative), encoding="utf-8", newline="") as f:
            release_text = f.read()
        reinsert = release.reinsert_notebook if relative.endswith(".ipynb") else release.reinsert_solutions
        try:
            restored = reinsert(release_text, solution_text, relative)
        except release.ReleaseError as error:
            problems.append(f"{relative}: {error}")
            continue
        if restored != solution_text:
            problems.append(f"{relative}: re-inserting the solution regions does not give the solution back")
    return problems


def grading_problems(results: Sequence[grade.SubmissionResult], expectations: Sequence[Tuple[str, Optional[set]]]
                     ) -> List[str]:
    """Compare graded submissions with expectations ``(label, functions that must score 0)``: ``None``
    means every function scores 0 (the untouched release); every other function must get full points."""
    problems = []
    for result, (label, broken) in zip(results, expectations):
        for function in result.functions:
            must_fail = broken is None or function.function in broken
            if must_fail and function.points != 0:
                problems.append(f"{label}: {function.function} got {function.points:g} points, expected 0")
            if not must_fail and function.points != function.max_points:
                problems.append(f"{label}: {function.function} lost points: {function.message}")
    return problems


def run_selftest(workers: int = 2, keep: Optional[str] = None, solution_dir: str = release.REPO_ROOT,
                 sandbox_mode: str = "auto") -> List[str]:
    """Run the three steps above; returns the problems found (empty: all good). ``sandbox_mode="process"``
    grades without namespaces (the submissions here are the kit's own)."""
    scratch = keep or tempfile.mkdtemp(prefix="fcos-selftest-")
    try:
        release_dir = os.path.join(scratch, "release")
        release.build_release(release_dir, solution_dir=solution_dir, force=True)
        problems = round_trip_problems(release_dir, solution_dir)
        print(f"round trip: {'OK' if not problems else 'FAILED'}")

        submissions, expectations = [], []
        solution_submission = kit_bugs.copy_solution_submission(os.path.join(scratch, "solution"), solution_dir)
        submissions += [solution_submission, release_dir]
        expectations += [("solution", set()), ("untouched release", None)]
        for bug in kit_bugs.load_bugs():
            folder = kit_bugs.write_buggy_submission(bug, os.path.join(scratch, "bug-" + bug.name), solution_dir)
            submissions.append(folder)
            expectations.append((f"bug {bug.name}", {bug.breaks}))
        results = grade.grade_submissions(submissions, workers=workers, solution_dir=solution_dir,
                                          sandbox_config=SandboxConfig(mode=sandbox_mode))
        grading = grading_problems(results, expectations)
        for result, (label, _) in zip(results, expectations):
            lost = [f.function for f in result.functions if f.points < f.max_points]
            print(f"{label}: {result.points:g} / {result.max_points:g}" + (f" (lost: {', '.join(lost)})" if lost else ""))
        return problems + grading
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eecs598.staff.selftest",
        description="Check the course kit: release round trip, full marks for the solution, zero for the untouched "
                    "release, and each planted bug losing exactly the points of the function it breaks.",
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="grading processes at a time (default: %(default)s)")
    parser.add_argument("--keep", metavar="DIR", help="build the release and submissions here and keep them")
    parser.add_argument("--sandbox", choices=("auto", "namespaces", "process"), default="auto",
                        help="containment while grading (process: without namespaces, e.g. on a laptop)")
    args = parser.parse_args(argv)
    problems = run_selftest(workers=args.workers, keep=args.keep, sandbox_mode=args.sandbox)
    for problem in problems:
        print("PROBLEM:", problem)
    print("selftest:", "FAILED" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
