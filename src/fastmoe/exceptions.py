"""Warnings fastmoe emits."""


class ConvergenceWarning(UserWarning):
    """A fit stopped before its convergence criterion was met (iteration cap, diverging coefficients)."""


class FitWarning(RuntimeWarning):
    """Something numerically wrong happened during a fit and was handled (reported, not silent)."""
