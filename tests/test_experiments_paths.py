"""Truths that move with n (local alternatives) and the PDE direction of a split vanishing cell."""

import dataclasses

import numpy as np
import pytest

import fastmoe
from fastmoe import losses
from fastmoe.experiments import Experiment, get_preset, preset_names, run_job
from fastmoe.experiments.truth_path import TruthPath
from fastmoe.experiments.vanishing import along, pde_direction, spread_intercepts


def split_pair(gating, beta0=(-0.37, -0.5, -1.0)):
    """Three atoms on Uniform[-3, 3]^2: a sloped expert 0 and a pair of constant experts 1, 2 with a common
    gating slope and different intercepts (unequal masses by default)."""
    a0 = np.array([[0.21, 0.57], [0.05, -0.28], [0.0, 0.0]])
    b_pair = spread_intercepts(np.array([-0.89, 1.77, 0.0]), 2, 0.4)
    return fastmoe.MoEParams(beta0=beta0, beta1=[[1.11, -2.91], [0.2, 0.1], [0.2, 0.1]],
                             a=[a0, np.zeros((3, 2)), np.zeros((3, 2))], b=[[1.77, -0.89, 0.0], *b_pair],
                             gating=gating)


def quadrature(half=3.0, nodes=30):
    t, w = np.polynomial.legendre.leggauss(nodes)
    x1, x2 = np.meshgrid(half * t, half * t, indexing="ij")
    return np.column_stack([x1.ravel(), x2.ravel()]), np.outer(w, w).ravel() / 4.0


@pytest.mark.parametrize("gating, order", [("identity", 2.0), ("tanh", 1.0), ("sigmoid", 1.0)])
def test_pde_direction_moves_the_law_at_second_order_only_with_standard_gating(gating, order):
    params = split_pair(gating)
    direction = pde_direction(params, 1, 2, [1.0, -0.5])
    X, w = quadrature()
    base = fastmoe.predict_proba(params, X)

    def gap(t):
        return np.sqrt(np.sum(w[:, None] * (fastmoe.predict_proba(along(params, direction, t), X) - base) ** 2))

    assert gap(0.01) > 1e-8
    assert abs(np.log2(gap(0.02) / gap(0.01)) - order) < 0.05
    # Only the pair's gating and expert slopes move, and their gating slopes separate by t u.
    assert not direction.beta0.any() and not direction.b.any() and not direction.a[0].any()
    np.testing.assert_allclose(direction.beta1[1] - direction.beta1[2], [1.0, -0.5])


def test_pde_direction_needs_a_pair_of_constant_experts_with_one_gating_slope():
    params = split_pair("identity")
    with pytest.raises(ValueError, match="distinct atoms"):
        pde_direction(params, 1, 1, [1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        pde_direction(params, 1, 2, [1.0])
    with pytest.raises(ValueError, match="constant experts"):
        pde_direction(params, 0, 1, [1.0, 0.0])


def path_experiment(**path):
    base = get_preset("vanishing-standard").with_grid(sample_sizes=[400, 1600], n_replications=2)
    truth = split_pair("identity", beta0=(-0.37, -0.69, -0.69))
    direction = pde_direction(truth, 1, 2, [0.5, 0.0])
    return dataclasses.replace(base, name="path", truth=truth, fit=dataclasses.replace(base.fit, split_cells=None),
                               truth_path=TruthPath(direction=direction, **{"scale": 2.0, "exponent": 0.25, **path}))


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_truth_path_round_trips_and_moves_the_truth_with_n(tmp_path, suffix):
    exp = path_experiment()
    exp.save(tmp_path / f"path{suffix}")
    again = Experiment.load(tmp_path / f"path{suffix}")
    assert again == exp and again.model_digest() == exp.model_digest()
    assert dataclasses.replace(exp, truth_path=None).model_digest() != exp.model_digest()
    assert path_experiment(exponent=0.5).model_digest() != exp.model_digest()
    assert "truth moves by t = 2 n^-0.25" in exp.outline()
    assert "truth at t = 2 along" in path_experiment(exponent=0.0).outline()
    d = exp.truth_path.direction
    for n in (400, 1600):
        step = 2.0 * n ** -0.25
        assert exp.truth_path.step(n) == pytest.approx(step)
        at = exp.truth_at(n)
        np.testing.assert_allclose(at.beta1, exp.truth.beta1 + step * d.beta1)
        np.testing.assert_allclose(at.a, exp.truth.a + step * d.a)
        np.testing.assert_array_equal(at.b, exp.truth.b)
    # Without a path the truth stays put, and the definitions (so the stored digests) do not change.
    for name in preset_names():
        preset = get_preset(name)
        if preset.truth_path is None:
            assert preset.truth_at(1000) is preset.truth and "truth_path" not in preset.to_dict()


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda e: dataclasses.replace(e, truth_path=TruthPath(direction=get_preset("exact-fit").truth)), ValueError,
         "shape"),
        (lambda e: path_experiment(exponent=-0.5), ValueError, "exponent"),
        (lambda e: path_experiment(scale=float("nan")), ValueError, "scale"),
        (lambda e: dataclasses.replace(e, fit=dataclasses.replace(e.fit, split_spread=0.3)), ValueError,
         "does not combine"),
        (lambda e: Experiment.from_dict({**e.to_dict(), "truth_path": {**e.truth_path.to_dict(), "step": 1}}),
         ValueError, "unknown truth_path keys"),
        (lambda e: dataclasses.replace(e, truth_path={"scale": 1.0}), TypeError, "TruthPath"),
    ],
)
def test_invalid_truth_paths_are_refused(change, error, message):
    with pytest.raises(error, match=message):
        change(path_experiment())


