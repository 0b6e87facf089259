"""The Gaussian-mixture analysis the optimal-proposal, ensemble Kalman
particle and Gaussian-mixture filters share: a prior Σᵢ w̄ᵢ N(cᵢ, Σ)
(centres cᵢ, one kernel covariance Σ) under a linear-Gaussian likelihood,
possibly tempered, ℓ(x)^β = N(y; H x, R)^β, β ∈ [0, 1].

Its posterior is again a mixture (Alspach & Sorenson 1972),

    T = β H Σ Hᵀ + R,   K = β Σ Hᵀ T⁻¹  (the gain with R/β),
    αᵢ ∝ w̄ᵢ ∫ ℓ(x)^β N(x; cᵢ, Σ) dx,   μᵢ = cᵢ + K (y − H cᵢ),
    Σₐ = (I − K H) Σ,

and one particle per (resampled) component is drawn without a square
root of Σₐ: xᵢ = c_{aᵢ} + ηᵢ + K (y − H(c_{aᵢ} + ηᵢ) − vᵢ), ηᵢ ~ N(0, Σ),
vᵢ ~ N(0, R/β), whose covariance (I − KH) Σ (I − KH)ᵀ + K (R/β) Kᵀ is
(I − K H) Σ exactly. Every formula is written with β multiplying, never
dividing, so β = 0 (no likelihood: α = w̄, K = 0) and β = 1 are regular.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from enkit.covariance import Dense
from enkit.particle._common import finish, resample_if, reweight
from enkit.particle.bootstrap import gaussian_log_likelihood


def tempered_predictive(HC, y, HSHt, R, beta):
    """log ∫ N(y; H x, R)^β N(x; cᵢ, Σ) dx for every centre, and T:

        −½ β dᵢᵀ T⁻¹ dᵢ − ½ log det T + ½ (1 − β)(log det R + m log 2π)
        − ½ m log 2π,   dᵢ = y − H cᵢ,  T = β H Σ Hᵀ + R.

    (β = 1: log N(y; H cᵢ, H Σ Hᵀ + R); β = 0: 0.) HC: (N, m) H cᵢ;
    y: (m,); HSHt: (m, m) H Σ Hᵀ; R: covariance operator (m,); beta:
    scalar in [0, 1]. Returns ((N,), T as a ``Dense`` operator)."""
    m = HC.shape[-1]
    T = Dense(beta * HSHt + R.dense())
    root = jnp.sqrt(beta)
    log_lik = gaussian_log_likelihood(root * HC, root * y, T)
    return log_lik + 0.5 * (1.0 - beta) * (R.log_pdet + m * jnp.log(2.0 * jnp.pi)), T


def corrected(X, HX, V, y, Gt, beta):
    """The perturbed-observation correction X + (β (y − H X) − √β V) Gᵀ,
    i.e. X + K (y − H X − V/√β) with K = β Gᵀ (the gain with R/β), for
    Gt = T⁻¹ H Σ (m, n). X: (N, n); HX: (N, m) the observation of X (or
    its linearisation); V: (N, m) draws of N(0, R)."""
    return X + (beta * (y - HX) - jnp.sqrt(beta) * V) @ Gt


def mixture_analysis(keys, C, Eta, log_prior, y, H, R, SHt, HSHt, beta, threshold,
                     resampler):
    """Weight, resample and draw the posterior of Σᵢ w̄ᵢ N(cᵢ, Σ) under
    ℓ(x)^β (see the module docstring). keys: (resampling key, key of the
    draws vᵢ); C: (N, n) centres; Eta: (N, n) draws ηᵢ ~ N(0, Σ);
    log_prior: (N,) normalised; y: (m,); H: (m, n); R: covariance operator;
    SHt: (n, m) Σ Hᵀ; HSHt: (m, m) H Σ Hᵀ; beta, threshold: scalars.
    H may also be a function of a batch, H(X) (N, m), in place of X Hᵀ (an
    observation operator linearised in the ensemble's terms: then SHt and
    HSHt are ensemble estimates). Returns (ParticleAnalysis, the
    components' log-likelihoods (N,))."""
    k_resample, k_r = keys
    N = C.shape[0]
    observe = H if callable(H) else (lambda X: X @ H.T)
    log_lik, T = tempered_predictive(observe(C), y, HSHt, R, beta)
    log_w, log_z, degenerate = reweight(log_prior, log_lik)
    ancestors, log_after, ess, resampled = resample_if(k_resample, log_w, threshold, resampler)
    X = jnp.where(resampled, C[ancestors], C) + Eta
    Gt = cho_solve((T.factor, True), SHt.T)  # T⁻¹ H Σ, (m, n)
    E_new = corrected(X, observe(X), R.sample(k_r, (N,)), y, Gt, beta)
    return finish(E_new, log_after, ess, resampled, log_z, degenerate), log_lik
