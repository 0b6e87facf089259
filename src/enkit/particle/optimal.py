"""The optimal-proposal particle filter's analysis for linear observations
and additive Gaussian model noise."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

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
from enkit.particle.resampling import systematic

__all__ = ["optimal_proposal_pf", "observation_matrix"]


def observation_matrix(h: ObservationOperator, x: ArrayLike) -> Array:
    """H (m, n): h itself when it is a matrix, else the Jacobian of h at x
    (``jax.jacfwd``; equal to H everywhere when h is linear)."""
    x = jnp.asarray(x)
    if callable(h):
        return jax.jacfwd(lambda v: observe(h, v[None])[0])(x)
    return jnp.asarray(h, x.dtype)


def optimal_proposal_pf(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *, Q,
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
    operator (m,); Q: covariance operator or array (n,). key: PRNG key
    (required). log_weights, threshold, resampler: as ``bootstrap_pf``.
    S is formed densely (m × m) and Q too (n × n): meant for moderate n, m.

    Returns a ``ParticleAnalysis`` (its ``log_evidence`` is the estimate of
    log p(y | past observations) with the predictive N(y; H fᵢ, S)); the
    degenerate case is handled as in ``bootstrap_pf``.
    """
    E = jnp.asarray(E)
    N, n = E.shape
    key = need_key(key, "optimal_proposal_pf")
    check_threshold(threshold)
    y = jnp.asarray(y, E.dtype)
    m = y.shape[0]
    R = as_covariance(R, m, name="R").astype(E.dtype)
    Q = as_covariance(Q, n, name="Q").astype(E.dtype)
    log_prior = prior_log_weights(log_weights, N, E.dtype)
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


optimal_proposal_pf.particle = True
optimal_proposal_pf.adds_model_noise = True  # assimilate refuses model_noise= with it