def test_a_path_job_samples_and_scores_against_the_truth_of_its_n():
    exp = path_experiment()
    n = 400
    record = run_job(exp, n, 0)
    assert record["status"] in ("ok", "not_converged"), record.get("error")
    assert record["path_step"] == pytest.approx(exp.truth_path.step(n))
    streams = exp.streams(n, 0)
    X = exp.x_law.sample(streams["x"], n, 2)
    X, y = fastmoe.sample(exp.truth_at(n), X=X, random_state=streams["y"])
    assert record["loglik_true"] == pytest.approx(fastmoe.loglik(exp.truth_at(n), X, y), rel=1e-12)
    assert record["loglik_true"] != pytest.approx(fastmoe.loglik(exp.truth, X, y), rel=1e-6)
    # The losses are measured against truth_at(n), not against the start of the path.
    fitted = fastmoe.MoEParams.from_dict(record["params"])
    assert record["D2"] == pytest.approx(losses.D2(fitted, exp.truth_at(n)), rel=1e-12)
    assert record["D2"] != pytest.approx(losses.D2(fitted, exp.truth), rel=1e-3)


@pytest.mark.parametrize("gating, u", [("standard", 1.0 / 3.0), ("tanh", 1.0), ("sigmoid", 2.0)])
def test_local_presets_start_at_the_degenerate_truth_and_follow_the_pde_direction(gating, u):
    local, fixed = get_preset(f"vanishing-{gating}-local"), get_preset(f"vanishing-{gating}")
    X, _ = quadrature(nodes=12)
    np.testing.assert_allclose(fastmoe.predict_proba(local.truth, X), fastmoe.predict_proba(fixed.truth, X),
                               atol=1e-12)
    direction = pde_direction(local.truth, 1, 2, [u, 0.0])
    for field in ("beta0", "beta1", "a", "b"):
        np.testing.assert_allclose(getattr(local.truth_path.direction, field), getattr(direction, field),
                                   atol=1e-12)
    assert local.truth_path.step(20000) == pytest.approx(1.0)
    assert local.truth_path.exponent == 0.25 and local.n_experts == local.truth.n_experts == 3


@pytest.mark.parametrize("gating", ["standard", "tanh"])
def test_near_presets_hold_the_local_truth_of_one_million_fixed(gating):
    near, local = get_preset(f"vanishing-{gating}-near"), get_preset(f"vanishing-{gating}-local")
    assert near.truth_path.exponent == 0.0
    for n in (20000, 8_000_000):
        at = near.truth_at(n)
        for field in ("beta0", "beta1", "a", "b"):
            np.testing.assert_allclose(getattr(at, field), getattr(local.truth_at(1_000_000), field), rtol=1e-12,
                                       atol=1e-15)
