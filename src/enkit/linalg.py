"""L0 linear algebra: Kalman gain solves and symmetric matrix functions.

The innovation solve ``C⁻¹ d`` with ``C = Yᵀ Y + R`` (Y: normalised
observation anomalies, R: observation-error covariance) is the core of every
ensemble Kalman analysis. It has two exact forms:

- observation space: Cholesky of the m×m matrix C, cost O(m³ + N m²);
- ensemble space (Sherman–Morrison–Woodbury),
  ``C⁻¹ = R⁻¹ − R⁻¹ Yᵀ (I_N + Y R⁻¹ Yᵀ)⁻¹ Y R⁻¹``, cost O(N² m + N³) plus
  the R solves, which are O(m) for scalar or diagonal R.

``kalman_solve`` picks the ensemble-space form when m > N.

``inverse_sqrt_identity_plus`` gives ``(I + A)^{-1/2}`` for a positive
semi-definite A (the ETKF transform) without an eigendecomposition when A is
moderately conditioned (Newton–Schulz iteration: matrix products only).

``sym_matrix_functions`` evaluates f(A) for a symmetric A through one
eigendecomposition, with a derivative rule (Daleckiĭ–Kreĭn) that stays finite
when eigenvalues repeat, where differentiating ``eigh`` directly gives NaN.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import cho_factor, cho_solve

from enkit.covariance import Covariance

__all__ = [
    "kalman_solve",
    "kalman_solve_observation_space",
    "kalman_solve_ensemble_space",
    "sym_matrix_functions",
    "spd_solve",
    "inverse_sqrt_identity_plus",
]


def spd_solve(A: Array, B: Array) -> Array:
    """Solve ``A X = B`` for symmetric positive-definite A by Cholesky.

    A: (k, k), B: (k,) or (k, r).
    """
    return cho_solve(cho_factor(A, lower=True), B)


def kalman_solve_observation_space(Y: Array, R: Covariance, D: Array) -> Array:
    """Rows of ``D C⁻¹`` with ``C = Yᵀ Y + R``, by Cholesky of the m×m C.

    Y: (N, m) observation anomalies, already divided by sqrt(N − 1);
    R: covariance operator of dimension m; D: (k, m) right-hand sides as rows.
    Returns (k, m).
    """
    C = Y.T @ Y + R.dense()
    return spd_solve(C, D.T).T


def kalman_solve_ensemble_space(Y: Array, R: Covariance, D: Array) -> Array:
    """Rows of ``D C⁻¹`` with ``C = Yᵀ Y + R``, by the Woodbury identity.

    ``C⁻¹ = R⁻¹ − R⁻¹ Yᵀ (I_N + Y R⁻¹ Yᵀ)⁻¹ Y R⁻¹``: only N×N systems and
    R solves, so a diagonal R of any size is never densified.
    Same arguments and result as ``kalman_solve_observation_space``.
    """
    RiD = R.solve(D)  # (k, m)
    RiY = R.solve(Y)  # (N, m)
    G = jnp.eye(Y.shape[0], dtype=Y.dtype) + Y @ RiY.T
    Z = spd_solve(G, Y @ RiD.T)  # (N, k)
    return RiD - Z.T @ RiY


def kalman_solve(
    Y: Array,
    R: Covariance,
    D: Array,
    *,
    method: Literal["auto", "observation", "ensemble"] = "auto",
) -> Array:
    """Rows of ``D C⁻¹``, ``C = Yᵀ Y + R``: the innovation solve of the EnKF.

    Y: (N, m) normalised observation anomalies; R: covariance operator;
    D: (k, m). ``method="auto"`` uses the ensemble-space (Woodbury) form when
    m > N and the observation-space Cholesky otherwise; both are exact.
    Returns (k, m).
    """
    N, m = Y.shape
    if method == "auto":
        method = "ensemble" if m > N else "observation"
    if method == "ensemble":
        return kalman_solve_ensemble_space(Y, R, D)
    if method == "observation":
        return kalman_solve_observation_space(Y, R, D)
    raise ValueError(
        f"method must be 'auto', 'observation' or 'ensemble', got {method!r}"
    )


def sym_matrix_functions(
    A: Array, fs: tuple[Callable[[Array], Array], ...]
) -> tuple[Array, ...]:
    """``(f₁(A), f₂(A), ...)`` for symmetric A, through one ``eigh``.

    Each f acts elementwise on the eigenvalues, ``f(A) = V f(Λ) Vᵀ``, and
    must be differentiable at them. The derivative follows the
    Daleckiĭ–Kreĭn formula ``d f(A) = V (F ∘ (Vᵀ dA V)) Vᵀ`` with the divided
    differences ``F_ij = (f(λᵢ) − f(λⱼ)) / (λᵢ − λⱼ)``, replaced by
    ``(f'(λᵢ) + f'(λⱼ)) / 2`` where the eigenvalues (nearly) coincide, so
    gradients are finite for repeated eigenvalues (e.g. the zero eigenvalues
    of a rank-deficient ensemble-space matrix).

    A: (k, k) symmetric; fs: a tuple of elementwise functions (hashable: pass
    the same function objects to avoid retracing). Returns a tuple of (k, k).
    """
    return _sym_funcs(tuple(fs), A)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _sym_funcs(fs, A):
    lam, V = jnp.linalg.eigh(A)
    return tuple((V * f(lam)) @ V.T for f in fs)


@_sym_funcs.defjvp
def _sym_funcs_jvp(fs, primals, tangents):
    (A,), (dA,) = primals, tangents
    lam, V = jnp.linalg.eigh(A)
    dAv = V.T @ (0.5 * (dA + dA.T)) @ V
    diff = lam[:, None] - lam[None, :]
    eps = jnp.finfo(lam.dtype).eps
    scale = jnp.maximum(jnp.max(jnp.abs(lam)), jnp.finfo(lam.dtype).tiny)
    close = jnp.abs(diff) <= jnp.sqrt(eps) * scale
    safe = jnp.where(close, 1.0, diff)
    outs, douts = [], []
    for f in fs:
        fl = f(lam)
        fp = jax.vmap(jax.grad(f))(lam)
        F = jnp.where(
            close, 0.5 * (fp[:, None] + fp[None, :]), (fl[:, None] - fl[None, :]) / safe
        )
        outs.append((V * fl) @ V.T)
        douts.append(V @ (F * dAv) @ V.T)
    return tuple(outs), tuple(douts)


def _rsqrt1p(lam):
    return 1.0 / jnp.sqrt(1.0 + lam)


# Above this bound on λmax(A) the eigendecomposition is cheaper than the
# Newton–Schulz iterations (their count grows like log₁.₅ of the bound).
_NEWTON_SCHULZ_MAX_BOUND = 64.0


@jax.custom_jvp
def inverse_sqrt_identity_plus(A: Array) -> Array:
    """``(I + A)^{-1/2}`` for symmetric positive semi-definite A, exactly.

    With ``c = 1 + ‖A‖_F / 2`` the eigenvalues of ``T = (I + A)/c`` lie in
    (0, 2), where the coupled Newton–Schulz iteration (Higham 1997; Higham
    2008, *Functions of Matrices*, §6.7)

        M = (3I − Z Y) / 2,   Y ← Y M,   Z ← M Z,    Y₀ = T, Z₀ = I

    converges quadratically to ``Y → T^{1/2}``, ``Z → T^{-1/2}``; it stops
    when ``‖M − I‖_max`` falls below sqrt(eps) and takes one more step, so
    the result is exact to round-off. Only matrix products are used, which
    for the N×N matrices of an ensemble transform is several times cheaper
    than ``eigh``. When ``‖A‖_F / 2`` exceeds 64 (slow convergence) the
    eigendecomposition is used instead. Derivatives follow the Daleckiĭ–Kreĭn
    rule of ``sym_matrix_functions`` (finite for repeated eigenvalues).

    A: (k, k) symmetric positive semi-definite. Returns (k, k) symmetric.
    """
    bound = 0.5 * jnp.sqrt(jnp.sum(A * A))
    return jax.lax.cond(
        bound <= _NEWTON_SCHULZ_MAX_BOUND,
        _newton_schulz_isqrt,
        lambda A, bound: _sym_funcs((_rsqrt1p,), A)[0],
        A,
        bound,
    )


def _newton_schulz_isqrt(A, bound):
    k = A.shape[0]
    eye = jnp.eye(k, dtype=A.dtype)
    c = 1.0 + bound
    tol = jnp.sqrt(jnp.finfo(A.dtype).eps)

    def step(Y, Z):
        M = 1.5 * eye - 0.5 * (Z @ Y)
        return Y @ M, M @ Z, jnp.max(jnp.abs(M - eye))

    def cond(state):
        return (state[2] > tol) & (state[3] < 100)

    def body(state):
        Y, Z, _, it = state
        Y, Z, err = step(Y, Z)
        return Y, Z, err, it + 1

    Y, Z, _, _ = jax.lax.while_loop(cond, body, ((eye + A) / c, eye, jnp.inf, 0))
    _, Z, _ = step(Y, Z)
    Z = 0.5 * (Z + Z.T)
    return Z / jnp.sqrt(c)


@inverse_sqrt_identity_plus.defjvp
def _inverse_sqrt_identity_plus_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    out, dout = _sym_funcs_jvp((_rsqrt1p,), (A,), (dA,))
    return out[0], dout[0]
