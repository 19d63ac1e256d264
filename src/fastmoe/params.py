"""The parameter object, its packed forms, the free-parameter vector and its box (Bounds) of a softmax-gated multinomial-logistic mixture of experts.

Shapes follow ``MODEL.md`` section 1: ``beta0 (k,)``, ``beta1 (k, d_gate)``, ``a (k, K, d)``, ``b (k, K)``
and the gating transform ``M`` that maps the gating features of ``x`` to the gating input ``M(x)``
(``d_gate`` features). The gating and the experts may read different columns of the data
(``gating_features``, ``expert_features``; issue 15): the experts read ``X[:, expert_features]``
(``d`` columns, possibly none: intercept-only experts) and the gating ``M(X[:, gating_features])``.
This module owns that selection (:func:`designs`, :meth:`MoEParams.designs`, :func:`resolve_features`);
a set left at None is all of ``X``, read without a copy. The engine works on
the packed forms ``W = [beta0 | beta1]`` of shape ``(k, 1 + d_gate)`` and ``V = [b | a]`` of shape
``(k, K, 1 + d)``: column 0 is always the intercept.

This module is the one owner of the *free-parameter vector*: the entries of ``(W, V)`` left free by the
reference conventions (last expert's gating and every expert's last class fixed at zero), their order,
their names and which of them are slopes. The Newton finish, the information matrix and the ridge
all use it through :func:`free_vector`, :func:`from_free_vector`, :func:`free_parameter_names` and
:func:`slope_masks`. :class:`Bounds`, the box of a box-constrained fit, is stated on the same free
coordinates (:meth:`Bounds.packed` gives its limits shaped like ``W`` and ``V``).
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

__all__ = [
    "Bounds",
    "MoEParams",
    "GATING_TRANSFORMS",
    "gate_input",
    "resolve_features",
    "free_parameter_names",
    "free_parameters",
]


def _identity(X):
    return X


def _sigmoid(X):
    # scipy.special is imported on first use: it adds ~0.1 s to ``import fastmoe`` (issue 13, item 4).
    from scipy.special import expit

    return expit(X)


#: Built-in gating transforms. ``identity`` is the standard softmax gating; the bounded ones give the
#: *modified* softmax gating of Nguyen et al. (ICML 2024), applied to the gating input only.
GATING_TRANSFORMS = {"identity": _identity, "tanh": np.tanh, "sigmoid": _sigmoid}

Gating = Union[str, Callable[[np.ndarray], np.ndarray]]

# The keys of a parameter dict that say which columns the gating and the experts read.
_INPUT_KEYS = ("gating_features", "expert_features", "n_inputs")


def _check_gating(gating):
    if isinstance(gating, str):
        if gating not in GATING_TRANSFORMS:
            raise ValueError(
                f"unknown gating transform {gating!r}; expected one of {sorted(GATING_TRANSFORMS)} "
                "or a callable mapping X (n, d) to M(X) (n, d_gate)"
            )
        return gating
    if callable(gating):
        # A built-in transform given as its function (np.tanh) is that transform: it is kept by name, so
        # that it compares, prints and saves as one.
        for name, transform in GATING_TRANSFORMS.items():
            if gating is transform:
                return name
        return gating
    raise TypeError(f"gating must be a transform name or a callable, got {type(gating).__name__}")


def gating_name(gating) -> str:
    """A transform's name, for messages and summaries: the built-in name, or the callable's ``__name__``.
    Not an identity: :func:`same_gating` tells transforms apart."""
    gating = _check_gating(gating)
    return gating if isinstance(gating, str) else getattr(gating, "__name__", "callable")


def same_gating(first, second) -> bool:
    """Whether two gatings are the same transform: the same built-in (by name or by its function), or the
    same callable object. A callable's name says nothing (every lambda is ``<lambda>``, and a user's
    function may be called ``sigmoid``), so a callable other than a built-in's equals no name."""
    first, second = _check_gating(first), _check_gating(second)
    if isinstance(first, str) or isinstance(second, str):
        return first == second
    return first is second


def n_free_params(n_experts, n_classes, n_features, n_gate_features) -> int:
    """``(k - 1)(d_gate + 1) + k (K - 1)(d + 1)``: the count after the reference conventions."""
    return (n_experts - 1) * (n_gate_features + 1) + n_experts * (n_classes - 1) * (n_features + 1)


