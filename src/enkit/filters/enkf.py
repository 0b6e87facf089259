"""Stochastic EnKF with perturbed observations (Evensen 1994; Burgers,
van Leeuwen & Evensen 1998)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import check_bool
from enkit._random import normal
from enkit.ensemble import scaled_anomalies
from enkit.filters._blocal import Localization, check_localization, localized_gain_solve
from enkit.filters._common import ObservationOperator, as_key, prepare_analysis
from enkit.linalg import (
    SolveMethod,
    check_solve_method,
    kalman_solve,
    kalman_solve_weights,
    resolve_solve_method,
    spd_solve_rows_by_inverse,
)

__all__ = ["DEFAULT_DRAW_DTYPE", "enkf", "perturbed_observations"]

# The dtype of the standard normal draws behind the perturbed observations
# (enkf's docstring says why single precision).
DEFAULT_DRAW_DTYPE = jnp.float32

# Up to this ensemble size the centring of the perturbations is a product (below).
_CENTRE_BY_PRODUCT_MAX_N = 256


def perturbed_observations(key: Array, y: Array, R, N: int, *, center: bool = False,
                           draw_dtype=DEFAULT_DRAW_DTYPE) -> Array:
    """N draws ``y + εᵢ``, ``εᵢ = L zᵢ ~ N(0, R)``: shape (N, m), the
    perturbations ``enkf`` makes with the same key and options (centred:
    with an m×m solve ``enkf`` removes the mean of the same draws after the
    solve instead, the same analysis to round-off).

    R: a covariance operator (a diagonal R costs O(N m), never m²).
    With ``center=True`` the perturbations are re-centred to zero mean.
    draw_dtype: dtype of the standard normal draws z, colourised in R's
    dtype (default ``float32``, see ``enkf``); None: R's own dtype, the
    draws of ``R.sample(key, (N,))``.
    """
    if draw_dtype is None:
        eps = R.sample(key, (N,))
    else:
        z = normal(key, (N, R.dim), draw_dtype)
        eps = R.colorize(z.astype(R.dtype))
    if center:
        if N <= _CENTRE_BY_PRODUCT_MAX_N:
            # (I − 11ᵀ/N) ε as one product: XLA fuses the draws into every
            # consumer and would hash them once for the mean and again for
            # the subtraction; a product's operand is computed once (Lorenz-96,
            # N = m = 40: 56 -> 46 µs per analysis). O(N² m): small N only.
            eps = (jnp.eye(N, dtype=eps.dtype) - 1.0 / N) @ eps
        else:
            eps = eps - jnp.mean(eps, axis=0, keepdims=True)
    return y + eps


def check_draw_dtype(draw_dtype) -> None:
    """Raise ``TypeError`` unless draw_dtype is None or a floating dtype."""
    if draw_dtype is None:
        return
    try:
        ok = np.issubdtype(np.dtype(draw_dtype), np.floating)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"draw_dtype must be None or a floating dtype (e.g. jnp.float32), "
                        f"got {draw_dtype!r}")


def enkf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | int | None = None,
    center_perturbations: bool = False,
    draw_dtype=DEFAULT_DRAW_DTYPE,
    method: SolveMethod = "auto",
    rcond: float | Array | None = None,
    localization: Localization | None = None,
) -> Array:
    """Stochastic ensemble Kalman filter analysis with perturbed observations.

    Each member is updated with its own perturbed observation
    ``dᵢ = y + εᵢ, εᵢ ~ N(0, R)``:

        Eₐᵢ = Eᵢ + K (dᵢ − h(Eᵢ)),   K = Xᵀ Y (Yᵀ Y + R)⁻¹,

    with X, Y the state and observation anomalies divided by sqrt(N − 1).
    The sample covariance of the result matches the Kalman analysis
    covariance in expectation (Burgers et al. 1998).

    E: (N, n) forecast ensemble; y: (m,) observation; h: callable on one
    member or (m, n) matrix; R: covariance operator or array (scalar, (m,)
    variances, or (m, m)); key: PRNG key (required); center_perturbations:
    remove the sample mean of the perturbations so the mean update is exact
    (default False, the perturbed-observation EnKF of Burgers et al. 1998;
    DAPPER's ``EnKF("PertObs")`` centres them, without rescaling: pass True
    to match it); draw_dtype: dtype of the standard normal draws z
    (default ``jnp.float32``), colourised in R's dtype, so each ε is in R's
    precision; None: R's own dtype (``R.sample``, the former default).
    Why single precision by default: the draws are Monte Carlo noise
    whose sampling error, of order N^{-1/2}, is far above the 2⁻²⁴
    resolution of a float32 draw; their tails end at 5.3–5.4σ instead of
    about 8σ (a standard normal passes 5.3σ with probability 1.2e-7). The
    double-precision uniform-to-normal transform (erf⁻¹) costs about three
    times the float32 one on CPU and was the largest piece of the analysis
    at m = N = 40; float32 draws make a Lorenz-96 cycle 10–45% cheaper on a
    loaded 2-core machine, at the same mean RMSE over 8 truths
    (benchmarks/vs_dapper_enkf.py). Without x64 (JAX's default) nothing
    changes: R is float32 and so are its own draws;
    method: innovation solve, see ``enkit.linalg.kalman_solve`` ("auto",
    "observation", "ensemble", or the opt-in "pinv" for a rank-deficient
    ``Yᵀ Y + R``); rcond: the relative eigenvalue cut of "pinv" (None:
    ``enkit.linalg.default_rcond``, 10 · m · eps; only with "pinv");
    localization: None, or B-localisation tapers (``enkit.GainLocalization``
    from ``enkit.gain_localization``, or ``enkit.AdaptiveLocalization``),
    which replace the gain by

        K = (ρ_xy ∘ Xᵀ Y)(ρ_yy ∘ Yᵀ Y + R)⁻¹

    (Houtekamer & Mitchell 2001), with the same perturbed observations
    (same key, same draws); the m×m system is solved by Cholesky
    (``method`` "auto" or "observation"; "pinv" pseudo-inverts it;
    "ensemble" is refused), cost
    O(m³ + N m² + N n m), never an n×n matrix.
    Returns the (N, n) analysis ensemble.

    DAPPER's ``EnKF("PertObs")`` is this analysis with centred draws: its
    ``C = Yᵀ Y + (N − 1) R`` on unscaled anomalies is (N − 1) times the C
    here, the same gain; its ``infl`` multiplies the analysis anomalies, as
    ``assimilate(inflation=λ)`` does. On Lorenz-96 in the setting of Sakov &
    Oke (2008) (n = m = N = 40, R = I, inflation 1.06, 8 truths × 3,000
    cycles, benchmarks/vs_dapper_enkf.py) the mean analysis RMSE was 0.2206
    uncentred and 0.2185 centred for enkit, 0.2179 centred (DAPPER's own)
    and 0.2194 uncentred for DAPPER: each convention agrees within 0.5%
    between the libraries; centring lowers the RMSE by about 1% (0.7% in
    DAPPER), so the default here sits about 1% above DAPPER's default; one
    truth alone differs by up to 3–4% between the libraries, as each draws
    its own perturbations. A gap of 2–4% seen on one truth (0.224 against
    DAPPER's 0.216–0.220) is thus the convention (about 1%) plus the Monte
    Carlo spread of a single truth, not a difference in the gain or the
    solve. The default stays the scheme as Burgers et al. (1998) publish it
    (independent draws), so seeded results do not change; centring leaves
    the analysis anomalies as they are and makes the mean update exact,
    ``x̄ₐ = x̄ + K (y − ȳ)``, and lowered the RMSE by about 1% in both
    libraries: pass ``center_perturbations=True`` for DAPPER's convention.

    References: Evensen (1994), JGR 99(C5); Burgers, van Leeuwen & Evensen
    (1998), MWR 126; Houtekamer & Mitchell (2001), MWR 129.
    """
    key = as_key(key, "enkf")
    check_bool("center_perturbations", center_perturbations)
    check_draw_dtype(draw_dtype)
    if localization is None:
        check_solve_method(method, rcond)
    else:
        check_localization(localization, method, rcond)
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    _, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    N, m = HE.shape
    # The ensemble-space solve gives the weights D C⁻¹ Yᵀ straight from the
    # N×N system (kalman_solve_weights); with an m×m solve by triangular
    # solves, centring is applied after it (_centred_rows).
    ensemble = localization is None and resolve_solve_method(method, N, m) == "ensemble"
    after = center_perturbations and not ensemble and not spd_solve_rows_by_inverse(N + 1, m)
    D = perturbed_observations(key, y, R, N, center=center_perturbations and not after,
                               draw_dtype=draw_dtype)
    rhs = D - HE
    if after:
        rhs = jnp.concatenate([rhs, (y - ybar)[None]])
    if localization is not None:
        Z, G = localized_gain_solve(localization, X, Y, R, rhs, method, rcond)
        return E + _centred_rows(Z, after) @ G.T
    if ensemble:
        W = kalman_solve_weights(Y, R, rhs, method="ensemble")
        return E + _centred_rows(W, after) @ X
    Z = kalman_solve(Y, R, rhs, method=method, rcond=rcond)  # rows C⁻¹ dᵢ
    return E + _update_product(_centred_rows(Z, after), Y, X)


def _centred_rows(Z: Array, after: bool) -> Array:
    """The solved rows of the centred perturbed innovations (``after``), or Z.

    The solve is linear in its rows, so with ``Z = [(y + εᵢ − h(xᵢ)) C⁻¹; (y − ȳ) C⁻¹]``
    (N + 1 rows, the last the mean innovation) the rows of the centred
    perturbations ``εᵢ − ε̄`` are ``Zᵢ − mean(Z₁..Z_N) + Z_{N+1}``: the
    analysis of the centred perturbed observations of
    ``perturbed_observations(center=True)``, to round-off, without its
    O(N² m) centring product before the solve (Lorenz-96, N = m = 40: 38.6
    -> 36.8 µs per analysis; N = 100: 83 -> 72.5 µs). Only for the m×m
    solves: with the ensemble-space solve (the weights of
    ``kalman_solve_weights``; Z here is then those rows, as linear in the
    right-hand sides) the extra row made the analysis at N = 20, m = 40
    more than twice as slow (14.6 against 34 µs), so there the draws are
    centred first; likewise where the m×m solve goes through the explicit
    inverse (N + 1 ≥ 2m, ``enkit.linalg.spd_solve_rows_by_inverse``): the
    extra row made N = 100, m = 40 twice as slow (150 against 52 µs
    uncentred), centring first 66 against the 75 µs of triangular solves
    after (the same process, interleaved runs). The cause, seen in the
    compiled programs: XLA fuses the draws into the row-major concatenation
    that feeds a matrix product (the triangular solves take it column-major),
    and that fusion ran at a fifth of the speed of the column-major one
    (a similar loop: 45 against 9 µs). Either way the analysis is the same
    to round-off: the choice (``after`` in ``enkf``, by the rules of
    ``enkit.linalg.resolve_solve_method`` and ``spd_solve_rows_by_inverse``)
    only moves the cost.
    """
    if not after:
        return Z
    return Z[:-1] - jnp.mean(Z[:-1], axis=0) + Z[-1]


def _update_product(Z: Array, Y: Array, X: Array) -> Array:
    """``Z Yᵀ X`` in the cheaper order: ``(Z Yᵀ) X`` costs N²(m + n)
    multiply-adds, ``Z (Yᵀ X)`` 2 N m n (fewer when m < N, e.g. N = 100
    members and m = n = 40). Z: (N, m); Y: (N, m); X: (N, n). Returns (N, n).
    """
    N, m = Y.shape
    n = X.shape[1]
    if 2 * m * n < N * (m + n):
        return Z @ (Y.T @ X)
    return (Z @ Y.T) @ X
