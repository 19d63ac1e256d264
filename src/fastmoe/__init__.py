"""fastmoe: fast maximum-likelihood fitting of softmax-gated multinomial-logistic mixtures of experts.

``P(Y = s | x) = sum_i softmax_i(beta1_i . M(x) + beta0_i) * softmax_s(a_si . x + b_si)``; ``M`` is the
identity (standard softmax gating) or a bounded transform (modified softmax gating).
"""

from . import losses
from ._openmp import openmp_enabled
from .exceptions import ConvergenceWarning, FitWarning
from .fit import FitResult, fit
from .inference import (
    expert_proba,
    gate_proba,
    loglik,
    loglik_samples,
    predict_log_proba,
    predict_proba,
    responsibilities,
)
from .params import GATING_TRANSFORMS, MoEParams
from .sampling import sample

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "FitResult",
    "FitWarning",
    "GATING_TRANSFORMS",
    "MoEParams",
    "expert_proba",
    "fit",
    "gate_proba",
    "loglik",
    "loglik_samples",
    "losses",
    "openmp_enabled",
    "predict_log_proba",
    "predict_proba",
    "responsibilities",
    "sample",
    "__version__",
]
