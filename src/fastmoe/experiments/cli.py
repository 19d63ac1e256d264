"""The ``fastmoe`` command line: ``fastmoe rates run | report | compare | presets``.

::

    fastmoe rates presets                       # list the shipped experiments
    fastmoe rates run exact-fit                 # run a preset on all local cores, then report
    fastmoe rates run my-study.toml --out runs/my-study --jobs 2 --threads-per-job 1
    fastmoe rates run over-fit --scheduler tcp://10.0.0.5:8786
    fastmoe rates report runs/my-study          # table + plots + CSV/Parquet export
    fastmoe rates compare runs/standard runs/tanh --plot contrast.png   # slope differences

A run directory holds ``results.sqlite`` (the store), ``experiment.toml`` (the definition that ran),
``results.csv`` / ``results.parquet``, ``summary.csv`` and ``slopes.csv`` (the report's numbers) and
``plots/`` (PNG and PDF). Re-running ``fastmoe rates run`` with the same directory resumes: finished jobs are
never run twice.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _int_list(text: str) -> List[int]:
    """Comma-separated whole numbers; ``1e4`` is 10000, ``3000.9`` is refused (not rounded)."""
    sizes = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        try:
            value = int(token)
        except ValueError:
            try:
                number = float(token)
            except ValueError:
                number = None
            # Written as a float (1e4), it must be a whole number; the schema checks the range.
            if number is None or not number.is_integer():
                raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {token!r}") from None
            value = int(number)
        sizes.append(value)
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(prog="fastmoe", description="fastmoe command line")
    top = parser.add_subparsers(dest="command", required=True)
    rates = top.add_parser("rates", help="parameter-estimation rate experiments")
    sub = rates.add_subparsers(dest="action", required=True)

    run = sub.add_parser("run", help="run (or resume) an experiment, then report",
                         description="Run every job of an experiment not yet in the run directory's store.")
    run.add_argument("spec", help="preset name (see 'fastmoe rates presets') or a .toml/.json definition")
    run.add_argument("--out", type=Path, default=None, help="run directory (default: ./rates-<name>)")
    run.add_argument("--scheduler", default=None,
                     help="Dask scheduler address (tcp://host:port); default: local processes")
    run.add_argument("--jobs", type=int, default=None, help="concurrent local jobs (default: cores / threads)")
    run.add_argument("--threads-per-job", type=int, default=None,
                     help="OpenMP threads per fit (default: cores / jobs locally, 1 on Dask)")
    run.add_argument("--sample-sizes", type=_int_list, default=None,
                     help="override the grid of n, e.g. 3000,10000,30000")
    run.add_argument("--replications", type=int, default=None, help="override the number of replications")
    run.add_argument("--max-n", type=int, default=None, help="drop sample sizes above this")
    run.add_argument("--retry-failed", action="store_true", help="re-run jobs stored as failed or crashed")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="do not print the report or draw plots")

    report = sub.add_parser("report", help="print the rate table, draw plots, export CSV/Parquet")
    report.add_argument("dir", type=Path, help="run directory (or a .sqlite store)")
    report.add_argument("--experiment", default=None, help="experiment name (when the store holds several)")
    report.add_argument("--ok-only", action="store_true",
                        help="average converged fits only (default also keeps fits that hit max_iter)")
    report.add_argument("--min-n", type=int, default=None, help="fit slopes on n >= this only")
    report.add_argument("--max-n", type=int, default=None, help="fit slopes on n <= this only")
    report.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    report.add_argument("--all", action="store_true", help="also list the mass-weighted mean errors")
    report.add_argument("--no-plots", action="store_true", help="skip the plots")

    compare = sub.add_parser(
        "compare", help="compare the rates of two or more experiments (slope differences with intervals)",
        description="Fit every metric's slope on the sample sizes the runs share and print, for every run after "
                    "the first, its slope minus the first run's with a bootstrap interval.")
    compare.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="run directories (the first is the "
                         "baseline)")
    compare.add_argument("--metrics", type=lambda t: [m for m in t.split(",") if m], default=None,
                         help="comma-separated metrics (default: every metric all runs carry)")
    compare.add_argument("--ok-only", action="store_true", help="average converged fits only")
    compare.add_argument("--min-n", type=int, default=None, help="fit slopes on n >= this only")
    compare.add_argument("--max-n", type=int, default=None, help="fit slopes on n <= this only")
    compare.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    compare.add_argument("--plot", type=Path, default=None,
                         help="also draw the metrics (default: the first run's primary loss) on common axes")

    presets = sub.add_parser("presets", help="list the shipped experiment presets")
    presets.add_argument("--show", default=None, metavar="NAME", help="print one preset's TOML definition")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastmoe`` console script."""
    args = build_parser().parse_args(argv)
    if args.action == "presets":
        return _presets(args)
    if args.action == "run":
        return _run(args)
    if args.action == "compare":
        return _compare(args)
    return _report(args.dir, experiment=args.experiment, ok_only=args.ok_only, min_n=args.min_n,
                   max_n=args.max_n, n_boot=args.bootstrap, all_metrics=args.all, plots=not args.no_plots)


def _presets(args) -> int:
    from .presets import get_preset, preset_names

    if args.show:
        print(get_preset(args.show).to_toml(), end="")
        return 0
    for name in preset_names():
        exp = get_preset(name)
        sizes = exp.sample_sizes
        print(f"{name}\n    {exp.outline()}; "
              f"n={sizes[0]}..{sizes[-1]} ({len(sizes)} sizes) x {exp.n_replications} replications "
              f"= {exp.n_jobs} jobs\n    {exp.description}")
    return 0


