"""What the Gaussian (mean, covariance) filters share: the result type, the
checks at their door and one ``lax.scan`` over forecast and analysis.

``ekf_filter`` and ``ukf_filter`` differ only in their forecast step
``(mean, cov) -> (mean, cov)`` and their analysis ``(mean, cov, y) -> (mean,
cov)``; ``gaussian_filter_scan`` cycles any such pair.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from enkit._checks import check_finite, check_float, check_ndim
from enkit.covariance import Covariance, as_covariance
from enkit.filters.rrsqrt import (
    _is_pytree,
    _observation_operator,
    check_observations,
    check_rank,
)


class GaussianFilterResult(NamedTuple):
    """What ``ekf_filter`` and ``ukf_filter`` return, one row per analysis time (K).

    forecast_mean, analysis_mean: (K, n); forecast_covariance,
    analysis_covariance: (K, n, n); mean, covariance: the final analysis
    (n,), (n, n).
    """

    forecast_mean: Array
    analysis_mean: Array
    forecast_covariance: Array
    analysis_covariance: Array
    mean: Array
    covariance: Array


def check_gaussian(mean, cov, *, names=("mean0", "cov0")) -> tuple[Array, Array]:
    """mean: (n,) finite float; cov: covariance operator or array of dimension n,
    returned dense (n, n) in mean's dtype."""
    check_float(names[0], mean)
    mean = jnp.asarray(mean)
    check_ndim(names[0], mean, 1, "(n,)")
    check_finite(names[0], mean)
    n = mean.shape[0]
    if not isinstance(cov, Covariance):
        check_float(names[1], cov)
        check_finite(names[1], cov)
    try:
        C = as_covariance(cov, n)
    except ValueError as err:
        raise ValueError(f"{names[1]} must be a covariance of dimension n = {n} (a scalar, "
                         f"(n,) variances or an (n, n) matrix): {err}") from None
    return mean, C.astype(mean.dtype).dense()


def model_noise_matrix(Q, n: int, dtype, name: str = "Q") -> Array:
    """Q (None: zero) as a dense (n, n) matrix."""
    if Q is None:
        return jnp.zeros((n, n), dtype)
    if not isinstance(Q, Covariance):
        check_float(name, Q)
        check_finite(name, Q)
    try:
        C = as_covariance(Q, n)
    except ValueError as err:
        raise ValueError(f"{name} must be None or a covariance of dimension n = {n} (a scalar, "
                         f"(n,) variances or an (n, n) matrix): {err}") from None
    return C.astype(dtype).dense()


def prepare_cycle(model, mean0, cov0, observations, h, R, Q, steps_per_obs):
    """Validate the arguments of a Gaussian filter cycle; returns them in the
    form the scan takes (pytrees for model and h, a dense Q, R or None)."""
    if not callable(model):
        raise TypeError(f"model must be a callable (n,) -> (n,) (one model step), got "
                        f"{type(model).__name__}")
    mean0, cov0 = check_gaussian(mean0, cov0)
    n = mean0.shape[0]
    steps = check_rank("steps_per_obs", steps_per_obs)
    ys = check_observations(observations, mean0.dtype)
    K, m = ys.shape
    h = _observation_operator(h, n, m)
    h = (h if _is_pytree(h) else jax.tree_util.Partial(h)) if callable(h) else \
        jnp.asarray(h, mean0.dtype)
    R = as_covariance(R, m).astype(mean0.dtype) if m else None
    out = jax.eval_shape(model, mean0)
    if out.shape != mean0.shape:
        raise ValueError(f"model must map a state of shape {mean0.shape} to the same shape, "
                         f"got {out.shape}")
    model = model if _is_pytree(model) else jax.tree_util.Partial(model)
    return model, mean0, cov0, ys, h, R, model_noise_matrix(Q, n, mean0.dtype), steps


def as_function(h, dtype):
    """A matrix h as the function ``x ↦ H x``; a callable as it is."""
    if callable(h):
        return h
    H = jnp.asarray(h, dtype)
    return lambda x: H @ x


@partial(jax.jit, static_argnames=("forecast", "analysis", "steps"))
def gaussian_filter_scan(forecast, analysis, args, mean0, cov0, ys, *, steps):
    """Cycle ``steps`` forecasts ``forecast(args, mean, cov)`` and one
    ``analysis(args, mean, cov, y)`` per row of ys in one ``lax.scan``.
    forecast, analysis: static functions; args: a pytree of their data."""

    def one_cycle(state, y):
        def step(carry, _):
            return forecast(args, *carry), None

        (mean_f, cov_f), _ = jax.lax.scan(step, state, None, length=steps)
        mean_a, cov_a = analysis(args, mean_f, cov_f, y)
        return (mean_a, cov_a), (mean_f, mean_a, cov_f, cov_a)

    (mean, cov), (xf, xa, Pf, Pa) = jax.lax.scan(one_cycle, (mean0, cov0), ys)
    return GaussianFilterResult(xf, xa, Pf, Pa, mean, cov)
