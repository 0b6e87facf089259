"""Finite-size ensemble transform Kalman filter, ETKF-N (Bocquet 2011), in its
primal form and in its dual form (Bocquet, Raanes & Hannart 2015)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from enkit._checks import check_bool, check_number
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, prepare_analysis
from enkit.filters._iterative import (
    IterationInfo,
    check_iteration_options,
    iterate,
    no_iterations,
)
from enkit.linalg import spd_solve, sym_matrix_functions

__all__ = ["etkf_n", "etkf_n_dual"]


def _rsqrt(lam):
    return 1.0 / jnp.sqrt(lam)


def etkf_n(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    xN: float = 1.0,
    mode_correction: bool = False,
    hessian: str = "full",
    max_iterations: int = 50,
    tolerance: float | None = 1e-10,
    return_info: bool = False,
) -> Array | tuple[Array, IterationInfo]:
    """Finite-size ETKF analysis (ETKF-N), primal form: Newton in ensemble space.

    The forecast ensemble is a sample of N draws from a Gaussian of unknown
    mean and covariance; integrating them out under the Jeffreys hyperprior
    replaces the Gaussian background term ``(N−1)/2 wᵀw`` of the ETKF by a
    log term. With unnormalised anomalies ``A = E − x̄`` (rows), observation
    anomalies ``Y = h(E) − ȳ``, ``S = Y R^{-1/2}``, ``d = R^{-1/2}(y − ȳ)``,
    ``ε_N = 1 + 1/N`` and ``x = x̄ + Aᵀ w``, the analysis minimises

        J(w) = ½ ‖d − Sᵀ w‖² + (κ/2) ln(ε + wᵀw),
        ∇J   = (S Sᵀ + ζ I) w − S d,                 ζ = κ / (ε + wᵀw),
        ∇²J  = S Sᵀ + ζ I − (2ζ²/κ) w wᵀ,

    with κ = N and ε = ε_N in the original EnKF-N (Bocquet 2011), and, as in
    that paper, takes the anomalies from the inverse Hessian at the minimum
    w_a (symmetric square root, so the mean stays x_a):

        x_a = x̄ + Aᵀ w_a,   Eₐ = x_a + sqrt(N − 1) (∇²J(w_a))^{-1/2} A.

    The prior term implies its own inflation (no inflation factor needed):
    the analysis is the ETKF's with the prior anomalies inflated by
    ``sqrt((N − 1)/ζ_a)``, ζ_a = ζ(w_a). It is deterministic but not the
    Kalman update of the sample statistics.

    Variants (Bocquet, Raanes & Hannart 2015):

    - ``hessian="approximate"`` drops the rank-one term of ∇²J, so the
      anomalies are ``sqrt(N − 1) (S Sᵀ + ζ_a I)^{-1/2} A``: exactly the
      ETKF's with the implied inflation (the radial–angular coupling is
      ignored). ``"full"`` (default) keeps it, as in Bocquet (2011).
    - ``mode_correction=True`` moves the hyperprior's mode of the inflation
      towards 1 where the observations carry little information, so that
      with R → ∞ the analysis leaves the ensemble untouched (without it the
      prior mode deflates by ``sqrt(1 − 1/N²)``): with
      ``c = N/(N − 1)``, ``π = (N − 1)/N · tr((S Sᵀ + (N − 1) I)^{-1})``
      (≈ the prior's weight 1/(1 + HBH/R)) and ``μ = (ε_N/c)^{π/2}``, the
      constants become ``ε = ε_N/μ`` and ``κ = (N − 1) c μ``.
    - ``xN`` (> 0) multiplies both ε and κ: the hyperprior counts xN·N
      members' worth of certainty. xN = 1 is the agnostic Jeffreys prior;
      xN > 1 suits more linear or less stochastic systems (e.g. 2 on
      Lorenz-96); xN → ∞ fixes the inflation at its prior mode.

    DAPPER's ``EnKF_N`` always applies the mode correction and defaults to
    the approximate Hessian; ``etkf_n(..., mode_correction=True,
    hessian="approximate")`` is that analysis (its ``Hess=True`` uses a
    different rank-one term, not the Hessian of J). enkit's defaults are
    Bocquet (2011)'s scheme, which ``mode_correction=False, xN=1`` keeps.

    The minimisation is a damped Newton iteration from
    w = 0 in the eigenbasis of ``S Sᵀ`` (one N×N ``eigh``; a Sherman–Morrison
    solve per iteration, falling back to the positive-definite ``S Sᵀ + ζ I``
    where the Hessian is not positive definite, with step halving until J
    decreases). The cost is not convex: this finds a local minimum;
    ``etkf_n_dual`` searches its one-dimensional dual globally instead.

    The minimiser is then polished by one Newton step from the converged
    point with its value held constant for differentiation, so derivatives
    of Eₐ with respect to E, y and R are those of the exact minimiser (the
    implicit-function derivative) and reverse-mode gradients work.

    E: (N, n); y: (m,); h: callable on one member or (m, n) matrix;
    R: covariance operator or array; key: unused (deterministic scheme);
    xN: hyperprior strength (> 0, an array leaf: differentiable);
    mode_correction: apply the mode correction; hessian: ``"full"`` or
    ``"approximate"`` (see above); max_iterations: Newton iterations at
    most; tolerance: stop when ``‖Δw‖ ≤ tolerance`` (w in the coordinates
    above, whose prior scale is about 1/sqrt(N)); None runs all
    ``max_iterations``; return_info: also return an ``IterationInfo``.
    Returns Eₐ: (N, n) (and the info).

    References: Bocquet (2011), Nonlin. Processes Geophys. 18, 735–750;
    Bocquet, Raanes & Hannart (2015), Nonlin. Processes Geophys. 22,
    645–662 (mode correction, approximate Hessian).
    """
    del key
    check_iteration_options(max_iterations, tolerance, return_info)
    _check_variant(xN, mode_correction, hessian)
    a = prepare_analysis(E, y, h, R)
    if a.y.shape[0] == 0:  # no observations: nothing to assimilate
        return (a.E, no_iterations(a.E.dtype)) if return_info else a.E
    xbar, A, S, d = _whitened(a)
    lam, V, b = _eigen_problem(S, d)
    eps, kappa = _search_hyperprior(lam, xN, mode_correction)
    u, info = _primal_search(lam, b, kappa, eps, tolerance, max_iterations)
    Ea = _analysis(xbar, A, S, d, jax.lax.stop_gradient(V @ u), xN, mode_correction, hessian)
    return (Ea, info) if return_info else Ea


def etkf_n_dual(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    xN: float = 1.0,
    mode_correction: bool = False,
    hessian: str = "full",
    max_iterations: int = 100,
    tolerance: float | None = 1e-12,
    grid_points: int = 32,
    return_info: bool = False,
) -> Array | tuple[Array, IterationInfo]:
    """Finite-size ETKF analysis (ETKF-N), dual form: a 1-D search over ζ.

    Same analysis as ``etkf_n`` (same notation, same variants ``xN``,
    ``mode_correction`` and ``hessian``). Writing the log prior term as
    ``(κ/2) ln(ε + wᵀw) = min_ζ>0 [ζ (ε + wᵀw)/2 − (κ/2) ln ζ] + c`` and
    minimising over w first (a quadratic, ``w(ζ) = (S Sᵀ + ζ I)⁻¹ S d``)
    leaves the one-dimensional dual cost

        D(ζ) = ½ dᵀ (I + Sᵀ S / ζ)⁻¹ d + ε ζ / 2 − (κ/2) ln ζ,
        D'(ζ) = ½ (ε + ‖w(ζ)‖² − κ/ζ),

    on ``ζ ∈ [κ / (ε + ‖w(0)‖²), κ / ε]`` (D' ≤ 0 at the left end and
    ≥ 0 at the right, since ‖w(ζ)‖ decreases in ζ). Every term is diagonal
    in the eigenbasis of ``S Sᵀ``, so D costs O(N) to evaluate once that
    N×N ``eigh`` is done. D is sampled on ``grid_points`` log-spaced values;
    among the intervals between samples where D' turns from negative to
    positive (each holds a local minimum), the one with the lowest sampled D
    is kept, and the root of D' in it is found by Newton's method
    safeguarded by bisection. Then ``w_a = w(ζ_a)`` and the anomalies come from the
    Hessian of the primal cost at w_a, as in ``etkf_n``; the same final
    Newton polish makes the result differentiable.

    Why a second function rather than an option of ``etkf_n``: the two
    solve the same problem with different algorithms and different options
    (a Newton iteration in N dimensions vs a bracketed search on a bounded
    interval), and keeping them apart follows enkit's rule of composing
    small functions instead of switching inside one. They differ only where
    the primal cost is not convex: the bracketed search finds the global
    minimum unless two minima fall within one grid interval, while the
    primal Newton iteration stops at the local minimum nearest w = 0. With a
    weakly sensitive direction and a large innovation the global minimum
    can lie at a very large ‖w‖ (the hyperprior lets the observation
    override the ensemble: a huge implied inflation); whether that or the
    local minimum near the ETKF answer is wanted is a modelling choice.

    E: (N, n); y: (m,); h: callable on one member or (m, n) matrix;
    R: covariance operator or array; key: unused (deterministic scheme);
    xN, mode_correction, hessian: as in ``etkf_n``;
    max_iterations: safeguarded Newton iterations at most; tolerance: stop
    when the relative step ``|Δζ|/ζ ≤ tolerance`` (None runs all
    ``max_iterations``); grid_points: number of log-spaced samples of D (≥ 2);
    return_info: also return an ``IterationInfo``.
    Returns Eₐ: (N, n) (and the info).

    References: Bocquet, Raanes & Hannart (2015), Nonlin. Processes Geophys.
    22, 645–662; Bocquet (2011), Nonlin. Processes Geophys. 18, 735–750.
    """
    del key
    check_iteration_options(max_iterations, tolerance, return_info)
    _check_variant(xN, mode_correction, hessian)
    if isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 2:
        raise ValueError(f"grid_points must be an integer >= 2, got {grid_points!r}")
    a = prepare_analysis(E, y, h, R)
    if a.y.shape[0] == 0:  # no observations: nothing to assimilate
        return (a.E, no_iterations(a.E.dtype)) if return_info else a.E
    xbar, A, S, d = _whitened(a)
    lam, V, b = _eigen_problem(S, d)
    eps, kappa = _search_hyperprior(lam, xN, mode_correction)
    zeta, info = _dual_search(lam, b, kappa, eps, grid_points, tolerance, max_iterations)
    w = V @ (b / (lam + zeta))
    Ea = _analysis(xbar, A, S, d, jax.lax.stop_gradient(w), xN, mode_correction, hessian)
    return (Ea, info) if return_info else Ea


def _check_variant(xN, mode_correction, hessian):
    check_number("xN", xN, low=0.0)
    check_bool("mode_correction", mode_correction)
    if hessian not in ("full", "approximate"):
        raise ValueError(f"hessian must be 'full' or 'approximate', got {hessian!r}")


def _hyperprior(N, prior_weight, xN, dtype):
    """The constants (ε, κ) of the prior term (κ/2) ln(ε + wᵀw).

    prior_weight: π of the mode correction, or None for none.
    """
    eps, c = 1.0 + 1.0 / N, N / (N - 1.0)
    if prior_weight is not None:
        mu = (eps / c) ** (0.5 * prior_weight)
        eps, c = eps / mu, c * mu
    xN = jnp.asarray(xN, dtype)
    return xN * eps, xN * (N - 1) * c


def _search_hyperprior(lam, xN, mode_correction):
    """(ε, κ) for the search, from the N eigenvalues λ of S Sᵀ."""
    N = lam.shape[0]
    weight = (N - 1) * jnp.mean(1.0 / (lam + (N - 1))) if mode_correction else None
    return _hyperprior(N, weight, xN, lam.dtype)


def _ensemble_space(E, y, h, R):
    """x̄, unnormalised anomalies A, whitened S = Y R^{-1/2} and d."""
    return _whitened(prepare_analysis(E, y, h, R))


def _whitened(analysis):
    """``_ensemble_space`` of inputs already checked by ``prepare_analysis``."""
    E, y, HE, R = analysis
    c = jnp.sqrt(jnp.asarray(E.shape[0] - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    return xbar, c * X, R.whiten(c * Y), R.whiten(y - ybar)


def _eigen_problem(S, d):
    """Eigenpairs (λ ≥ 0, V) of S Sᵀ and b = Vᵀ S d, held out of differentiation.

    The search runs in this basis; derivatives come from the polishing step
    instead (``eigh`` has no derivative at repeated eigenvalues).
    """
    S, d = jax.lax.stop_gradient(S), jax.lax.stop_gradient(d)
    lam, V = jnp.linalg.eigh(S @ S.T)
    return jnp.clip(lam, 0.0), V, V.T @ (S @ d)


def _primal_search(lam, b, kappa, eps, tolerance, max_iterations):
    """Minimiser u = Vᵀ w_a of the primal cost, in the eigenbasis (λ, b)."""

    def cost(u):
        return -b @ u + 0.5 * jnp.sum(lam * u * u) + 0.5 * kappa * jnp.log(eps + u @ u)

    def step(u):
        z = kappa / (eps + u @ u)
        D = lam + z
        g = D * u - b
        Dg, Du = g / D, u / D
        c = 2.0 * z * z / kappa
        s = c * (u @ Du)
        # Sherman–Morrison on diag(D) − c u uᵀ; positive definite iff s < 1.
        newton = Dg + Du * (c * (u @ Dg) / jnp.where(s < 0.99, 1.0 - s, 1.0))
        delta = jnp.where(s < 0.99, newton, Dg)
        J0 = cost(u)
        slack = 8 * jnp.finfo(u.dtype).eps * (jnp.abs(J0) + 1.0)

        def worse(carry):
            t, k = carry
            return (cost(u - t * delta) > J0 + slack) & (k < 40)

        t, _ = jax.lax.while_loop(
            worse, lambda c: (0.5 * c[0], c[1] + 1), (jnp.asarray(1.0, u.dtype), 0)
        )
        return u - t * delta, t * jnp.linalg.norm(delta)

    return iterate(
        step, jnp.zeros_like(b), tolerance=tolerance, max_iterations=max_iterations
    )


def _dual_search(lam, b, kappa, eps, grid_points, tolerance, max_iterations):
    """ζ_a minimising the dual cost D(ζ), in the eigenbasis (λ, b)."""
    dtype = b.dtype
    b2 = b * b
    # ‖w(0)‖² = Σ b²/λ² over the numerically non-zero λ (b ≈ 0 on the others).
    keep = lam > lam.shape[0] * jnp.finfo(dtype).eps * jnp.max(lam)
    w0_sq = jnp.sum(jnp.where(keep, b2 / jnp.where(keep, lam, 1.0) ** 2, 0.0))
    hi = kappa / eps
    lo = kappa / (eps + w0_sq)

    def slope(z):  # ζ (ε + ‖w(ζ)‖²) − κ, of the sign of D'(ζ)
        return z * (eps + jnp.sum(b2 / (z + lam) ** 2)) - kappa

    def slope_prime(z):
        return eps + jnp.sum(b2 / (z + lam) ** 2) - 2.0 * z * jnp.sum(b2 / (z + lam) ** 3)

    def dual(z):
        return -0.5 * jnp.sum(b2 / (z + lam)) + 0.5 * eps * z - 0.5 * kappa * jnp.log(z)

    z = jnp.exp(jnp.linspace(jnp.log(lo), jnp.log(hi), grid_points, dtype=dtype))
    z = z.at[0].set(lo).at[-1].set(hi)
    sl, Dz = jax.vmap(slope)(z), jax.vmap(dual)(z)
    k = jnp.arange(grid_points - 1)
    # The ends satisfy D'(lo) ≤ 0 ≤ D'(hi) in exact arithmetic: force them.
    down = (sl[:-1] <= 0) | (k == 0)
    up = (sl[1:] >= 0) | (k == grid_points - 2)
    score = jnp.where(down & up, jnp.minimum(Dz[:-1], Dz[1:]), jnp.inf)
    j = jnp.argmin(score)
    a, c = z[j], z[j + 1]
    z0 = jnp.where(Dz[j] <= Dz[j + 1], a, c)

    def step(state):
        a, c, z = state
        f = slope(z)
        a = jnp.where(f < 0, z, a)
        c = jnp.where(f < 0, c, z)
        fp = slope_prime(z)
        newton = z - f / jnp.where(fp != 0, fp, 1.0)
        inside = (fp != 0) & (newton > a) & (newton < c)
        z_new = jnp.where(inside, newton, 0.5 * (a + c))
        z_new = jnp.where(f == 0, z, z_new)
        return (a, c, z_new), jnp.abs(z_new - z) / z

    (_, _, zeta), info = iterate(
        step, (a, c, z0), tolerance=tolerance, max_iterations=max_iterations
    )
    return zeta, info


def _analysis(xbar, A, S, d, w0, xN, mode_correction, hessian):
    """Polish w0 by one Newton step and build Eₐ from the Hessian there.

    The polish uses the full Hessian whatever ``hessian`` says (it makes
    the derivatives those of the exact minimiser); ``hessian`` chooses the
    matrix whose inverse square root transforms the anomalies.
    """
    N = A.shape[0]
    G = S @ S.T
    eye = jnp.eye(N, dtype=A.dtype)
    # The same π as the search's, from G without eigh (differentiable).
    weight = ((N - 1) / N * jnp.trace(spd_solve(G + (N - 1) * eye, eye))
              if mode_correction else None)
    eps, kappa = _hyperprior(N, weight, xN, A.dtype)

    def full_hessian(w):
        z = kappa / (eps + w @ w)
        return G + z * eye - (2.0 * z * z / kappa) * jnp.outer(w, w), z

    H0, z0 = full_hessian(w0)
    g0 = G @ w0 + z0 * w0 - S @ d
    w = w0 - spd_solve(H0, g0)
    H, z = full_hessian(w)
    if hessian == "approximate":
        H = G + z * eye
    (Hisqrt,) = sym_matrix_functions(H, (_rsqrt,))
    c = jnp.sqrt(jnp.asarray(N - 1, A.dtype))
    return xbar + w @ A + c * (Hisqrt @ A)
