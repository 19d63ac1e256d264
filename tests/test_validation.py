"""Bad input raises a clear exception naming the problem; odd-but-valid input is converted."""

import numpy as np
import pytest
from conftest import random_params

import fastmoe
from fastmoe._validation import effective_n_threads


@pytest.fixture
def data(rng, well_separated):
    X, y = fastmoe.sample(well_separated, n=300, random_state=rng)
    return X, y


@pytest.mark.parametrize(
    "X_bad, message",
    [
        (np.zeros(300), "2-d"),
        (np.zeros((300, 2, 1)), "2-d"),
        (np.zeros((0, 2)), "at least one sample"),
        (np.array([["a", "b"]] * 300), "numeric"),
    ],
)
def test_bad_X_shapes_and_types(data, X_bad, message):
    _, y = data
    with pytest.raises(ValueError, match=message):
        fastmoe.fit(X_bad, y[: len(X_bad)] if len(X_bad) else y[:0], 2)


@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_X_names_the_row(data, bad, kind):
    X, y = data
    X = X.copy()
    X[17, 1] = bad
    with pytest.raises(ValueError, match=f"X contains {kind} at row 17"):
        fastmoe.fit(X, y, 2)
    with pytest.raises(ValueError, match="row 17"):
        fastmoe.predict_proba(random_params(np.random.default_rng(0), 2, 3, 2), X)


def test_sparse_X_is_refused(data):
    sparse = pytest.importorskip("scipy.sparse")
    X, y = data
    with pytest.raises(TypeError, match="sparse"):
        fastmoe.fit(sparse.csr_matrix(X), y, 2)


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda y: y[:-1], "y has 299 labels but X has 300"),
        (lambda y: y - 1, "negative label"),
        (lambda y: y + 0.5, "integer class labels"),
        (lambda y: y.astype(str), "integer class labels"),
        (lambda y: np.stack([y, y], axis=1), "1-d"),
        (lambda y: np.where(np.arange(len(y)) == 3, np.nan, y), "NaN or inf at position 3"),
        # No int64 holds it: the cast wrapped to a "negative label -9223372036854775808".
        (lambda y: np.where(np.arange(len(y)) == 5, 1e20, y), r"label 1e\+20 at position 5"),
    ],
)
def test_bad_labels(data, transform, message):
    X, y = data
    with pytest.raises(ValueError, match=message):
        fastmoe.fit(X, transform(y), 2)


def test_labels_outside_n_classes(data):
    X, y = data
    with pytest.raises(ValueError, match="has label 2 but n_classes=2"):
        fastmoe.fit(X, y, 2, n_classes=2)
    with pytest.raises(ValueError, match="n_classes must be >= 2"):
        fastmoe.fit(X, np.zeros_like(y), 1, n_classes=1)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(n_experts=0), ValueError, "n_experts must be >= 1"),
        (dict(n_experts=2.5), TypeError, "n_experts must be an integer"),
        (dict(n_experts=2, n_init=0), ValueError, "n_init must be >= 1"),
        (dict(n_experts=2, max_iter=-1), ValueError, "max_iter must be >= 0"),
        (dict(n_experts=2, tol=-1.0), ValueError, "tol"),
        (dict(n_experts=2, tol=np.nan), ValueError, "tol"),
        (dict(n_experts=2, l2=-1.0), ValueError, "l2"),
        (dict(n_experts=2, init="spectral"), ValueError, "init must be one of"),
        (dict(n_experts=2, gating="relu"), ValueError, "unknown gating transform"),
        (dict(n_experts=2, n_threads=0), ValueError, "n_threads=0"),
        (dict(n_experts=2, n_threads=1.5), TypeError, "n_threads"),
        (dict(n_experts=2, random_state="seed"), TypeError, "random_state"),
        (dict(n_experts=2, callback=3), TypeError, "callback"),
        (dict(n_experts=40), ValueError, "need at least that many samples"),
        (dict(n_experts=2, tol="a"), ValueError, "tol must be a finite number"),
        (dict(n_experts=2, l2="1"), ValueError, "l2 must be a finite number"),
        (dict(n_experts=2, verbose="x"), TypeError, "verbose must be an integer"),
        (dict(n_experts=2, random_state=-1), ValueError, "random_state must be a non-negative integer"),
        (dict(n_experts=2, n_threads=2**31), ValueError, "n_threads=2147483648 is more than fastmoe runs"),
    ],
)
def test_bad_fit_arguments(data, kwargs, error, message):
    X, y = data
    n_experts = kwargs.pop("n_experts")
    with pytest.raises(error, match=message):
        fastmoe.fit(X, y, n_experts, **kwargs)


