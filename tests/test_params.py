"""The parameter object: conventions, (de)serialisation, and the model's invariances."""

import re

import numpy as np
import pytest
from conftest import random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmoe
from fastmoe import MoEParams


def test_round_trip_dict_and_file(tmp_path, rng):
    params = random_params(rng, 3, 4, 2, "tanh")
    again = MoEParams.from_dict(params.to_dict())
    assert again.allclose(params, rtol=0, atol=0) and again.gating == "tanh"
    params.save(tmp_path / "p.json")
    assert MoEParams.load(tmp_path / "p.json").allclose(params, rtol=0, atol=0)
    with pytest.raises(ValueError, match="lacks"):
        MoEParams.from_dict({"beta0": [0.0]})


def test_callable_gating_cannot_be_serialised(rng):
    params = random_params(rng, 2, 3, 2, np.cbrt)
    assert params.gating_name == "cbrt"
    with pytest.raises(ValueError, match="callable gating"):
        params.to_dict()


def test_transforms_are_told_apart_by_identity_not_by_name():
    """Found by a QA pass: gatings were compared by ``__name__``, so a user's function called ``sigmoid``
    (here Z**2) was the built-in sigmoid to ``allclose``, ``losses.D1`` (0 between different models) and
    ``fit(init=..., gating=...)`` (which dropped the given transform), and any two lambdas were one."""

    def sigmoid(Z):
        return Z**2

    coefficients = dict(beta0=[0.3, 0.0], beta1=[[2.0], [0.0]], a=[[[1.0], [0.0]], [[-1.0], [0.0]]],
                        b=[[0.0, 0.0], [0.0, 0.0]])
    builtin, user = MoEParams(**coefficients, gating="sigmoid"), MoEParams(**coefficients, gating=sigmoid)
    assert user.gating_name == "sigmoid"  # the name still reads as given, in messages and summaries
    assert not np.allclose(fastmoe.gate_proba(builtin, [[0.9]]), fastmoe.gate_proba(user, [[0.9]]))  # two models
    assert not builtin.allclose(user) and user.allclose(MoEParams(**coefficients, gating=sigmoid))
    with pytest.raises(ValueError, match="not comparable"):
        fastmoe.losses.D1(user, builtin)
    X, y = fastmoe.sample(builtin, 300, random_state=0)
    with pytest.raises(ValueError, match="another transform"):
        fastmoe.fit(X, y, 2, init=builtin, gating=sigmoid, n_threads=1)
    first, second = (MoEParams(**coefficients, gating=f) for f in (lambda Z: Z**3, lambda Z: np.exp(Z)))
    assert not first.allclose(second)
    # A built-in given as its function is that built-in: it compares, and saves, by name.
    as_function = MoEParams(**coefficients, gating=np.tanh)
    assert as_function.gating == "tanh" and as_function.allclose(MoEParams(**coefficients, gating="tanh"))
    assert MoEParams.from_dict(as_function.to_dict()).gating == "tanh"


def test_arrays_are_read_only_copies(rng):
    beta0 = np.zeros(2)
    params = MoEParams(beta0, np.zeros((2, 2)), np.zeros((2, 3, 2)), np.zeros((2, 3)))
    beta0[0] = 5.0
    assert params.beta0[0] == 0.0
    with pytest.raises(ValueError):
        params.beta0[0] = 1.0


def test_shapes_and_repr(rng):
    params = random_params(rng, 3, 4, 5)
    assert (params.n_experts, params.n_classes, params.n_features, params.n_gate_features) == (3, 4, 5, 5)
    assert params.n_free_params == 2 * 6 + 3 * 3 * 6
    W, V = params.packed()
    assert W.shape == (3, 6) and V.shape == (3, 4, 6)
    assert MoEParams.from_packed(W, V).allclose(params, rtol=0, atol=0)
    text = repr(params)
    assert "n_experts=3" in text and "gating='identity'" in text


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    gate_shift=st.floats(-5, 5),
    class_shift=st.floats(-5, 5),
    gating=st.sampled_from(["identity", "tanh", "sigmoid"]),
)
def test_shift_invariance(seed, gate_shift, class_shift, gating):
    """A common shift of all experts' gating, or of one expert's classes, changes nothing."""
    rng = np.random.default_rng(seed)
    params = random_params(rng, 3, 3, 2, gating)
    X = rng.uniform(-1, 1, size=(50, 2))
    y = rng.integers(0, 3, size=50)
    shifted = MoEParams(
        params.beta0 + gate_shift,
        params.beta1 + gate_shift,
        params.a + class_shift * np.array([1.0, 0.0, 0.0])[:, None, None],
        params.b + class_shift * np.array([1.0, 0.0, 0.0])[:, None],
        gating,
    )
    assert fastmoe.loglik(shifted, X, y) == pytest.approx(fastmoe.loglik(params, X, y), rel=1e-10, abs=1e-10)
    assert shifted.normalized().allclose(params, rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.1, 10))
