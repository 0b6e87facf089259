"""Ensemble transform Kalman inversion (Huang, Huang, Reich & Stuart 2022)."""

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
    check_dt,
    check_tell,
    misfit,
    new_state,
    register,
)
from enkit.linalg import inverse_sqrt_identity_plus

__all__ = ["ETKI", "etki_update"]


def etki_update(U: Array, G: Array, y: Array, noise: Covariance, dt: Array) -> Array:
    """One ETKI update (pure function, no checks): a square-root Kalman
    update of the ensemble with noise Γ/Δt, done in ensemble space.

    With X, Y the anomalies of U and G divided by √(N − 1) (sample
    covariances with N − 1), ``S = √Δt Γ^{-1/2} Y`` (rows) and
    ``T = I_N + S Sᵀ``:

        ū ← ū + Xᵀ T⁻¹ S √Δt Γ^{-1/2} (y − Ḡ),     X ← T^{-1/2} X,

    T^{-1/2} symmetric (``enkit.linalg.inverse_sqrt_identity_plus``), so the
    new anomalies keep zero mean. Cost O(N² d + N³) plus the whitening, which
    is O(N d) for scalar or diagonal Γ: linear in d.

    U: (N, p); G: (N, d); y: (d,); noise: Γ; dt: Δt ≥ 0. Returns (N, p).
    """
    c = jnp.sqrt(jnp.asarray(U.shape[0] - 1, U.dtype))
    ubar, X = scaled_anomalies(U)
    gbar, Y = scaled_anomalies(G)
    sdt = jnp.sqrt(dt)
    S = sdt * noise.whiten(Y)  # (N, d)
    r = sdt * noise.whiten(y - gbar)  # (d,)
    Z = inverse_sqrt_identity_plus(S @ S.T)  # T^{-1/2}
    w = Z @ (Z @ (S @ r))  # T⁻¹ S r
    return ubar + w @ X + c * (Z @ X)


@dataclasses.dataclass(frozen=True)
class ETKI(EnsembleProcess):
    """Ensemble transform Kalman inversion: deterministic square-root EKI.

    Each ``tell`` replaces the ensemble by one whose sample mean and
    covariance (N − 1) are the Kalman update of the current sample
    statistics with the ensemble-linearised forward map and noise Γ/Δt
    (``etki_update``):

        ū ← ū + C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y − Ḡ),
        C^{uu} ← C^{uu} − C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ C^{Gu},

    through the ensemble-space transform, so a diagonal Γ costs O(N² d).
    On a linear forward map k steps Δt₁…Δtₖ equal one exact Kalman update
    of the sample prior with noise Γ / Σ Δtᵢ. This is the transform form of
    Huang et al. (2022) without a prior term (the prior enters as data in
    ``TEKI``; a square-root TEKI would pass the augmented data to
    ``etki_update``). Deterministic: ``init`` ignores its key.

    Reference: Huang, Huang, Reich & Stuart (2022), "Efficient derivative-free
    Bayesian inference for large-scale inverse problems", Inverse Problems
    38, 125006; Bishop, Etherton & Majumdar (2001) for the transform.
    """

    def tell(self, state: EnsembleState, G, y, noise, *, dt=1.0
             ) -> tuple[EnsembleState, InversionInfo]:
        """One ETKI iteration from the forward outputs of ``ask(state)``.

        G: (N, d); y: (d,); noise: Γ (operator or array); dt: Δt ≥ 0.
        Returns ``(state, InversionInfo)``.
        """
        U = state.ensemble
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        dt = check_dt(dt, U.dtype)
        new = etki_update(U, G, y, noise, dt)
        return new_state(state, new, dt), InversionInfo(misfit(G, y, noise), dt)


register(ETKI)
