"""Build the compiled extensions of fastmoe (metadata lives in pyproject.toml).

OpenMP is probed by compiling *and running* a tiny ``#pragma omp parallel`` program with the
compiler Python was built with. When it works the kernels are built with ``-fopenmp``; otherwise
they are built serial with a loud warning (``FASTMOE_REQUIRE_OPENMP=1`` turns it into an error).
``FASTMOE_DEBUG_BUILD=1`` switches bounds checking back on for debugging.

The kernels are compiled for the building machine (``-march=native``) when the compiler accepts it:
fastmoe is built from source where it runs, and the vector units are what make the exponentials
cheap (see ``fastmoe_exp`` in ``_kernels.pyx``). ``FASTMOE_PORTABLE=1`` builds for the generic
target instead (for wheels that travel to other machines).
"""

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

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


def _compiles(flags, source="int main(void) { return 0; }\n"):
    """Whether the C compiler Python was built with accepts ``flags`` on a trivial program."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write(source)
        try:
            subprocess.run(cc + flags + [src, "-o", os.path.join(tmp, "probe")], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return False
    return True


def _arch_flags():
    if sys.platform == "win32" or os.environ.get("FASTMOE_PORTABLE") == "1":
        return []
    return ["-march=native"] if _compiles(["-march=native"]) else []


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or ([], []) when the toolchain lacks it."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
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


def _extensions():
    omp_compile, omp_link = _openmp_flags()
    debug = os.environ.get("FASTMOE_DEBUG_BUILD") == "1"
    # -O3 for the loops over experts/classes; no -ffast-math: it would break the inf/NaN guards.
    # -fno-trapping-math only tells gcc that no code reads the floating-point exception flags, so it
    # may if-convert and speculate: values are unchanged (bitwise, checked), and the clamps of
    # fastmoe_exp then cost ~nothing (0.90 ns per exp with both clamps, against 1.09 without the flag
    # and 0.88 for the unguarded exp without it; see _kernels.pyx).
    compile_args = ["-O3", "-fno-trapping-math"] + _arch_flags() + omp_compile if sys.platform != "win32" else omp_compile
    common = dict(
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=omp_link,
    )
    extensions = [
        Extension("fastmoe._kernels", ["src/fastmoe/_kernels.pyx"], **common),
        Extension("fastmoe._openmp", ["src/fastmoe/_openmp.pyx"], **common),
    ]
    directives = {"language_level": 3}
    if debug:
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)
    return cythonize(extensions, compiler_directives=directives)


setup(ext_modules=_extensions())
