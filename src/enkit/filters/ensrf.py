"""Batch ensemble square-root filter (Whitaker & Hamill 2002)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import cho_solve, solve_triangular

from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, prepare_analysis

__all__ = ["ensrf"]


def ensrf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
) -> Array:
    """EnSRF analysis, all observations at once, in observation space.

    The mean is updated with the Kalman gain ``K = Xᵀ Y C⁻¹``,
    ``C = Yᵀ Y + R`` (X, Y anomalies divided by sqrt(N − 1)); the anomalies
    with the modified gain of Andrews (1968) / Whitaker & Hamill (2002)

        K̃ = Xᵀ Y C^{-T/2} (C^{1/2} + R^{1/2})⁻¹,    Xₐᵀ = (I − K̃ H) Xᵀ,

    which gives exactly the Kalman covariance ``(I − K H) P``. The identity
    holds for any square roots ``C = C^{1/2} C^{T/2}``; enkit uses Cholesky
    factors, so the scheme needs no eigendecomposition. Cost O(m³ + N m²).

    E: (N, n); y: (m,); h: callable or (m, n) matrix; R: covariance operator
    or array; key: unused (deterministic scheme). Returns (N, n).

    References: Whitaker & Hamill (2002), MWR 130; Andrews (1968), AIAA J. 6.
    """
    del key
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    c = jnp.sqrt(jnp.asarray(E.shape[0] - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    Cs = jnp.linalg.cholesky(Y.T @ Y + R.dense())  # C = Cs Csᵀ
    z = cho_solve((Cs, True), y - ybar)
    xa = xbar + (Y @ z) @ X
    A1 = solve_triangular(Cs + R.cholesky(), Y.T, lower=True)  # (m, N)
    A2 = solve_triangular(Cs, Y.T, lower=True)
    Xa = X - A1.T @ (A2 @ X)
    return xa + c * Xa
