"""Observed information, standard errors and Wald intervals (fastmoe.uncertainty)."""

import warnings

import numpy as np
import pytest
import reference_numpy as ref
from conftest import random_params
from scipy.special import softmax
from scipy.stats import norm

import fastmoe
from fastmoe.estimator import MixtureOfExpertsClassifier
from fastmoe.params import free_parameter_names, free_parameters
from fastmoe.uncertainty import (
    UncertaintyWarning,
    bootstrap_table,
    expected_information,
    observed_information,
    parameter_table,
)

# A truth whose parameters are all well determined at n = 3000 (binary labels with d = 1 are not:
# a mixture of two Bernoulli logits in one variable is close to unidentified, with standard errors of
# the size of the parameters at that n).
BINARY_TRUTH = fastmoe.MoEParams(
    beta0=[0.0, 0.0],
    beta1=[[4.0, 0.0], [0.0, 0.0]],
    a=[[[0.0, 3.0], [0.0, 0.0]], [[0.0, -3.0], [0.0, 0.0]]],
    b=[[0.0, 0.0], [0.0, 0.0]],
)


def _numpy_information(params, X, y, w=None):
    """Minus the NumPy reference's Hessian of the log-likelihood, in reference conventions."""
    W, V = params.normalized().packed()
    return -ref.full_loglik_grad_hess(W, V, X, params.gate_input(X), y, w)[1]


