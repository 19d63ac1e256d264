"""Starting points near the true parameter (``MODEL.md`` section 5).

The group's published rate simulations start EM near the truth, so that the study measures the
statistical error of the MLE and not the luck of a global search. With ``k*`` true atoms and ``k >= k*``
fitted ones:

- every true atom receives one fitted atom, and the ``k - k*`` extra atoms go to true cells chosen at
  random (or named by the experiment), so a cell may be split several ways;
- a cell split ``m`` ways gives each of its atoms the true parameters and the gating intercept
  ``beta0*_j - log m``: the masses ``exp(beta0)`` of the cell add up to the true mass ("log-even" split);
- optionally (``split_spread = c > 0``), a split cell of a *vanishing* true expert (``a*_j = 0``, class
  probabilities ``p*`` independent of ``x``) is moved along its non-identifiable set: atom ``t`` gets the
  class probabilities ``p_t = p* + c_t (e - p*)``, ``c_t`` evenly spaced in ``[-c, c]``, ``e`` the indicator
  of the most likely class. With equal masses the ``p_t`` average to ``p*``, so the start still reproduces
  the truth exactly, but its atoms differ: there, unlike at the centre ``c = 0``, standard gating has a
  first-order flat direction in the atoms' ``beta1`` that a nonlinear gating transform does not have
  (``examples/vanishing_information.py``);
- every coordinate is then perturbed by independent ``N(0, scale^2)`` noise, which also breaks the tie
  between duplicated atoms (EM cannot separate two identical atoms);
- the fitted atoms are put in random order and moved to the reference conventions.

For ``k = k*`` this is a perturbed, relabelled truth.
"""

from __future__ import annotations

import numpy as np

from ..params import MoEParams
from .vanishing import spread_intercepts, vanishing_experts

__all__ = ["init_near_truth", "split_assignment"]


def split_assignment(n_true: int, n_experts: int, rng: np.random.Generator, split_cells=None) -> np.ndarray:
    """The true cell of every fitted atom: each true atom once, then the extra atoms.

    Parameters
    ----------
    n_true : int
        Number of true atoms ``k*``.
    n_experts : int
        Number of fitted atoms ``k >= k*``.
    rng : numpy.random.Generator
        Draws the cells of the extra atoms when ``split_cells`` is None.
    split_cells : sequence of int, optional
        The cells of the ``k - k*`` extra atoms.

    Returns
    -------
    ndarray of shape (n_experts,)
        ``cells[i]`` is the true atom fitted atom ``i`` starts from (before the random relabelling).
    """
    extra = n_experts - n_true
    if extra < 0:
        raise ValueError(f"n_experts={n_experts} is below the true number of experts {n_true}")
    if split_cells is None:
        chosen = rng.integers(n_true, size=extra)
    else:
        chosen = np.asarray(split_cells, dtype=np.intp)
        if chosen.shape != (extra,) or (chosen < 0).any() or (chosen >= n_true).any():
            raise ValueError(
                f"split_cells must hold {extra} indices in 0..{n_true - 1}, got {list(np.atleast_1d(chosen))}"
            )
    return np.concatenate([np.arange(n_true), chosen]).astype(np.intp)


def init_near_truth(truth, n_experts, rng, scale=0.1, split_cells=None, split_spread=0.0):
    """A start near ``truth`` with ``n_experts`` atoms (see the module docstring).

    Parameters
    ----------
    truth : MoEParams
        The true parameter.
    n_experts : int
        Fitted number of experts, at least ``truth.n_experts``.
    rng : numpy.random.Generator
        Source of the cell choice, the perturbation and the relabelling.
    scale : float, default=0.1
        Standard deviation of the perturbation of every coordinate.
    split_cells : sequence of int, optional
        True cells that receive the extra atoms; drawn at random when None.
    split_spread : float, default=0.0
        Spread of the class probabilities of a split vanishing cell's atoms (see the module docstring).

    Returns
    -------
    MoEParams
        In reference conventions, with the truth's gating transform.
    """
    true = truth.normalized()
    cells = split_assignment(true.n_experts, n_experts, rng, split_cells)
    multiplicity = np.bincount(cells, minlength=true.n_experts)[cells]
    beta0 = true.beta0[cells] - np.log(multiplicity)
    beta1, a, b = true.beta1[cells], true.a[cells], true.b[cells]
    if split_spread > 0:
        split = np.bincount(cells, minlength=true.n_experts) > 1
        for j in np.intersect1d(np.flatnonzero(split), vanishing_experts(true)):
            members = np.flatnonzero(cells == j)
            b[members] = spread_intercepts(true.b[j], members.size, split_spread)
    if scale > 0:
        beta0 = beta0 + scale * rng.standard_normal(beta0.shape)
        beta1 = beta1 + scale * rng.standard_normal(beta1.shape)
        a = a + scale * rng.standard_normal(a.shape)
        b = b + scale * rng.standard_normal(b.shape)
    order = rng.permutation(n_experts)
    start = MoEParams(beta0=beta0[order], beta1=beta1[order], a=a[order], b=b[order], gating=true.gating,
                      **true.inputs)
    return start.normalized()
