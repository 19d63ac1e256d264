"""Starts and restarts: the search for the global maximum, its runs in parallel on threads.

The likelihood of a mixture of experts has many local maxima, and EM from any one data-driven start
usually stops at one of them (measured, issue 12: from a k-means start 0-3 of 10 seeds reached the best
maximum, 6169 nats short at d = 10, n = 1e5). The default search (``init="search"``) therefore

1. explores on a random subsample of ``max(30 000, 25 p)`` rows (all rows when there are not many
   more): ``n_init`` starts, alternately a k-means and a random partition of the gating inputs turned
   into parameters (``_init``), run to a looser tolerance with trust-region Newton steps on the
   likelihood first (``run_em(newton_first=True)``: joint steps in the gating and the experts escape
   the basins EM settles in; on issue 12's p4 they reached the global maximum from 8 of 16 k-means
   starts, EM from 3).
   Another round of ``n_init`` starts follows, within a budget of explored rows (``SEARCH_ROW_BUDGET``:
   small data, where a run is cheap and the likelihood rugged, get more runs; starts get half of it on
   all the data, all but one round of moves on a subsample),
   until the best maximum has been reached twice and the Good-Turing estimate of the chance that one
   more start finds a maximum not seen yet (maxima reached by one start only, over the starts; Finch,
   Mendell & Thode 1989) is at most ``UNSEEN_STOP``, after two rounds at least (four starts are too
   few for that estimate: on issue 12's p9, two local maxima reached twice each ended the search 3300
   nats short in 2 of 10 seeds). (Stopping as soon as the best was reached twice missed the global
   maximum 2 times in 10 where a local one 330 nats lower has the larger basin: issue 12's p4.)
2. tries to leave the best maximum found: rounds of ``n_init`` relocation moves (one expert dropped
   and a new one inserted where a half-space's labels call for it, ``_init.relocated_parameters``),
   each run Newton-first like a start, until ``MOVE_PATIENCE`` moves in a row found no higher
   maximum or the budget is spent (the split-and-merge idea of Ueda et al. 2000, with a supervised
   insertion). Where the global maximum's basin is small, moves find it more often than starts do: on
   issue 12's p2 (tanh gating, n = 1e4) 2-5 of 32 moves from the commonest maximum reached the best,
   against 0 of 48 k-means and 3 of 48 random starts; Newton-first moves cost a fifth of EM moves there
   (25 against 315 iterations) and reach it as often; on p6 (d = 10) three fifths of the time.
   Where a start diverged above the best finite maximum found, that maximum is proved not to be the
   global one of the explored rows, and the starts (without the early stop) and moves run once more
   with the same budget (``SEARCH_EXTENSIONS``). On the held-out truth h11 of issue 12's benchmark (d = 2, k = 3, K = 4,
   n = 1e4), whose best maximum 5 of 10 seeds reached, 7 of 10 then did; where no MLE was found
   (diverged runs above every finite maximum: p1, p2, p5, p8, h2, h5, h9, h12) the best finite
   maximum was reached as often or more (p8: 8 -> 10 of 10). A search that runs the extension takes
   about twice as long (held-out seeds, same machine: median 2.15x, 0.5-5x; 1.7x net of the 1.27x
   drift of the searches it did not change). Searches where nothing diverged above their answer are
   unchanged;
3. scores the distinct maxima found on all the data and runs the best of them to the fit's tolerance
   there, by the Newton finish and EM, then the next ones while they could still overtake it: up to
   ``FINAL_TOP``, while a candidate's score is within ``FINAL_MARGIN`` expected gains of a subsample's
   maximum on all the data below the best objective reached;
4. tries, on all the data, every split-and-merge move from that answer (one expert dropped, another
   split in two, ``_init.split_merge_parameters``: from identical halves and from halves pushed apart
   at random, 2 k(k - 1) moves, run Newton-first like a start), and
   again from a higher maximum one finds, up to ``FINAL_MOVE_ROUNDS`` rounds, where the moves cost at
   most ``SPLIT_MERGE_ROW_BUDGET`` rows (k(k - 1) n, plus each Newton step's eigendecomposition,
   weighed by ``_row_weight`` above ``PARAMS_REF`` parameters).
   Where k exceeds the number of true experts, the maxima differ by which true expert is split and
   how, by 0.02-5 nats at n = 5e3-1e5: less than a subsample can tell apart, so the exploration
   missed the highest in 27 of 200 fits of the preset ``over-fit-bounded-search`` (k = 3, k* = 2);
   from the misses' answers 1-3 of the 6 moves rose, and with identical-halves moves the search
   missed in 13 of the 200 (0.02-2.4 nats), with both kinds in 9 (0.02-1.1 nats), at 1.4x and 1.8x
   the median fit time.
   Where such a round is priced out (issue 12's p5 and p6 at n = 1e5, k = 4) but a round of 2
   ``SOFT_DIRECTIONS`` moves costs at most ``SOFT_MOVE_ROW_BUDGET`` rows, soft-direction moves run
   instead (:func:`soft_moves`: the answer pushed both ways along the directions in which its
   log-likelihood is flattest, ``_init.soft_direction_parameters``), in rounds the same way. On p5 the
   exploration led 3 seeds in 10 to a maximum 2.88 nats below the best known, which differs from it in
   one expert's slopes; a move from it reached the best in all three (10 of 10 seeds, from 7).

On a subsample, a run that enters the quadratic basin of a maximum an earlier round reached stops there
and counts as having reached it (:class:`KnownMaxima`): the last steps of most runs only confirm a
maximum already known.

Maxima closer than the subsample can tell apart (on a mirror-symmetric two-expert truth at n = 6e4, two
maxima 0.005 nats apart) may be confused: the search then keeps either. The structural maxima that trap
EM differ by O(n) nats, so a subsample tells them apart while it costs a fraction of a pass over large
data; it is not smaller than 30 000 rows because a small sample has a
rugged likelihood of its own (at 1e4 rows, maxima a few nats apart abound), whose maxima need not be
those of all the data (issue 12's p3 at n = 1e5: explored on 1e4 rows, 2 of 10 seeds ended 7 nats
short; on 3e4 rows both reached the best); a start is the natural unit of parallel work below
~1e5 rows, so starts run on separate threads (each with kernels on its share of the threads), and since
every start draws from its own seed and every kernel is thread-count invariant, the result is the same
for any number of threads.
"""

