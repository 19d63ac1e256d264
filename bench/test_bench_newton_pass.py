"""Group ``newton_pass``: the fused E-step + every M-step gradient and (negative) Hessian."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import _benchlib as bl

GROUP = "newton_pass"


def reference(cache, case, X, y, W, V):
    key = (GROUP, case, "numpy")
    if key not in cache:
        with threadpool_limits(limits=1, user_api="blas"):
            cache[key] = bl.np_newton_pass(X, y, W, V)
    return cache[key]


def check_close(got, want):
    for name, value in want.items():
        value = np.asarray(value)
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-11 * scale, err_msg=name)


@pytest.mark.parametrize("impl", bl.impls())
@pytest.mark.parametrize("case", bl.CASES)
def test_newton_pass(benchmark, timed, data, results_cache, full, case, impl):
    if bl.needs_full(GROUP, case, impl) and not full:
        pytest.skip("largest NumPy case: run with --bench-full")
    shape, n, X, y = data(case)
    W, V = bl.start(shape)
    bl.describe(benchmark, GROUP, case, impl)
    if impl.startswith("numpy"):
        results_cache[(GROUP, case, "numpy")] = timed(lambda: bl.np_newton_pass(X, y, W, V))
        return
    t = bl.n_threads_of(impl)
    prob = bl.problem(X, y, shape, t)
    result = timed(lambda: bl.fm_newton_pass(prob, W, V))
    check_close(result, reference(results_cache, case, X, y, W, V))
    if t == 1:
        results_cache[(GROUP, case, "fastmoe-1t")] = result
    elif (GROUP, case, "fastmoe-1t") in results_cache:  # thread-count invariance: bitwise
        one = results_cache.pop((GROUP, case, "fastmoe-1t"))
        for name in one:
            assert np.array_equal(result[name], one[name]), name
