"""Ensemble transform Kalman filter, symmetric square root (Bishop, Etherton
& Majumdar 2001; Hunt, Kostelich & Szunyogh 2007)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, prepare_analysis
from enkit.filters._transform import symmetric_transform_apply

__all__ = ["etkf"]


def etkf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
) -> Array:
    """ETKF analysis with the symmetric (mean-preserving) square root.

    With X, Y the state and observation anomalies divided by sqrt(N − 1),
    ``S = Y R^{-1/2}`` (whitened, rows) and ``T = I_N + S Sᵀ``:

        w̄ = T⁻¹ S R^{-1/2} (y − ȳ),    x̄ₐ = x̄ + Xᵀ w̄,
        Xₐ = T^{-1/2} X (symmetric square root, so Xₐ keeps zero mean),

    so the analysis sample mean and covariance equal the Kalman update of
    the forecast sample mean and covariance. ``T^{-1/2}`` comes from
    ``enkit.linalg.inverse_sqrt_identity_plus`` (a Chebyshev series or
    Newton–Schulz: matrix products, exact to round-off, several times
    cheaper than an N×N eigendecomposition; derivatives finite for repeated
    eigenvalues, N > m), and ``T⁻¹ = (T^{-1/2})²``. With fewer observations
    than members (m < N) the m×m ``Sᵀ S`` stands in for the N×N ``S Sᵀ``
    and ``T^{-1/2} X = X + S G (Sᵀ X)`` is applied without forming the N×N
    matrix (``inverse_sqrt_identity_plus_factor``).

    E: (N, n); y: (m,); h: callable or (m, n) matrix; R: covariance operator
    or array; key: unused (deterministic scheme). Returns (N, n).

    References: Bishop, Etherton & Majumdar (2001), MWR 129; Hunt, Kostelich
    & Szunyogh (2007), Physica D 230; Sakov & Oke (2008), MWR 136.
    """
    del key
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    c = jnp.sqrt(jnp.asarray(E.shape[0] - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    S = R.whiten(Y)  # (N, m)
    d = R.whiten(y - ybar)  # (m,)
    w, ZX = symmetric_transform_apply(S, d, X)  # T⁻¹ S d and T^{-1/2} X
    return xbar + w @ X + c * ZX
