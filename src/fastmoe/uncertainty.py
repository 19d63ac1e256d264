"""Observed information, standard errors, Wald and parametric-bootstrap intervals for the free parameters.

At a maximum-likelihood estimate ``theta_hat`` of the free parameters (reference conventions, order of
``MODEL.md``: gating ``W[:k-1]`` row by row as ``[beta0_i, beta1_i]``, then for each expert ``i`` its
classes ``s < K-1`` as ``[b_si, a_si]``), the observed information is

    J(theta_hat) = - sum_n w_n Hess_theta log p(y_n | x_n)

and ``J^{-1}`` estimates the covariance of ``theta_hat``. This is the Hessian of the *marginal*
log-likelihood, not of EM's Q function: with ``l_ni = log pi_i(x_n) + log f_i(y_n | x_n)`` and the
posterior ``tau_ni = softmax_i(l_ni)``,

    Hess log p_n = sum_i tau_ni Hess l_ni + sum_i tau_ni (grad l_ni - g_n)(grad l_ni - g_n)^T,
    g_n = sum_i tau_ni grad l_ni.

The first term is block diagonal (the Q-function Hessians at the posterior); the second, the posterior
covariance of ``grad l_ni``, couples the gating and all experts and is the "missing information" of EM
(Louis, 1982). ``grad l_ni`` has gating part ``(delta_ij - pi_nj) z_n`` (``j < k-1``) and, in expert
``i``'s block only, ``(1[y_n = s] - f_i(s | x_n)) u_n`` (``s < K-1``), with ``z_n = [1, M(x_n)]``,
``u_n = [1, x_n]``.

:func:`expected_information` integrates the labels out under the model (the Fisher information): on a
quadrature of the input law it is the population information, whose null space shows which parameters the
data cannot pin down at first order (used in ``docs/results-history.md`` for the split cell of a vanishing expert).

A penalised fit (a ridge on the slopes, the estimator's default) is not an MLE and ``J^{-1}`` does
not describe it. :func:`parameter_table` then uses the *penalised* information ``J_p = J + R`` (``R`` the
ridge's Hessian, ``l2`` times the slope mask for the reference ridge; ``fastmoe._penalty``), the negative
Hessian of the objective the fit maximised: ``covariance="penalised"``
(the default there) gives ``J_p^{-1}``, the posterior covariance under the Gaussian prior the ridge
amounts to (Wood's ``V_p``; it includes an allowance for the shrinkage bias), and ``covariance="sandwich"``
gives ``J_p^{-1} J J_p^{-1}``, the model-based variance of the penalised estimator (no bias allowance).

:func:`bootstrap_table` gives intervals that do not lean on the normal approximation: it draws new labels
from the fitted model at the same inputs, refits from the estimate and reads the intervals off the refits
(normal, the default, from the refits' spread; percentile, basic, bias-corrected ``bc`` or studentized);
``docs/uncertainty.md`` has their measured coverage beside Wald's.

Caveats, reported rather than hidden: the intervals are asymptotic and assume a converged fit at an
interior maximum of a correctly sized model. In an over-specified mixture the
information is (near) singular and the parameters of split cells converge slower than ``n^(-1/2)``
(MODEL.md section 4), so Wald intervals do not apply to them.
"""

from __future__ import annotations

import itertools
import re
import sys
import warnings
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple, Optional

import numpy as np

from ._fit import FitResult, fit
from ._monitor import boundary_pairs_text
from ._penalty import RIDGES, Penalty
from ._predict import predict_proba
from ._problem import Problem
from ._validation import (
    check_params,
    check_positive_int,
    check_random_state,
    check_sample_weight,
    check_X,
    check_y,
    effective_n_threads,
    is_finite_real,
)
from . import exceptions
from .params import MoEParams, free_parameter_names, free_parameters

__all__ = [
    "ParameterTable",
    "UncertaintyWarning",
    "bootstrap_table",
    "expected_information",
    "observed_information",
    "parameter_table",
]

# An eigenvalue of the information below this fraction of the largest counts as zero.
_SINGULAR_RTOL = 1e-10


class UncertaintyWarning(UserWarning):
    """Standard errors were computed but their premises are doubtful (no convergence, penalty, singularity)."""


