"""The box-constrained fit (``fit(bounds=...)``, issue 14): KKT conditions checked by an independent
computation, the unconstrained maximum inside a loose box, separable data, a brute-force optimiser, thread
invariance, the report and the API's checks."""

import itertools
import warnings

import numpy as np
import pytest

import fastmoe
import reference_numpy as ref
from fastmoe import Bounds

TRUTH = fastmoe.MoEParams(
    beta0=[0.5, 0.0],
    beta1=[[3.0, -2.0], [0.0, 0.0]],
    a=[[[2.0, -1.0], [0.5, 1.5], [0.0, 0.0]], [[-1.5, 0.5], [1.0, -2.0], [0.0, 0.0]]],
    b=[[0.3, -0.2, 0.0], [-0.4, 0.6, 0.0]],
)


def _data(rng, n=600, truth=TRUTH):
    X = rng.uniform(-1.0, 1.0, size=(n, truth.n_features))
    return fastmoe.sample(truth, X=X, random_state=rng)


def _limits(bounds, params):
    """The box's limit per free parameter (reference order), built here from the group names."""
    box = Bounds.coerce(bounds)
    limits = []
    for name in fastmoe.free_parameter_names(params):
        group = {"beta0": "gate_intercept", "beta1": "gate_slope", "b": "expert_intercept", "a": "expert_slope"}
        limits.append(getattr(box, group[name.split("[")[0]]))
    return np.array(limits)


def _fd_gradient(params, X, y, h=1e-5):
    """Central differences of the NumPy reference log-likelihood along every free parameter."""
    W, V = params.packed()
    theta = ref.pack_free(W, V)
    grad = np.empty_like(theta)
    for j in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        grad[j] = (ref.loglik(*ref.unpack_free(up, W, V), X, X, y) - ref.loglik(*ref.unpack_free(down, W, V), X, X, y)) / (2 * h)
    return grad


@pytest.mark.parametrize("bounds, newton", [(1.0, True), (2.5, True), ({"expert_slope": 1.2, "gate_slope": 2.0}, True),
                                            (1.0, False)])
def test_kkt_conditions_hold_at_the_returned_point(rng, bounds, newton):
    # newton=False: the projected M-steps alone (EM's Aitken rule stops them).
    X, y = _data(rng)
    result = fastmoe.fit(X, y, 2, bounds=bounds, tol=1e-12, newton=newton, max_iter=3000, random_state=0)
    assert result.converged and not result.diverged, result.message
    theta = result.params.free_vector()
    limit = _limits(bounds, result.params)
    assert np.all(np.abs(theta) <= limit)
    upper, lower = theta >= limit, theta <= -limit
    interior = ~(upper | lower)
    assert upper.any() or lower.any(), "the box must bind for this test to mean anything"
    assert interior.any()
    names = np.array(fastmoe.free_parameter_names(result.params))
    assert set(result.active_bounds) == set(names[~interior])
    W, V = result.params.packed()
    grad, _ = ref.full_loglik_grad_hess(W, V, X, X, y)
    np.testing.assert_allclose(grad, _fd_gradient(result.params, X, y), rtol=1e-4, atol=1e-4)
    # Stationary in the free coordinates; at a bound the ascent direction points out of the box.
    scale = np.abs(grad).max()
    assert np.abs(grad[interior]).max() <= 1e-6 * max(scale, 1.0)
    assert np.all(grad[upper] >= -1e-6)
    assert np.all(grad[lower] <= 1e-6)


def test_the_history_never_decreases_in_a_box(rng):
    X, y = _data(rng)
    result = fastmoe.fit(X, y, 2, bounds=1.0, init="kmeans", newton=False, tol=1e-10, random_state=1)
    history = result.history
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))


