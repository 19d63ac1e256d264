"""Shared pieces of the benchmark suite: cases, data, the timed functions of both implementations.

Imported by ``bench/conftest.py``, the ``bench/test_bench_*.py`` modules, ``bench/memory_fit.py`` and
``bench/report.py``. Nothing here is timed by itself; the test modules decide what goes inside the
timed region.

What each group times (per call)
--------------------------------
``estep``
    fastmoe: ``_kernels.e_step`` writing the log-likelihood and the (n, k) responsibilities into a
    preallocated buffer. NumPy: ``_log_joint`` once, then ``logsumexp`` (log-likelihood) and ``softmax``
    (responsibilities) of it, the reference's own helpers.
``newton_pass``
    fastmoe: ``Problem.newton_pass`` (the fused kernel plus the expansion of its packed triangles to
    full matrices, a few microseconds). NumPy: the E-step, ``gate_grad_hess`` and one
    ``expert_grad_hess`` per expert. Neither side computes the Q values: the kernel no longer does
    (``Problem.q_values`` is a separate pass, run only when a step must be halved).
``em_iteration``
    One steady-state EM iteration. fastmoe: the body of ``run_em``'s loop in the common case (step
    accepted), i.e. ``newton_directions`` from the pass at the current parameters, then one
    ``Problem.newton_pass`` at the new parameters (which serves the next iteration) and the acceptance
    test. The pass at the current parameters is done once outside the timed region, as the loop has it
    from the previous iteration. NumPy: one ``reference_numpy.em_step`` (E-step, gradients, Hessians,
    Newton directions, Q-based step acceptance).
``hessian_pass``
    The exact Hessian of the log-likelihood. fastmoe: ``Problem.hessian_pass`` (the
    ``loglik_hessian_pass`` kernel plus the expansion to the full matrix). NumPy:
    ``full_loglik_grad_hess`` and ``loglik`` (only where its (n, k, P) arrays fit in memory).
``q_values``
    The M-step objectives at trial parameters with responsibilities recomputed at the current ones:
    ``Problem.q_values`` against ``q_gate`` and ``q_expert``.
``fit``
    Time to the converged MLE from the same start near the truth, ``tol = 1e-10``: ``fastmoe.fit``
    (default options, and ``newton=False`` for plain EM) against ``reference_numpy.em_fit``.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))  # the NumPy reference lives in tests/

import reference_numpy as ref  # noqa: E402

import fastmoe  # noqa: E402
try:
    from fastmoe import _dispatch  # noqa: E402
    from fastmoe._dispatch import kernels as _kernels  # noqa: E402
except ImportError:  # a fastmoe from before the kernel variants (PYTHONPATH=old/src, to compare builds)
    _dispatch = None
    from fastmoe import _kernels  # noqa: E402
from fastmoe._problem import Problem  # noqa: E402
from fastmoe._validation import effective_n_threads  # noqa: E402

RESULTS = os.path.join(HERE, "results")

# (d, k, K): features, experts, classes. Standard (identity) gating, so d_gate = d and Z is X.
SHAPES = {"d2-k3-K3": (2, 3, 3), "d10-k4-K5": (10, 4, 5)}
SIZES = {"n1e4": 10**4, "n1e5": 10**5, "n1e6": 10**6}
ALL_THREADS = effective_n_threads(None)
THREADS = sorted({1, ALL_THREADS})

# The truth: N(0, 3^2) slopes, seed 1. With it EM from a start near the truth needs a few hundred
# iterations at d=2 (293 at n=1e4 to tol=1e-10), the regime the issue describes.
TRUTH_SEED, TRUTH_SCALE = 1, 3.0
START_SEED, START_SCALE = 2, 0.1
DATA_SEED = 1
FIT_TOL = 1e-10
FIT_MAX_ITER = 20_000


def truth(shape):
    d, k, K = SHAPES[shape]
    rng = np.random.default_rng(TRUTH_SEED)
    return fastmoe.MoEParams(
        beta0=rng.normal(0, 0.5, k), beta1=rng.normal(0, TRUTH_SCALE, (k, d)),
        a=rng.normal(0, TRUTH_SCALE, (k, K, d)), b=rng.normal(0, 1.0, (k, K)),
    ).normalized()


def start(shape):
    """A start near the truth: every free coordinate perturbed by N(0, 0.1^2). Packed (W, V)."""
    W, V = truth(shape).packed()
    W, V = np.array(W, dtype=float), np.array(V, dtype=float)
    rng = np.random.default_rng(START_SEED)
    W[:-1] += rng.normal(0, START_SCALE, W[:-1].shape)
    V[:, :-1] += rng.normal(0, START_SCALE, V[:, :-1].shape)
    return np.ascontiguousarray(W), np.ascontiguousarray(V)


def start_params(shape):
    return fastmoe.MoEParams.from_packed(*start(shape))


def make_data(shape, n):
    """(X, y) drawn from the truth: X ~ U[-1, 1]^d, y int64."""
    X, y = fastmoe.sample(truth(shape), n=n, random_state=DATA_SEED)
    return np.ascontiguousarray(X, dtype=np.float64), np.ascontiguousarray(y, dtype=np.int64)


def problem(X, y, shape, n_threads):
    _, k, K = SHAPES[shape]
    return Problem(X, X, y, np.empty(0), k, K, n_threads)


# ------------------------------------------------------------------------------------------------------
# estep
# ------------------------------------------------------------------------------------------------------
def fm_estep(X, y, W, V, resp_out, n_threads):
    loglik = _kernels.e_step(X, X, y, np.empty(0), W, V, resp_out, np.empty(0), n_threads)
    return loglik, resp_out


def np_estep(X, y, W, V):
    lj = ref._log_joint(W, V, X, X, y)
    return float(np.sum(ref._logsumexp(lj, axis=1))), ref._softmax(lj, axis=1)


# ------------------------------------------------------------------------------------------------------
# newton_pass
# ------------------------------------------------------------------------------------------------------
def fm_newton_pass(prob, W, V):
    r = prob.newton_pass(W, V)
    return {
        "loglik": r.loglik, "expert_weight": r.expert_weight,
        "grad_gate": r.grad_gate, "neg_hess_gate": r.neg_hess_gate,
        "grad_expert": r.grad_expert, "neg_hess_expert": r.neg_hess_expert,
    }


def np_newton_pass(X, y, W, V):
    k = W.shape[0]
    lj = ref._log_joint(W, V, X, X, y)
    tau = ref._softmax(lj, axis=1)
    loglik = float(np.sum(ref._logsumexp(lj, axis=1)))
    g_gate, h_gate = ref.gate_grad_hess(W, X, tau)
    g_exp, h_exp = zip(*(ref.expert_grad_hess(V[i], X, y, tau[:, i]) for i in range(k)))
    return {
        "loglik": loglik, "expert_weight": tau.sum(axis=0),
        "grad_gate": g_gate, "neg_hess_gate": -h_gate,
        "grad_expert": np.array(g_exp), "neg_hess_expert": -np.array(h_exp),
    }


# ------------------------------------------------------------------------------------------------------
# hessian_pass, q_values
# ------------------------------------------------------------------------------------------------------
def fm_hessian_pass(prob, W, V):
    loglik, grad, neg_hess = prob.hessian_pass(W, V)
    return {"loglik": loglik, "grad": grad, "neg_hess": neg_hess}


def np_hessian_pass(X, y, W, V):
    grad, hess = ref.full_loglik_grad_hess(W, V, X, X, y)
    return {"loglik": ref.loglik(W, V, X, X, y), "grad": grad, "neg_hess": -hess}


def trial(W, V):
    """Trial parameters for ``q_values``: the start moved by a fixed small step."""
    rng = np.random.default_rng(START_SEED + 1)
    W_new, V_new = W + rng.normal(0, 0.05, W.shape), V + rng.normal(0, 0.05, V.shape)
    W_new[-1], V_new[:, -1] = W[-1], V[:, -1]
    return np.ascontiguousarray(W_new), np.ascontiguousarray(V_new)


def fm_q_values(prob, W, V, W_new, V_new):
    return {"q": prob.q_values(W, V, W_new, V_new)}


def np_q_values(X, y, W, V, W_new, V_new):
    tau = ref.responsibilities(W, V, X, X, y)
    q = [ref.q_gate(W_new, X, tau)] + [ref.q_expert(V_new[i], X, y, tau[:, i]) for i in range(W.shape[0])]
    return {"q": np.array(q)}


# ------------------------------------------------------------------------------------------------------
# em_iteration
# ------------------------------------------------------------------------------------------------------
class FastmoeEMIteration:
    """The steady-state body of ``fastmoe._em.run_em``'s loop (accepted step, no penalty)."""

    def __init__(self, prob, W, V):
        from fastmoe._penalty import Penalty

        self.prob, self.W, self.V = prob, W, V
        self.penalty = Penalty(0.0, prob)
        self.result = prob.newton_pass(W, V)  # from the previous iteration in the real loop

    def __call__(self):
        from fastmoe._mstep import newton_directions

        active = self.result.expert_weight > self.prob.empty_expert_cut
        dW, dV, _ = newton_directions(self.result, self.W, self.V, self.penalty, active)
        W_new, V_new = self.W + dW, self.V + dV
        result_new = self.prob.newton_pass(W_new, V_new)
        accepted = result_new.loglik >= self.result.loglik - self.prob.slack(self.result.loglik)
        return W_new, V_new, accepted


