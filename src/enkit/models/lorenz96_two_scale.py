"""The two-scale Lorenz-96 model (Lorenz 1996), advanced by RK4 in JAX.

K slow variables Xₖ on a ring, each coupled to J fast variables Yⱼ,ₖ; the
fast variables form one ring of K·J points (Yⱼ,ₖ is point j + J·k, so the
last fast variable of sector k neighbours the first of sector k + 1):

    dXₖ/dt = Xₖ₋₁ (Xₖ₊₁ − Xₖ₋₂) − Xₖ + F − (h c / b) Σⱼ Yⱼ,ₖ
    dYᵢ/dt = −c b Yᵢ₊₁ (Yᵢ₊₂ − Yᵢ₋₁) − c Yᵢ + (h c / b) X_{⌊i/J⌋}

(indices periodic; i runs over the K·J fast points). Defaults K=36, J=10,
F=10, h=1, c=10, b=10 (Lorenz 1996; Wilks 2005) and dt=0.005, small enough
for the fast scale (time scale 1/c). With h = 0 the slow variables follow
the one-scale Lorenz-96 exactly and the fast ones decay.

The state of one member is the flat vector ``[X (K,), Y (K·J,)]``, shape
(K + K·J,): ensembles are (N, K + K·J) like every enkit ensemble;
``split`` and ``join`` convert.

References: Lorenz (1996), "Predictability – a problem partly solved",
ECMWF Seminar on Predictability; Wilks (2005), QJRMS 131, 389–407.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import Array

from enkit._pytree import register_dataclass
from enkit.models._integrate import rk4_step
from enkit.models._ring import ring_shifts

__all__ = ["Lorenz96TwoScale"]


@dataclasses.dataclass(frozen=True)
class Lorenz96TwoScale:
    """Two-scale Lorenz (1996) model: K slow and K·J fast variables.

    K: number of slow variables (≥ 4); J: fast variables per slow one (≥ 1);
    F: forcing; h: coupling; c: time-scale ratio; b: amplitude ratio;
    dt: RK4 step. F, h, c, b and dt are array leaves (vary or differentiate
    them without recompiling); K and J are static. ``model(x)`` advances one
    state x: (K + K·J,) by one step; ``model.tendency(x)`` is dx/dt.
    """

    K: int = 36
    J: int = 10
    F: float = 10.0
    h: float = 1.0
    c: float = 10.0
    b: float = 10.0
    dt: float = 0.005

    def __post_init__(self):
        if not isinstance(self.K, int) or self.K < 4:
            raise ValueError(f"K must be an integer >= 4, got {self.K!r}")
        if not isinstance(self.J, int) or self.J < 1:
            raise ValueError(f"J must be an integer >= 1, got {self.J!r}")

    @property
    def dim(self) -> int:
        """Length of one state, K + K·J."""
        return self.K * (1 + self.J)

    def split(self, x: Array) -> tuple[Array, Array]:
        """(X, Y) of a state x: (..., K + K·J) → ((..., K), (..., K, J))."""
        X = x[..., : self.K]
        Y = x[..., self.K :].reshape(x.shape[:-1] + (self.K, self.J))
        return X, Y

    def join(self, X: Array, Y: Array) -> Array:
        """The state [X, Y.ravel()] of X: (..., K) and Y: (..., K, J)."""
        Y = jnp.reshape(Y, Y.shape[:-2] + (self.K * self.J,))
        return jnp.concatenate([X, Y], axis=-1)

    def tendency(self, x: Array) -> Array:
        """dx/dt for one state x: (K + K·J,) -> (K + K·J,)."""
        K = self.K
        X, Yr = x[:K], x[K:]  # Yr: the fast ring, (K·J,)
        coupling = self.h * self.c / self.b
        sums = Yr.reshape(K, self.J).sum(axis=1)
        right, left2, left = ring_shifts(X, (1, -2, -1))
        dX = (right - left2) * left - X + self.F - coupling * sums
        yright, yright2, yleft = ring_shifts(Yr, (1, 2, -1))
        dY = (
            -self.c * self.b * yright * (yright2 - yleft)
            - self.c * Yr
            + coupling * jnp.repeat(X, self.J)
        )
        return jnp.concatenate([dX, dY])

    def __call__(self, x: Array) -> Array:
        """Advance x: (K + K·J,) by one RK4 step of length dt."""
        return rk4_step(self.tendency, x, self.dt)


register_dataclass(
    Lorenz96TwoScale, data_fields=["F", "h", "c", "b", "dt"], meta_fields=["K", "J"]
)
