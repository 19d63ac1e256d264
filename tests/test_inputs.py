"""Separate inputs for the gating and the experts (issue 15, part 2).

The gating reads ``M(X[:, gating_features])`` and the experts ``X[:, expert_features]``; an empty expert set
gives intercept-only experts, the covariate latent-class model (StepMix's, flexmix's concomitant model with
constant experts). Everything here is checked against plain NumPy written in this file, independently of
the kernels and of ``tests/reference_numpy.py``: the log-likelihood with separate inputs, the covariate
latent-class likelihood ``sum_n log sum_i pi_i(z_n) p_i(y_n)`` and, by finite differences of those, the
gradients and the Hessian the fit uses. Then every public entry point with a model whose two sets differ,
recovery at large n, and the errors bad sets raise.
"""

import dataclasses
import json
import warnings

import numpy as np
import pytest

import fastmoe
from fastmoe import MoEParams
from fastmoe._problem import Problem
from fastmoe.exceptions import SearchWarning
from fastmoe.params import free_vector, from_free_vector

# --- independent NumPy models ---------------------------------------------------------------------------


def _log_softmax(logits, axis):
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def numpy_loglik(beta0, beta1, a, b, X, y, gating_columns, expert_columns, transform=lambda v: v):
    """``sum_n log sum_i pi_i(M(x_n[g])) f_i(y_n | x_n[e])`` in log space."""
    Z = transform(X[:, list(gating_columns)])
    Xe = X[:, list(expert_columns)]
    log_gate = _log_softmax(Z @ np.asarray(beta1).T + beta0, axis=1)  # (n, k)
    logits = np.einsum("nd,ksd->nks", Xe, np.asarray(a)) + np.asarray(b)[None]  # (n, k, K)
    log_expert = _log_softmax(logits, axis=2)[np.arange(len(y)), :, y]  # (n, k)
    joint = log_gate + log_expert
    top = joint.max(axis=1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))).sum())


def latent_class_loglik(beta0, beta1, b, Z, y):
    """The covariate latent-class likelihood, in probabilities: each class ``i`` a fixed distribution
    ``p_i = softmax(b_i)`` over the labels, membership ``softmax(beta0 + beta1 . z)``."""
    gate = np.exp(Z @ np.asarray(beta1).T + beta0)
    gate /= gate.sum(axis=1, keepdims=True)
    emission = np.exp(b) / np.exp(b).sum(axis=1, keepdims=True)  # (k, K)
    return float(np.log((gate * emission[:, y].T).sum(axis=1)).sum())


# --- models used below ----------------------------------------------------------------------------------

#: Gating on x2 alone (d_gate = 1), experts on x0 and x1 (d = 2); X has 3 columns.
SEPARATE = MoEParams(
    beta0=[0.5, 0.0], beta1=[[3.0], [0.0]],
    a=[[[2.0, 1.0], [-1.0, 0.5], [0.0, 0.0]], [[-2.0, 0.0], [1.0, -2.0], [0.0, 0.0]]],
    b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]], gating_features=[2], expert_features=[0, 1],
)

#: Intercept-only experts (a covariate latent-class model): gating on x0 and x2 of 3 columns, x1 unused.
LATENT_CLASS = MoEParams(
    beta0=[0.8, -0.4, 0.0], beta1=[[3.0, -1.0], [-2.0, 2.5], [0.0, 0.0]], a=np.zeros((3, 3, 0)),
    b=[[2.0, -1.0, 0.0], [-1.5, 1.5, 0.0], [0.0, 0.5, 0.0]], gating_features=[0, 2], expert_features=[], n_inputs=3,
)


def _random_model(rng, k, K, n_inputs, gating_features, expert_features, gating="identity"):
    d_gate, d = len(gating_features), len(expert_features)
    return MoEParams(rng.normal(size=k), rng.normal(size=(k, d_gate)), rng.normal(size=(k, K, d)),
                     rng.normal(size=(k, K)), gating, gating_features=gating_features,
                     expert_features=expert_features, n_inputs=n_inputs).normalized()


