"""When the fit stops: the trust-region subproblem, Aitken's remainder, and the maximum reached near a
degenerate truth (checked by an independent optimiser on the NumPy reference log-likelihood)."""

import json
from pathlib import Path

import numpy as np
import pytest
import reference_numpy as ref
from scipy.optimize import minimize

import fastmoe
from fastmoe._monitor import (STALL_HORIZON, STALL_STEPS, STOP_REASONS, ConvergenceMonitor, em_settled, gain_left,
                              newton_settled, newton_stalled)
from fastmoe._trust_region import LargeQuadraticModel, QuadraticModel
from fastmoe.experiments import get_preset
from fastmoe.experiments.job import job_data
from fastmoe.experiments.starts import init_near_truth

DATA = Path(__file__).parent / "data"


def _random_model(rng, p, n_negative, hard=False):
    """A symmetric matrix with ``n_negative`` negative eigenvalues and unequal diagonal scales."""
    Q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    lam = np.concatenate([-rng.uniform(0.5, 2.0, n_negative), rng.uniform(0.1, 3.0, p - n_negative)])
    D = np.diag(np.exp(rng.uniform(-2, 2, p)))
    A = D @ (Q * lam) @ Q.T @ D
    g = rng.standard_normal(p)
    if hard:
        # no gradient component along the lowest eigenvector of the scaled matrix
        s = np.sqrt(np.abs(np.diag(A)))
        w, U = np.linalg.eigh(A / np.outer(s, s))
        c = U.T @ (g / s)
        c[0] = 0.0
        g = s * (U @ c)
    return A, g


@pytest.mark.parametrize("n_negative, hard", [(0, False), (2, False), (3, True)])
@pytest.mark.parametrize("radius", [0.05, 1.0, 50.0])
def test_trust_region_step_satisfies_the_optimality_conditions(rng, n_negative, hard, radius):
    # Moré & Sorensen (1983): q solves max g.q - q.A.q/2 over ||q|| <= radius iff for some mu >= 0
    # (A + mu I) q = g, A + mu I is positive semi-definite and mu (radius - ||q||) = 0 (scaled metric).
    A, g = _random_model(rng, 8, n_negative, hard)
    model = QuadraticModel(g, A)
    p, gain, length = model.step(radius)
    s = np.sqrt(np.abs(np.diag(A)))
    As, gs, q = A / np.outer(s, s), g / s, s * p
    assert np.linalg.norm(q) == pytest.approx(length, rel=1e-12)
    assert length <= radius * (1 + 1e-9)
    mu = float((gs - As @ q) @ q / (q @ q))
    assert np.linalg.norm((As + mu * np.eye(8)) @ q - gs) <= 1e-7 * max(np.linalg.norm(gs), 1.0)
    assert mu >= -1e-9
    assert np.linalg.eigvalsh(As + mu * np.eye(8))[0] >= -1e-7
    assert mu * (radius - length) <= 1e-7 * max(mu, 1.0) * radius
    assert gain == pytest.approx(g @ p - 0.5 * p @ A @ p, rel=1e-9, abs=1e-12)
    # and no random point of the ball does better
    trial = rng.standard_normal((2000, 8))
    trial *= (radius * rng.uniform(0, 1, (2000, 1)) ** (1 / 8)) / np.linalg.norm(trial, axis=1, keepdims=True)
    trial /= s
    assert np.max(trial @ g - 0.5 * np.einsum("ij,jk,ik->i", trial, A, trial)) <= gain * (1 + 1e-9)


@pytest.mark.parametrize("curvature", [3e-16, -3e-16, -2e-12])
def test_trust_region_step_on_a_flat_model_far_from_its_maximum(rng, curvature):
    # Eigenvalues far below ||g|| / radius: in floating point the bracket's upper end came out an ulp
    # outside the radius and the root search raised (found in a real-data grid search, issue 16).
    for _ in range(200):
        Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
        A = (Q * (curvature * rng.uniform(0.9, 1.1, 4))) @ Q.T
        g = rng.standard_normal(4) * 10.0 ** rng.uniform(-3, 3)
        radius = 10.0 ** rng.uniform(-8, 2)
        p, gain, length = QuadraticModel(g, A).step(radius)
        assert length <= radius * (1 + 1e-9) and gain >= 0.0
        # no feasible point does better: the boundary point along the (scaled) gradient, nor random ones
        s = np.sqrt(np.abs(np.diag(A)))
        trial = rng.standard_normal((500, 4))
        trial[0] = g / s
        trial *= radius / np.linalg.norm(trial, axis=1, keepdims=True)
        trial /= s
        best = np.max(trial @ g - 0.5 * np.einsum("ij,jk,ik->i", trial, A, trial))
        assert best <= gain * (1 + 1e-9) + 1e-12 * abs(gain)


