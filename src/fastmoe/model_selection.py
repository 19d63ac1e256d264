"""Choosing the number of experts: an information criterion over a sweep, or a dendrogram of one fit.

:func:`select_n_experts` fits one :class:`~fastmoe.estimator.MixtureOfExpertsClassifier` per candidate
``n_experts`` on the same data and keeps the one with the lowest BIC (or AIC); with
``method="dendrogram"`` it fits once with the largest candidate and reads the choice off the
dendrogram of that fit's mixing measure (:func:`fastmoe.dendrogram`, ``docs/dendrogram.md``). The
criteria of the sweep:

    BIC = -2 loglik + p log n,        AIC = -2 loglik + 2 p,

with ``p = (k-1)(d_gate+1) + k(K-1)(d+1)`` free parameters and ``n`` samples. BIC is consistent for
the number of components of well-separated finite mixtures; AIC tends to over-fit the number of experts
but can predict better. Both assume each fit reached the maximum likelihood for its ``k``: use
``n_init > 1`` when local maxima are a concern, and note that a fit whose coefficients diverge
(quasi-separation) has no MLE, so its criterion is only a limit.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass

import numpy as np
from sklearn.base import clone

from ._validation import check_positive_int
from .estimator import MixtureOfExpertsClassifier

__all__ = ["SelectionResult", "select_n_experts", "CRITERIA", "METHODS"]

CRITERIA = ("bic", "aic")
#: How :func:`select_n_experts` chooses: a fit per candidate compared by ``criterion``, or one fit
#: with the largest candidate and its dendrogram.
METHODS = ("sweep", "dendrogram")

_COLUMNS = ("n_experts", "n_free_params", "loglik", "bic", "aic", "n_iter", "converged", "diverged", "time")


@dataclass(frozen=True, repr=False)
class SelectionResult:
    """The outcome of :func:`select_n_experts`.

    Attributes
    ----------
    criterion : {"bic", "aic", "dendrogram"}
        What chose: the sweep's criterion, or ``"dendrogram"`` for ``method="dendrogram"``.
    best_n_experts : int
        The candidate with the lowest criterion among the admissible fits (``method="sweep"``), or the
        level the dendrogram selects (``method="dendrogram"``, whatever the table's BIC says).
    best_estimator : MixtureOfExpertsClassifier
        Its fitted estimator.
    estimators : dict of int to MixtureOfExpertsClassifier
        Every candidate's fitted estimator.
    table : dict of str to ndarray
        One entry per column (``n_experts, n_free_params, loglik, bic, aic, n_iter, converged,
        diverged, time``), one row per candidate in the order given.
        With ``method="dendrogram"`` the rows are the tree's levels among the candidates: the
        log-likelihood, BIC and AIC of each merged model (not refitted); ``n_iter``, ``converged``,
        ``diverged`` and ``time`` are those of the one fit (``n_iter`` and ``time`` on its row only).
    admissible : ndarray of bool
        Rows that could be chosen: converged and not diverging fits (all rows if there are none).
    dendrogram : Dendrogram or None
        The tree, with ``method="dendrogram"``.
    """

    criterion: str
    best_n_experts: int
    best_estimator: MixtureOfExpertsClassifier
    estimators: dict
    table: dict
    admissible: np.ndarray
    dendrogram: object = None

    def rows(self) -> list:
        """The table as a list of dicts, one per candidate."""
        n_rows = len(self.table["n_experts"])
        return [{c: self.table[c][r].item() for c in _COLUMNS} for r in range(n_rows)]

    def to_frame(self):
        """The table as a ``pandas.DataFrame`` indexed by ``n_experts`` (needs pandas)."""
        import pandas as pd

        return pd.DataFrame({c: self.table[c] for c in _COLUMNS[1:]}, index=pd.Index(self.table["n_experts"],
                                                                                    name="n_experts"))

    def __str__(self):
        header = list(_COLUMNS) + ["chosen"]
        lines = []
        for row, ok in zip(self.rows(), self.admissible):
            cells = [
                f"{v:.6g}" if isinstance(v, float) and c != "time" else f"{v:.2f}" if c == "time" else str(v)
                for c, v in row.items()
            ]
            mark = "*" if row["n_experts"] == self.best_n_experts else ("" if ok else "(excluded)")
            lines.append(cells + [mark])
        widths = [max(len(h), *(len(line[c]) for line in lines)) for c, h in enumerate(header)]
        fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([fmt(header)] + [fmt(line) for line in lines])

    def __repr__(self):
        return f"SelectionResult(criterion={self.criterion!r}, best_n_experts={self.best_n_experts})\n{self}"


def _from_splits(estimator, previous, k, X, y, sample_weight, model):
    """The best of ``model`` and fits started from ``previous`` with one expert split (repeatedly, up to k).

    A split start has exactly the smaller fit's likelihood and EM never decreases it, so the result is
    never below the fit with fewer experts.
    """
    best = model
    for expert in range(previous.n_experts):
        start = previous.params_
        while start.n_experts < k:
            start = start.split_expert(expert)
        candidate = clone(estimator).set_params(n_experts=k, init=start).fit(X, y, sample_weight=sample_weight)
        if candidate.objective_ > best.objective_:
            best = candidate
    return best


def select_n_experts(X, y, n_experts=(1, 2, 3, 4), *, criterion="bic", method="sweep", sample_weight=None,
                     estimator=None, **params) -> SelectionResult:
    """Choose the number of experts: BIC or AIC over a fit per candidate, or a dendrogram of one fit.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Class labels of any type.
    n_experts : iterable of int, default=(1, 2, 3, 4)
        Candidate numbers of experts (distinct, >= 1).
    criterion : {"bic", "aic"}, default="bic"
        The sweep's criterion (ignored with ``method="dendrogram"``).
    method : {"sweep", "dendrogram"}, default="sweep"
        ``"sweep"`` fits every candidate (nested, see Notes) and keeps the lowest ``criterion``.
        ``"dendrogram"`` fits once with ``max(n_experts)`` experts, merges its atoms bottom-up
        (:func:`fastmoe.dendrogram`) and keeps the level, among the candidates, with the largest
        dendrogram selection criterion; ``best_estimator`` is then refitted from that level's merged
        parameters (the top level's fit itself when it is chosen). ``docs/dendrogram.md`` says what
        the method assumes and how it compares with BIC and AIC.
    sample_weight : array-like of shape (n_samples,), optional
        Passed to every fit; the criteria then use the weighted log-likelihood and ``n`` the sum of the
        weights (frequency weights: the same data with rows repeated select alike).
    estimator : MixtureOfExpertsClassifier, optional
        Template whose settings every candidate uses (it is cloned, never fitted itself).
    **params
        Settings for a fresh template instead (``gating``, ``n_init``, ``random_state`` ...); not
        allowed together with ``estimator``.

    Returns
    -------
    SelectionResult

    Warns
    -----
    fastmoe.ConvergenceWarning
        From each candidate whose fit stops early; such candidates are excluded from the choice when
        any candidate converged.

    Notes
    -----
    The fits are nested: candidates are fitted from the smallest up, and when a fit ends below the
    fit with fewer experts (a local maximum), it is replaced by the best fit started from that smaller
    fit with one expert split in two (:meth:`MoEParams.split_expert`), which starts at the smaller
    fit's likelihood. So the maximised objective (the log-likelihood when ``l2 = 0``) never falls as
    ``n_experts`` grows.

    Candidates are compared on the unpenalised log-likelihood; with ``l2 > 0`` the criteria are only
    heuristics (the penalty shrinks the effective number of parameters).

    Examples
    --------
    >>> import fastmoe
    >>> truth = fastmoe.MoEParams(beta0=[0., 0.], beta1=[[4., 0.], [0., 0.]],
    ...                           a=[[[0., 3.], [0., 0.]], [[0., -3.], [0., 0.]]], b=[[0., 0.], [0., 0.]])
    >>> X, y = fastmoe.sample(truth, 4000, random_state=0, low=-2, high=2)
    >>> select_n_experts(X, y, (1, 2), n_init=3, random_state=0).best_n_experts
    2
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(n_experts, (numbers.Integral, str)) or not hasattr(n_experts, "__iter__"):
        raise TypeError(f"n_experts must be a sequence of candidate numbers of experts, e.g. (1, 2, 3), "
                        f"got {n_experts!r}")
    candidates = [check_positive_int(k, "n_experts") for k in n_experts]
    if not candidates:
        raise ValueError("n_experts is empty; give at least one candidate")
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"n_experts has repeated candidates: {candidates}")
    if estimator is None:
        estimator = MixtureOfExpertsClassifier(**params)
    elif params:
        raise TypeError(f"give either estimator or estimator settings, not both (got {sorted(params)})")
    elif not isinstance(estimator, MixtureOfExpertsClassifier):
        raise TypeError(f"estimator must be a MixtureOfExpertsClassifier, got {type(estimator).__name__}")
    if 0.0 <= _weight_sum(sample_weight) < 1.0:
        raise ValueError(f"sample_weight sums to {_weight_sum(sample_weight):.3g}, less than one observation: "
                         "the criteria weigh the parameters by log n (BIC, the dendrogram's omega) with n the sum "
                         "of the weights, which must count observations (frequency weights)")
    if method == "dendrogram":
        return _select_by_dendrogram(estimator, candidates, X, y, sample_weight)

    _check_candidates(estimator, candidates, X, y, sample_weight)
    fitted, elapsed = {}, {}
    previous = None
    for k in sorted(candidates):  # nested: each fit knows the fit with fewer experts
        started = time.perf_counter()
        model = clone(estimator).set_params(n_experts=k).fit(X, y, sample_weight=sample_weight)
        if previous is not None and model.objective_ < previous.objective_:
            model = _from_splits(estimator, previous, k, X, y, sample_weight, model)
        elapsed[k] = time.perf_counter() - started
        fitted[k] = previous = model
    rows = []
    for k in candidates:
        result = fitted[k].fit_result_
        rows.append((k, result.n_free_params, result.loglik, result.bic, result.aic, result.n_iter,
                     result.converged, result.diverged, elapsed[k]))
    table = {c: np.array(values) for c, values in zip(_COLUMNS, zip(*rows))}
    admissible = table["converged"] & ~table["diverged"]
    if not admissible.any():
        admissible = np.ones_like(admissible)
    scores = np.where(admissible, table[criterion], np.inf)
    best = int(table["n_experts"][int(np.argmin(scores))])
    return SelectionResult(
        criterion=criterion,
        best_n_experts=best,
        best_estimator=fitted[best],
        estimators=fitted,
        table=table,
        admissible=admissible,
    )


def _weight_sum(sample_weight):
    """The sum of the sample weights; nan for none, or for weights the fit will refuse in its own words."""
    try:
        return float(np.sum(np.asarray(sample_weight, dtype=float))) if sample_weight is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


def _check_candidates(estimator, candidates, X, y, sample_weight):
    """Refuse, before any fit, a sweep whose inputs or candidates a fit would refuse: a sweep that
    failed at its last candidate (more free parameters than rows at ``l2 = 0``, curvature matrices
    larger than memory, a template ``init`` with another number of experts) threw away the fits before
    it. Every candidate is checked, so that the error names all that cannot be fitted."""
    refused = {}
    for k in candidates:
        try:
            candidate = clone(estimator).set_params(n_experts=k)
            candidate._check_model(candidate._fit_inputs(X, y, sample_weight))
        except ValueError as exc:
            refused[k] = exc
    if refused:
        smallest = min(refused)
        if len(refused) == len(candidates):  # the data themselves, or every candidate: the fit's own words
            raise refused[smallest]
        raise ValueError(f"n_experts candidates {sorted(refused)} cannot be fitted to these data (nothing was "
                         f"fitted); with {smallest} experts: {refused[smallest]}") from refused[smallest]


def _select_by_dendrogram(estimator, candidates, X, y, sample_weight) -> SelectionResult:
    """One fit with the largest candidate, its dendrogram, the chosen level refitted from its merge."""
    from ._dendrogram import default_omega, dendrogram

    k_max = max(candidates)
    started = time.perf_counter()
    model = clone(estimator).set_params(n_experts=k_max).fit(X, y, sample_weight=sample_weight)
    # The tree scores merged models on the data as the fit saw them: integer codes, weights times
    # class weights; its likelihood weight log n counts observations, as BIC's n does (class weights
    # reweight the observations, they add none: FitResult.n_observations).
    codes = model.encode_labels(y)
    tree = dendrogram(model.fit_result_, model._check_X(X), codes,
                      sample_weight=model._fit_weights(codes, sample_weight), n_threads=model.n_threads,
                      omega=default_omega(model.fit_result_.n_observations))
    elapsed = time.perf_counter() - started
    best, params = tree.select(candidates)
    fitted = {k_max: model}
    if best != k_max:
        fitted[best] = clone(estimator).set_params(n_experts=best, init=params).fit(X, y, sample_weight=sample_weight)
    n_obs = model.fit_result_.n_observations  # the criteria's n, as in FitResult.bic
    rows = []
    for k in candidates:
        level = tree.params[k]
        loglik = tree.loglik[k]
        p = level.n_free_params
        rows.append((k, p, loglik, -2 * loglik + p * np.log(n_obs), -2 * loglik + 2 * p,
                     model.n_iter_ if k == k_max else 0, model.converged_, model.diverged_,
                     elapsed if k == k_max else 0.0))
    table = {c: np.array(values) for c, values in zip(_COLUMNS, zip(*rows))}
    return SelectionResult(
        criterion="dendrogram",
        best_n_experts=int(best),
        best_estimator=fitted[best],
        estimators=fitted,
        table=table,
        admissible=np.ones(len(candidates), dtype=bool),
        dendrogram=tree,
    )