def _numpy_loglik_of(params, X, y):
    transform = {"identity": lambda v: v, "tanh": np.tanh}[params.gating_name]
    return numpy_loglik(params.beta0, params.beta1, params.a, params.b, X, y, params.gating_columns(),
                        params.expert_columns(), transform)


CASES = [  # (n_inputs, gating_features, expert_features, gating)
    (3, (2,), (0, 1), "identity"),
    (4, (0, 3), (1,), "tanh"),
    (3, (1, 0), (2, 0), "identity"),  # order matters and the sets overlap
    (2, (1,), (), "identity"),  # intercept-only experts
    (3, (0, 1, 2), (), "tanh"),
]


# --- the likelihood against NumPy -----------------------------------------------------------------------


@pytest.mark.parametrize("n_inputs, gating_features, expert_features, gating", CASES)
def test_loglik_matches_numpy_with_separate_inputs(rng, n_inputs, gating_features, expert_features, gating):
    params = _random_model(rng, 3, 4, n_inputs, gating_features, expert_features, gating)
    X = rng.uniform(-2, 2, size=(501, n_inputs))
    y = rng.integers(0, 4, size=501)
    want = _numpy_loglik_of(params, X, y)
    assert fastmoe.loglik(params, X, y) == pytest.approx(want, rel=1e-12)
    per_sample = fastmoe.loglik_samples(params, X, y)
    assert per_sample.sum() == pytest.approx(want, rel=1e-12)
    # Each part must read its own columns: the same arrays on other columns are another model.
    shuffled = X[:, ::-1].copy()
    assert fastmoe.loglik(params, shuffled, y) != pytest.approx(want, rel=1e-6)


def test_intercept_only_experts_are_the_covariate_latent_class_model(rng):
    X = rng.uniform(-1, 1, size=(2000, 3))
    _, y = fastmoe.sample(LATENT_CLASS, X=X, random_state=rng)
    Z = X[:, [0, 2]]
    want = latent_class_loglik(LATENT_CLASS.beta0, LATENT_CLASS.beta1, LATENT_CLASS.b, Z, y)
    assert fastmoe.loglik(LATENT_CLASS, X, y) == pytest.approx(want, rel=1e-12)
    # Class probabilities are the gating's mixture of the fixed class distributions.
    gate = fastmoe.gate_proba(LATENT_CLASS, X)
    emission = np.exp(LATENT_CLASS.b) / np.exp(LATENT_CLASS.b).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fastmoe.predict_proba(LATENT_CLASS, X), gate @ emission, rtol=1e-12)
    np.testing.assert_allclose(fastmoe.expert_proba(LATENT_CLASS, X), np.broadcast_to(emission, (2000, 3, 3)),
                               rtol=1e-12)
    resp = gate * emission[:, y].T
    np.testing.assert_allclose(fastmoe.responsibilities(LATENT_CLASS, X, y), resp / resp.sum(1, keepdims=True),
                               rtol=1e-10)


def test_intercept_only_kernels_are_thread_invariant(rng):
    X = rng.uniform(-1, 1, size=(10003, 3))
    _, y = fastmoe.sample(LATENT_CLASS, X=X, random_state=rng)
    values = {t: fastmoe.loglik(LATENT_CLASS, X, y, n_threads=t) for t in (1, 2, 7)}
    assert values[1] == values[2] == values[7]