def test_trust_region_step_whose_root_lies_decades_below_its_bracket():
    # The scaled eigensystem measured where a default fit raised brentq's "Failed to converge after 100
    # iterations" (n = 3000, k = 4, K = 4, l2 = 0.1; found by an audit of fits from random truths):
    # saturated directions with eigenvalues of 1e-276 and gradient components of 1e-146 beside healthy
    # ones put the boundary's shift near 3e-148, far below the bracket's upper end of 2e-8.
    model = object.__new__(QuadraticModel)
    model.eigval = np.array([-1.221e-276, 0.0, 6.340e-285, 8.662e-17, 5.809e-12, 3.62, 3.968, 4.876])
    model.coef = np.array([-6.893e-146, 0.0, 3.570e-287, 2.077e-16, 1.341e-10, 2e-6, -3e-6, 1.5e-6])
    model.eigvec, model.scale, model.concave = np.eye(8), np.ones(8), False
    radius = 244.385
    p, gain, length = model.step(radius)
    assert np.isfinite(p).all() and gain >= 0.0
    assert radius * (1 - 1e-9) <= length <= radius * (1 + 1e-12)


@pytest.mark.parametrize("Model, p", [(QuadraticModel, 6), (LargeQuadraticModel, 40)])
def test_concave_model_gives_the_newton_step_and_decrement(rng, Model, p):
    # LargeQuadraticModel takes them from its Cholesky factor, QuadraticModel from its eigenvectors.
    A, g = _random_model(rng, p, 0)
    model = Model(g, A)
    newton = np.linalg.solve(A, g)
    assert model.concave
    assert model.decrement() == pytest.approx(0.5 * g @ newton, rel=1e-9)
    step, gain, length = model.step(np.inf)
    np.testing.assert_allclose(step, newton, rtol=1e-8)
    assert gain == pytest.approx(model.decrement(), rel=1e-9)
    assert length == pytest.approx(np.linalg.norm(np.sqrt(np.abs(np.diag(A))) * newton), rel=1e-9)
    g2 = rng.standard_normal(p)  # a chord step: the same factorisation, another gradient
    np.testing.assert_allclose(model.with_gradient(g2).step(np.inf)[0], np.linalg.solve(A, g2), rtol=1e-8)
    indefinite = Model(g, _random_model(rng, p, 1)[0])
    assert not indefinite.concave and indefinite.decrement() == np.inf


@pytest.mark.parametrize("n_negative", [0, 3])
@pytest.mark.parametrize("radius", [0.05, 1.0, 50.0])
def test_large_model_step_stays_in_the_region_and_beats_the_cauchy_point(rng, n_negative, radius):
    # Steihaug's step starts along the scaled gradient, so it gains at least what the best point of
    # the ball along that gradient (the Cauchy point, in closed form) gains; and at most the exact
    # solution's (QuadraticModel).
    A, g = _random_model(rng, 40, n_negative)
    p, gain, length = LargeQuadraticModel(g, A).step(radius)
    s = np.sqrt(np.abs(np.diag(A)))
    assert np.linalg.norm(s * p) == pytest.approx(length, rel=1e-12) and length <= radius * (1 + 1e-9)
    assert gain == pytest.approx(g @ p - 0.5 * p @ A @ p, rel=1e-9)
    gs, As = g / s, A / np.outer(s, s)
    u = gs / np.linalg.norm(gs)
    slope, curvature = float(gs @ u), float(u @ As @ u)
    t = radius if curvature <= 0 else min(radius, slope / curvature)
    assert gain >= (slope * t - 0.5 * curvature * t * t) * (1 - 1e-9)
    assert gain <= QuadraticModel(g, A).step(radius)[1] * (1 + 1e-9)


def _saddle_model(rng, corner, size):
    """A saddle's structure, as where two experts are identical halves: one coordinate of curvature
    ``-corner`` (in A, the negative Hessian), decoupled from the rest, no gradient along it, and a
    gradient of ``size`` elsewhere."""
    B, g = _random_model(rng, 39, 0)
    A = np.zeros((40, 40))
    A[0, 0], A[1:, 1:] = -corner, B
    return A, np.concatenate([[0.0], size * g])


@pytest.mark.parametrize("size", [0.0, 1e-6])
def test_large_model_leaves_a_saddle_along_its_rising_direction(rng, size):
    # Conjugate gradients never leave the other coordinates and settle inside the region on the
    # model's stationary point. The exact step goes to the boundary along the rising coordinate,
    # gaining radius^2 / 2 times its scaled curvature 1 when the rest of the gradient is small; the
    # large model must leave by it too.
    A, g = _saddle_model(rng, 3.0, size)
    p, gain, length = LargeQuadraticModel(g, A).step(0.5)
    exact = QuadraticModel(g, A).step(0.5)
    assert length == pytest.approx(0.5, rel=1e-9)
    assert gain == pytest.approx(exact[1], rel=1e-6)  # the exact step also bends the rest, by O(size)
    assert gain == pytest.approx(0.125, rel=1e-3)
    assert abs(p[0]) == pytest.approx(abs(exact[0][0]), rel=1e-6)  # either way along it


