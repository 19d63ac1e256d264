"""Log-log plots of a rate report (PNG and PDF).

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` with
``FigureCanvasAgg``), so plotting never touches pyplot's global state or needs a display. Files are written
atomically (:mod:`~fastmoe.experiments._atomic`): a killed report leaves the old figure or the new one.

Each panel shows, per metric, the report's statistic over replications (the median by default) at every
``n`` with a bar from the 10% to the 90% quantile, the least-squares line of the report and, dashed, a line of the theoretical slope drawn through
the fitted line's value at the geometric middle of the grid.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ._atomic import atomic_open
from .analysis import Report

__all__ = ["plot_report", "plot_comparison", "plot_scaled"]


def _series(report: Report, metric: str):
    """``(n, centre, lower bar, upper bar)`` of a metric's positive centres (the report's statistic; 10-90%
    bars), or None."""
    stat = report.statistic
    rows = [r for r in report.summaries.get(metric, []) if r["count"] and r[stat] > 0]
    if not rows:
        return None
    n = np.array([r["n"] for r in rows], dtype=float)
    centre = np.array([r[stat] for r in rows])
    low = np.clip(centre - np.array([r["q10"] for r in rows]), 0, None)
    high = np.clip(np.array([r["q90"] for r in rows]) - centre, 0, None)
    return n, centre, low, high


def _panel(ax, report: Report, metrics: Sequence[str], title: str) -> None:
    colors = [f"C{i}" for i in range(10)]
    for color, metric in zip(colors * 3, metrics):
        series = _series(report, metric)
        if series is None:
            continue
        n, mean, low, high = series
        fit = report.slopes[metric]
        label = metric if math.isnan(fit.slope) else f"{metric}: slope {fit.slope:+.2f}"
        if not math.isnan(fit.theory):
            label += f" (theory {fit.theory:+.2f})"
        ax.errorbar(n, mean, yerr=[low, high], fmt="o", ms=4, color=color, capsize=2, label=label)
        grid = _fitted_line(ax, n, fit, color)
        if grid is not None:
            if not math.isnan(fit.theory):
                mid = math.sqrt(n.min() * n.max())
                anchor = float(fit.line(mid))
                ax.plot(grid, anchor * (grid / mid) ** fit.theory, "--", color=color, lw=1.0, alpha=0.7)
    _log_log_axes(ax, title)


def _fitted_line(ax, n, fit, color):
    """Draw the least-squares line over the range of ``n``; return its grid (None without a slope)."""
    if math.isnan(fit.slope):
        return None
    grid = np.geomspace(n.min(), n.max(), 50)
    ax.plot(grid, fit.line(grid), "-", color=color, lw=1.2)
    return grid


def _log_log_axes(ax, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size n")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=7, loc="best")


def plot_report(report: Report, out_dir, formats: Sequence[str] = ("png", "pdf"), dpi: int = 130) -> List[Path]:
    """Draw the losses and the per-parameter errors of ``report``.

    Writes ``<name>-losses.<fmt>`` (the Voronoi losses) and ``<name>-parameters.<fmt>`` (one panel per true
    atom: cell mass error and, top row, the worst errors of beta1, a and b in the cell, bottom row, their
    mass-weighted means) for every format.

    ``dpi`` sets the resolution of raster formats (PNG); lower it for small files to commit.

    Returns
    -------
    list of Path
        The files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exp = report.experiment
    subtitle = f"{exp.name}: {exp.outline()}; solid: least squares, dashed: theory"
    written: List[Path] = []

    fig = Figure(figsize=(6.4, 4.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    # Wrapped: on one 6.4-inch panel the definition's outline ran past the right edge.
    _panel(fig.add_subplot(1, 1, 1), report, list(exp.losses), textwrap.fill(subtitle, 80))
    fig.axes[0].set_ylabel(f"{report.statistic} Voronoi loss")
    written += _save(fig, out_dir / f"{exp.name}-losses", formats, dpi)

    k_true = exp.truth.n_experts
    fig = Figure(figsize=(5.2 * k_true, 8.4), constrained_layout=True)
    FigureCanvasAgg(fig)
    # Top row: the worst error over the atoms of each cell; bottom row: the mass-weighted mean error
    # (in a split cell a low-mass atom may wander while the cell as a whole converges).
    for row, (kind, label) in enumerate((("max", "worst"), ("mean", "mass-weighted mean"))):
        for j in range(k_true):
            ax = fig.add_subplot(2, k_true, row * k_true + j + 1)
            # bpool_j (the pooled intercepts of a vanishing cell) is a cell-level error, drawn in both rows
            # as the mass error is; it is in the summaries only for vanishing true atoms.
            metrics = [m for m in (f"mass_err_{j}", f"beta1_{kind}_{j}", f"a_{kind}_{j}", f"b_{kind}_{j}",
                                   f"bpool_{j}") if m in report.summaries]
            _panel(ax, report, metrics, f"true atom {j}: {label} error in the cell")
            if j == 0:
                ax.set_ylabel(f"{report.statistic} of the {label} error")
    fig.suptitle(subtitle, fontsize=10)
    written += _save(fig, out_dir / f"{exp.name}-parameters", formats, dpi)
    return written


def _save(fig, stem: Path, formats, dpi: int = 130) -> List[Path]:
    return [_save_as(fig, stem.with_suffix(f".{fmt}"), dpi) for fmt in formats]


def _save_as(fig, path: Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names (PNG without one), atomically."""
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix[1:] or "png", dpi=dpi)
    return path


def _series_panels(reports: Sequence[Report], metrics: Sequence[str], path, dpi: int, draw, title) -> Path:
    """One panel per metric, one series per report: ``draw(ax, report, metric, series, color)`` draws a
    report's series of a metric, ``title(metric)`` names the panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4.2 * len(metrics), 3.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for color, report in zip([f"C{j}" for j in range(10)], reports):
            series = _series(report, metric)
            if series is not None:
                draw(ax, report, metric, series, color)
        _log_log_axes(ax, title(metric))
    return _save_as(fig, path, dpi)


def _interval_label(fit) -> str:
    return f"{fit.slope:+.2f} [{fit.ci_low:+.2f}, {fit.ci_high:+.2f}]"


def plot_comparison(reports: Sequence[Report], metrics: Sequence[str], path, dpi: int = 100) -> Path:
    """One panel per metric, one series per report: e.g. the split-cell errors of standard against
    modified gating. Means over replications with 10%-90% bars and each report's least-squares line.

    Returns
    -------
    Path
        ``path`` (its suffix picks the format).
    """
    def draw(ax, report, metric, series, color):
        n, mean, low, high = series
        fit = report.slopes[metric]
        ax.errorbar(n, mean, yerr=[low, high], fmt="o", ms=3, color=color, capsize=2,
                    label=f"{report.experiment.name}: {_interval_label(fit)}")
        _fitted_line(ax, n, fit, color)

    return _series_panels(reports, metrics, path, dpi, draw, lambda metric: metric)


def plot_scaled(reports: Sequence[Report], metrics: Sequence[str], exponent: float, path, dpi: int = 100) -> Path:
    """One panel per metric, one series per report, the errors multiplied by ``n**exponent``.

    With ``exponent = 1/4`` a metric converging at ``n^(-1/4)`` draws a flat line, a faster one a falling
    line and one with no polynomial rate a rising one: the three gatings of a vanishing expert on the same
    axes. Medians (the report's statistic) with 10%-90% bars, log-log axes.
    """
    def draw(ax, report, metric, series, color):
        n, centre, low, high = series
        scale = n ** exponent
        ax.errorbar(n, centre * scale, yerr=[low * scale, high * scale], fmt="o-", ms=3, color=color, capsize=2,
                    label=f"{report.experiment.truth.gating}: slope {_interval_label(report.slopes[metric])}")

    return _series_panels(reports, metrics, path, dpi, draw, lambda metric: f"{metric} x n^{exponent:g}")
