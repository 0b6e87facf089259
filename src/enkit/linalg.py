"""L0 linear algebra: Kalman gain solves and symmetric matrix functions.

The innovation solve ``C⁻¹ d`` with ``C = Yᵀ Y + R`` (Y: normalised
observation anomalies, R: observation-error covariance) is the core of every
ensemble Kalman analysis. It has two exact forms:

- observation space: Cholesky of the m×m matrix C, cost O(m³ + N m²);
- ensemble space (Sherman–Morrison–Woodbury),
  ``C⁻¹ = R⁻¹ − R⁻¹ Yᵀ (I_N + Y R⁻¹ Yᵀ)⁻¹ Y R⁻¹``, cost O(N² m + N³) plus
  the R solves, which are O(m) for scalar or diagonal R.

``kalman_solve`` picks the ensemble-space form when m > N. A third,
opt-in form, ``method="pinv"``, is for a singular or numerically singular C
(a singular R, perfect duplicated observations): the Moore–Penrose solve
``D C⁺`` through the eigendecomposition of the m×m C, with eigenvalues
``|λ| ≤ rcond · max|λ|`` treated as zero (``kalman_solve_pinv``). "auto"
never selects it: the Cholesky and Woodbury forms assume C (and, for
Woodbury, R) positive definite, and fail loudly (NaN) when it is not.

``inverse_sqrt_identity_plus`` gives ``(I + A)^{-1/2}`` for a positive
semi-definite A (the ETKF transform), and ``inverse_sqrt_identity_plus_factor``
the g(M) with ``(I + S Sᵀ)^{-1/2} = I + S g(Sᵀ S) Sᵀ``, without an
eigendecomposition when A is moderately conditioned (a Chebyshev series or a
Newton–Schulz iteration: matrix products only).

``sym_matrix_functions`` evaluates f(A) for a symmetric A through one
eigendecomposition, with a derivative rule (Daleckiĭ–Kreĭn) that stays finite
when eigenvalues repeat, where differentiating ``eigh`` directly gives NaN.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import cho_factor, cho_solve

from enkit.covariance import Covariance

__all__ = [
    "kalman_solve",
    "kalman_solve_observation_space",
    "kalman_solve_ensemble_space",
    "kalman_solve_pinv",
    "kalman_solve_weights",
    "resolve_solve_method",
    "check_solve_method",
    "default_rcond",
    "symmetric_pinv_solve",
    "sym_matrix_functions",
    "spd_solve",
    "spd_solve_rows",
    "spd_solve_rows_by_inverse",
    "inverse_sqrt_identity_plus",
    "inverse_sqrt_identity_plus_factor",
]


def spd_solve(A: Array, B: Array) -> Array:
    """Solve ``A X = B`` for symmetric positive-definite A by Cholesky.

    A: (k, k), B: (k,) or (k, r).
    """
    return cho_solve(cho_factor(A, lower=True), B)


def spd_solve_rows(A: Array, B: Array) -> Array:
    """Rows of ``B A⁻¹`` for symmetric positive-definite A, by Cholesky.

    ``A = L Lᵀ``; ``B A⁻¹ = (B L⁻ᵀ) L⁻¹`` by two right-side triangular
    solves on the rows of B, the same result as ``spd_solve(A, B.T).T`` to
    round-off. Right-side solves on row-major B need no transposed copies
    and ran about a third faster than the left-side solves of ``spd_solve``
    on CPU (XLA's LAPACK trsm; k = 40: 5.7 against 8.6 µs per solve, k = 100:
    54 against 74 µs). With r ≥ 2k rows (``spd_solve_rows_by_inverse``; e.g.
    the innovations of 100 members against 40 observations) it is
    ``B (L⁻ᵀ L⁻¹)`` instead: one triangular solve of the
    identity and two matrix products, no triangular solve with r right-hand
    sides (on CPU the trsm ran at a fraction of a matrix product's speed;
    benchmarks/spd_solve_rows.py: k = 40, r = 101: 34.7 against 25.7 µs;
    k = 20, r = 101: 11.3 against 6.8 µs; k = 100, r = 201: about even,
    211 against 206 µs); the same to round-off.
    A: (k, k), only its lower triangle read (like ``spd_solve``); B: (r, k).
    Returns (r, k); NaN where A is not positive definite.
    """
    L = jax.lax.linalg.cholesky(A, symmetrize_input=False)
    if spd_solve_rows_by_inverse(B.shape[-2], A.shape[-1]):
        Li = jax.lax.linalg.triangular_solve(L, _eye_like(L), left_side=True, lower=True)
        return B @ (_mT(Li) @ Li)
    W = jax.lax.linalg.triangular_solve(L, B, left_side=False, lower=True, transpose_a=True)
    return jax.lax.linalg.triangular_solve(L, W, left_side=False, lower=True)


# spd_solve_rows forms A⁻¹ = L⁻ᵀ L⁻¹ from this many rows of B per column of A
# (benchmarks/spd_solve_rows.py, CPU: at r ≈ k the triangular solves were up
# to 30% cheaper, from r = 2k on the inverse was 25–40% cheaper for k ≤ 40
# and even at k = 100).
_INVERSE_MIN_ROWS_PER_COLUMN = 2


def spd_solve_rows_by_inverse(r: int, k: int) -> bool:
    """Whether ``spd_solve_rows`` solves r rows against a k×k matrix through
    the explicit inverse (r ≥ 2k) rather than two triangular solves; for
    callers whose right-hand sides cost differently in the two ways (see
    ``enkit.filters.enkf``)."""
    return r >= _INVERSE_MIN_ROWS_PER_COLUMN * k


def kalman_solve_observation_space(Y: Array, R: Covariance, D: Array) -> Array:
    """Rows of ``D C⁻¹`` with ``C = Yᵀ Y + R``, by Cholesky of the m×m C.

    Y: (N, m) observation anomalies, already divided by sqrt(N − 1);
    R: covariance operator of dimension m; D: (k, m) right-hand sides as rows.
    Returns (k, m).
    """
    C = Y.T @ Y + R.dense()
    return spd_solve_rows(C, D)


def kalman_solve_ensemble_space(Y: Array, R: Covariance, D: Array) -> Array:
    """Rows of ``D C⁻¹`` with ``C = Yᵀ Y + R``, by the Woodbury identity.

    ``C⁻¹ = R⁻¹ − R⁻¹ Yᵀ (I_N + Y R⁻¹ Yᵀ)⁻¹ Y R⁻¹``: only N×N systems and
    R solves, so a diagonal R of any size is never densified.
    Same arguments and result as ``kalman_solve_observation_space``.
    """
    RiD = R.solve(D)  # (k, m)
    G, RiY = _ensemble_space_system(Y, R)
    Z = spd_solve_rows(G, RiD @ Y.T)  # (k, N): rows of (R⁻¹ D) Yᵀ G⁻¹, G symmetric
    return RiD - Z @ RiY


def _ensemble_space_system(Y: Array, R: Covariance) -> tuple[Array, Array]:
    """``G = I_N + Y R⁻¹ Yᵀ`` (N, N) and the rows ``R⁻¹ Y`` (N, m) of the
    ensemble-space solves."""
    RiY = R.solve(Y)
    return jnp.eye(Y.shape[0], dtype=Y.dtype) + Y @ RiY.T, RiY


SolveMethod = Literal["auto", "observation", "ensemble", "pinv"]

# Every innovation solve kalman_solve offers, in the order error messages name them.
SOLVE_METHODS = ("auto", "observation", "ensemble", "pinv")


def default_rcond(m: int, dtype) -> float:
    """The default ``rcond`` of ``method="pinv"``: ``10 · m · eps(dtype)``.

    Eigenvalues of C that are zero in exact arithmetic come out of ``eigh``
    (and of forming ``Yᵀ Y + R``) as round-off of order ``eps · ‖C‖`` times a
    modest factor growing with m; ``10 m eps`` sits above that noise and is
    the default of ``jnp.linalg.pinv`` (``rtol = 10 · max(M, N) · eps``), so
    ``method="pinv"`` equals ``D @ jnp.linalg.pinv(C, hermitian=True)``.
    float64: 2.2e-15 m; float32: 1.2e-6 m. m: the dimension of C.
    """
    return 10.0 * m * float(jnp.finfo(dtype).eps)


def check_solve_method(method, rcond=None, *, allowed: tuple[str, ...] = SOLVE_METHODS,
                       reason: str = "") -> None:
    """Refuse an unknown or unsupported innovation solve, or a bad ``rcond``.

    method must be one of ``allowed`` (a scheme that cannot honour every
    form of ``kalman_solve`` passes the ones it can, and ``reason`` to say
    why); rcond: None (the default ``default_rcond``) or a real scalar,
    finite and ≥ 0 (checked when concrete), and only with ``method="pinv"``.
    Raises ``ValueError`` naming the argument and the valid options.
    """
    if not isinstance(method, str) or method not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        why = f" ({reason})" if reason and method in SOLVE_METHODS else ""
        raise ValueError(f"method must be one of {names}{why}, got {method!r}")
    if rcond is None:
        return
    if method != "pinv":
        raise ValueError(
            f"rcond is the eigenvalue cut of method='pinv' only, got rcond={rcond!r} "
            f"with method={method!r}; pass rcond=None or method='pinv'"
        )
    dtype = getattr(rcond, "dtype", None)
    if dtype is None and isinstance(rcond, (int, float)) and not isinstance(rcond, bool):
        dtype = np.asarray(rcond).dtype
    if dtype is None or np.dtype(dtype).kind not in "iuf" or np.ndim(rcond) != 0:
        raise ValueError(f"rcond must be a real scalar >= 0, got {rcond!r}")
    if not isinstance(rcond, jax.core.Tracer):
        v = float(rcond)
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"rcond must be finite and >= 0, got {v}")


def symmetric_pinv_solve(C: Array, D: Array, rcond=None) -> Array:
    """Rows of ``D C⁺``, C⁺ the Moore–Penrose pseudo-inverse of symmetric C.

    ``C = V Λ Vᵀ`` (``eigh`` of the symmetrised C), ``C⁺ = V Λ⁺ Vᵀ`` with
    ``Λ⁺ᵢ = 1/λᵢ`` where ``|λᵢ| > rcond · max|λ|`` and 0 elsewhere (the
    singular values of a symmetric C are the |λᵢ|). C = 0 gives 0.
    C: (m, m); D: (k, m); rcond: None (``default_rcond(m, dtype)``) or a
    scalar ≥ 0 (a traced value is accepted: no recompilation when it
    changes). Returns (k, m).
    """
    m = C.shape[0]
    if m == 0:
        return D
    if rcond is None:
        rcond = default_rcond(m, C.dtype)
    lam, V = jnp.linalg.eigh(0.5 * (C + C.T))
    cutoff = jnp.asarray(rcond, lam.dtype) * jnp.max(jnp.abs(lam))
    keep = jnp.abs(lam) > cutoff
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return ((D @ V) * inv) @ V.T


def kalman_solve_pinv(Y: Array, R: Covariance, D: Array, *, rcond=None) -> Array:
    """Rows of ``D C⁺``, ``C = Yᵀ Y + R``, C⁺ the Moore–Penrose pseudo-inverse.

    For a singular (or numerically singular) C, where Cholesky gives NaN or
    digits lost to round-off: a singular R (zero variances, possible only
    for an operator built inside a trace, where its checks do not run),
    duplicated observations with variances below the resolution of C
    (``R ≪ eps · Yᵀ Y``), a rank-deficient dense R. Through
    ``symmetric_pinv_solve``: one ``eigh`` of the m×m C, eigenvalues
    ``|λ| ≤ rcond · max|λ|`` cut to zero. When the innovations lie in the
    range of C (consistent data: duplicated perfect observations agree) the
    analysis is the Kalman analysis with the redundant observations
    removed. R is densified (cost O(m³ + N m²), like
    ``kalman_solve_observation_space``); there is no ensemble-space form,
    since Woodbury needs R⁻¹.

    Y: (N, m); R: covariance operator (only ``R.dense()`` is used); D: (k, m);
    rcond: None (``default_rcond``: 10 · m · eps of the dtype, the default
    of ``jnp.linalg.pinv``) or a scalar ≥ 0. Returns (k, m). Gradients
    follow those of ``eigh`` and are not finite where eigenvalues of C
    repeat (e.g. several cut ones): differentiate through "observation".
    """
    C = Y.T @ Y + R.dense()
    return symmetric_pinv_solve(C, D, rcond)


def resolve_solve_method(method: str, N: int, m: int) -> str:
    """The solve that ``method`` means for N members and m observations:
    ``"auto"`` is ``"ensemble"`` when m > N, else ``"observation"``; every
    other method is itself (see ``kalman_solve``)."""
    if method == "auto":
        return "ensemble" if m > N else "observation"
    return method


def kalman_solve(
    Y: Array,
    R: Covariance,
    D: Array,
    *,
    method: SolveMethod = "auto",
    rcond: float | Array | None = None,
) -> Array:
    """Rows of ``D C⁻¹``, ``C = Yᵀ Y + R``: the innovation solve of the EnKF.

    Y: (N, m) normalised observation anomalies; R: covariance operator;
    D: (k, m). ``method``:

    - ``"auto"`` (default): ``"ensemble"`` when m > N, else ``"observation"``;
      it never switches to ``"pinv"``: a singular C gives NaN, not a
      silently different solve;
    - ``"observation"``: Cholesky of the m×m C (``kalman_solve_observation_space``);
    - ``"ensemble"``: Woodbury, N×N systems and R solves, a diagonal R never
      densified (``kalman_solve_ensemble_space``); needs R positive definite;
    - ``"pinv"``: ``D C⁺`` by the eigendecomposition of C, eigenvalues
      ``|λ| ≤ rcond · max|λ|`` treated as zero (``kalman_solve_pinv``), for a
      rank-deficient C; opt-in only.

    rcond: the relative eigenvalue cut of ``"pinv"``; None means
    ``default_rcond(m, dtype) = 10 · m · eps`` (float64: 2.2e-15 m, float32:
    1.2e-6 m; ``jnp.linalg.pinv``'s default). Finite and ≥ 0; passing it
    with another method raises. Bad values raise ``ValueError``.
    Returns (k, m).
    """
    check_solve_method(method, rcond)
    method = resolve_solve_method(method, *Y.shape)
    if method == "ensemble":
        return kalman_solve_ensemble_space(Y, R, D)
    if method == "observation":
        return kalman_solve_observation_space(Y, R, D)
    return kalman_solve_pinv(Y, R, D, rcond=rcond)


def kalman_solve_weights(
    Y: Array,
    R: Covariance,
    D: Array,
    *,
    method: SolveMethod = "auto",
    rcond: float | Array | None = None,
) -> Array:
    """Rows of ``D C⁻¹ Yᵀ``, ``C = Yᵀ Y + R``: the ensemble weights of an
    innovation solve (k, N), so that ``(D C⁻¹ Yᵀ) X`` is the update ``D Kᵀ``
    with the gain ``K = Xᵀ Y C⁻¹`` of the normalised anomalies X, Y.

    ``method`` and ``rcond`` as in ``kalman_solve``. With the ensemble-space
    solve the weights come straight from the N×N system, by
    ``C⁻¹ Yᵀ = R⁻¹ Yᵀ (I_N + Y R⁻¹ Yᵀ)⁻¹`` (push-through):
    ``D C⁻¹ Yᵀ = (R⁻¹ D Yᵀ) G⁻¹``, ``G = I_N + Y R⁻¹ Yᵀ``, one solve and no
    m-wide products after it (``kalman_solve_ensemble_space`` followed by
    ``@ Y.T`` takes two (k, N, m) products more, and a difference that
    cancels when R is small). Otherwise ``kalman_solve(...) @ Y.T``.

    Y: (N, m); R: covariance operator; D: (k, m). Returns (k, N).
    """
    check_solve_method(method, rcond)
    if resolve_solve_method(method, *Y.shape) == "ensemble":
        G, _ = _ensemble_space_system(Y, R)
        return spd_solve_rows(G, R.solve(D) @ Y.T)
    return kalman_solve(Y, R, D, method=method, rcond=rcond) @ Y.T


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


def _rsqrt1p_factor(lam):
    """``((1 + λ)^{-1/2} − 1)/λ``, written without the cancellation at λ → 0."""
    s = jnp.sqrt(1.0 + lam)
    return -1.0 / (s * (1.0 + s))


# The series paths of the matrix functions below: (degree d, interval L) with
# the Chebyshev interpolant of degree d on [0, L] of the function within
# eps/2 of it (relative, measured in extended precision; L rounded down), per
# function ("isqrt": (1 + λ)^{-1/2}; "isqrt_factor": ((1 + λ)^{-1/2} − 1)/λ)
# and precision. All start from A², A³, A⁴ (three products, which also give
# the bound). Degrees 3 and 7: Paterson–Stockmeyer, blocks of four
# coefficients combining I, B, B², B³ and one product by B⁴ per further
# block (B = A itself or 2A/L − I, see _series_form). Degrees 16 + 4r: the
# top 17 coefficients in the product form of _product_form (two products),
# then r Horner steps by B⁴; 5 + r products for a degree Paterson–Stockmeyer
# would reach with 6 + r. Beyond the last interval: Newton–Schulz while the
# bound is at most _NEWTON_SCHULZ_MAX_BOUND, else the eigendecomposition.
_SERIES_PLANS = {
    ("isqrt", "float64"): ((7, 0.046), (16, 0.64), (20, 1.1), (24, 1.6), (28, 2.3),
                           (36, 4.0)),
    ("isqrt_factor", "float64"): ((7, 0.042), (16, 0.61), (20, 1.05), (24, 1.6), (28, 2.2),
                                  (36, 3.8)),
    ("isqrt", "float32"): ((3, 0.075), (7, 0.74), (16, 4.3), (20, 6.1)),
    ("isqrt_factor", "float32"): ((3, 0.064), (7, 0.67), (16, 4.0), (20, 5.6)),
}
_NEWTON_SCHULZ_MAX_BOUND = 128.0  # on ‖A⁴‖_F^{1/4} ≥ λmax(A)
_PRODUCT_FORM_DEGREE = 16


def _series_precision(dtype) -> str:
    return "float64" if jnp.finfo(dtype).eps < 1e-10 else "float32"


def _chebyshev_interpolant(f, L: float, degree: int) -> np.ndarray:
    """Monomial coefficients, in ``t = 2λ/L − 1``, of the degree-``degree``
    Chebyshev interpolant of f on [0, L] (f acts on numpy arrays), computed
    in numpy's extended precision where the platform has one (returned in
    it: ``_series_form`` rounds them)."""
    ld = np.longdouble
    k = np.arange(degree + 1, dtype=ld)
    theta = np.arccos(ld(-1)) * (k + ld(0.5)) / (degree + 1)
    values = f(ld(L) * (1 + np.cos(theta)) / 2)
    c = np.cos(np.outer(k, theta)) @ values * (ld(2) / (degree + 1))
    c[0] /= 2
    return np.polynomial.chebyshev.cheb2poly(c)


# A plan's polynomial is evaluated in powers of λ itself (A, A², A³, A⁴ are
# then the blocks' powers as they are, no combinations) when that is well
# conditioned: Σₖ |cₖ| Lᵏ ≤ _MONOMIAL_MAX_CONDITION · min |f| on [0, L]
# (rounding cₖ then moves the polynomial by at most that many units of
# round-off; true for L up to about 1, the spectra of cycled ensembles), else
# in powers of the shifted t = 2λ/L − 1, bounded by 1 on the interval.
_MONOMIAL_MAX_CONDITION = 10.0


class _SeriesForm(NamedTuple):
    """How one plan's polynomial p is evaluated, in the variable u (λ for
    basis "lambda", t = 2λ/L − 1 for "shifted"): ``low`` its coefficients
    of u⁰ … u^{d−17} (all d + 1 of them, in blocks of four, when ``top`` is
    None), ``top`` the parameters ``(σ, a, b, e, f, g)`` of
    ``_product_form`` for the coefficients of u^{d−16} … u^d; all rounded
    to float64."""

    basis: str
    L: float
    low: np.ndarray
    top: tuple | None


def _evaluate_form(form: _SeriesForm, B, mul, cast=lambda c: c):
    """The plan's polynomial from the powers ``B = [1, u, u², u³, u⁴]`` of
    its variable, with ``mul`` the product (matrix or scalar: the same
    arithmetic, so the scalar form checks the matrix one) and ``cast``
    applied to every coefficient."""
    low = [cast(c) for c in form.low]
    blocks = [sum(low[i + j] * B[j] for j in range(4)) for i in range(0, len(low), 4)]
    if form.top is None:
        Z = blocks.pop()
    else:
        sigma, a, b, e, f, g = form.top
        y0 = mul(B[4], sum(cast(a[i]) * B[i] for i in range(1, 5)))
        F1 = y0 + sum(cast(b[i]) * B[i] for i in range(1, 5))
        F2 = y0 + sum(cast(e[i]) * B[i] for i in range(1, 5))
        Z = mul(cast(sigma) * F1, F2) + cast(f) * y0 + sum(cast(g[i]) * B[i] for i in range(5))
    for C in reversed(blocks):
        Z = mul(Z, B[4]) + C
    return Z


def _product_form(p, f):
    """The parameters of ``p(u) = σ (y₀ + Σ bᵢ uⁱ)(y₀ + Σ eᵢ uⁱ) + f y₀ +
    Σ_{i=0}^{4} gᵢ uⁱ`` with ``y₀ = u⁴ Σ aᵢ uⁱ`` (unmarked sums over
    i = 1 … 4), a degree-16 polynomial in two products once u², u³, u⁴ are
    known (Sastre 2018, Linear Algebra Appl. 539, the y₁ₛ formula with
    s = 4; Paterson–Stockmeyer needs three more).

    p: the 17 coefficients (extended precision); f: the free parameter, an
    array of candidates. Matching coefficients from the top: degrees 16–13
    give a (a₄ = sqrt(|p₁₆|), σ = sign p₁₆), 12–9 the sums tᵢ = bᵢ + eᵢ
    (triangular in a₄), 8 a quadratic for b₄ (real where f makes its
    discriminant ≥ 0, else NaN), 7–5 b₃, b₂, b₁ (linear, pivot e₄ − b₄),
    4–0 g. Returns (σ, a, b, e, f, g) with a, b, e of shape (5, F) (index 0
    unused, zero) and g (5, F)."""
    ld = np.longdouble
    p = np.asarray(p, ld)
    f = np.asarray(f, ld)
    sigma = ld(1) if p[16] > 0 else ld(-1)
    q = p / sigma
    fs = f / sigma
    a = np.zeros((5,) + f.shape, ld)
    a[4] = np.sqrt(q[16])
    a[3] = q[15] / (2 * a[4])
    a[2] = (q[14] - a[3] ** 2) / (2 * a[4])
    a[1] = (q[13] - 2 * a[2] * a[3]) / (2 * a[4])
    t = np.zeros_like(a)
    t[4] = (q[12] - 2 * a[1] * a[3] - a[2] ** 2) / a[4]
    t[3] = (q[11] - 2 * a[1] * a[2] - a[3] * t[4]) / a[4]
    t[2] = (q[10] - a[1] ** 2 - a[2] * t[4] - a[3] * t[3]) / a[4]
    t[1] = (q[9] - a[1] * t[4] - a[2] * t[3] - a[3] * t[2]) / a[4]
    b = np.zeros_like(a)
    c8 = q[8] - (a[1] * t[3] + a[2] * t[2] + a[3] * t[1]) - fs * a[4]
    with np.errstate(invalid="ignore"):
        b[4] = (t[4] + np.sqrt(t[4] ** 2 - 4 * c8)) / 2
    e4 = t[4] - b[4]
    b[3] = (q[7] - (a[1] * t[2] + a[2] * t[1]) - fs * a[3] - b[4] * t[3]) / (e4 - b[4])
    b[2] = (q[6] - a[1] * t[1] - fs * a[2] - b[4] * t[2] - b[3] * (t[3] - b[3])) / (e4 - b[4])
    b[1] = (q[5] - fs * a[1] - b[4] * t[1] - b[2] * (t[3] - b[3])
            - b[3] * (t[2] - b[2])) / (e4 - b[4])
    e = t - b
    g = np.zeros_like(a)
    g[0], g[1] = p[0] + 0 * f, p[1] + 0 * f
    for k in (2, 3, 4):
        g[k] = p[k] - sigma * sum(b[i] * e[k - i] for i in range(1, k))
    return sigma, a, b, e, f, g


def _product_form_size(top, U):
    """Σ of the magnitudes of the terms the product form adds up, for
    |u| ≤ U (each polynomial bounded by Σ |coefficient| Uⁱ)."""
    sigma, a, b, e, f, g = top
    powers = np.asarray(U, np.longdouble) ** np.arange(5)[:, None]
    y0 = U ** 4 * np.sum(np.abs(a) * powers, axis=0)
    F1 = y0 + np.sum(np.abs(b) * powers, axis=0)
    F2 = y0 + np.sum(np.abs(e) * powers, axis=0)
    return F1 * F2 + np.abs(f) * y0 + np.sum(np.abs(g) * powers, axis=0)


def _series_form(f, L: float, degree: int, dtype, basis: str | None = None) -> _SeriesForm:
    """The plan's evaluation in precision ``dtype``: its basis (by
    _MONOMIAL_MAX_CONDITION unless given) and, for degree ≥ 16, the product
    form of its top coefficients. The free parameter f is taken from a grid:
    of the candidates whose terms are at most twice the smallest in size
    (``_product_form_size``, which bounds the rounding errors of the
    evaluation), the one whose parameters, rounded to ``dtype``, are
    closest to the function on [0, L] (extended precision, 401 points)."""
    ld = np.longdouble
    a = _chebyshev_interpolant(f, L, degree)
    # p(λ) = Σ aₖ (uλ − 1)ᵏ, u = 2/L, expanded in extended precision
    c = np.polynomial.polynomial.polyval(
        np.polynomial.Polynomial([ld(-1), ld(2) / ld(L)]), a).coef
    c = np.concatenate([c, np.zeros(degree + 1 - c.shape[0], ld)])
    if basis is None:
        condition = np.sum(np.abs(c) * ld(L) ** np.arange(degree + 1)) / np.abs(f(ld(L)))
        basis = "lambda" if condition <= _MONOMIAL_MAX_CONDITION else "shifted"
    p, U = (c, ld(L)) if basis == "lambda" else (a, ld(1))
    if degree < _PRODUCT_FORM_DEGREE:
        return _SeriesForm(basis, L, p.astype(np.float64), None)
    split = degree - _PRODUCT_FORM_DEGREE
    grid = np.logspace(-6, 3, 181, dtype=ld)
    candidates = np.concatenate([-grid[::-1], [ld(0)], grid])
    top = _product_form(p[split:], candidates)
    size = _product_form_size(top, U) * U ** split
    size = np.where(np.all(np.isfinite(top[2]), axis=0), size, np.inf)
    if not np.isfinite(np.min(size)):
        raise ValueError(f"no real product form for the degree-{degree} plan on [0, {L}]")
    x = ld(L) * (1 + np.cos(np.linspace(0, np.pi, 401).astype(ld))) / 2
    u = (x if basis == "lambda" else 2 * x / ld(L) - 1)[:, None]
    form = _SeriesForm(basis, L, p[:split], top)
    rounded = _evaluate_form(form, [u**0, u, u**2, u**3, u**4], np.multiply,
                             cast=lambda v: np.asarray(v).astype(dtype).astype(ld))
    error = np.max(np.abs(rounded / f(x)[:, None] - 1), axis=0)
    best = int(np.argmin(np.where(size <= 2 * np.min(size), error, np.inf)))
    sigma, a, b, e, fs, g = top
    top = (float(sigma), a[:, best].astype(np.float64), b[:, best].astype(np.float64),
           e[:, best].astype(np.float64), float(fs[best]), g[:, best].astype(np.float64))
    return _SeriesForm(basis, L, p[:split].astype(np.float64), top)


def _np_rsqrt1p(x):
    return 1 / np.sqrt(1 + x)


def _np_rsqrt1p_factor(x):
    s = np.sqrt(1 + x)
    return -1 / (s * (1 + s))


_SCALAR_FUNCTIONS = {"isqrt": _np_rsqrt1p, "isqrt_factor": _np_rsqrt1p_factor}
_SERIES_FORMS = {
    key: tuple(_series_form(_SCALAR_FUNCTIONS[key[0]], L, d, np.dtype(key[1])) for d, L in plans)
    for key, plans in _SERIES_PLANS.items()
}


def _powers_and_bound(A):
    """``(A², A³, A⁴)`` and ``‖A⁴‖_F^{1/4}`` (≥ λmax(A) for symmetric A:
    ‖A⁴‖_F² = Σ λᵢ⁸), the bound taken over the batch."""
    A2 = A @ A
    A3 = A @ A2
    A4 = A2 @ A2
    bound = jnp.sqrt(jnp.sqrt(jnp.sqrt(jnp.sum(A4 * A4, axis=(-2, -1)))))
    return (A2, A3, A4), jnp.max(bound)


def _psd_function(A: Array, name: str, newton_schulz, eigh) -> Array:
    """f(A) for symmetric positive semi-definite A (a batch sharing one
    path): the lowest-degree series of ``_SERIES_PLANS`` whose interval holds
    the spectrum, else ``newton_schulz(A, bound)``, else ``eigh(A)``."""
    powers, bound = _powers_and_bound(A)
    precision = _series_precision(A.dtype)
    plans = _SERIES_PLANS[name, precision]
    path = _choose_path(bound, plans)
    series = [partial(_series, form=form) for form in _SERIES_FORMS[name, precision]]
    branches = [*series, lambda A, p, b: newton_schulz(A, b), lambda A, p, b: eigh(A)]
    return jax.lax.switch(path, branches, A, powers, bound)


def _choose_path(bound, plans):
    """Index of the lowest-degree plan whose interval holds [0, bound], else
    len(plans) (Newton–Schulz) while bound ≤ _NEWTON_SCHULZ_MAX_BOUND, else
    len(plans) + 1 (eigendecomposition)."""
    n = len(plans)
    path = jnp.where(bound <= _NEWTON_SCHULZ_MAX_BOUND, n, n + 1)
    for k in reversed(range(n)):
        path = jnp.where(bound <= plans[k][1], k, path)
    return path


def _series(A, powers, bound, form: _SeriesForm):
    """The plan's polynomial of A (``_evaluate_form``): basis "lambda",
    u = A (the powers as they are); basis "shifted", ``u = 2A/L − I``
    (u..u⁴ combinations of A..A⁴). Not symmetrised: the result is symmetric
    to round-off, and any read of its transpose (0.5 (Z + Zᵀ)) costs about
    2 µs at k = 40, as much as most of a matrix product."""
    del bound
    A2, A3, A4 = powers
    eye = _eye_like(A)
    if form.basis == "lambda":
        B = [eye, A, A2, A3, A4]
    else:
        u = 2.0 / form.L
        B = [eye, u * A - eye, u**2 * A2 - 2 * u * A + eye,
             u**3 * A3 - 3 * u**2 * A2 + 3 * u * A - eye,
             u**4 * A4 - 4 * u**3 * A3 + 6 * u**2 * A2 - 4 * u * A + eye]
    dtype = A.dtype
    return _evaluate_form(form, B, jnp.matmul, cast=lambda c: np.asarray(c, dtype))


@jax.custom_jvp
def inverse_sqrt_identity_plus(A: Array) -> Array:
    """``(I + A)^{-1/2}`` for symmetric positive semi-definite A, exactly.

    With the bound ``β = ‖A⁴‖_F^{1/4} ≥ λmax(A)`` (‖A⁴‖_F² = Σ λᵢ⁸; close
    to λmax unless many eigenvalues are of its size), three exact paths,
    chosen at run time:

    - β within the interval [0, L] of one of the series plans
      (``_SERIES_PLANS``; in float64 degree 7, 16, 20, 24, 28, 36 for L up
      to 0.046, 0.64, 1.1, 1.6, 2.3, 4.0, in float32 degree 3 to 20 for L up
      to 6.1): the Chebyshev interpolant of ``(1 + λ)^{-1/2}`` on [0, L] of
      the lowest such degree, within eps/2 of the function on the whole
      interval, from A², A³, A⁴ (which also give the bound): degree 7 by
      Paterson–Stockmeyer (one more product), degree 16 + 4r by a product
      form of its top 17 coefficients (two products; Sastre 2018) then r
      Horner steps by A⁴, 5 to 10 products in all, one fewer than
      Paterson–Stockmeyer for one degree less; in powers of A itself for L
      up to about 1 (where that is well conditioned,
      ``_MONOMIAL_MAX_CONDITION``), else of ``2A/L − I``; in cycled
      Lorenz-96 ETKF analyses (N = 20, 40, 100, β ≈ 0.5–0.7) degree 16 or
      20, 5 or 6 products. Symmetric to round-off (not symmetrised);
    - otherwise, ``β ≤ 128``: the coupled Newton–Schulz iteration (Higham
      1997; Higham 2008, *Functions of Matrices*, §6.7),
      ``M = (3I − Z Y)/2, Y ← Y M, Z ← M Z`` from ``Y₀ = (I + A)/c, Z₀ = I``,
      ``c = 1 + β/2``, until ‖M − I‖ < sqrt(eps), plus one step;
    - otherwise the eigendecomposition.

    Matrix products are several times cheaper than ``eigh`` for the N×N
    matrices of ensemble transforms. Derivatives follow the Daleckiĭ–Kreĭn
    rule of ``sym_matrix_functions`` (finite for repeated eigenvalues).

    A: (..., k, k) symmetric positive semi-definite; leading axes are a
    batch that shares one path (chosen from the largest bound), so pass a
    batch rather than ``vmap`` over this function: under ``vmap`` the path
    choice becomes a select and every path is evaluated. Returns (..., k, k).
    """
    return _psd_function(A, "isqrt", _newton_schulz_isqrt, _eigh_isqrt)


@jax.custom_jvp
def inverse_sqrt_identity_plus_factor(M: Array) -> Array:
    """``g(M) = ((I + M)^{-1/2} − I) M⁻¹`` for symmetric positive
    semi-definite M, exactly (no M⁻¹ is formed: g is analytic at 0, g(0) = −½).

    For any S, ``(I + S Sᵀ)^{-1/2} = I + S g(Sᵀ S) Sᵀ``: the symmetric
    square root of an N×N matrix from a function of the m×m ``Sᵀ S``, for
    transforms with fewer observations than members. The same paths as
    ``inverse_sqrt_identity_plus`` (the series of g on the same intervals;
    Newton–Schulz gives ``W = (I + M)^{-1/2}`` and then
    ``g = −(I + W)⁻¹ W²``, a Cholesky solve with eigenvalues of I + W in
    (1, 2]), the same batching and derivatives (Daleckiĭ–Kreĭn).

    M: (..., k, k) symmetric positive semi-definite. Returns (..., k, k).
    """
    return _psd_function(M, "isqrt_factor", _newton_schulz_isqrt_factor, _eigh_isqrt_factor)


def _eye_like(A):
    return jnp.broadcast_to(jnp.eye(A.shape[-1], dtype=A.dtype), A.shape)


def _mT(A):
    return jnp.swapaxes(A, -1, -2)


def _eigh_apply(A, f):
    lam, V = jnp.linalg.eigh(A)
    return (V * f(lam)[..., None, :]) @ _mT(V)


def _eigh_isqrt(A):
    return _eigh_apply(A, _rsqrt1p)


def _eigh_isqrt_factor(A):
    return _eigh_apply(A, _rsqrt1p_factor)


def _newton_schulz_isqrt(A, bound):
    """``(I + A)^{-1/2}`` by the coupled Newton–Schulz iteration from
    ``Y₀ = (I + A)/c``, ``c = 1 + bound/2`` (bound ≥ λmax(A), so the
    spectrum of Y₀ lies in (0, 2))."""
    eye = _eye_like(A)
    c = 1.0 + 0.5 * bound
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
    Z = 0.5 * (Z + _mT(Z))
    return Z / jnp.sqrt(c)


def _newton_schulz_isqrt_factor(A, bound):
    W = _newton_schulz_isqrt(A, bound)
    eye = _eye_like(A)
    G = -cho_solve(cho_factor(eye + W, lower=True), W @ W)
    return 0.5 * (G + _mT(G))


def _jvp_by_eigh(f):
    def rule(primals, tangents):
        (A,), (dA,) = primals, tangents
        k = A.shape[-1]

        def one(A, dA):
            out, dout = _sym_funcs_jvp((f,), (A,), (dA,))
            return out[0], dout[0]

        out, dout = jax.vmap(one)(A.reshape(-1, k, k), dA.reshape(-1, k, k))
        return out.reshape(A.shape), dout.reshape(A.shape)
    return rule


inverse_sqrt_identity_plus.defjvp(_jvp_by_eigh(_rsqrt1p))
inverse_sqrt_identity_plus_factor.defjvp(_jvp_by_eigh(_rsqrt1p_factor))
