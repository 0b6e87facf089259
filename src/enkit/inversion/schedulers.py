"""Step-size schedulers for Δt: pure functions of the algorithmic time and
the forward outputs of the current ensemble.

A scheduler is a frozen dataclass (a pytree, hyperparameters as leaves)
with ``step_size(time, G, y, noise) -> dt``; a driver calls it between
``ask`` and ``tell``:

    U = process.ask(state); G = forward(U)
    dt = scheduler.step_size(state.time, G, y, noise)
    state, info = process.tell(state, G, y, noise, dt=dt)

Further rules (e.g. an EKS-style adaptive step or Levenberg–Marquardt
damping) only need the same method.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit.covariance import as_covariance

__all__ = ["DataMisfitController", "FixedStep"]


@dataclasses.dataclass(frozen=True)
class FixedStep:
    """The constant step Δt = ``dt`` (a leaf, so it can be swept by vmap)."""

    dt: ArrayLike = 1.0

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

    terminal_time: T (default 1, where a Gaussian linear problem's tempering
    from prior to posterior ends). A leaf. Meant for the ensemble processes
    (G holds the members' outputs); UKI's sigma-point outputs are not a
    sample of the misfit distribution.

    Its Δt may exceed 1, so it does not suit ``UKI`` (Δt < 1 there) and
    ``GNKI`` (where Δt is a step length ≤ 1) without capping.

    Reference: Iglesias & Yang (2021), "Adaptive regularisation for ensemble
    Kalman inversion", Inverse Problems 37, 025008.
    """

    terminal_time: ArrayLike = 1.0

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


jax.tree_util.register_dataclass(FixedStep, data_fields=["dt"], meta_fields=[])
jax.tree_util.register_dataclass(DataMisfitController, data_fields=["terminal_time"],
                                 meta_fields=[])
