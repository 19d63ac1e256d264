"""summary() on a FitResult and on the estimator; saving and loading a fitted estimator as JSON."""

import json
import warnings

import numpy as np
import pytest

import fastmoe
from fastmoe import summary as summary_module
from fastmoe.estimator import MixtureOfExpertsClassifier
from fastmoe.params import free_parameter_names

pd = pytest.importorskip("pandas")

LABELS = np.array(["cat", "dog", "eel"])


def _block(frame, part, expert, label):
    """The rows of one block of a summary frame (term -> row), without indexing an unsorted MultiIndex."""
    flat = frame.reset_index()
    return flat[(flat["part"] == part) & (flat["expert"] == expert) & (flat["class"] == label)].set_index("term")


@pytest.fixture
def data(well_separated):
    X, y = fastmoe.sample(well_separated, n=3000, random_state=5)
    return X, y


@pytest.fixture
def frame(data):
    X, y = data
    return pd.DataFrame(X, columns=["age", "dose"]), LABELS[y]


# ----------------------------------------------------------------------------------------------------------
# summary()
# ----------------------------------------------------------------------------------------------------------
def test_fit_result_summary_matches_the_parameter_table(data, well_separated):
    X, y = data
    result = fastmoe.fit(X, y, 2, init=well_separated, n_threads=1)
    summary = result.summary(X, y)
    table = fastmoe.parameter_table(result, X, y)
    frame = summary.to_frame()
    assert list(frame["name"]) == free_parameter_names(result.params)
    np.testing.assert_array_equal(frame["estimate"], table.estimate)
    np.testing.assert_array_equal(frame["std_error"], table.std_error)
    np.testing.assert_array_equal(frame["upper"], table.upper)
    np.testing.assert_allclose(summary.gate_share, fastmoe.gate_proba(result.params, X).mean(axis=0), rtol=1e-12)
    header = dict(summary.header)
    assert header["samples"] == "n = 3000"
    assert header["log-likelihood"] == f"{result.loglik:.4f}"
    assert header["AIC, BIC"] == f"{result.aic:.2f}, {result.bic:.2f} (15 free parameters)"
    assert header["stopped"] == result.message
    assert header["converged, diverged"] == "yes, no"
    assert header["penalty"] == "none (maximum likelihood)"
    assert header["standard errors"] == "observed information; Wald 95% intervals"
    text = str(summary)
    for line in (
        "Experts (gating reference: expert 1)",
        "Gating, expert 0: log-odds of expert 0 against expert 1",
        "Expert 1, class 1: log-odds of class 1 against class 2",
        f"gate share {summary.gate_share[0]:.3f}",
    ):
        assert line in text
    # the rows of one block: intercept then the features, named x0, x1 for a FitResult
    block = _block(frame, "expert", "1", 0)
    assert block.index.tolist() == ["intercept", "x0", "x1"]
    assert block.loc["x1", "name"] == "a[1,0,1]"


def test_estimator_summary_names_features_and_classes(frame):
    X, labels = frame
    model = MixtureOfExpertsClassifier(2, gating="tanh", random_state=0, n_threads=1).fit(X, labels)
    summary = model.summary(X, labels)
    out = summary.to_frame()
    assert out.index.names == ["part", "expert", "class", "term"]
    assert _block(out, "gating", "0", "").index.tolist() == ["intercept", "tanh(age)", "tanh(dose)"]
    assert _block(out, "expert", "0", "dog").index.tolist() == ["intercept", "age", "dose"]
    assert set(out.index.get_level_values("class")) == {"", "cat", "dog"}  # eel is the reference
    # the default ridge: the penalised Hessian, said in the header, and finite standard errors
    assert dict(summary.header)["standard errors"] == "inverse penalised Hessian (centred ridge, l2=1); Wald 95% intervals"
    assert dict(summary.header)["penalty"].startswith("ridge l2=1 on all slopes")
    assert np.isfinite(out["std_error"]).all()
    text = str(summary)
    assert "Expert 0, class 'cat': log-odds of class 'cat' against class 'eel'" in text
    assert "softmax gating on tanh(x) (modified)" in text
    experts = summary.experts_frame()
    assert experts["reference"].tolist() == [False, True]
    assert experts["gate_share"].sum() == pytest.approx(1.0)
    assert summary.header_frame()["samples"] == "n = 3000"