from __future__ import annotations

import dataclasses
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ._em import RunResult, run_em
from ._init import (SOFT_DIRECTIONS, initial_parameters, relocated_parameters, soft_direction_parameters,
                    split_merge_parameters)
from ._monitor import ConvergenceMonitor, StartLog, same_maximum
from .params import free_vector

# The exploration subsample: at least EXPLORE_MIN rows and EXPLORE_PER_PARAM per free parameter; data
# with fewer than EXPLORE_WHOLE times that many rows are explored whole.
EXPLORE_MIN = 30_000
EXPLORE_PER_PARAM = 25
EXPLORE_WHOLE = 1.5
# Exploration stops at this relative tolerance (or the fit's, when looser): it only has to tell
# maxima apart, the refinement on all the data reaches the fit's own tolerance.
EXPLORE_TOL = 1e-7
#: Starts of the default search, cycled: (partition of the gating inputs, Newton steps first).
#: Tried and dropped: a third, y-aware start, k-means on the per-sample scores of a one-expert fit
#: (label residual times standardised inputs: samples the pooled logit misfits alike), cycled with
#: these two. On issue 12's rugged problems (10 seeds each) it reached the best known as often or
#: less: h11 7 -> 6, p1 2 -> 0, h2 1 -> 0, h9 1 -> 0, h5 1 -> 1, h12 9 -> 9 (bench/README.md).
SEARCH_PLAN = (("kmeans", True), ("random", True))
#: Starts per round of the default search when ``n_init`` is not given. Starts and moves together
#: explore at most SEARCH_ROW_BUDGET rows, in between SEARCH_ROUNDS_MIN and SEARCH_ROUNDS_MAX rounds
#: of ``n_init`` runs; moves stop after MOVE_PATIENCE moves in a row find no higher maximum.
SEARCH_N_INIT = 4
SEARCH_ROW_BUDGET = 480_000
SEARCH_ROUNDS_MIN, SEARCH_ROUNDS_MAX = 3, 16
MOVE_PATIENCE = 16
#: Rounds of starts stop when a further start is estimated to find a new maximum at most this often.
UNSEEN_STOP = 0.1
#: Where a start diverged above the best finite maximum found (so that maximum is not the global one),
#: the starts and moves run again with a budget as large, this many times at most.
SEARCH_EXTENSIONS = 1
#: Distinct maxima of the exploration run on all the data at most, and how many expected gains (of a
#: subsample's maximum on all the data) below the best objective reached a candidate may score and
#: still be run.
FINAL_TOP = 4
FINAL_MARGIN = 4.0
#: Split-and-merge moves from the answer, on all the data: at most FINAL_MOVE_ROUNDS rounds of every
#: (drop, split) pair twice, and only where k(k - 1) (n + EIGH_ROWS_PER_PARAM p) rows (weighed by
#: ``_row_weight``) are at most SPLIT_MERGE_ROW_BUDGET (each move costs about a fit from near the
#: truth, so a round at d = 10, k = 4, n = 1e5 would triple the search's time: 4.6 -> 13.4 s on issue
#: 12's p6, where no move ever rose).
FINAL_MOVE_ROUNDS = 3
SPLIT_MERGE_ROW_BUDGET = 1_000_000
#: Where a round of split-and-merge moves is priced out, the 2 SOFT_DIRECTIONS soft-direction moves run
#: instead when their (n + EIGH_ROWS_PER_PARAM p) rows each (weighed by ``_row_weight``) are at most
#: SOFT_MOVE_ROW_BUDGET: at n = 1e5 with k = 4 (issue 12's p5, p6, held-out h15), not at n = 1e6 (p9).
SOFT_MOVE_ROW_BUDGET = 2_000_000
#: A Newton step's eigendecomposition of the (p, p) Hessian costs about as much as the exact-Hessian
#: pass over this many rows per free parameter (measured 10-45, median about 30, for p = 24-267 at
#: d = 2 and d = 10, 1 thread). On few rows it is the step's cost: 20 rows with k = 30 (p = 267) made
#: 1740 moves a round, 4 ms a Newton step each, and the fit took 6 minutes, 5 of them in moves. Above
#: ``_trust_region.EIGEN_MAX_PARAMS`` a step factors by Cholesky instead, for less: the count errs safe
#: there, and moves seldom run (digits' 61 features, 10 classes, two experts: 1.1e6 rows, skipped).
EIGH_ROWS_PER_PARAM = 30
#: The row budgets above were set on problems of at most 267 free parameters (issue 12's benchmark,
#: the studies). A row's Newton pass costs O(p^2), so above PARAMS_REF a row counts (p / PARAMS_REF)^2
#: rows: a search on many parameters does the work of one on PARAMS_REF, within SEARCH_ROUNDS_MIN.
#: (docs/real_data.md's largest, digits' 10 components with three experts, p = 319 on 1797 rows, stays
#: at SEARCH_ROUNDS_MAX.)
#: Without it the default fit on scikit-learn's digits (61 features, 10 classes, p = 1178 with two
#: experts) ran 64 starts and moves on its 1797 rows and did not end within 15 minutes.
PARAMS_REF = 300


