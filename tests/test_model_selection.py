"""Information criteria and the choice of the number of experts (fastmoe.model_selection)."""

import warnings

import numpy as np
import pytest

import fastmoe
from fastmoe.estimator import MixtureOfExpertsClassifier
from fastmoe.model_selection import SelectionResult, select_n_experts


@pytest.fixture(scope="module")
def two_expert_data():
    truth = fastmoe.MoEParams(
        beta0=[0.0, 0.0],
        beta1=[[4.0, 0.0], [0.0, 0.0]],
        a=[[[0.0, 3.0], [0.0, 0.0]], [[0.0, -3.0], [0.0, 0.0]]],
        b=[[0.0, 0.0], [0.0, 0.0]],
    )
    X, y = fastmoe.sample(truth, n=3000, random_state=5, low=-2.0, high=2.0)
    return X, np.array(["left", "right"])[y]


def test_information_criteria_of_the_fit_result(well_separated):
    X, y = fastmoe.sample(well_separated, n=2000, random_state=1)
    result = fastmoe.fit(X, y, 2, random_state=0, n_threads=1)
    p = 1 * 3 + 2 * 2 * 3
    assert result.n_free_params == p
    assert result.bic == pytest.approx(-2 * result.loglik + p * np.log(2000))
    assert result.aic == pytest.approx(-2 * result.loglik + 2 * p)


@pytest.mark.parametrize("criterion", ["bic", "aic"])
def test_selects_the_true_number_of_experts(two_expert_data, criterion):
    X, y = two_expert_data
    with warnings.catch_warnings():
        # the over-specified candidate may run its coefficients off (its MLE need not exist): it is
        # then reported as diverged and not admissible; its likelihood has flat ridges with near-tied
        # maxima, of which the best may be reached by one start only (a SearchWarning)
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        warnings.simplefilter("ignore", fastmoe.SearchWarning)
        selection = select_n_experts(X, y, (1, 2, 3), criterion=criterion, n_init=2, random_state=0, n_threads=1)
    assert isinstance(selection, SelectionResult)
    scores = np.where(selection.admissible, selection.table[criterion], np.inf)
    assert selection.best_n_experts == selection.table["n_experts"][np.argmin(scores)]
    if criterion == "bic":
        assert selection.best_n_experts == 2  # BIC is consistent; AIC may prefer an extra expert
    else:
        assert selection.best_n_experts >= 2
    assert selection.best_estimator is selection.estimators[selection.best_n_experts]
    assert selection.best_estimator.classes_.tolist() == ["left", "right"]
    table = selection.table
    np.testing.assert_array_equal(table["n_experts"], [1, 2, 3])
    np.testing.assert_array_equal(table["n_free_params"], [3, 9, 15])
    np.testing.assert_allclose(table["bic"], -2 * table["loglik"] + table["n_free_params"] * np.log(len(y)))
    np.testing.assert_allclose(table["aic"], -2 * table["loglik"] + 2 * table["n_free_params"])
    for k, model in selection.estimators.items():
        assert model.n_experts == k
        assert model.bic_ == pytest.approx(table["bic"][k - 1])
    # one expert cannot describe a gated switch of the slope's sign
    assert table["loglik"][1] > table["loglik"][0] + 100
    np.testing.assert_array_equal(selection.admissible, table["converged"] & ~table["diverged"])
    rows = selection.rows()
    assert rows[1]["n_experts"] == 2 and isinstance(rows[1]["converged"], bool)
    text = str(selection)
    assert "n_experts" in text and "*" in text


def test_template_estimator_is_cloned(two_expert_data):
    X, y = two_expert_data
    template = MixtureOfExpertsClassifier(gating="tanh", l2=0.1, random_state=0, n_threads=1)
    selection = select_n_experts(X, y, [2, 1], estimator=template)
    assert not hasattr(template, "params_")
    assert [m.gating for m in selection.estimators.values()] == ["tanh", "tanh"]
    assert list(selection.table["n_experts"]) == [2, 1]
    # with a ridge the reported loglik is the unpenalised one
    assert selection.estimators[2].log_likelihood_ > selection.estimators[2].objective_


