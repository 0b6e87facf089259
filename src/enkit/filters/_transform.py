"""The ensemble-space solution of the symmetric square-root ETKF (private).

Shared by the global and the local ETKF: given whitened observation
anomalies ``S = Y R^{-1/2}`` (N, m) and the whitened innovation
``d = R^{-1/2} (y − ȳ)`` (m,), with ``T = I_N + S Sᵀ``,

    w̄ = T⁻¹ S d,      Z = T^{-1/2} (symmetric),

so that ``x̄ₐ = x̄ + Xᵀ w̄`` and ``Xₐ = Z X`` (X: normalised anomalies).
Zero columns of S and zero entries of d contribute exactly nothing.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from enkit.linalg import inverse_sqrt_identity_plus


def symmetric_transform(S: Array, d: Array) -> tuple[Array, Array]:
    """``(T⁻¹ S d, T^{-1/2})`` with ``T = I + S Sᵀ``.

    S: (..., N, m); d: (..., m), leading axes a batch of local problems
    solved together (one path choice for the batch, see
    ``inverse_sqrt_identity_plus``). Returns ((..., N), (..., N, N)).
    """
    Z = inverse_sqrt_identity_plus(S @ jnp.swapaxes(S, -1, -2))
    w = Z @ (Z @ (S @ d[..., None]))
    return w[..., 0], Z