def free_vector(W, V):
    """The free parameters of packed ``(W, V)``: ``W[:k-1].ravel()`` then ``V[i, :K-1].ravel()`` per expert.

    Within the gating block each free expert contributes ``[beta0_i, beta1_i...]``; within expert ``i``
    each free class ``s`` contributes ``[b_si, a_si...]``. Every gradient, Hessian and information matrix
    over all free parameters uses this order.
    """
    k, K = V.shape[0], V.shape[1]
    return np.concatenate([W[: k - 1].ravel(), V[:, : K - 1].ravel()])


def free_column_values(gate, expert, intercept, n_experts, n_classes):
    """A per-column quantity of the gating and expert designs laid out on the free vector (in
    :func:`free_vector`'s order): ``intercept`` at every intercept, ``gate[j]`` at every gating slope on
    gating column ``j``, ``expert[j]`` at every expert slope on expert column ``j``."""
    W = np.tile(np.concatenate([[intercept], gate]), (n_experts, 1))
    V = np.tile(np.concatenate([[intercept], expert]), (n_experts, n_classes, 1))
    return free_vector(W, V)


def from_free_vector(theta, W, V):
    """Copies of ``(W, V)`` with their free entries replaced by ``theta`` (inverse of :func:`free_vector`)."""
    k, K = V.shape[0], V.shape[1]
    W, V = W.copy(), V.copy()
    n_gate = W[: k - 1].size
    W[: k - 1] = theta[:n_gate].reshape(W[: k - 1].shape)
    V[:, : K - 1] = theta[n_gate:].reshape(V[:, : K - 1].shape)
    return W, V


def slope_masks(n_experts, n_classes, n_features, n_gate_features):
    """1.0 where a free parameter is a slope, 0.0 where it is an intercept.

    Returns
    -------
    gate : ndarray of shape ((k - 1) (1 + d_gate),)
        The gating block.
    expert : ndarray of shape ((K - 1) (1 + d),)
        One expert's block (the same for every expert); the whole vector's mask is
        ``concatenate([gate, tile(expert, k)])``.
    """
    gate = np.ones((n_experts - 1, n_gate_features + 1))
    gate[:, 0] = 0.0
    expert = np.ones((n_classes - 1, n_features + 1))
    expert[:, 0] = 0.0
    return gate.ravel(), expert.ravel()


