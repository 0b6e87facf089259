"""The cycle of a particle scheme (``enkit.particle``), shared by the
compiled driver: the analysis with its carried log-weights and the
weighted per-time outputs.

Private: ``enkit.assimilation.compiled`` calls it when the scheme is
marked ``particle = True``. The carry of such a run is (E, inflation
state, smoother state, log-weights); inflation and smoothers are refused
at the door (``driver.prepare``), so the first two extra entries stay
as the plain filter's.
"""

from __future__ import annotations

import jax.numpy as jnp

from enkit.assimilation import cycle
from enkit.diagnostics import effective_sample_size
from enkit.filters._common import observe
from enkit.particle.resampling import (
    weighted_covariance_root,
    weighted_mean,
    weighted_spread,
)

# Outputs only a particle scheme fills (always stored by a particle run).
PARTICLE_OUTPUTS = ("log_weights", "ess")
# Outputs a particle run supports (weighted versions of the filter's).
SUPPORTED = ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread",
             "forecast_ensemble", "analysis_ensemble", "forecast_covariance",
             "analysis_covariance", "analysis_variances", "analysis_std", "bma",
             "innovation_forecast", "innovation_analysis", "simulated_obs_forecast",
             "simulated_obs_analysis", *PARTICLE_OUTPUTS, cycle.NONFINITE)


def analyse(scheme, h, y, R, mask, key, Ef, log_w, outputs, *, stages=False):
    """One particle analysis: (Ea, log-weights, outputs). ``log_w`` are the
    forecast's log-weights (carried from the previous analysis)."""
    hm, ym, Rm = cycle.masked_problem(h, y, R, mask)
    result = scheme(Ef, ym, hm, Rm, key=key, log_weights=log_w)
    Ea, log_a = result.ensemble, result.log_weights
    out = statistics(outputs, Ef, log_w, Ea, log_a, result.ess, hm, ym)
    if cycle.NONFINITE in outputs:
        out[cycle.NONFINITE] = cycle.nonfinite_code((cycle.FORECAST, Ef), (cycle.ANALYSIS, Ea),
                                                    stages=stages)
    return Ea, log_a, out


def skipped(outputs, Ef, log_w, h, y, R, mask):
    """The outputs of a cycle without observations: weights carried, ESS of them."""
    if y.shape[0] == 0:
        h, R, mask = cycle._no_observations, None, None
    hm, ym, _ = cycle.masked_problem(h, y, R, mask)
    out = statistics(outputs, Ef, log_w, Ef, log_w, effective_sample_size(log_weights=log_w),
                     hm, ym)
    if cycle.NONFINITE in outputs:
        out[cycle.NONFINITE] = cycle.nonfinite_code((cycle.FORECAST, Ef), stages=True)
    return out


def statistics(outputs, Ef, log_f, Ea, log_a, ess, h, y) -> dict:
    """The requested per-time outputs with weighted moments:
    x̄ = Σ w̄ᵢ xᵢ, covariance C½ᵀC½ (``weighted_covariance_root``)."""
    xf, xa = weighted_mean(Ef, log_f), weighted_mean(Ea, log_a)
    lazy = {}

    def root(which):
        if which not in lazy:
            lazy[which] = weighted_covariance_root(*((Ef, log_f) if which == "f" else
                                                     (Ea, log_a)))
        return lazy[which]

    def hx(x):
        return observe(h, x[None])[0]

    stats = {
        "forecast_mean": lambda: xf,
        "analysis_mean": lambda: xa,
        "forecast_spread": lambda: weighted_spread(Ef, log_f),
        "analysis_spread": lambda: weighted_spread(Ea, log_a),
        "forecast_ensemble": lambda: Ef,
        "analysis_ensemble": lambda: Ea,
        "forecast_covariance": lambda: root("f").T @ root("f"),
        "analysis_covariance": lambda: root("a").T @ root("a"),
        "analysis_variances": lambda: jnp.sum(root("a") ** 2, axis=0),
        "analysis_std": lambda: jnp.sqrt(jnp.sum(root("a") ** 2, axis=0)),
        "bma": lambda: xf - xa,
        "innovation_forecast": lambda: y - hx(xf),
        "innovation_analysis": lambda: y - hx(xa),
        "simulated_obs_forecast": lambda: hx(xf),
        "simulated_obs_analysis": lambda: hx(xa),
        "log_weights": lambda: log_a,
        "ess": lambda: jnp.asarray(ess, Ea.dtype),
    }
    return {name: stats[name]() for name in outputs if name in stats}
