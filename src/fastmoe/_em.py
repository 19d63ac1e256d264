"""The fit from one start: the generalised EM phase and the Newton finish, both reporting to a monitor.

Each EM iteration costs one fused kernel pass (MODEL.md section 2). At the current parameters the pass
returns the log-likelihood, the responsibilities' sufficient statistics and every block's gradient and
negative Hessian; each block then takes one Newton step (``_mstep``). The *next* pass, at the new
parameters, returns the new log-likelihood for free: if it did not decrease the step is kept, otherwise
each block's step is halved until its own Q function increases, which by the EM inequality makes the
log-likelihood increase. So the objective (penalised, when ``l2 > 0``) never decreases, and the common
case costs a single pass per iteration.

Once EM has slowed down, :func:`newton_finish` takes trust-region Newton steps on the objective itself
with its exact Hessian. Every accepted iteration of either phase is booked with the
:class:`~fastmoe._monitor.ConvergenceMonitor`, which owns the stopping rules and the stop reason.

In a box (``fit(bounds=...)``, the penalty's box) the start is projected into it, the M-steps are projected
Newton steps (``_mstep``) and the Newton finish solves its trust-region model on the coordinates that
their bound does not hold, projecting every trial point. A box on every slope makes divergence
impossible, so the gauge is off; a box on every parameter makes the maximum exist on any data, and no
run in it is reported diverged: one that ends on the box's surface has converged at a bound.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ._monitor import ConvergenceMonitor, gain_left
from ._mstep import halve_until_q_increases, newton_directions
from ._penalty import Penalty
from ._problem import PassResult, Problem
from ._trust_region import ReducedModel, quadratic_model
from .exceptions import FitWarning
from .params import free_vector, from_free_vector

# Divergence (quasi-separation: the supremum of the likelihood lies at infinity) is judged on the data,
# never on coefficient size alone and never before DIVERGENCE_MIN_ITER iterations: the gauged slopes
# must have grown by DIVERGENCE_GROWTH from iteration t/4 to t/2 and again from t/2 to t (EM's and
# Newton's steps along a separating direction grow them like log t or faster; at a maximum they stand
# still), while some free logit on the data (at most DIVERGENCE_ROWS evenly spaced rows) is beyond
# DIVERGENCE_LOGIT: some fitted probability is below e^-30.
DIVERGENCE_MIN_ITER = 20
DIVERGENCE_GROWTH = 1.1
DIVERGENCE_LOGIT = 30.0
DIVERGENCE_ROWS = 4096
# Slopes that move a logit on the data by more than this (natural log of the largest double) have left
# the range where the probabilities are computed as smooth functions of them: some are exactly 0 or 1
# in floating point, the likelihood is numerically flat there, and no finite maximum is told apart
# from the supremum at infinity.
NUMERICAL_LOGIT = 709.0
# A class whose probability inside an expert is below e^-15 on every row is absent there: its intercept
# is running off to a boundary maximum. Lower than DIVERGENCE_LOGIT because a run stops wherever its
# tolerance is met on the way out (e^-20 to e^-40 on the same maximum of the wine data, by the start),
# and the report must not depend on how far it went.
BOUNDARY_LOGIT = 15.0
# Experts with less than this share of the responsibility mass are heading for share 0: their
# coefficients are not gauged (the fit reports them, once empty, in ``empty_experts``).
VANISHING_SHARE = 1e-3
# A mean log-likelihood above -1e-8 per sample means every label is predicted with certainty.
SATURATED_LOGLIK = 1e-8

# Newton on the objective is tried once EM's relative change is below NEWTON_SWITCH (and after at
# least NEWTON_MIN_EM_ITER EM iterations); after a try, EM runs NEWTON_RETRY iterations first, twice as
# many after each try that took no step (each try costs an exact-Hessian pass: issue 13 found 18 of 26
# such passes thrown away in a d = 2 fit with a fixed wait). With chord steps a Newton phase costs one
# exact Hessian and a few gradient passes, less than three EM iterations at d = 10: waiting 2 EM
# iterations instead of 5 took the time to the MLE at d = 10, k = 4, K = 5, n = 1e5 from 6 fused
# passes to 3 (the same maximum to 1e-14 relative).
NEWTON_SWITCH = 1e-3
NEWTON_MIN_EM_ITER = 2
NEWTON_RETRY = 10
# Newton steps taken first (``newton_first``) before EM takes over.
NEWTON_FIRST_STEPS = 25
# A run given a ceiling (an objective the search already holds) stops as "below" once its Newton
# decrements collapse (``_monitor.gain_left``: three falling at concave points) and CEILING_MARGIN times
# the gain they leave would not reach the ceiling. One decrement alone is not enough: on an over-fitted
# job a run stopped 3.4 nats below after 9 iterations by a single decrement went on to end 0.9 above.
# Not in a box, where a coordinate leaving its bound opens gains the model on the others does not see.
CEILING_MARGIN = 10.0
# Trust-region steps where the Hessian is not negative definite only once EM has settled this far:
# EM crawling along a ridge or near a saddle.
NEWTON_INDEFINITE_SWITCH = 1e-6
# A trust-region trial is accepted when it gains this share of the model's predicted gain; the
# region shrinks at most this many times per Newton step before the phase gives up.
TRUST_ACCEPT = 1e-4
TRUST_MAX_SHRINK = 30
# A trial the model predicted well (ratio > 3/4) that the region cut short is followed by trials at
# twice the radius, at most this many, while each raises the objective further: a trial costs one
# log-likelihood pass, a new model an exact-Hessian pass (10x that at d = 10). From a data-driven
# start the region otherwise grows by doubling one Hessian at a time (measured on issue 12's p6: 6 of
# a start's 24 Newton steps went to growing it from 1 to 64).
TRUST_EXPAND = 4
# Chord steps: once an exact Hessian gave a concave model, the next steps keep it and pay only for a
# gradient pass at each trial (a tenth of an exact-Hessian pass at d = 10, k = 4, K = 5). Near a
# maximum they converge linearly at the rate at which that Hessian is off, which is small; a new exact
# Hessian is formed when a chord step's decrement fell by less than CHORD_RATE, or its trial failed.
CHORD_RATE = 0.01
# A chord step gains only the chord's rate, not the square of the error that an exact Newton step
# leaves, so chord steps go on while their decrements fall, down to the rounding floor of the gradient
# (about 1e-10 nats at n = 1e5), and the run is certified there: once the decrement stops falling and
# is negligible (``newton_settled`` of it alone), or once it is this far below the stopping threshold.
# That leaves the parameters where exact Newton leaves them (a warm start from the answer stops at
# once, at the same parameters to 1e-6); certifying at the threshold, as exact steps are, did not.
CHORD_SETTLED = 1e-8
# The full Newton step taken once decrements certified a point must gain at least half of the
# decrement (near a maximum the model is exact to third order and the ratio tends to 1; on a quartic
# ridge it is above 1); below, the certificate is withdrawn and the steps go on. Decrements within ten
# roundings of the objective are not judged.
CERTIFY_MIN_RATIO = 0.5
CERTIFY_RATIO_SLACK = 10.0


@dataclass
class RunResult:
    """Where a run from one start ended (the monitor holds how and why)."""

    W: np.ndarray
    V: np.ndarray
    objective: float
    loglik: float
    diverged: bool
    empty_experts: tuple
    boundary: tuple
    monitor: ConvergenceMonitor


class DivergenceGauge:
    """Whether a run's slopes are running off to infinity (quasi-separation).

    Size alone proves nothing: standardised data with many features give large logit bounds with
    modest coefficients, and a near-deterministic class gives large logits at a finite maximum. A run
    is diverging when the gauged slopes have grown by 10% or more from iteration t/4 to t/2 and again
    from t/2 to t, while some free logit on the data is beyond 30. (The objective may still be rising,
    or may have settled numerically: along a separating direction it approaches its supremum while
    the slopes grow without end; the final point of a run is judged too.)

    Gauged are the *slopes* of the experts that carry data. Intercepts may run off too, but then the
    fitted probabilities settle on the closure of the model (a class with probability 0 inside an
    expert, an expert with share 0): a boundary maximum, which the stopping rules certify and the
    result reports (``boundary``). Slopes running off means the probabilities tend to a step function,
    outside the model: the MLE does not exist. An expert whose share of the responsibility mass is
    below ``VANISHING_SHARE`` is heading for share 0 and is not gauged; gating rows are measured
    against the heaviest expert, so that the reference expert's vanishing does not count. With a ridge
    (``l2 > 0``) or a box on every slope they cannot run off, and nothing is gauged.

    Parameters
    ----------
    problem : Problem
    penalty : Penalty
    """

    def __init__(self, problem, penalty):
        rows = np.unique(np.linspace(0, problem.n_samples - 1, min(problem.n_samples, DIVERGENCE_ROWS)).astype(int))
        self.X = problem.X[rows]
        self.Z = self.X if problem.Z is problem.X else problem.Z[rows]
        self.active = penalty.l2 == 0.0 and not penalty.slopes_bounded
        # With a box on one group of slopes only, sharpening that group would leave the box: the
        # saturation test sharpens the free group alone.
        bounds = penalty.bounds
        self.sharpen_experts = bounds is None or not np.isfinite(bounds.expert_slope)
        self.sharpen_gate = bounds is None or not np.isfinite(bounds.gate_slope)
        self.vanishing = VANISHING_SHARE * problem.total_weight
        self.iterations = []
        self.norms = []

    def _live(self, W, V, expert_weight):
        live = expert_weight >= self.vanishing
        return (W - W[int(np.argmax(expert_weight))])[live], V[live, : V.shape[1] - 1]

    def _at(self, n_iter):
        """Index of the last record at or before iteration ``n_iter``."""
        return max(int(np.searchsorted(self.iterations, n_iter, side="right")) - 1, 0)

    def max_logit(self, W, V, expert_weight):
        """Largest |free logit| of the experts that carry data, on the gauge's rows."""
        G, E = self._live(W, V, expert_weight)
        gate = self.Z @ G[:, 1:].T + G[:, 0]
        expert = np.einsum("nd,ksd->nks", self.X, E[:, :, 1:]) + E[:, :, 0]
        return float(max(np.abs(gate).max(initial=0.0), np.abs(expert).max(initial=0.0)))

    def diverging(self, W, V, expert_weight, n_iter):
        """Record the slopes at iteration ``n_iter`` and judge whether they are running off."""
        if not self.active:
            return False
        G, E = self._live(W, V, expert_weight)
        self.iterations.append(n_iter)
        self.norms.append(float(np.sqrt(np.sum(G[:, 1:] ** 2) + np.sum(E[:, :, 1:] ** 2))))
        if n_iter < DIVERGENCE_MIN_ITER:
            return False
        half, quarter = self._at(n_iter // 2), self._at(n_iter // 4)
        return (
            self.norms[-1] >= DIVERGENCE_GROWTH * self.norms[half]
            and self.norms[half] >= DIVERGENCE_GROWTH * self.norms[quarter]
            and self.max_logit(W, V, expert_weight) >= DIVERGENCE_LOGIT
        )

    def slope_logit(self, W, V, expert_weight):
        """Largest |logit| the slopes alone give on the gauge's rows, over the experts that carry data."""
        G, E = self._live(W, V, expert_weight)
        # An explicit row count: intercept-only experts (0 slope columns) cannot infer it from -1.
        expert_slopes = E[:, :, 1:].reshape(E.shape[0] * E.shape[1], E.shape[2] - 1)
        return max(np.abs(self.X @ expert_slopes.T).max(initial=0.0), np.abs(self.Z @ G[:, 1:].T).max(initial=0.0))

    def saturated(self, problem, W, V, expert_weight, loglik=None, judge_size=True):
        """Whether the end point is a supremum at infinity that the run's steps can no longer climb.

        Along a separating direction the likelihood becomes numerically flat once the logits on the
        data are in the hundreds: the gains vanish, the stopping rules see a settled objective, and
        the slopes stop growing. Two tell-tales: the slopes alone move some logit on the data by more
        than ``NUMERICAL_LOGIT`` (floating point cannot tell such a point from the limit), or
        sharpening does not cost: doubling the logits of an expert (or of the gating) whose logits on
        the data pass ``DIVERGENCE_LOGIT`` leaves the log-likelihood where it is (within rounding) or
        raises it, where at a finite maximum it would fall (one E-step pass per expert so tested).
        Intercepts are left out of the first test: their running off is a boundary maximum.
        ``loglik``, the log-likelihood at (W, V) when the caller has it, saves a pass. Without
        ``judge_size`` only the second test runs: for a run whose start was already saturated, size
        says nothing of where the run went.
        """
        if not self.active:
            return False
        if judge_size and self.slope_logit(W, V, expert_weight) >= NUMERICAL_LOGIT:
            return True
        live = np.flatnonzero(expert_weight >= self.vanishing)
        K = V.shape[1]
        G = W - W[int(np.argmax(expert_weight))]
        base = problem.loglik(W, V) if loglik is None else loglik
        slack = problem.slack(base)
        for i in live if self.sharpen_experts else ():
            logits = self.X @ V[i, : K - 1, 1:].T + V[i, : K - 1, 0]
            if np.abs(logits).max(initial=0.0) >= DIVERGENCE_LOGIT:
                sharper = V.copy()
                sharper[i] *= 2.0
                if problem.loglik(W, sharper) >= base - slack:
                    return True
        gate = self.Z @ G[live, 1:].T + G[live, 0]
        if (self.sharpen_gate and np.abs(gate).max(initial=0.0) >= DIVERGENCE_LOGIT
                and problem.loglik(2.0 * W, V) >= base - slack):
            return True
        return False

    def boundary(self, W, V):
        """``(expert, class)`` pairs whose probability is below e^-15 on every gauge row (a boundary maximum)."""
        logits = np.einsum("nd,ksd->nks", self.X, V[:, :, 1:]) + V[:, :, 0]
        from scipy.special import logsumexp  # on first use: keeps ``import fastmoe`` light

        log_prob = logits - logsumexp(logits, axis=2, keepdims=True)
        top = log_prob.max(axis=0)
        return tuple((int(i), int(c)) for i, c in zip(*np.nonzero(top < -BOUNDARY_LOGIT)))


def newton_finish(problem: Problem, W, V, objective, penalty: Penalty, monitor: ConvergenceMonitor,
                  allow_indefinite, max_steps=None, joins=None, ceiling=None):
    """Trust-region Newton steps on the (penalised) log-likelihood itself, with its exact Hessian.

    EM converges linearly, often slowly; near a maximum where the log-likelihood is locally concave,
    Newton converges quadratically. A step takes one exact-Hessian pass and solves the quadratic
    model inside a trust region (``_trust_region.quadratic_model``); trial points cost one cheap pass each, and
    the region shrinks until a trial gains a fair share of what the model predicted. Where the Hessian
    is not negative definite the phase goes on only when ``allow_indefinite`` is set (EM has settled):
    an early try must not carry the fit away from the maximum EM is heading for.

    Once an exact Hessian gave a concave model (outside a box), the next steps are *chord* steps: the
    same Hessian with the gradient at the new point (the model's ``with_gradient``), which the
    previous trial's gradient pass gave, and one trial each. They converge linearly at the rate at which
    that Hessian is off; while their decrements fall at least ``1 / CHORD_RATE`` times per step they
    cost a gradient pass instead of an exact-Hessian pass (a tenth of it at d = 10), and otherwise a new
    exact Hessian is formed where they stand.

    The phase *certifies* convergence (``monitor.newton_settled``, then ``monitor.certify``): it stops
    the run as converged only at a point where the Hessian is negative definite and the Newton
    decrement, extrapolated over the steps still to come, is within tolerance; chord steps then go on
    to the gradient's rounding floor (``CHORD_SETTLED``). A small change alone proves nothing: along a
    ridge every step is small. Nor does one model: the certificate is withdrawn, and the steps go on,
    when the full Newton step from the certified point gains less than half of its decrement
    (:func:`certifying_step_holds`) or the chord steps after it stall above the gradient's floor; the
    model then describes a bend of a curved ridge, not its top (measured on an over-fitted model at
    n = 1e6: certified 0.49 nats below the maximum that the steps reach when they go on). It gives
    up, leaving the parameters where its last accepted step put them, when no trial gains, and when
    its uncertified steps have stalled (``monitor.newton_stalled``: ``STALL_STEPS`` in a row gained next
    to nothing): the caller then goes back to EM, unless ``monitor.stall`` stopped the run (it had
    stalled before, and gained next to nothing since).

    In a box the model is restricted to the coordinates that their bound does not hold (``Penalty.binding``:
    on the bound with the gradient pointing out), every trial is projected into the box, and the gain
    the model predicts is that of the projected step. The decrement is then the reduced model's: at a
    point where the held coordinates satisfy the KKT sign conditions, what is left to gain on the face.

    ``joins(W, V, objective)``, when given, is asked after every accepted step whether the point lies in
    the quadratic basin of a maximum found before (the search's ``KnownMaxima.match``: that maximum's
    run, or None); the run then stops as ``"joined"``, with that run in ``monitor.joined``.
    ``ceiling``, when given, is an objective a run is not worth continuing below: outside a box the run
    stops as ``"below"`` once its decrements collapse and ``objective + CEILING_MARGIN * gain_left``
    stays below it (beyond rounding).

    Returns
    -------
    W, V, objective, n_steps
        The last accepted point and how many steps were accepted; ``monitor.reason`` is set when the
        run must stop (converged, callback, joined, below, stalled; iteration cap reached is left to the
        caller).
    """
    boxed = penalty.bounds is not None
    radius = None
    n_steps = 0
    decrements = []
    exact_model = None  # the last exact Hessian's model, while chord steps may reuse it
    point_grad = None  # the log-likelihood's gradient at (W, V), when the pass that accepted it gave one
    certified = False  # converged by the decrements: only chord steps to the gradient's floor are left
    # A certificate was withdrawn (its full step fell short of its model, or the chord steps after it
    # stalled): no certificate before a trust-region step has been taken.
    doubted = False
    gains = []  # of the trust-region and chord steps: steps that gain next to nothing for long have stalled
    while monitor.iterations_left > 0 and (max_steps is None or n_steps < max_steps):
        theta = free_vector(W, V)
        chord = exact_model is not None and point_grad is not None
        if chord:
            grad = point_grad - penalty.gradient(theta)
            model = exact_model.with_gradient(grad)
        else:
            _, grad, neg_hess = problem.hessian_pass(W, V)
            grad = grad - penalty.gradient(theta)
            A = neg_hess + penalty.hessian
            if not (np.isfinite(A).all() and np.isfinite(grad).all()):
                return W, V, objective, n_steps
            held = _unseen(problem, grad, A)
            free = ~penalty.binding(theta, grad) & ~held if boxed else None
            if boxed and not free.any():  # every coordinate held by its bound: a vertex of the box satisfying KKT
                monitor.stop("converged")
                return W, V, objective, n_steps
            if boxed:
                model = quadratic_model(grad[free], A[np.ix_(free, free)])
            elif held.any():
                model = ReducedModel(quadratic_model(grad[~held], A[np.ix_(~held, ~held)]), ~held)
            else:
                model = quadratic_model(grad, A)
            # In a box the free set moves with the point, so chord steps are kept to unbounded fits.
            exact_model = model if model.concave and not boxed else None

        def trial(step):
            """The (projected) trial point of a model step on the free coordinates, and its predicted gain."""
            if not boxed:
                return theta + step, None
            full = np.zeros_like(theta)
            full[free] = step
            theta_try = penalty.project_free(theta + full)
            taken = theta_try - theta
            return theta_try, float(grad @ taken - 0.5 * taken @ A @ taken)

        def evaluate(step, predicted):
            """The (projected) trial point of a model step, its objective and the gain predicted for it, and
            the log-likelihood's gradient there when chord steps may follow (else None)."""
            theta_try, projected_gain = trial(step)
            W_try, V_try = from_free_vector(theta_try, W, V)
            if exact_model is None:
                loglik_try, grad_try = problem.loglik(W_try, V_try), None
            else:  # a gradient pass costs little more than the log-likelihood's, and feeds the next chord step
                loglik_try, grad_try, _ = problem.gradient_pass(W_try, V_try)
            objective_try = loglik_try - penalty.total(W_try, V_try)
            return W_try, V_try, objective_try, predicted if projected_gain is None else projected_gain, grad_try

        if not model.concave and not allow_indefinite:
            return W, V, objective, n_steps
        decrement = model.decrement()
        if ceiling is not None and not boxed and objective + CEILING_MARGIN * gain_left(decrements + [decrement]) \
                < ceiling - problem.slack(ceiling):
            monitor.stop("below")
            return W, V, objective, n_steps
        if chord and not decrement <= CHORD_RATE * decrements[-1]:
            if monitor.newton_settled([decrement], objective):  # the gradient's rounding floor
                monitor.certify()
                return W, V, objective, n_steps
            if certified:
                # Near a maximum where the Hessian is well conditioned, chord steps from a certified
                # point collapse to the gradient's floor; stalling far above it, they show the model
                # that certified does not hold there. (On a quartic ridge they stall too, and the
                # steps go on until the decrement is negligible: a few more exact Hessians.)
                certified, doubted = False, True
            exact_model = point_grad = None  # the kept Hessian converges too slowly from here: a new one
            continue
        decrements.append(decrement)
        if chord and decrement <= CHORD_SETTLED * monitor.threshold(objective):
            monitor.certify()
            return W, V, objective, n_steps
        if not chord and not doubted and monitor.newton_settled(decrements, objective):
            # Certified: the full Newton step, then chord steps down to the gradient's floor (a few
            # gradient passes), so that the answer does not depend on where in the tolerance it was
            # certified (a warm start from it stops at once, at the same parameters).
            # In a box the step is projected, and its prediction is the projected step's.
            W_try, V_try, objective_try, predicted, grad_try = evaluate(model.step(np.inf)[0], decrement)
            point_grad = None
            gain = objective_try - objective
            if gain > 0.0:
                n_steps += 1
                W, V, objective, point_grad = W_try, V_try, objective_try, grad_try
                if monitor.record(W, V, objective, gain, newton=True):
                    return W, V, objective, n_steps
            if certifying_step_holds(gain, predicted, problem.slack(objective)):
                if exact_model is None or point_grad is None:
                    monitor.certify()
                    return W, V, objective, n_steps
                certified = True
                continue
            # The model that certified does not hold over its own step: no certificate until a
            # trust-region step has been taken, from a new exact Hessian where the step left the run
            # (or from this model, where the step did not gain).
            doubted = True
            if gain > 0.0:
                exact_model = None
                continue
        if radius is None:
            radius = model.newton_length() if model.concave else 1.0
        slack = problem.slack(objective)
        tried = {}  # radius -> evaluated trial: the expansion below may come back to a radius tried here
        for _ in range(TRUST_MAX_SHRINK):
            step, predicted, length = model.step(radius)
            W_try, V_try, objective_try, predicted, grad_try = tried[radius] = evaluate(step, predicted)
            gain = objective_try - objective
            ratio = gain / predicted if predicted > 0 else 0.0
            if chord:  # one trial: a kept Hessian that predicts poorly is replaced, not trusted over a smaller region
                break
            if ratio < 0.25:
                radius = 0.25 * length
            elif ratio > 0.75 and length >= 0.99 * radius:
                radius = 2.0 * radius
            if gain > slack and ratio > TRUST_ACCEPT:  # also rejects NaN
                break
        else:
            return W, V, objective, n_steps
        if chord and not chord_accepts(gain, ratio, predicted, slack):
            if certified:
                monitor.certify()
                return W, V, objective, n_steps
            decrements.pop()
            exact_model = point_grad = None
            continue
        for _ in range(0 if chord else TRUST_EXPAND):
            if not (ratio > 0.75 and length >= 0.99 * radius / 2.0):  # radius was doubled above
                break
            step, predicted_more, length_more = model.step(radius)
            if length_more <= length * (1.0 + 1e-9):  # the model's maximiser lies inside: nothing further
                break
            W_more, V_more, objective_more, predicted_more, grad_more = (tried[radius] if radius in tried
                                                                         else evaluate(step, predicted_more))
            if not objective_more > objective_try + slack:  # also rejects NaN
                break
            W_try, V_try, objective_try, length, predicted = W_more, V_more, objective_more, length_more, predicted_more
            grad_try = grad_more
            gain = objective_try - objective
            ratio = gain / predicted if predicted > 0 else 0.0
            radius = 2.0 * radius
        n_steps += 1
        gains.append(max(gain, 0.0))  # a chord step within rounding may lose a little: no progress
        doubted = False
        W, V, objective, point_grad = W_try, V_try, objective_try, grad_try
        if monitor.record(W, V, objective, gain, newton=True):
            return W, V, objective, n_steps
        target = None if joins is None else joins(W, V, objective)
        if target is not None:
            monitor.stop("joined")
            monitor.joined = target
            return W, V, objective, n_steps
        if not certified and monitor.newton_stalled(gains, objective):
            monitor.stall(objective)  # back to EM, or the run stops: stalled twice with nothing gained between
            return W, V, objective, n_steps
    return W, V, objective, n_steps


def _unseen(problem, grad, A):
    """Coordinates Newton steps hold: slopes on all-zero design columns (``Problem.zero_column_coordinates``)
    that the objective does not see at this point (no gradient, a zero row of the negative Hessian; a
    ridge would see them). See ``_trust_region.ReducedModel`` for what moving them did."""
    unseen = problem.zero_column_coordinates
    return unseen & (grad == 0.0) & ~A.any(axis=0) if unseen.any() else unseen


def certifying_step_holds(gain, decrement, slack):
    """Whether the full Newton step from a point the decrements certified gained at least
    ``CERTIFY_MIN_RATIO`` of the decrement its model predicted, or the decrement is too small for the
    objective's rounding to tell. A model that predicts twice what its own step gains is no evidence
    that the maximum is near (a bend of a ridge, not its top)."""
    if decrement <= CERTIFY_RATIO_SLACK * slack:
        return True
    return bool(gain >= CERTIFY_MIN_RATIO * decrement)  # False for NaN


def chord_accepts(gain, ratio, predicted, slack):
    """Whether a chord step's trial is taken: it gains clearly and as its model predicted; or the model
    predicts less than the objective's rounding and the trial is not measurably worse. Below the
    rounding of the objective the gradient still steers (it is accurate far further), so chord steps go
    on down to its floor, where their decrements stop falling."""
    if predicted <= slack:
        return bool(gain >= -slack)  # False for NaN
    return bool(gain > slack and ratio > 0.25)


def newton_phase(problem: Problem, W, V, objective, result: PassResult, penalty: Penalty,
                 monitor: ConvergenceMonitor, **options):
    """:func:`newton_finish` from inside the EM loop; returns ``(W, V, objective, n_steps, result)``.

    Where Newton steps moved the run, ``result`` becomes the fused pass at the point they left: with
    its block Hessians when EM goes on from there; when the run stops, only what its end needs
    (log-likelihood, experts' weights), by the cheaper gradient pass.
    """
    W, V, objective, n_steps = newton_finish(problem, W, V, objective, penalty, monitor, **options)
    if n_steps:
        if not monitor.stopped:
            result = problem.newton_pass(W, V)
        else:
            loglik, _, weight = problem.gradient_pass(W, V)
            result = PassResult(loglik, weight, None, None, None, None)
    return W, V, objective, n_steps, result


def run_em(problem: Problem, W, V, penalty: Penalty, monitor: ConvergenceMonitor, newton=True,
           newton_first=False, joins=None, ceiling=None) -> RunResult:
    """Generalised EM from (W, V), then the Newton finish, until the monitor says stop.

    Parameters
    ----------
    problem : Problem
    W, V : packed starting parameters in reference conventions (copied).
    penalty : Penalty
    monitor : ConvergenceMonitor
        A fresh monitor for this run; on return its ``reason`` says why the run stopped.
    newton : bool
        Switch to Newton steps on the objective once EM has slowed down (:func:`newton_finish`).
    newton_first : bool
        Begin with trust-region Newton steps on the objective, indefinite Hessians allowed, before any
        EM step. From a rough start EM moves the gating and the experts in turns, each given the other,
        and settles in the nearest of many local maxima; a joint step follows the likelihood itself
        (measured: from k-means starts at d = 10, k = 4, K = 5, n = 2e4, 5 of 6 runs reached the best
        maximum this way against 0 of 6 with EM first). Used by the search's starts.
    joins : callable, optional
        Passed to the Newton-first phase (see :func:`newton_finish`).
    ceiling : float, optional
        The objective of a maximum the caller already holds: Newton phases stop the run as ``"below"``
        once it is seen heading for a lower one (see :func:`newton_finish`).

    Returns
    -------
    RunResult
    """
    W, V = penalty.project(W.copy(), V.copy())  # a start outside the box (any data-driven one) goes onto it
    gauge = DivergenceGauge(problem, penalty)

    result = problem.newton_pass(W, V)
    objective = result.loglik - penalty.total(W, V)
    monitor.start(objective)
    gauge.diverging(W, V, result.expert_weight, 0)
    # A start whose slopes already saturate the probabilities (a wild user start: logits in the
    # thousands) gives steps that underflow; a run that never leaves that region proves nothing.
    saturated_start = gauge.active and gauge.slope_logit(W, V, result.expert_weight) >= NUMERICAL_LOGIT
    next_newton, retry = NEWTON_MIN_EM_ITER, NEWTON_RETRY
    change = np.inf
    if newton_first and monitor.iterations_left > 0:
        W, V, objective, _, result = newton_phase(problem, W, V, objective, result, penalty, monitor,
                                                  allow_indefinite=True, max_steps=NEWTON_FIRST_STEPS, joins=joins,
                                                  ceiling=ceiling)
        next_newton = monitor.n_iter + retry

    while monitor.iterations_left > 0 and not monitor.stopped:
        active = result.expert_weight > problem.empty_expert_cut
        dW, dV, unsolved = newton_directions(result, W, V, penalty, active)
        W_new, V_new = penalty.project(W + dW, V + dV)
        result_new = problem.newton_pass(W_new, V_new)
        objective_new = result_new.loglik - penalty.total(W_new, V_new)
        slack = problem.slack(objective)
        halved = not objective_new >= objective - slack  # also catches NaN
        if halved:
            # Q at the current parameters is needed only here, so the fused pass does not carry it.
            q_old = problem.q_values(W, V, W, V) - penalty.blocks(W, V)
            W_new, V_new = halve_until_q_increases(problem, W, V, dW, dV, q_old, penalty)
            result_new = problem.newton_pass(W_new, V_new)
            objective_new = result_new.loglik - penalty.total(W_new, V_new)
            if not objective_new >= objective - slack:
                # Every block's Q rose to within its own rounding, and the total fell by less than those
                # roundings together: EM is at its fixed point to rounding (seen on 30-sample data, 1e-11
                # on an objective of 5.4, where the blocks' Q values are larger than the objective).
                # Far out (intercepts running off to a boundary maximum) the logits' own rounding is larger.
                if objective_new >= objective - slack - sum(problem.slack(q) for q in q_old) - \
                        problem.logit_slack(W_new, V_new):
                    monitor.stop("converged")
                    break
                warnings.warn(
                    f"the log-likelihood decreased from {objective!r} to {objective_new!r} at iteration "
                    f"{monitor.n_iter + 1} despite step halving; stopping at the previous parameters (please report)",
                    FitWarning,
                    stacklevel=3,
                )
                monitor.stop("no_increase")
                break
        if (halved or unsolved) and np.array_equal(W_new, W) and np.array_equal(V_new, V):
            # No block moved: each one's Newton step failed every halving, or its Newton system could
            # not be solved. That is no fixed point (there the steps are small and rise within
            # rounding; a step below the parameters' rounding is taken, unchanged, with no halving)
            # but the M-step breaking down, as where the probabilities saturate (logits in the
            # thousands) and the blocks' Hessians underflow. Newton steps on the whole objective go on
            # from here, or the run stops short.
            n_steps = 0
            if newton:
                W, V, objective, n_steps, result = newton_phase(problem, W, V, objective, result, penalty,
                                                                monitor, allow_indefinite=True, ceiling=ceiling)
            if monitor.stopped:
                break
            if not n_steps:
                monitor.stop("no_increase")
                break
            change = np.inf
            continue
        change, previous_change = objective_new - objective, change
        W, V, result, objective = W_new, V_new, result_new, objective_new
        if monitor.record(W, V, objective, change):
            break
        if monitor.em_settled(change, previous_change, objective):
            if newton:
                # EM's own verdict rests on two changes and can be fooled along a flat ridge, where EM
                # steps are small whatever is left (a warm start 0.49 nats below a maximum settled in
                # two EM iterations): the Newton finish certifies the point or goes on from it.
                W, V, objective, n_steps, result = newton_phase(problem, W, V, objective, result, penalty,
                                                                monitor, allow_indefinite=True, ceiling=ceiling)
                if n_steps and not monitor.stopped:
                    next_newton, retry = monitor.n_iter + NEWTON_RETRY, NEWTON_RETRY
                    change = np.inf
                    continue
            # Where Newton steps gain nothing either, EM's verdict stands; unless a block's Newton
            # system could not be solved in the last step: EM settled without that block.
            monitor.stop("no_increase" if unsolved else "converged")
            break
        if gauge.diverging(W, V, result.expert_weight, monitor.n_iter):
            # Slopes that grew for a long time may still be heading for a finite maximum with large
            # coefficients: Newton steps certify one if it is there, before the run is called diverging.
            if newton:
                W, V, objective, _, result = newton_phase(problem, W, V, objective, result, penalty, monitor,
                                                          allow_indefinite=False)
                if monitor.certified:
                    break
            monitor.stop("diverging", overrule=("stalled",))  # the gauge's verdict, however the phase ended
            break
        if newton and monitor.n_iter >= next_newton and abs(change) <= NEWTON_SWITCH * abs(objective):
            W, V, objective, n_steps, result = newton_phase(
                problem, W, V, objective, result, penalty, monitor,
                allow_indefinite=abs(change) <= NEWTON_INDEFINITE_SWITCH * abs(objective), ceiling=ceiling,
            )
            if monitor.stopped:
                break
            retry = NEWTON_RETRY if n_steps else 2 * retry
            next_newton = monitor.n_iter + retry
            change = np.inf  # EM's ratio of changes restarts from the point Newton left
    if not monitor.stopped:
        monitor.stop("max_iter")
    # Stuck where it started: the steps failed, or their gains vanished, or the run ran out of
    # iterations, in a region saturated from the start on (the slopes' logits beyond NUMERICAL_LOGIT
    # on the gauge's rows at both ends), where the steps underflow. Its objective can be as low as
    # -2566 nats a sample (issue 12's p2 from N(0, 3000^2) coefficients; p4, whose MLE exists at
    # -9308, settled at -11080). The slopes' size then says nothing: the run is judged diverged only
    # where sharpening its saturated logits does not cost (a supremum at infinity, as on p2 from
    # other such starts, 375 iterations up to -9560), where its slopes were seen growing, or where
    # the data prove it whatever the start; else it stopped short, and says why.
    stuck = (saturated_start and not monitor.certified
             and monitor.reason in ("converged", "no_increase", "max_iter", "stalled")
             and gauge.slope_logit(W, V, result.expert_weight) >= NUMERICAL_LOGIT)
    # The supremum is at infinity whatever the start when the likelihood is saturated at 1 (separable
    # data: every label predicted with certainty) or when a class never occurs (its intercepts head
    # to -inf).
    proved = not penalty.compact and (
        result.loglik > -SATURATED_LOGLIK * problem.total_weight
        or (bool((problem.class_weight == 0).any()) and not penalty.intercepts_bounded)
    )
    # One verdict. The gauge judges the final point too (a run whose gains vanished while its slopes
    # ran off has converged only to a supremum at infinity). In a compact box the maximum exists: the
    # run has converged at a bound, whatever the data.
    diverged = proved or (not penalty.compact and (
        monitor.reason == "diverging"
        # The slopes' growth on the way proves nothing at a strict local maximum Newton certified: a
        # finite maximum can lie far out (measured: issue 12's p1 from its truth, |a| = 54).
        or (not monitor.certified and gauge.diverging(W, V, result.expert_weight, monitor.n_iter))
        or gauge.saturated(problem, W, V, result.expert_weight, result.loglik, judge_size=not stuck)
    ))
    stuck = stuck and not diverged
    if stuck:
        monitor.judge_stuck()
    if diverged:
        monitor.judge_diverging(proved)
    empty = tuple(int(i) for i in np.flatnonzero(result.expert_weight <= problem.empty_expert_cut))
    # Both from the final fused pass, so that objective == loglik exactly when there is no penalty.
    return RunResult(
        W=W,
        V=V,
        objective=result.loglik - penalty.total(W, V),
        loglik=result.loglik,
        diverged=diverged,
        empty_experts=empty,
        # A bounded expert intercept cannot run off: a class it starves is reported as a bound held
        # instead. A stuck run reached no maximum, on a boundary or elsewhere.
        boundary=() if stuck or (penalty.bounds is not None and np.isfinite(penalty.bounds.expert_intercept))
        else tuple(pair for pair in gauge.boundary(W, V) if pair[0] not in empty),
        monitor=monitor,
    )
