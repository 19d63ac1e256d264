"""Kernel variants and their runtime choice (issue 13, item 1): every variant this CPU can run agrees with
the others, the choice is the widest runnable one, FASTMOE_KERNELS forces a variant.

Only variants the CPU can run are ever imported here: importing one compiled for missing instructions
would kill the test process with SIGILL.
"""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_params

import fastmoe
from fastmoe import _cpu, _dispatch

RUNNABLE = _dispatch.runnable_variants()


def test_choice_is_the_widest_runnable_variant():
    forced = os.environ.get("FASTMOE_KERNELS", "").strip().lower()
    assert _dispatch.variant == (forced if forced not in ("", "auto") else RUNNABLE[0])
    assert _dispatch.kernels.build_info()["variant"] == _dispatch.variant
    assert "baseline" in _dispatch.built_variants()
    assert _dispatch.kernels.__name__ == f"fastmoe._kernels_{_dispatch.variant}"


def test_cpu_level_agrees_with_numpy():
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as numpy_features
        except ImportError:
            pytest.skip("this NumPy does not expose its CPU features")
    level = _cpu.x86_level()
    if level == 0:
        pytest.skip("not an x86-64 CPU")
    v3 = all(numpy_features.get(f, False) for f in ("AVX", "AVX2", "FMA3", "F16C", "POPCNT", "SSE42"))
    assert (level >= 3) == v3
    if "AVX512_SKX" in numpy_features:  # F, CD, BW, DQ, VL with the OS's ZMM state
        assert (level >= 4) == (v3 and numpy_features["AVX512_SKX"])


@pytest.mark.parametrize("requested, built, level, expected", [
    (None, ["avx512", "avx2", "baseline"], 4, "avx512"),
    ("", ["avx512", "avx2", "baseline"], 3, "avx2"),
    ("auto", ["avx512", "avx2", "baseline"], 2, "baseline"),
    (None, ["avx2", "baseline"], 4, "avx2"),
    ("baseline", ["avx512", "avx2", "baseline"], 4, "baseline"),
    (" AVX2 ", ["avx512", "avx2", "baseline"], 4, "avx2"),
    (None, ["baseline"], 0, "baseline"),  # another architecture
])
def test_choose(requested, built, level, expected):
    assert _dispatch.choose(requested, built, level)[0] == expected


@pytest.mark.parametrize("requested, built, level, message", [
    ("sse9", ["avx512", "avx2", "baseline"], 4, "expected one of avx512, avx2, baseline or auto"),
    ("avx512", ["avx2", "baseline"], 4, "not built in this installation"),
    ("avx512", ["avx512", "avx2", "baseline"], 3, "cannot run the avx512 kernels"),
    (None, ["avx512"], 3, "no fastmoe kernels that this CPU"),
])
def test_choose_refuses(requested, built, level, message):
    with pytest.raises(ImportError, match=message):
        _dispatch.choose(requested, built, level)