def test_fit_result_summary_names_a_data_frames_columns(frame, well_separated):
    """A FitResult keeps the names fit was given (a DataFrame's columns, or feature_names), and its
    summary names the coefficients by them (it printed x0, x1 though fit knew the names)."""
    X, labels = frame
    y = np.searchsorted(LABELS, labels)
    result = fastmoe.fit(X, y, 2, init=well_separated, n_threads=1)
    assert result.feature_names == ("age", "dose")
    out = result.summary(X, y).to_frame()
    assert _block(out, "expert", "1", 0).index.tolist() == ["intercept", "age", "dose"]
    named = fastmoe.fit(X.to_numpy(), y, 2, init=well_separated, n_threads=1, feature_names=["u", "v"])
    assert _block(named.summary().to_frame(), "gating", "0", "").index.tolist() == ["intercept", "u", "v"]
    assert fastmoe.fit(X.to_numpy(), y, 2, init=well_separated, n_threads=1).feature_names is None


def test_summary_without_data_shows_the_estimates(data, well_separated):
    X, y = data
    result = fastmoe.fit(X, y, 2, init=well_separated, n_threads=1)
    summary = result.summary(feature_names=["u", "v"], class_names=["a", "b", "c"])
    assert not summary.has_standard_errors and summary.gate_share is None
    assert list(summary.to_frame().columns) == ["name", "estimate"]
    assert dict(summary.header)["standard errors"] == "not computed (pass the training X and y)"
    assert "Expert 0, class 'b': log-odds of class 'b' against class 'c'" in str(summary)
    with pytest.raises(ValueError, match="3 feature names for 2 features"):
        result.summary(feature_names=["u", "v", "w"])
    with pytest.raises(ValueError, match="y was given without X"):
        result.summary(y=y)


def test_header_takes_another_line(data, well_separated, monkeypatch):
    """The restart fields of a later FitResult are one more HEADER entry."""
    X, y = data
    result = fastmoe.fit(X, y, 2, init=well_separated, n_threads=1)
    monkeypatch.setattr(summary_module, "HEADER", summary_module.HEADER + [("restarts", lambda f: "3 of 3 agree")])
    assert dict(result.summary().header)["restarts"] == "3 of 3 agree"
    assert "restarts" in str(result.summary())


def test_summary_of_a_diverged_fit_says_so():
    X = np.linspace(-1, 1, 300)[:, None] * np.array([[1.0, 0.3]])
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        # the second column is 0.3 times the first: named as linearly dependent, not what is tested here
        warnings.filterwarnings("ignore", "fastmoe.fit: features .* linearly dependent", fastmoe.FitWarning)
        result = fastmoe.fit(X, y, 1)
    header = dict(result.summary().header)
    assert result.diverged and header["converged, diverged"].endswith(", yes")
    assert header["stopped"] == result.message


