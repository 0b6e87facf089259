"""Standard figures of assimilation and calibration runs (matplotlib).

Every function takes plain arrays (NumPy or JAX; some also an enkit
result), returns a ``matplotlib.figure.Figure`` and never shows it: save it
with ``fig.savefig(path)`` or display it in a notebook. Figures are built on
``matplotlib.figure.Figure`` directly, so no pyplot state or backend is
touched (safe in scripts, threads and servers). matplotlib is imported when
a figure is made: ``import enkit`` does not import it.

Time series: ``plot_time_series`` (truth, members, mean, observations of one
variable), ``plot_rmse_spread`` (error and spread over time),
``plot_hovmoller`` (a 1-D field over time), ``plot_field_2d`` (a 2-D field),
``plot_rank_histogram`` (Talagrand). Calibration:
``plot_parameter_convergence`` (mean ± spread per iteration),
``plot_pairwise`` (scatter matrix of an ensemble), ``plot_misfit``.
``plot_twin_run`` is the figure of ``enkit demo``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "plot_field_2d",
    "plot_hovmoller",
    "plot_misfit",
    "plot_pairwise",
    "plot_parameter_convergence",
    "plot_rank_histogram",
    "plot_rmse_spread",
    "plot_time_series",
    "plot_twin_run",
]


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _axes(ax, figsize):
    """(figure, axes): the given axes' figure, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = _figure(figsize)
    return fig, fig.add_subplot()