def test_non_converged_candidates_are_excluded_unless_all_are(two_expert_data):
    X, y = two_expert_data
    with pytest.warns(fastmoe.ConvergenceWarning), warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.SearchWarning)  # starts stopped after 2 iterations agree on nothing
        selection = select_n_experts(X, y, (1, 2), max_iter=2, random_state=0, n_threads=1)
    converged = selection.table["converged"] & ~selection.table["diverged"]
    if converged.any():
        assert converged[list(selection.table["n_experts"]).index(selection.best_n_experts)]
    else:
        assert selection.admissible.all()
        assert selection.best_n_experts == selection.table["n_experts"][np.argmin(selection.table["bic"])]


def test_bad_arguments(two_expert_data):
    X, y = two_expert_data
    with pytest.raises(ValueError, match="criterion"):
        select_n_experts(X, y, (1, 2), criterion="hqic")
    with pytest.raises(ValueError, match="repeated"):
        select_n_experts(X, y, (1, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        select_n_experts(X, y, ())
    with pytest.raises(ValueError, match="n_experts must be >= 1"):
        select_n_experts(X, y, (0, 1))
    with pytest.raises(TypeError, match="not both"):
        select_n_experts(X, y, (1,), estimator=MixtureOfExpertsClassifier(), l2=1.0)
    with pytest.raises(TypeError, match="MixtureOfExpertsClassifier"):
        select_n_experts(X, y, (1,), estimator=object())


def test_a_sweep_refuses_candidates_it_cannot_fit_before_fitting_any(monkeypatch):
    # 60 rows, 6 features, 3 classes: from 4 experts on the model has more free parameters than rows,
    # which a fit at l2 = 0 refuses. The sweep used to fit 1, 2 and 3 experts first and then fail.
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 6)), rng.integers(0, 3, 60)
    fits, set_fitted = [], MixtureOfExpertsClassifier._set_fitted
    monkeypatch.setattr(MixtureOfExpertsClassifier, "_set_fitted",
                        lambda self, *args: fits.append(self.n_experts) or set_fitted(self, *args))
    with pytest.raises(ValueError, match=r"candidates \[4, 5\] cannot be fitted .*with 4 experts: X has 60 samples"):
        select_n_experts(X, y, (1, 2, 5, 3, 4), l2=0.0)
    assert fits == []
    # A problem with the data rather than the candidates is the fit's own error.
    with pytest.raises(ValueError, match="only one class"):
        select_n_experts(X, np.zeros(60, dtype=int), (1, 2))
    # Refusals that depend on the number of experts in fastmoe.fit itself: a template init with another
    # number of experts, and curvature matrices larger than memory (a machine of 60 KiB).
    template = MixtureOfExpertsClassifier(2, l2=1.0).fit(X, y)
    with pytest.raises(ValueError, match=r"candidates \[1, 3\] .*init has 2 experts but n_experts=1"):
        select_n_experts(X, y, (1, 2, 3), l2=1.0, init=template.params_)
    monkeypatch.setattr("fastmoe._fit._physical_memory", lambda: 60 * 1024)
    with pytest.raises(ValueError, match=r"candidates \[12\] .*curvature matrices need"):
        select_n_experts(X, y, (1, 2, 12), l2=1.0)
    assert fits == [2]  # the template's own fit
    monkeypatch.undo()
    monkeypatch.setattr(MixtureOfExpertsClassifier, "_set_fitted",
                        lambda self, *args: fits.append(self.n_experts) or set_fitted(self, *args))
    fits.clear()
    # Weights summing to less than one observation make log n negative: refused before any fit.
    for method in ("sweep", "dendrogram"):
        with pytest.raises(ValueError, match="sums to 0.1, less than one observation"):
            select_n_experts(X, y, (1, 2), method=method, l2=1.0, sample_weight=np.full(60, 0.1 / 60))
    assert fits == []
    # With a ridge every candidate can be fitted.
    result = select_n_experts(X, y, (1, 4), l2=1.0, n_init=1, random_state=0, max_iter=50)
    assert sorted(result.estimators) == [1, 4] and fits == [1, 4]
