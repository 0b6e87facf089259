"""Square-root (array-form) Kalman analysis (Morf & Kailath 1975)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import solve_triangular
from jax.typing import ArrayLike

from enkit._checks import check_ndim
from enkit.covariance import as_covariance
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, linearize, prepare_analysis
from enkit.filters.kalman import check_observation, ensemble_with_covariance, kalman_update

__all__ = ["sqrt_kalman", "sqrt_kalman_update"]


def sqrt_kalman_update(
    mean: ArrayLike,
    S: ArrayLike,
    y: ArrayLike,
    H: ArrayLike,
    R,
) -> tuple[Array, Array]:
    """Kalman analysis of ``N(mean, S Sᵀ)`` in square-root (array) form.

    The observation is first whitened with R's factor (``R = L Lᵀ``:
    ``ỹ = L⁻¹ y``, ``H̃ = L⁻¹ H``, unit noise). One orthogonal triangularisation
    Θ (a QR factorisation) of the pre-array then gives the post-array

        [ I    H̃ S ]  Θ  =  [ C^{1/2}   0  ]
        [ 0     S  ]        [ K̄        Sₐ ],

    with ``C = H̃ P H̃ᵀ + I = C^{1/2} C^{T/2}``, ``K̄ = P H̃ᵀ C^{-T/2}``, and

        x̄ₐ = x̄ + K̄ C^{-1/2} (ỹ − H̃ x̄),      Sₐ Sₐᵀ = P − K̄ K̄ᵀ = Pₐ.

    Neither P nor Pₐ is ever formed: every product is with a factor, so Pₐ
    stays symmetric positive semi-definite by construction and the square
    root carries the information in about twice the precision of P. Cost
    O((m + k)(m + n)²) for the QR: meant for moderate m and n (for large m
    with a diagonal R use an ensemble-space scheme such as ``etkf``).

    mean: (n,); S: (n, k) any square root of the forecast covariance,
    ``P = S Sᵀ`` (k may differ from n: ensemble anomalies, a low-rank
    factor, a Cholesky factor); y: (m,); H: (m, n); R: covariance operator
    or array (scalar, (m,) variances or (m, m)). Returns
    ``(mean_a (n,), S_a (n, min(k, n)))`` with ``P_a = S_a S_aᵀ``.

    References: Morf & Kailath (1975), IEEE TAC 20, "Square-root algorithms
    for least-squares estimation"; Kaminski, Bryson & Schmidt (1971).
    """
    mean, S, y, H = (jnp.asarray(a) for a in (mean, S, y, H))
    check_ndim("mean", mean, 1, "(n,)")
    n = mean.shape[0]
    check_ndim("S", S, 2, "(n, k)")
    if S.shape[0] != n:
        raise ValueError(f"S must have shape (n, k) with n = {n}, got {S.shape}")
    m = check_observation(y, H, n)
    dtype = jnp.result_type(mean, S, y, H)
    mean, S, y, H = (a.astype(dtype) for a in (mean, S, y, H))
    R = as_covariance(R, m).astype(dtype)
    HSw = R.whiten((H @ S).T)  # (k, m): rows of (L⁻¹ H S)ᵀ
    d = R.whiten(y - H @ mean)  # (m,)
    # Transposed pre-array, (m + k, m + n); its QR gives the post-array ᵀ.
    pre_t = jnp.block(
        [[jnp.eye(m, dtype=dtype), jnp.zeros((m, n), dtype)], [HSw, S.T]]
    )
    post = jnp.linalg.qr(pre_t, mode="r").T  # (m + n, min(m + k, m + n))
    Csqrt = post[:m, :m]  # lower triangular, C = Csqrt Csqrtᵀ
    Kbar = post[m:, :m]  # (n, m)
    S_a = post[m:, m:]  # (n, min(k, n))
    mean_a = mean + Kbar @ solve_triangular(Csqrt, d, lower=True)
    return mean_a, S_a


def sqrt_kalman(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
) -> Array:
    """Square-root Kalman update of the ensemble's sample mean and covariance.

    The normalised anomalies X (rows divided by sqrt(N − 1)) are a square
    root of the forecast sample covariance, ``P = Xᵀ X``; they go into
    ``sqrt_kalman_update`` with ``S = Xᵀ`` (n × N), and an ensemble carrying
    exactly the analysis mean and covariance ``Pₐ = Sₐ Sₐᵀ`` is returned
    (``ensemble_with_covariance``). A callable h is linearised at the mean,
    ``H = ∂h/∂x(x̄)``, with innovation ``y − h(x̄)``, as in ``enkit.kalman``.
    Same result as ``enkit.kalman`` (to round-off), by the square-root path.

    E: (N, n); y: (m,); h: callable or (m, n) matrix; R: covariance operator
    or array; key: unused (deterministic scheme). Returns (N, n).

    Reference: Morf & Kailath (1975), IEEE TAC 20.
    """
    del key
    E, y, _, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    xbar, X = scaled_anomalies(E)
    H, y = linearize(h, xbar, y)  # y shifted: the innovation is y - h(x̄)
    mean_a, cov_a = _analysis_moments(xbar, X.T, y, H, R)
    return ensemble_with_covariance(E, mean_a, cov_a)


@jax.custom_jvp
def _analysis_moments(mean, S, y, H, R):
    """(x̄ₐ, Pₐ) by the square-root path. Its derivative is that of the same
    function written with P = S Sᵀ (``kalman_update``): the QR's own
    derivative is undefined when the pre-array loses rank (zero spread)."""
    mean_a, S_a = sqrt_kalman_update(mean, S, y, H, R)
    return mean_a, S_a @ S_a.T


@_analysis_moments.defjvp
def _analysis_moments_jvp(primals, tangents):
    def moments(mean, S, y, H, R):
        return kalman_update(mean, S @ S.T, y, H, R, joseph=False)

    _, d_out = jax.jvp(moments, primals, tangents)
    return _analysis_moments(*primals), d_out
