"""Exact linear advection on a periodic 1-D grid, and smooth random fields.

``LinearAdvection`` moves the state by a whole number of grid cells per
step (the upwind scheme with Courant number one, which is the exact
solution of ∂u/∂t + c ∂u/∂x = 0 for c·dt = dx). ``SmoothRandomField``
draws the smooth pseudo-random fields of Evensen (2003, 2009) from which
the truth and the initial ensemble of the linear advection example are
drawn: Gaussian in Fourier space, variance one, and correlation e⁻¹ at a
stated decorrelation length.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._pytree import register_dataclass

__all__ = ["LinearAdvection", "SmoothRandomField"]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class LinearAdvection:
    """Linear advection by ``shift`` grid cells per step on a ring of n points.

        x_i(t + dt) = x_{i − s}(t)          (indices modulo n)

    the exact solution of ∂u/∂t + c ∂u/∂x = 0 on a periodic domain when
    c·dt = s·dx; with s = 1 it is the first-order upwind scheme at Courant
    number one, where that scheme has no numerical diffusion. The model is
    linear, so a Kalman filter is exact on it; n steps of shift 1 return
    the state.

    n: grid size (static); shift: s, cells per step, positive moves the
    field towards larger indices (static); dt: the time of one step (an
    array leaf, used only for observation times).

    ``model(x)`` advances one state (n,) by one step (``x`` may carry
    leading axes); ``model.matrix()`` is the (n, n) transition matrix.

    Reference: Evensen (2009), "Data Assimilation: The Ensemble Kalman
    Filter", 2nd ed., Springer (the linear advection example); Evensen
    (2009), IEEE Control Systems Magazine 29(3), 83–104.
    """

    n: int = 1000
    shift: int = 1
    dt: float = 1.0

    def __post_init__(self):
        if not _is_int(self.n) or self.n < 2:
            raise ValueError(f"n must be an integer >= 2, got {self.n!r}")
        if not _is_int(self.shift):
            raise ValueError(f"shift must be an integer (grid cells per step), "
                             f"got {self.shift!r}")

    @property
    def dim(self) -> int:
        return self.n

    def matrix(self) -> Array:
        """The (n, n) transition matrix M with ``model(x) = M @ x``."""
        return jnp.roll(jnp.eye(self.n), self.shift, axis=0)

    def __call__(self, x: Array) -> Array:
        """Advance x: (..., n) by one step (a cyclic shift of the last axis)."""
        return jnp.roll(x, self.shift, axis=-1)


register_dataclass(LinearAdvection, data_fields=["dt"], meta_fields=["n", "shift"])


def _wavenumbers(n: int) -> np.ndarray:
    """Angular wavenumbers κ_k = 2π k / n of the n discrete Fourier modes."""
    return 2.0 * np.pi * np.fft.fftfreq(n)


def _correlation(n: int, sigma: float, r: np.ndarray) -> np.ndarray:
    """Correlation at lags r of the periodic field with power spectrum
    exp(−2 κ² / σ²) (amplitudes exp(−κ² / σ²))."""
    kappa = _wavenumbers(n)
    power = np.exp(-2.0 * (kappa / sigma) ** 2)
    return (np.cos(np.outer(np.atleast_1d(r), kappa)) @ power) / power.sum()


def _solve_sigma(n: int, length: float) -> float:
    """The spectral width σ for which the correlation at ``length`` is e⁻¹
    (bisection on log σ; the correlation falls as σ grows)."""
    target = np.exp(-1.0)
    lo, hi = np.log(1e-3 / length), np.log(1e3 / length)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _correlation(n, np.exp(mid), np.array([length]))[0] > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


@dataclasses.dataclass(frozen=True)
class SmoothRandomField:
    """Smooth periodic Gaussian random fields on a ring of n points, with
    variance one and decorrelation length ``length`` (grid cells).

    Following Evensen (2003; 2009), a field is built
    in Fourier space with amplitudes exp(−κ² / σ²) for the angular
    wavenumbers κ_k = 2π k / n and is scaled so that its variance is one;
    σ is chosen so that the correlation at distance ``length`` is e⁻¹:

        x = F⁻¹ diag(a) F w,   w ~ N(0, I),   a_k = c · exp(−κ_k² / σ²),
        c² = n / Σ_k exp(−2 κ_k² / σ²)      (so Var x_i = 1),
        ρ(r) = Σ_k a_k² cos(κ_k r) / Σ_k a_k²,   ρ(length) = e⁻¹.

    The Fourier coefficients here are complex Gaussian (Evensen draws
    random phases at fixed amplitudes); the field is then exactly Gaussian
    with the stationary covariance ``covariance()``, the prior a Kalman
    filter needs. For ``length`` well below n, ρ(r) ≈ exp(−r² / length²).

    n: grid size; length: decorrelation length in grid cells, 0 < length
    < n / 2. Both are static.

    ``field.sample(key, shape)`` draws (*shape, n) fields;
    ``field.correlation()`` is ρ at lags 0 … n − 1; ``field.covariance()``
    the (n, n) circulant covariance (= correlation, the variance being one).

    References: Evensen (2003), Ocean Dynamics 53, 343–367; Evensen
    (2009), "Data Assimilation: The Ensemble Kalman Filter", 2nd ed.,
    Springer.
    """

    n: int
    length: float

    def __post_init__(self):
        if not _is_int(self.n) or self.n < 4:
            raise ValueError(f"n must be an integer >= 4, got {self.n!r}")
        if not (isinstance(self.length, (int, float, np.number))
                and 0.0 < float(self.length) < self.n / 2):
            raise ValueError(f"length must be a number with 0 < length < n / 2 = "
                             f"{self.n / 2}, got {self.length!r}")

    @functools.cached_property
    def sigma(self) -> float:
        """The spectral width σ of the amplitudes exp(−κ² / σ²)."""
        return _solve_sigma(self.n, float(self.length))

    def amplitudes(self) -> np.ndarray:
        """(n // 2 + 1,) amplitudes a_k of the real FFT modes k = 0 … n // 2."""
        kappa = 2.0 * np.pi * np.arange(self.n // 2 + 1) / self.n
        power = np.exp(-2.0 * (_wavenumbers(self.n) / self.sigma) ** 2)
        return np.exp(-(kappa / self.sigma) ** 2) * np.sqrt(self.n / power.sum())

    def correlation(self) -> np.ndarray:
        """(n,) correlation ρ(r) at lags r = 0 … n − 1 (ρ(0) = 1)."""
        return _correlation(self.n, self.sigma, np.arange(self.n))

    def covariance(self) -> np.ndarray:
        """(n, n) covariance C_ij = ρ(i − j) of the fields (variance one)."""
        rho = self.correlation()
        i = np.arange(self.n)
        return rho[(i[:, None] - i[None, :]) % self.n]

    def sample(self, key: Array, shape: tuple[int, ...] = (), dtype=None) -> Array:
        """Draw fields of shape (*shape, n) from the PRNG ``key``."""
        if dtype is None:
            dtype = jnp.zeros(()).dtype  # float64 when x64 is enabled
        w = jax.random.normal(key, (*tuple(shape), self.n), dtype=dtype)
        a = jnp.asarray(self.amplitudes(), dtype=dtype)
        return jnp.fft.irfft(jnp.fft.rfft(w, axis=-1) * a, n=self.n, axis=-1).astype(dtype)
