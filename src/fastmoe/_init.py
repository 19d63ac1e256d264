"""Starting points of a fit: data-driven partitions, relocations, split-and-merge and soft-direction moves.

A start only needs to be roughly right, so it is computed on a subsample of at most ``INIT_SUBSAMPLE``
rows: a partition of the data into ``k`` groups (``"kmeans"`` on the gating inputs, or ``"random"``:
a random linear gating), softened so that no expert starts without data, then fitted by Newton
M-steps on fixed responsibilities with a small ridge (``_mstep.m_step_from_responsibilities``).

:func:`relocated_parameters` moves one expert of a converged fit elsewhere: the commonest local
maximum of a mixture of experts has two experts sharing one region while another region is served
badly, and no EM step leaves it. The move drops an expert and inserts a new one where the labels
say so: an expert fitted to the labels of a half-space of the gating inputs, gated towards it.
:func:`split_merge_parameters` is the search's last move from its answer: one expert dropped and
another split in two identical halves, from which Newton steps leave along the negative curvature.
:func:`soft_direction_parameters` is its cheaper stand-in on large data: the answer pushed along the
directions in which its likelihood is flattest, where a neighbouring maximum lies most often.
"""

from __future__ import annotations

import numpy as np

from ._mstep import m_step_from_responsibilities
from ._penalty import Penalty
from ._problem import Problem, column_scale
from .params import free_column_values, free_vector, from_free_vector

#: The data-driven starts ``fit(init=...)`` accepts by name.
INIT_METHODS = ("kmeans", "random")

# Starts are fitted on at most this many samples, with this softening of hard labels, under this ridge
# (a cluster in which some class never occurs would otherwise send its intercept to -inf), with at
# most this many Newton M-steps. The ridge is stated in standardised units (slope times its column's
# standard deviation, :func:`start_penalty`), so that the starts, and so the search's answer, do not
# depend on the units of the inputs; 3.0 there is the 1.0 on raw slopes that the search was tuned
# with on inputs uniform on [-1, 1] (variance 1/3).
INIT_SUBSAMPLE = 20_000
INIT_LABEL_SMOOTHING = 0.1
INIT_L2 = 3.0
INIT_NEWTON_ITER = 25
# Relocation: the new expert's half-space holds a share in RELOCATE_SHARE of the rows, and its gating
# rises across the boundary by RELOCATE_SHARPNESS (in units of the projections' spread).
RELOCATE_SHARE = (0.1, 0.4)
RELOCATE_SHARPNESS = (2.0, 6.0)
# A split-and-merge move's halves start this far apart (per coefficient, in standard deviations of the
# inputs), when they do not start identical.
SPLIT_SPREAD = 0.3
# Soft-direction moves: along the SOFT_DIRECTIONS flattest directions of the log-likelihood's quadratic
# model at the answer, each way, as far as the model says it drops by SOFT_DROP nats. A direction that
# would need a step longer than SOFT_MAX_STEP (standardised units: logit per standard deviation of a
# column) is one the data barely identify (near-dependent columns, near separation), not a barrier to
# a neighbour: on issue 12's held-out h15 (seed 3's answer) the two flattest need 640 and 250 units,
# the next two 20 and 15, and a move along one of those reaches the best known maximum.
SOFT_DIRECTIONS = 4
SOFT_DROP = 30.0
SOFT_MAX_STEP = 25.0


def start_penalty(problem: Problem, part: Problem):
    """The starts' ridge ``INIT_L2`` for a fit on ``part`` (a subset of ``problem``'s rows), in the
    standardised units of ``problem``'s rows (the search's exploration subsample, where it has one;
    see ``Penalty``'s ``slope_scales``). The reference ridge: it only keeps a start finite, and its
    form was the one the search was tuned and measured with (bench/README.md), whatever the fit's own."""
    return Penalty(INIT_L2, part, slope_scales=problem.column_scales, ridge="reference")


def _kmeans_labels(Z, k, rng, weights=None, n_lloyd=20):
    """Hard labels from weighted k-means (k-means++ seeding, a few Lloyd iterations) on the gating inputs,
    standardised (a column's units must not decide the partition).

    With integer weights this is k-means on the repeated rows, so a weighted fit starts where the
    fit of the expanded data would.
    """
    Z = Z / column_scale(Z, weights)
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
    # Lloyd's iterations with the distances as one matrix product (|z|^2 is the same for every centre
    # and drops out of the argmin) on centred inputs, which keeps that form free of cancellation:
    # a tenth of the time of the (n, k, d) differences at d = 10, n = 2e4.
    mean = np.average(Z, axis=0, weights=w)
    Zc = Z - mean
    centers = centers - mean
    labels = np.zeros(n, dtype=np.intp)
    for it in range(n_lloyd):
        new = (np.einsum("ij,ij->i", centers, centers) - 2.0 * (Zc @ centers.T)).argmin(axis=1)
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        member = (labels[:, None] == np.arange(k)) * w[:, None]
        mass = member.sum(axis=0)
        filled = mass > 0
        centers[filled] = (member.T @ Zc)[filled] / mass[filled, None]
    return labels


