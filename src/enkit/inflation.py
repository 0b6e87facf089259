"""Inflation operators: pure functions of an ensemble.

Each takes an (N, n) ensemble and returns the inflated (N, n) ensemble; the
factor is an array leaf, so a sweep over factors is a ``vmap``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = ["multiplicative"]


def multiplicative(E: Array, factor: ArrayLike) -> Array:
    """Multiplicative inflation of the anomalies: ``x̄ + λ (Eᵢ − x̄)``.

    The sample covariance is multiplied by λ². E: (N, n); factor: λ ≥ 1 in
    usual use (scalar, or (n,) for a per-variable factor).
    Reference: Anderson & Anderson (1999), MWR 127.
    """
    xbar = jnp.mean(E, axis=0)
    return xbar + jnp.asarray(factor, E.dtype) * (E - xbar)