# ----------------------------------------------------------------------------------------------------------
# Observed information
# ----------------------------------------------------------------------------------------------------------
def observed_information(params, X, y, sample_weight=None, n_threads=None) -> np.ndarray:
    """Observed information matrix of the free parameters: minus the Hessian of the log-likelihood.

    Parameters
    ----------
    params : MoEParams
        Normally the MLE; any parameters are accepted (they are brought to reference conventions).
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Integer labels ``0 .. n_classes - 1``.
    sample_weight : array-like of shape (n_samples,), optional
        Weights ``w_n`` of the log-likelihood ``sum_n w_n log p(y_n | x_n)``.
    n_threads : int, optional

    Returns
    -------
    ndarray of shape (n_free_params, n_free_params)
        Symmetric; positive definite at a strict local maximum. Rows and columns follow
        :func:`free_parameter_names`.
    """
    params = check_params(params)
    X = check_X(X, n_features=params.n_inputs)
    y, _ = check_y(y, X.shape[0], params.n_classes)
    w = check_sample_weight(sample_weight, X.shape[0])
    problem = Problem(*params.designs(X), y, w, params.n_experts, params.n_classes,
                      effective_n_threads(n_threads))
    return problem.hessian_pass(*params.normalized().packed())[2]


def expected_information(params, X, sample_weight=None, n_threads=None) -> np.ndarray:
    """Expected (Fisher) information of the free parameters at ``params`` for the inputs ``X``.

    The labels are integrated out under the model itself:

        I(theta) = sum_n w_n sum_s p_theta(s | x_n) (-Hess_theta log p_theta(s | x_n)),

    the covariance of the score given the inputs. With ``X`` a quadrature of the input law (nodes and
    weights) or a large sample from it, this is the population information. Its null space holds the
    directions along which the conditional law does not change to first order: at a parameter that
    reproduces the truth with a split cell, the directions the MLE converges slowly along (``MODEL.md``
    section 4; ``docs/results-history.md`` uses it to show the gating-expert interaction of standard gating).

    Parameters
    ----------
    params : MoEParams
    X : array-like of shape (n_samples, n_features)
    sample_weight : array-like of shape (n_samples,), optional
        Weights of the inputs (quadrature weights, or None for a plain sum over a sample).
    n_threads : int, optional

    Returns
    -------
    ndarray of shape (n_free_params, n_free_params)
        Symmetric positive semi-definite; rows and columns follow :func:`free_parameter_names`.

    Notes
    -----
    Formed as the observed information of ``n_samples * n_classes`` rows, every input repeated once per
    class with weight ``w_n p_theta(s | x_n)``; memory grows with ``n_samples * n_classes``.
    """
    params = check_params(params)
    X = check_X(X, n_features=params.n_inputs)
    w = check_sample_weight(sample_weight, X.shape[0])
    n, K = X.shape[0], params.n_classes
    proba = predict_proba(params, X, n_threads=n_threads)
    weights = (proba if w.size == 0 else w[:, None] * proba).ravel()
    labels = np.tile(np.arange(K), n)
    return observed_information(params, np.repeat(X, K, axis=0), labels, weights, n_threads)


# ----------------------------------------------------------------------------------------------------------
# Standard errors and Wald intervals
# ----------------------------------------------------------------------------------------------------------
ParameterRow = namedtuple("ParameterRow", "name estimate std_error z p_value lower upper")


