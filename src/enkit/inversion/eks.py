"""Ensemble Kalman samplers: EKS (Garbuno-Iñigo, Hoffmann, Li & Stuart 2020)
and ALDI (Garbuno-Iñigo, Nüsken & Reich 2020).

Both are interacting Langevin dynamics preconditioned by the ensemble
covariance, whose long-time ensembles sample the posterior
``π(u) ∝ exp(−½‖Γ^{-1/2}(y − G(u))‖² − ½‖C₀^{-1/2}(u − m₀)‖²)``:

    duᵢ = −C^{uG} Γ⁻¹ (G(uᵢ) − y) dt − C C₀⁻¹ (uᵢ − m₀) dt
          [+ (p + 1)/(N − 1) (uᵢ − ū) dt]  + √2 C^{1/2} dWᵢ,

C = C^{uu}, C^{uG} the sample (cross-)covariances with N − 1, the bracket
only in ALDI. For a linear G, C^{uG} Γ⁻¹ (G(uᵢ) − y) is exactly C ∇Φ(uᵢ),
so the drift is the covariance-preconditioned gradient of −log π.
"""

from __future__ import annotations

import dataclasses

import jax
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
from enkit.inversion.prior import GaussianPrior, check_prior
from enkit.inversion.schedulers import stable_step
from enkit.linalg import kalman_solve

__all__ = ["ALDI", "EKS", "aldi_update", "eks_update"]


def _langevin_update(U: Array, G: Array, y: Array, noise: Covariance,
                     prior: GaussianPrior, dt: Array, xi: Array | None,
                     correction: bool) -> Array:
    """The semi-implicit step shared by EKS and ALDI (see ``eks_update``)."""
    N, p = U.shape
    _, X = scaled_anomalies(U)  # C = XᵀX, C^{1/2} = Xᵀ (p × N)
    _, Y = scaled_anomalies(G)  # C^{uG} = XᵀY
    C0 = prior.covariance.astype(U.dtype)
    m0 = jnp.asarray(prior.mean, U.dtype)
    # Every explicit term is a combination of the anomalies: rows wᵢᵀ X.
    W = -dt * (noise.solve(G - y) @ Y.T)  # −Δt C^{uG}Γ⁻¹(Gᵢ − y) = Wᵢ X
    W = W + dt * (X @ C0.solve(m0))  # + Δt C C₀⁻¹ m₀
    if xi is not None:
        W = W + jnp.sqrt(2.0 * dt) * xi  # + √(2Δt) C^{1/2} ξᵢ, ξᵢ ~ N(0, I_N)
    rhs = U + W @ X
    if correction:
        rhs = rhs + dt * (p + 1) / jnp.sqrt(jnp.asarray(N - 1, U.dtype)) * X
    # (I + Δt C C₀⁻¹) u' = rhs  ⇔  u' = rhs − Δt C (C₀ + Δt C)⁻¹ rhs.
    Xs = jnp.sqrt(dt) * X
    Z = kalman_solve(Xs, C0, rhs)  # rows (C₀ + Δt C)⁻¹ rhsᵢ
    return rhs - (Z @ Xs.T) @ Xs


