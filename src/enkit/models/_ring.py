"""Neighbours on a periodic ring, read from one doubled copy (private).

``ring_shifts(x, offsets)`` returns ``x[i + k]`` (indices modulo n) for every
offset k, i.e. ``jnp.roll(x, -k, axis=-1)``, the same numbers. Each
``jnp.roll`` lowers to its own slice-and-concatenate; reading every shift as
a slice of ``[x, x]`` concatenates once. Under ``vmap`` over an ensemble
this makes a Lorenz-96 RK4 step about three times cheaper on CPU
(benchmarks/vs_dapper.py, whole runs).

``ring_rk4_step(stencil, x, dt, reach)`` is a whole RK4 step of a local
stencil with a single concatenation: one halo wide enough for the four
stages, then only slices (see its docstring).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array


def ring_shifts(x: Array, offsets) -> tuple[Array, ...]:
    """``(x[i + k] for k in offsets)`` on the ring of the last axis of x.

    x: (..., n); offsets: integers with |k| < n. Returns a tuple of arrays
    shaped like x, each equal to ``jnp.roll(x, -k, axis=-1)``.
    """
    n = x.shape[-1]
    for k in offsets:
        if not -n < int(k) < n:
            raise ValueError(f"ring offsets must satisfy |k| < n = {n}, got {k}")
    doubled = jnp.concatenate([x, x], axis=-1)
    return tuple(doubled[..., int(k) % n:int(k) % n + n] for k in offsets)


def ring_rk4_step(stencil, x: Array, dt, reach: tuple[int, int]) -> Array:
    """One classical RK4 step of ``dx/dt = f(x)`` for a local stencil f on
    the ring of the last axis of x, with one halo copy and slices only.

    ``stencil(z)`` maps a window z (..., w) of consecutive ring entries
    z[j] = x[a + j] to f at the entries a + j for j in [l, w − r), shape
    (..., w − l − r), where (l, r) = reach: fᵢ reads x_{i−l} .. x_{i+r}.
    The step reads x on the ring once, widened by 4l entries on the left
    and 4r on the right (a concatenation, or for a ring shorter than the
    halo a gather of the same entries), and each of the four stages then
    works on a window narrower by (l, r) than the one before: slices and
    elementwise arithmetic that XLA fuses into plain loops. The per-stage
    halo copies of ``rk4_step`` on ``ring_shifts`` (a concatenation at
    every stage) cost more: a Lorenz-96 ensemble step (N = n = 40) took
    4.2 against 6.3–7.2 µs on CPU. The arithmetic is ``rk4_step``'s,
    operation for operation, so with a stencil written like the
    tendency the results are the same to the last bit.

    x: (..., n); dt: step (scalar, may be traced); reach: (l, r) ≥ 0.
    Returns (..., n).
    """
    l, r = (int(k) for k in reach)
    if l < 0 or r < 0:
        raise ValueError(f"reach must be two integers >= 0, got {reach}")
    n = x.shape[-1]
    left, right = 4 * l, 4 * r
    if left <= n and right <= n:
        halo = jnp.concatenate([x[..., n - left:], x, x[..., :right]], axis=-1)
    else:
        halo = jnp.take(x, np.arange(-left, n + right) % n, axis=-1)

    def inner(z, k):  # z without its first k·l and last k·r entries
        return z[..., k * l:z.shape[-1] - k * r]

    k1 = stencil(halo)
    k2 = stencil(inner(halo, 1) + 0.5 * dt * k1)
    k3 = stencil(inner(halo, 2) + 0.5 * dt * k2)
    k4 = stencil(inner(halo, 3) + dt * k3)
    return x + (dt / 6.0) * (inner(k1, 3) + 2.0 * inner(k2, 2) + 2.0 * inner(k3, 1) + k4)