@dataclass(frozen=True)
class Bounds:
    """The box of a box-constrained fit: ``|theta_j| <= limit`` for every free parameter ``theta_j``.

    The theory of the model (MODEL.md; Nguyen et al., ICML 2024) takes the maximum likelihood over a
    *compact* parameter space; a box on the free parameters is such a space, and in it the maximum
    always exists (no quasi-separation can send coefficients to infinity). The box is stated on the
    **reference-normalised** coordinates (:func:`free_parameter_names`: the last expert's gating and
    every expert's last class are 0), which is what a compact set of identified parameters means: the
    raw ``(beta0, beta1)`` or ``(a, b)`` of an un-normalised parameter are only defined up to a shift.
    The box is symmetric about 0, so it always holds the reference entries (0) and the zero start.
    Those coordinates are differences to the last expert and the last class, so the box (the feasible
    set, not only its coordinates) depends on which expert and which class are last: see
    ``docs/bounds.md``.

    Parameters
    ----------
    gate_slope, gate_intercept, expert_slope, expert_intercept : float, default=inf
        Positive limits for the gating slopes ``beta1``, gating intercepts ``beta0``, expert slopes ``a``
        and expert intercepts ``b``; ``inf`` leaves that group free.

    Examples
    --------
    ``fit(..., bounds=10.0)`` is ``Bounds.uniform(10.0)``; ``fit(..., bounds={"expert_slope": 5.0})``
    bounds the expert slopes only.
    """

    gate_slope: float = np.inf
    gate_intercept: float = np.inf
    expert_slope: float = np.inf
    expert_intercept: float = np.inf

    GROUPS = ("gate_slope", "gate_intercept", "expert_slope", "expert_intercept")

    def __post_init__(self):
        for name in self.GROUPS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (float(value) > 0.0):
                raise ValueError(f"bounds.{name} must be a positive number (or inf for none), got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def uniform(cls, limit) -> "Bounds":
        """The same limit for every free parameter."""
        return cls(limit, limit, limit, limit)

    @classmethod
    def coerce(cls, value):
        """``bounds`` as :func:`fastmoe.fit` takes it: None, a positive number, a mapping or a ``Bounds``.

        Returns None when nothing is bounded (None, or every limit infinite).
        """
        if value is None:
            return None
        if isinstance(value, Bounds):
            bounds = value
        elif isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
            return cls.coerce(value.item())  # a 0-d array is the number it holds
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not float(value) > 0.0:  # one number for every group: name it as given, not as one group
                raise ValueError(f"bounds must be a positive number (or inf for none), got {value!r}")
            bounds = cls.uniform(value)
        elif isinstance(value, dict) or hasattr(value, "keys"):
            unknown = set(value) - set(cls.GROUPS)
            if unknown:
                raise ValueError(f"bounds has unknown keys {sorted(map(str, unknown))}; expected some of {list(cls.GROUPS)}")
            bounds = cls(**{key: (np.inf if limit is None else limit) for key, limit in value.items()})
        else:
            raise TypeError(
                f"bounds must be a positive number, a mapping of {list(cls.GROUPS)} or a fastmoe.Bounds, "
                f"got {type(value).__name__}")
        return None if bounds.unbounded else bounds

    @property
    def unbounded(self) -> bool:
        """Every limit is infinite."""
        return all(np.isinf(getattr(self, name)) for name in self.GROUPS)

    @property
    def slopes_bounded(self) -> bool:
        """Every slope (gating and expert) is bounded: no coefficient can run off along a separating direction."""
        return bool(np.isfinite(self.gate_slope) and np.isfinite(self.expert_slope))

    @property
    def compact(self) -> bool:
        """Every free parameter is bounded: the box is compact and the constrained maximum exists."""
        return not any(np.isinf(getattr(self, name)) for name in self.GROUPS)

    def packed(self, n_experts, n_classes, n_features, n_gate_features):
        """The limits shaped like the packed ``W`` (``(k, 1 + d_gate)``) and ``V`` (``(k, K, 1 + d)``).

        Column 0 holds the intercepts' limit, the rest the slopes'. The reference entries get limits too
        (they are 0, inside any box), so that projection is one clip of the whole arrays.
        """
        W = np.full((n_experts, n_gate_features + 1), self.gate_slope)
        W[:, 0] = self.gate_intercept
        V = np.full((n_experts, n_classes, n_features + 1), self.expert_slope)
        V[:, :, 0] = self.expert_intercept
        return W, V

    def to_dict(self) -> dict:
        """The finite limits by group (JSON-ready)."""
        return {name: getattr(self, name) for name in self.GROUPS if np.isfinite(getattr(self, name))}


def gate_input(gating, X):
    """Return the gating design ``M(X)`` as a C-contiguous float64 array.

    For ``"identity"`` this is ``X`` itself (no copy), so standard gating costs no extra memory.
    """
    gating = _check_gating(gating)
    if isinstance(gating, str):
        if gating == "identity":
            return X
        return np.ascontiguousarray(GATING_TRANSFORMS[gating](X), dtype=np.float64)
    Z = np.asarray(gating(X))
    if Z.dtype.kind == "c":
        # np.asarray(..., dtype=float64) would drop the imaginary part with only a ComplexWarning.
        raise ValueError(f"the gating callable returned complex values (dtype {Z.dtype}); M(X) must be real")
    if Z.dtype.kind not in "fiub":
        raise ValueError(f"the gating callable must return real numbers, got dtype {Z.dtype}")
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] != X.shape[0]:
        raise ValueError(
            f"the gating callable must map X of shape {X.shape} to an array (n_samples={X.shape[0]}, d_gate); "
            f"got shape {Z.shape}"
        )
    if not np.isfinite(Z).all():
        raise ValueError("the gating callable returned NaN or inf")
    return Z


def select_columns(X, features):
    """``X[:, features]`` as a C-contiguous float64 array; ``X`` itself (no copy) when ``features`` is None."""
    if features is None:
        return X
    return np.ascontiguousarray(X[:, list(features)], dtype=np.float64)


