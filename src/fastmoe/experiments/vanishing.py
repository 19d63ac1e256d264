"""Vanishing true experts (``a*_j = 0``) and the geometry of a cell split over two atoms.

A vanishing expert's class probabilities ``p* = softmax(b*_j)`` do not depend on ``x``. Split over two
fitted atoms with a common gating slope, it is reproduced by any pair of constant experts whose masses
average their class probabilities to ``p*`` (:func:`spread_intercepts`): the intercepts ``b`` of such a cell
are not identifiable, under any gating (``MODEL.md`` section 4). With standard gating there is more: where
the two atoms' intercepts differ, moving their gating slopes apart can be undone at first order by their
expert slopes (the PDE ``d2F / (d beta1 d b) = dF / da``); :func:`pde_direction` is that direction. A
gating transform ``M(x)`` that is not linear in ``x`` cannot be undone by ``a x``, and there the law moves at
first order.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from ..params import MoEParams

__all__ = ["along", "check_split_spread", "pde_direction", "spread_intercepts", "vanishing_experts"]


def vanishing_experts(params) -> np.ndarray:
    """Indices of the experts whose class probabilities do not depend on x (``a_j = 0`` in reference
    conventions)."""
    return np.flatnonzero(np.all(params.normalized().a == 0, axis=(1, 2)))


def spread_intercepts(b_true, m, spread):
    """Intercepts (reference class last) of ``m`` constant experts whose class probabilities
    ``p* + c_t (e - p*)``, ``c_t`` evenly spaced in ``[-spread, spread]``, average to ``p* = softmax(b_true)``.

    Raises
    ------
    ValueError
        When ``spread`` is too large for ``p*`` (a class probability would not be positive).
    """
    probs = _spread_probabilities(b_true, m, spread)
    return np.log(probs) - np.log(probs[:, -1:])


def check_split_spread(b_true, spread) -> None:
    """Raise :class:`ValueError` when ``spread`` is too wide for ``p* = softmax(b_true)``.

    The extreme atoms ``c_t = -spread, spread`` of :func:`spread_intercepts` are those of any split, and
    they are the atoms of a split in two, so checking that split checks every one.
    """
    _spread_probabilities(b_true, 2, spread)


def _spread_probabilities(b_true, m, spread):
    p = softmax(b_true)
    e = np.zeros_like(p)
    e[np.argmax(p)] = 1.0
    probs = p + np.linspace(-spread, spread, m)[:, None] * (e - p)
    if not (probs > 0).all():
        raise ValueError(f"split_spread={spread} gives a class probability <= 0 for class probabilities "
                         f"{np.round(p, 4).tolist()}; use a smaller spread")
    return probs


def pde_direction(params, i, j, u) -> MoEParams:
    """The direction along which standard gating's PDE interaction cancels the first-order change of the
    conditional law, for two atoms ``i``, ``j`` with a common gating slope and constant experts.

    Moving by ``t`` along it, the atoms' gating slopes separate by ``t u``
    (``beta1_i += t w_j u``, ``beta1_j -= t w_i u``, masses ``w`` normalised within the pair, so the pair's
    gate ``w_i exp(t w_j u.x) + w_j exp(-t w_i u.x)`` has no first-order term) and both expert slopes move
    by ``t alpha`` with ``(w_i J_i + w_j J_j) alpha = -w_i w_j (p_i - p_j) u^T`` (``J`` the softmax
    Jacobian at the atom's intercepts), which cancels the first-order change of the pair's class
    probabilities when the gating sees ``x``. With a nonlinear gating transform the same move changes the
    law at first order.

    Parameters
    ----------
    params : MoEParams
        The point the path starts from; atoms ``i`` and ``j`` must have equal gating slopes and ``a = 0``.
    i, j : int
        The two atoms (indices in ``params``).
    u : array-like of shape (n_gate_features,)
        Direction of the separation of the gating slopes.

    Returns
    -------
    MoEParams
        The displacement (zero outside ``beta1`` and ``a`` of atoms ``i`` and ``j``), with ``params``'s
        gating transform; add ``t`` times its arrays to ``params``'s.
    """
    i, j = int(i), int(j)
    if i == j or not (0 <= i < params.n_experts and 0 <= j < params.n_experts):
        raise ValueError(f"pde_direction needs two distinct atoms of 0..{params.n_experts - 1}, got {i}, {j}")
    u = np.asarray(u, dtype=float)
    if u.shape != (params.n_gate_features,):
        raise ValueError(f"u must have shape ({params.n_gate_features},), got {u.shape}")
    if not np.array_equal(params.beta1[i], params.beta1[j]) or np.any(params.a[[i, j]] != params.a[[i, j], -1:, :]):
        raise ValueError("pde_direction starts from two atoms with equal gating slopes and constant experts")
    w_i, w_j = np.exp(params.beta0[[i, j]] - np.logaddexp(params.beta0[i], params.beta0[j]))
    p_i, p_j = softmax(params.b[i]), softmax(params.b[j])
    jacobian = sum(w * (np.diag(p) - np.outer(p, p)) for w, p in ((w_i, p_i), (w_j, p_j)))
    alpha = np.zeros(params.a.shape[1:])
    # Both sides sum to zero over the classes, so the reference class's row can stay at zero.
    alpha[:-1] = np.linalg.solve(jacobian[:-1, :-1], -w_i * w_j * np.outer(p_i - p_j, u)[:-1])
    beta1, a = np.zeros_like(params.beta1), np.zeros_like(params.a)
    beta1[i], beta1[j] = w_j * u, -w_i * u
    a[i], a[j] = alpha, alpha
    return MoEParams(beta0=np.zeros_like(params.beta0), beta1=beta1, a=a, b=np.zeros_like(params.b),
                     gating=params.gating, **params.inputs)


def along(params, direction, t) -> MoEParams:
    """``params`` moved by ``t`` times ``direction`` (every array, in the coordinates ``params`` is written
    in), with ``params``'s gating transform and input columns."""
    fields = ("beta0", "beta1", "a", "b")
    return MoEParams(*(getattr(params, f) + t * getattr(direction, f) for f in fields), gating=params.gating,
                     **params.inputs)
