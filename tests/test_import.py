"""``import fastmoe`` stays light: the heavy SciPy modules load only when a function needs them.

Issue 13, item 4: ``import fastmoe`` took 0.95 s against ``import numpy``'s 0.11 s, mostly
``scipy.stats`` (uncertainty) and ``scipy.optimize`` (losses). Timing is too noisy for a test, so these
check what a fresh interpreter has imported instead (bench/README.md records the times).
"""

import subprocess
import sys

import pytest


def _imported_after(statement, modules):
    """Which of ``modules`` a fresh interpreter holds after running ``statement``."""
    code = (
        "import sys\n"
        f"{statement}\n"
        f"print(' '.join(m for m in {list(modules)!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_import_does_not_load_scipy_stats():
    # uncertainty's p-values and quantiles come from scipy.special (ndtr, ndtri), not scipy.stats.
    assert _imported_after("import fastmoe", ["scipy.stats"]) == []


def test_import_does_not_load_scipy_optimize():
    assert _imported_after("import fastmoe", ["scipy.optimize"]) == []



def test_import_does_not_load_scikit_learn_or_scipy_special():
    # scikit-learn (~0.9 s: it loads scipy.stats and scipy.optimize) only with the estimator, model
    # selection or fastmoe.ConvergenceWarning; scipy.special where a function needs it.
    assert _imported_after("import fastmoe", ["sklearn", "scipy.special"]) == []


def test_convergence_warning_is_made_once_and_is_scikit_learns():
    code = ("import fastmoe, pickle, sklearn.exceptions as e\n"
            "C = fastmoe.ConvergenceWarning\n"
            "assert issubclass(C, e.ConvergenceWarning) and C is fastmoe.exceptions.ConvergenceWarning\n"
            "assert pickle.loads(pickle.dumps(C)) is C\n")
    assert _imported_after(code, ["sklearn"]) == ["sklearn"]


def test_kernels_and_scipy_linalg_load_on_first_use():
    # The kernels cimport SciPy's BLAS (scipy.linalg, ~0.2 s of the import): they load when a function
    # first needs them, not with the package.
    kernels = [f"fastmoe._kernels_{v}" for v in ("avx512", "avx2", "baseline")]
    assert _imported_after("import fastmoe", ["scipy.linalg", *kernels]) == []
    fitted = _imported_after(
        "import numpy as np, fastmoe\n"
        "rng = np.random.default_rng(0)\n"
        "X = rng.normal(size=(200, 2)); y = (X[:, 0] + rng.normal(size=200) > 0).astype(int)\n"
        "fastmoe.fit(X, y, 2, init='kmeans', n_init=1, random_state=0)\n"
        "from fastmoe import _dispatch\n"
        "print(_dispatch.kernels.__name__)",
        ["scipy.linalg", *kernels],
    )
    assert fitted[0].startswith("fastmoe._kernels_")  # the name printed by the statement
    assert fitted[1:] == ["scipy.linalg", fitted[0]]


def test_blas_limit_sees_the_blas_the_kernels_load():
    # serial_blas() holds BLAS to one thread inside the kernels' OpenMP threads. Its controller is built
    # on first use; it must be built after the kernels have loaded SciPy's BLAS, or it would not see it.
    code = ("from fastmoe._problem import _blas\n"
            "from fastmoe import _dispatch\n"
            "from threadpoolctl import threadpool_info\n"
            "seen = {lib.filepath for lib in _blas().lib_controllers}\n"
            "_dispatch.kernels.__name__  # loaded by now in any case\n"
            "loaded = {i['filepath'] for i in threadpool_info() if i['user_api'] == 'blas'}\n"
            "print(len(loaded), loaded == seen)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, same = done.stdout.split()
    # With pip's wheels NumPy and SciPy bring a BLAS each, and a controller built before the kernels
    # loaded SciPy's misses it (this fails then); where both share one library it cannot tell.
    assert same == "True"