def designs(gating, X, gating_features=None, expert_features=None):
    """The experts' design ``X[:, expert_features]`` and the gating design ``M(X[:, gating_features])``.

    A set that is None reads ``X`` itself, without a copy; and when the gating is the identity on the
    same columns as the experts, both designs are one array (``Z is X_expert``), which the kernels
    recognise and load once.

    Returns
    -------
    X_expert : ndarray of shape (n_samples, d)
    Z : ndarray of shape (n_samples, d_gate)
    """
    X_expert = select_columns(X, expert_features)
    if gating_features == expert_features and isinstance(gating, str) and gating == "identity":
        return X_expert, X_expert
    return X_expert, gate_input(gating, select_columns(X, gating_features))


def _check_feature_tuple(name, features):
    """A feature set as a tuple of distinct non-negative column indices, or None (all columns)."""
    if features is None:
        return None
    if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
        raise TypeError(f"{name} must be None or a sequence of column indices, got {features!r}")
    values = list(np.asarray(features, dtype=object).ravel()) if isinstance(features, np.ndarray) else list(features)
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must hold integer column indices, got {value!r} ({type(value).__name__})")
        if value < 0:
            raise ValueError(f"{name} has a negative column index {value}; indices count from 0")
    values = tuple(int(v) for v in values)
    if len(set(values)) != len(values):
        repeated = next(v for v in values if values.count(v) > 1)
        raise ValueError(f"{name} names column {repeated} twice")
    return values


def resolve_features(features, n_inputs, name, feature_names=None):
    """A user's feature set as column indices of an ``X`` with ``n_inputs`` columns.

    Parameters
    ----------
    features : None, sequence of int, boolean mask or sequence of str
        None keeps every column. Integer indices (negative ones count from the end, as in NumPy), a
        boolean mask of length ``n_inputs``, or column names (with ``feature_names``, e.g. the columns
        of a DataFrame). An empty sequence is an empty set.
    n_inputs : int
        Columns of ``X``.
    name : str
        The argument's name, for error messages.
    feature_names : sequence of str, optional
        Names of ``X``'s columns, to resolve string entries.

    Returns
    -------
    tuple of int or None
        Distinct indices in the order given; None when the set is every column in order (so that the
        kernels read ``X`` itself, without a copy).
    """
    if features is None:
        return None
    if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
        raise TypeError(f"{name} must be None or a sequence of column indices or names, got {features!r}")
    values = np.asarray(features).ravel().tolist() if isinstance(features, np.ndarray) else list(features)
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        if len(values) != n_inputs:
            raise ValueError(f"{name} is a boolean mask of length {len(values)} but X has {n_inputs} columns")
        values = [j for j, keep in enumerate(values) if keep]
    elif any(isinstance(v, str) for v in values):
        if feature_names is None:
            raise ValueError(f"{name} names columns by string but X has no column names (pass a DataFrame, fit's feature_names, or indices)")
        names = [str(n) for n in feature_names]
        unknown = [v for v in values if not isinstance(v, str) or v not in names]
        if unknown:
            raise ValueError(f"{name} names {unknown!r}, which are not columns of X (columns: {names})")
        values = [names.index(v) for v in values]
    checked = []
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must hold column indices, names or booleans, got {value!r} ({type(value).__name__})")
        if not -n_inputs <= value < n_inputs:
            raise ValueError(f"{name} has column index {value} but X has {n_inputs} columns (0..{n_inputs - 1})")
        checked.append(int(value) % n_inputs)
    checked = _check_feature_tuple(name, checked)
    return None if checked == tuple(range(n_inputs)) else checked


