"""The generalised EM loop and the data-driven initialisations.

Each iteration costs one fused kernel pass (MODEL.md section 2). At the current parameters the pass
returns the log-likelihood, the responsibilities' sufficient statistics and every block's gradient and
negative Hessian; each block then takes one Newton step. The *next* pass, at the new parameters,
returns the new log-likelihood for free: if it did not decrease the step is kept, otherwise each
block's step is halved until its own Q function increases (``halve_until_q_increases``), which by
the EM inequality makes the log-likelihood increase. So the log-likelihood (penalised, when ``l2 > 0``)
never decreases, and the common case costs a single pass per iteration.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._engine import Problem
from ._newton import halve_until_q_increases, newton_directions
from ._trust_region import QuadraticModel
from .exceptions import FitWarning

# A free logit whose bound over the data's bounding box exceeds this (odds beyond e^150) means the
# coefficients are running off to infinity: quasi-separation, where the MLE does not exist.
DIVERGENCE_LOGIT = 150.0
# A mean log-likelihood above -1e-8 per sample means every label is predicted with certainty.
SATURATED_LOGLIK = 1e-8
# An expert whose responsibility mass is below this fraction of the total weight has no data to fit.
EMPTY_EXPERT_FRACTION = 1e-8
# Log-likelihood drops smaller than this (relative) are rounding in the summation, not a real decrease.
ROUNDING_SLACK = 1e-12
# Initialisation: M-steps are fitted on at most this many samples, with this softening of hard labels.
INIT_SUBSAMPLE = 20_000
INIT_LABEL_SMOOTHING = 0.1
INIT_L2 = 1.0
INIT_NEWTON_ITER = 25
# Newton on the log-likelihood is tried once EM's relative change is below NEWTON_SWITCH (and after at
# least NEWTON_MIN_EM_ITER EM iterations); after a failed try, EM runs NEWTON_RETRY iterations first.
NEWTON_SWITCH = 1e-3
# Trust-region steps where the Hessian is not negative definite only once EM has settled this far:
# EM crawling along a ridge or near a saddle.
NEWTON_INDEFINITE_SWITCH = 1e-6
# A trust-region trial is accepted when it gains this share of the model's predicted gain; the
# region shrinks at most this many times per Newton step before the phase gives up.
TRUST_ACCEPT = 1e-4
TRUST_MAX_SHRINK = 30
# A Newton decrement this small relative to the stopping threshold certifies convergence on its own.
NEGLIGIBLE_DECREMENT = 1e-3
NEWTON_MIN_EM_ITER = 5
NEWTON_RETRY = 10


@dataclass
class EMState:
    """What the loop hands back to ``fit``."""

    W: np.ndarray
    V: np.ndarray
    objective: float
    loglik: float
    n_iter: int
    converged: bool
    diverged: bool
    stopped: bool
    empty_experts: tuple
    history: list = field(default_factory=list)
    n_newton: int = 0


class _Penalty:
    """``l2 / 2 * ||slopes||^2`` per M-step block: gating first, then one entry per expert."""

    def __init__(self, l2, n_experts):
        self.l2 = float(l2)
        self.n_experts = n_experts

    def blocks(self, W, V):
        out = np.zeros(self.n_experts + 1)
        if self.l2 > 0.0:
            out[0] = 0.5 * self.l2 * np.sum(W[:, 1:] ** 2)
            out[1:] = 0.5 * self.l2 * np.sum(V[:, :, 1:] ** 2, axis=(1, 2))
        return out

    def __call__(self, W, V):
        return self.blocks(W, V)


def _slope_masks(problem):
    k, K = problem.n_experts, problem.n_classes
    gate = np.ones((k - 1, problem.n_gate_features + 1))
    gate[:, 0] = 0.0
    expert = np.ones((K - 1, problem.n_features + 1))
    expert[:, 0] = 0.0
    return gate.ravel(), expert.ravel()


def _abs_max(X):
    # max |x| per column without the n x d temporary that np.abs(X) would allocate
    return np.maximum(X.max(axis=0), -X.min(axis=0))


def logit_bound(W, V, x_scale, z_scale):
    """Largest possible |free logit| over the box ``|x_j| <= x_scale_j``: a cheap divergence gauge."""
    gate = np.abs(W[:, 0]) + np.abs(W[:, 1:]) @ z_scale
    expert = np.abs(V[:, :, 0]) + np.abs(V[:, :, 1:]) @ x_scale
    return float(max(gate.max(), expert.max()))


def _free_vector(W, V):
    k, K = V.shape[0], V.shape[1]
    return np.concatenate([W[: k - 1].ravel(), V[:, : K - 1].ravel()])


def _from_free_vector(theta, W, V):
    k, K = V.shape[0], V.shape[1]
    W, V = W.copy(), V.copy()
    n_gate = W[: k - 1].size
    W[: k - 1] = theta[:n_gate].reshape(W[: k - 1].shape)
    V[:, : K - 1] = theta[n_gate:].reshape(V[:, : K - 1].shape)
    return W, V


def newton_on_loglik(problem, W, V, objective, penalty, slope_mask, tol, max_steps, record, allow_indefinite):
    """Trust-region Newton steps on the (penalised) log-likelihood itself, with its exact Hessian.

    EM converges linearly, often slowly; near a maximum where the log-likelihood is locally concave,
    Newton converges quadratically. Each step takes one ``loglik_hessian_pass`` and solves the
    quadratic model inside a trust region (``QuadraticModel``); trial points cost one cheap E-step
    pass each, and the region shrinks until a trial gains a fair share of what the model predicted.
    Where the Hessian is not negative definite the phase goes on only when ``allow_indefinite`` is set
    (EM has settled): an early try must not carry the fit away from the maximum EM is heading for.

    The phase *certifies* convergence (``newton_settled``): it stops as converged only at a point
    where the Hessian is negative definite and the Newton decrement, extrapolated over the steps still
    to come, is at most ``tol * |objective|``. A small change alone proves nothing: along a ridge
    every step is small.
    It gives up, leaving the parameters where its last accepted step put them, when no trial gains:
    the caller then goes back to EM.

    Returns
    -------
    W, V, objective, n_steps, converged
    """
    l2 = penalty.l2
    radius = None
    n_steps = 0
    decrements = []
    while n_steps < max_steps:
        _, grad, hess = problem.full_hessian(W, V)
        theta = _free_vector(W, V)
        grad = grad - l2 * slope_mask * theta
        A = -hess + np.diag(l2 * slope_mask)
        if not (np.isfinite(A).all() and np.isfinite(grad).all()):
            return W, V, objective, n_steps, False
        model = QuadraticModel(grad, A)
        if not model.concave and not allow_indefinite:
            return W, V, objective, n_steps, False
        decrements.append(model.decrement())
        if newton_settled(decrements, tol * abs(objective)):
            W_try, V_try = _from_free_vector(theta + model.step(np.inf)[0], W, V)
            objective_try = problem.loglik(W_try, V_try) - penalty(W_try, V_try).sum()
            if objective_try > objective:
                n_steps += 1
                W, V, change, objective = W_try, V_try, objective_try - objective, objective_try
                if record(W, V, objective, change):
                    return W, V, objective, n_steps, False
            return W, V, objective, n_steps, True
        if radius is None:
            radius = model.newton_length() if model.concave else 1.0
        slack = ROUNDING_SLACK * abs(objective) + problem.rounding_floor
        for _ in range(TRUST_MAX_SHRINK):
            step, predicted, length = model.step(radius)
            W_try, V_try = _from_free_vector(theta + step, W, V)
            objective_try = problem.loglik(W_try, V_try) - penalty(W_try, V_try).sum()
            gain = objective_try - objective
            ratio = gain / predicted if predicted > 0 else 0.0
            if ratio < 0.25:
                radius = 0.25 * length
            elif ratio > 0.75 and length >= 0.99 * radius:
                radius = 2.0 * radius
            if gain > slack and ratio > TRUST_ACCEPT:  # also rejects NaN
                break
        else:
            return W, V, objective, n_steps, False
        n_steps += 1
        W, V, objective = W_try, V_try, objective_try
        if record(W, V, objective, gain):
            return W, V, objective, n_steps, False
    return W, V, objective, n_steps, False


def newton_settled(decrements, threshold):
    """Whether Newton steps are within ``threshold`` of the maximum, given the decrements so far.

    The Newton decrement (the quadratic model's maximal gain) estimates what is left only where the
    model holds over the whole way. Near a degenerate maximum it does not: the steps zig-zag along a
    curved, nearly flat valley, each gaining about the same small amount while many remain. Quadratic
    convergence shows as decrements that collapse from step to step, so the last decrement ``d`` is
    extrapolated like a linearly converging sequence, ``d / (1 - r)``, with ``r`` the larger of the
    last two ratios of successive decrements: three decrements at concave points are needed, unless
    the last is negligible on its own.
    """
    d = decrements[-1]
    if d <= NEGLIGIBLE_DECREMENT * threshold:
        return True
    last = decrements[-3:]
    if len(last) < 3 or not (d <= threshold and np.isfinite(last).all() and min(last) > 0.0):
        return False
    ratio = max(last[2] / last[1], last[1] / last[0])
    return bool(ratio < 1.0 and d / (1.0 - ratio) <= threshold)


def em_settled(change, previous_change, threshold):
    """Whether EM is within ``threshold`` of the limit of its objective.

    EM converges linearly: successive changes shrink by a ratio ``r`` that tends to the largest
    eigenvalue of its iteration map, and the objective still lies ``change * r / (1 - r)`` below its
    limit (Aitken's extrapolation; Böhning et al. 1994, McNicholas et al. 2010). Near a degenerate
    maximum ``r`` tends to 1, so a change far below ``threshold`` can leave far more than ``threshold``
    to gain: both the change and that remainder must be small. A change that is not positive (within
    the caller's rounding slack) means EM has stopped moving.
    """
    if change > threshold:
        return False
    if change <= 0.0:
        return True
    ratio = change / previous_change if previous_change > 0.0 else np.inf
    return bool(ratio < 1.0 and change * ratio / (1.0 - ratio) <= threshold)


def run_em(problem: Problem, W, V, *, max_iter, tol, l2, newton=True, callback=None, verbose=0,
           make_params=None):
    """Generalised EM from (W, V) until the objective is within ``tol * |objective|`` of its maximum.

    Convergence is judged by an estimate of the remaining gain, not by the last change alone: Aitken's
    extrapolation of EM's linear convergence (``em_settled``), or the Newton decrement at a point where
    the Hessian is negative definite (``newton_on_loglik``).

    Parameters
    ----------
    problem : Problem
    W, V : packed starting parameters in reference conventions (copied).
    max_iter : int
        Iterations in all, EM and Newton together.
    tol : float; l2 : float
    newton : bool
        Switch to Newton steps on the log-likelihood once EM has settled (``newton_on_loglik``).
    callback : callable ``(iteration, loglik, params) -> bool`` or None; returning True stops the fit.
    verbose : int; 0 silent, 1 a line every 10 iterations, 2 every iteration.
    make_params : callable ``(W, V) -> MoEParams`` used for the callback.

    Returns
    -------
    EMState
    """
    W, V = W.copy(), V.copy()
    k = problem.n_experts
    penalty = _Penalty(l2, k)
    mask_gate, mask_expert = _slope_masks(problem)
    slope_mask = np.concatenate([np.tile(mask_gate, 1), np.tile(mask_expert, k)])
    x_scale = _abs_max(problem.X)
    z_scale = x_scale if problem.Z is problem.X else _abs_max(problem.Z)
    empty_cut = EMPTY_EXPERT_FRACTION * problem.total_weight

    result = problem.newton_pass(W, V)
    objective = result.loglik - penalty(W, V).sum()
    state = EMState(W, V, objective, result.loglik, 0, False, False, False, (), [objective])
    start = time.perf_counter()
    next_newton = NEWTON_MIN_EM_ITER
    change = np.inf

    def record(W, V, objective, change):
        """Book-keeping after every iteration; True when the callback asks to stop."""
        state.history.append(objective)
        state.n_iter += 1
        if verbose and (verbose > 1 or state.n_iter % 10 == 0):
            print(
                f"[fastmoe] iter {state.n_iter:5d}  objective {objective:.12g}  change {change:.3e}  "
                f"{time.perf_counter() - start:.2f}s",
                flush=True,
            )
        if callback is not None and callback(state.n_iter, objective + penalty(W, V).sum(), make_params(W, V)):
            state.stopped = True
        return state.stopped

    while state.n_iter < max_iter:
        active = result.expert_weight > empty_cut
        dW, dV = newton_directions(result, W, V, l2, mask_gate, mask_expert, active)
        W_new, V_new = W + dW, V + dV
        result_new = problem.newton_pass(W_new, V_new)
        objective_new = result_new.loglik - penalty(W_new, V_new).sum()
        slack = ROUNDING_SLACK * abs(objective) + problem.rounding_floor
        if not objective_new >= objective - slack:  # also catches NaN
            # Q at the current parameters is needed only here, so the fused pass does not carry it.
            q_old = problem.q_values(W, V, W, V) - penalty(W, V)
            W_new, V_new = halve_until_q_increases(problem, W, V, dW, dV, q_old, penalty)
            result_new = problem.newton_pass(W_new, V_new)
            objective_new = result_new.loglik - penalty(W_new, V_new).sum()
            if not objective_new >= objective - slack:
                warnings.warn(
                    f"the log-likelihood decreased from {objective!r} to {objective_new!r} at iteration "
                    f"{state.n_iter + 1} despite step halving; stopping at the previous parameters (please report)",
                    FitWarning,
                    stacklevel=3,
                )
                break
        change, previous_change = objective_new - objective, change
        W, V, result, objective = W_new, V_new, result_new, objective_new
        if record(W, V, objective, change):
            break
        if em_settled(change, previous_change, tol * max(abs(objective), np.finfo(float).tiny)):
            state.converged = True
            break
        if logit_bound(W, V, x_scale, z_scale) > DIVERGENCE_LOGIT:
            break
        if newton and state.n_iter >= next_newton and abs(change) <= NEWTON_SWITCH * abs(objective):
            W_n, V_n, objective_n, n_steps, converged = newton_on_loglik(
                problem, W, V, objective, penalty, slope_mask, tol, max_iter - state.n_iter, record,
                allow_indefinite=abs(change) <= NEWTON_INDEFINITE_SWITCH * abs(objective),
            )
            state.n_newton += n_steps
            if n_steps:
                W, V, objective = W_n, V_n, objective_n
                result = problem.newton_pass(W, V)
            if converged or state.stopped:
                state.converged = converged
                break
            next_newton = state.n_iter + NEWTON_RETRY
            change = np.inf  # EM's ratio of changes restarts from the point Newton left
    state.W, state.V = W, V
    # Diverging coefficients show either in the logit bound or, when the data are separable, in a
    # likelihood saturated at 1 (the supremum is reached only at infinity), or in a class that never
    # occurs (its intercepts head to -inf).
    state.diverged = (
        logit_bound(W, V, x_scale, z_scale) > DIVERGENCE_LOGIT
        or result.loglik > -SATURATED_LOGLIK * problem.total_weight
        or bool((problem.class_weight == 0).any())
    )
    # Both from the final fused pass, so that objective == loglik exactly when there is no penalty.
    state.objective, state.loglik = result.loglik - penalty(W, V).sum(), result.loglik
    state.empty_experts = tuple(int(i) for i in np.flatnonzero(result.expert_weight <= empty_cut))
    return state


def m_step_from_responsibilities(problem: Problem, resp, l2=INIT_L2, max_iter=INIT_NEWTON_ITER):
    """Fit (W, V) to fixed responsibilities ``resp`` (n, k) by Newton steps on each block's Q.

    Used to turn a partition of the data into starting parameters. A small ridge keeps a cluster
    in which some class never occurs from sending its intercept to -inf.
    """
    k, K = problem.n_experts, problem.n_classes
    W = np.zeros((k, problem.n_gate_features + 1))
    V = np.zeros((k, K, problem.n_features + 1))
    penalty = _Penalty(l2, k)
    mask_gate, mask_expert = _slope_masks(problem)
    active = np.ones(k, dtype=bool)
    q_prev = -np.inf
    for _ in range(max_iter):
        result = problem.newton_pass(W, V, resp)
        q = problem.q_values(W, V, W, V, resp) - penalty(W, V)
        if abs(q.sum() - q_prev) <= 1e-10 * abs(q.sum()):
            break
        q_prev = q.sum()
        dW, dV = newton_directions(result, W, V, l2, mask_gate, mask_expert, active)
        W, V = halve_until_q_increases(problem, W, V, dW, dV, q, penalty, resp)
    return W, V


def _kmeans_labels(Z, k, rng, weights=None, n_lloyd=20):
    """Hard labels from weighted k-means (k-means++ seeding, a few Lloyd iterations) on the gating inputs.

    With integer weights this is k-means on the repeated rows, so a weighted fit starts where the
    fit of the expanded data would.
    """
    n = Z.shape[0]
    w = np.ones(n) if weights is None or weights.size == 0 else weights
    centers = np.empty((k, Z.shape[1]))
    centers[0] = Z[rng.choice(n, p=w / w.sum())]
    dist = np.sum((Z - centers[0]) ** 2, axis=1)
    for c in range(1, k):
        mass = w * dist
        total = mass.sum()
        idx = rng.choice(n, p=mass / total) if total > 0 else rng.integers(n)
        centers[c] = Z[idx]
        dist = np.minimum(dist, np.sum((Z - centers[c]) ** 2, axis=1))
    labels = np.zeros(n, dtype=np.intp)
    for it in range(n_lloyd):
        d2 = ((Z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        new = d2.argmin(axis=1)
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = labels == c
            if w[members].sum() > 0:
                centers[c] = np.average(Z[members], axis=0, weights=w[members])
    return labels


def _random_labels(Z, k, rng):
    """Hard labels from a random linear gating: random directions through the data's spread."""
    scale = Z.std(axis=0)
    scale[scale == 0] = 1.0
    logits = ((Z - Z.mean(axis=0)) / scale) @ rng.standard_normal((Z.shape[1], k)) + rng.standard_normal(k)
    return logits.argmax(axis=1)


def initial_parameters(problem: Problem, method, rng):
    """Starting (W, V) from a data partition: ``"kmeans"`` on the gating inputs or ``"random"``.

    Works on a subsample of at most ``INIT_SUBSAMPLE`` rows: a start only needs to be roughly right.
    The hard labels are softened so that no expert starts without data.
    """
    n, k = problem.n_samples, problem.n_experts
    rows = np.sort(rng.choice(n, size=INIT_SUBSAMPLE, replace=False)) if n > INIT_SUBSAMPLE else slice(None)
    X = np.ascontiguousarray(problem.X[rows])
    Z = X if problem.Z is problem.X else np.ascontiguousarray(problem.Z[rows])
    y = np.ascontiguousarray(problem.y[rows])
    w = np.ascontiguousarray(problem.sample_weight[rows]) if problem.sample_weight.size else problem.sample_weight
    sub = Problem(X, Z, y, w, k, problem.n_classes, problem.n_threads)
    labels = _kmeans_labels(Z, k, rng, w) if method == "kmeans" else _random_labels(Z, k, rng)
    resp = np.full((X.shape[0], k), INIT_LABEL_SMOOTHING / k)
    resp[np.arange(X.shape[0]), labels] += 1.0 - INIT_LABEL_SMOOTHING
    return m_step_from_responsibilities(sub, resp)
