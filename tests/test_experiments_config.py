"""Experiment definitions, seeds, starts near the truth, batching, the store and the analysis (no fits)."""

import json
import math
import sqlite3

import numpy as np
import pytest

from fastmoe.experiments import (Experiment, ResultStore, compare_slopes, fit_slope, get_preset, holm,
                                 preset_names, summarize)
from fastmoe.experiments.cli import build_parser, main
from fastmoe.experiments.schema import DefinitionError
from fastmoe.experiments.seeds import job_streams
from fastmoe.experiments.scoring import Loss, parse_loss, score
from fastmoe.experiments.starts import init_near_truth, split_assignment
from fastmoe.experiments.runner import plan_batches, resolve_parallelism

PAPER_SETTINGS = {"exact-fit", "over-fit", "vanishing-standard", "vanishing-tanh", "vanishing-sigmoid"}


def small_experiment(**changes):
    base = get_preset("exact-fit").with_grid(sample_sizes=[300, 500], n_replications=3)
    return Experiment.from_dict({**base.to_dict(), **changes})


# -- definitions ----------------------------------------------------------------------------------------
def test_planned_comparisons_round_trip_and_leave_the_digest_alone(tmp_path):
    exp = small_experiment()
    planned = small_experiment(planned=["a_mean_1 < vanishing-standard", "D1 != over-fit"])
    assert planned.planned == ("a_mean_1 < vanishing-standard", "D1 != over-fit")
    assert planned.model_digest() == exp.model_digest()  # a plan changes no job's numbers
    assert "planned" not in exp.to_dict()  # earlier definitions' files stay as they were
    for suffix in (".toml", ".json"):
        planned.save(tmp_path / f"p{suffix}")
        assert Experiment.load(tmp_path / f"p{suffix}") == planned
    assert planned.planned_against("vanishing-standard") == [("a_mean_1", "greater")]
    assert planned.planned_against("over-fit") == [("D1", "two-sided")]
    for bad in (["D1 << over-fit"], ["D1 < over-fit", "D1 < over-fit"], "D1 < over-fit", [f"D1 > {exp.name}"]):
        with pytest.raises(DefinitionError):
            small_experiment(planned=bad)


def test_one_sided_p_values_follow_the_declared_direction():
    exp = small_experiment()
    sizes = (1000, 3000, 10000, 30000, 100000)
    fast = power_law_records(exp, -0.5, sizes, 20, seed=1)
    slightly = power_law_records(exp, -0.45, sizes, 20, seed=2)
    two = compare_slopes(slightly, fast, "D1", n_boot=2000)
    less = compare_slopes(slightly, fast, "D1", n_boot=2000, alternative="less")
    greater = compare_slopes(slightly, fast, "D1", n_boot=2000, alternative="greater")
    # the same resamples: the one-sided p-value on the side of the difference is half the two-sided one
    assert two.difference < 0 and less.p_value == pytest.approx(min(1.0, two.p_value / 2), abs=1e-3)
    assert greater.p_value > 0.5 and less.alternative == "less"
    with pytest.raises(ValueError, match="alternative"):
        compare_slopes(slightly, fast, "D1", n_boot=10, alternative="bigger")


def test_presets_cover_the_paper_settings():
    assert PAPER_SETTINGS <= set(preset_names())
    for name in PAPER_SETTINGS:
        exp = get_preset(name)
        assert exp.name == name
        assert (exp.truth.n_features, exp.truth.n_classes, exp.truth.n_experts) == (2, 3, 2)
        assert exp.sample_sizes[0] >= 3000 and exp.sample_sizes[-1] == 100_000
        assert exp.n_replications >= 20
        assert not math.isnan(exp.theory_slope(exp.primary_loss))
    assert get_preset("exact-fit").n_experts == 2
    for name in PAPER_SETTINGS - {"exact-fit"}:
        assert get_preset(name).n_experts == 3
    for name in ("vanishing-standard", "vanishing-tanh", "vanishing-sigmoid"):
        exp = get_preset(name)
        assert np.all(exp.truth.a[1] == 0) and exp.fit.split_cells == (1,)
    assert get_preset("vanishing-tanh").truth.gating == "tanh"
    assert get_preset("vanishing-sigmoid").truth.gating == "sigmoid"


