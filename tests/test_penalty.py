"""The ridge: its two forms against an independent NumPy statement, LogisticRegression and relabelling."""

import itertools
import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import reference_numpy as ref
from conftest import random_params
from sklearn.linear_model import LogisticRegression

import fastmoe
from fastmoe._penalty import Penalty
from fastmoe.estimator import MixtureOfExpertsClassifier
from fastmoe.params import free_vector
from fastmoe.uncertainty import observed_information, parameter_table


def _shapes(params):
    return SimpleNamespace(n_experts=params.n_experts, n_classes=params.n_classes, n_features=params.n_features,
                           n_gate_features=params.n_gate_features)


@pytest.mark.parametrize("ridge", ["centred", "reference"])
@pytest.mark.parametrize("k, K", [(1, 4), (2, 2), (2, 3), (3, 2), (3, 4), (4, 3)])
def test_the_ridge_value_gradient_and_hessian_match_the_numpy_statement(ridge, k, K):
    rng = np.random.default_rng(10 * k + K)
    params = random_params(rng, k=k, K=K, d=2).normalized()
    W, V = params.packed()
    l2 = 0.7
    penalty = Penalty(l2, _shapes(params), ridge=ridge)
    assert penalty.total(W, V) == pytest.approx(ref.ridge(W, V, l2, ridge), rel=1e-12)
    grad, hess = ref.ridge_grad_hess(W, V, l2, ridge)
    theta = free_vector(W, V)
    np.testing.assert_allclose(penalty.gradient(theta), grad, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(penalty.hessian, hess, atol=1e-6)
    # The block pieces the M-steps use are the whole Hessian's blocks.
    n_gate = (k - 1) * (params.n_gate_features + 1)
    np.testing.assert_allclose(penalty.hessian[:n_gate, :n_gate], penalty.gate_hessian, atol=0)
    size = penalty.expert_hessian.shape[0]
    np.testing.assert_allclose(penalty.hessian[n_gate:n_gate + size, n_gate:n_gate + size], penalty.expert_hessian,
                               atol=0)
    # With two rows a block's two forms coincide, and where no block has more the Hessian is l2 times the mask.
    if k <= 2 and K <= 2:
        assert penalty.diagonal and np.array_equal(penalty.hessian, np.diag(l2 * penalty.mask))


def test_the_centred_ridge_does_not_see_how_experts_are_numbered():
    rng = np.random.default_rng(3)
    params = random_params(rng, k=4, K=3, d=2).normalized()
    W, V = params.packed()
    values = {}
    for ridge in ("centred", "reference"):
        penalty = Penalty(1.3, _shapes(params), ridge=ridge)
        totals = []
        for order in itertools.permutations(range(4)):
            Wp = W[list(order)] - W[order[-1]]  # renumbered, and the new last expert made the reference
            totals.append(penalty.total(Wp, V[list(order)]))
        values[ridge] = np.ptp(totals) / np.mean(totals)
    assert values["centred"] < 1e-13
    assert values["reference"] > 1e-2  # the reference ridge does see it


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_one_expert_with_a_ridge_is_logistic_regression(n_classes):
    """``l2`` is ``1 / C``: with two classes the binary ridge, with more the multinomial one."""
    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(600, 3))
    logits = X @ rng.normal(size=(3, n_classes)) * 1.5
    y = (logits + rng.gumbel(size=logits.shape)).argmax(axis=1)
    for C in (0.1, 1.0):
        reference = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
        result = fastmoe.fit(X, y, 1, l2=1.0 / C, tol=1e-12, n_threads=1)
        np.testing.assert_allclose(result.predict_proba(X), reference.predict_proba(X), atol=1e-7)


def test_relabelling_the_classes_does_not_change_a_ridge_fit():
    """Found by a QA pass: with fastmoe 0.2's ridge, renaming the classes moved the probabilities by 0.017
    (one expert) and 0.04 (two experts) with l2 = 1, since it shrinks towards whichever class sorts last."""
    truth = fastmoe.MoEParams(beta0=[0.5, 0.0], beta1=[[3.0, -2.0], [0.0, 0.0]],
                              a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
                              b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]])
    X, y = fastmoe.sample(truth, n=600, random_state=0)
    names, renamed = np.array(["cat", "dog", "eel"]), np.array(["zcat", "dog", "aeel"])
    gaps = {}
    for ridge in ("centred", "reference"):
        for k in (1, 2):
            first = MixtureOfExpertsClassifier(k, ridge=ridge, random_state=0, n_threads=1).fit(X, names[y])
            second = MixtureOfExpertsClassifier(k, ridge=ridge, random_state=0, n_threads=1).fit(X, renamed[y])
            # Columns follow classes_: sorted names, so put the second's in the first's order.
            order = [list(second.classes_).index(renamed[list(names).index(c)]) for c in first.classes_]
            gaps[ridge, k] = np.abs(first.predict_proba(X) - second.predict_proba(X)[:, order]).max()
    assert gaps["centred", 1] < 1e-7 and gaps["centred", 2] < 1e-6
    assert gaps["reference", 1] > 1e-3  # the test can fail: the reference ridge moves


def test_penalised_standard_errors_use_the_fits_ridge():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 2))
    logits = X @ rng.normal(size=(2, 4)) * 2.0
    y = (logits + rng.gumbel(size=logits.shape)).argmax(axis=1)
    l2 = 3.0
    for ridge in ("centred", "reference"):
        result = fastmoe.fit(X, y, 1, l2=l2, ridge=ridge, n_threads=1)
        assert result.ridge == ridge and not result.boundary
        R = ref.ridge_grad_hess(*result.params.normalized().packed(), l2, ridge)[1]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            table = parameter_table(result, X, y)
        J = observed_information(result.params, X, y)
        np.testing.assert_allclose(table.covariance, np.linalg.inv(J + R), rtol=1e-6, atol=1e-10)


def test_a_model_saved_by_fastmoe_0_2_keeps_its_ridge(tmp_path):
    X, y = fastmoe.sample(random_params(np.random.default_rng(0), k=2, K=3, d=2), n=300, random_state=0)
    model = MixtureOfExpertsClassifier(2, random_state=0, n_threads=1).fit(X, y)
    path = tmp_path / "model.json"
    model.save(path)
    data = json.loads(path.read_text())
    del data["settings"]["ridge"], data["fit_result"]["ridge"]  # as fastmoe 0.2 wrote it
    path.write_text(json.dumps(data))
    old = MixtureOfExpertsClassifier.load(path)
    assert old.ridge == "reference" and old.fit_result_.ridge == "reference"
    model.save(path)
    assert MixtureOfExpertsClassifier.load(path).ridge == "centred"
