"""Which compiled kernels run: the widest variant this CPU supports, chosen once at import; show_config.

The kernels (``_kernels.pyx``) are built as up to three extension modules from one source (see
``setup.py``): ``_kernels_baseline`` (SSE2, every x86-64 CPU; the compiler's default target elsewhere),
``_kernels_avx2`` (x86-64-v3: AVX2, FMA ...) and ``_kernels_avx512`` (x86-64-v4: AVX-512). This module
imports the widest one that is built and that the CPU and its operating system support (``_cpu``), and
no other: a module compiled for instructions the CPU lacks dies with SIGILL as soon as its code runs,
before any Python error could be raised. The variants compute the same quantities; their results
differ by rounding only (fused multiply-adds, the polynomial exponential), within 1e-12 relative.

``FASTMOE_KERNELS=baseline|avx2|avx512`` forces a variant (``auto`` or unset: the widest); forcing one
that is not built, or that this CPU cannot run, is an ImportError naming the reason. The rest of the
package reaches the kernels as ``_dispatch.kernels``, which imports the chosen module on first use: the
kernels load SciPy's BLAS and LAPACK wrappers (``scipy.linalg``, about 0.2 s), which ``import fastmoe``
need not pay (issue 13, item 4). The choice itself is made at import, so a forced variant that cannot
run is still an ImportError there.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys

from . import _cpu

#: Variants, widest first, with the x86-64 level each needs (0: any CPU).
VARIANTS = ("avx512", "avx2", "baseline")
REQUIRED_LEVEL = {"avx512": 4, "avx2": 3, "baseline": 0}
ENV = "FASTMOE_KERNELS"


def built_variants():
    """The variants this installation has, widest first (found without importing them)."""
    return [v for v in VARIANTS if importlib.util.find_spec(f"{__package__}._kernels_{v}") is not None]


def choose(requested, built, level):
    """``(variant, reason)`` for a ``FASTMOE_KERNELS`` value, the built variants and the CPU's level.

    A pure function of its arguments, so that every branch can be tested on any machine.
    """
    requested = (requested or "").strip().lower()
    if requested and requested != "auto":
        if requested not in VARIANTS:
            raise ImportError(f"{ENV}={requested!r}: expected one of {', '.join(VARIANTS)} or auto")
        if requested not in built:
            raise ImportError(f"{ENV}={requested!r}: the {requested} kernels are not built in this "
                              f"installation (built: {', '.join(built) or 'none'})")
        if level < REQUIRED_LEVEL[requested]:
            raise ImportError(f"{ENV}={requested!r}: this CPU (x86-64 level {level}) cannot run the "
                              f"{requested} kernels (they need x86-64-v{REQUIRED_LEVEL[requested]}); "
                              "they would die with an illegal instruction")
        return requested, f"forced by {ENV}"
    for variant in VARIANTS:
        if variant in built and level >= REQUIRED_LEVEL[variant]:
            return variant, "the widest variant this CPU supports"
    raise ImportError(f"no fastmoe kernels that this CPU (x86-64 level {level}) can run are built "
                      f"(built: {', '.join(built) or 'none'}); reinstall fastmoe")


def runnable_variants():
    """Built variants this CPU can run, widest first."""
    level = _cpu.x86_level()
    return [v for v in built_variants() if level >= REQUIRED_LEVEL[v]]


variant, reason = choose(os.environ.get(ENV), built_variants(), _cpu.x86_level())


def __getattr__(name):
    # PEP 562: ``kernels`` is imported on first access and then bound here, so later accesses are
    # plain attribute lookups.
    if name == "kernels":
        module = importlib.import_module(f"{__package__}._kernels_{variant}")
        globals()["kernels"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config():
    """What runs, as a dict: kernels (variant, why, flags), CPU, OpenMP, BLAS, versions."""
    import numpy
    import scipy
    from threadpoolctl import threadpool_info

    from . import _openmp

    try:
        from importlib.metadata import version

        fastmoe_version = version("fastmoe")
    except Exception:  # noqa: BLE001  (not installed as a distribution: a source tree)
        fastmoe_version = "unknown"
    level = _cpu.x86_level()
    kernels = sys.modules[__name__].kernels  # through __getattr__: imports them if nothing has yet
    return {
        "fastmoe": fastmoe_version,
        "kernels": dict(kernels.build_info(), module=kernels.__name__, chosen=reason,
                        built=built_variants(), runnable=runnable_variants()),
        "cpu": {"model": _cpu_model(), "machine": platform.machine(),
                "x86_64_level": level if level else None, "features": _cpu.features()},
        "openmp": {"enabled": bool(_openmp.openmp_enabled()), "max_threads": _openmp.openmp_max_threads()},
        "blas": [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                        "architecture", "filepath")}
                 for p in threadpool_info() if p.get("user_api") == "blas"],
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }


def show_config(file=None):
    """Print which kernels run and why, with the CPU, OpenMP and BLAS facts (for bug reports)."""
    c = config()
    k, cpu = c["kernels"], c["cpu"]
    features = ", ".join(name for name, on in cpu["features"].items() if on) or "-"
    lines = [
        f"fastmoe {c['fastmoe']} (Python {c['python']}, NumPy {c['numpy']}, SciPy {c['scipy']})",
        f"kernels:  {k['variant']} ({k['chosen']}); built: {', '.join(k['built'])}; "
        f"runnable here: {', '.join(k['runnable'])}",
        f"          compiled with {k['cflags'] or '(default flags)'}; vectors {k['vector_isa']}, "
        f"fma {'yes' if k['fma'] else 'no'}, exp {'polynomial' if k['polynomial_exp'] else 'libm'}",
        f"cpu:      {cpu['model']} ({cpu['machine']}"
        + (f", x86-64-v{cpu['x86_64_level']}" if cpu["x86_64_level"] else "") + f"); {features}",
        f"openmp:   {'enabled' if c['openmp']['enabled'] else 'DISABLED (serial build)'}, "
        f"{c['openmp']['max_threads']} threads by default",
    ]
    for b in c["blas"] or [{}]:
        lines.append("blas:     " + (f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')}), "
                                     f"{b.get('num_threads')} threads, {b.get('filepath')}" if b else "none loaded"))
    print("\n".join(lines), file=file or sys.stdout)
