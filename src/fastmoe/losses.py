"""Voronoi losses between a fitted and a true mixing measure (``MODEL.md`` section 4).

A parameter set is read as the mixing measure ``G = sum_i exp(beta0_i) delta_(beta1_i, a_i, b_i)`` of
Nguyen, Akbarian, Nguyen & Ho, "A General Theory for Softmax Gating Multinomial Logistic Mixture of
Experts" (ICML 2024). Experts are exchangeable, so fitted atoms are compared with true atoms through
Voronoi cells, never by index. Every function here goes through the same three steps:

1. **Conventions.** Both sides are moved to the reference conventions (:meth:`MoEParams.normalized`), so
   the expert parameters ``a, b`` are comparable and the true masses ``exp(beta0*_j)`` are those of the
   last-expert convention. The loss scale is therefore fixed by the true parameter alone (and, as in the
   paper, it depends on which true expert is last).
2. **Translation alignment** of the fitted gating onto the true one (:func:`align_translation`): the
   gating is identified only up to a common shift ``(t0, t1)``, and the fitted reference expert may sit
   in another cell than the true one, so the fitted reference convention is not the right one to compare.
3. **Cells and loss** (:func:`voronoi_cells`, :func:`voronoi_loss`, :func:`per_parameter_errors`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from .params import MoEParams

__all__ = [
    "align_translation",
    "voronoi_cells",
    "voronoi_loss",
    "D1",
    "D2",
    "D2r",
    "per_parameter_errors",
    "flat",
    "PER_PARAMETER_FIELDS",
]

#: Keys of :func:`per_parameter_errors`, in the order :func:`flat` writes them.
PER_PARAMETER_FIELDS = (
    "cell_size",
    "mass_err",
    "beta1_max",
    "beta1_mean",
    "a_max",
    "a_mean",
    "b_max",
    "b_mean",
)


# -- validation ----------------------------------------------------------------------------------------
def _logsumexp(v):
    from scipy.special import logsumexp  # on first use: keeps ``import fastmoe`` light (issue 13)

    return logsumexp(v)


def _check_pair(fitted, true):
    """Check that two parameter sets live in the same model and return them in reference conventions."""
    for name, value in (("fitted", fitted), ("true", true)):
        if not isinstance(value, MoEParams):
            raise TypeError(f"{name} must be a MoEParams, got {type(value).__name__}")
    for what, attr in (
        ("n_features (d)", "n_features"),
        ("n_gate_features (d_gate)", "n_gate_features"),
        ("n_classes (K)", "n_classes"),
    ):
        got, want = getattr(fitted, attr), getattr(true, attr)
        if got != want:
            raise ValueError(f"fitted has {what}={got} but true has {what}={want}")
    # Slopes on different columns are coordinates of different models, even when the counts agree.
    for what, attr in (("gating_features", "gating_features"), ("expert_features", "expert_features"),
                       ("n_inputs (columns of X)", "n_inputs")):
        got, want = getattr(fitted, attr), getattr(true, attr)
        if got != want:
            raise ValueError(f"fitted has {what}={got} but true has {what}={want}")
    # beta1 of a tanh gating and of a standard gating are coordinates of different models.
    if fitted.gating_name != true.gating_name:
        raise ValueError(
            f"fitted uses gating {fitted.gating_name!r} but true uses {true.gating_name!r}; "
            "their gating parameters are not comparable"
        )
    return fitted.normalized(), true.normalized()


def _check_exponent(name, r):
    r = float(r)
    if not (np.isfinite(r) and r > 0):
        raise ValueError(f"{name} must be a positive finite exponent, got {r}")
    return r


# -- alignment -----------------------------------------------------------------------------------------
def _closed_form_alignment(fitted, true):
    """Shift the normalised fitted gating so total masses and mass-weighted beta1 means agree.

    Works in log space: ``t0 = logsumexp(beta0*) - logsumexp(beta0)`` cannot overflow even when an
    unconverged fit has huge intercepts.
    """
    log_total = _logsumexp(true.beta0)
    beta0 = fitted.beta0 - _logsumexp(fitted.beta0) + log_total
    # The weights are normalised masses, so the mean does not depend on t0.
    w_fit = np.exp(fitted.beta0 - _logsumexp(fitted.beta0))
    w_true = np.exp(true.beta0 - log_total)
    beta1 = fitted.beta1 + (w_true @ true.beta1 - w_fit @ fitted.beta1)
    return dataclasses.replace(fitted, beta0=beta0, beta1=beta1)


def _shifted(params, t):
    return dataclasses.replace(params, beta0=params.beta0 + t[0], beta1=params.beta1 + t[1:])


#: An exact alignment whose fitted masses add up to less than exp(-this) of the true ones has reached the
#: degenerate infimum of the loss (every fitted mass sent to 0): warned about, not silently returned.
_DEGENERATE_MASS_LOG_RATIO = np.log(1e6)


def _exact_alignment(start, true, exponents):
    """Minimise the loss over ``(t0, t1)`` from the closed-form alignment ``start``.

    The loss is only piecewise smooth (absolute values, cells that switch as ``t1`` moves), so a
    derivative-free simplex method is used. Nelder-Mead can stall on a kink; one restart from its optimum
    with a fresh, smaller simplex is the usual cheap remedy.
    """

    def objective(t):
        # A wild simplex vertex may overflow exp(beta0 + t0); treat it as a bad point, not an error.
        with np.errstate(over="ignore", invalid="ignore"):
            value = _loss(_shifted(start, t), true, *exponents)
        return value if np.isfinite(value) else np.inf

    # Imported here: scipy.optimize costs ~0.4 s, paid only by exact alignment (issue 13, item 4).
    from scipy.optimize import minimize

    dim = 1 + start.n_gate_features
    best_t, best_value = np.zeros(dim), objective(np.zeros(dim))
    # Initial step: a tenth of the spread of the true beta1 (at least 0.1), so the simplex sees the cells.
    step = 0.1 * max(1.0, float(np.ptp(true.beta1)))
    for scale in (step, 0.1 * step):
        simplex = np.vstack([best_t, best_t + scale * np.eye(dim)])
        res = minimize(
            objective,
            best_t,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "xatol": 1e-10, "fatol": 1e-14, "maxiter": 400 * dim},
        )
        if res.fun < best_value:
            best_t, best_value = res.x, float(res.fun)
    aligned = _shifted(start, best_t)
    log_true_mass = _logsumexp(true.beta0)
    if _logsumexp(aligned.beta0) < log_true_mass - _DEGENERATE_MASS_LOG_RATIO:
        warnings.warn(
            f"exact translation alignment degenerated: the infimum over (t0, t1) sends every fitted mass to 0 "
            f"(loss {best_value:.4g}, the total true mass {np.exp(log_true_mass):.4g}), which happens "
            "whenever the closed-form loss exceeds the total true mass; use exact_translation=False",
            RuntimeWarning,
            stacklevel=4,
        )
    return aligned


def align_translation(fitted, true, exact=False, r_beta=1.0, r_a=1.0, r_b=1.0):
    """Bring the fitted gating onto the translation of the true one.

    Parameters
    ----------
    fitted, true : MoEParams
        Fitted and true parameters; same ``d``, ``d_gate``, ``K`` and gating transform. ``fitted`` may have
        more (over-fit) or fewer experts than ``true``.
    exact : bool, default=False
        If False, the closed form of ``MODEL.md`` section 4: ``t0`` makes the total masses agree and ``t1``
        makes the mass-weighted means of ``beta1`` agree. If True, start there and minimise
        :func:`voronoi_loss` with the given exponents over ``(t0, t1)`` numerically (Nelder-Mead); the
        result is never worse than the closed form. Beware a property of the loss itself: as
        ``t0 -> -inf`` every fitted mass vanishes and the loss tends to ``sum_j exp(beta0*_j)``, so
        whenever the closed-form loss exceeds the total true mass the infimum is that degenerate value
        (all cells effectively emptied); a ``RuntimeWarning`` says so when it happens. Rate studies
        therefore use the closed form.
    r_beta, r_a, r_b : float, default=1.0
        Exponents of the loss that ``exact=True`` minimises (ignored otherwise).

    Returns
    -------
    MoEParams
        The fitted parameters in reference class convention, with gating shifted by ``(t0, t1)``. Its
        gating is *not* in the last-expert convention any more; do not normalise it again.
    """
    fitted, true = _check_pair(fitted, true)
    aligned = _closed_form_alignment(fitted, true)
    if exact:
        exponents = tuple(_check_exponent(n, r) for n, r in (("r_beta", r_beta), ("r_a", r_a), ("r_b", r_b)))
        aligned = _exact_alignment(aligned, true, exponents)
    return aligned


# -- cells and loss ------------------------------------------------------------------------------------
def _atoms(params):
    """Rows ``theta_i = (beta1_i, vec(a_i), b_i)``: the atom locations (``beta0`` is the mass, not a location)."""
    k = params.n_experts
    return np.hstack([params.beta1, params.a.reshape(k, -1), params.b])


def _cells(fitted, true):
    # Differences rather than the expanded |x|^2 - 2x.y + |y|^2 form, so equal distances stay exactly
    # equal and the tie rule (argmin takes the first, i.e. smallest j) is honoured.
    diff = _atoms(fitted)[:, None, :] - _atoms(true)[None, :, :]
    return np.argmin(np.einsum("ijp,ijp->ij", diff, diff), axis=1)


def _pieces(fitted, true):
    """Per fitted atom: its cell, its mass and the three parameter errors against its cell's true atom."""
    cell = _cells(fitted, true)
    mass = np.exp(fitted.beta0)
    err_beta = np.linalg.norm(fitted.beta1 - true.beta1[cell], axis=1)
    err_a = np.linalg.norm((fitted.a - true.a[cell]).reshape(fitted.n_experts, -1), axis=1)  # Frobenius
    err_b = np.linalg.norm(fitted.b - true.b[cell], axis=1)
    return cell, mass, err_beta, err_a, err_b


