"""Plain-NumPy reference implementation of the fastmoe model (test oracle and executable documentation).

Everything here is written straight from ``MODEL.md`` and depends only on NumPy and SciPy, never on
``fastmoe``, so that the compiled kernels can be checked against something independent. Clarity comes
first; the code is vectorised because the benchmark suite also times it as the "NumPy EM" baseline.

Model (Nguyen, Akbarian, Nguyen & Ho, ICML 2024)::

    pi_i(x)   = softmax_i(beta0_i + beta1_i . M(x))            gating, i = 0..k-1
    f_i(s|x)  = softmax_s(b_si + a_si . x)                      expert i, class s = 0..K-1
    p(y|x)    = sum_i pi_i(x) f_i(y|x)

Conventions (raw arrays only, no fastmoe objects)
-------------------------------------------------
X : (n, d) expert input.
Z : (n, d_gate) gating input, already transformed (``Z = M(X)``).
y : (n,) integer labels in ``0..K-1``.
w : (n,) sample weights or None (all ones).
W : (k, 1 + d_gate) packed gating parameters, ``W[:, 0] = beta0`` and ``W[:, 1:] = beta1``.
V : (k, K, 1 + d) packed expert parameters, ``V[..., 0] = b`` and ``V[..., 1:] = a``.

Reference conventions: the last expert has ``W[k-1] = 0`` and every expert's last class has
``V[:, K-1] = 0``. Only the remaining entries are *free*; gradients and Hessians are taken with respect to
them, flattened row-major (gating: expert-major then ``[intercept, beta1...]``; expert i: class-major then
``[intercept, a...]``). Functions that evaluate probabilities accept any values.

Everything is computed in log space with a max-shifted log-sum-exp, so logits of order +-1e3 are fine.
"""

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

__all__ = [
    "log_gate",
    "log_expert",
    "loglik",
    "responsibilities",
    "predict_proba",
    "gate_grad_hess",
    "expert_grad_hess",
    "q_gate",
    "q_expert",
    "newton_direction",
    "em_step",
    "em_fit",
    "full_loglik_grad_hess",
    "pack_free",
    "unpack_free",
]


# ----------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------
def _weights(w, n):
    """Return the sample weights as a float array of shape (n,) (ones when ``w`` is None)."""
    if w is None:
        return np.ones(n)
    return np.asarray(w, dtype=np.float64)


def _design(A):
    """Prepend a column of ones: ``[1, A]`` (the intercept column of a design matrix)."""
    A = np.asarray(A, dtype=np.float64)
    return np.hstack([np.ones((A.shape[0], 1)), A])


def _logsumexp(a, axis):
    """Max-shifted ``log(sum(exp(a), axis))``.

    The shift makes the largest term ``exp(0) = 1``, so nothing overflows and the sum is >= 1 unless the
    whole slice is ``-inf``; such a slice is guarded (shift 0) and gives ``-inf`` without a warning.
    """
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):  # log(0) only for an all -inf slice, where -inf is the answer
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def _log_softmax(logits, axis=-1):
    """``logits - logsumexp(logits)`` along ``axis``."""
    return logits - np.expand_dims(_logsumexp(logits, axis), axis)


