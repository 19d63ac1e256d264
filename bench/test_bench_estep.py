"""Group ``estep``: log-likelihood and responsibilities in one pass over the data."""

import numpy as np
import pytest

import _benchlib as bl

GROUP = "estep"



@pytest.mark.parametrize("impl", bl.impls())
@pytest.mark.parametrize("case", bl.CASES)
def test_estep(benchmark, timed, data, results_cache, full, case, impl):
    shape, n, X, y, W, V = bl.prepare(benchmark, data, full, GROUP, case, impl)
    if impl.startswith("numpy"):
        result = timed(lambda: bl.np_estep(X, y, W, V))
        results_cache[(GROUP, case, "numpy")] = result
        return
    t = bl.n_threads_of(impl)
    resp = np.empty((n, W.shape[0]))
    loglik, resp = timed(lambda: bl.fm_estep(X, y, W, V, resp, t))
    ll_ref, resp_ref = bl.numpy_reference(results_cache, GROUP, case, bl.np_estep, X, y, W, V)
    np.testing.assert_allclose(loglik, ll_ref, rtol=1e-10)
    np.testing.assert_allclose(resp, resp_ref, rtol=0, atol=1e-10)
    if t == 1:
        results_cache[(GROUP, case, "fastmoe-1t")] = (loglik, resp.copy())
    elif (GROUP, case, "fastmoe-1t") in results_cache:  # thread-count invariance: bitwise
        ll1, resp1 = results_cache.pop((GROUP, case, "fastmoe-1t"))
        assert loglik == ll1 and np.array_equal(resp, resp1)
