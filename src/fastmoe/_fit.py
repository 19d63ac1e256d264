"""``fastmoe.fit``: the public fit (checks, starts, restarts) and its frozen result object ``FitResult``."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from . import _predict
from ._em import run_em
from ._init import INIT_METHODS
from ._monitor import ConvergenceMonitor
from ._penalty import Penalty
from ._problem import Problem, serial_blas
from ._search import SEARCH_N_INIT, restarts, search
from ._validation import (
    check_params,
    check_positive_int,
    check_random_state,
    check_sample_weight,
    check_X,
    check_y,
    effective_n_threads,
)
from . import exceptions
from .exceptions import SearchWarning
from .params import MoEParams, gate_input, gating_name, n_free_params

__all__ = ["fit", "FitResult", "INIT_STRATEGIES"]

#: What ``fit(init=...)`` accepts by name: the search (the default) or one kind of start.
INIT_STRATEGIES = ("search",) + INIT_METHODS


@dataclass(frozen=True, repr=False)
class FitResult:
    """The outcome of :func:`fit`.

    Attributes
    ----------
    params : MoEParams
        Fitted parameters in reference conventions.
    loglik : float
        Log-likelihood at ``params`` (weighted when sample weights were given).
    objective : float
        The maximised objective: ``loglik`` minus the L2 penalty (equal to ``loglik`` when ``l2 = 0``).
    n_iter : int
        Iterations of the kept run, EM and Newton steps together.
    converged : bool
        Whether the objective was judged within ``tol * |objective|`` of its maximum (see ``tol``).
    diverged : bool
        Whether coefficients were running off to infinity (quasi-separation: the MLE need not exist).
    empty_experts : tuple of int
        Experts left without responsibility mass at the end.
    history : ndarray
        Objective after each iteration (entry 0 at the start); never decreasing.
    time : float
        Wall-clock seconds of the whole fit (all restarts).
    n_samples : int
    message : str
        A sentence saying how the fit ended.
    l2 : float
        The ridge penalty the fit maximised with (0 for the plain likelihood).
    n_newton : int
        How many of the ``n_iter`` iterations were Newton steps on the log-likelihood itself.
    newton_iterations : tuple of int
        Which iterations those were (1-based: ``history[i]`` is the objective after iteration ``i``);
        the others were EM iterations. ``fastmoe.plot.history`` marks the two phases with it.
    boundary : tuple of (int, int)
        ``(expert, class)`` pairs whose fitted probability is 0 (below e^-30) wherever the data are: a
        maximum on the boundary of the model, whose class intercepts are not finite (they ran off to
        -inf; the probabilities, and ``loglik``, are fine).
    starts : StartLog or None
        How settled the answer is when it came from several starts: the objective each start
        reached (``starts.objectives``; on the exploration subsample for the search), how many reached
        the kept maximum (``starts.n_best``), which diverged; None for a fit from given parameters.
    """

    params: MoEParams
    loglik: float
    objective: float
    n_iter: int
    converged: bool
    diverged: bool
    empty_experts: tuple
    history: np.ndarray
    time: float
    n_samples: int
    message: str
    l2: float = 0.0
    n_newton: int = 0
    newton_iterations: tuple = ()
    boundary: tuple = ()
    starts: object = None

    @property
    def n_free_params(self) -> int:
        return self.params.n_free_params

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``-2 loglik + p log n``."""
        return -2.0 * self.loglik + self.n_free_params * np.log(self.n_samples)

    @property
    def aic(self) -> float:
        """Akaike information criterion ``-2 loglik + 2 p``."""
        return -2.0 * self.loglik + 2.0 * self.n_free_params

    def predict_proba(self, X, n_threads=None):
        """Class probabilities ``P(Y = s | x)`` under the fitted model, shape (n_samples, n_classes)."""
        return _predict.predict_proba(self.params, X, n_threads)

    def predict(self, X, n_threads=None):
        """Most probable class for each row of ``X``."""
        return np.argmax(_predict.predict_log_proba(self.params, X, n_threads), axis=1)

    def score(self, X, y, sample_weight=None, n_threads=None):
        """Mean log-likelihood per sample (weighted mean with sample weights)."""
        total = _predict.loglik(self.params, X, y, sample_weight, n_threads)
        denom = len(y) if sample_weight is None else float(np.sum(sample_weight))
        return total / denom

    def __repr__(self):
        return (
            f"FitResult(loglik={self.loglik:.6f}, n_iter={self.n_iter}, converged={self.converged}, "
            f"diverged={self.diverged}, empty_experts={self.empty_experts}, time={self.time:.3f}s, "
            f"n_samples={self.n_samples},\n  message={self.message!r},\n  params={self.params!r})"
        )

    def summary(self, X=None, y=None, *, sample_weight=None, level=0.95, covariance="auto",
                feature_names=None, class_names=None, n_threads=None):
        """Header, gate shares and named coefficients; with the training ``(X, y)`` also standard errors.

        See :func:`fastmoe.summary.summarize`; ``print`` the result for text, ``.to_frame()`` for pandas.
        """
        from .summary import summarize

        return summarize(self, X, y, sample_weight=sample_weight, level=level, covariance=covariance,
                         feature_names=feature_names, class_names=class_names, n_threads=n_threads)


