"""Trust-region steps for maximising a smooth function from its gradient and Hessian.

The Newton finish of the EM loop (``_em.newton_finish``) works where the log-likelihood can be
far from locally concave: an over-fitted mixture near a degenerate truth has ridges and saddles, and
its Hessian stays nearly singular at the maximum. A line search along a shifted Newton direction
crawls there; the trust-region step (Nocedal & Wright, *Numerical Optimization*, ch. 4; Moré &
Sorensen 1983) solves the quadratic model exactly inside a ball, so it follows directions of negative
curvature at full length and turns into the plain Newton step near a concave maximum.

With at most a few hundred free parameters an eigendecomposition of the scaled Hessian is cheap next
to the kernel pass that computed it, and makes the subproblem, its hard case included, a
one-dimensional root search (:class:`QuadraticModel`). With more (``EIGEN_MAX_PARAMS``) it is not: at
p = 1178 (scikit-learn's digits, 61 features, 10 classes, two experts) one took 0.57 s against 0.1 s
for the exact-Hessian pass over the 1797 samples, half of a fit's time. There
:class:`LargeQuadraticModel` factors the Hessian by Cholesky, which decides concavity and gives the
Newton step and decrement (p^3 / 3 flops instead of about 9 p^3), and solves the subproblem otherwise by
Steihaug's truncated conjugate gradients (Nocedal & Wright, algorithm 7.2), which follow negative
curvature to the boundary; near a saddle, where they end inside the region, the failed factorisation
gives the direction to leave by. :func:`quadratic_model` chooses.
"""

from __future__ import annotations

import math

import numpy as np

# Eigenvalues below this fraction of the largest count as zero: the model is then not strictly
# concave, and no Newton decrement certifies a maximum.
CONCAVE_EIGEN_FLOOR = 1e-12
# Models with more free parameters use LargeQuadraticModel. The benchmarks and studies have at most
# 267 (where an eigendecomposition takes about 4 ms), docs/real_data.md's grids at most 319 (digits' 10
# principal components, three experts): they keep the exact solution.
EIGEN_MAX_PARAMS = 400
# Steihaug's iterations stop at this relative residual, or after CG_MAX_ITER matrix-vector products
# (each p^2 flops: a few hundred cost less than one eigendecomposition at p > EIGEN_MAX_PARAMS).
CG_RTOL = 1e-8
CG_MAX_ITER = 250


def quadratic_model(grad, neg_hess):
    """The quadratic model of the gain: :class:`QuadraticModel` on at most ``EIGEN_MAX_PARAMS`` free
    parameters, :class:`LargeQuadraticModel` above."""
    if grad.shape[0] > EIGEN_MAX_PARAMS:
        return LargeQuadraticModel(grad, neg_hess)
    return QuadraticModel(grad, neg_hess)


class ReducedModel:
    """A model on some of the coordinates (``live``), the others held where they are: the step is 0 there.

    For the coefficients of an all-zero feature column (``Problem.zero_column_coordinates``), which no
    likelihood sees: their gradient and Hessian rows are exactly 0, so in Moré's scaled metric their unit
    is the floor ``sqrt(CONCAVE_EIGEN_FLOOR * max diag)``, the eigendecomposition gives them an
    eigenvalue and a gradient component of rounding size, and boundary steps moved them by the radius in
    those units: found by a QA pass, an all-zero column got coefficients of -5e4 and 8e4 over a fit's
    Newton steps ("converged"; predictions [0, 0, 1] wherever the column is not 0). Left out, they stay
    at 0, and the model on the others can be concave and certify the maximum.
    """

    def __init__(self, inner, live):
        self.inner, self.live = inner, live
        self.concave = inner.concave

    def with_gradient(self, grad):
        return ReducedModel(self.inner.with_gradient(grad[self.live]), self.live)

    def newton_length(self):
        return self.inner.newton_length()

    def decrement(self):
        return self.inner.decrement()

    def step(self, radius):
        z, gain, length = self.inner.step(radius)
        full = np.zeros(self.live.shape[0])
        full[self.live] = z
        return full, gain, length


