"""Continue every stored fit of a rate study from its answer, with this checkout's fastmoe.

A fit that stopped short of its maximum (fastmoe 0.2.0 could, on the curved ridges of an over-fitted
model: docs/results.md, "Large n") rises when it is run again from its own answer; one that stopped
at its maximum does not. For each ``ok`` row of a study this script regenerates the job's data from
the study's seeds (and checks that the stored parameters give the stored log-likelihood on it),
fits again from the stored parameters with the study's own options, and records how far the
objective rose against the study's tolerance and how the split cell's errors moved. It then prints,
per study, how many fits rose beyond the tolerance, how many moved a metric by more than 10%, and the
slope of log(median) on log(n) of each metric from the stored and from the continued fits.

Usage::

    python examples/continue_stored_fits.py rates-paper/vanishing-standard-spread-1e7 --out checks.jsonl
    python examples/continue_stored_fits.py docs/results/over-fit-bounded-1e7 --out checks.jsonl \\
        --metrics beta1_mean_0,a_mean_0,b_mean_0

The source is a run directory (its result store) or an archive folder (``experiment.toml`` and
``results.csv``, as ``fastmoe rates paper`` exports them; an older archive can be taken from git).
Rows already in ``--out`` are skipped, so an interrupted check resumes. ``--tol`` continues to
another tolerance than the study's. Continuing costs a few seconds a fit at n = 1e7 (minutes where
a fit had far to go).
"""

import argparse
import json
import math
import pathlib
import time
import warnings

import numpy as np

from fastmoe import MoEParams, fit, loglik
from fastmoe.experiments import ResultStore
from fastmoe.experiments.definition import Experiment
from fastmoe.experiments.job import job_data
from fastmoe.experiments.scoring import score
from fastmoe.experiments.store import read_csv


def load(source):
    """``(experiment, ok rows)`` of a run directory or an archive folder."""
    source = pathlib.Path(source)
    if (source / "results.csv").exists():
        experiment = Experiment.load(source / "experiment.toml")
        rows = read_csv(source / "results.csv")
    else:
        with ResultStore(source, read_only=True) as store:
            experiment = store.experiment()
            rows = store.records(experiment.name)
    return experiment, [r for r in rows if r["status"] == "ok"]


def continue_fit(experiment, row, metrics, tol=None):
    """Fit the job of ``row`` again from its stored parameters; the record of what changed."""
    n, replication = int(row["n"]), int(row["replication"])
    truth, _, X, y = job_data(experiment, n, replication)
    params = row["params"] if isinstance(row["params"], dict) else json.loads(row["params"])
    stored = MoEParams.from_dict(params)
    data_error = float(loglik(stored, X, y)) - float(row["loglik"])
    if abs(data_error) > 1e-9 * abs(float(row["loglik"])):
        raise RuntimeError(f"n={n} replication {replication}: the regenerated data do not give the stored "
                           f"log-likelihood (off by {data_error:.3g}); another fastmoe draws other data")
    options = experiment.fit
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the record says whether it converged
        result = fit(X, y, experiment.n_experts, n_classes=truth.n_classes, gating=truth.gating,
                     gating_features=truth.gating_features, expert_features=truth.expert_features,
                     init=stored, n_init=1, max_iter=options.max_iter,
                     tol=options.tol if tol is None else tol, l2=options.l2, ridge=options.ridge,
                     bounds=options.bounds, n_threads=1)
    scores = score(result.params, truth, experiment.losses, experiment.exact_translation)
    record = {"study": experiment.name, "n": n, "replication": replication,
              "objective": float(row["objective"]), "gain": float(result.objective - float(row["objective"])),
              "tolerance": options.tol * abs(float(row["objective"])), "n_iter": int(result.n_iter),
              "seconds": time.perf_counter() - started, "converged": bool(result.converged),
              "diverged": bool(result.diverged)}
    for metric in metrics:
        record[f"{metric}_stored"] = float(row[metric])
        record[f"{metric}_continued"] = float(scores[metric])
    return record


def median_slope(records, key):
    """Least-squares slope of log(median over replications) on log(n)."""
    sizes = sorted({r["n"] for r in records})
    medians = [np.median([r[key] for r in records if r["n"] == n]) for n in sizes]
    return float(np.polyfit(np.log(sizes), np.log(medians), 1)[0])


def summary(records, metrics):
    """Lines that say how many fits rose or moved, and the slopes from stored and continued fits."""
    rose = [r for r in records if r["gain"] > r["tolerance"]]
    lines = [f"{records[0]['study']}: {len(records)} fits continued; {len(rose)} rose beyond the tolerance"
             + (f" (up to {max(r['gain'] for r in rose):.3g} nats)" if rose else "")]
    for metric in metrics:
        moved = sum(abs(r[f"{metric}_continued"] - r[f"{metric}_stored"]) > 0.1 * abs(r[f"{metric}_stored"])
                    for r in records)
        slopes = [median_slope(records, f"{metric}_{which}") for which in ("stored", "continued")]
        lines.append(f"  {metric}: moved by more than 10% in {moved}; slope of medians "
                     f"{slopes[0]:+.3f} stored, {slopes[1]:+.3f} continued")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="run directory or archive folder of one study")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="JSON lines, one per fit (resumes)")
    parser.add_argument("--metrics", default="beta1_mean_1,a_mean_1", help="comma-separated error columns")
    parser.add_argument("--tol", type=float, default=None, help="continue to this tolerance (default: the study's)")
    args = parser.parse_args(argv)
    metrics = [m for m in args.metrics.split(",") if m]
    experiment, rows = load(args.source)
    done = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            record = json.loads(line)
            if record["study"] == experiment.name:
                done[(record["n"], record["replication"])] = record
    with args.out.open("a") as out:
        for row in sorted(rows, key=lambda r: (int(r["n"]), int(r["replication"]))):
            key = (int(row["n"]), int(row["replication"]))
            if key in done:
                continue
            done[key] = continue_fit(experiment, row, metrics, args.tol)
            out.write(json.dumps(done[key]) + "\n")
            out.flush()
    records = [r for r in done.values() if all(math.isfinite(r[f"{m}_stored"]) for m in metrics)]
    if records:
        print("\n".join(summary(records, metrics)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
