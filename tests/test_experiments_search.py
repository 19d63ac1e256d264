"""Data-driven starts in rate studies (issue 12): ``fit.init = "search"``, ``fit.oracle_check``, the report."""

import json
import math

import pytest

from fastmoe.experiments import Experiment, analyse, get_preset, run_experiment, run_job
from fastmoe.experiments.analysis import start_agreement, wilson_interval
from fastmoe._monitor import same_maximum
from fastmoe.experiments.schema import DefinitionError

#: Digests of the shipped presets before data-driven starts existed (fastmoe 0.2.0, commit 5b84dd3): stores
#: that hold their rows must stay resumable, so fields added since are left out of a definition at their
#: defaults.
DIGESTS_BEFORE_SEARCH = {
    "exact-fit": "54f92bac301a3119",
    "over-fit": "125a5d80a30c26f5",
    "vanishing-sigmoid": "9fca4278494fe9d9",
    "vanishing-sigmoid-local": "37902fcd891b83d5",
    "vanishing-sigmoid-spread": "42d1c37278ca60ac",
    "vanishing-standard": "cb6d763755809b77",
    "vanishing-standard-local": "504ab94731c40c6a",
    "vanishing-standard-near": "3184b3a4f7386774",
    "vanishing-standard-spread": "9eef0cbad771f54c",
    "vanishing-tanh": "ef50165e7fe03632",
    "vanishing-tanh-local": "469ca5716f956a7d",
    "vanishing-tanh-near": "3feab5e8cd25e932",
    "vanishing-tanh-spread": "7b0c30e49483302e",
}


def with_fit(name="exact-fit", **fit):
    data = get_preset(name).to_dict()
    data["fit"] = {**data["fit"], **fit}
    return Experiment.from_dict(data)


@pytest.mark.parametrize("name", sorted(DIGESTS_BEFORE_SEARCH))
def test_earlier_definitions_keep_their_digests(name):
    exp = get_preset(name)
    assert exp.model_digest() == DIGESTS_BEFORE_SEARCH[name]
    written = exp.to_dict()["fit"]
    assert written["n_init"] == 1 and "oracle_check" not in written  # as definitions were written before


def test_a_stored_definition_of_before_reads_back_with_its_digest():
    # The JSON a store of 0.2.0 holds: every fit field written, n_init = 1, no oracle_check.
    old = get_preset("over-fit").to_dict()
    assert Experiment.from_dict(json.loads(json.dumps(old))).model_digest() == DIGESTS_BEFORE_SEARCH["over-fit"]


def test_search_definition_round_trips_and_leaves_n_init_to_fastmoe(tmp_path):
    exp = get_preset("exact-fit-search")
    assert exp.fit.init == "search" and exp.fit.n_init is None and exp.fit.oracle_check
    written = exp.to_dict()["fit"]
    assert "n_init" not in written and written["oracle_check"] is True
    for suffix in (".toml", ".json"):
        exp.save(tmp_path / f"def{suffix}")
        again = Experiment.load(tmp_path / f"def{suffix}")
        assert again == exp and again.model_digest() == exp.model_digest()
    # Everything else is exact-fit's, so the oracle fits are exact-fit's fits of the same jobs.
    base, variant = get_preset("exact-fit").to_dict(), exp.to_dict()
    for d in (base, variant):
        del d["name"], d["description"], d["fit"]
    assert variant == base


def test_n_init_given_for_the_search_is_kept_and_changes_the_digest():
    default = with_fit(init="search", n_init=None)
    four = with_fit(init="search", n_init=4)
    assert four.fit.n_init == 4 and four.to_dict()["fit"]["n_init"] == 4
    assert four.model_digest() != default.model_digest()
    assert with_fit(init="kmeans", n_init=None).fit.n_init == 1  # what it always meant there


@pytest.mark.parametrize(
    "fit, message",
    [
        ({"init": "oracle"}, "fit.init must be one of 'truth', 'search'"),
        ({"init": "truth", "oracle_check": True}, "fit.oracle_check compares a data-driven fit"),
        ({"init": "search", "oracle_check": "yes"}, "fit.oracle_check must be true or false"),
        ({"init": "search", "oracle_check": 1}, "fit.oracle_check must be true or false"),
        ({"init": "search", "n_init": 0}, "fit.n_init must be an integer in [1,"),
        ({"init": "search", "n_init": 2.0}, "fit.n_init must be an integer"),
    ],
)
def test_schema_refuses_bad_start_fields(fit, message):
    with pytest.raises(DefinitionError, match=message.replace("[", r"\[").replace("(", r"\(")):
        with_fit(**fit)


