"""The installed fastmoe imports and fits on older CPUs, with the native result (issue 13, item 1).

Runs one small fit natively and then under qemu-user (Debian's ``qemu-user`` package) emulating CPU
models without AVX-512 (Haswell: the avx2 kernels must be chosen) and without AVX (Nehalem: the
baseline kernels), and checks that each imports, picks the expected variant and reaches the native
log-likelihood and parameters to 1e-8 relative. A kernel compiled for instructions the emulated CPU
lacks would die with SIGILL (exit 132 natively; qemu reports "uncaught target signal 4").

    python .ci/emulated_cpus.py [--qemu qemu-x86_64] [--timeout 600]

Exits 0 when every check passes, 1 otherwise; prints a line per CPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np

# The expected variant per emulated model; None: whatever the host picks (the reference run).
MODELS = {"Haswell": "avx2", "Nehalem": "baseline"}

FIT = r"""
import json, warnings
import numpy as np
import fastmoe
from fastmoe import _dispatch

truth = fastmoe.MoEParams(
    beta0=[0.5, 0.0], beta1=[[3.0, -2.0], [0.0, 0.0]],
    a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
    b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]],
)
X, y = fastmoe.sample(truth, n=3000, random_state=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    # One start, not the default search: near-tied starts may rank differently under another kernel's
    # rounding, which would compare two paths to one maximum instead of one path under two kernels.
    result = fastmoe.fit(X, y, 2, init="kmeans", n_init=1, random_state=0, n_threads=2, tol=1e-12)
W, V = result.params.packed()
print(json.dumps({"variant": _dispatch.variant, "loglik": result.loglik, "n_iter": result.n_iter,
                  "params": np.concatenate([W.ravel(), V.ravel()]).tolist()}))
"""


def run(prefix, timeout, env=None):
    proc = subprocess.run(prefix + [sys.executable, "-c", FIT], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stderr.splitlines() if "TCG doesn't support" not in line)[-2000:]
        raise RuntimeError(f"exit {proc.returncode}:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qemu", default="qemu-x86_64")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("not an x86-64 host: nothing to emulate")
        return 0
    if shutil.which(args.qemu) is None:
        print(f"{args.qemu} not found (apt-get install qemu-user)")
        return 1
    native = run([], args.timeout)
    print(f"native:  {native['variant']:8s} loglik {native['loglik']:.12f}, {native['n_iter']} iterations")
    ok = True
    for model, expected in MODELS.items():
        try:
            # OpenBLAS (inside NumPy's wheel) picks its kernels from the CPU's family and model,
            # which qemu-user reports so that OpenBLAS takes the emulated Nehalem for a Haswell and
            # dies on an AVX instruction at NumPy's import (qemu 7.2). A real CPU is read right; here
            # we name the model, so that only fastmoe's own choice of kernels is under test.
            env = dict(os.environ, OPENBLAS_CORETYPE=model)
            got = run([args.qemu, "-cpu", model], args.timeout, env)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{model}: FAILED: {exc}")
            ok = False
            continue
        p0, p1 = np.array(native["params"]), np.array(got["params"])
        d_loglik = abs(got["loglik"] - native["loglik"]) / abs(native["loglik"])
        d_params = np.max(np.abs(p1 - p0)) / np.max(np.abs(p0))
        good = got["variant"] == expected and d_loglik <= 1e-8 and d_params <= 1e-8
        ok &= good
        print(f"{model}: {got['variant']:8s} loglik {got['loglik']:.12f}, {got['n_iter']} iterations; "
              f"relative difference to native: loglik {d_loglik:.1e}, parameters {d_params:.1e}"
              + ("" if good else f"  FAILED (expected the {expected} kernels and differences <= 1e-8)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
