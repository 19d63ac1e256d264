"""``fastmoe.fit``: the public fit (checks, starts, restarts) and its frozen result object ``FitResult``."""

from __future__ import annotations

import collections
import os
import time
import warnings
from typing import Optional
from dataclasses import dataclass

import numpy as np

from . import _predict
from ._em import run_em
from ._init import INIT_METHODS
from ._monitor import ConvergenceMonitor
from ._penalty import RIDGES, Penalty
from ._problem import Problem, serial_blas
from ._search import SEARCH_N_INIT, restarts, search
from ._units import FitUnits
from ._validation import (
    check_params,
    check_positive_int,
    check_random_state,
    check_sample_weight,
    check_X,
    check_y,
    effective_n_threads,
    is_finite_real,
)
from . import exceptions
from .exceptions import SearchWarning
from .params import (Bounds, MoEParams, designs, free_parameter_names, free_vector, gating_name, n_free_params,
                     resolve_features, same_gating)

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
        Never with ``bounds`` on every free parameter: the maximum over a compact box exists.
    empty_experts : tuple of int
        Experts left without responsibility mass at the end.
    history : ndarray
        Objective after each iteration (entry 0 at the start); never decreasing.
    time : float
        Wall-clock seconds of the whole fit (all restarts).
    n_samples : int
        Rows of ``X``.
    message : str
        A sentence saying how the fit ended.
    l2 : float
        The ridge penalty the fit maximised with (0 for the plain likelihood).
    ridge : str
        Which form of the ridge (``fit``'s ``ridge``): ``"centred"`` or ``"reference"``.
    n_newton : int
        How many of the ``n_iter`` iterations were Newton steps on the log-likelihood itself.
    newton_iterations : tuple of int
        Which iterations those were (1-based: ``history[i]`` is the objective after iteration ``i``);
        the others were EM iterations. ``fastmoe.plot.history`` marks the two phases with it.
    boundary : tuple of (int, int)
        ``(expert, class)`` pairs whose fitted probability is 0 (below e^-15) wherever the data are: a
        maximum on the boundary of the model, whose class intercepts are not finite (they ran off to
        -inf; the probabilities, and ``loglik``, are fine). Their class parameters have no standard
        error (:func:`fastmoe.parameter_table` gives nan and says so).
    starts : StartLog or None
        How settled the answer is when it came from several starts: the objective each start
        reached (``starts.objectives``; on the exploration subsample for the search), how many reached
        the kept maximum (``starts.n_best``), which diverged, what the search's final moves
        (split-and-merge or soft-direction) reached on all the data (``starts.moves``); None for a fit
        from given parameters.
    bounds : Bounds or None
        The box the fit was constrained to (``fit(bounds=...)``), or None.
    active_bounds : tuple of str
        Names (:func:`fastmoe.free_parameter_names`) of the free parameters that ended on their bound:
        the constrained maximum lies on the box's surface there, and their standard errors are not
        valid (the fitted value is not an interior maximum). Empty without a box.
    n_observations : float
        The ``n`` of :attr:`bic`: the sum of the sample weights (frequency weights: a row of weight 3 is
        three observations, one of weight 0 none), or ``n_samples`` without weights. None (on results
        made by hand) reads as ``n_samples``.
    feature_names : tuple of str or None
        The names of the columns of ``X`` the fit was given (``fit``'s ``feature_names``, or a
        DataFrame's columns): the summary's coefficient names. None without names.
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
    ridge: str = "centred"
    n_newton: int = 0
    newton_iterations: tuple = ()
    boundary: tuple = ()
    starts: object = None
    bounds: object = None
    active_bounds: tuple = ()
    n_observations: Optional[float] = None
    feature_names: Optional[tuple] = None

    @property
    def n_free_params(self) -> int:
        return self.params.n_free_params

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``-2 loglik + p log n``, ``n`` the observations (:attr:`n_observations`).

        So the same data, given with frequency weights or with their rows repeated, have the same
        criterion, and rows of weight 0 do not count. (Counting the rows of ``X``, as fastmoe did
        before, gave 3000 weighted rows BIC 8059.6 and their 4652 repetitions 8066.2.)
        """
        n = self.n_samples if self.n_observations is None else self.n_observations
        return -2.0 * self.loglik + self.n_free_params * np.log(n)

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
        n = np.shape(y)[0] if np.ndim(y) else 0
        w = check_sample_weight(sample_weight, n)  # a scalar weight becomes one per row, as in loglik
        total = _predict.loglik(self.params, X, y, w if w.size else None, n_threads)
        return total / (float(w.sum()) if w.size else n)

    def __repr__(self):
        return (
            f"FitResult(loglik={self.loglik:.6f}, n_iter={self.n_iter}, converged={self.converged}, "
            f"diverged={self.diverged}, empty_experts={self.empty_experts}, time={self.time:.3f}s, "
            f"n_samples={self.n_samples},\n  message={self.message!r},\n  params={self.params!r})"
        )

    def summary(self, X=None, y=None, *, sample_weight=None, level=0.95, covariance="auto",
                feature_names=None, class_names=None, n_threads=None, n_boot=None, random_state=None):
        """Header, gate shares and named coefficients; with the training ``(X, y)`` also standard errors
        (Wald, or from ``n_boot`` bootstrap refits).

        See :func:`fastmoe.summary.summarize`; ``print`` the result for text, ``.to_frame()`` for pandas.
        """
        from .summary import summarize

        return summarize(self, X, y, sample_weight=sample_weight, level=level, covariance=covariance,
                         feature_names=feature_names, class_names=class_names, n_threads=n_threads,
                         n_boot=n_boot, random_state=random_state)


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform: no check
        return None


def _check_size(n_experts, n_classes, n_features, n_free, newton, y):
    """A model whose curvature matrices cannot fit in memory is refused with the reason, before any
    allocation: the experts' class-pair Hessian blocks, and the (P, P) Hessian of the Newton finish.
    Labels taken for class indices (a label of 10^6 on a few rows) are the usual cause."""
    pe = n_features + 1
    needed = 8 * n_experts * (n_classes * (n_classes - 1) // 2) * (pe * (pe + 1) // 2)
    if newton:
        needed = max(needed, 8 * n_free * n_free)
    memory = _physical_memory()
    if memory is None or needed <= memory:
        return
    present = np.unique(y).size
    hint = (f"; only {present} distinct labels occur in y: labels are class indices 0..n_classes-1, so encode "
            "them first (np.unique(y, return_inverse=True)) or use MixtureOfExpertsClassifier, which takes any "
            "labels" if present < n_classes else "")
    raise ValueError(f"a model with {n_experts} experts, {n_classes} classes and {n_features} features has "
                     f"{n_free} free parameters, whose curvature matrices need at least {needed / 2**30:.3g} GiB, "
                     f"more than this machine's {memory / 2**30:.3g} GiB{hint}")


def _check_init(init, gating, n_experts, n_features, n_classes):
    """Resolve ``init`` and ``gating``; return (init, gating, n_classes)."""
    if isinstance(init, MoEParams):
        check_params(init, n_features=n_features)
        if init.n_experts != n_experts:
            raise ValueError(f"init has {init.n_experts} experts but n_experts={n_experts}")
        if n_classes is not None and init.n_classes != n_classes:
            raise ValueError(f"init has {init.n_classes} classes but n_classes={n_classes}")
        if gating is not None and not same_gating(init.gating, gating):
            raise ValueError(f"init uses gating {init.gating_name!r} but gating={gating_name(gating)!r} "
                             "(another transform)")
        return init, init.gating, init.n_classes
    if not isinstance(init, str) or init not in INIT_STRATEGIES:
        raise ValueError(f"init must be one of {INIT_STRATEGIES} or an MoEParams, got {init!r}")
    return init, "identity" if gating is None else gating, n_classes


def _check_features(gating_features, expert_features, init, n_inputs, feature_names):
    """The feature sets as column indices (None: all columns), from the arguments or else from ``init``."""
    inputs = {}
    for name, given in (("gating_features", gating_features), ("expert_features", expert_features)):
        value = resolve_features(given, n_inputs, name, feature_names)
        if isinstance(init, MoEParams):
            if given is not None and value != getattr(init, name):
                raise ValueError(f"init has {name}={getattr(init, name)} but {name}={value}")
            value = getattr(init, name)
        inputs[name] = value
    if inputs["gating_features"] == ():
        raise ValueError("gating_features is empty; the gating needs at least one feature")
    return inputs


def _check_feature_names(names, n_features):
    """``names`` (``fit``'s ``feature_names`` or a DataFrame's columns) as a list of ``n_features``
    distinct strings, or the error that says what is wrong with them."""
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__") or np.ndim(names) != 1:
        raise TypeError(f"feature_names must be a sequence of names, one per column of X, got {names!r}")
    names = [str(name) for name in names]
    if len(names) != n_features:
        raise ValueError(f"feature_names has {len(names)} names but X has {n_features} columns")
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"the column names of X (feature_names, or a DataFrame's) must be distinct; {repeated} "
                         "name more than one column")
    return names


def _warn_dependent_columns(problem, gating, inputs, feature_names):
    """Warn when design columns are linearly dependent (``Problem.dependent_columns``): the data then
    do not identify the coefficients on them, whichever maximum the fit reaches."""
    def named(columns, features, elementwise=True):
        if not elementwise:  # a user's gating transform: its output columns are not the input's
            return f"columns {list(columns)} of the gating input M(x)"
        index = [c if features is None else features[c] for c in columns]
        return str(index if feature_names is None else [feature_names[i] for i in index])

    gate, expert = problem.dependent_columns
    designs = [("features" if problem.Z is problem.X else "expert features", expert, inputs["expert_features"], True)]
    if problem.Z is not problem.X:
        designs.append(("gating features", gate, inputs["gating_features"], isinstance(gating, str)))
    for what, dependent, features, elementwise in designs:
        if dependent:
            warnings.warn(
                f"fastmoe.fit: {what} {named(dependent, features, elementwise)} are linearly dependent (with the "
                "intercept): the data do not identify their coefficients, which many values fit equally well "
                "(predictions are unaffected; standard errors are not valid); drop one of them or use l2 > 0",
                exceptions.FitWarning, stacklevel=3)


def fit(
    X,
    y,
    n_experts,
    *,
    n_classes=None,
    gating=None,
    gating_features=None,
    expert_features=None,
    feature_names=None,
    init="search",
    n_init=None,
    max_iter=1000,
    tol=1e-8,
    l2=0.0,
    ridge="centred",
    bounds=None,
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
    each expert; steps that would lower the objective are halved per block until their Q function
    increases, so the objective (the log-likelihood, less the ridge with ``l2 > 0``) never decreases.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Every input column; ``gating_features`` and ``expert_features`` say which of them the gating
        and the experts read (by default all).
    y : array-like of shape (n_samples,)
        Integer labels in ``0 .. n_classes - 1``.
    n_experts : int
        Number of experts ``k`` (>= 1; ``k = 1`` is multinomial logistic regression).
    n_classes : int, optional
        Number of classes ``K``; defaults to ``max(y) + 1`` (or the classes of ``init``).
    gating : {"identity", "tanh", "sigmoid"} or callable, optional
        Gating transform ``M``, applied to the gating columns; default ``"identity"`` (standard softmax
        gating), or that of ``init``.
    gating_features : sequence of int, boolean mask or sequence of str, optional
        Columns of ``X`` the gating (the concomitant model) reads: integer indices, a boolean mask, or
        column names (``feature_names``, or a DataFrame's); at least one. Default: all columns (or those of
        ``init``). The gating is ``softmax(beta0 + beta1 . M(X[:, gating_features]))``.
    expert_features : sequence of int, boolean mask or sequence of str, optional
        Columns of ``X`` the experts read, as for ``gating_features``; ``[]`` gives intercept-only
        experts (the covariate latent-class model: each expert a fixed class distribution, the
        gating on covariates). Default: all columns (or those of ``init``). A set that is all of
        ``X`` costs no copy of ``X``; a subset is copied once.
    feature_names : sequence of str, optional
        Names of the columns of ``X``, one each and distinct, by which ``gating_features`` and
        ``expert_features`` may name columns and warnings name them; they override a DataFrame's own.
        Default: a DataFrame's column names (none for an array).
    init : {"search", "kmeans", "random"} or MoEParams, default="search"
        ``"search"`` looks for the global maximum: ``n_init`` starts explored on a subsample of
        ``max(30 000, 25 p)`` rows (``p`` free parameters; all rows for smaller data), with
        trust-region Newton steps on the likelihood first, in parallel threads, in rounds until the
        best maximum was reached twice and a new one is unlikely; the best few are refined on all the
        data, and split-and-merge moves (one expert dropped, another split) are tried from the
        answer there where affordable, else moves along its flattest directions where those are
        (see ``fastmoe._search``). ``"kmeans"`` partitions the gating
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
        whole nats short of the maximum at large ``n``. Where no Newton model certifies a maximum and
        20 Newton steps in a row gained less than ``tol / 10`` (relative) in all, EM takes over again;
        when the run stalls so a second time with no more gained between, it stops as *stalled*: not
        converged, and the message says so.
    l2 : float, default=0.0
        Optional ridge penalty on the slopes (intercepts are not penalised); off by default. ``l2`` is
        ``1 / C`` of ``LogisticRegression(C)`` (see ``ridge``).
    ridge : {"centred", "reference"}, default="centred"
        Which slopes the ridge shrinks. ``"centred"``, the ridge of ``LogisticRegression`` and glmnet:
        with three classes or more ``l2 / 2 * sum_s ||a_is - mean_t a_it||^2`` in each expert (the
        multinomial ridge on slopes made to sum to zero over the classes), and the same over the
        experts for the gating slopes with three experts or more; with two, ``l2 / 2 * ||a_i0||^2`` on
        the one log-odds slope vector (the binary ridge). No renaming or reordering of the classes or
        the experts changes the fit. ``"reference"``: ``l2 / 2 * sum_s ||a_is||^2`` on the slopes in
        reference conventions, the log-odds against the last class (and the last expert), which
        shrinks towards whichever class sorts last: fastmoe 0.2's ridge, kept to reproduce its fits
        (the rate studies' presets use it). The two differ only with three classes or experts or more.
    bounds : float, mapping or Bounds, optional
        Maximise over a box, the compact parameter space of the theory: a positive number ``B`` bounds
        every free parameter, ``|theta_j| <= B``; a mapping (or :class:`fastmoe.Bounds`) with keys
        ``gate_slope``, ``gate_intercept``, ``expert_slope``, ``expert_intercept`` bounds each group on
        its own (a missing key, None or ``inf`` leaves that group free). The box is on the
        reference-normalised free parameters (:func:`fastmoe.free_parameter_names`: the last expert's
        gating and every expert's last class are 0), a compact set of identified parameters; being stated
        relative to the last expert and class, it depends on which are last (``docs/bounds.md``). The
        M-steps become projected Newton steps and the Newton finish a trust-region step on the
        coordinates not held by their bound, so the objective still never decreases; the starts are
        projected into the box. With every parameter bounded the maximum exists on any data and no fit
        is reported diverged: one whose maximum lies on the box's surface has converged at a bound, and
        ``FitResult.active_bounds`` (and the message) name the parameters held there.
    newton : bool, default=True
        Once EM has settled, switch to Newton steps on the log-likelihood itself (exact Hessian, one
        fused pass per step), guarded so that the objective never decreases and falling back to EM
        when the Hessian is not negative definite. Converges in a handful of steps where EM crawls;
        ``False`` gives plain generalised EM. Its verdict rests on EM's own changes, and from a start
        far out (a truth's parameters times 100: logits in the hundreds) some blocks' M-steps can fail
        every halving while the others settle, and it stops as converged away from any maximum. Nor
        can EM move an expert that has lost its responsibility mass (``empty_experts``): from such
        starts (truth x 100 plus N(0, 1), 40 seeds) on issue 12's benchmark problem p1 (d = 2, k = 3,
        K = 3, n = 1e4), all 39 plain-EM runs that settled did so with one expert emptied, 30 of them
        at points from which Newton steps climbed 4-16 nats. The Newton finish checks EM's verdict.
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
        When of several starts only one reached the maximum that was kept (and the fit converged), or
        a start diverged to a higher likelihood than the kept maximum's (which is then not the global
        maximum, and the MLE may not exist).
    """
    started = time.perf_counter()
    columns = getattr(X, "columns", None) if feature_names is None else feature_names
    X = check_X(X)
    n_samples, n_features = X.shape
    n_experts = check_positive_int(n_experts, "n_experts")
    n_init = None if n_init is None else check_positive_int(n_init, "n_init")
    max_iter = check_positive_int(max_iter, "max_iter", minimum=0)
    for name, value in (("tol", tol), ("l2", l2)):
        if not (is_finite_real(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if ridge not in RIDGES:
        raise ValueError(f"ridge must be one of {RIDGES}, got {ridge!r}")
    verbose = check_positive_int(int(verbose) if isinstance(verbose, (bool, np.bool_)) else verbose, "verbose",
                                 minimum=0)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    bounds = Bounds.coerce(bounds)
    init, gating, n_classes = _check_init(init, gating, n_experts, n_features, n_classes)
    feature_names = None if columns is None else _check_feature_names(columns, n_features)
    inputs = _check_features(gating_features, expert_features, init, n_features, feature_names)
    y, n_classes = check_y(y, n_samples, n_classes)
    sample_weight = check_sample_weight(sample_weight, n_samples)
    # From here on X is the experts' design and Z the gating's; both are X itself when they read all of it.
    X, Z = designs(gating, X, **inputs)
    inputs["n_inputs"] = n_features
    n_free = n_free_params(n_experts, n_classes, X.shape[1], Z.shape[1])
    # The search's starts take Newton steps (with the whole Hessian) whatever ``newton`` says.
    searching = isinstance(init, str) and init == "search" and n_experts > 1
    _check_size(n_experts, n_classes, X.shape[1], n_free, newton or searching, y)
    # A ridge, or a box on every parameter, makes the fit well defined.
    if n_samples < n_free and l2 == 0 and not (bounds is not None and bounds.compact):
        shape = (f"{n_features} features" if inputs["gating_features"] is None and inputs["expert_features"] is None
                 else f"{Z.shape[1]} gating and {X.shape[1]} expert features")
        raise ValueError(
            f"X has {n_samples} samples but a model with {n_experts} experts, {n_classes} classes and "
            f"{shape} has {n_free} free parameters; need at least that many samples"
        )
    rng = check_random_state(random_state)
    # Columns far from the origin or of extreme spread are centred and scaled for the fit (``_units``).
    units = FitUnits.choose(X, Z, bounds, sample_weight)
    if units is not None:
        X, Z = units.designs(X, Z)
    problem = Problem(X, Z, y, sample_weight, n_experts, n_classes, effective_n_threads(n_threads))
    if l2 == 0:  # a ridge identifies every coefficient
        _warn_dependent_columns(problem, gating, inputs, feature_names)
    # Without a ridge no weights (an infinite one would make 0 * inf).
    penalty = Penalty(l2, problem, bounds, slope_scales=None if units is None or l2 == 0 else units.slope_scales,
                      ridge=ridge)

    def callers(W, V):
        """Packed parameters of the fit in the caller's units."""
        return (W, V) if units is None else units.from_fit(W, V)

    def on_iteration(n_iter, W, V, objective):
        # The user's callback sees the log-likelihood and a parameter object, not the packed arrays.
        params = MoEParams.from_packed(*callers(W, V), gating, **inputs)
        return callback(n_iter, objective + penalty.total(W, V), params)

    callback_ = on_iteration if callback is not None else None
    options = dict(tol=tol, max_iter=max_iter, newton=newton)
    starts = None
    # BLAS stays serial for the whole fit: its matrices are small, and the starts run on threads.
    with serial_blas():
        if isinstance(init, MoEParams):
            W, V = init.normalized().packed()
            if units is not None:
                W, V = units.to_fit(W, V)
            best = run_em(problem, W, V, penalty, ConvergenceMonitor(tol, max_iter, callback_, verbose), newton=newton)
        elif init == "search" and n_experts > 1:
            best, starts = search(problem, penalty, SEARCH_N_INIT if n_init is None else n_init, rng,
                                  n_threads=problem.n_threads, callback=callback_, verbose=verbose, **options)
        else:  # a mixture of one expert is a concave problem: one start is the search
            kind, n_init = ("kmeans", 1) if init == "search" else (init, n_init or 1)
            best, starts = restarts(problem, penalty, kind, n_init, rng,
                                    n_threads=problem.n_threads, callback=callback_, verbose=verbose, **options)
    monitor = best.monitor
    params = MoEParams.from_packed(*callers(best.W, best.V), gating, **inputs)
    held = penalty.at_bound(free_vector(best.W, best.V))
    active_bounds = tuple(name for name, side in zip(free_parameter_names(params), held) if side != 0)
    # One diverged run of several experts does not show that the MLE is missing (another start may
    # reach a finite maximum above it); a concave problem does, and every explored start diverging
    # makes it likely (on random d = 60, k = 2, K = 10 data with a class of 19 rows in 5000, all four
    # starts diverged, their slopes growing as Newton steps gained 4e-9 nats each).
    every_start = (starts.diverged.size if starts is not None and starts.diverged.size > 1
                   and bool(starts.diverged.all()) else 0)
    # One expert has no gating slopes: its expert slopes' bound is every slope's.
    slopes_boxed = bounds is not None and (bounds.slopes_bounded
                                           or (n_experts == 1 and bool(np.isfinite(bounds.expert_slope))))
    message = monitor.message(penalised=l2 > 0, empty_experts=best.empty_experts, boundary=best.boundary,
                              slopes_boxed=slopes_boxed,
                              active_bounds=active_bounds, definite=n_experts == 1, every_start=every_start)
    if monitor.reason not in ("converged", "callback"):
        warnings.warn(f"fastmoe.fit: {message}", exceptions.ConvergenceWarning, stacklevel=2)
    search_warning = None if starts is None else starts.search_warning(monitor.converged)
    if search_warning is not None:
        warnings.warn(f"fastmoe.fit: {search_warning}", SearchWarning, stacklevel=2)
    return FitResult(
        params=params,
        loglik=float(best.loglik),
        objective=float(best.objective),
        n_iter=monitor.n_iter,
        converged=monitor.converged,
        diverged=best.diverged,
        empty_experts=best.empty_experts,
        history=np.asarray(monitor.history),
        time=time.perf_counter() - started,
        n_samples=n_samples,
        n_observations=float(sample_weight.sum()) if sample_weight.size else float(n_samples),
        message=message,
        l2=float(l2),
        ridge=ridge,
        n_newton=monitor.n_newton,
        newton_iterations=tuple(monitor.newton_iterations),
        boundary=best.boundary,
        starts=starts,
        bounds=bounds,
        active_bounds=active_bounds,
        feature_names=None if feature_names is None else tuple(feature_names),
    )
