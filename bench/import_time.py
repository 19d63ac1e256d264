"""Wall time of ``import numpy`` and ``import fastmoe`` in fresh interpreters (issue 13, item 4).

    python bench/import_time.py                 # 10 alternated runs each
    python bench/import_time.py --runs 20 --src /path/to/other/src   # also time another fastmoe tree
    python bench/import_time.py --statement "floor=import numpy, scipy.special"   # and any other import

Each run is a fresh ``python -c "import ..."`` timed from outside (interpreter start-up included, as a
user sees it); the runs alternate so that a change in machine load hits every variant alike. Prints
min / median / max and the median difference to ``import numpy``. Target: at most 0.25 s more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def timed(statement, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env=env)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--src", action="append", default=[],
                        help="another source tree whose fastmoe to time too (PYTHONPATH=SRC)")
    parser.add_argument("--statement", action="append", default=[], metavar="LABEL=CODE",
                        help="also time this statement, e.g. 'scipy=import numpy, scipy.special'")
    args = parser.parse_args(argv)
    variants = [("numpy", "import numpy", None), ("fastmoe", "import fastmoe", None)]
    variants += [(f"fastmoe ({src})", "import fastmoe", src) for src in args.src]
    variants += [tuple(item.split("=", 1)) + (None,) for item in args.statement]
    times = {name: [] for name, _, _ in variants}
    for _ in range(args.runs):
        for name, statement, path in variants:
            times[name].append(timed(statement, path))
    base = statistics.median(times["numpy"])
    print(f"{args.runs} alternated runs, load average {os.getloadavg()}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:40s} min {min(values):.3f}  median {med:.3f}  max {max(values):.3f} s"
              f"   median - numpy {med - base:+.3f} s")


if __name__ == "__main__":
    sys.exit(main())
