"""Unscented Kalman filter, UKF (Julier & Uhlmann 1997; Wan & van der Merwe 2000).

The Gaussian N(x̄, P) is carried by its 2n + 1 scaled unscented sigma
points (``enkit.sigma_points``: ``χ₀ = x̄``, ``χ±ⱼ = x̄ ± s Lⱼ``,
``P = L Lᵀ``, s = √(n + λ), λ = α²(n + κ) − n) with the weights wᵐ, wᶜ.

- forecast: every sigma point goes through the model, and
  ``x̄_f = Σ wᵐᵢ M(χᵢ)``, ``P_f = Σ wᶜᵢ (M(χᵢ) − x̄_f)(·)ᵀ + Q``;
- analysis: fresh sigma points of (x̄_f, P_f) go through h, giving ȳ,
  ``P_yy``, ``P_xy`` (``unscented_transform``), and with ``S = P_yy + R``,
  ``K = P_xy S⁻¹``: ``x̄_a = x̄_f + K (y − ȳ)``, ``P_a = P_f − K S Kᵀ``.

For a linear model and h every step is exact: the UKF is the Kalman filter.

**In the driver.** The ensemble of ``enkit.assimilate`` *is* the sigma-point
set: ``E0 = ukf_ensemble(x̄₀, P₀)`` (2n + 1 members), the driver's forecast
propagates each member (each sigma point) through the model, and the
scheme ``ukf`` (uniform signature) reads (x̄_f, P_f) from the propagated
points with the UT weights, adds ``model_noise`` (Q over the whole
forecast window), does the analysis above and returns the sigma points of
(x̄_a, P_a). With ``steps_per_obs > 1`` the points are propagated through
the whole window without being redrawn (the UT of the window's map) and Q
is added once; ``ukf_filter`` redraws them and adds Q after every model
step (the textbook UKF). Both agree for steps_per_obs = 1. The set is
symmetric, so the driver's plain ensemble mean of the analysis is x̄_a
exactly; with the default cubature weights (α = 1, β = 0, κ = 0: s = √n,
wᵐ₀ = 0) its plain sample covariance (divisor N − 1 = 2n) is P_a too, so
the driver's spreads are the UKF's. The forecast's plain mean weighs χ₀
by 1/(2n + 1) instead of wᵐ₀ and is close to, not equal to, x̄_f. Do not
combine ``ukf`` with inflation steps that perturb members or with the
driver's stochastic ``model_noise`` (use the scheme's ``model_noise``):
they break the sigma-point structure.

References: Julier & Uhlmann (1997), SPIE 3068; Wan & van der Merwe (2000),
IEEE AS-SPCC, "The unscented Kalman filter for nonlinear estimation".
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_number
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator, prepare_analysis
from enkit.filters._gaussian import (
    GaussianFilterResult,
    as_function,
    check_gaussian,
    gaussian_filter_scan,
    model_noise_matrix,
    prepare_cycle,
)
from enkit.filters.kalman import check_observation
from enkit.linalg import spd_solve
from enkit.sigma_points import (
    sigma_point_moments,
    unscented_sigma_points,
    unscented_transform,
    unscented_weights,
)

__all__ = ["ukf", "ukf_ensemble", "ukf_filter", "ukf_forecast", "ukf_moments", "ukf_update"]


def _check_scaling(alpha, beta, kappa, n: int) -> None:
    check_number("alpha", alpha, low=0.0)
    check_number("beta", beta)
    check_number("kappa", kappa, low=-n)


def ukf_ensemble(mean: ArrayLike, cov: ArrayLike | None = None, *,
                 root: ArrayLike | None = None, alpha: ArrayLike = 1.0,
                 beta: ArrayLike = 0.0, kappa: ArrayLike = 0.0) -> Array:
    """The sigma-point ensemble of N(mean, cov): (2n + 1, n), rows
    ``(x̄, x̄ + sL₁ … x̄ + sLₙ, x̄ − sL₁ … x̄ − sLₙ)``, the ``E0`` of a UKF
    run through ``enkit.assimilate``. mean: (n,); cov: (n, n) positive
    definite, or root: any L with ``cov = L Lᵀ``; alpha, beta, kappa: the
    unscented scaling (must match the ``ukf`` scheme's)."""
    return unscented_sigma_points(mean, cov, root=root, alpha=alpha, beta=beta,
                                  kappa=kappa).points


def ukf_moments(E: ArrayLike, *, alpha: ArrayLike = 1.0, beta: ArrayLike = 0.0,
                kappa: ArrayLike = 0.0) -> tuple[Array, Array]:
    """The Gaussian (x̄, P) a sigma-point ensemble E (2n + 1, n) stands for:
    the UT-weighted mean and covariance of its rows (weights of the given
    scaling). Returns ((n,), (n, n))."""
    E = jnp.asarray(E)
    n = _sigma_dimension(E)
    _check_scaling(alpha, beta, kappa, n)
    _, wm, wc = unscented_weights(n, alpha=alpha, beta=beta, kappa=kappa, dtype=E.dtype)
    return sigma_point_moments(E, wm, wc)


def _sigma_dimension(E) -> int:
    if E.ndim != 2 or E.shape[0] != 2 * E.shape[1] + 1:
        raise ValueError(f"E must be a sigma-point ensemble of shape (2n + 1, n) (e.g. from "
                         f"enkit.ukf_ensemble), got shape {E.shape}")
    return E.shape[1]


def ukf_update(mean: ArrayLike, cov: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *,
               alpha: ArrayLike = 1.0, beta: ArrayLike = 0.0, kappa: ArrayLike = 0.0
               ) -> tuple[Array, Array]:
    """UKF analysis of N(mean, cov) given ``y = h(x) + ε``, ε ~ N(0, R):

        (ȳ, P_yy, P_xy) = UT of h at the sigma points of (mean, cov),
        S = P_yy + R,  K = P_xy S⁻¹,  x̄ₐ = x̄ + K (y − ȳ),  Pₐ = P − K S Kᵀ.

    mean: (n,); cov: (n, n) positive definite; y: (m,); h: callable
    ``(n,) -> (m,)`` or (m, n) matrix; R: covariance operator or array.
    Returns ``(mean_a (n,), cov_a (n, n))``; for a linear h it is
    ``kalman_update``. Reference: Wan & van der Merwe (2000).
    """
    mean, cov = check_gaussian(mean, cov, names=("mean", "cov"))
    n = mean.shape[0]
    y = jnp.asarray(y, mean.dtype)
    if not callable(h):
        check_observation(y, jnp.asarray(h), n)
    m = y.shape[0]
    _check_scaling(alpha, beta, kappa, n)
    if m == 0:
        return mean, cov
    R = as_covariance(R, m).astype(mean.dtype)
    return _update(mean, cov, y, as_function(h, mean.dtype), R, (alpha, beta, kappa))


def _update(mean, cov, y, h, R, scaling):
    alpha, beta, kappa = scaling
    sigma = unscented_sigma_points(mean, cov, alpha=alpha, beta=beta, kappa=kappa)
    ut = unscented_transform(h, sigma)
    if ut.mean.shape != y.shape:
        raise ValueError(f"h must map one state of shape {mean.shape} to shape (m,) = "
                         f"{y.shape} to match y, but it returned shape {ut.mean.shape}")
    S = ut.covariance + R.dense()
    K = spd_solve(S, ut.cross_covariance.T).T  # (n, m)
    mean_a = mean + K @ (y - ut.mean)
    cov_a = cov - K @ S @ K.T
    return mean_a, 0.5 * (cov_a + cov_a.T)


def ukf_forecast(model: Callable[[Array], Array], mean: ArrayLike, cov: ArrayLike, *,
                 Q: Any = None, inflation: ArrayLike = 1.0, alpha: ArrayLike = 1.0,
                 beta: ArrayLike = 0.0, kappa: ArrayLike = 0.0) -> tuple[Array, Array]:
    """One UKF forecast step: the UT of the model plus model error,
    ``x̄_f = Σ wᵐᵢ M(χᵢ)``, ``P_f = ρ Σ wᶜᵢ (M(χᵢ) − x̄_f)(·)ᵀ + Q``.
    model: ``(n,) -> (n,)`` (JAX-traceable); mean: (n,); cov: (n, n);
    Q: None or a covariance of dimension n; inflation: ρ > 0 (1: none).
    Returns ((n,), (n, n))."""
    mean, cov = check_gaussian(mean, cov, names=("mean", "cov"))
    _check_scaling(alpha, beta, kappa, mean.shape[0])
    Qd = model_noise_matrix(Q, mean.shape[0], mean.dtype)
    check_number("inflation", inflation, low=0.0)
    return _forecast(model, mean, cov, Qd, jnp.asarray(inflation, mean.dtype),
                     (alpha, beta, kappa))


def _forecast(model, mean, cov, Q, inflation, scaling):
    alpha, beta, kappa = scaling
    sigma = unscented_sigma_points(mean, cov, alpha=alpha, beta=beta, kappa=kappa)
    ut = unscented_transform(model, sigma)
    return ut.mean, inflation * ut.covariance + Q


def ukf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    model_noise: Any = None,
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 0.0,
    kappa: ArrayLike = 0.0,
) -> Array:
    """UKF analysis of a sigma-point ensemble (module docstring, "In the driver").

    E's rows are the forecast sigma points (2n + 1, n) (``ukf_ensemble`` at
    the start, then this scheme's output pushed through the model);
    ``(x̄_f, P_f) = ukf_moments(E)``, ``P_f += model_noise``, then
    ``ukf_update`` and the sigma points of (x̄ₐ, Pₐ) are returned. With no
    observations only model_noise is added (E comes back unchanged when
    there is none).

    E: (2n + 1, n); y: (m,); h: callable or (m, n) matrix; R: covariance
    operator or array; key: unused (deterministic); model_noise: None or Q
    (a covariance of dimension n) accumulated over the forecast window;
    alpha, beta, kappa: the unscented scaling (α > 0, κ > −n), the same as
    E0's. Returns (2n + 1, n).

    Reference: Wan & van der Merwe (2000), IEEE AS-SPCC.
    """
    del key
    E, y, _, R = prepare_analysis(E, y, h, R)
    n = _sigma_dimension(E)
    _check_scaling(alpha, beta, kappa, n)
    Qd = None if model_noise is None else model_noise_matrix(model_noise, n, E.dtype,
                                                             "model_noise")
    if y.shape[0] == 0 and Qd is None:
        return E
    mean, cov = ukf_moments(E, alpha=alpha, beta=beta, kappa=kappa)
    if Qd is not None:
        cov = cov + Qd
    if y.shape[0]:
        mean, cov = _update(mean, cov, y, as_function(h, E.dtype), R, (alpha, beta, kappa))
    return ukf_ensemble(mean, cov, alpha=alpha, beta=beta, kappa=kappa)