def test_expert_permutation_and_weight_scaling(seed, scale):
    rng = np.random.default_rng(seed)
    params = random_params(rng, 4, 3, 2)
    X = rng.uniform(-1, 1, size=(60, 2))
    y = rng.integers(0, 3, size=60)
    order = rng.permutation(4)
    permuted = MoEParams(params.beta0[order], params.beta1[order], params.a[order], params.b[order])
    base = fastmoe.loglik(params, X, y)
    assert fastmoe.loglik(permuted, X, y) == pytest.approx(base, rel=1e-12)
    np.testing.assert_allclose(fastmoe.responsibilities(permuted, X, y), fastmoe.responsibilities(params, X, y)[:, order],
                               rtol=1e-10, atol=1e-14)
    w = rng.uniform(0.1, 2, size=60)
    assert fastmoe.loglik(params, X, y, sample_weight=scale * w) == pytest.approx(
        scale * fastmoe.loglik(params, X, y, sample_weight=w), rel=1e-12
    )


def _arrays(**changes):
    data = dict(beta0=[0.5, 0.0], beta1=[[1.0], [0.0]], a=[[[1.0], [0.0]], [[-1.0], [0.0]]], b=[[0.2, 0.0], [0.1, 0.0]])
    return {**data, **changes}


@pytest.mark.parametrize(
    "data, message",
    [
        (_arrays(gatting="tanh"), r"unknown keys \['gatting'\]"),
        (_arrays(gating="tanh", c=[1.0]), r"unknown keys \['c'\]"),
        (_arrays(gating=None), "gating: null"),
    ],
)
def test_from_dict_refuses_unknown_keys_and_null_gating(data, message):
    with pytest.raises(ValueError, match=message):
        fastmoe.MoEParams.from_dict(data)


def test_from_dict_defaults_and_overrides_gating():
    assert fastmoe.MoEParams.from_dict(_arrays()).gating == "identity"
    assert fastmoe.MoEParams.from_dict(_arrays(gating="tanh")).gating == "tanh"
    assert fastmoe.MoEParams.from_dict(_arrays(gating="tanh"), gating="sigmoid").gating == "sigmoid"


@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("beta0", ["0.5", 0.0], "'0.5'"),
        ("beta0", [True, False], "True"),
        ("beta0", np.array([True, False]), "True"),
        ("b", [[0.2, "0"], [0.1, 0.0]], "'0'"),
        ("a", [[[1.0], [0.0]], [[False], [0.0]]], "False"),
        ("beta0", np.array([0.5, "x"], dtype=object), "'x'"),
        ("beta0", np.array([0.5 + 1j, 0.0]), "1j"),
    ],
)
def test_parameter_arrays_refuse_strings_booleans_and_complex(field, value, shown):
    """NumPy would read "0.5" and True as 0.5 and 1.0 without a word."""
    with pytest.raises(TypeError, match=f"{field} must hold real numbers, got .*{re.escape(shown)}"):
        fastmoe.MoEParams(**_arrays(**{field: value}))


def test_parameter_arrays_accept_numpy_scalars_and_integers():
    params = fastmoe.MoEParams(**_arrays(beta0=[np.float32(0.5), np.int64(0)], b=np.array([[1, 0], [2, 0]])))
    np.testing.assert_array_equal(params.beta0, [0.5, 0.0])
    assert params.b.dtype == np.float64


@pytest.mark.parametrize("expert", [1.0, 5, -1, True, "0"])
def test_split_expert_names_a_bad_expert(rng, expert):
    params = random_params(rng, 2, 3, 2)
    with pytest.raises(ValueError, match=r"expert must be an integer in 0\.\.1, got"):
        params.split_expert(expert)
    assert params.split_expert(np.int64(1)).n_experts == 3
