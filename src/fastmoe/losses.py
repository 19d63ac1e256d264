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

:func:`D2q` is :func:`D2` with the one part quotiented out that the data cannot determine (issue 14): the
intercepts of the individual atoms of a split cell whose true expert vanishes (``MODEL.md`` section 4,
"Known trap"), replaced by the cell's pooled class probabilities, which the data do determine.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from .params import MoEParams, same_gating

__all__ = [
    "align_translation",
    "voronoi_cells",
    "voronoi_loss",
    "D1",
    "D2",
    "D2r",
    "D2q",
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
    "bpool",
)


# -- validation ----------------------------------------------------------------------------------------
def _logsumexp(v, axis=None, keepdims=False):
    from scipy.special import logsumexp  # on first use: keeps ``import fastmoe`` light (issue 13)

    return logsumexp(v, axis=axis, keepdims=keepdims)


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
    if not same_gating(fitted.gating, true.gating):
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


def _exact_alignment(start, true, exponents, quotient=False):
    """Minimise the loss over ``(t0, t1)`` from the closed-form alignment ``start``.

    The loss is only piecewise smooth (absolute values, cells that switch as ``t1`` moves), so a
    derivative-free simplex method is used. Nelder-Mead can stall on a kink; one restart from its optimum
    with a fresh, smaller simplex is the usual cheap remedy.
    """

    def objective(t):
        # A wild simplex vertex may overflow exp(beta0 + t0); treat it as a bad point, not an error.
        with np.errstate(over="ignore", invalid="ignore"):
            value = _loss(_shifted(start, t), true, *exponents, quotient=quotient)
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


def align_translation(fitted, true, exact=False, r_beta=1.0, r_a=1.0, r_b=1.0, quotient=False):
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
    quotient : bool, default=False
        Whether the loss that ``exact=True`` minimises is the quotient form (see :func:`voronoi_loss`);
        ignored otherwise.

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
        aligned = _exact_alignment(aligned, true, exponents, quotient=bool(quotient))
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


def _vanishing(true):
    """Mask of the true atoms whose expert vanishes (``a*_j = 0``), on normalised parameters.

    An exact zero test, not a tolerance: a vanishing expert is a property the truth is built with (the
    presets write ``a*_j = 0``), and a truth with a small but nonzero ``a*_j`` (a local alternative moved
    off the degenerate point) is identifiable, so :func:`D2`'s terms are the right ones for it; any
    tolerance would be a scale in the units of ``a`` that nothing here fixes. In reference conventions
    ``a*_j - a*_{K-1,j}`` of an expert with equal class rows is exactly 0 in floating point. With
    intercept-only experts (``d = 0``) every expert is constant in ``x``, and every atom vanishes.
    """
    return np.all(true.a == 0, axis=(1, 2))


def _pooled_intercept_errors(fitted, true, cell):
    """Per true atom ``j``: ``||bbar_j - b*_j||``, ``bbar_j`` the intercepts of the cell's pooled class
    probabilities (see :func:`D2q`); NaN for an empty cell. On normalised (and aligned) parameters.

    ``bbar_j = log m_j - log m_{j,K-1}`` with ``m_j(y) = sum_{i in A_j} exp(beta0_i) softmax(b_i)_y``:
    the normaliser ``sum_i exp(beta0_i)`` of the pooled probabilities cancels, so no translation of the
    gating (``t0``, ``t1``) enters. Computed in log space, as the alignment is: a diverged fit's huge
    ``beta0`` or ``b`` must not overflow.
    """
    # log(w_i softmax(b_i)_y)
    log_class_mass = fitted.beta0[:, None] + fitted.b - _logsumexp(fitted.b, axis=1, keepdims=True)
    err = np.full(true.n_experts, np.nan)
    for j in np.unique(cell):
        log_m = _logsumexp(log_class_mass[cell == j], axis=0)
        err[j] = np.linalg.norm(log_m - log_m[-1] - true.b[j])
    return err


def _loss(fitted, true, r_beta, r_a, r_b, quotient=False):
    """The general loss on parameters that are already normalised and aligned (``quotient``: see
    :func:`voronoi_loss`)."""
    cell, mass, err_beta, err_a, err_b = _pieces(fitted, true)
    k_true = true.n_experts
    cell_mass = np.bincount(cell, weights=mass, minlength=k_true)
    cell_size = np.bincount(cell, minlength=k_true)
    # An empty cell contributes its whole true mass exp(beta0*_j) here and nothing below.
    mass_term = np.abs(cell_mass - np.exp(true.beta0)).sum()
    split = cell_size[cell] > 1
    first_order = err_beta + err_a + err_b
    if not quotient:
        split_order = err_beta**r_beta + err_a**r_a + err_b**r_b
        return float(mass_term + mass @ np.where(split, split_order, first_order))
    # Split cells of vanishing true atoms: the atoms' own intercepts are not identifiable, so their b term
    # is dropped and the cell's pooled intercepts enter once, weighted by the cell mass, exponent 1.
    pooled_cells = _vanishing(true) & (cell_size > 1)
    pooled_atom = pooled_cells[cell]
    split_order = err_beta**r_beta + err_a**r_a + np.where(pooled_atom, 0.0, err_b**r_b)
    pooled_term = 0.0
    if pooled_cells.any():
        pooled_term = cell_mass[pooled_cells] @ _pooled_intercept_errors(fitted, true, cell)[pooled_cells]
    return float(mass_term + mass @ np.where(split, split_order, first_order) + pooled_term)


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


