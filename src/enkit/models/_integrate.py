"""Time stepping shared by the toy models (private)."""

from __future__ import annotations

from typing import Callable

from jax import Array


def rk4_step(f: Callable[[Array], Array], x: Array, dt) -> Array:
    """One classical fourth-order Runge–Kutta step of ``dx/dt = f(x)``."""
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
