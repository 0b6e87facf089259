"""Stopping rules: small pure functions a driver evaluates after each
iteration (or on the outputs of the current ensemble before it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_ndim, check_number, is_concrete
from enkit.covariance import as_covariance

__all__ = ["data_misfit", "discrepancy_principle", "ensemble_collapsed",
           "max_iterations_reached", "spread_ratio"]


def data_misfit(G: ArrayLike, y: ArrayLike, noise) -> Array:
    """Whitened misfit of the ensemble mean output, ‖Γ^{-1/2}(y − Ḡ)‖.

    G: (N, d) outputs of the members (Ḡ their mean); y: (d,); noise: Γ
    (operator or array). Returns a scalar.
    """
    check_ndim("G", G, 2, "(N, d)")
    G = jnp.asarray(G)
    d = G.shape[1]
    y = jnp.asarray(y, G.dtype)
    if y.shape != (d,):
        raise ValueError(f"y must have shape (d,) = ({d},) to match G, got shape {y.shape}")
    noise = as_covariance(noise, d, name="noise").astype(G.dtype)
    r = noise.whiten(y - jnp.mean(G, axis=0))
    return jnp.sqrt(jnp.sum(r * r))


def discrepancy_principle(misfit: ArrayLike, d: int, *, tau: ArrayLike = 1.2) -> Array:
    """True when ``misfit ≤ τ √d``: Morozov's discrepancy principle.

    With noise of covariance Γ the whitened residual of the truth has norm
    about √d, so iterating past ‖Γ^{-1/2}(y − Ḡ)‖ ≤ τ√d fits the noise;
    a driver stops at the first iteration where this holds. misfit: from
    ``data_misfit`` (or ``info.misfit``); d: data dimension; tau: τ > 1,
    usually 1.1–1.5. Returns a boolean scalar.

    References: Morozov (1966); Iglesias (2016), Inverse Problems 32, 025002,
    for its use with EKI.
    """
    tau = jnp.asarray(tau)
    if is_concrete(tau) and not (np.isfinite(float(tau)) and float(tau) > 0):
        raise ValueError(f"tau must be positive and finite (usually 1.1-1.5), got {float(tau)}")
    return jnp.asarray(misfit) <= tau * jnp.sqrt(jnp.asarray(d, jnp.result_type(float)))


def max_iterations_reached(iteration: ArrayLike, max_iterations: int) -> Array:
    """True once ``iteration ≥ max_iterations`` (``state.iteration`` counts
    completed ``tell`` calls)."""
    if not isinstance(max_iterations, jax.Array) or is_concrete(max_iterations):
        v = np.asarray(max_iterations)
        if v.ndim != 0 or not np.issubdtype(v.dtype, np.integer) or v < 0:
            raise ValueError(
                f"max_iterations must be an integer >= 0, got {max_iterations!r}")
    return jnp.asarray(iteration) >= max_iterations


def ensemble_collapsed(ensemble: ArrayLike, initial_ensemble: ArrayLike, *,
                       tol: ArrayLike = 1e-3) -> Array:
    """True when every parameter's spread has fallen below ``tol`` times its
    initial spread: ``maxⱼ σⱼ / σ⁰ⱼ < tol``.

    σⱼ, σ⁰ⱼ: sample standard deviations (N − 1) of parameter j in
    ``ensemble`` (N, p) and ``initial_ensemble`` (N₀, p). An ensemble that
    has collapsed no longer explores: further ensemble Kalman steps move it
    by amounts of the order of its spread. Parameters with zero initial
    spread are left out. tol: finite and > 0. Returns a boolean scalar.
    """
    check_number("tol", tol, low=0.0)
    E, E0 = jnp.asarray(ensemble), jnp.asarray(initial_ensemble)
    if E.ndim != 2 or E0.ndim != 2 or E.shape[1] != E0.shape[1]:
        raise ValueError(
            f"ensemble (N, p) and initial_ensemble (N0, p) must share p, got shapes "
            f"{E.shape} and {E0.shape}")
    return spread_ratio(E, jnp.std(E0, axis=0, ddof=1)) < tol


def spread_ratio(ensemble: ArrayLike, initial_spread: ArrayLike) -> Array:
    """maxⱼ σⱼ/σ⁰ⱼ over the parameters with σ⁰ⱼ > 0 (0 when there are none).

    σⱼ: sample standard deviations (N − 1) of the parameters in ``ensemble``
    (N, p); initial_spread: σ⁰, (p,). ``ensemble_collapsed`` compares this
    ratio with its tolerance; ``CollapseInflation`` restores it. Returns a
    scalar.
    """
    s = jnp.std(jnp.asarray(ensemble), axis=0, ddof=1)
    s0 = jnp.asarray(initial_spread)
    ok = s0 > 0
    return jnp.max(jnp.where(ok, s / jnp.where(ok, s0, 1.0), 0.0))
