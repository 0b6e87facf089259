"""enkit.plotting: every figure renders to a PNG of the expected size."""

import struct
import subprocess
import sys

import numpy as np
import pytest

from enkit import plotting

PNG = b"\x89PNG\r\n\x1a\n"
rng = np.random.default_rng(0)
K, N, n, p = 30, 8, 12, 3
T = np.arange(1, K + 1) * 0.05
TRUTH = rng.standard_normal((K, n))
ENS = TRUTH[:, None, :] + 0.5 * rng.standard_normal((K, N, n))
U = np.cumsum(0.1 * rng.standard_normal((6, 20, p)), axis=0)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000
    width, height = struct.unpack(">II", data[16:24])
    return width, height


FIGURES = {
    "time_series": lambda: plotting.plot_time_series(
        T, truth=TRUTH, ensemble=ENS, mean=ENS.mean(1), observations=TRUTH[:, 0], variable=0),
    "rmse_spread": lambda: plotting.plot_rmse_spread(
        T, rmse=np.abs(rng.standard_normal(K)) + 0.1, spread=np.full(K, 0.5),
        forecast_rmse=np.full(K, 0.7), forecast_spread=np.full(K, 0.6)),
    "rank_histogram": lambda: plotting.plot_rank_histogram(rng.integers(5, 20, N + 1)),
    "hovmoller": lambda: plotting.plot_hovmoller(T, ENS.mean(1) - TRUTH),
    "field_2d": lambda: plotting.plot_field_2d(rng.standard_normal(6 * 8), shape=(6, 8)),
    "parameter_convergence": lambda: plotting.plot_parameter_convergence(
        U, names=["a", "b", "c"], truth=[0.1, 0.2, 0.3]),
    "pairwise": lambda: plotting.plot_pairwise(U[-1], names=["a", "b", "c"], truth=[0, 0, 0]),
    "misfit": lambda: plotting.plot_misfit(np.geomspace(10, 0.1, 6), target=1.0),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_each_figure_renders_to_a_png_of_its_size(name, tmp_path):
    from matplotlib.figure import Figure

    fig = FIGURES[name]()
    assert isinstance(fig, Figure)
    w, h = fig.get_size_inches()
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=50)
    assert _png_size(path) == (round(w * 50), round(h * 50))


def test_figures_draw_into_given_axes(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    a, b = fig.subplots(1, 2)
    assert plotting.plot_misfit([3.0, 2.0, 1.0], ax=a) is fig
    assert plotting.plot_rank_histogram([1, 2, 3], ax=b) is fig
    fig.savefig(tmp_path / "two.png", dpi=40)
    assert len(a.lines) == 1 and len(b.patches) == 3


def test_results_are_accepted_where_natural(tmp_path):
    import jax

    import enkit

    with jax.enable_x64(True):
        G = np.array([[1.0, 0.0], [0.5, 2.0], [1.0, 1.0]])
        res = enkit.calibrate(lambda t: G @ t, enkit.EKI(stochastic=False),
                              rng.standard_normal((10, 2)), G @ np.array([0.5, -0.2]),
                              0.01 * np.ones(3), key=0, max_iterations=4)
    fig = plotting.plot_parameter_convergence(res, names=["u", "v"])
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    assert plotting.plot_misfit(res).axes[0].lines[0].get_ydata().size == res.misfits.shape[0]
    path = plotting.plot_twin_run(TRUTH, T, _FakeResult(), tmp_path / "twin.png")
    assert path.read_bytes()[:8] == PNG


class _FakeResult:
    analysis_mean = ENS.mean(1)
    analysis_spread = np.full(K, 0.5)


@pytest.mark.parametrize("call, words", [
    (lambda: plotting.plot_time_series(T), "at least one"),
    (lambda: plotting.plot_time_series(T, truth=TRUTH[0]), "truth must have shape (K, n)"),
    (lambda: plotting.plot_time_series(T[:5], truth=TRUTH), "times has 5 entries"),
    (lambda: plotting.plot_time_series(T, truth=TRUTH, variable=n), "variable must be"),
    (lambda: plotting.plot_hovmoller(T, ENS), "field must have shape (K, n)"),
    (lambda: plotting.plot_field_2d(np.zeros(10), shape=(3, 4)), "needs 12"),
    (lambda: plotting.plot_field_2d(np.zeros(10)), "give shape="),
    (lambda: plotting.plot_pairwise(U[-1], names=["a"]), "names has 1 entries"),
    (lambda: plotting.plot_parameter_convergence(U[-1]), "(I + 1, N, p)"),
    (lambda: plotting.plot_rank_histogram([3]), "N + 1 >= 2"),
    (lambda: plotting.plot_rmse_spread(T), "at least one"),
])
def test_wrong_shapes_name_the_argument(call, words):
    with pytest.raises(ValueError) as err:
        call()
    assert words in str(err.value)


def test_import_enkit_does_not_import_matplotlib():
    code = "import sys, enkit, enkit.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