def eks_update(U: Array, G: Array, y: Array, noise: Covariance, prior: GaussianPrior,
               dt: Array, xi: Array | None = None) -> Array:
    """One semi-implicit EKS step (pure function, no checks).

        (I + Δt C C₀⁻¹) uᵢ' = uᵢ − Δt C^{uG} Γ⁻¹ (G(uᵢ) − y) + Δt C C₀⁻¹ m₀
                              + √(2Δt) C^{1/2} ξᵢ,

    C = XᵀX and C^{uG} = XᵀY the sample covariances (X, Y the anomalies of
    U and G divided by √(N − 1)), the prior term implicit as in
    Garbuno-Iñigo et al. (2020). The square root is the ensemble one,
    C^{1/2} = Xᵀ (p × N) with ξᵢ ~ N(0, I_N): given U the noise has the
    law N(0, 2Δt C) of any square root, with no p × p factorisation. The
    noise is inside the implicit solve (on a linear problem this ordering
    has the smaller O(Δt) bias of the stationary covariance). The solve uses
    ``enkit.linalg.kalman_solve`` with C₀ as the "noise" operator (Woodbury
    in ensemble space when p > N). Δt = 0 returns U exactly.

    U: (N, p); G: (N, d); y: (d,); noise: Γ, dimension d; prior:
    ``GaussianPrior`` (m₀, C₀); dt: Δt ≥ 0; xi: (N, N) standard normal
    draws, or None for the drift only. Returns (N, p).

    Reference: Garbuno-Iñigo, Hoffmann, Li & Stuart (2020), "Interacting
    Langevin diffusions: gradient structure and ensemble Kalman sampler",
    SIAM J. Appl. Dyn. Syst. 19(1), 412–441.
    """
    return _langevin_update(U, G, y, noise, prior, dt, xi, correction=False)


def aldi_update(U: Array, G: Array, y: Array, noise: Covariance, prior: GaussianPrior,
                dt: Array, xi: Array | None = None) -> Array:
    """One semi-implicit ALDI step: ``eks_update`` plus the finite-ensemble
    correction Δt (p + 1)/(N − 1) (uᵢ − ū) on the right-hand side.

    The correction is the divergence ∇_{uᵢ}·C(U) of the ensemble covariance
    (normalised by N − 1; with 1/N it reads (p + 1)/N, the same dynamics in
    a time rescaled by N/(N − 1)). With it and the ensemble square root
    C^{1/2} = Xᵀ, the product π^{⊗N} is invariant for any N > p + 1.
    Same arguments and result as ``eks_update``.

    References: Nüsken & Reich (2019), arXiv:1908.10890; Garbuno-Iñigo,
    Nüsken & Reich (2020), "Affine invariant interacting Langevin dynamics
    for Bayesian inference", SIAM J. Appl. Dyn. Syst. 19(3), 1633–1658.
    """
    return _langevin_update(U, G, y, noise, prior, dt, xi, correction=True)


