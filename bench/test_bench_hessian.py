"""Groups ``hessian_pass`` (the exact Hessian of the log-likelihood) and ``q_values`` (M-step objectives).

``hessian_pass``: fastmoe ``Problem.hessian_pass`` (the ``loglik_hessian_pass`` kernel plus the expansion of
its packed blocks to the full (P, P) matrix) against ``reference_numpy.full_loglik_grad_hess`` plus the
reference log-likelihood. The reference forms (n, k, P) arrays of per-sample gradients, so it runs only
where that fits in memory (see ``needs_full``). ``q_values``: ``Problem.q_values`` at trial parameters with
responsibilities recomputed from the current ones, against ``q_gate`` and ``q_expert``.
"""

import numpy as np
import pytest

import _benchlib as bl

HESSIAN, QVALUES = "hessian_pass", "q_values"


def _check(got, want, rtol):
    for name, value in want.items():
        value = np.asarray(value)
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=rtol * 1e-2 * scale, err_msg=name)


def _bitwise_across_threads(results_cache, group, case, t, result):
    if t == 1:
        results_cache[(group, case, "fastmoe-1t")] = result
    elif (group, case, "fastmoe-1t") in results_cache:
        one = results_cache.pop((group, case, "fastmoe-1t"))
        for name in one:
            assert np.array_equal(result[name], one[name]), name


@pytest.mark.parametrize("impl", bl.impls())
@pytest.mark.parametrize("case", bl.CASES)
def test_hessian_pass(benchmark, timed, data, results_cache, full, case, impl):
    shape, n, X, y, W, V = bl.prepare(benchmark, data, full, HESSIAN, case, impl)
    if impl.startswith("numpy"):
        results_cache[(HESSIAN, case, "numpy")] = timed(lambda: bl.np_hessian_pass(X, y, W, V))
        return
    t = bl.n_threads_of(impl)
    prob = bl.problem(X, y, shape, t)
    result = timed(lambda: bl.fm_hessian_pass(prob, W, V))
    if (HESSIAN, case, "numpy") in results_cache:
        _check(result, results_cache[(HESSIAN, case, "numpy")], 1e-9)
    _bitwise_across_threads(results_cache, HESSIAN, case, t, result)


@pytest.mark.parametrize("impl", bl.impls())
@pytest.mark.parametrize("case", bl.CASES)
def test_q_values(benchmark, timed, data, results_cache, full, case, impl):
    shape, n, X, y, W, V = bl.prepare(benchmark, data, full, QVALUES, case, impl)
    W_new, V_new = bl.trial(W, V)
    if impl.startswith("numpy"):
        results_cache[(QVALUES, case, "numpy")] = timed(lambda: bl.np_q_values(X, y, W, V, W_new, V_new))
        return
    t = bl.n_threads_of(impl)
    prob = bl.problem(X, y, shape, t)
    result = timed(lambda: bl.fm_q_values(prob, W, V, W_new, V_new))
    _check(result, bl.numpy_reference(results_cache, QVALUES, case, bl.np_q_values, X, y, W, V, W_new, V_new),
           1e-10)
    _bitwise_across_threads(results_cache, QVALUES, case, t, result)
