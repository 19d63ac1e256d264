"""The blockwise Newton M-step: directions by Cholesky with a ridge fallback, and step halving on Q.

The M-step splits into k + 1 concave problems (MODEL.md section 2): the gating block ``W[:k-1]`` and
one block ``V[i, :K-1]`` per expert. Each gets its own Newton direction ``d = (-H)^{-1} g`` from the
fused pass (``Problem.newton_pass``), and its step is halved until its own Q function increases.
:func:`m_step_from_responsibilities` iterates such steps to fit fixed responsibilities (the starts).

In a box (``fit(bounds=...)``) each block takes a *projected* Newton step (Bertsekas, "Projected Newton
methods for optimization problems with simple constraints", SIAM J. Control Optim. 20, 1982): the
coordinates held by their bound (on it, the gradient pointing out) stay put, the Newton system is solved
on the others, and every trial point is projected back into the box. Projection is what the halving
then tries, so each accepted block step still increases its Q: the EM objective never decreases.
"""

from __future__ import annotations

import numpy as np

# Ridges tried, relative to the largest diagonal entry, when -H is not numerically positive definite
# (an expert or class that no sample supports, perfectly collinear features, ...).
_RIDGES = (0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0)
# Halvings of a block's step before the block is left where it was for this iteration.
MAX_HALVINGS = 40


def solve_pd(A, g):
    """Solve ``A d = g`` for symmetric positive semi-definite ``A`` by Cholesky, stacked over blocks.

    Parameters
    ----------
    A : ndarray of shape (n_blocks, p, p)
    g : ndarray of shape (n_blocks, p)

    Returns
    -------
    d : ndarray of shape (n_blocks, p)
        Newton directions; a block whose matrix stays indefinite (or non-finite) under every ridge,
        or whose solution is not finite, gets a zero direction.
    unsolved : bool ndarray of shape (n_blocks,)
        The blocks given a zero direction for that reason while their gradient is not zero: their
        quadratic model broke down (as where every probability saturates and the Hessian underflows
        to 0 while the gradient does not), so their zero step says nothing about a fixed point.
    """
    from scipy.linalg.lapack import dpotrf, dpotrs  # on first use: keeps ``import fastmoe`` light

    d = np.zeros_like(g)
    unsolved = np.zeros(A.shape[0], dtype=bool)
    for b in range(A.shape[0]):
        if not g[b].any():  # nothing to solve: the direction is 0 whatever A is
            continue
        # LAPACK directly: the blocks are small, and numpy.linalg's per-call overhead (tens of
        # microseconds) would rival the kernel pass on small data sets.
        factor, info = dpotrf(A[b], lower=True, clean=False)
        if info != 0:
            factor = _cholesky_with_ridge(A[b])
            if factor is None:
                unsolved[b] = True
                continue
        d[b], info = dpotrs(factor, g[b], lower=True)
    infinite = ~np.isfinite(d).all(axis=1)
    d[infinite] = 0.0
    return d, unsolved | infinite


def _cholesky_with_ridge(A):
    """Lower Cholesky factor of ``A + ridge * scale * I`` for the smallest listed ridge that works
    (``scale`` = largest diagonal entry), or None when ``A`` is not finite or no ridge helps (then the
    block does not move)."""
    from scipy.linalg.lapack import dpotrf

    if not np.isfinite(A).all():
        return None
    scale = max(float(np.max(np.abs(np.diag(A)))), np.finfo(float).tiny)
    for ridge in _RIDGES:
        factor, info = dpotrf(A + (ridge * scale) * np.eye(A.shape[0]), lower=True, clean=False)
        if info == 0:
            return factor
    return None


