"""Build and run the roofline micro-benchmark; write bench/results/roofline.json.

    python bench/roofline/build.py [--seconds 0.3] [--portable]

The program is compiled with the compiler and flags the running kernels got (``sysconfig`` CC and CFLAGS,
plus ``-O3 -fno-trapping-math``, the target flags of the kernel variant ``fastmoe._dispatch`` chose, e.g.
``-march=x86-64-v4``, and ``-fopenmp``, as ``setup.py`` adds them), so its code generation matches the
kernels'.
It carries a verbatim copy of ``fastmoe_exp`` from ``src/fastmoe/_kernels.pyx``; the copy is checked
against the kernel source on every build (``fexp_source_in_sync`` in the json, and a warning).
``--portable`` also builds for the baseline variant's target (``-march=x86-64``: SSE2 vectors,
``fastmoe_exp`` = libm ``exp``), for information only; the roofline fractions use the running variant.
It runs with 1 thread and with all usable threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, BENCH)


REPO = os.path.dirname(BENCH)
KERNELS = os.path.join(REPO, "src", "fastmoe", "_kernels.pyx")
MICROBENCH = os.path.join(HERE, "microbench.c")


def compiler_command(arch):
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    cflags = shlex.split(sysconfig.get_config_var("CFLAGS") or "")
    return cc + cflags + ["-O3", "-fno-trapping-math", *arch, "-fopenmp"]


def _fexp_block(path):
    """The ``#if !(defined(__AVX2__) ...`` ... ``#endif`` block defining fastmoe_exp, whitespace-normalised."""
    with open(path) as fh:
        lines = [line.strip() for line in fh]
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("#if !(defined(__AVX2__)"))
    except StopIteration:
        return None
    end = next((i for i in range(start, len(lines)) if lines[i] == "#endif"), None)
    return None if end is None else [line for line in lines[start:end + 1] if line]


def fexp_in_sync():
    block = _fexp_block(KERNELS)
    ok = block is not None and block == _fexp_block(MICROBENCH)
    if not ok:
        print("WARNING: fastmoe_exp in bench/roofline/microbench.c differs from src/fastmoe/_kernels.pyx: "
              "copy the extern block's C source again", file=sys.stderr)
    return ok


def build(name, arch):
    out_dir = os.path.join(HERE, "_build")
    os.makedirs(out_dir, exist_ok=True)
    exe = os.path.join(out_dir, name)
    cmd = compiler_command(arch) + [MICROBENCH, "-o", exe, "-lm"]
    subprocess.run(cmd, check=True)
    return exe, " ".join(cmd)


def run(exe, n_threads, seconds):
    env = dict(os.environ, OMP_NUM_THREADS=str(n_threads), OMP_PROC_BIND="false")
    out = subprocess.run([exe, str(n_threads), str(seconds)], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def numpy_rates(size=10**6, repeats=20):
    """NumPy's own (SIMD) exp/log throughput, for comparison: what the NumPy reference gets per call."""
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    args = {"exp": (np.exp, -20.0 * rng.random(size)), "log": (np.log, 1.0 + 7.0 * rng.random(size))}
    out = np.empty(size)
    rates = {}
    for name, (func, x) in args.items():
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            func(x, out=out)
            best = min(best, time.perf_counter() - t0)
        rates[name] = size / best
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.3, help="time per test (default 0.3 s)")
    parser.add_argument("--portable", action="store_true",
                        help="also measure a build for the baseline kernels' target, for comparison")
    parser.add_argument("--out", default=os.path.join(BENCH, "results", "roofline.json"))
    args = parser.parse_args(argv)

    import _benchlib as bl

    threads = bl.THREADS
    exe, cmd = build("microbench", bl.arch_flags())
    result = {"machine": bl.machine_summary(), "build": cmd, "fexp_source_in_sync": fexp_in_sync(),
              "by_threads": {}}
    for t in threads:
        result["by_threads"][str(t)] = run(exe, t, args.seconds)["rates"]
    if args.portable:
        exe_p, cmd_p = build("microbench_portable", bl.baseline_arch_flags())
        result["portable_build"] = cmd_p
        result["portable_by_threads"] = {str(t): run(exe_p, t, args.seconds)["rates"] for t in threads}
    result["numpy_rates"] = numpy_rates()
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    for key in ("by_threads", "portable_by_threads"):
        for t, rates in result.get(key, {}).items():
            print(f"{key} {t} thread(s): " + ", ".join(f"{k} {v / 1e9:.3g}G/s" for k, v in rates.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
