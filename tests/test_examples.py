"""The example scripts run: a smoke run of each on small settings (their full runs write the docs pages)."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_data_writes_its_page(tmp_path):
    pytest.importorskip("sklearn")
    real_data = _load("real_data")
    out = tmp_path / "real_data.md"
    assert real_data.main(["--datasets", "iris", "--folds", "2", "--quick", "--threads", "1", "--out", str(out)]) == 0
    page = out.read_text()
    for model in ("LogisticRegression", "HistGradientBoosting", "MLP", "MixtureOfExperts"):
        assert f"| {model} |" in page
    assert "### iris (l2 = 1, n_experts = " in page and "Mixture of experts" in page


def test_interval_coverage_writes_rows_and_resumes(tmp_path):
    pytest.importorskip("pandas")
    coverage = _load("interval_coverage")
    out = tmp_path / "coverage.csv"
    assert coverage.main(["--n", "3000", "--replications", "2", "--boot", "5", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 2 * 15  # header, then 15 parameters per replication
    coverage.main(["--n", "3000", "--replications", "2", "--boot", "5", "--out", str(out)])  # nothing left to do
    assert len(out.read_text().splitlines()) == len(lines)
    table, summary = coverage.coverage_table(out, 0.95)
    assert set(summary) == set(coverage.INTERVALS) and "| wald |" in table


def test_dendrogram_accuracy_writes_rows_and_resumes(tmp_path):
    pytest.importorskip("sklearn")
    study = _load("dendrogram_accuracy")
    out = tmp_path / "accuracy.csv"
    args = ["--seeds", "0", "--n", "2000", "--kstar", "2", "--contamination", "0.05", "--out", str(out)]
    study.main(args)
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + len(study.METHODS)  # header, then one row per method
    study.main(args)  # nothing left to do
    assert out.read_text().splitlines() == lines
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert {r["method"] for r in rows} == set(study.METHODS)
    assert all(1 <= int(r["chosen"]) <= 4 and r["correct"] == str(int(int(r["chosen"]) == 2)) for r in rows)
