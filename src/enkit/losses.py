"""Scalar losses of an assimilation run, for learning by gradient descent.

Each takes the ``AssimilationResult`` of ``enkit.assimilate`` (with the
outputs it needs in ``store``) and returns a scalar that ``jax.grad`` can
differentiate through the whole run (model parameters, observation-operator
parameters, the inflation factor, R, the initial ensemble):

- ``negative_log_likelihood``: −Σₖ log N(yₖ; H x̄ₖᶠ, H Pₖᶠ Hᵀ + R), the
  filter's Gaussian marginal likelihood of the observations (Carrassi et
  al., 2017); needs "log_likelihood";
- ``innovation_mse``: the mean square of the forecast innovations
  y − h(x̄ᶠ) over the present observations; needs "innovation_forecast";
- ``crps_loss``: the time-mean fair CRPS of the forecast (or analysis)
  ensemble against a truth (Ferro, 2014); needs "forecast_ensemble" (or
  "analysis_ensemble");
- ``spread_skill_loss``: (log(mean spread / mean RMSE))², zero when the
  ensemble's spread matches its error; needs the stage's mean and spread.

With a truth these are twin-experiment losses; without one,
``negative_log_likelihood`` and ``innovation_mse`` use the observations
only.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit.diagnostics import crps, rmse

__all__ = ["crps_loss", "innovation_mse", "negative_log_likelihood", "spread_skill_loss"]


def _stored(result, name: str) -> Array:
    value = getattr(result, name, None)
    if value is None:
        raise ValueError(f"this loss needs the output {name!r}: pass store=[..., {name!r}] "
                         "to enkit.assimilate")
    if isinstance(value, list):
        raise ValueError(f"{name!r} is ragged (a list per cycle): losses need the (K, m) "
                         "array of the compiled path (pad the observations with a mask)")
    return jnp.asarray(value)


def _stage(stage: str) -> str:
    if stage not in ("forecast", "analysis"):
        raise ValueError(f"stage must be 'forecast' or 'analysis', got {stage!r}")
    return stage


def negative_log_likelihood(result) -> Array:
    """−Σₖ log p(yₖ | y₁..ₖ₋₁) under the ensemble's Gaussian forecast
    (``result.log_likelihood``; a cycle without observations adds 0)."""
    return -jnp.sum(_stored(result, "log_likelihood"))


def innovation_mse(result, mask: ArrayLike | None = None) -> Array:
    """Mean of (y − h(x̄ᶠ))² over cycles and present observations.

    mask: (K, m) booleans, False where an observation is absent (the
    ``mask`` given to ``assimilate``; absent entries are 0 in the output).
    """
    d = _stored(result, "innovation_forecast")
    if mask is None:
        return jnp.mean(d * d)
    w = jnp.asarray(mask, bool)
    if w.shape != d.shape:
        raise ValueError(f"mask must have the innovations' shape {d.shape}, got {w.shape}")
    return jnp.sum(jnp.where(w, d * d, 0.0)) / jnp.maximum(jnp.sum(w), 1)


def crps_loss(result, truth: ArrayLike, *, stage: str = "forecast") -> Array:
    """Time-mean fair CRPS of the stage's ensemble against ``truth`` (K, n)
    (``enkit.diagnostics.crps``, averaged over variables and cycles)."""
    E = _stored(result, f"{_stage(stage)}_ensemble")
    return jnp.mean(crps(E, truth).mean)


def spread_skill_loss(result, truth: ArrayLike, *, stage: str = "analysis") -> Array:
    """(log(time-mean spread / time-mean RMSE))² of the stage (the spread as
    ``ensemble_spread``, the RMSE of the stage's mean against ``truth``)."""
    stage = _stage(stage)
    err = rmse(_stored(result, f"{stage}_mean"), truth)
    s = _stored(result, f"{stage}_spread")
    return jnp.square(jnp.log(jnp.mean(s) / jnp.mean(err)))
