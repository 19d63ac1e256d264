"""Group ``global``: one ``default`` fit per issue-12 problem (bench/global_max.py), timed once.

The fit is ``fastmoe.fit`` with the installed defaults, ``random_state=0``, ``tol=1e-10``,
``max_iter=5000`` and 1 thread, on the problem's data (drawn outside the timed region). Whether it
reached the global maximum goes into ``extra_info``: ``objective``, ``best_known`` (from
``bench/results/global/<problem>/best_known.json`` when ``global_max.py`` has run; else None),
``reached`` (within 1e-6 relative) and ``shortfall`` (nats), ``diverged``, ``converged``. Nothing is
asserted about reaching: that is what the benchmark measures, over 10 seeds, in ``global_max.py``.
Problems with n > 1e4 need ``--bench-full``. The full table: ``python bench/global_max.py run``.
"""

import pytest

import global_max as gm

GROUP = "global"


@pytest.mark.parametrize("impl", ["default-1t"])
@pytest.mark.parametrize("case", [p.name for p in gm.PROBLEMS])
def test_global_default(benchmark, full, case, impl):
    problem = gm.find_problems([case])[0]
    if problem.n > 10**4 and not full:
        pytest.skip("n > 1e4: run with --bench-full")
    truth, X, y = problem.truth_and_data()
    run = gm.Case(problem, truth, X, y, n_threads=1, store=gm.Store())
    benchmark.group = GROUP
    benchmark.extra_info.update(case=case, impl=impl, n=problem.n, d=problem.d, k=problem.k, K=problem.K,
                                gating=problem.gating, n_threads=1, defaults=gm.fit_defaults())
    result = benchmark.pedantic(lambda: gm._silent_fit(X, y, run, random_state=0), rounds=1, iterations=1)
    best = gm.Store().best_known(problem.name)
    best = None if best is None else max(best["objective"], result.objective if not result.diverged else -1e300)
    info = {"objective": result.objective, "diverged": result.diverged, "converged": result.converged,
            "n_iter": result.n_iter, "best_known": best}
    if best is not None:
        info["shortfall"] = best - result.objective
        info["reached"] = (not result.diverged) and result.objective >= best - gm.REACH_RTOL * abs(best)
    benchmark.extra_info.update(info)
