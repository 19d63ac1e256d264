"""Coverage of the Wald and parametric-bootstrap intervals on the README's two-expert truth.

For each replication: draw ``n`` samples from the truth (d = 2, K = 3, k = 2, standard gating), fit from
the truth, form the 95% Wald intervals (``fastmoe.parameter_table``) and the bootstrap ones
(``fastmoe.bootstrap_table``: the normal interval from the converged refits' standard deviation,
percentile and basic intervals with the failed refits kept in the quantiles or dropped, and studentized ones, all from one set of refits), and record for each of the 15 free parameters whether each interval holds the true value.

    python examples/interval_coverage.py --n 5000 --replications 400 --boot 200 --jobs 2 \\
        --out interval-coverage.csv

writes one row per (replication, parameter) to ``--out`` as replications finish (a rerun with the same
file resumes: replications already there are skipped), then prints the coverage per interval (mean
over parameters, and the worst parameter) as the Markdown table of ``docs/uncertainty.md``.
Replication ``r`` draws from its own seed stream (``--seed``, ``r``), so the rows do not depend on
``--jobs``. Each job is single-threaded; the replications run in ``--jobs`` processes.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: the processes are the parallelism

import numpy as np  # noqa: E402

TRUTH = dict(
    beta0=[0.5, 0.0],
    beta1=[[3.0, -2.0], [0.0, 0.0]],
    a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
    b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]],
)
# "percentile" and "basic" count the failed refits' last iterates in the quantiles (bootstrap_table's
# failed="keep", its default); the "_drop" variants leave them out.
INTERVALS = ("wald", "normal", "percentile", "basic", "bc", "percentile_drop", "basic_drop", "studentized")
COLUMNS = ["replication", "n", "parameter", "truth", "estimate", "wald_se", "boot_sd", "n_failed", "seconds",
           *(f"{kind}_{end}" for kind in INTERVALS for end in ("lower", "upper"))]


def one_replication(args):
    """Rows of one replication (a list of dicts), or a one-row list saying why the fit was left out."""
    replication, n, n_boot, seed, level = args
    from scipy.special import ndtri

    import fastmoe
    from fastmoe.uncertainty import UncertaintyWarning, _bias_corrected_quantiles, bootstrap_table

    started = time.perf_counter()
    truth = fastmoe.MoEParams(**TRUTH)
    rng = np.random.default_rng([seed, replication])
    X, y = fastmoe.sample(truth, n=n, random_state=rng, n_threads=1)
    theta_true = fastmoe.free_parameters(truth)
    missing = np.full(theta_true.shape, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        warnings.simplefilter("ignore", UncertaintyWarning)
        result = fastmoe.fit(X, y, 2, init=truth, n_threads=1)
        # A fit that diverged (an expert's class quasi-separated: the MLE does not exist) or did not
        # converge has no interval of any kind: its row says n_failed = -1 and every interval is nan.
        failed = not result.converged or result.diverged
        wald = fastmoe.parameter_table(result, X, y, level=level, n_threads=1)
        boot = None
        if not failed:
            try:
                boot = bootstrap_table(result, X, y, n_boot=n_boot, interval="studentized", level=level,
                                       random_state=rng, n_jobs=1)
            except ValueError:  # too few refits converged to form an interval
                boot = None
    alpha = 1.0 - level
    intervals = {kind: (missing, missing) for kind in INTERVALS}
    if not failed:
        intervals["wald"] = (wald.lower, wald.upper)
    if boot is not None:
        intervals["studentized"] = (boot.lower, boot.upper)
        q = float(ndtri(0.5 + level / 2.0))  # the normal interval: the Wald form with the refits' sd
        intervals["normal"] = (boot.estimate - q * boot.std_error, boot.estimate + q * boot.std_error)
        finite = np.isfinite(boot.replicates).all(axis=1)
        for suffix, rows_used in (("", finite), ("_drop", finite & ~boot.failed_refits)):
            q_low, q_high = np.quantile(boot.replicates[rows_used], [alpha / 2, 1 - alpha / 2], axis=0)
            intervals["percentile" + suffix] = (q_low, q_high)
            intervals["basic" + suffix] = (2 * boot.estimate - q_high, 2 * boot.estimate - q_low)
            if suffix == "":
                intervals["bc"] = _bias_corrected_quantiles(boot.replicates[rows_used], boot.estimate, level)
    seconds = time.perf_counter() - started
    rows = []
    for j, name in enumerate(wald.names):
        row = dict(replication=replication, n=n, parameter=name, truth=theta_true[j], estimate=wald.estimate[j],
                   wald_se=wald.std_error[j], boot_sd=np.nan if boot is None else boot.std_error[j],
                   n_failed=-1 if failed else (n_boot if boot is None else boot.n_failed), seconds=round(seconds, 3))
        for kind, (lower, upper) in intervals.items():
            row[f"{kind}_lower"], row[f"{kind}_upper"] = lower[j], upper[j]
        rows.append(row)
    return rows


def coverage_table(path, level):
    """Coverage per interval from the CSV, as a Markdown table and a dict.

    Columns: the share of (replication, parameter) cells whose interval holds the truth, over all
    replications (a replication whose fit diverged or did not converge has no interval: a miss) and
    over those whose fit converged; the worst parameter's coverage over the latter; the share of nan
    intervals there (a singular information for Wald, too few refits for the bootstrap).
    """
    import pandas as pd

    data = pd.read_csv(path)
    fit_ok = data["n_failed"] >= 0
    lines = ["| interval | coverage, all replications | coverage, converged fits | worst parameter (converged fits) "
             "| nan intervals |", "| --- | --- | --- | --- | --- |"]
    summary = {}
    for kind in INTERVALS:
        lower, upper = data[f"{kind}_lower"], data[f"{kind}_upper"]
        covered = (lower <= data["truth"]) & (data["truth"] <= upper)
        by_parameter = covered[fit_ok].groupby(data["parameter"][fit_ok]).mean()
        worst = by_parameter.idxmin()
        nan_share = lower[fit_ok].isna().mean()
        summary[kind] = dict(all=covered.mean(), converged=covered[fit_ok].mean(), worst=by_parameter.min(),
                             worst_parameter=worst, nan=nan_share)
        lines.append(f"| {kind} | {covered.mean():.3f} | {covered[fit_ok].mean():.3f} | "
                     f"{by_parameter.min():.3f} ({worst}) | {nan_share:.3f} |")
    per_replication = data.groupby("replication").first()
    refits = per_replication["n_failed"][per_replication["n_failed"] >= 0]
    lines.append("")
    lines.append(
        f"{len(per_replication)} replications at n = {int(data['n'].iloc[0])}, {level:.0%} intervals; "
        f"fits that diverged or did not converge: {(per_replication['n_failed'] < 0).sum()}; bootstrap refits "
        f"left out (diverged or not converged): {refits.mean():.1f} per replication on average; "
        f"{per_replication['seconds'].mean():.1f} s per replication on average."
    )
    return "\n".join(lines), summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--replications", type=int, default=400)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--out", default="interval-coverage.csv")
    args = parser.parse_args(argv)

    done = set()
    if os.path.exists(args.out):
        with open(args.out) as fh:
            done = {int(row["replication"]) for row in csv.DictReader(fh)}
    todo = [(r, args.n, args.boot, args.seed, args.level) for r in range(args.replications) if r not in done]
    print(f"{len(done)} replications in {args.out}; running {len(todo)} in {args.jobs} processes", flush=True)
    started = time.perf_counter()
    new_file = not os.path.exists(args.out)
    with open(args.out, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        pool = None
        if args.jobs == 1:
            results = map(one_replication, todo)
        else:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(args.jobs)
            results = pool.imap_unordered(one_replication, todo)
        try:
            for i, rows in enumerate(results, 1):
                writer.writerows(rows)
                fh.flush()
                if i % 10 == 0 or i == len(todo):
                    print(f"{i}/{len(todo)} replications, {time.perf_counter() - started:.0f} s", flush=True)
        except BaseException:
            if pool is not None:
                pool.terminate()  # close() would let the workers finish every queued replication
            raise
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    print(f"wall time {time.perf_counter() - started:.0f} s")
    print(coverage_table(args.out, args.level)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
