"""How a job draws its inputs and fits: the ``[x_law]`` and ``[fit]`` tables of a definition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple, Union

import numpy as np

from . import schema

__all__ = ["FitOptions", "XLaw"]


@dataclass(frozen=True)
class XLaw:
    """The law of the inputs ``X`` (``d`` independent coordinates).

    Parameters
    ----------
    kind : {"uniform", "normal"}, default="uniform"
        ``uniform``: each coordinate uniform on ``[low, high]`` (the paper's ``Uniform[-1, 1]^d``).
        ``normal``: each coordinate ``N(0, scale^2)``.
    low, high : float, default=-1.0, 1.0
        Bounds of the uniform law.
    scale : float, default=1.0
        Standard deviation of the normal law.
    """

    kind: str = "uniform"
    low: float = -1.0
    high: float = 1.0
    scale: float = 1.0

    def __post_init__(self):
        schema.check_fields(self, schema.X_LAW, "x_law.")
        if self.kind == "uniform" and not self.low < self.high:
            raise schema.DefinitionError(f"x_law needs low < high, got low={self.low}, high={self.high}")
        if self.kind == "normal" and not self.scale > 0:
            raise schema.DefinitionError(f"x_law.scale must be positive, got {self.scale}")

    def sample(self, rng: np.random.Generator, n: int, d: int) -> np.ndarray:
        """Draw ``X`` of shape ``(n, d)``."""
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, size=(n, d))
        return rng.normal(0.0, self.scale, size=(n, d))


@dataclass(frozen=True)
class FitOptions:
    """How each job fits the model.

    Parameters
    ----------
    init : {"truth", "search", "kmeans", "random"}, default="truth"
        ``truth``: start near the true parameters as in ``MODEL.md`` section 5 (see
        :func:`fastmoe.experiments.starts.init_near_truth`), an *oracle* start: the study then measures the
        statistical error of the maximum near the truth, not the luck of finding it. ``search``: the
        data-driven default of :func:`fastmoe.fit` (a search for the global maximum over several starts,
        issue 12); ``kmeans`` / ``random``: EM from ``n_init`` data-driven starts of that kind.
    init_scale : float, default=0.1
        Standard deviation of the Gaussian perturbation of every coordinate of a start near the truth.
    split_cells : tuple of int or None, default=None
        For over-fits started near the truth: the true atoms (indices in the true parameter) that receive
        the ``k - k*`` extra fitted atoms. ``None`` draws them at random per job.
    split_spread : float, default=0.0
        For a start near the truth: where on its non-identifiable set a split cell of a *vanishing* true
        expert (``a*_j = 0``) starts. ``0`` gives its atoms the true intercepts (the centre, where the
        atoms coincide); ``c > 0`` gives atom ``t`` of ``m`` the class probabilities
        ``p* + c_t (e - p*)`` with ``c_t`` evenly spaced in ``[-c, c]`` and ``e`` the indicator of the most
        likely class, which average to ``p*``: the start still reproduces the truth exactly but its atoms
        differ (see :func:`fastmoe.experiments.starts.init_near_truth`). Split cells of other experts are
        unaffected.
    n_init : int or None, default=None
        Starts of a data-driven fit (ignored for ``truth``). ``None`` leaves it to :func:`fastmoe.fit`'s
        default for ``search`` and means 1 for ``kmeans`` / ``random`` (and ``truth``), so definitions
        written before ``search`` existed keep their ``n_init = 1`` and their digests.
    max_iter : int, default=2000
        EM iteration cap; a fit that reaches it is recorded as such.
    tol : float, default=1e-8
        Stopping tolerance of :func:`fastmoe.fit`: the fit stops once the objective is estimated within
        ``tol * |objective|`` of its maximum.
    l2 : float, default=0.0
        Ridge penalty passed to :func:`fastmoe.fit`.
    ridge : {"reference", "centred"}, default="reference"
        Its form (:func:`fastmoe.fit`'s ``ridge``). The studies' default is the reference ridge, on the
        slopes in the reference conventions the truths and losses are stated in (fastmoe 0.2's only
        form, with which every stored study ran; ``fastmoe.fit`` defaults to ``"centred"``). Left out
        of the definition (and so of its digest) at its default.
    bounds : float, table or None, default=None
        A box on the free parameters passed to :func:`fastmoe.fit` (the compact parameter space of the
        theory, issue 14): one positive number bounds every free parameter, a table bounds the groups
        ``gate_slope``, ``gate_intercept``, ``expert_slope``, ``expert_intercept`` it names. Jobs record
        ``bound_active`` (some parameter ended on the box) and which. Left out of the definition (and so
        of its digest) when None.
    oracle_check : bool, default=False
        With a data-driven ``init``: every job also fits from the start near the truth (the start ``truth``
        would use, from the same random stream) and records both maxima, whether they are the same
        (relative ``1e-6``) and the gap (:func:`fastmoe.experiments.job.run_job`), so a report can say how
        often the data-driven fit reaches the oracle-started maximum. Left out of the definition (and so of
        its digest) when false.
    """

    init: str = "truth"
    init_scale: float = 0.1
    split_cells: Optional[Tuple[int, ...]] = None
    split_spread: float = 0.0
    n_init: Optional[int] = None
    max_iter: int = 2000
    tol: float = 1e-8
    l2: float = 0.0
    ridge: str = "reference"
    bounds: Optional[Union[float, Mapping[str, float]]] = None
    oracle_check: bool = False

    def __post_init__(self):
        checked = schema.check_fields(self, schema.FIT, "fit.")
        if self.oracle_check and self.init == "truth":
            raise schema.DefinitionError(
                "fit.oracle_check compares a data-driven fit with the fit started near the truth, but fit.init "
                "is 'truth' already; use init = 'search' (or 'kmeans', 'random') with it")
        if checked["n_init"] is None and self.init != "search":
            checked["n_init"] = 1  # what it always meant there (and what earlier definitions wrote)
        object.__setattr__(self, "oracle_check", checked["oracle_check"])
        object.__setattr__(self, "bounds", checked["bounds"])
        object.__setattr__(self, "split_cells", checked["split_cells"])
        object.__setattr__(self, "n_init", checked["n_init"])
        object.__setattr__(self, "max_iter", checked["max_iter"])
        # A float, so that 0 and 0.0 give one definition (the default is left out of it, see to_dict).
        object.__setattr__(self, "split_spread", float(self.split_spread))
