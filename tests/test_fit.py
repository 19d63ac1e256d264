"""EM fitting: monotonicity, reductions to known models, parameter recovery, external reference fits."""

import json
import pathlib
import warnings

import numpy as np
import pytest
import reference_numpy as ref
from conftest import random_params, units_problem

import fastmoe
from fastmoe import losses
from fastmoe._problem import Problem

# An R flexmix fit and its data, kept with the tests (provenance: tests/data/README.md).
REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "flexmix-sigmoid-n3000"


def _monotone(history, n_samples=None, rel=1e-12):
    """Never decreasing, up to rounding: relative 1e-12, and the engine's absolute floor of
    64 eps per sample (sums of n log-probabilities are not known more precisely than that)."""
    history = np.asarray(history)
    floor = 0.0 if n_samples is None else 64 * np.finfo(float).eps * n_samples
    return bool(np.all(np.diff(history) >= -rel * np.abs(history[1:]) - floor))


@pytest.mark.parametrize("init", ["kmeans", "random"])
@pytest.mark.parametrize("gating", ["identity", "sigmoid"])
def test_loglik_never_decreases(rng, init, gating):
    truth = random_params(rng, 3, 3, 2, gating, scale=2.0)
    X, y = fastmoe.sample(truth, n=3000, random_state=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        result = fastmoe.fit(X, y, 3, gating=gating, init=init, max_iter=150, random_state=rng)
    assert result.n_iter > 10
    assert _monotone(result.history)
    # The stored loglik is the loglik of the returned parameters.
    assert result.loglik == pytest.approx(fastmoe.loglik(result.params, X, y), rel=1e-12)


def test_penalised_objective_never_decreases(rng, well_separated):
    X, y = fastmoe.sample(well_separated, n=2000, random_state=rng)
    result = fastmoe.fit(X, y, 3, l2=5.0, random_state=rng, max_iter=2000)
    assert _monotone(result.history)
    penalty = ref.ridge(*result.params.normalized().packed(), 5.0, result.ridge)
    assert result.objective == pytest.approx(result.loglik - penalty, rel=1e-12)


def test_each_em_iteration_matches_the_numpy_reference(rng):
    """One generalised-EM iteration of fastmoe equals the reference's Newton-step EM iteration."""
    truth = random_params(rng, 3, 3, 2)
    X, y = fastmoe.sample(truth, n=800, random_state=rng)
    start = random_params(rng, 3, 3, 2, scale=0.3)
    W, V = start.packed()
    W_ref, V_ref, _ = ref.em_step(W, V, X, X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        result = fastmoe.fit(X, y, 3, init=start, max_iter=1, tol=0.0)
    W_fit, V_fit = result.params.packed()
    np.testing.assert_allclose(W_fit, W_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(V_fit, V_ref, rtol=1e-8, atol=1e-10)


def test_q_gradient_matches_finite_differences(rng):
    """The fused pass's gradients and Hessians against 4th-order differences of the compiled Q values."""
    params = random_params(rng, 3, 3, 2)
    X = rng.uniform(-1, 1, size=(400, 2))
    y = rng.integers(0, 3, size=400)
    W, V = params.packed()
    problem = Problem(X, X, y.astype(np.int64), np.empty(0), 3, 3, 1)
    base = problem.newton_pass(W, V)
    h = 1e-4

    def q_at(W2, V2):
        return problem.q_values(W, V, W2, V2)

    def fd(shift):
        return (-q_at(*shift(2 * h)) + 8 * q_at(*shift(h)) - 8 * q_at(*shift(-h)) + q_at(*shift(-2 * h))) / (12 * h)

    for i in range(2):  # free gating rows
        for p in range(3):
            def shift(t, i=i, p=p):
                W2 = W.copy()
                W2[i, p] += t
                return W2, V
            assert fd(shift)[0] == pytest.approx(base.grad_gate[i * 3 + p], rel=1e-7, abs=1e-7)
    for e in range(3):
        for s in range(2):
            for p in range(3):
                def shift(t, e=e, s=s, p=p):
                    V2 = V.copy()
                    V2[e, s, p] += t
                    return W, V2
                assert fd(shift)[1 + e] == pytest.approx(base.grad_expert[e, s * 3 + p], rel=1e-7, abs=1e-7)
    # Hessians: the finite-difference derivative of the analytic gradient, one expert at a time.
    for e in range(3):
        for s in range(2):
            for p in range(3):
                Vp, Vm = V.copy(), V.copy()
                Vp[e, s, p] += h
                Vm[e, s, p] -= h
                gp = problem.newton_pass(W, Vp, base_resp := fastmoe.responsibilities(params, X, y)).grad_expert[e]
                gm = problem.newton_pass(W, Vm, base_resp).grad_expert[e]
                column = (gp - gm) / (2 * h)
                np.testing.assert_allclose(-column, base.neg_hess_expert[e][:, s * 3 + p], rtol=1e-5, atol=1e-6)
    assert np.allclose(base.neg_hess_gate, base.neg_hess_gate.T)
    assert np.linalg.eigvalsh(base.neg_hess_gate).min() > -1e-9


def test_single_expert_is_multinomial_logistic_regression(rng):
    from sklearn.linear_model import LogisticRegression

    X = rng.normal(size=(3000, 3))
    logits = X @ rng.normal(size=(3, 4)) + rng.normal(size=4)
    y = (logits + rng.gumbel(size=logits.shape)).argmax(axis=1)
    result = fastmoe.fit(X, y, 1, tol=1e-14, max_iter=200)
    assert result.converged
    clf = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(result.predict_proba(X), clf.predict_proba(X), atol=2e-6)
    a = result.params.a[0]
    coef = clf.coef_ - clf.coef_[-1]  # sklearn is symmetric; move to the last-class reference
    np.testing.assert_allclose(a, coef, rtol=1e-3, atol=1e-4)


def test_integer_weights_equal_repeated_rows(rng, well_separated):
    X, y = fastmoe.sample(well_separated, n=1500, random_state=rng)
    w = rng.integers(1, 4, size=1500)
    weighted = fastmoe.fit(X, y, 2, init=well_separated, sample_weight=w.astype(float), tol=1e-12)
    repeated = fastmoe.fit(np.repeat(X, w, axis=0), np.repeat(y, w), 2, init=well_separated, tol=1e-12)
    assert weighted.loglik == pytest.approx(repeated.loglik, rel=1e-9)
    assert weighted.params.allclose(repeated.params, rtol=1e-5, atol=1e-6)


def test_recovers_the_truth_at_large_n(well_separated):
    X, y = fastmoe.sample(well_separated, n=200_000, random_state=2024)
    rng = np.random.default_rng(5)
    start = fastmoe.MoEParams(
        well_separated.beta0 + rng.normal(scale=0.5, size=2),
        well_separated.beta1 + rng.normal(scale=0.5, size=(2, 2)),
        well_separated.a + rng.normal(scale=0.5, size=(2, 3, 2)),
        well_separated.b + rng.normal(scale=0.5, size=(2, 3)),
    ).normalized()
    result = fastmoe.fit(X, y, 2, init=start, tol=1e-10)
    assert result.converged
    assert result.loglik >= fastmoe.loglik(well_separated, X, y)
    # Asymptotic normality: every free parameter within 5 standard errors of the truth (standard errors
    # from the observed information at the MLE; P(|z| > 5) ~ 6e-7 per parameter).
    problem = Problem(X, X, y, np.empty(0), 2, 3, 1)
    _, grad, neg_hess = problem.hessian_pass(*result.params.packed())
    se = np.sqrt(np.diag(np.linalg.inv(neg_hess)))
    z = (ref.pack_free(*result.params.packed()) - ref.pack_free(*well_separated.packed())) / se
    assert np.abs(z).max() < 5, z
    assert np.abs(grad).max() < 1e-4 * np.abs(neg_hess).max()
    # In Voronoi terms the fit is far closer to the truth than its start was.
    assert losses.D1(result.params, well_separated) < 0.25 * losses.D1(start, well_separated)
    # The fit does not depend on expert labels: a data-driven start finds the same optimum.
    other = fastmoe.fit(X, y, 2, random_state=3, n_init=2, tol=1e-10, max_iter=3000)
    assert other.loglik == pytest.approx(result.loglik, rel=1e-9)
    assert losses.D1(other.params, result.params) < 1e-3


def test_reaches_flexmix_optimum_from_its_start():
    meta = json.loads((REFERENCE / "flexmix_fit.json").read_text())
    data = np.loadtxt(REFERENCE / "data.csv", delimiter=",", skiprows=1)
    X, y = data[:, :2], data[:, 2].astype(int)
    start = fastmoe.MoEParams.from_dict(meta["start"], gating=meta["gating"])
    result = fastmoe.fit(X, y, meta["n_experts"], init=start, tol=1e-13, max_iter=20_000)
    assert result.converged
    assert result.loglik >= meta["flexmix_loglik"]
    flexmix = fastmoe.MoEParams.from_dict(meta["flexmix_mle"], gating=meta["gating"])
    # Three implementations value the external optimum alike: fastmoe's kernels, the NumPy reference of
    # tests/ (sigmoid gating: Z = 1 / (1 + exp(-X))) and flexmix itself, in R (5e-11 relative apart).
    W, V = flexmix.packed()
    at_flexmix = fastmoe.loglik(flexmix, X, y)
    assert at_flexmix == pytest.approx(ref.loglik(W, V, X, 1.0 / (1.0 + np.exp(-X)), y), rel=1e-12)
    assert at_flexmix == pytest.approx(meta["flexmix_loglik"], rel=1e-9)
    # The likelihood is very flat here (flexmix needed ~2650 EM iterations): parameters along the ridge
    # differ visibly while the log-likelihood agrees to 1e-7, so compare the criterion, not the atoms.
    # The reference folder's best known value lies 5e-7 nats above flexmix's: reached too, to rounding.
    assert result.loglik >= meta["best_known_loglik"] - 1e-12 * abs(meta["best_known_loglik"])


@pytest.mark.parametrize("gating", ["identity", "tanh"])
def test_newton_phase_reaches_the_em_optimum(rng, well_separated, gating):
    truth = fastmoe.MoEParams(well_separated.beta0, well_separated.beta1, well_separated.a, well_separated.b, gating)
    X, y = fastmoe.sample(truth, n=5000, random_state=rng)
    fast = fastmoe.fit(X, y, 2, init=truth, tol=1e-10, max_iter=5000)
    plain = fastmoe.fit(X, y, 2, init=truth, tol=1e-10, max_iter=5000, newton=False)
    assert fast.converged and plain.converged
    assert fast.n_iter < plain.n_iter
    assert 0 < fast.n_newton < fast.n_iter and plain.n_newton == 0
    assert _monotone(fast.history)
    # EM crawls: when its relative change drops below tol it may still be a little short of the
    # maximum that Newton reaches; it is never above it.
    assert fast.loglik >= plain.loglik - 1e-12 * abs(plain.loglik)
    assert fast.loglik == pytest.approx(plain.loglik, rel=1e-6)
    # Newton's optimum is a fixed point of EM: plain EM started there stays there.
    again = fastmoe.fit(X, y, 2, init=fast.params, tol=1e-12, max_iter=50, newton=False)
    assert again.converged
    assert again.params.allclose(fast.params, rtol=1e-6, atol=1e-6)


def test_separable_data_is_reported_not_crashed(rng):
    X = rng.uniform(-1, 1, size=(400, 2))
    y = (X[:, 0] > 0).astype(int)  # perfectly separable by one expert
    with pytest.warns(fastmoe.ConvergenceWarning, match="diverged"):
        result = fastmoe.fit(X, y, 2, random_state=rng, max_iter=500)
    assert result.diverged and not result.converged
    # The message names why the loop stopped, not just when.
    assert result.message.split(";")[0] != f"stopped after {result.n_iter} iterations"
    assert np.isfinite(result.loglik) and _monotone(result.history, 400)
    # With a ridge the MLE exists and the fit converges.
    penalised = fastmoe.fit(X, y, 2, random_state=rng, l2=1.0, max_iter=2000)
    assert penalised.converged and not penalised.diverged


def test_single_class_data_gives_no_nan(rng):
    X = rng.uniform(-1, 1, size=(300, 2))
    y = np.zeros(300, dtype=int)
    with pytest.warns(fastmoe.ConvergenceWarning):
        result = fastmoe.fit(X, y, 2, n_classes=3, random_state=rng, max_iter=300)
    for arr in (result.params.a, result.params.b, result.params.beta0, result.params.beta1):
        assert np.isfinite(arr).all()
    # The supremum in closed form: every label predicted with certainty, log-likelihood 0, approached
    # as class 0's intercepts run off; so no MLE, and the fit says so.
    assert result.loglik == pytest.approx(0.0, abs=1e-6)
    assert result.predict_proba(X)[:, 0].min() > 1 - 1e-6
    assert result.diverged and not result.converged


def test_empty_expert_is_reported_and_frozen(rng, well_separated):
    X, y = fastmoe.sample(well_separated, n=2000, random_state=rng)
    start = fastmoe.MoEParams(
        beta0=[-100.0, 0.5, 0.0],  # expert 0 gets no mass (e^-100) anywhere in the data
        beta1=[[0.0, 0.0], [3.0, -2.0], [0.0, 0.0]],
        a=np.concatenate([np.zeros((1, 3, 2)), well_separated.a]),
        b=np.concatenate([np.zeros((1, 3)), well_separated.b]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        result = fastmoe.fit(X, y, 3, init=start, tol=1e-10, max_iter=30)
    assert 0 in result.empty_experts
    assert "no responsibility mass" in result.message
    assert np.isfinite(result.loglik) and _monotone(result.history)
    # An empty expert is frozen whole, its gating row included: a Newton step on its (numerically
    # zero) Hessian rows would fling them anywhere.
    assert result.params.beta0[0] == -100.0 and not result.params.beta1[0].any() and not result.params.a[0].any()


def test_n_init_keeps_the_best_and_callback_can_stop(rng, well_separated):
    X, y = fastmoe.sample(well_separated, n=2000, random_state=rng)
    seen = []

    def stop_after_five(iteration, loglik, params):
        seen.append((iteration, loglik, params.n_experts))
        return iteration >= 5

    stopped = fastmoe.fit(X, y, 3, random_state=0, callback=stop_after_five)
    assert stopped.n_iter == 5 and not stopped.converged and "callback" in stopped.message
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]

    # Each restart's final log-likelihood, read from the callback (the iteration count restarts at 1).
    finals = []

    def record(iteration, loglik, params):
        if iteration == 1:
            finals.append(None)
        finals[-1] = loglik
        return False

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        warnings.simplefilter("ignore", fastmoe.SearchWarning)
        best = fastmoe.fit(X, y, 3, random_state=1, n_init=4, init="random", max_iter=300, tol=1e-9,
                           callback=record)
    assert len(finals) == 4
    # Same sum in another summation order (E-step pass vs fused pass): equal to rounding.
    assert best.loglik == pytest.approx(max(finals), rel=1e-13)
    assert len({round(f, 6) for f in finals}) > 1  # the restarts really started from different points
    # The result says what every start reached and how many reached the kept maximum.
    np.testing.assert_allclose(best.starts.objectives, finals, rtol=1e-12)
    assert best.starts.n_best == sum(abs(f - max(finals)) <= 1e-6 * abs(max(finals)) for f in finals)


def test_result_methods(rng, well_separated, capsys):
    X, y = fastmoe.sample(well_separated, n=3000, random_state=rng)
    result = fastmoe.fit(X, y, 2, init=well_separated, verbose=2, max_iter=500, tol=1e-6)
    assert "[fastmoe] iter" in capsys.readouterr().out
    assert len(result.history) == result.n_iter + 1 and 0 < result.n_newton < result.n_iter
    proba = result.predict_proba(X)
    assert proba.shape == (3000, 3)
    assert np.array_equal(result.predict(X), proba.argmax(axis=1))
    assert result.score(X, y) == pytest.approx(result.loglik / 3000, rel=1e-12)
    # A weighted mean: one weight for every row leaves it unchanged, whether given as a scalar or an array.
    assert result.score(X, y, sample_weight=2.0) == pytest.approx(result.loglik / 3000, rel=1e-12)
    w = np.linspace(0.5, 1.5, 3000)
    assert result.score(X, y, sample_weight=w) == pytest.approx(
        np.sum(w * fastmoe.loglik_samples(result.params, X, y)) / w.sum(), rel=1e-12)
    p = result.params.n_free_params
    assert p == 1 * 3 + 2 * 2 * 3
    assert result.bic == pytest.approx(-2 * result.loglik + p * np.log(3000))
    assert result.aic == pytest.approx(-2 * result.loglik + 2 * p)
    assert "FitResult(" in repr(result)


def test_callable_gating(rng):
    def cube_root(X):
        return np.cbrt(X)

    truth = random_params(rng, 2, 3, 2, cube_root)
    X, y = fastmoe.sample(truth, n=2000, random_state=rng)
    result = fastmoe.fit(X, y, 2, init=truth, tol=1e-9, max_iter=3000)
    assert result.params.gating is cube_root
    assert result.loglik >= fastmoe.loglik(truth, X, y)


def test_a_fit_in_its_own_units_speaks_the_callers():
    """Inputs offset by 1e4 and scaled by 1e-5 are fitted centred and scaled (``_units``): the
    callback, a warm start and the ridge must still be in the caller's units."""
    truth, X, y = units_problem()
    scale, shift = np.array([1e-5, 1.0]), np.array([0.0, 1e4])
    X_other = X * scale + shift
    a, beta1 = truth.a / scale, truth.beta1 / scale
    # The truth in the other units.
    start = fastmoe.MoEParams(beta0=truth.beta0 - beta1 @ shift, beta1=beta1, a=a, b=truth.b - a @ shift)
    seen = []

    def record(n_iter, loglik, params):
        seen.append((loglik, params))

    result = fastmoe.fit(X_other, y, 2, init=start, tol=1e-10, callback=record)
    # The callback's parameters give the callback's log-likelihood on the caller's inputs.
    loglik, params = seen[-1]
    assert loglik == pytest.approx(fastmoe.loglik(params, X_other, y), rel=1e-10)
    assert result.loglik == pytest.approx(fastmoe.loglik(result.params, X_other, y), rel=1e-10)
    # The same fit as on X, in the caller's units: slopes / scale, intercepts moved by the shift.
    plain = fastmoe.fit(X, y, 2, init=truth, tol=1e-10)
    assert result.objective == pytest.approx(plain.objective, rel=1e-9)
    np.testing.assert_allclose(result.params.a * scale, plain.params.a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.params.b + result.params.a @ shift, plain.params.b, rtol=1e-4, atol=1e-5)
    # A warm start from the answer, given in the caller's units, stays there.
    warm = fastmoe.fit(X_other, y, 2, init=result.params, tol=1e-10)
    assert abs(warm.objective - result.objective) <= 1e-10 * abs(result.objective)
    # A ridge on the caller's slopes: l2 on X * s is l2 / s^2 on X (s the same for every column). The
    # fit on X * 1e-4 (in rescaled units inside) ends at a maximum of the ridge on its caller's slopes:
    # its objective is that ridge's, and the same point in X's units is a maximum of l2 = 1 there.
    tiny = X * 1e-4
    ridged = fastmoe.fit(tiny, y, 2, init=truth, l2=1e-8, tol=1e-10)
    p = ridged.params
    assert ridged.objective == pytest.approx(ridged.loglik - ref.ridge(*p.packed(), 1e-8), rel=1e-12)
    same = fastmoe.MoEParams(beta0=p.beta0, beta1=p.beta1 * 1e-4, a=p.a * 1e-4, b=p.b)
    there = fastmoe.fit(X, y, 2, init=same, l2=1.0, tol=1e-10)
    assert there.objective == pytest.approx(ridged.objective, rel=1e-9)


@pytest.mark.parametrize("newton", [True, False])
@pytest.mark.parametrize("truth_seed", [None, 1074327066])
def test_a_start_that_saturates_every_probability_claims_no_maximum_it_is_not_at(truth_seed, newton):
    """The truth given in X's units as the start of a fit on other units (a column offset by 1e4): the
    logits on the data are in the thousands, every probability saturates and the M-step's Hessians
    underflow. Before, the trust region's root search ran on an infinite bracket and raised scipy's
    ``ValueError`` ("function value at x=nan"); with that mended alone, the second start's run, in
    which no block of the M-step could move, was reported converged at -9.0e6 (the default fit reaches
    -1837), and so was plain EM's. With the baseline kernels that start's expert Hessian underflows to
    exactly 0: its Newton system has no solution, the M-step gives a zero step, and a zero change read
    as settled. A fit may fail from such a start, but must say so: converged only at the maximum the
    default fit reaches."""
    if truth_seed is None:
        truth, X, y = units_problem()
    else:
        draw = np.random.default_rng(truth_seed)
        truth = random_params(draw, 2, 3, 2)
        X, y = fastmoe.sample(truth, n=2000, random_state=draw)
    X_other = X * np.array([1e-5, 1.0]) + np.array([0.0, 1e4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        result = fastmoe.fit(X_other, y, 2, init=truth, newton=newton)
        best = fastmoe.fit(X_other, y, 2, random_state=0)
    assert np.isfinite(result.objective)
    assert not result.converged or result.objective >= best.objective - 1e-6 * abs(best.objective)


def _gain_left(result, X, y, l2):
    """What a Newton step would still gain at ``result``'s parameters, and the smallest eigenvalue of the
    objective's negative Hessian over the largest: both from the NumPy reference's gradient and Hessian
    (independent of the kernels). Directions of zero curvature (an empty expert's) are left out."""
    W, V = result.params.normalized().packed()
    X_design, Z_design = result.params.designs(X)
    grad, hess = ref.full_loglik_grad_hess(W, V, X_design, Z_design, y)
    ridge_grad, ridge_hess = ref.ridge_grad_hess(W, V, l2, result.ridge)
    grad = grad - ridge_grad
    eigval, eigvec = np.linalg.eigh(-hess + ridge_hess)
    scale = np.abs(eigval).max()
    curved = np.abs(eigval) > 1e-10 * scale
    along = eigvec.T @ grad
    return 0.5 * float(np.sum(along[curved] ** 2 / np.abs(eigval[curved]))), eigval.min() / scale


def test_a_converged_verdict_is_a_maximum():
    """Wherever a fit says converged (and not diverged), the point is a maximum to its tolerance: what a
    Newton step would still gain, by the NumPy reference's gradient and Hessian, is within a few times
    ``tol * |objective|``, and no direction rises (the negative Hessian has no clearly negative
    eigenvalue). Starts of every kind, wild ones included (the parameters of a random truth times 10),
    with and without Newton steps and a ridge. Stopping rules a hundred times too lax (EM's and
    Newton's thresholds times 100, patched in) fail here; so would a verdict read from a step that
    could not be taken, were a start to saturate every probability (the test above)."""
    tol, checked, wrong = 1e-9, 0, []
    for case in range(12):
        draw = np.random.default_rng(7000 + case)
        k, gating = (2, 3)[case % 2], ("identity", "tanh")[case // 6]
        truth = random_params(draw, k, 3, 2, gating=gating)
        X, y = fastmoe.sample(truth, n=1000, random_state=draw)
        start = ("kmeans", "random", "wild")[case % 3]
        init = random_params(draw, k, 3, 2, gating=gating, scale=10.0) if start == "wild" else start
        newton, l2 = case % 4 != 2, (0.03, 0.3, 0.0, 0.03)[case % 4]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
            result = fastmoe.fit(X, y, k, init=init, n_init=1, gating=gating, newton=newton, l2=l2, tol=tol,
                                 max_iter=1000, random_state=case, n_threads=1)
        if not result.converged or result.diverged:
            continue
        checked += 1
        gain, lowest = _gain_left(result, X, y, l2)
        if not (gain <= 10 * tol * abs(result.objective) and lowest >= -1e-8):
            wrong.append((case, start, newton, l2, gain, lowest, result.message))
    assert not wrong, wrong
    assert checked >= 8, f"only {checked} of 12 fits converged: the check says little"


def test_column_moments_over_blocks_of_rows(rng, monkeypatch):
    """Large designs have their moments summed over blocks of rows (no (n, d) temporary): the moments
    of exactly rounded sums (math.fsum) to rounding, weighted too; and a constant column's spread is
    exactly 0 on either path (NumPy's sum of 5e5 copies of 0.1 is off by 9e-12, more than
    CONSTANT_SPREAD allows)."""
    import math

    from fastmoe import _problem

    A = np.c_[rng.normal(3.0, 2.0, 500_000), rng.normal(0.0, 1e-6, 500_000), np.full(500_000, 0.1)]
    weights = rng.integers(1, 4, 500_000).astype(float)
    # Unblocked (1e6 entries): the constant column is constant all the same (its min is its max).
    assert _problem.column_moments(A[:, [0, 2]])[1][1] == 0.0
    monkeypatch.setattr(_problem, "MOMENT_BLOCKED", 1000)
    monkeypatch.setattr(_problem, "MOMENT_BLOCK", 30_000)
    for w in (None, weights):
        mean, sd = _problem.column_moments(A, w)
        ww = np.ones(len(A)) if w is None else w
        expected_mean = np.array([math.fsum(ww * col) / math.fsum(ww) for col in A.T])
        expected_sd = np.sqrt([math.fsum(ww * (col - m) ** 2) / math.fsum(ww) for col, m in zip(A.T, expected_mean)])
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
        np.testing.assert_allclose(sd[:2], expected_sd[:2], rtol=1e-10)
        assert sd[2] == 0.0
        # Values this small have squared deviations that underflow: their moments are taken in units of
        # their largest |value| (a column near 1e-165 once read as constant).
        tiny_mean, tiny_sd = _problem.column_moments(A * 1e-200, w)
        np.testing.assert_allclose(tiny_mean, expected_mean * 1e-200, rtol=1e-10)
        np.testing.assert_allclose(tiny_sd[:2], expected_sd[:2] * 1e-200, rtol=1e-10)
        assert tiny_sd[2] == 0.0
    # A row of weight 0 does not count, even where its value is of another size.
    w = weights.copy()
    w[0] = 0.0
    tiny = A * 1e-200
    tiny[0] = 1.0
    mean, sd = _problem.column_moments(tiny[1:], w[1:])
    zero_mean, zero_sd = _problem.column_moments(tiny, w)
    np.testing.assert_allclose(zero_mean, mean, rtol=1e-10)
    np.testing.assert_allclose(zero_sd, sd, rtol=1e-10)
    assert zero_sd[1] > 0.0


def test_fit_units_choose_and_map_back(rng):
    """``_units.FitUnits``: None where the inputs are well conditioned and in a box; otherwise a map of
    packed parameters that the fit's designs undo exactly (the logits are the same numbers)."""
    from fastmoe._units import FitUnits

    X = rng.uniform(-1.0, 1.0, size=(1000, 3))
    assert FitUnits.choose(X, X, None) is None
    far = X * np.array([1.0, 1e-6, 1.0]) + np.array([0.0, 0.0, 1e3])
    assert FitUnits.choose(far, far, fastmoe.Bounds.coerce(5.0)) is None
    # A constant column whose mean rounds (sd about 1e-17, not 0) is not "of tiny spread".
    constant = np.c_[X[:, :2], np.full(1000, 0.1)]
    assert constant[:, 2].std() > 0.0
    assert FitUnits.choose(constant, constant, None) is None
    Z = np.tanh(far[:, :2]) * 1e5
    units = FitUnits.choose(far, Z, None)
    assert units is not None and units.gate_scale.shape == (2,) and units.expert_shift.shape == (3,)
    W, V = rng.normal(0.0, 2.0, (3, 3)), rng.normal(0.0, 2.0, (3, 4, 4))
    W[-1], V[:, -1] = 0.0, 0.0  # reference conventions
    X_fit, Z_fit = units.designs(far, Z)
    W_fit, V_fit = units.to_fit(W, V)
    np.testing.assert_allclose(Z_fit @ W_fit[:, 1:].T + W_fit[:, 0], Z @ W[:, 1:].T + W[:, 0], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(np.einsum("nd,ksd->nks", X_fit, V_fit[..., 1:]) + V_fit[..., 0],
                               np.einsum("nd,ksd->nks", far, V[..., 1:]) + V[..., 0], rtol=1e-9, atol=1e-6)
    back = units.from_fit(W_fit, V_fit)
    np.testing.assert_allclose(back[0], W, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(back[1], V, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("l2, tiny", [(0.0, 1e-160), (0.0, 1e-200), (1.0, 1e-40)])
def test_columns_of_extreme_units_under_a_ridge_on_the_callers_slopes(l2, tiny):
    """Gating and expert columns in different extreme units (``tiny``, read by the gating only; under
    a ridge 1e-40, whose weight 1 / s^2 on the fit's slope, 1e80, is still exact; an offset
    column read by the experts only; under the ridge also a constant one, which rounds to a spread of
    1e-17 and was once taken for a column of tiny spread): the fit's objective is the penalised
    log-likelihood of its answer in the caller's units, computed here by hand, and the answer is a
    maximum of it (a warm start from it gains nothing)."""
    truth, X, y = units_problem()
    inputs = np.c_[X[:, 0] * tiny, X[:, 1], X[:, 1] + 1e4, X[:, 0], np.full(3000, 0.1)]
    constant = [4] if l2 > 0 else []  # without a ridge its slope and the intercept are not identified
    options = dict(gating_features=[0, 1] + constant, expert_features=[2, 3] + constant, l2=l2, tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.SearchWarning)
        result = fastmoe.fit(inputs, y, 2, random_state=0, **options)
    assert result.converged and not result.diverged
    p = result.params
    penalty = ref.ridge(*p.packed(), l2) if l2 > 0 else 0.0  # without: a slope of 1e160 squared overflows
    assert result.objective == pytest.approx(fastmoe.loglik(p, inputs, y) - penalty, rel=1e-9)
    if l2 == 0.0:  # the same likelihood as the data in plain units: the same maximum
        plain = fastmoe.fit(X, y, 2, init=truth, tol=1e-10)
        assert result.objective == pytest.approx(plain.objective, rel=1e-8)
    warm = fastmoe.fit(inputs, y, 2, init=p, **options)
    assert warm.objective <= result.objective + 1e-8 * abs(result.objective)
