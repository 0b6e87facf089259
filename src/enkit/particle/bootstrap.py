"""The bootstrap particle filter's analysis (sequential importance
resampling with the model as proposal)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import is_concrete
from enkit.covariance import as_covariance
from enkit.diagnostics import effective_sample_size
from enkit.filters._common import ObservationOperator, observe
from enkit.particle._common import (
    ParticleAnalysis,
    as_operand,
    check_threshold,
    check_weights,
    finish,
    need_key,
    prior_log_weights,
    resample_if,
    reweight,
)
from enkit.particle.differentiable import EnsembleResampler
from enkit.particle.resampling import regularize, systematic

__all__ = ["bootstrap_pf", "gaussian_log_likelihood"]


def gaussian_log_likelihood(Y: ArrayLike, y: ArrayLike, R) -> Array:
    """log N(y; Yᵢ, R) for every row: −½‖R^{-½}(y − Yᵢ)‖² − ½ log det R
    − (m/2) log 2π. Y: (N, m) simulated observations; y: (m,); R: a
    covariance operator (m,). Returns (N,)."""
    Y = jnp.asarray(Y)
    r = R.whiten(jnp.asarray(y, Y.dtype) - Y)
    m = Y.shape[-1]
    return -0.5 * jnp.sum(r * r, axis=-1) - 0.5 * R.log_pdet - 0.5 * m * jnp.log(2.0 * jnp.pi)


def bootstrap_pf(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *,
                 key: Array | None = None, log_weights: ArrayLike | None = None,
                 threshold: ArrayLike = 0.5, resampler: Callable = systematic,
                 reg: ArrayLike = 0.0, bandwidth: ArrayLike | None = None,
                 duplicates_only: bool = False) -> ParticleAnalysis:
    """Bootstrap particle filter analysis (Gordon, Salmond & Smith 1993).

    The forecast particles xᵢ (drawn from the model, the proposal) are
    reweighted by the likelihood, on the log scale,

        log w̄ᵢ ← log w̄ᵢ + log N(y; h(xᵢ), R) − log Σⱼ w̄ⱼ N(y; h(xⱼ), R),

    and, when ESS = 1/Σ w̄ᵢ² < threshold·N, resampled (``resampler``) to
    uniform weights and jittered by ``regularize`` with ``reg`` (DAPPER's
    ``PartFilt(NER=threshold, reg=reg)``); otherwise the weights are
    carried to the next cycle (pass them back as ``log_weights``).

    E: (N, n) forecast particles; y: (m,); h: callable on one member or
    (m, n) matrix; R: covariance operator (or array) (m,). key: PRNG key
    (required: the resampling draws). log_weights: (N,) the particles'
    log-weights (any normalisation), None for uniform. threshold: in [0, 1]
    (0: never resample, 1: whenever the weights are not uniform).
    resampler: ``multinomial``, ``stratified``, ``systematic`` (default)
    or ``residual`` (or any ``(key, log_w) -> ancestors``), or an
    ``EnsembleResampler`` (``SoftResampler``, ``OTResampler``: the
    differentiable path, below). reg: jitter scale after resampling (0:
    none; refused with an ``EnsembleResampler``); bandwidth: the kernel
    bandwidth h (None: ``scott_bandwidth(N, n)``). duplicates_only: jitter
    only the members resampled more than once (DAPPER's default
    ``nuj=True``; see ``regularize``); False (default) jitters every
    resampled member.

    Differentiable path. With ``resampler=OTResampler(epsilon)`` the
    resampled particles N Pᵀ E are a smooth function of the particles and
    their weights; with ``SoftResampler(alpha)`` the weights handed on,
    w̄ₐ/qₐ, are. A filter run written as a ``lax.scan`` over cycles (the
    model draws with fixed keys, x ← M_θ(x) + L_θ z, z fixed per cycle;
    this analysis with a fixed key per cycle; the log-weights carried)
    is then a differentiable function of the model parameters θ and of
    h and R, and ``jax.grad`` of Σₖ ``log_evidence`` (the PF estimate of
    log p(y₁:ₖ | θ)) or of the weighted ensemble means gives a gradient
    that also counts how the weights move the particles: with OT
    resampling it approaches the exact gradient of the log-likelihood as
    N grows and ε shrinks (biased by ε, Corenflos et al. 2021); with soft
    resampling it is the gradient of an unbiased weighting, with the
    ancestor draws held fixed (Karkus et al. 2018). The ESS test is a
    comparison (a step function): each cycle's choice to resample is held
    fixed in the gradient; ``threshold=1.0`` resamples at every cycle.
    With the classical resamplers the gradient misses the selection (the
    ancestors are piecewise constant in θ): the log-evidence gradient is
    then biased.

    Returns a ``ParticleAnalysis``. Every likelihood zero or a NaN one
    raises ``WeightDegeneracyError`` when called with concrete values;
    under ``jit`` (and in ``enkit.assimilate``) the analysis returns NaN
    particles instead, flagged by ``degenerate``, which the driver's
    finite-check reports as a failed analysis.
    """
    E = jnp.asarray(E)
    N, n = E.shape
    key = need_key(key, "bootstrap_pf")
    check_threshold(threshold)
    R = as_covariance(R, jnp.shape(y)[0], name="R").astype(E.dtype)
    log_prior = prior_log_weights(log_weights, N, E.dtype)
    jitter = not (is_concrete(reg) and float(reg) == 0.0)
    if isinstance(resampler, EnsembleResampler):
        if jitter:
            raise ValueError(f"reg must be 0 with an EnsembleResampler "
                             f"({type(resampler).__name__}), got {reg!r}: its particles are "
                             "not copies, no jitter is needed")
        result, log_lik = _bootstrap_ensemble(E, jnp.asarray(y, E.dtype), as_operand(h), R, key,
                                              log_prior, threshold, resampler)
        check_weights(log_prior, log_lik, "bootstrap_pf")
        return result
    if not callable(resampler):
        raise TypeError(f"resampler must be a callable (key, log_w) -> ancestors or an "
                        f"EnsembleResampler, got {type(resampler).__name__}")
    result, log_lik = _bootstrap(E, jnp.asarray(y, E.dtype), as_operand(h), R, key, log_prior,
                                 threshold, reg, bandwidth, resampler=resampler, jitter=jitter,
                                 duplicates_only=bool(duplicates_only))
    check_weights(log_prior, log_lik, "bootstrap_pf")
    return result


@partial(jax.jit, static_argnames=("resampler", "jitter", "duplicates_only"))
def _bootstrap(E, y, h, R, key, log_prior, threshold, reg, bandwidth, *, resampler, jitter,
               duplicates_only):
    """The compiled body of ``bootstrap_pf``: (ParticleAnalysis, log-likelihoods)."""
    log_lik = gaussian_log_likelihood(observe(h, E), y, R)
    log_w, log_z, degenerate = reweight(log_prior, log_lik)
    k_resample, k_jitter = jax.random.split(key)
    ancestors, log_after, ess, resampled = resample_if(k_resample, log_w, threshold, resampler)
    if jitter:
        safe_w = jnp.where(degenerate, log_prior, log_w)
        E_res = regularize(k_jitter, E, safe_w, ancestors, reg=reg, bandwidth=bandwidth,
                           duplicates_only=duplicates_only)
    else:
        E_res = E[ancestors]  # no jitter: skip the (N, N) draws
    E_new = jnp.where(resampled, E_res, E)
    return finish(E_new, log_after, ess, resampled, log_z, degenerate), log_lik


@jax.jit
def _bootstrap_ensemble(E, y, h, R, key, log_prior, threshold, resampler):
    """``_bootstrap`` with an ``EnsembleResampler`` (a pytree argument)."""
    log_lik = gaussian_log_likelihood(observe(h, E), y, R)
    log_w, log_z, degenerate = reweight(log_prior, log_lik)
    N = E.shape[0]
    ess = effective_sample_size(log_weights=log_w)
    resampled = ess < jnp.asarray(threshold, E.dtype) * N
    safe_w = jnp.where(degenerate, log_prior, log_w)
    k_resample, _ = jax.random.split(key)  # the key of _bootstrap's ancestor draw
    E_res, log_res = resampler(k_resample, E, safe_w)
    E_new = jnp.where(resampled, E_res, E)
    log_after = jnp.where(resampled, log_res, log_w)
    return finish(E_new, log_after, ess, resampled, log_z, degenerate), log_lik


bootstrap_pf.particle = True
