"""Iterative ensemble smoother, ensemble-subspace Gauss–Newton form anchored
at the prior (Chen & Oliver 2013; Evensen et al. 2019)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import is_concrete
from enkit.covariance import Covariance
from enkit.ensemble import scaled_anomalies
from enkit.inversion._common import (
    EnsembleProcess,
    InversionInfo,
    check_bool,
    check_dt,
    check_process_solve,
    check_tell,
    guarded,
    misfit,
    register,
)
from enkit.linalg import kalman_solve

__all__ = ["IES", "IESState", "ies_step_lengths", "ies_update"]


class IESState(NamedTuple):
    """Carried state of IES.

    ensemble: (N, p) current members uⱼ = u⁰ⱼ + A₀ᵀ wⱼ; prior: (N, p) the
    initial members u⁰ⱼ (the anchors, fixed at ``init``); weights: (N, N)
    the ensemble-space coordinates W, row j = wⱼᵀ; iteration: int32 scalar;
    time: Σ of the step lengths told; key: the PRNG key given to ``init``
    (None when deterministic).
    """

    ensemble: Array
    prior: Array
    weights: Array
    iteration: Array
    time: Array
    key: Array | None


def ies_step_lengths(n_steps: int, *, max_step: float = 0.6, min_step: float = 0.3,
                     halflife: float = 2.5) -> Array:
    """The decaying step-length schedule of Evensen et al. (2019):

        γₖ = γ_min + (γ_max − γ_min) · 2^(−k / halflife),   k = 0..K−1.

    Long steps first (fast early progress), then shorter ones (stability
    near the minimum). Pass ``dt=gamma[k]`` to the k-th ``IES.tell``.

    n_steps: K ≥ 1; max_step, min_step: 0 < γ_min ≤ γ_max ≤ 1; halflife: > 0
    (iterations for the excess over γ_min to halve). Returns (K,).

    Reference: Evensen, Raanes, Stordal & Hove (2019), "Efficient
    implementation of an iterative ensemble smoother for data assimilation
    and reservoir history matching", Frontiers in Applied Mathematics and
    Statistics 5:47.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    lo, hi, h = float(min_step), float(max_step), float(halflife)
    if not (0 < lo <= hi <= 1):
        raise ValueError(
            f"step lengths must satisfy 0 < min_step <= max_step <= 1, got "
            f"min_step={min_step!r}, max_step={max_step!r}"
        )
    if not np.isfinite(h) or h <= 0:
        raise ValueError(f"halflife must be finite and > 0, got {halflife!r}")
    k = np.arange(int(n_steps), dtype=np.float64)
    return jnp.asarray(lo + (hi - lo) * 2.0 ** (-k / h))


def _project(A: Array, Y: Array) -> Array:
    """``P Y`` with P the orthogonal projector onto the column span of the
    (N, p) anomalies A (p < N − 1), from a thin SVD; directions with a
    singular value below N·eps·s_max are dropped (rank-deficient A)."""
    Q, s, _ = jnp.linalg.svd(A, full_matrices=False)  # Q: (N, p)
    keep = s > A.shape[0] * jnp.finfo(A.dtype).eps * jnp.max(s)
    Q = Q * keep
    return Q @ (Q.T @ Y)