def test_large_model_rising_direction_of_a_dense_indefinite_model(rng):
    # A dense matrix with one negative eigenvalue: the factorisation fails at whichever column its
    # Schur complement turns, and the direction built from the columns before must still rise.
    A, g = _random_model(rng, 40, 1)
    model = LargeQuadraticModel(g, A)
    v = model.rising
    s = np.sqrt(np.abs(np.diag(A)))
    assert not model.concave and v is not None
    assert np.linalg.norm(v) == pytest.approx(1.0) and v @ (A / np.outer(s, s)) @ v < 0.0


def test_large_model_stays_put_along_a_flat_direction(rng):
    # A collapsed over-fitted model: a direction of zero curvature and no gradient. Nothing is gained
    # along it, so the conjugate gradients' point is a maximiser (the exact model's gain), and no
    # rising direction is found.
    A, g = _saddle_model(rng, 0.0, 1e-3)
    model = LargeQuadraticModel(g, A)
    p, gain, length = model.step(10.0)
    assert not model.concave and model.rising is None
    assert gain == pytest.approx(QuadraticModel(g, A).step(10.0)[1], rel=1e-9)
    assert length < 10.0 and p[0] == 0.0


@pytest.mark.parametrize("p", [6, 410])  # either model inside
def test_a_reduced_model_is_the_model_of_its_live_coordinates(rng, p):
    """Held coordinates take no part in the model: the step is 0 there and the rest is the model
    without them (exact and chord)."""
    from fastmoe._trust_region import ReducedModel, quadratic_model

    g, A = rng.normal(size=p), rng.normal(size=(p, p))
    A = A @ A.T / p + np.diag(np.linspace(-0.5, 1.0, p))  # indefinite: boundary steps
    live = np.ones(p, dtype=bool)
    live[[1, p - 2]] = False
    alone = quadratic_model(g[live], A[np.ix_(live, live)])
    model = ReducedModel(alone, live)
    assert model.concave == alone.concave and model.decrement() == alone.decrement()
    for radius in (0.1, 1.0, 10.0):
        step, gain, length = model.step(radius)
        assert (step[~live] == 0.0).all()
        expected = alone.step(radius)
        np.testing.assert_array_equal(step[live], expected[0])
        assert (gain, length) == expected[1:]
    chord = model.with_gradient(g * 0.5)
    np.testing.assert_array_equal(chord.step(1.0)[0][live], alone.with_gradient(g[live] * 0.5).step(1.0)[0])


def test_an_all_zero_column_keeps_zero_coefficients():
    """Found by a QA pass: with an all-zero feature column (a rare indicator absent from a training fold)
    Newton steps moved its coefficients to -5e4 and 8e4, "converged", and predict_proba gave [0, 0, 1]
    wherever the column is 1; the search's moves set it at random too. The likelihood does not see it."""
    truth = fastmoe.MoEParams(beta0=[0.5, 0.0], beta1=[[3.0, -2.0], [0.0, 0.0]],
                              a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
                              b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]])
    X, y = fastmoe.sample(truth, n=5000, random_state=0)
    X0 = np.column_stack([X, np.zeros(len(y))])
    for init in ("search", "kmeans"):
        result = fastmoe.fit(X0, y, 2, init=init, random_state=0, n_threads=1)
        assert result.converged
        assert np.all(result.params.beta1[:, 2] == 0.0) and np.all(result.params.a[:, :, 2] == 0.0)
        ones = np.column_stack([X[:50], np.ones(50)])
        np.testing.assert_array_equal(result.predict_proba(ones), result.predict_proba(X0[:50]))


