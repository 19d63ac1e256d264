"""Why a vanishing expert needs a nonlinear gating transform, seen in the population information.

The rate theory (``MODEL.md`` section 4) says that with standard gating a vanishing true expert
(``a* = 0``) interacts with the gating through ``d2F / (d beta1 d b) = dF / da``, and that a modified
gating ``M(x)`` that is not linear in ``x`` removes the interaction. This script measures that at the
population level, for the truths of the ``vanishing-*`` presets:

1. take the preset's truth and a 3-expert parameter that reproduces it exactly, with the vanishing cell
   split into two atoms whose intercepts differ (two constant experts with masses 1/2 that average to
   the true one: the known non-identifiable direction of ``b``), placed where the
   ``vanishing-*-spread`` presets start them;
2. form the expected (Fisher) information of the free parameters there
   (:func:`fastmoe.expected_information`) on a tensor Gauss-Legendre quadrature of ``Uniform[-h, h]^2``;
3. report its null-space dimension and the *efficient information* of the split atoms' relative gating
   slope ``beta1`` (the Schur complement after profiling out every other parameter, relative to the
   largest eigenvalue): how well the data pin the split atoms' ``beta1`` down at first order.

With standard gating the efficient information is exactly 0 (``beta1`` can be traded for ``a``); tanh and
sigmoid gating make it positive, but on the paper's ``[-1, 1]^2`` they are so close to linear that it is
tiny, which is why the ``vanishing-*`` presets draw ``X`` from ``[-3, 3]^2``.

A second table follows the curve that trade defines
(:func:`fastmoe.experiments.vanishing.pde_direction`): the split atoms' gating slopes move apart by ``t``
and their expert slopes by the ``t alpha`` that cancels the first-order
change of the law when ``M(x) = x``. It reports the order in ``t`` at which the law changes (2 for
standard gating, 1 for tanh and sigmoid) and, at points ``t > 0`` of the curve (where the information is
invertible), the asymptotic standard deviations of the first split atom's ``beta1``, ``a`` and ``b`` and
the power ``m`` with which they grow as ``t -> 0`` (``sd ~ t^-m``). These are the local-alternative
truths of the theory's minimax bound: at distance ``t`` from the degenerate truth, standard gating pins
``a`` and ``b`` down one and two powers of ``t`` worse than a nonlinear gating does.

Run ``python examples/vanishing_information.py``; it takes a few seconds. ``docs/results-history.md`` quotes its
output.
"""

import numpy as np

import fastmoe
from fastmoe.experiments import get_preset
from fastmoe.experiments.vanishing import along, pde_direction, spread_intercepts
from fastmoe.params import free_parameter_names

PRESET_HALF_WIDTH = 3.0  # the presets' X ~ Uniform[-3, 3]^2
PRESETS = ("vanishing-standard", "vanishing-tanh", "vanishing-sigmoid")


def truth_on(name, half):
    """The preset's truth for X ~ Uniform[-half, half]^2: slopes that see raw x rescaled so every logit
    spans the same range as in the preset (standard gating's gating slopes see raw x too)."""
    truth = get_preset(name).truth
    scale = PRESET_HALF_WIDTH / half
    beta1 = truth.beta1 * (scale if truth.gating_name == "identity" else 1.0)
    return fastmoe.MoEParams(beta0=truth.beta0, beta1=beta1, a=truth.a * scale, b=truth.b, gating=truth.gating)


def split_vanishing_cell(truth, spread):
    """Three atoms reproducing ``truth`` (expert 1 vanishes): expert 1 split into two constant experts of
    mass 1/2 placed as the ``vanishing-*-spread`` presets start them (``fit.split_spread``)."""
    return fastmoe.MoEParams(
        beta0=[truth.beta0[0], truth.beta0[1] - np.log(2), truth.beta0[1] - np.log(2)],
        beta1=[truth.beta1[0], truth.beta1[1], truth.beta1[1]],
        a=[truth.a[0], truth.a[1], truth.a[1]],
        b=[truth.b[0], *spread_intercepts(truth.b[1], 2, spread)],
        gating=truth.gating,
    )


