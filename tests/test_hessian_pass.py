"""The exact-Hessian kernel ``loglik_hessian_pass`` and ``q_values`` against the NumPy reference.

Called at the kernel level (outputs allocated and the packed blocks expanded here, independently of the
engine), so these tests pin the kernels' contract, not the engine's use of it.
"""

import tracemalloc

import numpy as np
import pytest
import reference_numpy as ref
from conftest import random_params

from fastmoe._dispatch import kernels as _kernels

SHAPES = [(1, 2, 1), (2, 3, 2), (3, 3, 2), (4, 5, 3)]  # (k, K, d)


def _data(rng, params, n):
    X = rng.uniform(-2, 2, size=(n, params.n_features))
    y = rng.integers(0, params.n_classes, size=n).astype(np.int64)
    return X, params.gate_input(X), y


def _outputs(k, K, dg, d):
    pg, pe, kr = dg + 1, d + 1, k * (K - 1)
    return (np.empty((k - 1, pg)), np.empty((k, K - 1, pe)), np.empty(((k - 1) * k // 2, pg * (pg + 1) // 2)),
            np.empty((kr * (kr + 1) // 2, pe * (pe + 1) // 2)), np.empty((k - 1, kr, pg, pe)))


def _unpack(blocks, size):
    """A symmetric matrix of ``n_blocks`` x ``n_blocks`` blocks from triu pairs of triu entries."""
    n_blocks = int(round((np.sqrt(8 * blocks.shape[0] + 1) - 1) / 2))
    rows, cols = np.triu_indices(size)
    full = np.zeros((n_blocks * size, n_blocks * size))
    for pair, (bi, bj) in enumerate(zip(*np.triu_indices(n_blocks))):
        block = np.zeros((size, size))
        block[rows, cols] = blocks[pair]
        block[cols, rows] = blocks[pair]
        full[bi * size:(bi + 1) * size, bj * size:(bj + 1) * size] = block
        full[bj * size:(bj + 1) * size, bi * size:(bi + 1) * size] = block.T
    return full


def hessian_pass(X, Z, y, W, V, w=None, n_threads=1, single=False):
    """(loglik, gradient, Hessian) over the free parameters in ``ref.pack_free`` order."""
    k, K, d, dg = W.shape[0], V.shape[1], X.shape[1], Z.shape[1]
    out = _outputs(k, K, dg, d)
    loglik = _kernels.loglik_hessian_pass(X, Z, y, np.empty(0) if w is None else w, W, V, *out, n_threads, single)
    grad_gate, grad_expert, gg, ee, ge = out
    n_gate = (k - 1) * (dg + 1)
    neg = np.zeros((n_gate + k * (K - 1) * (d + 1),) * 2)
    if k > 1:
        neg[:n_gate, :n_gate] = _unpack(gg, dg + 1)
        cross = ge.transpose(0, 2, 1, 3).reshape(n_gate, -1)
        neg[:n_gate, n_gate:] = cross
        neg[n_gate:, :n_gate] = cross.T
    neg[n_gate:, n_gate:] = _unpack(ee, d + 1)
    return loglik, np.concatenate([grad_gate.ravel(), grad_expert.ravel()]), -neg


@pytest.mark.parametrize("k, K, d", SHAPES)
@pytest.mark.parametrize("gating", ["identity", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_hessian_pass_matches_reference(rng, k, K, d, gating, weighted):
    params = random_params(rng, k, K, d, gating)
    n = 301  # five blocks of 64, the last one partial; two chunks
    X, Z, y = _data(rng, params, n)
    w = rng.uniform(0.1, 3.0, size=n) if weighted else None
    W, V = params.packed()
    loglik, grad, hess = hessian_pass(X, Z, y, W, V, w)
    g_ref, H_ref = ref.full_loglik_grad_hess(W, V, X, Z, y, w)
    assert loglik == pytest.approx(ref.loglik(W, V, X, Z, y, w), rel=1e-12)
    scale = np.abs(H_ref).max()
    np.testing.assert_allclose(grad, g_ref, rtol=1e-10, atol=1e-12 * np.abs(g_ref).max())
    np.testing.assert_allclose(hess, H_ref, rtol=1e-10, atol=1e-12 * scale)
    np.testing.assert_array_equal(hess, hess.T)


def test_hessian_pass_at_extreme_logits(rng):
    # Logits of order 1e3: many samples take the log-space fallback.
    params = random_params(rng, 3, 3, 2, scale=1e3)
    X, Z, y = _data(rng, params, 500)
    W, V = params.packed()
    loglik, grad, hess = hessian_pass(X, Z, y, W, V)
    assert np.isfinite(loglik) and np.isfinite(grad).all() and np.isfinite(hess).all()
    g_ref, H_ref = ref.full_loglik_grad_hess(W, V, X, Z, y)
    assert loglik == pytest.approx(ref.loglik(W, V, X, Z, y), rel=1e-12)
    np.testing.assert_allclose(grad, g_ref, rtol=1e-9, atol=1e-10 * np.abs(g_ref).max())
    np.testing.assert_allclose(hess, H_ref, rtol=1e-9, atol=1e-10 * np.abs(H_ref).max())


@pytest.mark.parametrize("gating", ["identity", "tanh"])
@pytest.mark.parametrize("k, K, d", SHAPES)
def test_single_precision_products_agree_with_the_reference(rng, k, K, d, gating):
    """``single=True`` (the search's exploration): the Hessian within single precision's reach of the
    NumPy reference, the log-likelihood and the gradient exactly those of the double pass."""
    params = random_params(rng, k, K, d, gating)
    X, Z, y = _data(rng, params, 3001)
    W, V = params.packed()
    w = rng.uniform(0.5, 2.0, size=X.shape[0])
    _, H_ref = ref.full_loglik_grad_hess(W, V, X, Z, y, w)
    loglik, grad, hess = hessian_pass(X, Z, y, W, V, w, single=True)
    loglik_d, grad_d, hess_d = hessian_pass(X, Z, y, W, V, w)
    assert loglik == loglik_d and np.array_equal(grad, grad_d)
    np.testing.assert_allclose(hess, H_ref, rtol=0, atol=1e-6 * np.abs(H_ref).max())
    np.testing.assert_array_equal(hess, hess.T)
    assert not np.array_equal(hess, hess_d)  # the single-precision products did run


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("n", [13, 10003])
def test_hessian_pass_identical_for_any_thread_count(rng, n, single):
    params = random_params(rng, 3, 3, 2, "tanh")
    X, Z, y = _data(rng, params, n)
    W, V = params.packed()
    w = rng.uniform(0.5, 2.0, size=n)
    runs = [hessian_pass(X, Z, y, W, V, w, n_threads, single) for n_threads in (1, 2, 7)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)  # bitwise


def test_hessian_pass_waves_do_not_change_a_bit(rng):
    # A row of the full Hessian is 21282 doubles here, so a wave holds 12 chunk rows (the 2 MB budget)
    # with 1 or 2 threads and 16 with 16 threads: the 25 chunks are folded in 3 or in 2 waves. The fold
    # runs in chunk order, so the waves must not change a bit.
    k, K, d = 4, 5, 12
    params = random_params(rng, k, K, d, "tanh")
    n = 25 * 256
    X, Z, y = _data(rng, params, n)
    w = rng.uniform(0.5, 2.0, size=n)
    W, V = params.packed()
    runs = [hessian_pass(X, Z, y, W, V, w, n_threads) for n_threads in (1, 2, 16)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)
    # Every chunk folded exactly once: the sums are additive over samples (halves of 12 and 13 chunks
    # run in one wave each).
    half = 12 * 256
    parts = [hessian_pass(X[s], Z[s], y[s], W, V, w[s]) for s in (slice(None, half), slice(half, None))]
    for whole, a, b in zip(runs[0], *parts):
        np.testing.assert_allclose(whole, a + b, rtol=1e-11, atol=1e-11 * np.abs(whole).max())


def test_hessian_pass_temporaries_do_not_grow_with_n(rng):
    # Issue 13: the chunk table kept >= 16 rows of the whole Hessian (75 MB at d = 50, k = K = 5,
    # n = 5000). Now: one wave of max(threads, 2 MB / row) rows, the total, and per-thread block scratch
    # of O(d^2 + (k K)^2) rows of 64 samples.
    k, K, d = 5, 5, 40
    params = random_params(rng, k, K, d)
    W, V = params.packed()
    p, kr = d + 1, k * (K - 1)
    m, nee = p * (p + 1) // 2, kr * (kr + 1) // 2
    width = 1 + (k - 1) * p + kr * p + (k - 1) * k // 2 * m + nee * m + (k - 1) * kr * p * p
    scratch = 64 * 8 * (2 * p + 2 * m + p * p + nee + (k - 1) * kr + 2 * kr + k * k + k * K + 3 * k + 8)
    peaks = []
    for n in (600, 2600):  # 3 and 11 chunks of 256
        X, Z, y = _data(rng, params, n)
        out = _outputs(k, K, d, d)
        tracemalloc.start()
        _kernels.loglik_hessian_pass(X, Z, y, np.empty(0), W, V, *out, 1)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    rows = max(1, (1 << 18) // width)  # one row of 2.6 MB
    assert peaks[1] <= peaks[0] * 1.01
    assert peaks[1] < (rows + 1) * width * 8 + scratch + 65536, (peaks, width, scratch)


@pytest.mark.parametrize("k, K, d", SHAPES)
@pytest.mark.parametrize("gating", ["identity", "tanh"])
@pytest.mark.parametrize("given", [False, True])
def test_q_values_match_reference(rng, k, K, d, gating, given):
    params, other = random_params(rng, k, K, d, gating), random_params(rng, k, K, d, gating)
    n = 301
    X, Z, y = _data(rng, params, n)
    w = rng.uniform(0.1, 3.0, size=n)
    W, V = params.packed()
    W2, V2 = other.packed()
    tau = rng.dirichlet(np.ones(k), size=n) if given else ref.responsibilities(W, V, X, Z, y)
    q = np.empty(k + 1)
    _kernels.q_values(X, Z, y, w, W, V, W2, V2, tau if given else np.empty((0, k)), q, 1)
    assert q[0] == pytest.approx(ref.q_gate(W2, Z, tau, w), rel=1e-12, abs=1e-12)
    for i in range(k):
        assert q[1 + i] == pytest.approx(ref.q_expert(V2[i], X, y, tau[:, i], w), rel=1e-12)


def test_q_values_at_extreme_logits(rng):
    params, other = random_params(rng, 3, 3, 2, scale=1e3), random_params(rng, 3, 3, 2, scale=300.0)
    X, Z, y = _data(rng, params, 500)
    W, V = params.packed()
    W2, V2 = other.packed()
    q = np.empty(4)
    _kernels.q_values(X, Z, y, np.empty(0), W, V, W2, V2, np.empty((0, 3)), q, 2)
    tau = ref.responsibilities(W, V, X, Z, y)
    assert np.isfinite(q).all()
    assert q[0] == pytest.approx(ref.q_gate(W2, Z, tau), rel=1e-12)
    for i in range(3):
        assert q[1 + i] == pytest.approx(ref.q_expert(V2[i], X, y, tau[:, i]), rel=1e-12)


@pytest.mark.parametrize("k, K, d", SHAPES)
@pytest.mark.parametrize("gating", ["identity", "tanh"])
def test_gradient_only_pass_matches_the_reference(rng, k, K, d, gating):
    """``newton_pass(hessians=False)``: the log-likelihood and its gradient (the Fisher identity), with
    the Hessian outputs left untouched."""
    params = random_params(rng, k, K, d, gating)
    n = 301
    X, Z, y = _data(rng, params, n)
    w = rng.uniform(0.1, 3.0, size=n)
    W, V = params.packed()
    pg, pe = Z.shape[1] + 1, d + 1
    weight, gg, ge = np.empty(k), np.empty((k - 1, pg)), np.empty((k, K - 1, pe))
    hg = np.full(((k - 1) * k // 2, pg * (pg + 1) // 2), 7.0)
    he = np.full((k, (K - 1) * K // 2, pe * (pe + 1) // 2), 7.0)
    loglik = _kernels.newton_pass(X, Z, y, w, W, V, np.empty((0, k)), weight, gg, hg, ge, he, 2, False)
    g_ref, _ = ref.full_loglik_grad_hess(W, V, X, Z, y, w)
    assert loglik == pytest.approx(ref.loglik(W, V, X, Z, y, w), rel=1e-12)
    np.testing.assert_allclose(np.concatenate([gg.ravel(), ge.ravel()]), g_ref, rtol=1e-10,
                               atol=1e-12 * np.abs(g_ref).max())
    assert (hg == 7.0).all() and (he == 7.0).all()
    # The same sums as the full pass's, to the last bit, at any thread count.
    full = [np.empty_like(a) for a in (weight, gg, hg, ge, he)]
    assert _kernels.newton_pass(X, Z, y, w, W, V, np.empty((0, k)), *full, 1) == loglik
    np.testing.assert_array_equal(full[1], gg)
    np.testing.assert_array_equal(full[3], ge)
    np.testing.assert_array_equal(full[0], weight)
