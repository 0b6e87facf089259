"""The standard figures of enkit.plotting, drawn from short runs.

    ./dev python examples/gallery.py            # writes docs/gallery/*.png
    ./dev python examples/gallery.py OUT_DIR    # elsewhere

Three small experiments feed them (under a minute on two cores):

- a Lorenz-96 twin experiment (n = 40, every variable observed every
  0.05 with R = I, ETKF with N = 20 and inflation 1.02, 400 cycles): time
  series, RMSE and spread, rank histogram, Hovmöller diagrams;
- a 2-D advection–diffusion field (32 × 32, a Gaussian blob carried by the
  cellular flow for 40 steps): the field snapshot;
- an EKI calibration of three parameters of a damped oscillation observed
  at 20 times (N = 30, 12 iterations): parameter convergence, pairwise
  scatter of the final ensemble, misfit against iteration.

``make_figures()`` returns the Figures by name; ``main`` saves them as PNG
and writes docs/gallery.md listing them with one line each.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import enkit
from enkit import plotting
from enkit.models.cases import sakov2008_lorenz96

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, os.pardir, "docs", "gallery")

CAPTIONS = {
    "time_series": "Lorenz-96, x[0]: truth, members, ensemble mean and observations "
                   "(`plot_time_series`).",
    "rmse_spread": "Analysis and forecast RMSE against spread; legend gives time means "
                   "(`plot_rmse_spread`).",
    "rank_histogram": "Talagrand rank histogram of the analysis ensemble over all "
                      "variables and cycles (`plot_rank_histogram`).",
    "hovmoller_truth": "Hovmöller diagram of the Lorenz-96 truth (`plot_hovmoller`).",
    "hovmoller_error": "Hovmöller diagram of the analysis error, mean minus truth "
                       "(`plot_hovmoller`).",
    "field_2d": "A tracer blob after 40 steps of 2-D advection–diffusion "
                "(`plot_field_2d`).",
    "parameter_convergence": "EKI: each parameter's ensemble mean ± one std per "
                             "iteration, truth dashed (`plot_parameter_convergence`).",
    "pairwise": "EKI: pairwise scatter of the final ensemble, truth marked "
                "(`plot_pairwise`).",
    "misfit": "EKI: data misfit against iteration, the discrepancy level dashed "
              "(`plot_misfit`).",
}


def _twin_figures(cycles: int) -> dict:
    case = sakov2008_lorenz96(cycles=cycles, burn_in=0)
    twin = case.twin(0, cycles)
    E0 = case.initial_ensemble(twin, 20, 0)
    result = enkit.assimilate(case.model, E0, twin.observations, enkit.etkf, h=case.h,
                              R=case.R, steps_per_obs=case.steps_per_obs, inflation=1.02,
                              store=("forecast_mean", "analysis_mean", "forecast_spread",
                                     "analysis_spread", "analysis_ensemble"))
    t = np.asarray(twin.times)
    truth = np.asarray(twin.truth)
    show = slice(0, min(cycles, 200))
    obs0 = np.asarray(twin.observations)[:, 0]
    figs = {
        "time_series": plotting.plot_time_series(
            t[show], truth=truth[show], ensemble=np.asarray(result.analysis_ensemble)[show],
            mean=np.asarray(result.analysis_mean)[show], observations=obs0[show],
            title="Lorenz-96 ETKF, N = 20"),
        "rmse_spread": plotting.plot_rmse_spread(
            t, rmse=np.asarray(result.rmse(twin.truth)),
            spread=np.asarray(result.analysis_spread),
            forecast_rmse=np.asarray(result.forecast_rmse(twin.truth)),
            forecast_spread=np.asarray(result.forecast_spread)),
        "rank_histogram": plotting.plot_rank_histogram(
            np.asarray(enkit.rank_histogram(result.analysis_ensemble[50:], twin.truth[50:]))),
        "hovmoller_truth": plotting.plot_hovmoller(t[show], truth[show], title="truth",
                                                   label="x"),
        "hovmoller_error": plotting.plot_hovmoller(
            t[show], np.asarray(result.analysis_mean)[show] - truth[show],
            title="analysis error", label="mean − truth"),
    }
    return figs


def _field_figure() -> dict:
    model = enkit.AdvectionDiffusion2D(nx=32, ny=32, Lx=32.0, Ly=32.0, cells=1)
    xy = np.asarray(model.coordinates)
    q = np.exp(-((xy[:, 0] - 10.0) ** 2 + (xy[:, 1] - 16.0) ** 2) / 8.0)
    step = jax.jit(model)
    x = jnp.asarray(q)
    for _ in range(40):
        x = step(x)
    return {"field_2d": plotting.plot_field_2d(np.asarray(x), shape=(32, 32),
                                               title="tracer after 40 steps", label="q")}


def _oscillation(theta):
    """A damped oscillation a·exp(−b t)·cos(ω t) at 20 times; θ = (log a, log b, ω)."""
    t = jnp.linspace(0.0, 6.0, 20)
    return jnp.exp(theta[0]) * jnp.exp(-jnp.exp(theta[1]) * t) * jnp.cos(theta[2] * t)


def _inversion_figures() -> dict:
    truth = np.array([0.3, np.log(0.4), 2.0])
    noise = 0.02**2
    y = np.asarray(_oscillation(truth)) + 0.02 * np.random.default_rng(3).standard_normal(20)
    prior = np.array([0.0, np.log(0.3), 1.8])
    E0 = prior + 0.3 * np.random.default_rng(4).standard_normal((30, 3))
    res = enkit.calibrate(_oscillation, enkit.EKI(), E0, y, noise * np.eye(20), key=0,
                          max_iterations=12)
    names = ["log a", "log b", "ω"]
    return {
        "parameter_convergence": plotting.plot_parameter_convergence(res, names=names,
                                                                     truth=truth),
        "pairwise": plotting.plot_pairwise(np.asarray(res.ensembles[-1]), names=names,
                                           truth=truth),
        "misfit": plotting.plot_misfit(np.asarray(res.misfits), target=np.sqrt(20)),
    }


def make_figures(*, cycles: int = 400) -> dict:
    """Every gallery figure by name (see ``CAPTIONS``)."""
    with jax.enable_x64(True):
        figs = _twin_figures(cycles)
        figs.update(_field_figure())
        figs.update(_inversion_figures())
    return figs


def main(out: str = DEFAULT_OUT, *, dpi: int = 60, cycles: int = 400,
         index: str | None = None) -> list[str]:
    """Save the figures as ``out/<name>.png``; write the index page ``index``
    (default ``out/../gallery.md``). Returns the PNG paths."""
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    index = index or os.path.join(os.path.dirname(out), "gallery.md")
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(index)))
    paths, lines = [], ["# Gallery of the standard figures", "",
                        "Made by `examples/gallery.py` (`./dev python examples/gallery.py`); "
                        "every figure is a function of `enkit.plotting` returning a "
                        "matplotlib Figure.", ""]
    for name, fig in make_figures(cycles=cycles).items():
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=dpi)
        paths.append(path)
        lines += [f"## {name.replace('_', ' ')}", "", CAPTIONS[name], "",
                  f"![{name}]({rel}/{name}.png)", ""]
    with open(index, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return paths


if __name__ == "__main__":
    for p in main(*sys.argv[1:2]):
        print(f"wrote {p}")
