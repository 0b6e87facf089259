"""3D-Var: the variational analysis of one observation time.

Minimises, in the control variable v with ``x = x_b + B^{1/2} v``,

    J(v) = ½ ‖v‖² + ½ (y − h(x))ᵀ R⁻¹ (y − h(x)),

which is ``½ (x − x_b)ᵀ B⁻¹ (x − x_b) + ½ (y − h(x))ᵀ R⁻¹ (y − h(x))``,
by optax's L-BFGS with its zoom line search (quasi-Newton; the gradient by
reverse-mode autodiff of h).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim
from enkit.assimilation.types import as_pytree
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator
from enkit.variational._common import (apply_h, check_count, check_h, check_state,
                                       check_tolerance, half_sq, lbfgs)

__all__ = ["Var3DResult", "var3d"]


class Var3DResult(NamedTuple):
    """What ``var3d`` returns.

    analysis: (n,) the minimiser x_a; cost: J(x_a) = Jb + Jo; Jb, Jo: the
    background and observation terms at x_a; initial_cost: J(x_b);
    gradient_norm: ‖∇_v J‖ at x_a in the control variable (‖B^{1/2}ᵀ ∇_x J‖);
    iterations: L-BFGS iterations taken.
    """

    analysis: Array
    cost: Array
    Jb: Array
    Jo: Array
    initial_cost: Array
    gradient_norm: Array
    iterations: Array


def var3d(
    xb: ArrayLike,
    B: Any,
    y: ArrayLike,
    h: ObservationOperator,
    R: Any,
    *,
    max_iterations: int = 200,
    tolerance: float | None = None,
    memory_size: int = 10,
) -> Var3DResult:
    """Three-dimensional variational analysis (3D-Var), B^{1/2}-preconditioned.

        J(x) = ½ (x − x_b)ᵀ B⁻¹ (x − x_b) + ½ (y − h(x))ᵀ R⁻¹ (y − h(x))

    is minimised in v, ``x = x_b + B^{1/2} v`` (B's ``colorize``), starting
    from v = 0, by ``optax.lbfgs`` until ``‖∇_v J‖ ≤ tolerance`` or
    ``max_iterations``. For a linear h = H the minimiser is the Kalman
    (BLUE) analysis mean ``x_b + B Hᵀ (H B Hᵀ + R)⁻¹ (y − H x_b)``.

    xb: (n,) background state; B: background covariance (operator or array:
    scalar, (n,) variances, (n, n)); y: (m,) observation; h: callable
    ``h(x) -> (m,)`` or an (m, n) matrix; R: observation covariance
    (operator or array); max_iterations: L-BFGS iterations at most;
    tolerance: on the control-space gradient norm (None: ``ε^{3/4}`` of
    xb's dtype); memory_size: L-BFGS history length.
    Returns a ``Var3DResult``. Needs optax (``pip install enkit[optax]``).

    References: Lorenc (1986), QJRMS 112; Parrish & Derber (1992), MWR 120;
    Liu & Nocedal (1989), Math. Program. 45 (L-BFGS).
    """
    try:
        import optax  # noqa: F401
    except ImportError as err:  # pragma: no cover - optax is an optional extra
        raise ImportError("enkit.var3d needs optax: pip install 'enkit[optax]'") from err
    xb = check_state("xb", xb)
    n = xb.shape[0]
    B = as_covariance(B, n, name="B").astype(xb.dtype)
    y = jnp.asarray(y, dtype=xb.dtype)
    check_ndim("y", y, 1, "(m,)")
    check_finite("y", y)
    m = y.shape[0]
    h = check_h(h, m, n, xb.dtype)
    R = as_covariance(R, m).astype(xb.dtype)
    max_iterations = check_count("max_iterations", max_iterations)
    memory_size = check_count("memory_size", memory_size)
    tolerance = check_tolerance("tolerance", tolerance, xb.dtype)
    return _var3d(xb, B, y, as_pytree(h), R, max_iterations=max_iterations,
                  tolerance=tolerance, memory_size=memory_size)


@partial(jax.jit, static_argnames=("max_iterations", "tolerance", "memory_size"))
def _var3d(xb, B, y, h, R, *, max_iterations, tolerance, memory_size):
    def terms(v):
        x = xb + B.colorize(v)
        return half_sq(v), half_sq(R.whiten(y - apply_h(h, x)))

    def cost(v):
        Jb, Jo = terms(v)
        return Jb + Jo

    v0 = jnp.zeros_like(xb)
    v, iterations = lbfgs(cost, v0, max_iterations=max_iterations, tolerance=tolerance,
                          memory_size=memory_size)
    Jb, Jo = terms(v)
    grad_norm = jnp.linalg.norm(jax.grad(cost)(v))
    return Var3DResult(xb + B.colorize(v), Jb + Jo, Jb, Jo, cost(v0), grad_norm,
                       iterations)
