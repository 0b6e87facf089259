"""Cycled 4D-Var: consecutive windows, each started from the last analysis.

One compiled ``lax.scan`` over windows of ``window`` observation times; the
background of a window is the analysis trajectory's end of the one before
(its start propagated through the window), with the same static B every
time. With ``window=1`` this is the cycling of DAPPER's ``Var4D(Lag=1)``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
from jax import Array
from jax.typing import ArrayLike

from enkit.filters._common import ObservationOperator
from enkit.variational._common import check_count
from enkit.variational.var4d import STATIC, prepare, window as window_analysis

__all__ = ["Var4DCycleResult", "var4d_cycle"]


class Var4DCycleResult(NamedTuple):
    """What ``var4d_cycle`` returns (W = K / window windows).

    analysis: (K, n) the analysis trajectory at every observation time (from
    the window that holds it; the last time of a window is the filtering
    analysis); x0: (W, n) each window's analysis at its start; background:
    (W, n) each window's background at its start; cost, initial_cost,
    gradient_norm, outer_iterations: (W,) per window, as in ``Var4DResult``.
    """

    analysis: Array
    x0: Array
    background: Array
    cost: Array
    initial_cost: Array
    gradient_norm: Array
    outer_iterations: Array


def var4d_cycle(
    model: Callable[[Array], Array],
    xb: ArrayLike,
    B: Any,
    observations: ArrayLike,
    h: ObservationOperator,
    R: Any,
    *,
    window: int = 1,
    steps_per_obs: int = 1,
    Q: Any = None,
    outer_loops: int = 10,
    tolerance: float | None = None,
    inner_iterations: int = 100,
    inner_tolerance: float | None = None,
) -> Var4DCycleResult:
    """Cycle ``var4d`` over consecutive windows of ``window`` observation times.

    Window w assimilates ``y_{wL+1..wL+L}`` (L = ``window``) from the
    background ``x_b^{(w)}``: ``x_b^{(0)} = xb`` and ``x_b^{(w+1)}`` is
    window w's analysis trajectory at its last observation time (so the
    windows do not overlap and each observation is used once). B stays the
    same static covariance (no flow dependence, unlike the iEnKS).

    model, xb, B, h, R, steps_per_obs, Q, outer_loops, tolerance,
    inner_iterations, inner_tolerance: as for ``var4d``; observations: (K,
    m) with K a multiple of ``window``. Returns a ``Var4DCycleResult``.

    References: Courtier, Thépaut & Hollingsworth (1994), QJRMS 120;
    Raanes et al., DAPPER (``da_methods/variational.py``, ``Var4D``).
    """
    window = check_count("window", window)
    args, options = prepare(model, xb, B, observations, h, R, Q=Q, steps_per_obs=steps_per_obs,
                            outer_loops=outer_loops, tolerance=tolerance,
                            inner_iterations=inner_iterations, inner_tolerance=inner_tolerance)
    K = args[3].shape[0]
    if K % window:
        raise ValueError(f"observations must hold a multiple of window = {window} times, "
                         f"got K = {K}")
    return _cycle(*args, window=window, **options)


@partial(jax.jit, static_argnames=("window",) + STATIC)
def _cycle(model, xb, B, ys, h, R, Q, *, window, **options):
    K, m = ys.shape
    ys_w = ys.reshape(K // window, window, m)

    def step(x, y_w):
        r = window_analysis(model, x, B, y_w, h, R, Q, **options)
        out = (r.trajectory, r.x0, x, r.cost, r.initial_cost, r.gradient_norm,
               r.outer_iterations)
        return r.trajectory[-1], out

    _, (traj, x0, background, cost, initial, grad, loops) = jax.lax.scan(step, xb, ys_w)
    return Var4DCycleResult(traj.reshape(K, -1), x0, background, cost, initial, grad, loops)
