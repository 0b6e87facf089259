"""Deterministic EnKF (Sakov & Oke 2008)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from enkit.ensemble import scaled_anomalies
from enkit.filters._blocal import Localization, check_localization, localized_gain_solve
from enkit.filters._common import ObservationOperator, prepare_analysis
from enkit.linalg import SolveMethod, check_solve_method, kalman_solve_weights

__all__ = ["denkf"]


def denkf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    method: SolveMethod = "auto",
    rcond: float | Array | None = None,
    localization: Localization | None = None,
) -> Array:
    """Deterministic EnKF analysis: full gain for the mean, half gain for anomalies.

    With X, Y the state and observation anomalies divided by sqrt(N − 1),
    ``K = Xᵀ Y C⁻¹`` and ``C = Yᵀ Y + R``:

        x̄ₐ = x̄ + K (y − ȳ),        Xₐᵀ = Xᵀ − ½ K Yᵀ,

    (the observation anomalies Y stand in for ``H X``). The analysis mean is
    the Kalman mean; the analysis covariance is
    ``(I − ½ K H) P (I − ½ K H)ᵀ = Pₐ + ¼ K H P Hᵀ Kᵀ``, by design larger
    than the Kalman ``Pₐ = (I − K H) P`` by a term of second order in
    ``K H`` — a built-in inflation that makes the scheme robust while keeping
    the cost of a single gain solve and no square root.

    E: (N, n) forecast ensemble; y: (m,) observation; h: callable on one
    member or (m, n) matrix; R: covariance operator or array (scalar, (m,)
    variances, or (m, m)); key: unused (deterministic scheme); method:
    innovation solve, see ``enkit.linalg.kalman_solve`` (``"ensemble"``
    never densifies a diagonal R; the opt-in ``"pinv"`` handles a
    rank-deficient ``Yᵀ Y + R``); rcond: the relative eigenvalue cut of
    "pinv" (None: ``enkit.linalg.default_rcond``); localization: None, or B-localisation
    tapers (``enkit.GainLocalization`` from ``enkit.gain_localization``, or
    ``enkit.AdaptiveLocalization``): both updates then use the localised
    gain ``K = (ρ_xy ∘ Xᵀ Y)(ρ_yy ∘ Yᵀ Y + R)⁻¹`` (Sakov & Oke 2008 localise
    the DEnKF this way), solved by Cholesky of the m×m matrix (``method``
    "auto" or "observation"; "pinv" pseudo-inverts it; "ensemble" is
    refused), never an n×n matrix.
    Returns the (N, n) analysis ensemble.

    Reference: Sakov & Oke (2008), Tellus 60A, "A deterministic formulation
    of the ensemble Kalman filter: an alternative to ensemble square root
    filters"; Houtekamer & Mitchell (2001), MWR 129 (B-localisation).
    """
    del key
    if localization is None:
        check_solve_method(method, rcond)
    else:
        check_localization(localization, method, rcond)
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    c = jnp.sqrt(jnp.asarray(E.shape[0] - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    if localization is not None:
        Z, G = localized_gain_solve(
            localization, X, Y, R, jnp.concatenate([(y - ybar)[None], Y]), method, rcond)
        KT = Z @ G.T  # rows: (y − ȳ) Kᵀ, then Y Kᵀ
        return xbar + KT[0] + c * (X - 0.5 * KT[1:])
    # One solve for the innovation and the anomalies: the weights [d; Y] C⁻¹ Yᵀ.
    D = jnp.concatenate([(y - ybar)[None], Y])
    W = kalman_solve_weights(Y, R, D, method=method, rcond=rcond)  # (N + 1, N)
    xa = xbar + W[0] @ X
    Xa = X - 0.5 * W[1:] @ X
    return xa + c * Xa
