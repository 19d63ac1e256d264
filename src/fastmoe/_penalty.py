"""The optional ridge ``l2 / 2 * ||slopes||^2``: its value per M-step block and on the free vector.

Intercepts are never penalised: the ridge exists to keep slopes finite on separable data, and an
intercept shift is what lets a class or an expert take any share. With ``l2 = 0`` every method returns
zeros, so the plain likelihood goes through the same code.
"""

from __future__ import annotations

import numpy as np

from .params import slope_masks


class Penalty:
    """The ridge of one fit, for a problem's shapes.

    Parameters
    ----------
    l2 : float
        Ridge strength (>= 0).
    problem : Problem
        Gives the shapes (experts, classes, features, gating features).

    Attributes
    ----------
    gate_mask, expert_mask : ndarray
        1.0 where a free parameter of the gating block, or of one expert's block, is a slope.
    mask : ndarray of shape (n_free_params,)
        The same over the whole free vector (:func:`fastmoe.params.free_vector` order).
    """

    def __init__(self, l2, problem):
        self.l2 = float(l2)
        self.n_experts = problem.n_experts
        self.gate_mask, self.expert_mask = slope_masks(
            problem.n_experts, problem.n_classes, problem.n_features, problem.n_gate_features
        )
        self.mask = np.concatenate([self.gate_mask, np.tile(self.expert_mask, problem.n_experts)])

    def blocks(self, W, V):
        """The penalty of each M-step block: ``[gating, expert 1, ..., expert k]``."""
        out = np.zeros(self.n_experts + 1)
        if self.l2 > 0.0:
            out[0] = 0.5 * self.l2 * np.sum(W[:, 1:] ** 2)
            out[1:] = 0.5 * self.l2 * np.sum(V[:, :, 1:] ** 2, axis=(1, 2))
        return out

    def total(self, W, V):
        """The whole penalty at (W, V)."""
        return self.blocks(W, V).sum()
