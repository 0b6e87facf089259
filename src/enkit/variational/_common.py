"""Shared pieces of the variational analyses (private).

The control variable is ``v`` with ``x = x_b + B^{1/2} v`` (the background
term becomes ``½‖v‖²``, Lorenc 1988 / Courtier et al. 1994), and every cost
has the form

    J(v) = ½ ‖v‖² + ½ ‖d(v)‖²,   d(v) = R^{-1/2} (y − h(x(v)))   (stacked),

so its Gauss–Newton Hessian ``I + Dᵀ D`` (D = ∂d/∂v) has every eigenvalue
≥ 1 and CG on it converges fast. ``gauss_newton`` runs the outer loops: the
residuals are linearised with ``jax.linearize`` (the tangent linear model),
their adjoint is ``jax.linear_transpose`` of it (reverse mode), and each
inner problem ``(I + DᵀD) δ = −(v + Dᵀ d)`` is solved by
``jax.scipy.sparse.linalg.cg``. ``lbfgs`` minimises a general cost by
optax's L-BFGS (3D-Var and the hybrid E3DVAR).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import check_finite, check_float, check_ndim
from enkit.covariance import as_covariance

__all__ = ["apply_h", "check_count", "check_h", "check_state", "check_tolerance",
           "default_tolerance", "gauss_newton", "half_sq", "lbfgs"]


def default_tolerance(dtype) -> float:
    """``ε^{3/4}`` of ``dtype`` (1.8e-12 in float64, 6.5e-6 in float32)."""
    return float(jnp.finfo(dtype).eps) ** 0.75


def half_sq(v) -> Array:
    """½ ‖v‖² over every leaf of the pytree v."""
    return 0.5 * sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(v))


def apply_h(h, x: Array) -> Array:
    """h(x) for a callable h, ``H @ x`` for an (m, n) matrix."""
    return h(x) if callable(h) else h @ x


def check_state(name: str, x) -> Array:
    """A finite floating (n,) state as a JAX array."""
    check_float(name, x)
    x = jnp.asarray(x)
    check_ndim(name, x, 1, "(n,)")
    check_finite(name, x)
    return x


def check_count(name: str, value, low: int = 1) -> int:
    """An integer ≥ ``low`` (a bool is refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_tolerance(name: str, value, dtype) -> float:
    """A finite tolerance ≥ 0, or None for ``default_tolerance(dtype)``."""
    if value is None:
        return default_tolerance(dtype)
    if isinstance(value, (bool, np.bool_)) or not np.isscalar(value) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")
    return float(value)


def check_window(observations, h, R, n: int, dtype):
    """The checked inputs of a 4-D window: observations as a finite (K, m)
    array of ``dtype`` (K, m ≥ 1), h (``check_h``) and R as an (m, m)
    covariance operator of ``dtype``. Returns (ys, h, R)."""
    check_float("observations", observations)
    ys = jnp.asarray(observations, dtype=dtype)
    check_ndim("observations", ys, 2, "(K, m)")
    check_finite("observations", ys)
    K, m = ys.shape
    if K < 1 or m < 1:
        raise ValueError(f"observations must have K >= 1 times and m >= 1 entries, got "
                         f"shape {ys.shape}")
    return ys, check_h(h, m, n, dtype), as_covariance(R, m).astype(dtype)


def check_h(h, m: int, n: int, dtype):
    """A callable h as it is, or an (m, n) matrix as a finite array of ``dtype``."""
    if callable(h):
        return h
    try:
        H = jnp.asarray(h, dtype=dtype)
    except TypeError as err:
        raise TypeError("h must be a callable h(x) -> (m,) or an (m, n) matrix") from err
    if H.shape != (m, n):
        raise ValueError(f"h as a matrix must have shape (m, n) = ({m}, {n}), got {H.shape}")
    check_finite("h", H)
    return H


def gauss_newton(residual: Callable, v0, *, outer_loops: int, tolerance: float,
                 inner_iterations: int, inner_tolerance: float):
    """Gauss–Newton outer loops with CG inner solves on ``J = ½‖v‖² + ½‖d(v)‖²``.

    residual: ``d(v)``, v a pytree of arrays; v0: the first iterate. Stops
    after ``outer_loops`` linearisations or when the increment satisfies
    ``‖δ‖ ≤ tolerance (1 + ‖v‖)``. Returns ``(v, loops)``.
    """
    def body(carry):
        v, loops, _ = carry
        d, D = jax.linearize(residual, v)  # D: the tangent linear map δv -> δd
        Dt = jax.linear_transpose(D, v)  # its adjoint (reverse mode)

        def hessian(u):
            return jax.tree_util.tree_map(jnp.add, u, Dt(D(u))[0])

        gradient = jax.tree_util.tree_map(jnp.add, v, Dt(d)[0])
        rhs = jax.tree_util.tree_map(jnp.negative, gradient)
        delta, _ = jax.scipy.sparse.linalg.cg(hessian, rhs, tol=inner_tolerance,
                                              atol=0.0, maxiter=inner_iterations)
        v = jax.tree_util.tree_map(jnp.add, v, delta)
        small = _norm(delta) <= tolerance * (1.0 + _norm(v))
        return v, loops + 1, small

    def more(carry):
        _, loops, small = carry
        return (loops < outer_loops) & ~small

    v, loops, _ = jax.lax.while_loop(more, body, (v0, jnp.asarray(0), jnp.asarray(False)))
    return v, loops


def lbfgs(cost: Callable, v0: Array, *, max_iterations: int, tolerance: float,
          memory_size: int, cost_tolerance: float | None = None):
    """Minimise ``cost(v)`` from ``v0`` by optax's L-BFGS (zoom line search).

    Stops after ``max_iterations`` iterations, when ``‖∇cost‖ ≤ tolerance``,
    or (``cost_tolerance`` not None) when an iteration's relative cost
    decrease is small:

        (J_k − J_{k+1}) / max(|J_k|, |J_{k+1}|, 1) ≤ cost_tolerance

    (the rule of L-BFGS-B's ``factr``, Byrd, Lu, Nocedal & Zhu 1995). At
    least one iteration is taken. Returns ``(v, iterations)``.
    """
    import optax
    import optax.tree_utils as otu

    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(cost)

    def step(carry):
        v, state, _ = carry
        value, grad = value_and_grad(v, state=state)
        updates, state = opt.update(grad, state, v, value=value, grad=grad, value_fn=cost)
        if cost_tolerance is None:
            stalled = jnp.asarray(False)
        else:
            new = otu.tree_get(state, "value")  # J at the new iterate (line search)
            scale = jnp.maximum(jnp.maximum(jnp.abs(value), jnp.abs(new)), 1.0)
            stalled = (value - new) <= cost_tolerance * scale
        return optax.apply_updates(v, updates), state, stalled

    def more(carry):
        _, state, stalled = carry
        count = otu.tree_get(state, "count")
        grad_norm = jnp.linalg.norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iterations) & (grad_norm > tolerance) & ~stalled)

    v, state, _ = jax.lax.while_loop(more, step, (v0, opt.init(v0), jnp.asarray(False)))
    return v, otu.tree_get(state, "count")


def _norm(v) -> Array:
    return jnp.sqrt(2.0 * half_sq(v))
