"""Exact Kalman analysis: the ground truth for every ensemble scheme."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_bool, check_finite, check_ndim
from enkit.covariance import as_covariance
from enkit.ensemble import anomalies, ensemble_covariance, ensemble_mean
from enkit.filters._common import ObservationOperator, linearize, prepare_analysis
from enkit.linalg import spd_solve, sym_matrix_functions

__all__ = ["kalman", "kalman_update", "ensemble_with_covariance"]


def kalman_update(
    mean: ArrayLike,
    cov: ArrayLike,
    y: ArrayLike,
    H: ArrayLike,
    R,
    *,
    joseph: bool = True,
) -> tuple[Array, Array]:
    """Kalman analysis of a Gaussian ``N(mean, cov)`` given ``y = H x + ε``.

        S = H P Hᵀ + R,   K = P Hᵀ S⁻¹,   x̄ₐ = x̄ + K (y − H x̄),
        Pₐ = (I − K H) P (I − K H)ᵀ + K R Kᵀ        (Joseph form, default)
        Pₐ = (I − K H) P, symmetrised              (joseph=False)

    mean: (n,); cov: (n, n); y: (m,); H: (m, n); R: covariance operator or
    array (scalar, (m,) variances or (m, m)). Returns ``(mean_a, cov_a)``.

    References: Kalman (1960); Bucy & Joseph (1968) for the Joseph form.
    """
    check_bool("joseph", joseph)
    mean, cov, y, H = (jnp.asarray(a) for a in (mean, cov, y, H))
    check_ndim("mean", mean, 1, "(n,)")
    n = mean.shape[0]
    if cov.shape != (n, n):
        raise ValueError(f"cov must have shape (n, n) = ({n}, {n}), got {cov.shape}")
    m = check_observation(y, H, n)
    R = as_covariance(R, m).astype(mean.dtype)
    Rd = R.dense()
    PHt = cov @ H.T
    K = spd_solve(H @ PHt + Rd, PHt.T).T  # (n, m)
    mean_a = mean + K @ (y - H @ mean)
    IKH = jnp.eye(n, dtype=mean.dtype) - K @ H
    if joseph:
        cov_a = IKH @ cov @ IKH.T + K @ Rd @ K.T
    else:
        cov_a = IKH @ cov
    return mean_a, 0.5 * (cov_a + cov_a.T)


def check_observation(y: Array, H: Array, n: int) -> int:
    """Check ``y: (m,)`` (finite) and ``H: (m, n)`` of a linear update; returns m."""
    check_ndim("y", y, 1, "(m,)")
    check_finite("y", y)
    m = y.shape[0]
    if H.shape != (m, n):
        raise ValueError(f"H must have shape (m, n) = ({m}, {n}), got {H.shape}")
    return m


def ensemble_with_covariance(E: Array, mean: Array, cov: Array) -> Array:
    """An ensemble with exactly the sample mean ``mean`` and covariance ``cov``.

    The new anomalies live in the span of E's anomalies X (N × n): with the
    Gram matrix ``G = X Xᵀ`` and ``M = G^{+1/2} X cov Xᵀ G^{+1/2}``,

        Xₐ = sqrt(N − 1) · M^{1/2} G^{+1/2} X,

    so that ``Xₐᵀ Xₐ / (N − 1) = cov`` whenever the range of ``cov`` lies in
    that span (true for any Kalman update of E's own sample covariance).
    Both matrix functions act on N × N symmetric matrices through
    ``enkit.linalg.sym_matrix_functions``: ``G^{+1/2}`` is the
    pseudo-inverse square root (eigenvalues below 64 ε of the trace count as
    zero), and the square roots take zero for a zero eigenvalue with a zero
    derivative there. The gradient is therefore finite for a zero-spread
    ensemble, for repeated singular values and for N − 1 ≥ n (where the SVD
    this replaces gave NaN).

    E: (N, n); mean: (n,); cov: (n, n). Returns (N, n).
    """
    N = E.shape[0]
    X = anomalies(E)
    G_rsqrt = _normalised(_pinv_rsqrt, X @ X.T, power=-0.5)
    XG = G_rsqrt @ X  # (N, n): orthonormal rows on the span, scaled back
    M_sqrt = _normalised(_psd_sqrt, XG @ cov @ XG.T, power=0.5)
    return mean + jnp.sqrt(N - 1.0) * (M_sqrt @ XG)


def _rank_tol(lam):
    return 64.0 * jnp.finfo(lam.dtype).eps


def _pinv_rsqrt(lam):
    """λ^{-1/2} on the eigenvalues above the rank tolerance, 0 below."""
    keep = lam > _rank_tol(lam)
    return jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)


def _psd_sqrt(lam):
    """λ^{1/2} above the rank tolerance, 0 (with derivative 0) below."""
    keep = lam > _rank_tol(lam)
    return jnp.where(keep, jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)


def _normalised(f, A: Array, *, power: float) -> Array:
    """``f(A)`` for a symmetric PSD ``A`` and an f homogeneous of degree
    ``power``, applied to ``A / trace(A)`` so the rank tolerance is relative
    (a zero A gives f(0) = 0)."""
    tr = jnp.trace(A)
    scale = jnp.where(tr > 0, tr, 1.0)
    (out,) = sym_matrix_functions(0.5 * (A + A.T) / scale, (f,))
    return out * scale**power


def kalman(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    joseph: bool = True,
) -> Array:
    """Exact Kalman update of the ensemble's sample mean and covariance.

    The forecast sample mean x̄ and covariance P of E are updated by
    ``kalman_update`` (an n×n computation, meant as ground truth, not for
    large n), and an ensemble carrying exactly the analysed mean and
    covariance is returned (``ensemble_with_covariance``). A callable h is
    linearised at the mean, ``H = ∂h/∂x(x̄)``, and the innovation is
    ``y − h(x̄)`` (the extended Kalman filter analysis).

    E: (N, n); y: (m,); h: callable or (m, n) matrix; R: covariance operator
    or array; key: unused; joseph: Joseph-form covariance update.
    Returns (N, n).
    """
    del key
    check_bool("joseph", joseph)
    E, y, _, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    xbar = ensemble_mean(E)
    P = ensemble_covariance(E)
    H, y = linearize(h, xbar, y)  # y shifted: the innovation is y - h(x̄)
    mean_a, cov_a = kalman_update(xbar, P, y, H, R, joseph=joseph)
    return ensemble_with_covariance(E, mean_a, cov_a)
