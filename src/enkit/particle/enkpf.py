"""The ensemble Kalman particle filter (Frei & Künsch 2013): a tempered
EnKF step followed by a particle step on the Gaussian mixture it leaves."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import cho_solve
from jax.typing import ArrayLike

from enkit._checks import is_concrete
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
from enkit.particle._mixture import mixture_analysis, tempered_predictive
from enkit.particle.optimal import observation_matrix
from enkit.particle.resampling import systematic, weighted_covariance_root, weighted_mean

__all__ = ["enkpf"]


def enkpf(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *, gamma: ArrayLike,
          key: Array | None = None, log_weights: ArrayLike | None = None,
          threshold: ArrayLike = 1.0, resampler: Callable = systematic) -> ParticleAnalysis:
    """Ensemble Kalman particle filter analysis (EnKPF; Frei & Künsch 2013).

    The likelihood ℓ(x) = N(y; H x, R) is split as ℓ^γ · ℓ^{1−γ},
    γ ∈ [0, 1]. With P the (weighted) ensemble covariance and x̄ its mean:

    1. an EnKF step with ℓ^γ (observation error R/γ) turns every particle
       into a Gaussian component N(νᵢ, Q):

           K₁ = P Hᵀ (H P Hᵀ + R/γ)⁻¹,   νᵢ = xᵢ + K₁ (y − H xᵢ),
           Q = K₁ (R/γ) K₁ᵀ;

    2. the mixture Σᵢ w̄ᵢ N(νᵢ, Q) is updated exactly with ℓ^{1−γ}
       (observation error R/(1−γ)):

           K₂ = Q Hᵀ (H Q Hᵀ + R/(1−γ))⁻¹,
           αᵢ ∝ w̄ᵢ N(y; H νᵢ, H Q Hᵀ + R/(1−γ)),
           μᵢ = νᵢ + K₂ (y − H νᵢ),   Pₐ = (I − K₂ H) Q;

    3. the components are resampled by α (when ESS < threshold·N; the
       paper always resamples, threshold = 1, the default; systematic
       resampling stands in for its balanced sampling), aᵢ their indices,
       and the stochastic correction draws one particle of each,

           xᵢᵃ = ν_{aᵢ} + K₁ ε₁ᵢ + K₂ (y + ε₂ᵢ − H(ν_{aᵢ} + K₁ ε₁ᵢ)),
           ε₁ᵢ ~ N(0, R/γ),  ε₂ᵢ ~ N(0, R/(1−γ)),

       whose law is N(μ_{aᵢ}, Pₐ) (no square root of Pₐ is taken).

    γ = 1 is the stochastic EnKF (α uniform, K₂ = 0: xᵢᵃ = xᵢ + K (y +
    ε₁ᵢ − H xᵢ), ``enkit.enkf`` with ``center_perturbations=False``, the
    same draws for the key ``jax.random.split(key, 3)[1]``); γ = 0 the
    bootstrap PF (K₁ = 0, Q = 0, α the likelihood weights; no jitter).
    Every formula multiplies by γ and 1 − γ (R/γ never formed), so both
    ends are regular. γ is an array leaf: a sweep over it is a vmap, one
    compilation. After resampling the weights are uniform (−log N), so
    with the default threshold ``enkit.assimilate`` carries uniform
    weights; with threshold < 1 the α are carried (an extension: one draw
    per unresampled component is a weighted sample of the same mixture).

    The log evidence is log ∫ℓ^γ N(x; x̄, P) dx + log Σᵢ w̄ᵢ ∫ℓ^{1−γ}
    N(x; νᵢ, Q) dx (the first factor treats the prior as Gaussian, as the
    EnKF step does; exact for γ = 0 as the bootstrap PF's estimate).

    E: (N, n) forecast particles; y: (m,); h: (m, n) matrix or a callable
    (its Jacobian at the weighted mean is taken as H, as in
    ``optimal_proposal_pf``: the paper's linear H; for a nonlinear h the
    analysis is a linearisation); R: covariance operator (or array) (m,);
    gamma: scalar in [0, 1] (required; the paper's experiments favour
    small γ such as 0.05–0.3 in high dimension). key: PRNG key (required).
    log_weights: (N,) the particles' log-weights (None: uniform), which
    weight P, x̄ and α. threshold, resampler: as ``bootstrap_pf``. Forms
    m × m matrices and (n, m) gains; no n × n matrix. Returns a
    ``ParticleAnalysis``; degenerate weights as in ``bootstrap_pf``.

    DAPPER has no EnKPF. Reference: Frei & Künsch (2013), "Bridging the
    ensemble Kalman and particle filters", Biometrika 100(4), 781–800.
    """
    E = jnp.asarray(E)
    N, n = E.shape
    key = need_key(key, "enkpf")
    check_threshold(threshold)
    if is_concrete(gamma) and not (0.0 <= float(gamma) <= 1.0):
        raise ValueError(f"gamma must be in [0, 1] (1: the stochastic EnKF, 0: the bootstrap "
                         f"PF), got {gamma!r}")
    y = jnp.asarray(y, E.dtype)
    R = as_covariance(R, y.shape[0], name="R").astype(E.dtype)
    log_prior = prior_log_weights(log_weights, N, E.dtype)
    result, log_lik = _enkpf(E, y, as_operand(h), R, jnp.asarray(gamma, E.dtype), key,
                             log_prior, threshold, resampler=resampler)
    check_weights(log_prior, log_lik, "enkpf")
    return result


@partial(jax.jit, static_argnames=("resampler",))
def _enkpf(E, y, h, R, gamma, key, log_prior, threshold, *, resampler):
    """The compiled body of ``enkpf``: (ParticleAnalysis, the components'
    log-likelihoods under ℓ^{1−γ})."""
    N, _ = E.shape
    xbar = weighted_mean(E, log_prior)
    H = observation_matrix(h, xbar)
    C12 = weighted_covariance_root(E, log_prior)  # P = C½ᵀ C½
    Y12 = C12 @ H.T
    HPHt = Y12.T @ Y12
    # step 1: the EnKF with R/γ; K₁ = γ G₁ᵀ, G₁ = (γ H P Hᵀ + R)⁻¹ H P
    log_z1, T1 = tempered_predictive((xbar @ H.T)[None], y, HPHt, R, gamma)
    G1 = cho_solve((T1.factor, True), Y12.T @ C12)  # (m, n)
    nu = E + gamma * (y - E @ H.T) @ G1
    B = G1 @ H.T  # (m, m): H K₁ = γ Bᵀ
    RB = R.dense() @ B
    QHt = gamma * G1.T @ RB  # Q Hᵀ, Q = γ G₁ᵀ R G₁
    HQHt = gamma * B.T @ RB
    k_resample, k_1, k_2 = jax.random.split(key, 3)
    Eta = jnp.sqrt(gamma) * R.sample(k_1, (N,)) @ G1  # K₁ ε₁, ε₁ ~ N(0, R/γ)
    # steps 2-3: the mixture Σ w̄ᵢ N(νᵢ, Q) under ℓ^{1−γ}
    result, log_lik = mixture_analysis((k_resample, k_2), nu, Eta, log_prior, y, H, R, QHt,
                                       HQHt, 1.0 - gamma, threshold, resampler)
    return result._replace(log_evidence=result.log_evidence + log_z1[0]), log_lik


enkpf.particle = True