def _outputs(module, X, Z, y, w, W, V, W2, V2):
    """Every kernel's outputs on one problem, as a dict of arrays."""
    k, K, d, dg = W.shape[0], V.shape[1], X.shape[1], Z.shape[1]
    n, pg, pe, kr = X.shape[0], dg + 1, d + 1, k * (K - 1)
    out = {}
    resp, logp = np.empty((n, k)), np.empty(n)
    out["loglik"] = np.array(module.e_step(X, Z, y, w, W, V, resp, logp, 2))
    out["resp"], out["logp"] = resp, logp
    fused = [np.empty(k), np.empty((k - 1, pg)), np.empty(((k - 1) * k // 2, pg * (pg + 1) // 2)),
             np.empty((k, K - 1, pe)), np.empty((k, (K - 1) * K // 2, pe * (pe + 1) // 2))]
    out["fused_loglik"] = np.array(module.newton_pass(X, Z, y, w, W, V, np.empty((0, k)), *fused, 2))
    out.update({f"fused_{i}": a for i, a in enumerate(fused)})
    q = np.empty(k + 1)
    module.q_values(X, Z, y, w, W, V, W2, V2, np.empty((0, k)), q, 2)
    out["q"] = q
    exact = [np.empty((k - 1, pg)), np.empty((k, K - 1, pe)), np.empty(((k - 1) * k // 2, pg * (pg + 1) // 2)),
             np.empty((kr * (kr + 1) // 2, pe * (pe + 1) // 2)), np.empty((k - 1, kr, pg, pe))]
    out["exact_loglik"] = np.array(module.loglik_hessian_pass(X, Z, y, w, W, V, *exact, 2))
    out.update({f"exact_{i}": a for i, a in enumerate(exact)})
    log_proba, gate = np.empty((n, K)), np.empty((n, k))
    module.predict(X, Z, W, V, log_proba, gate, 2)
    out["log_proba"], out["gate"] = log_proba, gate
    return out


@pytest.mark.parametrize("variant", RUNNABLE)
@pytest.mark.parametrize("k, K, d, gating, scale", [(3, 3, 2, "identity", 1.0), (4, 5, 10, "tanh", 1.0),
                                                    (2, 4, 3, "identity", 30.0), (3, 3, 2, "identity", 1e3)])
def test_variants_agree(rng, variant, k, K, d, gating, scale):
    module = importlib.import_module(f"fastmoe._kernels_{variant}")
    info = module.build_info()
    assert info["variant"] == variant
    if _cpu.x86_level():
        assert info["vector_isa"] == {"avx512": "avx512", "avx2": "avx2", "baseline": "sse2"}[variant]
    params, other = random_params(rng, k, K, d, gating, scale=scale), random_params(rng, k, K, d, gating)
    n = 1000
    X = rng.uniform(-2, 2, size=(n, d))
    Z, y = params.gate_input(X), rng.integers(0, K, size=n)
    w = rng.uniform(0.5, 2.0, size=n)
    W, V = params.packed()
    W2, V2 = other.packed()
    # Compared with another variant (the narrowest other one): a module compared with itself proves
    # nothing. tests/test_kernels.py checks the chosen variant against the NumPy reference.
    others = [v for v in RUNNABLE if v != variant]
    if not others:
        pytest.skip("only one kernel variant runs on this CPU: none to compare it with")
    got = _outputs(module, X, Z, y, w, W, V, W2, V2)
    want = _outputs(importlib.import_module(f"fastmoe._kernels_{others[-1]}"), X, Z, y, w, W, V, W2, V2)
    for name in want:
        # Rounding differences only (fused multiply-adds, the exponential): 1e-12 of each output's scale.
        scale_of = max(float(np.max(np.abs(want[name]))), 1e-300)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12 * scale_of, err_msg=name)


_FIT = """
import json, warnings
import numpy as np
import fastmoe
from fastmoe import _dispatch
truth = fastmoe.MoEParams(beta0=[0.5, 0.0], beta1=[[3.0, -2.0], [0.0, 0.0]],
                          a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
                          b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]])
X, y = fastmoe.sample(truth, n=2000, random_state=3)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r = fastmoe.fit(X, y, 2, init="kmeans", random_state=0, n_threads=1, tol=1e-12)
print(json.dumps({"variant": _dispatch.variant, "alias": _dispatch.kernels.__name__, "loglik": r.loglik,
                  "params": np.concatenate([a.ravel() for a in r.params.packed()]).tolist()}))
"""


def _run(env_value, code):
    env = dict(os.environ, FASTMOE_KERNELS=env_value)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_forced_variants_fit_alike():
    fits = {}
    for variant in RUNNABLE:
        proc = _run(variant, _FIT)
        assert proc.returncode == 0, proc.stderr
        fits[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert fits[variant]["variant"] == variant
        assert fits[variant]["alias"] == f"fastmoe._kernels_{variant}"
    first = fits[RUNNABLE[0]]
    for fit in (fits[v] for v in RUNNABLE[1:]):
        assert fit["loglik"] == pytest.approx(first["loglik"], rel=1e-12)
        np.testing.assert_allclose(fit["params"], first["params"], rtol=1e-8, atol=1e-8)


def test_forcing_an_unknown_variant_is_an_import_error():
    proc = _run("sse9", "import fastmoe")
    assert proc.returncode != 0
    assert "FASTMOE_KERNELS='sse9': expected one of avx512, avx2, baseline or auto" in proc.stderr


def test_show_config_says_what_runs(capsys):
    _dispatch.show_config()
    text = capsys.readouterr().out
    assert f"kernels:  {_dispatch.variant}" in text and "openmp:" in text and "blas:" in text
    config = _dispatch.config()
    assert config["kernels"]["variant"] == _dispatch.variant
    assert config["openmp"]["enabled"] == fastmoe.openmp_enabled()
    assert config["kernels"]["runnable"] == RUNNABLE