def _run(args) -> int:
    from .presets import load_experiment
    from .runner import run_experiment

    try:
        exp = load_experiment(args.spec)
        sizes = args.sample_sizes if args.sample_sizes is not None else list(exp.sample_sizes)
        if args.max_n is not None:
            sizes = [n for n in sizes if n <= args.max_n]
        exp = exp.with_grid(sample_sizes=sizes, n_replications=args.replications)
    except (ValueError, KeyError) as exc:
        print(f"fastmoe rates run: {exc}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else Path(f"rates-{exp.name}")
    out.mkdir(parents=True, exist_ok=True)
    exp.save(out / "experiment.toml")
    try:
        summary = run_experiment(exp, out, scheduler=args.scheduler, n_jobs=args.jobs,
                                 threads_per_job=args.threads_per_job, retry_failed=args.retry_failed,
                                 progress=not args.no_progress)
    except ValueError as exc:  # e.g. the store holds another definition under this name
        print(f"fastmoe rates run: {exc}", file=sys.stderr)
        return 2
    where = summary.executor + (f", {summary.n_workers} workers x {summary.threads_per_job} threads"
                                if summary.n_workers else "")
    print(f"{exp.name}: {summary.completed} jobs run ({summary.already_done} already stored, "
          f"{summary.duplicates} duplicate results ignored) in {summary.wall_time:.1f} s [{where}]; "
          f"status counts {summary.status_counts}; store {summary.store}")
    if args.no_report:
        return 0
    return _report(out, experiment=exp.name)


def _report(directory, experiment=None, ok_only=False, min_n=None, max_n=None, n_boot=2000, all_metrics=False,
            plots=True) -> int:
    from .analysis import DEFAULT_INCLUDE, analyse
    from .store import ResultStore, store_path

    directory = Path(directory)
    try:
        report = analyse(directory, experiment, include=("ok",) if ok_only else DEFAULT_INCLUDE,
                         n_boot=n_boot, min_n=min_n, max_n=max_n)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"fastmoe rates report: {exc}", file=sys.stderr)
        return 2
    print(report.format_table(all_metrics=all_metrics))
    out_dir = directory if directory.is_dir() else store_path(directory).parent
    name = report.experiment.name
    with ResultStore(store_path(directory)) as store:
        exported = [store.export_csv(out_dir / "results.csv", name),
                    store.export_parquet(out_dir / "results.parquet", name)]
    _write_rows(out_dir / "slopes.csv", report.slope_rows())
    _write_rows(out_dir / "summary.csv", report.summary_rows())
    exported += [out_dir / "slopes.csv", out_dir / "summary.csv"]
    if plots:
        from .plots import plot_report

        exported += plot_report(report, out_dir / "plots")
    print("\nwrote " + ", ".join(str(p) for p in exported if p is not None))
    return 0


def _compare(args) -> int:
    from .analysis import DEFAULT_INCLUDE, analyse, compare_slopes

    if len(args.dirs) < 2:
        print("fastmoe rates compare: give at least two run directories", file=sys.stderr)
        return 2
    include = ("ok",) if args.ok_only else DEFAULT_INCLUDE
    try:
        # The runs' own slope intervals only label the plot; the differences are bootstrapped below.
        n_boot = args.bootstrap if args.plot is not None else 0
        reports = [analyse(d, include=include, n_boot=n_boot, min_n=args.min_n, max_n=args.max_n)
                   for d in args.dirs]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"fastmoe rates compare: {exc}", file=sys.stderr)
        return 2
    base, others = reports[0], reports[1:]
    if args.metrics is not None:
        metrics = args.metrics
        missing = [m for m in metrics if not all(m in r.metrics for r in reports)]
        if missing:
            print(f"fastmoe rates compare: not in every run: {', '.join(missing)}", file=sys.stderr)
            return 2
    else:
        metrics = [m for m in base.metrics if all(m in r.metrics for r in others)]
    names = [f"{r.experiment.name} ({r.experiment.truth.gating_name})" for r in reports]
    print("runs: " + "; ".join(f"[{i}] {name}" for i, name in enumerate(names)))
    print("slopes of log(mean metric) on log(n) over the sample sizes (count in 'sizes') that run [i] shares "
          "with run [0] (slope[0]: those it shares with [1]); difference = slope[i] - slope[0] with its 95% "
          "bootstrap interval, * where it excludes 0\n")
    head = f"{'metric':<14} {'slope[0]':>9}"
    for i in range(1, len(reports)):
        head += f" {f'slope[{i}]':>9} {f'[{i}] - [0]':>10} {'95% CI':>18}   {'sizes':>5}"
    print(head)
    for metric in metrics:
        diffs = [compare_slopes(base.records, other.records, metric, include=include, n_boot=args.bootstrap,
                                min_n=args.min_n, max_n=args.max_n) for other in others]
        line = f"{metric:<14} {diffs[0].slope_a:>+9.3f}"
        for d in diffs:
            flag = "*" if d.significant else " "
            line += (f" {d.slope_b:>+9.3f} {d.difference:>+10.3f} [{d.ci_low:>+7.3f}, {d.ci_high:>+7.3f}] {flag}"
                     f" {len(d.sizes):>5}")
        print(line)
    if args.plot is not None:
        from .plots import plot_comparison

        drawn = args.metrics if args.metrics is not None else [base.experiment.primary_loss]
        print(f"\nwrote {plot_comparison(reports, drawn, args.plot)}")
    return 0


def _write_rows(path: Path, rows) -> None:
    columns: dict = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
