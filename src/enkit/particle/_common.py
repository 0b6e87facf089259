"""What the particle analyses share: their result type, the weight update
with its degeneracy check, and the ESS-triggered resampling step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp

from enkit._checks import is_concrete
from enkit.diagnostics import effective_sample_size
from enkit.particle.resampling import (
    normalize_log_weights,
    uniform_log_weights,
)


class ParticleAnalysis(NamedTuple):
    """The result of a particle analysis.

    ensemble: (N, n) the analysis particles; log_weights: (N,) their
    normalised log-weights (logsumexp = 0; uniform −log N after resampling);
    ess: the effective sample size of the updated weights, before any
    resampling (``effective_sample_size``); resampled: bool, whether the
    ensemble was resampled (ess < threshold·N); log_evidence: the estimate
    log Σᵢ w̄ᵢ p(y | xᵢ) of log p(y | past observations); degenerate: bool,
    True when the weights could not be formed (every likelihood zero, or a
    NaN one): then ensemble and log_weights are NaN (see ``bootstrap_pf``).
    """

    ensemble: Any
    log_weights: Any
    ess: Any
    resampled: Any
    log_evidence: Any
    degenerate: Any


class WeightDegeneracyError(FloatingPointError):
    """A particle analysis could not weight its particles: every likelihood
    p(y | xᵢ) is zero (all log-weights −inf) or some are NaN."""


def prior_log_weights(log_weights, N, dtype):
    """The incoming log-weights, normalised; None means uniform."""
    if log_weights is None:
        return uniform_log_weights(N, dtype)
    log_weights = jnp.asarray(log_weights, dtype)
    if log_weights.shape != (N,):
        raise ValueError(f"log_weights must have shape (N,) = ({N},), got {log_weights.shape}")
    return normalize_log_weights(log_weights)


def check_weights(log_prior, log_lik, scheme: str) -> None:
    """Raise ``WeightDegeneracyError`` for concrete (not traced) weights
    that cannot be normalised; traced ones are flagged by ``reweight``."""
    if not (is_concrete(log_prior) and is_concrete(log_lik)):
        return
    nan = jnp.isnan(log_lik)
    if bool(jnp.any(nan)):
        idx = jnp.flatnonzero(nan)[:8].tolist()
        raise WeightDegeneracyError(
            f"{scheme}: the log-likelihood is NaN for {int(jnp.sum(nan))} particle(s) "
            f"(members {idx}{' ...' if int(jnp.sum(nan)) > 8 else ''}): check h, R and y "
            "(an h that returns NaN/inf for some member?)")
    if not bool(jnp.isfinite(logsumexp(log_prior + log_lik))):
        raise WeightDegeneracyError(
            f"{scheme}: every particle has zero weight (all log-weights are -inf: the "
            "likelihood p(y | x_i) vanishes for every member, or the incoming log_weights "
            "are all -inf); check y against h(E) and R, or use more particles")


def reweight(log_prior, log_lik):
    """Bayes' rule on the log scale: (normalised log w̄ ∝ log_prior +
    log_lik, log evidence, degenerate). Degenerate (all −inf or any NaN):
    NaN weights, so that a compiled run's finite-check sees NaN."""
    log_w = log_prior + log_lik
    log_z = logsumexp(log_w)
    degenerate = jnp.any(jnp.isnan(log_lik)) | ~jnp.isfinite(log_z)
    log_w = jnp.where(degenerate, jnp.nan, log_w - log_z)
    return log_w, log_z, degenerate


def resample_if(key, log_w, threshold, resampler):
    """Resample when ess < threshold·N, else keep: (ancestors, log-weights
    after, ess, resampled); the caller selects its resampled ensemble with
    ``resampled``."""
    N = log_w.shape[0]
    ess = effective_sample_size(log_weights=log_w)
    resampled = ess < jnp.asarray(threshold, log_w.dtype) * N
    ancestors = resampler(key, jnp.where(jnp.isnan(log_w), 0.0, log_w))
    log_after = jnp.where(resampled, uniform_log_weights(N, log_w.dtype), log_w)
    return ancestors, log_after, ess, resampled


def finish(E_new, log_w, ess, resampled, log_z, degenerate) -> ParticleAnalysis:
    """The ParticleAnalysis, with NaN ensemble and weights when degenerate."""
    E_new = jnp.where(degenerate, jnp.nan, E_new)
    log_w = jnp.where(degenerate, jnp.nan, log_w)
    return ParticleAnalysis(E_new, log_w, ess, resampled & ~degenerate, log_z, degenerate)


def as_operand(h):
    """h as an argument of a compiled function: a matrix as an array, a
    plain callable wrapped in ``jax.tree_util.Partial`` (static, hashed by
    identity), a callable pytree (a ``Partial``, a model object) as it is."""
    if not callable(h):
        return jnp.asarray(h)
    leaves = jax.tree_util.tree_leaves(h)
    if len(leaves) == 1 and leaves[0] is h:
        return jax.tree_util.Partial(h)
    return h


def need_key(key, scheme: str) -> Array:
    if key is None:
        raise TypeError(f"{scheme} draws random numbers (resampling): pass key=")
    return key


def check_threshold(threshold) -> None:
    if is_concrete(threshold) and not (0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in [0, 1] (resample when ESS < threshold·N), "
                         f"got {threshold!r}")