@pytest.mark.parametrize(
    "w, message",
    [
        (np.ones(10), r"shape \(10,\), expected \(300,\)"),
        (-np.ones(300), "non-negative"),
        (np.zeros(300), "zero everywhere"),
        (np.full(300, np.nan), "NaN or inf"),
        (np.full(300, 1e306), "sums to inf"),
    ],
)
def test_bad_sample_weight(data, w, message):
    X, y = data
    with pytest.raises(ValueError, match=message):
        fastmoe.fit(X, y, 2, sample_weight=w)


def test_mismatched_init_parameters(data, rng):
    X, y = data
    with pytest.raises(ValueError, match="init has 3 experts but n_experts=2"):
        fastmoe.fit(X, y, 2, init=random_params(rng, 3, 3, 2))
    with pytest.raises(ValueError, match="3 features but X has 2"):
        fastmoe.fit(X, y, 2, init=random_params(rng, 2, 3, 3))
    with pytest.raises(ValueError, match="init has 4 classes but n_classes=3"):
        fastmoe.fit(X, y, 2, n_classes=3, init=random_params(rng, 2, 4, 2))
    with pytest.raises(ValueError, match="init uses gating 'tanh' but gating='sigmoid'"):
        fastmoe.fit(X, y, 2, init=random_params(rng, 2, 3, 2, "tanh"), gating="sigmoid")
    with pytest.raises(ValueError, match="has label 2 but n_classes=2"):
        fastmoe.fit(X, y, 2, init=random_params(rng, 2, 2, 2))


def test_mismatched_parameters_in_inference(data, rng):
    X, y = data
    params = random_params(rng, 2, 3, 3)
    with pytest.raises(ValueError, match="2 features but the model expects 3"):
        fastmoe.loglik(params, X, y)
    with pytest.raises(TypeError, match="expected an MoEParams"):
        fastmoe.predict_proba({"beta0": [0]}, X)
    with pytest.raises(ValueError, match="has label 3 but n_classes=3"):
        fastmoe.loglik(random_params(rng, 2, 3, 2), X, np.full(300, 3))


def test_float32_fortran_and_strided_input_is_converted(data, well_separated):
    X, y = data
    reference = fastmoe.loglik(well_separated, X, y)
    for variant in (np.asfortranarray(X), np.repeat(X, 2, axis=0)[::2], X.tolist()):
        assert fastmoe.loglik(well_separated, variant, y) == pytest.approx(reference, rel=1e-12)
    X32 = X.astype(np.float32)
    assert fastmoe.loglik(well_separated, X32, y.astype(np.int32)) == pytest.approx(
        fastmoe.loglik(well_separated, X32.astype(np.float64), y), rel=1e-12
    )
    with pytest.warns(fastmoe.ConvergenceWarning, match="max_iter=3"):
        result = fastmoe.fit(X32, y.astype(np.uint8), 2, init=well_separated, max_iter=3, tol=0.0)
    assert np.isfinite(result.loglik) and result.n_iter == 3
    # Labels given as integral floats or a column vector are fine too.
    assert fastmoe.loglik(well_separated, X, y.astype(float)[:, None]) == pytest.approx(reference, rel=1e-12)


def test_bad_parameter_objects():
    with pytest.raises(ValueError, match="beta1 has 3 rows but beta0 has 2"):
        fastmoe.MoEParams(np.zeros(2), np.zeros((3, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="a has 3 classes but b has 4"):
        fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="beta0 contains NaN or inf"):
        fastmoe.MoEParams([np.nan, 0], np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least 2 classes"):
        fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 1, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="beta1 needs 2 columns"):
        fastmoe.MoEParams(np.zeros(2), np.zeros((2, 3)), np.zeros((2, 3, 2)), np.zeros((2, 3)), "tanh")
    with pytest.raises(ValueError, match="must be a 3-d array"):
        fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="gating must be"):
        fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)), 3)


def test_gating_callable_with_wrong_output(rng):
    params = fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)),
                               lambda X: X[:5])
    with pytest.raises(ValueError, match="gating callable must map"):
        fastmoe.predict_proba(params, rng.normal(size=(20, 2)))
    nan_gate = fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)),
                                 lambda X: X * np.nan)
    with pytest.raises(ValueError, match="NaN or inf"):
        fastmoe.predict_proba(nan_gate, rng.normal(size=(20, 2)))


def test_gating_callable_with_complex_output_is_refused(rng):
    """A complex M(X) is an error, not a ComplexWarning with the imaginary part dropped (issue 17 §8)."""
    params = fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)),
                               lambda X: X + 1j)
    with pytest.raises(ValueError, match="gating callable returned complex values"):
        fastmoe.predict_proba(params, rng.normal(size=(20, 2)))
    text = fastmoe.MoEParams(np.zeros(2), np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)),
                             lambda X: X.astype(str))
    with pytest.raises(ValueError, match="must return real numbers"):
        fastmoe.predict_proba(text, rng.normal(size=(20, 2)))


