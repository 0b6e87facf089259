"""Integrators of stochastic differential equations (Itô)

    dX = f(X) dt + g(X) dW,

for one state X: (n,). The diffusion ``g(x)`` is either an (n,) vector
(diagonal noise: n independent Wiener processes, component i driven by Wᵢ,
``g(x) dW`` taken entrywise) or an (n, d) matrix (d Wiener processes,
``g(x) @ dW``). The two are told apart by g's output shape, which is
unambiguous: (n,) against (n, d).

Each scheme comes as a pair:

- ``*_update(f, g, x, dt, dW)``: one step driven by a given Brownian
  increment dW ~ N(0, dt I) (to drive several schemes, or the exact
  solution, by the same Brownian path);
- ``*_step(key, f, g, x, dt)``: one step that draws its own increment.

Orders (Kloeden & Platen 1992, chs. 10, 14, 15): for an error measured at a
fixed time T with step h,

| scheme | strong order | weak order | noise |
|---|---|---|---|
| ``euler_maruyama`` | 0.5 (1.0 for additive noise) | 1.0 | any |
| ``milstein`` | 1.0 | 1.0 | diagonal, gᵢ depending on xᵢ only |
| ``heun`` | 1.0 | 2.0 | additive (g constant) |

``integrate_sde`` advances x0 by n steps of a scheme in a ``lax.scan``, the
key of step j being ``fold_in(key, j)``; ``sample_path`` does the same for a
stochastic model ``model(key, x)`` (``OrnsteinUhlenbeck``, ``DoubleWell``).

References: Kloeden & Platen (1992), Numerical Solution of Stochastic
Differential Equations, Springer; Milstein (1974), Theory Probab. Appl. 19;
Maruyama (1955), Rend. Circ. Mat. Palermo 4.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import check_finite, check_float, check_ndim, check_number

__all__ = [
    "euler_maruyama_step",
    "euler_maruyama_update",
    "heun_step",
    "heun_update",
    "integrate_sde",
    "milstein_step",
    "milstein_update",
    "sample_path",
]

Drift = Callable[[Array], Array]
Diffusion = Callable[[Array], Array]


def _noise_dim(g: Diffusion, x: Array) -> tuple[bool, int]:
    """(diagonal, d): whether g(x) is an (n,) vector or an (n, d) matrix."""
    n = x.shape[0]
    shape = jax.eval_shape(g, x).shape
    if shape == (n,):
        return True, n
    if len(shape) == 2 and shape[0] == n:
        return False, shape[1]
    raise ValueError(
        f"g must map a state of shape ({n},) to an ({n},) vector (diagonal noise) or an "
        f"({n}, d) matrix (d Wiener processes), got shape {shape}"
    )


def _times(gx: Array, dW: Array) -> Array:
    return gx * dW if gx.ndim == 1 else gx @ dW


def _check_step(x, dt) -> Array:
    check_ndim("x", x, 1, "(n,): one state (vmap for an ensemble)")
    check_number("dt", dt, low=0.0, what="the time step, a real scalar > 0")
    return jnp.asarray(x)


def _check_increment(g, x, dW) -> None:
    _, d = _noise_dim(g, x)
    if np.shape(dW) != (d,):
        raise ValueError(f"dW must have shape ({d},) (one increment per Wiener process of g), "
                         f"got shape {np.shape(dW)}")


def _increment(key, g, x, dt) -> Array:
    if key is None:
        raise TypeError("a stochastic step draws random numbers: pass key=jax.random.key(seed)")
    _, d = _noise_dim(g, x)
    return jnp.sqrt(jnp.asarray(dt, x.dtype)) * jax.random.normal(key, (d,), dtype=x.dtype)


def euler_maruyama_update(f: Drift, g: Diffusion, x: Array, dt, dW: Array) -> Array:
    """One Euler–Maruyama step driven by the increment dW:

        X₁ = X₀ + f(X₀) h + g(X₀) ΔW.

    Strong order 0.5 (1.0 when g is constant), weak order 1.0.
    f: (n,) -> (n,); g: (n,) -> (n,) or (n, d); x: (n,); dt: h > 0;
    dW: (n,) or (d,), ~ N(0, h I). Returns (n,).
    Reference: Maruyama (1955); Kloeden & Platen (1992), §10.2.
    """
    x = _check_step(x, dt)
    _check_increment(g, x, dW)
    return (x + f(x) * dt + _times(g(x), dW)).astype(x.dtype)


def milstein_update(f: Drift, g: Diffusion, x: Array, dt, dW: Array) -> Array:
    """One Milstein step for diagonal noise driven by the increment dW:

        X₁,ᵢ = X₀,ᵢ + fᵢ h + gᵢ ΔWᵢ + ½ gᵢ ∂gᵢ/∂xᵢ (ΔWᵢ² − h),

    everything at X₀. Strong order 1.0, weak order 1.0, for diagonal noise
    in the sense of Kloeden & Platen: g(x) is an (n,) vector whose entry gᵢ
    depends on xᵢ only (then no Lévy areas are needed). ∂gᵢ/∂xᵢ is the
    ``jax.jvp`` of g along (1, ..., 1), which equals the diagonal of the
    Jacobian under that assumption.

    f: (n,) -> (n,); g: (n,) -> (n,); x: (n,); dt: h > 0; dW: (n,).
    Returns (n,). Reference: Milstein (1974), Theory Probab. Appl. 19;
    Kloeden & Platen (1992), §10.3.
    """
    x = _check_step(x, dt)
    diagonal, _ = _noise_dim(g, x)
    if not diagonal:
        raise ValueError("milstein needs diagonal noise: g must return an (n,) vector "
                         "(component i driven by Wᵢ and depending on xᵢ only)")
    _check_increment(g, x, dW)
    gx, dg = jax.jvp(g, (x,), (jnp.ones_like(x),))
    return (x + f(x) * dt + gx * dW + 0.5 * gx * dg * (dW * dW - dt)).astype(x.dtype)


def heun_update(f: Drift, g: Diffusion, x: Array, dt, dW: Array) -> Array:
    """One stochastic Heun (predictor–corrector trapezoidal) step:

        X̃ = X₀ + f(X₀) h + g(X₀) ΔW,
        X₁ = X₀ + ½ (f(X₀) + f(X̃)) h + ½ (g(X₀) + g(X̃)) ΔW.

    For additive noise (g constant; then Itô = Stratonovich) it is the
    explicit weak order 2.0 scheme of Kloeden & Platen (1992, eq. 15.1.1
    with constant diffusion) and has strong order 1.0. For a state-dependent
    g it converges to the *Stratonovich* solution, not the Itô one: use
    ``euler_maruyama`` or ``milstein`` there.

    f: (n,) -> (n,); g: (n,) -> (n,) or (n, d); x: (n,); dt: h > 0;
    dW: (n,) or (d,). Returns (n,). Reference: Kloeden & Platen (1992),
    §15.1; Rümelin (1982), SIAM J. Numer. Anal. 19.
    """
    x = _check_step(x, dt)
    _check_increment(g, x, dW)
    fx, gx = f(x), g(x)
    x_pred = x + fx * dt + _times(gx, dW)
    x_new = x + 0.5 * (fx + f(x_pred)) * dt + 0.5 * _times(gx + g(x_pred), dW)
    return x_new.astype(x.dtype)


def euler_maruyama_step(key: Array, f: Drift, g: Diffusion, x: Array, dt) -> Array:
    """``euler_maruyama_update`` with ΔW ~ N(0, h I) drawn from ``key``."""
    x = _check_step(x, dt)
    return euler_maruyama_update(f, g, x, dt, _increment(key, g, x, dt))


def milstein_step(key: Array, f: Drift, g: Diffusion, x: Array, dt) -> Array:
    """``milstein_update`` with ΔW ~ N(0, h I) drawn from ``key``."""
    x = _check_step(x, dt)
    return milstein_update(f, g, x, dt, _increment(key, g, x, dt))


def heun_step(key: Array, f: Drift, g: Diffusion, x: Array, dt) -> Array:
    """``heun_update`` with ΔW ~ N(0, h I) drawn from ``key``."""
    x = _check_step(x, dt)
    return heun_update(f, g, x, dt, _increment(key, g, x, dt))


def _as_key(key) -> Array:
    if key is None:
        raise TypeError("key is required (a jax.random.key or an integer seed): "
                        "the path is random")
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def _check_start(x0, n_steps) -> Array:
    check_float("x0", x0)
    x0 = jnp.asarray(x0)
    check_ndim("x0", x0, 1, "(n,): one state (vmap for an ensemble)")
    check_finite("x0", x0)
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    return x0


def sample_path(key: Array | int, model: Callable[[Array, Array], Array], x0: Array,
                n_steps: int) -> Array:
    """Iterate a stochastic one-step map ``model(key, x) -> x`` n times.

    Step j (0-based) uses the key ``fold_in(key, j)``; the loop is one
    ``lax.scan``. key: PRNG key or integer seed; x0: (n,). Returns
    (n_steps, n): the states after steps 1..n_steps (x0 excluded).
    """
    return _iterate(key, model, x0, n_steps, path=True)


def _iterate(key, model, x0, n_steps, *, path: bool) -> Array:
    key = _as_key(key)
    x0 = _check_start(x0, n_steps)

    def body(x, j):
        x = model(jax.random.fold_in(key, j), x)
        return x, (x if path else None)

    x, states = jax.lax.scan(body, x0, jnp.arange(n_steps))
    return states if path else x


def integrate_sde(key: Array | int, f: Drift, g: Diffusion, x0: Array, dt, n_steps: int, *,
                  scheme: Callable = euler_maruyama_step, path: bool = False) -> Array:
    """Integrate ``dX = f(X) dt + g(X) dW`` from x0 over ``n_steps`` steps of dt.

    scheme: a step ``scheme(key, f, g, x, dt)`` (``euler_maruyama_step``,
    ``milstein_step``, ``heun_step`` or one of yours); step j uses the key
    ``fold_in(key, j)``, so no key is used twice and the same key gives the
    same path bit for bit. key: PRNG key or integer seed; x0: (n,); dt > 0.
    Returns X at time ``n_steps · dt``, (n,), or with ``path=True`` the
    states after every step, (n_steps, n).
    """
    check_number("dt", dt, low=0.0, what="the time step, a real scalar > 0")
    if not isinstance(path, bool):
        raise TypeError(f"path must be a bool, got {path!r}")
    return _iterate(key, lambda k, x: scheme(k, f, g, x, dt), x0, n_steps, path=path)
