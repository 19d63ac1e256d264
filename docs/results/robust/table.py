"""Slopes of medians, trimmed means and means from the committed result CSVs (docs/results-history.md, issue 14).

    python docs/results/robust/table.py          # prints the Markdown table, writes slopes.csv beside

Reads ``results.csv`` of the runs below (each a full export of a run's store: one row per fit), fits the
slope of log(statistic) on log(n) for each statistic with ``fastmoe.experiments.fit_slope`` (2000
bootstrap resamples of the replications, seed 0) and writes every slope to ``slopes.csv`` in this folder.
"""

import csv
import math
from pathlib import Path

from fastmoe.experiments import STATISTICS, fit_slope
from fastmoe.experiments.store import read_csv

HERE = Path(__file__).resolve().parent
RUNS = [("exact-fit", HERE.parent / "exact-fit", ("D1", "mass_err_0", "a_max_0", "b_max_0", "beta1_max_0")),
        ("exact-fit-search", HERE.parent / "exact-fit-search", ("D1", "a_max_0", "b_max_0")),
        ("over-fit (ridge l2 = 0.03)", HERE.parent / "bounds-sensitivity" / "over-fit",
         ("D2", "mass_err_0", "beta1_max_0", "a_max_0", "b_max_0", "beta1_mean_0", "a_mean_0", "b_mean_0")),
        ("over-fit-bounded (box 10)", HERE.parent / "bounds-sensitivity" / "over-fit-bounded",
         ("D2", "mass_err_0", "beta1_max_0", "a_max_0", "b_max_0", "beta1_mean_0", "a_mean_0", "b_mean_0"))]


def main():
    rows = []
    print("| run | metric | slope of medians [95% CI] | of 10% trimmed means | of means [95% CI] |")
    print("|---|---|---|---|---|")
    for label, folder, metrics in RUNS:
        recs = read_csv(folder / "results.csv")
        for metric in metrics:
            fits = {s: fit_slope(recs, metric, n_boot=2000, statistic=s) for s in STATISTICS}
            rows += [dict(run=label, **{k: v for k, v in vars(f).items()}) for f in fits.values()]
            med, trim, mean = fits["median"], fits["trimmed"], fits["mean"]
            if math.isnan(med.slope):
                continue
            print(f"| {label} | {metric} | {med.slope:+.2f} [{med.ci_low:+.2f}, {med.ci_high:+.2f}] | "
                  f"{trim.slope:+.2f} | {mean.slope:+.2f} [{mean.ci_low:+.2f}, {mean.ci_high:+.2f}] |")
            label = ""
    with open(HERE / "slopes.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
