"""The units a fit works in: inputs far from the origin or of extreme spread are centred and scaled.

The model's logits are affine in the inputs, ``a . x + b``, so a column ``x_j = m_j + s_j x'_j`` gives
the same likelihood with ``a'_j = a_j s_j`` and ``b' = b + sum_j a_j m_j``: the maxima are the same
points in either units. Numerically they are not. A column whose mean is many spreads away from 0
makes its slope and the intercept nearly collinear (the Hessian's condition grows as ``(m / s)^2``):
a column offset by 1e3 (about 1700 spreads) ended the default fit 1.9 nats lower, judged diverged.
A column of extreme spread puts its slope's curvature below the trust region's scaling floor
(``1e-12`` of the largest diagonal entry, ``_trust_region.CONCAVE_EIGEN_FLOOR``): at spreads of 1e-15
no fit converged in 1000 iterations. Such columns are centred (``|m_j| > SHIFT_RATIO s_j``) or scaled
(``s_j`` outside ``SCALE_RANGE``) for the fit, and the answer is mapped back; other columns are used
as they are, so fits on well-conditioned inputs run exactly as before (bit for bit). A box
(``bounds``) is stated on the caller's coefficients, which a shift would mix, so a boxed fit keeps
its inputs. A ridge is stated on the caller's slopes, ``a_j = a'_j / s_j``: under one, the fit's
:class:`~fastmoe._penalty.Penalty` weighs each slope by ``1 / s_j^2`` (``slope_scales``, capped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._problem import column_moments

# A column is centred when its mean lies more than this many standard deviations from 0 (inputs in
# [-1, 1] and their sigmoid, the studies' gating design, stay as they are), and scaled when its
# standard deviation lies outside this range.
SHIFT_RATIO = 10.0
SCALE_RANGE = (1e-3, 1e3)
# A ridge on the caller's slopes weighs a slope of scale s by 1 / s^2; at most RIDGE_WEIGHT_CAP^2, so that
# penalties stay finite (a column below 1e-100 in spread then has its slope pinned near 0 under any
# ridge, as the exact weight would, without overflowing).
RIDGE_WEIGHT_CAP = 1e100


def _column_map(A, weights):
    """``(shift, scale)`` of design ``A``'s columns: 0 and 1 where a column is used as it is."""
    mean, sd = column_moments(A, weights)
    live = sd > 0.0  # a constant column is the intercept's twin in any units
    shift = np.where(live & (np.abs(mean) > SHIFT_RATIO * sd), mean, 0.0)
    scale = np.where(live & ((sd < SCALE_RANGE[0]) | (sd > SCALE_RANGE[1])), sd, 1.0)
    return shift, scale


@dataclass(frozen=True)
class FitUnits:
    """Per-column shifts and scales of the gating design ``Z`` and the experts' design ``X``: the fit
    sees ``(Z - gate_shift) / gate_scale`` and ``(X - expert_shift) / expert_scale``."""

    gate_shift: np.ndarray
    gate_scale: np.ndarray
    expert_shift: np.ndarray
    expert_scale: np.ndarray

    @classmethod
    def choose(cls, X, Z, bounds, sample_weight=None):
        """The units for designs ``X`` and ``Z`` from their (weighted) column moments (None: the inputs
        as they are, always so in a box)."""
        if bounds is not None or X.shape[0] == 0:
            return None
        expert = _column_map(X, sample_weight)
        gate = expert if Z is X else _column_map(Z, sample_weight)
        if not any(np.any(shift != 0.0) or np.any(scale != 1.0) for shift, scale in (gate, expert)):
            return None
        return cls(gate[0], gate[1], expert[0], expert[1])

    def designs(self, X, Z):
        """The designs in the fit's units (one array when ``Z is X``, as the kernels expect)."""
        X_fit = np.ascontiguousarray((X - self.expert_shift) / self.expert_scale)
        Z_fit = X_fit if Z is X else np.ascontiguousarray((Z - self.gate_shift) / self.gate_scale)
        return X_fit, Z_fit

    @property
    def slope_scales(self):
        """The ``Penalty`` scales that state a ridge on the caller's slopes (``a_j = a'_j / s_j``, so the
        weight is ``1 / s_j^2``; capped, see ``RIDGE_WEIGHT_CAP``)."""
        return (np.minimum(1.0 / self.gate_scale, RIDGE_WEIGHT_CAP),
                np.minimum(1.0 / self.expert_scale, RIDGE_WEIGHT_CAP))

    def to_fit(self, W, V):
        """Packed caller's parameters in the fit's units: ``a' = a s``, ``b' = b + a . m``."""
        W_fit, V_fit = W.copy(), V.copy()
        W_fit[:, 0] += W[:, 1:] @ self.gate_shift
        W_fit[:, 1:] *= self.gate_scale
        V_fit[..., 0] += V[..., 1:] @ self.expert_shift
        V_fit[..., 1:] *= self.expert_scale
        return W_fit, V_fit

    def from_fit(self, W_fit, V_fit):
        """Packed parameters of the fit's units in the caller's: ``a = a' / s``, ``b = b' - a . m``."""
        W, V = W_fit.copy(), V_fit.copy()
        W[:, 1:] /= self.gate_scale
        W[:, 0] -= W[:, 1:] @ self.gate_shift
        V[..., 1:] /= self.expert_scale
        V[..., 0] -= V[..., 1:] @ self.expert_shift
        return W, V
