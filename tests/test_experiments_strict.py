"""Study definitions and stores that cannot be misread (issue 17): a strict schema checked before anything is
written, read-only and damaged stores, atomic outputs, clean one-line exits."""

import contextlib
import csv
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastmoe
from fastmoe.experiments import Experiment, ResultStore, get_preset, run_experiment, runner
from fastmoe.experiments._atomic import atomic_open
from fastmoe.experiments.cli import build_parser, main
from fastmoe.experiments.schema import DefinitionError
from fastmoe.experiments.store import StoreError

INF, NAN = math.inf, math.nan


def small_experiment(**changes):
    base = get_preset("exact-fit").with_grid(sample_sizes=[300, 500], n_replications=3)
    return Experiment.from_dict({**base.to_dict(), **changes})


def fake_record(exp, n, rep, value):
    return {"experiment": exp.name, "n": n, "replication": rep, "status": "ok", "D1": value, "loglik": -1.0,
            "n_iter": 3, "fit_time": 0.01, "params": {"beta0": [0.0]}, "seed": [0, n, rep]}


def fake_run(directory, exp, exponent=-0.5, seed=0, reps=None):
    """A run directory whose store holds ``exp`` with power-law D1 values for every job (no fits)."""
    rng = np.random.default_rng(seed)
    with ResultStore(directory) as store:
        store.register(exp)
        run_id = store.start_run(exp.name, "synchronous", 1, 1)
        for n, rep in exp.jobs():
            if reps is None or rep < reps:
                store.add(fake_record(exp, n, rep, float(3.0 * n**exponent * rng.lognormal(0, 0.3))), run_id)
    exp.save(Path(directory) / "experiment.toml")
    return Path(directory)


