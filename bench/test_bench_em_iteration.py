"""Group ``em_iteration``: one steady-state EM iteration (pass + Newton solves + step acceptance).

fastmoe: the common-case body of ``run_em``'s loop, one fused pass per iteration (the pass at the
current parameters comes from the previous iteration, so it is done before timing). NumPy: one
``reference_numpy.em_step``. Both start from the same point near the truth; the new parameters are
checked equal.
"""

import numpy as np
import pytest

import _benchlib as bl

GROUP = "em_iteration"



@pytest.mark.parametrize("impl", bl.impls())
@pytest.mark.parametrize("case", bl.CASES)
def test_em_iteration(benchmark, timed, data, results_cache, full, case, impl):
    shape, n, X, y, W, V = bl.prepare(benchmark, data, full, GROUP, case, impl)
    if impl.startswith("numpy"):
        results_cache[(GROUP, case, "numpy")] = timed(lambda: bl.np_em_iteration(X, y, W, V))
        return
    t = bl.n_threads_of(impl)
    step = bl.FastmoeEMIteration(bl.problem(X, y, shape, t), W, V)
    W_new, V_new, accepted = timed(step)
    assert accepted, "the benchmarked EM step was not accepted: the timed path is not the common case"
    W_ref, V_ref, _ = bl.numpy_reference(results_cache, GROUP, case, bl.np_em_iteration, X, y, W, V)
    np.testing.assert_allclose(W_new, W_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(V_new, V_ref, rtol=1e-8, atol=1e-10)
