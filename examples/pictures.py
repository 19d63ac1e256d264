"""The README's pictures (issue 15): gating partition, experts' decision regions, fit history, dendrogram.

    python examples/pictures.py            # writes docs/img/*.png

Needs matplotlib. Deterministic: every draw and fit has a fixed seed.
"""

from __future__ import annotations

import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import fastmoe  # noqa: E402
import fastmoe.plot  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "img")


def main(out=OUT):
    os.makedirs(out, exist_ok=True)
    # The README's two-expert truth: d = 2, K = 3, standard gating.
    truth = fastmoe.MoEParams(beta0=[0.5, 0.0], beta1=[[3.0, -2.0], [0.0, 0.0]],
                              a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
                              b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]])
    X, y = fastmoe.sample(truth, 5000, random_state=0)
    result = fastmoe.fit(X, y, 2, random_state=0)

    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    fastmoe.plot.gating_partition(result, X, y, ax=ax, max_points=1500)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "gating_partition.png"), dpi=110)

    axes = fastmoe.plot.expert_regions(result, X, y, max_points=3000)
    axes[0].figure.tight_layout()
    axes[0].figure.savefig(os.path.join(out, "expert_regions.png"), dpi=110)

    # A k-means start shows both phases: EM iterations, then the Newton finish.
    from_kmeans = fastmoe.fit(X, y, 2, init="kmeans", random_state=0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    fastmoe.plot.history(from_kmeans, ax=left)
    fastmoe.plot.history(from_kmeans, ax=right, gap=True)
    right.set_title("distance to the final objective")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "history.png"), dpi=110)

    # Dendrogram: a clear two-expert truth fitted with four experts.
    clear = fastmoe.MoEParams(beta0=[0.0, 0.0], beta1=[[4.0, 0.0], [0.0, 0.0]],
                              a=[[[0.0, 3.0], [0.0, 0.0]], [[0.0, -3.0], [0.0, 0.0]]], b=[[0.0, 0.0], [0.0, 0.0]])
    X2, y2 = fastmoe.sample(clear, 8000, random_state=1, low=-2.0, high=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)  # over-fitted coefficients may run off
        over = fastmoe.fit(X2, y2, 4, random_state=1)
    tree = fastmoe.dendrogram(over, X2, y2)
    print(tree)
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    tree.plot(ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dendrogram.png"), dpi=110)
    plt.close("all")
    print("wrote", ", ".join(sorted(f for f in os.listdir(out) if f.endswith(".png"))), "to", os.path.normpath(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
