"""Tests of the plain-NumPy reference (``tests/reference_numpy.py``) against independent checks.

The reference is the oracle for the compiled kernels, so it is itself checked only against things that do not
share its code paths: finite differences, naive (non log-space) formulas at moderate logits, sample
duplication for weights, scikit-learn for one expert, and quadratic convergence of Newton's method.
"""

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression

import reference_numpy as ref


# ----------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------------
def random_params(rng, k, K, d_gate, d, scale=1.0, convention=True):
    """Random packed parameters; with ``convention`` the reference rows/classes are zero."""
    W = rng.normal(0.0, scale, (k, 1 + d_gate))
    V = rng.normal(0.0, scale, (k, K, 1 + d))
    if convention:
        W[-1] = 0.0
        V[:, -1] = 0.0
    return W, V


def sample_data(rng, W, V, n, gating=None):
    """Draw ``x ~ U[-1, 1]^d``, the latent expert from pi(x), then ``y`` from that expert (MODEL.md s. 3)."""
    d = V.shape[2] - 1
    X = rng.uniform(-1.0, 1.0, (n, d))
    Z = X if gating is None else gating(X)
    pi = np.exp(ref.log_gate(W, Z))
    z = np.minimum((rng.random(n)[:, None] > np.cumsum(pi, axis=1)).sum(axis=1), W.shape[0] - 1)
    f = np.exp(ref.log_expert(V, X))[np.arange(n), z]
    y = np.minimum((rng.random(n)[:, None] > np.cumsum(f, axis=1)).sum(axis=1), V.shape[1] - 1)
    return X, Z, y


def fd_grad(fun, theta, h):
    """4th-order central finite-difference gradient of a scalar function."""
    g = np.empty(theta.size)
    for j in range(theta.size):
        e = np.zeros(theta.size)
        e[j] = h
        g[j] = (-fun(theta + 2 * e) + 8 * fun(theta + e) - 8 * fun(theta - e) + fun(theta - 2 * e)) / (12 * h)
    return g


def fd_jac(fun, theta, h):
    """4th-order central finite-difference Jacobian of a vector function (column j = d fun / d theta_j)."""
    cols = []
    for j in range(theta.size):
        e = np.zeros(theta.size)
        e[j] = h
        cols.append((-fun(theta + 2 * e) + 8 * fun(theta + e) - 8 * fun(theta - e) + fun(theta - 2 * e)) / (12 * h))
    return np.stack(cols, axis=1)


def naive_probs(W, V, X, Z):
    """Probabilities by the textbook formulas, no log space (only valid for moderate logits)."""
    eg = np.exp(W[:, 0] + Z @ W[:, 1:].T)
    pi = eg / eg.sum(axis=1, keepdims=True)
    ee = np.exp(np.einsum("nd,isd->nis", X, V[:, :, 1:]) + V[:, :, 0])
    f = ee / ee.sum(axis=2, keepdims=True)
    return pi, f


@pytest.fixture(params=[False, True], ids=["unweighted", "weighted"])
def weighted(request):
    return request.param


def make_problem(seed, n=60, k=3, K=3, d_gate=2, d=2, weighted=False):
    rng = np.random.default_rng(seed)
    W, V = random_params(rng, k, K, d_gate, d)
    X = rng.normal(size=(n, d))
    Z = np.tanh(rng.normal(size=(n, d_gate)))
    y = rng.integers(0, K, n)
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    return rng, W, V, X, Z, y, w


# ----------------------------------------------------------------------------------------------------------
# Probabilities, log-likelihood, responsibilities
# ----------------------------------------------------------------------------------------------------------
def test_probabilities_match_naive_formulas():
    rng, W, V, X, Z, y, _ = make_problem(0)
    # Also non-convention values: probabilities must work for any parameters.
    W2, V2 = random_params(rng, 3, 3, 2, 2, convention=False)
    for Wc, Vc in [(W, V), (W2, V2)]:
        pi, f = naive_probs(Wc, Vc, X, Z)
        np.testing.assert_allclose(np.exp(ref.log_gate(Wc, Z)), pi, rtol=1e-12)
        np.testing.assert_allclose(np.exp(ref.log_expert(Vc, X)), f, rtol=1e-12)
        joint = pi * f[np.arange(len(y)), :, y]
        np.testing.assert_allclose(ref.responsibilities(Wc, Vc, X, Z, y), joint / joint.sum(1, keepdims=True),
                                   rtol=1e-12)
        np.testing.assert_allclose(ref.loglik(Wc, Vc, X, Z, y), np.log(joint.sum(1)).sum(), rtol=1e-12)
        np.testing.assert_allclose(ref.predict_proba(Wc, Vc, X, Z), np.einsum("ni,nis->ns", pi, f), rtol=1e-12)


