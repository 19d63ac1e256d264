"""What the objective is penalised or constrained by: the optional ridge on the slopes (with a weight
per slope column where the slopes are in other units than the caller's, or standardised for the
starts) and the optional box ``|theta_j| <= limit_j`` on the free parameters (its projection, its
binding set, which coordinates sit on it).

The ridge. In reference conventions a class's slopes are its log-odds slopes against the last class
(an expert's gating slopes, against the last expert), so a ridge on them, ``l2 / 2 * sum_s ||v_s||^2``
over the free ``v_s`` (``ridge="reference"``, fastmoe 0.2's), shrinks towards the last class: with
three classes or more it makes the fit depend on which class sorts last (three classes, the labels
renamed: probabilities 0.017 apart with ``l2 = 1``, 0.04 with two experts) and the gating's on which
expert is last, although experts are exchangeable. The default ``ridge="centred"`` is the ridge of
``LogisticRegression`` and glmnet: on the slopes of all ``m`` classes (or experts) made to sum to zero,
``w_s = v_s - v_bar`` (``v_m = 0``), with ``m >= 3``

    l2 / 2 * sum_s ||w_s||^2  =  l2 / (2 m) * sum_{s < t} ||v_s - v_t||^2,

which no relabelling changes; with ``m = 2`` their binary ridge ``l2 / 2 * ||v_1||^2`` on the one
log-odds vector (the reference ridge, which relabelling only flips in sign). So ``l2`` is
``1 / C`` of ``LogisticRegression(C)`` with two classes and with more. On the free vector of a block
(``m - 1`` rows of ``p`` columns, rows major) its Hessian is ``l2 * kron(C_m, D)``,
``C_m = I - 1 1' / m`` (``I`` for the reference ridge and for ``m = 2``), ``D`` the diagonal of the
columns' weights (0 on the intercept): the blocks of EM stay separate.

Intercepts are never penalised: the ridge exists to keep slopes finite on separable data, and an
intercept shift is what lets a class or an expert take any share. With ``l2 = 0`` every method returns
zeros, so the plain likelihood goes through the same code; without a box every projection is the identity.

The box (:class:`fastmoe.params.Bounds`, issue 14) makes the parameter space compact, as the theory
assumes: the maximum exists on any data. It is symmetric about 0 on the reference-normalised free
coordinates, so the reference entries (0) are inside it and projection is one clip of the packed arrays.
"""

from __future__ import annotations

import functools

import numpy as np

from .params import free_vector, slope_masks


RIDGES = ("centred", "reference")


def _centring(m, ridge):
    """``C_m`` of the module notes: the ridge's weights among the ``m - 1`` free rows of a block."""
    if ridge == "reference" or m <= 2:
        return np.eye(max(m - 1, 0))
    return np.eye(m - 1) - 1.0 / m


