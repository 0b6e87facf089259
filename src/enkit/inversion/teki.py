"""Tikhonov ensemble Kalman inversion (Chada, Stuart & Tong 2020)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from enkit.inversion._common import (
    BlockDiagonal,
    EnsembleProcess,
    EnsembleState,
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
from enkit.inversion.eki import eki_update
from enkit.inversion.prior import GaussianPrior, check_prior

__all__ = ["TEKI"]


@dataclasses.dataclass(frozen=True)
class TEKI(EnsembleProcess):
    """Tikhonov-regularised EKI (Chada, Stuart & Tong 2020).

    EKI applied to the augmented problem in which the prior is data:

        z = (y, m₀),   F(u) = (G(u), u),   Σ = blockdiag(Γ, C₀),
        uᵢ ← uᵢ + C^{uF} (C^{FF} + Δt⁻¹Σ)⁻¹ (z + ηᵢ − F(uᵢ)),  ηᵢ ~ N(0, Δt⁻¹Σ),

    (``eki_update`` on the augmented outputs; sample covariances with N − 1).
    Its limit minimises ‖Γ^{-1/2}(y − G(u))‖² + ‖C₀^{-1/2}(u − m₀)‖² over
    the span of the ensemble; for a linear G and N > p that is the exact
    posterior mean (the regularised least-squares solution).

    prior: ``GaussianPrior`` (m₀, C₀) (a pytree leaf); stochastic: draw ηᵢ
    (static; then ``init`` needs a key).
    method: innovation solve, see ``enkit.linalg.kalman_solve`` (static;
    default "auto"); ``"pinv"`` pseudo-inverts a singular ``Δt C^{FF} + Σ`` with the
    relative eigenvalue cut rcond (static float; None:
    ``enkit.linalg.default_rcond``).

    Reference: Chada, Stuart & Tong (2020), "Tikhonov regularization within
    ensemble Kalman inversion", SIAM J. Numer. Anal. 58(2), 1263–1294.
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

    def tell(self, state: EnsembleState, G, y, noise, *, dt=1.0
             ) -> tuple[EnsembleState, InversionInfo]:
        """One TEKI iteration from the forward outputs of ``ask(state)``.

        G: (N, d) outputs of the asked members (not augmented: the parameter
        block is appended here); y: (d,); noise: Γ; dt: Δt ≥ 0.
        Returns ``(state, InversionInfo)``; ``info.misfit`` is the data
        misfit only, without the prior term.
        """
        U = state.ensemble
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        dt = check_dt(dt, U.dtype)
        prior = self.prior
        sigma = BlockDiagonal(noise, prior.covariance.astype(U.dtype))
        F = jnp.concatenate([G, U], axis=1)
        z = jnp.concatenate([y, jnp.asarray(prior.mean, U.dtype)])
        xi = sigma.sample(iteration_key(state), (U.shape[0],)) if self.stochastic else None
        new = eki_update(U, F, z, sigma, dt, xi, method=self.method, rcond=self.rcond)
        return new_state(state, new, dt), InversionInfo(misfit(G, y, noise), dt)


register(TEKI, data=["prior"], meta=["stochastic", "method", "rcond"])