def test_fit_through_the_large_model_reaches_the_same_maximum(monkeypatch):
    """The whole fit with every trust-region step taken by LargeQuadraticModel (its threshold lowered
    to 0) ends at the maximum the exact subproblem solutions reach, from the same start."""
    from fastmoe import _trust_region

    truth = fastmoe.MoEParams(beta0=[0.3, 0.0], beta1=[[2.0, -1.0], [0.0, 0.0]],
                              a=[[[1.5, 0.0], [0.0, 1.0], [0.0, 0.0]], [[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]],
                              b=[[0.5, -0.2, 0.0], [0.0, 0.4, 0.0]])
    X, y = fastmoe.sample(truth, n=4000, random_state=11)
    exact = fastmoe.fit(X, y, 2, init="kmeans", random_state=1, tol=1e-10, n_threads=1)
    monkeypatch.setattr(_trust_region, "EIGEN_MAX_PARAMS", 0)
    large = fastmoe.fit(X, y, 2, init="kmeans", random_state=1, tol=1e-10, n_threads=1)
    assert exact.converged and large.converged
    assert large.objective == pytest.approx(exact.objective, rel=1e-10)
    for a, b in zip(large.params.packed(), exact.params.packed()):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("rate", [0.5, 0.9, 0.999])
def test_em_settled_waits_for_aitken_remainder(rate):
    # objective_t = L - C rate^t: change_t = C rate^(t-1) (1 - rate), and what is left is C rate^t.
    C, threshold = 100.0, 1e-3
    t = np.arange(1, 200_000)
    objective = -C * rate**t
    change = np.diff(objective)
    left = -objective[1:]
    stop = next(i for i in range(1, change.size) if em_settled(change[i], change[i - 1], threshold))
    assert left[stop] <= threshold * (1 + 1e-6)
    assert left[stop - 1] > threshold or change[stop - 1] > threshold
    # a small change alone is not enough when the ratio is near 1
    first_small = int(np.argmax(change <= threshold))
    assert stop > first_small or rate < 0.9


def test_em_settled_edge_cases():
    assert em_settled(-1e-9, 1.0, 1e-6)  # no progress at all (within rounding): EM has stopped
    assert em_settled(0.0, 0.0, 1e-6)
    assert not em_settled(2e-6, 1.0, 1e-6)  # the change itself is too large
    assert not em_settled(1e-7, 1e-7, 1e-6)  # not contracting: no remainder estimate
    assert not em_settled(1e-7, 0.9e-7, 1e-6)


def test_m_step_solves_report_the_blocks_whose_model_broke_down(rng):
    """``solve_pd`` against NumPy's solver, and its report of blocks left without a step: a block whose
    Hessian underflowed to 0 while its gradient did not has no Newton direction, and its zero step
    must not read as a fixed point (EM's "no change" verdict); a zero gradient needs no solve."""
    from fastmoe._mstep import solve_pd

    p = 4
    B = rng.standard_normal((p, p))
    healthy = B @ B.T + 0.1 * np.eye(p)
    singular = np.outer(B[0], B[0])  # rank 1: the ridge fallback solves it
    A = np.stack([healthy, singular, np.zeros((p, p)), np.full((p, p), np.nan), np.zeros((p, p))])
    g = rng.standard_normal((5, p))
    g[3] = 0.0
    g[4] = 0.0
    d, unsolved = solve_pd(A, g)
    np.testing.assert_allclose(d[0], np.linalg.solve(healthy, g[0]), rtol=1e-10)
    assert np.isfinite(d[1]).all() and d[1] @ g[1] > 0.0  # an ascent direction
    assert not d[2:].any()
    assert unsolved.tolist() == [False, False, True, False, False]


@pytest.mark.parametrize("newton", [False, True])
def test_em_settled_with_a_broken_block_is_no_verdict_without_newton(monkeypatch, rng, well_separated, newton):
    """Where EM settles in an iteration in which some block's Newton system had no solution (the flag
    of ``newton_directions``, forced here on a healthy problem), its verdict does not stand: plain EM
    stops without claiming convergence; with Newton steps the Newton finish certifies the maximum."""
    from fastmoe import _em

    X, y = fastmoe.sample(well_separated, n=2000, random_state=rng)
    truth = well_separated
    plain = fastmoe.fit(X, y, 2, init=truth, newton=newton, tol=1e-8)
    assert plain.converged
    directions = _em.newton_directions
    monkeypatch.setattr(_em, "newton_directions", lambda *args: directions(*args)[:2] + (True,))
    if newton:
        broken = fastmoe.fit(X, y, 2, init=truth, newton=newton, tol=1e-8)
        assert broken.converged and broken.objective == pytest.approx(plain.objective, rel=1e-12)
    else:
        with pytest.warns(fastmoe.ConvergenceWarning, match="no further step"):
            broken = fastmoe.fit(X, y, 2, init=truth, newton=newton, tol=1e-8)
        assert not broken.converged and broken.n_iter == plain.n_iter


def test_newton_settled_needs_collapsing_decrements():
    threshold = 1e-2
    # quadratic convergence: each decrement about the square of the last (in units of the first)
    assert newton_settled([5e-3, 1.7e-3, 3e-4], threshold)
    # a zig-zag along a flat valley: every decrement below the threshold, none collapsing
    assert not newton_settled([2e-2, 7e-3, 2e-2, 7e-3], threshold)
    assert not newton_settled([9e-3, 8e-3, 7e-3], threshold)  # slow contraction: 7e-3 / (1 - 0.89) > 1e-2
    # too little history, or a non-concave point (inf) among the last three
    assert not newton_settled([3e-4], threshold) and not newton_settled([np.inf, 1e-3, 3e-4], threshold)
    assert newton_settled([np.inf, 1e-3, 1e-6], threshold)  # negligible on its own


@pytest.mark.parametrize("tol", [1e-6, 1e-9])
def test_plain_em_stops_where_the_reference_em_with_aitken_stops(rng, well_separated, tol):
    # Same algorithm, same stopping rule, written independently: the same iteration and log-likelihood.
    X, y = fastmoe.sample(well_separated, n=3000, random_state=rng)
    start = fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), rng.normal(0, 0.3, (2, 3, 2)), np.zeros((2, 3)))
    result = fastmoe.fit(X, y, 2, init=start, tol=tol, max_iter=3000, newton=False, n_threads=1)
    W, V = start.normalized().packed()
    _, _, loglik, n_iter, converged, history = ref.em_fit(W, V, X, X, y, tol=tol, max_iter=3000, aitken=True)
    assert result.converged and converged
    assert result.n_iter == n_iter
    assert result.loglik == pytest.approx(loglik, rel=1e-11)
    # and the remainder rule ran past the point where the change alone was small
    plain_stop = ref.em_fit(W, V, X, X, y, tol=tol, max_iter=3000)[3]
    assert n_iter > plain_stop


