"""Run every benchmark and regenerate the tables of bench/README.md.

    python bench/run_all.py                 # roofline + pytest-benchmark suite + README (~10 min on 2 cores)
    python bench/run_all.py --full          # also the largest cases (--bench-full)
    python bench/run_all.py --memory        # also the n = 1e7 peak-memory fit (~1 GB, ~1 min)
    python bench/run_all.py --only-report   # just rebuild the README from bench/results/*.json

Writes bench/results/roofline.json, bench/results/bench.json (pytest-benchmark's --benchmark-json,
with CPU model, thread counts, compile flags and load averages in machine_info) and, with
--memory, bench/results/memory.json. Extra arguments after ``--`` go to pytest, e.g.
``python bench/run_all.py -- -k "estep or newton_pass"``.
For trustworthy figures run it on a quiet machine (check the load average it records).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")


def step(title, cmd):
    print(f"\n=== {title}: {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="pass --bench-full to pytest")
    parser.add_argument("--memory", action="store_true", help="also run bench/memory_fit.py (n = 1e7)")
    parser.add_argument("--skip-roofline", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--only-report", action="store_true")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    failed = []
    if not args.only_report:
        if not args.skip_roofline:
            if step("roofline micro-benchmark", [sys.executable, "bench/roofline/build.py", "--portable"]):
                failed.append("roofline")
        if not args.skip_bench:
            cmd = [sys.executable, "-m", "pytest", "bench/", "--benchmark-only", "-p", "no:cacheprovider",
                   f"--benchmark-json={os.path.join(RESULTS, 'bench.json')}", "-q"]
            if args.full:
                cmd.append("--bench-full")
            if step("benchmarks", cmd + args.pytest_args):
                failed.append("pytest (some checks failed: see above; the timings were still saved)")
        if args.memory:
            if step("peak memory", [sys.executable, "bench/memory_fit.py"]):
                failed.append("memory")
    step("README tables", [sys.executable, "bench/report.py"])
    if failed:
        print("\nFAILED steps: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
