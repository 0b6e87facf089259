"""Maximum-likelihood ensemble filter, MLEF (Zupanski 2005): Hessian-
preconditioned minimisation in ensemble space."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, observe, prepare_analysis
from enkit.filters._iterative import (
    IterationInfo,
    check_iteration_options,
    iterate,
    no_iterations,
)
from enkit.linalg import inverse_sqrt_identity_plus

__all__ = ["mlef"]


def mlef(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    max_iterations: int = 20,
    tolerance: float | None = 1e-6,
    return_info: bool = False,
) -> Array | tuple[Array, IterationInfo]:
    """MLEF analysis: preconditioned conjugate gradients in ensemble space.

    The columns pᵢ of the forecast square root ``P_f^{1/2}`` are the
    normalised anomalies X (rows of E − x̄ divided by sqrt(N − 1)). Around a
    state x the observation sensitivities are finite differences along them,

        zᵢ(x) = R^{-1/2} [h(x + pᵢ) − h(x)],   C(x) = Z Zᵀ   (N×N),

    and the cost in ensemble space, ``x = x̄ + Xᵀ w``, is
    ``J(w) = ½ wᵀw + ½ ‖R^{-1/2}(y − h(x))‖²``, with the gradient
    ``∇J = w − Z(x) R^{-1/2}(y − h(x))`` (exact for linear h). The Hessian
    preconditioning is the change of variable ``w = (I + C(x̄))^{-1/2} ζ``,
    which makes the Hessian the identity for linear h, so the first
    iteration lands on the minimum. ζ is found by Polak–Ribière (PR+)
    conjugate gradients from ζ = 0, with the step length that minimises the
    Gauss–Newton model ``½ (ζ−ζₖ)ᵀ Q (I + C(xₖ)) Q (ζ−ζₖ)`` along the search
    direction (Q = (I + C(x̄))^{-1/2}); it stops when ``‖Δζ‖ ≤ tolerance``.
    The analysis error covariance is the inverse Hessian at the optimum,

        x_a = x̄ + Xᵀ w_a,   Eₐ = x_a + sqrt(N − 1) (I + C(x_a))^{-1/2} X.

    One adaptation to enkit's mean-plus-anomalies ensembles: the rows of Z
    are centred (their mean over members removed). Then 1 is an eigenvector
    of C, so Eₐ keeps x_a as its mean, and the redundant direction
    w ∝ 1, which does not move x, gets no spurious gradient. For linear h
    the centring changes nothing, and the result is the Kalman update of the
    sample statistics. Each iteration evaluates h at N + 1 states.

    E: (N, n); y: (m,); h: callable on one member or (m, n) matrix;
    R: covariance operator or array; key: unused (deterministic scheme);
    max_iterations: conjugate-gradient iterations at most (Zupanski reports
    2–3 as sufficient); tolerance: stop when ``‖Δζ‖ ≤ tolerance`` (ζ has
    prior scale about 1), None runs all ``max_iterations`` in a reverse-mode
    differentiable ``fori_loop``; return_info: also return an
    ``IterationInfo``. Returns Eₐ: (N, n) (and the info).

    Reference: Zupanski (2005), Mon. Wea. Rev. 133, 1710–1726.
    """
    del key
    check_iteration_options(max_iterations, tolerance, return_info)
    E, y, _, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return (E, no_iterations(E.dtype)) if return_info else E
    N = E.shape[0]
    c = jnp.sqrt(jnp.asarray(N - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    tiny = jnp.finfo(E.dtype).tiny

    def sensitivities(x):
        """Centred Z(x): (N, m) and the whitened innovation (m,)."""
        HE = observe(h, jnp.concatenate([x[None], x + X]))
        Z = R.whiten(HE[1:] - HE[0])
        return Z - jnp.mean(Z, axis=0), R.whiten(y - HE[0])

    Z0, d0 = sensitivities(xbar)
    Q = inverse_sqrt_identity_plus(Z0 @ Z0.T)

    def gradient(zeta, Z, d):
        return Q @ (Q @ zeta - Z @ d)

    def step(state):
        zeta, g, p, Z = state
        v = Q @ p
        curvature = v @ v + jnp.sum((v @ Z) ** 2)  # pᵀ Q (I + C) Q p
        # Guarded divisions (safe denominators inside jnp.where): a zero
        # curvature (zero spread, H = 0, converged) gives a zero step and a
        # finite derivative.
        curved = curvature > tiny
        alpha = jnp.where(curved, -(g @ p) / jnp.where(curved, curvature, 1.0), 0.0)
        zeta = zeta + alpha * p
        Z, d = sensitivities(xbar + (Q @ zeta) @ X)
        g_new = gradient(zeta, Z, d)
        gg = g @ g
        moved = gg > tiny
        beta = jnp.where(moved, jnp.maximum(g_new @ (g_new - g) / jnp.where(moved, gg, 1.0),
                                            0.0), 0.0)
        return (zeta, g_new, beta * p - g_new, Z), jnp.abs(alpha) * jnp.linalg.norm(p)

    zeta0 = jnp.zeros(N, E.dtype)
    g0 = gradient(zeta0, Z0, d0)
    (zeta, _, _, Z), info = iterate(
        step, (zeta0, g0, -g0, Z0), tolerance=tolerance, max_iterations=max_iterations
    )
    T = inverse_sqrt_identity_plus(Z @ Z.T)
    Ea = xbar + (Q @ zeta) @ X + c * (T @ X)
    return (Ea, info) if return_info else Ea