def _loss(fitted, true, r_beta, r_a, r_b):
    """The general loss on parameters that are already normalised and aligned."""
    cell, mass, err_beta, err_a, err_b = _pieces(fitted, true)
    k_true = true.n_experts
    cell_mass = np.bincount(cell, weights=mass, minlength=k_true)
    cell_size = np.bincount(cell, minlength=k_true)
    # An empty cell contributes its whole true mass exp(beta0*_j) here and nothing below.
    mass_term = np.abs(cell_mass - np.exp(true.beta0)).sum()
    split = cell_size[cell] > 1
    first_order = err_beta + err_a + err_b
    split_order = err_beta**r_beta + err_a**r_a + err_b**r_b
    return float(mass_term + mass @ np.where(split, split_order, first_order))


def voronoi_cells(fitted, true, exact_translation=False):
    """Voronoi cell of every fitted atom after translation alignment.

    Parameters
    ----------
    fitted, true : MoEParams
    exact_translation : bool, default=False
        Align with the numerical infimum of :func:`D1` instead of the closed form (see
        :func:`align_translation`).

    Returns
    -------
    ndarray of shape (fitted.n_experts,), dtype int
        ``cells[i] = j`` when fitted atom ``i`` is nearest (Euclidean, over ``(beta1, a, b)``) to true atom
        ``j``; ties go to the smallest ``j``. A true atom no ``i`` maps to has an empty cell.
    """
    aligned = align_translation(fitted, true, exact=exact_translation)
    return _cells(aligned, true.normalized())


