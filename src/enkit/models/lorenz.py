"""Lorenz-63 and Lorenz-96 in JAX, each advanced by one RK4 step per call.

Models are frozen dataclasses registered as pytrees: the physical constants
and the time step are array leaves (vary or differentiate them without
recompiling), the dimension is static. ``model(x)`` advances one member by
one step of length ``dt``; ``model.tendency(x)`` is ``dx/dt``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array

from enkit._pytree import register_dataclass
from enkit.models._integrate import rk4_step
from enkit.models._ring import ring_rk4_step, ring_shifts

__all__ = ["Lorenz63", "Lorenz96"]


@dataclasses.dataclass(frozen=True)
class Lorenz63:
    """Lorenz (1963) convection model, 3 variables.

        dx/dt = σ (y − x),  dy/dt = x (ρ − z) − y,  dz/dt = x y − β z

    Defaults σ=10, ρ=28, β=8/3, dt=0.01 (the setting of Sakov, Oliver &
    Bertino 2012). Reference: Lorenz (1963), J. Atmos. Sci. 20.
    """

    sigma: float = 10.0
    rho: float = 28.0
    beta: float = 8.0 / 3.0
    dt: float = 0.01

    @property
    def dim(self) -> int:
        return 3

    def tendency(self, x: Array) -> Array:
        """dx/dt for one state x: (3,) -> (3,)."""
        return jnp.stack(
            [
                self.sigma * (x[1] - x[0]),
                x[0] * (self.rho - x[2]) - x[1],
                x[0] * x[1] - self.beta * x[2],
            ]
        )

    def __call__(self, x: Array) -> Array:
        """Advance x: (3,) by one RK4 step of length dt."""
        return rk4_step(self.tendency, x, self.dt)


@dataclasses.dataclass(frozen=True)
class Lorenz96:
    """Lorenz (1996) model on a ring of n variables with forcing F.

        dxᵢ/dt = (xᵢ₊₁ − xᵢ₋₂) xᵢ₋₁ − xᵢ + F      (indices periodic)

    Defaults n=40, F=8, dt=0.05 (the setting of Sakov & Oke 2008).
    Reference: Lorenz (1996), ECMWF Seminar on Predictability.
    """

    n: int = 40
    F: float = 8.0
    dt: float = 0.05

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 4:
            raise ValueError(f"n must be an integer >= 4, got {self.n!r}")

    @property
    def dim(self) -> int:
        return self.n

    def tendency(self, x: Array) -> Array:
        """dx/dt for one state x: (n,) -> (n,)."""
        right, left2, left = ring_shifts(x, (1, -2, -1))
        return (right - left2) * left - x + self.F

    def _window_tendency(self, z: Array) -> Array:
        """The tendency at entries 2 .. w − 2 of a window z (..., w) of
        consecutive ring entries (``ring_rk4_step``'s stencil, reach (2, 1)),
        the arithmetic of ``tendency`` in its order."""
        w = z.shape[-1]
        return (z[..., 3:] - z[..., :w - 3]) * z[..., 1:w - 2] - z[..., 2:w - 1] + self.F

    def __call__(self, x: Array) -> Array:
        """Advance x: (n,) by one RK4 step of length dt.

        The same numbers as ``rk4_step(self.tendency, x, dt)``, bit for
        bit, computed on one halo copy of the ring (``ring_rk4_step``;
        about 1.6 times cheaper for an ensemble under ``vmap``). A forcing
        F given per variable (shape (n,)) takes the ``rk4_step`` path.
        """
        if jnp.ndim(self.F) != 0:
            return rk4_step(self.tendency, x, self.dt)
        return ring_rk4_step(self._window_tendency, x, self.dt, (2, 1))


register_dataclass(
    Lorenz63, data_fields=["sigma", "rho", "beta", "dt"], meta_fields=[]
)
register_dataclass(Lorenz96, data_fields=["F", "dt"], meta_fields=["n"])
