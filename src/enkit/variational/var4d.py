"""Incremental 4D-Var over one window, strong- or weak-constraint.

The window starts at t₀ (the background time) and holds K observation times,
``y_k`` taken after ``k · steps_per_obs`` model steps (k = 1..K, enkit's
convention for ``observations``). Gauss–Newton outer loops relinearise the
model and h about the current trajectory; each inner loop solves the
quadratic problem of the tangent linear model by CG (Courtier, Thépaut &
Hollingsworth 1994).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit.assimilation.types import as_pytree
from enkit.covariance import as_covariance
from enkit.filters._common import ObservationOperator
from enkit.variational._common import (apply_h, check_count, check_state, check_window,
                                       check_tolerance, gauss_newton, half_sq)

__all__ = ["Var4DResult", "prepare", "var4d", "window"]


class Var4DResult(NamedTuple):
    """What ``var4d`` returns.

    x0: (n,) the analysis at the window start t₀; trajectory: (K, n) the
    analysis trajectory at the K observation times; model_error: (K,
    steps_per_obs, n) the estimated model errors η (added after each model
    step), or None for strong constraint; cost: J = Jb + Jo + Jq at the
    analysis; Jb, Jo, Jq: its background, observation and model-error terms
    (Jq = 0 for strong constraint); initial_cost: J at the background (no
    model error); gradient_norm: ‖∇_v J‖ at the analysis, in the control
    variable; outer_iterations: Gauss–Newton outer loops run.
    """

    x0: Array
    trajectory: Array
    model_error: Array | None
    cost: Array
    Jb: Array
    Jo: Array
    Jq: Array
    initial_cost: Array
    gradient_norm: Array
    outer_iterations: Array


def var4d(
    model: Callable[[Array], Array],
    xb: ArrayLike,
    B: Any,
    observations: ArrayLike,
    h: ObservationOperator,
    R: Any,
    *,
    steps_per_obs: int = 1,
    Q: Any = None,
    outer_loops: int = 10,
    tolerance: float | None = None,
    inner_iterations: int = 100,
    inner_tolerance: float | None = None,
) -> Var4DResult:
    """Incremental four-dimensional variational analysis (4D-Var) of one window.

    **Strong constraint** (``Q=None``): the control is the initial state,
    ``x₀ = x_b + B^{1/2} v``, the trajectory ``x_s = M^s(x₀)`` is the
    model's, and

        J(v) = ½ ‖v‖² + ½ Σ_{k=1..K} ‖y_k − h(x_{k·S})‖²_{R⁻¹},   S = steps_per_obs.

    **Weak constraint** (a model-error covariance Q): each model step adds
    an error, ``x_{s+1} = M(x_s) + η_s`` with ``η_s = Q^{1/2} w_s``, the
    controls are (v, w) and ``J`` gains ``Jq = ½ Σ_s ‖w_s‖² =
    ½ Σ_s η_sᵀ Q⁻¹ η_s`` (Trémolet 2006).

    Each outer loop linearises the residuals ``d = R^{-1/2}(y − h(x))`` at
    the current controls with ``jax.linearize`` (the tangent linear model of
    the JAX ``model`` and of h), takes their adjoint with
    ``jax.linear_transpose`` (reverse-mode autodiff) and solves the
    Gauss–Newton normal equations ``(I + DᵀD) δ = −∇J`` by CG
    (``jax.scipy.sparse.linalg.cg``, Hessian eigenvalues ≥ 1 thanks to the
    B^{1/2} preconditioning) — the incremental 4D-Var of Courtier, Thépaut
    & Hollingsworth (1994). For a linear model and h one outer loop gives
    the exact minimiser: the Kalman smoother's estimate of x₀ (Q = 0, or
    the fixed-interval smoother with model noise Q).

    model: one-step map ``model(x) -> x`` of one state, JAX-traceable
    (e.g. ``enkit.models.Lorenz63()``); xb: (n,) background at t₀; B:
    background covariance (operator or array); observations: (K, m),
    ``y_k`` after ``k · steps_per_obs`` steps; h: callable ``h(x) -> (m,)``
    or an (m, n) matrix; R: observation covariance (operator or array),
    the same at every time; steps_per_obs: model steps between
    observations; Q: model-error covariance per model step (operator or
    array of dimension n), or None for strong constraint; outer_loops:
    Gauss–Newton linearisations at most; tolerance: stop when the increment
    ``‖δ‖ ≤ tolerance (1 + ‖v‖)`` (None: ``ε^{3/4}`` of xb's dtype);
    inner_iterations, inner_tolerance: CG's ``maxiter`` and relative
    residual tolerance per inner loop (None: ``ε^{3/4}``).
    Returns a ``Var4DResult``.

    References: Le Dimet & Talagrand (1986), Tellus 38A; Courtier, Thépaut
    & Hollingsworth (1994), QJRMS 120; Trémolet (2006), QJRMS 132.
    """
    args, options = prepare(model, xb, B, observations, h, R, Q=Q, steps_per_obs=steps_per_obs,
                            outer_loops=outer_loops, tolerance=tolerance,
                            inner_iterations=inner_iterations, inner_tolerance=inner_tolerance)
    return _var4d(*args, **options)


def prepare(model, xb, B, observations, h, R, *, Q, steps_per_obs, outer_loops, tolerance,
            inner_iterations, inner_tolerance):
    """Validate var4d's arguments (naming the wrong one); returns the core's
    positional arguments ``(model, xb, B, ys, h, R, Q)`` and its static options."""
    if not callable(model):
        raise TypeError(f"model must be a callable model(x) -> x, got {type(model).__name__}")
    xb = check_state("xb", xb)
    n = xb.shape[0]
    B = as_covariance(B, n, name="B").astype(xb.dtype)
    ys, h, R = check_window(observations, h, R, n, xb.dtype)
    K, m = ys.shape
    if Q is not None:
        Q = as_covariance(Q, n, name="Q").astype(xb.dtype)
    options = dict(
        steps_per_obs=check_count("steps_per_obs", steps_per_obs),
        outer_loops=check_count("outer_loops", outer_loops),
        tolerance=check_tolerance("tolerance", tolerance, xb.dtype),
        inner_iterations=check_count("inner_iterations", inner_iterations),
        inner_tolerance=check_tolerance("inner_tolerance", inner_tolerance, xb.dtype),
    )
    x_test = jax.eval_shape(model, xb)
    if x_test.shape != (n,):
        raise ValueError(f"model must map an (n,) = ({n},) state to ({n},), got {x_test.shape}")
    return (as_pytree(model), xb, B, ys, as_pytree(h), R, Q), options


def _trajectory(model, xb, B, Q, controls, n_obs, steps_per_obs):
    """x₀ and the states at the ``n_obs`` observation times from the controls
    ``(v, w)`` (w: (K, steps_per_obs, n) or None)."""
    v, w = controls
    x0 = xb + B.colorize(v)

    def interval(x, w_k):
        def step(x, w_s):
            x = model(x)
            return (x if Q is None else x + Q.colorize(w_s)), None

        x, _ = jax.lax.scan(step, x, w_k, length=steps_per_obs)
        return x, x

    _, states = jax.lax.scan(interval, x0, w, length=n_obs)
    return x0, states


def window(model, xb, B, ys, h, R, Q, *, steps_per_obs, outer_loops, tolerance,
           inner_iterations, inner_tolerance):
    """The 4D-Var analysis of one window on validated arguments (traceable:
    ``var4d`` jits it, ``var4d_cycle`` scans it). Returns a ``Var4DResult``."""
    K, n = ys.shape[0], xb.shape[0]
    weak = Q is not None
    v0 = jnp.zeros_like(xb)
    w0 = jnp.zeros((K, steps_per_obs, n), xb.dtype) if weak else None

    def residual(controls):
        _, states = _trajectory(model, xb, B, Q, _full(controls), K, steps_per_obs)
        return R.whiten(ys - jax.vmap(lambda x: apply_h(h, x))(states))

    def _full(controls):
        return controls if weak else (controls, None)

    start = (v0, w0) if weak else v0
    controls, loops = gauss_newton(residual, start, outer_loops=outer_loops,
                                   tolerance=tolerance, inner_iterations=inner_iterations,
                                   inner_tolerance=inner_tolerance)

    def terms(controls):
        v, w = _full(controls)
        Jq = half_sq(w) if weak else jnp.zeros((), xb.dtype)
        return half_sq(v), half_sq(residual(controls)), Jq

    def cost(controls):
        return sum(terms(controls))

    Jb, Jo, Jq = terms(controls)
    grad = jax.grad(cost)(controls)
    grad_norm = jnp.sqrt(2.0 * half_sq(grad))
    x0, states = _trajectory(model, xb, B, Q, _full(controls), K, steps_per_obs)
    v, w = _full(controls)
    eta = jax.vmap(jax.vmap(Q.colorize))(w) if weak else None
    return Var4DResult(x0, states, eta, Jb + Jo + Jq, Jb, Jo, Jq, cost(start), grad_norm,
                       loops)


STATIC = ("steps_per_obs", "outer_loops", "tolerance", "inner_iterations", "inner_tolerance")
_var4d = jax.jit(window, static_argnames=STATIC)