def voronoi_loss(fitted, true, r_beta=2.0, r_a=2.0, r_b=2.0, exact_translation=False):
    """General Voronoi loss ``D(G, G*)`` of ``MODEL.md`` section 4.

    ``sum_j |sum_{i in A_j} exp(beta0_i) - exp(beta0*_j)|``
    ``+ sum_{|A_j| = 1} exp(beta0_i) (|dbeta_ij| + |da_ij| + |db_ij|)``
    ``+ sum_{|A_j| > 1} sum_{i in A_j} exp(beta0_i) (|dbeta_ij|^r_beta + |da_ij|^r_a + |db_ij|^r_b)``,
    with Euclidean norms (Frobenius for ``a``), after translation alignment.

    Parameters
    ----------
    fitted, true : MoEParams
        Same ``d``, ``d_gate``, ``K`` and gating transform; any numbers of experts.
    r_beta, r_a, r_b : float, default=2.0
        Exponents for ``beta1``, ``a`` and ``b`` in cells holding more than one fitted atom. Single-atom
        cells always use exponent 1.
    exact_translation : bool, default=False
        Use the infimum over gating translations (found numerically) instead of the closed-form alignment.

    Returns
    -------
    float
    """
    exponents = tuple(_check_exponent(n, r) for n, r in (("r_beta", r_beta), ("r_a", r_a), ("r_b", r_b)))
    aligned = align_translation(fitted, true, exact=exact_translation, r_beta=r_beta, r_a=r_a, r_b=r_b)
    return _loss(aligned, true.normalized(), *exponents)


