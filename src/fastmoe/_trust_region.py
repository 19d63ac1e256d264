"""Trust-region steps for maximising a smooth function from its gradient and Hessian.

The Newton finish of the EM loop (``_em.newton_finish``) works where the log-likelihood can be
far from locally concave: an over-fitted mixture near a degenerate truth has ridges and saddles, and
its Hessian stays nearly singular at the maximum. A line search along a shifted Newton direction
crawls there; the trust-region step (Nocedal & Wright, *Numerical Optimization*, ch. 4; Moré &
Sorensen 1983) solves the quadratic model exactly inside a ball, so it follows directions of negative
curvature at full length and turns into the plain Newton step near a concave maximum.

With at most a few hundred free parameters an eigendecomposition of the scaled Hessian is cheap next
to the kernel pass that computed it, and makes the subproblem, its hard case included, a
one-dimensional root search.
"""

from __future__ import annotations

import numpy as np

# Eigenvalues below this fraction of the largest count as zero: the model is then not strictly
# concave, and no Newton decrement certifies a maximum.
CONCAVE_EIGEN_FLOOR = 1e-12


class QuadraticModel:
    """``m(p) = g.p - p.A.p / 2``, the second-order model of the objective's gain along ``p``.

    Lengths are measured in the metric ``||D p||`` with ``D = sqrt(|diag A|)``, so that a parameter's
    unit is its own curvature scale (Moré's scaling): the radius does not depend on how the features
    are scaled.

    Parameters
    ----------
    grad : ndarray of shape (P,)
        Gradient of the objective.
    neg_hess : ndarray of shape (P, P)
        Negative Hessian ``A`` (symmetric; positive definite at a strict local maximum).
    """

    def __init__(self, grad, neg_hess):
        diag = np.abs(np.diag(neg_hess))
        floor = CONCAVE_EIGEN_FLOOR * max(float(diag.max(initial=0.0)), np.finfo(float).tiny)
        self.scale = np.sqrt(np.maximum(diag, floor))
        scaled = neg_hess / np.outer(self.scale, self.scale)
        self.eigval, self.eigvec = np.linalg.eigh(0.5 * (scaled + scaled.T))
        self.coef = self.eigvec.T @ (grad / self.scale)
        top = max(float(np.abs(self.eigval).max(initial=0.0)), np.finfo(float).tiny)
        self.concave = bool(self.eigval[0] > CONCAVE_EIGEN_FLOOR * top)

    def with_gradient(self, grad):
        """The same Hessian with another gradient (a chord step: the factorisation is reused)."""
        model = object.__new__(QuadraticModel)
        model.scale, model.eigval, model.eigvec, model.concave = self.scale, self.eigval, self.eigvec, self.concave
        model.coef = self.eigvec.T @ (grad / self.scale)
        return model

    def newton_length(self):
        """Scaled length of the Newton step (``inf`` when the model is not strictly concave)."""
        if not self.concave:
            return np.inf
        return float(np.linalg.norm(self.coef / self.eigval))

    def decrement(self):
        """The model's maximal gain ``g.A^-1.g / 2`` (``inf`` when not strictly concave).

        At a concave point this estimates how far the objective is below its local maximum.
        """
        if not self.concave:
            return np.inf
        return float(0.5 * np.sum(self.coef**2 / self.eigval))

    def step(self, radius):
        """The model's maximiser within scaled radius ``radius``.

        Returns
        -------
        p : ndarray of shape (P,)
            The step in the original parameters.
        gain : float
            The model's predicted gain ``m(p)`` (>= 0).
        length : float
            Its scaled length (``<= radius``).
        """
        lam, c = self.eigval, self.coef
        if self.concave and self.newton_length() <= radius:
            z = c / lam
        else:
            z = self._boundary_solution(radius)
        gain = float(c @ z - 0.5 * np.sum(lam * z**2))
        return (self.eigvec @ z) / self.scale, gain, float(np.linalg.norm(z))

    def _boundary_solution(self, radius):
        """``z(mu) = c / (lam + mu)`` with ``||z(mu)|| = radius`` and ``mu >= max(0, -lam_min)``."""
        lam, c = self.eigval, self.coef
        low = max(0.0, -float(lam[0]))

        def excess(mu):
            # Near mu = -lam_min the norm is huge or inf; inf is the right answer (far outside the radius).
            with np.errstate(divide="ignore", over="ignore"):
                return float(np.linalg.norm(c / (lam + mu))) - radius

        # lam_i + high >= ||c|| / radius for every i, so ||z(high)|| <= radius in exact arithmetic. In
        # floating point it can come out an ulp above (eigenvalues far below ||c|| / radius: a flat model
        # far from its maximum), and then no root lies in [edge, high]: widen until the sign is right.
        high = low + float(np.linalg.norm(c)) / radius + np.finfo(float).tiny
        while excess(high) > 0.0:
            high *= 2.0
        edge = low * (1.0 + 1e-12) + 1e-300
        if excess(edge) > 0.0:
            from scipy.optimize import brentq  # here, not at import: scipy.optimize costs ~0.5 s to load

            mu = brentq(excess, edge, high, xtol=1e-14 * high, rtol=1e-12)
            return c / (lam + mu)
        # The hard case: the gradient has (almost) no component along the lowest eigenvector, so no
        # shift reaches the boundary. Fill the rest of the radius along that eigenvector.
        z = np.zeros_like(c)
        rest = lam + low > 1e-12 * max(high, 1.0)
        z[rest] = c[rest] / (lam[rest] + low)
        z[0] += np.sqrt(max(radius**2 - float(z @ z), 0.0))
        return z