@dataclass(frozen=True, repr=False)
class ParameterTable:
    """Estimates, standard errors and Wald intervals of the free parameters, keyed by name.

    ``table["beta1[0,1]"]`` is a row (a named tuple ``name, estimate, std_error, z, p_value, lower,
    upper``); iterating gives the rows in parameter order; :meth:`to_dict` and :meth:`to_frame` export.
    A parameter on a direction where the information is not positive definite gets ``nan``.

    Attributes
    ----------
    names : tuple of str
    estimate, std_error, z, p_value, lower, upper : ndarray of shape (n_free_params,)
        ``z = estimate / std_error``, two-sided ``p_value`` for ``H0: parameter = 0``, Wald interval
        ``estimate -+ q std_error`` with ``q`` the standard normal ``(1 + level) / 2`` quantile.
    level : float
    information, covariance : ndarray of shape (n_free_params, n_free_params)
        Observed information and the covariance the standard errors come from: its inverse (a
        pseudo-inverse on the positive eigenspace when the information is singular), or for a
        penalised fit the penalised form named by ``method``.
    method : str
        How the covariance and intervals were formed, in words (e.g. ``"observed information"``).
    replicates : ndarray of shape (n_boot, n_free_params) or None
        A bootstrap table's refitted estimates (a failed refit's last iterate); None for a Wald table.
    n_failed : int
        Bootstrap refits that did not converge or diverged.
    failed_refits : ndarray of bool of shape (n_boot,) or None
        Which refits failed.
    """

    names: tuple
    estimate: np.ndarray
    std_error: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    information: np.ndarray
    covariance: np.ndarray
    method: str = "observed information"
    replicates: Optional[np.ndarray] = None
    n_failed: int = 0
    failed_refits: Optional[np.ndarray] = None

    _COLUMNS = ("estimate", "std_error", "z", "p_value", "lower", "upper")

    def __len__(self):
        return len(self.names)

    def __contains__(self, name):
        return name in self.names

    def _row(self, j):
        return ParameterRow(self.names[j], *(float(getattr(self, c)[j]) for c in self._COLUMNS))

    def __getitem__(self, name) -> ParameterRow:
        try:
            j = self.names.index(name)
        except ValueError:
            raise KeyError(f"no free parameter {name!r}; names look like {self.names[:3]}") from None
        return self._row(j)

    def __iter__(self):
        return (self._row(j) for j in range(len(self.names)))

    def to_dict(self) -> dict:
        """``{name: {"estimate": ..., "std_error": ..., ...}}`` with plain floats."""
        return {row.name: {c: getattr(row, c) for c in self._COLUMNS} for row in self}

    def to_frame(self):
        """The table as a ``pandas.DataFrame`` indexed by parameter name (needs pandas)."""
        import pandas as pd

        return pd.DataFrame({c: getattr(self, c) for c in self._COLUMNS}, index=pd.Index(self.names, name="name"))

    def __str__(self):
        lo, hi = f"{(1 - self.level) / 2:.1%}", f"{(1 + self.level) / 2:.1%}"
        header = ("name", "estimate", "std_error", "z", "p_value", lo, hi)
        lines = [[r.name] + [f"{v:.4g}" for v in r[1:]] for r in self]
        widths = [max(len(h), *(len(line[c]) for line in lines)) if lines else len(h) for c, h in enumerate(header)]
        fmt = lambda cells: "  ".join(  # noqa: E731
            cell.ljust(width) if c == 0 else cell.rjust(width) for c, (cell, width) in enumerate(zip(cells, widths))
        )
        return "\n".join([fmt(header)] + [fmt(line) for line in lines])

    def __repr__(self):
        return f"ParameterTable(level={self.level}, n_params={len(self)}, method={self.method!r})\n{self}"


def _covariance(information):
    """Inverse of the information, or a pseudo-inverse on its positive eigenspace when it is singular.

    Returns ``(covariance, identified)``: ``identified[j]`` is False when parameter ``j`` loads on an
    eigenvector whose eigenvalue is not clearly positive (its standard error is then undefined).
    """
    try:
        chol = np.linalg.cholesky(information)
    except np.linalg.LinAlgError:
        chol = None
    if chol is not None:
        inv_chol = np.linalg.inv(chol)
        cov = inv_chol.T @ inv_chol
        evals = np.linalg.eigvalsh(information)
        if evals[0] > _SINGULAR_RTOL * evals[-1]:
            return cov, np.ones(information.shape[0], dtype=bool)
    evals, evecs = np.linalg.eigh(information)
    good = evals > _SINGULAR_RTOL * max(evals[-1], 0.0)
    cov = (evecs[:, good] / evals[good]) @ evecs[:, good].T
    bad = np.abs(evecs[:, ~good]).max(axis=1, initial=0.0) > 1e-8
    return cov, ~bad


class _Resolved(NamedTuple):
    params: MoEParams
    y: object
    sample_weight: object
    l2: float
    ridge: str
    problems: list
    boundary: tuple