@pytest.mark.parametrize("n_inputs, gating_features, expert_features, gating", CASES)
def test_fit_gradients_and_hessian_match_finite_differences(rng, n_inputs, gating_features, expert_features, gating):
    """The gradient and negative Hessian the fit uses (the Newton finish's exact pass, and the M-step
    blocks of the fused EM pass) against central differences of the NumPy log-likelihood."""
    params = _random_model(rng, 3, 3, n_inputs, gating_features, expert_features, gating)
    X = rng.uniform(-1.5, 1.5, size=(300, n_inputs))
    y = rng.integers(0, 3, size=300)
    problem = Problem(*params.designs(X), y.astype(np.int64), np.empty(0), 3, 3, 1)
    W, V = params.packed()
    theta = free_vector(W, V)

    def f(t):
        W_t, V_t = from_free_vector(t, W, V)
        return _numpy_loglik_of(MoEParams.from_packed(W_t, V_t, params.gating, **params.inputs), X, y)

    h = 1e-4
    eye = np.eye(theta.size)
    fd_grad = np.array([(-f(theta + 2 * h * e) + 8 * f(theta + h * e) - 8 * f(theta - h * e) + f(theta - 2 * h * e))
                        / (12 * h) for e in eye])
    loglik, grad, neg_hess = problem.hessian_pass(W, V)
    assert loglik == pytest.approx(f(theta), rel=1e-12)
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-6, atol=1e-6)
    # The EM pass's M-step gradients at the current point are the same gradient (Fisher's identity).
    fused = problem.newton_pass(W, V)
    np.testing.assert_allclose(np.concatenate([fused.grad_gate, fused.grad_expert.ravel()]), fd_grad,
                               rtol=1e-6, atol=1e-6)

    def g(t):
        return problem.hessian_pass(*from_free_vector(t, W, V))[1]

    fd_hess = np.array([(g(theta + h * e) - g(theta - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(-neg_hess, fd_hess, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fastmoe.observed_information(params, X, y), neg_hess, rtol=1e-12, atol=1e-12)


# --- fit: recovery, stationarity, every entry point -------------------------------------------------------


@pytest.fixture(scope="module")
def separate_fit():
    X, y = fastmoe.sample(SEPARATE, n=60_000, random_state=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SearchWarning)  # how settled the search is: not what is tested here
        result = fastmoe.fit(X, y, 2, gating_features=[2], expert_features=[0, 1], random_state=0)
    return X, y, result


def test_large_n_recovers_a_truth_with_different_gating_and_expert_sets(separate_fit):
    X, y, result = separate_fit
    assert result.converged and not result.diverged
    assert result.params.inputs == SEPARATE.inputs
    assert (result.params.n_gate_features, result.params.n_features) == (1, 2)
    assert result.loglik >= fastmoe.loglik(SEPARATE, X, y)
    # n = 6e4: errors of order n^(-1/2); D1 sums ~15 of them weighted by masses up to e^0.5.
    assert fastmoe.losses.D1(result.params, SEPARATE) < 0.4
    assert sorted(fastmoe.losses.voronoi_cells(result.params, SEPARATE)) == [0, 1]
    _assert_recovered(result, SEPARATE, X, y)


def _assert_recovered(result, truth, X, y):
    """The search reached the maximum of a fit started at the truth, and that maximum lies within 4.5
    standard errors of the truth in every free parameter (expert order fixed by the start)."""
    oracle = fastmoe.fit(X, y, truth.n_experts, init=truth)
    assert abs(result.loglik - oracle.loglik) <= 1e-6 * abs(oracle.loglik)
    table = fastmoe.parameter_table(oracle, X, y)
    z = (table.estimate - fastmoe.free_parameters(truth)) / table.std_error
    assert np.abs(z).max() < 4.5, dict(zip(table.names, z.round(2)))


def test_fitting_all_columns_is_a_different_and_larger_model(separate_fit):
    X, y, result = separate_fit
    full = fastmoe.fit(X, y, 2, init=dataclasses.replace(
        SEPARATE, beta1=np.hstack([np.zeros((2, 2)), SEPARATE.beta1]),
        a=np.concatenate([SEPARATE.a, np.zeros((2, 3, 1))], axis=2), gating_features=None, expert_features=None))
    assert full.params.inputs == {"gating_features": None, "expert_features": None, "n_inputs": 3}
    assert full.n_free_params == result.n_free_params + 2 + 4  # one more gating, two more expert slopes
    # Nested models: the larger one fits at least as well, by no more than chi-square noise (6 df).
    assert 0 <= full.loglik - result.loglik < 15


def test_intercept_only_fit_recovers_the_latent_class_model():
    X, y = fastmoe.sample(LATENT_CLASS, n=40_000, random_state=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SearchWarning)
        result = fastmoe.fit(X, y, 3, gating_features=[0, 2], expert_features=[], random_state=1)
    assert result.converged and not result.diverged
    assert result.params.n_features == 0 and result.params.a.shape == (3, 3, 0)
    assert result.n_free_params == 2 * 3 + 3 * 2
    Z = X[:, [0, 2]]
    p = result.params
    assert result.loglik == pytest.approx(latent_class_loglik(p.beta0, p.beta1, p.b, Z, y), rel=1e-12)
    assert result.loglik >= fastmoe.loglik(LATENT_CLASS, X, y)
    # Latent-class parameters are known less well than their count suggests (standard errors of 0.2 to
    # 0.35 at this n), so the loss is loose and the recovery is judged in standard errors.
    assert fastmoe.losses.D1(p, LATENT_CLASS) < 1.5
    _assert_recovered(result, LATENT_CLASS, X, y)
    # At the maximum the fit's gradient vanishes: the gain a Newton step promises is below the tolerance.
    problem = Problem(*p.designs(X), y, np.empty(0), 3, 3, 1)
    _, grad, neg_hess = problem.hessian_pass(*p.packed())
    assert 0.5 * grad @ np.linalg.solve(neg_hess, grad) < 1e-8 * abs(result.loglik)  # the Newton decrement


def test_every_public_entry_point_with_separate_inputs(separate_fit, tmp_path):
    X, y, result = separate_fit
    X, y = X[:3000], y[:3000]
    params = result.params
    proba = result.predict_proba(X)
    np.testing.assert_allclose(proba, fastmoe.predict_proba(params, X))
    np.testing.assert_array_equal(result.predict(X), proba.argmax(1))
    assert result.score(X, y) == pytest.approx(_numpy_loglik_of(params, X, y) / 3000, rel=1e-12)
    assert fastmoe.gate_proba(params, X).shape == (3000, 2)
    assert fastmoe.expert_proba(params, X).shape == (3000, 2, 3)
    # sample: X has n_inputs columns, labels follow the model, the same seed the same draw.
    Xs, ys, zs = fastmoe.sample(SEPARATE, n=20_000, random_state=3, return_latent=True)
    assert Xs.shape == (20_000, 3)
    Xs2, ys2 = fastmoe.sample(SEPARATE, n=20_000, random_state=3)
    np.testing.assert_array_equal(ys, ys2)
    gate = fastmoe.gate_proba(SEPARATE, Xs)
    assert abs(np.mean(zs == 0) - gate[:, 0].mean()) < 0.02
    assert np.abs(np.bincount(ys, minlength=3) / 20_000 - fastmoe.predict_proba(SEPARATE, Xs).mean(0)).max() < 0.02
    # uncertainty, at the maximum of these 3000 rows
    small = fastmoe.fit(X, y, 2, init=params)
    table = fastmoe.parameter_table(small, X, y)
    assert list(table.names) == fastmoe.free_parameter_names(params) and len(table.names) == params.n_free_params
    assert "beta1[0,0]" in table.names and "beta1[0,1]" not in table.names and "a[0,0,1]" in table.names
    info = fastmoe.expected_information(params, X[:500])
    assert info.shape == (params.n_free_params,) * 2 and np.allclose(info, info.T)
    boot = fastmoe.bootstrap_table(small, X, y, n_boot=2, random_state=0)
    assert boot.estimate.shape == (params.n_free_params,)
    # summary: each table names the columns it reads
    frame = small.summary(X, y, feature_names=["age", "dose", "income"]).to_frame()
    gating_terms = set(frame.loc["gating"].index.get_level_values("term"))
    expert_terms = set(frame.loc["expert"].index.get_level_values("term"))
    assert gating_terms == {"intercept", "income"} and expert_terms == {"intercept", "age", "dose"}
    text = str(small.summary(X, y))
    assert "gating reads x2; experts read x0, x1" in text
    # save and load keep the sets
    path = tmp_path / "params.json"
    params.save(path)
    again = MoEParams.load(path)
    assert again.allclose(params) and again.inputs == params.inputs
    np.testing.assert_array_equal(fastmoe.predict_proba(again, X), proba)
    # losses: the gating slope dimension (1) differs from the expert one (2)
    errors = fastmoe.losses.per_parameter_errors(params, SEPARATE)
    assert errors["beta1_max"].shape == errors["a_max"].shape == (2,) and (errors["a_max"] > 0).all()
    assert fastmoe.losses.D2(params.split_expert(0), SEPARATE) < 1.0


def test_estimator_with_column_names_and_save_load(tmp_path):
    pd = pytest.importorskip("pandas")
    from fastmoe import MixtureOfExpertsClassifier

    X, y = fastmoe.sample(SEPARATE, n=4000, random_state=2)
    frame = pd.DataFrame(X, columns=["age", "dose", "income"])
    labels = np.array(["cat", "dog", "eel"])[y]
    by_name = MixtureOfExpertsClassifier(2, gating_features=["income"], expert_features=["age", "dose"],
                                         l2=0.0, random_state=0)
    by_name.fit(frame, labels)
    assert by_name.params_.inputs == SEPARATE.inputs and by_name.n_features_in_ == 3
    by_index = MixtureOfExpertsClassifier(2, gating_features=[2], expert_features=[0, 1], l2=0.0,
                                          random_state=0).fit(X, labels)
    by_mask = MixtureOfExpertsClassifier(2, gating_features=[False, False, True], expert_features=[True, True, False],
                                         l2=0.0, random_state=0).fit(X, labels)
    np.testing.assert_allclose(by_index.predict_proba(X), by_name.predict_proba(frame), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(by_mask.predict_proba(X), by_index.predict_proba(X), rtol=1e-8, atol=1e-10)
    assert by_name.summary(frame, labels).to_frame().loc["gating"].index.get_level_values("term")[1] == "income"
    path = tmp_path / "model.json"
    by_name.save(path)
    loaded = MixtureOfExpertsClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(frame), by_name.predict_proba(frame))
    assert loaded.params_.inputs == SEPARATE.inputs and loaded.get_params()["gating_features"] == ["income"]
    latent = MixtureOfExpertsClassifier(2, gating_features=[2], expert_features=[], random_state=0).fit(X, labels)
    assert latent.params_.a.shape == (2, 3, 0) and latent.predict_proba(X).shape == (4000, 3)
    choice = fastmoe.select_n_experts(X, labels, (1, 2), gating_features=[2], expert_features=[0, 1], l2=0.0,
                                      random_state=0)
    assert choice.best_n_experts == 2
    assert choice.best_estimator.params_.inputs == SEPARATE.inputs


def test_a_set_that_is_all_of_X_costs_no_copy(rng):
    params = _random_model(rng, 2, 3, 3, (0, 1, 2), (2,))
    X = rng.uniform(size=(50, 3))
    assert params.gating_features is None  # every column in order is stored as "all of X"
    X_expert, Z = params.designs(X)
    assert Z is X and X_expert.shape == (50, 1)
    X_expert, Z = dataclasses.replace(params, a=np.zeros((2, 3, 3)), expert_features=None).designs(X)
    assert X_expert is X and Z is X
    same = MoEParams([0.0, 0.0], [[1.0], [0.0]], np.zeros((2, 3, 1)), np.zeros((2, 3)), gating_features=[1],
                     expert_features=[1], n_inputs=2)
    X_expert, Z = same.designs(X[:, :2])
    assert Z is X_expert  # identity gating on the experts' columns: one array, which the kernels load once


def test_dicts_without_separate_inputs_are_unchanged(well_separated):
    assert set(well_separated.to_dict()) == {"beta0", "beta1", "a", "b", "gating"}
    data = SEPARATE.to_dict()
    assert (data["gating_features"], data["expert_features"], data["n_inputs"]) == ([2], [0, 1], 3)
    assert MoEParams.from_dict(json.loads(json.dumps(data))).inputs == SEPARATE.inputs
    latent = LATENT_CLASS.to_dict()
    assert latent["expert_features"] == [] and "gating_features" in latent


# --- rate-study definitions ------------------------------------------------------------------------------


def test_rate_study_with_separate_inputs(tmp_path):
    from fastmoe.experiments import Experiment, TruthPath
    from fastmoe.experiments.job import run_job
    from fastmoe.experiments.presets import get_preset

    exp = get_preset("separate-inputs")
    assert exp.truth.inputs == SEPARATE.inputs
    assert "gating on columns [2], experts on [0, 1] of 3" in exp.outline()
    for suffix in (".toml", ".json"):
        exp.save(tmp_path / f"def{suffix}")
        again = Experiment.load(tmp_path / f"def{suffix}")
        assert again.truth.inputs == exp.truth.inputs and again.model_digest() == exp.model_digest()
    small = exp.with_grid(sample_sizes=[3000], n_replications=1)
    record = run_job(small, 3000, 0)
    assert record["status"] == "ok", record.get("error")
    assert record["loglik"] >= record["loglik_true"]
    assert MoEParams.from_dict(record["params"]).inputs == SEPARATE.inputs
    # The same study with a data-driven start, and a truth that moves along a direction with the same sets.
    direction = dataclasses.replace(SEPARATE, beta0=np.zeros(2), beta1=np.ones((2, 1)), a=np.zeros((2, 3, 2)),
                                    b=np.zeros((2, 3)))
    moving = dataclasses.replace(small, fit=dataclasses.replace(small.fit, init="kmeans"),
                                 truth_path=TruthPath(direction=direction, scale=1.0, exponent=0.5))
    again = Experiment.from_dict(json.loads(moving.to_json()))
    assert again.truth_path.direction.inputs == SEPARATE.inputs
    assert np.allclose(again.truth_at(10_000).beta1, SEPARATE.beta1 + 0.01)
    record = run_job(again, 3000, 0)
    assert record["status"] == "ok", record.get("error")


def test_rate_study_definition_refuses_bad_input_tables():
    from fastmoe.experiments import Experiment
    from fastmoe.experiments.presets import get_preset
    from fastmoe.experiments.schema import DefinitionError

    data = json.loads(get_preset("separate-inputs").to_json())
    for key, value, match in (("gating_features", [], "gating_features is empty"),
                              ("expert_features", [0, 0], "duplicates"),
                              ("expert_features", [0], "expert_features names 1 columns but a has 2"),
                              ("gating_featurs", [2], "unknown")):
        bad = json.loads(json.dumps(data))
        bad["truth"][key] = value
        with pytest.raises(DefinitionError, match=match):
            Experiment.from_dict(bad)


# --- errors ----------------------------------------------------------------------------------------------

X3 = np.random.default_rng(0).uniform(-1, 1, size=(400, 3))
Y3 = np.random.default_rng(1).integers(0, 3, size=400)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"gating_features": []}, ValueError, "gating_features is empty"),
    ({"gating_features": [3]}, ValueError, "gating_features has column index 3 but X has 3 columns"),
    ({"expert_features": [0, 0]}, ValueError, "expert_features names column 0 twice"),
    ({"expert_features": [0.5]}, TypeError, "expert_features must hold column indices"),
    ({"expert_features": "x0"}, TypeError, "expert_features must be None or a sequence"),
    ({"gating_features": ["age"]}, ValueError, "names columns by string but X has no column names"),
    ({"gating_features": [True, False]}, ValueError, "boolean mask of length 2 but X has 3 columns"),
    ({"gating_features": [1], "init": SEPARATE}, ValueError, r"init has gating_features=\(2,\) but gating_features=\(1,\)"),
])
def test_fit_refuses_bad_feature_sets(kwargs, error, match):
    with pytest.raises(error, match=match):
        fastmoe.fit(X3, Y3, 2, **kwargs)