def _vanishing_job(preset, n, replication):
    """Data, start and fit options of one job of a vanishing-expert preset (a split vanishing expert)."""
    exp = get_preset(preset)
    truth, streams, X, y = job_data(exp, n, replication)
    o = exp.fit
    init = init_near_truth(truth, exp.n_experts, streams["init"], o.init_scale, o.split_cells, o.split_spread)
    return X, y, init, truth.gating, o


@pytest.mark.parametrize("preset, n, replication", [
    # A fit stopped by its last relative change (1e-8) ended 0.14 nats below the maximum: EM and
    # shifted-Newton steps crawl along the split cell's flat directions.
    ("vanishing-tanh-near", 20_000, 1),
    # Newton decrements certified a point on a bend of a curved ridge, 0.59 nats below the maximum
    # (the split cell's a error 1.63 there, 1.04 at the maximum): its full Newton step gained a
    # fraction of what its model predicted, and the chord steps after it stalled.
    ("vanishing-standard-spread", 51_600, 18),
])
def test_fit_reaches_the_maximum_near_a_degenerate_truth(preset, n, replication):
    # The stopping rule must see where steps still gain and the trust-region finish must get there:
    # an independent optimiser (scipy's trust-exact on the NumPy reference log-likelihood) started at
    # the fit gains nothing.
    X, y, init, gating, o = _vanishing_job(preset, n, replication)
    result = fastmoe.fit(X, y, 3, gating=gating, init=init, l2=o.l2, ridge=o.ridge, tol=o.tol, n_threads=1,
                         max_iter=o.max_iter)
    assert result.converged and not result.diverged
    l2 = o.l2
    W, V = result.params.normalized().packed()
    Z = np.tanh(X) if gating == "tanh" else X

    def negative(theta):
        Wt, Vt = ref.unpack_free(theta, W, V)
        g, H = ref.full_loglik_grad_hess(Wt, Vt, X, Z, y)
        ridge_grad, ridge_hess = ref.ridge_grad_hess(Wt, Vt, l2, o.ridge)
        value = ref.loglik(Wt, Vt, X, Z, y) - ref.ridge(Wt, Vt, l2, o.ridge)
        return -value, -(g - ridge_grad), -(H - ridge_hess)

    theta0 = ref.pack_free(W, V)
    start_value, _, start_hess = negative(theta0)
    assert start_value == pytest.approx(-result.objective, rel=1e-10)
    assert np.linalg.eigvalsh(start_hess)[0] > 0  # a strict local maximum
    polished = minimize(lambda t: negative(t)[0], theta0, jac=lambda t: negative(t)[1],
                        hess=lambda t: negative(t)[2], method="trust-exact", options={"gtol": 1e-9})
    gained = start_value - polished.fun
    assert gained <= 1e-3, f"the fit stopped {gained:.4f} nats below the maximum"


def test_a_warm_start_on_a_ridge_goes_on_to_the_maximum():
    # The second job above, stopped by the callback at iteration 100, stands 0.59 nats below the maximum
    # the fit reaches (which the test above checks independently), on the plateau where the older
    # certificate stopped. EM's steps are small there whatever is left: a warm start from it settled
    # by Aitken's estimate in two EM iterations. Newton steps must certify such a stop or go on.
    X, y, init, gating, o = _vanishing_job("vanishing-standard-spread", 51_600, 18)

    def fit(start, **extra):
        return fastmoe.fit(X, y, 3, gating=gating, init=start, l2=o.l2, ridge=o.ridge, tol=o.tol, n_threads=1,
                           max_iter=o.max_iter, **extra)

    full = fit(init)
    part = fit(init, callback=lambda n_iter, objective, params: n_iter >= 100)
    assert part.objective < full.objective - 0.5  # so there is something left to find
    warm = fit(part.params)
    assert warm.converged
    assert warm.objective >= full.objective - o.tol * abs(full.objective)


@pytest.mark.slow
def test_a_point_certified_on_a_ridge_bend_is_left_for_the_maximum():
    # Where fastmoe 0.2.0 certified a large-n fit (tests/data/ridge-certificate): decrements within the
    # tolerance, but the full Newton step from there loses (its model describes a bend of the ridge,
    # not its top). A warm start must not certify it again: the steps go on, and rise by about half a
    # nat, 50 times the tolerance (certifying it, as 0.2.0 did, gains 0.005 nats).
    from fastmoe.experiments.paper import load_paper

    stored = json.loads((DATA / "ridge-certificate" / "start.json").read_text())
    experiment = load_paper().studies["vanishing-standard-spread-1e7"].experiment
    truth, _, X, y = job_data(experiment, 1_000_000, 3)
    o = experiment.fit

    def penalised(params):  # the study's objective: the log-likelihood less the ridge on the slopes
        return fastmoe.loglik(params, X, y) - ref.ridge(*params.packed(), o.l2, o.ridge)

    start = fastmoe.MoEParams.from_dict(stored["params"])
    assert penalised(start) == pytest.approx(stored["objective"], rel=1e-12)  # the job's data came back
    result = fastmoe.fit(X, y, experiment.n_experts, gating=truth.gating, init=start, l2=o.l2, ridge=o.ridge,
                         tol=o.tol, max_iter=o.max_iter)
    assert result.converged and not result.diverged
    assert result.objective == pytest.approx(penalised(result.params), rel=1e-12)
    assert result.objective - stored["objective"] > 0.4



