"""``MixtureOfExpertsClassifier``: the mixture of experts as a scikit-learn classifier.

A thin layer over :func:`fastmoe.fit`. It adds what scikit-learn's estimator contract asks of a
classifier: arbitrary labels through ``classes_`` (strings, non-contiguous integers), input checks with
scikit-learn's messages, ``n_features_in_``/``feature_names_in_``, fitted attributes with trailing
underscores, ``warm_start``, cloning and pickling. The arithmetic is the core's: the estimator never
computes a likelihood itself.

scikit-learn is an optional dependency of fastmoe; importing this module requires it.
"""

from __future__ import annotations

import dataclasses
import json
import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from . import _predict
from ._fit import INIT_STRATEGIES, FitResult, _check_init, _check_size, fit
from ._monitor import StartLog
from .params import Bounds, MoEParams, gate_input, n_free_params, resolve_features, same_gating

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)


__all__ = ["MixtureOfExpertsClassifier"]


def _as_generator(random_state):
    """Map scikit-learn's ``random_state`` conventions onto the core's ``numpy.random.Generator``.

    ``None``, an int, a ``SeedSequence`` or a ``Generator`` pass through; a legacy ``RandomState``
    (what scikit-learn utilities hand around) seeds a fresh ``Generator`` from one draw, so that a
    ``RandomState`` still gives reproducible fits.
    """
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    return random_state


def _check_label_types(y):
    """Refuse labels that mix types (``[1, "a"]`` in an object array): they cannot be ordered into ``classes_``."""
    y = np.asarray(y)
    if y.dtype.kind != "O":
        return
    kinds = {"str" if isinstance(v, str) else "number" if isinstance(v, numbers.Number) else type(v).__name__
             for v in y.ravel()}
    if len(kinds) > 1:
        examples = {}
        for v in y.ravel():
            examples.setdefault(type(v).__name__, v)
        raise ValueError(
            f"y mixes label types ({', '.join(f'{t} such as {v!r}' for t, v in examples.items())}); "
            "labels must all be numbers or all be strings"
        )


def _class_weights(class_weight, classes, y_codes, sample_weight):
    """Weight of each class from ``class_weight`` (None, ``"balanced"`` or a dict), as in LogisticRegression.

    ``"balanced"`` gives class ``c`` the weight ``total / (n_classes * total_c)`` where the totals sum the
    sample weights (counts without them); a dict maps labels to weights, absent classes weigh 1.
    """
    n_classes = classes.shape[0]
    if class_weight is None:
        return np.ones(n_classes)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {class_weight!r}")
        totals = np.bincount(y_codes, weights=sample_weight, minlength=n_classes)
        with np.errstate(divide="ignore"):
            weights = totals.sum() / (n_classes * totals)
        return np.where(totals > 0, weights, 0.0)
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be None, 'balanced' or a dict, got {type(class_weight).__name__}")
    known = set(classes.tolist())
    unknown = [label for label in class_weight if label not in known]
    if unknown:
        raise ValueError(f"class_weight names labels {unknown} that are not in y (classes: {classes.tolist()})")
    weights = np.array([class_weight.get(label, 1.0) for label in classes.tolist()], dtype=np.float64)
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError(f"class_weight values must be finite and >= 0, got {class_weight!r}")
    return weights


