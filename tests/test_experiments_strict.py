"""Study definitions that cannot be misread (issue 17): a strict schema checked before anything is written."""

import dataclasses
import json
import math
import re

import numpy as np
import pytest

from fastmoe.experiments import Experiment, get_preset, runner
from fastmoe.experiments.cli import build_parser, main
from fastmoe.experiments.schema import DefinitionError

INF, NAN = math.inf, math.nan


def small_experiment(**changes):
    base = get_preset("exact-fit").with_grid(sample_sizes=[300, 500], n_replications=3)
    return Experiment.from_dict({**base.to_dict(), **changes})


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