def test_shift_invariance():
    rng, W, V, X, Z, y, _ = make_problem(1)
    Ws = W + rng.normal(size=W.shape[1])  # common shift of every expert's gating parameters
    Vs = V + rng.normal(size=(V.shape[0], 1, V.shape[2]))  # common shift of the classes within each expert
    np.testing.assert_allclose(ref.log_gate(Ws, Z), ref.log_gate(W, Z), atol=1e-12)
    np.testing.assert_allclose(ref.log_expert(Vs, X), ref.log_expert(V, X), atol=1e-12)
    np.testing.assert_allclose(ref.loglik(Ws, Vs, X, Z, y), ref.loglik(W, V, X, Z, y), rtol=1e-12)


def test_expert_permutation_invariance():
    rng, W, V, X, Z, y, _ = make_problem(2)
    perm = np.array([2, 0, 1])
    np.testing.assert_allclose(ref.loglik(W[perm], V[perm], X, Z, y), ref.loglik(W, V, X, Z, y), rtol=1e-12)
    np.testing.assert_allclose(ref.responsibilities(W[perm], V[perm], X, Z, y),
                               ref.responsibilities(W, V, X, Z, y)[:, perm], rtol=1e-12)


def test_responsibilities_on_simplex_and_proba_sums():
    rng, W, V, X, Z, y, _ = make_problem(3, n=200, k=4, K=5)
    tau = ref.responsibilities(W, V, X, Z, y)
    assert tau.shape == (200, 4)
    assert np.all(tau >= 0) and np.all(tau <= 1)
    np.testing.assert_allclose(tau.sum(axis=1), 1.0, rtol=1e-14)
    proba = ref.predict_proba(W, V, X, Z)
    assert proba.shape == (200, 5)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.exp(ref.log_gate(W, Z)).sum(1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.exp(ref.log_expert(V, X)).sum(2), 1.0, rtol=1e-14)