def D1(fitted, true, exact_translation=False):
    """``D1``: every exponent 1 (the loss for exact fits, ``k = k*``; rate ``n^(-1/2)``).

    Defined for any number of fitted experts: with all exponents 1 the cell-size split of the general
    loss makes no difference.
    """
    return voronoi_loss(fitted, true, 1.0, 1.0, 1.0, exact_translation=exact_translation)


def D2(fitted, true, r=2.0, exact_translation=False):
    """``D2``: the over-fit loss, exponent ``r`` (default 2) for all groups in split cells.

    This is the loss of the paper's convergence theorems for ``k > k*`` (``D2 = O(sqrt(log n / n))``);
    for a per-group split such as ``(4, 2, 4)`` call :func:`voronoi_loss`.
    """
    return voronoi_loss(fitted, true, r, r, r, exact_translation=exact_translation)


def D2r(fitted, true, r, exact_translation=False):
    """``D2r``: the family of over-fit losses indexed by the split-cell exponent ``r``.

    The formula is that of :func:`D2` (``D2r(G, G*, r=2) == D2(G, G*)``); the difference is one of
    intent. ``D2`` is the loss with a fixed, theory-backed exponent; ``D2r`` is the family in the
    paper's minimax lower bound (standard gating, vanishing true expert: no ``r`` gives a polynomial
    rate), so ``r`` has no default and must be stated by the caller, e.g. when scanning a grid of ``r``.
    """
    return voronoi_loss(fitted, true, r, r, r, exact_translation=exact_translation)


# -- per-parameter errors ------------------------------------------------------------------------------
def per_parameter_errors(fitted, true, exact_translation=False):
    """Errors per true atom, so rates can be fitted parameter by parameter.

    Parameters
    ----------
    fitted, true : MoEParams
    exact_translation : bool, default=False
        Align with the numerical infimum of :func:`D1` (all groups weighed alike) instead of the
        closed form.

    Returns
    -------
    dict of str to ndarray of shape (true.n_experts,)
        Keys :data:`PER_PARAMETER_FIELDS`; entry ``j`` is about true atom ``j`` (reference convention):

        - ``cell_size``: ``|A_j|`` (int);
        - ``mass_err``: ``|sum_{i in A_j} exp(beta0_i) - exp(beta0*_j)|`` (``exp(beta0*_j)`` if empty);
        - ``beta1_max``, ``a_max``, ``b_max``: the largest error over the atoms of the cell;
        - ``beta1_mean``, ``a_mean``, ``b_mean``: the mass-weighted mean error over the cell.

        Parameter errors are NaN for an empty cell. Use :func:`flat` for ``name_j -> float`` records.
    """
    aligned = align_translation(fitted, true, exact=exact_translation)
    true = true.normalized()
    cell, mass, err_beta, err_a, err_b = _pieces(aligned, true)
    k_true = true.n_experts
    out = {
        "cell_size": np.bincount(cell, minlength=k_true),
        "mass_err": np.abs(np.bincount(cell, weights=mass, minlength=k_true) - np.exp(true.beta0)),
    }
    for name, err in (("beta1", err_beta), ("a", err_a), ("b", err_b)):
        worst = np.full(k_true, np.nan)
        mean = np.full(k_true, np.nan)
        for j in range(k_true):
            in_cell = cell == j
            if in_cell.any():
                worst[j] = err[in_cell].max()
                mean[j] = mass[in_cell] @ err[in_cell] / mass[in_cell].sum()
        out[f"{name}_max"] = worst
        out[f"{name}_mean"] = mean
    return out


def flat(errors, prefix=""):
    """Flatten :func:`per_parameter_errors` output into ``{prefix + name_j: float}`` columns.

    Order: atom by atom, fields in :data:`PER_PARAMETER_FIELDS` order, e.g. ``cell_size_0, mass_err_0,
    beta1_max_0, ..., b_mean_0, cell_size_1, ...``. Values are plain Python floats (NaN kept), ready for a
    table or JSON store.
    """
    k_true = len(errors["mass_err"])
    return {
        f"{prefix}{name}_{j}": float(errors[name][j]) for j in range(k_true) for name in PER_PARAMETER_FIELDS
    }
