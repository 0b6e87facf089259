"""Summaries and standard figures of saved results (``enkit report``).

``summarize(ds)`` gives the rows of a summary table of a result Dataset
written by ``AssimilationResult.to_netcdf`` (``enkit_kind`` "assimilation"
or "smoother") or ``CalibrationResult.to_netcdf`` / ``enkit calibrate``
("calibration"); ``standard_figures(ds)`` the matching figures (see
``enkit.plotting``); ``format_table(rows)`` the fixed-width text. They read
only the Dataset, so a file written by another enkit version or edited by
other tools works as long as it keeps the variable names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["format_table", "result_kind", "standard_figures", "summarize"]


def result_kind(ds) -> str:
    """"assimilation", "smoother" or "calibration" (``enkit_kind``; guessed
    from the variables for files without it)."""
    kind = ds.attrs.get("enkit_kind")
    if kind in ("assimilation", "smoother", "calibration"):
        return kind
    if "misfit" in ds and "parameter" in ds.dims:
        return "calibration"
    if any(v.startswith("smoothed_") for v in ds.data_vars):
        return "smoother"
    if "time" in ds.dims:
        return "assimilation"
    raise ValueError("not an enkit result: no enkit_kind attribute, and neither a time "
                     "dimension (assimilation) nor misfit and parameter (calibration)")


def _mean(x) -> float:
    return float(np.nanmean(np.asarray(x, float)))


def _rmse(mean, truth) -> np.ndarray:
    d = np.asarray(mean, float) - np.asarray(truth, float)
    return np.sqrt(np.mean(d * d, axis=-1))


def summarize(ds, *, burn_in: int = 0) -> list[tuple[str, str]]:
    """(label, value) rows describing the result Dataset ``ds``.

    burn_in: analysis times left out of the time means (assimilation).
    """
    kind = result_kind(ds)
    rows = [("result", kind)]
    for key, label in (("method", "method"), ("enkit_version", "written by enkit")):
        if key in ds.attrs:
            rows.append((label, str(ds.attrs[key])))
    if kind == "calibration":
        return rows + _calibration_rows(ds)
    K = ds.sizes.get("time", 0)
    if not 0 <= burn_in < max(K, 1):
        raise ValueError(f"burn_in must be in [0, {K}), got {burn_in}")
    sizes = ", ".join(f"{d} {ds.sizes[d]}" for d in ("time", "member", "state", "obs")
                      if d in ds.sizes)
    rows.append(("sizes", sizes))
    if "time" in ds.coords and K:
        t = np.asarray(ds["time"].values, float)
        rows.append(("times", f"{t[0]:g} … {t[-1]:g}"))
    win = slice(burn_in, None)
    note = f" (time mean after {burn_in} cycles)" if burn_in else " (time mean)"
    truth = ds["truth"].values if "truth" in ds else None
    for stage in ("forecast", "analysis", "smoothed"):
        mean = f"{stage}_mean"
        if truth is not None and mean in ds:
            rows.append((f"{stage} RMSE", f"{_mean(_rmse(ds[mean].values, truth)[win]):.4f}"
                         + note))
        if f"{stage}_spread" in ds:
            rows.append((f"{stage} spread", f"{_mean(ds[f'{stage}_spread'].values[win]):.4f}"))
    if "innovation_chi2" in ds:
        rows.append(("innovation χ²/m", f"{_mean(ds['innovation_chi2'].values[win]):.3f}"
                     "  (≈ 1 for a consistent filter)"))
    if "dfs" in ds:
        rows.append(("DFS", f"{_mean(ds['dfs'].values[win]):.3f}"))
    if "nonfinite" in ds:
        bad = int(np.count_nonzero(ds["nonfinite"].values))
        rows.append(("non-finite cycles", str(bad)))
    return rows


def _calibration_rows(ds) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("stopped_by", "stopped by"), ("n_iterations", "iterations")):
        if key in ds.attrs:
            rows.append((label, str(ds.attrs[key])))
    if "misfit" in ds:
        m = np.asarray(ds["misfit"].values, float)
        rows.append(("misfit", f"{m[0]:.6g} → {m[-1]:.6g}"))
    names = [str(n) for n in ds["parameter"].values] if "parameter" in ds.coords else []
    est = ds["final_estimate"].values if "final_estimate" in ds else None
    last = ds["parameters"].values[-1] if "parameters" in ds else None
    for i, name in enumerate(names):
        parts = []
        if est is not None:
            parts.append(f"estimate {float(est[i]):.6g}")
        if last is not None:
            col = np.asarray(last[:, i], float)
            parts.append(f"ensemble {np.mean(col):.6g} ± {np.std(col, ddof=1):.3g}")
        rows.append((f"parameter {name}", ", ".join(parts)))
    return rows


def format_table(rows: list[tuple[str, str]]) -> str:
    """The rows as two left-aligned columns."""
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def standard_figures(ds, *, variable: int = 0) -> dict[str, Any]:
    """name → matplotlib Figure: the standard figures of the result ``ds``.

    Assimilation/smoother: "timeseries" (variable ``variable``: truth,
    ensemble, means, observations at that position), "rmse" (RMSE with a
    truth, and spread, over time), "hovmoller" (the analysis mean, and its
    error with a truth), "rank" (rank histogram, with a truth and the
    analysis ensemble). Calibration: "misfit", "parameters" (convergence),
    "pairwise" (the final ensemble). Figures need data: one whose variables
    are absent is left out.
    """
    from enkit import plotting

    kind = result_kind(ds)
    figs: dict[str, Any] = {}
    if kind == "calibration":
        if "misfit" in ds:
            figs["misfit"] = plotting.plot_misfit(ds["misfit"].values)
        if "parameters" in ds:
            names = [str(n) for n in ds["parameter"].values]
            figs["parameters"] = plotting.plot_parameter_convergence(
                ds["parameters"].values, names=names)
            figs["pairwise"] = plotting.plot_pairwise(ds["parameters"].values[-1], names=names)
        return figs
    t = np.asarray(ds["time"].values, float)
    truth = ds["truth"].values if "truth" in ds else None
    mean_name = next((m for m in ("smoothed_mean", "analysis_mean", "forecast_mean")
                      if m in ds), None)
    ens = ds["analysis_ensemble"].values if "analysis_ensemble" in ds else None
    if mean_name is not None or truth is not None:
        figs["timeseries"] = plotting.plot_time_series(
            t, truth=truth, ensemble=ens,
            mean=None if mean_name is None else ds[mean_name].values, variable=variable)
    spread = ds["analysis_spread"].values if "analysis_spread" in ds else None
    if mean_name is not None and (truth is not None or spread is not None):
        rmse = None if truth is None else _rmse(ds[mean_name].values, truth)
        figs["rmse"] = plotting.plot_rmse_spread(t, rmse=rmse, spread=spread)
    if mean_name is not None and "state" in ds.dims and ds.sizes["state"] > 1:
        field = ds[mean_name].values
        figs["hovmoller"] = plotting.plot_hovmoller(
            t, field if truth is None else field - truth)
    if truth is not None and ens is not None:
        from enkit.diagnostics import rank_histogram

        counts = np.asarray(rank_histogram(ens, truth))
        figs["rank"] = plotting.plot_rank_histogram(counts)
    return figs
