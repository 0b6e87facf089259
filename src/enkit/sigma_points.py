"""L0 sigma points and the unscented transform.

Every set here is the symmetric 2n + 1 set of a Gaussian N(x̄, P) with a
square root L (``P = L Lᵀ``, columns Lⱼ) and a spread s, rows in the order

    χ₀ = x̄,   χ₊ⱼ = x̄ + s Lⱼ,   χ₋ⱼ = x̄ − s Lⱼ     (j = 1..n),

and differs only in its weights (mean weights wᵐ, covariance weights wᶜ):

- ``unscented_sigma_points``: the scaled unscented set of Julier & Uhlmann
  (1997) in the parametrisation of Wan & van der Merwe (2000),
  ``λ = α²(n + κ) − n``, ``s = √(n + λ)``,
  ``wᵐ₀ = λ/(n + λ)``, ``wᶜ₀ = wᵐ₀ + 1 − α² + β``, ``wᵐⱼ = wᶜⱼ = 1/(2(n + λ))``.
  α = 1, β = 0, κ = 0 (the default) is the cubature rule of Arasaratnam &
  Haykin (2009): s = √n, χ₀ has weight 0 and the outer points 1/(2n);
  κ = 3 − n is Julier & Uhlmann's original choice.
- ``central_sigma_points``: the set of unscented Kalman inversion (Huang,
  Schneider & Stuart 2022) with any s > 0: the mean is the central
  point's (``wᵐ = (1, 0, …, 0)``), the covariance weights are
  ``wᶜ = (0, 1/(2s²), …)``; all weights are non-negative for every n.

Both reproduce x̄ and P exactly (``sigma_point_moments``), and the
unscented transform of an affine map is exact.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_float, check_ndim, check_number, is_concrete

__all__ = [
    "SigmaPoints",
    "UnscentedTransform",
    "central_sigma_points",
    "central_weights",
    "sigma_point_moments",
    "symmetric_sigma_points",
    "unscented_sigma_points",
    "unscented_transform",
    "unscented_weights",
]


class SigmaPoints(NamedTuple):
    """A weighted sigma-point set: points (2n+1, n) in the order (χ₀, χ₊, χ₋);
    mean_weights, cov_weights: (2n+1,)."""

    points: Array
    mean_weights: Array
    cov_weights: Array


class UnscentedTransform(NamedTuple):
    """The unscented transform of f: mean (m,), covariance (m, m) of f(x) and
    the cross-covariance (n, m) of x and f(x); ``outputs`` (2n+1, m) f at the points."""

    mean: Array
    covariance: Array
    cross_covariance: Array
    outputs: Array


def symmetric_sigma_points(mean: ArrayLike, root: ArrayLike, spread: ArrayLike) -> Array:
    """The 2n + 1 points ``(x̄, x̄ + s L₁…x̄ + s Lₙ, x̄ − s L₁…x̄ − s Lₙ)``.

    mean: (n,); root: (n, n) square root L of the covariance, ``P = L Lᵀ``
    (columns Lⱼ, e.g. the Cholesky factor); spread: s. Returns (2n+1, n).
    """
    m, L = jnp.asarray(mean), jnp.asarray(root)
    s = jnp.asarray(spread, m.dtype)
    return jnp.concatenate([m[None], m + s * L.T, m - s * L.T], axis=0)


def unscented_weights(n: int, *, alpha: ArrayLike = 1.0, beta: ArrayLike = 0.0,
                      kappa: ArrayLike = 0.0, dtype=float) -> tuple[Array, Array, Array]:
    """``(spread, mean_weights, cov_weights)`` of the scaled unscented set
    (Wan & van der Merwe 2000): ``λ = α²(n + κ) − n``, ``s = √(n + λ)``,
    ``wᵐ₀ = λ/(n + λ)``, ``wᶜ₀ = wᵐ₀ + 1 − α² + β``, the rest ``1/(2(n + λ))``.
    n: the state dimension; needs n + λ = α²(n + κ) > 0. Weights: (2n+1,)."""
    a, b, k = (jnp.asarray(v, dtype) for v in (alpha, beta, kappa))
    c = a * a * (n + k)  # n + λ
    lam = c - n
    w = jnp.full((2 * n,), 1.0, dtype) / (2.0 * c)
    wm = jnp.concatenate([(lam / c)[None], w])
    wc = jnp.concatenate([(lam / c + 1.0 - a * a + b)[None], w])
    return jnp.sqrt(c), wm, wc


def central_weights(n: int, spread: ArrayLike, dtype=float) -> tuple[Array, Array]:
    """``(mean_weights, cov_weights)`` of the central set (UKI's): wᵐ = (1, 0, …, 0),
    wᶜ = (0, 1/(2s²), …, 1/(2s²)). Each (2n+1,)."""
    s = jnp.asarray(spread, dtype)
    wm = jnp.zeros((2 * n + 1,), dtype).at[0].set(1.0)
    wc = jnp.concatenate([jnp.zeros((1,), dtype), jnp.full((2 * n,), 1.0, dtype) / (2 * s * s)])
    return wm, wc


def _root(mean, cov, root) -> tuple[Array, Array]:
    """The mean and a square root L of the covariance (Cholesky of cov, or root)."""
    if (cov is None) == (root is None):
        raise TypeError("give exactly one of cov (the (n, n) covariance) and root (a square "
                        "root L with cov = L Lᵀ)")
    check_float("mean", mean)
    m = jnp.asarray(mean)
    check_ndim("mean", m, 1, "(n,)")
    n = m.shape[0]
    name, A = ("cov", cov) if root is None else ("root", root)
    check_float(name, A)
    A = jnp.asarray(A)
    if A.shape != (n, n):
        raise ValueError(f"{name} must have shape (n, n) = ({n}, {n}), got {A.shape}")
    check_finite("mean", m)
    check_finite(name, A)
    dtype = jnp.result_type(m, A)
    m, A = m.astype(dtype), A.astype(dtype)
    if root is not None:
        return m, A
    L = jnp.linalg.cholesky(0.5 * (A + A.T))
    if is_concrete(L) and not bool(jnp.all(jnp.isfinite(L))):
        raise ValueError("cov must be symmetric positive definite (its Cholesky "
                         "factorisation failed); pass root=L for a singular covariance")
    return m, L


def unscented_sigma_points(mean: ArrayLike, cov: ArrayLike | None = None, *,
                           root: ArrayLike | None = None, alpha: ArrayLike = 1.0,
                           beta: ArrayLike = 0.0, kappa: ArrayLike = 0.0) -> SigmaPoints:
    """The scaled unscented sigma points of N(mean, cov) (module docstring).

    mean: (n,); cov: (n, n) positive definite (its Cholesky factor is used)
    or root: (n, n) any L with ``cov = L Lᵀ``; alpha, beta, kappa: the
    scaling (α > 0, n + κ > 0; defaults: the cubature rule).
    Returns ``SigmaPoints`` with points (2n+1, n).

    References: Julier & Uhlmann (1997), SPIE 3068; Wan & van der Merwe
    (2000), IEEE AS-SPCC; Arasaratnam & Haykin (2009), IEEE TAC 54.
    """
    m, L = _root(mean, cov, root)
    n = m.shape[0]
    check_number("alpha", alpha, low=0.0)
    check_number("beta", beta)
    check_number("kappa", kappa, low=-n)
    s, wm, wc = unscented_weights(n, alpha=alpha, beta=beta, kappa=kappa, dtype=m.dtype)
    return SigmaPoints(symmetric_sigma_points(m, L, s), wm, wc)


def central_sigma_points(mean: ArrayLike, cov: ArrayLike | None = None, *,
                         root: ArrayLike | None = None, spread: ArrayLike) -> SigmaPoints:
    """UKI's sigma points of N(mean, cov): the symmetric set with spread s > 0
    and the central weights (``central_weights``). mean: (n,); cov or root as
    in ``unscented_sigma_points``. Reference: Huang, Schneider & Stuart (2022)."""
    m, L = _root(mean, cov, root)
    check_number("spread", spread, low=0.0)
    wm, wc = central_weights(m.shape[0], spread, m.dtype)
    return SigmaPoints(symmetric_sigma_points(m, L, spread), wm, wc)


def _weighted(points, wm, wc, center=None):
    mu = wm @ points if center is None else center
    return mu, points - mu


def sigma_point_moments(points: ArrayLike, mean_weights: ArrayLike,
                        cov_weights: ArrayLike) -> tuple[Array, Array]:
    """Weighted mean ``Σ wᵐᵢ χᵢ`` and covariance ``Σ wᶜᵢ (χᵢ − x̄)(χᵢ − x̄)ᵀ``.
    points: (2n+1, d); weights: (2n+1,). Returns ((d,), (d, d))."""
    X = jnp.asarray(points)
    mu, D = _weighted(X, jnp.asarray(mean_weights, X.dtype), None)
    P = (D.T * jnp.asarray(cov_weights, X.dtype)) @ D
    return mu, 0.5 * (P + P.T)


def unscented_transform(f: Callable[[Array], Array], sigma: SigmaPoints) -> UnscentedTransform:
    """The unscented transform of ``y = f(x)`` for x with the sigma points ``sigma``:

        ȳ = Σ wᵐᵢ f(χᵢ),   P_yy = Σ wᶜᵢ (f(χᵢ) − ȳ)(f(χᵢ) − ȳ)ᵀ,
        P_xy = Σ wᶜᵢ (χᵢ − x̄)(f(χᵢ) − ȳ)ᵀ,   x̄ = Σ wᵐᵢ χᵢ.

    Exact for an affine f; for a quadratic f the mean is exact (the set
    matches the Gaussian's first three moments). f: ``(n,) -> (m,)``,
    vmapped over the points (JAX-traceable). Returns ``UnscentedTransform``.
    """
    X, wm, wc = sigma
    Y = jax.vmap(f)(X)
    if Y.ndim != 2:
        raise ValueError(f"f must map a state of shape ({X.shape[1]},) to a vector (m,), got "
                         f"shape {Y.shape[1:]}")
    Y = Y.astype(X.dtype)
    _, DX = _weighted(X, wm, wc)
    ybar, DY = _weighted(Y, wm, wc)
    Pyy = (DY.T * wc) @ DY
    return UnscentedTransform(ybar, 0.5 * (Pyy + Pyy.T), (DX.T * wc) @ DY, Y)
