"""Pictures of a fit: gating partition, experts' decision regions, the fit's history, a dendrogram.

matplotlib is optional: it is imported by each function on first use (``import fastmoe`` never loads
it), and a missing matplotlib raises an ``ImportError`` that says how to install it. Every function
draws on the axes it is given (or on new ones) and returns them, so that pictures compose; none calls
``show`` or saves a file.

- :func:`gating_partition` (2-D inputs): which expert the gate picks at each point, shaded by how sure
  the gate is, with the data over it.
- :func:`expert_regions` (2-D inputs): one panel per expert, its most probable class at each point,
  shaded by that class's probability.
- :func:`history` (any d): the objective per iteration, EM and Newton iterations marked
  (``FitResult.newton_iterations``).
- :func:`dendrogram`: the merge tree of :func:`fastmoe.dendrogram`, cut at the selected level.
"""

from __future__ import annotations

import numpy as np

from . import _predict
from ._validation import check_positive_int, check_X
from .params import MoEParams

__all__ = ["gating_partition", "expert_regions", "history", "dendrogram"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "fastmoe.plot needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'fastmoe[experiments]')"
        ) from error
    return plt


def _axes(ax):
    if ax is not None:
        return ax
    return _pyplot().subplots(figsize=(5.0, 4.2))[1]


def _params_of(fitted):
    """``MoEParams`` from parameters, a ``FitResult`` or a fitted estimator."""
    if isinstance(fitted, MoEParams):
        return fitted
    params = getattr(fitted, "params", None)
    if isinstance(params, MoEParams):
        return params
    params = getattr(fitted, "params_", None)
    if isinstance(params, MoEParams):
        return params
    raise TypeError(f"expected MoEParams, a FitResult or a fitted estimator, got {type(fitted).__name__}")


def _grid(params, X, bounds, resolution):
    """A (resolution^2, 2) grid over ``bounds`` (or the data's box with a margin, or [-1, 1]^2)."""
    if params.n_inputs != 2:  # the picture is drawn over the columns of X, whichever the gating and experts read
        raise ValueError(f"this picture needs 2-D inputs, but the model reads {params.n_inputs} columns of X")
    if bounds is None:
        if X is None:
            bounds = (-1.0, 1.0, -1.0, 1.0)
        else:
            low, high = X.min(axis=0), X.max(axis=0)
            margin = 0.05 * (high - low + 1e-12)
            bounds = (low[0] - margin[0], high[0] + margin[0], low[1] - margin[1], high[1] + margin[1])
    x0, x1, y0, y1 = (float(v) for v in bounds)
    if not np.isfinite([x0, x1, y0, y1]).all():
        raise ValueError(f"bounds must be finite (xmin, xmax, ymin, ymax), got {bounds!r}")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"bounds must be (xmin, xmax, ymin, ymax) with min < max, got {bounds!r}")
    resolution = int(resolution)
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    return np.column_stack([gx.ravel(), gy.ravel()]), (x0, x1, y0, y1), resolution


