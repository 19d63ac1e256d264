"""The ``fastmoe`` command line: ``fastmoe rates run | report | compare | paper | presets``.

::

    fastmoe rates presets                       # list the shipped experiments
    fastmoe rates run exact-fit                 # run a preset on all local cores, then report
    fastmoe rates run my-study.toml --out runs/my-study --jobs 2 --threads-per-job 1
    fastmoe rates run over-fit --scheduler tcp://10.0.0.5:8786
    fastmoe rates report runs/my-study          # table + plots + CSV/Parquet export
    fastmoe rates compare runs/standard runs/tanh --plot contrast.png   # slope differences
    fastmoe rates compare runs/all runs/all --experiment standard --experiment tanh   # two of one store
    fastmoe rates report /archive/my-study --out my-report    # a read-only run, files written elsewhere
    fastmoe rates paper                         # the whole reproduction (resumable), then docs/results.md
    fastmoe rates paper --only exact-fit-family --jobs 2      # one truth family; --list shows what is stored
    fastmoe rates paper --report-only           # regenerate docs/results.md from docs/results/ alone

A run directory holds ``results.sqlite`` (the store), ``experiment.toml`` (the definition that ran),
``results.csv`` / ``results.parquet``, ``summary.csv`` and ``slopes.csv`` (the report's numbers) and
``plots/`` (PNG and PDF). Re-running ``fastmoe rates run`` with the same directory resumes: finished jobs are
never run twice.

A definition is checked (:mod:`~fastmoe.experiments.schema`) and registered with the store before
``experiment.toml`` is written or any job runs, so a refused one leaves the directory as it was. ``report``
and ``compare`` only read the store, so they work on an archived, read-only run (``report --out`` writes
the files elsewhere). Output files are replaced atomically. Errors, SIGINT and SIGTERM end a command with
one line on stderr: status 2 for an error, 128 + the signal's number for a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import List, Optional

from .analysis import STATISTICS
from .runner import ORDERS

__all__ = ["main", "build_parser"]


#: The fewest bootstrap resamples a command takes (0: no intervals): a 95% percentile interval from fewer
#: is no interval (from 1 it is a single resample, which need not contain its own estimate).
MIN_BOOTSTRAP = 20


def _bootstrap_count(text: str) -> int:
    """``--bootstrap``: 0 (no intervals) or at least ``MIN_BOOTSTRAP`` resamples."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value != 0 and value < MIN_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"must be 0 (no intervals) or at least {MIN_BOOTSTRAP}, got {value}")
    return value


def _add_bootstrap(parser) -> None:
    parser.add_argument("--bootstrap", type=_bootstrap_count, default=2000,
                        help=f"bootstrap resamples for the intervals (0: none; else at least {MIN_BOOTSTRAP})")