def _box_directions(A, g, theta, limit, penalty):
    """Projected Newton directions of stacked blocks in a box (see the module docstring).

    Coordinates held by their bound get a zero direction: their rows and columns of ``A`` are replaced
    by the identity and their gradient by 0, so the blocks still stack for one Cholesky each. A free
    coordinate on its bound whose Newton component points out of the box is clipped by every projected
    trial, so its component is zeroed here; what is left is an ascent direction for small steps unless
    its slope ``g.d`` is not positive (a Newton step coupled to the held coordinates), and then the
    block falls back to the diagonally scaled gradient, whose slope is positive away from a KKT point.
    Either way step halving finds a Q increase, which keeps the EM objective monotone.
    """
    side = penalty.at_bound(theta, limit)
    held = side * g > 0.0
    diag = np.abs(np.diagonal(A, axis1=1, axis2=2))
    if held.any():
        keep = (~held).astype(float)
        A = A * keep[:, :, None] * keep[:, None, :]
        idx = np.arange(A.shape[1])
        A[:, idx, idx] = np.where(held, 1.0, A[:, idx, idx])
        g = np.where(held, 0.0, g)
    d, unsolved = solve_pd(A, g)
    d = np.where(side * d > 0.0, 0.0, d)
    slope = np.sum(g * d, axis=1)
    fallback = (slope <= 0.0) & (np.abs(g).max(axis=1) > 0.0)
    if fallback.any():
        floor = np.finfo(float).tiny + 1e-12 * diag.max(axis=1, keepdims=True)
        scaled = g / np.maximum(diag, floor)
        scaled = np.where(side * scaled > 0.0, 0.0, scaled)
        d[fallback] = scaled[fallback]
    # A block without a solution has slope 0 and takes the fallback, a step the halving judges (not
    # always a finite one: where the Hessian is 0 its scaled gradient is infinite, and the projection
    # or the halving deals with it); so in a box the flag stays set only for a non-finite gradient.
    return d, unsolved & ~fallback


def _solve(A, g, theta, limit, penalty):
    """Newton directions of stacked blocks, projected ones when there is a box, and which blocks'
    systems could not be solved (:func:`solve_pd`)."""
    if limit is None:
        return solve_pd(A, g)
    return _box_directions(A, g, theta, limit, penalty)


def newton_directions(result, W, V, penalty, active):
    """Newton directions of the (penalised) gating and expert Q functions at (W, V).

    Parameters
    ----------
    result : PassResult of the fused pass at (W, V).
    penalty : Penalty
        The ridge on the slopes (intercepts are not penalised; ``_penalty``) and the box, if any: then
        the directions are projected Newton directions (:func:`_box_directions`).
    active : bool array (k,)
        Experts to update; an empty expert (no responsibility mass) keeps its parameters, its gating
        row included.

    Returns
    -------
    dW, dV : arrays shaped like W and V (zero on the reference rows).
    unsolved : bool
        Whether an updated block's Newton system could not be solved although its gradient is not
        zero (:func:`solve_pd`, any nonzero gradient: in an over-fitted model a block whose Hessian
        and gradient both underflow, near 1e-154, is flagged too): that block stays put, and its
        standing still is no sign of a fixed point. In a box such a block takes the scaled-gradient
        fallback of :func:`_box_directions` instead, and is not flagged.
    """
    k, K = V.shape[0], V.shape[1]
    dW = np.zeros_like(W)
    dV = np.zeros_like(V)
    unsolved = False
    boxed = penalty.bounds is not None
    rows = np.flatnonzero(active[: k - 1])
    if rows.size == k - 1 and k > 1:
        theta = W[: k - 1].ravel()
        g = result.grad_gate - penalty.gate_gradient(theta)
        A = result.neg_hess_gate + penalty.gate_hessian
        limit = penalty.limit_W[: k - 1].ravel()[None] if boxed else None
        d, failed = _solve(A[None], g[None], theta[None], limit, penalty)
        dW[: k - 1] = d[0].reshape(k - 1, -1)
        unsolved |= bool(failed.any())
    elif rows.size:
        # An empty expert's gating row is frozen with the rest of it: its Hessian rows are ~0, and a
        # Newton step on them would fling the row anywhere (and could revive the expert on a handful of
        # points, a degenerate solution). It stays where it is, on the boundary (share 0).
        free = (rows[:, None] * W.shape[1] + np.arange(W.shape[1])).ravel()
        theta = W[rows].ravel()
        # The centred ridge couples the rows: its gradient on these is taken at the whole gating block.
        g = result.grad_gate[free] - penalty.gate_gradient(W[: k - 1].ravel())[free]
        A = result.neg_hess_gate[np.ix_(free, free)] + penalty.gate_hessian[np.ix_(free, free)]
        limit = penalty.limit_W[rows].ravel()[None] if boxed else None
        d, failed = _solve(A[None], g[None], theta[None], limit, penalty)
        dW[rows] = d[0].reshape(rows.size, -1)
        unsolved |= bool(failed.any())
    if active.any():
        theta = V[active, : K - 1].reshape(int(active.sum()), -1)
        g = result.grad_expert[active] - penalty.expert_gradient(theta)
        A = result.neg_hess_expert[active] + penalty.expert_hessian
        limit = penalty.limit_V[active, : K - 1].reshape(theta.shape) if boxed else None
        d, failed = _solve(A, g, theta, limit, penalty)
        dV[active, : K - 1] = d.reshape(int(active.sum()), K - 1, -1)
        unsolved |= bool(failed.any())
    return dW, dV, unsolved