def test_spread_presets_differ_from_their_base_only_in_the_start():
    for gating in ("standard", "tanh", "sigmoid"):
        base, variant = get_preset(f"vanishing-{gating}").to_dict(), get_preset(f"vanishing-{gating}-spread").to_dict()
        assert variant["fit"].pop("split_spread") == 0.4
        # a modified gating's planned comparisons name the standard gating's preset of the same start
        assert variant.pop("planned", []) == [p.replace("standard", "standard-spread") for p in base.pop("planned", [])]
        for d in (base, variant):
            del d["name"], d["description"]
        assert variant == base


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_definition_round_trips_through_files(tmp_path, name, suffix):
    exp = get_preset(name)
    path = tmp_path / f"def{suffix}"
    exp.save(path)
    again = Experiment.load(path)
    assert again == exp
    assert again.to_dict() == exp.to_dict()
    assert again.model_digest() == exp.model_digest()
    assert Experiment.from_dict(json.loads(exp.to_json())) == exp


def test_digest_ignores_the_grid_but_not_the_model():
    exp = small_experiment()
    assert exp.with_grid(sample_sizes=[300, 500, 1000], n_replications=9).model_digest() == exp.model_digest()
    assert small_experiment(base_seed=exp.base_seed + 1).model_digest() != exp.model_digest()
    assert small_experiment(fit={"l2": 0.5}).model_digest() != exp.model_digest()
    # The studies' ridge is fastmoe 0.2's reference ridge, left out of the definition at that default (so
    # every stored digest stands); the centred one is written and changes the digest.
    assert "ridge" not in small_experiment(fit={"l2": 0.5, "ridge": "reference"}).to_dict()["fit"]
    assert small_experiment(fit={"l2": 0.5, "ridge": "reference"}).model_digest() == \
        small_experiment(fit={"l2": 0.5}).model_digest()
    centred = small_experiment(fit={"l2": 0.5, "ridge": "centred"})
    assert centred.to_dict()["fit"]["ridge"] == "centred"
    assert centred.model_digest() != small_experiment(fit={"l2": 0.5}).model_digest()
    # Without a ridge its form changes no fit, and so no digest.
    assert small_experiment(fit={"l2": 0.0, "ridge": "centred"}).model_digest() == \
        small_experiment(fit={"l2": 0.0}).model_digest()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown experiment keys"),
        ({"fit": {"init": "oracle"}}, "fit.init"),
        ({"fit": {"tolerance": 1e-6}}, "unknown fit keys"),
        ({"fit": {"ridge": "symmetric"}}, "fit.ridge"),
        ({"sample_sizes": [300, 300]}, "duplicates"),
        ({"losses": ["D3"]}, "unknown loss"),
        ({"n_experts": 1}, "n_experts >="),
        ({"n_experts": 3, "fit": {"split_cells": [0, 1]}}, "split_cells"),
        ({"primary_loss": "D2"}, "primary_loss"),
        ({"name": "a b"}, "name must be letters"),
        ({"fit": {"split_spread": 0.2}}, "vanishing true experts"),  # exact-fit's truth has none
        ({"fit": {"split_spread": 1.0}}, r"split_spread must be a finite number in \[0, 1\)"),
    ],
)
def test_invalid_definitions_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        small_experiment(**change)


def test_loss_names():
    assert parse_loss("D1") == Loss("D1", "D1", None)
    assert parse_loss("D2") == Loss("D2", "D2", None)
    assert parse_loss("D2r4") == Loss("D2r4", "D2r", 4.0)
    assert parse_loss("D2r1.5") == Loss("D2r1.5", "D2r", 1.5)
    assert parse_loss("D2q") == Loss("D2q", "D2q", None)
    assert parse_loss("D2q4") == Loss("D2q4", "D2q", 4.0)
    assert parse_loss("D2q1.5") == Loss("D2q1.5", "D2q", 1.5)
    for bad in ("D3", "d1", "D2r", "D2r-1", "D2r4 ", "D2q-1", "D2qr4", "D2rq", "d2q", "D2q "):
        with pytest.raises(ValueError, match="unknown loss"):
            parse_loss(bad)


