"""Pictures (fastmoe.plot, issue 15): they draw on the Agg backend, return their axes, show what they say."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import fastmoe  # noqa: E402
import fastmoe.plot  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fitted(request):
    truth = fastmoe.MoEParams(beta0=[0.5, 0.0], beta1=[[3.0, -2.0], [0.0, 0.0]],
                              a=[[[3.0, 1.0], [-1.0, 2.5], [0.0, 0.0]], [[-2.5, 0.0], [1.5, -2.0], [0.0, 0.0]]],
                              b=[[0.5, -0.5, 0.0], [-0.3, 0.4, 0.0]])
    X, y = fastmoe.sample(truth, 3000, random_state=0)
    result = fastmoe.fit(X, y, 2, init="kmeans", random_state=0, n_threads=1)
    return result, X, y


def test_gating_partition_colours_the_gates_choice(fitted):
    result, X, y = fitted
    ax = fastmoe.plot.gating_partition(result, X, y, resolution=40)
    assert isinstance(ax, matplotlib.axes.Axes)
    image = ax.get_images()[0].get_array()
    assert image.shape == (40, 40, 4)
    # Two corners the gate gives to different experts get different colours, as gate_proba says.
    corners = np.array([[X[:, 0].min(), X[:, 1].max()], [X[:, 0].max(), X[:, 1].min()]])
    chosen = fastmoe.gate_proba(result.params, corners).argmax(axis=1)
    assert chosen[0] != chosen[1]
    assert not np.allclose(image[-1, 0, :3], image[0, -1, :3])
    assert len(ax.collections) == 3  # one scatter per class


def test_expert_regions_one_panel_per_expert(fitted):
    result, X, y = fitted
    axes = fastmoe.plot.expert_regions(result.params, X, y, resolution=30, max_points=300)
    assert len(axes) == 2 and all(isinstance(ax, matplotlib.axes.Axes) for ax in axes)
    for ax in axes:
        assert ax.get_images()[0].get_array().shape == (30, 30, 4)
    with pytest.raises(ValueError, match="one Axes per expert"):
        fastmoe.plot.expert_regions(result.params, axes=[axes[0]])
    # The labels are drawn (found by a QA pass: y was thinned and never drawn): one scatter per class, at
    # most max_points points in all, faint where the gate sends the point to another expert.
    for ax in axes:
        assert len(ax.collections) == 3
        assert sum(len(c.get_offsets()) for c in ax.collections) == 300
    plt.close("all")
    unlabelled = fastmoe.plot.expert_regions(result.params, X, resolution=30, max_points=300)
    assert [len(ax.collections) for ax in unlabelled] == [1, 1]


def test_pictures_check_their_data_and_take_an_estimators_labels(fitted):
    """Found by a QA pass: a y of the wrong length failed inside NumPy, an estimator's own string labels
    failed on int(), infinite bounds were reported as NaN in X, a negative max_points by NumPy."""
    from fastmoe.estimator import MixtureOfExpertsClassifier

    result, X, y = fitted
    with pytest.raises(ValueError, match="y has 10 labels but X has 3000 rows"):
        fastmoe.plot.gating_partition(result, X, y[:10], resolution=20)
    with pytest.raises(ValueError, match="integer class codes"):
        fastmoe.plot.gating_partition(result, X, np.array(["a", "b", "c"])[y], resolution=20)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        fastmoe.plot.expert_regions(result, X, y + 1, resolution=20)
    with pytest.raises(ValueError, match="bounds must be finite"):
        fastmoe.plot.gating_partition(result, bounds=(-np.inf, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="max_points must be >= 0"):
        fastmoe.plot.gating_partition(result, X, y, max_points=-5)
    labels = np.array(["cat", "dog", "eel"])[y]
    model = MixtureOfExpertsClassifier(2, init=result.params, n_threads=1).fit(X, labels)
    ax = fastmoe.plot.gating_partition(model, X, labels, resolution=20)
    assert sorted(c.get_label() for c in ax.collections) == ["class cat", "class dog", "class eel"]
    panels = fastmoe.plot.expert_regions(model, X, labels, resolution=20)
    assert [t.get_text() for t in panels[-1].get_legend().get_texts()] == ["class cat", "class dog", "class eel"]


def test_pictures_of_2d_inputs_refuse_other_dimensions(rng):
    params = fastmoe.MoEParams(beta0=[0.0, 0.0], beta1=np.zeros((2, 3)), a=np.zeros((2, 2, 3)), b=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2-D inputs"):
        fastmoe.plot.gating_partition(params)
    with pytest.raises(TypeError, match="MoEParams"):
        fastmoe.plot.gating_partition("params")


@pytest.mark.parametrize("expert_features", [(1,), ()])
def test_pictures_of_a_fit_with_separate_inputs(rng, expert_features):
    # Two columns of X: the gating reads column 0, the experts column 1 (or nothing). The pictures are
    # drawn over X's two columns, whichever of them each part reads.
    X = rng.uniform(-1, 1, size=(400, 2))
    y = rng.integers(0, 2, size=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short fit: what is drawn is tested, not its convergence
        result = fastmoe.fit(X, y, 2, gating_features=[0], expert_features=list(expert_features), init="kmeans",
                             max_iter=20, random_state=0, n_threads=1)
        three = fastmoe.fit(np.column_stack([X, X[:, 0]]), y, 2, gating_features=[2], expert_features=[0, 1],
                            init="kmeans", max_iter=5, random_state=0, n_threads=1)
    assert isinstance(fastmoe.plot.gating_partition(result.params, X, resolution=20), matplotlib.axes.Axes)
    axes = fastmoe.plot.expert_regions(result.params, X, y, resolution=20, max_points=100)
    assert len(axes) == 2
    with pytest.raises(ValueError, match="reads 3 columns of X"):
        fastmoe.plot.gating_partition(three.params, np.column_stack([X, X[:, 0]]))


def test_history_marks_em_and_newton_iterations(fitted):
    result, X, y = fitted
    assert result.n_newton > 0 and result.n_newton < result.n_iter  # both phases present (kmeans start)
    assert len(result.newton_iterations) == result.n_newton
    assert all(1 <= i <= result.n_iter for i in result.newton_iterations)
    ax = fastmoe.plot.history(result)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"Newton step ({result.n_newton})" in labels
    assert f"EM iteration ({result.n_iter - result.n_newton})" in labels
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), result.history)
    gap_ax = fastmoe.plot.history(result, gap=True)
    assert gap_ax.get_yscale() == "log"
    with pytest.raises(TypeError, match="FitResult"):
        fastmoe.plot.history(result.params)


def test_newton_iterations_survive_the_estimators_json(tmp_path, fitted):
    from fastmoe.estimator import MixtureOfExpertsClassifier

    _, X, y = fitted
    model = MixtureOfExpertsClassifier(n_experts=2, init="kmeans", random_state=0, n_threads=1).fit(X, y)
    model.save(tmp_path / "m.json")
    again = MixtureOfExpertsClassifier.load(tmp_path / "m.json")
    assert again.fit_result_.newton_iterations == model.fit_result_.newton_iterations


def test_dendrogram_plot(fitted):
    result, X, y = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fastmoe.ConvergenceWarning)
        over = fastmoe.fit(X, y, 3, init="kmeans", random_state=0, n_threads=1, max_iter=50)
    tree = fastmoe.dendrogram(over, X, y)
    fig, ax = plt.subplots()
    assert tree.plot(ax=ax) is ax
    assert [t.get_text() for t in ax.get_xticklabels()]  # leaves labelled
    assert ax.get_legend().get_texts()[0].get_text() == f"selected: {tree.select()[0]} experts"


def test_missing_matplotlib_is_a_clear_import_error(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.pyplot'] = None\n"
            "import fastmoe\n"
            "from fastmoe._dendrogram import Dendrogram\n"
            "try:\n"
            "    fastmoe.plot.history(None)\n"
            "except ImportError as e:\n"
            "    print('ImportError:', e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ImportError: fastmoe.plot needs matplotlib" in done.stdout, done.stderr


def test_import_fastmoe_does_not_load_matplotlib():
    code = "import sys, fastmoe; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