def _softmax(a, axis):
    """Max-shifted softmax along ``axis``.

    Normalising the shifted exponentials explicitly (rather than ``exp(a - logsumexp(a))``) keeps each slice
    on the simplex to rounding even when ``a`` is of order 1e3, where ``a - logsumexp(a)`` carries absolute
    errors of order 1e-13.
    """
    e = np.exp(a - np.max(a, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_joint(W, V, X, Z, y):
    """``log pi_i(x_n) + log f_i(y_n | x_n)``, shape (n, k)."""
    y = np.asarray(y, dtype=np.intp)
    lf = log_expert(V, X)  # (n, k, K)
    lf_y = np.take_along_axis(lf, y[:, None, None], axis=2)[:, :, 0]  # (n, k): log f_i(y_n | x_n)
    return log_gate(W, Z) + lf_y


def _mlogit_grad_hess(D, T, log_P, c):
    """Gradient and Hessian of a weighted multinomial-logistic objective.

    The objective is ``L(B) = sum_n c_n sum_j T_nj log P_nj`` with ``P_n = softmax(B @ D_n)``, taken with
    respect to the free rows ``B[:m]`` (``m = P.shape[1] - 1``; the last row is the fixed reference).
    Differentiating ``log P_nj = B_j . D_n - logsumexp_l(B_l . D_n)`` gives, with ``s_n = sum_j T_nj``::

        grad_j     = sum_n c_n (T_nj - s_n P_nj) D_n
        Hess_(j,l) = - sum_n c_n s_n P_nj (delta_jl - P_nl) D_n D_n^T

    For targets on the simplex (``s_n = 1``: one-hot labels, responsibilities) these are the formulas of
    MODEL.md section 2.

    Parameters
    ----------
    D : ndarray of shape (n, p)
        Design matrix (first column of ones).
    T : ndarray of shape (n, m + 1)
        Non-negative targets (soft labels).
    log_P : ndarray of shape (n, m + 1)
        Log-probabilities of the model at the current parameters.
    c : ndarray of shape (n,)
        Per-sample weights.

    Returns
    -------
    g : ndarray of shape (m * p,)
    H : ndarray of shape (m * p, m * p)
        Flattened row-major (row j of B, then the p design columns).
    """
    n, p = D.shape
    m = log_P.shape[1] - 1
    P = np.exp(log_P[:, :m])  # (n, m) probabilities of the free rows
    s = T.sum(axis=1)
    g = ((c[:, None] * (T[:, :m] - s[:, None] * P)).T @ D).ravel()

    cs = c * s
    # Diagonal blocks  sum_n cs_n P_nj D_n D_n^T  (a batched "X' diag(v) X" sandwich) ...
    CP = (cs[:, None] * P).T  # (m, n)
    diag_blocks = np.matmul(CP[:, None, :] * D.T[None, :, :], D)  # (m, p, p)
    # ... minus the rank-structured part  sum_n cs_n (P_n kron D_n)(P_n kron D_n)^T.
    PD = (P[:, :, None] * D[:, None, :]).reshape(n, m * p)
    H = (cs[:, None] * PD).T @ PD
    for j in range(m):
        H[j * p:(j + 1) * p, j * p:(j + 1) * p] -= diag_blocks[j]
    return g, H  # H = -(blockdiag - outer) is negative semidefinite when cs >= 0


# ----------------------------------------------------------------------------------------------------------
# Probabilities and log-likelihood
# ----------------------------------------------------------------------------------------------------------
def log_gate(W, Z):
    """Log gating probabilities ``log pi_i(x_n)``.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
        Packed gating parameters ``[beta0 | beta1]``.
    Z : ndarray of shape (n, d_gate)
        Gating input ``M(X)``.

    Returns
    -------
    ndarray of shape (n, k)
        Rows satisfy ``logsumexp(row) = 0``.
    """
    W = np.asarray(W, dtype=np.float64)
    logits = W[:, 0] + np.asarray(Z, dtype=np.float64) @ W[:, 1:].T  # (n, k)
    return _log_softmax(logits, axis=1)


def log_expert(V, X):
    """Log class probabilities of every expert, ``log f_i(s | x_n)``.

    Parameters
    ----------
    V : ndarray of shape (k, K, 1 + d)
        Packed expert parameters ``[b | a]``.
    X : ndarray of shape (n, d)
        Expert input.

    Returns
    -------
    ndarray of shape (n, k, K)
        ``logsumexp`` over the last axis is 0.
    """
    V = np.asarray(V, dtype=np.float64)
    k, K, q = V.shape
    X = np.asarray(X, dtype=np.float64)
    # One (n, d) @ (d, k*K) product for all experts and classes at once.
    logits = (X @ V[:, :, 1:].reshape(k * K, q - 1).T).reshape(-1, k, K) + V[:, :, 0]
    return _log_softmax(logits, axis=2)


def loglik(W, V, X, Z, y, w=None):
    """Weighted log-likelihood ``sum_n w_n log sum_i pi_i(x_n) f_i(y_n | x_n)``.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    V : ndarray of shape (k, K, 1 + d)
    X : ndarray of shape (n, d)
    Z : ndarray of shape (n, d_gate)
    y : ndarray of shape (n,)
        Integer labels in ``0..K-1``.
    w : ndarray of shape (n,), optional
        Sample weights (default ones).

    Returns
    -------
    float
    """
    log_p = _logsumexp(_log_joint(W, V, X, Z, y), axis=1)
    return float(np.dot(_weights(w, log_p.shape[0]), log_p))


def responsibilities(W, V, X, Z, y):
    """E-step: posterior expert probabilities ``tau_ni = pi_i f_i(y_n) / sum_j pi_j f_j(y_n)``.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    V : ndarray of shape (k, K, 1 + d)
    X : ndarray of shape (n, d)
    Z : ndarray of shape (n, d_gate)
    y : ndarray of shape (n,)

    Returns
    -------
    ndarray of shape (n, k)
        Non-negative rows summing to 1.
    """
    return _softmax(_log_joint(W, V, X, Z, y), axis=1)


def predict_proba(W, V, X, Z):
    """Class probabilities of the mixture, ``p(s | x_n) = sum_i pi_i(x_n) f_i(s | x_n)``.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    V : ndarray of shape (k, K, 1 + d)
    X : ndarray of shape (n, d)
    Z : ndarray of shape (n, d_gate)

    Returns
    -------
    ndarray of shape (n, K)
        Rows sum to 1.
    """
    log_p = _logsumexp(log_gate(W, Z)[:, :, None] + log_expert(V, X), axis=1)
    return np.exp(log_p)


# ----------------------------------------------------------------------------------------------------------
# M-step objectives, gradients and Hessians
# ----------------------------------------------------------------------------------------------------------
def q_gate(W, Z, tau, w=None):
    """Gating M-step objective ``Q_g(W) = sum_n w_n sum_i tau_ni log pi_i(x_n)``.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    Z : ndarray of shape (n, d_gate)
    tau : ndarray of shape (n, k)
        Responsibilities (soft labels).
    w : ndarray of shape (n,), optional

    Returns
    -------
    float
    """
    lg = log_gate(W, Z)
    return float(np.dot(_weights(w, lg.shape[0]), np.sum(tau * lg, axis=1)))


def q_expert(V_i, X, y, tau_i, w=None):
    """Expert M-step objective ``Q_i(V_i) = sum_n w_n tau_ni log f_i(y_n | x_n)``.

    Parameters
    ----------
    V_i : ndarray of shape (K, 1 + d)
        Packed parameters ``[b | a]`` of one expert.
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    tau_i : ndarray of shape (n,)
        Responsibilities of this expert.
    w : ndarray of shape (n,), optional

    Returns
    -------
    float
    """
    y = np.asarray(y, dtype=np.intp)
    lf = log_expert(np.asarray(V_i)[None], X)[:, 0, :]  # (n, K)
    lf_y = np.take_along_axis(lf, y[:, None], axis=1)[:, 0]
    return float(np.dot(_weights(w, lf.shape[0]) * tau_i, lf_y))


def gate_grad_hess(W, Z, tau, w=None):
    """Gradient and Hessian of :func:`q_gate` with respect to the free gating parameters ``W[:k-1]``.

    With ``z_n = [1, Z_n]`` and responsibilities on the simplex (MODEL.md section 2)::

        g_i  = sum_n w_n (tau_ni - pi_ni) z_n
        H_ij = - sum_n w_n pi_ni (delta_ij - pi_nj) z_n z_n^T

    For arbitrary non-negative ``tau`` the exact derivative of ``Q_g`` is returned instead, i.e. ``pi_ni`` is
    multiplied by ``sum_j tau_nj``; the two agree whenever rows of ``tau`` sum to 1.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    Z : ndarray of shape (n, d_gate)
    tau : ndarray of shape (n, k)
    w : ndarray of shape (n,), optional

    Returns
    -------
    g : ndarray of shape ((k-1) * (1 + d_gate),)
        Flattened row-major: expert-major, then ``[intercept, beta1...]``.
    H : ndarray of shape ((k-1) * (1 + d_gate), (k-1) * (1 + d_gate))
        The true (negative semidefinite) Hessian.
    """
    tau = np.asarray(tau, dtype=np.float64)
    return _mlogit_grad_hess(_design(Z), tau, log_gate(W, Z), _weights(w, tau.shape[0]))


def expert_grad_hess(V_i, X, y, tau_i, w=None):
    """Gradient and Hessian of :func:`q_expert` with respect to the free parameters ``V_i[:K-1]``.

    With ``u_n = [1, X_n]`` and ``p_ns = f_i(s | x_n)`` (MODEL.md section 2)::

        g_s  = sum_n w_n tau_ni (1[y_n = s] - p_ns) u_n
        H_st = - sum_n w_n tau_ni p_ns (delta_st - p_nt) u_n u_n^T

    Parameters
    ----------
    V_i : ndarray of shape (K, 1 + d)
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,)
    tau_i : ndarray of shape (n,)
    w : ndarray of shape (n,), optional

    Returns
    -------
    g : ndarray of shape ((K-1) * (1 + d),)
        Flattened row-major: class-major, then ``[intercept, a...]``.
    H : ndarray of shape ((K-1) * (1 + d), (K-1) * (1 + d))
        The true (negative semidefinite) Hessian.
    """
    V_i = np.asarray(V_i, dtype=np.float64)
    y = np.asarray(y, dtype=np.intp)
    onehot = np.eye(V_i.shape[0])[y]  # (n, K)
    log_f = log_expert(V_i[None], X)[:, 0, :]
    c = _weights(w, y.shape[0]) * np.asarray(tau_i, dtype=np.float64)
    return _mlogit_grad_hess(_design(X), onehot, log_f, c)


# ----------------------------------------------------------------------------------------------------------
# Newton steps and EM
# ----------------------------------------------------------------------------------------------------------
def newton_direction(g, H, ridge=1e-10, max_tries=30):
    """Newton ascent direction ``delta = (-H)^{-1} g`` via a Cholesky factorisation of ``-H``.

    When ``-H`` is not (numerically) positive definite -- an empty expert, quasi-separated classes, an
    indefinite Hessian -- a ridge ``lam * I`` is added and the factorisation retried, with
    ``lam = ridge * max(1, max |diag H|)`` multiplied by 10 on every failure.

    Parameters
    ----------
    g : ndarray of shape (p,)
        Gradient of the objective being maximised.
    H : ndarray of shape (p, p)
        Its Hessian (negative semidefinite for a concave objective).
    ridge : float, default=1e-10
        Initial ridge, relative to the largest diagonal entry of ``H``.
    max_tries : int, default=30
        Number of ridge increases before giving up.

    Returns
    -------
    ndarray of shape (p,)
        The step to *add* to the parameters. If every factorisation fails, the (scaled) gradient.
    """
    g = np.asarray(g, dtype=np.float64)
    A = -np.asarray(H, dtype=np.float64)
    if g.size == 0:
        return g.copy()
    scale = max(1.0, float(np.max(np.abs(np.diag(A)))))
    lam = 0.0
    for _ in range(max_tries + 1):
        try:
            delta = cho_solve(cho_factor(A + lam * np.eye(A.shape[0])), g)
            if np.all(np.isfinite(delta)):
                return delta
        except LinAlgError:
            pass
        lam = ridge * scale if lam == 0.0 else 10.0 * lam
    return g / scale  # gradient ascent fallback; the caller's step halving keeps it safe


def _ascend(q, theta, g, H, max_halvings):
    """One Newton step on a concave objective ``q(theta)`` with step halving.

    Returns the first of ``theta + t * delta`` (``t = 1, 1/2, ...``, at most ``max_halvings`` halvings) that
    strictly increases ``q``, or ``theta`` itself when none does.
    """
    if theta.size == 0:
        return theta
    delta = newton_direction(g, H)
    q_old = q(theta)
    t = 1.0
    for _ in range(max_halvings + 1):
        theta_new = theta + t * delta
        q_new = q(theta_new)
        if np.isfinite(q_new) and q_new > q_old:
            return theta_new
        t *= 0.5
    return theta


def em_step(W, V, X, Z, y, w=None, max_halvings=30):
    """One generalised-EM iteration.

    E-step at ``(W, V)``, then one Newton step (with step halving, accepted only if it increases its Q
    function) for the gating block and for each expert block. Every accepted step increases the sum of the
    Q functions, hence the log-likelihood never decreases.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    V : ndarray of shape (k, K, 1 + d)
    X : ndarray of shape (n, d)
    Z : ndarray of shape (n, d_gate)
    y : ndarray of shape (n,)
    w : ndarray of shape (n,), optional
    max_halvings : int, default=30
        After this many halvings without an increase, the block keeps its old value.

    Returns
    -------
    W_new : ndarray of shape (k, 1 + d_gate)
    V_new : ndarray of shape (k, K, 1 + d)
    loglik_old : float
        Log-likelihood at the *input* parameters (a by-product of the E-step).
    """
    W = np.array(W, dtype=np.float64)
    V = np.array(V, dtype=np.float64)
    k, p = W.shape
    K, q = V.shape[1:]
    wt = _weights(w, np.shape(y)[0])

    # E-step (also gives the log-likelihood at the old parameters).
    lj = _log_joint(W, V, X, Z, y)
    log_p = _logsumexp(lj, axis=1)
    ll_old = float(np.dot(wt, log_p))
    tau = _softmax(lj, axis=1)

    # Gating block: free rows W[:k-1].
    def q_g(theta):
        W_try = W.copy()
        W_try[:k - 1] = theta.reshape(k - 1, p)
        return q_gate(W_try, Z, tau, wt)

    g, H = gate_grad_hess(W, Z, tau, wt)
    W_new = W.copy()
    W_new[:k - 1] = _ascend(q_g, W[:k - 1].ravel(), g, H, max_halvings).reshape(k - 1, p)

    # Expert blocks: free classes V[i, :K-1] of each expert, independently.
    V_new = V.copy()
    for i in range(k):
        def q_i(theta, i=i):
            V_try = V[i].copy()
            V_try[:K - 1] = theta.reshape(K - 1, q)
            return q_expert(V_try, X, y, tau[:, i], wt)

        g, H = expert_grad_hess(V[i], X, y, tau[:, i], wt)
        V_new[i, :K - 1] = _ascend(q_i, V[i, :K - 1].ravel(), g, H, max_halvings).reshape(K - 1, q)
    return W_new, V_new, ll_old


def em_fit(W, V, X, Z, y, w=None, tol=1e-8, max_iter=1000, aitken=False):
    """Run :func:`em_step` until the relative log-likelihood change drops below ``tol``.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
        Initial gating parameters.
    V : ndarray of shape (k, K, 1 + d)
        Initial expert parameters.
    X, Z, y, w
        Data as in :func:`loglik`.
    tol : float, default=1e-8
        Stop when ``|ll_t - ll_{t-1}| <= tol * |ll_{t-1}|``.
    max_iter : int, default=1000
        Maximum number of EM steps.
    aitken : bool, default=False
        Also require Aitken's estimate of what is left to gain, ``c_t r / (1 - r)`` with
        ``c_t = ll_t - ll_{t-1}`` and ``r = c_t / c_{t-1}``, to be at most ``tol * |ll_t|`` (the rule of
        ``fastmoe.fit``; a change that is not positive stops at once).

    Returns
    -------
    W : ndarray of shape (k, 1 + d_gate)
    V : ndarray of shape (k, K, 1 + d)
    loglik : float
        Log-likelihood at the returned parameters.
    n_iter : int
        Number of EM steps applied to the returned parameters.
    converged : bool
    history : ndarray of shape (n_iter + 1,)
        ``history[t]`` is the log-likelihood after ``t`` steps (``history[-1] == loglik``).
    """
    W = np.array(W, dtype=np.float64)
    V = np.array(V, dtype=np.float64)
    history = []
    converged = False
    for t in range(max_iter + 1):
        # (W, V) have had t steps applied. em_step returns their log-likelihood as a by-product of its
        # E-step; after the last allowed step only the log-likelihood is needed.
        if t < max_iter:
            W_new, V_new, ll = em_step(W, V, X, Z, y, w)
        else:
            ll = loglik(W, V, X, Z, y, w)
        history.append(ll)
        if t > 0 and not aitken and abs(ll - history[-2]) <= tol * abs(history[-2]):
            converged = True
            break
        if t > 0 and aitken:
            c = ll - history[-2]
            c_prev = history[-2] - history[-3] if t > 1 else np.inf
            r = c / c_prev if 0 < c_prev < np.inf else np.inf  # a ratio needs two changes
            if c <= 0 or (c <= tol * abs(ll) and r < 1 and c * r / (1 - r) <= tol * abs(ll)):
                converged = True
                break
        if t < max_iter:
            W, V = W_new, V_new
    return W, V, history[-1], len(history) - 1, converged, np.asarray(history)


# ----------------------------------------------------------------------------------------------------------
# Marginal log-likelihood: gradient and Hessian in all free parameters
# ----------------------------------------------------------------------------------------------------------
def pack_free(W, V):
    """Free parameters as one vector: ``W[:k-1]`` then ``V[0, :K-1]``, ..., ``V[k-1, :K-1]`` (row-major).

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    V : ndarray of shape (k, K, 1 + d)

    Returns
    -------
    ndarray of shape ((k-1)(1+d_gate) + k(K-1)(1+d),)
    """
    W = np.asarray(W, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    return np.concatenate([W[:-1].ravel(), V[:, :-1].ravel()])


def unpack_free(theta, W, V):
    """Inverse of :func:`pack_free`: copies of ``W`` and ``V`` with their free entries set from ``theta``.

    The fixed entries (``W[k-1]`` and ``V[:, K-1]``) are taken from ``W`` and ``V``.
    """
    W = np.array(W, dtype=np.float64)
    V = np.array(V, dtype=np.float64)
    n_gate = W[:-1].size
    W[:-1] = np.reshape(theta[:n_gate], W[:-1].shape)
    V[:, :-1] = np.reshape(theta[n_gate:], V[:, :-1].shape)
    return W, V


def ridge(W, V, l2, form="centred"):
    """The ridge on the slopes as the docs state it, summed over pairs of rows (not through a mean).

    Per block (the gating's k rows of slopes ``W[:, 1:]``, each expert's K rows ``V[i, :, 1:]``, the
    last row 0): ``l2 / 2 * ||v_1||^2`` for two rows and, for the reference form, ``l2 / 2 * sum_s
    ||v_s||^2``; else (``"centred"``, LogisticRegression's multinomial ridge on sum-to-zero slopes)
    ``l2 / (2 m) * sum_{s<t} ||v_s - v_t||^2``.
    """

    def block(slopes):
        m = slopes.shape[0]
        if m < 2:
            return 0.0
        if form == "reference" or m == 2:
            return 0.5 * l2 * np.sum(slopes[: m - 1] ** 2)
        return l2 / (2 * m) * sum(np.sum((slopes[s] - slopes[t]) ** 2) for s in range(m) for t in range(s + 1, m))

    return block(np.asarray(W)[:, 1:]) + sum(block(np.asarray(V)[i, :, 1:]) for i in range(len(V)))


def ridge_grad_hess(W, V, l2, form="centred", h=1e-3):
    """Gradient and Hessian of :func:`ridge` in the free parameters (order of :func:`pack_free`), by
    central differences: exact up to rounding, the ridge being quadratic."""
    theta = pack_free(W, V)
    eye = np.eye(theta.size)

    def value(t):
        return ridge(*unpack_free(t, W, V), l2, form)

    grad = np.array([(value(theta + h * e) - value(theta - h * e)) / (2 * h) for e in eye])
    hess = np.array([[(value(theta + h * (a + b)) - value(theta + h * (a - b)) - value(theta - h * (a - b))
                       + value(theta - h * (a + b))) / (4 * h * h) for b in eye] for a in eye])
    return grad, hess


def full_loglik_grad_hess(W, V, X, Z, y, w=None):
    """Gradient and Hessian of the marginal log-likelihood in all free parameters (order of :func:`pack_free`).

    Write ``l_ni = log pi_i(x_n) + log f_i(y_n | x_n)`` so that ``log p_n = logsumexp_i l_ni`` and
    ``tau_ni = softmax_i(l_ni)``. Then, per sample::

        grad log p_n = sum_i tau_ni grad l_ni
        Hess log p_n = sum_i tau_ni Hess l_ni + sum_i tau_ni (grad l_ni - grad log p_n)(grad l_ni - grad log p_n)^T

    where ``grad l_ni`` has gating part ``(delta_ij - pi_nj) z_n`` (j < k) and, in expert ``i``'s block only,
    ``(1[y_n = s] - f_i(s | x_n)) u_n`` (s < K-1). The first Hessian term is block diagonal and equals the
    Hessians of :func:`gate_grad_hess` and :func:`expert_grad_hess` at the posterior ``tau``; the second
    (the posterior covariance of ``grad l_ni``) couples all blocks. The Hessian is symmetric but, unlike the
    Q-function Hessians, not negative semidefinite in general.

    Parameters
    ----------
    W : ndarray of shape (k, 1 + d_gate)
    V : ndarray of shape (k, K, 1 + d)
    X, Z, y, w
        Data as in :func:`loglik`.

    Returns
    -------
    g : ndarray of shape (P,)
    H : ndarray of shape (P, P)
        ``P = (k-1)(1+d_gate) + k(K-1)(1+d)``.
    """
    W = np.asarray(W, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    y = np.asarray(y, dtype=np.intp)
    k, p = W.shape
    K, q = V.shape[1:]
    n = y.shape[0]
    wt = _weights(w, n)
    Zd, Ud = _design(Z), _design(X)
    n_gate, n_exp = (k - 1) * p, (K - 1) * q
    P_tot = n_gate + k * n_exp

    lg = log_gate(W, Z)  # (n, k)
    lf = log_expert(V, X)  # (n, k, K)
    lj = lg + np.take_along_axis(lf, y[:, None, None], axis=2)[:, :, 0]
    tau = _softmax(lj, axis=1)  # (n, k)

    # Per-sample, per-expert gradients of l_ni: G[n, i, :] (the reference may form such arrays).
    G = np.zeros((n, k, P_tot))
    pi = np.exp(lg)
    dgate = np.eye(k)[None, :, :k - 1] - pi[:, None, :k - 1]  # (n, i, j): delta_ij - pi_nj
    G[:, :, :n_gate] = (dgate[:, :, :, None] * Zd[:, None, None, :]).reshape(n, k, n_gate)
    onehot = np.eye(K)[y]  # (n, K)
    for i in range(k):
        r = onehot[:, :K - 1] - np.exp(lf[:, i, :K - 1])  # (n, K-1)
        off = n_gate + i * n_exp
        G[:, i, off:off + n_exp] = (r[:, :, None] * Ud[:, None, :]).reshape(n, n_exp)

    gbar = np.einsum("ni,nip->np", tau, G)  # per-sample gradient of log p_n
    g = wt @ gbar

    # Posterior covariance of grad l_ni, weighted by w_n, computed from centred gradients (stable).
    Gc = G - gbar[:, None, :]
    c = (wt[:, None] * tau).reshape(n * k)
    Gc = Gc.reshape(n * k, P_tot)
    H = (c[:, None] * Gc).T @ Gc

    # Block-diagonal expected Hessian of l_ni.
    _, H_g = gate_grad_hess(W, Z, tau, wt)
    H[:n_gate, :n_gate] += H_g
    for i in range(k):
        _, H_i = expert_grad_hess(V[i], X, y, tau[:, i], wt)
        off = n_gate + i * n_exp
        H[off:off + n_exp, off:off + n_exp] += H_i
    return g, H
