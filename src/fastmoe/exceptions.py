"""Warnings fastmoe emits."""

try:  # With scikit-learn installed, a filter on either class catches fastmoe's warning.
    from sklearn.exceptions import ConvergenceWarning as _BaseConvergenceWarning
except ImportError:  # scikit-learn is optional
    _BaseConvergenceWarning = UserWarning


class ConvergenceWarning(_BaseConvergenceWarning):
    """A fit stopped before its convergence criterion was met (iteration cap, diverging coefficients).

    A subclass of ``sklearn.exceptions.ConvergenceWarning`` when scikit-learn is installed (of
    ``UserWarning`` in any case), so ``warnings.filterwarnings("ignore", category=...)`` with either
    class silences it.
    """


class FitWarning(RuntimeWarning):
    """Something numerically wrong happened during a fit and was handled (reported, not silent)."""


class SearchWarning(UserWarning):
    """Of several starts only one reached the maximum that was kept: a better one may exist."""
