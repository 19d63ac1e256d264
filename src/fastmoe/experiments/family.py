"""Truth families: one setting run on several random truths and input dimensions (issue 14).

A rate measured at one hand-picked truth may be that truth's pre-asymptotic regime; the same setting on
random truths says whether the rate is the setting's. :func:`family_members` turns one definition (a
preset) into one experiment per ``(d, truth)``: the preset's shape (``k*``, ``K``, fitted ``k``, gating
transform, law of ``X``, fit options, losses, theory) with a truth drawn by :func:`random_truth`.

The rule (fixed before any run, the same for every setting): in reference conventions,
``beta0 ~ N(0, 0.5^2)``, ``beta1 ~ N(0, (3 / sqrt(d))^2)``, ``a ~ N(0, (2 / sqrt(d))^2)``,
``b ~ N(0, 1)``, slopes divided by the half-width of ``X``'s range (so that logits span the same range
on ``[-3, 3]^d`` as on ``[-1, 1]^d``; tanh and sigmoid gating inputs are bounded, so ``beta1`` is not
divided there), and every expert that vanishes in the template truth (``a_i = 0``) vanishes in the drawn
one too. The scales are those of the template truths (``|beta1| ~ 3``, ``|a| ~ 1-2`` at ``d = 2``),
divided by ``sqrt(d / 1)`` so that a logit's spread over the inputs does not grow with ``d``.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np

from ..params import MoEParams
from .definition import Experiment

__all__ = ["random_truth", "family_members", "member_name"]

BETA0_SD, BETA1_SD, A_SD, B_SD = 0.5, 3.0, 2.0, 1.0


def _half_width(experiment: Experiment) -> float:
    law = experiment.x_law
    return (law.high - law.low) / 2.0 if law.kind == "uniform" else law.scale


def random_truth(template: Experiment, d: int, seed: Sequence[int]) -> MoEParams:
    """A truth of ``template``'s shape with ``d`` inputs, drawn by the module's rule from ``seed``.

    Parameters
    ----------
    template : Experiment
        Gives ``k*``, ``K``, the gating transform, the vanishing experts and the law of ``X``.
    d : int
        Number of inputs (gating and experts read all of them).
    seed : sequence of int
        Entropy of :func:`numpy.random.default_rng`.
    """
    truth = template.truth
    k, K = truth.n_experts, truth.n_classes
    rng = np.random.default_rng(list(seed))
    width = _half_width(template)
    gate_width = width if truth.gating == "identity" else 1.0
    beta0 = rng.normal(0.0, BETA0_SD, k)
    beta1 = rng.normal(0.0, BETA1_SD / np.sqrt(d), (k, d)) / gate_width
    a = rng.normal(0.0, A_SD / np.sqrt(d), (k, K, d)) / width
    b = rng.normal(0.0, B_SD, (k, K))
    vanishing = [i for i in range(k) if not np.any(np.asarray(truth.a)[i])]
    a[vanishing] = 0.0
    # Reference conventions (last expert's gating and last class of every expert are zero): these are
    # the free parameters the losses compare, and drawing them directly keeps the vanishing experts at 0.
    beta0[-1], beta1[-1], a[:, -1], b[:, -1] = 0.0, 0.0, 0.0, 0.0
    return MoEParams(beta0=beta0, beta1=beta1, a=a, b=b, gating=truth.gating)


def member_name(family: str, d: int, index: int) -> str:
    """The experiment (and run directory) name of truth ``index`` at dimension ``d`` of ``family``."""
    return f"{family}-d{d}-t{index}"


def family_members(template: Experiment, family: str, dims: Sequence[int], n_truths: int, seed: int,
                   sample_sizes: Sequence[int] = None, n_replications: int = None) -> List[Experiment]:
    """One experiment per ``(d, truth)``: ``template`` with the truth drawn from ``(seed, d, index)``.

    Parameters
    ----------
    template : Experiment
        The setting (a preset). Its truth must read all inputs with one gating transform.
    family : str
        Prefix of the members' names (:func:`member_name`).
    dims : sequence of int
        Input dimensions.
    n_truths : int
        Truths per dimension.
    seed : int
        Family seed: truth ``i`` at dimension ``d`` is drawn from ``(seed, d, i)``.
    sample_sizes, n_replications : optional
        The members' grid (default: the template's).

    Returns
    -------
    list of Experiment
        Ordered by ``d``, then truth.
    """
    inputs = template.truth.inputs
    if inputs["gating_features"] is not None or inputs["expert_features"] is not None:
        raise ValueError(f"{template.name}: a truth family needs a truth whose gating and experts read all inputs")
    if template.truth_path is not None:
        raise ValueError(f"{template.name}: a truth family needs a fixed truth (this one moves with n)")
    members = []
    for d in dims:
        for index in range(n_truths):
            name = member_name(family, d, index)
            members.append(dataclasses.replace(
                template, name=name, truth=random_truth(template, d, (seed, d, index)),
                description=f"{template.name} on random truth {index} of family {family!r} (seed {seed}), d = {d}",
                planned=(), truth_path=None,
            ).with_grid(sample_sizes=sample_sizes, n_replications=n_replications))
    return members