def test_monitor_books_iterations_and_keeps_the_first_stop_reason():
    calls = []
    monitor = ConvergenceMonitor(1e-8, 3, callback=lambda n, W, V, obj: calls.append((n, obj)) or n == 2)
    monitor.start(-10.0)
    assert not monitor.record(None, None, -9.0, 1.0)
    assert monitor.record(None, None, -8.5, 0.5, newton=True)  # the callback asks to stop at 2
    assert monitor.reason == "callback" and not monitor.converged
    monitor.stop("converged")  # a later reason does not overwrite the first
    assert monitor.reason == "callback"
    assert monitor.history == [-10.0, -9.0, -8.5] and (monitor.n_iter, monitor.n_newton) == (2, 1)
    assert calls == [(1, -9.0), (2, -8.5)] and monitor.iterations_left == 1
    with pytest.raises(ValueError, match="unknown stop reason"):
        ConvergenceMonitor(1e-8, 3).stop("tired")


def test_monitor_message_names_every_stop_reason():
    messages = set()
    for reason in STOP_REASONS:
        monitor = ConvergenceMonitor(1e-8, 50)
        monitor.stop(reason)
        messages.add(monitor.message())
        assert monitor.converged == (reason == "converged")
    assert len(messages) == len(STOP_REASONS)
    diverging = ConvergenceMonitor(1e-8, 50)
    diverging.stop("diverging")
    text = diverging.message(empty_experts=(1,))
    assert "diverged" in text and "infinity" in text and "experts [1]" in text
    # The threshold is relative, with a floor so that a zero objective does not make it zero.
    assert ConvergenceMonitor(1e-8, 50).threshold(-2e4) == pytest.approx(2e-4)
    assert ConvergenceMonitor(1e-8, 50).threshold(0.0) > 0.0


def test_chord_steps_reach_the_exact_newton_maximum_with_fewer_hessians(monkeypatch):
    """Newton steps that keep an exact Hessian and pay only gradient passes end where exact Newton
    ends (and where the independent trust-exact polish finds nothing to gain), with fewer Hessians."""
    from fastmoe import _em, _problem

    # d = 10, k = 4, K = 5 (209 free parameters, where an exact Hessian costs ten gradient passes), a
    # start near the truth: the regime of the Newton finish.
    rng = np.random.default_rng(1)
    truth = fastmoe.MoEParams(beta0=rng.normal(0, 0.5, 4), beta1=rng.normal(0, 3, (4, 10)),
                              a=rng.normal(0, 3, (4, 5, 10)), b=rng.normal(0, 1, (4, 5))).normalized()
    X, y = fastmoe.sample(truth, n=10_000, random_state=1)
    W, V = truth.packed()
    W, V = W.copy(), V.copy()
    W[:-1] += rng.normal(0, 0.1, W[:-1].shape)
    V[:, :-1] += rng.normal(0, 0.1, V[:, :-1].shape)
    init = fastmoe.MoEParams.from_packed(W, V)
    calls = {"hessian_pass": 0, "gradient_pass": 0}
    for name in calls:
        original = getattr(_problem.Problem, name)

        def counted(self, *args, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *args)
        monkeypatch.setattr(_problem.Problem, name, counted)

    def fit():
        calls.update(hessian_pass=0, gradient_pass=0)
        result = fastmoe.fit(X, y, 4, init=init, tol=1e-10, max_iter=500, n_threads=1)
        assert result.converged and not result.diverged
        return result, dict(calls)

    chord, chord_calls = fit()
    monkeypatch.setattr(_em, "CHORD_RATE", 0.0)  # every chord step refused: a new Hessian at every step
    exact, exact_calls = fit()
    assert chord.objective == pytest.approx(exact.objective, rel=1e-11, abs=0)
    assert chord_calls["gradient_pass"] > 0 and chord_calls["hessian_pass"] < exact_calls["hessian_pass"]
    W, V = chord.params.normalized().packed()
    g, H = ref.full_loglik_grad_hess(W, V, X, X, y)
    step = np.linalg.solve(-H, g)
    assert 0.5 * g @ step <= 1e-10 * abs(chord.objective)  # the Newton decrement left: within tol
    assert chord.params.allclose(exact.params, rtol=1e-6, atol=1e-6)


