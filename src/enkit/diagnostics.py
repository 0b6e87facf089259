"""Verification statistics of ensemble runs."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = ["rmse"]


def rmse(estimate: ArrayLike, truth: ArrayLike) -> Array:
    """Root-mean-square error over the last axis: ``sqrt(mean_j (x̂_j − x_j)²)``.

    estimate, truth: (..., n) of the same shape. Returns shape (...).
    """
    estimate, truth = jnp.asarray(estimate), jnp.asarray(truth)
    if estimate.shape != truth.shape:
        raise ValueError(
            f"estimate and truth must have the same shape, got {estimate.shape} "
            f"and {truth.shape}"
        )
    return jnp.sqrt(jnp.mean((estimate - truth) ** 2, axis=-1))
