"""Rate experiments end to end: local processes, resume after SIGKILL, a real Dask cluster, the D1 rate."""

import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import fastmoe
from fastmoe.experiments import ResultStore, analyse, get_preset, run_experiment, run_job, runner
from fastmoe.experiments.job import run_batch
from fastmoe.experiments.plots import plot_comparison, plot_report

# Fits are deterministic for a fixed thread count, so records must agree to the last bit; compare the
# numbers a study is made of.
COMPARED = ("status", "n_iter", "converged", "loglik", "loglik_true", "D1", "a_max_0", "beta1_max_1")


def small_grid():
    return get_preset("exact-fit").with_grid(sample_sizes=[3000, 4000], n_replications=3)


def subprocess_env():
    """Environment for child processes that must import this fastmoe (installed or not)."""
    env = dict(os.environ)
    src = str(Path(fastmoe.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def rows(directory, name):
    from fastmoe.experiments import ResultStore

    with ResultStore(directory) as store:
        return {(r["n"], r["replication"]): r for r in store.records(name)}


def assert_same_rows(got, want):
    assert got.keys() == want.keys()
    for key in want:
        for field in COMPARED:
            assert got[key][field] == want[key][field], (key, field)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    exp = small_grid()
    out = tmp_path_factory.mktemp("local")
    summary = run_experiment(exp, out, n_jobs=2, threads_per_job=1, progress=False)
    return exp, out, summary


def test_small_grid_end_to_end(local_run, tmp_path):
    exp, out, summary = local_run
    assert (summary.completed, summary.already_done, summary.duplicates) == (exp.n_jobs, 0, 0)
    assert summary.status_counts == {"ok": exp.n_jobs}
    stored = rows(out, exp.name)
    assert len(stored) == exp.n_jobs
    record = stored[(3000, 0)]
    assert record["fastmoe_version"] == fastmoe.__version__
    assert record["loglik"] >= record["loglik_true"] - 50  # the MLE is near the truth
    assert record["n_threads"] == 1 and record["D1"] > 0 and record["cell_size_0"] == 1
    # One job re-run alone, in this process, gives the same numbers: its seed is (base_seed, n, rep).
    alone = run_job(exp, 3000, 0, n_threads=1)
    assert all(alone[f] == record[f] for f in COMPARED)
    # A second run finds everything done and adds nothing.
    again = run_experiment(exp, out, progress=False)
    assert (again.completed, again.already_done) == (0, exp.n_jobs)
    report = analyse(out, n_boot=50)
    assert set(report.slopes) >= {"D1", "a_max_0", "mass_err_1"}
    assert "D1" in report.format_table()
    files = plot_report(report, tmp_path / "plots", dpi=50)
    assert {p.suffix for p in files} == {".png", ".pdf"} and all(p.stat().st_size > 0 for p in files)
    compared = plot_comparison([report, report], ["D1", "a_mean_0"], tmp_path / "compare.png")
    assert compared.stat().st_size > 0


def _crashing_batch(crash, definition, jobs, n_threads=1):
    """``run_batch``, except that a job in ``crash`` kills its worker process, as a segfaulting fit would."""
    if multiprocessing.parent_process() is None:
        raise RuntimeError("the crash hook runs in the coordinating process; it would kill the test run")
    records = []
    for job in jobs:
        if tuple(job) in crash:
            os._exit(86)
        records += run_batch(definition, [job], n_threads)
    return records


@pytest.fixture
def crash_jobs(monkeypatch):
    """``crash_jobs({(n, replication), ...})`` makes those jobs kill their local worker process.

    The runner ships this module's hook instead of ``run_batch``; local workers start with the coordinator's
    ``sys.path``, so they import it from here.
    """
    def arm(jobs):
        monkeypatch.setattr(runner, "run_batch", functools.partial(_crashing_batch, frozenset(jobs)))

    return arm


def test_job_that_kills_its_worker_is_recorded_as_crashed(tmp_path, crash_jobs):
    # (3000, 1) calls os._exit in its worker: the pool breaks, the in-flight jobs are re-run alone, the
    # culprit alone is recorded as crashed and every other job finishes normally.
    exp = dataclasses.replace(small_grid(), name="crash-test")
    crash_jobs({(3000, 1)})
    summary = run_experiment(exp, tmp_path, n_jobs=2, threads_per_job=1, progress=False)
    assert summary.crashed == 1 and summary.completed == exp.n_jobs
    assert summary.status_counts == {"ok": exp.n_jobs - 1, "crashed": 1}
    stored = rows(tmp_path, exp.name)
    assert stored[(3000, 1)]["status"] == "crashed" and "killed its worker" in stored[(3000, 1)]["error"]
    assert all(r["status"] == "ok" for key, r in stored.items() if key != (3000, 1))


def test_resume_after_sigkill_never_duplicates(tmp_path):
    out = tmp_path / "run"
    sizes, reps = [3000, 3500, 4000, 4500], 10
    total = len(sizes) * reps
    cmd = [sys.executable, "-c", "import sys; from fastmoe.experiments.cli import main; sys.exit(main())",
           "rates", "run", "exact-fit", "--out", str(out), "--sample-sizes", ",".join(map(str, sizes)),
           "--replications", str(reps), "--jobs", "2", "--threads-per-job", "1", "--no-progress"]
    env = subprocess_env()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    db = out / "results.sqlite"
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
                    with contextlib.suppress(sqlite3.OperationalError):  # tables not created yet
                        stored = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            if stored >= 6:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # The worker processes (and the fork server) notice that the coordinator is gone and exit alone.
        orphans_gone = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not orphans_gone:
            try:
                os.killpg(proc.pid, 0)
                time.sleep(0.1)
            except ProcessLookupError:
                orphans_gone = True
        assert orphans_gone, "worker processes outlived the killed coordinator"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker processes of that run
        proc.stderr.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        before = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert 6 <= before < total
    done = subprocess.run(cmd + ["--no-report"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{total - before} jobs run ({before} already stored" in done.stdout
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == total
        per_run = dict(conn.execute("SELECT run_id, COUNT(*) FROM results GROUP BY run_id").fetchall())
        keys = conn.execute("SELECT COUNT(DISTINCT n || '-' || replication) FROM results").fetchone()[0]
    assert sorted(per_run.values()) == sorted([before, total - before])
    assert keys == total


@contextlib.contextmanager
def dask_cluster(tmp_path):
    """A scheduler and one single-threaded worker as separate processes on 127.0.0.1, always torn down."""
    scheduler_file = tmp_path / "scheduler.json"
    env = subprocess_env()
    procs = []
    logs = []

    def start(args, name):
        log = open(tmp_path / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
               "127.0.0.1:0", "--scheduler-file", str(scheduler_file)], "scheduler")
        start([sys.executable, "-m", "dask", "worker", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
               "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--nworkers", "1"], "worker")
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        yield address
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for log in logs:
            log.close()


def test_dask_cluster_gives_the_local_rows(local_run, tmp_path):
    exp, local_out, _ = local_run
    with dask_cluster(tmp_path) as address:
        summary = run_experiment(exp, tmp_path / "dask", scheduler=address, progress=False)
    assert summary.executor == "dask" and summary.n_workers == 1
    assert summary.completed == exp.n_jobs
    assert_same_rows(rows(tmp_path / "dask", exp.name), rows(local_out, exp.name))
    with ResultStore(tmp_path / "dask", read_only=True) as store:  # the run's record has it too (was NULL)
        assert [(r["executor"], r["n_workers"]) for r in store.runs(exp.name)] == [("dask", 1)]


def test_exact_fit_preset_has_the_root_n_rate(tmp_path):
    exp = get_preset("exact-fit").with_grid(sample_sizes=[3000, 6000, 12000, 24000], n_replications=12)
    summary = run_experiment(exp, tmp_path, progress=False)
    assert summary.status_counts.get("ok", 0) >= exp.n_jobs - 2
    fit = analyse(tmp_path, n_boot=500).slopes["D1"]
    assert -0.65 <= fit.slope <= -0.35, fit
    assert fit.theory == -0.5 and not math.isnan(fit.ci_low)


def test_replication_order_runs_whole_replications_in_turn(tmp_path, monkeypatch):
    # Synchronous runs go job by job in the planned order: with order="replication" every size of a
    # replication is stored before the next replication starts.
    exp = small_grid()
    seen = []
    real = runner.run_batch

    def recording(definition, batch, threads):
        seen.extend(batch)
        return real(definition, batch, threads)

    monkeypatch.setattr(runner, "run_batch", recording)
    summary = run_experiment(exp, tmp_path, scheduler="synchronous", order="replication", progress=False)
    assert summary.completed == exp.n_jobs
    assert seen == [(n, rep) for rep in range(3) for n in (4000, 3000)]
    assert rows(tmp_path, exp.name).keys() == set(exp.jobs())


@pytest.mark.parametrize("scheduler", ["synchronous", None, "dask"])
def test_stop_after_starts_no_job_past_the_deadline_and_resumes(tmp_path, monkeypatch, scheduler):
    # The deadline "passes" once two rows are stored: no job starts after that, the jobs running then
    # finish and are stored (on Dask no more tasks are submitted than the worker has threads), and the
    # next run does the rest, each job once. A deadline passed at the start runs nothing.
    if scheduler == "dask":
        with dask_cluster(tmp_path) as address:
            _stop_and_resume(tmp_path / "run", monkeypatch, address)
    else:
        _stop_and_resume(tmp_path, monkeypatch, scheduler)


def _stop_and_resume(tmp_path, monkeypatch, scheduler):
    exp = small_grid()
    recorded = []
    add = runner._Recorder.add

    def counting(self, records):
        recorded.extend(records)
        return add(self, records)

    monkeypatch.setattr(runner._Recorder, "add", counting)
    local = scheduler is None
    options = dict(scheduler=scheduler, n_jobs=2 if local else None, threads_per_job=1, progress=False,
                   batch_seconds=0.0)  # one job per task
    none = run_experiment(exp, tmp_path, stop_after=0.0, **options)  # passed before the first job
    assert none.completed == 0 and none.timed_out
    monkeypatch.setattr(runner._Deadline, "passed", lambda self: self.active and len(recorded) >= 2)
    first = run_experiment(exp, tmp_path, stop_after=3600.0, **options)
    assert first.timed_out
    # Synchronous and Dask: one job at a time, so exactly two. Local, two workers: at most the two
    # running when the second row came.
    assert 2 <= first.completed <= (3 if local else 2) < exp.n_jobs
    second = run_experiment(exp, tmp_path, **options)
    assert not second.timed_out and second.completed == exp.n_jobs - first.completed
    assert rows(tmp_path, exp.name).keys() == set(exp.jobs()) and second.duplicates == 0
    with pytest.raises(ValueError, match="stop_after"):
        run_experiment(exp, tmp_path, stop_after=-1.0, **options)


def test_cli_max_minutes_stops_and_says_so(tmp_path, capsys):
    from fastmoe.experiments.cli import main

    args = ["rates", "run", "exact-fit", "--out", str(tmp_path), "--sample-sizes", "3000", "--replications", "2",
            "--scheduler", "synchronous", "--order", "replication", "--no-progress", "--no-report"]
    assert main(args + ["--max-minutes", "0"]) == 0
    out = capsys.readouterr().out
    assert "exact-fit: 0 jobs run" in out and "stopped at the time limit with 2 jobs left" in out
    assert main(args) == 0 and "2 jobs run (0 already stored" in capsys.readouterr().out


def test_cli_run_takes_an_archived_run_over_and_never_overwrites_it(tmp_path, capsys):
    # An archived run (results.csv and experiment.toml, what a repository keeps) given as --out: its jobs
    # are taken over, not run again and overwritten by the report's export; another version's is refused.
    from fastmoe.experiments.cli import main
    from fastmoe.experiments.store import load_run, read_csv, write_csv

    exp = get_preset("exact-fit").with_grid(sample_sizes=[3000], n_replications=2)
    run_experiment(exp, tmp_path / "run", scheduler="synchronous", progress=False)
    _, records, _ = load_run(tmp_path / "run")
    for name in ("archive", "old", "bare"):
        (tmp_path / name).mkdir()
        write_csv(records, tmp_path / name / "results.csv")
        if name != "bare":
            exp.save(tmp_path / name / "experiment.toml")
    args = ["rates", "run", "exact-fit", "--sample-sizes", "3000", "--replications", "3", "--scheduler",
            "synchronous", "--no-progress", "--no-report"]
    assert main(args + ["--out", str(tmp_path / "archive")]) == 0
    out = capsys.readouterr().out
    assert "2 jobs taken over from the archived run" in out and "1 jobs run (2 already stored" in out
    old = read_csv(tmp_path / "old" / "results.csv")
    for record in old:
        record["fastmoe_version"] = "0.0.1"
    write_csv(old, tmp_path / "old" / "results.csv")
    before = (tmp_path / "old" / "results.csv").read_text()
    assert main(args + ["--out", str(tmp_path / "old")]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
    assert (tmp_path / "old" / "results.csv").read_text() == before
    assert not (tmp_path / "old" / "results.sqlite").exists()
    assert main(args + ["--out", str(tmp_path / "bare")]) == 2  # rows without their definition
    assert "holds results.csv but no experiment.toml" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "x"), "--max-minutes", "-1"]) == 2
    assert "--max-minutes must be a number of minutes >= 0, got -1.0" in capsys.readouterr().err


def test_retry_failed_reruns_this_grids_failures_only(tmp_path):
    exp = get_preset("exact-fit").with_grid(sample_sizes=[3000], n_replications=1)
    with ResultStore(tmp_path) as store:
        store.register(exp)
        for n in (5, 3000):
            store.add({"experiment": exp.name, "n": n, "replication": 0, "status": "failed", "error": "x"})
    summary = run_experiment(exp, tmp_path, scheduler="synchronous", retry_failed=True, progress=False)
    assert summary.completed == 1
    with ResultStore(tmp_path, read_only=True) as store:
        assert {(r["n"], r["status"]) for r in store.records(exp.name)} == {(5, "failed"), (3000, "ok")}


def test_a_run_without_progress_bar_needs_no_tqdm(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    summary = run_experiment(small_grid(), tmp_path, scheduler="synchronous", progress=False, stop_after=0.0)
    assert summary.completed == 0 and summary.timed_out


def test_report_without_matplotlib_writes_the_tables_and_says_so(local_run, tmp_path, monkeypatch, capsys):
    from fastmoe.experiments.cli import main

    _, out, _ = local_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    assert main(["rates", "report", str(out), "--out", str(tmp_path), "--bootstrap", "50"]) == 0
    assert "plots not drawn" in capsys.readouterr().out and (tmp_path / "slopes.csv").is_file()


@pytest.mark.parametrize("batch_seconds", [0.0, 10.0])
def test_dask_with_a_deadline_goes_on_past_a_killed_worker(tmp_path, monkeypatch, batch_seconds):
    # A task whose worker died (KilledWorker): a batch of several jobs is rerun job by job, a single job
    # is recorded as crashed, and the queue goes on (with one worker thread and a deadline, nothing else
    # was in flight, and the rest of the grid was once left unrun without a word).
    distributed = pytest.importorskip("distributed")
    from distributed.scheduler import KilledWorker

    exp = small_grid()
    real = runner.run_batch

    def dies_on_one_job(definition, batch, threads):
        if (4000, 1) in [tuple(job) for job in batch]:
            raise KilledWorker("fastmoe-task", types.SimpleNamespace(address="tcp://127.0.0.1:1"), 1)
        return real(definition, batch, threads)

    monkeypatch.setattr(runner, "run_batch", dies_on_one_job)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        summary = run_experiment(exp, tmp_path, scheduler=client, progress=False, batch_seconds=batch_seconds,
                                 stop_after=3600.0)
    assert summary.completed == exp.n_jobs and not summary.timed_out
    stored = rows(tmp_path, exp.name)
    assert stored.keys() == set(exp.jobs())
    assert {key for key, r in stored.items() if r["status"] == "crashed"} == {(4000, 1)}


def test_report_never_overwrites_a_results_csv_ahead_of_its_store(tmp_path, capsys):
    from fastmoe.experiments.cli import main
    from fastmoe.experiments.store import load_run, read_csv, write_csv

    exp = get_preset("exact-fit").with_grid(sample_sizes=[3000], n_replications=2)
    run_experiment(exp, tmp_path, scheduler="synchronous", progress=False)
    _, records, _ = load_run(tmp_path)
    write_csv(records, tmp_path / "results.csv")  # the export, then the store loses a job
    with ResultStore(tmp_path) as store:
        assert store.delete(exp.name, ["ok"], keys=[(3000, 1)]) == 1
    assert main(["rates", "report", str(tmp_path), "--bootstrap", "50"]) == 0
    assert "1 jobs of" in capsys.readouterr().out and len(read_csv(tmp_path / "results.csv")) == 2
    with ResultStore(tmp_path) as store:
        assert store.count(exp.name) == 2  # taken back in
        store.delete(exp.name, ["ok"], keys=[(3000, 1)])
    other = [dict(r, fastmoe_version="0.0.1") for r in records]
    write_csv(other, tmp_path / "results.csv")
    before = (tmp_path / "results.csv").read_text()
    assert main(["rates", "report", str(tmp_path), "--bootstrap", "50"]) == 2
    assert "exporting would lose them" in capsys.readouterr().err
    assert (tmp_path / "results.csv").read_text() == before
