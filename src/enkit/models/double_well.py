"""The overdamped Langevin double well, a bimodal stochastic model.

    dXᵢ = −V'(Xᵢ) dt + σ dWᵢ,    V(x) = x⁴/4 − x²/2,

entry by entry (n independent copies). Wells at x = ±1, a barrier of
height ΔV = 1/4 at 0; the stationary density of each entry is

    p∞(x) ∝ exp(−2 V(x) / σ²),

and the mean time between switches grows like exp(2ΔV/σ²) (Kramers 1940).

References: Kramers (1940), Physica 7; Gardiner (2009), Stochastic
Methods, §5.2; Miller, Carter & Blue (1999), Tellus 51A (data assimilation
in a double well).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax.numpy as jnp
from jax import Array

from enkit._checks import check_number
from enkit._pytree import register_dataclass
from enkit.models.sde import heun_step

__all__ = ["DoubleWell"]


@dataclasses.dataclass(frozen=True)
class DoubleWell:
    """Double-well diffusion ``dX = (X − X³) dt + σ dW`` on n entries.

    A stochastic model: ``model(key, x)`` advances one member x: (n,) by
    one step of ``scheme`` (default ``heun_step``: the noise is additive,
    so weak order 2). sigma: σ > 0; dt > 0; n: entries (static).
    """

    sigma: float = 0.5
    dt: float = 0.01
    n: int = 1
    scheme: Callable = heun_step

    stochastic: ClassVar[bool] = True

    def __post_init__(self):
        check_number("sigma", self.sigma, low=0.0, what="the noise amplitude, a scalar > 0")
        check_number("dt", self.dt, low=0.0, what="the time step, a real scalar > 0")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if not callable(self.scheme):
            raise TypeError(f"scheme must be an SDE step such as enkit.heun_step, "
                            f"got {self.scheme!r}")

    @property
    def dim(self) -> int:
        return self.n

    @staticmethod
    def potential(x: Array) -> Array:
        """V(x) = x⁴/4 − x²/2, entrywise."""
        return 0.25 * x**4 - 0.5 * x**2

    def drift(self, x: Array) -> Array:
        """f(x) = −V'(x) = x − x³: (n,) -> (n,)."""
        return x - x**3

    def diffusion(self, x: Array) -> Array:
        """g(x) = σ (diagonal, additive): (n,) -> (n,)."""
        return jnp.full(x.shape, self.sigma, dtype=x.dtype)

    def log_stationary_density(self, x: Array) -> Array:
        """−2 V(x)/σ², entrywise: the log of the unnormalised stationary density."""
        return -2.0 * self.potential(x) / self.sigma**2

    def __call__(self, key: Array, x: Array) -> Array:
        """Advance one member x: (n,) by one step of length dt."""
        return self.scheme(key, self.drift, self.diffusion, x, self.dt)


register_dataclass(DoubleWell, data_fields=["sigma", "dt"], meta_fields=["n", "scheme"])