def _move_rows(problem, penalty):
    """What one final move on all the data costs against the budgets, in rows: its passes over the
    data plus each Newton step's eigendecomposition (``EIGH_ROWS_PER_PARAM`` rows per parameter),
    weighed by :func:`_row_weight`."""
    n_free = penalty.mask.size
    return (problem.n_samples + EIGH_ROWS_PER_PARAM * n_free) * _row_weight(n_free)


def _row_weight(n_free):
    """What a row of the data costs against the budgets, for ``n_free`` free parameters."""
    return max(1.0, (n_free / PARAMS_REF) ** 2)


#: A run of the exploration has joined a maximum found before when its objective is within
#: JOIN_RTOL (relative) of it and the maximum's quadratic model predicts that gap to JOIN_AGREEMENT
#: (relative) at the run's point, for some order of the experts (all k! orders up to JOIN_MAX_EXPERTS).
JOIN_RTOL = 1e-2
JOIN_AGREEMENT = 0.2
JOIN_MAX_EXPERTS = 6


@dataclass(frozen=True)
class Start:
    """One start: how its parameters are drawn and whether Newton steps come first."""

    kind: str
    newton_first: bool
    seed: object
    base: tuple = None  # (W, V) of the fit a relocation move starts from
    joins: object = None  # KnownMaxima.match of the exploration, or None
    ceiling: float = None  # the objective of a maximum already held on the same rows (run_em's ceiling)


