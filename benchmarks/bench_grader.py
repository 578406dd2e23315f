"""Grading time per submission: ``python -m eecs598.grade`` on the solution and one planted bug.

What it measures: the wall time of ``grade_submissions([solution, bug nms_greater_or_equal], workers=2)``
in a fresh process, twice in a row (the first call also starts the forkserver that imports torch; the
second finds it running), divided by the two submissions; and the per-function sandbox times of the
second call. ``--kit DIR`` grades with another checkout's kit (e.g. the previous grader, to compare on
the same machine at the same time: run both alternately and compare the ratios).

Rerun from the repository root:  python benchmarks/bench_grader.py [--kit DIR] [--rounds N]
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, os, sys, tempfile, time
kit = sys.argv[1]
sys.path.insert(0, kit)
from eecs598.staff import bugs, grade
scratch = tempfile.mkdtemp(prefix="bench-grader-")
solution = bugs.copy_solution_submission(os.path.join(scratch, "solution"), solution_dir=kit)
bug = next(b for b in bugs.load_bugs() if b.name == "nms_greater_or_equal")
buggy = bugs.write_buggy_submission(bug, os.path.join(scratch, "bug"), solution_dir=kit)
times, points = [], None
for _ in range(2):
    start = time.perf_counter()
    results = grade.grade_submissions([solution, buggy], workers=2, solution_dir=kit)
    times.append(time.perf_counter() - start)
    points = [r.points for r in results]
functions = {f.function: f.seconds for f in results[0].functions}
print("RESULT " + json.dumps({"cold": times[0], "warm": times[1], "points": points, "functions": functions}))
"""


def run_once(kit: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    completed = subprocess.run([sys.executable, "-c", _CHILD, kit], capture_output=True, text=True, env=env,
                               cwd=kit, timeout=1800)
    line = next((l for l in completed.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(completed.stdout[-2000:] + completed.stderr[-3000:])
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", action="append", default=None,
                        help="checkout whose kit grades (repeatable: measured alternately); default: this one")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    kits = args.kit or [REPO]
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = {kit: [] for kit in kits}
    for round_index in range(args.rounds):
        for kit in (kits if round_index % 2 == 0 else kits[::-1]):
            result = run_once(kit)
            rows[kit].append(result)
            print(f"{kit}: per submission cold {result['cold'] / 2:.1f} s, warm {result['warm'] / 2:.1f} s, "
                  f"points {result['points']}", flush=True)
    for kit, results in rows.items():
        cold = sorted(r["cold"] / 2 for r in results)[len(results) // 2]
        warm = sorted(r["warm"] / 2 for r in results)[len(results) // 2]
        print(f"median over {len(results)} rounds, {kit}: cold {cold:.1f} s, warm {warm:.1f} s per submission")
        print("  per-function run time (s, warm call): " + json.dumps(results[-1]["functions"]))
    print(f"(measured at {time.strftime('%Y-%m-%d %H:%M')})")


if __name__ == "__main__":
    main()