def _resolve_model(model, y, sample_weight=None) -> _Resolved:
    """The estimate, labels and weights of an MoEParams, a FitResult or a fitted estimator.

    ``l2`` and ``ridge`` are the ridge the estimate maximised with (``l2 = 0`` for an MoEParams); ``problems``
    lists the reasons the fit may not be an interior maximum; ``boundary`` the fit's ``(expert, class)``
    pairs of probability 0 (``FitResult.boundary``). For an estimator the labels are encoded and its
    class weights multiplied into ``sample_weight``, as in its fit.
    """
    if isinstance(model, MoEParams):
        return _Resolved(model, y, sample_weight, 0.0, "centred", [], ())
    if isinstance(model, FitResult):
        problems = []
        if not model.converged:
            problems.append("the fit did not converge")
        if model.diverged:
            problems.append("its coefficients were diverging (the MLE may not exist)")
        if model.active_bounds:
            # At a bound the maximum is not a stationary point: the curvature there says nothing about
            # the estimate's spread, and its law is not normal (a mass sits on the bound).
            problems.append(
                f"{len(model.active_bounds)} free parameter(s) ended on their bound "
                f"({', '.join(model.active_bounds[:8])}{', ...' if len(model.active_bounds) > 8 else ''}): "
                "standard errors are not valid for them, and the others are conditional on the bound")
        if model.boundary:
            names = _boundary_names(model.params, model.boundary)
            problems.append(
                f"it ended on a boundary of the model (probability 0 for {boundary_pairs_text(model.boundary)}): the "
                f"intercepts there are not finite, so {', '.join(names[:8])}{', ...' if len(names) > 8 else ''} "
                "have no standard error (nan), and the others are conditional on that boundary")
        return _Resolved(model.params, y, sample_weight, model.l2, model.ridge, problems, tuple(model.boundary))
    # The estimator module is loaded whenever an estimator exists; importing it here would need scikit-learn.
    estimator = sys.modules.get("fastmoe.estimator")
    if estimator is not None and isinstance(model, estimator.MixtureOfExpertsClassifier):
        codes = model.encode_labels(y)
        weights = model._fit_weights(codes, sample_weight)
        return _resolve_model(model.fit_result_, None)._replace(y=codes, sample_weight=weights)
    raise TypeError(
        f"model must be an MoEParams, a FitResult or a fitted MixtureOfExpertsClassifier, got {type(model).__name__}"
    )


def _boundary_names(params, boundary):
    """The free parameters of a boundary maximum's ``(expert, class)`` pairs, which have no standard error.

    Where class ``c`` has probability 0 in expert ``i``, its intercept ``b[i,c]`` ran off to -inf and
    its slopes ``a[i,c,:]`` no longer act on the likelihood; where that class is the last (the
    reference of the expert's classes), every other intercept ran off to +inf against it, and each
    of expert ``i``'s free class parameters is measured from a class with no mass.
    """
    K = params.n_classes
    rows = {(i, s) for i, c in boundary for s in (range(K - 1) if c == K - 1 else (c,))}
    names = {f"b[{i},{s}]" for i, s in rows} | {f"a[{i},{s},{j}]" for i, s in rows for j in range(params.n_features)}
    return [name for name in free_parameter_names(params) if name in names]


def _fitted_bounds(model):
    """The box a FitResult or fitted estimator was constrained to (None for an MoEParams or no box)."""
    result = getattr(model, "fit_result_", model)
    return getattr(result, "bounds", None) if isinstance(result, FitResult) else None


def _class_weighted(model):
    """The fitted estimator ``model`` when its fit used class weights other than 1, else None."""
    estimator = sys.modules.get("fastmoe.estimator")
    if (estimator is not None and isinstance(model, estimator.MixtureOfExpertsClassifier)
            and model.class_weight is not None and not np.all(model.class_weight_ == 1.0)):
        return model
    return None


#: The UncertaintyWarning of a class-weighted estimator's Wald table (bootstrap_table, which redraws the
#: weights with the labels, leaves it out of its own Wald column).
CLASS_WEIGHT_WARNING = (
    "the fit's class weights enter the information as frequency weights (a row of weight 4 counts as four "
    "observations), which they are not: the Wald standard errors misstate the spread of a class-weighted "
    "fit (too small where the weights exceed 1); bootstrap_table redraws the labels with their weights")


def _penalty_matrix(params, l2, ridge):
    """The Hessian of the ridge (``l2`` of form ``ridge``) over the free vector."""
    shapes = SimpleNamespace(n_experts=params.n_experts, n_classes=params.n_classes, n_features=params.n_features,
                             n_gate_features=params.n_gate_features)
    return Penalty(l2, shapes, ridge=ridge).hessian


COVARIANCES = ("auto", "observed", "penalised", "sandwich")


