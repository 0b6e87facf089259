"""The optimal-proposal particle filter's analysis for linear observations
and additive Gaussian model noise."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import is_concrete
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator, observe
from enkit.particle._common import (
    ParticleAnalysis,
    as_operand,
    check_threshold,
    check_weights,
    need_key,
    prior_log_weights,
)
from enkit.particle._mixture import mixture_analysis
from enkit.particle.differentiable import EnsembleResampler
from enkit.particle.resampling import (
    sample_with_root,
    scott_bandwidth,
    systematic,
    weighted_covariance_root,
)

__all__ = ["optimal_proposal_pf", "observation_matrix"]


def observation_matrix(h: ObservationOperator, x: ArrayLike) -> Array:
    """H (m, n): h itself when it is a matrix, else the Jacobian of h at x
    (``jax.jacfwd``; equal to H everywhere when h is linear)."""
    x = jnp.asarray(x)
    if callable(h):
        return jax.jacfwd(lambda v: observe(h, v[None])[0])(x)
    return jnp.asarray(h, x.dtype)


def optimal_proposal_pf(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *, Q=None,
                        Qs: ArrayLike | None = None, bandwidth: ArrayLike | None = None,
                        key: Array | None = None, log_weights: ArrayLike | None = None,
                        threshold: ArrayLike = 0.5,
                        resampler: Callable = systematic) -> ParticleAnalysis:
    """Optimal-proposal particle filter analysis for y = H x + v, v ~ N(0, R),
    and x = fᵢ + η, η ~ N(0, Q) (Doucet, Godsill & Andrieu 2000, §II.D).

    E holds the forecast particles fᵢ *before* model noise (the
    deterministic forecasts M(xᵢ) of the previous analysis particles); the
    analysis adds the noise itself, drawing each particle from the optimal
    proposal p(x | fᵢ, y):

        S = H Q Hᵀ + R,   K = Q Hᵀ S⁻¹,
        log w̄ᵢ ← log w̄ᵢ + log N(y; H fᵢ, S)     (then normalised),
        xᵢ ~ N(fᵢ + K (y − H fᵢ), (I − K H) Q).

    The weights do not depend on the draw, so the resampling (when ESS =
    1/Σ w̄ᵢ² < threshold·N) selects among the fᵢ before the draws (which
    keeps the drawn particles distinct; no jitter is needed). The draw
    uses x = f + η + K (y − H (f + η) − v), v ~ N(0, R), whose covariance
    (I − KH) Q (I − KH)ᵀ + K R Kᵀ equals (I − K H) Q exactly, so no
    possibly singular square root of (I − K H) Q is taken.

    In ``enkit.assimilate``, bind Q here (``functools.partial(
    optimal_proposal_pf, Q=Q)``) and give no ``model_noise`` (refused:
    the noise would be added twice): the forecast then hands over fᵢ, and
    this analysis is the filtering step of x_k = M(x_{k−1}) + η_k observed
    at every step (``steps_per_obs=1``; with more steps, the model is
    deterministic between analyses and η is drawn once per cycle).

    E: (N, n); y: (m,); h: (m, n) matrix or a linear callable (its Jacobian
    at the particle mean is taken as H; for a nonlinear h this is a
    linearised proposal, and the weights are then not exact); R: covariance
    operator (m,); Q: covariance operator or array (n,), or Qs: the scale
    of the artificial noise (exactly one of the two; bandwidth only with
    Qs). key: PRNG key (required). log_weights, threshold, resampler: as
    ``bootstrap_pf``.
    S is formed densely (m × m) and Q too (n × n): meant for moderate n, m.

    Artificial noise instead of Q (DAPPER's ``OptPF(Qs=...)``, Bocquet,
    Pires & Wu 2010): with ``Qs`` given (and Q None) the noise is
    η ~ N(0, (Qs·h)² C_w), C_w the weighted covariance of the forecast
    particles (``weighted_covariance_root`` with the incoming weights) and
    h the bandwidth (None: ``scott_bandwidth(N, n)``); it regularises a
    deterministic model, and Qs = 0 is the bootstrap PF without jitter.
    The noise then has the root A = Qs·h·C½ (N, n), and the predictive
    covariance and gain are formed in the ensemble's terms, S = YᵀY + R
    with Y = Qs·h·C½ of the simulated observations h(fᵢ) (exact for a
    linear h, an ensemble linearisation otherwise) and K = Aᵀ Y S⁻¹: no
    n × n matrix is formed and h need not be differentiable. DAPPER
    resamples after the draw and jitters with its ``reg``; here the
    resampling comes first, so the drawn particles are distinct without
    jitter (``benchmarks/vs_dapper_pf.py`` compares the two on
    Lorenz-63).

    Returns a ``ParticleAnalysis`` (its ``log_evidence`` is the estimate of
    log p(y | past observations) with the predictive N(y; H fᵢ, S)); the
    degenerate case is handled as in ``bootstrap_pf``.
    """
    E = jnp.asarray(E)
    N, n = E.shape
    key = need_key(key, "optimal_proposal_pf")
    check_threshold(threshold)
    if isinstance(resampler, EnsembleResampler) or not callable(resampler):
        raise TypeError(f"optimal_proposal_pf's resampler must be an ancestor resampler "
                        f"(key, log_w) -> ancestors (it resamples the forecasts before its "
                        f"draws), got {type(resampler).__name__}; the differentiable "
                        f"resamplers work with bootstrap_pf")
    y = jnp.asarray(y, E.dtype)
    m = y.shape[0]
    R = as_covariance(R, m, name="R").astype(E.dtype)
    log_prior = prior_log_weights(log_weights, N, E.dtype)
    if (Q is None) == (Qs is None):
        raise TypeError("optimal_proposal_pf takes the model noise as exactly one of Q= (its "
                        "covariance) and Qs= (artificial noise (Qs·h)² C_w from the "
                        "particles, as DAPPER's OptPF)")
    if Q is None:
        if is_concrete(Qs) and not float(Qs) >= 0.0:
            raise ValueError(f"Qs must be >= 0, got {Qs!r}")
        h_bw = scott_bandwidth(N, n) if bandwidth is None else bandwidth
        result, log_lik = _optimal_ensemble(E, y, as_operand(h), R, key, log_prior, threshold,
                                            jnp.asarray(Qs, E.dtype) * h_bw,
                                            resampler=resampler)
    else:
        Q = as_covariance(Q, n, name="Q").astype(E.dtype)
        result, log_lik = _optimal(E, y, as_operand(h), R, Q, key, log_prior, threshold,
                                   resampler=resampler)
    check_weights(log_prior, log_lik, "optimal_proposal_pf")
    return result


@partial(jax.jit, static_argnames=("resampler",))
def _optimal(E, y, h, R, Q, key, log_prior, threshold, *, resampler):
    """The compiled body of ``optimal_proposal_pf``: (ParticleAnalysis,
    predictive log-likelihoods)."""
    N, _ = E.shape
    H = observation_matrix(h, jnp.mean(E, axis=0))
    QHt = Q.dense() @ H.T
    k_resample, k_q, k_r = jax.random.split(key, 3)
    return mixture_analysis((k_resample, k_r), E, Q.sample(k_q, (N,)), log_prior, y, H, R,
                            QHt, H @ QHt, 1.0, threshold, resampler)


@partial(jax.jit, static_argnames=("resampler",))
def _optimal_ensemble(E, y, h, R, key, log_prior, threshold, scale, *, resampler):
    """The compiled body of ``optimal_proposal_pf`` with the artificial
    noise N(0, scale² C_w): (ParticleAnalysis, predictive log-likelihoods)."""
    N, _ = E.shape
    A = scale * weighted_covariance_root(E, log_prior)  # the noise root, (N, n)
    AY = scale * weighted_covariance_root(observe(h, E), log_prior)  # its image, (N, m)
    k_resample, k_q, k_r = jax.random.split(key, 3)
    return mixture_analysis((k_resample, k_r), E, sample_with_root(k_q, A, N), log_prior, y,
                            partial(observe, h), R, A.T @ AY, AY.T @ AY, 1.0, threshold,
                            resampler)


optimal_proposal_pf.particle = True
optimal_proposal_pf.adds_model_noise = True  # assimilate refuses model_noise= with it
