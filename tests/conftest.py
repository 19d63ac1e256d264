"""Shared fixtures: seeded generators (printed, so a failure can be replayed) and random models."""

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the NumPy reference, reference_numpy.py

import fastmoe  # noqa: E402


@pytest.fixture
def rng(request):
    """A Generator seeded from the test name; the seed is printed for replay."""
    env = os.environ.get("FASTMOE_TEST_SEED")
    # Derived from the test id (stable across runs, unlike hash()), overridable for replay.
    seed = int(env) if env is not None else zlib.crc32(request.node.nodeid.encode())
    print(f"seed = {seed} (set FASTMOE_TEST_SEED={seed} to replay)")
    return np.random.default_rng(seed)


def random_params(rng, k, K, d, gating="identity", scale=1.0, d_gate=None):
    """Random parameters in reference conventions."""
    d_gate = d if d_gate is None else d_gate
    beta0 = rng.normal(scale=scale, size=k)
    beta1 = rng.normal(scale=scale, size=(k, d_gate))
    a = rng.normal(scale=scale, size=(k, K, d))
    b = rng.normal(scale=scale, size=(k, K))
    return fastmoe.MoEParams(beta0, beta1, a, b, gating).normalized()


def units_problem():
    """``(truth, X, y)``: two experts, d = 2, K = 3, n = 3000, a maximum that exists and that a default
    fit reaches; the data of the tests that change the inputs' units."""
    draw = np.random.default_rng(0)
    truth = fastmoe.MoEParams(beta0=[0.3, 0.0], beta1=[[2.0, -1.0], [0.0, 0.0]], a=draw.normal(0.0, 2.0, (2, 3, 2)),
                              b=draw.normal(0.0, 1.0, (2, 3))).normalized()
    X, y = fastmoe.sample(truth, n=3000, random_state=1)
    return truth, X, y


@pytest.fixture
def well_separated():
    """A well-conditioned truth (d=2, K=3, k=2) used for recovery tests."""
    return fastmoe.MoEParams(
        beta0=[0.5, 0.0],
        beta1=[[3.0, -2.0], [0.0, 0.0]],
        a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
        b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]],
    )