def test_negative_indices_count_from_the_end():
    result = fastmoe.fit(X3, Y3, 1, gating_features=[-1], expert_features=[-3, -2])
    assert result.params.inputs == {"gating_features": (2,), "expert_features": (0, 1), "n_inputs": 3}


def test_named_columns_must_exist():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X3, columns=["age", "dose", "income"])
    with pytest.raises(ValueError, match=r"names \['weight'\], which are not columns of X"):
        fastmoe.fit(frame, Y3, 2, gating_features=["weight"])
    result = fastmoe.fit(frame, Y3, 1, gating_features=["income"], expert_features=["age"])
    assert result.params.inputs["expert_features"] == (0,)


@pytest.mark.parametrize("kwargs, match", [
    ({"a": np.zeros((2, 3, 0)), "expert_features": None}, r"intercept-only experts need expert_features=\(\)"),
    ({"expert_features": [0]}, "expert_features names 1 columns but a has 2 slopes per class"),
    ({"gating_features": [0, 1]}, "beta1 needs 2 columns"),
    ({"expert_features": [-1, 0]}, "negative column index -1"),
    ({"n_inputs": 2}, "the feature sets name column 2 but n_inputs=2"),
    ({"gating_features": None, "n_inputs": 4}, r"beta1 \(all columns to the gating\) gives 1 input columns but n_inputs=4"),
])
def test_parameters_refuse_inconsistent_sets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SEPARATE, **kwargs)