def _ukf_forecast_step(args, mean, cov):
    model, _, _, Q, inflation, scaling = args
    return _forecast(model, mean, cov, Q, inflation, scaling)


def _ukf_analysis_step(args, mean, cov, y):
    _, h, R, _, _, scaling = args
    if R is None:
        return mean, cov
    return _update(mean, cov, y, as_function(h, mean.dtype), R, scaling)


def ukf_filter(
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
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 0.0,
    kappa: ArrayLike = 0.0,
) -> GaussianFilterResult:
    """Cycle UKF forecasts (``ukf_forecast``, Q after every model step) and
    analyses (``ukf_update``) in one compiled ``lax.scan``.

    model: one model step ``(n,) -> (n,)``, JAX-traceable; mean0: (n,);
    cov0: covariance of dimension n; observations: (K, m); h: callable or
    (m, n) matrix; R: covariance operator or array; Q: None or the model
    error covariance per model step; steps_per_obs: model steps per
    analysis (int ≥ 1); inflation: ρ > 0, the factor on the propagated
    covariance at every model step; alpha, beta, kappa: the unscented scaling.
    Returns a ``GaussianFilterResult`` (means and covariances, forecast and
    analysis). Compiled once per shape: new values reuse the program.

    Reference: Wan & van der Merwe (2000), IEEE AS-SPCC.
    """
    model, mean0, cov0, ys, h, R, Qd, steps = prepare_cycle(
        model, mean0, cov0, observations, h, R, Q, steps_per_obs)
    _check_scaling(alpha, beta, kappa, mean0.shape[0])
    check_number("inflation", inflation, low=0.0)
    scaling = tuple(jnp.asarray(v, mean0.dtype) for v in (alpha, beta, kappa))
    args = (model, h, R, Qd, jnp.asarray(inflation, mean0.dtype), scaling)
    return gaussian_filter_scan(_ukf_forecast_step, _ukf_analysis_step, args,
                                mean0, cov0, ys, steps=steps)