def ies_update(W: Array, G: Array, D: Array, noise: Covariance, step: Array,
               damping: Array, A: Array | None = None, *, method: str = "auto",
               rcond: float | Array | None = None) -> Array:
    """One subspace Gauss–Newton (Levenberg–Marquardt) step on the weights W
    (pure function, no checks).

    With the current output anomalies Y (rows, divided by √(N − 1)) and
    Ω = I + Π W / √(N − 1) (Π the centring matrix), the average sensitivity
    is S = Ω⁻¹ Y (N, d) and, with c = 1 + λ, S' = S / √c,

        W ← W − γ/c · (W − Z S'ᵀ),   Z = (W S' + √c (D − G)) (S'ᵀS' + Γ)⁻¹,

    which is row by row wⱼ ← wⱼ − γ (cI + SᵀΓ⁻¹S)⁻¹ (wⱼ + SᵀΓ⁻¹(G(uⱼ) − dⱼ)).
    The solve is ``enkit.linalg.kalman_solve`` (ensemble space when d > N).

    When p < N − 1 the anomalies cannot span the ensemble space and Y is
    first projected onto the span of the current parameter anomalies A,
    Y ← A A⁺ Y (Evensen et al. 2019, their projection for n < N − 1; it
    leaves a linear G's Y = A Gᵀ unchanged).

    W: (N, N); G: (N, d) outputs of the members uⱼ = u⁰ⱼ + A₀ᵀ wⱼ;
    D: (N, d) perturbed data rows dⱼ; noise: Γ; step: γ; damping: λ ≥ 0;
    A: (N, p) current anomalies / √(N − 1) to project on, or None;
    method, rcond: the innovation solve, see ``enkit.linalg.kalman_solve``.
    Returns (N, N).
    """
    N = W.shape[0]
    _, Y = scaled_anomalies(G)
    if A is not None:
        Y = _project(A, Y)
    Wc = W - jnp.mean(W, axis=0, keepdims=True)  # Π W
    Omega = jnp.eye(N, dtype=W.dtype) + Wc / jnp.sqrt(N - 1.0)
    S = jnp.linalg.solve(Omega, Y)  # (N, d)
    c = 1.0 + damping
    sc = jnp.sqrt(c)
    Sp = S / sc
    H = W @ Sp + sc * (D - G)
    Z = kalman_solve(Sp, noise, H, method=method, rcond=rcond)  # rows (S'ᵀS' + Γ)⁻¹ hⱼ
    return W - (step / c) * (W - Z @ Sp.T)


def members(U0: Array, W: Array) -> Array:
    """The members ``U0 + W A₀``, A₀ = Π U0 / √(N − 1) the scaled prior
    anomalies, evaluated as ``U0 + T U0`` with the N×N ``T = W Π / √(N − 1)``:
    one product with the (N, p) ensemble and no (N, p) anomaly array
    (W = 0 gives U0 exactly). U0: (N, p); W: (N, N). Returns (N, p)."""
    T = (W - jnp.mean(W, axis=1, keepdims=True)) / jnp.sqrt(W.shape[0] - 1.0)
    return U0 + T @ U0