def test_logit_slack_covers_the_rounding_of_runaway_intercepts(rng):
    """Far out (an expert's intercepts running off: a class with probability 0 there) the kernels'
    log-likelihood and the NumPy reference's differ by the logits' rounding: ``Problem.slack`` alone is
    too tight there, ``logit_slack`` is not."""
    from fastmoe._problem import Problem

    X = rng.uniform(0, 1, size=(30, 3))
    y = np.arange(30) % 3
    problem = Problem(X, X, y.astype(np.int64), np.full(30, 3.0), 2, 3, 1)
    W = np.array([[0.1, -1.9, -0.3, 0.4], [0.0, 0.0, 0.0, 0.0]])
    V = np.zeros((2, 3, 4))
    V[0, :2, 1:] = rng.normal(size=(2, 3))
    V[1, :2, 0] = [2.57371066e6, 2.57371170e6]  # class 2 gets probability 0 in expert 1
    V[1, :2, 1:] = [[0.22, 0.12, 0.64], [-0.22, -0.12, -0.64]]
    gaps = []
    for shift in (0.0, 1.0, 3.0):  # intercepts that ran on a little further: the same probabilities
        V_shift = V.copy()
        V_shift[1, :2, 0] += shift
        gaps.append(abs(problem.loglik(W, V_shift) - ref.loglik(W, V_shift, X, X, y, np.full(30, 3.0))))
        assert gaps[-1] <= problem.logit_slack(W, V_shift)
    assert max(gaps) > problem.slack(problem.loglik(W, V))  # so the plain slack would not do
    # Near the origin the logits' rounding is the plain floor.
    assert problem.logit_slack(0.1 * W, 0.0 * V) == pytest.approx(problem.rounding_floor)


def test_a_run_with_a_ceiling_stops_below_it_and_only_below_it():
    """``run_em(ceiling=...)``: a run heading for a maximum below the ceiling stops as "below" (its
    objective plus CEILING_MARGIN Newton decrements short of it); with the ceiling at or below that
    maximum it runs to it, and ends where a run without a ceiling ends."""
    from fastmoe._em import run_em
    from fastmoe._penalty import Penalty
    from fastmoe._problem import Problem

    truth = fastmoe.MoEParams(beta0=[0.3, 0.0], beta1=[[3.0, -1.0], [0.0, 0.0]],
                              a=[[[2.0, 1.0], [-1.0, 0.5], [0.0, 0.0]], [[-1.5, 0.0], [1.0, -2.0], [0.0, 0.0]]],
                              b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]])
    X, y = fastmoe.sample(truth, n=4000, random_state=4)
    problem = Problem(np.ascontiguousarray(X), np.ascontiguousarray(X), y.astype(np.int64), np.empty(0), 2, 3, 1)
    penalty = Penalty(0.0, problem)
    W0, V0 = truth.normalized().packed()
    plain = run_em(problem, W0, V0, penalty, ConvergenceMonitor(1e-10, 500), newton_first=True)
    assert plain.monitor.reason == "converged"
    below = run_em(problem, W0, V0, penalty, ConvergenceMonitor(1e-10, 500), newton_first=True,
                   ceiling=plain.objective + 50.0)
    assert below.monitor.reason == "below" and below.monitor.n_iter < plain.monitor.n_iter
    assert below.objective < plain.objective
    reached = run_em(problem, W0, V0, penalty, ConvergenceMonitor(1e-10, 500), newton_first=True,
                     ceiling=plain.objective)
    assert reached.monitor.reason == "converged" and reached.objective == plain.objective


def test_certifying_step_must_realise_its_model():
    from fastmoe._em import certifying_step_holds

    # Near a maximum the full Newton step gains about its decrement (more on a quartic ridge).
    assert certifying_step_holds(gain=0.98e-3, decrement=1e-3, slack=1e-9)
    assert certifying_step_holds(gain=1.4e-3, decrement=1e-3, slack=1e-9)
    # The certified step of the n = 1e6 over-fitted fit gained 0.23 of its decrement: a bend of a ridge.
    assert not certifying_step_holds(gain=3.95e-4, decrement=1.72e-3, slack=1e-9)
    assert not certifying_step_holds(gain=-1e-6, decrement=1e-3, slack=1e-9)
    assert not certifying_step_holds(gain=np.nan, decrement=1e-3, slack=1e-9)
    # Decrements within the objective's rounding are not judged: their gains are noise.
    assert certifying_step_holds(gain=-1e-9, decrement=5e-9, slack=1e-9)