def _non_numbers(value):
    """The first entry of a (nested) array-like that is not a real number: a string, a boolean, a complex
    number or another object, or None when every entry is one. NumPy would convert ``"1.5"`` and ``True``
    to floats without a word, and keep only the real part of a complex number."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fiu":
            return None
        if value.dtype.kind != "O":
            return value.flat[0] if value.size else value.dtype
        value = value.tolist()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple, np.ndarray)):
            stack.extend(reversed(item.tolist() if isinstance(item, np.ndarray) else item))  # first entry first
        elif isinstance(item, (bool, np.bool_)) or not isinstance(item, (numbers.Real, np.floating, np.integer)):
            return item
    return None


def _as_float_array(name, value, ndim):
    bad = _non_numbers(value)
    if bad is not None:
        raise TypeError(f"{name} must hold real numbers, got {bad!r} ({type(bad).__name__})")
    try:
        arr = np.array(value, dtype=np.float64, copy=True)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} cannot be read as a {ndim}-d array of numbers: {exc}") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got {arr.ndim}-d with shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False, repr=False)
class MoEParams:
    """Parameters of a softmax-gated multinomial-logistic mixture of experts.

    ``P(Y = s | x) = sum_i softmax_i(beta1_i . M(x) + beta0_i) * softmax_s(a_si . x + b_si)``.

    Parameters
    ----------
    beta0 : array-like of shape (n_experts,)
        Gating intercepts.
    beta1 : array-like of shape (n_experts, n_gate_features)
        Gating slopes, acting on ``M(x)``.
    a : array-like of shape (n_experts, n_classes, n_features)
        Expert slopes: ``a[i, s]`` is the slope of class ``s`` in expert ``i``; ``n_features`` may be 0
        when ``expert_features=()`` (intercept-only experts).
    b : array-like of shape (n_experts, n_classes)
        Expert intercepts.
    gating : {"identity", "tanh", "sigmoid"} or callable, default="identity"
        The gating transform ``M``. ``"identity"`` is standard softmax gating; a bounded transform gives
        the modified softmax gating. A callable maps the gating columns ``X[:, gating_features] (n, .)``
        to ``M (n, d_gate)``.
    gating_features : sequence of int or None, default=None
        Columns of ``X`` the gating reads (at least one); None: all of them.
    expert_features : sequence of int or None, default=None
        Columns of ``X`` the experts read; None: all of them; ``()``: none, every expert is a constant
        class distribution (the covariate latent-class model).
    n_inputs : int or None, default=None
        Columns of the ``X`` the model is evaluated on. Derived when a set is None (and, for a named
        transform, from ``beta1``); otherwise defaults to the largest index named plus one.

    Notes
    -----
    Softmax is invariant to a common shift of all experts' gating parameters and of all classes'
    parameters within an expert; :meth:`normalized` moves to the reference conventions (last expert
    and last class zero) without changing the model. Arrays are stored read-only. A feature set equal
    to all columns in order is stored as None.
    """

    beta0: np.ndarray
    beta1: np.ndarray
    a: np.ndarray
    b: np.ndarray
    gating: Gating = field(default="identity")
    gating_features: Union[tuple, None] = None
    expert_features: Union[tuple, None] = None
    n_inputs: Union[int, None] = None

    def __post_init__(self):
        beta0 = _as_float_array("beta0", self.beta0, 1)
        beta1 = _as_float_array("beta1", self.beta1, 2)
        a = _as_float_array("a", self.a, 3)
        b = _as_float_array("b", self.b, 2)
        k = beta0.shape[0]
        if k < 1:
            raise ValueError("a mixture needs at least one expert; beta0 is empty")
        if beta1.shape[0] != k:
            raise ValueError(f"beta1 has {beta1.shape[0]} rows but beta0 has {k} experts")
        if a.shape[0] != k or b.shape[0] != k:
            raise ValueError(f"a has {a.shape[0]} and b has {b.shape[0]} experts but beta0 has {k}")
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"a has {a.shape[1]} classes but b has {b.shape[1]}")
        if a.shape[1] < 2:
            raise ValueError(f"the experts need at least 2 classes, got {a.shape[1]}")
        gating = _check_gating(self.gating)
        gating_features, expert_features, n_inputs = self._check_inputs(gating, beta1, a)
        for name, value in (("beta0", beta0), ("beta1", beta1), ("a", a), ("b", b), ("gating", gating),
                            ("gating_features", gating_features), ("expert_features", expert_features),
                            ("n_inputs", n_inputs)):
            object.__setattr__(self, name, value)

    def _check_inputs(self, gating, beta1, a):
        """Check the feature sets against the slopes; return them (None for all columns) and ``n_inputs``."""
        gating_features = _check_feature_tuple("gating_features", self.gating_features)
        expert_features = _check_feature_tuple("expert_features", self.expert_features)
        if gating_features == ():
            raise ValueError("gating_features is empty; the gating needs at least one feature")
        if beta1.shape[1] < 1:
            raise ValueError(f"need at least one gating feature; got beta1.shape={beta1.shape}")
        if expert_features is None and a.shape[2] < 1:
            raise ValueError(
                f"need at least one feature; got a.shape={a.shape} (intercept-only experts need expert_features=())"
            )
        if expert_features is not None and len(expert_features) != a.shape[2]:
            raise ValueError(
                f"expert_features names {len(expert_features)} columns but a has {a.shape[2]} slopes per class"
            )
        named = isinstance(gating, str)
        if named and gating_features is not None and len(gating_features) != beta1.shape[1]:
            raise ValueError(
                f"gating {gating!r} keeps the number of features, so beta1 needs {len(gating_features)} columns "
                f"(gating_features names {len(gating_features)}), got {beta1.shape[1]}"
            )
        if named and gating_features is None and expert_features is None and beta1.shape[1] != a.shape[2]:
            raise ValueError(
                f"gating {gating!r} keeps the number of features, so beta1 needs {a.shape[2]} columns "
                f"(a has {a.shape[2]} features), got {beta1.shape[1]}"
            )
        # n_inputs is known exactly from a set that is all of X, at least the largest index named plus one.
        exact = {}
        if expert_features is None:
            exact["a (all columns to the experts)"] = a.shape[2]
        if gating_features is None and named:
            exact["beta1 (all columns to the gating)"] = beta1.shape[1]
        named_columns = (gating_features or ()) + (expert_features or ())
        at_least = max(named_columns) + 1 if named_columns else 1
        n_inputs = self.n_inputs
        if n_inputs is not None:
            if isinstance(n_inputs, (bool, np.bool_)) or not isinstance(n_inputs, numbers.Integral):
                raise TypeError(f"n_inputs must be an integer or None, got {n_inputs!r}")
            n_inputs = int(n_inputs)
        for source, value in exact.items():
            if n_inputs is None:
                n_inputs = value
            elif value != n_inputs:
                raise ValueError(f"{source} gives {value} input columns but n_inputs={n_inputs}")
        if n_inputs is None:
            n_inputs = at_least
        if n_inputs < at_least:
            raise ValueError(f"the feature sets name column {at_least - 1} but n_inputs={n_inputs}")
        everything = tuple(range(n_inputs))
        return (None if gating_features == everything else gating_features,
                None if expert_features == everything else expert_features, n_inputs)

    # -- shapes ---------------------------------------------------------------------------------------
    @property
    def n_experts(self) -> int:
        return self.beta0.shape[0]

    @property
    def n_classes(self) -> int:
        return self.a.shape[1]

    @property
    def n_features(self) -> int:
        """Expert slopes per class, ``d``: the number of columns the experts read (0 for intercept-only)."""
        return self.a.shape[2]

    @property
    def n_gate_features(self) -> int:
        return self.beta1.shape[1]

    @property
    def n_free_params(self) -> int:
        """``(k - 1)(d_gate + 1) + k (K - 1)(d + 1)``: the count after the reference conventions."""
        return n_free_params(self.n_experts, self.n_classes, self.n_features, self.n_gate_features)

    @property
    def gating_name(self) -> str:
        return gating_name(self.gating)

    @property
    def separate_inputs(self) -> bool:
        """Whether the gating or the experts read a subset of the columns of ``X``."""
        return self.gating_features is not None or self.expert_features is not None

    @property
    def inputs(self) -> dict:
        """The keyword arguments that say which columns each part reads (``gating_features``,
        ``expert_features``, ``n_inputs``): pass them on to build parameters of the same model."""
        return {"gating_features": self.gating_features, "expert_features": self.expert_features,
                "n_inputs": self.n_inputs}

    def gating_columns(self) -> tuple:
        """Columns of ``X`` the gating reads."""
        return tuple(range(self.n_inputs)) if self.gating_features is None else self.gating_features

    def expert_columns(self) -> tuple:
        """Columns of ``X`` the experts read (empty for intercept-only experts)."""
        return tuple(range(self.n_inputs)) if self.expert_features is None else self.expert_features

    # -- conventions ----------------------------------------------------------------------------------
    def normalized(self) -> "MoEParams":
        """Return the same model in the reference conventions (last expert and last class zero)."""
        return MoEParams(
            beta0=self.beta0 - self.beta0[-1],
            beta1=self.beta1 - self.beta1[-1],
            a=self.a - self.a[:, -1:, :],
            b=self.b - self.b[:, -1:],
            gating=self.gating,
            **self.inputs,
        )

    def gate_input(self, X) -> np.ndarray:
        """The gating design ``M(X[:, gating_features])`` for this parameter set's transform.

        ``X`` itself (no copy) for standard gating on all columns.
        """
        return gate_input(self.gating, select_columns(X, self.gating_features))

    def expert_input(self, X) -> np.ndarray:
        """The experts' design ``X[:, expert_features]``: ``X`` itself (no copy) when they read all columns."""
        return select_columns(X, self.expert_features)

    def designs(self, X):
        """``(X_expert, Z)``: the experts' and the gating's designs from the full ``X`` (see :func:`designs`)."""
        return designs(self.gating, X, self.gating_features, self.expert_features)

    def split_expert(self, expert) -> "MoEParams":
        """The same model with one more expert: ``expert`` in two identical halves.

        The copy is appended as the last expert; both halves get the gating intercept
        ``beta0 - log 2``, so every gating share and every class probability is unchanged. A fit
        with ``k + 1`` experts started here begins at the ``k``-expert fit's likelihood, and EM never
        goes below it.
        """
        if isinstance(expert, (bool, np.bool_)) or not isinstance(expert, numbers.Integral) \
                or not 0 <= expert < self.n_experts:
            raise ValueError(f"expert must be an integer in 0..{self.n_experts - 1}, got {expert!r}")
        beta0 = np.append(self.beta0, self.beta0[expert])
        beta0[[expert, -1]] -= np.log(2.0)
        return MoEParams(
            beta0=beta0,
            beta1=np.vstack([self.beta1, self.beta1[expert]]),
            a=np.concatenate([self.a, self.a[expert][None]]),
            b=np.vstack([self.b, self.b[expert]]),
            gating=self.gating,
            **self.inputs,
        ).normalized()

    # -- packed forms used by the engine ----------------------------------------------------------------
    def packed(self):
        """Return ``(W, V)``: ``W = [beta0 | beta1]`` (k, 1+d_gate) and ``V = [b | a]`` (k, K, 1+d)."""
        W = np.empty((self.n_experts, 1 + self.n_gate_features))
        W[:, 0] = self.beta0
        W[:, 1:] = self.beta1
        V = np.empty((self.n_experts, self.n_classes, 1 + self.n_features))
        V[:, :, 0] = self.b
        V[:, :, 1:] = self.a
        return W, V

    @classmethod
    def from_packed(cls, W, V, gating="identity", **inputs) -> "MoEParams":
        """Parameters from packed ``(W, V)``; ``inputs`` are the feature sets (see :attr:`inputs`)."""
        W = np.asarray(W, dtype=np.float64)
        V = np.asarray(V, dtype=np.float64)
        return cls(beta0=W[:, 0], beta1=W[:, 1:], a=V[:, :, 1:], b=V[:, :, 0], gating=gating, **inputs)

    def free_vector(self):
        """The free-parameter vector of these parameters as given (see :func:`free_vector`)."""
        return free_vector(*self.packed())

    # -- comparison, (de)serialisation ------------------------------------------------------------------
    def allclose(self, other: "MoEParams", rtol=1e-7, atol=1e-9) -> bool:
        """Whether two parameter sets agree entry by entry (same expert order, same conventions)."""
        return (
            same_gating(self.gating, other.gating)
            and self.inputs == other.inputs
            and all(
                getattr(self, f).shape == getattr(other, f).shape
                and np.allclose(getattr(self, f), getattr(other, f), rtol=rtol, atol=atol)
                for f in ("beta0", "beta1", "a", "b")
            )
        )

    def to_dict(self) -> dict:
        """Plain-Python form (lists and a transform name), ready for JSON."""
        if not isinstance(self.gating, str):
            raise ValueError("parameters with a callable gating transform cannot be serialised; use a named one")
        data = {
            "beta0": self.beta0.tolist(),
            "beta1": self.beta1.tolist(),
            "a": self.a.tolist(),
            "b": self.b.tolist(),
            "gating": self.gating,
        }
        # Only a model with separate inputs writes the feature sets: every other dict (and the digest of
        # every experiment defined by one) stays as it was before feature sets existed.
        # A set that is all of X is left out rather than written as null, which TOML cannot hold.
        if self.separate_inputs:
            for key in ("gating_features", "expert_features"):
                if getattr(self, key) is not None:
                    data[key] = list(getattr(self, key))
            data["n_inputs"] = self.n_inputs
        return data

    @classmethod
    def from_dict(cls, data: dict, gating=None) -> "MoEParams":
        """Inverse of :meth:`to_dict`; ``gating`` overrides the stored transform.

        The dict holds ``beta0, beta1, a, b`` and optionally ``gating`` (a transform name; ``"identity"``
        when left out) and ``gating_features``, ``expert_features``, ``n_inputs`` (see the class). Any
        other key, usually a typo, is an error, and so is ``gating: null``.
        """
        if not isinstance(data, dict):
            raise TypeError(f"expected a dict of parameter arrays, got {type(data).__name__}")
        missing = {"beta0", "beta1", "a", "b"} - set(data)
        if missing:
            raise ValueError(f"parameter dict lacks {sorted(missing)}")
        unknown = set(data) - {"beta0", "beta1", "a", "b", "gating", *_INPUT_KEYS}
        if unknown:
            raise ValueError(
                f"parameter dict has unknown keys {sorted(map(str, unknown))}; "
                "expected beta0, beta1, a, b and optionally gating, gating_features, expert_features, n_inputs"
            )
        if "gating" in data and data["gating"] is None:
            raise ValueError(
                f"parameter dict has gating: null; name a transform ({sorted(GATING_TRANSFORMS)}) or leave the key out"
            )
        return cls(
            beta0=data["beta0"],
            beta1=data["beta1"],
            a=data["a"],
            b=data["b"],
            gating=gating if gating is not None else data.get("gating", "identity"),
            **{key: data[key] for key in _INPUT_KEYS if key in data},
        )

    def save(self, path) -> None:
        """Write the parameters as JSON."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)

    @classmethod
    def load(cls, path) -> "MoEParams":
        with open(path) as fh:
            return cls.from_dict(json.load(fh))

    def __repr__(self) -> str:
        with np.printoptions(precision=4, suppress=True, threshold=50):
            body = ",\n".join(
                f"  {name}={np.array2string(getattr(self, name), prefix='  ' + name + '=')}"
                for name in ("beta0", "beta1", "a", "b")
            )
        inputs = ""
        if self.separate_inputs:
            inputs = (f", gating_features={self.gating_features}, expert_features={self.expert_features}, "
                      f"n_inputs={self.n_inputs}")
        return (
            f"MoEParams(n_experts={self.n_experts}, n_classes={self.n_classes}, "
            f"n_features={self.n_features}, gating={self.gating_name!r}{inputs},\n{body})"
        )


def free_parameter_names(params) -> list:
    """Names of the free parameters, in the order of :func:`free_parameters`.

    Gating ``beta0[i]``, ``beta1[i,j]`` for experts ``i < k-1``; then for each expert ``i`` and class
    ``s < K-1``: ``b[i,s]``, ``a[i,s,j]``. The last expert's gating and every expert's last class are
    fixed at zero (reference conventions) and have no entry. ``j`` counts the columns the part reads:
    with separate inputs, ``a[i,s,j]`` is the slope on column ``expert_features[j]`` of ``X`` and
    ``beta1[i,j]`` that on the ``j``-th gating input (:func:`fastmoe.summary.summarize` names them by column).

    Parameters
    ----------
    params : MoEParams

    Returns
    -------
    list of str
    """
    if not isinstance(params, MoEParams):
        raise TypeError(f"expected an MoEParams, got {type(params).__name__}")
    k, K = params.n_experts, params.n_classes
    names = []
    for i in range(k - 1):
        names.append(f"beta0[{i}]")
        names.extend(f"beta1[{i},{j}]" for j in range(params.n_gate_features))
    for i in range(k):
        for s in range(K - 1):
            names.append(f"b[{i},{s}]")
            names.extend(f"a[{i},{s},{j}]" for j in range(params.n_features))
    return names


def free_parameters(params) -> np.ndarray:
    """The free-parameter vector of ``params`` in reference conventions.

    Parameters
    ----------
    params : MoEParams

    Returns
    -------
    ndarray of shape (n_free_params,)
        :func:`free_vector` of ``params.normalized().packed()``.
    """
    if not isinstance(params, MoEParams):
        raise TypeError(f"expected an MoEParams, got {type(params).__name__}")
    return params.normalized().free_vector()
