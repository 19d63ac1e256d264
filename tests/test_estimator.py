"""MixtureOfExpertsClassifier: the scikit-learn contract, labels, warm starts, pipelines, bad input."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import fastmoe
from fastmoe.estimator import MixtureOfExpertsClassifier

# ----------------------------------------------------------------------------------------------------------
# scikit-learn's estimator checks
# ----------------------------------------------------------------------------------------------------------
# The estimator's default ridge (l2=1, LogisticRegression's C=1) lets it fit the checks' small data sets,
# some with fewer samples than free parameters (15 samples and 30 features: 155 for two experts). Rows are
# merged into their weighted empirical distribution before fitting, so integer weights equal repetitions
# exactly even though a data-driven start draws rows. Every check passes; none is expected to fail.
@parametrize_with_checks(
    [
        MixtureOfExpertsClassifier(random_state=0, n_threads=1),
        MixtureOfExpertsClassifier(gating="tanh", random_state=0, n_threads=1),
        MixtureOfExpertsClassifier(n_experts=1, random_state=0, n_threads=1),
    ]
)
def test_sklearn_compatible_estimator(estimator, check):
    # On the checks' tiny data sets an expert can lose all its responsibility mass and the intercepts,
    # which the ridge leaves free, drift; EM reports that with a ConvergenceWarning, the correct report.
    # scikit-learn's own test_common ignores its ConvergenceWarning in the same way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        check(estimator)


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def data(well_separated):
    X, y = fastmoe.sample(well_separated, n=2000, random_state=3)
    return X, y


# ----------------------------------------------------------------------------------------------------------
# Labels and agreement with fastmoe.fit
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "labels", [np.array(["cat", "dog", "eel"]), np.array([3, 7, 10]), np.array([-4.0, 0.0, 9.0])]
)
def test_arbitrary_labels_match_the_functional_fit(data, well_separated, labels):
    X, y = data
    # From one start the estimator reaches fastmoe.fit's maximum (its rows are sorted first, so sums
    # are taken in another order: equal up to rounding).
    kwargs = dict(init=well_separated, l2=0.0, n_threads=1)
    model = MixtureOfExpertsClassifier(2, **kwargs).fit(X, labels[y])
    result = fastmoe.fit(X, y, 2, **kwargs)
    np.testing.assert_array_equal(model.classes_, np.sort(labels))
    assert model.params_.allclose(result.params, rtol=1e-7, atol=1e-8)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, result.predict_proba(X), rtol=1e-7)
    # Labels only name the classes: with a data-driven start the fit is that of the codes, bit for bit.
    named = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1).fit(X, labels[y])
    coded = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1).fit(X, y)
    assert named.params_.allclose(coded.params_, rtol=0, atol=0)
    np.testing.assert_array_equal(model.predict(X), labels[np.argmax(proba, axis=1)])
    assert model.score(X, labels[y]) == pytest.approx(accuracy_score(labels[y], model.predict(X)))
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), proba, rtol=1e-12)


def test_binary_bool_labels():
    truth = fastmoe.MoEParams(
        beta0=[0.0, 0.0], beta1=[[4.0, 0.0], [0.0, 0.0]], a=[[[0.0, 3.0], [0.0, 0.0]], [[0.0, -3.0], [0.0, 0.0]]],
        b=[[0.0, 0.0], [0.0, 0.0]],
    )
    X, y = fastmoe.sample(truth, n=2000, random_state=1, low=-2.0, high=2.0)
    labels = y == 0
    model = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1).fit(X, labels)
    np.testing.assert_array_equal(model.classes_, [False, True])
    assert model.predict(X).dtype == bool
    assert model.score(X, labels) > 0.8
    # class 1 of the parameters is True, i.e. y == 0 of the truth
    assert np.mean(np.abs(model.predict_proba(X)[:, 1] - fastmoe.predict_proba(truth, X)[:, 0])) < 0.03


def test_fitted_attributes(data):
    X, y = data
    model = MixtureOfExpertsClassifier(2, l2=0.0, random_state=0, n_threads=1).fit(X, y)
    result = model.fit_result_
    assert model.n_features_in_ == 2
    assert model.n_iter_ == result.n_iter >= 1
    assert model.converged_ is True and model.diverged_ is False
    assert model.log_likelihood_ == result.loglik == model.objective_
    assert model.n_free_params_ == 1 * 3 + 2 * 2 * 3
    assert model.bic_ == pytest.approx(-2 * result.loglik + model.n_free_params_ * np.log(len(y)))
    assert model.aic_ == pytest.approx(-2 * result.loglik + 2 * model.n_free_params_)
    assert model.empty_experts_ == ()
    np.testing.assert_allclose(model.gate_proba(X).sum(axis=1), 1.0)


def test_likelihood_methods_and_criteria(data):
    X, y = data
    labels = np.array(["a", "b", "c"])[y]
    model = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1).fit(X, labels)
    total = model.loglik(X, labels)
    assert total == pytest.approx(model.log_likelihood_, rel=1e-12)
    assert total == pytest.approx(-log_loss(labels, model.predict_proba(X), normalize=False), rel=1e-10)
    np.testing.assert_allclose(model.loglik_samples(X, labels).sum(), total, rtol=1e-12)
    assert model.bic(X, labels) == pytest.approx(model.bic_, rel=1e-12)
    assert model.aic(X, labels) == pytest.approx(model.aic_, rel=1e-12)
    w = np.linspace(0.5, 2.0, len(y))
    assert model.loglik(X, labels, sample_weight=w) == pytest.approx(
        np.dot(w, model.loglik_samples(X, labels)), rel=1e-12
    )
    with pytest.raises(ValueError, match=r"labels not seen during fit: \['z'\]"):
        model.loglik(X[:3], ["a", "z", "b"])


def test_one_expert_is_logistic_regression(data):
    X, y = data
    model = MixtureOfExpertsClassifier(1, l2=0.0, n_threads=1).fit(X, y)
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# Starts, restarts, randomness
# ----------------------------------------------------------------------------------------------------------
def test_warm_start_continues_from_the_fitted_parameters(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        model = MixtureOfExpertsClassifier(2, l2=0.0, init="kmeans", max_iter=3, warm_start=True, random_state=0, n_threads=1)
        model.fit(X, y)
        first = model.log_likelihood_
        model.fit(X, y)  # three more iterations from where the first fit stopped
    assert model.log_likelihood_ > first
    model.set_params(max_iter=1000).fit(X, y)
    assert model.converged_
    polished = model.params_
    model.fit(X, y)  # at the maximum already: a warm start stops at once
    assert model.n_iter_ <= 2
    assert model.params_.allclose(polished, rtol=1e-6, atol=1e-6)
    # A warm start that no longer fits the model (other n_experts) falls back to ``init``.
    model.set_params(n_experts=3, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        model.fit(X, y)
    assert model.params_.n_experts == 3
    # So does one with another gating transform (found by a QA pass: it raised "init uses gating ...").
    model.set_params(gating="tanh")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        model.fit(X, y)
    assert model.params_.gating == "tanh"


def test_cold_start_ignores_previous_fit(data):
    X, y = data
    model = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1).fit(X, y)
    again = clone(model).fit(X, y)
    model.fit(X, y)
    assert model.params_.allclose(again.params_, rtol=0, atol=0)


def test_explicit_init_and_random_state_types(data, well_separated):
    X, y = data
    model = MixtureOfExpertsClassifier(2, init=well_separated, n_threads=1).fit(X, y)
    assert model.converged_
    a = MixtureOfExpertsClassifier(2, init="random", random_state=np.random.RandomState(5), n_threads=1).fit(X, y)
    b = MixtureOfExpertsClassifier(2, init="random", random_state=np.random.RandomState(5), n_threads=1).fit(X, y)
    assert a.params_.allclose(b.params_, rtol=0, atol=0)
    c = MixtureOfExpertsClassifier(2, random_state=np.random.default_rng(5), n_threads=1).fit(X, y)
    assert c.converged_


def test_convergence_warning_is_reported(data):
    X, y = data
    with pytest.warns(fastmoe.ConvergenceWarning, match="max_iter=2"):
        model = MixtureOfExpertsClassifier(2, max_iter=2, random_state=0, n_threads=1).fit(X, y)
    assert not model.converged_


# ----------------------------------------------------------------------------------------------------------
# Sample weights, class weights, the default ridge
# ----------------------------------------------------------------------------------------------------------
def test_integer_weights_equal_repeated_rows(data, well_separated):
    X, y = data
    counts = np.random.default_rng(2).integers(0, 4, size=len(y))
    # From the same start (a data-driven start draws rows, not weights), EM sees the same likelihood.
    kwargs = dict(n_experts=2, init=well_separated, tol=1e-12, n_threads=1)
    weighted = MixtureOfExpertsClassifier(**kwargs).fit(X, y, sample_weight=counts)
    repeated = MixtureOfExpertsClassifier(**kwargs).fit(np.repeat(X, counts, axis=0), np.repeat(y, counts))
    assert weighted.log_likelihood_ == pytest.approx(repeated.log_likelihood_, rel=1e-10)
    assert weighted.params_.allclose(repeated.params_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-6, atol=1e-9)


def test_sample_weight_validation(data):
    X, y = data
    model = MixtureOfExpertsClassifier(2, n_threads=1)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(X, y, sample_weight=np.ones(len(y) - 1))
    with pytest.raises(ValueError, match="negative"):
        model.fit(X, y, sample_weight=-np.ones(len(y)))


def test_rows_are_merged_and_ordered_before_fitting(data):
    """The fit depends on the data only through its weighted empirical distribution: permuting the rows,
    repeating a row or giving it an integer weight gives the same fit bit for bit, data-driven start and all."""
    X, y = data
    rng = np.random.default_rng(11)
    counts = rng.integers(0, 4, size=len(y))
    kwargs = dict(n_experts=2, random_state=0, n_threads=1)
    weighted = MixtureOfExpertsClassifier(**kwargs).fit(X, y, sample_weight=counts)
    perm = rng.permutation(len(y))
    repeated = MixtureOfExpertsClassifier(**kwargs).fit(np.repeat(X, counts, axis=0), np.repeat(y, counts))
    shuffled = MixtureOfExpertsClassifier(**kwargs).fit(X[perm], y[perm], sample_weight=counts[perm])
    for other in (repeated, shuffled):
        assert other.params_.allclose(weighted.params_, rtol=0, atol=0)
    # n_samples counts the rows given; the criteria's n the observations, so frequency weights and repeated
    # rows (and rows of weight 0, which some counts are) give the same criteria. (A QA pass found BICs
    # 8059.6 and 8066.2 for such a pair when n counted rows.)
    assert repeated.fit_result_.n_samples == counts.sum() and weighted.fit_result_.n_samples == len(y)
    assert weighted.fit_result_.n_observations == repeated.fit_result_.n_observations == counts.sum()
    assert repeated.bic_ == pytest.approx(-2 * repeated.log_likelihood_ + repeated.n_free_params_ * np.log(counts.sum()))
    assert weighted.bic_ == pytest.approx(repeated.bic_, rel=1e-12) and weighted.aic_ == pytest.approx(repeated.aic_)
    balanced = MixtureOfExpertsClassifier(class_weight={0: 3.0}, **kwargs).fit(X, y, sample_weight=counts)
    assert balanced.fit_result_.n_observations == counts.sum()  # class weights reweight, they add no observations


def test_default_ridge_is_logistic_regressions_c_1(data):
    """l2=1 by default (LogisticRegression's C=1): fits with fewer samples than free parameters work;
    fastmoe.fit itself stays unpenalised by default."""
    X, y = data
    assert MixtureOfExpertsClassifier().l2 == 1.0
    # Two classes: one slope vector, the same ridge (more classes: tests/test_penalty.py).
    binary = y == 0
    model = MixtureOfExpertsClassifier(1, n_threads=1).fit(X, binary)
    reference = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X, binary)
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), rtol=1e-6, atol=1e-8)
    assert model.objective_ < model.log_likelihood_
    small = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)  # an expert may lose its mass on 12 rows
        small.fit(X[:12], y[:12])
    assert small.n_free_params_ > 12 and np.isfinite(small.predict_proba(X[:12])).all()
    assert fastmoe.fit(X, y, 1, n_threads=1).l2 == 0.0


def test_class_weight_is_a_sample_weight(data, well_separated):
    X, y = data
    labels = np.array(["a", "b", "c"])[y]
    kwargs = dict(n_experts=2, init=well_separated, n_threads=1)
    w = np.linspace(0.5, 2.0, len(y))
    # "balanced": total / (n_classes * class total), class totals summing the sample weights
    totals = np.bincount(y, weights=w)
    balanced = MixtureOfExpertsClassifier(class_weight="balanced", **kwargs).fit(X, labels, sample_weight=w)
    by_hand = MixtureOfExpertsClassifier(**kwargs).fit(X, labels, sample_weight=w * (w.sum() / (3 * totals))[y])
    assert balanced.params_.allclose(by_hand.params_, rtol=1e-10, atol=1e-10)
    # a dict maps labels to weights; labels left out weigh 1
    as_dict = MixtureOfExpertsClassifier(class_weight={"a": 3.0, "c": 0.5}, **kwargs).fit(X, labels)
    by_hand = MixtureOfExpertsClassifier(**kwargs).fit(X, labels, sample_weight=np.array([3.0, 1.0, 0.5])[y])
    assert as_dict.params_.allclose(by_hand.params_, rtol=1e-10, atol=1e-10)
    # the same as LogisticRegression's class_weight for one expert and two classes
    binary = np.where(y == 0, "a", "b")
    for class_weight in ("balanced", {"a": 3.0}):
        model = MixtureOfExpertsClassifier(1, class_weight=class_weight, n_threads=1).fit(X, binary)
        reference = LogisticRegression(class_weight=class_weight, tol=1e-12, max_iter=10_000).fit(X, binary)
        np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match=r"class_weight names labels \['z'\] that are not in y"):
        MixtureOfExpertsClassifier(class_weight={"z": 2.0}, **kwargs).fit(X, labels)
    with pytest.raises(ValueError, match="class_weight must be None, 'balanced' or a dict"):
        MixtureOfExpertsClassifier(class_weight="auto", **kwargs).fit(X, labels)
    with pytest.raises(ValueError, match=r"only one class \('a'\) has positive weight"):
        MixtureOfExpertsClassifier(class_weight={"b": 0.0, "c": 0.0}, **kwargs).fit(X, labels)


def test_convergence_warning_is_scikit_learns():
    """Either class in a filter silences fastmoe's warning."""
    from sklearn.exceptions import ConvergenceWarning

    assert issubclass(fastmoe.ConvergenceWarning, ConvergenceWarning)
    assert issubclass(fastmoe.ConvergenceWarning, UserWarning)
    for category in (ConvergenceWarning, fastmoe.ConvergenceWarning):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", category=category)
            warnings.warn("stopped early", fastmoe.ConvergenceWarning)


# ----------------------------------------------------------------------------------------------------------
# Bad input through the estimator
# ----------------------------------------------------------------------------------------------------------
def test_bad_input_messages(data):
    X, y = data
    model = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1)
    with pytest.raises(NotFittedError):
        model.predict(X)
    bad = X.copy()
    bad[17, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, y)
    bad[17, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        model.fit(bad, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        model.fit(X, X[:, 0])
    with pytest.raises(ValueError, match="only one class"):
        model.fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="X has 10 samples, but a model with 2 experts.*free parameters"):
        clone(model).set_params(l2=0.0).fit(X[:10], y[:10])
    with pytest.raises(ValueError, match="X has 40 samples of which 10 are distinct rows"):
        clone(model).set_params(l2=0.0).fit(np.tile(X[:10], (4, 1)), np.tile(y[:10], 4))
    with pytest.raises(TypeError, match="n_experts must be an integer"):
        model.set_params(n_experts=2.0).fit(X, y)
    with pytest.raises(ValueError, match="n_experts must be >= 1"):
        model.set_params(n_experts=0).fit(X, y)
    with pytest.raises(ValueError, match="init must be one of"):
        model.set_params(n_experts=2, init="nearest").fit(X, y)
    with pytest.raises(ValueError, match="unknown gating transform"):
        model.set_params(init="kmeans", gating="relu").fit(X, y)
    model.set_params(gating="identity").fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but MixtureOfExpertsClassifier is expecting 2"):
        model.predict(np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        model.predict_proba(bad[:20] * np.nan)
    with pytest.raises(ValueError, match="could not convert|dtype"):
        model.predict(np.array([["a", "b"]], dtype=object))
    # object arrays of numbers are converted, like the estimator checks expect.
    np.testing.assert_array_equal(model.predict(X[:5].astype(object)), model.predict(X[:5]))


def test_mixed_label_types_are_refused_clearly(data):
    X, y = data
    mixed = np.array([1 if label == 0 else "a" for label in y], dtype=object)  # ints beside strings
    with pytest.raises(ValueError, match=r"y mixes label types \(int such as 1, str such as 'a'\)|"
                                          r"y mixes label types \(str such as 'a', int such as 1\)"):
        MixtureOfExpertsClassifier(2, n_threads=1).fit(X, mixed)
    model = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1).fit(X, np.array(["a", "b", "c"])[y])
    with pytest.raises(ValueError, match="do not match classes_|not seen during fit"):
        model.loglik(X[:2], np.array([1, "a"], dtype=object))


def test_sparse_input_is_rejected(data):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = data
    with pytest.raises(TypeError, match="[Ss]parse"):
        MixtureOfExpertsClassifier(2, n_threads=1).fit(scipy_sparse.csr_matrix(X), y)


# ----------------------------------------------------------------------------------------------------------
# Pickling, cloning, pipelines, grid search, cross-validation
# ----------------------------------------------------------------------------------------------------------
def test_pickle_and_clone(data):
    X, y = data
    model = MixtureOfExpertsClassifier(2, gating="sigmoid", l2=0.5, random_state=0, n_threads=1).fit(X, y)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    assert restored.params_.allclose(model.params_, rtol=0, atol=0)
    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    assert not hasattr(fresh, "params_")


def test_pipeline_grid_search_and_cross_validation():
    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    pipe = make_pipeline(StandardScaler(), MixtureOfExpertsClassifier(2, l2=1.0, random_state=0, n_threads=1))
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, X, labels, cv=cv)
    assert scores.mean() > 0.9
    search = GridSearchCV(
        pipe,
        {"mixtureofexpertsclassifier__n_experts": [1, 2], "mixtureofexpertsclassifier__l2": [0.3, 3.0]},
        scoring="neg_log_loss",
        cv=cv,
    ).fit(X, labels)
    assert set(search.best_params_) == {"mixtureofexpertsclassifier__n_experts", "mixtureofexpertsclassifier__l2"}
    assert search.best_estimator_.predict(X[:5]).tolist() == ["setosa"] * 5


