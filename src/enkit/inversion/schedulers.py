"""Step-size schedulers for Δt: pure functions of the algorithmic time and
the forward outputs of the current ensemble.

A scheduler is a frozen dataclass (a pytree, hyperparameters as leaves)
with ``step_size(time, G, y, noise) -> dt``; a driver calls it between
``ask`` and ``tell``:

    U = process.ask(state); G = forward(U)
    dt = scheduler.step_size(state.time, G, y, noise)
    state, info = process.tell(state, G, y, noise, dt=dt)

Further rules (e.g. Levenberg–Marquardt damping) only need the same method.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_number, is_concrete
from enkit._pytree import register_dataclass
from enkit.covariance import as_covariance

__all__ = ["DataMisfitController", "EKSStableScheduler", "FixedStep", "stable_step"]


@dataclasses.dataclass(frozen=True)
class FixedStep:
    """The constant step Δt = ``dt`` (a leaf, so it can be swept by vmap):
    finite and > 0 (a fixed zero step would never move the ensemble; the
    process's ``tell`` checks its own upper bound, e.g. Δt < 1 for UKI)."""

    dt: ArrayLike = 1.0

    def __post_init__(self):
        check_number("dt", self.dt, low=0.0)

    def step_size(self, time, G, y, noise) -> Array:
        """Δt = ``dt`` whatever the arguments (returned in G's dtype)."""
        return jnp.asarray(self.dt, jnp.asarray(G).dtype)


@dataclasses.dataclass(frozen=True)
class DataMisfitController:
    """Adaptive Δt that reaches the terminal time T in finitely many steps
    (Iglesias & Yang 2021).

    With the whitened misfits ``Φⱼ = ½ ‖Γ^{-1/2}(y − G(uⱼ))‖²`` of the N
    members, their mean Φ̄ and sample variance Var Φ (N − 1):

        Δt = min( max( d / (2Φ̄), √(d / (2 Var Φ)) ),  T − t ),

    d the data dimension and t the current algorithmic time. The step stops
    exactly at t = T; called at or after T it returns Δt = 0, which every
    process treats as a step that changes nothing (no division by zero, no
    NaN). A remaining time below 8 ulp of T counts as reached, so rounding
    of the sum of steps cannot leave a sliver of a step.

    terminal_time: T, finite and > 0 (default 1, where a Gaussian linear
    problem's tempering from prior to posterior ends). A leaf. Meant for the ensemble processes
    (G holds the members' outputs); UKI's sigma-point outputs are not a
    sample of the misfit distribution.

    Its Δt may exceed 1, so it does not suit ``UKI`` (Δt < 1 there) and
    ``GNKI`` (where Δt is a step length ≤ 1) without capping.

    Reference: Iglesias & Yang (2021), "Adaptive regularisation for ensemble
    Kalman inversion", Inverse Problems 37, 025008.
    """

    terminal_time: ArrayLike = 1.0

    def __post_init__(self):
        check_number("terminal_time", self.terminal_time, low=0.0)

    def step_size(self, time, G, y, noise) -> Array:
        """Δt from the current time and the (N, d) outputs G of the members."""
        G = jnp.asarray(G)
        d = G.shape[1]
        noise = as_covariance(noise, d, name="noise").astype(G.dtype)
        r = noise.whiten(jnp.asarray(y, G.dtype) - G)
        phi = 0.5 * jnp.sum(r * r, axis=1)
        mean, var = jnp.mean(phi), jnp.var(phi, ddof=1)
        tiny = jnp.finfo(G.dtype).tiny
        a = jnp.where(mean > 0, d / (2.0 * jnp.maximum(mean, tiny)), jnp.inf)
        b = jnp.where(var > 0, jnp.sqrt(d / (2.0 * jnp.maximum(var, tiny))), jnp.inf)
        T = jnp.asarray(self.terminal_time, G.dtype)
        remaining = T - jnp.asarray(time, G.dtype)
        eps = jnp.finfo(G.dtype).eps
        remaining = jnp.where(remaining > 8 * eps * jnp.abs(T), remaining, 0.0)
        return jnp.minimum(jnp.maximum(a, b), remaining)

    def finished(self, time) -> Array:
        """True once the algorithmic time has reached T (to 8 ulp)."""
        T = jnp.asarray(self.terminal_time)
        t = jnp.asarray(time)
        eps = jnp.finfo(t.dtype).eps if jnp.issubdtype(t.dtype, jnp.floating) else 0.0
        return T - t <= 8 * eps * jnp.abs(T)


@dataclasses.dataclass(frozen=True)
class EKSStableScheduler:
    """Adaptive Δt that keeps the ensemble Kalman sampler stable
    (Garbuno-Iñigo, Hoffmann, Li & Stuart 2020, after Kovachki & Stuart 2019):

        Δt = h / (‖D‖_F + δ),   Dᵢⱼ = ⟨G(uᵢ) − Ḡ, Γ⁻¹(G(uⱼ) − y)⟩ / (N − 1),

    D the N × N matrix whose rows weight the anomalies in the data drift
    (−Σᵢ Dᵢⱼ uᵢ = −C^{uG}Γ⁻¹(G(uⱼ) − y)), ‖·‖_F the Frobenius norm. It is
    normalised by N − 1 like every enkit covariance (EnsembleKalmanProcesses.jl
    v2 divides by N, a step N/(N − 1) times longer). The step is small while
    the data drift is strong and grows as the ensemble settles; it suits
    ``EKS``/``ALDI`` and, as a cautious rule, the EKI family.

    numerator: h > 0 (default 1); nugget: δ > 0 (default 2.22e-16, the
    float64 machine epsilon, as in EnsembleKalmanProcesses.jl), which bounds
    Δt by h/δ when D = 0. Both are leaves (vmap-able, no recompilation).

    References: Garbuno-Iñigo, Hoffmann, Li & Stuart (2020), SIAM J. Appl.
    Dyn. Syst. 19(1), 412–441; Kovachki & Stuart (2019), "Ensemble Kalman
    inversion: a derivative-free technique for machine learning tasks",
    Inverse Problems 35, 095005.
    """

    numerator: ArrayLike = 1.0
    nugget: ArrayLike = 2.220446049250313e-16

    def __post_init__(self):
        for name in ("numerator", "nugget"):
            v = getattr(self, name)
            if isinstance(v, (int, float, np.number, np.ndarray, jax.Array)) and is_concrete(v):
                a = np.asarray(v)
                if a.ndim != 0 or not np.isfinite(a) or not a > 0:
                    raise ValueError(f"{name} must be a finite scalar > 0, got {v!r}")

    def step_size(self, time, G, y, noise) -> Array:
        """Δt from the (N, d) outputs G of the members (``time`` unused)."""
        return stable_step(G, y, noise, self.numerator, self.nugget)


def stable_step(G, y, noise, numerator: ArrayLike = 1.0,
                nugget: ArrayLike = 2.220446049250313e-16) -> Array:
    """The step bound of ``EKSStableScheduler``: h / (‖D‖_F + δ),
    Dᵢⱼ = ⟨G(uᵢ) − Ḡ, Γ⁻¹(G(uⱼ) − y)⟩ / (N − 1).

    The explicit data drift maps the ensemble by I − Δt D (Kovachki &
    Stuart 2019), stable while Δt ρ(D) < 2; ρ(D) ≤ ‖D‖_F, so h = 1 keeps a
    factor 2 in hand. G: (N, d); y: (d,); noise: Γ; numerator: h > 0;
    nugget: δ > 0. Returns a scalar of G's dtype.
    """
    G = jnp.asarray(G)
    N, d = G.shape
    noise = as_covariance(noise, d, name="noise").astype(G.dtype)
    y = jnp.asarray(y, G.dtype)
    A = noise.whiten(G - jnp.mean(G, axis=0))  # Γ^{-1/2}(G(uᵢ) − Ḡ)
    R = noise.whiten(G - y)  # Γ^{-1/2}(G(uⱼ) − y)
    D = (A @ R.T) / (N - 1)
    norm = jnp.sqrt(jnp.sum(D * D))
    return jnp.asarray(numerator, G.dtype) / (norm + jnp.asarray(nugget, G.dtype))


register_dataclass(EKSStableScheduler, data_fields=["numerator", "nugget"],
                                 meta_fields=[])
register_dataclass(FixedStep, data_fields=["dt"], meta_fields=[])
register_dataclass(DataMisfitController, data_fields=["terminal_time"],
                                 meta_fields=[])
