"""The ensemble-space solution of the symmetric square-root ETKF (private).

Shared by the global and the local ETKF: given whitened observation
anomalies ``S = Y R^{-1/2}`` (N, m) and the whitened innovation
``d = R^{-1/2} (y − ȳ)`` (m,), with ``T = I_N + S Sᵀ``,

    w̄ = T⁻¹ S d,      Z = T^{-1/2} (symmetric),

so that ``x̄ₐ = x̄ + Xᵀ w̄`` and ``Xₐ = Z X`` (X: normalised anomalies).
Zero columns of S and zero entries of d contribute exactly nothing.

With fewer observations than members (m < N) the matrix functions are taken
of the m×m ``M = Sᵀ S`` instead of the N×N ``S Sᵀ`` (the same non-zero
eigenvalues). For every analytic f, ``f(S Sᵀ) = f(0) I + S g(Sᵀ S) Sᵀ`` with
``g(λ) = (f(λ) − f(0))/λ``; for ``f(λ) = (1 + λ)^{-1/2}`` that g is
``enkit.linalg.inverse_sqrt_identity_plus_factor``, and

    T^{-1/2} = I + S G Sᵀ,    T⁻¹ S d = S (I_m + M)⁻¹ d = S P² d,

with ``G = g(M)`` and ``P = I_m + M G = (I_m + M)^{-1/2}``.
``symmetric_transform_apply`` applies ``T^{-1/2}`` to the anomalies without
forming it, ``Z X = X + S (G (Sᵀ X))``: O(m³ + N m n) instead of the
O(N² (m + n)) of the N×N ``Z`` and ``Z X``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from enkit.linalg import inverse_sqrt_identity_plus, inverse_sqrt_identity_plus_factor


def _mT(A):
    return jnp.swapaxes(A, -1, -2)


def _factor_and_mean_weights(S: Array, d: Array) -> tuple[Array, Array]:
    """m < N: ``G = g(Sᵀ S)`` and ``w̄ = S P² d`` (module docstring)."""
    M = _mT(S) @ S
    G = inverse_sqrt_identity_plus_factor(M)
    v = d[..., None]
    for _ in range(2):  # v ← P v = v + M (G v), twice
        v = v + M @ (G @ v)
    return G, (S @ v)[..., 0]


def _root_and_mean_weights(S: Array, d: Array) -> tuple[Array, Array]:
    """m ≥ N: ``Z = T^{-1/2}`` (symmetric to round-off) and ``w̄ = Z² S d``."""
    Z = inverse_sqrt_identity_plus(S @ _mT(S))
    w = Z @ (Z @ (S @ d[..., None]))
    return w[..., 0], Z


def symmetric_transform(S: Array, d: Array) -> tuple[Array, Array]:
    """``(T⁻¹ S d, T^{-1/2})`` with ``T = I + S Sᵀ``, the root exactly
    symmetric (symmetrised).

    S: (..., N, m); d: (..., m), leading axes a batch of local problems
    solved together (one path choice for the batch, see
    ``inverse_sqrt_identity_plus``). m < N works with the m×m ``Sᵀ S`` (see
    the module docstring), else with the N×N ``S Sᵀ``.
    Returns ((..., N), (..., N, N)).
    """
    N, m = S.shape[-2:]
    if m < N:
        G, w = _factor_and_mean_weights(S, d)
        Z = S @ G @ _mT(S)
        return w, jnp.eye(N, dtype=S.dtype) + 0.5 * (Z + _mT(Z))
    w, Z = _root_and_mean_weights(S, d)
    return w, 0.5 * (Z + _mT(Z))


def symmetric_transform_apply(S: Array, d: Array, X: Array) -> tuple[Array, Array]:
    """``(T⁻¹ S d, T^{-1/2} X)`` with ``T = I + S Sᵀ``, without the N×N
    ``T^{-1/2}`` when m < N (``X + S (G (Sᵀ X))``, module docstring).

    S: (..., N, m); d: (..., m); X: (..., N, n). Returns ((..., N), (..., N, n)),
    equal to round-off to ``w, Z = symmetric_transform(S, d); w, Z @ X``
    (Z is not symmetrised here: reading its transpose costs about as much
    as most of a matrix product at N = 40).
    """
    N, m = S.shape[-2:]
    if m < N:
        G, w = _factor_and_mean_weights(S, d)
        return w, X + S @ (G @ (_mT(S) @ X))
    w, Z = _root_and_mean_weights(S, d)
    return w, Z @ X
