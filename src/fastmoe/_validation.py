"""Input checks: small functions that return clean arrays or raise an error naming the problem."""

from __future__ import annotations

import numbers

import numpy as np

from ._openmp import openmp_max_threads
from .params import MoEParams

# Inputs beyond this size make the kernels' products of two features (the Hessians' x x^T, the k-means
# starts' squared distances) overflow past 1e308, and the fit would end at a meaningless point without
# an error: such inputs are refused with a request to rescale them.
MAX_ABS_INPUT = 1e150
# Per-thread buffers are allocated for every thread asked for: a count this large is a mistake, not a
# machine (and past 2^31 it no longer fits the kernels' int).
MAX_THREADS = 4096


def _first_bad_row(arr):
    bad = ~np.isfinite(arr)
    if bad.ndim > 1:
        bad = bad.any(axis=tuple(range(1, bad.ndim)))
    return int(np.flatnonzero(bad)[0])


def _pandas_to_numpy(value):
    """A pandas DataFrame or Series as a NumPy array; nullable numeric dtypes (``Float64``, ``Int64``,
    ``boolean``) become float64 with ``pd.NA`` as NaN, so that a missing value is reported by row, and so
    do frames whose numeric columns differ in dtype (bool dummies beside floats).

    ``np.asarray`` would give such columns dtype object. Anything else (NumPy arrays, lists, pandas
    objects with non-numeric columns) comes back as it was, for the caller's own checks.
    """
    dtypes = getattr(value, "dtypes", None)
    if dtypes is None or not hasattr(value, "to_numpy"):
        return value
    from pandas.api.types import is_complex_dtype, is_extension_array_dtype, is_numeric_dtype

    dtypes = [dtypes] if not hasattr(dtypes, "__iter__") else list(dtypes)  # a Series has one dtype
    # Bool columns beside numeric ones (pd.get_dummies' output since pandas 2) also give dtype object.
    mixed = len({str(dtype) for dtype in dtypes}) > 1
    if not (mixed or any(is_extension_array_dtype(dtype) for dtype in dtypes)):
        return value
    if not all(is_numeric_dtype(dtype) and not is_complex_dtype(dtype) for dtype in dtypes):
        return value  # complex columns too: their cast would drop the imaginary part
    return value.to_numpy(dtype=np.float64, na_value=np.nan)


def _missing_message(name, arr, position="row", pandas=False):
    """``"X contains NaN at row 17"``; from a pandas object with nullable dtypes, NaN was ``pd.NA``."""
    row = _first_bad_row(arr)
    if not np.isnan(arr[row]).any():
        kind = "inf"
    else:
        kind = "a missing value (NA or NaN)" if pandas else "NaN"
    return f"{name} contains {kind} at {position} {row}"


