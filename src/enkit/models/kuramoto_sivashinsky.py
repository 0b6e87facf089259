"""The Kuramoto–Sivashinsky equation on a periodic domain, in JAX.

    u_t = −u u_x − u_xx − u_xxxx,     x ∈ [0, L), u periodic,

discretised by a Fourier pseudo-spectral method on n points and advanced by
the fourth-order exponential time-differencing Runge–Kutta scheme ETDRK4
(Cox & Matthews 2002), with its coefficients from contour integrals
(Kassam & Trefethen 2005). The state is u on the grid, so observations,
localisation distances and the ensemble live in physical space.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._pytree import register_dataclass

__all__ = ["KuramotoSivashinsky"]

_CONTOUR_POINTS = 16  # as Kassam & Trefethen (2005); enough to 1e-14 here


@dataclasses.dataclass(frozen=True)
class KuramotoSivashinsky:
    """Kuramoto–Sivashinsky model, one ETDRK4 step of length ``dt`` per call.

    In Fourier space, with wavenumbers ``k_j = 2π j / L`` (j = 0 … n/2), the
    equation splits into a stiff linear part and the nonlinear term,

        v̂_t = (k² − k⁴) v̂ − (i k / 2) FFT(u²),

    integrated exactly for the linear part and at fourth order for the
    nonlinear one (ETDRK4). As is usual for an odd derivative on an even
    grid, the Nyquist mode j = n/2 gets k = 0 in both terms (it is not
    advanced by the dynamics, it only decays with what the nonlinear term
    feeds it: nothing). The mean of u (j = 0) is conserved exactly.

    Defaults n=128, L=32π, dt=0.5: the setting of Kassam & Trefethen (2005)
    and of Bocquet et al. (2019) (DAPPER's ``mods/KS``, ``DL=32``, its
    ``Model(dt=0.5)``), on which the leading Lyapunov exponent is about
    0.09 per time unit and the attractor's spatial standard deviation
    about 1.3 (both measured with this integrator; tested). ``length`` and ``dt`` are array leaves (vary or
    differentiate them without recompiling); ``n`` is static.

    ``model(x)`` advances one state (n,) by dt; ``model.tendency(x)`` is
    the semi-discrete ``du/dt`` (for tests and other integrators);
    ``model.kassam_trefethen_state()`` is the initial condition
    ``cos(x/16) (1 + sin(x/16))`` of Kassam & Trefethen on this grid.

    References: Kassam & Trefethen (2005), SIAM J. Sci. Comput. 26,
    1214–1233; Cox & Matthews (2002), J. Comput. Phys. 176, 430–455;
    Bocquet, Brajard, Carrassi & Bertino (2019), Nonlin. Processes
    Geophys. 26, 143–162.
    """

    n: int = 128
    length: float = 32.0 * math.pi
    dt: float = 0.5

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 4 or self.n % 2:
            raise ValueError(f"n must be an even integer >= 4, got {self.n!r}")

    @property
    def dim(self) -> int:
        return self.n

    def grid(self) -> Array:
        """The n grid coordinates ``x_i = L (i + 1) / n`` (i = 0 … n − 1)."""
        return self.length * jnp.arange(1, self.n + 1) / self.n

    def kassam_trefethen_state(self) -> Array:
        """u₀ = cos(x/16) (1 + sin(x/16)) on the grid (Kassam & Trefethen's
        start; not on the attractor: spin it up, e.g. 150 time units)."""
        x = self.grid()
        return jnp.cos(x / 16.0) * (1.0 + jnp.sin(x / 16.0))

    def _wavenumbers(self, dtype):
        j = np.arange(self.n // 2 + 1, dtype=float)
        j[-1] = 0.0  # the Nyquist mode: k = 0 (see the class docstring)
        return (2.0 * math.pi / jnp.asarray(self.length, dtype)) * jnp.asarray(j, dtype)

    def _nonlinear(self, v, k):
        """−(i k / 2) FFT(u²) for the Fourier coefficients v of u."""
        u = jnp.fft.irfft(v, n=self.n)
        return -0.5j * k * jnp.fft.rfft(u * u)

    def tendency(self, x: Array) -> Array:
        """du/dt for one state x: (n,) -> (n,) (pseudo-spectral)."""
        k = self._wavenumbers(x.dtype)
        v = jnp.fft.rfft(x)
        return jnp.fft.irfft((k**2 - k**4) * v + self._nonlinear(v, k), n=self.n)

    def _etdrk4_coefficients(self, k, dtype):
        """e^{hL}, e^{hL/2}, Q, f1, f2, f3 of ETDRK4, by contour means."""
        h = jnp.asarray(self.dt, dtype)
        hL = h * (k**2 - k**4)
        m = np.arange(_CONTOUR_POINTS)
        roots = jnp.asarray(np.exp(1j * np.pi * (m + 0.5) / _CONTOUR_POINTS),
                            jnp.result_type(dtype, jnp.complex64))
        z = hL[:, None] + roots  # a circle of radius 1 around each hL

        def mean(f):
            return h * jnp.mean(f, axis=-1).real

        ez = jnp.exp(z)
        Q = mean((jnp.exp(z / 2) - 1.0) / z)
        f1 = mean((-4.0 - z + ez * (4.0 - 3.0 * z + z**2)) / z**3)
        f2 = mean((2.0 + z + ez * (z - 2.0)) / z**3)
        f3 = mean((-4.0 - 3.0 * z - z**2 + ez * (4.0 - z)) / z**3)
        return jnp.exp(hL), jnp.exp(hL / 2), Q, f1, f2, f3

    def __call__(self, x: Array) -> Array:
        """Advance x: (n,) by one ETDRK4 step of length dt."""
        k = self._wavenumbers(x.dtype)
        e, e2, Q, f1, f2, f3 = self._etdrk4_coefficients(k, x.dtype)
        v = jnp.fft.rfft(x)
        Nv = self._nonlinear(v, k)
        a = e2 * v + Q * Nv
        Na = self._nonlinear(a, k)
        b = e2 * v + Q * Na
        Nb = self._nonlinear(b, k)
        c = e2 * a + Q * (2.0 * Nb - Nv)
        Nc = self._nonlinear(c, k)
        v = e * v + f1 * Nv + 2.0 * f2 * (Na + Nb) + f3 * Nc
        return jnp.fft.irfft(v, n=self.n).astype(x.dtype)


register_dataclass(KuramotoSivashinsky, data_fields=["length", "dt"], meta_fields=["n"])