def voronoi_loss(fitted, true, r_beta=2.0, r_a=2.0, r_b=2.0, exact_translation=False, quotient=False):
    """General Voronoi loss ``D(G, G*)`` of ``MODEL.md`` section 4.

    ``sum_j |sum_{i in A_j} exp(beta0_i) - exp(beta0*_j)|``
    ``+ sum_{|A_j| = 1} exp(beta0_i) (|dbeta_ij| + |da_ij| + |db_ij|)``
    ``+ sum_{|A_j| > 1} sum_{i in A_j} exp(beta0_i) (|dbeta_ij|^r_beta + |da_ij|^r_a + |db_ij|^r_b)``,
    with Euclidean norms (Frobenius for ``a``), after translation alignment. With ``quotient=True``, in
    the split cells of vanishing true atoms the ``|db_ij|^r_b`` terms are replaced by one pooled term
    (see :func:`D2q`).

    Parameters
    ----------
    fitted, true : MoEParams
        Same ``d``, ``d_gate``, ``K`` and gating transform; any numbers of experts.
    r_beta, r_a, r_b : float, default=2.0
        Exponents for ``beta1``, ``a`` and ``b`` in cells holding more than one fitted atom. Single-atom
        cells always use exponent 1.
    exact_translation : bool, default=False
        Use the infimum over gating translations (found numerically) instead of the closed-form alignment.
    quotient : bool, default=False
        Quotient out the intercepts of the atoms of split vanishing cells (:func:`D2q`); the exact
        alignment then minimises this loss.

    Returns
    -------
    float
    """
    exponents = tuple(_check_exponent(n, r) for n, r in (("r_beta", r_beta), ("r_a", r_a), ("r_b", r_b)))
    quotient = bool(quotient)
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by name
        aligned = align_translation(fitted, true, exact=exact_translation, r_beta=r_beta, r_a=r_a, r_b=r_b,
                                    quotient=quotient)
        value = _loss(aligned, true.normalized(), *exponents, quotient=quotient)
    if not np.isfinite(value):
        raise FloatingPointError("the Voronoi loss overflows: some coefficient is too large (the masses "
                                 "exp(beta0) or the squared distances between atoms pass 1e308)")
    return value


def D1(fitted, true, exact_translation=False):
    """``D1``: every exponent 1 (the loss for exact fits, ``k = k*``; rate ``n^(-1/2)``).

    Defined for any number of fitted experts: with all exponents 1 the cell-size split of the general
    loss makes no difference.

    Its scale (not its rate in ``n``) depends on which true expert is last: every term is weighted by a
    mass ``exp(beta0*_j)`` in the truth's last-expert convention (reordering one truth's experts gave
    D1 = 2.98, 0.40 and 1.81 for the same estimate). Compare values across truths only with that fixed.
    """
    return voronoi_loss(fitted, true, 1.0, 1.0, 1.0, exact_translation=exact_translation)