def test_a_loose_box_gives_the_unconstrained_maximum(rng):
    # Only where the maximum exists: at n = 600 and 2000 some starts of the default search climb past the
    # best finite maximum along a separating direction (the search warns: no MLE), and a box holds them.
    X, y = _data(rng, n=5000)
    free = fastmoe.fit(X, y, 2, tol=1e-12, random_state=0)
    limit = 2.0 * np.abs(free.params.free_vector()).max() + 1.0
    boxed = fastmoe.fit(X, y, 2, bounds=limit, tol=1e-12, random_state=0)
    assert boxed.active_bounds == () and "bound" not in boxed.message
    assert boxed.objective == pytest.approx(free.objective, rel=1e-10)
    # The same maximum, whatever the order of the experts: gating probabilities and experts agree under
    # one relabelling.
    gate_boxed, gate_free = fastmoe.gate_proba(boxed.params, X), fastmoe.gate_proba(free.params, X)
    assert any(np.allclose(gate_boxed[:, perm], gate_free, atol=1e-6)
               and np.allclose(boxed.params.a[perm], free.params.a, rtol=1e-5, atol=1e-6)
               and np.allclose(boxed.params.b[perm], free.params.b, rtol=1e-5, atol=1e-6)
               for perm in map(list, itertools.permutations(range(2))))