def _check_init(init, gating, n_experts, n_features, n_classes):
    """Resolve ``init`` and ``gating``; return (init, gating, n_classes)."""
    if isinstance(init, MoEParams):
        check_params(init, n_features=n_features)
        if init.n_experts != n_experts:
            raise ValueError(f"init has {init.n_experts} experts but n_experts={n_experts}")
        if n_classes is not None and init.n_classes != n_classes:
            raise ValueError(f"init has {init.n_classes} classes but n_classes={n_classes}")
        if gating is not None and init.gating_name != gating_name(gating):
            raise ValueError(f"init uses gating {init.gating_name!r} but gating={gating!r}")
        return init, init.gating, init.n_classes
    if not isinstance(init, str) or init not in INIT_STRATEGIES:
        raise ValueError(f"init must be one of {INIT_STRATEGIES} or an MoEParams, got {init!r}")
    return init, "identity" if gating is None else gating, n_classes


def fit(
    X,
    y,
    n_experts,
    *,
    n_classes=None,
    gating=None,
    init="search",
    n_init=None,
    max_iter=1000,
    tol=1e-8,
    l2=0.0,
    newton=True,
    sample_weight=None,
    n_threads=None,
    random_state=None,
    verbose=0,
    callback=None,
) -> FitResult:
    """Fit a softmax-gated multinomial-logistic mixture of experts by maximum likelihood.

    Generalised EM (MODEL.md section 2): every iteration is one fused compiled pass (E-step,
    log-likelihood, all gradients and Hessians) followed by one Newton step for the gating and for
    each expert; steps that would lower the log-likelihood are halved per block until their Q
    function increases, so the log-likelihood never decreases.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Integer labels in ``0 .. n_classes - 1``.
    n_experts : int
        Number of experts ``k`` (>= 1; ``k = 1`` is multinomial logistic regression).
    n_classes : int, optional
        Number of classes ``K``; defaults to ``max(y) + 1`` (or the classes of ``init``).
    gating : {"identity", "tanh", "sigmoid"} or callable, optional
        Gating transform ``M``; default ``"identity"`` (standard softmax gating), or that of ``init``.
    init : {"search", "kmeans", "random"} or MoEParams, default="search"
        ``"search"`` looks for the global maximum: ``n_init`` starts explored on a subsample of
        ``max(10 000, 25 p)`` rows (``p`` free parameters; all rows for smaller data), most of them
        with trust-region Newton steps on the likelihood from the start, in parallel threads; the
        best is refined on all the data (see ``fastmoe._search``). ``"kmeans"`` partitions the gating
        inputs with k-means, ``"random"`` with a random linear gating, turns the partition into
        parameters by an M-step and runs EM from there on all the data (``n_init`` times). An
        ``MoEParams`` starts there (e.g. near the truth in a simulation).
    n_init : int, optional
        Starts; the best maximum that did not diverge is kept and ``FitResult.starts`` says how many
        reached it. Default: 4 for ``"search"``, 1 otherwise.
    max_iter : int, default=1000
    tol : float, default=1e-8
        Stop when the objective is estimated to lie within ``tol * |objective|`` of its maximum: the
        last change must be that small and so must what is left to gain, estimated from EM's rate of
        convergence (Aitken) or, in the Newton finish, by the Newton decrement at a point where the
        Hessian is negative definite. A small change alone is not enough: near a degenerate maximum
        (an over-fitted, vanishing expert) EM crawls, and a fit stopped by its last change can lie
        whole nats short of the maximum at large ``n``.
    l2 : float, default=0.0
        Optional ridge penalty ``l2 / 2 * ||slopes||^2`` (intercepts are not penalised); off by default.
    newton : bool, default=True
        Once EM has settled, switch to Newton steps on the log-likelihood itself (exact Hessian, one
        fused pass per step), guarded so that the objective never decreases and falling back to EM
        when the Hessian is not negative definite. Converges in a handful of steps where EM crawls;
        ``False`` gives plain generalised EM.
    sample_weight : array-like of shape (n_samples,), optional
    n_threads : int, optional
        OpenMP threads; None uses all usable cores (honouring ``OMP_NUM_THREADS``), -1 too, -2 all but one.
    random_state : None, int or numpy.random.Generator
    verbose : int, default=0
    callback : callable ``(iteration, loglik, params) -> bool``, optional
        Called after every iteration; returning True stops the fit.

    Returns
    -------
    FitResult

    Warns
    -----
    ConvergenceWarning
        When the fit stops before converging (iteration cap) or its coefficients diverge.
    SearchWarning
        When of several starts only one reached the maximum that was kept.
    """
    started = time.perf_counter()
    X = check_X(X)
    n_samples, n_features = X.shape
    n_experts = check_positive_int(n_experts, "n_experts")
    n_init = None if n_init is None else check_positive_int(n_init, "n_init")
    max_iter = check_positive_int(max_iter, "max_iter", minimum=0)
    if not (np.isscalar(tol) and np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if not (np.isscalar(l2) and np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    init, gating, n_classes = _check_init(init, gating, n_experts, n_features, n_classes)
    y, n_classes = check_y(y, n_samples, n_classes)
    sample_weight = check_sample_weight(sample_weight, n_samples)
    Z = gate_input(gating, X)
    n_free = n_free_params(n_experts, n_classes, n_features, Z.shape[1])
    if n_samples < n_free and l2 == 0:  # a ridge makes the penalised fit well defined
        raise ValueError(
            f"X has {n_samples} samples but a model with {n_experts} experts, {n_classes} classes and "
            f"{n_features} features has {n_free} free parameters; need at least that many samples"
        )
    rng = check_random_state(random_state)
    problem = Problem(X, Z, y, sample_weight, n_experts, n_classes, effective_n_threads(n_threads))
    penalty = Penalty(l2, problem)

    def on_iteration(n_iter, W, V, objective):
        # The user's callback sees the log-likelihood and a parameter object, not the packed arrays.
        return callback(n_iter, objective + penalty.total(W, V), MoEParams.from_packed(W, V, gating))

    callback_ = on_iteration if callback is not None else None
    options = dict(tol=tol, max_iter=max_iter, newton=newton)
    starts = None
    # BLAS stays serial for the whole fit: its matrices are small, and the starts run on threads.
    with serial_blas():
        if isinstance(init, MoEParams):
            W, V = init.normalized().packed()
            best = run_em(problem, W, V, penalty, ConvergenceMonitor(tol, max_iter, callback_, verbose), newton=newton)
        elif init == "search" and n_experts > 1:
            best, starts = search(problem, penalty, SEARCH_N_INIT if n_init is None else n_init, rng,
                                  n_threads=problem.n_threads, callback=callback_, verbose=verbose, **options)
        else:  # a mixture of one expert is a concave problem: one start is the search
            kind, n_init = ("kmeans", 1) if init == "search" else (init, n_init or 1)
            best, starts = restarts(problem, penalty, kind, n_init, rng,
                                    n_threads=problem.n_threads, callback=callback_, verbose=verbose, **options)
    monitor = best.monitor
    message = monitor.message(penalised=l2 > 0, empty_experts=best.empty_experts, boundary=best.boundary)
    if monitor.reason not in ("converged", "callback"):
        warnings.warn(f"fastmoe.fit: {message}", exceptions.ConvergenceWarning, stacklevel=2)
    if starts is not None and starts.message() is not None:
        warnings.warn(f"fastmoe.fit: {starts.message()}", SearchWarning, stacklevel=2)
    return FitResult(
        params=MoEParams.from_packed(best.W, best.V, gating),
        loglik=float(best.loglik),
        objective=float(best.objective),
        n_iter=monitor.n_iter,
        converged=monitor.converged,
        diverged=best.diverged,
        empty_experts=best.empty_experts,
        history=np.asarray(monitor.history),
        time=time.perf_counter() - started,
        n_samples=n_samples,
        message=message,
        l2=float(l2),
        n_newton=monitor.n_newton,
        newton_iterations=tuple(monitor.newton_iterations),
        boundary=best.boundary,
        starts=starts,
    )