def _array(name: str, a, ndim: int | tuple[int, ...], shape: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in ndims:
        raise ValueError(f"{name} must have shape {shape}, got shape {a.shape}")
    return a


def _times(times, K: int, name: str) -> np.ndarray:
    t = _array("times", times, 1, "(K,)")
    if t.shape[0] != K:
        raise ValueError(f"times has {t.shape[0]} entries but {name} has {K} rows")
    return t


def plot_time_series(times, *, truth=None, ensemble=None, mean=None, observations=None,
                     variable: int = 0, ax=None, title: str = ""):
    """One state variable over time.

    times: (K,); truth, mean: (K, n); ensemble: (K, N, n) members (thin
    lines); observations: (K,) observed values of that variable (NaN where
    there is none); variable: the state index shown. At least one of truth,
    ensemble, mean must be given. Returns the Figure.
    """
    series = {"truth": truth, "mean": mean}
    if all(v is None for v in (truth, ensemble, mean)):
        raise ValueError("give at least one of truth, ensemble and mean")
    fig, ax = _axes(ax, (9, 3.5))
    t = None
    if ensemble is not None:
        E = _array("ensemble", ensemble, 3, "(K, N, n)")
        t = _times(times, E.shape[0], "ensemble")
        _check_variable(variable, E.shape[2])
        ax.plot(t, E[:, :, variable], color="0.6", lw=0.4, alpha=0.6)
        ax.plot([], [], color="0.6", lw=0.8, label="members")
    for name, style in (("truth", dict(color="k", lw=1.3)),
                        ("mean", dict(color="C1", lw=1.0, ls="--"))):
        if series[name] is None:
            continue
        x = _array(name, series[name], 2, "(K, n)")
        t = _times(times, x.shape[0], name)
        _check_variable(variable, x.shape[1])
        ax.plot(t, x[:, variable], label="truth" if name == "truth" else "ensemble mean",
                **style)
    if observations is not None:
        y = _array("observations", observations, 1, "(K,)")
        _times(times, y.shape[0], "observations")
        ax.plot(t, y, ls="none", marker=".", ms=3, color="C3", label="observations")
    ax.set_xlabel("time")
    ax.set_ylabel(f"x[{variable}]")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def _check_variable(variable: int, n: int) -> None:
    if not 0 <= variable < n:
        raise ValueError(f"variable must be a state index in [0, {n}), got {variable}")


def plot_rmse_spread(times, *, rmse=None, spread=None, forecast_rmse=None,
                     forecast_spread=None, log: bool = True, ax=None, title: str = ""):
    """RMSE and spread over time (analysis, and forecast when given).

    times: (K,); rmse, spread, forecast_rmse, forecast_spread: (K,) each
    (any subset, at least one). log: logarithmic y axis. The legend gives
    each curve's time mean.
    """
    curves = [("analysis RMSE", rmse, dict(color="C0")),
              ("analysis spread", spread, dict(color="C2")),
              ("forecast RMSE", forecast_rmse, dict(color="C0", ls=":")),
              ("forecast spread", forecast_spread, dict(color="C2", ls=":"))]
    if all(c[1] is None for c in curves):
        raise ValueError("give at least one of rmse, spread, forecast_rmse, forecast_spread")
    fig, ax = _axes(ax, (9, 3.5))
    for label, v, style in curves:
        if v is None:
            continue
        v = _array(label.replace(" ", "_"), v, 1, "(K,)")
        t = _times(times, v.shape[0], label)
        ax.plot(t, v, lw=0.9, label=f"{label} (mean {np.nanmean(v):.3g})", **style)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.set_ylabel("RMSE / spread")
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_rank_histogram(counts, *, ax=None, title: str = "Rank histogram"):
    """Talagrand rank histogram from ``enkit.diagnostics.rank_histogram``.

    counts: (N + 1,) counts of the truth's rank among N members; the dashed
    line is the flat histogram of a calibrated ensemble (a U shape means
    under-dispersion, a dome over-dispersion, a slope bias).
    """
    c = _array("counts", counts, 1, "(N + 1,)")
    if c.size < 2:
        raise ValueError(f"counts must have N + 1 >= 2 entries, got {c.size}")
    fig, ax = _axes(ax, (6, 3.5))
    ranks = np.arange(c.size)
    freq = c / max(c.sum(), 1e-300)
    ax.bar(ranks, freq, width=0.9, color="C0")
    ax.axhline(1.0 / c.size, color="k", ls="--", lw=1, label="flat (calibrated)")
    ax.set_xlabel("rank of the truth among the members")
    ax.set_ylabel("frequency")
    ax.legend(loc="upper center", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_hovmoller(times, field, *, ax=None, title: str = "", cmap: str | None = None,
                   label: str = ""):
    """A 1-D field over time (time up, position across): a Hovmöller diagram.

    times: (K,); field: (K, n). Fields with both signs get a diverging
    colour map centred on 0 (errors, anomalies), others a sequential one.
    """
    F = _array("field", field, 2, "(K, n)")
    t = _times(times, F.shape[0], "field")
    fig, ax = _axes(ax, (7, 5))
    finite = F[np.isfinite(F)]
    signed = finite.size and finite.min() < 0 < finite.max()
    if signed:
        v = float(np.max(np.abs(finite)))
        kw = dict(cmap=cmap or "RdBu_r", vmin=-v, vmax=v)
    else:
        kw = dict(cmap=cmap or "viridis")
    dt = (t[-1] - t[0]) / max(len(t) - 1, 1) if len(t) > 1 else 1.0
    extent = (-0.5, F.shape[1] - 0.5, t[0] - dt / 2, t[-1] + dt / 2)
    im = ax.imshow(F, aspect="auto", origin="lower", extent=extent, interpolation="nearest",
                   **kw)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel("position (state index)")
    ax.set_ylabel("time")
    if title:
        ax.set_title(title)
    return fig


def plot_field_2d(field, *, shape: tuple[int, int] | None = None, ax=None, title: str = "",
                  cmap: str = "viridis", label: str = ""):
    """A snapshot of a 2-D field.

    field: (ny, nx), or (ny·nx,) with ``shape=(ny, nx)`` (a flattened state
    in row-major order, as ``enkit.AdvectionDiffusion2D`` holds it).
    """
    F = np.asarray(field, dtype=float)
    if shape is not None:
        if F.size != shape[0] * shape[1]:
            raise ValueError(f"field has {F.size} entries, shape {tuple(shape)} needs "
                             f"{shape[0] * shape[1]}")
        F = F.reshape(shape)
    if F.ndim != 2:
        raise ValueError(f"field must have shape (ny, nx) (or give shape= for a flat "
                         f"field), got shape {F.shape}")
    fig, ax = _axes(ax, (5.5, 4.5))
    im = ax.imshow(F, origin="lower", cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel("x index")
    ax.set_ylabel("y index")
    if title:
        ax.set_title(title)
    return fig


def _ensembles(ensembles) -> np.ndarray:
    if hasattr(ensembles, "ensembles") and hasattr(ensembles, "misfits"):
        ensembles = ensembles.ensembles  # a CalibrationResult
    return _array("ensembles", ensembles, 3, "(I + 1, N, p)")


def _names(names: Sequence[str] | None, p: int) -> list[str]:
    if names is None:
        return [f"θ[{i}]" for i in range(p)]
    names = [str(n) for n in names]
    if len(names) != p:
        raise ValueError(f"names has {len(names)} entries, the ensemble has p = {p} parameters")
    return names


def _truth(truth, p: int) -> np.ndarray | None:
    if truth is None:
        return None
    t = _array("truth", truth, 1, "(p,)")
    if t.shape[0] != p:
        raise ValueError(f"truth has {t.shape[0]} entries, the ensemble has p = {p} parameters")
    return t


def plot_parameter_convergence(ensembles, *, names: Sequence[str] | None = None, truth=None,
                               title: str = "", max_panels: int = 12):
    """Each parameter's ensemble mean ± one standard deviation per iteration.

    ensembles: (I + 1, N, p) (the parameters asked at each iteration) or a
    ``CalibrationResult``; names: p labels; truth: (p,) values drawn as
    dashed lines. At most ``max_panels`` parameters are drawn (the first).
    """
    U = _ensembles(ensembles)
    p = U.shape[2]
    names = _names(names, p)
    truth = _truth(truth, p)
    k = min(p, max_panels)
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    fig = _figure((3.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    it = np.arange(U.shape[0])
    mean = U.mean(axis=1)
    std = U.std(axis=1, ddof=1) if U.shape[1] > 1 else np.zeros_like(mean)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= k:
            ax.set_visible(False)
            continue
        ax.fill_between(it, mean[:, i] - std[:, i], mean[:, i] + std[:, i], color="C0",
                        alpha=0.25, lw=0)
        ax.plot(it, mean[:, i], color="C0", lw=1.2)
        if truth is not None:
            ax.axhline(truth[i], color="k", ls="--", lw=1)
        ax.set_title(names[i], fontsize="medium")
        if i // cols == rows - 1:
            ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    return fig


def plot_pairwise(ensemble, *, names: Sequence[str] | None = None, truth=None,
                  title: str = "", max_parameters: int = 6):
    """Scatter matrix of an (N, p) ensemble: histograms on the diagonal,
    member pairs below it; ``truth`` (p,) marked. At most
    ``max_parameters`` parameters (the first) are drawn."""
    U = _array("ensemble", ensemble, 2, "(N, p)")
    p = U.shape[1]
    names = _names(names, p)
    truth = _truth(truth, p)
    k = min(p, max_parameters)
    fig = _figure((2.2 * k + 0.5, 2.2 * k + 0.3))
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i][j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(U[:, i], bins=min(20, max(5, U.shape[0] // 3)), color="C0")
                if truth is not None:
                    ax.axvline(truth[i], color="k", ls="--", lw=1)
            else:
                ax.plot(U[:, j], U[:, i], ls="none", marker=".", ms=3, color="C0")
                if truth is not None:
                    ax.plot(truth[j], truth[i], marker="*", ms=9, color="k")
            if i == k - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    if title:
        fig.suptitle(title)
    return fig


def plot_misfit(misfit, *, log: bool = True, ax=None, title: str = "Data misfit",
                target: float | None = None):
    """The data misfit against iteration.

    misfit: (I + 1,) (``CalibrationResult.misfits``) or a CalibrationResult;
    target: a horizontal line (e.g. the discrepancy principle's τ√d).
    """
    if hasattr(misfit, "misfits"):
        misfit = misfit.misfits
    m = _array("misfit", misfit, 1, "(I + 1,)")
    fig, ax = _axes(ax, (6, 3.5))
    ax.plot(np.arange(m.size), m, marker="o", ms=3, color="C0")
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:.3g}")
        ax.legend(loc="upper right", fontsize="small")
    if log and np.all(m[np.isfinite(m)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("‖Γ^{-1/2}(y − Ḡ)‖")
    if title:
        ax.set_title(title)
    return fig


def plot_twin_run(truth, times, result, path=None, *, variable: int = 0, title: str = ""):
    """Truth vs analysis of one variable above RMSE/spread over time: the
    figure of ``enkit demo``.

    truth: (K, n); times: (K,); result: ``enkit.AssimilationResult`` with
    analysis_mean and analysis_spread. path: where to save it (PNG), or None.
    Returns the path when given, else the Figure.
    """
    truth = _array("truth", truth, 2, "(K, n)")
    mean = np.asarray(result.analysis_mean)
    fig = _figure((9, 6))
    ax0, ax1 = fig.subplots(2, 1, sharex=True)
    plot_time_series(times, truth=truth, mean=mean, variable=variable, ax=ax0, title=title)
    ax0.set_xlabel("")
    err = np.sqrt(np.mean((mean - truth) ** 2, axis=1))
    plot_rmse_spread(times, rmse=err, spread=np.asarray(result.analysis_spread), ax=ax1)
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    return path