def np_em_iteration(X, y, W, V):
    W_new, V_new, _ = ref.em_step(W, V, X, X, y)
    return W_new, V_new, True


# ------------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------------
def fm_fit(X, y, shape, n_threads, **options):
    _, k, _ = SHAPES[shape]
    r = fastmoe.fit(X, y, k, init=start_params(shape), tol=FIT_TOL, max_iter=FIT_MAX_ITER,
                    n_threads=n_threads, **options)
    return {"loglik": r.loglik, "n_iter": r.n_iter, "converged": r.converged}


def np_fit(X, y, shape):
    W, V = start(shape)
    _, _, loglik, n_iter, converged, _ = ref.em_fit(W, V, X, X, y, tol=FIT_TOL, max_iter=FIT_MAX_ITER, aitken=True)
    return {"loglik": loglik, "n_iter": n_iter, "converged": converged}


# ------------------------------------------------------------------------------------------------------
# Parametrisation helpers
# ------------------------------------------------------------------------------------------------------
CASES = [f"{shape}-{size}" for shape in SHAPES for size in SIZES]


def split_case(case):
    shape, size = case.rsplit("-", 1)
    return shape, SIZES[size]


def impls(numpy=True):
    """Implementation ids: ``numpy-1t`` first (it fills the reference cache), then fastmoe per thread count."""
    return (["numpy-1t"] if numpy else []) + [f"fastmoe-{t}t" for t in THREADS]


