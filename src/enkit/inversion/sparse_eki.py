"""Sparse ensemble Kalman inversion (Schneider, Stuart & Wu 2022): an EKI step
followed by the proximal step of an ℓ1 (elastic-net) penalty in the metric of
the analysis covariance and an optional hard threshold that prunes small
parameters to exactly zero."""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

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

__all__ = ["ProxInfo", "SparseEKI", "analysis_factor", "analysis_variances", "metric_l1_prox",
           "soft_threshold"]


def soft_threshold(U: Array, tau: Array) -> Array:
    """The proximal map of ``Σₖ τₖ |uₖ|`` in the Euclidean metric:
    ``sign(u) max(|u| − τ, 0)``.

    Evaluated as ``u − clip(u, −τ, τ)``, so entries with |u| ≤ τ become
    exactly 0 and τ = 0 returns u bit for bit. U: (N, p); tau: scalar or
    (p,) or (N, p), ≥ 0. Returns (N, p).
    """
    return U - jnp.clip(U, -tau, tau)


def analysis_factor(U: Array, G: Array, noise: Covariance, dt: Array) -> Array:
    """A factor P of the Kalman analysis covariance of one EKI step,

        Cₐ = C^{uu} − C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ C^{Gu} = P Pᵀ   (sample covariances, N − 1),

    with orthogonal columns: Cₐ = Xᵀ M⁻¹ X, M = I + Δt Y Γ⁻¹ Yᵀ (Woodbury; X,
    Y the anomalies divided by √(N − 1)), and P = Xᵀ M^{-1/2} V with V the
    eigenvectors of M^{-1/2} X Xᵀ M^{-1/2}, so PᵀP is diagonal. Only N × N
    eigenproblems and Γ solves: no p × p or d × d matrix.
    U: (N, p); G: (N, d); noise: Γ; dt: Δt ≥ 0. Returns (p, N).
    """
    _, X = scaled_anomalies(U)
    _, Y = scaled_anomalies(G)
    Ys = jnp.sqrt(dt) * Y
    M = jnp.eye(U.shape[0], dtype=U.dtype) + Ys @ noise.solve(Ys).T
    m, W = jnp.linalg.eigh(M)  # M ⪰ I
    L = (W * m ** -0.5) @ W.T @ X  # M^{-1/2} X, (N, p)
    _, V = jnp.linalg.eigh(L @ L.T)
    return L.T @ V


def analysis_variances(U: Array, G: Array, noise: Covariance, dt: Array) -> Array:
    """Diagonal of the Kalman analysis covariance Cₐ of one EKI step
    (``analysis_factor``): U: (N, p); G: (N, d); noise: Γ; dt: Δt ≥ 0.
    Returns (p,), ≥ 0."""
    P = analysis_factor(U, G, noise, dt)
    return jnp.sum(P * P, axis=1)


class ProxInfo(NamedTuple):
    """How the proximal step of one sparse EKI iteration was solved.

    iterations: ADMM iterations taken (int32); residual: the largest
    relative primal/dual residual over the members when it stopped.
    """

    iterations: Array
    residual: Array