def check_X(X, name="X", n_features=None) -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 (n_samples, n_features) array of finite values.

    float32, integer, Fortran-ordered or strided input is converted (copied); NaN/inf, a wrong
    number of dimensions or a feature-count mismatch raise ``ValueError``.
    """
    if hasattr(X, "tocsr"):
        raise TypeError(f"{name} is a sparse matrix; fastmoe needs a dense array")
    converted = _pandas_to_numpy(X)
    pandas, X = converted is not X, converted
    try:
        X = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} cannot be converted to a numeric array: {exc}") from exc
    if X.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-d (n_samples, n_features), got {X.ndim}-d with shape {X.shape}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name} has shape {X.shape}; it needs at least one sample and one feature")
    X = np.ascontiguousarray(X, dtype=np.float64)
    # Two reductions, no temporary: NaN propagates through max and min, and inf shows in them.
    largest = max(float(X.max()), -float(X.min()))
    if not np.isfinite(largest):
        raise ValueError(_missing_message(name, X, pandas=pandas))
    if largest > MAX_ABS_INPUT:
        raise ValueError(f"{name} has values up to {largest:.3g} in absolute value; fastmoe needs at most "
                         f"{MAX_ABS_INPUT:.0e} (the Hessians' products of two features overflow near 1e154): "
                         "rescale the features")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but the model expects {n_features}")
    return X


def check_y(y, n_samples, n_classes=None):
    """Return ``(y, n_classes)``: integer labels as a contiguous int32/int64 array.

    Labels must be integers (integral floats are accepted) in ``0 .. n_classes - 1``; ``n_classes``
    defaults to ``max(y) + 1`` and must be at least 2.
    """
    converted = _pandas_to_numpy(y)
    pandas, y = converted is not y, np.asarray(converted)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-d (n_samples,), got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} labels but X has {n_samples} samples")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            if pandas:
                raise ValueError(_missing_message("y", y, "position", pandas=True))
            raise ValueError(f"y contains NaN or inf at position {_first_bad_row(y)}")
        if (y != np.round(y)).any():
            pos = int(np.flatnonzero(y != np.round(y))[0])
            raise ValueError(f"y must hold integer class labels; y[{pos}] = {y[pos]!r}")
        if y.size and np.abs(y).max() >= 2.0**62:  # no int64 holds it: the cast would wrap
            pos = int(np.argmax(np.abs(y)))
            raise ValueError(f"y has label {float(y[pos]):g} at position {pos}; labels must be 0..n_classes-1")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iu":
        raise ValueError(
            f"y must hold integer class labels 0..n_classes-1, got dtype {y.dtype}; "
            "encode other labels first (MixtureOfExpertsClassifier does this)"
        )
    y_min, y_max = int(y.min()), int(y.max())
    if y_min < 0:
        raise ValueError(f"y has a negative label {y_min}; labels must be 0..n_classes-1")
    if n_classes is None:
        n_classes = max(y_max + 1, 2)
    n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
    if y_max >= n_classes:
        raise ValueError(f"y has label {y_max} but n_classes={n_classes} (labels must be 0..{n_classes - 1})")
    dtype = np.int32 if y.dtype.itemsize <= 4 else np.int64
    return np.ascontiguousarray(y, dtype=dtype), n_classes


def check_sample_weight(sample_weight, n_samples):
    """Return weights as a contiguous float64 array, or an empty array meaning 'all ones'."""
    if sample_weight is None:
        return np.empty(0)
    w = _pandas_to_numpy(sample_weight)
    pandas = w is not sample_weight
    if np.asarray(w).dtype.kind == "c":
        raise ValueError("sample_weight must be real, got complex values")
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n_samples},)")
    if not np.isfinite(w).all():
        if pandas:
            raise ValueError(_missing_message("sample_weight", w, "position", pandas=True))
        raise ValueError(f"sample_weight contains NaN or inf at position {_first_bad_row(w)}")
    if (w < 0).any():
        raise ValueError(f"sample_weight must be non-negative; sample_weight[{int(np.argmin(w))}] = {w.min()}")
    if not (w > 0).any():
        raise ValueError("sample_weight is zero everywhere")
    with np.errstate(over="ignore"):
        total = w.sum()
    if not np.isfinite(total):
        raise ValueError(f"sample_weight sums to inf (largest weight {w.max():.3g}); rescale the weights")
    return np.ascontiguousarray(w)


def is_finite_real(value) -> bool:
    """Whether ``value`` is one finite real number (not a bool, a string or an array).

    ``numbers.Real`` is tested first: ``np.isfinite`` of a string raises a TypeError that names no
    argument, and the callers' own errors should.
    """
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and bool(np.isfinite(value)))


def check_positive_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def effective_n_threads(n_threads=None, name="n_threads") -> int:
    """Threads to use: ``None`` or -1 means all usable cores (``OMP_NUM_THREADS`` is honoured),
    -2 all but one, and so on; 0 is an error. Serial builds always use 1."""
    available = openmp_max_threads()
    if n_threads is None:
        return available
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"{name} must be an integer or None, got {n_threads!r}")
    if n_threads == 0:
        raise ValueError(f"{name}=0 is invalid; use None for all cores or a positive/negative count")
    if n_threads < 0:
        return max(1, available + 1 + int(n_threads))
    if n_threads > MAX_THREADS:
        raise ValueError(f"{name}={n_threads} is more than fastmoe runs (at most {MAX_THREADS}; "
                         f"this machine's OpenMP offers {available}); use None for all cores")
    return int(n_threads)


def check_random_state(random_state) -> np.random.Generator:
    """A ``numpy.random.Generator`` from None, an int, a SeedSequence or a Generator."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, (bool, np.bool_)) \
            and random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer, got {random_state}")
    if random_state is None or isinstance(random_state, (numbers.Integral, np.random.SeedSequence)):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    raise TypeError(f"random_state must be None, an int or a numpy.random.Generator, got {random_state!r}")


def check_params(params, n_features=None, n_classes=None) -> MoEParams:
    """Check that ``params`` is an ``MoEParams`` that fits data with this many features (columns of
    ``X``: ``params.n_inputs``) and classes."""
    if not isinstance(params, MoEParams):
        raise TypeError(f"expected an MoEParams, got {type(params).__name__}")
    if n_features is not None and params.n_inputs != n_features:
        raise ValueError(f"the parameters have {params.n_inputs} features but X has {n_features}")
    if n_classes is not None and params.n_classes != n_classes:
        raise ValueError(f"the parameters have {params.n_classes} classes but the data need {n_classes}")
    return params
