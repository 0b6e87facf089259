"""L0 ensemble statistics.

An ensemble is an array ``E`` of shape ``(N, n)``: N members on the leading
axis, n state (or parameter) entries each. Sample covariances use the
unbiased ``N - 1`` normalisation throughout enkit.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike

__all__ = [
    "ensemble_mean",
    "anomalies",
    "ensemble_covariance",
    "cross_covariance",
    "ensemble_spread",
    "scaled_anomalies",
    "add_transform",
]

# Columns per block of ``add_transform(..., blocked=True)``: (N, 16384) blocks
# are 13 MB at N = 100 in float64.
TRANSFORM_BLOCK = 16384


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


def add_transform(T: ArrayLike, E: ArrayLike, *, blocked: bool = False) -> Array:
    """The ensemble-transform update ``E + T E`` (T mixes the members).

    T: (N, N); E: (N, n). Returns (N, n).

    blocked=False: one (N, N) × (N, n) product and a sum. blocked=True: the
    same sum, computed over blocks of ``TRANSFORM_BLOCK`` columns (entries)
    in a loop that writes each block back into E (``dynamic_update_slice``),
    so the only temporaries are (N, block); the columns are independent
    (column j of the result is ``E_j + T E_j``), so the result is the same
    and, where E's buffer is donated (``jax.jit(..., donate_argnums=...)``)
    XLA updates it in place: no fresh (N, n) array, none of its first-touch
    page faults. Without a donated buffer XLA first copies E, so use the
    blocked form only where E is donated.
    """
    T = jnp.asarray(T)
    E = jnp.asarray(E)
    n = E.shape[1]
    b = TRANSFORM_BLOCK
    if not blocked or n <= b:
        return E + T @ E
    nb = n // b

    def body(i, E):
        block = lax.dynamic_slice_in_dim(E, i * b, b, axis=1)
        return lax.dynamic_update_slice_in_dim(E, block + T @ block, i * b, axis=1)

    E = lax.fori_loop(0, nb, body, E)
    if n > nb * b:
        block = E[:, nb * b:]
        E = E.at[:, nb * b:].set(block + T @ block)
    return E
