"""The demo twin experiments of ``enkit demo``.

"lorenz96" (default): Lorenz-96, n=40, F=8, RK4 with dt=0.05, all variables
observed every step (0.05 time units) with R = I, N=40 members, ETKF with
multiplicative inflation 1.02. Sakov & Oke (2008, MWR 136) report a
time-mean analysis RMSE of about 0.18 for this setting (DAPPER's
``mods/Lorenz96/sakov2008.py`` lists 0.18 for the square-root EnKF with
N=28 and inflation 1.02). "lorenz63": the Sakov, Oliver & Bertino (2012)
setting (``enkit.models.cases.sakov2012_lorenz63``; ETKF N=10 ≈ 0.60 with
random rotations).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from enkit.assimilation import AssimilationResult
from enkit.filters import SCHEMES
from enkit.models import TwinExperiment
from enkit.models.cases import sakov2008_lorenz96, sakov2012_lorenz63

__all__ = ["DEMO_MODELS", "DemoResult", "format_summary", "lorenz96_demo", "twin_demo"]

# model name -> (case factory, one-line description)
DEMO_MODELS = {
    "lorenz96": (sakov2008_lorenz96, "Lorenz-96 (n=40, F=8, all observed every 0.05, R=I)"),
    "lorenz63": (sakov2012_lorenz63, "Lorenz-63 (all observed every 0.25, R=2I)"),
}


class DemoResult(NamedTuple):
    """Outcome of ``lorenz96_demo``: the experiment, the run and its summary."""

    twin: TwinExperiment
    result: AssimilationResult
    summary: dict


def lorenz96_demo(
    *,
    cycles: int = 5000,
    burn_in: int = 500,
    members: int = 40,
    inflation: float = 1.02,
    scheme: str = "etkf",
    seed: int = 0,
) -> DemoResult:
    """Run the Lorenz-96 twin experiment (``cases.sakov2008_lorenz96``);
    ``twin_demo(model="lorenz96", ...)``."""
    return twin_demo(model="lorenz96", cycles=cycles, burn_in=burn_in, members=members,
                     inflation=inflation, scheme=scheme, seed=seed)


def twin_demo(
    *,
    model: str = "lorenz96",
    cycles: int = 5000,
    burn_in: int = 500,
    members: int = 40,
    inflation: float | None = 1.02,
    scheme: str = "etkf",
    seed: int = 0,
    store: tuple[str, ...] = (),
) -> DemoResult:
    """Run the twin experiment of ``model`` (a name of ``DEMO_MODELS``).

    The run is compiled once (timed as ``compile_s``) and then timed again for
    ``cycles_per_s``. Statistics are time means over cycles after ``burn_in``.
    store: outputs kept besides the means and spreads (``enkit.OUTPUTS``).
    """
    if model not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {model!r}; choose one of {sorted(DEMO_MODELS)}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    case = DEMO_MODELS[model][0](cycles=cycles, burn_in=burn_in)
    store = tuple(dict.fromkeys(("forecast_mean", "analysis_mean", "forecast_spread",
                                 "analysis_spread", *store)))

    def run():
        out = case.run(SCHEMES[scheme], members, seed=seed, inflation=inflation, store=store)
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    rmse, result, twin = run()
    elapsed = time.perf_counter() - t0
    window = slice(burn_in, None)
    summary = {
        "model": model,
        "scheme": scheme,
        "N": members,
        "inflation": inflation,
        "cycles": cycles,
        "analysis_rmse": rmse,
        "forecast_rmse": float(jnp.mean(result.forecast_rmse(twin.truth)[window])),
        "analysis_spread": float(jnp.mean(result.analysis_spread[window])),
        "forecast_spread": float(jnp.mean(result.forecast_spread[window])),
        "cycles_per_s": cycles / elapsed,
        "compile_s": max(first - elapsed, 0.0),
        "dtype": str(np.dtype(result.analysis_mean.dtype)),
    }
    return DemoResult(twin, result, summary)


def format_summary(summary: dict) -> str:
    """A small fixed-width table of a demo summary."""
    rows = [
        ("model", DEMO_MODELS[summary.get("model", "lorenz96")][1]),
        ("scheme", f"{summary['scheme']}  (N={summary['N']}, inflation {summary['inflation']})"),
        ("cycles", f"{summary['cycles']}  ({summary['dtype']})"),
        ("analysis RMSE", f"{summary['analysis_rmse']:.4f}"),
        ("analysis spread", f"{summary['analysis_spread']:.4f}"),
        ("forecast RMSE", f"{summary['forecast_rmse']:.4f}"),
        ("forecast spread", f"{summary['forecast_spread']:.4f}"),
        ("cycles per second", f"{summary['cycles_per_s']:.0f}"),
        ("compile time [s]", f"{summary['compile_s']:.2f}"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