def subprocess_env():
    env = dict(os.environ)
    src = str(Path(fastmoe.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


CLI = [sys.executable, "-c", "import sys; from fastmoe.experiments.cli import main; sys.exit(main())"]


def one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# -- 1-3: malformed definitions ---------------------------------------------------------------------------
def set_path(data, path, value):
    *head, last = path.split(".")
    for key in head:
        data = data[key]
    data[last] = value


# (dotted field, malformed value, text the message must hold). Issue 17's cases first: values that were
# silently truncated or misread (1), accepted and then failing every job (2), or refused with a traceback (3).
MALFORMED = [
    ("exact_translation", "false", "exact_translation must be true or false"),
    ("n_experts", 2.7, "n_experts must be an integer"),
    ("sample_sizes", [3000.7], r"sample_sizes\[0\] must be an integer"),
    ("n_replications", 2.5, "n_replications must be an integer"),
    ("base_seed", 1.5, "base_seed must be an integer"),
    ("fit.max_iter", 2.5, "fit.max_iter must be an integer"),
    ("fit.n_init", 1.5, "fit.n_init must be an integer"),
    ("fit.init_scale", INF, "fit.init_scale must be a finite number"),
    ("x_law.high", INF, "x_law.high must be a finite number"),
    ("truth.gating", None, "truth.gating must be one of"),
    ("truth.gating", 3, "truth.gating must be one of"),
    ("sample_sizes", 3000, "sample_sizes must be a list"),
    ("fit.max_iter", "100", "fit.max_iter must be an integer"),
    ("fit.l2", "0", "fit.l2 must be a finite number"),
    ("sample_sizes", [10**20], r"sample_sizes\[0\] must be an integer in \[2, "),
    # and their kin
    ("n_experts", True, "n_experts must be an integer"),
    ("n_experts", 2.0, "n_experts must be an integer"),
    ("fit.tol", True, "fit.tol must be a finite number"),
    ("fit.tol", NAN, "fit.tol must be a finite number"),
    ("coef_limit", -INF, "coef_limit must be a finite number > 0"),
    ("x_law.low", "-1", "x_law.low must be a finite number"),
    ("x_law.scale", NAN, "x_law.scale must be a finite number"),
    ("fit.split_cells", [0.5], r"fit.split_cells\[0\] must be an integer"),
    ("fit.split_spread", "0.2", "fit.split_spread must be a finite number"),
    ("theory.D1", "fast", "theory.D1 must be a finite number"),
    ("losses", ["D1", 2], r"losses\[1\] must be a loss name"),
    ("losses", [], "losses is empty"),
    ("primary_loss", 1, "primary_loss must be a loss name"),
    ("description", 3, "description must be a string"),
    ("name", 7, "name must be letters"),
    ("x_law", 3, "x_law must be a table"),
    ("fit", "truth", "fit must be a table"),
    ("truth", [1, 2], "truth must be a table"),
    ("truth.beta0", ["a", "b"], r"truth.beta0\[0\] must be a finite number"),
    ("truth.b", [[1.0, INF, 0.0], [0.0, 0.0, 0.0]], r"truth.b\[0\]\[1\] must be a finite number"),
    ("truth.beta1", [1.0, 2.0], r"truth.beta1\[0\] must be a list, got 1.0 \(float\) \(truth.beta1 holds lists"),
    ("truth.gatng", "tanh", "unknown truth keys"),
    ("truth_path", 1, "truth_path must be a table"),
    ("fit.max_iter", None, "fit.max_iter must be an integer"),
]


def malformed(path, value):
    data = get_preset("exact-fit").with_grid(sample_sizes=[300, 400], n_replications=2).to_dict()
    set_path(data, path, value)
    return data


@pytest.mark.parametrize("path, value, message", MALFORMED, ids=[f"{p}={v!r}" for p, v, _ in MALFORMED])
def test_malformed_definition_is_refused_naming_the_field(path, value, message):
    with pytest.raises(DefinitionError, match=message):
        Experiment.from_dict(malformed(path, value))


def _toml_expressible(value):
    if value is None:
        return False
    if isinstance(value, list):
        return all(_toml_expressible(v) for v in value) and len({type(v) for v in value}) <= 1
    return not (isinstance(value, int) and abs(value) >= 2**63)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_malformed_definitions_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, suffix):
    from fastmoe.experiments import _toml

    def no_job(*args, **kwargs):
        raise AssertionError("a job ran")

    monkeypatch.setattr(runner, "run_batch", no_job)
    checked = 0
    for i, (path, value, message) in enumerate(MALFORMED):
        if suffix == ".toml" and not _toml_expressible(value):
            continue  # TOML has no null, and mixed arrays are a parse error of their own
        definition = tmp_path / f"case{i}{suffix}"
        data = malformed(path, value)
        definition.write_text(_toml.dumps(data) if suffix == ".toml" else json.dumps(data))
        out = tmp_path / f"out{i}"
        assert main(["rates", "run", str(definition), "--out", str(out), "--no-progress"]) == 2, path
        captured = capsys.readouterr()
        assert captured.out == ""
        line = one_line(captured.err)
        assert line.startswith("fastmoe rates run: ") and re.search(message, line), (path, line)
        assert not out.exists(), path  # no store, no experiment.toml, no job
        checked += 1
    assert checked >= 30


def test_valid_definitions_keep_their_values_and_digests():
    # Integers written for reals stay as written, so the definition (and its digest) does not move.
    data = get_preset("exact-fit").to_dict()
    data["x_law"] = {"kind": "uniform", "low": -1, "high": 1, "scale": 1}
    data["fit"]["l2"] = 0
    exp = Experiment.from_dict(data)
    assert exp.to_dict()["x_law"] == {"kind": "uniform", "low": -1, "high": 1, "scale": 1}
    assert Experiment.from_dict(json.loads(exp.to_json())).model_digest() == exp.model_digest()
    # NumPy integers are integers.
    grid = exp.with_grid(sample_sizes=np.array([400, 300]), n_replications=np.int64(2))
    assert grid.sample_sizes == (300, 400) and type(grid.n_replications) is int
    # A bare loss name is one loss, as before.
    assert Experiment.from_dict({**data, "losses": "D1"}).losses == ("D1",)


def test_definitions_built_in_python_are_checked_too():
    exp = small_experiment()
    with pytest.raises(DefinitionError, match="n_replications must be an integer"):
        exp.with_grid(n_replications=2.5)
    with pytest.raises(DefinitionError, match="fit.max_iter must be an integer"):
        dataclasses.replace(exp, fit=dataclasses.replace(exp.fit, max_iter=2.5))
    with pytest.raises(TypeError, match="fit must be a FitOptions"):
        dataclasses.replace(exp, fit={"max_iter": 10})


def test_cli_sample_sizes_are_strict(tmp_path, capsys):
    parser = build_parser()
    assert parser.parse_args(["rates", "run", "x", "--sample-sizes", "3000, 1e4,20000"]).sample_sizes == [
        3000, 10000, 20000]
    for bad in ("3000.9", "3000,abc", "1e3.5"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["rates", "run", "x", "--sample-sizes", bad])
        assert exit_.value.code == 2
        assert "expected comma-separated integers" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["rates", "run", "exact-fit", "--out", str(out), "--sample-sizes", "1e20"]) == 2
    assert "sample_sizes[0] must be an integer in [2, 2147483647]" in one_line(capsys.readouterr().err)
    assert not out.exists()