def n_threads_of(impl):
    """``"fastmoe-em-2t" -> 2``."""
    return int(impl.rsplit("-", 1)[1][:-1])


def impl_name(impl):
    """``"fastmoe-em-2t" -> "fastmoe-em"``."""
    return impl.rsplit("-", 1)[0]


def describe(benchmark, group, case, impl):
    shape, n = split_case(case)
    d, k, K = SHAPES[shape]
    benchmark.group = group
    benchmark.extra_info.update(impl=impl_name(impl), n_threads=n_threads_of(impl), n=n, d=d, k=k, K=K,
                                case=case, blas_threads=1)


def prepare(benchmark, data, full, group, case, impl):
    """Common set-up of a pass benchmark: skip the largest NumPy cases unless ``--bench-full``, build
    (or reuse) the case's data and start, and label the benchmark. Returns ``(shape, n, X, y, W, V)``."""
    import pytest

    if needs_full(group, case, impl) and not full:
        pytest.skip("largest NumPy case: run with --bench-full")
    shape, n, X, y = data(case)
    W, V = start(shape)
    describe(benchmark, group, case, impl)
    return shape, n, X, y, W, V


def numpy_reference(cache, group, case, compute, *args):
    """The NumPy result of a case, computed once outside the timed region (BLAS pinned to 1 thread)."""
    from threadpoolctl import threadpool_limits

    key = (group, case, "numpy")
    if key not in cache:
        with threadpool_limits(limits=1, user_api="blas"):
            cache[key] = compute(*args)
    return cache[key]


