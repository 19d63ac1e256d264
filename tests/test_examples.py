"""The example scripts run: a smoke run of each on small settings (their full runs write the docs pages)."""

import importlib.util
import json
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


def test_continue_stored_fits_finds_nothing_left_and_resumes(tmp_path, capsys):
    # Fits of this fastmoe stop at their maxima: continued from their answers none rises beyond the
    # tolerance (0.2.0's stops on curved ridges did: docs/results.md, "Large n").
    from fastmoe.experiments import get_preset, run_experiment

    check = _load("continue_stored_fits")
    exp = get_preset("vanishing-standard-spread").with_grid(sample_sizes=[5000, 9700], n_replications=2)
    run_experiment(exp, tmp_path / "run", scheduler="synchronous", progress=False)
    out = tmp_path / "checks.jsonl"
    assert check.main([str(tmp_path / "run"), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["n"], r["replication"]) for r in records) == [(5000, 0), (5000, 1), (9700, 0), (9700, 1)]
    assert all(r["converged"] and r["gain"] <= r["tolerance"] for r in records)
    assert "4 fits continued; 0 rose beyond the tolerance" in capsys.readouterr().out
    check.main([str(tmp_path / "run"), "--out", str(out)])  # nothing left to do
    assert len(out.read_text().splitlines()) == 4


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


def test_dendrogram_tables_in_the_docs_are_those_of_the_committed_data(tmp_path):
    """README.md and docs/dendrogram.md show what ``--write-docs`` makes of docs/data/dendrogram_accuracy.csv."""
    study = _load("dendrogram_accuracy")
    root = EXAMPLES.parent
    copies = {}
    for name in ("README.md", "dendrogram.md"):
        source = root / name if name == "README.md" else root / "docs" / name
        copies[name] = (source, tmp_path / name)
        copies[name][1].write_text(source.read_text())
    study.write_docs(root / "docs" / "data" / "dendrogram_accuracy.csv", copies["README.md"][1],
                     copies["dendrogram.md"][1])
    for source, copy in copies.values():
        assert copy.read_text() == source.read_text(), f"{source.name} is out of date: run --write-docs"


def test_dendrogram_report_names_the_seeds_and_sizes_not_run():
    study = _load("dendrogram_accuracy")
    assert study._ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    rows = [dict(kstar=str(k), n="2000", contamination="0.0", seed=str(s), method=m, chosen="2",
                 correct=str(int(k == 2)), seconds="1.0")
            for s in (0, 1, 2) for k in (2, 3) for m in ("dendrogram_refined", "bic")
            if not (s == 2 and k == 3)]
    text = study.what_was_run(rows)
    assert "n = 2e3: seeds 0-1 (and partly 2: 1 of 2 jobs), 2 complete of the >= 50" in text
    assert "; n = 1e4, 5e4 **not run**;" in text and "5 jobs (10 rows)" in text
    # A size run on part of the grid is reported on its own, against the whole grid of cells.
    rows += [dict(row, n="50000") for row in rows if row["kstar"] == "2" and row["seed"] != "0"]
    text = study.what_was_run(rows)
    assert ("n = 2e3: seeds 0-1 (and partly 2: 1 of 2 jobs), 2 complete of the >= 50 the issue asks for; "
            "n = 5e4: no seed (and partly 1-2: 1 of 2 jobs each), 0 complete of the >= 50 the issue asks for; "
            "n = 1e4 **not run**;") in text
    with pytest.raises(ValueError, match="one <!-- accuracy:begin -->"):
        study.replace_block("no markers here", "table")
