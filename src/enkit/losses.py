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

For runs too long for exact reverse mode even with ``assimilate(remat=)``,
``truncated_value_and_grad`` gives the truncated gradient (each window of
cycles differentiated with its starting ensemble held fixed) in memory that
does not grow with the number of cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit.diagnostics import crps, rmse

__all__ = ["crps_loss", "innovation_mse", "negative_log_likelihood", "spread_skill_loss",
           "truncated_value_and_grad"]


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


def truncated_value_and_grad(
    segment_loss: Callable[..., tuple[Array, Array]],
    params: Any,
    E0: ArrayLike,
    data: Any,
    *,
    window: int,
    key: Array | int | None = None,
) -> tuple[Array, Any, Array]:
    """Loss of a long run and its truncated gradient, in memory O(window).

    The K cycles of ``data`` are cut into consecutive windows of ``window``
    cycles (the last one shorter when ``window`` does not divide K). Window
    s starts from the ensemble the previous window ended with, E₀ for the
    first, and contributes ``segment_loss(params, E, data_s, key_s) ->
    (loss_s, E_end)``; the total loss is Σₛ loss_s and the gradient returned
    is Σₛ ∂loss_s/∂params with each window's starting ensemble held fixed
    (truncated backpropagation through time). Each window's gradient is
    taken inside a forward ``lax.scan`` over the windows and added up, so
    reverse mode stores one window's values at a time: the memory does not
    grow with K (benchmarks/remat_memory.py). With ``window ≥ K`` the
    gradient is the exact one; with shorter windows it drops how a change
    of the parameters carries through the ensemble from one window into the
    next: a biased but often useful direction for learning dynamics
    parameters from long records, in the spirit of the truncated
    backpropagation of ROAD-EnKF (Chen, Sanz-Alonso & Willett, 2022). For
    the exact gradient of a long run use ``jax.grad`` with
    ``assimilate(remat=...)``.

    segment_loss: typically calls ``enkit.assimilate`` on the window's
    observations from E and returns a loss of this module of its result
    and ``result.ensemble`` (the window's ensemble after its last
    analysis). params: a pytree of arrays (the model's and filter's
    parameters). E0: (N, n). data: a pytree of arrays with a leading axis
    of K cycles (observations, a mask, ...), sliced along it per window.
    key: None, a PRNG key or an int seed; window s gets
    ``fold_in(key, s)`` (None when key is None). Returns (loss, gradient
    with the structure of params, final ensemble).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (cycles per window), got {window!r}")
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("data must hold at least one array with a leading axis of cycles")
    K = jnp.shape(leaves[0])[0]
    if any(jnp.ndim(a) < 1 or jnp.shape(a)[0] != K for a in leaves):
        raise ValueError("every array of data must have the same leading axis (cycles), got "
                         f"shapes {[jnp.shape(a) for a in leaves]}")
    if isinstance(key, int):
        key = jax.random.key(key)
    E0 = jnp.asarray(E0)
    window = min(window, K)
    S = K // window
    grad_fn = jax.value_and_grad(segment_loss, has_aux=True)

    def one(E, d, s):
        k = None if key is None else jax.random.fold_in(key, s)
        (value, E_end), g = grad_fn(params, jax.lax.stop_gradient(E), d, k)
        return value, g, E_end

    def body(carry, inputs):
        E, total, grads = carry
        value, g, E_end = one(E, *inputs)
        return (E_end, total + value, jax.tree_util.tree_map(jnp.add, grads, g)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    head = jax.tree_util.tree_map(
        lambda a: jnp.reshape(a[:S * window], (S, window, *jnp.shape(a)[1:])), data)
    total0 = jnp.zeros((), E0.dtype)
    (E, total, grads), _ = jax.lax.scan(body, (E0, total0, zeros), (head, jnp.arange(S)))
    if S * window < K:
        tail = jax.tree_util.tree_map(lambda a: a[S * window:], data)
        value, g, E = one(E, tail, S)
        total = total + value
        grads = jax.tree_util.tree_map(jnp.add, grads, g)
    return total, grads, E
