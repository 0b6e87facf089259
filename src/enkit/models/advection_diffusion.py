"""A 2-D periodic advection–diffusion model on a real grid, in JAX.

A scalar field q(x, y) on the torus [0, Lx) × [0, Ly), sampled on an
``ny × nx`` grid (state size n = nx·ny, large enough to exercise 2-D
localisation: 320 × 320 = 102,400), is carried by a steady divergence-free
velocity, diffused, damped and forced:

    ∂q/∂t + u·∇q = κ ∇²q − γ q + f(x, y).

The state is the field flattened row by row: ``x[iy · nx + ix] = q(ix·Δx,
iy·Δy)``; ``model.coordinates`` gives the matching (n, 2) positions (x, y)
and ``torus_distance`` the periodic distance for localisation.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._pytree import register_dataclass
from enkit.localization import torus_distance

__all__ = ["AdvectionDiffusion2D", "torus_distance"]  # torus_distance: enkit.localization


@dataclasses.dataclass(frozen=True)
class AdvectionDiffusion2D:
    """Periodic 2-D advection–diffusion of a scalar by a steady cellular flow.

        ∂q/∂t + u·∇q = κ ∇²q − γ q + f,   u = (U, V) + ∇^⊥ψ,
        ψ = (A / k_y) sin(k_x x) sin(k_y y),  k_x = 2π c / Lx, k_y = 2π c / Ly,

    so ``u = U − A sin(k_x x) cos(k_y y)``, ``v = V + A (k_x/k_y) cos(k_x x)
    sin(k_y y)``: a uniform drift plus 2c × 2c counter-rotating gyres
    (``cells`` = c), divergence-free, steady. One call advances one member by
    ``dt`` with Lie splitting:

    1. advection, semi-Lagrangian: each grid point's departure point is
       traced back along the (analytic) velocity with the midpoint rule,
       ``x* = x − (dt/2) u(x)``, ``x_d = x − dt u(x*)``, and q is
       interpolated there with bicubic Lagrange polynomials (4 × 4 periodic
       stencil; Staniforth & Côté 1991, MWR 119). Unconditionally stable;
       exact for a constant velocity that moves the field by a whole number
       of cells per step; accurate when ``max|u| dt`` is about a cell or
       less;
    2. diffusion, damping and forcing, exactly in Fourier space: with
       ``λ_k = κ |k|² + γ``, ``q̂ ← e^{−λ_k dt} q̂ + (1 − e^{−λ_k dt})/λ_k f̂``
       (``dt f̂`` where λ_k = 0), so a resolved Fourier mode decays at
       exactly its continuous rate, at any dt.

    Fields (physical constants are array leaves: vary or differentiate them
    without recompiling; the grid is static): nx, ny: grid points along x
    and y (≥ 4); Lx, Ly: domain lengths (grid spacing Lx/nx, Ly/ny);
    cells: c ≥ 1, gyre pairs per direction; A: gyre speed; U, V: uniform
    drift; kappa: diffusivity κ ≥ 0; damping: γ ≥ 0; forcing: f, a scalar
    or a (ny, nx) field; dt: time step.

    Defaults: a 64 × 64 grid of unit spacing, 4 × 4 gyres of speed 1, drift
    (0.3, 0.2), κ = 0.05, dt = 1 (Courant number about 1).
    """

    nx: int = 64
    ny: int = 64
    Lx: float = 64.0
    Ly: float = 64.0
    cells: int = 2
    A: ArrayLike = 1.0
    U: ArrayLike = 0.3
    V: ArrayLike = 0.2
    kappa: ArrayLike = 0.05
    damping: ArrayLike = 0.0
    forcing: ArrayLike = 0.0
    dt: ArrayLike = 1.0

    def __post_init__(self):
        for name in ("nx", "ny"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 4:
                raise ValueError(f"{name} must be an integer >= 4, got {value!r}")
        if not isinstance(self.cells, (int, np.integer)) or self.cells < 1:
            raise ValueError(f"cells must be a positive integer, got {self.cells!r}")
        for name in ("Lx", "Ly"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        shape = np.shape(self.forcing) if self.forcing is not None else ()
        if shape not in ((), (self.ny, self.nx)):
            raise ValueError(
                f"forcing must be a scalar or a (ny, nx) = ({self.ny}, {self.nx}) field, "
                f"got shape {shape}"
            )

    @property
    def dim(self) -> int:
        """State size n = nx · ny."""
        return self.nx * self.ny

    @property
    def spacing(self) -> tuple[float, float]:
        """Grid spacing (Δx, Δy)."""
        return self.Lx / self.nx, self.Ly / self.ny

    @property
    def coordinates(self) -> Array:
        """(n, 2) positions (x, y) of the state entries, row by row."""
        dx, dy = self.spacing
        X, Y = np.meshgrid(np.arange(self.nx) * dx, np.arange(self.ny) * dy)
        return jnp.asarray(np.stack([X.ravel(), Y.ravel()], axis=1))

    def field(self, x: ArrayLike) -> Array:
        """State(s) (..., n) as field(s) (..., ny, nx)."""
        x = jnp.asarray(x)
        return x.reshape(x.shape[:-1] + (self.ny, self.nx))

    def velocity(self, x: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
        """The velocity (u, v) at positions x, y (any broadcastable shapes)."""
        kx = 2.0 * np.pi * self.cells / self.Lx
        ky = 2.0 * np.pi * self.cells / self.Ly
        sx, cx = jnp.sin(kx * x), jnp.cos(kx * x)
        sy, cy = jnp.sin(ky * y), jnp.cos(ky * y)
        return self.U - self.A * sx * cy, self.V + self.A * (kx / ky) * cx * sy

    def __call__(self, x: Array) -> Array:
        """Advance one state x: (n,) by one step of length dt; returns (n,)."""
        q = self.field(x)
        q = self._diffuse(self._advect(q))
        return q.reshape(x.shape)

    def _advect(self, q: Array) -> Array:
        """Semi-Lagrangian step: q at the departure points, bicubic."""
        dtype = q.dtype
        dx, dy = self.spacing
        ix = jnp.arange(self.nx, dtype=dtype)[None, :]
        iy = jnp.arange(self.ny, dtype=dtype)[:, None]
        X, Y = ix * dx, iy * dy
        dt = jnp.asarray(self.dt, dtype)
        u, v = self.velocity(X, Y)
        u, v = self.velocity(X - 0.5 * dt * u, Y - 0.5 * dt * v)  # midpoint
        ax = ix - (dt / dx) * u  # departure point in grid units
        ay = iy - (dt / dy) * v
        jx, wx = _cubic_stencil(ax, self.nx)
        jy, wy = _cubic_stencil(ay, self.ny)
        out = jnp.zeros_like(q)
        for p in range(4):
            row = sum(wx[q_] * q[jy[p], jx[q_]] for q_ in range(4))
            out = out + wy[p] * row
        return out

    def _diffuse(self, q: Array) -> Array:
        """Exact step of ``∂q/∂t = κ∇²q − γq + f`` in Fourier space."""
        dtype = q.dtype
        dx, dy = self.spacing
        kx = 2.0 * np.pi * np.fft.rfftfreq(self.nx, d=dx)
        ky = 2.0 * np.pi * np.fft.fftfreq(self.ny, d=dy)
        k2 = jnp.asarray(ky[:, None] ** 2 + kx[None, :] ** 2, dtype)
        dt = jnp.asarray(self.dt, dtype)
        lam = jnp.asarray(self.kappa, dtype) * k2 + jnp.asarray(self.damping, dtype)
        decay = jnp.exp(-lam * dt)
        pos = lam > 0
        phi = jnp.where(pos, -jnp.expm1(-lam * dt) / jnp.where(pos, lam, 1.0), dt)
        f = jnp.broadcast_to(jnp.asarray(self.forcing, dtype), q.shape)
        qh = decay * jnp.fft.rfft2(q) + phi * jnp.fft.rfft2(f)
        return jnp.fft.irfft2(qh, s=q.shape).astype(dtype)

    def random_field(
        self, key: Array, length_scale: ArrayLike, shape: tuple[int, ...] = ()
    ) -> Array:
        """Smooth periodic Gaussian random fields of unit pointwise variance.

        White noise filtered in Fourier space by ``sqrt(S_k)``,
        ``S_k ∝ exp(−ℓ² |k|² / 2)`` (a Gaussian correlation of length ℓ,
        periodised), normalised so ``mean_k S_k = 1``: each grid value has
        variance exactly 1 in expectation. key: PRNG key; length_scale: ℓ,
        in the units of Lx; shape: leading batch shape. Returns (*shape, n).
        """
        dx, dy = self.spacing
        kx = 2.0 * np.pi * np.fft.fftfreq(self.nx, d=dx)
        ky = 2.0 * np.pi * np.fft.fftfreq(self.ny, d=dy)
        k2 = jnp.asarray(ky[:, None] ** 2 + kx[None, :] ** 2)
        S = jnp.exp(-0.5 * jnp.asarray(length_scale) ** 2 * k2)
        S = S / jnp.mean(S)
        w = jax.random.normal(key, tuple(shape) + (self.ny, self.nx), dtype=k2.dtype)
        q = jnp.fft.ifft2(jnp.fft.fft2(w) * jnp.sqrt(S)).real
        return q.reshape(tuple(shape) + (self.dim,))


def _cubic_stencil(a: Array, size: int) -> tuple[list[Array], list[Array]]:
    """Periodic indices and cubic Lagrange weights at grid positions ``a``.

    The 4 nodes ``i0 − 1 .. i0 + 2`` around ``a`` (``i0 = ⌊a⌋``, ``f = a −
    i0``) with weights −f(f−1)(f−2)/6, (f+1)(f−1)(f−2)/2, −(f+1)f(f−2)/2,
    (f+1)f(f−1)/6 (exactly (0, 1, 0, 0) at f = 0).
    """
    i0 = jnp.floor(a)
    f = a - i0
    i0 = i0.astype(jnp.int32)
    idx = [jnp.mod(i0 + s, size) for s in (-1, 0, 1, 2)]
    w = [
        -f * (f - 1.0) * (f - 2.0) / 6.0,
        (f + 1.0) * (f - 1.0) * (f - 2.0) / 2.0,
        -(f + 1.0) * f * (f - 2.0) / 2.0,
        (f + 1.0) * f * (f - 1.0) / 6.0,
    ]
    return idx, w


register_dataclass(
    AdvectionDiffusion2D,
    data_fields=["A", "U", "V", "kappa", "damping", "forcing", "dt"],
    meta_fields=["nx", "ny", "Lx", "Ly", "cells"],
)