# ----------------------------------------------------------------------------------------------------------
# Real data: held-out log-loss against LogisticRegression
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", [load_iris, load_wine, load_breast_cancer])
def test_real_data_log_loss_is_competitive_with_logistic_regression(loader):
    """Two experts fit the training data at least as well as one (same ridge), and predict held-out data
    about as well as a linear model.

    The first is a property: a mixture of two experts contains every one-expert model, so its penalised
    training objective can only be lower where the fit stopped short of its maximum. The held-out
    comparison is a coarse bound against gross failure, not a measurement (one expert with the same
    ridge is LogisticRegression itself, tests/test_penalty.py); measured ratios 0.84, 1.00 and 1.04
    (iris, wine, breast cancer; 1.00, 1.26 and 1.04 with fastmoe 0.2's reference-class ridge). On these
    data sets the classes are (nearly) separable, so the unpenalised MLE does not exist;
    examples/real_data.py tunes both models by cross-validation and reports the numbers
    (docs/real_data.md).
    """
    X, y = loader(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    linear = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=10_000)).fit(X_train, y_train)
    mixture = make_pipeline(
        StandardScaler(), MixtureOfExpertsClassifier(2, l2=1.0, n_init=2, random_state=0, n_threads=1)
    )
    with warnings.catch_warnings():
        # a ridge does not bound the intercept of a class an expert never sees (its logit may drift)
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        mixture.fit(X_train, y_train)
        one = make_pipeline(StandardScaler(), MixtureOfExpertsClassifier(1, l2=1.0, n_threads=1)).fit(X_train, y_train)
    two_objective, one_objective = mixture[-1].objective_, one[-1].objective_
    assert two_objective >= one_objective - 1e-9 * abs(one_objective)
    loss_linear = log_loss(y_test, linear.predict_proba(X_test))
    loss_mixture = log_loss(y_test, mixture.predict_proba(X_test))
    assert np.isfinite(loss_mixture)
    assert loss_mixture < 1.5 * loss_linear
    assert accuracy_score(y_test, mixture.predict(X_test)) > 0.9