def halve_until_q_increases(problem, W, V, dW, dV, q_old, penalty, resp=None):
    """Step halving per block: shrink each block's step until its own Q function increases.

    Each block's Q depends on that block alone, so one kernel pass evaluates every block's current
    trial at once. A block whose Q has not increased after ``MAX_HALVINGS`` halvings stays at its old
    value. By the EM inequality, a Q increase in every moved block increases the log-likelihood. In a
    box every trial is projected into it (coordinate-wise, so block by block): the halving then
    searches along the projection arc of a projected Newton step.

    Parameters
    ----------
    q_old : (k + 1,) penalised Q values at (W, V).
    penalty : Penalty
        Its per-block values are subtracted from Q.

    Returns
    -------
    W_new, V_new
    """
    k = V.shape[0]
    scale = np.ones(k + 1)
    pending = np.ones(k + 1, dtype=bool)
    pending[0] = k > 1 and bool(dW.any())
    pending[1:] = dV.reshape(k, -1).any(axis=1)
    n_rounds = 0
    while pending.any():
        W_try, V_try = penalty.project(W + scale[0] * dW, V + scale[1:, None, None] * dV)
        q_try = problem.q_values(W, V, W_try, V_try, resp) - penalty.blocks(W_try, V_try)
        n_rounds += 1
        # At a fixed point the comparison is pure rounding.
        improved = q_try >= q_old - problem.slack(q_old)
        pending &= ~improved
        if not pending.any() or n_rounds >= MAX_HALVINGS:
            break
        scale[pending] *= 0.5
    scale[pending] = 0.0
    return penalty.project(W + scale[0] * dW, V + scale[1:, None, None] * dV)


def m_step_from_responsibilities(problem, resp, penalty, max_iter):
    """Fit (W, V) to fixed responsibilities ``resp`` (n, k) by Newton steps on each block's Q.

    Used to turn a partition of the data into starting parameters (``_init``); there a small ridge
    keeps a cluster in which some class never occurs from sending its intercept to -inf.

    Parameters
    ----------
    problem : Problem
    resp : ndarray of shape (n_samples, n_experts)
    penalty : Penalty
    max_iter : int
        Newton steps at most; fewer once the summed Q changes by less than 1e-10 relative.

    Returns
    -------
    W, V : packed parameters (reference conventions).
    """
    k, K = problem.n_experts, problem.n_classes
    W = np.zeros((k, problem.n_gate_features + 1))
    V = np.zeros((k, K, problem.n_features + 1))
    active = np.ones(k, dtype=bool)
    q_prev = -np.inf
    for _ in range(max_iter):
        result = problem.newton_pass(W, V, resp)
        q = problem.q_values(W, V, W, V, resp) - penalty.blocks(W, V)
        if abs(q.sum() - q_prev) <= 1e-10 * abs(q.sum()):
            break
        q_prev = q.sum()
        dW, dV, _ = newton_directions(result, W, V, penalty, active)
        W, V = halve_until_q_increases(problem, W, V, dW, dV, q, penalty, resp)
    return W, V
