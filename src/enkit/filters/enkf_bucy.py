"""The ensemble Kalman–Bucy filter: continuous-time observations
(Bergemann & Reich 2012; Reich & Cotter 2015), and its pseudo-time form as
a discrete analysis (Bergemann & Reich 2010).

Observations arrive continuously, ``dY = h(X) dt + R^{1/2} dV`` (R the
noise covariance per unit time), as increments ΔYⱼ = Y(tⱼ₊₁) − Y(tⱼ) over
sub-steps of length Δt. The primary (and only) form here is the
deterministic one, in which no observation is perturbed: every member
moves by

    dXᵢ = f(Xᵢ) dt + ½ Q P⁻¹ (Xᵢ − x̄) dt
          − ½ P_xh R⁻¹ (h(Xᵢ) dt + h̄ dt − 2 dY),

with x̄, h̄ the ensemble means, P the sample covariance of X and P_xh the
sample cross-covariance of X and h(X) (P Hᵀ for a matrix H). The model noise
Q (per unit time) enters deterministically, through the ½ Q P⁻¹ term, so
that for linear f(x) = A x + b and h(x) = H x the sample mean and
covariance obey the Kalman–Bucy equations exactly, for any N > n:

    dx̄ = (A x̄ + b) dt + P Hᵀ R⁻¹ (dY − H x̄ dt),
    dP/dt = A P + P Aᵀ + Q − P Hᵀ R⁻¹ H P        (Riccati).

Time stepping: the explicit Euler(–Maruyama) scheme in the increments,
one step per ΔYⱼ,

    Xᵢ ← Xᵢ + Δt f(Xᵢ) + ½ Δt Q P⁻¹ (Xᵢ − x̄) − ½ P_xh R⁻¹ (h(Xᵢ) Δt + h̄ Δt − 2 ΔYⱼ),

P, P_xh and the means taken at the start of the step; in ensemble space
the observation term is ``(W Yᵀ) X / (N − 1)`` with W the R⁻¹-solved
bracket (N, m) and X, Y the (N, n), (N, m) anomalies (cost O(N² (n + m)),
never an n × m matrix). The covariance error is first order in Δt.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim, check_number
from enkit.covariance import Covariance, as_covariance
from enkit.filters._common import ObservationOperator, observe, prepare_analysis

__all__ = ["enkf_bucy", "enkf_bucy_analysis"]


def enkf_bucy(
    E: Array,
    dY: ArrayLike,
    h: ObservationOperator,
    R,
    dt,
    *,
    f: Callable[[Array], Array] | None = None,
    Q: Covariance | ArrayLike | None = None,
) -> Array:
    """Deterministic ensemble Kalman–Bucy filter over one observation interval.

    Integrates (see the module docstring)

        dXᵢ = f(Xᵢ) dt + ½ Q P⁻¹ (Xᵢ − x̄) dt − ½ P_xh R⁻¹ (h(Xᵢ) dt + h̄ dt − 2 dY)

    with one explicit Euler step per increment ΔYⱼ (row j of dY), over the
    interval of length ``S · dt``. Call it once per interval (or once with
    all increments) to filter a continuous record.

    E: (N, n) ensemble at the interval's start; dY: (S, m) observation
    increments ``Y(tⱼ₊₁) − Y(tⱼ)`` over S sub-steps of length dt; h:
    callable on one member (n,) -> (m,) or an (m, n) matrix; R: the
    observation noise covariance per unit time (covariance operator or
    array); dt: the sub-step Δt > 0; f: the drift of one member (n,) -> (n,)
    (None: no dynamics); Q: model noise covariance per unit time (operator
    or array, dimension n; needs N > n for P⁻¹), or None. Returns (N, n).

    References: Bergemann & Reich (2012), Meteorol. Z. 21; Reich & Cotter
    (2015), Probabilistic Forecasting and Bayesian Data Assimilation,
    Cambridge University Press; Kalman & Bucy (1961), J. Basic Eng. 83.
    """
    check_ndim("dY", dY, 2, "(S, m): one row of observation increments per sub-step")
    dY = jnp.asarray(dY)
    if dY.shape[0] < 1:
        raise ValueError("dY must hold at least one sub-step (S >= 1 rows)")
    E, _, _, R = prepare_analysis(E, jnp.zeros(dY.shape[1], jnp.asarray(E).dtype), h, R)
    check_finite("dY", dY)
    dY = dY.astype(E.dtype)
    check_number("dt", dt, low=0.0, what="the sub-step, a real scalar > 0")
    N, n = E.shape
    if f is not None:
        if not callable(f):
            raise TypeError(f"f must be a callable (n,) -> (n,) or None, got {f!r}")
        out = jax.eval_shape(f, E[0])
        if out.shape != (n,):
            raise ValueError(f"f must map one member of shape ({n},) to ({n},), "
                             f"got {out.shape}")
    if Q is not None:
        Q = as_covariance(Q, n, name="Q").astype(E.dtype)
        if N <= n:
            raise ValueError(f"Q needs the sample covariance P to be invertible, so N > n; "
                             f"got N={N} members for n={n}")
    return _integrate(E, dY, h, R, jnp.asarray(dt, E.dtype), f, Q)


def _integrate(E, dY, h, R, dt, f, Q):
    N = E.shape[0]
    Qd = None if Q is None else Q.dense().astype(E.dtype)

    def step(E, dy):
        xbar = jnp.mean(E, axis=0)
        X = E - xbar
        dE = jnp.zeros_like(E)
        if f is not None:
            dE = dE + dt * jax.vmap(f)(E).astype(E.dtype)
        if Qd is not None:
            P = X.T @ X / (N - 1)
            dE = dE + 0.5 * dt * (X @ jnp.linalg.solve(P, Qd))
        if R is not None:
            HE = observe(h, E)
            hbar = jnp.mean(HE, axis=0)
            W = R.solve(dt * (HE + hbar) - 2.0 * dy)  # (N, m)
            dE = dE - 0.5 * ((W @ (HE - hbar).T) @ X) / (N - 1)
        return E + dE, None

    return jax.lax.scan(step, E, dY)[0]


def enkf_bucy_analysis(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    n_steps: int = 100,
) -> Array:
    """A discrete analysis as the Kalman–Bucy flow in a pseudo-time s ∈ [0, 1]
    (Bergemann & Reich 2010): with no dynamics and ``dY = y ds``,

        dXᵢ/ds = −½ P_xh R⁻¹ (h(Xᵢ) + h̄ − 2 y).

    For linear h the flow at s = 1 is exactly the ETKF (symmetric square
    root) analysis: its anomalies are ``(I + s SSᵀ)^{-1/2}`` times the
    forecast's (S the whitened observation anomalies), its mean the Kalman
    mean; ``n_steps`` explicit Euler steps of ds = 1/n_steps approach it with
    an error O(ds). Same signature as every L1 scheme (it is not in
    ``SCHEMES``, being exact only in the limit).

    E: (N, n); y: (m,); h: callable or (m, n) matrix; R: covariance operator
    or array; key: unused (deterministic); n_steps: Euler steps, >= 1.
    Returns (N, n). References: Bergemann & Reich (2010), Meteorol. Z. 19;
    Bergemann & Reich (2012), Meteorol. Z. 21.
    """
    del key
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    E, y, _, R = prepare_analysis(E, y, h, R)
    if y.shape[0] == 0:  # no observations: nothing to assimilate
        return E
    ds = jnp.asarray(1.0 / n_steps, E.dtype)
    dY = jnp.broadcast_to(y * ds, (n_steps, y.shape[0]))
    return _integrate(E, dY, h, R, ds, None, None)
