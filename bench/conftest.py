"""pytest-benchmark configuration of the fastmoe benchmark suite (see bench/README.md).

Run with ``pytest bench/ --benchmark-only`` (``--bench-full`` adds the largest NumPy cases and plain-EM
fits at n = 1e6). The plain test run (``testpaths = ["tests"]``) never collects this directory.

- Data are drawn once per session per (shape, n) and shared by every group; nothing data-related
  happens inside a timed region.
- Each case is timed for fastmoe with 1 thread and with all threads, and for the NumPy reference
  with its BLAS pinned to 1 thread (threadpoolctl); the results are checked against the reference
  (and all-thread fastmoe against 1-thread fastmoe, bitwise) outside the timed region.
- Benchmarks are grouped by group *and* case (``--benchmark-group-by=group,param:case`` unless
  given), so each pytest-benchmark table compares implementations on the same data.
- The CPU model, thread counts, compile flags, BLAS/OpenMP pools and the load average are written
  into the ``machine_info`` of ``--benchmark-json`` files.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import _benchlib as bl


def pytest_addoption(parser):
    group = parser.getgroup("fastmoe-bench")
    group.addoption("--bench-full", action="store_true", default=False,
                    help="also run the largest cases (NumPy at n=1e6 for d=10, plain-EM fits at n=1e6)")
    group.addoption("--bench-budget", type=float, default=1.0,
                    help="target seconds of timed rounds per benchmark (default 1.0); rounds are clipped to [3, 25]")


def pytest_configure(config):
    config._fastmoe_loadavg_start = list(os.getloadavg())
    # Group tables by group and data case, unless the user asked for another grouping.
    opt = getattr(config.option, "benchmark_group_by", None)
    if opt == "group":
        config.option.benchmark_group_by = "group,param:case"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastmoe"] = bl.machine_summary()
    machine_info["fastmoe"]["loadavg"] = getattr(config, "_fastmoe_loadavg_start", None)
    machine_info["fastmoe"]["bench_full"] = bool(config.getoption("--bench-full"))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["machine_info"].setdefault("fastmoe", {})["loadavg_end"] = list(os.getloadavg())


@pytest.fixture(scope="session")
def full(request):
    return bool(request.config.getoption("--bench-full"))


@pytest.fixture(scope="session")
def data():
    """``data(case) -> (shape, n, X, y)``, drawn once per session."""
    cache = {}

    def get(case):
        if case not in cache:
            shape, n = bl.split_case(case)
            cache[case] = (shape, n) + bl.make_data(shape, n)
        return cache[case]

    return get


@pytest.fixture(scope="session")
def results_cache():
    """Per-(group, case, impl) results, for the equality checks done outside the timed regions."""
    return {}


@pytest.fixture
def timed(benchmark, request):
    """``timed(fn, blas_threads=1, warmup=True) -> fn's result``.

    One untimed call (warm-up; its result is the one checked), then ``pedantic`` rounds adding up to
    about ``--bench-budget`` seconds (3 to 25 rounds). ``warmup=False`` times a single round only (for
    the minute-long NumPy fits). BLAS is pinned with threadpoolctl; fastmoe's OpenMP thread count is
    passed explicitly to every kernel, so its pool is left alone.
    """
    budget = request.config.getoption("--bench-budget")

    def run(fn, blas_threads=1, warmup=True):
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            if not warmup:
                return benchmark.pedantic(fn, rounds=1, iterations=1)
            t0 = time.perf_counter()
            result = fn()
            once = time.perf_counter() - t0
            rounds = int(np.clip(budget / max(once, 1e-9), 3, 25))
            benchmark.pedantic(fn, rounds=rounds, iterations=1)
        benchmark.extra_info["first_call_s"] = once
        return result

    return run