def test_gain_left_extrapolates_collapsing_decrements():
    # Decrements halving: the rest of the geometric series, 2 + 1 + 0.5 + ... = 4.
    assert gain_left([8.0, 4.0, 2.0]) == pytest.approx(4.0)
    # The slower of the last two ratios counts: 5 / (1 - 0.5) with ratios 0.5 and 0.1.
    assert gain_left([100.0, 50.0, 5.0]) == pytest.approx(10.0)
    # Slowing down (ratio 0.1, then 0.5) gives no rate to extrapolate with.
    assert gain_left([100.0, 10.0, 5.0]) == np.inf
    # The sequence that certified a point 0.49 nats short of the maximum (vanishing-standard-spread,
    # n = 1e6): ratios 0.26, then 0.35.
    assert gain_left([0.0193, 0.00495, 0.00172]) == np.inf
    # Ratios that rise but stay far below SLOWING_RATIO (chord steps, about 1e-3 each) are a rate.
    assert gain_left([1e-2, 1e-5, 1.1e-8]) == pytest.approx(1.1e-8 / (1.0 - 1.1e-3))
    assert gain_left([1.0, 2.0, 3.0]) == np.inf  # not falling
    assert gain_left([4.0, 2.0]) == np.inf  # too few to say
    assert gain_left([4.0, np.inf, 1.0]) == np.inf  # an indefinite model in between


def test_newton_steps_that_stall_stop_the_run():
    # A random truth with many parameters for its data (d = 60, k = 2, K = 10: 1159 free parameters,
    # n = 5000; the last class has 19 rows): the default fit ran for over 600 s, the kept start's
    # Newton steps gaining 4e-9 nats each (1e-12 of the objective) for ever while its slopes grew, at
    # points where the Hessian is singular to rounding (eigenvalue ratio 3e-15), so that no model could
    # certify a maximum. Such steps now stop the run, and the divergence gauge judges where it stopped.
    d, k, K = 60, 2, 10
    rng = np.random.default_rng(0)
    beta1, beta0 = rng.normal(0, 2, (k, d)), rng.normal(0, 0.5, k)
    a, b = rng.normal(0, 2, (k, K, d)), rng.normal(0, 0.5, (k, K))
    beta1[-1], beta0[-1], a[:, -1], b[:, -1] = 0.0, 0.0, 0.0, 0.0
    X, y = fastmoe.sample(fastmoe.MoEParams(beta0=beta0, beta1=beta1, a=a, b=b), 5000, random_state=0)
    with pytest.warns(fastmoe.ConvergenceWarning, match="diverged"):
        result = fastmoe.fit(X, y, k, random_state=0, max_iter=300)
    assert result.n_iter < 300  # before, the crawling start (the highest of the four) ran to the cap
    # Its Newton steps stalled (STALL_STEPS of them in a row gained that little), EM took over, and the
    # divergence gauge stopped it.
    gains, newton = np.diff(result.history), set(result.newton_iterations)
    stalled = [end for end in range(STALL_STEPS, result.n_iter + 1)
               if set(range(end - STALL_STEPS + 1, end + 1)) <= newton
               and gains[end - STALL_STEPS:end].sum() * STALL_HORIZON <= 1e-8 * abs(result.objective)]
    assert stalled and result.n_iter not in newton
    assert result.diverged and not result.converged
    # Every start diverged: strong evidence that the MLE does not exist, said as such.
    assert result.starts.diverged.all() and "every one of the 4 starts" in result.message
    assert "most likely does not exist" in result.message


def test_a_run_stops_as_stalled_only_when_it_stalls_twice_with_nothing_gained_between():
    monitor = ConvergenceMonitor(tol=1e-8, max_iter=100)
    limit = 1e-8 * 1500.0 / STALL_HORIZON  # what may be gained between two stalls at an objective of -1500
    assert not monitor.stall(-1500.0) and not monitor.stopped  # the first: back to EM
    assert not monitor.stall(-1500.0 + 2 * limit) and not monitor.stopped  # EM gained: back to EM again
    assert monitor.stall(-1500.0 + 2.5 * limit) and monitor.reason == "stalled"
    assert not monitor.converged and "stalled" in monitor.message()
    # The divergence gauge's verdict overrules a stall, and nothing else.
    monitor.stop("diverging", overrule=("stalled",))
    assert monitor.reason == "diverging"
    monitor.stop("converged", overrule=("stalled",))
    assert monitor.reason == "diverging"


def test_newton_stalled_needs_a_long_run_of_negligible_gains():
    threshold = 1.5e-5  # tol 1e-8 at an objective of -1500
    crawl = [4e-9] * STALL_STEPS  # the d = 60 crawl: 4e-9 nats a step, for thousands of steps
    assert newton_stalled(crawl, threshold)
    assert not newton_stalled(crawl[1:], threshold)  # one step too few to say
    # Only the last STALL_STEPS count: a large gain before them does not hide the stall ...
    assert newton_stalled([10.0] + crawl, threshold)
    # ... and one inside them ends it.
    assert not newton_stalled(crawl[:-1] + [1e-3], threshold)
    # The line: gains summing to threshold / STALL_HORIZON over the window stall; a little more does not.
    edge = threshold / STALL_HORIZON / STALL_STEPS
    assert newton_stalled([edge] * STALL_STEPS, threshold)
    assert not newton_stalled([1.01 * edge] * STALL_STEPS, threshold)
    # An over-fitted ridge that leads on: 0.49 nats over a few tens of steps at an objective of -6e5.
    assert not newton_stalled([0.49 / 40] * 40, 6e-3)
