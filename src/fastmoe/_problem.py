"""The data of one fit bound to the compiled kernels: validated once, buffers allocated once.

``Problem`` hands the fit the few operations it needs (log-likelihood, the fused M-step pass, M-step
objectives at trial parameters, the exact log-likelihood Hessian) in terms of the packed parameters
``W`` (k, 1 + d_gate) and ``V`` (k, K, 1 + d), and turns the kernels' packed upper-triangle Hessians
into full matrices.

One sign everywhere: like the kernels, every curvature matrix here is a *negative* Hessian (``neg_hess``,
positive semi-definite at a maximum: the information). The Newton systems, the trust region and the
observed information all take it as it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from . import _dispatch
from .params import free_column_values


# An expert whose responsibility mass is below this fraction of the total weight has no data to fit.
EMPTY_EXPERT_FRACTION = 1e-8
# Log-likelihood differences smaller than this (relative), or than the problem's rounding floor, are
# rounding in the summation, not real changes.
ROUNDING_SLACK = 1e-12


# A column whose standard deviation is at most this fraction of its mean is constant to rounding (one
# repeated value such as 0.1 gives a deviation of about 1e-17, not 0, since its mean rounds).
CONSTANT_SPREAD = 1e-12
# Standardised columns are linearly dependent when their correlation matrix has an eigenvalue below
# DEPENDENT_EIGEN (a sum of two columns, rounded: about 1e-32; correlations of 1 - 1e-6: about 1e-6);
# the columns of such an eigenvector with a loading above DEPENDENT_LOADING form the dependent set.
DEPENDENT_EIGEN = 1e-10
DEPENDENT_LOADING = 1e-3


# Designs larger than MOMENT_BLOCKED entries have their moments summed over blocks of MOMENT_BLOCK
# entries' rows: every fit computes them (``_units``), and the (n, d) temporaries of the plain sums
# came to two thirds of the data's size on top of the data at n = 1e7 (bench/README.md, memory of a
# fit). Smaller ones are summed as they always were (the same bits as before).
MOMENT_BLOCKED = 1 << 22
MOMENT_BLOCK = 1 << 20
# A column whose largest |value| is below this has its moments taken in units of that value: squared
# deviations under ~1e-154 underflow, and a column of values near 1e-165 read as constant (its slopes
# then held at 0: a fit 133 nats short on a 3000-row problem, with a warning that blamed collinearity).
# Ordinary columns are summed as before, to the same bits.
SMALL_COLUMN = 1e-100


def column_moments(A, weights=None):
    """Weighted means and standard deviations of the columns of ``A``, the deviation 0 where a column
    is constant to rounding (``CONSTANT_SPREAD``). Integer weights give the moments of the repeated
    rows, so a weighted fit is set up as the fit of the expanded data would be. Two passes (the mean,
    then the squared deviations from it), over blocks of rows when ``A`` is large."""
    if A.shape[1] == 0:  # intercept-only experts
        return np.zeros(0), np.zeros(0)
    w = None if weights is None or weights.size == 0 else weights
    if A.size <= MOMENT_BLOCKED:
        mean = np.average(A, axis=0, weights=w)
        sd = np.sqrt(np.average((A - mean) ** 2, axis=0, weights=w))
    else:
        step = max(1, MOMENT_BLOCK // A.shape[1])
        blocks = [slice(start, start + step) for start in range(0, A.shape[0], step)]
        total = A.shape[0] if w is None else float(w.sum())

        def weighted_sum(values, rows):
            return values.sum(axis=0) if w is None else w[rows] @ values

        mean = sum(weighted_sum(A[b], b) for b in blocks) / total
        # The corrected two-pass mean: a sum of millions of rows is off by more than CONSTANT_SPREAD,
        # and one more pass over the deviations from it puts a constant column's mean back on its value.
        mean = mean + sum(weighted_sum(A[b] - mean, b) for b in blocks) / total
        def squares(rows):
            deviation = A[rows] - mean
            return np.square(deviation, out=deviation)  # one block-sized temporary, not two

        sd = np.sqrt(sum(weighted_sum(squares(b), b) for b in blocks) / total)
    low, high = A.min(axis=0), A.max(axis=0)
    extent = np.maximum(np.abs(low), np.abs(high))
    counted = None if w is None or (w > 0).all() else w > 0  # rows of weight 0 do not count
    if counted is not None:
        extent = np.abs(A[counted]).max(axis=0, initial=0.0)
    small = np.flatnonzero((extent > 0.0) & (extent < SMALL_COLUMN))
    if small.size:
        scaled = A[:, small] / extent[small]
        if counted is not None:
            scaled[~counted] = 0.0  # their values, so scaled, could overflow, and 0 * inf is NaN
        small_mean, small_sd = column_moments(scaled, weights)
        mean[small], sd[small] = small_mean * extent[small], small_sd * extent[small]
    # A column of one repeated value is constant whatever its sums round to (a sum of 5e5 copies of 0.1
    # is 9e-12 off, more than CONSTANT_SPREAD allows).
    constant = (low == high) | (sd <= CONSTANT_SPREAD * np.abs(mean))
    return mean, np.where(constant, 0.0, sd)


def zero_columns(A, weights=None):
    """Mask of the columns of ``A`` that are 0 in every row of positive weight (all rows without
    weights): no likelihood on these data sees the slopes on them."""
    rows = slice(None) if weights is None or not weights.size else weights > 0
    return ~np.any(A[rows] != 0.0, axis=0)


def dependent_columns(A, weights=None, moments=None):
    """Columns of design ``A`` that are linear combinations of the others and the intercept, to
    rounding: their slopes are not identified (a direction of the parameters along which the
    likelihood is flat whatever the data's labels). A constant column is the intercept's twin; a column
    that is 0 wherever the weight is positive (:func:`zero_columns`) is left out (the fit holds its
    slopes: ``Problem.zero_column_coordinates``).

    The weighted correlation matrix of the columns with spread is formed over blocks of rows (no copy
    of ``A``); a column belongs to a dependent set when it loads (``DEPENDENT_LOADING``) on an
    eigenvector whose eigenvalue is below ``DEPENDENT_EIGEN``. ``moments``: :func:`column_moments` of
    ``A`` when the caller has them.

    Returns
    -------
    tuple of int
        Sorted column indices (empty when the columns are independent).
    """
    if A.shape[1] == 0 or A.shape[0] == 0:
        return ()
    mean, sd = column_moments(A, weights) if moments is None else moments
    dependent = set(np.flatnonzero((sd == 0.0) & ~zero_columns(A, weights)).tolist())
    live = np.flatnonzero(sd > 0.0)
    if live.size >= 2:
        w = None if weights is None or weights.size == 0 else weights
        total = A.shape[0] if w is None else float(w.sum())
        step = max(1, MOMENT_BLOCK // live.size)
        gram = np.zeros((live.size, live.size))
        for start in range(0, A.shape[0], step):
            block = (A[start:start + step, live] - mean[live]) / sd[live]
            gram += block.T @ (block if w is None else block * w[start:start + step, None])
        eigval, eigvec = np.linalg.eigh(gram / total)
        flat = eigvec[:, eigval < DEPENDENT_EIGEN]
        dependent.update(live[np.abs(flat).max(axis=1, initial=0.0) > DEPENDENT_LOADING].tolist())
    return tuple(sorted(dependent))


def column_scale(A, weights=None):
    """Standard deviations of the columns of ``A`` (:func:`column_moments`), 1 for a constant column:
    the units in which the starts standardise the inputs and their ridge, and in which moves of the
    search draw directions and perturbations."""
    return _unit_if_constant(column_moments(A, weights)[1])


def _unit_if_constant(spread):
    """Standard deviations with 1 for a constant column (spread 0)."""
    return np.where(spread == 0.0, 1.0, spread)


@functools.lru_cache(maxsize=None)
def _blas():
    # Built once, after the kernels have loaded SciPy's BLAS: a controller built before would not see
    # that library and would leave it threaded. Limiting through it costs ~5 us a call.
    _dispatch.kernels  # noqa: B018  (the access imports them)
    return ThreadpoolController().select(user_api="blas")


def serial_blas():
    """Keep BLAS single-threaded inside the kernels: their dgemm calls run inside OpenMP threads,
    and a BLAS that threads them too oversubscribes the cores (measured: the d = 10 Hessian pass
    went from 1.6 to 6.7 us per sample)."""
    return _blas().limit(limits=1)


def _pair_index(n_blocks):
    """Symmetric (n_blocks, n_blocks) map to the triu-order pair number."""
    index = np.zeros((n_blocks, n_blocks), dtype=np.intp)
    rows, cols = np.triu_indices(n_blocks)
    index[rows, cols] = np.arange(rows.size)
    index[cols, rows] = np.arange(rows.size)
    return index


def block_hessian_index(n_blocks, block_size):
    """Index that expands the kernels' packed Hessian into a full symmetric matrix.

    The kernels store, for each block pair ``(i <= j)`` in triu order, the triu entries of a
    symmetric ``block_size`` square; entry ``((i, p), (j, q))`` of the full matrix sits at
    ``pair(i, j) * m + triu(p, q)`` with ``m = block_size (block_size + 1) / 2``.
    """
    m = block_size * (block_size + 1) // 2
    pair = _pair_index(n_blocks)
    entry = _pair_index(block_size)
    full = pair[:, None, :, None] * m + entry[None, :, None, :]
    return full.reshape(n_blocks * block_size, n_blocks * block_size)


@dataclass
class PassResult:
    """What one fused pass returns, with full negative Hessians of the M-step blocks' Q functions.

    ``expert_weight`` holds the soft sizes ``sum_n w_n tau_ni``; gradients are flattened per block in the
    order of the free parameters (``W[:k-1].ravel()`` and ``V[i, :K-1].ravel()``).
    """

    loglik: float
    expert_weight: np.ndarray
    grad_gate: np.ndarray
    neg_hess_gate: np.ndarray
    grad_expert: np.ndarray
    neg_hess_expert: np.ndarray


class Problem:
    """Validated data of a fit and the kernel calls on it.

    Parameters
    ----------
    X, Z : C-contiguous float64 arrays (n, d) and (n, d_gate); ``Z is X`` for standard gating.
    y : int32/int64 labels; sample_weight : float64 (n,) or empty for unit weights.
    n_experts, n_classes : model size; n_threads : OpenMP threads for every kernel call.
    search_hessian : bool, default=False
        Whether :meth:`hessian_pass` forms its products in single precision (5e-9 to 9e-9 relative to
        double on issue 12's problems; a fifth less time at d = 10, none at d = 2): for the exploration
        subsample of the search, whose maxima are run again on all the data in double precision. Never
        for a fit's answer or its uncertainty.
    """

    def __init__(self, X, Z, y, sample_weight, n_experts, n_classes, n_threads, search_hessian=False):
        self.X, self.Z, self.y, self.sample_weight = X, Z, y, sample_weight
        self.search_hessian = search_hessian
        self.n_samples, self.n_features = X.shape
        self.n_gate_features = Z.shape[1]
        self.n_experts, self.n_classes, self.n_threads = n_experts, n_classes, n_threads
        k, K = n_experts, n_classes
        pg, pe = self.n_gate_features + 1, self.n_features + 1
        self.total_weight = float(sample_weight.sum()) if sample_weight.size else float(self.n_samples)
        # Each sample's log-likelihood carries an absolute rounding error of some ulps of 1 (the log of
        # a sum of products of probabilities near 1 at saturation), so a sum of n of them is only known
        # to a few tens of n * eps: differences below that are noise, not decreases.
        self.rounding_floor = 64.0 * np.finfo(float).eps * self.total_weight
        self.empty_expert_cut = EMPTY_EXPERT_FRACTION * self.total_weight
        self.class_weight = np.bincount(y, weights=sample_weight if sample_weight.size else None, minlength=K)
        self._no_resp = np.empty((0, k))
        self._weight = np.empty(k)
        self._grad_gate = np.empty((k - 1, pg))
        self._hess_gate = np.empty(((k - 1) * k // 2, pg * (pg + 1) // 2))
        self._grad_expert = np.empty((k, K - 1, pe))
        self._hess_expert = np.empty((k, (K - 1) * K // 2, pe * (pe + 1) // 2))
        self._gate_index = block_hessian_index(k - 1, pg)
        self._expert_index = block_hessian_index(K - 1, pe)
        self._expert_rows_index = block_hessian_index(k * (K - 1), pe)

    def slack(self, value):
        """How far below ``value`` a log-likelihood (or a Q function) may come out by rounding alone."""
        return ROUNDING_SLACK * abs(value) + self.rounding_floor

    def logit_slack(self, W, V):
        """How far a log-likelihood at ``(W, V)`` may come out off by the rounding of its logits.

        A logit of size L is known to about L eps, and each sample's log-likelihood to a few of those:
        the floor of :meth:`slack`, scaled by the largest logit the coefficients can make on the data.
        Only intercepts running off make it matter: at 2.6e6 (a class with probability 0 in an expert,
        30 rows) the log-likelihood moved by 7e-9 against the NumPy reference between two points whose
        EM step raised every block's Q, while :meth:`slack` allowed 1e-10.
        """
        largest = max(float(np.abs(W).max(initial=0.0)), float(np.abs(V).max(initial=0.0)))
        return self.rounding_floor * max(1.0, largest * self._input_scale)

    @functools.cached_property
    def column_scales(self):
        """``(gating, expert)`` weighted standard deviations of the design columns (1 for a constant
        column): the units of the starts' ridge (``_init.start_penalty``) and in which moves of the
        search perturb coefficients, computed once per problem."""
        return tuple(_unit_if_constant(spread) for spread in self._spreads)

    @functools.cached_property
    def constant_columns(self):
        """``(gating, expert)`` masks of the design columns without spread (an all-zero indicator, a
        constant): the likelihood cannot tell their coefficients from 0 (or from the intercept's), so the
        search's moves leave those coefficients where they are."""
        return tuple(spread == 0.0 for spread in self._spreads)

    @functools.cached_property
    def _spreads(self):
        """``(gating, expert)`` weighted standard deviations of the design columns (:func:`column_moments`)."""
        return tuple(sd for _, sd in self._moments)

    @functools.cached_property
    def _moments(self):
        """``(gating, expert)`` weighted ``(mean, sd)`` of the design columns (:func:`column_moments`), one
        pass over a design that both read."""
        expert = column_moments(self.X, self.sample_weight)
        return (expert if self.Z is self.X else column_moments(self.Z, self.sample_weight)), expert

    @functools.cached_property
    def dependent_columns(self):
        """``(gating, expert)`` indices of linearly dependent design columns (:func:`dependent_columns`)."""
        expert = dependent_columns(self.X, self.sample_weight, self._moments[1])
        return (expert if self.Z is self.X else dependent_columns(self.Z, self.sample_weight, self._moments[0])), expert

    @functools.cached_property
    def zero_column_coordinates(self):
        """Free-vector mask (:func:`fastmoe.params.free_vector` order) of the slopes on design columns that
        are 0 in every row of positive weight (a rare indicator absent from these rows): no likelihood on
        these data depends on them, so Newton steps hold them (``_em.newton_finish``)."""
        return free_column_values(zero_columns(self.Z, self.sample_weight), zero_columns(self.X, self.sample_weight),
                                  False, self.n_experts, self.n_classes)

    @functools.cached_property
    def _input_scale(self):
        """1 + the largest absolute input: a logit is at most this times the largest coefficient, per term."""
        return 1.0 + max(float(np.abs(self.X).max(initial=0.0)), float(np.abs(self.Z).max(initial=0.0)))

    def with_threads(self, n_threads):
        """The same data with buffers of its own, for a concurrent run (the buffers are per call site);
        the data's scales, once computed, are shared rather than computed again per run."""
        twin = Problem(self.X, self.Z, self.y, self.sample_weight, self.n_experts, self.n_classes, n_threads,
                       self.search_hessian)
        for name in ("_moments", "_spreads", "column_scales", "constant_columns", "zero_column_coordinates",
                     "_input_scale", "dependent_columns"):
            if name in self.__dict__:
                twin.__dict__[name] = self.__dict__[name]
        return twin

    def subset(self, rows, n_experts=None, search_hessian=False):
        """The same problem restricted to ``rows`` (a slice or sorted indices), optionally with another
        number of experts (and search Hessians, see the class); standard gating stays ``Z is X``."""
        X = np.ascontiguousarray(self.X[rows])
        Z = X if self.Z is self.X else np.ascontiguousarray(self.Z[rows])
        y = np.ascontiguousarray(self.y[rows])
        w = np.ascontiguousarray(self.sample_weight[rows]) if self.sample_weight.size else self.sample_weight
        k = self.n_experts if n_experts is None else n_experts
        return Problem(X, Z, y, w, k, self.n_classes, self.n_threads, search_hessian)

    def loglik(self, W, V):
        """Weighted log-likelihood at (W, V)."""
        return _dispatch.kernels.e_step(
            self.X, self.Z, self.y, self.sample_weight, W, V, self._no_resp, np.empty(0), self.n_threads
        )

    def newton_pass(self, W, V, resp=None) -> PassResult:
        """The fused pass at (W, V); ``resp`` (n, k) replaces the responsibilities when given."""
        with serial_blas():
            loglik = _dispatch.kernels.newton_pass(
                self.X, self.Z, self.y, self.sample_weight, W, V,
                self._no_resp if resp is None else resp,
                self._weight, self._grad_gate, self._hess_gate, self._grad_expert, self._hess_expert,
                self.n_threads,
            )
        k = self.n_experts
        return PassResult(
            loglik=loglik,
            expert_weight=self._weight.copy(),
            grad_gate=self._grad_gate.ravel().copy(),
            neg_hess_gate=self._hess_gate.ravel()[self._gate_index],
            grad_expert=self._grad_expert.reshape(k, -1).copy(),
            neg_hess_expert=self._hess_expert.reshape(k, -1)[:, self._expert_index],
        )

    def gradient_pass(self, W, V):
        """Log-likelihood and its gradient over all free parameters at (W, V), without a Hessian.

        The fused pass with its Hessian sums left out (a quarter of its time at d = 10): for Newton
        steps that keep an earlier Hessian. The gradient is ordered as :func:`fastmoe.params.free_vector`
        orders the parameters, as :meth:`hessian_pass`'s is.

        Returns
        -------
        loglik : float; grad : (P,); expert_weight : (k,)
        """
        with serial_blas():
            loglik = _dispatch.kernels.newton_pass(
                self.X, self.Z, self.y, self.sample_weight, W, V, self._no_resp,
                self._weight, self._grad_gate, self._hess_gate, self._grad_expert, self._hess_expert,
                self.n_threads, False,
            )
        return loglik, np.concatenate([self._grad_gate.ravel(), self._grad_expert.ravel()]), self._weight.copy()

    def q_values(self, W_old, V_old, W_new, V_new, resp=None):
        """``[Q_gate, Q_1 .. Q_k]`` at (W_new, V_new) with responsibilities from (W_old, V_old) or ``resp``."""
        out = np.empty(self.n_experts + 1)
        _dispatch.kernels.q_values(
            self.X, self.Z, self.y, self.sample_weight, W_old, V_old, W_new, V_new,
            self._no_resp if resp is None else resp, out, self.n_threads,
        )
        return out

    def hessian_pass(self, W, V):
        """Log-likelihood, its gradient and its negative Hessian over all free parameters at (W, V).

        The free parameters are ordered as :func:`fastmoe.params.free_vector` orders them. The negative
        Hessian is the observed information (positive definite at a strict local maximum); its products
        are single precision when the problem is a search's (``search_hessian``).

        Returns
        -------
        loglik : float; grad : (P,); neg_hess : (P, P)
        """
        k, K = self.n_experts, self.n_classes
        pg, pe = self.n_gate_features + 1, self.n_features + 1
        kr = k * (K - 1)
        grad_gate = np.empty((k - 1, pg))
        grad_expert = np.empty((k, K - 1, pe))
        gg = np.empty(((k - 1) * k // 2, pg * (pg + 1) // 2))
        ee = np.empty((kr * (kr + 1) // 2, pe * (pe + 1) // 2))
        ge = np.empty((k - 1, kr, pg, pe))
        with serial_blas():
            loglik = _dispatch.kernels.loglik_hessian_pass(
                self.X, self.Z, self.y, self.sample_weight, W, V, grad_gate, grad_expert, gg, ee, ge,
                self.n_threads, self.search_hessian,
            )
        n_gate = (k - 1) * pg
        neg = np.empty((n_gate + kr * pe, n_gate + kr * pe))
        neg[:n_gate, :n_gate] = gg.ravel()[self._gate_index]
        neg[n_gate:, n_gate:] = ee.ravel()[self._expert_rows_index]
        cross = ge.transpose(0, 2, 1, 3).reshape(n_gate, kr * pe)
        neg[:n_gate, n_gate:] = cross
        neg[n_gate:, :n_gate] = cross.T
        grad = np.concatenate([grad_gate.ravel(), grad_expert.ravel()])
        return loglik, grad, neg
