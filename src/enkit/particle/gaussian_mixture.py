"""The Gaussian-mixture (kernel) filter: every particle the centre of a
Gaussian kernel, each kernel updated by a Kalman step."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_bool, is_concrete
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator
from enkit.particle._common import (
    ParticleAnalysis,
    as_operand,
    check_threshold,
    check_weights,
    need_key,
    prior_log_weights,
)
from enkit.particle._mixture import mixture_analysis
from enkit.particle.optimal import observation_matrix
from enkit.particle.resampling import (
    silverman_bandwidth,
    systematic,
    weighted_covariance_root,
    weighted_mean,
)

__all__ = ["gaussian_mixture_filter"]


def gaussian_mixture_filter(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *,
                            key: Array | None = None, log_weights: ArrayLike | None = None,
                            bandwidth: ArrayLike | None = None, shrink: bool = True,
                            threshold: ArrayLike = 0.5,
                            resampler: Callable = systematic) -> ParticleAnalysis:
    """Gaussian-mixture (kernel) filter analysis (Anderson & Anderson 1999;
    Hoteit et al. 2008; Stordal et al. 2011).

    The forecast particles, with weights w̄ᵢ, weighted mean x̄ and weighted
    covariance P (``weighted_covariance_root``), are read as the mixture

        p(x) ≈ Σᵢ w̄ᵢ N(x; cᵢ, h² P),   cᵢ = x̄ + a (xᵢ − x̄),

    with bandwidth h and a = √(1 − h²) (``shrink=True``, West 1993; Liu &
    West 2001: the mixture keeps the ensemble's mean and covariance) or
    a = 1 (``shrink=False``, the kernels of Anderson & Anderson 1999 and
    Hoteit et al. 2008, centred on the particles: the mixture's covariance
    is (1 + h²) P). Each kernel takes the Kalman update with y = H x + v,
    v ~ N(0, R), and its weight the kernel's predictive likelihood:

        S = h² H P Hᵀ + R,   K = h² P Hᵀ S⁻¹,
        log w̄ᵢ ← log w̄ᵢ + log N(y; H cᵢ, S)   (then normalised),
        μᵢ = cᵢ + K (y − H cᵢ),   Pₐ = (I − K H) h² P.

    The kernels are resampled when ESS < threshold·N, and one particle is
    drawn from each posterior kernel, xᵢᵃ = c_{aᵢ} + ηᵢ + K (y − H(c_{aᵢ}
    + ηᵢ) − vᵢ), ηᵢ = h Lᵀ zᵢ ~ N(0, h² P) with LᵀL = P (L the triangular
    factor of a QR of C½ when N > n, else C½ itself), vᵢ ~ N(0, R) (law
    N(μ_{aᵢ}, Pₐ), no square root of Pₐ taken; the ensemble so represents
    the posterior mixture, and the next analysis re-reads it as kernels).

    Limits: h = 0 is the bootstrap PF (weights N(y; H xᵢ, R), no jitter);
    h = 1 with ``shrink`` puts every kernel at x̄ with covariance P: one
    Gaussian, uniform weights, and draws from the Kalman posterior of
    N(x̄, P) (the EnKF's Gaussian assumption). Stordal et al.'s adaptive
    weight interpolation towards 1/N is not applied (its weights are
    biased); use ``threshold`` and ``bandwidth`` instead.

    E: (N, n) forecast particles; y: (m,); h: (m, n) matrix or a callable
    (its Jacobian at the weighted mean is H: a linearised update for a
    nonlinear h); R: covariance operator (or array) (m,). key: PRNG key
    (required). log_weights: (N,) or None (uniform). bandwidth: h, a
    scalar in [0, 1] with ``shrink`` (any h ≥ 0 without), None for
    ``silverman_bandwidth(N, n)`` (capped at 1); an array leaf (a sweep is a vmap).
    threshold, resampler: as ``bootstrap_pf``. Costs O(N n min(N, n)) for
    the kernel draws and O(m³ + N n m); the only n × n matrix is the
    triangular factor when N > n.
    Returns a ``ParticleAnalysis``; degenerate weights as in
    ``bootstrap_pf``. DAPPER's nearest relative is ``PFxN`` (resampling
    from a kernel density without the kernel Kalman update); it has no
    Gaussian-mixture filter.

    References: Anderson & Anderson (1999), MWR 127, 2741–2758; Hoteit,
    Pham, Triantafyllou & Korres (2008), MWR 136, 317–334; Stordal,
    Karlsen, Nævdal, Skaug & Vallès (2011), Comput. Geosci. 15, 293–305;
    Liu & West (2001), in Sequential Monte Carlo Methods in Practice.
    """
    E = jnp.asarray(E)
    N, n = E.shape
    key = need_key(key, "gaussian_mixture_filter")
    check_threshold(threshold)
    check_bool("shrink", shrink)
    if bandwidth is None:
        bandwidth = min(silverman_bandwidth(N, n), 1.0)  # above 1 only for N(n + 2) < 4
    elif is_concrete(bandwidth):
        b = float(bandwidth)
        if not (b >= 0.0 and (b <= 1.0 or not shrink)):
            raise ValueError("bandwidth must be in [0, 1] with shrink=True (a = √(1 − h²)), "
                             f"≥ 0 without; got {bandwidth!r}")
    y = jnp.asarray(y, E.dtype)
    R = as_covariance(R, y.shape[0], name="R").astype(E.dtype)
    log_prior = prior_log_weights(log_weights, N, E.dtype)
    result, log_lik = _gmf(E, y, as_operand(h), R, jnp.asarray(bandwidth, E.dtype), key,
                           log_prior, threshold, shrink=shrink, resampler=resampler)
    check_weights(log_prior, log_lik, "gaussian_mixture_filter")
    return result


@partial(jax.jit, static_argnames=("shrink", "resampler"))
def _gmf(E, y, h, R, bandwidth, key, log_prior, threshold, *, shrink, resampler):
    """The compiled body of ``gaussian_mixture_filter``: (ParticleAnalysis,
    the kernels' predictive log-likelihoods)."""
    N, n = E.shape
    xbar = weighted_mean(E, log_prior)
    H = observation_matrix(h, xbar)
    C12 = weighted_covariance_root(E, log_prior)  # P = C½ᵀ C½
    if shrink:
        C = xbar + jnp.sqrt(1.0 - bandwidth ** 2) * (E - xbar)
    else:
        C = E
    h2 = bandwidth ** 2
    Y12 = C12 @ H.T
    k_resample, k_eta, k_r = jax.random.split(key, 3)
    if N > n:  # P = C½ᵀ C½ = R̃ᵀ R̃ with C½ = Q̃ R̃ (QR, stable when P is singular)
        root = jnp.linalg.qr(C12, mode="r")
    else:
        root = C12
    Eta = bandwidth * jax.random.normal(k_eta, (N, root.shape[0]), dtype=E.dtype) @ root
    return mixture_analysis((k_resample, k_r), C, Eta, log_prior, y, H, R, h2 * C12.T @ Y12,
                            h2 * Y12.T @ Y12, 1.0, threshold, resampler)


gaussian_mixture_filter.particle = True
