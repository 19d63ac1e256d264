"""When a fit stops, and why: the convergence monitor of one run, its stopping rules, and the log of several starts.

hmmlearn's ``ConvergenceMonitor`` and scikit-learn's mixture base class keep a fit's bookkeeping in one
object; so does :class:`ConvergenceMonitor` here. The EM phase and the Newton finish (``_em``) report
every accepted iteration to it, and it alone decides whether the fit has converged, owns the tolerance,
the history, the iteration cap, the user's callback and verbose printing, records the reason the run
stopped and turns it into the sentence a user reads.

Convergence is judged by an estimate of the gain still to come, not by the last change (MODEL.md
section 2): near a degenerate maximum EM crawls, and a fit stopped by its last change can lie whole nats
short of the maximum at large ``n``. :func:`em_settled` extrapolates EM's linear convergence (Aitken),
:func:`newton_settled` the Newton decrements of the finish.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

# A Newton decrement this small relative to the stopping threshold certifies convergence on its own.
NEGLIGIBLE_DECREMENT = 1e-3
# Decrements whose later ratio is above the earlier one and above this are slowing down, not
# converging: along a curved ridge of an over-fitted model the local quadratic model sees only the
# next bend. Measured on vanishing-standard-spread at n = 1e6 (replication 3): decrements 0.0193,
# 0.00495, 0.00172 (ratios 0.26, then 0.35) were extrapolated to 0.0026 nats left and certified a
# point 0.49 nats below the maximum that further steps reach; the split cell's errors there differed
# by a third (a 0.47 against 0.29). Newton's quadratic phase has falling ratios, and chord steps
# ratios near CHORD_RATE (1e-2 and below), so neither is refused.
SLOWING_RATIO = 0.1

#: Two starts reached the same maximum when their objectives agree to this relative tolerance (absolute
#: in nats for objectives below 1 in size: near a saturated likelihood the relative gap means nothing).
SAME_MAXIMUM_RTOL = 1e-6

# Newton steps have stalled when the last STALL_STEPS of them gained so little in all that
# STALL_HORIZON times as many more, at that rate, would still gain less than the stopping threshold.
# Near a strict maximum the steps certify within a few (quadratic convergence, then chord steps);
# where no model certifies they can crawl for ever: on random d = 60, k = 2, K = 10 data (n = 5000,
# 1159 parameters; a Hessian singular to rounding) the steps gained 4e-9 nats each, 1e-12 of the
# objective, for thousands of steps while the slopes grew, a fit of over 600 s. Over-fitted ridges
# that do lead on gain far more per step (0.49 nats over a few tens of steps at n = 1e6). A stalled
# Newton phase hands the run back to EM, which can still gain where Newton steps crawl (a search
# start at n = 2e4: 1e-5 to 5e-5 nats per EM step, then Newton steps gaining 0.09 each); the run
# stops as stalled only when it stalls again with less than the same amount gained in between.
STALL_STEPS = 20
STALL_HORIZON = 10


def boundary_pairs_text(boundary):
    """``(expert, class)`` pairs of a boundary maximum in words, as messages and warnings name them."""
    return ", ".join(f"class {c} in expert {i}" for i, c in boundary)


def same_maximum(a, b):
    """Whether objectives ``a`` and ``b`` belong to one maximum (``SAME_MAXIMUM_RTOL``)."""
    return abs(a - b) <= SAME_MAXIMUM_RTOL * max(abs(a), abs(b), 1.0)

#: Names of parameters held by their bound that a message lists before it says "...".
MESSAGE_NAMES = 8
#: Why a run stopped: its objective is within tolerance of a maximum; the iteration cap; the user's
#: callback asked; coefficients ran past the divergence gauge; no further step could increase the
#: objective, or EM settled while some block's M-step could not be solved;
#: it entered the quadratic basin of a maximum an earlier run of the search reached (``joined``); its
#: Newton model showed it heading for a maximum below one the search already holds (``below``); its
#: Newton steps gained next to nothing for many steps where no maximum could be certified (``stalled``).
STOP_REASONS = ("converged", "max_iter", "callback", "diverging", "no_increase", "joined", "below", "stalled")


def em_settled(change, previous_change, threshold):
    """Whether EM is within ``threshold`` of the limit of its objective.

    EM converges linearly: successive changes shrink by a ratio ``r`` that tends to the largest
    eigenvalue of its iteration map, and the objective still lies ``change * r / (1 - r)`` below its
    limit (Aitken's extrapolation; Böhning et al. 1994, McNicholas et al. 2010). Near a degenerate
    maximum ``r`` tends to 1, so a change far below ``threshold`` can leave far more than ``threshold``
    to gain: both the change and that remainder must be small. A change that is not positive (within
    the caller's rounding slack) means EM has stopped moving. The ratio needs two changes: the first
    change of a run (or the first after Newton steps) says nothing about what is left, however small
    (a start on a flat ridge gains little per step and far more in all: 2e-4 nats, then 0.02 more, in
    issue 12's search refinements).
    """
    if change > threshold:
        return False
    if change <= 0.0:
        return True
    ratio = change / previous_change if 0.0 < previous_change < np.inf else np.inf
    return bool(ratio < 1.0 and change * ratio / (1.0 - ratio) <= threshold)


def newton_settled(decrements, threshold):
    """Whether Newton steps are within ``threshold`` of the maximum, given the decrements so far.

    The Newton decrement (the quadratic model's maximal gain) estimates what is left only where the
    model holds over the whole way. Near a degenerate maximum it does not: the steps zig-zag along a
    curved, nearly flat valley, each gaining about the same small amount while many remain. Quadratic
    convergence shows as decrements that collapse from step to step, so the last decrement ``d`` is
    extrapolated like a linearly converging sequence, ``d / (1 - r)``, with ``r`` the larger of the
    last two ratios of successive decrements: three decrements at concave points are needed, unless
    the last is negligible on its own, and none is read from decrements that slow down (:func:`gain_left`).
    """
    d = decrements[-1]
    if d <= NEGLIGIBLE_DECREMENT * threshold:
        return True
    return bool(d <= threshold and gain_left(decrements) <= threshold)


def gain_left(decrements):
    """What Newton steps have left to gain: the last decrement ``d`` extrapolated as a linearly
    converging sequence, ``d / (1 - r)`` with ``r`` the larger of the last two ratios of successive
    decrements; ``inf`` unless the last three decrements are finite, positive and falling, and
    ``inf`` while they slow down (the later ratio above the earlier one and above ``SLOWING_RATIO``):
    no rate can be read from a sequence whose rate is still getting worse."""
    last = decrements[-3:]
    if len(last) < 3 or not (np.isfinite(last).all() and min(last) > 0.0):
        return np.inf
    earlier, later = last[1] / last[0], last[2] / last[1]
    if later > max(earlier, SLOWING_RATIO):
        return np.inf
    ratio = max(earlier, later)
    return last[2] / (1.0 - ratio) if ratio < 1.0 else np.inf


def newton_stalled(gains, threshold):
    """Whether Newton steps that gained ``gains`` (one per accepted step, the latest last) have
    stalled: the last ``STALL_STEPS`` gained less than ``threshold / STALL_HORIZON`` in all. Gains are
    not decrements: a stall says nothing of what is left, only that the steps no longer get there."""
    return bool(len(gains) >= STALL_STEPS and sum(gains[-STALL_STEPS:]) * STALL_HORIZON <= threshold)


class ConvergenceMonitor:
    """Bookkeeping and stopping decisions of one run from one start.

    Parameters
    ----------
    tol : float
        The run has converged when the objective is estimated within ``tol * |objective|`` of its maximum.
    max_iter : int
        Iterations in all, EM and Newton together.
    callback : callable ``(n_iter, W, V, objective) -> bool``, optional
        Called after every iteration; returning True stops the run.
    verbose : int
        0 silent, 1 a line every 10 iterations, 2 every iteration.

    Attributes
    ----------
    history : list of float
        The objective at the start and after every iteration (never decreasing).
    n_iter, n_newton : int
        Iterations so far, and how many of them were Newton steps on the objective itself.
    newton_iterations : list of int
        Which iterations (1-based, so ``history[i]`` is the objective after iteration ``i``) were
        Newton steps on the objective itself; the others were EM iterations. Kept so that a plot of
        the history can mark the phases.
    reason : str or None
        One of :data:`STOP_REASONS` once the run has stopped.
    """

    def __init__(self, tol, max_iter, callback=None, verbose=0):
        self.tol = tol
        self.max_iter = max_iter
        self.callback = callback
        self.verbose = verbose
        self.history = []
        self.n_iter = 0
        self.n_newton = 0
        self.newton_iterations = []
        self.reason = None
        self.joined = None  # the run of the known maximum this run joined (reason "joined")
        self.stalled_at = None  # the objective where a Newton phase last stalled (``stall``)
        # Whether Newton steps certified the stop: a point where the Hessian is negative definite and
        # the decrement within tolerance, i.e. a strict local maximum, not a supremum at infinity.
        self.certified = False
        # Whether the run stopped in a region whose probabilities were saturated from its start on
        # (``judge_stuck``): a stop that says nothing of a maximum.
        self.stuck_saturated = False
        # Whether the data prove divergence whatever the start (``judge_diverging``).
        self.divergence_proved = False
        self._clock = time.perf_counter()

    def start(self, objective):
        """The objective at the starting point."""
        self.history = [objective]
        self._clock = time.perf_counter()

    def threshold(self, objective):
        """The largest gain still to come that counts as converged at ``objective``."""
        return self.tol * max(abs(objective), np.finfo(float).tiny)

    @property
    def iterations_left(self):
        return self.max_iter - self.n_iter

    def record(self, W, V, objective, change, newton=False):
        """Book an accepted iteration; True when the run must stop (the callback asked for it)."""
        self.history.append(objective)
        self.n_iter += 1
        self.n_newton += bool(newton)
        if newton:
            self.newton_iterations.append(self.n_iter)
        if self.verbose and (self.verbose > 1 or self.n_iter % 10 == 0):
            print(
                f"[fastmoe] iter {self.n_iter:5d}  objective {objective:.12g}  change {change:.3e}  "
                f"{'newton' if newton else 'em':6s}  {time.perf_counter() - self._clock:.2f}s",
                flush=True,
            )
        if self.callback is not None and self.callback(self.n_iter, W, V, objective):
            self.stop("callback")
        return self.stopped

    def em_settled(self, change, previous_change, objective):
        """:func:`em_settled` at this run's tolerance."""
        return em_settled(change, previous_change, self.threshold(objective))

    def newton_settled(self, decrements, objective):
        """:func:`newton_settled` at this run's tolerance."""
        return newton_settled(decrements, self.threshold(objective))

    def newton_stalled(self, gains, objective):
        """:func:`newton_stalled` at this run's tolerance."""
        return newton_stalled(gains, self.threshold(objective))

    def stall(self, objective):
        """Book a Newton phase that stalled at ``objective``. The run stops as stalled, and this returns
        True, when the run stalled before and has gained less than ``threshold / STALL_HORIZON`` since
        (the EM steps between included); else the caller goes back to EM."""
        previous, self.stalled_at = self.stalled_at, objective
        if previous is not None and objective - previous <= self.threshold(objective) / STALL_HORIZON:
            self.stop("stalled")
            return True
        return False

    def certify(self):
        """Stop as converged at a strict local maximum that Newton steps certified."""
        if self.reason is None:
            self.certified = True
        self.stop("converged")

    def stop(self, reason, overrule=()):
        """Record why the run stops: the first reason given stands, unless it is one of ``overrule``."""
        if reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {reason!r}")
        if self.reason is None or self.reason in overrule:
            self.reason = reason

    def judge_diverging(self, proved=False):
        """The verdict after the run: its supremum lies at infinity, however the loop ended.

        A run can settle numerically (its gains vanish) while the likelihood only approaches a
        supremum at infinity (separable data, a class that never occurs); it is then reported as
        diverging, never as converged and diverged at once. A callback's stop stands. ``proved``: the
        data prove it whatever the start (a class that never occurs, every label predicted with
        certainty), so that the message can say the MLE does not exist.
        """
        self.divergence_proved = proved
        self.stuck_saturated = False
        if self.reason != "callback":
            self.reason = "diverging"

    def judge_stuck(self):
        """The verdict on a run that never left a region whose probabilities were saturated from its start on.

        Its steps underflow there (``run_em``), so its stop is neither a maximum nor a divergence: a
        settled run stopped short (``"no_increase"``), a run out of iterations stays ``"max_iter"``,
        and the message says why. A callback's stop stands.
        """
        if self.reason in ("converged", "no_increase"):
            self.reason = "no_increase"
        if self.reason in ("no_increase", "max_iter", "stalled"):
            self.stuck_saturated = True

    @property
    def stopped(self):
        return self.reason is not None

    @property
    def converged(self):
        return self.reason == "converged"

    def message(self, penalised=False, empty_experts=(), boundary=(), active_bounds=(), definite=False,
                every_start=0, slopes_boxed=False):
        """The sentence that says how the run ended.

        ``penalised``: the fit had a ridge; ``slopes_boxed``: a box held every slope (then only
        intercepts can run off, and a box on them is the advice, not the one already given); ``definite``: the divergence does not depend on the
        start (the problem is concave: one expert). Only then, or where the data prove it
        (``judge_diverging(proved=True)``), does a diverged run say that the MLE does not exist: one
        run can head for a supremum at infinity below a finite maximum that other starts reach
        (measured from wild starts on issue 12's p4). ``every_start``: how many explored starts there
        were, all of which diverged (0: not all did): strong evidence, not proof, and said as such.
        ``empty_experts``: experts without responsibility mass; ``boundary``: ``(expert, class)``
        pairs with probability 0 (their intercepts ran off); ``active_bounds``: names of the free
        parameters on their bound in a box-constrained fit.
        """
        n = self.n_iter
        parts = [{
            "converged": f"converged in {n} iterations (estimated remaining gain <= tol={self.tol:g} relative)",
            "callback": f"stopped by the callback after {n} iterations",
            "max_iter": f"did not converge within max_iter={self.max_iter} iterations",
            "diverging": f"diverged: stopped after {n} iterations",
            "no_increase": f"stopped after {n} iterations: no further step could increase the objective",
            "joined": f"joined a maximum found before after {n} iterations",
            "below": f"stopped after {n} iterations below a higher maximum found before",
            "stalled": f"stalled: stopped after {n} iterations: twice {STALL_STEPS} Newton steps in a row gained "
                       f"less than tol/{STALL_HORIZON} (relative) in all, with no more gained between, and no "
                       "maximum was certified (a flat ridge, or coefficients creeping off too slowly for the "
                       "divergence gauge): the parameters are not determined by the objective here",
            None: f"stopped after {n} iterations",
        }[self.reason]]
        if self.reason == "diverging":
            parts.append(
                "the intercepts run off to infinity (a class that never occurs, or gets no probability in "
                "some expert): the penalised maximum does not exist" if penalised else
                "the intercepts run off to infinity (a class that never occurs, or gets no probability in "
                "some expert): the maximum in this box does not exist; bound the intercepts too "
                "(bounds=B bounds every parameter)" if slopes_boxed else
                "coefficients run off to infinity (separable data, or a class that never occurs): the MLE "
                "does not exist; consider l2 > 0 or a box on every slope (bounds=...)"
                if definite or self.divergence_proved else
                f"coefficients run off to infinity from every one of the {every_start} starts (separable data, "
                "or classes too rare to be fitted): the MLE most likely does not exist; consider l2 > 0 or a "
                "box on every slope (bounds=...)"
                if every_start else
                "coefficients run off to infinity along this run (separable data, a class that never occurs, "
                "or a start that separates part of the data): unless another start reaches a finite maximum "
                "above it, the MLE does not exist; consider l2 > 0 or a box on every slope (bounds=...)"
            )
        if self.stuck_saturated:
            parts.append("the slopes saturate the probabilities here as at the start (logits beyond 709 on the "
                         "data), where steps cannot be computed: no maximum was reached; start elsewhere "
                         "(init='search')")
        if empty_experts:
            parts.append(f"experts {list(empty_experts)} have no responsibility mass")
        if boundary:
            parts.append(f"at a boundary of the model: probability 0 for {boundary_pairs_text(boundary)} (those "
                         "intercepts are not finite)")
        if active_bounds:
            shown = ", ".join(active_bounds[:MESSAGE_NAMES]) + (", ..." if len(active_bounds) > MESSAGE_NAMES else "")
            parts.append(f"at a bound: {len(active_bounds)} free parameter(s) on the box ({shown}); "
                         "their standard errors are not valid")
        return "; ".join(parts)


@dataclass(frozen=True)
class StartLog:
    """How settled the answer of a fit with several starts is.

    Attributes
    ----------
    objectives : ndarray of shape (n_starts,)
        The objective each start ended at (on the exploration subsample when ``subsample`` is set).
    diverged : ndarray of bool
        Which starts diverged (they do not compete for the best).
    best : int
        The start that was kept.
    n_best : int
        Starts whose objective is within ``SAME_MAXIMUM_RTOL`` (relative) of the kept one's: how many
        found that maximum.
    unseen : float
        The Good-Turing estimate of the chance that one more start would end at a maximum none of these
        reached: the maxima reached by exactly one start, over the starts (Finch, Mendell & Thode 1989;
        diverged starts count as starts, not as maxima).
    subsample : int or None
        Rows of the exploration subsample, or None when the starts ran on all the data.
    moves : ndarray
        The objective (on all the data) each final move (split-and-merge or soft-direction) from the
        search's answer reached
        (empty when none ran); the answer is the best of these and the search's own, when it is higher.
    moves_diverged : ndarray of bool
        Which moves diverged.
    """

    objectives: np.ndarray
    diverged: np.ndarray
    best: int
    n_best: int
    subsample: object
    moves: np.ndarray = field(default_factory=lambda: np.empty(0))
    moves_diverged: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))

    @classmethod
    def of(cls, runs, best, subsample):
        objectives = np.array([r.objective for r in runs])
        diverged = np.array([r.diverged for r in runs])
        n_best = sum(same_maximum(value, objectives[best]) for value in objectives)
        return cls(objectives, diverged, best, n_best, subsample)

    @property
    def unseen(self):
        finite = self.objectives[~self.diverged]
        once = sum(sum(same_maximum(a, b) for b in finite) == 1 for a in finite)
        return once / max(self.objectives.size, 1)

    def with_moves(self, runs):
        """This log with the final moves ``runs`` (split-and-merge or soft-direction; RunResults on all the
        data) recorded."""
        return dataclasses.replace(self, moves=np.array([r.objective for r in runs]),
                                   moves_diverged=np.array([r.diverged for r in runs], dtype=bool))

    def to_dict(self) -> dict:
        """Plain-Python form, for JSON."""
        return {"objectives": self.objectives.tolist(), "diverged": self.diverged.tolist(), "best": int(self.best),
                "n_best": int(self.n_best), "subsample": self.subsample, "moves": self.moves.tolist(),
                "moves_diverged": self.moves_diverged.tolist()}

    @classmethod
    def from_dict(cls, data):
        """The log from :meth:`to_dict`'s form (one written before moves were recorded has none)."""
        return cls(np.array(data["objectives"], dtype=float), np.array(data["diverged"], dtype=bool),
                   int(data["best"]), int(data["n_best"]), data["subsample"],
                   np.array(data.get("moves", []), dtype=float), np.array(data.get("moves_diverged", []), dtype=bool))

    @property
    def kept_objective(self) -> float:
        """The objective the starts are measured against: the kept start's, or the best finite
        final move's when the starts ran on all the data and a move rose above it (the
        moves then found the answer)."""
        kept = self.objectives[self.best]
        if self.subsample is None and self.moves.size:
            finite = self.moves[~self.moves_diverged]
            if finite.size:
                kept = max(kept, float(finite.max()))
        return kept

    @property
    def higher_diverged(self) -> int:
        """Diverged starts that ended above the kept (finite) maximum, on the same rows.

        A diverged start's objective is a value the likelihood takes on its way to infinity, so one above
        the kept maximum shows that the kept maximum is not the global one. It does not show that no MLE
        exists: the likelihood climbs along that start's direction towards a supremum that is not
        attained there, but a finite maximum elsewhere may still lie above that supremum. Both are
        seen: on issue 12's benchmark problems p1, p2, p5 and p8 every finite maximum found lies below
        some diverged run; on the held-out h11 (d = 2, k = 3, K = 4, n = 1e4) searches ended at
        -8719.699 with starts diverged 0.42 nats above it, while other searches reached a finite maximum
        0.71 nats above those (and no run of any method diverged above that one: apparently the MLE).
        On an exploration subsample the comparison is on its rows: evidence about the subsample's
        likelihood, not proof about the data's.
        """
        if self.diverged[self.best]:
            return 0
        kept = self.kept_objective
        return int(sum(bool(d) and v > kept and not same_maximum(v, kept)
                       for v, d in zip(self.objectives, self.diverged)))

    def message(self, converged=True):
        """A warning's text when the kept maximum was found by one start of several, or when a start
        diverged to a higher likelihood; else None.

        ``converged``: whether the kept run converged. A run stopped before converging already warns
        of that, and its starts then agree on nothing, so how many reached it is not said; starts that
        diverged above it still are (the kept point is not the global maximum either way).
        """
        parts = []
        if converged and self.objectives.size >= 2 and self.n_best == 1 and not self.diverged[self.best]:
            top = np.sort(self.objectives)[::-1]
            shown = np.array2string(top[:MESSAGE_NAMES], precision=6, separator=", ", max_line_width=10**9)
            if top.size > MESSAGE_NAMES:
                shown = shown[:-1] + ", ...]"
            parts.append(
                f"the best maximum was reached by only 1 of {self.objectives.size} starts (objectives "
                f"{shown}): a better one may exist; consider a larger n_init")
        higher = self.higher_diverged
        if higher:
            gap = float(self.objectives[self.diverged].max() - self.kept_objective)
            if self.subsample:
                verdict = (f"on the {self.subsample} explored rows: the best finite maximum found there is not "
                           "their global maximum, so the result may not be the data's")
            elif converged:
                verdict = "on the data: the result, the best finite maximum found, is not the global maximum"
            else:
                verdict = "on the data: the result is not the global maximum"
            parts.append(
                f"{higher} of {self.objectives.size} starts diverged (coefficients running off to infinity) to a "
                f"higher likelihood than the kept maximum's, by up to {gap:.4g} {verdict}, and the MLE may not "
                "exist (the likelihood climbs without a maximum along those starts' directions). "
                "A ridge (l2 > 0) or bounds on every slope make the problem well posed")
        return "; ".join(parts) or None

    def search_warning(self, converged):
        """The text of the SearchWarning a fit gives, or None (``converged``: whether the kept run
        converged; see :meth:`message`)."""
        return self.message(converged)