def needs_full(group, case, impl):
    shape, n = split_case(case)
    if impl.startswith("numpy") and group in ("estep", "newton_pass", "em_iteration", "q_values"):
        return shape == "d10-k4-K5" and n >= 10**6
    if impl.startswith("numpy") and group == "hessian_pass":
        # The reference holds (n, k, P) per-sample gradients: 0.5 GB at d=10, n=1e5.
        return n >= (10**6 if shape == "d2-k3-K3" else 10**5)
    if group == "fit" and impl.startswith("fastmoe-em"):
        return n >= 10**6  # plain EM to 1e-10 at n=1e6: minutes
    return False


# ------------------------------------------------------------------------------------------------------
# Machine description
# ------------------------------------------------------------------------------------------------------
def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def arch_flags():
    """The target flags (``-march``/``-mtune``) of the kernel variant that runs (see setup.py and
    ``fastmoe._dispatch``), as recorded in the module itself by the build."""
    if not hasattr(_kernels, "build_info"):  # a build from before the variants: -march=native
        return ["-march=native"]
    return [f for f in _kernels.build_info()["cflags"].split() if f.startswith(("-march", "-mtune", "/arch"))]


def baseline_arch_flags():
    """The baseline variant's target flags (what every x86-64 CPU runs)."""
    return ["-march=x86-64", "-mtune=generic"] if platform.machine().lower() in ("x86_64", "amd64") else []


def extension_vector_isa():
    """The widest vector registers the running kernel variant's binary uses (objdump), or None if unknown.

    "zmm" (AVX-512) or "ymm" (AVX/AVX2): the avx512/avx2 variants, where ``fastmoe_exp`` is the vectorised
    polynomial; "xmm": the baseline (SSE2) variant, where it is libm's.
    """
    import shutil
    import subprocess

    if shutil.which("objdump") is None:
        return None
    try:
        out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", _kernels.__file__], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for reg in ("zmm", "ymm", "xmm"):
        if f"%{reg}" in out:
            return reg
    return None


def compile_flags():
    """How the running kernels were built: Python's CC and CFLAGS plus the variant's own flags (setup.py:
    -O3 -fno-trapping-math, the variant's -march, the OpenMP flag; no -ffast-math), as the module
    records them, and which variant the dispatcher chose."""
    import sysconfig

    if _dispatch is None:
        info = {"cflags": "(a single-variant build from before the kernel variants)", "variant": None,
                "openmp": fastmoe.openmp_enabled()}
    else:
        info = _kernels.build_info()
    return {"cc": sysconfig.get_config_var("CC"), "python_cflags": sysconfig.get_config_var("CFLAGS"),
            "extra": info["cflags"] + ("" if info["openmp"] else " (serial build)"),
            "variant": info["variant"], "chosen": _dispatch and _dispatch.reason,
            "built": _dispatch and _dispatch.built_variants(), "extension_vector_isa": extension_vector_isa()}


def machine_summary():
    from threadpoolctl import threadpool_info

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "fastmoe_all_threads": ALL_THREADS,
        "openmp_enabled": bool(fastmoe.openmp_enabled()),
        "compile_flags": compile_flags(),
        "threadpools": [{k: v for k, v in p.items() if k in ("user_api", "internal_api", "num_threads",
                                                             "version", "threading_layer")}
                        for p in threadpool_info()],
        "loadavg": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
