"""Group ``newton_pass``: the fused E-step + every M-step gradient and (negative) Hessian."""

import numpy as np
import pytest

import _benchlib as bl

GROUP = "newton_pass"



def check_close(got, want):
    for name, value in want.items():
        value = np.asarray(value)
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(got[name], value, rtol=1e-9, atol=1e-11 * scale, err_msg=name)


@pytest.mark.parametrize("impl", bl.impls())
@pytest.mark.parametrize("case", bl.CASES)
def test_newton_pass(benchmark, timed, data, results_cache, full, case, impl):
    shape, n, X, y, W, V = bl.prepare(benchmark, data, full, GROUP, case, impl)
    if impl.startswith("numpy"):
        results_cache[(GROUP, case, "numpy")] = timed(lambda: bl.np_newton_pass(X, y, W, V))
        return
    t = bl.n_threads_of(impl)
    prob = bl.problem(X, y, shape, t)
    result = timed(lambda: bl.fm_newton_pass(prob, W, V))
    check_close(result, bl.numpy_reference(results_cache, GROUP, case, bl.np_newton_pass, X, y, W, V))
    if t == 1:
        results_cache[(GROUP, case, "fastmoe-1t")] = result
    elif (GROUP, case, "fastmoe-1t") in results_cache:  # thread-count invariance: bitwise
        one = results_cache.pop((GROUP, case, "fastmoe-1t"))
        for name in one:
            assert np.array_equal(result[name], one[name]), name