def _stop_after(args) -> Optional[float]:
    """``--max-minutes`` in seconds (None: no limit)."""
    if args.max_minutes is None:
        return None
    if not args.max_minutes >= 0:  # also refuses NaN
        raise ValueError(f"--max-minutes must be a number of minutes >= 0, got {args.max_minutes!r}")
    return 60.0 * args.max_minutes


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
    run.add_argument("--order", choices=ORDERS, default="size",
                     help="the order of the jobs: 'size' (largest n first, default: the workers finish together) or "
                            "'replication' (whole replications in turn: a run stopped part-way has every size)")
    run.add_argument("--max-minutes", type=float, default=None, metavar="M",
                     help="start no job after M minutes: running jobs finish and are stored, run again to resume")
    run.add_argument("--retry-failed", action="store_true", help="re-run jobs stored as failed or crashed")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="do not print the report or draw plots")

    report = sub.add_parser("report", help="print the rate table, draw plots, export CSV/Parquet")
    report.add_argument("dir", type=Path, help="run directory (or a .sqlite store)")
    report.add_argument("--out", type=Path, default=None,
                        help="write the exports and plots here (default: the run directory)")
    report.add_argument("--experiment", default=None, help="experiment name (when the store holds several)")
    report.add_argument("--ok-only", action="store_true",
                        help="average converged fits only (default also keeps fits that hit max_iter or stalled)")
    report.add_argument("--min-n", type=int, default=None, help="fit slopes on n >= this only")
    report.add_argument("--max-n", type=int, default=None, help="fit slopes on n <= this only")
    _add_bootstrap(report)
    report.add_argument("--statistic", choices=STATISTICS, default="median",
                        help="what summarises the replications of one n for the slopes (default: median; the "
                             "slopes of the means are listed beside)")
    report.add_argument("--all", action="store_true", help="also list the mass-weighted mean errors")
    report.add_argument("--no-plots", action="store_true", help="skip the plots")

    compare = sub.add_parser(
        "compare", help="compare the rates of two or more experiments (slope differences with intervals)",
        description="Fit every metric's slope on the sample sizes the runs share and print, for every run after "
                    "the first, its slope minus the first run's with a bootstrap interval.")
    compare.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="run directories (the first is the "
                         "baseline)")
    compare.add_argument("--experiment", action="append", default=None, metavar="NAME",
                         help="the experiment to read when a store holds several: once for every DIR, or once "
                              "per DIR in their order (a DIR may be named twice to compare two of its experiments)")
    compare.add_argument("--metrics", type=lambda t: [m for m in t.split(",") if m], default=None,
                         help="comma-separated metrics (default: every metric all runs carry)")
    compare.add_argument("--ok-only", action="store_true", help="average converged fits only")
    compare.add_argument("--min-n", type=int, default=None, help="fit slopes on n >= this only")
    compare.add_argument("--max-n", type=int, default=None, help="fit slopes on n <= this only")
    _add_bootstrap(compare)
    compare.add_argument("--statistic", choices=STATISTICS, default="median",
                         help="what summarises the replications of one n (default: median)")
    compare.add_argument("--plot", type=Path, default=None,
                         help="also draw the metrics (default: the first run's primary loss) on common axes")

    paper = sub.add_parser(
        "paper", help="run the whole reproduction (resumable), then write the results document from the results",
        description="Run (or resume) every study of the paper's reproduction (paper.toml: presets, truth families, "
                    "large-n runs) into ROOT/<name>, export each to RESULTS/<archive> as CSV, and write the results "
                    "document and its figures from those exports. A study with no store under ROOT but an "
                    "archive of the same definition and fastmoe version goes on from the archive's rows (a study "
                    "can span machines); no export drops a job its archive holds.")
    paper.add_argument("--root", type=Path, default=Path("rates-paper"), help="run directories (default: ./rates-paper)")
    paper.add_argument("--results", type=Path, default=Path("docs/results"),
                       help="archives: the committed CSV exports, and where a study without a store resumes "
                            "from (default: ./docs/results)")
    paper.add_argument("--fresh", action="store_true",
                       help="a study without a store starts afresh instead of from its archive (to measure new code); "
                            "its exports never take the archive's rows in, and replace the archive once the store has "
                            "every job the archive has")
    paper.add_argument("--replace-archive", action="store_true",
                       help="export a store over its archive even where the archive holds jobs the store lacks "
                            "(by default such a study is not exported: a partial rerun never replaces a fuller "
                            "archive)")
    paper.add_argument("--doc", type=Path, default=Path("docs/results.md"), help="the document (default: ./docs/results.md)")
    paper.add_argument("--only", action="append", default=None, metavar="NAME",
                       help="run only this study, truth family or section id (repeatable; a study's name first, then a "
                            "family's, then a section's); the document covers all")
    paper.add_argument("--list", action="store_true", help="list the studies and what each has stored, run nothing")
    paper.add_argument("--report-only", action="store_true", help="run nothing: export and write the document")
    paper.add_argument("--no-report", action="store_true", help="run, but do not export or write the document")
    paper.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:port)")
    paper.add_argument("--jobs", type=int, default=None, help="concurrent local jobs (default: cores / threads)")
    paper.add_argument("--threads-per-job", type=int, default=None, help="OpenMP threads per fit")
    paper.add_argument("--order", choices=ORDERS, default="size",
                       help="the order of the jobs: 'size' (largest n first, default: the workers finish together) or "
                            "'replication' (whole replications in turn: a run stopped part-way has every size)")
    paper.add_argument("--max-minutes", type=float, default=None, metavar="M",
                       help="start no job after M minutes (over all the studies): running jobs finish and are "
                            "stored, run again to resume")
    _add_bootstrap(paper)
    paper.add_argument("--no-progress", action="store_true", help="no progress bar")

    presets = sub.add_parser("presets", help="list the shipped experiment presets")
    presets.add_argument("--show", default=None, metavar="NAME", help="print one preset's TOML definition")
    return parser