def quadrature(half, nodes=40):
    """Tensor Gauss-Legendre nodes and weights of Uniform[-half, half]^2 (weights sum to 1)."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    x1, x2 = np.meshgrid(half * t, half * t, indexing="ij")
    return np.column_stack([x1.ravel(), x2.ravel()]), np.outer(w, w).ravel() / 4.0


def efficient_information(info, rows):
    """Schur complement of ``info`` on ``rows`` (pseudo-inverse for the singular rest)."""
    rest = np.setdiff1d(np.arange(info.shape[0]), rows)
    cross = info[np.ix_(rows, rest)]
    return info[np.ix_(rows, rows)] - cross @ np.linalg.pinv(info[np.ix_(rest, rest)], rcond=1e-12,
                                                             hermitian=True) @ cross.T


def law_distance(p, q, X, w):
    """L2 distance of the conditional laws of ``p`` and ``q`` under the input law (nodes ``X``, weights ``w``)."""
    return np.sqrt(np.sum(w[:, None] * (fastmoe.predict_proba(p, X) - fastmoe.predict_proba(q, X)) ** 2))


def path_standard_errors(split, direction, X, w, steps):
    """Asymptotic standard deviations (times sqrt(n)) of the first split atom's ``beta1[1,0]``,
    ``a[1,0,0]`` and ``b[1,0]`` at ``t`` in ``steps`` along the path: the information is invertible off
    the non-identifiable point ``t = 0``."""
    names = free_parameter_names(split)
    rows = [names.index(name) for name in ("beta1[1,0]", "a[1,0,0]", "b[1,0]")]
    out = []
    for t in steps:
        info = fastmoe.expected_information(along(split, direction, t), X, sample_weight=w)
        out.append(np.sqrt(np.diag(np.linalg.inv(info))[rows]))
    return np.array(out)


def information_at_the_split():
    """Table 1: null space and efficient information of beta1 at the split point."""
    print(f"{'preset':<20} {'X range':>9} {'null dim':>8} {'beta1 efficient info':>21}")
    for name in PRESETS:
        for half in (1.0, 3.0):
            truth = truth_on(name, half)
            split = split_vanishing_cell(truth, get_preset(f"{name}-spread").fit.split_spread)
            X, w = quadrature(half)
            gap = np.abs(fastmoe.predict_proba(split, X) - fastmoe.predict_proba(truth, X)).max()
            assert gap < 1e-12, gap  # the split reproduces the truth exactly
            info = fastmoe.expected_information(split, X, sample_weight=w)
            eigval = np.linalg.eigvalsh(info)
            null_dim = int(np.sum(eigval < 1e-10 * eigval[-1]))
            # The split atoms are experts 1 and 2 (2 is the reference): beta1[1, :] is their difference.
            rows = [i for i, p in enumerate(free_parameter_names(split)) if p.startswith("beta1[1,")]
            beta1_info = np.linalg.eigvalsh(efficient_information(info, rows))[0] / eigval[-1]
            print(f"{name:<20} {f'[-{half:g}, {half:g}]':>9} {null_dim:>8} {max(beta1_info, 0.0):>21.1e}")


def information_along_the_pde_path(half=PRESET_HALF_WIDTH, steps=(0.05, 0.1, 0.2)):
    """Table 2: order of the law's change along :func:`pde_direction` and how the standard errors of the
    split atoms grow as the path nears the split point (exponent m of sd ~ t^-m)."""
    print(f"\nAlong the PDE path (X on [-{half:g}, {half:g}]^2): sqrt(n) sd at t = {steps[-1]:g}, exponent m "
          "of sd ~ t^-m over t = " + ", ".join(f"{t:g}" for t in steps))
    print(f"{'preset':<20} {'law order':>9} {'beta1: sd, m':>14} {'a: sd, m':>14} {'b: sd, m':>14}")
    for name in PRESETS:
        split = split_vanishing_cell(truth_on(name, half), get_preset(f"{name}-spread").fit.split_spread)
        X, w = quadrature(half)
        direction = pde_direction(split, 1, 2, [1.0, 0.0])
        t = 0.01
        order = np.log2(law_distance(along(split, direction, 2 * t), split, X, w)
                        / law_distance(along(split, direction, t), split, X, w))
        sd = path_standard_errors(split, direction, X, w, steps)
        exponents = -np.polyfit(np.log(steps), np.log(sd), 1)[0]
        cells = " ".join(f"{f'{s:.3g}, {m:.1f}':>14}" for s, m in zip(sd[-1], exponents))
        print(f"{name:<20} {order:>9.2f} {cells}")


def main():
    information_at_the_split()
    information_along_the_pde_path()


if __name__ == "__main__":
    main()
