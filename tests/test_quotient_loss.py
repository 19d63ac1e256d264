"""Tests of the quotient loss ``D2q`` and the pooled-intercept error ``bpool`` (issue 14, objection 5).

``D2q`` is ``D2`` with the intercepts of a split vanishing cell's atoms (not identifiable: ``MODEL.md``
section 4, "Known trap") replaced by the intercepts of the cell's mass-weighted pooled class probabilities.
The oracle below recomputes it from the formula in plain NumPy loops, with its own conventions, alignment
and cells, and without calling :mod:`fastmoe.losses`.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmoe
from fastmoe.losses import D2, D2q, per_parameter_errors, voronoi_loss
from fastmoe.params import MoEParams


# -- the oracle ------------------------------------------------------------------------------------------
def _reference_d2q(fitted, true, r=2.0):
    """``D2q`` from its definition, term by term (closed-form translation alignment)."""

    def normalised(p):
        beta0, beta1 = np.asarray(p.beta0, float), np.asarray(p.beta1, float)
        a, b = np.asarray(p.a, float), np.asarray(p.b, float)
        return beta0 - beta0[-1], beta1 - beta1[-1], a - a[:, -1:, :], b - b[:, -1:]

    beta0, beta1, a, b = normalised(fitted)
    tbeta0, tbeta1, ta, tb = normalised(true)
    # Alignment: total masses and mass-weighted means of beta1 agree.
    mass_f, mass_t = np.exp(beta0), np.exp(tbeta0)
    mass = mass_f * mass_t.sum() / mass_f.sum()
    beta1 = beta1 + (mass_t @ tbeta1 / mass_t.sum() - mass_f @ beta1 / mass_f.sum())
    k, k_true = len(beta0), len(tbeta0)

    def sq(i, j):
        return (np.sum((beta1[i] - tbeta1[j]) ** 2) + np.sum((a[i] - ta[j]) ** 2)
                + np.sum((b[i] - tb[j]) ** 2))

    cell = []
    for i in range(k):
        best = 0
        for j in range(1, k_true):
            if sq(i, j) < sq(i, best):
                best = j
        cell.append(best)
    loss = 0.0
    for j in range(k_true):
        members = [i for i in range(k) if cell[i] == j]
        loss += abs(sum(mass[i] for i in members) - mass_t[j])
        vanishing = not np.any(ta[j])
        for i in members:
            errs = (np.linalg.norm(beta1[i] - tbeta1[j]), np.linalg.norm(a[i] - ta[j]),
                    np.linalg.norm(b[i] - tb[j]))
            if len(members) == 1:
                loss += mass[i] * sum(errs)
            elif vanishing:
                loss += mass[i] * (errs[0] ** r + errs[1] ** r)
            else:
                loss += mass[i] * (errs[0] ** r + errs[1] ** r + errs[2] ** r)
        if vanishing and len(members) > 1:
            cell_mass = sum(mass[i] for i in members)
            pooled = sum(mass[i] * np.exp(b[i]) / np.exp(b[i]).sum() for i in members) / cell_mass
            loss += cell_mass * np.linalg.norm(np.log(pooled) - np.log(pooled[-1]) - tb[j])
    return loss


# -- models ----------------------------------------------------------------------------------------------
def _softmax(v):
    e = np.exp(v - np.max(v))
    return e / e.sum()


def _intercepts(probs):
    """Reference-convention intercepts (last class 0) of class probabilities."""
    probs = np.asarray(probs, float)
    return np.log(probs) - np.log(probs[-1])


def _random_truth(rng, k=2, d=2, K=3, vanishing=(1,), gating="identity"):
    a = rng.normal(size=(k, K, d))
    a[:, -1] = 0.0
    for j in vanishing:
        a[j] = 0.0
    b = rng.normal(size=(k, K))
    b[:, -1] = 0.0
    # Gating slopes of scale 2 keep the true atoms apart, so the split atoms fall in the intended cells.
    beta1 = 2.0 * rng.normal(size=(k, d))
    beta1[-1] = 0.0
    return MoEParams(beta0=np.r_[rng.normal(scale=0.3, size=k - 1), 0.0], beta1=beta1, a=a, b=b, gating=gating)


def _near_split(rng, true, owner, scale=0.1, b_scale=0.4):
    """Fitted atoms near the true atoms ``owner`` (repeats split a cell); intercepts spread by ``b_scale``."""
    owner = np.asarray(owner)
    counts = np.bincount(owner, minlength=true.n_experts)
    k = len(owner)
    return MoEParams(
        beta0=true.beta0[owner] - np.log(counts[owner]) + scale * rng.normal(size=k),
        beta1=true.beta1[owner] + scale * rng.normal(size=(k, true.n_gate_features)),
        a=true.a[owner] + scale * rng.normal(size=(k,) + true.a.shape[1:]),
        b=true.b[owner] + b_scale * rng.normal(size=(k, true.n_classes)),
        gating=true.gating,
    )


def _truth_equivalent_split(gating="identity", masses=(0.3, 0.7), spread=0.3):
    """A truth with a vanishing atom 1 and a fitted measure that reproduces its law exactly with the
    vanishing cell split into two constant experts of unequal masses whose intercepts differ.

    Atom 1's class probabilities ``p*`` are rebuilt as ``w1 p1 + w2 p2`` with ``p1 = p* + spread * w2 / w1
    (e - p*)`` and ``p2 = p* - spread (e - p*)``: unequal masses, so an unweighted pooling would be off.
    """
    true = MoEParams(
        beta0=[-0.4, 0.0],
        beta1=[[1.5, -1.0], [0.0, 0.0]],
        a=[[[1.0, 0.5], [-0.5, 1.2], [0.0, 0.0]], np.zeros((3, 2))],
        b=[[0.8, -0.6, 0.0], [0.4, 1.1, 0.0]],
        gating=gating,
    )
    w1, w2 = masses
    p_star = _softmax(true.b[1])
    e = np.eye(3)[np.argmax(p_star)]
    p1 = p_star + spread * w2 / w1 * (e - p_star)
    p2 = p_star - spread * (e - p_star)
    assert (p1 > 0).all() and (p2 > 0).all()
    np.testing.assert_allclose(w1 * p1 + w2 * p2, p_star, atol=1e-15)  # the pooled probabilities are p*
    fitted = MoEParams(
        beta0=[-0.4, np.log(w1), np.log(w2)],
        beta1=[[1.5, -1.0], [0.0, 0.0], [0.0, 0.0]],
        a=[true.a[0], np.zeros((3, 2)), np.zeros((3, 2))],
        b=[true.b[0], _intercepts(p1), _intercepts(p2)],
        gating=gating,
    )
    return fitted, true


# -- the point of the metric ----------------------------------------------------------------------------
@pytest.mark.parametrize("gating", ["identity", "tanh", "sigmoid"])
def test_pooled_term_is_zero_where_only_the_split_intercepts_differ(gating):
    fitted, true = _truth_equivalent_split(gating)
    # The construction is on the non-identifiable set: the two measures give the same law.
    X = np.random.default_rng(0).uniform(-3, 3, size=(200, 2))
    np.testing.assert_allclose(fastmoe.predict_proba(fitted, X), fastmoe.predict_proba(true, X), atol=1e-12)
    errors = per_parameter_errors(fitted, true)
    np.testing.assert_array_equal(errors["cell_size"], [1, 2])
    assert errors["b_max"][1] > 0.1  # D2's b term sees the spread intercepts ...
    assert D2(fitted, true) > 0.01
    assert errors["bpool"][1] == pytest.approx(0.0, abs=1e-12)  # ... the pooled one does not
    assert D2q(fitted, true) == pytest.approx(0.0, abs=1e-12)
    assert D2q(fitted, true, r=3.0) == pytest.approx(0.0, abs=1e-12)
    assert _reference_d2q(fitted, true) == pytest.approx(0.0, abs=1e-12)


def test_pooled_probabilities_are_mass_weighted():
    # Equal masses with the unequal-mass intercepts of the construction: the pooled probabilities move
    # off p*, so the pooled term is no longer 0 (an unweighted pooling would give 0 in the test above).
    fitted, true = _truth_equivalent_split(masses=(0.3, 0.7))
    equal = MoEParams(beta0=[fitted.beta0[0], math.log(0.5), math.log(0.5)], beta1=fitted.beta1, a=fitted.a,
                      b=fitted.b)
    assert per_parameter_errors(equal, true)["bpool"][1] > 0.01
    assert D2q(equal, true) == pytest.approx(_reference_d2q(equal, true), rel=1e-12)


def test_hand_computed_value():
    # d = 1, K = 2. True atom 0 (mass 2) is matched exactly; true atom 1 (mass 1, a* = 0, p* = (1/2, 1/2))
    # is split into masses 1/4 and 3/4 with class probabilities (3/4, 1/4) and (1/2, 1/2): pooled
    # (9/16, 7/16), intercept log(9/7). The first split atom has an a error of 0.1. Total masses (3) and
    # mass-weighted beta1 (2/3) agree, so the closed-form alignment changes nothing.
    true = MoEParams(beta0=[math.log(2.0), 0.0], beta1=[[1.0], [0.0]], a=[[[1.0], [0.0]], [[0.0], [0.0]]],
                     b=[[0.5, 0.0], [0.0, 0.0]])
    fitted = MoEParams(beta0=[math.log(2.0), math.log(0.25), math.log(0.75)], beta1=[[1.0], [0.0], [0.0]],
                       a=[[[1.0], [0.0]], [[0.1], [0.0]], [[0.0], [0.0]]],
                       b=[[0.5, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])
    pooled = math.log(9 / 7)
    assert D2q(fitted, true) == pytest.approx(0.25 * 0.1**2 + 1.0 * pooled, rel=1e-12)
    assert D2q(fitted, true, r=3.0) == pytest.approx(0.25 * 0.1**3 + 1.0 * pooled, rel=1e-12)
    assert D2(fitted, true) == pytest.approx(0.25 * (0.1**2 + math.log(3.0) ** 2), rel=1e-12)
    errors = per_parameter_errors(fitted, true)
    assert errors["bpool"][1] == pytest.approx(pooled, rel=1e-12)
    assert math.isnan(errors["bpool"][0])  # true atom 0 does not vanish
    assert errors["b_max"][1] == pytest.approx(math.log(3.0), rel=1e-12)


# -- against the oracle ---------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [2.0, 3.0, 1.5])
@pytest.mark.parametrize("seed", range(8))
def test_matches_numpy_reference(seed, r):
    rng = np.random.default_rng(seed)
    gating = ("identity", "tanh", "sigmoid")[seed % 3]
    true = _random_truth(rng, k=3, vanishing=(seed % 3,), gating=gating)
    # The vanishing cell split in two or three, plus one more split cell on some seeds.
    v = seed % 3
    owner = [0, 1, 2, v] + [v] * (seed % 2) + [(v + 1) % 3] * (seed % 4 == 0)
    fitted = _near_split(rng, true, owner)
    got = D2q(fitted, true, r=r)
    assert got == pytest.approx(_reference_d2q(fitted, true, r), rel=1e-12)
    if per_parameter_errors(fitted, true)["cell_size"][v] > 1:  # the quotient acted
        assert got != pytest.approx(D2(fitted, true, r=r), rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_equals_d2_when_no_true_expert_vanishes(seed):
    rng = np.random.default_rng(100 + seed)
    true = _random_truth(rng, k=3, vanishing=())
    fitted = _near_split(rng, true, [0, 1, 2, 0, 1])
    for r in (2.0, 4.0):
        assert D2q(fitted, true, r=r) == D2(fitted, true, r=r)
        assert D2q(fitted, true, r=r) == pytest.approx(_reference_d2q(fitted, true, r), rel=1e-12)
    assert np.isnan(per_parameter_errors(fitted, true)["bpool"]).all()
    # Exact alignment minimises the same objective. (Close to the truth: far from it the infimum over
    # translations degenerates, see align_translation.)
    close = _near_split(rng, true, [0, 1, 2, 0, 1], scale=0.02, b_scale=0.02)
    assert D2q(close, true, exact_translation=True) == D2(close, true, exact_translation=True)


def test_equals_d2_when_the_vanishing_cell_is_not_split():
    rng = np.random.default_rng(7)
    true = _random_truth(rng, k=3, vanishing=(1,))
    fitted = _near_split(rng, true, [0, 1, 2, 0])  # cell 0 split, vanishing cell 1 single
    assert D2q(fitted, true) == D2(fitted, true)
    errors = per_parameter_errors(fitted, true)
    # One atom in the cell: the pooled intercepts are its own.
    assert errors["bpool"][1] == pytest.approx(errors["b_max"][1], rel=1e-12)


def test_vanishing_is_an_exact_zero_test():
    # A true expert with a tiny but nonzero slope is identifiable (a local alternative off the degenerate
    # point), so D2's terms apply to it.
    fitted, true = _truth_equivalent_split()
    a = true.a.copy()
    a[1, 0, 0] = 1e-12  # one class: a shift of every class would be the same expert
    almost = MoEParams(beta0=true.beta0, beta1=true.beta1, a=a, b=true.b)
    assert D2q(fitted, almost) == pytest.approx(D2(fitted, almost), rel=1e-12)
    assert D2q(fitted, almost) > 0.01
    assert math.isnan(per_parameter_errors(fitted, almost)["bpool"][1])


# -- invariances ----------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_invariant_to_permuting_fitted_atoms(seed):
    rng = np.random.default_rng(seed)
    true = _random_truth(rng, k=2, vanishing=(int(rng.integers(2)),))
    fitted = _near_split(rng, true, [0, 1, 0, 1], scale=0.2)
    perm = rng.permutation(4)
    permuted = MoEParams(fitted.beta0[perm], fitted.beta1[perm], fitted.a[perm], fitted.b[perm])
    assert D2q(permuted, true) == pytest.approx(D2q(fitted, true), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(per_parameter_errors(permuted, true)["bpool"],
                               per_parameter_errors(fitted, true)["bpool"], rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_invariant_to_gating_translation_and_class_shifts(seed):
    # A common shift of every expert's gating parameters (the translation align_translation quotients
    # out) and per-expert shifts of all classes leave the model, hence D2q and bpool, unchanged.
    rng = np.random.default_rng(seed)
    true = _random_truth(rng, k=2, vanishing=(int(rng.integers(2)),))
    fitted = _near_split(rng, true, [0, 1, 0, 1], scale=0.2)
    shifted = MoEParams(
        beta0=fitted.beta0 + rng.normal(scale=3.0),
        beta1=fitted.beta1 + rng.normal(scale=3.0, size=2),
        a=fitted.a + rng.normal(scale=3.0, size=(4, 1, 2)),
        b=fitted.b + rng.normal(scale=3.0, size=(4, 1)),
    )
    assert D2q(shifted, true) == pytest.approx(D2q(fitted, true), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(per_parameter_errors(shifted, true)["bpool"],
                               per_parameter_errors(fitted, true)["bpool"], rtol=1e-9, atol=1e-12)


def test_zero_at_truth_and_on_the_non_identifiable_set_after_a_translation():
    fitted, true = _truth_equivalent_split("tanh")
    moved = MoEParams(beta0=fitted.beta0 + 2.0, beta1=fitted.beta1 - 0.7, a=fitted.a, b=fitted.b,
                      gating="tanh")
    for exact in (False, True):
        assert D2q(true, true, exact_translation=exact) == pytest.approx(0.0, abs=1e-12)
        assert D2q(moved, true, exact_translation=exact) == pytest.approx(0.0, abs=1e-12)


# -- exact alignment, extremes --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_exact_alignment_minimises_d2q_itself(seed):
    rng = np.random.default_rng(200 + seed)
    true = _random_truth(rng, k=2, vanishing=(1,))
    fitted = _near_split(rng, true, [0, 1, 1], scale=0.05, b_scale=0.1)
    exact = D2q(fitted, true, exact_translation=True)
    assert exact <= D2q(fitted, true) + 1e-15
    assert exact == pytest.approx(voronoi_loss(fitted, true, 2, 2, 2, exact_translation=True, quotient=True),
                                  rel=1e-12)


def test_exact_alignment_infimum_differs_from_d2s():
    # On the non-identifiable set with the cell masses off by factors 0.98 (cell 0, true mass 1.1) and
    # 1.02 (the split vanishing cell 1, true mass 1): every error but the masses' is 0 at the right
    # translation, so D2q's infimum over (t0, t1) is the smaller of the two kinks of the mass term,
    # s = 1.1 / W0 or 1 / W1 (s = exp(t0)). D2 also pays for the split atoms' b, which pushes its
    # optimum to the other kink: an alignment that minimised D2 would give D2q the larger value.
    fitted, true = _truth_equivalent_split()
    true = MoEParams(beta0=[math.log(1.1), 0.0], beta1=true.beta1, a=true.a, b=true.b)
    fitted = MoEParams(beta0=np.r_[math.log(1.1 * 0.98), fitted.beta0[1:] + math.log(1.02)],
                       beta1=fitted.beta1, a=fitted.a, b=fitted.b)
    w0, w1 = 1.1 * 0.98, 1.02
    kinks = (abs(1.1 / w0 * w1 - 1.0), abs(1.0 / w1 * w0 - 1.1))
    assert kinks[0] < kinks[1]
    assert D2q(fitted, true, exact_translation=True) == pytest.approx(kinks[0], rel=1e-8)


def test_huge_intercepts_do_not_overflow():
    # A diverged fit: a split atom's class intercept at 800 (exp overflows) and a huge gating intercept;
    # the pooling works in log space.
    fitted, true = _truth_equivalent_split()
    b = fitted.b.copy()
    b[1, 1] = 800.0  # class 1, whose true intercept is larger in cell 1 than in cell 0: it stays in cell 1
    for beta0 in ([900.0, 1.0, 0.0], [60.0, 1.0, 0.0]):
        diverged = MoEParams(beta0=beta0, beta1=fitted.beta1, a=fitted.a, b=b)
        with np.errstate(over="raise", invalid="raise"):
            assert np.isfinite(D2q(diverged, true))
    np.testing.assert_array_equal(per_parameter_errors(diverged, true)["cell_size"], [1, 2])
    # The diverged atom (mass ratio e : 1 to the other) predicts class 1 with probability 1.
    pooled = (math.e * _softmax(b[1]) + _softmax(b[2])) / (math.e + 1.0)
    expected = np.linalg.norm(_intercepts(pooled) - true.b[1])
    assert per_parameter_errors(diverged, true)["bpool"][1] == pytest.approx(expected, rel=1e-12)
