"""The reproduction as one job (`fastmoe rates paper`): archives, truth families, pooled slopes, the document."""

import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from fastmoe.experiments import analyse, get_preset, run_experiment
from fastmoe.experiments.analysis import compare_runs, pooled_slope
from fastmoe.experiments.definition import Experiment
from fastmoe.experiments.family import family_members, random_truth
from fastmoe.experiments.paper import PAPER_FILE, load_paper, run_paper, write_paper
from fastmoe.experiments.store import ResultStore, load_run, read_csv, write_csv

REPO = Path(__file__).resolve().parents[1]


def same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    exp = get_preset("over-fit").with_grid(sample_sizes=[3000, 4000, 6000], n_replications=3)
    run_experiment(exp, root, scheduler="synchronous", progress=False)
    return exp, root


def test_an_archive_reads_back_as_the_store(small_run, tmp_path):
    exp, root = small_run
    stored_exp, records, counts = load_run(root)
    write_csv(records, tmp_path / "results.csv")
    exp.save(tmp_path / "experiment.toml")
    back_exp, back, back_counts = load_run(tmp_path)
    assert back_exp == stored_exp and back_counts == counts and len(back) == len(records)
    for r, b in zip(records, back):
        assert set(r) == set(b)
        for key in r:
            assert same(r[key], b[key]), key  # params and seeds come back from their JSON, bools as bools
    a, b = analyse(root, n_boot=50), analyse(tmp_path, n_boot=50)
    assert a.metrics == b.metrics
    for m in a.metrics:
        assert same(a.slopes[m].slope, b.slopes[m].slope) and same(a.slopes[m].ci_low, b.slopes[m].ci_low)


def test_an_archive_needs_its_definition(small_run, tmp_path):
    _, root = small_run
    write_csv(load_run(root)[1], tmp_path / "results.csv")
    with pytest.raises(FileNotFoundError, match="experiment.toml"):
        load_run(tmp_path)