class KnownMaxima:
    """The distinct maxima that earlier rounds of an exploration reached, with their curvature.

    Most runs of a search end at a maximum found before (on issue 12's p6, 5 to 13 of 16 runs reached
    the best one), and the last third of such a run is Newton steps inside that maximum's quadratic
    basin, where its outcome is already decided. A run stops there (``"joined"``) once its point
    ``theta`` satisfies, for a known maximum ``(theta_m, A_m, F_m)`` (``A_m`` the negative Hessian) and
    some order of the experts (a run may find a maximum with its experts relabelled),

        q = (theta - theta_m)' A_m (theta - theta_m) / 2 <= JOIN_RTOL |F_m|   and
        |(F_m - F) - q| <= JOIN_AGREEMENT q,

    the objective's gap to the maximum being what the maximum's quadratic model predicts at that
    distance. The run is then counted as having reached that maximum. Only maxima of earlier rounds
    are known to a round's runs, so the result does not depend on how runs are scheduled on threads.

    Measured on issue 12's benchmark (problems explored on a subsample, 10 seeds each, 1 thread): with
    1% and 20% the runs of rounds 2-4 of a p6 search took 151 Newton steps instead of 198, the default
    fit 4.1-4.6 s instead of 4.8-5.0 s on 2 threads, and p3, p5, p6 and p9 reached the best known
    maximum on the same seeds as without joins; with 0.1% and 10% runs joined only in their last two
    steps and saved nothing measurable.
    """

    def __init__(self, problem, penalty):
        k = problem.n_experts
        order = itertools.permutations(range(k)) if k <= JOIN_MAX_EXPERTS else [tuple(range(k))]
        self._orders = np.array(list(order))
        self._problem, self._penalty = problem, penalty
        self._entries = []  # (theta_m, A_m, run, the log-likelihood's negative Hessian at the run)

    def add(self, runs):
        """Keep the maxima among ``runs`` not known yet (converged, finite, strictly concave there)."""
        for run in runs:
            if run.monitor.reason != "converged" or run.diverged:
                continue
            if any(same_maximum(run.objective, entry[2].objective) for entry in self._entries):
                continue
            theta = free_vector(run.W, run.V)
            _, _, neg_hess = self._problem.hessian_pass(run.W, run.V)
            A = neg_hess + self._penalty.hessian
            try:
                np.linalg.cholesky(A)
            except np.linalg.LinAlgError:
                continue  # not a strict maximum: no quadratic basin to recognise
            self._entries.append((theta, A, run, neg_hess))

    def neg_hessian(self, run):
        """The log-likelihood's negative Hessian at ``run`` when :meth:`add` kept it, else None: a
        soft-direction round needs it at the answer that this round's :meth:`add` has just formed."""
        return next((entry[3] for entry in self._entries if entry[2] is run), None)

    def match(self, W, V, objective):
        """The run of the known maximum whose quadratic basin ``(W, V)`` lies in, or None."""
        if not self._entries:
            return None
        k = W.shape[0]
        Wp = W[self._orders]
        Wp = Wp - Wp[:, -1:, :]  # the last expert of each order is the reference
        thetas = np.concatenate([Wp[:, : k - 1].reshape(len(self._orders), -1),
                                 V[self._orders][:, :, : V.shape[1] - 1].reshape(len(self._orders), -1)], axis=1)
        for theta_m, A, run, _ in self._entries:
            gap = run.objective - objective
            if not 0.0 <= gap <= JOIN_RTOL * abs(run.objective):
                continue
            delta = thetas - theta_m
            q = 0.5 * np.sum((delta @ A) * delta, axis=1).min()  # one matrix product for all orders
            if q <= JOIN_RTOL * abs(run.objective) and abs(gap - q) <= JOIN_AGREEMENT * q:
                return run
        return None