class Penalty:
    """The ridge and the box of one fit, for a problem's shapes.

    Parameters
    ----------
    l2 : float
        Ridge strength (>= 0).
    problem : Problem
        Gives the shapes (experts, classes, features, gating features).
    bounds : Bounds or None
        The box on the free parameters; None for none.
    slope_scales : (ndarray, ndarray) or None
        ``(gating, expert)`` per-column scales: the ridge is then ``l2 / 2 * sum_j (slope_j *
        scale_j)^2``. The starts (``_init``) pass the columns' standard deviations, so that their ridge
        is stated in standardised units and does not depend on the units of the inputs; a fit in
        rescaled units (``_units.FitUnits``) passes ``1 / s_j``, so that the ridge stays on the caller's
        slopes. None penalises the slopes as they are.
    ridge : {"centred", "reference"}, default="centred"
        Which slopes the ridge shrinks (module notes).

    Attributes
    ----------
    gate_mask, expert_mask : ndarray
        The column weights ``D`` on each free parameter of the gating block, or of one expert's block:
        0.0 on an intercept, 1.0 on a slope (its column's scale squared with ``slope_scales``).
    mask : ndarray of shape (n_free_params,)
        The same over the whole free vector (:func:`fastmoe.params.free_vector` order).
    diagonal : bool
        Whether the ridge's Hessian is diagonal (``l2 * mask``): no ridge, the reference ridge, or two
        experts and two classes. The gradients are then the elementwise products of fastmoe 0.2, bit for
        bit.
    gate_hessian, expert_hessian, hessian : ndarray
        The ridge's Hessians (``l2 * kron(C_m, D)``) on the gating block, on one expert's block, and on
        the whole free vector (block diagonal).
    bounds : Bounds or None
    limit_W, limit_V : ndarray or None
        The box's limits shaped like the packed ``W`` and ``V``.
    limit : ndarray of shape (n_free_params,) or None
        The same over the free vector.
    """

    def __init__(self, l2, problem, bounds=None, slope_scales=None, ridge="centred"):
        if ridge not in RIDGES:
            raise ValueError(f"ridge must be one of {RIDGES}, got {ridge!r}")
        self.l2 = float(l2)
        self.ridge = ridge
        self.n_experts = problem.n_experts
        self.gate_mask, self.expert_mask = slope_masks(
            problem.n_experts, problem.n_classes, problem.n_features, problem.n_gate_features
        )
        # The weights of the packed slope columns W[:, 1:] and V[:, :, 1:] (exactly 1.0 without scales,
        # so that a fit's own ridge is summed as it always was).
        self._gate_weight = np.ones(problem.n_gate_features)
        self._expert_weight = np.ones(problem.n_features)
        if slope_scales is not None:
            self._gate_weight, self._expert_weight = (np.asarray(scale, dtype=float) ** 2 for scale in slope_scales)
            self.gate_mask = self.gate_mask * np.tile(np.r_[0.0, self._gate_weight], problem.n_experts - 1)
            self.expert_mask = self.expert_mask * np.tile(np.r_[0.0, self._expert_weight], problem.n_classes - 1)
        self.mask = np.concatenate([self.gate_mask, np.tile(self.expert_mask, problem.n_experts)])
        k, K = problem.n_experts, problem.n_classes
        self._gate_c, self._expert_c = _centring(k, ridge), _centring(K, ridge)
        self.diagonal = self.l2 == 0.0 or ridge == "reference" or (k <= 2 and K <= 2)
        self.gate_hessian = self.l2 * np.kron(self._gate_c, np.diag(self.gate_mask[: problem.n_gate_features + 1]))
        self.expert_hessian = self.l2 * np.kron(self._expert_c, np.diag(self.expert_mask[: problem.n_features + 1]))
        self.bounds = bounds
        if bounds is None:
            self.limit_W = self.limit_V = self.limit = None
        else:
            self.limit_W, self.limit_V = bounds.packed(
                problem.n_experts, problem.n_classes, problem.n_features, problem.n_gate_features)
            self.limit = free_vector(self.limit_W, self.limit_V)

    @functools.cached_property
    def hessian(self):
        """The ridge's Hessian on the whole free vector, formed when first asked for (by Newton steps
        and standard errors): (P, P), 0.2 GB at P = 5000, which no EM iteration needs."""
        if self.diagonal:
            return np.diag(self.l2 * self.mask)
        from scipy.linalg import block_diag  # on first use: keeps ``import fastmoe`` light

        return block_diag(self.gate_hessian, *[self.expert_hessian] * self.n_experts)

    def blocks(self, W, V):
        """The penalty of each M-step block: ``[gating, expert 1, ..., expert k]``, at packed ``(W, V)``
        in reference conventions (the last expert's gating row and each expert's last class zero)."""
        out = np.zeros(self.n_experts + 1)
        if self.l2 > 0.0:
            # Where C_m = I the sums of squares of fastmoe 0.2, as they were summed.
            gate, expert = W[:, 1:], V[:, :, 1:]
            if self.ridge == "centred" and W.shape[0] >= 3:
                gate = gate - gate.mean(axis=0)
            if self.ridge == "centred" and V.shape[1] >= 3:
                expert = expert - expert.mean(axis=1, keepdims=True)
            out[0] = 0.5 * self.l2 * np.sum(gate ** 2 * self._gate_weight)
            out[1:] = 0.5 * self.l2 * np.sum(expert ** 2 * self._expert_weight, axis=(1, 2))
        return out

    def gradient(self, theta):
        """The ridge's gradient at the free vector ``theta``, block by block (no (P, P) product)."""
        n_gate = self.gate_mask.size
        experts = self.expert_gradient(theta[n_gate:].reshape(self.n_experts, -1))
        return np.concatenate([self.gate_gradient(theta[:n_gate]), experts.ravel()])

    def gate_gradient(self, theta):
        """The ridge's gradient on the gating block's free vector ``W[:k-1].ravel()``."""
        if self.diagonal:
            return self.l2 * self.gate_mask * theta
        return self.gate_hessian @ theta

    def expert_gradient(self, theta):
        """The ridge's gradient on experts' free blocks, one per row of ``theta`` (``V[i, :K-1].ravel()``)."""
        if self.diagonal:
            return self.l2 * self.expert_mask * theta
        return theta @ self.expert_hessian  # symmetric

    def total(self, W, V):
        """The whole penalty at (W, V)."""
        return self.blocks(W, V).sum()

    # The box. -------------------------------------------------------------------------------------

    @property
    def slopes_bounded(self):
        """Every slope is bounded: no run can diverge along a separating direction."""
        return self.bounds is not None and self.bounds.slopes_bounded

    @property
    def compact(self):
        """Every free parameter is bounded: the constrained maximum exists on any data."""
        return self.bounds is not None and self.bounds.compact

    @property
    def intercepts_bounded(self):
        """Every intercept is bounded: none can run off to a boundary maximum of the model."""
        return (self.bounds is not None and np.isfinite(self.bounds.gate_intercept)
                and np.isfinite(self.bounds.expert_intercept))

    def project(self, W, V):
        """The nearest point of the box to packed ``(W, V)`` (the arrays themselves when there is no box)."""
        if self.bounds is None:
            return W, V
        return np.clip(W, -self.limit_W, self.limit_W), np.clip(V, -self.limit_V, self.limit_V)

    def project_free(self, theta):
        """:meth:`project` on a free vector."""
        if self.bounds is None:
            return theta
        return np.clip(theta, -self.limit, self.limit)

    def at_bound(self, theta, limit=None):
        """Sign of the bound each free coordinate sits on: +1 at ``+limit``, -1 at ``-limit``, 0 inside.

        Projection puts a coordinate exactly on its bound, so equality is the test; ``limit`` defaults
        to the whole free vector's (pass a block's limits for a block).
        """
        limit = self.limit if limit is None else limit
        if limit is None:
            return np.zeros(np.shape(theta))
        return np.where(theta >= limit, 1.0, 0.0) - np.where(theta <= -limit, 1.0, 0.0)

    def binding(self, theta, grad, limit=None):
        """Coordinates held by their bound: on it, with the (ascent) gradient pointing out of the box.

        These are the coordinates a projected Newton step leaves where they are (Bertsekas 1982, the
        active set with epsilon = 0, since projection lands exactly on the bound); the Newton system is
        solved on the rest.
        """
        side = self.at_bound(theta, limit)
        return side * grad > 0.0

    def projected_gradient(self, theta, grad):
        """The gradient with the components that push a coordinate out of the box zeroed: 0 at a KKT point."""
        if self.bounds is None:
            return grad
        return np.where(self.binding(theta, grad), 0.0, grad)