def _shaded(labels, strength, n_labels):
    """RGBA image: each label's colour, faded towards white where ``strength`` (0..1) is low."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colours = np.array([cmap(i % 10)[:3] for i in range(n_labels)])[labels]
    fade = (0.25 + 0.75 * np.clip(strength, 0.0, 1.0))[..., None]
    rgb = 1.0 - fade * (1.0 - colours)
    return np.concatenate([rgb, np.ones(rgb.shape[:-1] + (1,))], axis=-1)


def _data(fitted, params, X, y, max_points):
    """The data to draw: ``X`` checked, ``y`` as class codes (an estimator's own labels are encoded through
    its ``classes_``; otherwise integer codes in ``[0, n_classes)``), ``max_points`` checked, and the names
    of the classes for legends. Returns ``(X, codes, names)``, ``X`` and ``codes`` possibly None."""
    if max_points is not None:
        check_positive_int(max_points, "max_points", minimum=0)
    classes = getattr(fitted, "classes_", None)
    names = [str(c) for c in classes] if classes is not None else [str(s) for s in range(params.n_classes)]
    if X is None:
        if y is not None:
            raise ValueError("y was given without X: the labels are drawn at the points of X")
        return None, None, names
    X = check_X(X, n_features=params.n_inputs)
    if y is None:
        return X, None, names
    if classes is not None:
        codes = fitted.encode_labels(y)
    else:
        codes = np.asarray(y)
        if codes.ndim != 1 or not (np.issubdtype(codes.dtype, np.integer) or np.issubdtype(codes.dtype, np.bool_)):
            raise ValueError("y must be a 1-d array of integer class codes (or give the fitted estimator, whose own "
                             f"labels are encoded through its classes_), got dtype {codes.dtype} and shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= params.n_classes):
            raise ValueError(f"y holds class codes outside [0, {params.n_classes}) for a model with "
                             f"{params.n_classes} classes")
    if codes.shape[0] != X.shape[0]:
        raise ValueError(f"y has {codes.shape[0]} labels but X has {X.shape[0]} rows")
    return X, codes.astype(np.intp), names


def _thinned(max_points, X, *columns):
    """Every row, or ``max_points`` rows evenly spaced (a light, deterministic thinning), of ``X`` and of the
    other arrays (None passes through)."""
    if max_points is None or X.shape[0] <= max_points:
        return (X, *columns)
    keep = np.linspace(0, X.shape[0] - 1, max_points).astype(int)
    return (X[keep], *(None if c is None else c[keep] for c in columns))


MARKERS = "o^sDv<>pP*"


def _scatter(ax, X, codes, names, colours=None):
    """The data over a picture, one marker per class when ``codes`` are given: in black, or in ``colours``
    (RGBA per point)."""
    black = colours is None
    if codes is None:
        ax.scatter(X[:, 0], X[:, 1], s=4, c="k" if black else colours, alpha=0.5 if black else None, linewidths=0)
        return
    for s in np.unique(codes):
        rows = codes == s
        ax.scatter(X[rows, 0], X[rows, 1], s=6, marker=MARKERS[int(s) % len(MARKERS)], facecolors="none",
                   edgecolors="k" if black else colours[rows], linewidths=0.4, alpha=0.6 if black else None,
                   label=f"class {names[int(s)]}")


def gating_partition(fitted, X=None, y=None, *, ax=None, bounds=None, resolution=200, max_points=2000):
    """The gate's partition of a 2-D input space: argmax expert, shaded by its gate probability.

    Parameters
    ----------
    fitted : MoEParams, FitResult or fitted MixtureOfExpertsClassifier
    X : array-like of shape (n_samples, 2), optional
        Data drawn over the partition (and the picture's extent).
    y : array-like of shape (n_samples,), optional
        Class labels of ``X`` (integer codes; an estimator's own labels when ``fitted`` is one): one marker
        per class.
    ax : matplotlib Axes, optional
    bounds : (xmin, xmax, ymin, ymax), optional
    resolution : int, default=200
        Grid points per side.
    max_points : int or None, default=2000
        At most this many points are drawn.

    Returns
    -------
    matplotlib Axes
    """
    _pyplot()
    params = _params_of(fitted)
    X, codes, names = _data(fitted, params, X, y, max_points)
    grid, extent, res = _grid(params, X, bounds, resolution)
    gate = _predict.gate_proba(params, grid)
    k = params.n_experts
    best = gate.argmax(axis=1)
    # Faded where the gate hesitates (max probability near 1/k), full colour where it is sure.
    sure = (gate.max(axis=1) - 1.0 / k) / (1.0 - 1.0 / k) if k > 1 else np.ones(len(best))
    ax = _axes(ax)
    ax.imshow(_shaded(best, sure, k).reshape(res, res, 4), origin="lower", extent=extent, aspect="auto",
              interpolation="nearest")
    if X is not None:
        _scatter(ax, *_thinned(max_points, X, codes), names)
    from matplotlib.patches import Patch
    from matplotlib import colormaps

    handles = [Patch(color=colormaps["tab10"](i % 10), label=f"expert {i}") for i in range(k)]
    ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.8)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.set_title("gating: expert chosen (shade: gate probability)")
    return ax


def expert_regions(fitted, X=None, y=None, *, axes=None, bounds=None, resolution=150, max_points=2000):
    """Each expert's decision regions over a 2-D input space, one panel per expert.

    Panel ``i`` colours each point by expert ``i``'s most probable class, shaded by that class's
    probability; data points are drawn with the weight the gate gives expert ``i`` there (points the
    gate sends elsewhere are faint).

    Parameters
    ----------
    fitted : MoEParams, FitResult or fitted MixtureOfExpertsClassifier
    X, y : optional
        Data to draw, one marker per class of ``y`` (as in :func:`gating_partition`).
    axes : sequence of matplotlib Axes, optional
        One per expert; new ones in a row otherwise.
    bounds, resolution, max_points
        As in :func:`gating_partition`.

    Returns
    -------
    ndarray of matplotlib Axes, one per expert
    """
    _pyplot()
    params = _params_of(fitted)
    X, codes, names = _data(fitted, params, X, y, max_points)
    grid, extent, res = _grid(params, X, bounds, resolution)
    proba = _predict.expert_proba(params, grid)  # (m, k, K)
    k, n_classes = params.n_experts, params.n_classes
    if axes is None:
        plt = _pyplot()
        _, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.4), squeeze=False)
        axes = axes[0]
    axes = np.asarray(axes, dtype=object).ravel()
    if axes.size != k:
        raise ValueError(f"need one Axes per expert ({k}), got {axes.size}")
    if X is not None:
        X, codes = _thinned(max_points, X, codes)
        gate_data = _predict.gate_proba(params, X)
    for i, ax in enumerate(axes):
        best = proba[:, i, :].argmax(axis=1)
        sure = (proba[:, i, :].max(axis=1) - 1.0 / n_classes) / (1.0 - 1.0 / n_classes)
        ax.imshow(_shaded(best, sure, n_classes).reshape(res, res, 4), origin="lower", extent=extent,
                  aspect="auto", interpolation="nearest")
        if X is not None:
            colours = np.zeros((X.shape[0], 4))
            colours[:, 3] = 0.05 + 0.75 * gate_data[:, i]
            _scatter(ax, X, codes, names, colours)
        ax.set_title(f"expert {i}: most probable class")
        ax.set_xlabel("x[0]")
    axes[0].set_ylabel("x[1]")
    from matplotlib.patches import Patch
    from matplotlib import colormaps

    handles = [Patch(color=colormaps["tab10"](s % 10), label=f"class {names[s]}") for s in range(n_classes)]
    axes[-1].legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.8)
    return axes


def history(result, ax=None, *, gap=False):
    """The objective after every iteration of a fit, EM and Newton iterations marked.

    Parameters
    ----------
    result : FitResult
        Its ``history`` (objective at the start and after each iteration) and ``newton_iterations``.
    ax : matplotlib Axes, optional
    gap : bool, default=False
        Draw ``final - objective`` on a log scale instead (how far each iteration is from the end):
        EM's linear crawl and Newton's quadratic finish show as a line and a cliff.

    Returns
    -------
    matplotlib Axes
    """
    _pyplot()
    values = getattr(result, "history", None)
    if values is None:
        raise TypeError(f"expected a FitResult (with a history), got {type(result).__name__}")
    values = np.asarray(values, dtype=np.float64)
    iterations = np.arange(values.size)
    newton = np.zeros(values.size, dtype=bool)
    steps = np.asarray(getattr(result, "newton_iterations", ()), dtype=int)
    newton[steps[(steps > 0) & (steps < values.size)]] = True
    ax = _axes(ax)
    if gap:
        shown = values[-1] - values
        positive = shown > 0
        ax.set_yscale("log")
        ylabel = "final objective - objective"
    else:
        shown = values
        positive = np.ones(values.size, dtype=bool)
        ylabel = "objective (log-likelihood - penalty)"
    ax.plot(iterations[positive], shown[positive], color="0.6", linewidth=1, zorder=1)
    em = ~newton & positive
    em[0] = False
    ax.scatter(iterations[em], shown[em], s=12, color="tab:blue", label=f"EM iteration ({int(em.sum())})", zorder=2)
    nt = newton & positive
    ax.scatter(iterations[nt], shown[nt], s=16, marker="D", color="tab:red",
               label=f"Newton step ({int(nt.sum())})", zorder=3)
    if positive[0]:
        ax.scatter([0], [shown[0]], s=20, marker="s", color="k", label="start", zorder=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title("fit history")
    ax.legend(fontsize="small")
    return ax


def dendrogram(tree, ax=None, *, select=True, labels=None):
    """Draw a :class:`fastmoe.Dendrogram` with SciPy's dendrogram drawing.

    Leaves are the fit's experts, labelled with their masses; with ``select`` a dashed line cuts the
    tree at the level :meth:`Dendrogram.select` chooses.

    Returns
    -------
    matplotlib Axes
    """
    _pyplot()
    from scipy.cluster import hierarchy

    from ._dendrogram import Dendrogram, atom_masses

    if not isinstance(tree, Dendrogram):
        raise TypeError(f"expected a fastmoe.Dendrogram, got {type(tree).__name__}")
    ax = _axes(ax)
    k = tree.n_experts
    if labels is None:
        masses = atom_masses(tree.params[k])
        labels = [f"{i}\n{m:.2f}" for i, m in enumerate(masses)]
    if k == 1:
        ax.text(0.5, 0.5, "one expert: nothing to merge", ha="center", va="center", transform=ax.transAxes)
        return ax
    hierarchy.dendrogram(tree.linkage, ax=ax, labels=labels, color_threshold=0, above_threshold_color="0.2")
    if select:
        chosen, _ = tree.select()
        # The cut lies between the merge that makes level `chosen` and the one that leaves it.
        upper = tree.height(chosen) if chosen > 1 else tree.heights.max() * 1.1
        lower = tree.height(chosen + 1) if chosen < k else 0.0
        ax.axhline(0.5 * (upper + lower), color="tab:red", linestyle="--", linewidth=1,
                   label=f"selected: {chosen} experts")
        ax.legend(fontsize="small", loc="upper left")
    ax.set_xlabel("expert of the fit (mass)")
    ax.set_ylabel("merge height")
    ax.set_title("dendrogram of the mixing measure")
    return ax