def test_oracle_check_needs_as_many_fitted_experts_as_true_ones():
    data = get_preset("exact-fit").to_dict()
    data.update(n_experts=1, fit={**data["fit"], "init": "search", "oracle_check": True})
    with pytest.raises(DefinitionError, match="fit.oracle_check"):
        Experiment.from_dict(data)
    data["fit"]["oracle_check"] = False  # a data-driven fit alone may have fewer experts than the truth
    assert Experiment.from_dict(data).n_experts == 1


def test_same_maximum_is_relative():
    assert same_maximum(-1e6, -1e6 - 0.9) and not same_maximum(-1e6, -1e6 - 1.1)
    assert same_maximum(0.0, 1e-7) and not same_maximum(0.0, 2e-6)


def test_a_search_job_records_both_fits():
    exp = get_preset("exact-fit-search")
    record = run_job(exp, 3000, 0)
    assert record["status"] == "ok" and record["oracle_status"] == "ok", record.get("error")
    assert record["n_starts"] >= 4 and 1 <= record["n_best"] <= record["n_starts"]
    for key in ("objective", "oracle_objective", "oracle_loglik", "oracle_D1", "oracle_a_max_0", "oracle_fit_time"):
        assert math.isfinite(record[key]), key
    assert record["oracle_gap"] == pytest.approx(record["oracle_objective"] - record["objective"])
    assert record["reached_oracle"] is same_maximum(record["objective"], record["oracle_objective"]) or \
        record["oracle_gap"] < 0
    # The oracle check's fit is the oracle preset's fit of the same job, to the last bit.
    oracle = run_job(get_preset("exact-fit"), 3000, 0)
    assert "n_starts" not in oracle and "oracle_gap" not in oracle
    assert record["oracle_loglik"] == oracle["loglik"] and record["oracle_D1"] == oracle["D1"]
    assert record["oracle_params"] == oracle["params"]


def test_report_counts_how_often_the_maxima_agree(tmp_path):
    exp = get_preset("exact-fit-search").with_grid(sample_sizes=[3000, 4400], n_replications=2)
    run_experiment(exp, tmp_path, scheduler="synchronous", progress=False)
    report = analyse(tmp_path)
    rows = {row["n"]: row for row in report.agreement}
    assert set(rows) == {3000, 4400, "all"}
    assert rows["all"]["checked"] == rows["all"]["fits"] == 4
    assert rows["all"]["reached"] == sum(r["reached_oracle"] for r in report.records)
    assert rows["all"]["same"] + rows["all"]["higher"] == rows["all"]["reached"]
    assert rows["all"]["share_low"] <= rows["all"]["share_reached"] <= rows["all"]["share_high"]
    text = report.format_table()
    assert "reached" in text and "median gap" in text
    # A study started near the truth has no such table.
    assert start_agreement([{k: v for k, v in r.items() if k not in ("n_starts", "oracle_gap")}
                            for r in report.records]) == []


def test_not_compared_when_either_fit_diverged():
    rows = [{"n": 10, "status": "ok", "oracle_status": "diverged", "n_starts": 4, "n_best": 2, "oracle_gap": 0.0,
             "reached_oracle": True, "same_maximum": True, "fit_time": 1.0, "oracle_fit_time": 0.5},
            {"n": 10, "status": "ok", "oracle_status": "ok", "n_starts": 4, "n_best": 1, "oracle_gap": 3.5,
             "reached_oracle": False, "same_maximum": False, "fit_time": 2.0, "oracle_fit_time": 0.5}]
    (row, total) = start_agreement(rows)
    assert (row["compared"], row["not_compared"], row["reached"], row["single_best"]) == (1, 1, 0, 1)
    assert row["median_gap"] == 3.5 and row["median_time_ratio"] == 4.0 and total["n"] == "all"


def test_wilson_interval():
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.83 < low < 0.84  # the 95% interval of 20/20 successes
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
