"""Ensemble Kalman inversion (Iglesias, Law & Stuart 2013)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array

from enkit.covariance import Covariance
from enkit.ensemble import scaled_anomalies
from enkit.inversion._common import (
    EnsembleProcess,
    EnsembleState,
    InversionInfo,
    check_bool,
    check_dt,
    check_tell,
    iteration_key,
    misfit,
    new_state,
    register,
)
from enkit.linalg import kalman_solve

__all__ = ["EKI", "eki_update"]


def eki_update(U: Array, G: Array, y: Array, noise: Covariance, dt: Array,
               xi: Array | None = None) -> Array:
    """One EKI update of the ensemble U (pure function, no checks).

        uᵢ ← uᵢ + C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(uᵢ)),  ηᵢ = Δt^{-1/2} ξᵢ,

    with sample covariances normalised by N − 1. It is evaluated as
    ``Xᵀ Y' (Y'ᵀ Y' + Γ)⁻¹ (√Δt (y − G(uᵢ)) + ξᵢ)`` with ``Y' = √Δt Y`` (X, Y
    the anomalies divided by √(N − 1)), which is the same update with no
    division by Δt, so Δt = 0 is a zero step. The innovation solve is
    ``enkit.linalg.kalman_solve`` (Woodbury when d > N: a diagonal Γ is never
    densified).

    U: (N, p); G: (N, d); y: (d,); noise: Γ, dimension d; dt: Δt ≥ 0;
    xi: (N, d) draws from N(0, Γ), or None for the deterministic update.
    Returns (N, p).
    """
    _, X = scaled_anomalies(U)
    _, Y = scaled_anomalies(G)
    sdt = jnp.sqrt(dt)
    Ys = sdt * Y
    D = sdt * (y - G)
    if xi is not None:
        D = D + xi
    Z = kalman_solve(Ys, noise, D)  # rows (C^{-1} Dᵢ)ᵀ
    return U + (Z @ Ys.T) @ X


@dataclasses.dataclass(frozen=True)
class EKI(EnsembleProcess):
    """Ensemble Kalman inversion (Iglesias, Law & Stuart 2013).

    Each ``tell`` moves every member with the Kalman gain of the ensemble's
    sample statistics (N − 1 normalisation) and a noise inflated by 1/Δt:

        uᵢ ← uᵢ + C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(uᵢ)),   ηᵢ ~ N(0, Δt⁻¹Γ).

    With Δt = 1 one step is the stochastic EnKF analysis of the prior
    ensemble; iterating drives the ensemble towards the least-squares
    solution inside the affine span of the initial ensemble (the subspace
    property). ``stochastic=False`` omits ηᵢ (the deterministic variant).

    stochastic: draw the perturbations ηᵢ (static; then ``init`` needs a key).

    Reference: Iglesias, Law & Stuart (2013), Inverse Problems 29, 045001.
    """

    stochastic: bool = True

    def __post_init__(self):
        check_bool("stochastic", self.stochastic)

    def tell(self, state: EnsembleState, G, y, noise, *, dt=1.0
             ) -> tuple[EnsembleState, InversionInfo]:
        """One EKI iteration from the forward outputs of ``ask(state)``.

        G: (N, d) outputs of the asked members; y: (d,) data; noise: Γ, a
        covariance operator of dimension d or an array (``as_covariance``);
        dt: Δt ≥ 0 (Δt = 0 leaves the ensemble unchanged).
        Returns ``(state, InversionInfo)``.
        """
        U = state.ensemble
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        dt = check_dt(dt, U.dtype)
        xi = noise.sample(iteration_key(state), (U.shape[0],)) if self.stochastic else None
        new = eki_update(U, G, y, noise, dt, xi)
        return new_state(state, new, dt), InversionInfo(misfit(G, y, noise), dt)


register(EKI, meta=["stochastic"])