def _random_labels(Z, k, rng):
    """Hard labels from a random linear gating: random directions through the data's spread."""
    scale = column_scale(Z)
    logits = ((Z - Z.mean(axis=0)) / scale) @ rng.standard_normal((Z.shape[1], k)) + rng.standard_normal(k)
    return logits.argmax(axis=1)


def initial_parameters(problem: Problem, method, rng):
    """Starting (W, V) from a data partition: ``"kmeans"`` on the gating inputs or ``"random"``.

    Parameters
    ----------
    problem : Problem
    method : {"kmeans", "random"}
    rng : numpy.random.Generator

    Returns
    -------
    W, V : packed parameters in reference conventions.
    """
    n, k = problem.n_samples, problem.n_experts
    rows = np.sort(rng.choice(n, size=INIT_SUBSAMPLE, replace=False)) if n > INIT_SUBSAMPLE else slice(None)
    sub = problem.subset(rows)
    labels = (
        _kmeans_labels(sub.Z, k, rng, sub.sample_weight) if method == "kmeans" else _random_labels(sub.Z, k, rng)
    )
    resp = np.full((sub.n_samples, k), INIT_LABEL_SMOOTHING / k)
    resp[np.arange(sub.n_samples), labels] += 1.0 - INIT_LABEL_SMOOTHING
    return m_step_from_responsibilities(sub, resp, start_penalty(problem, sub), INIT_NEWTON_ITER)


def relocated_parameters(problem: Problem, W, V, rng):
    """``(W, V)`` with one expert dropped and a new one inserted, for a start that leaves a local maximum.

    The new expert serves a random half-space of the (standardised) gating inputs through a random
    row: its class model is a ridge multinomial regression of the labels on that half-space's rows, and
    its gating row rises across the half-space's boundary. The expert to drop is drawn at random.

    Parameters
    ----------
    problem : Problem
    W, V : packed parameters of a fit with ``problem.n_experts`` experts.
    rng : numpy.random.Generator

    Returns
    -------
    W, V : packed parameters in reference conventions.
    """
    n, k = problem.n_samples, problem.n_experts
    keep = np.delete(np.arange(k), rng.integers(k))
    Z = problem.Z
    scale = problem.column_scales[0]
    direction = rng.standard_normal(Z.shape[1])
    # Not along a column without spread: a half-space cannot cut it, and a gating slope on it (which no
    # likelihood sees) would stay wherever the move put it, into predictions where the column is not
    # constant (an all-zero indicator of the training rows).
    constant = problem.constant_columns[0]
    if constant.any() and not constant.all():
        direction[constant] = 0.0
    direction /= np.linalg.norm(direction) * scale  # a unit direction in standardised coordinates
    offset = float(Z[rng.integers(n)] @ direction)
    projection = Z @ direction - offset
    threshold = np.quantile(projection, 1.0 - rng.uniform(*RELOCATE_SHARE))
    rows = np.flatnonzero(projection >= threshold)
    inside = problem.subset(rows, n_experts=1)
    _, V_new = m_step_from_responsibilities(inside, np.ones((rows.size, 1)), start_penalty(problem, inside),
                                            INIT_NEWTON_ITER)
    spread = float(projection.std())
    sharpness = rng.uniform(*RELOCATE_SHARPNESS) / (spread if spread > 0.0 else 1.0)
    W_new = np.empty((1, W.shape[1]))
    W_new[0, 1:] = sharpness * direction  # logit sharpness * (projection - threshold)
    W_new[0, 0] = -sharpness * (threshold + offset)
    W_out = np.vstack([W[keep], W_new])
    V_out = np.concatenate([V[keep], V_new], axis=0)
    return W_out - W_out[-1], V_out - V_out[:, -1:, :]