@pytest.mark.parametrize("X_dtype", ["Float64", "Int64"])
def test_pandas_nullable_dtypes_are_read_as_float(data, well_separated, X_dtype):
    """Float64/Int64/boolean columns (pd.NA for missing) are numbers, not dtype object (issue 17 §8)."""
    pd = pytest.importorskip("pandas")
    X, y = data
    X = np.round(X * 10) if X_dtype == "Int64" else X
    frame = pd.DataFrame(X, columns=["x1", "x2"]).astype(X_dtype)
    labels = pd.Series(y, dtype="Int64")
    weights = pd.Series(np.linspace(0.5, 1.5, len(y)), dtype="Float64")
    expected = fastmoe.loglik(well_separated, X, y, np.linspace(0.5, 1.5, len(y)))
    assert fastmoe.loglik(well_separated, frame, labels, weights) == pytest.approx(expected, rel=1e-12)
    mixed = pd.DataFrame({"x1": pd.Series(X[:, 0], dtype=X_dtype), "x2": X[:, 1]})  # nullable beside float64
    assert fastmoe.loglik(well_separated, mixed, y) == pytest.approx(fastmoe.loglik(well_separated, X, y), rel=1e-12)
    kwargs = dict(init=well_separated, max_iter=3, tol=0.0, n_threads=1)
    with pytest.warns(fastmoe.ConvergenceWarning, match="max_iter=3"):
        result = fastmoe.fit(frame, labels, 2, sample_weight=weights, **kwargs)
    with pytest.warns(fastmoe.ConvergenceWarning, match="max_iter=3"):
        plain = fastmoe.fit(X, y, 2, sample_weight=weights.to_numpy(float), **kwargs)
    assert result.params.allclose(plain.params, rtol=0, atol=0)


def test_bool_dummies_beside_float_columns_are_numbers(data, well_separated):
    """pd.get_dummies gives bool columns (pandas >= 2); beside float columns np.asarray makes the frame
    dtype object, which was refused as "X must be numeric"."""
    pd = pytest.importorskip("pandas")
    X, y = data
    flags = X[:, 1] > 0.0
    frame = pd.DataFrame({"x1": X[:, 0], "flag": flags})
    numbers = np.column_stack([X[:, 0], flags.astype(float)])
    assert fastmoe.loglik(well_separated, frame, y) == fastmoe.loglik(well_separated, numbers, y)
    kwargs = dict(init=well_separated, max_iter=5, tol=0.0, n_threads=1)
    with pytest.warns(fastmoe.ConvergenceWarning):
        result = fastmoe.fit(frame, y, 2, **kwargs)
    with pytest.warns(fastmoe.ConvergenceWarning):
        plain = fastmoe.fit(numbers, y, 2, **kwargs)
    assert result.params.allclose(plain.params, rtol=0, atol=0)
    # a complex column beside a float one is still refused, not cast to its real part
    with pytest.raises(ValueError, match="numeric|complex"):
        fastmoe.fit(pd.DataFrame({"x1": X[:, 0], "z": X[:, 1] + 1j}), y, 2)


def test_pandas_missing_values_are_reported_by_row(data):
    pd = pytest.importorskip("pandas")
    X, y = data
    frame = pd.DataFrame(X, columns=["x1", "x2"]).astype("Float64")
    frame.iloc[17, 1] = pd.NA
    with pytest.raises(ValueError, match=r"X contains a missing value \(NA or NaN\) at row 17"):
        fastmoe.fit(frame, y, 2)
    labels = pd.Series(y, dtype="Int64")
    labels.iloc[4] = pd.NA
    with pytest.raises(ValueError, match=r"y contains a missing value \(NA or NaN\) at position 4"):
        fastmoe.fit(X, labels, 2)
    weights = pd.Series(np.ones(len(y)), dtype="Float64")
    weights.iloc[9] = pd.NA
    with pytest.raises(ValueError, match=r"sample_weight contains a missing value \(NA or NaN\) at position 9"):
        fastmoe.fit(X, y, 2, sample_weight=weights)
    # Non-numeric pandas columns are still refused as such.
    with pytest.raises(ValueError, match="numeric"):
        fastmoe.fit(pd.DataFrame({"x1": X[:, 0], "x2": pd.Series(X[:, 1]).astype(str).astype("string")}), y, 2)


def test_inputs_too_large_to_fit_are_refused(data, well_separated):
    # Beyond 1e150 a product of two features overflows; before this check the fit ended at the
    # all-zero model and called it converged (X * 1e160), or the information matrix held NaN.
    X, y = data
    with pytest.raises(ValueError, match="rescale the features"):
        fastmoe.fit(X * 1e160, y, 2)
    with pytest.raises(ValueError, match="rescale the features"):
        fastmoe.observed_information(well_separated, X * 1e200, y)
    fastmoe.fit(X * 1e100, y, 1, max_iter=5)  # large but safe: accepted


