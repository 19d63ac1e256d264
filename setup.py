"""Build the compiled extensions of fastmoe (metadata lives in pyproject.toml).

Kernel variants. The kernels (``src/fastmoe/_kernels.pyx``) are compiled once per instruction-set level,
as separate extension modules ``fastmoe._kernels_<variant>`` from one source:

- ``baseline``: ``-march=x86-64`` (SSE2: every x86-64 CPU); on other architectures the compiler's
  default target, and then the only variant;
- ``avx2``: ``-march=x86-64-v3`` (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE: Haswell, Zen 1 and later);
- ``avx512``: ``-march=x86-64-v4`` (AVX-512 F/BW/CD/DQ/VL: Skylake-SP, Ice Lake, Zen 4 and later).

``fastmoe._dispatch`` chooses the widest variant that this CPU and its OS support at import time, and
imports it (and no other) on first use, so one build (one wheel) runs on every x86-64 CPU; ``FASTMOE_KERNELS`` forces a variant.
The vector units are what make the exponentials cheap (see ``fastmoe_exp`` in ``_kernels.pyx``): the
avx2/avx512 variants run 2-3x faster than baseline. Generic tuning with x86-64-v4 measured faster
here than ``-march=native`` (e_step 32 vs 36 ns per sample at d = 2; see bench/README.md).
``FASTMOE_KERNEL_VARIANTS=avx512`` (a comma-separated subset) builds fewer variants, for quicker
development builds; the dispatcher then chooses among those built.

Each variant is compiled from a copy of the source named after its module (Cython names a module's
init function after its file): ``build/kernel_variants/fastmoe/_kernels_<variant>.pyx``.

OpenMP is probed by compiling *and running* a tiny ``#pragma omp parallel`` program with the
compiler Python was built with. When it works the kernels are built with ``-fopenmp``; otherwise
they are built serial with a loud warning (``FASTMOE_REQUIRE_OPENMP=1`` turns it into an error).
``FASTMOE_DEBUG_BUILD=1`` switches bounds checking back on for debugging (in the variants' copies:
a file's own ``# cython:`` directive comments override ``compiler_directives``).
"""