def _norm(v):
    """``||v||``, also where the squares of ``v`` overflow, and bit for bit ``np.linalg.norm`` wherever
    that is finite. (From a start whose logits on the data are in the thousands the scaled gradient
    passed 1e154; an infinite bracket then sent the root search to NaN and a ``ValueError``.)"""
    with np.errstate(over="ignore"):
        plain = float(np.linalg.norm(v))
    if np.isfinite(plain):
        return plain
    top = float(np.abs(v).max(initial=0.0))
    return top * float(np.linalg.norm(v / top)) if np.isfinite(top) and top > 0.0 else plain


def _scaled(grad, neg_hess):
    """Moré's scaling (see :class:`QuadraticModel`): ``(D, D^-1 A D^-1 symmetrised, D^-1 g)``."""
    diag = np.abs(np.diag(neg_hess))
    floor = CONCAVE_EIGEN_FLOOR * max(float(diag.max(initial=0.0)), np.finfo(float).tiny)
    scale = np.sqrt(np.maximum(diag, floor))
    scaled = neg_hess / np.outer(scale, scale)
    return scale, 0.5 * (scaled + scaled.T), grad / scale


def _log_bisection(excess, low, edge, high):
    """A root of the decreasing ``excess`` in ``[edge, high]`` by bisection on ``log(mu - low)``, to
    1e-12 relative in ``mu - low``; the end returned lies on the side where ``excess <= 0`` (the step
    stays inside its region). ``excess(edge) > 0 >= excess(high)``, and ``edge > low``."""
    a, b = np.log(edge - low), np.log(high - low)
    while b - a > 1e-12:
        middle = 0.5 * (a + b)
        if excess(low + np.exp(middle)) > 0.0:
            a = middle
        else:
            b = middle
    return low + np.exp(b)


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
        self.scale, scaled, scaled_grad = _scaled(grad, neg_hess)
        self.eigval, self.eigvec = np.linalg.eigh(scaled)
        self.coef = self.eigvec.T @ scaled_grad
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
        # A zero gradient component adds nothing, even where its lam + mu is 0 (a saddle's gradient).
        moves = c != 0.0
        z = np.zeros_like(c)  # entries outside ``moves`` stay 0

        def excess(mu):
            # The root search calls this some 30 times a step, and on small data steps are most of a
            # fit's time (iris, k = 3: half of it with a fresh error state and array per call), so it
            # writes into one buffer; sqrt(z.z) is how np.linalg.norm computes the norm, to the bit.
            # Near mu = -lam_min the norm is huge or inf; inf is the right answer (far outside the radius).
            np.divide(c, lam + mu, out=z, where=moves)
            return math.sqrt(z.dot(z)) - radius

        with np.errstate(divide="ignore", over="ignore"):
            # lam_i + high >= ||c|| / radius for every i, so ||z(high)|| <= radius in exact arithmetic. In
            # floating point it can come out an ulp above (eigenvalues far below ||c|| / radius: a flat
            # model far from its maximum), and then no root lies in [edge, high]: widen until the sign is right.
            size = math.sqrt(c.dot(c))  # np.linalg.norm's arithmetic, without a second error state per step
            high = low + (size if math.isfinite(size) else _norm(c)) / radius + np.finfo(float).tiny
            while excess(high) > 0.0:
                high *= 2.0
            edge = low * (1.0 + 1e-12) + 1e-300
            mu = None
            if excess(edge) > 0.0:
                from scipy.optimize import brentq  # here, not at import: scipy.optimize costs ~0.5 s to load

                try:
                    mu = brentq(excess, edge, high, xtol=1e-14 * high, rtol=1e-12)
                except RuntimeError:
                    # A root many decades below ``high`` can defeat brentq on the linear scale (measured: a
                    # gradient component of 7e-146 along an eigenvalue of -1e-276 put the root near 3e-148
                    # with high = 2e-8; 100 iterations did not find it). Bisect on the log scale instead.
                    # (Short of failing, brentq can also stop within its absolute tolerance at a shift
                    # whose step falls short of the radius; judging its roots changes the last digits of
                    # some running studies' fits, so that waits for the next version.)
                    mu = _log_bisection(excess, low, edge, high)
        if mu is not None:
            return c / (lam + mu)
        # The hard case: the gradient has (almost) no component along the lowest eigenvector, so no
        # shift reaches the boundary. Fill the rest of the radius along that eigenvector.
        z = np.zeros_like(c)
        rest = lam + low > 1e-12 * max(high, 1.0)
        z[rest] = c[rest] / (lam[rest] + low)
        z[0] += np.sqrt(max(radius**2 - float(z @ z), 0.0))
        return z