# ----------------------------------------------------------------------------------------------------------
# Names and order
# ----------------------------------------------------------------------------------------------------------
def test_names_and_vector_follow_the_reference_order(rng):
    params = random_params(rng, 3, 4, 2, "tanh")
    names = free_parameter_names(params)
    assert len(names) == params.n_free_params == len(set(names))
    assert names[:4] == ["beta0[0]", "beta1[0,0]", "beta1[0,1]", "beta0[1]"]
    assert names[6:10] == ["b[0,0]", "a[0,0,0]", "a[0,0,1]", "b[0,1]"]
    assert names[-3:] == ["b[2,2]", "a[2,2,0]", "a[2,2,1]"]
    W, V = params.packed()
    theta = free_parameters(params)
    np.testing.assert_array_equal(theta, ref.pack_free(W, V))
    lookup = dict(zip(names, theta))
    assert lookup["beta1[1,0]"] == params.beta1[1, 0]
    assert lookup["a[2,1,0]"] == params.a[2, 1, 0]
    assert lookup["b[1,2]"] == params.b[1, 2]
    # Parameters outside the reference conventions are normalised first.
    shifted = fastmoe.MoEParams(params.beta0 + 1.0, params.beta1 - 2.0, params.a + 0.5, params.b - 3.0, "tanh")
    np.testing.assert_allclose(free_parameters(shifted), theta, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# The information matrix
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gating", ["identity", "sigmoid"])
@pytest.mark.parametrize("weighted", [False, True])
def test_information_matches_the_numpy_reference(rng, gating, weighted):
    params = random_params(rng, 3, 3, 2, gating, scale=1.5)
    X, y = fastmoe.sample(params, n=700, random_state=rng)
    w = rng.uniform(0.2, 3.0, size=700) if weighted else None
    W, V = params.packed()
    _, hess = ref.full_loglik_grad_hess(W, V, X, params.gate_input(X), y, w)
    scale = np.abs(hess).max()
    information = observed_information(params, X, y, sample_weight=w, n_threads=1)
    np.testing.assert_allclose(information, -hess, rtol=0, atol=1e-11 * scale)


def test_information_is_independent_of_threads(rng):
    params = random_params(rng, 2, 3, 3)
    X, y = fastmoe.sample(params, n=1001, random_state=rng)
    np.testing.assert_array_equal(
        observed_information(params, X, y, n_threads=1), observed_information(params, X, y, n_threads=2)
    )


def test_information_matches_finite_differences_of_the_loglik(rng):
    """Second differences of fastmoe.loglik itself, one pair of free parameters at a time."""
    params = random_params(rng, 2, 3, 1, "tanh")
    X, y = fastmoe.sample(params, n=400, random_state=rng)
    w = rng.uniform(0.5, 2.0, size=400)
    W, V = params.packed()
    theta = free_parameters(params)

    def loglik(t):
        W_t, V_t = ref.unpack_free(t, W, V)
        return fastmoe.loglik(fastmoe.MoEParams.from_packed(W_t, V_t, "tanh"), X, y, w, n_threads=1)

    h = 1e-3
    steps = h * np.eye(theta.size)
    fd = np.empty((theta.size, theta.size))
    for i in range(theta.size):
        for j in range(i, theta.size):
            ei, ej = steps[i], steps[j]
            fd[i, j] = fd[j, i] = -(
                loglik(theta + ei + ej) - loglik(theta + ei - ej) - loglik(theta - ei + ej) + loglik(theta - ei - ej)
            ) / (4 * h * h)
    information = observed_information(params, X, y, sample_weight=w, n_threads=1)
    # O(h^2) truncation plus O(eps |loglik| / h^2) rounding: about 1e-5 of the largest entry.
    np.testing.assert_allclose(information, fd, rtol=0, atol=1e-5 * np.abs(information).max())


def test_information_is_symmetric_and_positive_definite_at_the_mle():
    X, y = fastmoe.sample(BINARY_TRUTH, n=3000, random_state=7, low=-2.0, high=2.0)
    result = fastmoe.fit(X, y, 2, init=BINARY_TRUTH, n_threads=1)
    information = observed_information(result.params, X, y, n_threads=1)
    np.testing.assert_array_equal(information, information.T)
    assert np.linalg.eigvalsh(information)[0] > 0


def test_information_matches_the_numpy_reference_at_larger_n(rng):
    params = random_params(rng, 3, 4, 3, "sigmoid")
    X, y = fastmoe.sample(params, n=2000, random_state=rng)
    kernel = observed_information(params, X, y, n_threads=2)
    numpy = _numpy_information(params, X, y)
    np.testing.assert_allclose(kernel, numpy, rtol=0, atol=1e-11 * np.abs(numpy).max())


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    X, y = fastmoe.sample(BINARY_TRUTH, n=3000, random_state=11, low=-2.0, high=2.0)
    return X, y, fastmoe.fit(X, y, 2, init=BINARY_TRUTH, n_threads=1)


def test_table_columns_are_consistent(fitted):
    X, y, result = fitted
    table = parameter_table(result, X, y, level=0.9, n_threads=1)
    information = observed_information(result.params, X, y, n_threads=1)
    np.testing.assert_allclose(table.information, information)
    np.testing.assert_allclose(table.covariance @ information, np.eye(len(table)), atol=1e-9)
    np.testing.assert_allclose(table.std_error, np.sqrt(np.diag(np.linalg.inv(information))), rtol=1e-10)
    np.testing.assert_allclose(table.estimate, free_parameters(result.params))
    q = norm.ppf(0.95)
    np.testing.assert_allclose(table.lower, table.estimate - q * table.std_error)
    np.testing.assert_allclose(table.upper, table.estimate + q * table.std_error)
    np.testing.assert_allclose(table.z, table.estimate / table.std_error)
    np.testing.assert_allclose(table.p_value, 2 * norm.sf(np.abs(table.z)))
    row = table["a[0,0,1]"]
    assert row.name == "a[0,0,1]" and row.estimate == result.params.a[0, 0, 1]
    assert row.lower < row.estimate < row.upper and row.p_value < 1e-6
    assert "beta1[0,1]" in table and "beta0[1]" not in table
    with pytest.raises(KeyError, match="no free parameter 'beta0\\[1\\]'"):
        table["beta0[1]"]
    assert [r.name for r in table] == list(table.names) == free_parameter_names(result.params)
    assert table.to_dict()["b[1,0]"]["std_error"] == table["b[1,0]"].std_error
    text = str(table)
    assert "5.0%" in text and "95.0%" in text and "beta1[0,1]" in text
    with pytest.raises(ValueError, match="level"):
        parameter_table(result, X, y, level=95)


def test_table_from_params_result_and_estimator_agree(fitted):
    X, y, result = fitted
    labels = np.array(["no", "yes"])[y]
    model = MixtureOfExpertsClassifier(2, init=BINARY_TRUTH, l2=0.0, n_threads=1).fit(X, labels)
    from_model = model.parameter_table(X, labels)
    from_result = parameter_table(result, X, y)
    from_params = parameter_table(result.params, X, y)
    for table in (from_model, from_params):
        assert table.names == from_result.names
        np.testing.assert_allclose(table.estimate, from_result.estimate, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(table.std_error, from_result.std_error, rtol=1e-5)
    with pytest.raises(TypeError, match="MoEParams, a FitResult or a fitted"):
        parameter_table("not a model", X, y)


def test_doubtful_fits_are_flagged(fitted):
    X, y, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        early = fastmoe.fit(X, y, 2, max_iter=1, random_state=0, n_threads=1)
    with pytest.warns(UncertaintyWarning, match="did not converge"):
        parameter_table(early, X, y)
    penalised = fastmoe.fit(X, y, 2, init=BINARY_TRUTH, l2=5.0, n_threads=1)
    with pytest.warns(UncertaintyWarning, match="penalised likelihood.*covariance='penalised'"):
        parameter_table(penalised, X, y, covariance="observed")


def test_penalised_fits_get_the_penalised_covariance(fitted):
    """With l2 > 0 the table uses the penalised information J + l2 D (issue 16: every SE was nan); two
    experts and two classes, where the ridge's Hessian is l2 D in either form (tests/test_penalty.py)."""
    X, y, _ = fitted
    l2 = 5.0
    penalised = fastmoe.fit(X, y, 2, init=BINARY_TRUTH, l2=l2, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the covariance is that of the penalised objective
        auto = parameter_table(penalised, X, y)
        sandwich = parameter_table(penalised, X, y, covariance="sandwich")
    J = observed_information(penalised.params, X, y)
    slopes = np.array(["beta1" in name or name.startswith("a[") for name in auto.names], dtype=float)
    Jp = J + l2 * np.diag(slopes)
    np.testing.assert_allclose(auto.covariance, np.linalg.inv(Jp), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sandwich.covariance, np.linalg.inv(Jp) @ J @ np.linalg.inv(Jp), rtol=1e-7, atol=1e-12)
    assert auto.method == "inverse penalised Hessian (centred ridge, l2=5)"
    assert sandwich.method == "sandwich around the penalised Hessian (centred ridge, l2=5)"
    assert (sandwich.std_error <= auto.std_error * (1 + 1e-9)).all()  # the sandwich has no bias allowance
    # An MoEParams carries no penalty: give l2 to get the same table.
    by_hand = parameter_table(penalised.params, X, y, l2=l2)
    np.testing.assert_allclose(by_hand.std_error, auto.std_error, rtol=1e-12)
    assert parameter_table(penalised.params, X, y, l2=l2, ridge="reference").method == \
        "inverse penalised Hessian (reference ridge, l2=5)"
    assert parameter_table(penalised.params, X, y).method == "observed information"
    with pytest.raises(ValueError, match="covariance must be one of"):
        parameter_table(penalised, X, y, covariance="robust")


def test_penalised_standard_errors_exist_on_separable_data():
    """Separable data: the MLE does not exist and J is singular, but the ridge's objective has a maximum."""
    X = np.linspace(-1, 1, 200)[:, None] * np.array([[1.0, 0.5]])
    X[:, 1] += np.random.default_rng(0).normal(scale=0.1, size=200)
    y = (X[:, 0] > 0).astype(int)
    model = MixtureOfExpertsClassifier(1, n_threads=1).fit(X, y)  # default l2=1
    table = parameter_table(model, X, y)
    assert np.isfinite(table.std_error).all() and table.method.startswith("inverse penalised Hessian")


def test_singular_information_gives_nan_standard_errors():
    # Two identical experts: the gating does not enter the likelihood, its information is zero.
    params = fastmoe.MoEParams(
        beta0=[0.3, 0.0], beta1=[[1.0], [0.0]], a=[[[2.0], [0.0]], [[2.0], [0.0]]], b=[[0.5, 0.0], [0.5, 0.0]]
    )
    X, y = fastmoe.sample(params, n=500, random_state=0)
    with pytest.warns(UncertaintyWarning, match="not positive definite"):
        table = parameter_table(params, X, y)
    assert np.isnan(table["beta0[0]"].std_error) and np.isnan(table["beta1[0,0]"].std_error)
    assert np.isnan(table["beta0[0]"].lower)


def test_a_boundary_maximum_has_no_standard_errors_for_its_runaway_class():
    # README's truth: the maximum of fastmoe 0.2's ridge (l2 = 2, n = 2000) puts probability 0 on class 1
    # of expert 0; its intercept stopped at -17.6 on the way to -inf, where the information is not
    # singular and gave a standard error of 3892 with no warning.
    truth = fastmoe.MoEParams(beta0=[0.5, 0.0], beta1=[[3.0, -2.0], [0.0, 0.0]],
                              a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
                              b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]])
    X, y = fastmoe.sample(truth, n=2000, random_state=0)
    result = fastmoe.fit(X, y, 2, init=truth, l2=2.0, ridge="reference", n_threads=1)
    assert result.boundary == ((0, 1),)
    with pytest.warns(UncertaintyWarning, match=r"boundary of the model.*b\[0,1\], a\[0,1,0\], a\[0,1,1\] have no"):
        table = parameter_table(result, X, y)
    runaway = {"b[0,1]", "a[0,1,0]", "a[0,1,1]"}
    for row in table:
        assert np.isnan(row.std_error) == (row.name in runaway), row
    gone = np.isin(table.names, list(runaway))
    assert np.isnan(table.covariance[gone]).all() and np.isnan(table.covariance[:, gone]).all()
    assert np.isfinite(table.covariance[np.ix_(~gone, ~gone)]).all()


def test_boundary_names_cover_the_classes_measured_from_a_class_without_mass():
    from fastmoe.uncertainty import _boundary_names

    params = random_params(np.random.default_rng(0), k=2, K=3, d=1)
    assert _boundary_names(params, ((1, 0),)) == ["b[1,0]", "a[1,0,0]"]
    # The last class is every other class's reference: all of the expert's class parameters go.
    assert _boundary_names(params, ((1, 2),)) == ["b[1,0]", "a[1,0,0]", "b[1,1]", "a[1,1,0]"]

# ----------------------------------------------------------------------------------------------------------
# Expected (Fisher) information
# ----------------------------------------------------------------------------------------------------------
def test_expected_information_of_one_expert_is_the_logistic_regression_fisher_matrix(rng):
    # k = 1: multinomial logistic regression, I = sum_n w_n J_n^T (diag p_n - p_n p_n^T) J_n with
    # J_n = d(logits)/d(free parameters), written out here from the parameter names.
    params = random_params(rng, k=1, K=4, d=3)
    X = rng.normal(size=(50, 3))
    w = rng.uniform(0.5, 2.0, size=50)
    names = free_parameter_names(params)
    ref_params = params.normalized()
    P = softmax(X @ ref_params.a[0].T + ref_params.b[0], axis=1)[:, :-1]
    expected = np.zeros((len(names), len(names)))
    for x, p, weight in zip(X, P, w):
        J = np.zeros((p.size, len(names)))
        for col, name in enumerate(names):
            idx = [int(v) for v in name[name.index("[") + 1:-1].split(",")]
            J[idx[1], col] = 1.0 if name.startswith("b[") else x[idx[2]]
        expected += weight * J.T @ (np.diag(p) - np.outer(p, p)) @ J
    np.testing.assert_allclose(expected_information(params, X, sample_weight=w), expected, rtol=1e-9,
                               atol=1e-12)


def _split_vanishing_cell(gating, half):
    """Quadrature of Uniform[-half, half] and a 3-expert parameter that reproduces a 2-expert truth whose
    expert 1 vanishes (a* = 0), its cell split into two atoms with different intercepts."""
    nodes, weights = np.polynomial.legendre.leggauss(300)
    X = (half * nodes)[:, None]
    beta1 = 2.5 if gating == "tanh" else 2.5 / half
    a0 = np.array([[1.5], [-1.0], [0.0]]) / half
    b_true = np.array([[1.77, -0.89, 0.0], [-0.89, 1.77, 0.0]])
    target = np.exp(b_true[1]) / np.exp(b_true[1]).sum()
    p_split = target + 0.05 * np.array([1.0, -2.0, 1.0])
    p_other = 2 * target - p_split  # equal masses: the two constant experts average to the true one
    b_split = [np.log(p / p[-1]) for p in (p_split, p_other)]
    truth = fastmoe.MoEParams(beta0=[-0.37, 0.0], beta1=[[beta1], [0.0]], a=[a0, np.zeros((3, 1))], b=b_true,
                              gating=gating)
    split = fastmoe.MoEParams(beta0=[-0.37, np.log(0.5), np.log(0.5)], beta1=[[beta1], [0.0], [0.0]],
                              a=[a0, np.zeros((3, 1)), np.zeros((3, 1))], b=[b_true[0], *b_split], gating=gating)
    return truth, split, X, weights / 2


@pytest.mark.parametrize("gating", ["identity", "tanh"])
def test_expected_information_shows_the_pde_interaction_of_standard_gating(gating):
    """MODEL.md section 4: with standard gating, d2F/(d beta1 d b) = dF/da lets a change of the split
    atoms' beta1 be undone by their a when their intercepts differ, so beta1 lies in the null space of
    the information; tanh gating (on a range where tanh is far from linear) removes it."""
    truth, split, X, w = _split_vanishing_cell(gating, half=3.0)
    np.testing.assert_allclose(fastmoe.predict_proba(split, X), fastmoe.predict_proba(truth, X), atol=1e-12)
    eigval, eigvec = np.linalg.eigh(expected_information(split, X, sample_weight=w))
    null = eigvec[:, eigval < 1e-10 * eigval[-1]]
    names = free_parameter_names(split)
    gate_slope = [i for i, name in enumerate(names) if name.startswith("beta1")]
    # Both gatings keep the non-identifiable directions of a split vanishing cell (its intercepts and the
    # a's that compensate each other across the two atoms); standard gating has one more, moving beta1.
    assert null.shape[1] == (6 if gating == "identity" else 5)
    beta1_in_null = np.linalg.norm(null[gate_slope], axis=1).max()
    if gating == "identity":
        assert beta1_in_null > 0.3
    else:
        assert beta1_in_null < 1e-4


# ----------------------------------------------------------------------------------------------------------
# Calibration against the spread over simulated replications
# ----------------------------------------------------------------------------------------------------------
def test_standard_errors_match_the_spread_of_estimates():
    """Mean standard error vs empirical SD of the MLE over 80 replications (n = 3000, d = 2, K = k = 2).

    With 80 replications the empirical SD itself is uncertain by about 8%, so agreement within 30%
    leaves 3.5 of its standard deviations; the 95% intervals must cover the truth about 95% of the
    time (pooled over the 9 parameters, 720 intervals: 0.9 to 0.99 is a wide band).
    Starting EM at the truth removes label switching from the comparison.
    """
    truth = free_parameters(BINARY_TRUTH)
    estimates, std_errors, covered = [], [], []
    for replication in range(80):
        X, y = fastmoe.sample(BINARY_TRUTH, n=3000, random_state=1000 + replication, low=-2.0, high=2.0)
        result = fastmoe.fit(X, y, 2, init=BINARY_TRUTH, n_threads=1)
        table = parameter_table(result, X, y, n_threads=1)
        estimates.append(table.estimate)
        std_errors.append(table.std_error)
        covered.append((table.lower <= truth) & (truth <= table.upper))
    ratio = np.mean(std_errors, axis=0) / np.std(estimates, axis=0, ddof=1)
    print(dict(zip(free_parameter_names(BINARY_TRUTH), np.round(ratio, 3))))
    np.testing.assert_allclose(ratio, 1.0, atol=0.3)
    assert 0.9 <= np.mean(covered) <= 0.99
    # The MLE is (nearly) unbiased at this n: mean error within 3 Monte Carlo standard errors of 0.
    bias = np.mean(estimates, axis=0) - truth
    assert np.all(np.abs(bias) < 3 * np.std(estimates, axis=0, ddof=1) / np.sqrt(80) + 0.02)


# ----------------------------------------------------------------------------------------------------------
# Parametric bootstrap
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def bootstrap_fit(well_separated):
    X, y = fastmoe.sample(well_separated, n=2000, random_state=8)
    return X, y, fastmoe.fit(X, y, 2, init=well_separated, n_threads=1)


def test_bootstrap_intervals_come_from_the_refits(bootstrap_fit):
    X, y, result = bootstrap_fit
    kwargs = dict(n_boot=20, random_state=3)
    with warnings.catch_warnings():
        # At n = 2000 a few drawn label sets are quasi-separated inside an expert: the MLE does not
        # exist, the refit diverges and is left out (and counted), with a warning past 5%.
        warnings.simplefilter("ignore", UncertaintyWarning)
        percentile = bootstrap_table(result, X, y, interval="percentile", failed="drop", **kwargs)
        basic = bootstrap_table(result, X, y, interval="basic", failed="drop", **kwargs)
        kept = bootstrap_table(result, X, y, interval="percentile", **kwargs)  # failed="keep", the default
    assert percentile.replicates.shape == (20, result.n_free_params)
    np.testing.assert_array_equal(basic.replicates, percentile.replicates)  # same seeds, same refits
    np.testing.assert_array_equal(kept.replicates, percentile.replicates)
    assert percentile.n_failed == percentile.failed_refits.sum() > 0  # this seed has failed refits
    good = percentile.replicates[~percentile.failed_refits]
    q_low, q_high = np.quantile(good, [0.025, 0.975], axis=0)
    np.testing.assert_allclose(percentile.lower, q_low, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(percentile.upper, q_high, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(basic.lower, 2 * result.params.free_vector() - q_high, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(percentile.std_error, good.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_array_equal(percentile.estimate, free_parameters(result.params))
    assert percentile.method == f"parametric bootstrap, percentile interval, {good.shape[0]} of 20 refits converged"
    # "keep": the failed refits' last iterates count in the quantiles (the standard deviation stays on the others)
    np.testing.assert_allclose(kept.lower, np.quantile(kept.replicates, 0.025, axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(kept.std_error, percentile.std_error)
    assert kept.method.endswith("failed refits kept in the quantiles")
    # "bc": the percentile interval when the refits are centred on the estimate, shifted against a median bias
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncertaintyWarning)
        bc = bootstrap_table(result, X, y, interval="bc", **kwargs)
    from fastmoe.uncertainty import _bias_corrected_quantiles

    centred = kept.replicates - np.median(kept.replicates, axis=0) + kept.estimate
    np.testing.assert_allclose(_bias_corrected_quantiles(centred, kept.estimate, 0.95)[0],
                               np.quantile(centred, 0.025, axis=0), rtol=1e-10, atol=1e-10)
    below = (kept.replicates < kept.estimate).mean(axis=0)
    shifted = np.quantile(kept.replicates, norm.cdf(2 * norm.ppf(below) - 1.959963984540054), axis=0).diagonal()
    np.testing.assert_allclose(bc.lower, shifted, rtol=1e-10, atol=1e-10)
    # "normal" (the default): the estimate -+ the normal quantile times the converged refits' sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncertaintyWarning)
        normal = bootstrap_table(result, X, y, **kwargs)
    np.testing.assert_array_equal(normal.replicates, percentile.replicates)
    np.testing.assert_allclose(normal.upper, normal.estimate + norm.ppf(0.975) * good.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(normal.estimate - normal.lower, normal.upper - normal.estimate, rtol=1e-12)
    assert normal.method.startswith("parametric bootstrap, normal interval")
    # the bulk of the refits scatters around the estimate on the scale of the Wald standard errors (the
    # tails need not: at n = 2000 some refits lie far out along weakly determined directions)
    wald = parameter_table(result, X, y)
    spread = np.median(np.abs(good - percentile.estimate), axis=0) / 0.6745
    assert np.all(spread < 3 * wald.std_error) and np.all(spread > wald.std_error / 3)


def test_bootstrap_is_reproducible_and_independent_of_n_jobs(bootstrap_fit):
    X, y, result = bootstrap_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncertaintyWarning)  # see the test above
        one = bootstrap_table(result, X, y, n_boot=6, interval="studentized", random_state=5, n_jobs=1)
        two = bootstrap_table(result, X, y, n_boot=6, interval="studentized", random_state=5, n_jobs=2)
    np.testing.assert_array_equal(one.replicates, two.replicates)
    np.testing.assert_array_equal(one.lower, two.lower)
    assert np.isfinite(one.lower).all() and np.all(one.lower < one.estimate) and np.all(one.estimate < one.upper)
    assert one.method.endswith("(studentized by observed information)")


def test_bootstrap_of_an_estimator_and_bad_arguments(bootstrap_fit, well_separated):
    X, y, _ = bootstrap_fit
    labels = np.array(["a", "b", "c"])[y]
    model = MixtureOfExpertsClassifier(2, init=well_separated, n_threads=1).fit(X, labels)  # default ridge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncertaintyWarning)
        table = bootstrap_table(model, X, labels, n_boot=5, random_state=0)
    assert table.names == tuple(free_parameter_names(model.params_)) and np.isfinite(table.upper).all()
    with pytest.raises(ValueError, match="interval must be one of"):
        bootstrap_table(model, X, labels, interval="bca")
    with pytest.raises(ValueError, match="n_boot must be >= 2"):
        bootstrap_table(model, X, labels, n_boot=1)


def test_class_weights_warn_in_wald_and_follow_the_drawn_labels_in_the_bootstrap(
        bootstrap_fit, well_separated, monkeypatch):
    """Class weights are not frequency weights: the Wald table says so, and a bootstrap refit weights
    each row by the class of its drawn label, as the estimator's fit weighted it (not by its old label)."""
    import fastmoe.uncertainty as uncertainty

    X, y, _ = bootstrap_fit
    model = MixtureOfExpertsClassifier(2, init=well_separated, class_weight={0: 4.0}, n_threads=1).fit(X, y)
    text = "class weights enter the information as frequency weights"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parameter_table(model, X, y)
    assert any(text in str(w.message) for w in caught if w.category is UncertaintyWarning)
    seen = []
    real_fit = uncertainty.fit

    def recording_fit(X_, y_star, *args, sample_weight=None, **kwargs):
        seen.append((np.asarray(y_star).copy(), np.asarray(sample_weight).copy()))
        return real_fit(X_, y_star, *args, sample_weight=sample_weight, **kwargs)

    monkeypatch.setattr(uncertainty, "fit", recording_fit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bootstrap_table(model, X, y, n_boot=3, random_state=1)
    assert not any(text in str(w.message) for w in caught)  # the refits redraw the weights: no such warning
    assert len(seen) == 3
    for y_star, w in seen:
        assert not np.array_equal(y_star, y)
        np.testing.assert_array_equal(w, np.where(y_star == 0, 4.0, 1.0))


def test_replicates_are_aligned_to_the_estimate(well_separated):
    """A refit whose experts come back in the other order is relabelled onto the estimate's order."""
    from fastmoe.uncertainty import _aligned

    p = well_separated
    swapped = fastmoe.MoEParams(p.beta0[::-1], p.beta1[::-1], p.a[::-1], p.b[::-1])
    reference = free_parameters(p)
    assert not np.allclose(free_parameters(swapped), reference)
    np.testing.assert_allclose(_aligned(swapped, reference), reference, atol=1e-12)