import glob
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join("src", "fastmoe", "_kernels.pyx")
VARIANT_DIR = os.path.join("build", "kernel_variants", "fastmoe")

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+: n)
    n += 1;
    printf("%d\n", n);
    return n > 0 ? 0 : 1;
}
"""

# Variant -> target flags (gcc/clang), first accepted wins; MSVC gets /arch flags instead.
X86_VARIANTS = {
    "baseline": [["-march=x86-64", "-mtune=generic"]],
    "avx2": [["-march=x86-64-v3"], ["-march=haswell"]],
    "avx512": [["-march=x86-64-v4"], ["-march=skylake-avx512"]],
}
MSVC_VARIANTS = {"baseline": [[]], "avx2": [["/arch:AVX2"]], "avx512": [["/arch:AVX512"]]}


def _compiler():
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def _compiles(flags, source="int main(void) { return 0; }\n"):
    """Whether the C compiler Python was built with accepts ``flags`` on a trivial program."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write(source)
        try:
            subprocess.run(_compiler() + flags + [src, "-o", os.path.join(tmp, "probe")], check=True,
                           capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return False
    return True


def _is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64") and sys.maxsize > 2**32


def _variants():
    """``{variant: target flags}`` to build: every level the compiler can target, or the requested ones."""
    if sys.platform == "win32":
        table = MSVC_VARIANTS if _is_x86_64() else {"baseline": [[]]}
        accepts = lambda flags: True  # noqa: E731  (MSVC knows its /arch levels)
    elif _is_x86_64():
        table, accepts = X86_VARIANTS, _compiles
    else:
        table, accepts = {"baseline": [[]]}, _compiles
    wanted = os.environ.get("FASTMOE_KERNEL_VARIANTS", "").strip()
    names = [v.strip() for v in wanted.split(",") if v.strip()] if wanted else list(table)
    unknown = [v for v in names if v not in table]
    if unknown:
        raise RuntimeError(f"FASTMOE_KERNEL_VARIANTS: unknown variant(s) {unknown}; this platform builds "
                           f"{sorted(table)}")
    chosen = {}
    for name in names:
        flags = next((f for f in table[name] if accepts(f)), None)
        if flags is None:
            warnings.warn(f"fastmoe: the compiler accepts none of {table[name]}; the {name} kernels are not built")
            continue
        chosen[name] = flags
    if not chosen:
        raise RuntimeError("fastmoe: no kernel variant can be built with this compiler")
    return chosen


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or ([], []) when the toolchain lacks it."""
    cc = _compiler()
    flag = "/openmp" if sys.platform == "win32" else "-fopenmp"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as fh:
            fh.write(OPENMP_PROBE)
        try:
            subprocess.run(cc + [flag, src, "-o", exe], check=True, capture_output=True)
            subprocess.run([exe], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            message = (
                f"fastmoe: OpenMP probe failed with {' '.join(cc)} {flag} ({exc}); building SERIAL kernels. "
                "Install an OpenMP-capable compiler (e.g. gcc) for multithreading."
            )
            if os.environ.get("FASTMOE_REQUIRE_OPENMP") == "1":
                raise RuntimeError(message) from exc
            warnings.warn(message)
            print("*" * 80 + "\n" + message + "\n" + "*" * 80, file=sys.stderr)
            return [], []
    return [flag], [flag]


def _variant_source(name, debug):
    """Write ``_kernels_<name>.pyx``, a copy of the kernels' source (line for line), and return its path."""
    os.makedirs(VARIANT_DIR, exist_ok=True)
    with open(KERNELS) as fh:
        text = fh.read()
    if debug:
        first, rest = text.split("\n", 1)
        first = first.replace("boundscheck=False", "boundscheck=True").replace("wraparound=False", "wraparound=True")
        text = first.replace("initializedcheck=False", "initializedcheck=True") + "\n" + rest
    path = os.path.join(VARIANT_DIR, f"_kernels_{name}.pyx")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:  # leave the file (and its timestamp) alone when unchanged: no needless recompiles
        with open(path, "w") as fh:
            fh.write(text)
    return path


def _remove_stale_kernels():
    """Delete an in-place ``fastmoe/_kernels`` extension from before the variants: it would shadow the
    ``_kernels.py`` alias in a development tree (extension modules are found before .py files)."""
    for path in glob.glob(os.path.join("src", "fastmoe", "_kernels.*.so")) + \
            glob.glob(os.path.join("src", "fastmoe", "_kernels.*.pyd")):
        print(f"fastmoe: removing the stale single-variant build {path}", file=sys.stderr)
        os.remove(path)


def _extensions():
    os.chdir(HERE)
    _remove_stale_kernels()
    omp_compile, omp_link = _openmp_flags()
    debug = os.environ.get("FASTMOE_DEBUG_BUILD") == "1"
    msvc = sys.platform == "win32"
    # -O3 for the loops over experts/classes; no -ffast-math: it would break the inf/NaN guards.
    # -fno-trapping-math only tells gcc that no code reads the floating-point exception flags, so it
    # may if-convert and speculate: values are unchanged (bitwise, checked), and the clamps of
    # fastmoe_exp then cost ~nothing (0.90 ns per exp with both clamps, against 1.09 without the flag
    # and 0.88 for the unguarded exp without it; see _kernels.pyx).
    base = [] if msvc else ["-O3", "-fno-trapping-math"]
    common = dict(include_dirs=[np.get_include()], extra_link_args=omp_link)
    numpy_api = ("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")
    extensions = []
    for name, target in _variants().items():
        flags = base + target + omp_compile
        extensions.append(Extension(
            f"fastmoe._kernels_{name}", [_variant_source(name, debug)], extra_compile_args=flags,
            define_macros=[numpy_api, ("FASTMOE_VARIANT", f'"{name}"'),
                           ("FASTMOE_CFLAGS", '"' + " ".join(flags) + '"')],
            **common,
        ))
    # Small modules every CPU must run (they decide which kernels to load): the baseline target.
    portable = base + (X86_VARIANTS["baseline"][0] if _is_x86_64() and not msvc else [])
    extensions.append(Extension("fastmoe._openmp", ["src/fastmoe/_openmp.pyx"], define_macros=[numpy_api],
                                extra_compile_args=portable + omp_compile, **common))
    extensions.append(Extension("fastmoe._cpu", ["src/fastmoe/_cpu.pyx"], extra_compile_args=portable))
    directives = {"language_level": 3}
    if debug:
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)
    return cythonize(extensions, compiler_directives=directives)


class BuildExt(build_ext):
    """build_ext compiling the extensions in parallel by default: the kernel variants are independent."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
