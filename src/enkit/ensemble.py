"""L0 ensemble statistics.

An ensemble is an array ``E`` of shape ``(N, n)``: N members on the leading
axis, n state (or parameter) entries each. Sample covariances use the
unbiased ``N - 1`` normalisation throughout enkit.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "ensemble_mean",
    "anomalies",
    "ensemble_covariance",
    "cross_covariance",
    "ensemble_spread",
    "scaled_anomalies",
]


def ensemble_mean(E: ArrayLike) -> Array:
    """Ensemble mean ``x̄ = (1/N) Σ_i E_i``.

    E: (N, n) ensemble. Returns (n,).
    """
    return jnp.mean(jnp.asarray(E), axis=0)


def anomalies(E: ArrayLike) -> Array:
    """Ensemble anomalies ``X = E - x̄`` (not normalised).

    E: (N, n) ensemble. Returns (N, n) with rows summing to zero.
    """
    E = jnp.asarray(E)
    return E - jnp.mean(E, axis=0, keepdims=True)


def scaled_anomalies(E: ArrayLike) -> tuple[Array, Array]:
    """Mean and normalised anomalies ``(x̄, (E − x̄) / sqrt(N − 1))``.

    With ``X`` the normalised anomalies the sample covariance is ``Xᵀ X``,
    the form every analysis scheme works with. E: (N, n).
    Returns ((n,), (N, n)).
    """
    E = jnp.asarray(E)
    xbar = jnp.mean(E, axis=0)
    c = jnp.sqrt(jnp.asarray(E.shape[0] - 1, E.dtype))
    return xbar, (E - xbar) / c


def ensemble_covariance(E: ArrayLike) -> Array:
    """Sample covariance ``P = Xᵀ X / (N - 1)`` with ``X = E - x̄``.

    E: (N, n) ensemble. Returns (n, n).
    """
    X = anomalies(E)
    return X.T @ X / (X.shape[0] - 1)


def cross_covariance(E: ArrayLike, Y: ArrayLike) -> Array:
    """Sample cross-covariance ``Xᵀ Yₐ / (N - 1)`` of two ensembles.

    E: (N, n) ensemble, Y: (N, m) ensemble of the same members (for example
    their simulated observations). Returns (n, m).
    """
    X = anomalies(E)
    Ya = anomalies(Y)
    if X.shape[0] != Ya.shape[0]:
        raise ValueError(
            f"E and Y must have the same number of members on axis 0, got "
            f"{X.shape[0]} and {Ya.shape[0]}"
        )
    return X.T @ Ya / (X.shape[0] - 1)


def ensemble_spread(E: ArrayLike) -> Array:
    """Spread ``sqrt(mean_j P_jj)``: root of the mean sample variance.

    This is the quantity compared with the RMSE of the mean in twin
    experiments. E: (N, n) ensemble. Returns a scalar.
    """
    X = anomalies(E)
    return jnp.sqrt(jnp.mean(jnp.sum(X * X, axis=0) / (X.shape[0] - 1)))