def test_overflowing_linear_predictors_are_reported_not_returned(data):
    # Finite inputs and finite coefficients whose product overflows: NaN used to come back silently
    # (and predict() turned it into class 0).
    X, y = data
    huge = fastmoe.MoEParams(beta0=[0.0, 0.0], beta1=[[1e10, 0.0], [0.0, 0.0]],
                             a=[[[1e160, 0.0], [0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0]] * 3], b=np.zeros((2, 3)))
    X = X * 1e150
    for call in (lambda: fastmoe.predict_proba(huge, X), lambda: fastmoe.expert_proba(huge, X),
                 lambda: fastmoe.loglik(huge, X, y), lambda: fastmoe.loglik_samples(huge, X, y),
                 lambda: fastmoe.responsibilities(huge, X, y), lambda: fastmoe.sample(huge, X=X)):
        with pytest.raises(FloatingPointError, match="overflows"):
            call()
    # A gating logit of +inf: the draw used to fall through every comparison with NaN to the last
    # expert (and its last class), where expert 0 speaks with certainty.
    gate = fastmoe.MoEParams(beta0=[0.0, 0.0, 0.0], beta1=[[1e300], [0.0], [0.0]], a=np.zeros((3, 2, 1)),
                             b=[[0.0, 500.0], [0.0, -500.0], [0.0, -500.0]])
    with pytest.raises(FloatingPointError, match="overflows"):
        fastmoe.sample(gate, X=np.full((50, 1), 1e10), random_state=0)
    _, labels, experts = fastmoe.sample(gate, X=np.full((50, 1), 1e-10), random_state=0, return_latent=True)
    assert labels.min() >= 0 and experts.min() >= 0  # finite logits still draw
    # An expert that overflows is an error whichever expert the draw picks (its gate share here is
    # e^-6: most draws never pick it), as predict_proba's is.
    rare = fastmoe.MoEParams(beta0=[-6.0, 0.0], beta1=[[0.0], [0.0]], a=[[[1e300], [0.0]], [[0.0], [0.0]]],
                             b=np.zeros((2, 2)))
    for seed in range(5):
        with pytest.raises(FloatingPointError, match="overflows"):
            fastmoe.sample(rare, X=np.full((50, 1), 1e10), random_state=seed)


def test_other_entry_points_name_their_argument(data, well_separated):
    X, y = data
    with pytest.raises(TypeError, match="n_experts must be a sequence of candidate"):
        fastmoe.select_n_experts(X, y, 2)
    with pytest.raises(ValueError, match="level must be a number in"):
        fastmoe.parameter_table(well_separated, X, y, level="0.9")
    with pytest.raises(ValueError, match="low < high"):
        fastmoe.sample(well_separated, n=3, low=[0, -1], high=[1, 2])
    # The twins of fit's tol/l2 check share its predicate (a string used to raise numpy's TypeError).
    with pytest.raises(ValueError, match="l2 must be a finite number"):
        fastmoe.parameter_table(well_separated, X, y, l2="a")
    with pytest.raises(ValueError, match="omega must be a finite number"):
        fastmoe.dendrogram(well_separated, X, y, omega="a")


def test_labels_taken_for_class_indices_are_refused_before_allocating():
    # A label of 10^6 on 50 rows made a model of 10^6 + 1 classes, and numpy's MemoryError (43.7 TiB)
    # was all the user learnt.
    X = np.random.default_rng(0).normal(size=(50, 2))
    y = np.r_[np.zeros(49, dtype=int), 10**6]
    with pytest.raises(ValueError, match=r"1000001 classes.*only 2 distinct labels occur in y.*encode them"):
        fastmoe.fit(X, y, 2, l2=1.0)


def test_sample_arguments(well_separated):
    with pytest.raises(ValueError, match="give either n"):
        fastmoe.sample(well_separated)
    with pytest.raises(ValueError, match="n=5 but X has 3 rows"):
        fastmoe.sample(well_separated, n=5, X=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="low < high"):
        fastmoe.sample(well_separated, n=5, low=1.0, high=0.0)


def test_effective_n_threads(monkeypatch):
    import fastmoe._validation as validation

    monkeypatch.setattr(validation, "openmp_max_threads", lambda: 8)
    assert effective_n_threads(None) == 8
    assert effective_n_threads(-1) == 8
    assert effective_n_threads(-2) == 7
    assert effective_n_threads(-100) == 1
    assert effective_n_threads(3) == 3
    with pytest.raises(ValueError, match="n_jobs=5000 is more than fastmoe runs"):
        effective_n_threads(5000, "n_jobs")  # the caller's own argument is named
