"""fastmoe: fast maximum-likelihood fitting of softmax-gated multinomial-logistic mixtures of experts.

``P(Y = s | x) = sum_i softmax_i(beta1_i . M(x) + beta0_i) * softmax_s(a_si . x + b_si)``; ``M`` is the
identity (standard softmax gating) or a bounded transform (modified softmax gating).
"""

from . import losses
from ._dispatch import show_config
from ._openmp import openmp_enabled
from .exceptions import FitWarning, SearchWarning
from ._fit import FitResult, fit
from ._dendrogram import Dendrogram, dendrogram
from ._predict import (
    expert_proba,
    gate_proba,
    loglik,
    loglik_samples,
    predict_log_proba,
    predict_proba,
    responsibilities,
)
from .params import GATING_TRANSFORMS, Bounds, MoEParams, free_parameter_names, free_parameters
from .sampling import sample
from .uncertainty import (
    ParameterTable,
    UncertaintyWarning,
    bootstrap_table,
    expected_information,
    observed_information,
    parameter_table,
)

# These load scikit-learn (about a second), so they load on first use; scikit-learn is optional for
# the rest.
_LAZY = {
    "ConvergenceWarning": "exceptions",
    "MixtureOfExpertsClassifier": "estimator",
    "select_n_experts": "model_selection",
    "SelectionResult": "model_selection",
}


def __getattr__(name):
    if name == "plot":  # the pictures need matplotlib, imported by the module's functions on use
        import importlib

        return importlib.import_module(".plot", __name__)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fastmoe' has no attribute {name!r}")

__version__ = "0.3.0"

__all__ = [
    "Bounds",
    "ConvergenceWarning",
    "Dendrogram",
    "FitResult",
    "FitWarning",
    "GATING_TRANSFORMS",
    "MixtureOfExpertsClassifier",
    "MoEParams",
    "ParameterTable",
    "SearchWarning",
    "SelectionResult",
    "UncertaintyWarning",
    "bootstrap_table",
    "dendrogram",
    "expected_information",
    "expert_proba",
    "fit",
    "free_parameter_names",
    "free_parameters",
    "gate_proba",
    "loglik",
    "loglik_samples",
    "losses",
    "observed_information",
    "openmp_enabled",
    "parameter_table",
    "plot",
    "predict_log_proba",
    "predict_proba",
    "responsibilities",
    "sample",
    "select_n_experts",
    "show_config",
    "__version__",
]