def test_sample_weights_equal_duplication():
    rng, W, V, X, Z, y, _ = make_problem(4, n=40)
    reps = rng.integers(0, 4, 40)  # integer weights, zeros included
    Xr, Zr, yr = np.repeat(X, reps, 0), np.repeat(Z, reps, 0), np.repeat(y, reps)
    w = reps.astype(float)
    np.testing.assert_allclose(ref.loglik(W, V, X, Z, y, w), ref.loglik(W, V, Xr, Zr, yr), rtol=1e-12)
    tau = ref.responsibilities(W, V, X, Z, y)
    tau_r = ref.responsibilities(W, V, Xr, Zr, yr)
    for a, b in zip(ref.gate_grad_hess(W, Z, tau, w), ref.gate_grad_hess(W, Zr, tau_r)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(ref.expert_grad_hess(V[1], X, y, tau[:, 1], w), ref.expert_grad_hess(V[1], Xr, yr, tau_r[:, 1])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(ref.full_loglik_grad_hess(W, V, X, Z, y, w), ref.full_loglik_grad_hess(W, V, Xr, Zr, yr)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_extreme_logits_are_finite():
    rng = np.random.default_rng(5)
    n, k, K, d = 50, 3, 4, 2
    X = rng.choice([-1.0, 1.0], size=(n, d))
    Z = X.copy()
    W, V = random_params(rng, k, K, d, d)
    W *= 1e3 / np.abs(W).max()  # logits of order +-1e3: exp overflows / underflows in a naive evaluation
    V *= 1e3 / np.abs(V).max()
    y = rng.integers(0, K, n)  # many labels have probability ~exp(-1e3) under the model
    lg, lf = ref.log_gate(W, Z), ref.log_expert(V, X)
    assert np.all(np.isfinite(lg)) and np.all(lg <= 0) and lg.min() < -100
    assert np.all(np.isfinite(lf)) and np.all(lf <= 0) and lf.min() < -100
    ll = ref.loglik(W, V, X, Z, y)
    assert np.isfinite(ll) and ll < -1000
    tau = ref.responsibilities(W, V, X, Z, y)
    assert np.all(np.isfinite(tau)) and np.all(tau >= 0)
    np.testing.assert_allclose(tau.sum(axis=1), 1.0, rtol=1e-14)
    proba = ref.predict_proba(W, V, X, Z)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    for g, H in [ref.gate_grad_hess(W, Z, tau), ref.expert_grad_hess(V[0], X, y, tau[:, 0]),
                 ref.full_loglik_grad_hess(W, V, X, Z, y)]:
        assert np.all(np.isfinite(g)) and np.all(np.isfinite(H))
    assert np.isfinite(ref.q_gate(W, Z, tau)) and np.isfinite(ref.q_expert(V[0], X, y, tau[:, 0]))
    W1, V1, ll0 = ref.em_step(W, V, X, Z, y)
    assert ll0 == ll
    assert np.all(np.isfinite(W1)) and np.all(np.isfinite(V1))
    assert ref.loglik(W1, V1, X, Z, y) >= ll


def test_all_minus_inf_logsumexp_guard():
    a = np.array([[-np.inf, -np.inf], [0.0, -np.inf], [1e3, -1e3]])
    out = ref._logsumexp(a, axis=1)
    assert out[0] == -np.inf
    np.testing.assert_allclose(out[1:], [0.0, 1e3])


# ----------------------------------------------------------------------------------------------------------
# Gradients and Hessians against finite differences
# ----------------------------------------------------------------------------------------------------------
def assert_neg_semidefinite(H):
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-12)
    assert np.linalg.eigvalsh(H).max() <= 1e-10 * max(1.0, np.abs(H).max())


@pytest.mark.parametrize("tau_kind", ["posterior", "dirichlet", "unnormalised"])
def test_gate_grad_hess_vs_finite_differences(weighted, tau_kind):
    rng, W, V, X, Z, y, w = make_problem(10, weighted=weighted)
    k, p = W.shape
    if tau_kind == "posterior":
        tau = ref.responsibilities(W, V, X, Z, y)
    elif tau_kind == "dirichlet":
        tau = rng.dirichlet(np.ones(k), size=Z.shape[0])
    else:  # the exact derivative of Q_g is returned for any non-negative tau
        tau = rng.uniform(0, 2, (Z.shape[0], k))

    def q(theta):
        Wt = W.copy()
        Wt[:k - 1] = theta.reshape(k - 1, p)
        return ref.q_gate(Wt, Z, tau, w)

    def grad(theta):
        Wt = W.copy()
        Wt[:k - 1] = theta.reshape(k - 1, p)
        return ref.gate_grad_hess(Wt, Z, tau, w)[0]

    theta = W[:k - 1].ravel()
    g, H = ref.gate_grad_hess(W, Z, tau, w)
    assert g.shape == ((k - 1) * p,) and H.shape == ((k - 1) * p, (k - 1) * p)
    np.testing.assert_allclose(g, fd_grad(q, theta, 1e-3), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(H, fd_jac(grad, theta, 1e-3), rtol=1e-7, atol=1e-8)
    assert_neg_semidefinite(H)
    # MODEL.md's formula g_i = sum_n w_n (tau_ni - pi_ni) z_n when tau is on the simplex.
    if tau_kind != "unnormalised":
        wt = np.ones(len(y)) if w is None else w
        pi = np.exp(ref.log_gate(W, Z))
        g_model = ((wt[:, None] * (tau - pi))[:, :k - 1].T @ np.hstack([np.ones((len(y), 1)), Z])).ravel()
        np.testing.assert_allclose(g, g_model, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("K", [2, 4])
def test_expert_grad_hess_vs_finite_differences(weighted, K):
    rng, W, V, X, Z, y, w = make_problem(11, K=K, weighted=weighted)
    tau = ref.responsibilities(W, V, X, Z, y)
    q_dim = V.shape[2]
    for i in range(V.shape[0]):
        def q(theta, i=i):
            Vt = V[i].copy()
            Vt[:K - 1] = theta.reshape(K - 1, q_dim)
            return ref.q_expert(Vt, X, y, tau[:, i], w)

        def grad(theta, i=i):
            Vt = V[i].copy()
            Vt[:K - 1] = theta.reshape(K - 1, q_dim)
            return ref.expert_grad_hess(Vt, X, y, tau[:, i], w)[0]

        theta = V[i, :K - 1].ravel()
        g, H = ref.expert_grad_hess(V[i], X, y, tau[:, i], w)
        assert g.shape == ((K - 1) * q_dim,)
        np.testing.assert_allclose(g, fd_grad(q, theta, 1e-3), rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(H, fd_jac(grad, theta, 1e-3), rtol=1e-7, atol=1e-8)
        assert_neg_semidefinite(H)


def test_full_loglik_grad_hess_vs_finite_differences(weighted):
    rng, W, V, X, Z, y, w = make_problem(12, n=80, weighted=weighted)
    theta = ref.pack_free(W, V)
    k, p = W.shape
    K, q_dim = V.shape[1:]
    assert theta.size == (k - 1) * p + k * (K - 1) * q_dim

    def ll(th):
        return ref.loglik(*ref.unpack_free(th, W, V), X, Z, y, w)

    def grad(th):
        return ref.full_loglik_grad_hess(*ref.unpack_free(th, W, V), X, Z, y, w)[0]

    g, H = ref.full_loglik_grad_hess(W, V, X, Z, y, w)
    np.testing.assert_allclose(g, fd_grad(ll, theta, 1e-3), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(H, fd_jac(grad, theta, 1e-3), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-10)
    # Fisher's identity: the marginal gradient is the sum of the Q-function gradients at the posterior.
    tau = ref.responsibilities(W, V, X, Z, y)
    parts = [ref.gate_grad_hess(W, Z, tau, w)[0]]
    parts += [ref.expert_grad_hess(V[i], X, y, tau[:, i], w)[0] for i in range(k)]
    np.testing.assert_allclose(g, np.concatenate(parts), rtol=1e-10, atol=1e-12)


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(13)
    W, V = random_params(rng, 3, 4, 2, 5)
    theta = ref.pack_free(W, V)
    W2, V2 = ref.unpack_free(theta, np.zeros_like(W), np.zeros_like(V))
    np.testing.assert_array_equal(W2, W)
    np.testing.assert_array_equal(V2, V)


# ----------------------------------------------------------------------------------------------------------
# Newton direction
# ----------------------------------------------------------------------------------------------------------
def test_newton_direction_solves_concave_system():
    rng = np.random.default_rng(20)
    A = rng.normal(size=(6, 6))
    H = -(A @ A.T + 0.1 * np.eye(6))
    g = rng.normal(size=6)
    np.testing.assert_allclose(ref.newton_direction(g, H), np.linalg.solve(-H, g), rtol=1e-10)


def test_newton_direction_ridge_fallback():
    rng = np.random.default_rng(21)
    g = rng.normal(size=4)
    # Singular (rank-deficient) and indefinite Hessians: a finite ascent direction is still returned.
    a = rng.normal(size=4)
    for H in [-np.outer(a, a), np.diag([1.0, -1.0, -2.0, -3.0]), np.zeros((4, 4))]:
        delta = ref.newton_direction(g, H)
        assert np.all(np.isfinite(delta))
        assert g @ delta > 0
    assert ref.newton_direction(np.zeros(0), np.zeros((0, 0))).shape == (0,)


# ----------------------------------------------------------------------------------------------------------
# EM
# ----------------------------------------------------------------------------------------------------------
def test_em_step_never_decreases_loglik(weighted):
    rng = np.random.default_rng(30)
    n, d, k, K = 500, 2, 3, 3
    W_true, V_true = random_params(rng, k, K, d, d, scale=2.0)
    X, Z, y = sample_data(rng, W_true, V_true, n)
    w = rng.uniform(0.5, 2.0, n) if weighted else None
    W, V = random_params(rng, k, K, d, d, scale=0.5)
    lls = []
    for _ in range(30):
        W, V, ll = ref.em_step(W, V, X, Z, y, w)
        lls.append(ll)
        assert W[-1].tolist() == [0.0] * (d + 1) and np.all(V[:, -1] == 0.0)  # conventions are kept
    lls.append(ref.loglik(W, V, X, Z, y, w))
    diffs = np.diff(lls)
    assert np.all(diffs >= -1e-10 * np.abs(lls[:-1])), diffs.min()
    assert lls[-1] > lls[0] + 1.0


def test_em_fit_history_and_return_values():
    rng = np.random.default_rng(31)
    W_true, V_true = random_params(rng, 2, 3, 2, 2, scale=2.0)
    X, Z, y = sample_data(rng, W_true, V_true, 300, gating=np.tanh)
    W0, V0 = random_params(rng, 2, 3, 2, 2, scale=0.3)
    W, V, ll, n_iter, converged, hist = ref.em_fit(W0, V0, X, Z, y, tol=1e-6, max_iter=500)
    assert converged and len(hist) == n_iter + 1 and hist[-1] == ll
    np.testing.assert_allclose(ll, ref.loglik(W, V, X, Z, y), rtol=1e-14)
    assert np.all(np.diff(hist) >= -1e-10 * np.abs(hist[:-1]))
    assert abs(hist[-1] - hist[-2]) <= 1e-6 * abs(hist[-2])
    # Iteration cap: not converged, exactly max_iter steps applied.
    W, V, ll, n_iter, converged, hist = ref.em_fit(W0, V0, X, Z, y, tol=0.0, max_iter=3)
    assert not converged and n_iter == 3 and len(hist) == 4
    W3, V3 = W0, V0
    for _ in range(3):
        W3, V3, _ = ref.em_step(W3, V3, X, Z, y)
    np.testing.assert_array_equal(W, W3)
    np.testing.assert_array_equal(V, V3)
    np.testing.assert_allclose(ll, ref.loglik(W3, V3, X, Z, y), rtol=1e-14)


def _no_penalty_logreg(**kw):
    # scikit-learn 1.8 deprecated ``penalty``; C=inf is the non-deprecated spelling of "no penalty".
    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):
        return LogisticRegression(C=np.inf, **kw)
    return LogisticRegression(penalty=None, **kw)


@pytest.mark.parametrize("K", [3, 4])
def test_single_expert_matches_sklearn_logistic_regression(K):
    rng = np.random.default_rng(40)
    n, d = 400, 3
    _, V_true = random_params(rng, 1, K, d, d, scale=1.5)
    X, Z, y = sample_data(rng, np.zeros((1, d + 1)), V_true, n)
    W0 = np.zeros((1, d + 1))
    V0 = np.zeros((1, K, d + 1))
    W, V, ll, n_iter, converged, _ = ref.em_fit(W0, V0, X, Z, y, tol=1e-14, max_iter=100)
    assert converged
    np.testing.assert_array_equal(W, W0)  # no free gating parameter with one expert
    clf = _no_penalty_logreg(tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ref.predict_proba(W, V, X, Z), clf.predict_proba(X), atol=1e-5)
    # Newton on a concave objective: a handful of steps, and the gradient is essentially zero.
    # (Steps stop being accepted once the Q increase is below rounding, around |g| ~ 1e-7 here.)
    assert n_iter < 30
    g, _ = ref.full_loglik_grad_hess(W, V, X, Z, y)
    assert np.abs(g).max() < 1e-5


def test_full_gradient_vanishes_at_em_optimum():
    # A truth and seed for which the MLE exists: with random truths, a rare class inside one expert is often
    # quasi-separated at this n and its coefficients run off to infinity (MODEL.md section 5).
    rng = np.random.default_rng(51)
    n, d, k, K = 1000, 2, 2, 3
    W_true = np.array([[0.5, 2.0, -2.0], [0.0, 0.0, 0.0]])
    V_true = np.array([[[1.0, 2.0, 0.0], [0.0, -1.0, 2.0], [0.0, 0.0, 0.0]],
                       [[-0.5, -2.0, 1.0], [0.5, 1.0, -2.0], [0.0, 0.0, 0.0]]])
    X, Z, y = sample_data(rng, W_true, V_true, n)
    W0 = W_true + rng.normal(0, 0.3, W_true.shape)
    V0 = V_true + rng.normal(0, 0.3, V_true.shape)
    W0[-1], V0[:, -1] = 0.0, 0.0
    g0, _ = ref.full_loglik_grad_hess(W0, V0, X, Z, y)
    W, V, ll, n_iter, converged, _ = ref.em_fit(W0, V0, X, Z, y, tol=1e-13, max_iter=3000)
    assert converged and np.abs(V).max() < 20
    g, H = ref.full_loglik_grad_hess(W, V, X, Z, y)
    assert np.abs(g).max() < 1e-3 * max(1.0, np.abs(g0).max())
    assert np.abs(g).max() < 1e-2
    # At a strict local maximum the full Hessian is negative definite, and Newton on the log-likelihood
    # converges quadratically from the EM optimum (this also checks the Hessian's cross-block terms).
    assert np.linalg.eigvalsh(H).max() < 0
    theta = ref.pack_free(W, V)
    for _ in range(2):
        theta = theta - np.linalg.solve(H, g)
        g, H = ref.full_loglik_grad_hess(*ref.unpack_free(theta, W, V), X, Z, y)
    assert np.abs(g).max() < 1e-9
    assert ref.loglik(*ref.unpack_free(theta, W, V), X, Z, y) >= ll - 1e-9 * abs(ll)