# -- 4: a refused definition leaves the run directory as it was -----------------------------------------
def test_a_refused_definition_does_not_replace_experiment_toml(tmp_path, capsys):
    exp = small_experiment()
    out = fake_run(tmp_path / "run", exp)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and "sqlite" not in p.name}
    other = tmp_path / "other.toml"
    dataclasses.replace(exp, base_seed=exp.base_seed + 1).save(other)
    assert main(["rates", "run", str(other), "--out", str(out), "--no-progress"]) == 2
    assert "different definition" in one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and "sqlite" not in p.name} == before
    assert Experiment.load(out / "experiment.toml") == exp


@pytest.mark.parametrize("options, message", [
    (["--jobs", "0"], "n_jobs must be >= 1, got 0"),
    (["--threads-per-job", "-1"], "threads_per_job must be >= 1, got -1"),
    (["--max-minutes", "-1"], "--max-minutes must be a number of minutes >= 0, got -1.0"),
    (["--max-minutes", "nan"], "--max-minutes must be a number of minutes >= 0, got nan"),
])
def test_refused_run_options_write_nothing(tmp_path, capsys, options, message):
    """The command's own options are checked with the definition, before the store registers the grid
    or experiment.toml is replaced: a refused run neither creates a directory nor changes a study's grid."""
    out = tmp_path / "new"
    assert main(["rates", "run", "exact-fit", "--out", str(out), "--no-progress", *options]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not out.exists()
    exp = small_experiment()
    run = fake_run(tmp_path / "run", exp)
    before = snapshot(run)
    spec = tmp_path / "spec.toml"
    exp.save(spec)
    assert main(["rates", "run", str(spec), "--out", str(run), "--no-progress", "--sample-sizes", "100",
                 "--replications", "1", *options]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert snapshot(run) == before


def test_report_says_when_it_skips_parquet(tmp_path, capsys, monkeypatch):
    """pyarrow is in the test extra only: under fastmoe[experiments] the Parquet export was skipped silently."""
    from fastmoe.experiments import store

    monkeypatch.setattr(store, "write_parquet", lambda records, path: None)  # as without pyarrow
    run = fake_run(tmp_path / "run", small_experiment().with_grid(sample_sizes=[1000, 3000], n_replications=3))
    assert main(["rates", "report", str(run), "--bootstrap", "0", "--no-plots"]) == 0
    assert "results.parquet not written: pyarrow is not installed" in capsys.readouterr().out
    assert not (run / "results.parquet").exists() and (run / "results.csv").exists()


def test_an_unknown_preset_is_one_line(capsys):
    assert main(["rates", "presets", "--show", "nope"]) == 2
    assert "no preset 'nope'" in one_line(capsys.readouterr().err)


def test_bootstrap_counts_and_windows_that_leave_no_slope_are_refused(tmp_path, capsys):
    parser = build_parser()
    for bad in ("-5", "1", "19", "many"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["rates", "report", "x", "--bootstrap", bad])
        assert exit_.value.code == 2
        assert "--bootstrap" in capsys.readouterr().err
    assert parser.parse_args(["rates", "report", "x", "--bootstrap", "0"]).bootstrap == 0
    exp = small_experiment().with_grid(sample_sizes=[1000, 3000, 10000], n_replications=4)
    run = fake_run(tmp_path / "run", exp)
    assert main(["rates", "report", str(run), "--bootstrap", "20", "--no-plots"]) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert main(["rates", "report", str(run), "--bootstrap", "20", "--min-n", "20000"]) == 2
    assert "leave 0 of the run's sample sizes (1000, 3000, 10000); a slope needs two" in one_line(
        capsys.readouterr().err)
    assert snapshot(run) == before  # slopes.csv is not overwritten with nan
    other = fake_run(tmp_path / "other", exp.with_grid(sample_sizes=[20000, 50000], n_replications=4))
    assert main(["rates", "compare", str(run), str(other), "--bootstrap", "20"]) == 2
    assert "shares fewer than two sample sizes with" in one_line(capsys.readouterr().err)


# -- 3 and 5: damaged and read-only stores ----------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other database"])
def test_a_damaged_store_is_refused_with_one_line(tmp_path, capsys, damage):
    good = fake_run(tmp_path / "good", small_experiment()) / "results.sqlite"
    bad = tmp_path / "bad" / "results.sqlite"
    bad.parent.mkdir()
    if damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "truncated":
        with ResultStore(good) as store:  # fold the log into the file, then cut the file
            store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        bad.write_bytes(good.read_bytes()[:6000])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        with contextlib.closing(sqlite3.connect(bad)) as conn:
            conn.execute("CREATE TABLE t (x)")
    size = bad.stat().st_size
    for argv in (["rates", "report", str(bad.parent)], ["rates", "compare", str(bad.parent), str(good.parent)]):
        assert main(argv) == 2
        line = one_line(capsys.readouterr().err)
        assert str(bad) in line and ("not a readable result store" in line or "not a fastmoe result store" in line)
    with pytest.raises(StoreError):
        ResultStore(bad, read_only=True)
    assert bad.stat().st_size == size  # reading changed nothing


def test_a_read_only_store_reads_and_refuses_writes(tmp_path):
    exp = small_experiment()
    out = fake_run(tmp_path / "run", exp)
    with pytest.raises(FileNotFoundError, match="no result store"):
        ResultStore(tmp_path / "nowhere", read_only=True)
    assert not (tmp_path / "nowhere").exists()
    with ResultStore(out, read_only=True) as store:
        assert store.experiment() == exp and store.count(exp.name) == exp.n_jobs
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.add(fake_record(exp, 300, 99, 1.0))


@pytest.mark.parametrize("refusal", ["unable to open database file", "attempt to write a readonly database"])
def test_a_store_in_a_directory_one_cannot_write_is_read_as_immutable(tmp_path, monkeypatch, refusal):
    # Without its -shm file a WAL store cannot be opened read-only where SQLite may not create that file;
    # root on a read-only mount and a user without write permission hear different messages.
    from fastmoe.experiments import store as store_module

    exp = small_experiment()
    out = fake_run(tmp_path / "run", exp)
    connect = sqlite3.connect

    def refusing(database, *args, **kwargs):
        if "immutable=1" not in database:
            raise sqlite3.OperationalError(refusal)
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(store_module.sqlite3, "connect", refusing)
    monkeypatch.setattr(store_module.os, "access", lambda path, mode: False)
    with ResultStore(out, read_only=True) as store:
        assert store.count(exp.name) == exp.n_jobs
    (out / "results.sqlite-wal").write_bytes(b"rows not yet checkpointed")
    with pytest.raises(StoreError, match="write-ahead log"):
        ResultStore(out, read_only=True)


@pytest.fixture
def read_only_copy(tmp_path):
    """``read_only_copy(src)``: a copy of the directory ``src`` that cannot be written. For a user, its
    permissions say so; for root (whom permissions do not stop), it is seen through a read-only bind mount."""
    mounts, frozen = [], []

    def make(src):
        copy = tmp_path / "archive"
        shutil.copytree(src, copy)
        if getattr(os, "geteuid", lambda: 1)() != 0:
            for path in [copy, *copy.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
                frozen.append(path)
            view = copy
        else:
            view = tmp_path / "view"
            view.mkdir()
            if subprocess.run(["mount", "--bind", str(copy), str(view)], capture_output=True).returncode:
                pytest.skip("running as root without the right to bind-mount a read-only view")
            mounts.append(view)
            if subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode:
                pytest.skip("running as root without the right to remount read-only")
        with pytest.raises(OSError):
            (view / "probe").write_text("x")
        return view

    yield make
    for view in mounts:
        if subprocess.run(["umount", str(view)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(view)], check=True)  # still busy: detach it now, free it later
    for path in reversed(frozen):
        path.chmod(path.stat().st_mode | 0o200)


def snapshot(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def test_report_and_compare_read_a_read_only_run(tmp_path, capsys, read_only_copy):
    pytest.importorskip("matplotlib")
    exp = small_experiment().with_grid(sample_sizes=[1000, 3000, 10000], n_replications=4)
    run = fake_run(tmp_path / "run", exp)
    assert main(["rates", "report", str(run), "--bootstrap", "20"]) == 0  # the run's own report files
    archive = read_only_copy(run)
    before = snapshot(archive)
    capsys.readouterr()
    assert main(["rates", "report", str(archive), "--bootstrap", "20"]) == 0
    captured = capsys.readouterr()
    assert "12/12 jobs stored" in captured.out
    assert "read-only, so no files were written" in one_line(captured.err)
    assert main(["rates", "compare", str(archive), str(run), "--metrics", "D1", "--bootstrap", "20"]) == 0
    assert next(line for line in capsys.readouterr().out.splitlines() if line.startswith("D1"))
    elsewhere = tmp_path / "elsewhere"
    assert main(["rates", "report", str(archive), "--bootstrap", "20", "--out", str(elsewhere)]) == 0
    assert (elsewhere / "results.csv").read_bytes() == (run / "results.csv").read_bytes()
    assert snapshot(archive) == before


# -- 6: atomic outputs, counts after a smaller grid, compare --experiment ---------------------------------
def test_atomic_open_keeps_the_old_file_on_an_error(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(OSError, match="No space"):
        with atomic_open(target, "w") as fh:
            fh.write("new, half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["out.csv"]
    with atomic_open(target, "w") as fh:
        fh.write("new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["out.csv"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_full_disk_leaves_the_old_report_files(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    exp = small_experiment().with_grid(sample_sizes=[1000, 3000, 10000], n_replications=4)
    run = fake_run(tmp_path / "run", exp, reps=3)
    assert main(["rates", "report", str(run), "--bootstrap", "20"]) == 0
    old = snapshot(run)
    fake_run(run, exp, seed=1)  # the fourth replications arrive: every output changes
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write_rows = csv.DictWriter.writerows

    def half_then_full(self, rows):
        rows = list(rows)
        write_rows(self, rows[: len(rows) // 2])
        raise full

    monkeypatch.setattr(csv.DictWriter, "writerows", half_then_full)
    capsys.readouterr()
    assert main(["rates", "report", str(run), "--bootstrap", "20"]) == 2
    assert "No space left on device" in one_line(capsys.readouterr().err)
    monkeypatch.undo()
    save = Figure.savefig

    def part_then_full(self, fname, **kwargs):
        save(self, fname, **kwargs)
        with open(fname, "rb+") if isinstance(fname, (str, Path)) else contextlib.nullcontext(fname) as fh:
            fh.truncate(100)
        raise full

    monkeypatch.setattr(Figure, "savefig", part_then_full)
    assert main(["rates", "report", str(run), "--bootstrap", "20"]) == 2
    now = snapshot(run)
    for name, content in now.items():
        if name.startswith("plots/"):
            assert content == old[name], name  # the new figure never replaced the old one
    assert not [p for p in run.rglob(".*.tmp")]


def test_a_killed_report_leaves_old_or_complete_files(tmp_path):
    pytest.importorskip("matplotlib")
    exp = small_experiment().with_grid(sample_sizes=[1000, 2000, 4000, 8000, 16000], n_replications=20)
    run = fake_run(tmp_path / "run", exp, reps=10)
    argv = CLI + ["rates", "report", str(run), "--bootstrap", "2000"]
    env = subprocess_env()
    start = time.monotonic()
    subprocess.run(argv, env=env, capture_output=True, check=True, timeout=120)
    duration = time.monotonic() - start
    old = snapshot(run)
    fake_run(run, exp, seed=1)  # more replications: every output changes
    complete = {".csv": lambda b: b.endswith(b"\n") and b.count(b"\n") >= 2,
                ".png": lambda b: b.endswith(b"IEND\xaeB`\x82"), ".pdf": lambda b: b.rstrip().endswith(b"%%EOF"),
                ".parquet": lambda b: b.startswith(b"PAR1") and b.endswith(b"PAR1")}
    outcomes = set()
    for fraction in (0.35, 0.5, 0.65, 0.8, 0.9, 0.97):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(fraction * duration)
        proc.kill()
        proc.wait(timeout=30)
        for name, content in snapshot(run).items():
            if name.endswith(".sqlite") or "sqlite-" in name or name == "experiment.toml":
                continue
            if Path(name).name.startswith("."):  # a temporary file of the killed writer
                continue
            suffix = Path(name).suffix
            assert content == old.get(name) or complete[suffix](content), (fraction, name, len(content))
            outcomes.add("old" if content == old.get(name) else "new")
    assert outcomes  # the check looked at files


def test_report_counts_the_jobs_of_the_latest_grid(tmp_path):
    from fastmoe.experiments import analyse

    big = small_experiment().with_grid(sample_sizes=[300, 400, 500], n_replications=3)
    run = fake_run(tmp_path / "run", big)
    small = big.with_grid(sample_sizes=[300], n_replications=2)
    summary = run_experiment(small, run, scheduler="synchronous", progress=False)
    assert (summary.total, summary.already_done, summary.completed) == (2, 2, 0)
    head = analyse(run, n_boot=10).format_table().splitlines()[0]
    assert "2/2 jobs stored (and 7 of an earlier, larger grid" in head


def test_compare_picks_experiments_from_a_store_holding_several(tmp_path, capsys):
    sizes = (1000, 3000, 10000, 30000, 100000)
    run = tmp_path / "both"
    for name, exponent, seed in (("slow", -0.25, 1), ("fast", -0.5, 2)):
        exp = small_experiment(name=name).with_grid(sample_sizes=sizes, n_replications=20)
        fake_run(run, exp, exponent=exponent, seed=seed)
    assert main(["rates", "compare", str(run), str(run), "--metrics", "D1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "holds experiments" in line and "'slow'" in line and "'fast'" in line and "name one" in line
    assert main(["rates", "compare", str(run), str(run), "--experiment", "slow", "--experiment", "fast",
                 "--metrics", "D1", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "[0] slow" in out and "[1] fast" in out
    slope_slow, slope_fast, difference = (float(v) for v in next(
        line for line in out.splitlines() if line.startswith("D1")).split()[1:4])
    assert abs(slope_slow + 0.25) < 0.1 and abs(slope_fast + 0.5) < 0.1 and difference < 0
    assert main(["rates", "compare", str(run), str(run), "--experiment", "slow", "--experiment", "fast",
                 "--experiment", "slow", "--metrics", "D1"]) == 2
    assert "once per directory" in one_line(capsys.readouterr().err)


# -- 3 and 7: schedulers, pools, signals ------------------------------------------------------------------
def test_a_bad_scheduler_address_ends_at_once_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    start = time.monotonic()
    for address in ("notaurl", "tcp://host-without-port", "http://127.0.0.1:8786"):
        assert main(["rates", "run", "exact-fit", "--out", str(out), "--scheduler", address]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"scheduler {address!r} is not a Dask scheduler address" in line
    assert time.monotonic() - start < 20 and not out.exists()


def test_an_unreachable_scheduler_is_reported_in_one_line(tmp_path, capsys):
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        start = time.monotonic()
        code = main(["rates", "run", "exact-fit", "--out", str(tmp_path / "run"), "--scheduler",
                     "tcp://127.0.0.1:1", "--sample-sizes", "300", "--replications", "1", "--no-progress"])
    assert code == 2 and time.monotonic() - start < 30
    assert "could not reach a Dask scheduler at tcp://127.0.0.1:1" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # the directory it created is gone again: nothing ran


def _die_at_start(coordinator_pid):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_while_the_pool_starts_is_named_as_such(tmp_path, monkeypatch):
    # The pool's start-up probe sees its worker die (here: SIGKILL in the initializer, as from an outside
    # killer); the message says so instead of blaming a missing __main__ guard.
    monkeypatch.setattr(runner, "_worker_init", _die_at_start)
    with pytest.raises(RuntimeError, match="a worker was killed by SIGKILL while the pool started") as error:
        run_experiment(small_experiment(), tmp_path, n_jobs=1, threads_per_job=1, progress=False)
    assert "__main__" not in str(error.value)


def test_a_script_without_main_guard_is_told_so(tmp_path):
    script = tmp_path / "study.py"
    script.write_text("from fastmoe.experiments import get_preset, run_experiment\n"
                      "exp = get_preset('exact-fit').with_grid(sample_sizes=[300], n_replications=1)\n"
                      f"run_experiment(exp, {str(tmp_path / 'run')!r}, n_jobs=1, progress=False)\n")
    done = subprocess.run([sys.executable, str(script)], env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "exited with status 1 while starting" in done.stderr and "__main__" in done.stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("signum, target", [(signal.SIGINT, "group"), (signal.SIGTERM, "coordinator")])
def test_a_signal_stops_the_run_with_one_line_and_the_rerun_completes(tmp_path, signum, target):
    # SIGINT to the process group is Ctrl-C in a terminal; SIGTERM to the coordinator alone is `kill PID`.
    out = tmp_path / "run"
    # Enough jobs that the run cannot finish between two looks at the store on a loaded machine: with 10
    # replications (the fits got faster) the test failed once in a suite run beside two other jobs,
    # cause not seen, and not again in 15 runs.
    sizes, reps = [3000, 3500, 4000, 4500], 30
    total = len(sizes) * reps
    cmd = CLI + ["rates", "run", "exact-fit", "--out", str(out), "--sample-sizes", ",".join(map(str, sizes)),
                 "--replications", str(reps), "--jobs", "2", "--threads-per-job", "1", "--no-progress",
                 "--no-report"]
    env = subprocess_env()
    # Files, not pipes: a pipe would also wait for any process of the run that outlived it.
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as stderr_file:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file, start_new_session=True)
    db = out / "results.sqlite"
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and proc.poll() is None and stored < 4:
            if db.exists():
                with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
                    with contextlib.suppress(sqlite3.OperationalError):
                        stored = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be stopped"
        stopped_at = time.monotonic()
        if target == "group":
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        proc.wait(timeout=60)
        assert time.monotonic() - stopped_at < 15
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum
    assert one_line(stderr_path.read_text()) == (f"fastmoe rates run: stopped by {name}; finished jobs are "
                                                 "stored, run the same command again to resume")
    deadline = time.monotonic() + 10  # the workers go with the coordinator
    while _live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _live_members(proc.pid), "worker processes outlived the stopped run"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == total
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM results GROUP BY status").fetchall())
    assert "failed" not in statuses and "crashed" not in statuses  # the interruption was recorded nowhere


def _live_members(session):
    """Processes of a session that are not zombies (from /proc: state and session id of every process)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.mark.parametrize("name, text, kind", [("bad.toml", 'name = "x"\nsample_sizes = [1,\n', "TOML"),
                                              ("bad.json", '{"name": "x",', "JSON")])
def test_a_definition_that_does_not_parse_is_named(tmp_path, capsys, name, text, kind):
    (tmp_path / name).write_text(text)
    assert main(["rates", "run", str(tmp_path / name), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert f"{tmp_path / name} is not valid {kind}" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
