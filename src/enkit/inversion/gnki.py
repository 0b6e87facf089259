"""Ensemble Gauss–Newton Kalman inversion (Chada, Chen & Sanz-Alonso 2021)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from enkit.ensemble import scaled_anomalies
from enkit.inversion._common import (
    EnsembleProcess,
    InversionInfo,
    check_bool,
    check_dt,
    check_process_solve,
    check_tell,
    iteration_key,
    misfit,
    new_state,
    register,
)
from enkit.inversion.prior import GaussianPrior, check_prior
from enkit.linalg import kalman_solve

__all__ = ["GNKI", "GNKIState"]


class GNKIState(NamedTuple):
    """Carried state of GNKI.

    ensemble: (N, p); anchors: (N, p) the members' prior draws m₀⁽ʲ⁾ (fixed
    at ``init``); iteration: int32 scalar; time: Σ Δtᵢ; key: stored PRNG key
    (None when deterministic), iteration n draws from ``fold_in(key, n)``.
    """

    ensemble: Array
    anchors: Array
    iteration: Array
    time: Array
    key: Array | None


@dataclasses.dataclass(frozen=True)
class GNKI(EnsembleProcess):
    """Ensemble Gauss–Newton Kalman inversion (the IEKF family of Chada,
    Chen & Sanz-Alonso 2021).

    Each member takes a damped Gauss–Newton step on its own regularised
    least-squares objective ½‖y⁽ʲ⁾ − G(u)‖²_Γ + ½‖u − m₀⁽ʲ⁾‖²_{C₀}, with the
    Jacobian replaced by the ensemble's statistical linearisation
    ``Bₙ = C^{Gu} (C^{uu})⁺`` (sample covariances with N − 1, pseudo-inverse):

        Kₙ = C₀ Bₙᵀ (Bₙ C₀ Bₙᵀ + Γ)⁻¹,
        uⱼ ← uⱼ + Δt [ m₀⁽ʲ⁾ − uⱼ + Kₙ (y⁽ʲ⁾ − G(uⱼ) − Bₙ (m₀⁽ʲ⁾ − uⱼ)) ],

    Δt ∈ [0, 1] the step length α (1 is the full Gauss–Newton step). The
    anchors m₀⁽ʲ⁾ are the initial members (prior draws, as in randomised
    maximum likelihood) and ``y⁽ʲ⁾ = y + ηⱼ``, ηⱼ ~ N(0, Γ) drawn afresh each
    iteration. With ``stochastic=False`` ηⱼ = 0 and the anchors are the
    initial members re-centred on the prior mean, so the mean follows
    Gauss–Newton on the MAP objective. On a linear G = A with N > p,
    Bₙ = A exactly and a full step lands on ``m₀⁽ʲ⁾ + K (y⁽ʲ⁾ − A m₀⁽ʲ⁾)``
    whatever uⱼ: converged in one step (deterministic: mean = posterior
    mean; stochastic: a sample of the posterior).

    prior: ``GaussianPrior`` (m₀, C₀); C₀ is used as a dense (p, p) matrix.
    stochastic: draw ηⱼ (static; then ``init`` needs a key).
    method: innovation solve, see ``enkit.linalg.kalman_solve`` (static;
    default "auto"); ``"pinv"`` pseudo-inverts a singular ``Bₙ C₀ Bₙᵀ + Γ`` with the
    relative eigenvalue cut rcond (static float; None:
    ``enkit.linalg.default_rcond``).
    Cost: an SVD of the (N, p) anomalies and p×p products per step.

    Reference: Chada, Chen & Sanz-Alonso (2021), "Iterative ensemble Kalman
    methods: a unified perspective with some new variants", Foundations of
    Data Science 3(3), 331–369.
    """

    prior: GaussianPrior
    stochastic: bool = True
    method: str = "auto"
    rcond: float | None = None

    def __post_init__(self):
        check_bool("stochastic", self.stochastic)
        check_process_solve(self)

    def _check_ensemble(self, E):
        check_prior(self.prior, E.shape[1])

    def init(self, key, ensemble) -> GNKIState:
        """Initial state from the (N, p) prior draws ``ensemble`` (see
        ``EnsembleProcess.init``); they also become the anchors."""
        s = super().init(key, ensemble)
        E = s.ensemble
        if self.stochastic:
            anchors = E
        else:
            anchors = E - jnp.mean(E, axis=0) + jnp.asarray(self.prior.mean, E.dtype)
        return GNKIState(E, anchors, s.iteration, s.time, s.key)

    def tell(self, state: GNKIState, G, y, noise, *, dt=1.0
             ) -> tuple[GNKIState, InversionInfo]:
        """One GNKI iteration from the forward outputs of ``ask(state)``.

        G: (N, d); y: (d,); noise: Γ; dt: step length in [0, 1].
        Returns ``(state, InversionInfo)``.
        """
        U, A0 = state.ensemble, state.anchors
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        dt = check_dt(dt, U.dtype, at_most_one=True)
        _, X = scaled_anomalies(U)
        _, Y = scaled_anomalies(G)
        B = Y.T @ jnp.linalg.pinv(X).T  # (d, p): C^{Gu} (C^{uu})⁺
        C0 = self.prior.covariance.astype(U.dtype)
        W = (B @ C0.cholesky()).T  # (p, d): WᵀW = B C₀ Bᵀ
        D = y - G - (A0 - U) @ B.T
        if self.stochastic:
            D = D + noise.sample(iteration_key(state), (U.shape[0],))
        # rows (B C₀ Bᵀ + Γ)⁻¹ Dⱼ
        Z = kalman_solve(W, noise, D, method=self.method, rcond=self.rcond)
        new = U + dt * (A0 - U + (Z @ B) @ C0.dense())
        return new_state(state, new, dt), InversionInfo(misfit(G, y, noise), dt)


register(GNKI, data=["prior"], meta=["stochastic", "method", "rcond"])