def test_each_loss_name_is_computed_by_its_function():
    from fastmoe import losses

    truth = get_preset("over-fit").truth
    fitted = init_near_truth(truth, 3, np.random.default_rng(0), scale=0.2, split_cells=[0])
    for exact in (False, True):
        scores = score(fitted, truth, ["D1", "D2", "D2r4", "D2r1.5"], exact)
        assert scores["D1"] == losses.D1(fitted, truth, exact_translation=exact)
        assert scores["D2"] == losses.D2(fitted, truth, exact_translation=exact)
        assert scores["D2r4"] == losses.D2r(fitted, truth, 4.0, exact_translation=exact)
        assert scores["D2r1.5"] == losses.D2r(fitted, truth, 1.5, exact_translation=exact)
        errors = losses.flat(losses.per_parameter_errors(fitted, truth, exact_translation=exact))
        assert list(scores) == ["D1", "D2", "D2r4", "D2r1.5", *errors]


def test_quotient_loss_names_are_computed_by_d2q():
    # A vanishing truth with its vanishing cell split: D2q differs from D2, and the records carry the
    # pooled-intercept error of the vanishing atom only.
    from fastmoe import losses

    truth = get_preset("vanishing-tanh").truth
    fitted = init_near_truth(truth, 3, np.random.default_rng(0), scale=0.2, split_cells=[1])
    scores = score(fitted, truth, ["D2q", "D2q4", "D2"])
    assert scores["D2q"] == losses.D2q(fitted, truth)
    assert scores["D2q4"] == losses.D2q(fitted, truth, r=4.0)
    assert scores["D2q"] != scores["D2"]
    assert scores["cell_size_1"] == 2 and math.isfinite(scores["bpool_1"]) and math.isnan(scores["bpool_0"])
    # Over-fit's truth has no vanishing expert: D2q is D2.
    truth = get_preset("over-fit").truth
    fitted = init_near_truth(truth, 3, np.random.default_rng(0), scale=0.2, split_cells=[0])
    assert score(fitted, truth, ["D2q"])["D2q"] == losses.D2(fitted, truth)


def test_reports_carry_d2q_and_bpool_of_vanishing_atoms_only(tmp_path):
    from fastmoe.experiments.analysis import analyse, rate_metrics

    base = get_preset("vanishing-tanh").with_grid(sample_sizes=[1000, 4000, 16000], n_replications=4)
    exp = Experiment.from_dict({**base.to_dict(), "losses": ["D2q", "D2"], "primary_loss": "D2q",
                                "theory": {"bpool_1": -0.5}})
    assert exp.losses == ("D2q", "D2")
    rng = np.random.default_rng(3)
    records = []
    for n in exp.sample_sizes:
        for rep in range(exp.n_replications):
            record = fake_record(exp, n, rep)
            # A rate of its own per metric, so that a slope fitted to the wrong column is caught.
            noise = lambda rate: float(n**rate * rng.lognormal(0, 0.2))  # noqa: E731
            record.update(D2q=noise(-0.5), D2=noise(-0.8), mass_err_0=noise(-0.4), mass_err_1=noise(-0.6),
                          bpool_0=math.nan, bpool_1=noise(-0.25))
            records.append(record)
    metrics = rate_metrics(exp, records)
    assert metrics[:2] == ["D2q", "D2"]
    assert "bpool_1" in metrics and "bpool_0" not in metrics  # atom 0 does not vanish: NaN throughout
    with ResultStore(tmp_path / "run") as store:
        store.register(exp)
        run = store.start_run(exp.name, "local", 1, 1)
        for record in records:
            store.add(record, run)
    report = analyse(tmp_path / "run", n_boot=20)
    table = report.format_table()
    assert "median D2q" in table and "bpool_1" in table and "bpool_0" not in table
    assert report.slopes["bpool_1"].theory == -0.5  # the definition's claim, not the data's rate (-0.25)
    log_n = np.log(exp.sample_sizes)
    for name in ("D2q", "D2", "mass_err_0", "mass_err_1", "bpool_1"):
        medians = [np.median([r[name] for r in records if r["n"] == n]) for n in exp.sample_sizes]
        assert report.slopes[name].slope == pytest.approx(np.polyfit(log_n, np.log(medians), 1)[0], rel=1e-9), name
    pytest.importorskip("matplotlib")
    from fastmoe.experiments.plots import plot_report

    assert all(p.stat().st_size > 0 for p in plot_report(report, tmp_path / "plots", formats=("png",), dpi=30))