@dataclasses.dataclass(frozen=True)
class IES(EnsembleProcess):
    """Iterative ensemble smoother: ensemble-subspace Gauss–Newton anchored
    at the prior (Chen & Oliver 2013; Evensen et al. 2019).

    Member j minimises its randomised-maximum-likelihood objective in the
    span of the prior anomalies A₀ (N, p, divided by √(N − 1)):

        uⱼ = u⁰ⱼ + A₀ᵀ wⱼ,   J(wⱼ) = ½‖wⱼ‖² + ½‖Γ^{-1/2}(G(uⱼ) − y − ξⱼ)‖²,

    u⁰ⱼ the prior draws (the anchors), ξⱼ ~ N(0, Γ) perturbations fixed for
    the whole run. Each ``tell`` takes one Gauss–Newton (Levenberg–Marquardt
    with λ > 0) step of length γ = ``dt``, the Jacobian replaced by the
    ensemble's average sensitivity S = Ω⁻¹ Y (see ``ies_update``):

        wⱼ ← wⱼ − γ (cI + SᵀΓ⁻¹S)⁻¹ (wⱼ + SᵀΓ⁻¹(G(uⱼ) − y − ξⱼ)),  c = 1 + λ.

    Only N×N systems and the ``enkit.linalg.kalman_solve`` innovation solve
    appear: a ``Diagonal``/``Scalar`` Γ is never densified and no p×p or
    d×d matrix is formed when d > N (memory O(N (p + d) + N²)).

    When p < N − 1, Y is first projected on the span of the current
    parameter anomalies (Evensen et al. 2019; see ``ies_update``).
    Properties: for a linear G (or p ≥ N − 1) the first step with γ = 1,
    λ = 0 is the stochastic EnKF analysis (``EKI`` with Δt = 1) with the
    same perturbations; for a linear G (any p: the estimate S is then
    exact) Gauss–Newton converges in one full step, so further full steps
    leave the ensemble unchanged.

    Perturbations: ξ is drawn once, from ``fold_in(key, 0)`` (the draw of
    EKI's first iteration), and the same ξ is used by every ``tell``; it is
    regenerated from that key on each call rather than stored, so the state
    does not depend on the data dimension. ``stochastic=False`` sets ξ = 0.

    stochastic: perturb the data (static; then ``init`` needs a key).
    method: innovation solve, see ``enkit.linalg.kalman_solve`` (static;
    default "auto"); ``"pinv"`` pseudo-inverts a singular ``S'ᵀS' + Γ`` with the
    relative eigenvalue cut rcond (static float; None:
    ``enkit.linalg.default_rcond``).

    References: Chen & Oliver (2013), "Levenberg–Marquardt forms of the
    iterative ensemble smoother for efficient history matching and
    uncertainty quantification", Computational Geosciences 17, 689–703;
    Evensen, Raanes, Stordal & Hove (2019), "Efficient implementation of an
    iterative ensemble smoother for data assimilation and reservoir history
    matching", Frontiers in Applied Mathematics and Statistics 5:47.
    """

    stochastic: bool = True
    method: str = "auto"
    rcond: float | None = None

    def __post_init__(self):
        check_bool("stochastic", self.stochastic)
        check_process_solve(self)

    def init(self, key, ensemble) -> IESState:
        """Initial state from the (N, p) prior draws ``ensemble`` (they are
        also the anchors); weights W = 0. key: PRNG key or integer seed,
        required when ``stochastic``."""
        s = super().init(key, ensemble)
        E = s.ensemble
        N = E.shape[0]
        return IESState(E, E, jnp.zeros((N, N), E.dtype), s.iteration, s.time, s.key)

    def tell(self, state: IESState, G, y, noise, *, dt=1.0, damping=0.0
             ) -> tuple[IESState, InversionInfo]:
        """One IES iteration from the forward outputs of ``ask(state)``.

        G: (N, d) outputs of the asked members; y: (d,) data; noise: Γ, a
        covariance operator of dimension d or an array (``as_covariance``);
        dt: step length γ in [0, 1] (1: full Gauss–Newton step; 0: no
        change; see ``ies_step_lengths``); damping: Levenberg–Marquardt
        λ ≥ 0 (0: Gauss–Newton). Returns ``(state, InversionInfo)``,
        ``info.dt`` = γ. A zero step leaves W and the members unchanged.
        """
        U = state.ensemble
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        step = check_dt(dt, U.dtype, at_most_one=True)
        lam = jnp.asarray(damping, U.dtype)
        if lam.ndim != 0:
            raise ValueError(f"damping must be a scalar, got shape {lam.shape}")
        if is_concrete(lam) and not (np.isfinite(float(lam)) and float(lam) >= 0):
            raise ValueError(f"damping must be finite and >= 0, got {float(lam)}")
        D = jnp.broadcast_to(y, G.shape)
        if self.stochastic:
            D = D + noise.sample(jax.random.fold_in(state.key, 0), (U.shape[0],))
        N, p = U.shape
        A = scaled_anomalies(U)[1] if p < N - 1 else None
        W = guarded(step, ies_update(state.weights, G, D, noise, step, lam, A,
                                   method=self.method, rcond=self.rcond),
                    state.weights)
        s = state._replace(ensemble=guarded(step, members(state.prior, W), U), weights=W,
                           iteration=state.iteration + 1, time=state.time + step)
        return s, InversionInfo(misfit(G, y, noise), step)


register(IES, meta=["stochastic", "method", "rcond"])