class LargeQuadraticModel:
    """The model of :class:`QuadraticModel` (same scaling, same methods) for many parameters.

    A Cholesky factor of the scaled ``A`` decides concavity: the model is strictly concave when the
    factorisation succeeds and LAPACK's estimate of the reciprocal condition number (1-norm, within a
    factor p of the eigenvalue ratio :class:`QuadraticModel` tests) is above ``CONCAVE_EIGEN_FLOOR``.
    Then the Newton step, its length and the decrement come from the factor, and chord steps
    (:meth:`with_gradient`) reuse it. A step longer than the radius, or any step of a model that is
    not concave, is Steihaug's: conjugate gradients on the model from 0, stopped at the boundary or
    along the first direction of non-positive curvature. Where they end inside the region on a model
    that is not concave, the gradient has (next to) no component along its rising directions, as at
    or near a saddle (two identical experts): the step then goes on to the boundary along a rising
    direction that the failed factorisation gives (:meth:`_rising_direction`). Where the model rises
    along no direction beyond rounding (only flat ones, as in a collapsed over-fitted model), the
    conjugate gradients' point is the model's maximiser and is kept.
    """

    def __init__(self, grad, neg_hess):
        from scipy.linalg.lapack import dpocon, dpotrf  # on first use: keeps ``import fastmoe`` light

        self.scale, self.matrix, self.scaled_grad = _scaled(grad, neg_hess)
        self._norm = float(np.abs(self.matrix).sum(axis=0).max())  # ||A||_1, at least its largest |eigenvalue|
        factor, info = dpotrf(self.matrix, lower=True, clean=True)
        self.concave = False
        if info == 0 and np.isfinite(factor).all():
            rcond, info = dpocon(factor, self._norm, uplo="L")
            self.concave = bool(info == 0 and rcond > CONCAVE_EIGEN_FLOOR)
        self.factor = factor if self.concave else None
        self._rising = False  # not formed yet: most steps never need it
        self._newton = self._solve(self.scaled_grad)

    @property
    def rising(self):
        """:meth:`_rising_direction`, formed on first use (None for a concave model)."""
        if self._rising is False:
            self._rising = None if self.concave else self._rising_direction()
        return self._rising

    def _rising_direction(self):
        """A unit vector ``v`` with ``v.A.v < -CONCAVE_EIGEN_FLOOR ||A||_1``, or None where there is none.

        The Cholesky factorisation of ``A + delta I`` (``delta`` that floor) fails at the first column
        ``j`` whose Schur complement ``s`` is not positive; ``v = (-A11^-1 a_j, 1, 0, ...)`` then has
        ``v.(A + delta I).v = s <= 0`` (Gill & Murray's direction of negative curvature). A factorisation
        that succeeds proves every eigenvalue above ``-delta``: the model rises along nothing.
        """
        from scipy.linalg import solve_triangular
        from scipy.linalg.lapack import dpotrf

        A = self.matrix
        delta = CONCAVE_EIGEN_FLOOR * self._norm
        factor, info = dpotrf(A + delta * np.eye(A.shape[0]), lower=True, clean=True)
        if info <= 0:
            return None
        j = info - 1  # LAPACK counts from 1
        v = np.zeros_like(self.scaled_grad)
        v[j] = 1.0
        if j:
            L = factor[:j, :j]
            v[:j] = -solve_triangular(L, solve_triangular(L, A[:j, j], lower=True), lower=True, trans="T")
        if not (np.isfinite(v).all() and float(v @ (A @ v)) < -delta * float(v @ v)):
            return None
        return v / np.linalg.norm(v)

    def _solve(self, b):
        if self.factor is None:
            return None
        from scipy.linalg.lapack import dpotrs

        z, _ = dpotrs(self.factor, b, lower=True)
        return z

    def with_gradient(self, grad):
        """The same Hessian with another gradient (a chord step: the factorisation is reused)."""
        model = object.__new__(LargeQuadraticModel)
        model.__dict__.update(self.__dict__)
        model.scaled_grad = grad / self.scale
        model._newton = model._solve(model.scaled_grad)
        return model

    def newton_length(self):
        """Scaled length of the Newton step (``inf`` when the model is not strictly concave)."""
        return float(np.linalg.norm(self._newton)) if self.concave else np.inf

    def decrement(self):
        """The model's maximal gain ``g.A^-1.g / 2`` (``inf`` when not strictly concave)."""
        return float(0.5 * self.scaled_grad @ self._newton) if self.concave else np.inf

    def step(self, radius):
        """The model's maximiser within scaled radius ``radius`` (Newton's, or Steihaug's approximation).

        Returns ``(p, gain, length)`` as :meth:`QuadraticModel.step` does.
        """
        c, A = self.scaled_grad, self.matrix
        if self.concave and self.newton_length() <= radius:
            z = self._newton
        else:
            z, on_boundary = self._steihaug(radius)
            if not (self.concave or on_boundary) and self.rising is not None and np.isfinite(radius):
                # On to the boundary along the rising direction, signed so that the model's slope there
                # is not negative: the gain grows by at least |v.A.v| tau^2 / 2.
                v = self.rising if float((c - A @ z) @ self.rising) >= 0.0 else -self.rising
                z = z + self._to_boundary(z, v, radius) * v
        return z / self.scale, float(c @ z - 0.5 * z @ (A @ z)), float(np.linalg.norm(z))

    def _steihaug(self, radius):
        """Truncated conjugate gradients on ``c.z - z.A.z / 2`` within ``||z|| <= radius``.

        Returns ``(z, on_boundary)``.
        """
        A, c = self.matrix, self.scaled_grad
        z = np.zeros_like(c)
        r = c.copy()  # the model's gradient at z
        d = r.copy()
        rr = float(r @ r)
        stop = CG_RTOL * np.sqrt(rr)
        for _ in range(min(CG_MAX_ITER, c.shape[0])):
            if not np.sqrt(rr) > stop:
                break
            Ad = A @ d
            curvature = float(d @ Ad)
            if curvature <= 0.0:  # the model rises without bound along d: go to the boundary
                if not np.isfinite(radius):
                    return z, False
                return z + self._to_boundary(z, d, radius) * d, True
            alpha = rr / curvature
            if np.linalg.norm(z + alpha * d) >= radius:
                return z + self._to_boundary(z, d, radius) * d, True
            z = z + alpha * d
            r = r - alpha * Ad
            rr, rr_old = float(r @ r), rr
            d = r + (rr / rr_old) * d
        return z, False

    @staticmethod
    def _to_boundary(z, d, radius):
        """The ``tau >= 0`` with ``||z + tau d|| = radius`` (``||z|| <= radius``)."""
        zd, dd, zz = float(z @ d), float(d @ d), float(z @ z)
        return (-zd + np.sqrt(zd * zd + dd * max(radius * radius - zz, 0.0))) / dd
