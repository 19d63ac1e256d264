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