class _Stopped(BaseException):
    """SIGINT or SIGTERM, raised where the main thread is (a BaseException, so no job records it as a
    failure); the runner's clean-up runs on its way up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise _Stopped(signum)


@contextlib.contextmanager
def _signals_stop():
    """SIGINT and SIGTERM raise :class:`_Stopped` in the main thread for the duration of a command."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(action: str, why) -> int:
    """Print one line on stderr and return the error status."""
    if isinstance(why, KeyError) and why.args:
        why = why.args[0]  # str(KeyError) quotes its message
    print(f"fastmoe rates {action}: {why}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastmoe`` console script."""
    args = build_parser().parse_args(argv)
    actions = {"presets": _presets, "run": _run, "compare": _compare, "report": _report_args, "paper": _paper}
    with _signals_stop():
        try:
            return actions[args.action](args)
        except _Stopped as stop:
            name = signal.Signals(stop.signum).name
            resumable = args.action == "run" or (args.action == "paper" and not args.report_only)
            resume = "; finished jobs are stored, run the same command again to resume" if resumable else ""
            print(f"fastmoe rates {args.action}: stopped by {name}{resume}", file=sys.stderr)
            return 128 + stop.signum
        except BrokenPipeError:  # the reader went away (| head): nothing left to say, and no one to say it to
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")
            return 1


def _report_args(args) -> int:
    return _report(args.dir, experiment=args.experiment, ok_only=args.ok_only, min_n=args.min_n,
                   max_n=args.max_n, n_boot=args.bootstrap, all_metrics=args.all, plots=not args.no_plots,
                   out=args.out, statistic=args.statistic)


def _presets(args) -> int:
    from .presets import get_preset, preset_names

    if args.show:
        try:
            exp = get_preset(args.show)
        except KeyError as exc:
            return _fail("presets", exc)
        print(exp.to_toml(), end="")
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
    from .runner import check_run_options, run_experiment
    from .store import ResultStore, StoreError, import_archive

    try:  # everything about the definition and the command is checked before anything is written
        stop_after = _stop_after(args)
        exp = load_experiment(args.spec)
        sizes = args.sample_sizes if args.sample_sizes is not None else list(exp.sample_sizes)
        if args.max_n is not None:
            sizes = [n for n in sizes if n <= args.max_n]
        exp = exp.with_grid(sample_sizes=sizes, n_replications=args.replications)
        check_run_options(args.scheduler, args.jobs, args.threads_per_job, args.order, stop_after)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        return _fail("run", exc)
    out = args.out if args.out is not None else Path(f"rates-{exp.name}")
    created = not out.exists()
    try:
        # An archived run (results.csv and experiment.toml, no store: what a repository keeps) is taken
        # over, not run again and overwritten by the report's export; one of another definition or
        # version is refused.
        taken, why_not = import_archive(exp, out, out)
        if why_not:
            raise ValueError(f"{out} holds an archived run (results.csv) that cannot be resumed: {why_not}. "
                             "Give another --out; the report would overwrite its results.csv")
        if taken:
            print(f"{exp.name}: {taken} jobs taken over from the archived run in {out}")
        _guard_export(out, exp.name, None)  # a results.csv ahead of the store: taken in before the run
        # The store refuses another definition under this name (or another fastmoe version's rows) before
        # experiment.toml is replaced, so the directory keeps describing the study it holds.
        with ResultStore(out) as store:
            store.register(exp)
        exp.save(out / "experiment.toml")
        summary = run_experiment(exp, out, scheduler=args.scheduler, n_jobs=args.jobs,
                                 threads_per_job=args.threads_per_job, retry_failed=args.retry_failed,
                                 progress=not args.no_progress, order=args.order, stop_after=stop_after)
    except (ValueError, StoreError, sqlite3.DatabaseError, OSError, RuntimeError) as exc:
        if created:  # e.g. no Dask scheduler answered: a refused command leaves no directory behind
            _remove_if_empty_run(out)
        return _fail("run", exc)
    where = summary.executor + (f", {summary.n_workers} workers x {summary.threads_per_job} threads"
                                if summary.n_workers else "")
    print(f"{exp.name}: {summary.completed} jobs run ({summary.already_done} already stored, "
          f"{summary.duplicates} duplicate results ignored) in {summary.wall_time:.1f} s [{where}]; "
          f"status counts {summary.status_counts}; store {summary.store}")
    if summary.timed_out:
        print(f"{exp.name}: stopped at the time limit with {summary.total - summary.already_done - summary.completed} "
              "jobs left; run the same command again to resume")
    if args.no_report:
        return 0
    return _report(out, experiment=exp.name)


def _remove_if_empty_run(out: Path) -> None:
    """Remove the run directory ``out`` this command created when it holds no job's row."""
    from .store import STORE_FILENAME, ResultStore

    try:
        if (out / STORE_FILENAME).is_file():
            with ResultStore(out, read_only=True) as store:
                if store.count():
                    return
        shutil.rmtree(out)
    except (OSError, sqlite3.DatabaseError):
        pass  # the refusal is what the user needs to see


def _guard_export(directory: Path, experiment, out) -> None:
    """Refuse (``ValueError``) a report whose export would replace a ``results.csv`` holding jobs the
    store lacks, after taking in those of the store's definition and version
    (:func:`~fastmoe.experiments.store.archive_conflict`)."""
    from .store import CSV_FILENAME, ResultStore, archive_conflict, store_path

    database = store_path(directory)
    out_dir = out if out is not None else database.parent
    if not database.is_file() or not (out_dir / CSV_FILENAME).is_file():
        return
    with ResultStore(database, read_only=True) as store:
        if experiment is not None and experiment not in store.experiment_names():
            return  # not run yet: nothing of it to export
        name = store.experiment(experiment).name
    why, merged = archive_conflict(database, out_dir, name)
    if why:
        raise ValueError(why)
    if merged:
        print(f"{name}: {merged} jobs of {out_dir / CSV_FILENAME} that the store lacked taken into it")


def _report(directory, experiment=None, ok_only=False, min_n=None, max_n=None, n_boot=2000, all_metrics=False,
            plots=True, out=None, statistic="median") -> int:
    from .analysis import DEFAULT_INCLUDE, analyse
    from .store import StoreError, store_path, write_csv, write_parquet, write_rows

    directory = Path(directory)
    try:
        # The export replaces out_dir's results.csv: never by a store that lacks some of its jobs.
        _guard_export(directory, experiment, Path(out) if out is not None else None)
        report = analyse(directory, experiment, include=("ok",) if ok_only else DEFAULT_INCLUDE,
                         n_boot=n_boot, min_n=min_n, max_n=max_n, statistic=statistic)
    except (OSError, KeyError, ValueError, StoreError, sqlite3.DatabaseError) as exc:
        return _fail("report", exc)
    sizes = sorted({int(r["n"]) for r in report.records})
    window = [n for n in sizes if (min_n is None or n >= min_n) and (max_n is None or n <= max_n)]
    if (min_n is not None or max_n is not None) and len(window) < 2 <= len(sizes):
        # every slope would be nan, and the exports would be overwritten with them
        return _fail("report", f"--min-n/--max-n leave {len(window)} of the run's sample sizes "
                               f"({', '.join(map(str, sizes)) or 'none'}); a slope needs two")
    print(report.format_table(all_metrics=all_metrics))
    out_dir = Path(out) if out is not None else directory if directory.is_dir() else store_path(directory).parent
    exported = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        exported.append(write_csv(report.records, out_dir / "results.csv"))
        parquet = write_parquet(report.records, out_dir / "results.parquet")  # None without pyarrow
        exported += [parquet, write_rows(report.slope_rows(), out_dir / "slopes.csv"),
                     write_rows(report.summary_rows(), out_dir / "summary.csv")]
        if report.agreement:
            exported.append(write_rows(report.agreement, out_dir / "agreement.csv"))
        if plots:
            from .plots import plot_report

            try:
                exported += plot_report(report, out_dir / "plots")
            except ImportError as exc:  # matplotlib is an optional dependency (fastmoe[experiments])
                print(f"(plots not drawn: {exc}; pip install matplotlib, or fastmoe[experiments])")
    except OSError as exc:
        if out is None and not exported and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            print(f"fastmoe rates report: {out_dir} is read-only, so no files were written "
                  "(--out DIR writes them elsewhere)", file=sys.stderr)
            return 0
        return _fail("report", f"could not write {exc.filename or out_dir}: {exc.strerror or exc}")
    print("\nwrote " + ", ".join(str(p) for p in exported if p is not None))
    if parquet is None:
        print("(results.parquet not written: pyarrow is not installed; pip install pyarrow, or fastmoe[test])")
    return 0


def _compare(args) -> int:
    from .analysis import DEFAULT_INCLUDE, analyse, compare_runs
    from .store import StoreError

    if len(args.dirs) < 2:
        return _fail("compare", "give at least two run directories")
    chosen = args.experiment or [None]
    if len(chosen) == 1:
        chosen = chosen * len(args.dirs)
    elif len(chosen) != len(args.dirs):
        return _fail("compare", f"--experiment is given {len(chosen)} times for {len(args.dirs)} directories; "
                                "give it once (for every directory) or once per directory")
    include = ("ok",) if args.ok_only else DEFAULT_INCLUDE
    try:
        # The runs' own slope intervals only label the plot; the differences are bootstrapped below.
        n_boot = args.bootstrap if args.plot is not None else 0
        reports = [analyse(d, name, include=include, n_boot=n_boot, min_n=args.min_n, max_n=args.max_n,
                           statistic=args.statistic) for d, name in zip(args.dirs, chosen)]
    except (OSError, KeyError, ValueError, StoreError, sqlite3.DatabaseError) as exc:
        return _fail("compare", exc)
    base, others = reports[0], reports[1:]
    if args.metrics is not None:
        metrics = args.metrics
        missing = [m for m in metrics if not all(m in r.metrics for r in reports)]
        if missing:
            return _fail("compare", f"not in every run: {', '.join(missing)}")
    else:
        metrics = [m for m in base.metrics if all(m in r.metrics for r in others)]
    if not metrics:
        return _fail("compare", "the runs have no metric in common")
    table = compare_runs(reports, metrics, include=include, n_boot=args.bootstrap, min_n=args.min_n,
                         max_n=args.max_n, statistic=args.statistic)
    for i in range(1, len(reports)):
        if all(len(row[i - 1].difference.sizes) < 2 for row in table):
            return _fail("compare", f"{args.dirs[i]} shares fewer than two sample sizes with {args.dirs[0]}"
                                    f"{'' if args.min_n is None and args.max_n is None else ' within --min-n/--max-n'}: no slopes "
                                    "to compare")
    names = [f"{r.experiment.name} ({r.experiment.truth.gating_name})" for r in reports]
    print("runs: " + "; ".join(f"[{i}] {name}" for i, name in enumerate(names)))
    print(f"slopes of log({args.statistic} metric) on log(n) over the sample sizes (count in 'sizes') that run [i] "
          "shares with run [0] (slope[0]: those it shares with [1]); difference = slope[i] - slope[0] with its "
          "95% bootstrap interval and bootstrap p-value. plan: a comparison one of the two definitions "
          "declared ('planned'): its p-value is one-sided where a direction was declared and is read on its own; "
          "Holm: the other p-values adjusted by Holm's method over all of them in this table; * where the "
          "p-value read (planned) or adjusted (the rest) is below 0.05\n")
    head = f"{'metric':<14} {'slope[0]':>9}"
    for i in range(1, len(reports)):
        head += (f" {f'slope[{i}]':>9} {f'[{i}] - [0]':>10} {'95% CI':>18} {'plan':>4} {'p':>7} {'Holm':>7}"
                 f"   {'sizes':>5}")
    print(head)
    for metric, row in zip(metrics, table):
        line = f"{metric:<14} {row[0].difference.slope_a:>+9.3f}"
        for c in row:
            d = c.difference
            mark = {"two-sided": "!=", "less": "<", "greater": ">"}[d.alternative] if c.planned else ""
            holm_text = f"{'-':>7}" if c.planned else f"{c.p_holm:>7.4f}"
            line += (f" {d.slope_b:>+9.3f} {d.difference:>+10.3f} [{d.ci_low:>+7.3f}, {d.ci_high:>+7.3f}]"
                     f" {mark:>4} {d.p_value:>7.4f} {holm_text} {'*' if c.significant else ' '} {len(d.sizes):>5}")
        print(line)
    if args.plot is not None:
        from .plots import plot_comparison

        drawn = args.metrics if args.metrics is not None else [base.experiment.primary_loss]
        try:
            print(f"\nwrote {plot_comparison(reports, drawn, args.plot)}")
        except OSError as exc:
            return _fail("compare", f"could not write {exc.filename or args.plot}: {exc.strerror or exc}")
    return 0


def _paper(args) -> int:
    from .paper import ArchiveConflict, load_paper, run_paper, write_paper
    from .store import CSV_FILENAME, STORE_FILENAME, StoreError, why_not_resumable

    try:
        paper = load_paper()
        selected = paper.select(args.only)
    except (ValueError, KeyError, OSError) as exc:
        return _fail("paper", exc)
    if args.list:
        for study in selected:
            store = args.root / study.name / STORE_FILENAME
            archive = args.results / study.archive / CSV_FILENAME
            where = "store" if store.is_file() else "archive" if archive.is_file() else "not run"
            if where == "archive":
                try:  # rows of another version or definition, or none readable: a run starts afresh
                    where += ", not resumable" if why_not_resumable(study.experiment, archive.parent) else ""
                except (ValueError, KeyError, OSError) as exc:
                    where += f", unreadable ({exc})"
            print(f"{study.name:<36} {study.experiment.n_jobs:>6} jobs  {where:<22} {study.experiment.outline()}")
        return 0
    try:
        if not args.report_only:
            from .runner import check_run_options

            stop_after = _stop_after(args)
            check_run_options(args.scheduler, args.jobs, args.threads_per_job, args.order, stop_after)
            run_paper(paper, args.root, args.only, scheduler=args.scheduler, n_jobs=args.jobs,
                      threads_per_job=args.threads_per_job, progress=not args.no_progress,
                      results=None if args.fresh else args.results, order=args.order, stop_after=stop_after)
        if not args.no_report:
            doc = write_paper(paper, args.root, args.results, args.doc, n_boot=args.bootstrap, only=args.only,
                              replace_archives=args.replace_archive, merge_archives=not args.fresh)
            print(f"wrote {doc}")
    except ArchiveConflict as exc:
        print(f"fastmoe rates paper: {exc}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, StoreError, sqlite3.DatabaseError, OSError, RuntimeError) as exc:
        return _fail("paper", exc)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
