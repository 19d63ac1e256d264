"""The global-maximum benchmark's report counts reach, misses and warnings right (bench/global_max.py).

Synthetic stored records with known outcomes: which reached the best, which missed, and which start
logs make ``fastmoe.fit`` warn (``StartLog.message``).
"""

import os
import sys
from types import SimpleNamespace

import numpy as np

from fastmoe._monitor import StartLog

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "bench"))
import global_max  # noqa: E402  (the benchmark script, importable from its folder)

BEST = -1000.0


def _log(objectives, diverged=None):
    objectives = np.array(objectives, dtype=float)
    diverged = np.zeros(objectives.size, bool) if diverged is None else np.array(diverged)
    best = int(np.argmax(np.where(diverged, -np.inf, objectives)))
    runs = [SimpleNamespace(objective=float(o), diverged=bool(d)) for o, d in zip(objectives, diverged)]
    return StartLog.of(runs, best, subsample=None).to_dict()


def _record(seed, objective, starts, method="default", diverged=False, converged=True):
    return {"problem": "x1", "method": method, "seed": seed, "objective": objective, "diverged": diverged,
            "converged": converged, "time": 1.0, "starts": starts, "commit": "c", "n_threads": 1,
            "cpu": "cpu", "kernels": "k", "loadavg_start": [0.0]}


def test_warned_counts_misses_and_leaves_unlogged_methods_blank(tmp_path):
    store = global_max.Store(str(tmp_path))
    settled = _log([BEST - 5, BEST - 5, BEST - 9])  # reached by two starts: no warning
    once = _log([BEST - 5, BEST - 7, BEST - 9])  # reached by one start only: a warning
    above = _log([BEST - 5, BEST - 5, BEST + 3], diverged=[False, False, True])  # diverged above: a warning
    records = [
        _record(0, BEST, settled),  # reached, quiet
        _record(1, BEST, once),  # reached, warned
        _record(2, BEST - 5, settled),  # missed, quiet
        _record(3, BEST - 5, above),  # missed, warned
        _record(4, BEST - 5, once, converged=False),  # missed; a fit that did not converge warns otherwise
        _record(5, BEST + 50, once, diverged=True),  # diverged: warned, but neither reach nor miss
        _record(0, BEST, None, method="oracle"),  # no start log
    ]
    for record in records:
        store.save(record)
    problem = global_max.BenchProblem("x1", 2, 3, 3, "identity", 100, 0, 0)
    best, _, _, _, rows = global_max.summarise(store, problem, seeds=range(6))
    assert best == BEST
    default = rows["default"]
    assert (default["reached"], default["diverged"]) == (2, 1)
    assert (default["warned"], default["misses_warned"]) == (3, 1)
    assert rows["oracle"]["warned"] is None
    table = global_max.report_markdown(store, [problem], seeds=range(6))
    default_row = next(line for line in table.splitlines() if "| default |" in line)
    assert default_row.rstrip().endswith("| 3 (1/3) |")  # three misses: seeds 2, 3, 4
    oracle_row = next(line for line in table.splitlines() if "| oracle |" in line)
    assert oracle_row.rstrip().endswith("|  |")