def metric_l1_prox(Ut: Array, P: Array, tau: Array, ridge: Array, *,
                   tol: float = 1e-9, max_iterations: int = 500
                   ) -> tuple[Array, ProxInfo]:
    """Row by row, the proximal map of the elastic-net penalty in the
    metric of C = P Pᵀ,

        uᵢ = argmin_u ½ (u − ũᵢ)ᵀ C⁺ (u − ũᵢ) + Σₖ τₖ |uₖ| + ½ κ ‖u‖²,
             u − ũᵢ in the range of P,

    by ADMM on the splitting u = ũᵢ + P z = s (Boyd et al. 2011, §6.4 with
    residual balancing of the penalty ρ, one ρ per member): the z-step is
    diagonal because PᵀP is (``analysis_factor``), the s-step is the
    Euclidean elastic-net map ``soft_threshold(·, τ/ρ) / (1 + κ/ρ)``, so the
    result (the s iterate) has exact zeros. Iterated until the relative
    residuals fall below ``tol`` or ``max_iterations`` (static).

    Ut: (N, p) points ũᵢ; P: (p, r) with PᵀP diagonal; tau: scalar or (p,),
    ≥ 0; ridge: κ ≥ 0, scalar or (p,). Returns ((N, p), ProxInfo).
    """
    N = Ut.shape[0]
    w = jnp.sum(P * P, axis=0)  # (r,) eigenvalues of C
    pos = w > jnp.finfo(w.dtype).eps * jnp.max(w, initial=0.0) * w.shape[0]
    w = jnp.where(pos, w, 0.0)
    Pn = jnp.where(pos, P / jnp.sqrt(jnp.where(pos, w, 1.0)), 0.0)  # orthonormal columns
    lo = jnp.min(jnp.where(pos, w, jnp.inf))
    hi = jnp.max(w)
    rho0 = jnp.where(jnp.isfinite(lo) & (hi > 0), 1.0 / jnp.sqrt(lo * hi), 1.0)
    tiny = jnp.finfo(Ut.dtype).tiny

    def step(carry):
        k, S, Mu, rho, _ = carry
        # z-step in the eigenbasis: v = Pnᵀ(u − ũ), minimising
        # ½ Σ v²/w + ρ/2 ‖ũ + Pn v − S + Mu‖².
        b = (S - Mu - Ut) @ Pn  # (N, r)
        v = b * (rho[:, None] * w) / (1.0 + rho[:, None] * w)
        Uz = Ut + v @ Pn.T
        S_new = soft_threshold(Uz + Mu, tau / rho[:, None]) / (1.0 + ridge / rho[:, None])
        Mu = Mu + Uz - S_new
        r = jnp.linalg.norm(Uz - S_new, axis=1)
        d = rho * jnp.linalg.norm((S_new - S) @ Pn, axis=1)
        scale_r = jnp.maximum(jnp.maximum(jnp.linalg.norm(Uz, axis=1),
                                          jnp.linalg.norm(S_new, axis=1)), tiny)
        scale_d = jnp.maximum(rho * jnp.linalg.norm(Mu @ Pn, axis=1), tiny)
        res = jnp.maximum(r / scale_r, d / scale_d)
        # Residual balancing (the scaled dual Mu follows ρ).
        up, down = r > 10.0 * d, d > 10.0 * r
        f = jnp.where(up, 2.0, jnp.where(down, 0.5, 1.0))
        return k + 1, S_new, Mu / f[:, None], rho * f, jnp.max(res)

    def cond(carry):
        k, *_, res = carry
        return (k < max_iterations) & (res > tol)

    init = (jnp.int32(0), Ut, jnp.zeros_like(Ut),
            jnp.full((N,), rho0, Ut.dtype), jnp.asarray(jnp.inf, Ut.dtype))
    k, S, _, _, res = jax.lax.while_loop(cond, step, init)
    return S, ProxInfo(k, res)


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
    penalised (proximal) form.

    Each ``tell`` takes the EKI step (``eki_update``, sample covariances with
    N − 1), then the proximal step of the elastic-net penalty, in the metric
    of the analysis covariance, on the ensemble mean, and an optional hard
    threshold on that mean; the members move with their mean:

        ũᵢ = uᵢ + C^{uG} (C^{GG} + Δt⁻¹Γ)⁻¹ (y + ηᵢ − G(uᵢ)),   ηᵢ ~ N(0, Δt⁻¹Γ),
        m' = argmin_u ½ (u − ũ̄)ᵀ Cₐ⁺ (u − ũ̄) + Δt Σₖ λₖ |uₖ| + ½ Δt α ‖u‖²,
        m'ₖ ← 0 where |m'ₖ| ≤ θₖ,     uᵢ' = ũᵢ + (m' − ũ̄).

    Why: for a linear G the EKI step of the mean is ũ̄ = ū − Δt Cₐ ∇Φ(ū)
    (Φ the data misfit, Cₐ the analysis covariance, ``analysis_factor``),
    a gradient step preconditioned by Cₐ; the proximal step in the same
    metric makes it a forward–backward step whose fixed points are exactly
    the minimisers of

        ½‖Γ^{-1/2}(y − G(u))‖² + Σₖ λₖ|uₖ| + ½ α ‖u‖²

    (the lasso, or elastic net, in the span of the ensemble when p ≥ N),
    whatever Δt and the spread: λ keeps its meaning. Cₐ holds the data's
    information, so an uninformed direction (p > d, or a small λ) is not
    shrunk to zero wholesale as a diagonal approximation of the metric
    would do. Measured on a 3-sparse problem (p = 40, d = 20, N = 100,
    deterministic, tests/test_sparse_eki.py): after 100 iterations the mean
    is within 1.5e-3–2.5e-3 of the lasso solution for λ = 2–200 and
    Δt = 0.5–1 (the solution's distance to the truth is about 2.5e-2); the
    proximal step is solved by ADMM to ``prox_tol`` or ``prox_iterations``,
    and on an ill-conditioned Cₐ that bound, not the fixed point, limits
    the agreement.

    Where this differs from the paper: the paper thresholds every member.
    That drives all members to the same sparse point, so the spread (and
    with it every later step) collapses, at once for a large λ; here the
    anomalies are those of EKI, so the spread never collapses, and the
    sparsity is the mean's: its zeros are exact up to the rounding of the
    anomalies' mean (about 1e-16 of their size). The paper's ℓ1-ball
    constraint ‖u‖₁ ≤ γ (instead of the penalty λ) is not implemented.

    l1_weight: λ ≥ 0, scalar or (p,) (a zero entry leaves that parameter
    unpenalised); l2_weight: α ≥ 0, scalar or (p,), the ridge part of the
    elastic net; threshold: θ ≥ 0, scalar or (p,), the hard threshold below
    which an entry of the mean is pruned to 0 (θ = 0 prunes nothing). All
    three are leaves. With λ = α = 0 and θ = 0 the process is exactly ``EKI``.
    stochastic: draw the perturbations ηᵢ (static; then ``init`` needs a key).
    prox_tol, prox_iterations: relative tolerance and most iterations of the
    ADMM solve of each proximal step (``metric_l1_prox``, O(p N) per ADMM
    iteration; static); an inexact step still moves towards the fixed
    point, which later iterations refine.

    Reference: Schneider, Stuart & Wu (2022), "Ensemble Kalman inversion for
    sparse learning of dynamical systems from time-averaged data", J. Comput.
    Phys. 470, 111559.
    """

    l1_weight: ArrayLike = 0.0
    threshold: ArrayLike = 0.0
    stochastic: bool = True
    l2_weight: ArrayLike = 0.0
    prox_tol: float = 1e-9
    prox_iterations: int = 500

    def __post_init__(self):
        check_bool("stochastic", self.stochastic)
        for name in ("l1_weight", "threshold", "l2_weight"):
            _check_weight(self, name)
        if not (isinstance(self.prox_tol, (int, float)) and 0 < self.prox_tol < 1):
            raise ValueError(f"prox_tol must be a number in (0, 1), got {self.prox_tol!r}")
        if isinstance(self.prox_iterations, bool) or not isinstance(self.prox_iterations, int) \
                or self.prox_iterations < 1:
            raise ValueError(
                f"prox_iterations must be an integer >= 1, got {self.prox_iterations!r}")

    def _check_ensemble(self, E):
        p = E.shape[1]
        for name in ("l1_weight", "threshold", "l2_weight"):
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
        new = _sparse_update(U, G, y, noise, dt, self._draw(state, noise, U),
                             jnp.asarray(self.l1_weight, U.dtype),
                             jnp.asarray(self.l2_weight, U.dtype),
                             jnp.asarray(self.threshold, U.dtype),
                             self.prox_tol, self.prox_iterations)
        return new_state(state, new, dt), InversionInfo(misfit(G, y, noise), dt)

    def _draw(self, state, noise, U):
        return noise.sample(iteration_key(state), (U.shape[0],)) if self.stochastic else None


@functools.partial(jax.jit, static_argnums=(9, 10))
def _sparse_update(U, G, y, noise, dt, xi, lam, alpha, theta, tol, iterations):
    """The EKI step, then the metric elastic-net proximal step and the hard
    threshold on its mean, the members translated with it (``SparseEKI``);
    λ = α = θ = 0 is the EKI step exactly."""
    new = eki_update(U, G, y, noise, dt, xi)

    def prox(new):
        mean = jnp.mean(new, axis=0)
        P = analysis_factor(U, G, noise, dt)
        sparse = metric_l1_prox(mean[None], P, dt * lam, dt * alpha, tol=tol,
                                max_iterations=iterations)[0][0]
        sparse = jnp.where(jnp.abs(sparse) > theta, sparse, jnp.zeros((), U.dtype))
        return new + (sparse - mean)

    active = jnp.any(lam > 0) | jnp.any(alpha > 0) | jnp.any(theta > 0)
    return jax.lax.cond(active, prox, lambda new: new, new)


register(SparseEKI, data=["l1_weight", "threshold", "l2_weight"],
         meta=["stochastic", "prox_tol", "prox_iterations"])
