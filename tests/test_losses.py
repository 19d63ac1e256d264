"""Tests of the Voronoi losses (``MODEL.md`` section 4) on hand-made mixing measures."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmoe.losses import (
    D1,
    D2,
    D2r,
    PER_PARAMETER_FIELDS,
    align_translation,
    flat,
    per_parameter_errors,
    voronoi_cells,
    voronoi_loss,
)
from fastmoe.params import MoEParams


def _params(masses, beta1, a, b, gating="identity"):
    """Build parameters from masses ``exp(beta0)`` and nested lists (d = d_gate = 1 unless given)."""
    return MoEParams(beta0=np.log(masses), beta1=beta1, a=a, b=b, gating=gating)


def _true():
    # Two true atoms with d = 1, K = 2, already in reference conventions: masses (2, 1), total 3,
    # mass-weighted mean of beta1 = 2/3.
    return _params([2.0, 1.0], [[1.0], [0.0]], [[[1.0], [0.0]], [[0.0], [0.0]]], [[0.5, 0.0], [0.0, 0.0]])


def _overfit():
    # Three fitted atoms: 0 and 1 split true atom 0, atom 2 sits alone near true atom 1. Total mass 3 and
    # mean beta1 (1.2 + 0.8 * 0.85 + 1.2 * 0.1) / 3 = 2/3 match the truth, so the closed-form alignment
    # is the identity and every error below can be read off the numbers.
    return _params(
        [1.0, 0.8, 1.2],
        [[1.2], [0.85], [0.1]],
        [[[1.1], [0.0]], [[0.8], [0.0]], [[0.05], [0.0]]],
        [[0.8, 0.0], [0.4, 0.0], [-0.2, 0.0]],
    )


def _random(rng, k, d=2, K=3, gating="identity"):
    return MoEParams(
        beta0=rng.normal(size=k),
        beta1=rng.normal(size=(k, d)),
        a=rng.normal(size=(k, K, d)),
        b=rng.normal(size=(k, K)),
        gating=gating,
    )


def _near_split(rng, true, k, scale=0.1):
    """An over-fitted measure: each true atom gets at least one fitted atom, extra ones at random."""
    owner = np.concatenate([np.arange(true.n_experts), rng.integers(true.n_experts, size=k - true.n_experts)])
    return MoEParams(
        beta0=true.beta0[owner] - np.log(np.bincount(owner)[owner]) + scale * rng.normal(size=k),
        beta1=true.beta1[owner] + scale * rng.normal(size=(k, true.n_gate_features)),
        a=true.a[owner] + scale * rng.normal(size=(k,) + true.a.shape[1:]),
        b=true.b[owner] + scale * rng.normal(size=(k, true.n_classes)),
        gating=true.gating,
    )


ALL_LOSSES = {
    "D1": D1,
    "D2": D2,
    "D2r_r3": lambda f, t, **kw: D2r(f, t, 3.0, **kw),
    "general_424": lambda f, t, **kw: voronoi_loss(f, t, 4.0, 2.0, 4.0, **kw),
}


# -- zero at the truth -------------------------------------------------------------------------------
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("loss", ALL_LOSSES.values(), ids=ALL_LOSSES.keys())
def test_zero_at_truth(loss, exact):
    true = _random(np.random.default_rng(0), 3)
    assert loss(true, true, exact_translation=exact) == pytest.approx(0.0, abs=1e-12)
    # Listing the true experts in another order is the same measure.
    assert loss(MoEParams(true.beta0[::-1], true.beta1[::-1], true.a[::-1], true.b[::-1]), true) == pytest.approx(
        0.0, abs=1e-12
    )


def test_per_parameter_errors_zero_at_truth():
    true = _random(np.random.default_rng(1), 3)
    errors = per_parameter_errors(true, true)
    np.testing.assert_array_equal(errors["cell_size"], [1, 1, 1])
    for name in PER_PARAMETER_FIELDS[1:]:
        if name != "bpool":
            np.testing.assert_allclose(errors[name], 0.0, atol=1e-12)
    # No true expert vanishes, so the pooled-intercept error is not defined (tests/test_quotient_loss.py).
    assert np.isnan(errors["bpool"]).all()


# -- invariances ---------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_invariant_to_permuting_fitted_experts(seed):
    rng = np.random.default_rng(seed)
    true = _random(rng, 2)
    fitted = _near_split(rng, true, 4, scale=0.3)
    perm = rng.permutation(4)
    permuted = MoEParams(fitted.beta0[perm], fitted.beta1[perm], fitted.a[perm], fitted.b[perm])
    for loss in ALL_LOSSES.values():
        assert loss(permuted, true) == pytest.approx(loss(fitted, true), rel=1e-10, abs=1e-12)
    np.testing.assert_array_equal(voronoi_cells(permuted, true), voronoi_cells(fitted, true)[perm])
    got, want = per_parameter_errors(permuted, true), per_parameter_errors(fitted, true)
    for name in PER_PARAMETER_FIELDS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_invariant_to_softmax_shifts(seed):
    # A common shift of all gating parameters, and per-expert shifts of all classes, leave the model
    # (hence the measure) unchanged.
    rng = np.random.default_rng(seed)
    true = _random(rng, 2)
    fitted = _near_split(rng, true, 3, scale=0.3)
    shifted = MoEParams(
        beta0=fitted.beta0 + rng.normal(scale=3.0),
        beta1=fitted.beta1 + rng.normal(scale=3.0, size=2),
        a=fitted.a + rng.normal(scale=3.0, size=(3, 1, 2)),
        b=fitted.b + rng.normal(scale=3.0, size=(3, 1)),
    )
    for loss in ALL_LOSSES.values():
        assert loss(shifted, true) == pytest.approx(loss(fitted, true), rel=1e-9, abs=1e-12)


def test_shifting_true_parameters_changes_nothing():
    rng = np.random.default_rng(2)
    true = _random(rng, 2)
    fitted = _near_split(rng, true, 3)
    shifted_true = MoEParams(true.beta0 + 1.5, true.beta1 - 0.7, true.a + 2.0, true.b - 1.0)
    assert D2(fitted, shifted_true) == pytest.approx(D2(fitted, true), rel=1e-12)


# -- cells -----------------------------------------------------------------------------------------------
def test_known_cells_and_hand_computed_errors():
    fitted, true = _overfit(), _true()
    np.testing.assert_array_equal(voronoi_cells(fitted, true), [0, 0, 1])
    errors = per_parameter_errors(fitted, true)
    np.testing.assert_array_equal(errors["cell_size"], [2, 1])
    np.testing.assert_allclose(errors["mass_err"], [0.2, 0.2], atol=1e-12)
    # Cell 0: beta1 errors 0.2 (mass 1.0) and 0.15 (mass 0.8); a errors 0.1 and 0.2; b errors 0.3 and 0.1.
    np.testing.assert_allclose(errors["beta1_max"], [0.2, 0.1], atol=1e-12)
    np.testing.assert_allclose(errors["beta1_mean"], [(1.0 * 0.2 + 0.8 * 0.15) / 1.8, 0.1], atol=1e-12)
    np.testing.assert_allclose(errors["a_max"], [0.2, 0.05], atol=1e-12)
    np.testing.assert_allclose(errors["a_mean"], [(1.0 * 0.1 + 0.8 * 0.2) / 1.8, 0.05], atol=1e-12)
    np.testing.assert_allclose(errors["b_max"], [0.3, 0.2], atol=1e-12)
    np.testing.assert_allclose(errors["b_mean"], [(1.0 * 0.3 + 0.8 * 0.1) / 1.8, 0.2], atol=1e-12)


def test_ties_go_to_smallest_true_atom():
    # True beta1 = 2 and 0 with equal masses (mean 1); the middle fitted atom at beta1 = 1 is equidistant.
    zeros_a, zeros_b = [[[0.0], [0.0]]] * 2, [[0.0, 0.0]] * 2
    true = _params([1.0, 1.0], [[2.0], [0.0]], zeros_a, zeros_b)
    fitted = _params([2 / 3] * 3, [[2.0], [1.0], [0.0]], zeros_a + zeros_a[:1], zeros_b + zeros_b[:1])
    np.testing.assert_array_equal(voronoi_cells(fitted, true), [0, 0, 1])


def test_empty_cell():
    # Both fitted atoms near true atom 0; true atom 1 (mass 1) gets none.
    true = _true()
    fitted = _params([1.5, 1.5], [[2 / 3], [2 / 3]], [[[1.0], [0.0]]] * 2, [[0.5, 0.0], [0.6, 0.0]])
    np.testing.assert_array_equal(voronoi_cells(fitted, true), [0, 0])
    # Mass term |3 - 2| + |0 - 1|; split cell 0 with beta1 errors 1/3 and b errors 0 and 0.1.
    expected = 1.0 + 1.0 + 1.5 * (1 / 3) ** 2 + 1.5 * ((1 / 3) ** 2 + 0.1**2)
    assert D2(fitted, true) == pytest.approx(expected, rel=1e-12)
    errors = per_parameter_errors(fitted, true)
    np.testing.assert_array_equal(errors["cell_size"], [2, 0])
    np.testing.assert_allclose(errors["mass_err"], [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(errors["beta1_max"][0], 1 / 3, atol=1e-12)
    np.testing.assert_allclose(errors["b_mean"][0], 0.05, atol=1e-12)
    for name in PER_PARAMETER_FIELDS[2:]:
        assert math.isnan(errors[name][1])


def test_underfit_leaves_cells_empty():
    true = _random(np.random.default_rng(3), 3)
    fitted = _random(np.random.default_rng(4), 1)
    errors = per_parameter_errors(fitted, true)
    np.testing.assert_array_equal(np.sort(errors["cell_size"]), [0, 0, 1])
    # In closed form: the one fitted atom's mass is aligned to the truth's total and its beta1 to the
    # truth's mass-weighted mean (the translation alignment), so it is a single-atom cell of the nearest
    # true atom j; the two empty cells cost their masses, cell j its mass difference and first powers.
    tbeta0 = np.asarray(true.beta0) - true.beta0[-1]
    tbeta1 = np.asarray(true.beta1) - true.beta1[-1]
    ta = np.asarray(true.a) - np.asarray(true.a)[:, -1:, :]
    tb = np.asarray(true.b) - np.asarray(true.b)[:, -1:]
    masses = np.exp(tbeta0)
    beta1 = masses @ tbeta1 / masses.sum()
    a = np.asarray(fitted.a)[0] - np.asarray(fitted.a)[0, -1:, :]
    b = np.asarray(fitted.b)[0] - fitted.b[0][-1]
    sq = [np.sum((beta1 - tbeta1[j]) ** 2) + np.sum((a - ta[j]) ** 2) + np.sum((b - tb[j]) ** 2) for j in range(3)]
    j = int(np.argmin(sq))
    assert errors["cell_size"][j] == 1
    first_powers = np.linalg.norm(beta1 - tbeta1[j]) + np.linalg.norm(a - ta[j]) + np.linalg.norm(b - tb[j])
    expected = masses.sum() - masses[j] + abs(masses.sum() - masses[j]) + masses.sum() * first_powers
    assert D2(fitted, true) == pytest.approx(expected, rel=1e-12)


# -- the formula's exponents ---------------------------------------------------------------------------
@pytest.mark.parametrize("r_beta, r_a, r_b", [(1, 1, 1), (2, 2, 2), (1, 2, 3), (4, 2, 4), (0.5, 1.5, 2.5)])
def test_exponents_act_on_split_cells_only(r_beta, r_a, r_b):
    fitted, true = _overfit(), _true()
    mass_term = 0.2 + 0.2
    split_cell = 1.0 * (0.2**r_beta + 0.1**r_a + 0.3**r_b) + 0.8 * (0.15**r_beta + 0.2**r_a + 0.1**r_b)
    single_cell = 1.2 * (0.1 + 0.05 + 0.2)  # always exponent 1
    expected = mass_term + split_cell + single_cell
    assert voronoi_loss(fitted, true, r_beta, r_a, r_b) == pytest.approx(expected, rel=1e-12)


def test_named_losses_are_the_general_loss():
    rng = np.random.default_rng(5)
    true = _random(rng, 2)
    fitted = _near_split(rng, true, 4)
    assert D1(fitted, true) == pytest.approx(voronoi_loss(fitted, true, 1, 1, 1), rel=1e-14)
    assert D2(fitted, true) == pytest.approx(voronoi_loss(fitted, true, 2, 2, 2), rel=1e-14)
    assert D2r(fitted, true, 2) == pytest.approx(D2(fitted, true), rel=1e-14)
    assert D2r(fitted, true, 3.5) == pytest.approx(voronoi_loss(fitted, true, 3.5, 3.5, 3.5), rel=1e-14)
    # Small errors in a split cell: a larger exponent gives a smaller loss.
    assert D1(fitted, true) > D2(fitted, true) > D2r(fitted, true, 4)


# -- translation alignment ------------------------------------------------------------------------------
def test_closed_form_alignment_value():
    # True masses (3, 1), total 4, mean beta1 (3 * 2 + 0) / 4 = 1.5. Fitted masses (1, 1), mean 0.5:
    # t0 = log 2 and t1 = 1.
    ab = {"a": [[[0.0], [0.0]]] * 2, "b": [[0.0, 0.0]] * 2}
    true = _params([3.0, 1.0], [[2.0], [0.0]], **ab)
    for beta0, beta1 in (([0.0, 0.0], [[1.0], [0.0]]), ([5.0, 5.0], [[4.0], [3.0]])):
        aligned = align_translation(MoEParams(beta0=beta0, beta1=beta1, **ab), true)
        np.testing.assert_allclose(aligned.beta0, [math.log(2), math.log(2)], rtol=1e-12)
        np.testing.assert_allclose(aligned.beta1, [[2.0], [1.0]], rtol=1e-12)


def test_closed_form_alignment_is_identity_when_moments_agree():
    aligned = align_translation(_overfit(), _true())
    np.testing.assert_allclose(aligned.beta0, _overfit().beta0, atol=1e-12)
    np.testing.assert_allclose(aligned.beta1, _overfit().beta1, atol=1e-12)


@pytest.mark.filterwarnings("ignore:exact translation alignment degenerated:RuntimeWarning")
@pytest.mark.parametrize("scale", [0.02, 0.4])
@pytest.mark.parametrize("seed", range(6))
def test_exact_alignment_never_worse(seed, scale):
    rng = np.random.default_rng(seed)
    true = _random(rng, 2)
    fitted = _near_split(rng, true, 3, scale=scale)
    for loss in ALL_LOSSES.values():
        assert loss(fitted, true, exact_translation=True) <= loss(fitted, true) + 1e-15


def test_exact_alignment_finds_known_infimum():
    # One atom on each side with expert error c = |da| + |db| = 2 > 1. Over the fitted mass M,
    # D1 = |M - 1| + 2 M (beta1 aligned exactly), minimal as M -> 0 with infimum 1, while the closed form
    # sets M = 1 and gives 2.
    true = _params([1.0], [[0.0]], [[[0.0], [0.0]]], [[0.0, 0.0]])
    fitted = _params([1.0], [[0.0]], [[[1.0], [0.0]]], [[1.0, 0.0]])
    assert D1(fitted, true) == pytest.approx(2.0, rel=1e-12)
    with pytest.warns(RuntimeWarning, match="degenerated"):
        assert D1(fitted, true, exact_translation=True) == pytest.approx(1.0, rel=1e-6)
    # With an expert error below the true mass the infimum is an honest alignment: no warning.
    close = _params([1.0], [[0.0]], [[[0.3], [0.0]]], [[0.2, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D1(close, true, exact_translation=True) <= D1(close, true)


def test_huge_intercepts_do_not_overflow():
    # A diverged fit: exp(800) overflows, but alignment works with logsumexp.
    true = _true()
    fitted = MoEParams(beta0=[800.0, 1.0, 0.0], beta1=_overfit().beta1, a=_overfit().a, b=_overfit().b)
    for loss in ALL_LOSSES.values():
        assert np.isfinite(loss(fitted, true))
        assert np.isfinite(loss(fitted, true, exact_translation=True))


# -- flat records -------------------------------------------------------------------------------------
def test_flat_records():
    record = flat(per_parameter_errors(_overfit(), _true()), prefix="err_")
    assert list(record)[:3] == ["err_cell_size_0", "err_mass_err_0", "err_beta1_max_0"]
    assert len(record) == 2 * len(PER_PARAMETER_FIELDS)
    assert all(type(v) is float for v in record.values())
    assert record["err_cell_size_0"] == 2.0
    assert record["err_b_max_1"] == pytest.approx(0.2)


# -- validation --------------------------------------------------------------------------------------
def _first_feature(X):
    return np.tanh(X[:, :1])


def test_mismatches_raise():
    rng = np.random.default_rng(6)
    true = _random(rng, 2, d=2, K=3)
    with pytest.raises(ValueError, match="n_features"):
        D1(_random(rng, 2, d=3, K=3), true)
    with pytest.raises(ValueError, match="n_classes"):
        D1(_random(rng, 2, d=2, K=4), true)
    with pytest.raises(ValueError, match="gating"):
        D1(_random(rng, 2, d=2, K=3, gating="tanh"), true)
    # Same callable gating and d, different d_gate.
    narrow = MoEParams(np.zeros(2), np.zeros((2, 1)), true.a, true.b, gating=_first_feature)
    wide = MoEParams(np.zeros(2), np.zeros((2, 2)), true.a, true.b, gating=_first_feature)
    with pytest.raises(ValueError, match="n_gate_features"):
        per_parameter_errors(narrow, wide)
    with pytest.raises(TypeError, match="MoEParams"):
        D2(true.to_dict(), true)
    with pytest.raises(ValueError, match="r_a"):
        voronoi_loss(true, true, r_beta=2, r_a=0, r_b=2)
    with pytest.raises(ValueError, match="r_beta"):
        D2r(true, true, float("nan"))


def test_overflowing_loss_is_reported_not_returned():
    # Squared distances of coefficients near 1e155 pass 1e308: NaN used to come back with numpy's
    # RuntimeWarnings only.
    true = _random(np.random.default_rng(5), 2)
    beta1 = np.array(true.beta1, dtype=float)
    beta1[0, 0] = 3e155
    fitted = MoEParams(true.beta0, beta1, true.a, true.b)
    for loss in (D1, D2):
        with pytest.raises(FloatingPointError, match="Voronoi loss overflows"):
            loss(fitted, true)
    assert D1(true, true) == 0.0