def test_job_streams_depend_on_base_seed_n_and_replication_only():
    draw = lambda *key: {k: g.integers(1 << 62) for k, g in job_streams(*key).items()}  # noqa: E731
    first = draw(7, 1000, 3)
    assert first == draw(7, 1000, 3)
    assert len(set(first.values())) == 4  # the four streams differ
    for other in [(8, 1000, 3), (7, 1001, 3), (7, 1000, 4)]:
        assert draw(*other)["x"] != first["x"]


# -- starts near the truth ------------------------------------------------------------------------------
def test_exact_fit_start_is_a_perturbed_relabelled_truth():
    truth = get_preset("exact-fit").truth
    start = init_near_truth(truth, 2, np.random.default_rng(0), scale=0.0)
    # Unperturbed: the same model up to the order of the experts.
    X = np.random.default_rng(1).uniform(-1, 1, size=(50, 2))
    import fastmoe

    np.testing.assert_allclose(fastmoe.predict_proba(start, X), fastmoe.predict_proba(truth, X), atol=1e-12)
    noisy = init_near_truth(truth, 2, np.random.default_rng(0), scale=0.1)
    diff = np.sort(np.abs(noisy.normalized().b - start.normalized().b).ravel())
    assert 0 < diff.max() < 1.0


def test_over_fit_start_splits_mass_log_evenly():
    truth = get_preset("over-fit").truth.normalized()
    rng = np.random.default_rng(3)
    start = init_near_truth(truth, 4, rng, scale=0.0, split_cells=[1, 1])
    # Atoms equal to true atom 1 appear three times, each with a third of its mass.
    same_as_1 = [i for i in range(4) if np.allclose(start.a[i] - start.a[i, -1], truth.a[1])]
    assert len(same_as_1) == 3
    masses = np.exp(start.beta0 - start.beta0[[i for i in range(4) if i not in same_as_1][0]])
    ratio = masses[same_as_1] / np.exp(truth.beta0[1] - truth.beta0[0])
    np.testing.assert_allclose(ratio, 1 / 3)
    cells = split_assignment(2, 5, np.random.default_rng(0))
    assert sorted(cells[:2]) == [0, 1] and len(cells) == 5
    with pytest.raises(ValueError, match="below the true number"):
        split_assignment(3, 2, rng)


def test_spread_start_reproduces_the_truth_with_distinct_atoms():
    exp = get_preset("vanishing-tanh")
    truth = exp.truth
    X = np.random.default_rng(1).uniform(-3, 3, size=(200, 2))
    import fastmoe

    for m, split in ((3, [1]), (4, [1, 1])):
        start = init_near_truth(truth, m, np.random.default_rng(0), scale=0.0, split_cells=split, split_spread=0.3)
        np.testing.assert_allclose(fastmoe.predict_proba(start, X), fastmoe.predict_proba(truth, X), atol=1e-12)
        vanishing = [i for i in range(m) if np.all(start.normalized().a[i] == 0)]
        probs = fastmoe.expert_proba(start, X[:1])[0, vanishing]  # (atoms, classes), constant in x
        assert len(vanishing) == m - 1 and np.ptp(probs, axis=0).max() > 0.1  # the atoms differ
    # The default (no spread) starts the atoms at the centre, all equal to the true expert.
    centre = init_near_truth(truth, 3, np.random.default_rng(0), scale=0.0, split_cells=[1])
    equal = [i for i in range(3) if np.allclose(centre.normalized().b[i], truth.normalized().b[1])]
    assert len(equal) == 2
    # A spread too wide for the true class probabilities is refused, naming the option: with near-uniform
    # p*, moving mass away from the most likely class empties it at c = p*_max / (1 - p*_max) ~ 0.55.
    flat = truth.to_dict()
    flat["b"][1] = [0.1, 0.0, 0.0]
    data = {**exp.to_dict(), "truth": flat}
    Experiment.from_dict({**data, "fit": {**data["fit"], "split_spread": 0.5}})
    with pytest.raises(ValueError, match="split_spread=0.6"):
        Experiment.from_dict({**data, "fit": {**data["fit"], "split_spread": 0.6}})
    # The default is left out of the definition, so stores made before the option existed still match.
    assert "split_spread" not in exp.to_dict()["fit"]


