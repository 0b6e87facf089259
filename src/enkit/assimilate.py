"""L2 cycling driver: forecast → analysis → inflation, as one ``lax.scan``.

This is the compiled path for JAX-traceable models. Every cycle advances
each member ``steps_per_obs`` model steps (vmapped over members), calls an
L1 scheme with the uniform signature, inflates the analysis anomalies, and
records per-cycle statistics. Per-cycle keys are ``fold_in(key, k)``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_float, check_ndim
from enkit.covariance import as_covariance
from enkit.diagnostics import rmse
from enkit.ensemble import ensemble_spread
from enkit.filters._common import ObservationOperator
from enkit.inflation import InflationStep, MultiplicativeAnalysis, NoInflation
from enkit.models.twin import integrate

__all__ = ["AssimilationResult", "assimilate"]


class AssimilationResult(NamedTuple):
    """Per-cycle statistics of an assimilation run (K analysis times).

    forecast_mean, analysis_mean: (K, n); forecast_spread, analysis_spread:
    (K,) (``enkit.ensemble.ensemble_spread``; the forecast statistics are
    taken before any inflation, the analysis ones after it, on the ensemble
    that is carried forward);
    ensemble: (N, n) the final analysis ensemble.
    """

    forecast_mean: Array
    analysis_mean: Array
    forecast_spread: Array
    analysis_spread: Array
    ensemble: Array

    def rmse(self, truth: ArrayLike) -> Array:
        """Analysis RMSE per cycle against truth: (K, n) -> (K,)."""
        return rmse(self.analysis_mean, truth)

    def forecast_rmse(self, truth: ArrayLike) -> Array:
        """Forecast RMSE per cycle against truth: (K, n) -> (K,)."""
        return rmse(self.forecast_mean, truth)


def assimilate(
    model: Callable[[Array], Array],
    E0: ArrayLike,
    observations: ArrayLike,
    scheme: Callable[..., Array],
    *,
    h: ObservationOperator,
    R,
    key: Array | int | None = None,
    inflation: ArrayLike | InflationStep | None = None,
    steps_per_obs: int = 1,
) -> AssimilationResult:
    """Cycle an ensemble through K forecast–analysis steps, compiled once.

    For k = 1..K, with ``kₖ = fold_in(key, k)``:
    ``E ← model^{steps_per_obs}(E)`` (per member),
    ``E ← inflation.before_analysis(..., key=fold_in(kₖ, 1), E, ...)``,
    ``E ← scheme(E, y_k, h, R, key=fold_in(kₖ, 0))``,
    ``E ← inflation.after_analysis(..., key=fold_in(kₖ, 2), ...)``.

    model: JAX-traceable one-step map of one member ``(n,) -> (n,)``
    (e.g. ``enkit.models.Lorenz96()``); E0: (N, n) initial ensemble;
    observations: (K, m), one row per analysis time; scheme: an L1 scheme
    with the uniform signature (bind options with ``functools.partial``);
    h: callable or (m, n) matrix; R: covariance operator or array; key: PRNG
    key or integer seed (required by stochastic schemes, ignored otherwise);
    inflation: an ``enkit.inflation.InflationStep`` (or ``chain`` of steps),
    or a number λ for multiplicative inflation of the analysis anomalies, or
    None; steps_per_obs: model steps between analyses.
    Returns an ``AssimilationResult``.

    Model, scheme and a callable h are compiled in as static functions (a
    pytree model such as ``Lorenz96`` keeps its constants as traced leaves);
    a second call with new arrays of the same shapes does not recompile.
    """
    check_float("E0", E0)
    E0 = jnp.asarray(E0)
    check_ndim("E0", E0, 2, "(N, n): members on axis 0")
    check_finite("E0", E0)
    observations = jnp.asarray(observations, dtype=E0.dtype)
    check_ndim("observations", observations, 2, "(K, m): one row per analysis time")
    if not callable(scheme):
        raise TypeError(
            "scheme must be an analysis function such as enkit.etkf, "
            f"got {type(scheme).__name__}"
        )
    if not isinstance(steps_per_obs, int) or steps_per_obs < 1:
        raise ValueError(f"steps_per_obs must be a positive integer, got {steps_per_obs!r}")
    out = jax.eval_shape(model, E0[0])
    if out.shape != E0.shape[1:]:
        raise ValueError(
            f"model must map one member of shape {E0.shape[1:]} to the same shape, "
            f"got {out.shape}"
        )
    R = as_covariance(R, observations.shape[1]).astype(E0.dtype)
    if isinstance(key, int):
        key = jax.random.key(key)
    if inflation is None:
        inflation = NoInflation()
    elif not isinstance(inflation, InflationStep):
        inflation = MultiplicativeAnalysis(jnp.asarray(inflation, E0.dtype))
    return _run(
        _as_pytree(model),
        E0,
        observations,
        _as_pytree(scheme),
        _as_pytree(h),
        R,
        key,
        inflation,
        steps_per_obs=steps_per_obs,
    )


def _as_pytree(f):
    """Wrap a plain callable so jit treats it as static, keep pytrees as they are."""
    leaves = jax.tree_util.tree_leaves(f)
    if callable(f) and len(leaves) == 1 and leaves[0] is f:
        return jax.tree_util.Partial(f)
    return f


def _keys(key, k):
    """Per-cycle keys (scheme, before-analysis step, after-analysis step)."""
    if key is None:
        return None, None, None
    kk = jax.random.fold_in(key, k)
    return tuple(jax.random.fold_in(kk, i) for i in range(3))


def _cycle_step(model, scheme, h, R, key, inflation, steps_per_obs, carry, k, y):
    """One forecast–inflation–analysis–inflation cycle; returns (carry, stats)."""
    E, infl_state = carry
    k_scheme, k_before, k_after = _keys(key, k)
    Ef = jax.vmap(lambda x: integrate(model, x, steps_per_obs))(E)
    Eb, infl_state = inflation.before_analysis(infl_state, k_before, Ef, y, h, R, None)
    kwargs = {} if k_scheme is None else {"key": k_scheme}
    Ea = scheme(Eb, y, h, R, **kwargs)
    Ea, infl_state = inflation.after_analysis(infl_state, k_after, Eb, Ea)
    stats = (
        jnp.mean(Ef, axis=0),
        jnp.mean(Ea, axis=0),
        ensemble_spread(Ef),
        ensemble_spread(Ea),
    )
    return (Ea, infl_state), stats


@partial(jax.jit, static_argnames=("steps_per_obs",))
def _run(model, E0, observations, scheme, h, R, key, inflation, *, steps_per_obs):
    def body(carry, inputs):
        k, y = inputs
        return _cycle_step(model, scheme, h, R, key, inflation, steps_per_obs, carry, k, y)

    K = observations.shape[0]
    carry = (E0, inflation.init(E0))
    (E, _), (fm, am, fs, as_) = jax.lax.scan(
        body, carry, (jnp.arange(1, K + 1), observations)
    )
    return AssimilationResult(fm, am, fs, as_, E)
