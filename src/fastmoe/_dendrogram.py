"""Dendrogram of mixing measures: the number of experts from one over-fitted fit (issue 15).

After Do, Do, McKinley, Terhorst & Nguyen (arXiv 2403.01684) for finite mixtures, and its adaptation
to softmax-gated mixtures of experts (Do Tien Hai et al., arXiv 2510.12744). Fit once with more experts
than needed; the fitted mixing measure ``G = sum_i exp(beta0_i) delta_(beta1_i, a_i, b_i)`` (MODEL.md
section 4) puts several atoms near each true atom. Merge atoms bottom-up, always the pair that is
cheapest to merge in the transport cost the Voronoi loss ``D2`` charges a split cell; record the merge
heights and the log-likelihood of every merged model; choose the level whose height is large (its
atoms are far apart at the scale the theory says) while its likelihood is not lower than the levels
above it (it does not merge distinct experts). ``docs/dendrogram.md`` gives the definitions, what was
adapted from the papers and how sure we are of it.

Merging two atoms ``i, j`` (masses ``p = exp(beta0)``):

- mass: ``p_i + p_j``, so the gating intercept is ``logsumexp(beta0_i, beta0_j)``;
- gating slopes and expert parameters: the mass-weighted averages
  ``(p_i theta_i + p_j theta_j) / (p_i + p_j)`` (experts in the reference-class convention).

Both rules commute with the translations that leave the model unchanged, so the tree does not depend
on which expert is the reference.

An atom at the boundary of the model through its intercept (an expert that gives some class
probability 0 wherever the data are, the class's intercept running off towards -inf:
``FitResult.boundary``) is merged with that intercept raised until the class has probability about
``e^-BOUNDARY_LOGIT`` on its most likely row (:func:`tame_boundary`): averaged as it stands, an
intercept of -1.7e6 made the merged expert give a class of the data probability e^-837506, and the
merged level's log-likelihood -6.3e8 (where the one-expert fit has -4640). A class zeroed by a slope
running off (the data on one side of a hyperplane) keeps that slope, and the merged levels then still
depend on where it stopped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import _predict
from ._em import BOUNDARY_LOGIT
from ._validation import check_sample_weight, check_X, check_y, is_finite_real
from .params import MoEParams

__all__ = ["Dendrogram", "dendrogram", "merge_atoms", "merge_dissimilarities", "atom_masses", "tame_boundary"]


def atom_masses(params: MoEParams) -> np.ndarray:
    """The atoms' masses ``exp(beta0_i)`` scaled to sum to 1.

    The masses are defined up to a common factor (a shift of every ``beta0``); scaling them to sum to
    1 fixes it, so heights do not depend on which expert is the reference. Computed as a softmax so
    that large intercepts do not overflow.
    """
    beta0 = params.beta0
    weights = np.exp(beta0 - beta0.max())
    return weights / weights.sum()


def merge_dissimilarities(params: MoEParams, exponent=2.0) -> np.ndarray:
    """Matrix of merge heights ``d_ij`` between every pair of atoms (``inf`` on the diagonal).

    ``d_ij = p_i p_j / (p_i + p_j) * (||beta1_i - beta1_j||^r + ||a_i - a_j||^r + ||b_i - b_j||^r)``
    with masses ``p`` from :func:`atom_masses` and ``r = exponent``. For ``r = 2`` this is exactly
    the increase of the mass-weighted squared distance ``sum p ||theta - theta*||^2`` (the split-cell
    term of ``D2``) when the two atoms are replaced by their mass-weighted mean: Ward's criterion on
    the atoms, which makes the heights of successive merges non-decreasing.
    """
    p = atom_masses(params)
    k = params.n_experts

    def pairwise(values):
        flat = values.reshape(k, -1)
        diff = flat[:, None, :] - flat[None, :, :]
        return np.sqrt(np.einsum("ijm,ijm->ij", diff, diff))

    distance = (pairwise(params.beta1) ** exponent + pairwise(params.a) ** exponent
                + pairwise(params.b) ** exponent)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.outer(p, p) / (p[:, None] + p[None, :])
    heights = np.nan_to_num(scale * distance, nan=0.0)  # two atoms of mass 0: merging costs nothing
    np.fill_diagonal(heights, np.inf)
    return heights


def merge_atoms(params: MoEParams, i: int, j: int) -> MoEParams:
    """The mixture with atoms ``i`` and ``j`` merged into one, which takes the place of ``min(i, j)``.

    Merged mass is the sum (``beta0 = logsumexp(beta0_i, beta0_j)``); gating slopes and expert
    parameters are mass-weighted averages. Returned in the reference conventions.
    """
    k = params.n_experts
    if not (0 <= i < k and 0 <= j < k) or i == j:
        raise ValueError(f"need two distinct atoms in 0..{k - 1}, got {i} and {j}")
    i, j = min(i, j), max(i, j)
    params = params.normalized()
    top = max(params.beta0[i], params.beta0[j])
    wi, wj = np.exp(params.beta0[i] - top), np.exp(params.beta0[j] - top)
    merged_beta0 = top + np.log(wi + wj)
    si, sj = wi / (wi + wj), wj / (wi + wj)
    keep = [m for m in range(k) if m != j]

    def merge(values, merged):
        out = np.array(values, dtype=np.float64, copy=True)
        out[i] = merged
        return out[keep]

    return MoEParams(
        beta0=merge(params.beta0, merged_beta0),
        beta1=merge(params.beta1, si * params.beta1[i] + sj * params.beta1[j]),
        a=merge(params.a, si * params.a[i] + sj * params.a[j]),
        b=merge(params.b, si * params.b[i] + sj * params.b[j]),
        gating=params.gating,
        **params.inputs,  # the columns the gating and the experts read
    ).normalized()


def tame_boundary(params: MoEParams, X) -> MoEParams:
    """``params`` with every class an expert gives a probability below ``e^-BOUNDARY_LOGIT`` on every row
    of ``X`` lifted to about that on its most likely row (its intercept raised; the reference class's
    raises it against all the others), so that no intercept sits at infinity. Slopes are left as they
    are (a class zeroed by a slope running off keeps it).

    The likelihood changes by at most about ``e^-BOUNDARY_LOGIT`` (3e-7) per row and class so lifted;
    the model's other classes keep their odds against one another.
    """
    from scipy.special import logsumexp  # on first use: keeps ``import fastmoe`` light

    X_expert, _, W, V, _ = _predict._prepare(params, X, 1)
    V = V.copy()
    lifted = False
    for i in range(V.shape[0]):
        logits = X_expert @ V[i, :, 1:].T + V[i, :, 0]  # (n, K), one expert at a time
        top = (logits - logsumexp(logits, axis=1, keepdims=True)).max(axis=0, initial=-np.inf)
        lift = np.where(top < -BOUNDARY_LOGIT, -BOUNDARY_LOGIT - top, 0.0)
        if lift.any():
            V[i, :, 0] += lift
            lifted = True
    if not lifted:
        return params
    return MoEParams.from_packed(W, V, params.gating, **params.inputs).normalized()


def default_omega(n_samples):
    """The likelihood weight ``omega_n = log n`` of the selection criterion (see :class:`Dendrogram`)."""
    return float(np.log(n_samples))


@dataclass(frozen=True, repr=False)
class Dendrogram:
    """The merge tree of a fitted mixing measure, with a merged model at every level.

    Levels are numbers of atoms ``kappa = k, k - 1, ..., 1``: level ``k`` is the fit, level ``kappa - 1``
    merges the closest pair of level ``kappa``.

    Attributes
    ----------
    n_experts : int
        Atoms of the fit (the top level).
    linkage : ndarray of shape (k - 1, 4)
        The merges in SciPy's linkage format: row ``t`` joins clusters ``linkage[t, 0]`` and
        ``linkage[t, 1]`` (ids below ``k`` are the fit's experts, ``k + s`` is the cluster made by row
        ``s``) at height ``linkage[t, 2]``; ``linkage[t, 3]`` experts of the fit lie below.
    heights : ndarray of shape (k - 1,)
        Merge heights in merge order (``linkage[:, 2]``).
    params : dict of int to MoEParams
        The model at each level (level ``k``: the fit in reference conventions).
    loglik : dict of int to float
        Log-likelihood of each level's model on the data given (weighted with sample weights).
    members : dict of int to tuple of tuple of int
        At each level, which of the fit's experts each atom merges (in the order of ``params``).
    n_samples : float
        Number of samples (total weight with sample weights): the log-likelihood is averaged over it.
    omega : float
        Weight ``omega_n`` of the average log-likelihood in the criterion.
    exponent : float
        Exponent ``r`` of the parameter distances in the heights.
    refine_iter : int
        EM iterations each merged level got on the data before its log-likelihood was taken (0: none).

    Notes
    -----
    The selection criterion (the dendrogram selection criterion, after Do et al. 2024) of level
    ``kappa`` is

        DSC(kappa) = h(kappa) + omega_n * loglik(kappa) / n,

    with ``h(kappa)`` the height at which level ``kappa`` is left (its closest pair is merged;
    ``h(1) = 0``); :meth:`select` takes the level with the largest value. Levels above the truth are
    left at heights that vanish as ``n`` grows (``O(n^-1/2)`` for ``D2``), levels below it have a lower
    average log-likelihood by a fixed amount that ``omega_n -> infinity`` magnifies, and the true
    level is left at a height bounded away from 0. ``omega_n = log n`` by default.
    """

    n_experts: int
    linkage: np.ndarray
    params: dict
    loglik: dict
    members: dict
    n_samples: float
    omega: float
    exponent: float = 2.0
    refine_iter: int = 0

    @property
    def heights(self) -> np.ndarray:
        return self.linkage[:, 2].copy()

    @property
    def levels(self) -> np.ndarray:
        """The levels ``k, k - 1, ..., 1``."""
        return np.arange(self.n_experts, 0, -1)

    def height(self, level) -> float:
        """``h(level)``: the height at which ``level`` is left (0 for level 1)."""
        level = self._check_level(level)
        return 0.0 if level == 1 else float(self.linkage[self.n_experts - level, 2])

    def criterion(self, omega=None) -> dict:
        """``DSC(kappa)`` for every level, as a dict level -> value (larger is better).

        ``omega`` overrides the tree's ``omega_n`` (e.g. to see how the choice depends on it).
        """
        omega = self.omega if omega is None else _check_omega(omega)
        return {int(level): self.height(level) + omega * self.loglik[int(level)] / self.n_samples
                for level in self.levels}

    def select(self, candidates=None, omega=None):
        """The level with the largest criterion, and its merged parameters.

        Parameters
        ----------
        candidates : iterable of int, optional
            Levels allowed (default: all, ``1 .. k``).
        omega : float, optional
            Overrides the tree's ``omega_n``.

        Returns
        -------
        n_experts : int
        params : MoEParams
        """
        scores = self.criterion(omega)
        levels = self._candidates(candidates)
        best = max(levels, key=lambda level: (scores[level], -level))  # ties: fewer experts
        return best, self.params[best]

    def omega_interval(self, level, candidates=None):
        """The weights ``omega`` for which :meth:`select` chooses ``level``: an open interval or None.

        ``DSC(kappa)`` is a line in ``omega`` for every level, so the weights at which one level scores
        highest form an interval (the choice is robust to ``omega`` where that interval is wide). None
        when no ``omega >= 0`` chooses ``level``; an upper end of ``inf`` when every larger weight does.

        Parameters
        ----------
        level : int
        candidates : iterable of int, optional
            Levels competing (default: all), as in :meth:`select`.

        Returns
        -------
        (low, high) : tuple of float, or None
        """
        level = self._check_level(level)
        levels = self._candidates(candidates)
        if level not in levels:
            raise ValueError(f"level {level} is not among the candidates {levels}")
        low, high = 0.0, np.inf
        slope, offset = self.loglik[level] / self.n_samples, self.height(level)
        for other in levels:
            if other == level:
                continue
            # level beats other where  omega * (slope - slope_other) > height_other - height
            gain = slope - self.loglik[int(other)] / self.n_samples
            gap = self.height(other) - offset
            if gain > 0:
                low = max(low, gap / gain)
            elif gain < 0:
                high = min(high, gap / gain)
            elif gap > 0 or (gap == 0 and other < level):
                return None  # as likely at every omega, and higher (or tied with fewer experts)
        return (low, high) if low < high else None

    def plot(self, ax=None, **kwargs):
        """Draw the tree (needs matplotlib); see :func:`fastmoe.plot.dendrogram`."""
        from . import plot

        return plot.dendrogram(self, ax=ax, **kwargs)

    def _candidates(self, candidates):
        """The levels allowed, sorted: all of them when ``candidates`` is None."""
        levels = [int(level) for level in sorted(self.levels)] if candidates is None else \
            sorted({self._check_level(c) for c in candidates})
        if not levels:
            raise ValueError("candidates is empty; give at least one level")
        return levels

    def _check_level(self, level):
        if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer)):
            raise TypeError(f"a level is an integer number of experts, got {level!r}")
        if not 1 <= level <= self.n_experts:
            raise ValueError(f"levels run from 1 to {self.n_experts}, got {level}")
        return int(level)

    def __str__(self):
        scores = self.criterion()
        chosen, _ = self.select()
        lines = [f"{'experts':>7}  {'height':>12}  {'loglik':>14}  {'criterion':>12}"]
        for level in self.levels:
            mark = "  *" if level == chosen else ""
            lines.append(f"{level:7d}  {self.height(level):12.6g}  {self.loglik[int(level)]:14.6f}  "
                         f"{scores[int(level)]:12.6g}{mark}")
        return "\n".join(lines)

    def __repr__(self):
        return f"Dendrogram(n_experts={self.n_experts}, omega={self.omega:.4g})\n{self}"


def _check_omega(omega):
    if not (is_finite_real(omega) and omega >= 0):
        raise ValueError(f"omega must be a finite number >= 0, got {omega!r}")
    return float(omega)


def dendrogram(result, X, y, *, sample_weight=None, exponent=2.0, omega=None, refine_iter=0,
               n_threads=None) -> Dendrogram:
    """Merge the atoms of a fitted mixture bottom-up and score every level (dendrogram of mixing measures).

    Parameters
    ----------
    result : FitResult or MoEParams
        A fit with more experts than needed (e.g. ``fastmoe.fit(X, y, k_max)``), or its parameters.
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Integer labels ``0 .. n_classes - 1``, the data the fit used (its log-likelihoods are taken here).
    sample_weight : array-like of shape (n_samples,), optional
    exponent : float, default=2
        Exponent ``r`` of the parameter distances in the merge heights; 2 is the split-cell exponent
        of ``D2`` (MODEL.md section 4).
    omega : float, optional
        Weight ``omega_n`` of the average log-likelihood in the criterion; default ``log n``.
    refine_iter : int, default=0
        EM iterations (no Newton finish) run from each merged model on the data before its
        log-likelihood is recorded; 0 scores the merged models as they are, as the papers do.
    n_threads : int, optional

    Returns
    -------
    Dendrogram
        ``.select()`` gives the chosen number of experts and its parameters; ``.plot()`` draws it.

    Examples
    --------
    >>> import fastmoe
    >>> truth = fastmoe.MoEParams(beta0=[0., 0.], beta1=[[4., 0.], [0., 0.]],
    ...                           a=[[[0., 3.], [0., 0.]], [[0., -3.], [0., 0.]]], b=[[0., 0.], [0., 0.]])
    >>> X, y = fastmoe.sample(truth, 4000, random_state=0, low=-2, high=2)
    >>> tree = fastmoe.dendrogram(fastmoe.fit(X, y, 4, random_state=0), X, y)
    >>> tree.select()[0]
    2
    """
    from ._fit import FitResult

    if isinstance(result, FitResult):
        params = result.params
    elif isinstance(result, MoEParams):
        params = result
    else:
        raise TypeError(f"result must be a FitResult or an MoEParams, got {type(result).__name__}")
    X = check_X(X, n_features=params.n_inputs)  # every input column, whichever the gating and experts read
    y, _ = check_y(y, X.shape[0], params.n_classes)
    if sample_weight is not None:
        sample_weight = check_sample_weight(sample_weight, X.shape[0])
    if not (is_finite_real(exponent) and exponent > 0):
        raise ValueError(f"exponent must be a finite number > 0, got {exponent!r}")
    if isinstance(refine_iter, (bool, np.bool_)) or not isinstance(refine_iter, (int, np.integer)) \
            or refine_iter < 0:
        raise ValueError(f"refine_iter must be an integer >= 0, got {refine_iter!r}")
    n_samples = float(X.shape[0] if sample_weight is None else np.sum(sample_weight))
    omega = default_omega(n_samples) if omega is None else _check_omega(omega)

    k = params.n_experts
    levels = {k: params.normalized()}  # the fit as it is, scored as it is
    current = tame_boundary(levels[k], X)  # its boundary atoms are merged as finite ones
    clusters = list(range(k))  # linkage ids of the current atoms
    members = {k: tuple((i,) for i in range(k))}
    groups = [(i,) for i in range(k)]
    rows = []
    for step in range(k - 1):
        heights = merge_dissimilarities(current, exponent)
        i, j = np.unravel_index(int(np.argmin(heights)), heights.shape)  # first minimum: ties to low ids
        i, j = min(i, j), max(i, j)
        rows.append((clusters[i], clusters[j], heights[i, j], len(groups[i]) + len(groups[j])))
        current = merge_atoms(current, i, j)
        clusters[i] = k + step
        del clusters[j]
        groups[i] = tuple(sorted(groups[i] + groups[j]))
        del groups[j]
        levels[k - step - 1] = current
        members[k - step - 1] = tuple(groups)
    linkage = np.array(rows, dtype=np.float64).reshape(k - 1, 4)

    loglik = {}
    for level, level_params in levels.items():
        if refine_iter and level < k:
            level_params = _refine(level_params, X, y, sample_weight, refine_iter, n_threads)
            levels[level] = level_params
        loglik[level] = float(_predict.loglik(level_params, X, y, sample_weight, n_threads))
    return Dendrogram(n_experts=k, linkage=linkage, params=levels, loglik=loglik, members=members,
                      n_samples=n_samples, omega=omega, exponent=float(exponent), refine_iter=int(refine_iter))


def _refine(params, X, y, sample_weight, n_iter, n_threads):
    """A few EM iterations from a merged model (the log-likelihood never decreases)."""
    from ._fit import fit

    with warnings.catch_warnings():
        # A polish of n_iter steps stops before converging by design; that is not news.
        warnings.simplefilter("ignore")
        result = fit(X, y, params.n_experts, n_classes=params.n_classes, init=params, max_iter=n_iter,
                     newton=False, sample_weight=sample_weight, n_threads=n_threads)
    return result.params
