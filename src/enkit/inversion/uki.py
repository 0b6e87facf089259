"""Unscented Kalman inversion (Huang, Schneider & Stuart 2022)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import (
    check_finite,
    check_ndim,
    check_number,
    check_spread,
    is_concrete,
    zero_spread_columns,
)
from enkit.ensemble import ensemble_covariance, ensemble_mean
from enkit.inversion._common import (
    SPREAD_ADVICE,
    BlockDiagonal,
    InversionInfo,
    check_dt,
    check_tell,
    guarded,
    register,
)
from enkit.inversion.prior import GaussianPrior, check_prior
from enkit.linalg import spd_solve
from enkit.sigma_points import central_weights, symmetric_sigma_points

__all__ = ["UKI", "UKIState"]


class UKIState(NamedTuple):
    """Carried state of UKI: the Gaussian estimate N(mean, covariance).

    mean: (p,); covariance: (p, p); iteration: int32 scalar; time: Σ Δtᵢ.
    """

    mean: Array
    covariance: Array
    iteration: Array
    time: Array


@dataclasses.dataclass(frozen=True)
class UKI:
    """Unscented Kalman inversion with the prior as data; exact on
    linear-Gaussian problems.

    The state is a Gaussian N(m, C). ``ask`` returns the 2p + 1 sigma points
    (``enkit.sigma_points.central_sigma_points``: the L0 symmetric set)
    ``χ₀ = m``, ``χ±ⱼ = m ± s Lⱼ`` (Lⱼ the columns of the Cholesky factor of
    C, s = ``spread``). Their weights are non-negative for every p: the
    predicted output is the central point's, ``F̄ = F(χ₀)`` (mean weights
    1, 0, …, 0), and the covariances use ``wⱼ = 1/(2s²)`` on the 2p
    outer points and 0 on χ₀, so they reproduce C exactly for any s. With
    the augmented map ``F(u) = (G(u), u)``, data ``z = (y, m₀)`` and noise
    ``Σ = blockdiag(Γ, C₀)``, one ``tell`` with Δt ∈ [0, 1) is the Kalman
    step

        prediction   Ĉ = C / (1 − Δt),
        analysis     K = Ĉ^{uF} (Ĉ^{FF} + Δt⁻¹ Σ)⁻¹,
                     m ← m + K (z − F(χ₀)),   C ← Ĉ − K Ĉ^{Fu},

    where the hat statistics are those of the sigma points of C scaled by
    1/(1 − Δt) (exact for linear maps; for a nonlinear G it is Huang et
    al.'s prediction with the spread s√(1 − Δt)). On G(u) = A u this gives
    ``C⁻¹ ← (1 − Δt) C⁻¹ + Δt (AᵀΓ⁻¹A + C₀⁻¹)`` and the same relaxation of
    C⁻¹m, so the unique fixed point is the exact posterior mean and
    covariance, reached geometrically with rate 1 − Δt. (Δt = 1/2 is the
    paper's Σ_ν = 2Γ, Σ_ω = C; the prior block is inflated too, to 2C₀.
    Appending the prior with C₀ alone while inflating Γ to 2Γ, as
    EnsembleKalmanProcesses.jl v2.7 does, makes the fixed point the
    posterior with the prior precision doubled, AᵀΓ⁻¹A + 2C₀⁻¹.)

    prior: ``GaussianPrior`` (m₀, C₀); spread: s > 0, or None for
    ``min(√p, 2)`` (Huang et al.'s a√p with a = min(√(4/p), 1)). Both leaves.

    Reference: Huang, Schneider & Stuart (2022), "Iterated Kalman methodology
    for inverse problems", J. Comput. Phys. 463, 111262.
    """

    prior: GaussianPrior
    spread: ArrayLike | None = None

    def __post_init__(self):
        if self.spread is not None:
            check_number("spread", self.spread, low=0.0)

    def init(self, key: Array | None = None, ensemble=None) -> UKIState:
        """Initial Gaussian: the prior's, or the sample mean and covariance
        (N − 1) of ``ensemble`` (N, p) when one is given, which must be
        positive definite (the sigma points need its Cholesky factor: N ≥ p + 1
        members, no parameter with zero spread; concrete ensembles are
        checked). key: unused (UKI is deterministic)."""
        del key
        check_prior(self.prior)
        if ensemble is None:
            m = self.prior.mean
            C = self.prior.covariance.dense().astype(m.dtype)
        else:
            check_ndim("ensemble", ensemble, 2, "(N, p): members on axis 0")
            E = jnp.asarray(ensemble)
            if E.shape[0] < 2:
                raise ValueError(f"ensemble must hold N >= 2 members, got shape {E.shape}")
            check_finite("ensemble", E)
            check_prior(self.prior, E.shape[1])
            check_spread("ensemble", E, consequence="its sample covariance is 0 and UKI "
                         "has no sigma points to spread", advice=SPREAD_ADVICE)
            m = ensemble_mean(E)
            C = ensemble_covariance(E)
            _check_positive_definite(C, E)
        return UKIState(m, C, jnp.asarray(0, jnp.int32), jnp.zeros((), m.dtype))

    def _spread(self, p: int, dtype) -> Array:
        if self.spread is None:
            return jnp.asarray(min(p**0.5, 2.0), dtype)
        return jnp.asarray(self.spread, dtype)

    def ask(self, state: UKIState) -> Array:
        """The 2p + 1 sigma points, rows ``(χ₀, χ₊₁…χ₊ₚ, χ₋₁…χ₋ₚ)``: (2p+1, p)."""
        m, C = state.mean, state.covariance
        s = self._spread(m.shape[0], m.dtype)
        return symmetric_sigma_points(m, jnp.linalg.cholesky(C), s)

    def tell(self, state: UKIState, G, y, noise, *, dt=0.5
             ) -> tuple[UKIState, InversionInfo]:
        """One UKI iteration from the outputs of the sigma points of ``ask``.

        G: (2p + 1, d) outputs, rows in ``ask``'s order; y: (d,); noise: Γ;
        dt: Δt ∈ [0, 1) (default 1/2; Δt = 0 changes nothing).
        Returns ``(state, InversionInfo)``; ``info.misfit`` is that of G(χ₀).
        """
        m, C = state.mean, state.covariance
        p = m.shape[0]
        G, y, noise = check_tell(G, y, noise, 2 * p + 1, m.dtype, what="2p+1")
        dt = check_dt(dt, m.dtype, below_one=True)
        chi = self.ask(state)
        s = self._spread(p, m.dtype)
        _, wc = central_weights(p, s, m.dtype)  # (0, 1/(2s²), …)
        sw = jnp.sqrt(wc[1:])[:, None]
        X = sw * (chi[1:] - m)  # (2p, p): XᵀX = C
        Y = jnp.concatenate([sw * (G[1:] - G[0]), X], axis=1)  # (2p, d+p)
        sigma = BlockDiagonal(noise, self.prior.covariance.astype(m.dtype))
        resid = jnp.concatenate([y - G[0], jnp.asarray(self.prior.mean, m.dtype) - m])
        # K = r² Xᵀ T⁻¹ Y Σ⁻¹ with r² = Δt/(1 − Δt), T = I + r² Y Σ⁻¹ Yᵀ.
        r2 = dt / (1.0 - dt)
        SiY = sigma.solve(Y)  # rows Σ⁻¹ Yⱼ
        T = jnp.eye(2 * p, dtype=m.dtype) + r2 * (Y @ SiY.T)
        rhs = jnp.concatenate([(r2 * SiY @ resid)[:, None], X], axis=1)
        sol = spd_solve(T, rhs)
        mean = m + X.T @ sol[:, 0]
        cov = X.T @ sol[:, 1:] / (1.0 - dt)
        cov = 0.5 * (cov + cov.T)
        new = UKIState(guarded(dt, mean, m), guarded(dt, cov, C),
                       state.iteration + 1, state.time + dt)
        r = noise.whiten(y - G[0])
        return new, InversionInfo(jnp.sqrt(jnp.sum(r * r)), dt)


def _check_positive_definite(C, E) -> None:
    """Refuse a concrete initial covariance whose Cholesky factor fails."""
    if not is_concrete(C) or np.all(np.isfinite(np.asarray(jnp.linalg.cholesky(C)))):
        return
    N, p = E.shape
    cols = zero_spread_columns(E)
    why = (f"the parameters {cols.tolist()} have zero spread" if cols.size else
           f"N = {N} members span at most {N - 1} < p = {p} directions" if N <= p else
           "the members are (numerically) linearly dependent")
    raise ValueError(
        "ensemble's sample covariance must be positive definite for UKI's sigma points "
        f"(its Cholesky factorisation failed): {why}. Give N >= p + 1 = {p + 1} members "
        "with spread in every parameter, e.g. from the prior (enkit.GaussianPrior(mean, "
        "covariance).sample(key, N)), or init(key) without an ensemble to start from the "
        "prior")


register(UKI, data=["prior", "spread"])