def D2(fitted, true, r=2.0, exact_translation=False):
    """``D2``: the over-fit loss, exponent ``r`` (default 2) for all groups in split cells.

    This is the loss of the paper's convergence theorems for ``k > k*`` (``D2 = O(sqrt(log n / n))``);
    for a per-group split such as ``(4, 2, 4)`` call :func:`voronoi_loss`. As for :func:`D1`, its scale
    depends on which true expert is last.
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


def D2q(fitted, true, r=2.0, exact_translation=False):
    """``D2q``: :func:`D2` with the non-identifiable intercepts of split vanishing cells quotiented out.

    For a true atom ``j`` whose expert vanishes (``a*_j = 0`` exactly: its class probabilities
    ``p*_j = softmax(b*_j)`` do not depend on ``x``) and whose Voronoi cell ``A_j`` holds two or more fitted
    atoms, the terms ``exp(beta0_i) ||db_ij||^r`` of :func:`D2` are replaced by one term

    ``W_j ||bbar_j - b*_j||``,  ``W_j = sum_{i in A_j} exp(beta0_i)``,

    where ``bbar_j`` (reference class last) are the intercepts of the cell's pooled class probabilities
    ``q_j = sum_{i in A_j} exp(beta0_i) softmax(b_i) / W_j``: ``softmax(bbar_j) = q_j``. Every other term
    (cell masses, single-atom cells, ``beta1`` and ``a`` of split cells, ``b`` of split cells whose true
    expert does not vanish) is :func:`D2`'s, so ``D2q == D2`` when no true expert vanishes or no
    vanishing cell is split.

    Parameters
    ----------
    fitted, true : MoEParams
        Same ``d``, ``d_gate``, ``K`` and gating transform; any numbers of experts.
    r : float, default=2.0
        Exponent of ``beta1``, ``a`` and ``b`` in split cells, as in :func:`D2`. The pooled term always has
        exponent 1 (see Notes).
    exact_translation : bool, default=False
        Use the infimum of this loss over gating translations instead of the closed-form alignment.

    Returns
    -------
    float

    Notes
    -----
    **What the data determine.** A vanishing true atom contributes, for each class ``y``, the gating term
    ``exp(beta0*_j + beta1*_j . M(x)) p*_j(y)``. Fitted atoms with constant experts and the true gating
    slope reproduce it whenever their *class masses* ``m_j(y) = sum_{i in A_j} exp(beta0_i) softmax(b_i)_y``
    equal ``exp(beta0*_j) p*_j(y)``, whatever the individual ``b_i`` (``MODEL.md`` section 4, "Known
    trap"). So the law fixes ``m_j``, i.e. the cell mass ``W_j`` (already in the mass term) and ``q_j``,
    and nothing else of the ``b_i``; ``q_j`` is constant on the set of parameters that reproduce the true
    law, and ``D2q`` is 0 at every such parameter whose atoms fall in their true atom's cell, where
    :func:`D2` is not.

    **Why the atoms' own ``a_i`` and ``beta1_i`` do not enter ``q_j``** (the experts are taken at
    ``x = 0``, the weights are the measure's masses, not the gate at some ``x``). Expanding the cell's
    contribution to the law in ``dbeta_i . M(x)`` and ``a_i x`` (the fitted ``a_i`` are the errors
    ``da_ij``), ``m_j(y) - exp(beta0*_j) p*_j(y)`` is the coefficient of the one term that is constant in
    ``x`` (times ``exp(beta1*_j . M(x))``); every other term carries a power of ``dbeta_i . M(x)`` or of
    ``a_i x``. Averaging ``softmax(a_i x + b_i)`` over an input law instead would fold the ``a`` errors
    into the pooled term (at first order when the law's mean is not 0, at second order otherwise), so it
    would inherit their slow rate, which the ``a`` term already measures; and the losses know no input
    law. With ``a_i = 0`` and ``beta1_i = beta1*_j`` both choices agree.

    **Exponent 1 and the expected rate.** ``m_j(y)`` is the mass of a "class-``y`` sub-cell", and plays
    the role the cell mass plays in :func:`D2`: there the mass term has exponent 1 and converges at
    ``n^(-1/2)`` (up to ``log n``) wherever D2's theory holds. The pooled term is a smooth function of
    the parameters that the law identifies, so at the parametric rate ``n^(-1/2)`` the right exponent is
    1 (exponent ``r`` would make it ``n^(-r/2)``, hidden under the other terms). How sure: that ``q_j``
    is identified is exact algebra (and tested). That it converges at ``n^(-1/2)`` is a heuristic, not a
    proof: it rests on the coefficient argument above, i.e. on the inequality ``|m_j - m*_j| <= C
    ||p_G - p_G*||`` near a degenerate truth, which is not proved here. It is expected under modified
    gating (where D2's theory gives the cell mass ``n^(-1/2)``); under standard gating with a vanishing
    expert the paper's lower bound is for ``D2r`` as a whole and says nothing of the pooled quantity, and
    on the local alternatives near such a truth even the measured cell masses did not decay
    (docs/results-history.md): there the rate is unknown. Fit the slope of ``bpool_j`` (:func:`per_parameter_errors`) before relying on it. ``D2q``
    as a whole keeps D2's ``beta1`` and ``a`` terms, so it is no faster than they are.

    **Invariances.** ``bbar_j`` depends on the masses only through their ratios within the cell, so the
    gating's common translation ``(t0, t1)`` does not enter it; its weight ``W_j`` is aligned as every
    mass of :func:`D2` is (:func:`align_translation`). Like every term, it does not depend on the order of
    the fitted atoms. The cells are :func:`D2`'s Voronoi cells, which use the ``b_i`` to assign atoms: a
    vanishing cell's atom whose intercepts wander far enough can land in another cell, which the
    quotient does not undo.

    **Units.** The pooled error is measured in intercepts (logits), the units of the ``db`` terms it
    replaces: when every atom of the cell has the same ``b_i = b``, ``bbar_j = b`` and the term is
    ``W_j ||b - b*_j||``, D2's single-atom ``b`` term. Near ``p*_j`` (interior of the simplex) the
    logit and probability errors are equivalent, so the rate is the same in either.
    """
    return voronoi_loss(fitted, true, r, r, r, exact_translation=exact_translation, quotient=True)


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
        - ``beta1_mean``, ``a_mean``, ``b_mean``: the mass-weighted mean error over the cell;
        - ``bpool``: for a vanishing true atom (``a*_j = 0``), ``||bbar_j - b*_j||``, the error of the
          intercepts of the cell's pooled class probabilities (the identifiable part of the cell's ``b``,
          see :func:`D2q`; equal to ``b_max`` when the cell holds one atom); NaN for a true atom that does
          not vanish, whose ``b`` errors are identifiable and reported by ``b_max`` and ``b_mean``.

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
    out["bpool"] = np.where(_vanishing(true), _pooled_intercept_errors(aligned, true, cell), np.nan)
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
