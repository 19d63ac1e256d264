"""Model quantities at given parameters: log-likelihood, class, gating and expert probabilities, responsibilities."""

from __future__ import annotations

import numpy as np

from . import _dispatch
from ._validation import check_params, check_sample_weight, check_X, check_y, effective_n_threads

__all__ = [
    "loglik",
    "loglik_samples",
    "predict_proba",
    "predict_log_proba",
    "gate_proba",
    "expert_proba",
    "responsibilities",
]


def _prepare(params, X, n_threads):
    params = check_params(params)
    X = check_X(X, n_features=params.n_inputs)
    # The kernels take the experts' design: X itself when the experts read every column.
    X_expert, Z = params.designs(X)
    if Z.shape[1] != params.n_gate_features:
        raise ValueError(
            f"the gating transform gives {Z.shape[1]} gating features but beta1 has {params.n_gate_features}"
        )
    W, V = params.packed()
    return X_expert, Z, W, V, effective_n_threads(n_threads)


def _finite(values, what):
    """``values``, or a FloatingPointError when some are not finite.

    With finite inputs (``check_X`` bounds them) and finite coefficients the kernels' stable
    log-sum-exp gives finite results; NaN or inf means some linear predictor (coefficients times
    features) overflowed, and that is said rather than returned.
    """
    if not np.isfinite(values).all():
        raise FloatingPointError(f"{what} is not finite: some linear predictor (coefficients times features) "
                                 "overflows; the coefficients are too large for these inputs")
    return values


def _e_step(params, X, y, sample_weight, n_threads, resp, logp):
    X, Z, W, V, n_threads = _prepare(params, X, n_threads)
    y, _ = check_y(y, X.shape[0], params.n_classes)
    sw = check_sample_weight(sample_weight, X.shape[0])
    n, k = X.shape[0], params.n_experts
    resp_out = np.empty((n, k) if resp else (0, k))
    logp_out = np.empty(n if logp else 0)
    total = _dispatch.kernels.e_step(X, Z, y, sw, W, V, resp_out, logp_out, n_threads)
    return _finite(total, "the log-likelihood"), _finite(resp_out, "a responsibility"), \
        _finite(logp_out, "a log-likelihood")


def loglik(params, X, y, sample_weight=None, n_threads=None) -> float:
    """Log-likelihood ``sum_n w_n log p_G(y_n | x_n)`` of labels ``y`` given inputs ``X``."""
    return _e_step(params, X, y, sample_weight, n_threads, False, False)[0]


def loglik_samples(params, X, y, n_threads=None) -> np.ndarray:
    """Per-sample log-likelihoods ``log p_G(y_n | x_n)``, shape (n_samples,)."""
    return _e_step(params, X, y, None, n_threads, False, True)[2]


def responsibilities(params, X, y, n_threads=None) -> np.ndarray:
    """Posterior expert probabilities ``tau_ni = P(expert i | x_n, y_n)``, shape (n_samples, n_experts)."""
    return _e_step(params, X, y, None, n_threads, True, False)[1]


def predict_log_proba(params, X, n_threads=None) -> np.ndarray:
    """``log P(Y = s | x)`` for every class, shape (n_samples, n_classes)."""
    X, Z, W, V, n_threads = _prepare(params, X, n_threads)
    out = np.empty((X.shape[0], params.n_classes))
    _dispatch.kernels.predict(X, Z, W, V, out, np.empty((0, params.n_experts)), n_threads)
    return _finite(out, "a log-probability")


def predict_proba(params, X, n_threads=None) -> np.ndarray:
    """``P(Y = s | x)`` for every class, shape (n_samples, n_classes); rows sum to one."""
    return np.exp(predict_log_proba(params, X, n_threads))


def gate_proba(params, X, n_threads=None) -> np.ndarray:
    """Gating probabilities ``pi_i(x)``, shape (n_samples, n_experts)."""
    X, Z, W, V, n_threads = _prepare(params, X, n_threads)
    gate = np.empty((X.shape[0], params.n_experts))
    _dispatch.kernels.predict(X, Z, W, V, np.empty((X.shape[0], params.n_classes)), gate, n_threads)
    return _finite(gate, "a gating probability")


def expert_proba(params, X) -> np.ndarray:
    """Every expert's class probabilities ``f_i(s | x)``, shape (n_samples, n_experts, n_classes).

    This is the one place an (n, k, K) array is formed, because it is what is asked for.
    """
    X, _, _, V, _ = _prepare(params, X, 1)
    logits = np.einsum("ikd,nd->nik", V[:, :, 1:], X) + V[None, :, :, 0]
    from scipy.special import softmax  # on first use: keeps ``import fastmoe`` light

    with np.errstate(over="ignore", invalid="ignore"):  # reported below, by name
        return _finite(softmax(logits, axis=2), "an expert's class probability")