def _seeds(rng, n):
    """Independent streams for ``n`` starts, drawn from ``rng`` in one go (so scheduling cannot matter)."""
    return np.random.SeedSequence(rng.integers(0, 2**63, size=4)).spawn(n)


def _run_start(problem, penalty, start, tol, max_iter, newton, callback, verbose):
    rng = np.random.default_rng(start.seed)
    if start.kind == "given":
        W, V = start.base
    elif start.kind == "relocate":
        W, V = relocated_parameters(problem, *start.base, rng)
    else:
        W, V = initial_parameters(problem, start.kind, rng)
    monitor = ConvergenceMonitor(tol, max_iter, callback, verbose)
    return run_em(problem, W, V, penalty, monitor, newton=newton, newton_first=start.newton_first,
                  joins=start.joins, ceiling=start.ceiling)


def run_starts(problem, penalty, starts, *, tol, max_iter, newton, n_threads, callback=None, verbose=0):
    """Run every start to its end; in parallel threads unless a callback or verbose output is asked for.

    Returns the :class:`~fastmoe._em.RunResult` of each start, in the order of ``starts``.
    """
    workers = 1 if callback is not None or verbose else max(1, min(n_threads, len(starts)))
    if workers == 1:
        runs = []
        for start in starts:
            runs.append(_run_start(problem, penalty, start, tol, max_iter, newton, callback, verbose))
            if runs[-1].monitor.reason == "callback":  # the user's stop ends the whole fit
                break
        return runs
    inner = max(1, n_threads // workers)

    def run(i):
        # A Problem's buffers belong to one run at a time: each start gets its own.
        return _run_start(problem.with_threads(inner), penalty, starts[i], tol, max_iter, newton, None, 0)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(len(starts))))


def _best(runs):
    """Index of the best run that ended at a finite maximum, neither diverged nor stuck in a saturated
    start (of the best run when none did); a run the callback stopped wins, since the user asked the
    fit to end there."""
    if runs[-1].monitor.reason == "callback":
        return len(runs) - 1
    objectives = np.array([r.objective for r in runs])
    finite = np.array([not (r.diverged or r.monitor.stuck_saturated) for r in runs])
    pool = np.flatnonzero(finite) if finite.any() else np.arange(len(runs))
    return int(pool[np.argmax(objectives[pool])])


def restarts(problem, penalty, kind, n_init, rng, *, tol, max_iter, newton, n_threads, callback=None, verbose=0):
    """``n_init`` EM runs on all the data from ``kind`` starts (``init="kmeans"`` or ``"random"``).

    Returns ``(best RunResult, StartLog)``.
    """
    if n_init == 1:  # one start draws from ``rng`` itself, as fastmoe 0.2 did
        runs = [run_em(problem, *initial_parameters(problem, kind, rng), penalty,
                       ConvergenceMonitor(tol, max_iter, callback, verbose), newton=newton)]
    else:
        starts = [Start(kind, False, seed) for seed in _seeds(rng, n_init)]
        runs = run_starts(problem, penalty, starts, tol=tol, max_iter=max_iter, newton=newton,
                          n_threads=n_threads, callback=callback, verbose=verbose)
    best = _best(runs)
    return runs[best], StartLog.of(runs, best, subsample=None)


