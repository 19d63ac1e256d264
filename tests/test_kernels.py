"""Every compiled kernel against the plain NumPy reference, plus thread invariance and extreme inputs."""

import numpy as np
import pytest
import reference_numpy as ref
from conftest import random_params

import fastmoe
from fastmoe._dispatch import kernels as _kernels
from fastmoe._problem import Problem

SHAPES = [(1, 2, 1), (2, 3, 2), (3, 3, 2), (4, 5, 3)]  # (k, K, d)


def _data(rng, params, n, gating="identity"):
    X = rng.uniform(-2, 2, size=(n, params.n_features))
    y = rng.integers(0, params.n_classes, size=n)
    return X, params.gate_input(X), y


def _problem(X, Z, y, k, K, w=None, n_threads=1):
    return Problem(X, Z, y.astype(np.int64), np.empty(0) if w is None else w, k, K, n_threads)


@pytest.mark.parametrize("k, K, d", SHAPES)
@pytest.mark.parametrize("gating", ["identity", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_newton_pass_matches_reference(rng, k, K, d, gating, weighted):
    params = random_params(rng, k, K, d, gating)
    X, Z, y = _data(rng, params, 301)
    w = rng.uniform(0.1, 3.0, size=301) if weighted else None
    W, V = params.packed()
    result = _problem(X, Z, y, k, K, w).newton_pass(W, V)

    tau = ref.responsibilities(W, V, X, Z, y)
    np.testing.assert_allclose(result.loglik, ref.loglik(W, V, X, Z, y, w), rtol=1e-12)
    g, H = ref.gate_grad_hess(W, Z, tau, w)
    np.testing.assert_allclose(result.grad_gate, g, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.neg_hess_gate, -H, rtol=1e-10, atol=1e-10)
    problem = _problem(X, Z, y, k, K, w)
    q = problem.q_values(W, V, W, V)
    np.testing.assert_allclose(q[0], ref.q_gate(W, Z, tau, w), rtol=1e-11)
    ww = np.ones(301) if w is None else w
    for i in range(k):
        g, H = ref.expert_grad_hess(V[i], X, y, tau[:, i], w)
        np.testing.assert_allclose(result.grad_expert[i], g, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(result.neg_hess_expert[i], -H, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(q[1 + i], ref.q_expert(V[i], X, y, tau[:, i], w), rtol=1e-11)
        np.testing.assert_allclose(result.expert_weight[i], np.sum(ww * tau[:, i]), rtol=1e-12)


@pytest.mark.parametrize("k, K, d", SHAPES)
def test_e_step_and_predict_match_reference(rng, k, K, d):
    params = random_params(rng, k, K, d, "sigmoid")
    X, Z, y = _data(rng, params, 257)
    W, V = params.packed()
    assert fastmoe.loglik(params, X, y) == pytest.approx(ref.loglik(W, V, X, Z, y), rel=1e-12)
    np.testing.assert_allclose(fastmoe.responsibilities(params, X, y), ref.responsibilities(W, V, X, Z, y),
                               rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(fastmoe.predict_proba(params, X), ref.predict_proba(W, V, X, Z), rtol=1e-11)
    np.testing.assert_allclose(fastmoe.gate_proba(params, X), np.exp(ref.log_gate(W, Z)), rtol=1e-11)
    np.testing.assert_allclose(fastmoe.expert_proba(params, X), np.exp(ref.log_expert(V, X)), rtol=1e-11)
    logp = fastmoe.loglik_samples(params, X, y)
    assert logp.shape == (257,)
    assert logp.sum() == pytest.approx(ref.loglik(W, V, X, Z, y), rel=1e-12)


def test_predicted_rows_sum_to_one_with_intercepts_running_off(rng):
    """A boundary maximum sends intercepts to +-1e9 and beyond (seen: iris, k = 2, l2 = 10, in a grid
    search). The log-probabilities must be formed as (v - max) - log(sum), or the rounding of max +
    log(sum) at 1e9 (1e-7) moved every row's sum by up to 5e-8 and scikit-learn's log_loss warned."""
    params = fastmoe.MoEParams(
        beta0=np.array([-1.2153, 0.0]), beta1=np.array([[0.3052, 0.0609, 0.6444, 0.8287], [0.0, 0.0, 0.0, 0.0]]),
        a=np.array([np.zeros((3, 4)), [[-0.3227, 0.336, -0.4393, -0.4009], [0.3227, -0.336, 0.4393, 0.4009], [0, 0, 0, 0]]]),
        b=np.array([[-6.2038e11, -6.2038e11, 0.0], [9.7962e8, 9.7962e8, 0.0]]),
    )
    X = rng.standard_normal((500, 4))
    proba = fastmoe.predict_proba(params, X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    # Independently: each expert's softmax normalised by division, then mixed. The logits themselves
    # carry the rounding of 1e9 (1.2e-7), so the two agree to that, not to the last bit.
    from scipy.special import softmax

    gate = softmax(params.beta1 @ X.T + params.beta0[:, None], axis=0).T  # (n, k)
    logits = np.einsum("ksd,nd->nks", params.a, X) + params.b  # (n, k, K)
    expected = np.einsum("nk,nks->ns", gate, softmax(logits, axis=2))
    np.testing.assert_allclose(proba, expected, rtol=1e-6, atol=1e-15)


def test_resp_in_replaces_responsibilities(rng):
    params = random_params(rng, 3, 3, 2)
    X, Z, y = _data(rng, params, 400)
    W, V = params.packed()
    tau = rng.dirichlet(np.ones(3), size=400)
    problem = _problem(X, Z, y, 3, 3)
    result = problem.newton_pass(W, V, tau)
    g, H = ref.gate_grad_hess(W, Z, tau)
    np.testing.assert_allclose(result.grad_gate, g, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.neg_hess_gate, -H, rtol=1e-10, atol=1e-10)
    W2, V2 = random_params(rng, 3, 3, 2).packed()
    q = problem.q_values(W, V, W2, V2, tau)
    assert q[0] == pytest.approx(ref.q_gate(W2, Z, tau), rel=1e-11)
    for i in range(3):
        assert q[1 + i] == pytest.approx(ref.q_expert(V2[i], X, y, tau[:, i]), rel=1e-11)


def test_q_values_use_old_responsibilities(rng):
    params, other = random_params(rng, 3, 4, 2), random_params(rng, 3, 4, 2)
    X, Z, y = _data(rng, params, 333)
    W, V = params.packed()
    W2, V2 = other.packed()
    q = _problem(X, Z, y, 3, 4).q_values(W, V, W2, V2)
    tau = ref.responsibilities(W, V, X, Z, y)
    assert q[0] == pytest.approx(ref.q_gate(W2, Z, tau), rel=1e-11)
    for i in range(3):
        assert q[1 + i] == pytest.approx(ref.q_expert(V2[i], X, y, tau[:, i]), rel=1e-11)


@pytest.mark.parametrize("n", [13, 10003])
def test_results_identical_for_any_thread_count(rng, n):
    params = random_params(rng, 3, 3, 2, "tanh")
    X, Z, y = _data(rng, params, n)
    W, V = params.packed()
    w = rng.uniform(0.5, 2.0, size=n)
    outputs = []
    for n_threads in (1, 2, 7):
        problem = _problem(X, Z, y, 3, 3, w, n_threads)
        r = problem.newton_pass(W, V)
        logp = fastmoe.loglik_samples(params, X, y, n_threads=n_threads)
        proba = fastmoe.predict_proba(params, X, n_threads=n_threads)
        q = problem.q_values(W, V, W * 0.9, V * 1.1)
        outputs.append((r.loglik, r.grad_gate, r.neg_hess_gate, r.grad_expert, r.neg_hess_expert, logp, proba, q))
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            assert np.array_equal(a, b)  # bitwise, not approximately


def test_fit_identical_for_any_thread_count(rng, well_separated):
    X, y = fastmoe.sample(well_separated, n=10003, random_state=rng)
    fits = [fastmoe.fit(X, y, 2, init=well_separated, n_threads=t, tol=1e-10) for t in (1, 2, 7)]
    for other in fits[1:]:
        assert other.n_iter == fits[0].n_iter
        assert np.array_equal(other.history, fits[0].history)
        assert np.array_equal(other.params.a, fits[0].params.a)


def test_chunk_size_depends_on_n_only():
    assert _kernels.chunk_size(10) == _kernels.chunk_size(1000)
    big = _kernels.chunk_size(10**8)
    assert 10**8 / big <= 512 + 1


def test_extreme_logits_stay_finite(rng):
    params = random_params(rng, 3, 3, 2, scale=1e3)  # logits of order +-1e3
    X, Z, y = _data(rng, params, 500)
    W, V = params.packed()
    r = _problem(X, Z, y, 3, 3).newton_pass(W, V)
    for value in (r.loglik, r.grad_gate, r.neg_hess_gate, r.grad_expert, r.neg_hess_expert):
        assert np.isfinite(value).all()
    resp = fastmoe.responsibilities(params, X, y)
    assert np.isfinite(resp).all() and (resp >= 0).all()
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-12)
    proba = fastmoe.predict_proba(params, X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert np.isfinite(fastmoe.loglik(params, X, y))
    np.testing.assert_allclose(r.loglik, ref.loglik(W, V, X, Z, y), rtol=1e-10)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_kernels_leave_the_callers_subnormals_alone(rng, n_threads):
    # The kernels flush subnormals to zero inside their parallel regions (a slow microcode path
    # otherwise: fastmoe_flush_subnormals) and must give the caller's floating-point mode back: the
    # calling thread is one of the kernel's threads.
    params = random_params(rng, 3, 3, 2, scale=1e3)  # probabilities far below 1e-308 on many rows
    X, Z, y = _data(rng, params, 500)
    W, V = params.packed()
    problem = _problem(X, Z, y, 3, 3, n_threads=n_threads)
    problem.newton_pass(W, V)
    problem.hessian_pass(W, V)
    fastmoe.predict_proba(params, X)
    tiny = np.array([2.2250738585072014e-308])  # the smallest normal double
    assert (tiny / 4.0)[0] > 0.0  # a subnormal result is kept (no flush to zero)
    assert (tiny / 4.0 * 4.0)[0] == tiny[0]  # and read as itself (no denormals-are-zero)


def test_sample_labels_follow_the_model(rng, well_separated):
    X = rng.uniform(-1, 1, size=(200_000, 2))
    _, y, z = fastmoe.sample(well_separated, X=X, random_state=1, return_latent=True)
    # Empirical frequencies in a region match the model's probabilities there.
    gate = fastmoe.gate_proba(well_separated, X)
    proba = fastmoe.predict_proba(well_separated, X)
    np.testing.assert_allclose(np.bincount(z, minlength=2) / len(z), gate.mean(axis=0), atol=4e-3)
    np.testing.assert_allclose(np.bincount(y, minlength=3) / len(y), proba.mean(axis=0), atol=4e-3)
    # Same seed, same draw, whatever the thread count.
    _, y1 = fastmoe.sample(well_separated, X=X, random_state=7, n_threads=1)
    _, y2 = fastmoe.sample(well_separated, X=X, random_state=7, n_threads=2)
    assert np.array_equal(y1, y2)


def _first_column_of_buffer(X):
    """A gating callable whose result shares X's buffer (same first address) in another shape."""
    return X.ravel()[: X.shape[0]].reshape(-1, 1)


@pytest.mark.parametrize("d", [2, 4])
def test_gating_view_of_the_input_buffer_is_not_the_input(rng, d):
    # Issue 13, item 5: the kernels took "Z is X" from a pointer comparison alone, so a gating design
    # viewing X's buffer with another shape was read as X: fastmoe.loglik gave -1297.77 for -1274.24.
    k, K, n = 3, 3, 500
    params = random_params(rng, k, K, d, _first_column_of_buffer, d_gate=1)
    X = rng.uniform(-2, 2, size=(n, d))
    y = rng.integers(0, K, size=n)
    Z = params.gate_input(X)
    assert Z.shape == (n, 1) and np.shares_memory(Z, X) and Z.ctypes.data == X.ctypes.data
    W, V = params.packed()
    assert fastmoe.loglik(params, X, y) == pytest.approx(ref.loglik(W, V, X, Z, y), rel=1e-12)
    np.testing.assert_allclose(fastmoe.responsibilities(params, X, y), ref.responsibilities(W, V, X, Z, y),
                               rtol=1e-11, atol=1e-14)
    problem = _problem(X, Z, y, k, K)
    result = problem.newton_pass(W, V)
    g, H = ref.gate_grad_hess(W, Z, ref.responsibilities(W, V, X, Z, y))
    np.testing.assert_allclose(result.grad_gate, g, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(result.neg_hess_gate, -H, rtol=1e-10, atol=1e-10)
    loglik, grad, neg_hess = problem.hessian_pass(W, V)
    g_ref, H_ref = ref.full_loglik_grad_hess(W, V, X, Z, y)
    assert loglik == pytest.approx(ref.loglik(W, V, X, Z, y), rel=1e-12)
    np.testing.assert_allclose(grad, g_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(neg_hess, -H_ref, rtol=1e-10, atol=1e-9)


def _kernel_exp(x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    _kernels._exp_for_tests(x, out)
    return out


def test_kernel_exp_is_accurate_where_the_kernels_use_it(rng):
    # Max-shifted logits: arguments <= 0. Odd length: the vector loop and its scalar remainder.
    x = np.concatenate([-rng.exponential(5.0, size=10_001), rng.uniform(-708, 0, size=999), [0.0, -0.0, -708.0]])
    np.testing.assert_allclose(_kernel_exp(x), np.exp(x), rtol=5e-16, atol=0)


def test_kernel_exp_overflows_like_libm():
    # Issue 13, item 6: without an upper clamp 709.8 gave inf, 800 a negative number and +inf NaN.
    with np.errstate(over="ignore"):
        big = np.array([709.0, 709.5, 709.78, 709.782712893, 709.79, 710.0, 710.5, 800.0, 1e5, 1e300, np.inf])
        expected = np.exp(big)
    got = _kernel_exp(big)
    finite = np.isfinite(expected)
    assert finite[:4].all() and not finite[4:].any()
    np.testing.assert_allclose(got[finite], expected[finite], rtol=5e-16)
    assert np.all(got[~finite] == np.inf)
    # Positive arguments of every size in the finite range, and the scalar path (length 1).
    x = np.linspace(0.0, 709.78, 4001)
    np.testing.assert_allclose(_kernel_exp(x), np.exp(x), rtol=5e-16)
    assert _kernel_exp([800.0])[0] == np.inf and _kernel_exp([np.inf])[0] == np.inf


def test_kernel_exp_propagates_nan_and_clamps_below():
    got = _kernel_exp([np.nan, 1.0, np.nan, -np.nan])
    assert np.isnan(got[[0, 2, 3]]).all() and got[1] == pytest.approx(np.e, rel=1e-15)
    tiny = _kernel_exp([-708.5, -1000.0, -np.inf])
    if _kernels.build_info()["polynomial_exp"]:
        # Below -708 the polynomial is held at exp(-708) ~ 3e-308 (documented: no probability can tell it
        # from an underflow, and it keeps every later division finite).
        assert np.all(tiny > 0) and np.all(tiny <= np.exp(-708.0) * (1 + 1e-15))
    else:  # the baseline variant's exponential is libm's
        np.testing.assert_array_equal(tiny, np.exp([-708.5, -1000.0, -np.inf]))
