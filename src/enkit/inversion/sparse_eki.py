"""Sparse ensemble Kalman inversion (Schneider, Stuart & Wu 2022): an EKI step
followed by an ℓ1 proximal (soft-threshold) step and an optional hard
threshold that prunes small parameters to exactly zero."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import is_concrete
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
from enkit.inversion.eki import eki_update
from enkit.linalg import kalman_solve

__all__ = ["SparseEKI", "analysis_variances", "soft_threshold"]


def soft_threshold(U: Array, tau: Array) -> Array:
    """The proximal map of ``Σₖ τₖ |uₖ|``: ``sign(u) max(|u| − τ, 0)``.

    Evaluated as ``u − clip(u, −τ, τ)``, so entries with |u| ≤ τ become
    exactly 0 and τ = 0 returns u bit for bit. U: (N, p); tau: scalar or
    (p,), ≥ 0. Returns (N, p).
    """
    return U - jnp.clip(U, -tau, tau)


def analysis_variances(U: Array, G: Array, noise: Covariance, dt: Array) -> Array:
    """Diagonal of the Kalman analysis covariance of one EKI step,

        Cₐ = C^{uu} − C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ C^{Gu}   (sample covariances, N − 1),

    computed as ``diag(XᵀX) − diag(XᵀY' (Y'ᵀY' + Γ)⁻¹ Y'ᵀX)``, Y' = √Δt Y,
    through ``enkit.linalg.kalman_solve`` (no d × d matrix when d > N).
    U: (N, p); G: (N, d); noise: Γ; dt: Δt ≥ 0. Returns (p,), ≥ 0.
    """
    _, X = scaled_anomalies(U)
    _, Y = scaled_anomalies(G)
    Ys = jnp.sqrt(dt) * Y
    B = X.T @ Ys  # (p, d): C^{uG} √Δt
    Z = kalman_solve(Ys, noise, B)  # rows (Y'ᵀY' + Γ)⁻¹ Bₖ
    return jnp.maximum(jnp.sum(X * X, axis=0) - jnp.sum(Z * B, axis=1), 0.0)


def _check_weight(obj, name: str) -> None:
    """Validate a concrete λ or θ (scalar or (p,), finite, ≥ 0); a list
    becomes one array leaf. Tracers and pytree placeholders pass untouched."""
    value = getattr(obj, name)
    if isinstance(value, (int, float, np.number, np.ndarray, list, tuple, jax.Array)) \
            and is_concrete(value):
        a = np.asarray(value, dtype=float)
        if a.ndim > 1 or not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(
                f"{name} must be a finite scalar or (p,) array with entries >= 0, "
                f"got {value!r}"
            )
        if isinstance(value, (list, tuple)):
            object.__setattr__(obj, name, jnp.asarray(a))


@dataclasses.dataclass(frozen=True)
class SparseEKI(EnsembleProcess):
    """Sparse ensemble Kalman inversion (Schneider, Stuart & Wu 2022), in its
    soft-threshold (proximal) form.

    Each ``tell`` takes the EKI step (``eki_update``, sample covariances with
    N − 1) and then, member by member, the proximal step of the ℓ1 penalty
    and an optional hard threshold:

        ũᵢ = uᵢ + C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(uᵢ)),   ηᵢ ~ N(0, Δt⁻¹Γ),
        uᵢ' = S_τ(ũᵢ),   τₖ = Δt λₖ (Cₐ)ₖₖ,   S_τ(u) = sign(u) max(|u| − τ, 0),
        uᵢₖ' ← 0 where |uᵢₖ'| ≤ θₖ.

    Why this τ: for a linear G the EKI step of member i minimises
    Δt Φᵢ(u) + ½‖u − uᵢ‖²_{C⁻¹} = ½‖u − ũᵢ‖²_{Cₐ⁻¹} + const (Φᵢ the
    misfit to yᵢ = y + ηᵢ, Cₐ the analysis covariance, ``analysis_variances``),
    so adding Δt λ‖u‖₁ to that objective asks for the proximal map of
    Δt λ‖u‖₁ in the metric Cₐ⁻¹. S_τ is that map in the diagonal of the
    metric (exact when Cₐ is diagonal). Iterated, the ensemble settles near
    the lasso solution argmin ½‖Γ^{-1/2}(y − G(u))‖² + Σₖ λₖ|uₖ|, and the
    ℓ1 weight λ keeps its meaning whatever Δt and the ensemble spread. A
    coordinate that is zero in every member has no spread and stays zero:
    inactive parameters go to exactly 0.

    The quadratic-programming variant of the paper (an ℓ1-ball constraint
    ‖u‖₁ ≤ γ, solved per member in the full metric) is not implemented.

    l1_weight: λ ≥ 0, scalar or (p,) (a zero entry leaves that parameter
    unpenalised); threshold: θ ≥ 0, scalar or (p,), the hard threshold below
    which a member's entry is pruned to 0 (θ = 0 prunes nothing). Both are
    leaves. With λ = 0 and θ = 0 the process is exactly ``EKI``.
    stochastic: draw the perturbations ηᵢ (static; then ``init`` needs a key).

    Reference: Schneider, Stuart & Wu (2022), "Ensemble Kalman inversion for
    sparse learning of dynamical systems from time-averaged data", J. Comput.
    Phys. 470, 111559.
    """

    l1_weight: ArrayLike = 0.0
    threshold: ArrayLike = 0.0
    stochastic: bool = True

    def __post_init__(self):
        check_bool("stochastic", self.stochastic)
        _check_weight(self, "l1_weight")
        _check_weight(self, "threshold")

    def _check_ensemble(self, E):
        p = E.shape[1]
        for name in ("l1_weight", "threshold"):
            shape = np.shape(getattr(self, name))
            if shape not in ((), (p,)):
                raise ValueError(
                    f"{name} must be a scalar or have shape (p,) = ({p},), got shape {shape}"
                )

    def tell(self, state: EnsembleState, G, y, noise, *, dt=1.0
             ) -> tuple[EnsembleState, InversionInfo]:
        """One sparse EKI iteration from the forward outputs of ``ask(state)``.

        G: (N, d) outputs of the asked members; y: (d,) data; noise: Γ, a
        covariance operator of dimension d or an array (``as_covariance``);
        dt: Δt ≥ 0 (Δt = 0 leaves the ensemble unchanged).
        Returns ``(state, InversionInfo)``.
        """
        U = state.ensemble
        self._check_ensemble(U)
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        dt = check_dt(dt, U.dtype)
        xi = noise.sample(iteration_key(state), (U.shape[0],)) if self.stochastic else None
        new = eki_update(U, G, y, noise, dt, xi)
        lam = jnp.asarray(self.l1_weight, U.dtype)
        tau = dt * lam * analysis_variances(U, G, noise, dt)
        new = soft_threshold(new, tau)
        theta = jnp.asarray(self.threshold, U.dtype)
        new = jnp.where(jnp.abs(new) > theta, new, jnp.zeros((), U.dtype))
        return new_state(state, new, dt), InversionInfo(misfit(G, y, noise), dt)


register(SparseEKI, data=["l1_weight", "threshold"], meta=["stochastic"])
