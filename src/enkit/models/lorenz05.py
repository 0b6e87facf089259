"""Lorenz (2005) models II and III on a ring, in JAX (RK4).

Model II smooths Lorenz-96 by coupling averages over K neighbours; model III
superimposes small-scale waves Y on the smooth field X, with Z = X + Y the
state. With K = 1 (and no small scale) model II is Lorenz-96.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._pytree import register_dataclass
from enkit.models._integrate import rk4_step

__all__ = ["Lorenz05"]


def _modified_sum_weights(half: int, halve_ends: bool) -> np.ndarray:
    """Weights of Lorenz's Σ′ over i = −half … half: 1, the end terms ½
    when ``halve_ends``."""
    w = np.ones(2 * half + 1)
    if halve_ends and half > 0:
        w[0] = w[-1] = 0.5
    return w


def _circular(x: Array, weights, offsets) -> Array:
    """Σᵢ weights[i] · x[n + offsets[i]] on the ring, for every n: shifted
    sums for a few terms, a circular convolution by FFT for more."""
    if len(weights) <= 5:
        out = 0.0
        for w, o in zip(weights, offsets):
            if w != 0.0:
                out = out + w * jnp.roll(x, -int(o), axis=-1)
        return out
    n = x.shape[-1]
    kernel = np.zeros(n)
    for w, o in zip(weights, offsets):
        kernel[-int(o) % n] += w
    spectrum = jnp.asarray(np.fft.rfft(kernel), jnp.result_type(x.dtype, jnp.complex64))
    return jnp.fft.irfft(jnp.fft.rfft(x) * spectrum, n=n).astype(x.dtype)


def _average(x: Array, K: int) -> Array:
    """W_n = Σ′_{i=−J…J} x_{n+i} / K (J = K/2, the ends halved for even K;
    J = (K − 1)/2, an ordinary sum, for odd K), Lorenz (2005) eq. 9."""
    J = K // 2
    w = _modified_sum_weights(J, K % 2 == 0) / K
    return _circular(x, w, range(-J, J + 1))


def bracket(x: Array, y: Array, K: int) -> Array:
    """Lorenz (2005) eq. 10: [X, Y]_{K,n} = −W^X_{n−2K} W^Y_{n−K}
    + (1/K) Σ′_j W^X_{n−K+j} Y_{n+K+j}, W the K-point averages (eq. 9).
    K = 1 gives Lorenz-96's ``−X_{n−2} Y_{n−1} + X_{n−1} Y_{n+1}``."""
    Wx = _average(x, K)
    Wy = Wx if y is x else _average(y, K)
    first = jnp.roll(Wx, 2 * K, axis=-1) * jnp.roll(Wy, K, axis=-1)
    second = _average(jnp.roll(Wx, K, axis=-1) * jnp.roll(y, -K, axis=-1), K)
    return second - first


@dataclasses.dataclass(frozen=True)
class Lorenz05:
    """Lorenz (2005) model III (``smoothing`` = I ≥ 1) or model II
    (``smoothing=None``) on a ring of n variables, one RK4 step per call.

    Model II:   dX_n/dt = [X, X]_{K,n} − X_n + F.
    Model III:  X_n = Σ′_{i=−I…I} (α − β|i|) Z_{n+i},  Y = Z − X,
                dZ_n/dt = [X, X]_{K,n} + b² [Y, Y]_{1,n} + c [Y, X]_{1,n}
                          − X_n − b Y_n + F,
    with α = (3I² + 3)/(2I³ + 4I), β = (2I² + 1)/(I⁴ + 2I²) (so that the
    smoothing keeps constants and has a zero second moment), Σ′ a sum with
    its two end terms halved and [·,·] Lorenz's bracket (eq. 10, see
    ``bracket``). Model II with K = 1 is Lorenz-96.

    Defaults are Lorenz's model III: n=960, K=32, I=12, b=10, c=2.5, F=15,
    dt = 0.05/12 (his time step; RK4 is stable around it). DAPPER's
    ``mods/Lorenz05`` has the same parameters (its ``J`` is I, ``Force``
    F, ``M`` n). F, b, c and dt are array leaves; n, K and I are static.

    Model II is e.g. ``Lorenz05(n=240, K=8, smoothing=None, dt=0.025)``.

    ``model(z)`` advances one state (n,) by dt; ``model.tendency(z)`` is
    dz/dt; ``model.decompose(z)`` returns (X, Y).

    Reference: Lorenz (2005), "Designing chaotic models", J. Atmos. Sci.
    62, 1574–1587.
    """

    n: int = 960
    K: int = 32
    smoothing: int | None = 12
    b: float = 10.0
    c: float = 2.5
    F: float = 15.0
    dt: float = 0.05 / 12

    def __post_init__(self):
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.K) or self.K < 1:
            raise ValueError(f"K must be an integer >= 1, got {self.K!r}")
        if self.smoothing is not None and (not is_int(self.smoothing) or self.smoothing < 1):
            raise ValueError(f"smoothing must be None (model II) or an integer >= 1, "
                             f"got {self.smoothing!r}")
        if not is_int(self.n) or self.n < 4:
            raise ValueError(f"n must be an integer >= 4, got {self.n!r}")

    @property
    def dim(self) -> int:
        return self.n

    def smoothing_weights(self) -> np.ndarray:
        """The 2I + 1 weights of X_n = Σ′ (α − β|i|) Z_{n+i}, i = −I … I."""
        r = self.smoothing  # Lorenz's I
        alpha = (3 * r**2 + 3) / (2 * r**3 + 4 * r)
        beta = (2 * r**2 + 1) / (r**4 + 2 * r**2)
        i = np.arange(-r, r + 1)
        return _modified_sum_weights(r, True) * (alpha - beta * np.abs(i))

    def decompose(self, z: Array) -> tuple[Array, Array]:
        """(X, Y): the large-scale part and the small-scale rest Z − X."""
        if self.smoothing is None:
            return z, jnp.zeros_like(z)
        r = self.smoothing
        x = _circular(z, self.smoothing_weights(), range(-r, r + 1))
        return x, z - x

    def tendency(self, z: Array) -> Array:
        """dz/dt for one state z: (n,) -> (n,)."""
        if self.smoothing is None:
            return bracket(z, z, self.K) - z + self.F
        x, y = self.decompose(z)
        return (bracket(x, x, self.K) + self.b**2 * bracket(y, y, 1)
                + self.c * bracket(y, x, 1) - x - self.b * y + self.F)

    def __call__(self, z: Array) -> Array:
        """Advance z: (n,) by one RK4 step of length dt."""
        return rk4_step(self.tendency, z, self.dt)


register_dataclass(Lorenz05, data_fields=["b", "c", "F", "dt"],
                   meta_fields=["n", "K", "smoothing"])