def test_separable_data_converge_at_the_bound_instead_of_diverging(rng):
    X = rng.standard_normal((400, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(int)  # linearly separable: the MLE does not exist
    with pytest.warns(fastmoe.ConvergenceWarning, match="diverged"):
        unbounded = fastmoe.fit(X, y, 2, random_state=0)
    assert unbounded.diverged
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastmoe.ConvergenceWarning)
        result = fastmoe.fit(X, y, 2, bounds=5.0, random_state=0)
    assert result.converged and not result.diverged
    assert result.active_bounds and "at a bound" in result.message
    assert np.abs(result.params.free_vector()).max() == pytest.approx(5.0)
    # One class never occurring sends intercepts to -inf unless they are bounded too.
    y_one_missing = np.where(y == 1, 2, y)
    result = fastmoe.fit(X, y_one_missing, 2, n_classes=3, bounds=5.0, random_state=0)
    assert result.converged and not result.diverged
    # With the slopes boxed only, the intercepts run off; the advice is a box on them, not the one given.
    for k, slopes in ((1, {"expert_slope": 5.0}), (2, {"expert_slope": 5.0, "gate_slope": 5.0})):
        with pytest.warns(fastmoe.ConvergenceWarning, match="the maximum in this box does not exist; bound the "
                                                            "intercepts too"):
            result = fastmoe.fit(X, y_one_missing, k, n_classes=3, bounds=slopes, random_state=0)
        assert result.diverged and "a box on every slope" not in result.message


@pytest.mark.parametrize("bounds", [{"expert_slope": 2.0}, {"gate_slope": 2.0}])
def test_a_box_on_some_slopes_leaves_the_others_gauged(rng, bounds):
    X = rng.standard_normal((400, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(int)
    with pytest.warns(fastmoe.ConvergenceWarning, match="bounds="):
        result = fastmoe.fit(X, y, 2, bounds=bounds, random_state=0)
    assert result.diverged and not result.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastmoe.ConvergenceWarning)
        both = fastmoe.fit(X, y, 2, bounds={"gate_slope": 2.0, "expert_slope": 2.0}, random_state=0)
    assert both.converged and not both.diverged and both.active_bounds


def test_same_or_better_than_bounded_lbfgs_from_the_same_start(rng):
    optimize = pytest.importorskip("scipy.optimize")
    truth = fastmoe.MoEParams(beta0=[0.3, 0.0], beta1=[[4.0], [0.0]], a=[[[3.0], [0.0]], [[-2.5], [0.0]]],
                              b=[[0.5, 0.0], [-0.2, 0.0]])
    X, y = _data(rng, n=300, truth=truth)
    start = truth.normalized()
    limit = 1.5
    W0, V0 = start.packed()

    def negative(theta):
        W, V = ref.unpack_free(theta, W0, V0)
        g, _ = ref.full_loglik_grad_hess(W, V, X, X, y)
        return -ref.loglik(W, V, X, X, y), -g

    theta0 = np.clip(ref.pack_free(W0, V0), -limit, limit)
    best = optimize.minimize(negative, theta0, jac=True, method="L-BFGS-B", bounds=[(-limit, limit)] * theta0.size,
                             options=dict(maxiter=5000, ftol=1e-15, gtol=1e-10))
    result = fastmoe.fit(X, y, 2, init=start, bounds=limit, tol=1e-12)
    assert result.converged and result.active_bounds
    assert result.loglik >= -best.fun - 1e-7 * abs(best.fun)
    np.testing.assert_allclose(result.params.free_vector(), best.x, atol=1e-3)


@pytest.mark.parametrize("init", ["search", "given"])
def test_thread_count_does_not_change_a_bounded_fit(rng, init):
    X, y = _data(rng, n=1003)
    start = TRUTH if init == "given" else "search"
    fits = [fastmoe.fit(X, y, 2, init=start, bounds=1.0, random_state=3, n_threads=t) for t in (1, 2, 3)]
    for other in fits[1:]:
        assert other.params.allclose(fits[0].params, rtol=0, atol=0)
        assert other.active_bounds == fits[0].active_bounds
        assert other.objective == fits[0].objective


def test_group_bounds_hold_only_their_group(rng):
    X, y = _data(rng, n=5000)  # at n = 600 the free gating can climb along a separating direction
    result = fastmoe.fit(X, y, 2, bounds=Bounds(expert_slope=0.5), random_state=0)
    p = result.params.normalized()
    assert np.abs(p.a).max() == pytest.approx(0.5)
    assert all(name.startswith("a[") for name in result.active_bounds)
    assert np.abs(p.beta1).max() > 0.5  # the gating is free


def test_a_start_outside_the_box_is_projected_into_it(rng):
    X, y = _data(rng)
    with pytest.warns(fastmoe.ConvergenceWarning, match="max_iter=0"):
        result = fastmoe.fit(X, y, 2, init=TRUTH, bounds=0.25, max_iter=0)
    assert np.abs(result.params.free_vector()).max() <= 0.25


@pytest.mark.parametrize(
    "bounds, error, match",
    [
        (0.0, ValueError, "positive"),
        (-1.0, ValueError, "positive"),
        (float("nan"), ValueError, r"^bounds must be a positive number .* got nan"),  # named as given, not as a group
        (np.array(-1.0), ValueError, "bounds must be a positive number"),
        (True, TypeError, "bounds must be"),
        ("5", TypeError, "bounds must be"),
        ({"slopes": 1.0}, ValueError, "unknown keys"),
        ({"expert_slope": -2.0}, ValueError, "expert_slope"),
    ],
)
def test_bad_bounds_are_rejected_with_a_clear_message(bounds, error, match):
    X = np.zeros((10, 1))
    y = np.arange(10) % 2
    with pytest.raises(error, match=match):
        fastmoe.fit(X, y, 1, bounds=bounds)


def test_bounds_coerce():
    assert Bounds.coerce(None) is None
    assert Bounds.coerce({"gate_slope": None}) is None  # nothing bounded
    assert Bounds.coerce(3) == Bounds(3.0, 3.0, 3.0, 3.0)
    assert Bounds.coerce(np.array(3.0)) == Bounds.coerce(np.float32(3.0)) == Bounds(3.0, 3.0, 3.0, 3.0)  # 0-d array
    assert Bounds.coerce({"expert_slope": 2}) == Bounds(expert_slope=2.0)
    assert Bounds(expert_slope=2.0).to_dict() == {"expert_slope": 2.0}
    assert Bounds.uniform(1.0).compact and not Bounds(expert_slope=1.0).compact


def test_standard_errors_warn_at_a_bound(rng):
    X, y = _data(rng)
    result = fastmoe.fit(X, y, 2, bounds=1.0, random_state=0)
    assert result.active_bounds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastmoe.parameter_table(result, X, y)
    assert any(issubclass(w.category, fastmoe.UncertaintyWarning) and "ended on their bound" in str(w.message)
               for w in caught)


def test_the_summary_header_states_the_box(rng):
    X, y = _data(rng, n=300)
    with warnings.catch_warnings():
        # With the gating's slopes free, starts may diverge to a higher likelihood at n = 300 (the
        # search says so): what is tested here is the header.
        warnings.simplefilter("ignore", fastmoe.SearchWarning)
        result = fastmoe.fit(X, y, 2, bounds={"expert_slope": 1.0}, random_state=0)
    text = str(result.summary())
    assert f"|expert_slope| <= 1; {len(result.active_bounds)} free parameters on it" in text


def test_the_estimator_passes_bounds_through(rng, tmp_path):
    pytest.importorskip("sklearn")
    X, y = _data(rng)
    model = fastmoe.MixtureOfExpertsClassifier(2, l2=0.0, bounds={"expert_slope": 1.0}, random_state=0).fit(X, y)
    assert model.active_bounds_ and model.fit_result_.bounds == Bounds(expert_slope=1.0)
    assert np.abs(model.params_.normalized().a).max() <= 1.0
    model.save(tmp_path / "m.json")
    loaded = fastmoe.MixtureOfExpertsClassifier.load(tmp_path / "m.json")
    assert loaded.fit_result_.bounds == model.fit_result_.bounds
    assert loaded.active_bounds_ == model.active_bounds_


# -- rate studies in a box ------------------------------------------------------------------------------
def test_definitions_take_a_box_and_keep_old_digests(tmp_path):
    from fastmoe.experiments import Experiment, get_preset
    from fastmoe.experiments.schema import DefinitionError

    base = get_preset("over-fit")
    assert "bounds" not in base.to_dict()["fit"]  # left out at its default: the pinned digests stay
    bounded = get_preset("over-fit-bounded")
    assert bounded.fit.bounds == 10.0 and bounded.fit.l2 == 0.0
    # The variant differs from over-fit in its fit (box instead of ridge) and its name only.
    a, b = base.to_dict(), bounded.to_dict()
    assert b["fit"].pop("bounds") == 10.0 and b["fit"].pop("l2") == 0.0 and a["fit"].pop("l2") == 0.03
    for d in (a, b):
        del d["name"], d["description"]
    assert a == b
    data = base.to_dict()
    data["fit"]["bounds"] = {"expert_slope": 5.0, "gate_slope": 8}
    table = Experiment.from_dict(data)
    path = tmp_path / "boxed.toml"
    table.save(path)
    assert Experiment.load(path) == table and Experiment.load(path).fit.bounds == {"expert_slope": 5.0, "gate_slope": 8}
    assert table.model_digest() != base.model_digest()
    for bad, match in [(0.0, "fit.bounds"), ({"slope": 1.0}, "unknown fit.bounds keys"),
                       ({"expert_slope": float("inf")}, "fit.bounds.expert_slope"), ("10", "fit.bounds")]:
        data["fit"]["bounds"] = bad
        with pytest.raises(DefinitionError, match=match):
            Experiment.from_dict(data)


def test_a_bounded_job_records_its_active_bounds_and_the_report_counts_them(tmp_path):
    from fastmoe.experiments import Experiment, ResultStore, analyse, get_preset, run_job

    data = get_preset("over-fit-bounded").with_grid(sample_sizes=[400, 600], n_replications=1).to_dict()
    data["fit"]["bounds"] = 0.5  # tight: the true slopes reach 2.91
    data["fit"]["max_iter"] = 300
    exp = Experiment.from_dict(data)
    records = [run_job(exp, n, 0) for n in exp.sample_sizes]
    for record in records:
        assert record["status"] in ("ok", "not_converged"), record["message"]
        assert record["bound_active"] and record["active_bounds"] and record["max_abs_coef"] <= 0.5
    with ResultStore(tmp_path / "results.sqlite") as store:
        store.register(exp)
        for record in records:
            store.add(record)
    table = analyse(tmp_path / "results.sqlite", n_boot=20).format_table()
    header, first = [line for line in table.splitlines() if line.strip().startswith(("n ", "400"))][:2]
    assert first.split()[header.split().index("bnd")] == "1"
    assert "bnd: some parameter ended on the box" in table
