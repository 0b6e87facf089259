"""ETKF with a mean-preserving random rotation (Sakov & Oke 2008; Livings,
Dance & Nichols 2008)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit.filters._common import ObservationOperator, as_key
from enkit.filters.estkf import error_subspace_projection
from enkit.filters.etkf import etkf

__all__ = ["etkf_rotated", "mean_preserving_rotation", "rotate"]


def mean_preserving_rotation(key: Array, N: int, dtype=jnp.float64) -> Array:
    """A random orthogonal N×N matrix U with ``U 1 = 1``.

    ``U = Ω Q Ωᵀ + 1 1ᵀ / N`` with Ω an orthonormal basis of the complement
    of the ones vector (``error_subspace_projection``) and Q a Haar-random
    orthogonal (N − 1)×(N − 1) matrix drawn from ``key``. Such U keep the
    ensemble mean (``Uᵀ 1 = 1``) and, being orthogonal, the sample
    covariance. key: PRNG key; N ≥ 2. Returns (N, N).
    """
    Omega = error_subspace_projection(N, dtype)
    Q = jax.random.orthogonal(key, N - 1, dtype=dtype)
    return Omega @ Q @ Omega.T + jnp.full((N, N), 1.0 / N, dtype)


def rotate(E: Array, *, key: Array | int | None = None) -> Array:
    """A random mean-preserving rotation of the ensemble's anomalies,

        E' = x̄ + U (E − x̄),   U orthogonal, U 1 = 1 (``mean_preserving_rotation``),

    which keeps the ensemble mean and sample covariance to round-off and
    redistributes the members (Sakov & Oke 2008). Composes with any
    analysis: ``rotate(ensrf(E, y, h, R), key=k)``; in ``assimilate`` the
    step is ``enkit.MeanPreservingRotation``. E: (N, n); key: PRNG key or
    integer seed (required). Returns (N, n).
    """
    key = as_key(key, "rotate")
    x = jnp.mean(E, axis=0)
    U = mean_preserving_rotation(key, E.shape[0], E.dtype)
    return x + U @ (E - x)


def etkf_rotated(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | int | None = None,
) -> Array:
    """ETKF analysis followed by a random mean-preserving rotation.

    The symmetric-root ETKF analysis ``Eₐ = x̄ₐ + c Xₐ`` (``enkit.etkf``) is
    rotated in ensemble space,

        Eₐ' = x̄ₐ + U (Eₐ − x̄ₐ),   U orthogonal, U 1 = 1,

    with U drawn afresh from ``key`` (``mean_preserving_rotation``). The
    analysis mean and covariance are unchanged (the Kalman update of the
    forecast statistics); only the members are redistributed, which breaks
    up the ensemble's tendency to collapse onto a few outlying members and
    keeps the members' marginals closer to Gaussian.

    E: (N, n) forecast ensemble; y: (m,) observation; h: callable on one
    member or (m, n) matrix; R: covariance operator or array; key: PRNG key
    or integer seed (required). Returns the (N, n) analysis ensemble.

    References: Sakov & Oke (2008), MWR 136, "Implications of the form of
    the ensemble transformation in the ensemble square root filters";
    Livings, Dance & Nichols (2008), Tellus 60A, "Unbiased ensemble square
    root filters".
    """
    key = as_key(key, "etkf_rotated")
    Ea = etkf(E, y, h, R)
    if np.shape(y)[0] == 0:  # no observations: E unchanged, not rotated
        return Ea
    return rotate(Ea, key=key)