def parameter_table(
    model, X, y, *, sample_weight=None, level=0.95, covariance="auto", l2=None, ridge=None, n_threads=None
) -> ParameterTable:
    """Standard errors and Wald confidence intervals of the free parameters.

    Parameters
    ----------
    model : MoEParams, FitResult or fitted MixtureOfExpertsClassifier
        The estimate (normally the fit on ``(X, y)``). For an estimator, ``y`` holds its labels and
        class indices in the names follow ``classes_``.
    X : array-like of shape (n_samples, n_features)
        The data the estimate was fitted on.
    y : array-like of shape (n_samples,)
    sample_weight : array-like of shape (n_samples,), optional
        The fit's weights. Read as frequency weights (the information is ``sum_n w_n J_n``). An
        estimator's ``class_weight`` is applied on top, as in its fit.
    level : float, default=0.95
        Coverage of the intervals, in (0, 1).
    covariance : {"auto", "observed", "penalised", "sandwich"}, default="auto"
        ``"observed"``: ``J^{-1}``, the classical covariance of the MLE. ``"penalised"``: ``J_p^{-1}``
        with ``J_p = J + R`` the negative Hessian of the penalised objective (``R`` the ridge's). ``"sandwich"``:
        ``J_p^{-1} J J_p^{-1}``. ``"auto"`` is ``"observed"`` for an unpenalised fit and ``"penalised"``
        for a penalised one (see the module notes). The table's ``method`` says which was used.
    l2 : float, optional
        The ridge the estimate maximised with; by default the FitResult's or estimator's (0 for an
        MoEParams).
    ridge : {"centred", "reference"}, optional
        Its form (:func:`fastmoe.fit`); by default the FitResult's or estimator's ("centred" for an
        MoEParams).
    n_threads : int, optional

    Returns
    -------
    ParameterTable

    Warns
    -----
    UncertaintyWarning
        When a FitResult or estimator did not converge or diverged, ended with parameters on the
        bound of its box (``bounds``: their standard errors are not valid), when a penalised fit is given
        ``covariance="observed"``, when the information is not positive definite (the affected
        standard errors are ``nan``), or when an estimator was fitted with class weights (they enter
        the information as frequency weights, which they are not).

    Notes
    -----
    ``std_error = sqrt(diag(covariance))``. Gating parameters are relative to the last expert, expert
    parameters relative to each expert's last class (reference conventions).
    """
    if not (is_finite_real(level) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    params, y, sample_weight, fitted_l2, fitted_ridge, problems, boundary = _resolve_model(model, y, sample_weight)
    l2 = fitted_l2 if l2 is None else l2
    ridge = fitted_ridge if ridge is None else ridge
    if not (is_finite_real(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if ridge not in RIDGES:
        raise ValueError(f"ridge must be one of {RIDGES}, got {ridge!r}")
    if covariance == "auto":
        covariance = "observed" if l2 == 0 else "penalised"
    if covariance == "observed" and l2 > 0:
        problems.append("it maximised a penalised likelihood (l2 > 0), not the likelihood (use covariance='penalised')")
    if problems:
        warnings.warn(
            "standard errors assume a converged maximum of the objective, but " + "; ".join(problems),
            UncertaintyWarning,
            stacklevel=2,
        )
    if _class_weighted(model) is not None:
        warnings.warn(CLASS_WEIGHT_WARNING, UncertaintyWarning, stacklevel=2)
    information = observed_information(params, X, y, sample_weight, n_threads)
    if covariance == "observed":
        cov, identified = _covariance(information)
        method = "observed information"
    else:
        inverse, identified = _covariance(information + _penalty_matrix(params, l2, ridge))
        if covariance == "penalised":
            cov, method = inverse, f"inverse penalised Hessian ({ridge} ridge, l2={l2:g})"
        else:
            cov, method = (inverse @ information @ inverse,
                           f"sandwich around the penalised Hessian ({ridge} ridge, l2={l2:g})")
    if not identified.all():
        warnings.warn(
            f"the {'observed' if covariance == 'observed' else 'penalised'} information is not positive definite "
            f"({int((~identified).sum())} parameters load on non-positive directions: not a strict maximum, or an "
            "over-specified/non-identified model); their standard errors are nan",
            UncertaintyWarning,
            stacklevel=2,
        )
    estimate = free_parameters(params)
    std_error = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    std_error[~identified] = np.nan
    if boundary:  # finite only because the run stopped somewhere along the way to -inf
        runaway = np.isin(free_parameter_names(params), _boundary_names(params, boundary))
        std_error[runaway] = np.nan
        cov = cov.copy()
        cov[runaway], cov[:, runaway] = np.nan, np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        z = estimate / std_error
    from scipy.special import ndtr, ndtri  # on first use: keeps ``import fastmoe`` light

    p_value = 2.0 * ndtr(-np.abs(z))  # = norm.sf, without importing scipy.stats (~0.4 s)
    q = ndtri(0.5 + level / 2.0)  # = norm.ppf
    return ParameterTable(
        names=tuple(free_parameter_names(params)),
        estimate=estimate,
        std_error=std_error,
        z=z,
        p_value=p_value,
        lower=estimate - q * std_error,
        upper=estimate + q * std_error,
        level=float(level),
        information=information,
        covariance=cov,
        method=method,
    )


# ----------------------------------------------------------------------------------------------------------
# Parametric bootstrap
# ----------------------------------------------------------------------------------------------------------
BOOTSTRAP_INTERVALS = ("normal", "percentile", "basic", "bc", "studentized")


def _bias_corrected_quantiles(replicates, estimate, level):
    """Efron's bias-corrected percentile interval: the quantiles at ``Phi(2 z0 + z_{alpha/2})`` and
    ``Phi(2 z0 + z_{1-alpha/2})`` with ``z0 = Phi^-1(share of replicates below the estimate)`` (ties
    count half), per parameter. It moves the percentile interval against the estimator's median bias."""
    from scipy.special import ndtr, ndtri  # Phi and its inverse; on first use, as above

    below = (replicates < estimate).mean(axis=0) + 0.5 * (replicates == estimate).mean(axis=0)
    n = replicates.shape[0]
    z0 = ndtri(np.clip(below, 0.5 / n, 1 - 0.5 / n))
    z = ndtri(np.array([(1 - level) / 2, (1 + level) / 2]))
    lower, upper = np.empty(estimate.shape), np.empty(estimate.shape)
    for j in range(estimate.shape[0]):
        levels = ndtr(2 * z0[j] + z)
        lower[j], upper[j] = np.quantile(replicates[:, j], levels)
    return lower, upper


def _aligned(params, reference, max_experts=6):
    """The free vector of ``params`` with its experts relabelled to lie closest to ``reference`` (a free vector).

    A refit started at the estimate keeps its expert labels almost always; this guards the rare swap
    (all ``k!`` orders are tried up to ``max_experts`` experts).
    """
    k = params.n_experts
    if k == 1 or k > max_experts:
        return free_parameters(params)
    best, best_distance = None, np.inf
    for order in itertools.permutations(range(k)):
        order = list(order)
        theta = free_parameters(MoEParams(params.beta0[order], params.beta1[order], params.a[order],
                                          params.b[order], params.gating, **params.inputs))
        distance = float(np.sum((theta - reference) ** 2))
        if distance < best_distance:
            best, best_distance = theta, distance
    return best


def bootstrap_table(
    model, X, y, *, n_boot=200, interval="normal", failed="keep", level=0.95, sample_weight=None,
    covariance="auto", n_jobs=1, random_state=None, max_iter=1000, tol=1e-8,
) -> ParameterTable:
    """Parametric-bootstrap intervals of the free parameters, beside the Wald ones of :func:`parameter_table`.

    Each replicate draws new labels ``y* ~ p_hat(. | x_n)`` from the fitted model at the same inputs
    (and weights), refits from the estimate (same number of experts, gating and ridge) and records the
    refitted free parameters, their experts relabelled onto the estimate's. The spread of the refits
    gives the standard errors and the intervals.

    Parameters
    ----------
    model : MoEParams, FitResult or fitted MixtureOfExpertsClassifier
        The estimate on ``(X, y)`` (an MoEParams is treated as an unpenalised fit).
    X : array-like of shape (n_samples, n_features)
        The data the estimate was fitted on.
    y : array-like of shape (n_samples,)
        Its labels (the estimator's own labels for an estimator); they serve the studentized interval's
        standard error at the estimate, the refits use drawn labels.
    n_boot : int, default=200
        Replicates (refits).
    interval : {"normal", "percentile", "basic", "bc", "studentized"}, default="normal"
        ``"normal"``: ``estimate -+ q sd``, the Wald form with the refits' standard deviation ``sd`` in
        place of the inverse information's (Efron & Tibshirani 1993, section 13.2; the default: on the
        README's truth at n = 5000 it covered 0.956 of the converged fits' parameters, where Wald covered
        0.904 and the other bootstrap intervals 0.87-0.93, docs/uncertainty.md).
        ``"percentile"``: the ``(1 -+ level) / 2`` quantiles of the refits. ``"basic"``: those quantiles
        reflected about the estimate, ``2 theta_hat - q``. ``"bc"``: Efron's bias-corrected percentile
        interval (quantile levels shifted by the share of refits below the estimate). ``"studentized"`` (bootstrap-t): the quantiles
        of ``(theta* - theta_hat) / se*`` times the Wald standard error, with ``se*`` each refit's own
        Wald standard error (one Hessian pass per refit; replicates whose ``se*`` is undefined are left
        out). ``docs/uncertainty.md`` gives their measured coverage.
    failed : {"keep", "drop"}, default="keep"
        Refits that diverge (the drawn labels have no MLE: a class quasi-separated inside an expert) or
        do not converge: ``"keep"`` counts their last iterates in the quantiles of the percentile, bc and
        basic intervals (they are draws of an estimator that runs off, and belong in its tails),
        ``"drop"`` leaves them out. The standard deviation, the covariance and the studentized interval
        (and so the normal interval) always use the converged refits only.
    level : float, default=0.95
    sample_weight : array-like of shape (n_samples,), optional
        The fit's (frequency) weights; every replicate keeps them. A class-weighted estimator's class
        weights follow each replicate's drawn labels, as they followed the labels in its fit.
    covariance : {"auto", "observed", "penalised", "sandwich"}, default="auto"
        How the Wald standard errors of the studentized interval are formed (see :func:`parameter_table`).
    n_jobs : int, default=1
        Refits run at once, in threads (the compiled passes release the GIL); each refit uses one
        OpenMP thread. ``-1`` uses every core. Threads pay when the compiled passes dominate a refit
        (large ``n``); at ``n = 5000`` the Python loop between passes holds the GIL and two threads
        ran no faster than one on a 2-core machine.
    random_state : None, int or numpy.random.Generator
        Seeds the replicates; replicate ``b`` has its own stream, so the result does not depend on ``n_jobs``.
    max_iter, tol : int, float
        Settings of each refit (see :func:`fastmoe.fit`).

    Returns
    -------
    ParameterTable
        ``estimate`` as fitted, ``std_error`` the standard deviation of the refits, ``z`` and ``p_value``
        from them, ``lower``/``upper`` the bootstrap interval, ``covariance`` the refits' covariance,
        ``information`` the observed information at the estimate, ``replicates`` the refits,
        ``n_failed`` and ``failed_refits`` the refits that did not converge or diverged.

    Warns
    -----
    UncertaintyWarning
        When more than 5% of the refits fail, or the estimate itself is doubtful (as for
        :func:`parameter_table`).
    """
    if interval not in BOOTSTRAP_INTERVALS:
        raise ValueError(f"interval must be one of {BOOTSTRAP_INTERVALS}, got {interval!r}")
    if failed not in ("keep", "drop"):
        raise ValueError(f"failed must be 'keep' or 'drop', got {failed!r}")
    if not (is_finite_real(level) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    n_boot = check_positive_int(n_boot, "n_boot", minimum=2)
    n_jobs = effective_n_threads(n_jobs, "n_jobs") if n_jobs is not None else 1
    params, y_codes, weights, l2, ridge, _, _ = _resolve_model(model, y, sample_weight)
    bounds = _fitted_bounds(model)  # refits maximise over the estimate's own box
    params = check_params(params).normalized()
    X = check_X(X, n_features=params.n_inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(CLASS_WEIGHT_WARNING), category=UncertaintyWarning)
        wald = parameter_table(model, X, y, sample_weight=sample_weight, level=level, covariance=covariance,
                               n_threads=1)
    weights = None if weights is None else check_sample_weight(weights, X.shape[0])
    class_weighted = _class_weighted(model)

    def weights_of(labels):
        """A replicate's weights: a class-weighted estimator's follow the drawn labels, as in its fit."""
        if class_weighted is None:
            return weights
        return check_sample_weight(class_weighted._fit_weights(labels, sample_weight), X.shape[0])

    theta_hat = wald.estimate
    seeds = np.random.SeedSequence(check_random_state(random_state).integers(2**63)).spawn(n_boot)
    studentized = interval == "studentized"

    def replicate(seed):
        from .sampling import sample

        _, y_star = sample(params, X=X, random_state=np.random.default_rng(seed), n_threads=1)
        w_star = weights_of(y_star)
        refit = fit(X, y_star, params.n_experts, n_classes=params.n_classes, gating=params.gating, init=params,
                    max_iter=max_iter, tol=tol, l2=l2, ridge=ridge, bounds=bounds, sample_weight=w_star,
                    n_threads=1)
        theta = _aligned(refit.params, theta_hat)  # a failed refit's last iterate, kept for failed="keep"
        se = np.full(theta_hat.shape, np.nan)
        failed = not refit.converged or refit.diverged or not np.isfinite(theta).all()
        if studentized and not failed:
            table = parameter_table(refit.params, X, y_star, sample_weight=w_star, l2=l2, ridge=ridge,
                                    covariance=covariance, n_threads=1)
            se = _aligned_se(refit.params, table, theta_hat)
        return theta, se, failed

    with warnings.catch_warnings():
        # Failed refits are counted below; their warnings would repeat one message per replicate.
        warnings.simplefilter("ignore", exceptions.ConvergenceWarning)
        warnings.simplefilter("ignore", UncertaintyWarning)
        if n_jobs == 1:
            results = [replicate(seed) for seed in seeds]
        else:
            with ThreadPoolExecutor(max_workers=n_jobs) as pool:
                results = list(pool.map(replicate, seeds))
    replicates = np.array([theta for theta, _, _ in results])
    failed_mask = np.array([bad for _, _, bad in results])
    ok = ~failed_mask
    n_failed = int(failed_mask.sum())
    if n_failed > 0.05 * n_boot:
        warnings.warn(
            f"{n_failed} of {n_boot} bootstrap refits did not converge or diverged"
            + ("; the intervals use the others" if failed == "drop" or studentized else ""),
            UncertaintyWarning,
            stacklevel=2,
        )
    if ok.sum() < 2:
        raise ValueError(f"only {int(ok.sum())} of {n_boot} bootstrap refits converged; no interval can be formed")
    good = replicates[ok]
    # The quantiles of "keep" include the failed refits' last iterates: a diverging refit is a draw of an
    # estimator that runs off, and dropping it would cut the tail it belongs to.
    quantile_set = replicates[np.isfinite(replicates).all(axis=1)] if failed == "keep" else good
    alpha = 1.0 - level
    std_error = good.std(axis=0, ddof=1)
    if interval == "normal":
        from scipy.special import ndtri

        q = float(ndtri(0.5 + level / 2.0))
        lower, upper = theta_hat - q * std_error, theta_hat + q * std_error
    elif interval == "percentile":
        lower, upper = np.quantile(quantile_set, [alpha / 2, 1 - alpha / 2], axis=0)
    elif interval == "basic":
        q_low, q_high = np.quantile(quantile_set, [alpha / 2, 1 - alpha / 2], axis=0)
        lower, upper = 2 * theta_hat - q_high, 2 * theta_hat - q_low
    elif interval == "bc":
        lower, upper = _bias_corrected_quantiles(quantile_set, theta_hat, level)
    else:
        se_star = np.array([se for _, se, _ in results])[ok]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_star = (good - theta_hat) / se_star
        lower, upper = np.empty_like(theta_hat), np.empty_like(theta_hat)
        for j in range(theta_hat.shape[0]):
            t = t_star[:, j][np.isfinite(t_star[:, j])]
            if t.size < 2 or not np.isfinite(wald.std_error[j]):
                lower[j] = upper[j] = np.nan
                continue
            t_low, t_high = np.quantile(t, [alpha / 2, 1 - alpha / 2])
            lower[j], upper[j] = theta_hat[j] - t_high * wald.std_error[j], theta_hat[j] - t_low * wald.std_error[j]
    from scipy.special import ndtr

    with np.errstate(divide="ignore", invalid="ignore"):
        z = theta_hat / std_error
    return ParameterTable(
        names=wald.names,
        estimate=theta_hat,
        std_error=std_error,
        z=z,
        p_value=2.0 * ndtr(-np.abs(z)),
        lower=lower,
        upper=upper,
        level=float(level),
        information=wald.information,
        covariance=np.cov(good, rowvar=False),
        method=f"parametric bootstrap, {interval} interval, {int(ok.sum())} of {n_boot} refits converged"
               + (f" (studentized by {wald.method})" if studentized else "")
               + (", failed refits kept in the quantiles"
                  if failed == "keep" and interval in ("percentile", "basic", "bc") and n_failed else ""),
        replicates=replicates,
        n_failed=n_failed,
        failed_refits=failed_mask,
    )


def _aligned_se(params, table, reference):
    """The standard errors of ``table`` (at ``params``) in the order :func:`_aligned` gives the estimates.

    A refit started at the estimate keeps its expert labels; a replicate whose experts came back swapped
    gets no studentized value (its gating standard errors refer to another reference expert).
    """
    if params.n_experts == 1 or np.array_equal(_aligned(params, reference), free_parameters(params)):
        return table.std_error
    return np.full_like(table.std_error, np.nan)