# -- planning -------------------------------------------------------------------------------------------
def test_batches_hold_every_job_once_longest_first():
    exp = get_preset("exact-fit")
    jobs = list(exp.jobs())
    batches = plan_batches(jobs, batch_seconds=0.75)
    flat = [job for batch in batches for job in batch]
    assert sorted(flat) == sorted(jobs)
    assert batches[0][0][0] == max(exp.sample_sizes)
    assert len(batches) < len(jobs)  # small jobs were grouped
    assert all(len(b) == 1 for b in plan_batches(jobs, batch_seconds=0.0))


def test_batches_by_replication_finish_each_replication_first():
    exp = get_preset("exact-fit")
    jobs = list(exp.jobs())
    flat = [job for batch in plan_batches(jobs, batch_seconds=0.0, order="replication") for job in batch]
    assert sorted(flat) == sorted(jobs)
    sizes = sorted(exp.sample_sizes, reverse=True)
    # Stopped after any number of whole replications, every size has that many (largest first in each).
    for r in range(3):
        block = flat[r * len(sizes):(r + 1) * len(sizes)]
        assert [n for n, _ in block] == sizes and {rep for _, rep in block} == {r}
    with pytest.raises(ValueError, match="order must be one of"):
        plan_batches(jobs, batch_seconds=0.0, order="random")


def test_parallelism_never_oversubscribes():
    assert resolve_parallelism(cores=8) == (8, 1)
    assert resolve_parallelism(threads_per_job=2, cores=8) == (4, 2)
    assert resolve_parallelism(n_jobs=3, cores=8) == (3, 2)
    assert resolve_parallelism(n_jobs=16, cores=8) == (16, 1)
    with pytest.raises(ValueError):
        resolve_parallelism(n_jobs=0)


# -- store ----------------------------------------------------------------------------------------------
def fake_record(exp, n, rep, status="ok", value=1.0):
    return {"experiment": exp.name, "n": n, "replication": rep, "status": status, "D1": value,
            "loglik": -1.0, "n_iter": 3, "fit_time": 0.01, "params": {"beta0": [0.0]}, "seed": [0, n, rep]}


