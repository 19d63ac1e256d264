"""Mixture of experts vs logistic regression on the data sets scikit-learn ships.

For each data set (iris, wine, breast cancer, digits reduced to 10 principal components), an outer
stratified 5-fold cross-validation measures the held-out log-loss (and accuracy) of

- ``LogisticRegression(C=inf)``: the unpenalised multinomial-logistic MLE;
- ``LogisticRegression`` with ``C`` tuned by an inner 3-fold grid search on log-loss;
- ``MixtureOfExpertsClassifier`` with ``n_experts`` in {1, 2, 3} and ``l2`` tuned the same way
  (``l2`` plays the role of ``1 / C``; ``n_experts = 1`` *is* logistic regression, so the mixture's
  grid contains the linear model and cross-validation decides whether extra experts help). A number
  of experts whose model has more free parameters than an inner training fold has samples is left
  out of the grid (``fastmoe.fit`` refuses such data).

Everything (scaling, PCA) sits inside a ``Pipeline``, so no information leaks from the held-out fold.
These data sets are (nearly) separable, so the unpenalised MLE of either model does not exist: the
ridge is what makes the comparison meaningful.

Run ``python examples/real_data.py`` (a few minutes on two cores); ``--datasets iris wine`` picks a
subset. The numbers in ``docs/real_data.md`` come from this script.
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fastmoe
from fastmoe.estimator import MixtureOfExpertsClassifier

DATASETS = {
    "iris": load_iris,
    "wine": load_wine,
    "breast_cancer": load_breast_cancer,
    "digits": load_digits,
}
L2_GRID = [0.1, 1.0, 10.0]
N_EXPERTS_GRID = [1, 2, 3]


def preprocessing(name):
    """Standardise; digits are also reduced to 10 whitened principal components."""
    if name == "digits":
        return [StandardScaler(), PCA(n_components=10, whiten=True, random_state=0)]
    return [StandardScaler()]


def n_free_params(n_experts, n_features, n_classes):
    """``(k - 1)(d + 1) + k (K - 1)(d + 1)`` for standard gating."""
    return (n_experts - 1) * (n_features + 1) + n_experts * (n_classes - 1) * (n_features + 1)


def feasible_n_experts(n_samples, n_features, n_classes, n_outer, n_inner):
    """The candidates of ``N_EXPERTS_GRID`` that an inner training fold can identify."""
    n_fit = int(n_samples * (1 - 1 / n_outer) * (1 - 1 / n_inner))
    return [k for k in N_EXPERTS_GRID if n_free_params(k, n_features, n_classes) <= n_fit]


def models(name, inner_cv, n_threads, n_experts_grid):
    linear_mle = make_pipeline(*preprocessing(name), LogisticRegression(C=np.inf, max_iter=10_000))
    linear_tuned = GridSearchCV(
        make_pipeline(*preprocessing(name), LogisticRegression(max_iter=10_000)),
        {"logisticregression__C": [1.0 / l2 for l2 in L2_GRID]},
        scoring="neg_log_loss",
        cv=inner_cv,
    )
    mixture_tuned = GridSearchCV(
        make_pipeline(*preprocessing(name), MixtureOfExpertsClassifier(random_state=0, n_threads=n_threads)),
        {"mixtureofexpertsclassifier__n_experts": n_experts_grid, "mixtureofexpertsclassifier__l2": L2_GRID},
        scoring="neg_log_loss",
        cv=inner_cv,
    )
    return {
        "LogisticRegression (C=inf)": linear_mle,
        "LogisticRegression (C tuned)": linear_tuned,
        "MixtureOfExperts (k, l2 tuned)": mixture_tuned,
    }


def chosen(search):
    """The tuned hyper-parameters of a fitted GridSearchCV, shortened for printing."""
    return {key.split("__")[-1]: value for key, value in search.best_params_.items()}


def run(names, n_folds=5, n_threads=None, seed=0):
    outer = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    inner = StratifiedKFold(3, shuffle=True, random_state=seed + 1)
    rows = []
    for name in names:
        X, y = DATASETS[name](return_X_y=True)
        n_classes = len(np.unique(y))
        n_features = 10 if name == "digits" else X.shape[1]
        grid = feasible_n_experts(X.shape[0], n_features, n_classes, n_folds, inner.get_n_splits())
        print(f"\n{name}: {X.shape[0]} samples, {X.shape[1]} features, {n_classes} classes; n_experts grid {grid}")
        for label, model in models(name, inner, n_threads, grid).items():
            started = time.perf_counter()
            scores = cross_validate(
                model, X, y, cv=outer, scoring=("neg_log_loss", "accuracy"), return_estimator=True
            )
            elapsed = time.perf_counter() - started
            loss = -scores["test_neg_log_loss"]
            acc = scores["test_accuracy"]
            picks = [chosen(est) for est in scores["estimator"] if isinstance(est, GridSearchCV)]
            rows.append((name, label, loss.mean(), loss.std(), acc.mean(), elapsed, picks))
            print(
                f"  {label:32s} log-loss {loss.mean():.4f} +- {loss.std():.4f}   accuracy {acc.mean():.4f}   "
                f"{elapsed:6.1f}s"
            )
            for pick in picks:
                print(f"      chosen: {pick}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with warnings.catch_warnings():
        # Some grid points (small l2, several experts) let a coefficient drift (a ridge does not bound
        # the intercept of a class an expert never sees); such fits warn, and cross-validation judges them.
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        run(args.datasets, args.folds, args.threads)


if __name__ == "__main__":
    main()
