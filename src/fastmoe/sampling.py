"""Drawing data from a mixture of experts (MODEL.md section 3)."""

from __future__ import annotations

import numpy as np

from . import _dispatch
from ._validation import (check_params, check_positive_int, check_random_state, check_X, effective_n_threads,
                          is_finite_real)

__all__ = ["sample"]


def sample(params, n=None, X=None, random_state=None, *, low=-1.0, high=1.0, return_latent=False,
           n_threads=None):
    """Draw labels (and inputs) from the model.

    Parameters
    ----------
    params : MoEParams
    n : int, optional
        Number of samples when ``X`` is not given; then ``X ~ Uniform[low, high]^d`` with
        ``d = params.n_inputs`` (all the columns the gating and the experts read from).
    X : array-like of shape (n_samples, params.n_inputs), optional
        Inputs to draw labels for (the full ``X``: the parameters select the gating's and the experts'
        columns).
    random_state : None, int or numpy.random.Generator
        The only source of randomness: the same seed gives the same draw for any thread count.
    low, high : float
        Bounds of the uniform law of X.
    return_latent : bool
        Also return the latent expert of each sample.
    n_threads : int, optional
        OpenMP threads of the labels' kernel (default: all usable cores); the draw is the same for any.

    Returns
    -------
    X : ndarray (n_samples, n_inputs)
    y : ndarray of int64 (n_samples,)
    z : ndarray of int64 (n_samples,), only with ``return_latent``
        Latent expert ``z_n ~ Categorical(pi(x_n))``; ``y_n ~ Categorical(f_{z_n}(. | x_n))``.
    """
    params = check_params(params)
    rng = check_random_state(random_state)
    if X is None:
        if n is None:
            raise ValueError("give either n (to draw X ~ Uniform[low, high]^d) or X")
        n = check_positive_int(n, "n")
        if not (is_finite_real(low) and is_finite_real(high) and low < high):
            raise ValueError(f"need finite low < high, got low={low}, high={high}")
        X = rng.uniform(low, high, size=(n, params.n_inputs))
    else:
        X = check_X(X, n_features=params.n_inputs)
        if n is not None and n != X.shape[0]:
            raise ValueError(f"n={n} but X has {X.shape[0]} rows")
    X_expert, Z = params.designs(X)
    W, V = params.packed()
    uniforms = rng.random((X.shape[0], 2))
    y = np.empty(X.shape[0], dtype=np.int64)
    z = np.empty(X.shape[0], dtype=np.int64)
    _dispatch.kernels.sample_labels(X_expert, Z, W, V, uniforms, y, z, effective_n_threads(n_threads))
    if (y < 0).any():  # the kernel's mark of a logit that is not finite
        raise FloatingPointError("a linear predictor (coefficients times features) overflows for some rows of X: "
                                 "the class probabilities there are undefined; the coefficients are too large "
                                 "for these inputs")
    return (X, y, z) if return_latent else (X, y)