def test_read_csv_cells(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('a,b,c,d,e,f\n3,2.5,True,nan,"[1, 2]",converged in 3 iterations\n')
    row = read_csv(path)[0]
    assert row["a"] == 3 and isinstance(row["a"], int) and row["b"] == 2.5 and row["c"] is True
    assert math.isnan(row["d"]) and row["e"] == [1, 2] and row["f"] == "converged in 3 iterations"


def test_family_truths_follow_the_rule():
    template = get_preset("vanishing-tanh-spread")
    members = family_members(template, "fam", [1, 5], 3, seed=7, n_replications=2)
    assert [m.name for m in members] == [f"fam-d{d}-t{i}" for d in (1, 5) for i in range(3)]
    again = family_members(template, "fam", [1, 5], 3, seed=7, n_replications=2)
    assert members == again  # the truths are a function of (seed, d, index)
    truths = [m.truth for m in members]
    assert len({t.beta1.tobytes() for t in truths}) == len(truths)
    for m in members:
        t = m.truth
        d = t.beta1.shape[1]
        assert t.gating == "tanh" and t.a.shape == (2, 3, d) and m.n_experts == template.n_experts
        assert not np.any(t.a[1]) and np.any(t.a[0])  # template's vanishing expert 1 vanishes again
        assert not np.any(t.beta1[-1]) and t.beta0[-1] == 0 and not np.any(t.b[:, -1])  # reference conventions
        assert m.fit == template.fit and m.x_law == template.x_law and m.n_replications == 2
    # The drawn numbers are the module's rule: a standard normal stream scaled, slopes over the half-width.
    rng = np.random.default_rng([7, 5, 1])
    beta0 = rng.normal(0, 0.5, 2)
    beta1 = rng.normal(0, 3 / np.sqrt(5), (2, 5))  # tanh: bounded gating input, no division
    assert truths[4].beta0[0] == beta0[0] and np.array_equal(truths[4].beta1[0], beta1[0])


def test_random_truth_divides_identity_slopes_by_the_half_width():
    template = get_preset("vanishing-standard")  # X ~ U[-3, 3]^2
    t = random_truth(template, 2, (1, 2, 3))
    rng = np.random.default_rng([1, 2, 3])
    rng.normal(0, 0.5, 2)
    assert np.allclose(t.beta1[0], rng.normal(0, 3 / np.sqrt(2), (2, 2))[0] / 3.0)


def test_a_family_needs_a_fixed_truth_on_all_inputs():
    with pytest.raises(ValueError, match="all inputs"):
        family_members(get_preset("separate-inputs"), "f", [2], 1, 0)
    with pytest.raises(ValueError, match="fixed truth"):
        family_members(get_preset("vanishing-standard-local"), "f", [2], 1, 0)


def test_pooled_slope_is_the_mean_of_the_truths_slopes():
    rng = np.random.default_rng(0)
    sizes = [1000, 3000, 10000, 30000]
    truths = []
    for scale, rate in ((1.0, -0.5), (2.0, -0.3), (0.5, -0.6)):
        truths.append([{"n": n, "status": "ok", "m": scale * n ** rate * rng.lognormal(0, 0.3)}
                       for n in sizes for _ in range(9)])
    expected = []
    for records in truths:  # independent computation: OLS of log(median) on log(n), per truth
        med = [np.median([r["m"] for r in records if r["n"] == n]) for n in sizes]
        expected.append(np.polyfit(np.log(sizes), np.log(med), 1)[0])
    pooled = pooled_slope(truths, "m", n_boot=400)
    assert pooled.slope == pytest.approx(np.mean(expected), abs=1e-12)
    assert pooled.n_sizes == 3 and pooled.ci_low < pooled.slope < pooled.ci_high
    # A truth with one usable size is left out, not averaged as NaN.
    lone = [{"n": 1000, "status": "ok", "m": 1.0}]
    assert pooled_slope(truths + [lone], "m", n_boot=50).slope == pytest.approx(pooled.slope, abs=1e-12)


def test_planned_comparisons_match_the_names_the_runs_were_declared_under(small_run, tmp_path):
    exp, root = small_run
    other = dataclasses.replace(exp, name="over-fit-rerun", planned=("D2 < over-fit-ridge",))
    base = analyse(root, n_boot=30)
    rerun = dataclasses.replace(base, experiment=other)
    by_names = compare_runs([base, rerun], ["D2", "a_max_0"], names=["over-fit-ridge", "x"], n_boot=30)
    assert by_names[0][0].planned and by_names[0][0].difference.alternative == "less"
    assert math.isnan(by_names[0][0].p_holm) and not by_names[1][0].planned
    plain = compare_runs([base, rerun], ["D2", "a_max_0"], n_boot=30)  # names are the experiments' own
    assert not plain[0][0].planned and math.isfinite(plain[0][0].p_holm)


PAPER = """
title = "T"
intro = "I"

[[section]]
id = "s"
title = "S"
studies = ["one", "two", "later"]
families = ["fam"]
comparisons = [["one", "two"]]
metrics = ["D1", "a_max_0"]
figures = [{name = "scaled", studies = ["one", "two"], metrics = ["D1"], exponent = 0.5}]
theory = "theory text"
text = "prose"

[[section]]
id = "answers"
title = "Answers"
text = "one: {{slope one D1}}, means {{meanslope one D1}}, {{fits one}} fits ({{status one}}; {{seconds one}}); it {{excludes one D1 -0.5}} -0.5 and {{excludes one D1 0.0}} 0, so it {{decides one D1 -1/2 0}}; two - one: {{diff two one D1}}; later: {{slope later D1}}; family, d = 3: {{pooled fam D1 3}}."

[[study]]
name = "one"
preset = "exact-fit"
sample_sizes = [3000, 4000, 6000]
replications = 2

[[study]]
name = "two"
preset = "exact-fit"
losses = ["D1", "D2"]
sample_sizes = [3000, 4000, 6000]
replications = 2

[[study]]
name = "later"
preset = "exact-fit"
replications = 2

[[family]]
name = "fam"
preset = "exact-fit"
dims = [1, 3]
truths = 2
seed = 5
sample_sizes = [3000, 6000]
replications = 2
"""


def test_the_paper_runs_resumes_and_writes_the_document_from_the_archives(tmp_path):
    from fastmoe.experiments.paper import _decision

    (tmp_path / "paper.toml").write_text(PAPER)
    paper = load_paper(tmp_path / "paper.toml")
    assert [s.name for s in paper.select(["fam"])] == ["fam-d1-t0", "fam-d1-t1", "fam-d3-t0", "fam-d3-t1"]
    with pytest.raises(KeyError, match="nope"):
        paper.select(["nope"])
    root, results, doc = tmp_path / "runs", tmp_path / "results", tmp_path / "docs" / "results.md"
    chosen = ["one", "two", "fam"]
    first = run_paper(paper, root, chosen, scheduler="synchronous", progress=False, echo=lambda *_: None)
    assert [s.completed for s in first] == [6, 6, 4, 4, 4, 4]
    again = run_paper(paper, root, chosen, scheduler="synchronous", progress=False, echo=lambda *_: None)
    assert all(s.completed == 0 for s in again)  # resumed: nothing ran twice
    said = []
    assert run_paper(paper, root, chosen, scheduler="synchronous", progress=False, echo=said.append,
                     stop_after=0.0) == []  # the time limit has passed before the first study
    assert said[0] == "one: not started, the time limit has passed" and len(said) == 6
    log = json.loads((root / "one" / "runs.json").read_text())
    assert len(log) == 1 and log[0]["jobs_run"] == 6 and log[0]["wall_s"] >= 0 and log[0]["cores"] >= 1
    # A study whose run stopped before its first job finished has a store without rows: not run yet.
    from fastmoe.experiments import ResultStore

    with ResultStore(root / "later") as store:
        store.register(paper.studies["later"].experiment)
    write_paper(paper, root, results, doc, n_boot=50, echo=lambda *_: None)
    text = doc.read_text()
    assert not (results / paper.studies["later"].archive).exists()
    assert (results / "one" / "results.csv").is_file() and (results / "one" / "runs.json").is_file()
    assert Experiment.load(results / "two" / "experiment.toml") == paper.studies["two"].experiment
    assert "### `one`" in text and "prose" in text and "theory text" in text
    # Numbers quoted in prose are read off the same reports as the tables.
    one = analyse(results / "one", n_boot=50)
    d1 = one.slopes["D1"]
    times = [r["fit_time"] for r in one.records if int(r["n"]) == 6000]
    assert (f"one: {d1.slope:+.2f} [{d1.ci_low:+.2f}, {d1.ci_high:+.2f}], means {one.mean_slopes['D1'].slope:+.2f}, "
            f"6 fits (6 ok; a median {statistics.median(times):.0f} s per fit at n = 6,000 (2 fits), "
            f"{sum(r['fit_time'] for r in one.records) / 3600:.1f} h of fits in all (1 thread per fit)); it {'contains' if d1.ci_low <= -0.5 <= d1.ci_high else 'excludes'} -0.5 and "
            f"{'contains' if d1.ci_low <= 0 <= d1.ci_high else 'excludes'} 0, so it {_decision(d1, '-1/2', '0')}; "
            "two - one: +0.00 [") in text
    assert "p = 1.000 unadjusted; later" in text
    assert "later: (not run yet); family, d = 3: " in text and "No study of this section" not in text
    fam3 = pooled_slope([analyse(results / paper.studies[n].archive, n_boot=50).records
                         for n in paper.families["fam"] if paper.studies[n].d == 3], "D1", n_boot=50)
    assert f"family, d = 3: {fam3.slope:+.2f} [{fam3.ci_low:+.2f}, {fam3.ci_high:+.2f}]." in text
    bad = PAPER.replace("{{fits one}}", "{{fits nope}}")
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(ValueError, match="unknown studies"):
        write_paper(load_paper(tmp_path / "bad.toml"), root, results, doc, n_boot=50, echo=lambda *_: None)
    assert "Not run yet: `fastmoe rates paper --only later`" in text
    assert "| pooled d = 1 |" in text and "| pooled d = 3 |" in text and "| pooled, all |" in text
    assert "Against `one`" in text and (tmp_path / "docs" / "figures" / "scaled.png").is_file()
    d1 = analyse(results / "one", n_boot=50).slopes["D1"].slope
    assert f"| D1 | -0.50 | {d1:+.2f} |" in text  # the table's numbers are the archive's
    # Without the stores, the archives alone give the same document.
    for store in root.glob("*/results.sqlite*"):
        store.unlink()
    write_paper(paper, root, results, tmp_path / "docs" / "again.md",
                n_boot=50, echo=lambda *_: None)
    assert (tmp_path / "docs" / "again.md").read_text() == text


def test_the_shipped_paper_matches_its_archives():
    paper = load_paper(PAPER_FILE)
    assert {s.id for s in paper.sections} >= {"exact", "over-fit", "vanishing", "large-n"}
    for family in paper.families.values():
        dims = {paper.studies[m].d for m in family}
        assert dims == {1, 2, 5} and len(family) >= 15  # five truths per dimension
    archived = 0
    for study in paper.studies.values():
        archive = REPO / "docs" / "results" / study.archive
        if not (archive / "results.csv").is_file():
            continue
        archived += 1
        # `fastmoe rates paper` resumes the archived study only if its definition is the archive's.
        stored = Experiment.load(archive / "experiment.toml")
        assert stored.model_digest() == study.experiment.model_digest(), study.name
        assert {r["experiment"] for r in read_csv(archive / "results.csv")} == {study.name}
    assert archived >= 10


def test_docs_results_md_is_the_generated_document(tmp_path):
    """docs/results.md is written by `fastmoe rates paper --report-only`, never by hand: regenerated from
    the committed archives, it must come out the same."""
    doc = tmp_path / "docs" / "results.md"
    write_paper(load_paper(PAPER_FILE), tmp_path / "no-stores", REPO / "docs" / "results", doc,
                echo=lambda *_: None)
    committed = (REPO / "docs" / "results.md").read_text()
    assert doc.read_text() == committed, "docs/results.md differs: run `fastmoe rates paper --report-only`"


def test_an_interrupted_paper_run_logs_what_it_stored(tmp_path, monkeypatch):
    """Ctrl-C in the middle of a study: its finished jobs are stored (the runner's promise), and the
    part's time is logged too, marked interrupted; the next invocation resumes and logs its own part."""
    from fastmoe.experiments import runner

    (tmp_path / "paper.toml").write_text(PAPER)
    paper = load_paper(tmp_path / "paper.toml")
    real = runner.run_experiment

    def interrupted(experiment, out, **kwargs):
        real(experiment.with_grid(sample_sizes=[3000]), out, **kwargs)  # some jobs finish, then the signal
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_paper(paper, tmp_path / "runs", ["one"], scheduler="synchronous", progress=False, echo=lambda *_: None)
    monkeypatch.setattr(runner, "run_experiment", real)
    run_paper(paper, tmp_path / "runs", ["one"], scheduler="synchronous", progress=False, echo=lambda *_: None)
    log = json.loads((tmp_path / "runs" / "one" / "runs.json").read_text())
    assert [e["jobs_run"] for e in log] == [2, 4] and log[0]["interrupted"] and "interrupted" not in log[1]
    assert log[1]["already_stored"] == 2


def test_a_run_log_names_the_commit_the_run_started_from(tmp_path, monkeypatch):
    """A long run's checkout may move on while it works (later commits, edits): the log names the
    code that was imported when the run started, not the checkout's state when it ended."""
    from fastmoe.experiments import paper as paper_module
    from fastmoe.experiments import runner

    checkout = {"commit": "at-start"}
    real = runner.run_experiment

    def run_then_commit(*args, **kwargs):
        summary = real(*args, **kwargs)
        checkout["commit"] = "at-end"  # someone committed while the study ran
        return summary

    monkeypatch.setattr(paper_module, "_commit", lambda: checkout["commit"])
    monkeypatch.setattr(runner, "run_experiment", run_then_commit)
    (tmp_path / "paper.toml").write_text(PAPER)
    paper = load_paper(tmp_path / "paper.toml")
    run_paper(paper, tmp_path / "runs", ["one"], scheduler="synchronous", progress=False, echo=lambda *_: None)
    log = json.loads((tmp_path / "runs" / "one" / "runs.json").read_text())
    assert [e["commit"] for e in log] == ["at-start"]


def test_a_study_resumes_from_its_archive_on_a_machine_without_its_store(tmp_path, monkeypatch):
    """A part of a study ran and was exported (the committed CSV); on a fresh clone with no store the next
    `fastmoe rates paper` takes those rows over, runs only the rest, and ends with the rows a one-shot run
    gives; an archive of another definition is not mixed in."""
    from fastmoe.experiments import runner

    (tmp_path / "paper.toml").write_text(PAPER)
    paper = load_paper(tmp_path / "paper.toml")
    quiet = dict(scheduler="synchronous", progress=False, echo=lambda *_: None)
    real = runner.run_experiment

    def interrupted(experiment, out, **kwargs):
        real(experiment.with_grid(sample_sizes=[3000]), out, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_paper(paper, tmp_path / "first", ["one"], results=tmp_path / "results", **quiet)
    monkeypatch.setattr(runner, "run_experiment", real)
    write_paper(paper, tmp_path / "first", tmp_path / "results", tmp_path / "doc.md", n_boot=20, only=["one"],
                echo=lambda *_: None)
    assert len(read_csv(tmp_path / "results" / "one" / "results.csv")) == 2
    # Another machine: no store under its root, the archive from the repository.
    resumed = run_paper(paper, tmp_path / "second", ["one"], results=tmp_path / "results", **quiet)
    assert resumed[0].completed == 4  # only the jobs the archive lacks
    log = json.loads((tmp_path / "second" / "one" / "runs.json").read_text())
    assert [e["jobs_run"] for e in log] == [2, 4] and log[1]["already_stored"] == 2
    # The same rows as a run in one go (fit times and process facts apart).
    whole = run_paper(paper, tmp_path / "whole", ["one"], **quiet)
    assert whole[0].completed == 6
    volatile = {"fit_time", "oracle_fit_time", "job_time", "pid", "host", "run_id", "started", "finished"}
    _, got, _ = load_run(tmp_path / "second" / "one", "one")
    _, want, _ = load_run(tmp_path / "whole" / "one", "one")
    assert len(got) == len(want) == 6
    for a, b in zip(got, want):
        for key in set(a) - volatile:
            assert same(a[key], b[key]), key
    # The resumed store numbers its own run after the archive's.
    with ResultStore(tmp_path / "second" / "one", read_only=True) as store:
        assert [r["executor"] for r in store.runs("one")] == ["archive", "synchronous"]
    # An archive written for another definition is left alone: the study starts afresh.
    other = dataclasses.replace(paper.studies["one"].experiment, base_seed=paper.studies["one"].experiment.base_seed + 1)
    other.save(tmp_path / "results" / "one" / "experiment.toml")
    notes = []
    fresh = run_paper(paper, tmp_path / "third", ["one"], results=tmp_path / "results", scheduler="synchronous",
                      progress=False, echo=notes.append)
    assert fresh[0].completed == 6 and any("another definition" in n for n in notes)


def test_overlapping_parts_of_a_run_log_count_their_wall_clock_once():
    from fastmoe.experiments.paper import _clock_seconds

    def part(start, end):
        return {"started": f"2026-12-02T{start}:00+00:00", "finished": f"2026-12-02T{end}:00+00:00"}

    # Two processes on the same study from 10:00 to 10:10 and 10:05 to 10:20, then 11:00 to 11:01.
    assert _clock_seconds([part("10:05", "10:20"), part("10:00", "10:10"), part("11:00", "11:01")]) == 21 * 60
    assert _clock_seconds([{"started": "2026-12-02T10:00:00+00:00"}]) is None  # no end recorded


def test_a_slope_interval_decides_between_two_candidate_slopes():
    from types import SimpleNamespace

    from fastmoe.experiments.paper import _decision

    def interval(low, high):
        return SimpleNamespace(ci_low=low, ci_high=high)

    assert _decision(interval(-0.37, -0.14), "-1/8", "-1/4") == \
        "contains -1/4 and excludes -1/8: it decides for -1/4"
    assert _decision(interval(-0.20, -0.05), "-1/8", "-0.25") == \
        "contains -1/8 and excludes -0.25: it decides for -1/8"
    assert _decision(interval(-0.29, -0.08), "-1/8", "-1/4") == "contains both -1/8 and -1/4: it decides neither"
    assert _decision(interval(-0.60, -0.40), "-1/8", "-1/4").endswith("(it lies below them): it decides neither")
    assert _decision(interval(-0.05, 0.10), "-1/8", "-1/4").endswith("(it lies above them): it decides neither")
    assert _decision(interval(-0.24, -0.13), "-1/8", "-1/4").endswith("(it lies between them): it decides neither")
    assert _decision(interval(float("nan"), float("nan")), "-1/8", "-1/4") == "cannot yet test either"


def test_an_export_never_loses_archived_jobs(tmp_path, monkeypatch):
    """Exports replace an archive's results.csv. From an older checkout's store (the archive advanced on
    another machine) the archive's extra jobs are merged into the store first; a study run afresh with
    another version replaces its archive only once it has every job the archive has, or on purpose."""
    import fastmoe
    from fastmoe.experiments import runner
    from fastmoe.experiments.paper import ArchiveConflict

    (tmp_path / "paper.toml").write_text(PAPER)
    paper = load_paper(tmp_path / "paper.toml")
    quiet = dict(scheduler="synchronous", progress=False, echo=lambda *_: None)
    results, doc, csv = tmp_path / "results", tmp_path / "doc.md", tmp_path / "results" / "one" / "results.csv"
    real = runner.run_experiment

    def interrupted(experiment, out, **kwargs):
        real(experiment.with_grid(sample_sizes=[3000]), out, **kwargs)
        raise KeyboardInterrupt

    def export(root, **kwargs):
        return write_paper(paper, root, results, doc, n_boot=20, only=["one"], echo=lambda *_: None, **kwargs)

    monkeypatch.setattr(runner, "run_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_paper(paper, tmp_path / "a", ["one"], results=results, **quiet)
    monkeypatch.setattr(runner, "run_experiment", real)
    export(tmp_path / "a")
    assert len(read_csv(csv)) == 2
    run_paper(paper, tmp_path / "b", ["one"], results=results, **quiet)  # takes the 2 over, runs 4
    export(tmp_path / "b")
    assert len(read_csv(csv)) == 6
    # Machine A's store has 2 of them: it takes the other 4 in (even when told to replace the archive:
    # what can be taken in is), with their run log, and the archive keeps 6.
    export(tmp_path / "a", replace_archives=True)
    assert len(read_csv(csv)) == 6
    with ResultStore(tmp_path / "a" / "one", read_only=True) as store:
        assert store.count("one") == 6
        runs = store.runs("one")  # the taken-in rows' run is numbered after A's own
        assert [r["executor"] for r in runs] == ["synchronous", "archive"]
        assert sum(r["run_id"] == runs[0]["run_id"] for r in store.records("one")) == 2
    log = json.loads((results / "one" / "runs.json").read_text())
    assert [e["jobs_run"] for e in log] == [2, 4]  # A's part and B's, not A's alone
    # A study started afresh (to measure new code) never takes the archive's rows in.
    monkeypatch.setattr(runner, "run_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_paper(paper, tmp_path / "d", ["one"], **quiet)
    monkeypatch.setattr(runner, "run_experiment", real)
    with pytest.raises(ArchiveConflict, match="rows a fresh run does not take over"):
        export(tmp_path / "d")
    assert len(read_csv(csv)) == 6
    # The archive's rows are of another version: a fresh run that has not caught up does not replace it.
    records = read_csv(csv)
    for record in records:
        record["fastmoe_version"] = "0.0.1"
    write_csv(records, csv)
    archived = csv.read_text()
    notes = []
    monkeypatch.setattr(runner, "run_experiment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_paper(paper, tmp_path / "c", ["one"], results=results, scheduler="synchronous", progress=False,
                  echo=notes.append)
    monkeypatch.setattr(runner, "run_experiment", real)
    assert any("not resumed from its archive" in note and "0.0.1" in note for note in notes)
    doc.unlink()
    with pytest.raises(ArchiveConflict, match="holds 4 jobs that the store .* lacks; it holds rows of fastmoe 0.0.1"):
        export(tmp_path / "c")
    assert csv.read_text() == archived and "### `one`" in doc.read_text()  # written from the archive
    export(tmp_path / "c", replace_archives=True)  # on purpose
    assert len(read_csv(csv)) == 2
    run_paper(paper, tmp_path / "c", ["one"], **quiet)
    export(tmp_path / "c")
    assert len(read_csv(csv)) == 6 and {r["fastmoe_version"] for r in read_csv(csv)} == {fastmoe.__version__}


def test_a_name_means_a_study_before_a_family_or_a_section(tmp_path):
    (tmp_path / "paper.toml").write_text(PAPER.replace('id = "s"', 'id = "one"'))
    paper = load_paper(tmp_path / "paper.toml")
    assert [s.name for s in paper.select(["one"])] == ["one"]  # the study, not its section's seven
    (tmp_path / "plain.toml").write_text(PAPER)
    assert len(load_paper(tmp_path / "plain.toml").select(["s"])) == 7  # a section id that is no study's name
    assert [s.name for s in paper.select(["fam"])] == ["fam-d1-t0", "fam-d1-t1", "fam-d3-t0", "fam-d3-t1"]


def test_the_document_is_not_written_from_nothing(tmp_path):
    (tmp_path / "paper.toml").write_text(PAPER)
    with pytest.raises(ValueError, match="no study has a store under .* or an archive under .*typo"):
        write_paper(load_paper(tmp_path / "paper.toml"), tmp_path / "runs", tmp_path / "typo", tmp_path / "doc.md",
                    n_boot=20, echo=lambda *_: None)
    assert not (tmp_path / "doc.md").exists()