def test_data_with_the_wrong_number_of_columns_is_refused():
    X, y = fastmoe.sample(SEPARATE, n=50, random_state=0)
    with pytest.raises(ValueError, match="X has 2 features but the model expects 3"):
        fastmoe.predict_proba(SEPARATE, X[:, :2])
    with pytest.raises(ValueError, match="X has 2 features but the model expects 3"):
        fastmoe.loglik(SEPARATE, X[:, :2], y)
    with pytest.raises(ValueError, match="the parameters have 3 features but X has 2"):
        fastmoe.fit(X[:, :2], y, 2, init=SEPARATE)
    with pytest.raises(ValueError, match="expert_features"):
        fastmoe.losses.D1(dataclasses.replace(SEPARATE, expert_features=[1, 0]), SEPARATE)


def test_estimator_refuses_bad_sets_at_fit():
    from fastmoe import MixtureOfExpertsClassifier

    with pytest.raises(ValueError, match="gating_features is empty"):
        MixtureOfExpertsClassifier(2, gating_features=[]).fit(X3, Y3)
    with pytest.raises(ValueError, match="expert_features has column index 5"):
        MixtureOfExpertsClassifier(2, expert_features=[5]).fit(X3, Y3)


def _dependent_warnings(X, y, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastmoe.fit(X, y, 2, init="kmeans", max_iter=5, n_threads=1, **kwargs)
    return [str(w.message) for w in caught if "linearly dependent" in str(w.message)]


def test_linearly_dependent_columns_are_named():
    # Slopes on columns that are linear combinations of others (and the intercept) are not identified:
    # the likelihood is flat along a direction of the parameters whatever the labels. Checked against
    # the rank of the centred design, computed here by NumPy's SVD.
    rng = np.random.default_rng(0)
    base = rng.standard_normal((400, 4))
    y = rng.integers(0, 3, 400)
    X = np.column_stack([base, 2.0 * base[:, 1] - base[:, 3] + 5.0])  # column 4 from columns 1 and 3
    centred = X - X.mean(axis=0)
    assert np.linalg.matrix_rank(centred) == 4 and np.linalg.matrix_rank(centred[:, [0, 2, 3, 4]]) == 4
    (message,) = _dependent_warnings(X, y)
    assert "features [1, 3, 4] are linearly dependent" in message and "l2 > 0" in message
    assert _dependent_warnings(X, y, l2=0.1) == []  # a ridge identifies them
    # Strongly correlated but independent columns are not flagged.
    near = np.column_stack([base, base[:, 1] + 1e-3 * rng.standard_normal(400)])
    assert np.linalg.matrix_rank(near - near.mean(axis=0), tol=1e-8) == 5
    assert _dependent_warnings(near, y) == []
    # A constant column is the intercept's twin; an all-zero one is held by the fit, not flagged.
    assert "features [2]" in _dependent_warnings(np.column_stack([base, np.zeros(400), np.full(400, 3.0)])[:, [0, 1, 5, 4]], y)[0]
    assert _dependent_warnings(np.column_stack([base, np.zeros(400)]), y) == []
    # Rows of weight 0 do not count: the columns are dependent on the rows the likelihood sees.
    weight = np.ones(400)
    weight[:5] = 0.0
    bent = X.copy()
    bent[:5, 4] += 1.0
    assert _dependent_warnings(bent, y) == []
    assert "features [1, 3, 4]" in _dependent_warnings(bent, y, sample_weight=weight)[0]
    # ... also for a column that is 0 on the rows of positive weight: held by the fit, like an all-zero one.
    absent = np.column_stack([base, np.where(weight > 0, 0.0, 1.0)])
    assert _dependent_warnings(absent, y, sample_weight=weight) == []
    # Separate designs are checked each in its own terms, named in the caller's columns.
    (gate,) = _dependent_warnings(X, y, gating_features=[1, 3, 4], expert_features=[0, 2])
    assert "gating features [1, 3, 4]" in gate
    assert _dependent_warnings(X, y, gating="tanh") != []  # the experts read X itself


def test_dependent_columns_are_named_by_feature_names():
    # Names come from feature_names, from a DataFrame's columns, and through the estimator (which
    # hands fit a validated array) from feature_names_in_.
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 3))
    X = np.column_stack([base, base[:, 0] + base[:, 2]])
    y = rng.integers(0, 3, 300)
    names = ["age", "dose", "weight", "total"]
    expected = "features ['age', 'weight', 'total'] are linearly dependent"
    assert expected in _dependent_warnings(X, y, feature_names=names)[0]
    assert expected in _dependent_warnings(pd.DataFrame(X, columns=names), y)[0]
    (gate,) = _dependent_warnings(X, y, feature_names=names, gating_features=["age", "weight", "total"],
                                  expert_features=["dose"])
    assert "gating features ['age', 'weight', 'total']" in gate
    from fastmoe import MixtureOfExpertsClassifier

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MixtureOfExpertsClassifier(2, l2=0.0, init="kmeans", max_iter=5, n_threads=1).fit(
            pd.DataFrame(X, columns=names), y)
    assert any(expected in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="feature_names has 3 names but X has 4 columns"):
        fastmoe.fit(X, y, 2, feature_names=names[:3])
    for bad in ("abcd", b"abcd", np.array("abcd"), np.array([names])):
        with pytest.raises(TypeError, match="sequence of names"):
            fastmoe.fit(X, y, 2, feature_names=bad)
    with pytest.raises(ValueError, match=r"must be distinct; \['age'\] name more than one column"):
        fastmoe.fit(X, y, 2, feature_names=["age", "age", "weight", "total"], gating_features=["age"])
    with pytest.raises(ValueError, match="must be distinct"):
        fastmoe.fit(pd.DataFrame(X, columns=["a", "b", "a", "c"]), y, 2)
    # Given names override a DataFrame's own.
    assert expected in _dependent_warnings(pd.DataFrame(X, columns=list("pqrs")), y, feature_names=names)[0]
