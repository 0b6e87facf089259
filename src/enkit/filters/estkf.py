"""Error-subspace transform Kalman filter (Nerger et al. 2012)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, prepare_analysis
from enkit.filters._transform import symmetric_transform_apply

__all__ = ["error_subspace_projection", "estkf"]


def error_subspace_projection(N: int, dtype=jnp.float64) -> Array:
    """The projection matrix Ω of the ESTKF: (N, N − 1).

    Entries (Nerger et al. 2012, eq. 10), with ``a = 1 / (N (1/√N + 1))``:
    ``Ωᵢⱼ = 1 − a`` for i = j < N, ``−a`` for i ≠ j, i < N, and ``−1/√N``
    in the last row. Its columns are orthonormal and orthogonal to the
    vector of ones, ``Ωᵀ Ω = I``, ``Ωᵀ 1 = 0``, so ``Ω Ωᵀ = I − 1 1ᵀ / N``:
    Ωᵀ maps the N members onto coordinates of the (N − 1)-dimensional error
    subspace. N: number of members (N ≥ 2); dtype: floating dtype.
    """
    if N < 2:
        raise ValueError(f"N must be at least 2, got {N}")
    rootN = jnp.sqrt(jnp.asarray(N, dtype))
    a = 1.0 / (N * (1.0 / rootN + 1.0))
    top = jnp.eye(N - 1, dtype=dtype) - a
    bottom = jnp.full((1, N - 1), -1.0 / rootN, dtype=dtype)
    return jnp.concatenate([top, bottom], axis=0)


def estkf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
) -> Array:
    """ESTKF analysis: the ensemble transform in the (N − 1)-dim error subspace.

    With Ω the (N, N − 1) projection (``error_subspace_projection``), X, Y
    the state and observation anomalies divided by sqrt(N − 1), the error
    subspace basis ``L = Ωᵀ X`` and its observations ``S = Ωᵀ Y R^{-1/2}``
    (rows), ``A⁻¹ = I_{N−1} + S Sᵀ`` (the paper's ``(N − 1) I + (HL)ᵀ R⁻¹ HL``
    with its factor N − 1 moved into the normalisation), d the whitened
    innovation ``R^{-1/2}(y − ȳ)``:

        x̄ₐ = x̄ + Lᵀ A S d,        Xₐ = Ω A^{1/2} Ωᵀ X      (A^{1/2} symmetric).

    Since ``Ωᵀ 1 = 0`` the update is mean-preserving, and it is deterministic.
    The symmetric square root in the error subspace gives the same transform
    as the symmetric-root ETKF, hence the same analysis mean and covariance
    (the Kalman update of the forecast sample statistics), from an
    (N − 1)×(N − 1) instead of an N×N matrix function.

    E: (N, n) forecast ensemble; y: (m,) observation; h: callable on one
    member or (m, n) matrix; R: covariance operator or array; key: unused
    (deterministic scheme). Returns the (N, n) analysis ensemble. Forgetting
    factor (the paper's ρ): use enkit's inflation steps around the analysis.

    Reference: Nerger, Janjić, Schröter & Hiller (2012), MWR 140, "A
    unification of ensemble square root Kalman filters".
    """
    del key
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    N = E.shape[0]
    c = jnp.sqrt(jnp.asarray(N - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    Omega = error_subspace_projection(N, E.dtype)
    L = Omega.T @ X  # (N − 1, n)
    S = R.whiten(Omega.T @ Y)  # (N − 1, m)
    d = R.whiten(y - ybar)  # (m,)
    w, AL = symmetric_transform_apply(S, d, L)  # (N − 1,), (I + S Sᵀ)^{-1/2} L
    return xbar + w @ L + c * (Omega @ AL)