def search(problem, penalty, n_init, rng, *, tol, max_iter, newton, n_threads, callback=None, verbose=0):
    """The default search: explore ``n_init`` starts on a subsample, refine the best on all the data.

    Returns ``(RunResult on all the data, StartLog)``.
    """
    n_free = penalty.mask.size
    size = max(EXPLORE_MIN, EXPLORE_PER_PARAM * n_free)
    whole = problem.n_samples <= EXPLORE_WHOLE * size
    if whole:
        explore = problem
    else:
        # Single-precision Hessian products on the subsample: its maxima are run again in double.
        explore = problem.subset(np.sort(rng.choice(problem.n_samples, size=size, replace=False)),
                                 search_hessian=True)
    rows = explore.n_samples * _row_weight(n_free)
    budget = n_init * int(np.clip(SEARCH_ROW_BUDGET // (n_init * rows), SEARCH_ROUNDS_MIN, SEARCH_ROUNDS_MAX))
    seeds = _seeds(rng, budget)
    options = dict(tol=tol if whole else max(tol, EXPLORE_TOL), max_iter=max_iter, newton=newton,
                   n_threads=n_threads, callback=callback if whole else None, verbose=verbose if whole else 0)
    # On a subsample, a run that enters the quadratic basin of a maximum found before stops there
    # (KnownMaxima). Not on all the data, where the kept run is the fit's answer and must converge.
    known = None if whole or penalty.bounds is not None else KnownMaxima(explore, penalty)
    joins = None if known is None else known.match

    def explore_round(starts):
        new = run_starts(explore, penalty, starts, **options)
        if known is not None:
            # A joined run counts as the maximum it joined (its own monitor kept).
            new = [dataclasses.replace(r.monitor.joined, monitor=r.monitor) if r.monitor.reason == "joined" else r
                   for r in new]
            known.add(new)
        return new

    runs = []
    # Rounds of starts. On all the data, in half the budget at most: moves from a good maximum find the
    # best more often than new starts once the starts' maxima are known (issue 12's p2: 2-5 moves in 32
    # against 3 starts in 48). On a subsample, in all of it but one round of moves: there the answer is
    # the best of the distinct maxima found, scored on all the data, and moves from the subsample's best
    # mostly return to it, while that maximum need not be the data's best (issue 12's p5, n = 1e5 on 3e4
    # rows: with half the budget for starts 4 of 10 seeds reached the best, with all but a round 6 of 10).
    start_budget = budget // 2 if whole else budget - n_init
    for stage in range(1 + SEARCH_EXTENSIONS):
        spent = len(runs)
        if stage:
            seeds += _seeds(rng, budget)
        while len(runs) + n_init <= spent + max(start_budget, n_init):
            plan = [SEARCH_PLAN[(len(runs) + i) % len(SEARCH_PLAN)] for i in range(n_init)]
            runs += explore_round([Start(kind, first, seed, joins=joins) for (kind, first), seed in
                                   zip(plan, seeds[len(runs):len(runs) + n_init])])
            best = _best(runs)
            log = StartLog.of(runs, best, None)
            # After two rounds at least; not in an extension, which runs because the maximum its
            # starts agree on is known not to be the global one.
            settled = not stage and len(runs) > n_init and log.n_best >= 2 and log.unseen <= UNSEEN_STOP
            if settled or runs[best].diverged or _stopped(runs):
                break
        # Rounds of moves from the best maximum so far, until MOVE_PATIENCE moves in a row found none higher.
        since_higher = 0
        while len(runs) + n_init <= spent + budget and since_higher < MOVE_PATIENCE:
            if runs[best].diverged or _stopped(runs):
                break
            base = (runs[best].W, runs[best].V)
            runs += explore_round([Start("relocate", True, seed, base, joins)
                                   for seed in seeds[len(runs):len(runs) + n_init]])
            previous, best = best, _best(runs)
            higher = best != previous and not same_maximum(runs[best].objective, runs[previous].objective)
            since_higher = 0 if higher else since_higher + n_init
        best = _best(runs)
        # A start that diverged above the best finite maximum proves that maximum is not the global
        # one: search once more (or stop, when none did).
        if runs[best].diverged or _stopped(runs) or not StartLog.of(runs, best, None).higher_diverged:
            break
    log = StartLog.of(runs, best, subsample=None if whole else size)
    if _stopped(runs):
        return runs[best], log
    if whole:
        return final_moves(problem, penalty, runs[best], log, rng, tol=tol, max_iter=max_iter, newton=newton,
                           n_threads=n_threads)
    # The subsample's own objective ranks maxima whose gap is O(n) nats on all the data only up to
    # the noise of its O(size) scale, where maxima that fit the subsample's own points compete. Every
    # maximum it found is scored on all the data instead (one E-step pass each: nine tenths of the rows
    # are new to it), and the best few are run to the fit's tolerance there, from the highest score.
    candidates = [r for r in runs if not r.diverged] or runs
    scores = [problem.loglik(r.W, r.V) - penalty.total(r.W, r.V) for r in candidates]
    # A subsample's maximum sits O(sqrt(p / size)) from the data's in its basin, so its score falls
    # short of the maximum it leads to by about (n / size - 1) chi2_p / 2 nats (the subsample's
    # estimate is the data's plus noise of covariance (1 / size - 1 / n) times the inverse
    # information): 244 expected, 230-275 seen, on issue 12's p6 (p = 209, 3e4 of 1e5 rows). A
    # candidate scored more than FINAL_MARGIN such gains (or the largest gain seen, when larger) below
    # the best objective reached cannot overtake it and is not run: on p6 the runner-up scored 1350
    # nats below, and running it cost as much as the winner; on p3 (p = 24) maxima 4 nats apart are
    # all run.
    expected_gain = 0.5 * (problem.total_weight / explore.total_weight - 1.0) * n_free
    finals, gains = [], [expected_gain]
    for i in _distinct_order(scores)[:FINAL_TOP]:
        # Only a finite maximum is an answer to overtake: a diverged final (its objective above every
        # finite maximum's, on issue 12's p5) neither ends the candidates nor caps them.
        held = [r.objective for r in finals if not r.diverged]
        if held and scores[i] + FINAL_MARGIN * max(gains) < max(held):
            break  # the rest scored lower still
        # Newton first: near a maximum its decrements certify convergence, where EM's changes on a
        # flat ridge can look settled 0.02 nats short of it.
        # A candidate seen heading below the best final so far stops there (``ceiling``): it cannot win.
        ceiling = max(held) if held else None
        finals += run_starts(problem, penalty, [Start("given", newton, None, (candidates[i].W, candidates[i].V),
                                                      ceiling=ceiling)],
                             tol=tol, max_iter=max_iter, newton=newton, n_threads=n_threads, callback=callback,
                             verbose=verbose)
        gains.append(finals[-1].objective - scores[i])
        if _stopped(finals):
            break
    if _stopped(finals):
        return finals[-1], log
    return final_moves(problem, penalty, finals[_best(finals)], log, rng, tol=tol, max_iter=max_iter,
                       newton=newton, n_threads=n_threads)


def final_moves(problem, penalty, answer, log, rng, *, tol, max_iter, newton, n_threads):
    """The search's last moves from ``answer`` on all the data: :func:`split_merge` where its rounds are
    affordable, else :func:`soft_moves` where theirs are.

    Returns ``(the best RunResult, log with the moves recorded)``.
    """
    options = dict(tol=tol, max_iter=max_iter, newton=newton, n_threads=n_threads)
    k, rows = problem.n_experts, _move_rows(problem, penalty)
    if k < 2 or answer.diverged:
        return answer, log
    if k * (k - 1) * rows <= SPLIT_MERGE_ROW_BUDGET:
        return split_merge(problem, penalty, answer, log, rng, **options)
    if 2 * SOFT_DIRECTIONS * rows <= SOFT_MOVE_ROW_BUDGET and penalty.bounds is None:
        return soft_moves(problem, penalty, answer, log, **options)
    return answer, log


def split_merge(problem, penalty, answer, log, rng, *, tol, max_iter, newton, n_threads):
    """Rounds of every split-and-merge move from ``answer`` on all the data while one reaches higher.

    Each (drop, split) pair is tried twice a round: from identical halves, and from halves pushed
    apart at random (``_init.split_merge_parameters``' ``spread``, from ``rng``).

    Returns ``(the best RunResult, log with the moves of every round)``; ``answer`` itself when no move
    rose, none is affordable (``SPLIT_MERGE_ROW_BUDGET``, the rows of a round with each Newton step's
    eigendecomposition counted as ``EIGH_ROWS_PER_PARAM`` rows per parameter, weighed by
    ``_row_weight``), ``k < 2`` or the answer diverged.

    The moves run on all the data even where the search explored a subsample. Tried and dropped: moves
    run on the subsample (stopping in the basin of a maximum found before), only their new maxima run on
    all the data. On issue 12's p3 the fit took two thirds of the time, but on 8 jobs of the preset
    ``over-fit`` at n = 6e4 (ridge, no box) it ended below these moves' answer in 4 (by 0.04 to 2.5
    nats) and above it in 1 (0.8 nats): maxima that close are not told apart on a subsample. Nor as a
    fallback where moves on all the data are priced out: on issue 12's held-out h15 (d = 2, k = 4,
    n = 1e5, no MLE found), with every new maximum run on all the data, seeds 0 and 1 rose 4.3 and 3.6
    nats, reaching the best finite maximum on neither, at 3-4 times the time (bench/README.md).
    """
    k = problem.n_experts
    pairs = [(drop, split) for drop in range(k) for split in range(k) if split != drop]
    if not pairs or answer.diverged or len(pairs) * _move_rows(problem, penalty) > SPLIT_MERGE_ROW_BUDGET:
        return answer, log

    def moves(answer, known):
        # The random halves are drawn here, in the calling thread, so no schedule can change them.
        spreads = [None] * len(pairs) + [(problem, np.random.default_rng(seed)) for seed in _seeds(rng, len(pairs))]
        return [split_merge_parameters(answer.W, answer.V, drop, split, spread)
                for (drop, split), spread in zip(pairs + pairs, spreads)]

    return _climb(problem, penalty, answer, log, moves, tol=tol, max_iter=max_iter, newton=newton,
                  n_threads=n_threads)


def soft_moves(problem, penalty, answer, log, *, tol, max_iter, newton, n_threads):
    """Rounds of soft-direction moves from ``answer`` on all the data while one reaches higher: the
    answer pushed both ways along its ``SOFT_DIRECTIONS`` flattest directions
    (``_init.soft_direction_parameters``), run Newton-first like a start.

    Where a round of split-and-merge moves costs more than ``SPLIT_MERGE_ROW_BUDGET`` rows (issue 12's
    p5, p6 and held-out h15: k = 4, n = 1e5), these 8 moves at most stand in, within
    ``SOFT_MOVE_ROW_BUDGET``: most return to the answer's quadratic basin within a few steps and stop
    there. Measured by hand, 1 thread, on the default fits that missed the best known maximum with the
    search before them: on p5 (seeds 0, 7, 9, all at a maximum 2.88 nats below it) and on h15's seed 3
    (1.06 nats below) a move reached it; on h15's other misses none did (bench/README.md).

    Returns ``(the best RunResult, log with the moves of every round)``.
    """
    def moves(answer, known):
        neg_hess = None if known is None else known.neg_hessian(answer)
        return soft_direction_parameters(problem, answer.W, answer.V, neg_hess)

    return _climb(problem, penalty, answer, log, moves, tol=tol, max_iter=max_iter, newton=newton,
                  n_threads=n_threads)


def _climb(problem, penalty, answer, log, moves, *, tol, max_iter, newton, n_threads):
    """Up to ``FINAL_MOVE_ROUNDS`` rounds of Newton-first runs from the starts ``moves(answer, known)``
    (``known``: the rounds' ``KnownMaxima``, the answer among them, or None in a box), each round from
    the highest maximum the one before reached, while one rises above ``answer``."""
    runs_of_moves = []
    # Only a move that rises above the answer matters. One seen heading for a lower maximum stops there
    # (``ceiling``); one that enters the answer's quadratic basin stops there too (``KnownMaxima``; not
    # in a box, whose faces the quadratic model does not see). On issue 12's p3 (n = 1e5) two of six moves
    # went back to the answer, in 17-23 Newton steps each.
    known = None if penalty.bounds is not None else KnownMaxima(problem, penalty)
    for _ in range(FINAL_MOVE_ROUNDS):
        if known is not None:
            known.add([answer])
        starts = [Start("given", True, None, start, joins=None if known is None else known.match,
                        ceiling=answer.objective) for start in moves(answer, known)]
        if not starts:
            break
        runs = run_starts(problem, penalty, starts, tol=tol, max_iter=max_iter, newton=newton, n_threads=n_threads)
        runs_of_moves += runs
        top = runs[_best(runs)]
        if top.diverged or not top.objective > answer.objective or same_maximum(top.objective, answer.objective):
            break
        answer = top
    return answer, log.with_moves(runs_of_moves)


def _stopped(runs):
    return runs[-1].monitor.reason == "callback"


def _distinct_order(scores):
    """Indices of ``scores`` from the highest, one per maximum (``same_maximum``)."""
    kept = []
    for i in np.argsort(scores)[::-1]:
        if not any(same_maximum(scores[i], scores[j]) for j in kept):
            kept.append(int(i))
    return kept
