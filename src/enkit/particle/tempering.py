"""Adaptive tempering: the next temperature of a tempered sequence of
distributions πₖ(u) ∝ prior(u) L(u)^{φₖ}, 0 = φ₀ < φ₁ < … < φ_K = 1.

From particles with log-weights log w̄ᵢ and log-likelihoods ℓᵢ = log L(uᵢ)
at temperature φ, the step to φ + Δ reweights by the incremental weights
exp(Δ ℓᵢ). The next temperature is chosen so that the effective sample
size of the reweighted particles

    ESS(Δ) = (Σᵢ w̄ᵢ e^{Δℓᵢ})² / Σᵢ w̄ᵢ² e^{2Δℓᵢ}

equals ``target`` times its value at Δ → 0⁺ (N for uniform weights and
finite likelihoods), found by bisection on Δ ∈ (0, 1 − φ]; when even the
whole remaining step keeps the ESS above that, Δ = 1 − φ (Jasra, Stephens,
Doucet & Tsagaris 2011; Beskos, Jasra, Kantas & Thiery 2016). For uniform
w̄, ESS(Δ) is non-increasing in Δ, so the root is unique.

Members with ℓᵢ = −inf (zero likelihood, e.g. a crashed forward model) get
weight zero for every Δ > 0 and are left out of the ESS at Δ → 0⁺; a NaN
ℓᵢ is an error of the caller (``check_log_likelihood``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp
from jax.typing import ArrayLike

from enkit._checks import is_concrete

__all__ = ["incremental_log_weights", "next_temperature", "tempered_ess"]

BISECTION_STEPS = 60


def incremental_log_weights(log_lik: ArrayLike, delta: ArrayLike) -> Array:
    """Δ ℓᵢ, with −inf (not NaN) for ℓᵢ = −inf also at Δ = 0 (the limit
    Δ → 0⁺: a zero likelihood stays zero). log_lik: (N,); delta: scalar."""
    log_lik = jnp.asarray(log_lik)
    delta = jnp.asarray(delta, log_lik.dtype)
    return jnp.where(log_lik == -jnp.inf, -jnp.inf, delta * log_lik)


def tempered_ess(log_w: ArrayLike, log_lik: ArrayLike, delta: ArrayLike) -> Array:
    """ESS(Δ) = 1/Σᵢ v̄ᵢ² of the weights v̄ ∝ w̄ e^{Δℓ} (normalised);
    log_w: (N,) log-weights (any constant); log_lik: (N,); delta: scalar.
    NaN when every reweighted weight is zero."""
    lv = jnp.asarray(log_w) + incremental_log_weights(log_lik, delta)
    lv = lv - logsumexp(lv)
    return jnp.exp(-logsumexp(2.0 * lv))


def next_temperature(log_lik: ArrayLike, temperature: ArrayLike, *,
                     target: ArrayLike = 0.5, log_w: ArrayLike | None = None
                     ) -> tuple[Array, Array]:
    """The next temperature φ' ∈ (φ, 1] of adaptive tempering (module
    docstring): ESS(φ' − φ) = target · ESS(0⁺), by ``BISECTION_STEPS``
    bisection halvings of (0, 1 − φ] (the returned Δ is the lower end of
    the last bracket, so the ESS is at or just above the target: the
    bracket is 2⁻⁶⁰ (1 − φ) wide, below float64 round-off).

    log_lik: (N,) log-likelihoods ℓᵢ (−inf allowed, NaN not); temperature:
    φ ∈ [0, 1); target: in (0, 1), the fraction of the ESS to keep (0.5
    is the usual choice); log_w: (N,) current log-weights, None for
    uniform. Returns (φ', ESS(φ' − φ)). Pure and jit-able.

    References: Jasra, Stephens, Doucet & Tsagaris (2011), "Inference for
    Lévy-driven stochastic volatility models via adaptive sequential Monte
    Carlo", Scand. J. Stat. 38(1), 1–22; Beskos, Jasra, Kantas & Thiery
    (2016), "On the convergence of adaptive sequential Monte Carlo
    methods", Ann. Appl. Probab. 26(2), 1111–1146.
    """
    log_lik = jnp.asarray(log_lik)
    if log_lik.ndim != 1:
        raise ValueError(f"log_lik must have shape (N,), got shape {log_lik.shape}")
    dtype = log_lik.dtype if jnp.issubdtype(log_lik.dtype, jnp.floating) else jnp.result_type(
        float)
    log_lik = log_lik.astype(dtype)
    if log_w is None:
        log_w = jnp.zeros_like(log_lik)
    log_w = jnp.asarray(log_w, dtype)
    if log_w.shape != log_lik.shape:
        raise ValueError(f"log_w must have the shape of log_lik {log_lik.shape}, "
                         f"got {log_w.shape}")
    if is_concrete(target) and not 0.0 < float(target) < 1.0:
        raise ValueError(f"target must be in (0, 1) (the fraction of the ESS kept per "
                         f"step), got {target!r}")
    phi = jnp.asarray(temperature, dtype)
    if is_concrete(phi) and not 0.0 <= float(phi) < 1.0:
        raise ValueError(f"temperature must be in [0, 1), got {float(phi)!r}")
    goal = jnp.asarray(target, dtype) * tempered_ess(log_w, log_lik, 0.0)
    room = 1.0 - phi

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = tempered_ess(log_w, log_lik, mid) >= goal
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, BISECTION_STEPS, halve,
                               (jnp.zeros((), dtype), room))
    full = tempered_ess(log_w, log_lik, room) >= goal
    # lo = 0 only when the ESS falls below the goal within 2⁻⁶⁰ of the
    # remaining step (log-likelihoods of order 1e18): step by hi, never by 0.
    delta = jnp.where(full, room, jnp.where(lo > 0, lo, hi))
    new = jnp.where(full, jnp.ones((), dtype), phi + delta)
    return new, tempered_ess(log_w, log_lik, delta)