@dataclasses.dataclass(frozen=True)
class EKS(EnsembleProcess):
    """Ensemble Kalman sampler (Garbuno-Iñigo, Hoffmann, Li & Stuart 2020).

    Each ``tell`` takes one step of length Δt of the interacting Langevin
    dynamics (semi-implicit in the prior precision, ``eks_update``):

        (I + Δt C C₀⁻¹) uᵢ' = uᵢ − Δt C^{uG}Γ⁻¹(G(uᵢ) − y) + Δt C C₀⁻¹ m₀
                              + √(2Δt) C^{1/2} ξᵢ,

    sample covariances with N − 1. Its mean-field limit samples the
    posterior; for finite N the linear-Gaussian equilibrium density is
    π^{⊗N}(U) det C(U)^{−(p+1)/2}, under which ū ~ N(m, Σ/N) but
    E[C] = (N − p − 2)/(N − 1) Σ (m, Σ the posterior moments; (N − 1) C is
    Wishart with N − p − 2 degrees of freedom, for N > 2p + 1): the spread
    is too small by O(p/N). ``ALDI`` removes this bias. Run it with a small
    Δt (or ``EKSStableScheduler``) and average over iterations after a
    burn-in.

    The step: ``tell(..., dt=None)`` (the default, and what ``calibrate``
    uses without a scheduler) takes the adaptive step of Garbuno-Iñigo et
    al. (2020), Δt = 1 / (‖D‖_F + δ) (``stable_step``, the
    ``EKSStableScheduler`` rule): short while the data drift is strong,
    longer as the ensemble settles. A given Δt (a fixed step or another
    scheduler's) is capped by that bound when ``cap_dt`` (default True):
    the explicit data drift maps the ensemble by I − Δt D, which diverges
    once Δt ρ(D) > 2, and from a broad prior on a stiff problem a fixed
    Δt = 0.005 already does. ``info.dt`` is the step taken. Drivers stop
    with ``NonFiniteEnsemble`` (naming the iteration) if an update still
    leaves a non-finite member.

    prior: ``GaussianPrior`` (m₀, C₀), required (a pytree leaf); cap_dt:
    cap a given Δt by the stability bound (static). The process is
    stochastic: ``init`` needs a key, iteration n draws ξ from
    ``fold_in(key, n)``.
    """

    prior: GaussianPrior
    cap_dt: bool = True
    stochastic = True
    _correction = False

    def __post_init__(self):
        check_bool("cap_dt", self.cap_dt)
        if self.prior is None:
            raise TypeError(
                f"{type(self).__name__} needs prior=GaussianPrior(mean, covariance): "
                "the prior enters its drift"
            )

    def _check_ensemble(self, E):
        check_prior(self.prior, E.shape[1])

    def tell(self, state: EnsembleState, G, y, noise, *, dt=None
             ) -> tuple[EnsembleState, InversionInfo]:
        """One step from the forward outputs of ``ask(state)``.

        G: (N, d) outputs of the asked members; y: (d,) data; noise: Γ, a
        covariance operator of dimension d or an array (``as_covariance``);
        dt: None (the adaptive step ``stable_step``) or Δt ≥ 0, capped by
        that bound when ``cap_dt`` (Δt = 0 leaves the ensemble unchanged).
        Returns ``(state, InversionInfo)``; ``info.misfit`` is the data
        misfit of G (no prior term), ``info.dt`` the step taken.
        """
        U = state.ensemble
        check_prior(self.prior, U.shape[1])
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        if dt is None:
            dt = stable_step(G, y, noise)
        else:
            dt = check_dt(dt, U.dtype)
            if self.cap_dt:
                dt = jnp.minimum(dt, stable_step(G, y, noise))
        N = U.shape[0]
        xi = jax.random.normal(iteration_key(state), (N, N), U.dtype)
        new = _langevin_update(U, G, y, noise, self.prior, dt, xi, self._correction)
        return new_state(state, new, dt), InversionInfo(misfit(G, y, noise), dt)


@dataclasses.dataclass(frozen=True)
class ALDI(EKS):
    """Affine-invariant interacting Langevin dynamics (Garbuno-Iñigo, Nüsken
    & Reich 2020): ``EKS`` plus the finite-ensemble correction
    (p + 1)/(N − 1) (uᵢ − ū) in the drift (``aldi_update``):

        (I + Δt C C₀⁻¹) uᵢ' = uᵢ − Δt C^{uG}Γ⁻¹(G(uᵢ) − y) + Δt C C₀⁻¹ m₀
                              + Δt (p + 1)/(N − 1) (uᵢ − ū) + √(2Δt) Xᵀ ξᵢ.

    With the ensemble square root Xᵀ and this correction, N independent
    posterior draws are invariant for the exact dynamics (and, for a linear
    G, the equilibrium is exactly i.i.d. posterior): the ensemble mean and
    covariance have no O(1/N) bias, only an O(Δt) one from the time step.
    Needs N ≥ p + 2 members (a full-rank C with room to spare); fewer raise.

    prior: ``GaussianPrior`` (m₀, C₀), required. Stochastic: ``init``
    needs a key.

    References: Garbuno-Iñigo, Nüsken & Reich (2020), SIAM J. Appl. Dyn.
    Syst. 19(3), 1633–1658; Nüsken & Reich (2019), arXiv:1908.10890.
    """

    _correction = True

    def _check_ensemble(self, E):
        check_prior(self.prior, E.shape[1])
        N, p = E.shape
        if N < p + 2:
            raise ValueError(
                f"ALDI needs N >= p + 2 members for its finite-ensemble correction "
                f"(p={p} parameters, so N >= {p + 2}), got ensemble shape {E.shape}"
            )


register(EKS, data=["prior"], meta=["cap_dt"])
register(ALDI, data=["prior"], meta=["cap_dt"])
