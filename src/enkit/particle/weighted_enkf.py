"""The EnKF as the proposal of a particle filter, with importance weights
from kernel density estimates of the prior and of the proposal."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp
from jax.typing import ArrayLike

from enkit._checks import is_concrete
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator, observe
from enkit.filters.enkf import enkf
from enkit.particle._common import (
    ParticleAnalysis,
    as_operand,
    check_threshold,
    check_weights,
    finish,
    need_key,
    prior_log_weights,
    resample_if,
)
from enkit.particle.bootstrap import gaussian_log_likelihood
from enkit.particle.resampling import (
    normalize_log_weights,
    scott_bandwidth,
    systematic,
    uniform_log_weights,
    weighted_covariance_root,
)

__all__ = ["kde_log_density", "kde_weighted_enkf"]


def kde_log_density(X: ArrayLike, centres: ArrayLike, log_w: ArrayLike, *,
                    bandwidth: ArrayLike) -> Array:
    """Log of the Gaussian kernel density estimate

        p̂(x) = Σᵢ w̄ᵢ N(x; cᵢ, h² C_w)

    at every row of X, with C_w the reliability-weighted covariance of the
    centres (``weighted_covariance_root``; scipy's ``gaussian_kde`` with
    ``weights=`` and ``bw_method=h`` is the same estimate). X: (M, n)
    points; centres: (N, n); log_w: (N,) their log-weights; bandwidth: the
    factor h > 0. Returns (M,). Needs C_w nonsingular (N > n, centres not
    on a hyperplane); forms the n × n Cholesky factor and the (M, N)
    distances.
    """
    X = jnp.asarray(X)
    centres = jnp.asarray(centres, X.dtype)
    n = X.shape[-1]
    C12 = weighted_covariance_root(centres, log_w)
    L = jnp.linalg.cholesky(C12.T @ C12) * jnp.asarray(bandwidth, X.dtype)
    Wx = solve_triangular(L, X.T, lower=True).T  # whitened points, (M, n)
    Wc = solve_triangular(L, centres.T, lower=True).T
    d2 = (jnp.sum(Wx * Wx, 1)[:, None] + jnp.sum(Wc * Wc, 1)[None, :] - 2.0 * Wx @ Wc.T)
    d2 = jnp.maximum(d2, 0.0)
    log_norm = jnp.sum(jnp.log(jnp.diagonal(L))) + 0.5 * n * jnp.log(2.0 * jnp.pi)
    log_wbar = normalize_log_weights(jnp.asarray(log_w, X.dtype))
    return logsumexp(log_wbar[None, :] - 0.5 * d2, axis=1) - log_norm


def kde_weighted_enkf(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *,
                      key: Array | None = None, log_weights: ArrayLike | None = None,
                      scheme: Callable = enkf, bandwidth: ArrayLike | None = None,
                      threshold: ArrayLike = 0.5,
                      resampler: Callable = systematic) -> ParticleAnalysis:
    """Importance-weighted EnKF: the EnKF analysis members as the proposal
    of a particle filter, weighted by prior × likelihood over a kernel
    density estimate of the proposal.

    With forecast particles xᵢ of log-weights log w̄ᵢ, the analysis members
    x̃ⱼ = ``scheme``(E, y, h, R)ⱼ (the stochastic ``enkf`` by default) are
    reweighted by

        log w̃ⱼ = log p̂_f(x̃ⱼ) + log N(y; h(x̃ⱼ), R) − log q̂(x̃ⱼ)   (normalised),
        p̂_f(x) = Σᵢ w̄ᵢ N(x; xᵢ, h² C_f),   q̂(x) = (1/N) Σⱼ N(x; x̃ⱼ, h² C_a),

    p̂_f and q̂ the Gaussian kernel density estimates (``kde_log_density``)
    of the forecast (weighted; the prior) and of the analysis members (the
    proposal), C_f and C_a their covariances, h the bandwidth. Then, as in
    ``bootstrap_pf``, the particles are resampled when ESS < threshold·N.
    The EnKF moves the members towards the observation (few weights
    collapse, unlike the bootstrap filter), and the weights correct its
    Gaussian-linear assumption. For N → ∞ at a fixed h the weighted
    members target p̂_f(x) p(y | x) q(x)/q̂(x), with p̂_f the prior
    convolved with N(0, h² C_f) and q̂ the proposal density q convolved
    with N(0, h² C_a); both smoothings are O(h²) and vanish as h → 0 with
    N → ∞ (Scott's h ∝ N^(−1/(n+4))), where the target is the posterior.
    On a linear-Gaussian problem (prior N(μ, P), posterior N(xₐ, Pₐ), which
    the EnKF samples) the limit is Gaussian with precision
    ((1 + h²) P)⁻¹ + Hᵀ R⁻¹ H + h²/(1 + h²) Pₐ⁻¹ (tests/test_robust_enkf.py).
    The proposal's density is evaluated at its own members, its kernel
    included (leaving it out underestimates q̂ at isolated members and made
    single weights dominate in our trials: ESS ≈ 1 of N = 800). The
    evidence estimate is the importance-sampling mean log_evidence =
    log (1/N) Σⱼ exp(log p̂_f + log p(y|x̃) − log q̂).

    The weights are those of the weighted EnKF of Papadakis, Mémin, Cuzol
    & Gengembre (2010) (the EnKF analysis as proposal, w ∝ prior ×
    likelihood / proposal), with the prior and proposal densities, which
    that paper takes in closed form from a Gaussian model noise, replaced
    here by kernel density estimates of the ensembles (Silverman 1986), so
    that no transition density is needed: this KDE form is enkit's, not a
    published algorithm.

    E: (N, n) forecast particles; y: (m,); h: callable on one member or
    (m, n) matrix; R: covariance operator or array (m,); key: PRNG key
    (required: the EnKF's perturbations and the resampling); log_weights:
    (N,) of the forecast (None: uniform); scheme: the proposal analysis
    ``scheme(E, y, h, R, *, key) -> (N, n)`` (``enkf`` default; any
    enkit scheme); bandwidth: the kernel factor h (None:
    ``scott_bandwidth(N, n)``; array leaf); threshold, resampler: as
    ``bootstrap_pf``. Needs N > n (nonsingular kernel covariances); costs
    O(N² n + n³). Returns a ``ParticleAnalysis``; degenerate weights raise
    ``WeightDegeneracyError`` on concrete values and give NaN particles
    under jit, as in ``bootstrap_pf``.

    References: Papadakis, Mémin, Cuzol & Gengembre (2010), "Data
    assimilation with the weighted ensemble Kalman filter", Tellus A 62;
    Silverman (1986), "Density Estimation for Statistics and Data Analysis".
    """
    E = jnp.asarray(E)
    if E.ndim != 2:
        raise ValueError(f"E must have shape (N, n), got {E.shape}")
    N, n = E.shape
    if N <= n:
        raise ValueError(f"kde_weighted_enkf needs more members than state entries (N > n) "
                         f"for nonsingular kernel covariances, got N = {N}, n = {n}")
    key = need_key(key, "kde_weighted_enkf")
    check_threshold(threshold)
    if not callable(scheme):
        raise TypeError(f"scheme must be an analysis scheme(E, y, h, R, *, key), got "
                        f"{type(scheme).__name__}")
    if bandwidth is None:
        bandwidth = scott_bandwidth(N, n)
    elif is_concrete(bandwidth) and not float(bandwidth) > 0.0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth!r}")
    y = jnp.asarray(y, E.dtype)
    if y.ndim != 1:
        raise ValueError(f"y must have shape (m,), got {y.shape}")
    R = as_covariance(R, y.shape[0], name="R").astype(E.dtype)
    log_prior = prior_log_weights(log_weights, N, E.dtype)
    k_a, k_r = jax.random.split(key)
    Ea = scheme(E, y, h, R, key=k_a)  # validates E, y, h on concrete values
    result, log_lik = _weigh(E, jnp.asarray(Ea, E.dtype), y, as_operand(h), R, k_r, log_prior,
                             bandwidth, threshold, resampler=resampler)
    check_weights(jnp.zeros(N, E.dtype), log_lik, "kde_weighted_enkf")
    return result


@partial(jax.jit, static_argnames=("resampler",))
def _weigh(E, Ea, y, h, R, key, log_prior, bandwidth, threshold, *, resampler):
    """The weights and resampling of ``kde_weighted_enkf``: (ParticleAnalysis,
    the unnormalised log-weights log p̂_f + log p(y|x̃) − log q̂)."""
    N = E.shape[0]
    log_f = kde_log_density(Ea, E, log_prior, bandwidth=bandwidth)
    log_q = kde_log_density(Ea, Ea, uniform_log_weights(N, E.dtype), bandwidth=bandwidth)
    log_lik = gaussian_log_likelihood(observe(h, Ea), y, R)
    log_w = log_f + log_lik - log_q
    log_z = logsumexp(log_w) - jnp.log(N)
    degenerate = jnp.any(jnp.isnan(log_w)) | ~jnp.isfinite(log_z)
    log_w = jnp.where(degenerate, jnp.nan, normalize_log_weights(log_w))
    ancestors, log_after, ess, resampled = resample_if(key, log_w, threshold, resampler)
    E_new = jnp.where(resampled, Ea[ancestors], Ea)
    return finish(E_new, log_after, ess, resampled, log_z, degenerate), log_f + log_lik - log_q


kde_weighted_enkf.particle = True
