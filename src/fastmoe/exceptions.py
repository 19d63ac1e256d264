"""Warnings fastmoe emits.

``ConvergenceWarning`` subclasses scikit-learn's, whose import takes about a second (scikit-learn loads
scipy.stats and scipy.optimize), so the class is made on first use (PEP 562 module ``__getattr__``):
``import fastmoe`` stays light, and code that warns looks the class up when it warns.
"""


class FitWarning(RuntimeWarning):
    """Something numerically wrong happened during a fit and was handled (reported, not silent)."""


class SearchWarning(UserWarning):
    """Of several starts only one reached the maximum that was kept (a better one may exist), or some
    diverged to a higher likelihood (the kept maximum is not the global one; the MLE may not exist)."""


def _make_convergence_warning():
    try:  # With scikit-learn installed, a filter on either class catches fastmoe's warning.
        from sklearn.exceptions import ConvergenceWarning as base
    except ImportError:  # scikit-learn is optional
        base = UserWarning

    class ConvergenceWarning(base):
        """A fit stopped before its convergence criterion was met (iteration cap, diverging coefficients).

        A subclass of ``sklearn.exceptions.ConvergenceWarning`` when scikit-learn is installed (of
        ``UserWarning`` in any case), so ``warnings.filterwarnings("ignore", category=...)`` with either
        class silences it.
        """

    ConvergenceWarning.__module__ = __name__
    ConvergenceWarning.__qualname__ = "ConvergenceWarning"
    return ConvergenceWarning


def __getattr__(name):
    if name == "ConvergenceWarning":
        cls = globals()["ConvergenceWarning"] = _make_convergence_warning()  # made once, then a plain global
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