def test_store_keeps_one_row_per_job_and_exports(tmp_path):
    exp = small_experiment()
    with ResultStore(tmp_path / "run") as store:
        store.register(exp)
        run = store.start_run(exp.name, "local", 2, 1)
        assert store.add(fake_record(exp, 300, 0), run)
        assert not store.add(fake_record(exp, 300, 0, value=2.0), run)  # a re-run job: ignored
        assert store.add(fake_record(exp, 500, 1, status="diverged", value=float("nan")), run)
        assert store.done_keys(exp.name) == {(300, 0), (500, 1)}
        assert store.count(exp.name) == 2 and store.status_counts(exp.name) == {"ok": 1, "diverged": 1}
        assert store.records(exp.name)[0]["D1"] == 1.0
        assert store.experiment() == exp
        assert store.version_of(exp.name)
        csv_path = store.export_csv(tmp_path / "r.csv")
        parquet_path = store.export_parquet(tmp_path / "r.parquet")
        # A grid change is fine, a model change under the same name is not.
        store.register(exp.with_grid(n_replications=10))
        with pytest.raises(ValueError, match="different definition .*; base_seed differ"):  # named
            store.register(small_experiment(base_seed=99))
        # Nor are the rows of another fastmoe version (its fit may stop elsewhere).
        store._conn.execute("UPDATE experiments SET fastmoe_version = '0.0.1' WHERE name = ?", (exp.name,))
        with pytest.raises(ValueError, match="run by fastmoe 0.0.1"):
            store.register(exp)
    assert csv_path.read_text().count("\n") == 3
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(parquet_path).num_rows == 2
    conn = sqlite3.connect(tmp_path / "run" / "results.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2


# -- analysis -------------------------------------------------------------------------------------------
def test_slope_recovers_a_known_rate_and_leaves_bad_fits_out():
    exp = small_experiment()
    rng = np.random.default_rng(0)
    records = [
        fake_record(exp, n, rep, value=float(3.0 * n**-0.5 * rng.lognormal(0, 0.3)))
        for n in (1000, 3000, 10000, 30000, 100000) for rep in range(20)
    ]
    records += [fake_record(exp, n, 99, status="diverged", value=1e6) for n in (1000, 100000)]
    fit = fit_slope(records, "D1", theory=-0.5, n_boot=500)
    assert fit.ci_low < -0.5 < fit.ci_high
    assert abs(fit.slope + 0.5) < 0.05
    assert fit.n_rows == 100 and fit.n_sizes == 5
    with_bad = fit_slope(records, "D1", include=("ok", "diverged"), n_boot=10)
    assert with_bad.n_rows == 102
    assert math.isnan(fit_slope(records[:20], "D1", n_boot=10).slope)  # a single n has no slope
    window = fit_slope(records, "D1", n_boot=10, min_n=3000, max_n=30000)
    assert window.n_sizes == 3 and window.n_rows == 60
    # One replication per size (a study stopped after its first): a slope, but no interval to claim.
    first = fit_slope([r for r in records if r["replication"] == 0], "D1", n_boot=50)
    assert math.isfinite(first.slope) and math.isnan(first.ci_low) and math.isnan(first.ci_high)


def power_law_records(exp, exponent, sizes, reps, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    return [fake_record(exp, n, rep, value=float(3.0 * n**exponent * rng.lognormal(0, noise)))
            for n in sizes for rep in range(reps)]


def test_slope_difference_detects_a_rate_change_and_only_that():
    exp = small_experiment()
    sizes = (1000, 3000, 10000, 30000, 100000)
    fast = power_law_records(exp, -0.5, sizes, 20, seed=1)
    slow = power_law_records(exp, -0.25, sizes, 20, seed=2)
    also_fast = power_law_records(exp, -0.5, sizes, 20, seed=3)
    diff = compare_slopes(slow, fast, "D1", n_boot=1000)
    assert diff.significant and diff.ci_low < -0.25 < diff.ci_high
    assert diff.p_value <= 2 / 1001  # no resampled difference on the far side of 0
    assert diff.difference == pytest.approx(diff.slope_b - diff.slope_a)
    assert diff.slope_a == pytest.approx(fit_slope(slow, "D1", n_boot=10).slope)
    same = compare_slopes(fast, also_fast, "D1", n_boot=1000)
    assert not same.significant and same.ci_low < 0 < same.ci_high and same.p_value > 0.05


def test_slope_statistics_match_an_independent_computation():
    exp = small_experiment()
    sizes = (1000, 3000, 10000, 30000, 100000)
    records = power_law_records(exp, -0.5, sizes, 21, seed=6, noise=0.8)
    by_n = {n: np.array([r["D1"] for r in records if r["n"] == n]) for n in sizes}
    from scipy.stats import trim_mean

    reference = {"median": np.median, "mean": np.mean, "trimmed": lambda v: trim_mean(v, 0.1)}
    for statistic, centre in reference.items():
        expected = np.polyfit(np.log(sizes), np.log([centre(by_n[n]) for n in sizes]), 1)[0]
        assert fit_slope(records, "D1", n_boot=10, statistic=statistic).slope == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="statistic"):
        fit_slope(records, "D1", n_boot=10, statistic="mode")
    rows = summarize(records, "D1", n_boot=400)
    for row in rows:
        v = by_n[row["n"]]
        assert row["median"] == pytest.approx(np.median(v)) and row["trimmed"] == pytest.approx(trim_mean(v, 0.1))
        assert row["median_low"] <= row["median"] <= row["median_high"]


def test_median_slope_resists_a_few_wandering_fits():
    # Two of 20 fits per n wander along a flat direction (errors 30-300 times the rest) at the largest
    # sizes: the slope of the means bends, the slope of the medians does not.
    exp = small_experiment()
    sizes = (1000, 3000, 10000, 30000, 100000)
    records = power_law_records(exp, -0.5, sizes, 20, seed=7)
    for r in records:
        if r["n"] >= 30000 and r["replication"] < 2:
            r["D1"] *= 30.0 if r["n"] == 30000 else 300.0
    median = fit_slope(records, "D1", n_boot=500)
    mean = fit_slope(records, "D1", n_boot=500, statistic="mean")
    assert median.statistic == "median" and median.ci_low < -0.5 < median.ci_high
    assert mean.slope > -0.2 and not mean.ci_low < -0.5 < mean.ci_high


def test_holm_adjusts_a_family_of_p_values():
    # Holm by hand: m = 3 finite p-values 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 0.04).
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_slope_difference_uses_the_common_sizes_only():
    exp = small_experiment()
    # The first law bends at n = 1e4: over its whole grid its slope differs from the slope on the shared part.
    bent = [fake_record(exp, n, rep, value=float(n**-0.5 if n >= 10000 else 1e-2 * n**0.0))
            for n in (100, 1000, 10000, 100000) for rep in range(3)]
    straight = power_law_records(exp, -0.5, (10000, 100000, 1000000), 3, seed=4, noise=0.0)
    diff = compare_slopes(bent, straight, "D1", n_boot=10)
    assert diff.sizes == (10000, 100000)
    assert diff.slope_a == pytest.approx(-0.5) and diff.difference == pytest.approx(0.0, abs=1e-12)
    assert fit_slope(bent, "D1", n_boot=10).slope > -0.4  # the whole grid would have told another story
    assert compare_slopes(bent, straight, "D1", n_boot=10, max_n=10000).sizes == (10000,)
    lone = compare_slopes(bent, power_law_records(exp, -0.5, (100000, 300000), 3, seed=5), "D1", n_boot=10)
    assert lone.sizes == (100000,) and math.isnan(lone.difference) and not lone.significant


# -- command line ---------------------------------------------------------------------------------------
def test_cli_parses_the_documented_commands():
    parser = build_parser()
    args = parser.parse_args(["rates", "run", "exact-fit", "--out", "d", "--scheduler", "tcp://127.0.0.1:1",
                              "--jobs", "2", "--threads-per-job", "1", "--sample-sizes", "3000,1e4"])
    assert (args.spec, str(args.out), args.scheduler, args.jobs, args.threads_per_job) == (
        "exact-fit", "d", "tcp://127.0.0.1:1", 2, 1)
    assert args.sample_sizes == [3000, 10000]
    assert parser.parse_args(["rates", "report", "d"]).dir.name == "d"


def test_cli_lists_and_shows_presets(capsys, tmp_path):
    assert main(["rates", "presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in PAPER_SETTINGS)
    assert main(["rates", "presets", "--show", "over-fit"]) == 0
    path = tmp_path / "over-fit.toml"
    path.write_text(capsys.readouterr().out)
    assert Experiment.load(path) == get_preset("over-fit")
    assert main(["rates", "run", "no-such-preset", "--out", str(tmp_path / "x")]) == 2
    assert main(["rates", "report", str(tmp_path / "empty")]) == 2


def test_cli_compares_two_runs(capsys, tmp_path):
    exp = small_experiment()
    sizes = (1000, 3000, 10000, 30000, 100000)
    for name, exponent, seed in (("slow", -0.25, 1), ("fast", -0.5, 2)):
        run = exp.with_grid(sample_sizes=sizes, n_replications=20)
        run = Experiment.from_dict({**run.to_dict(), "name": name})
        with ResultStore(tmp_path / name) as store:
            store.register(run)
            run_id = store.start_run(name, "local", 1, 1)
            for record in power_law_records(run, exponent, sizes, 20, seed):
                store.add(record, run_id)
    pytest.importorskip("matplotlib")
    plot = tmp_path / "contrast.png"
    assert main(["rates", "compare", str(tmp_path / "slow"), str(tmp_path / "fast"), "--metrics", "D1",
                 "--bootstrap", "500", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("D1"))
    slow_slope, fast_slope, difference = (float(v) for v in line.split()[1:4])
    assert line.split()[-2:] == ["*", "5"]  # significant, on the 5 common sizes
    p_value, p_holm = (float(v) for v in line.split()[-4:-2])
    assert p_value == p_holm <= round(2 / 501, 4)  # a family of one: Holm leaves its p-value as it is
    assert abs(slow_slope + 0.25) < 0.1 and abs(fast_slope + 0.5) < 0.1
    assert difference == pytest.approx(fast_slope - slow_slope, abs=2e-3)
    assert plot.stat().st_size > 0
    assert main(["rates", "compare", str(tmp_path / "slow")]) == 2
    assert main(["rates", "compare", str(tmp_path / "slow"), str(tmp_path / "fast"), "--metrics", "nope"]) == 2


def test_cli_reads_a_planned_comparison_on_its_own(capsys, tmp_path):
    # "fast" declares before running that its D1 falls faster than "slow"'s: that row gets a one-sided
    # p-value, read without Holm's adjustment.
    exp = small_experiment()
    sizes = (1000, 3000, 10000, 30000, 100000)
    for name, exponent, seed, planned in (("slow", -0.25, 1, []), ("fast", -0.5, 2, ["D1 < slow"])):
        run = exp.with_grid(sample_sizes=sizes, n_replications=20)
        run = Experiment.from_dict({**run.to_dict(), "name": name, "planned": planned})
        with ResultStore(tmp_path / name) as store:
            store.register(run)
            run_id = store.start_run(name, "local", 1, 1)
            for record in power_law_records(run, exponent, sizes, 20, seed):
                store.add(record, run_id)
    for order, mark in (((tmp_path / "slow", tmp_path / "fast"), "<"), ((tmp_path / "fast", tmp_path / "slow"), ">")):
        assert main(["rates", "compare", *map(str, order), "--metrics", "D1", "--bootstrap", "500"]) == 0
        line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("D1"))
        tokens = line.split()  # ... plan, p, Holm ("-": not adjusted), significant, sizes
        assert (tokens[-5], tokens[-3], tokens[-2:]) == (mark, "-", ["*", "5"])
        assert float(tokens[-4]) <= round(1 / 501, 4)  # one-sided: no resample on the far side of 0


def test_archive_rows_go_into_a_store_whole_or_not_at_all(tmp_path, monkeypatch):
    """import_records is one transaction (a take-over stopped part-way left a partial store that later
    runs took for the study's own, and their report overwrote the archive); a row without a status is
    refused by name (INSERT OR IGNORE dropped it silently); merged rows' run ids follow the store's own."""
    from fastmoe.experiments.store import StoreError

    exp = small_experiment()
    records = [dict(fake_record(exp, n, rep), run_id=1) for n, rep in exp.jobs()]
    calls = []
    real_add = ResultStore.add

    def interrupted(self, record, run_id=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_add(self, record, run_id)

    monkeypatch.setattr(ResultStore, "add", interrupted)
    with pytest.raises(KeyboardInterrupt), ResultStore(tmp_path / "a") as store:
        store.import_records(exp, records)
    monkeypatch.setattr(ResultStore, "add", real_add)
    with ResultStore(tmp_path / "a") as store:
        assert store.count() == 0 and store.experiment_names() == []  # nothing, not two rows
        bad = [dict(r) for r in records]
        bad[4]["status"] = ""
        with pytest.raises(StoreError, match="record 4 of experiment 'exact-fit' has no n, replication or status"):
            store.import_records(exp, bad)
        assert store.count() == 0
        assert store.import_records(exp, records[:3]) == 3
        own = store.start_run(exp.name, "synchronous")
        assert store.merge_records(exp.name, records) == 3  # the three it lacked
        by_run = {}
        for r in store.records(exp.name):
            by_run[r["run_id"]] = by_run.get(r["run_id"], 0) + 1
        assert by_run == {1: 3, own + 1: 3}  # the archive's run 1 renumbered after the store's own
