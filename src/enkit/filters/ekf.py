"""Extended Kalman filter, EKF (Jazwinski 1970; Gelb 1974).

The Gaussian N(x̄, P) is propagated by the model linearised at the mean,
with Jacobians by forward-mode autodiff (``jax.jacfwd``):

- forecast (``ekf_forecast``, one model step): ``x̄ ← M(x̄)``,
  ``P ← 𝐌 P 𝐌ᵀ + Q`` with ``𝐌 = ∂M/∂x(x̄)``;
- analysis (``ekf_update``): ``𝐇 = ∂h/∂x(x̄)``, ``S = 𝐇 P 𝐇ᵀ + R``,
  ``K = P 𝐇ᵀ S⁻¹``, ``x̄ₐ = x̄ + K (y − h(x̄))``, Joseph-form ``Pₐ``
  (``kalman_update`` on the linearisation).

For a linear model and h it is the Kalman filter. ``ekf_filter`` cycles
both in one compiled ``lax.scan``.

**Why the full EKF has its own loop.** The analysis alone is in the uniform
signature already: ``enkit.kalman(E, y, h, R)`` linearises a callable h at
the ensemble mean, updates the sample mean and covariance exactly and
returns an ensemble carrying them, so it runs in ``enkit.assimilate``. The
EKF's forecast covariance ``𝐌 P 𝐌ᵀ`` needs the model's Jacobian at the
mean; the driver only propagates members through the model, and neither a
scheme nor a driver step (inflation, rank reduction) is given the model.
Propagating members gives ``(M(x̄ + δ) − M(x̄))`` — a finite difference
of the model, not its Jacobian — so in the driver ``kalman`` is the
ensemble-propagated filter (for a linear model, again exactly the Kalman
filter; for a nonlinear one, use ``ukf`` for the unscented variant), while
``ekf_filter`` is the EKF.

References: Jazwinski (1970), "Stochastic Processes and Filtering Theory";
Gelb (ed., 1974), "Applied Optimal Estimation", MIT Press.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_bool, check_number
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator, linearize
from enkit.filters._gaussian import (
    GaussianFilterResult,
    check_gaussian,
    gaussian_filter_scan,
    model_noise_matrix,
    prepare_cycle,
)
from enkit.filters.kalman import check_observation, kalman_update

__all__ = ["ekf_filter", "ekf_forecast", "ekf_update"]


def ekf_update(mean: ArrayLike, cov: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *,
               joseph: bool = True) -> tuple[Array, Array]:
    """EKF analysis of N(mean, cov): ``kalman_update`` with ``𝐇 = ∂h/∂x(x̄)``
    (``jax.jacfwd``) and the innovation ``y − h(x̄)``.

    mean: (n,); cov: (n, n); y: (m,); h: callable ``(n,) -> (m,)`` or (m, n)
    matrix; R: covariance operator or array; joseph: Joseph-form covariance.
    Returns ``(mean_a (n,), cov_a (n, n))``.
    """
    check_bool("joseph", joseph)
    mean, cov = check_gaussian(mean, cov, names=("mean", "cov"))
    y = jnp.asarray(y, mean.dtype)
    if y.ndim == 1 and y.shape[0] == 0:
        return mean, cov
    if callable(h):
        hx = jax.eval_shape(h, mean)
        if hx.shape != y.shape:
            raise ValueError(f"h must map one state of shape {mean.shape} to shape (m,) = "
                             f"{y.shape} to match y, but it returned shape {hx.shape}")
    else:
        check_observation(y, jnp.asarray(h), mean.shape[0])
    R = as_covariance(R, y.shape[0]).astype(mean.dtype)
    return _update(mean, cov, y, h, R, joseph)


def _update(mean, cov, y, h, R, joseph=True):
    H, y_lin = linearize(h, mean, y)  # y_lin − H x̄ = y − h(x̄)
    return kalman_update(mean, cov, y_lin, H, R, joseph=joseph)


def ekf_forecast(model: Callable[[Array], Array], mean: ArrayLike, cov: ArrayLike, *,
                 Q: Any = None, inflation: ArrayLike = 1.0) -> tuple[Array, Array]:
    """One EKF forecast step: ``x̄ ← M(x̄)``, ``P ← ρ 𝐌 P 𝐌ᵀ + Q`` with the
    Jacobian ``𝐌 = ∂M/∂x(x̄)`` (at the mean before the step) by ``jax.jacfwd``
    (a JAX-differentiable model).

    model: ``(n,) -> (n,)``; mean: (n,); cov: (n, n); Q: None or a covariance
    of dimension n; inflation: ρ > 0, the factor of each step (1: none;
    DAPPER's ``ExtKF(infl=c)`` is ρ = c^Δt). Returns ``(mean (n,), cov (n, n))``.
    """
    mean, cov = check_gaussian(mean, cov, names=("mean", "cov"))
    out = jax.eval_shape(model, mean)
    if out.shape != mean.shape:
        raise ValueError(f"model must map a state of shape {mean.shape} to the same shape, "
                         f"got {out.shape}")
    Qd = model_noise_matrix(Q, mean.shape[0], mean.dtype)
    check_number("inflation", inflation, low=0.0)
    return _forecast(model, mean, cov, Qd, jnp.asarray(inflation, mean.dtype))


def _forecast(model, mean, cov, Q, inflation):
    f = lambda x: model(x).astype(mean.dtype)  # noqa: E731
    M = jax.jacfwd(f)(mean)
    P = inflation * (M @ cov @ M.T) + Q
    return f(mean), 0.5 * (P + P.T)


def _ekf_forecast_step(args, mean, cov):
    model, _, _, Q, inflation = args
    return _forecast(model, mean, cov, Q, inflation)


def _ekf_analysis_step(args, mean, cov, y):
    _, h, R, _, _ = args
    if R is None:
        return mean, cov
    return _update(mean, cov, y, h, R)


def ekf_filter(
    model: Callable[[Array], Array],
    mean0: ArrayLike,
    cov0: Any,
    observations: ArrayLike,
    *,
    h: ObservationOperator,
    R: Any,
    Q: Any = None,
    steps_per_obs: int = 1,
    inflation: ArrayLike = 1.0,
) -> GaussianFilterResult:
    """Cycle EKF forecasts (``ekf_forecast``, Q after every model step) and
    analyses (``ekf_update``, Joseph form) in one compiled ``lax.scan``.

    For each analysis time k = 1..K: ``steps_per_obs`` forecast steps, then
    the analysis of ``observations[k − 1]``. model: one model step
    ``(n,) -> (n,)``, JAX-differentiable (a pytree such as
    ``enkit.models.Lorenz63`` or any function); mean0: (n,); cov0: a
    covariance of dimension n; observations: (K, m); h: callable or (m, n)
    matrix; R: covariance operator or array; Q: None or the model-error
    covariance per model step; steps_per_obs: int ≥ 1; inflation: ρ > 0,
    the factor on 𝐌 P 𝐌ᵀ at every model step (a leaf). Returns a
    ``GaussianFilterResult``. Compiled once per shape: a second call with
    new values reuses the program. Dense (K, m) observations only (see the
    module docstring for the driver).

    Reference: Jazwinski (1970); Gelb (1974).
    """
    model, mean0, cov0, ys, h, R, Qd, steps = prepare_cycle(
        model, mean0, cov0, observations, h, R, Q, steps_per_obs)
    check_number("inflation", inflation, low=0.0)
    args = (model, h, R, Qd, jnp.asarray(inflation, mean0.dtype))
    return gaussian_filter_scan(_ekf_forecast_step, _ekf_analysis_step, args,
                                mean0, cov0, ys, steps=steps)