def _merge_rows(X, y, sample_weight):
    """The data as its weighted empirical distribution: distinct ``(x, y)`` rows in a canonical order.

    Rows of zero weight are dropped, equal rows merged (their weights added: a row given twice weighs 2)
    and the rows sorted by a hash of their bits. A fit then depends on the data only through the
    weighted empirical distribution: permuting the rows, repeating a row or giving it an integer weight
    give the same fit, bit for bit, whatever the start (a data-driven start draws rows). Returns
    ``(X, y, weights)`` with ``weights`` None when every merged weight is 1.

    The hash (a 64-bit mix of each row's bits) costs a few passes over ``X`` and one sort of ``n``
    integers; two distinct rows with equal hashes (probability about ``n^2 / 2^64``) are merely left
    unmerged, in their given order.
    """
    if sample_weight is not None:
        keep = sample_weight > 0
        if not keep.all():
            X, y, sample_weight = X[keep], y[keep], sample_weight[keep]
    X = X + 0.0  # -0.0 becomes 0.0: equal values get equal bits
    mix = np.uint64(0xBF58476D1CE4E5B9)
    h = np.full(X.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
    for column in (*X.view(np.uint64).T, y.astype(np.uint64)):
        h ^= column
        h *= mix  # wraps modulo 2^64 (NumPy integer arrays do not warn)
        h ^= h >> np.uint64(31)
    order = np.argsort(h, kind="stable")
    h, X, y = h[order], X[order], y[order]
    same = (h[1:] == h[:-1]) & (y[1:] == y[:-1]) & (X[1:] == X[:-1]).all(axis=1)
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    weights = np.ones(X.shape[0]) if sample_weight is None else sample_weight[order]
    if starts.shape[0] < X.shape[0]:
        X, y, weights = X[starts], y[starts], np.add.reduceat(weights, starts)
    return np.ascontiguousarray(X), y, None if (weights == 1.0).all() else weights


@dataclasses.dataclass(frozen=True)
class _FitInputs:
    """What :meth:`MixtureOfExpertsClassifier.fit` fits: ``X`` checked; ``X_fit, y_fit, w_fit`` its
    rows merged (labels encoded, weights summed); the user's own weights; the classes and their
    weights; the rows given; the feature sets; the box."""

    X: np.ndarray
    X_fit: np.ndarray
    y_fit: np.ndarray
    w_fit: object
    user_weight: object
    classes: np.ndarray
    class_weight: np.ndarray
    n_rows: int
    n_classes: int
    inputs: tuple
    box: object


class MixtureOfExpertsClassifier(ClassifierMixin, BaseEstimator):
    """Softmax-gated multinomial-logistic mixture of experts, fitted by maximum likelihood.

    ``P(Y = s | x) = sum_i pi_i(x) f_i(s | x)`` with a softmax gating ``pi_i(x) = softmax_i(beta0_i +
    beta1_i . M(x))`` and multinomial-logistic experts ``f_i(s | x) = softmax_s(b_si + a_si . x)``
    (Nguyen, Akbarian, Nguyen & Ho, ICML 2024). Fitted by generalised EM with Newton M-steps in a
    compiled OpenMP kernel; see :func:`fastmoe.fit`.

    Parameters
    ----------
    n_experts : int, default=2
        Number of experts ``k``. ``n_experts=1`` is multinomial logistic regression.
    gating : {"identity", "tanh", "sigmoid"} or callable, default="identity"
        Gating transform ``M`` applied to the gating input only: ``"identity"`` is standard softmax
        gating, a bounded transform the modified softmax gating of the paper.
    gating_features : sequence of int, boolean mask or sequence of str, default=None
        Columns of ``X`` the gating reads, in the manner of ``ColumnTransformer``: integer indices, a
        boolean mask, or column names when ``X`` is a DataFrame; at least one. None: all columns.
    expert_features : sequence of int, boolean mask or sequence of str, default=None
        Columns of ``X`` the experts read, as for ``gating_features``; ``[]`` gives intercept-only
        experts (a latent-class model whose class membership depends on the gating columns).
        None: all columns. ``X`` keeps all its columns at ``predict`` time; the model selects them.
    l2 : float, default=1.0
        Ridge penalty on all slopes, gating and experts (intercepts are not penalised), subtracted from
        the summed log-likelihood: ``LogisticRegression(C=1 / l2)``'s ridge (with ``ridge="centred"``;
        one expert gives that model), and the default is that of ``LogisticRegression(C=1.0)``. It
        keeps the slopes finite on separable data and on data with fewer samples than free
        parameters, where the maximum-likelihood estimate does not exist. ``l2=0`` is maximum
        likelihood, the default of :func:`fastmoe.fit` (standard errors of
        :func:`~fastmoe.parameter_table` assume it).
    ridge : {"centred", "reference"}, default="centred"
        Which slopes the ridge shrinks (:func:`fastmoe.fit`): ``"centred"`` those of all classes (and
        experts) made to sum to zero, as ``LogisticRegression`` does, so that renaming or reordering
        the labels does not change the fit; ``"reference"`` the log-odds against the last class and
        expert, fastmoe 0.2's ridge (what a model saved by fastmoe 0.2 was fitted with). They differ
        only with three classes or experts or more.
    bounds : float, dict or Bounds, default=None
        A box on the reference-normalised free parameters, the compact parameter space of the theory
        (see :func:`fastmoe.fit`): a positive number bounds every one, a dict (or
        :class:`fastmoe.Bounds`) bounds the groups ``gate_slope``, ``gate_intercept``, ``expert_slope``,
        ``expert_intercept`` separately. ``active_bounds_`` names the parameters that end on it.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, multiplied into ``sample_weight`` as in ``LogisticRegression``: a dict
        maps labels to weights (absent labels weigh 1); ``"balanced"`` weighs class ``c`` by
        ``n_samples / (n_classes * n_c)`` (with sample weights, their sums).
    init : {"search", "kmeans", "random"} or MoEParams, default="search"
        ``"search"`` looks for the global maximum (several starts explored on a subsample, relocation
        moves, the best refined on all the data; see :func:`fastmoe.fit`); ``"kmeans"`` or
        ``"random"``: EM from a partition of the gating inputs; or explicit starting parameters.
    n_init : int, default=None
        Starts (per round, for the search); None: 4 for the search, 1 otherwise.
    max_iter : int, default=1000
        Iteration cap, EM and Newton steps together.
    tol : float, default=1e-8
        Stop when the objective is estimated within ``tol * |objective|`` of its maximum (see
        :func:`fastmoe.fit`).
    warm_start : bool, default=False
        Start the next :meth:`fit` from the current ``params_`` (when the number of experts, classes
        and features still match) instead of from ``init``.
    n_threads : int, default=None
        OpenMP threads; ``None`` uses all usable cores (honouring ``OMP_NUM_THREADS``), negative
        values count back from that.
    random_state : None, int, numpy.random.Generator or numpy.random.RandomState, default=None
        Seed of the data-driven initialisation.
    verbose : int, default=0
        EM progress printing (see :func:`fastmoe.fit`).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels; column ``s`` of :meth:`predict_proba` belongs to ``classes_[s]``.
    class_weight_ : ndarray of shape (n_classes,)
        The weight of each class in the fit (ones without ``class_weight``).
    params_ : MoEParams
        Fitted parameters in reference conventions; class ``s`` of the parameters is ``classes_[s]``.
    fit_result_ : FitResult
        The core's full result (history, timings, message).
    log_likelihood_ : float
        Log-likelihood of the training data at ``params_``, weighted as the fit was (``sample_weight``
        and ``class_weight``); :meth:`loglik` gives the unweighted one.
    objective_ : float
        Maximised objective (log-likelihood minus the ridge penalty).
    n_iter_ : int
        Iterations of the kept run, EM and Newton steps together.
    converged_ : bool
        Whether the objective was judged within ``tol`` of its maximum.
    diverged_ : bool
        Whether coefficients were running off to infinity (the MLE may not exist; try ``l2 > 0``).
    active_bounds_ : tuple of str
        Free parameters on their bound (with ``bounds``; empty otherwise).
    empty_experts_ : tuple of int
        Experts left without responsibility mass.
    n_free_params_ : int
        Free parameters ``(k - 1)(d_gate + 1) + k (K - 1)(d + 1)``.
    bic_, aic_ : float
        Information criteria of the training fit, from ``log_likelihood_`` (class-weighted where
        ``class_weight`` is given), with ``n`` the number of rows of ``X``, or the sum of
        ``sample_weight`` when given (frequency weights; class weights do not count). :meth:`bic` and
        :meth:`aic` on data give the unweighted ones, with ``n`` its rows.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when ``X`` had string column names.

    See Also
    --------
    fastmoe.fit : the functional interface with integer labels.
    fastmoe.model_selection.select_n_experts : choose ``n_experts`` by BIC or AIC.
    fastmoe.uncertainty.parameter_table : standard errors and Wald intervals.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> X, y = load_iris(return_X_y=True)
    >>> model = make_pipeline(StandardScaler(), MixtureOfExpertsClassifier(2, l2=1.0, random_state=0))
    >>> model.fit(X, y).score(X, y) > 0.9
    True
    """

    def __init__(
        self,
        n_experts=2,
        *,
        gating="identity",
        gating_features=None,
        expert_features=None,
        l2=1.0,
        ridge="centred",
        bounds=None,
        class_weight=None,
        init="search",
        n_init=None,
        max_iter=1000,
        tol=1e-8,
        warm_start=False,
        n_threads=None,
        random_state=None,
        verbose=0,
    ):
        self.n_experts = n_experts
        self.gating = gating
        self.gating_features = gating_features
        self.expert_features = expert_features
        self.l2 = l2
        self.ridge = ridge
        self.bounds = bounds
        self.class_weight = class_weight
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        tags.classifier_tags.multi_class = True
        tags.non_deterministic = False  # deterministic given random_state
        return tags

    # -- fitting ----------------------------------------------------------------------------------------
    def _warm_params(self, n_classes, n_features, inputs):
        """``params_`` when a warm start can use them, else None."""
        params = getattr(self, "params_", None)
        if (
            not self.warm_start
            or params is None
            or params.n_experts != self.n_experts
            or params.n_classes != n_classes
            or params.n_inputs != n_features
            or (params.gating_features, params.expert_features) != inputs
            or not same_gating(params.gating, self.gating)  # another transform: its beta1 means something else
        ):
            return None
        return params

    def _feature_sets(self, n_features):
        """``(gating_features, expert_features)`` as column indices (None: all), resolved against ``X``."""
        names = getattr(self, "feature_names_in_", None)
        return tuple(
            resolve_features(value, n_features, name, None if names is None else list(names))
            for name, value in (("gating_features", self.gating_features), ("expert_features", self.expert_features))
        )

    def fit(self, X, y, sample_weight=None):
        """Fit the mixture by maximum likelihood (generalised EM).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Dense numeric input (sparse matrices are rejected: the kernels are dense).
        y : array-like of shape (n_samples,)
            Class labels of any type; at least two distinct classes.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; the log-likelihood becomes ``sum_n w_n log p(y_n | x_n)``.

        Returns
        -------
        self : MixtureOfExpertsClassifier

        Warns
        -----
        fastmoe.ConvergenceWarning
            When EM stops before converging; ``converged_`` and ``diverged_`` record why.
        """
        data = self._fit_inputs(X, y, sample_weight)
        X, X_fit, y_fit, w_fit = data.X, data.X_fit, data.y_fit, data.w_fit
        inputs, n_classes, n_rows = data.inputs, data.n_classes, data.n_rows
        warm = self._warm_params(n_classes, X.shape[1], inputs)
        result = fit(
            X_fit,
            y_fit,
            self.n_experts,
            n_classes=n_classes,
            gating=self.gating,
            gating_features=inputs[0],
            expert_features=inputs[1],
            feature_names=getattr(self, "feature_names_in_", None),
            init=self.init if warm is None else warm,
            n_init=self.n_init,
            max_iter=self.max_iter,
            tol=self.tol,
            l2=self.l2,
            ridge=self.ridge,
            bounds=data.box,
            sample_weight=w_fit,
            n_threads=self.n_threads,
            random_state=_as_generator(self.random_state),
            verbose=self.verbose,
        )
        # n_samples counts the rows given (as before merging); the criteria's n is the observations: the
        # sum of the sample weights (class weights reweight observations, they add none).
        n_obs = float(n_rows) if data.user_weight is None else float(data.user_weight.sum())
        result = dataclasses.replace(result, n_samples=n_rows, n_observations=n_obs)
        return self._set_fitted(result, data.classes, data.class_weight)

    def _fit_inputs(self, X, y, sample_weight):
        """The checked, encoded and merged inputs of :meth:`fit`, or the exception that names what is
        wrong with them (or with the settings for them), before anything is fitted."""
        if isinstance(self.n_experts, (bool, np.bool_)) or not isinstance(self.n_experts, numbers.Integral):
            raise TypeError(f"n_experts must be an integer, got {self.n_experts!r}")
        if not (isinstance(self.init, MoEParams) or self.init in INIT_STRATEGIES):
            raise ValueError(f"init must be one of {INIT_STRATEGIES} or an MoEParams, got {self.init!r}")
        _check_label_types(y)
        X, y = _validate_data(self, X, y, dtype=np.float64, order="C")
        check_classification_targets(y)
        classes, y_encoded = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"the data contain only one class ({classes.tolist()[0]!r}); a classifier needs samples of at least 2 classes"
            )
        n_rows, n_classes = X.shape[0], classes.shape[0]
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if (sample_weight < 0).any():
                i = int(np.argmin(sample_weight))
                raise ValueError(f"sample_weight must be non-negative; sample_weight[{i}] = {sample_weight[i]}")
        user_weight = sample_weight
        class_weight = _class_weights(self.class_weight, classes, y_encoded, sample_weight)
        if self.class_weight is not None:
            sample_weight = class_weight[y_encoded] * (1.0 if sample_weight is None else sample_weight)
        if sample_weight is not None:
            weighted = np.bincount(y_encoded, weights=sample_weight, minlength=n_classes) > 0
            if not weighted.any():
                raise ValueError("sample_weight (times class_weight) is zero everywhere")
            if weighted.sum() < 2:
                raise ValueError(
                    f"only one class ({classes[weighted].tolist()[0]!r}) has positive weight; a classifier needs samples "
                    "of at least 2 classes"
                )
        inputs = self._feature_sets(X.shape[1])
        if inputs[0] == ():
            raise ValueError("gating_features is empty; the gating needs at least one feature")
        X_fit, y_fit, w_fit = _merge_rows(X, y_encoded, sample_weight)
        box = Bounds.coerce(self.bounds)
        if self.l2 == 0 and not (box is not None and box.compact):  # else the maximum exists anyway
            self._check_enough_rows(X, X_fit.shape[0], n_rows, n_classes, inputs)
        return _FitInputs(X, X_fit, y_fit, w_fit, user_weight, classes, class_weight, n_rows, n_classes, inputs, box)

    def _set_fitted(self, result, classes, class_weight):
        self.classes_ = classes
        self.class_weight_ = class_weight
        self.fit_result_ = result
        self.params_ = result.params
        self.log_likelihood_ = result.loglik
        self.objective_ = result.objective
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.diverged_ = result.diverged
        self.active_bounds_ = result.active_bounds
        self.empty_experts_ = result.empty_experts
        self.n_free_params_ = result.n_free_params
        self.bic_ = result.bic
        self.aic_ = result.aic
        return self

    # -- saving and loading -----------------------------------------------------------------------------
    def save(self, path):
        """Write the fitted estimator as JSON: its settings, ``classes_``, feature names, ``params_`` and
        the fit's record (``fit_result_``), so that :meth:`load` gives back an estimator that predicts
        the same, bit for bit, and knows its labels and columns.

        A callable ``gating`` or labels JSON cannot hold (not numbers, strings or booleans) cannot be
        saved (``ValueError``). ``random_state`` is kept when it is an int or None; a Generator or
        RandomState is saved as None (it matters only for a refit). Use pickle for those.

        Parameters
        ----------
        path : str or path-like
        """
        check_is_fitted(self)
        data = {
            "format": _SAVE_FORMAT,
            "format_version": _SAVE_VERSION,
            "fastmoe_version": _fastmoe_version(),
            "settings": self._json_settings(),
            "classes": {"values": self.classes_.tolist(), "dtype": self.classes_.dtype.str},
            "class_weight": self.class_weight_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": (
                None if getattr(self, "feature_names_in_", None) is None else [str(n) for n in self.feature_names_in_]
            ),
            "params": self.params_.to_dict(),
            "fit_result": _result_to_json(self.fit_result_),
        }
        try:
            text = json.dumps(data, indent=1, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"this estimator cannot be saved as JSON: {exc}") from None
        with open(path, "w") as fh:
            fh.write(text)

    @classmethod
    def load(cls, path) -> "MixtureOfExpertsClassifier":
        """A fitted estimator from a file written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        MixtureOfExpertsClassifier
        """
        with open(path) as fh:
            data = json.load(fh)
        if not isinstance(data, dict) or data.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path} is not a saved MixtureOfExpertsClassifier (no format {_SAVE_FORMAT!r})")
        if data.get("format_version") != _SAVE_VERSION:
            raise ValueError(f"{path} has format version {data.get('format_version')!r}; this fastmoe reads {_SAVE_VERSION}")
        settings = dict(data["settings"])
        settings.setdefault("ridge", "reference")  # saved by fastmoe 0.2, whose only ridge that was
        if isinstance(settings.get("init"), dict):
            settings["init"] = MoEParams.from_dict(settings["init"]["MoEParams"])
        if isinstance(settings.get("class_weight"), list):
            settings["class_weight"] = {label: weight for label, weight in settings["class_weight"]}
        model = cls(**settings)
        params = MoEParams.from_dict(data["params"])
        result = _result_from_json(data["fit_result"], params)
        classes = np.array(data["classes"]["values"], dtype=np.dtype(data["classes"]["dtype"]))
        model.n_features_in_ = int(data["n_features_in"])
        if data["feature_names_in"] is not None:
            model.feature_names_in_ = np.array(data["feature_names_in"], dtype=object)
        return model._set_fitted(result, classes, np.array(data["class_weight"], dtype=np.float64))

    def _json_settings(self):
        settings = self.get_params(deep=False)
        if not isinstance(settings["gating"], str):
            raise ValueError("an estimator with a callable gating cannot be saved as JSON; use pickle")
        if isinstance(settings["init"], MoEParams):
            settings["init"] = {"MoEParams": settings["init"].to_dict()}
        if settings["bounds"] is not None and not isinstance(settings["bounds"], numbers.Real):
            box = Bounds.coerce(settings["bounds"])  # a Bounds or a mapping, its infinite limits left out
            settings["bounds"] = None if box is None else box.to_dict()
        if isinstance(settings["class_weight"], dict):  # JSON keys are strings; labels need not be
            settings["class_weight"] = [[_plain(label), float(w)] for label, w in settings["class_weight"].items()]
        for key in ("gating_features", "expert_features"):  # tuples and arrays as JSON lists
            if settings[key] is not None and not isinstance(settings[key], str):
                settings[key] = [_plain(v) for v in np.asarray(list(settings[key]), dtype=object).tolist()]
        if not (settings["random_state"] is None or isinstance(settings["random_state"], numbers.Integral)):
            settings["random_state"] = None
        return {name: _plain(value) for name, value in settings.items()}

    def _fit_weights(self, codes, sample_weight=None):
        """The weights a fit on labels ``codes`` uses: ``sample_weight`` times the class weights (None: ones)."""
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if self.class_weight is None or np.all(self.class_weight_ == 1.0):
            return sample_weight
        weights = self.class_weight_[np.asarray(codes)]
        return weights if sample_weight is None else weights * sample_weight

    def _design_widths(self, X, inputs):
        """``(n_gate, n_expert)``: the columns of the gating input ``M(x)`` and of the experts' design."""
        gating_features, expert_features = inputs
        X_gate = X if gating_features is None else X[:2, list(gating_features)]
        n_gate = X_gate.shape[1] if isinstance(self.gating, str) else gate_input(self.gating, X_gate[:2]).shape[1]
        return n_gate, X.shape[1] if expert_features is None else len(expert_features)

    def _check_model(self, data):
        """The refusals of :func:`fastmoe.fit` that depend on the number of experts, run on
        :meth:`_fit_inputs`' result without fitting: curvature matrices too large for memory, an
        ``init`` with another number of experts (or classes, or gating)."""
        n_gate, n_expert = self._design_widths(data.X, data.inputs)
        n_free = n_free_params(self.n_experts, data.n_classes, n_expert, n_gate)
        _check_size(self.n_experts, data.n_classes, n_expert, n_free, True, data.y_fit)
        if isinstance(self.init, MoEParams):
            _check_init(self.init, self.gating, self.n_experts, data.X.shape[1], data.n_classes)

    def _check_enough_rows(self, X, n_distinct, n_rows, n_classes, inputs):
        """Without a penalty the MLE needs at least as many distinct rows as free parameters."""
        if not isinstance(self.n_experts, numbers.Integral) or self.n_experts < 1:
            return  # fastmoe.fit names the problem
        n_gate, n_expert = self._design_widths(X, inputs)
        n_free = n_free_params(self.n_experts, n_classes, n_expert, n_gate)
        if n_distinct < n_free:
            distinct = "" if n_distinct == n_rows else f" of which {n_distinct} are distinct rows of positive weight"
            shape = (f"{X.shape[1]} features" if inputs == (None, None)
                     else f"{n_gate} gating and {n_expert} expert features")
            raise ValueError(
                f"X has {n_rows} samples{distinct}, but a model with {self.n_experts} experts, {n_classes} "
                f"classes and {shape} has {n_free} free parameters; with l2=0 the maximum-"
                "likelihood estimate needs at least that many (use l2 > 0)"
            )

    # -- prediction -------------------------------------------------------------------------------------
    def _check_X(self, X):
        check_is_fitted(self)
        return _validate_data(self, X, dtype=np.float64, order="C", reset=False)

    def predict_log_proba(self, X):
        """Log class probabilities ``log P(Y = s | x)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns follow ``classes_``.
        """
        X = self._check_X(X)
        return _predict.predict_log_proba(self.params_, X, self.n_threads)

    def predict_proba(self, X):
        """Class probabilities ``P(Y = s | x)``; columns follow ``classes_`` and rows sum to one.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Most probable class label for each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        log_proba = self.predict_log_proba(X)
        return self.classes_[np.argmax(log_proba, axis=1)]

    def gate_proba(self, X):
        """Gating probabilities ``pi_i(x)``: which expert speaks for each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_experts)
        """
        X = self._check_X(X)
        return _predict.gate_proba(self.params_, X, self.n_threads)

    # -- likelihood and information criteria ------------------------------------------------------------
    def encode_labels(self, y):
        """Labels as integer codes into ``classes_`` (the labels the core functions take).

        Parameters
        ----------
        y : array-like of shape (n_samples,)
            Labels from ``classes_``; an unseen label is an error.

        Returns
        -------
        ndarray of shape (n_samples,)
            ``codes`` with ``classes_[codes] == y``.
        """
        check_is_fitted(self)
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"y must be 1-d (n_samples,), got shape {y.shape}")
        try:
            codes = np.minimum(np.searchsorted(self.classes_, y), self.classes_.shape[0] - 1)
            unseen = self.classes_[codes] != y
        except TypeError:  # labels not comparable with classes_ (e.g. numbers against strings)
            raise ValueError(
                f"y has labels of type {y.dtype} that do not match classes_ {self.classes_.tolist()}"
            ) from None
        if unseen.any():
            raise ValueError(
                f"y contains labels not seen during fit: {np.unique(y[unseen]).tolist()}; "
                f"classes_ = {self.classes_.tolist()}"
            )
        return codes

    def _check_X_y(self, X, y):
        X = self._check_X(X)
        codes = self.encode_labels(y)
        if codes.shape[0] != X.shape[0]:
            raise ValueError(f"y must have shape ({X.shape[0]},), got {np.shape(y)}")
        return X, codes

    def loglik_samples(self, X, y):
        """Per-sample log-likelihoods ``log p(y_n | x_n)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Labels from ``classes_``.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X, y = self._check_X_y(X, y)
        return _predict.loglik_samples(self.params_, X, y, self.n_threads)

    def loglik(self, X, y, sample_weight=None):
        """Total log-likelihood ``sum_n w_n log p(y_n | x_n)`` (the negative of the summed log-loss).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        float
        """
        X, y = self._check_X_y(X, y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        return _predict.loglik(self.params_, X, y, sample_weight, self.n_threads)

    def bic(self, X, y):
        """Bayesian information criterion ``-2 loglik + p log n`` of ``(X, y)``; lower is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        float
        """
        n_samples = _num_rows(X)
        return -2.0 * self.loglik(X, y) + self.n_free_params_ * np.log(n_samples)

    def aic(self, X, y):
        """Akaike information criterion ``-2 loglik + 2 p`` of ``(X, y)``; lower is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        float
        """
        return -2.0 * self.loglik(X, y) + 2.0 * self.n_free_params_

    # -- uncertainty --------------------------------------------------------------------------------------
    def parameter_table(self, X, y, *, sample_weight=None, level=0.95, covariance="auto"):
        """Estimates, standard errors and Wald intervals of the free parameters.

        Uses the information of the log-likelihood of ``(X, y)`` (normally the training data) at
        ``params_``; see :func:`fastmoe.uncertainty.parameter_table`. Classes are indexed as in
        ``classes_``. With the default ridge (``l2 > 0``) the covariance is the inverse penalised
        Hessian; ``l2=0`` gives the classical observed-information covariance of the MLE.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None
        level : float, default=0.95
            Coverage of the Wald intervals.
        covariance : {"auto", "observed", "penalised", "sandwich"}, default="auto"

        Returns
        -------
        ParameterTable
        """
        from .uncertainty import parameter_table

        X = self._check_X(X)
        return parameter_table(
            self, X, y, sample_weight=sample_weight, level=level, covariance=covariance, n_threads=self.n_threads
        )

    def summary(self, X=None, y=None, *, sample_weight=None, level=0.95, covariance="auto", n_boot=None,
                random_state=None):
        """A statsmodels-style summary: header, experts' gate shares, named coefficients, standard errors.

        Coefficients are named by ``feature_names_in_`` (or ``x0, x1, ...``) and ``classes_``; the
        reference expert and class are stated. Standard errors, intervals and gate shares need the
        training data ``(X, y)``; without them the summary shows the estimates only.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), optional
        y : array-like of shape (n_samples,), optional
        sample_weight : array-like of shape (n_samples,), optional
        level : float, default=0.95
        covariance : {"auto", "observed", "penalised", "sandwich"}, default="auto"
            See :func:`fastmoe.parameter_table`.
        n_boot : int, optional
            Standard errors and intervals from this many parametric-bootstrap refits instead of Wald's
            (see :func:`fastmoe.summary.summarize`).
        random_state : None, int or numpy.random.Generator
            Seeds the bootstrap.

        Returns
        -------
        fastmoe.summary.Summary
            ``print(summary)`` for text, ``summary.to_frame()`` for a pandas DataFrame.
        """
        from .summary import summarize

        check_is_fitted(self)
        if X is not None:
            X = self._check_X(X)
        return summarize(self, X, y, sample_weight=sample_weight, level=level, covariance=covariance,
                         n_boot=n_boot, random_state=random_state)


_SAVE_FORMAT = "fastmoe.MixtureOfExpertsClassifier"
_SAVE_VERSION = 1


def _fastmoe_version():
    from . import __version__

    return __version__


def _plain(value):
    """NumPy scalars as Python numbers (JSON knows only the latter)."""
    return value.item() if isinstance(value, np.generic) else value


def _result_to_json(result):
    """A FitResult's fields but ``params`` as JSON values; arrays and tuples tagged so they come back."""
    out = {}
    for item in dataclasses.fields(result):
        value = getattr(result, item.name)
        if item.name == "params":
            continue
        if isinstance(value, np.ndarray):
            value = {"ndarray": value.tolist()}
        elif isinstance(value, tuple):
            value = {"tuple": [v if isinstance(v, tuple) else _plain(v) for v in value]}
        elif isinstance(value, StartLog):
            value = {"start_log": value.to_dict()}
        elif isinstance(value, Bounds):
            value = {"bounds": value.to_dict()}
        out[item.name] = _plain(value)
    return out


def _result_from_json(data, params):
    fields = {item.name for item in dataclasses.fields(FitResult)}
    kwargs = {"params": params}
    for name, value in data.items():
        if name not in fields:
            continue  # written by another fastmoe version; not part of this FitResult
        if isinstance(value, dict) and "ndarray" in value:
            value = np.array(value["ndarray"], dtype=np.float64)
        elif isinstance(value, dict) and "tuple" in value:
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value["tuple"])
        elif isinstance(value, dict) and "start_log" in value:
            value = StartLog.from_dict(value["start_log"])
        elif isinstance(value, dict) and "bounds" in value:
            value = Bounds(**value["bounds"])
        kwargs[name] = value
    if "ridge" not in data:  # written by fastmoe 0.2, whose only ridge this was
        kwargs["ridge"] = "reference"
    return FitResult(**kwargs)


def _num_rows(X):
    shape = getattr(X, "shape", None)
    return shape[0] if shape is not None else len(X)