def split_merge_parameters(W, V, drop, split, spread=None):
    """``(W, V)`` with expert ``drop`` removed and expert ``split`` in two halves.

    The halves share ``split``'s gating share (each intercept lowered by log 2), so the start has the
    likelihood of the fit without ``drop``. Two identical halves are a saddle of the likelihood
    wherever splitting the expert gains: EM keeps them identical, but trust-region Newton steps
    (``run_em(newton_first=True)``) leave along the Hessian's most negative curvature. Another
    direction may lead higher: with ``spread = (problem, rng)`` the halves start apart, at the split
    expert's coefficients plus and minus ``delta``, ``delta ~ N(0, SPLIT_SPREAD^2)`` per coefficient in
    units of the inputs' standard deviations (intercepts as they are). With one such move per pair
    beside the identical-halves one, the search of ``over-fit-bounded-search`` ended below the maximum
    reached from near the truth in 9 of 200 jobs instead of 13 (``SPLIT_SPREAD`` was chosen on 8 of
    those 13: 3 of them reach now, and 1 of the other 5).

    Parameters
    ----------
    W, V : packed parameters of a fit with ``k >= 2`` experts.
    drop, split : int
        Different experts of that fit.
    spread : (Problem, numpy.random.Generator), optional

    Returns
    -------
    W, V : packed parameters in reference conventions, ``split``'s second half last.
    """
    keep = [i for i in range(W.shape[0]) if i != drop]
    W_out = np.vstack([W[keep], W[split]])
    V_out = np.concatenate([V[keep], V[split][None]], axis=0)
    half = keep.index(split)
    W_out[[half, -1], 0] -= np.log(2.0)
    if spread is not None:
        problem, rng = spread
        z_scale, x_scale = problem.column_scales
        dW = rng.normal(0.0, SPLIT_SPREAD, W.shape[1]) / np.concatenate([[1.0], z_scale])
        dV = rng.normal(0.0, SPLIT_SPREAD, V.shape[1:]) / np.concatenate([[1.0], x_scale])
        z_constant, x_constant = problem.constant_columns  # coefficients no likelihood sees stay put
        dW[1:][z_constant] = 0.0
        dV[:, 1:][:, x_constant] = 0.0
        W_out[half] += dW
        W_out[-1] -= dW
        V_out[half] += dV
        V_out[-1] -= dV
    return W_out - W_out[-1], V_out - V_out[:, -1:, :]


def soft_direction_parameters(problem: Problem, W, V, neg_hess=None):
    """Starts near a maximum ``(W, V)``, along the directions in which its log-likelihood is flattest.

    A neighbouring maximum of a mixture of experts often differs from the kept one in the coefficients
    of one expert that the data pin down weakly (issue 12's p5, d = 5, k = 4, K = 3, n = 1e5: the two
    maxima 2.88 nats apart differ by 1-2 units in one expert's slopes, four fifths of the difference
    along the eight flattest directions). The log-likelihood's negative Hessian ``A`` at ``(W, V)`` is
    decomposed in the design columns' standardised units (``Problem.column_scales``: a slope times its
    column's standard deviation, intercepts as they are), and each of the ``SOFT_DIRECTIONS``
    eigenvectors of least curvature ``lambda`` whose step stays within ``SOFT_MAX_STEP`` gives two
    starts, at ``+-sqrt(2 SOFT_DROP / lambda)`` along it: where the quadratic model has lost
    ``SOFT_DROP`` nats, past the barrier of a near neighbour, while Newton steps from a point that is
    still in the maximum's basin bring it back. The likelihood's curvature, not a ridge's, chooses:
    along linearly dependent columns only a ridge curves the objective, and a move there can only
    return. Slopes of columns without spread (``Problem.constant_columns``, which include the all-zero
    ones) stay put, as in the other moves.

    Parameters
    ----------
    problem : Problem
    W, V : packed parameters of a maximum of the fit's objective on ``problem``.
    neg_hess : ndarray (p, p), optional
        The log-likelihood's negative Hessian at ``(W, V)`` (``Problem.hessian_pass``), where the caller
        has formed it already; else formed here.

    Returns
    -------
    list of (W, V)
        ``2 * SOFT_DIRECTIONS`` starts at most (fewer where fewer directions qualify, none where the
        Hessian is not finite), from the flattest direction on, each direction's positive side first.
    """
    k, K = V.shape[0], V.shape[1]
    scale = free_column_values(*problem.column_scales, 1.0, k, K)
    # Constant columns include those that are 0 on every row of positive weight (weighted spreads).
    seen = np.flatnonzero(~free_column_values(*problem.constant_columns, False, k, K))
    if neg_hess is None:
        _, _, neg_hess = problem.hessian_pass(W, V)
    A = neg_hess[np.ix_(seen, seen)] / np.outer(scale[seen], scale[seen])
    if not np.isfinite(A).all():
        return []
    eigval, eigvec = np.linalg.eigh(A)
    # sqrt(2 SOFT_DROP / lambda) <= SOFT_MAX_STEP
    wanted = np.flatnonzero(eigval >= 2.0 * SOFT_DROP / SOFT_MAX_STEP**2)[:SOFT_DIRECTIONS]
    theta = free_vector(W, V)
    starts = []
    for m in wanted:
        step = np.zeros_like(theta)
        step[seen] = np.sqrt(2.0 * SOFT_DROP / eigval[m]) * eigvec[:, m] / scale[seen]
        for sign in (1.0, -1.0):
            starts.append(from_free_vector(theta + sign * step, W, V))
    return starts