# ----------------------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------------------
def test_save_and_load_keep_classes_feature_names_and_predictions(frame, tmp_path):
    X, labels = frame
    model = MixtureOfExpertsClassifier(2, class_weight={"cat": 2.0}, random_state=0, n_threads=1).fit(X, labels)
    model.save(tmp_path / "model.json")
    loaded = MixtureOfExpertsClassifier.load(tmp_path / "model.json")
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.classes_, model.classes_)
    assert loaded.classes_.dtype == model.classes_.dtype
    np.testing.assert_array_equal(loaded.feature_names_in_, ["age", "dose"])
    assert loaded.get_params() == model.get_params()
    assert loaded.params_.allclose(model.params_, rtol=0, atol=0)
    for name in ("log_likelihood_", "objective_", "n_iter_", "converged_", "diverged_", "empty_experts_",
                 "n_free_params_", "bic_", "aic_"):
        assert getattr(loaded, name) == getattr(model, name), name
    np.testing.assert_array_equal(loaded.fit_result_.history, model.fit_result_.history)
    assert loaded.fit_result_.message == model.fit_result_.message
    np.testing.assert_array_equal(loaded.class_weight_, [2.0, 1.0, 1.0])
    # the loaded estimator checks columns and labels like the fitted one
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(X.rename(columns={"age": "height"}))
    with warnings.catch_warnings():
        # With class_weight the penalised maximum on these data lies at a boundary (class 'dog' absent
        # from expert 0: 3 nats above the interior maximum), whose intercept has no standard error.
        warnings.simplefilter("ignore", fastmoe.UncertaintyWarning)
        assert str(loaded.summary(X, labels)).startswith("Mixture of experts")
    # and can be refitted with the same settings
    assert MixtureOfExpertsClassifier.load(tmp_path / "model.json").fit(X, labels).params_.allclose(
        model.params_, rtol=0, atol=0
    )


@pytest.mark.parametrize("labels", [np.array([3, 7, 10]), np.array([-4.0, 0.0, 9.0]), None])
def test_save_and_load_other_labels(data, well_separated, tmp_path, labels):
    X, y = data
    target = y == 0 if labels is None else labels[y]  # None: boolean labels
    init = "kmeans" if labels is None else well_separated
    model = MixtureOfExpertsClassifier(2, init=init, class_weight="balanced", random_state=0, n_threads=1)
    model.fit(X, target)
    model.save(tmp_path / "model.json")
    loaded = MixtureOfExpertsClassifier.load(tmp_path / "model.json")
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.predict(X).dtype == model.predict(X).dtype
    assert (loaded.init == "kmeans") if labels is None else loaded.init.allclose(well_separated)
    assert not hasattr(loaded, "feature_names_in_")


def test_save_refuses_what_json_cannot_hold(data, tmp_path):
    X, y = data
    with pytest.raises(Exception, match="NotFitted|not fitted"):
        MixtureOfExpertsClassifier().save(tmp_path / "model.json")
    gated = MixtureOfExpertsClassifier(2, gating=lambda X: np.tanh(X), random_state=0, n_threads=1).fit(X, y)
    with pytest.raises(ValueError, match="callable gating cannot be saved"):
        gated.save(tmp_path / "model.json")
    seeded = MixtureOfExpertsClassifier(2, class_weight={1: 2.0}, random_state=np.random.default_rng(0),
                                        n_threads=1).fit(X, y)
    seeded.save(tmp_path / "model.json")
    loaded = MixtureOfExpertsClassifier.load(tmp_path / "model.json")
    assert loaded.random_state is None and loaded.class_weight == {1: 2.0}
    (tmp_path / "other.json").write_text(json.dumps({"beta0": [0.0]}))
    with pytest.raises(ValueError, match="not a saved MixtureOfExpertsClassifier"):
        MixtureOfExpertsClassifier.load(tmp_path / "other.json")


def test_summary_takes_its_standard_errors_from_the_bootstrap_when_asked(data, well_separated):
    X, y = data
    result = fastmoe.fit(X, y, 2, init=well_separated, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.UncertaintyWarning)  # a few refits of n = 3000 may fail
        summary = result.summary(X, y, n_boot=12, random_state=4)
        table = fastmoe.bootstrap_table(result, X, y, n_boot=12, random_state=4)
    frame = summary.to_frame()
    np.testing.assert_allclose(frame["std_error"].to_numpy(), table.std_error, rtol=1e-12)
    np.testing.assert_allclose(frame["upper"].to_numpy(), table.upper, rtol=1e-12)
    assert "parametric bootstrap, normal interval" in str(summary)
    assert "Wald" not in str(summary).split("standard errors", 1)[1].splitlines()[0]
