"""What the iterative analysis schemes share: option checks and the loop.

``iterate`` runs a step function until its increment falls below a tolerance
(``lax.while_loop``) or, with ``tolerance=None``, exactly ``max_iterations``
times (``lax.fori_loop`` with static bounds). Both are differentiable in
forward and reverse mode: the converging loop's derivative is taken through
the same iterations unrolled in a ``scan`` (steps after convergence are a
``cond`` that keeps the state), so a gradient is that of the iterate
reached — exact for it, not an implicit derivative of the exact optimum.
Diagnostics come back beside the state as ``IterationInfo``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import check_bool, is_concrete

State = TypeVar("State")


class IterationInfo(NamedTuple):
    """Diagnostics of an iterative analysis.

    iterations: number of iterations run, a discarded one included (int
    scalar array); increment: the norm of the last increment, in the units
    of the scheme's ``tolerance`` (converged when ``increment <= tolerance``;
    with ``tolerance=None`` it is only reported). An increment of NaN means an
    iteration produced non-finite values (e.g. h returned NaN at a trial
    state): that iteration was discarded and the loop stopped at the last
    finite iterate, which the scheme's result is built from.
    """

    iterations: Array
    increment: Array


def no_iterations(dtype) -> IterationInfo:
    """The info of an analysis that had nothing to do (no observations):
    zero iterations and a zero increment (converged)."""
    return IterationInfo(jnp.asarray(0), jnp.zeros((), dtype))


def check_iteration_options(max_iterations, tolerance, return_info=False) -> None:
    """Raise ``ValueError`` for a bad ``max_iterations`` or ``tolerance``
    (``TypeError`` for a ``return_info`` that is not a bool)."""
    check_bool("return_info", return_info)
    if (
        isinstance(max_iterations, bool)
        or not isinstance(max_iterations, (int, np.integer))
        or max_iterations < 1
    ):
        raise ValueError(
            f"max_iterations must be a positive integer, got {max_iterations!r}"
        )
    if tolerance is not None and is_concrete(tolerance):
        t = np.asarray(tolerance)
        if t.ndim != 0 or not np.isfinite(t) or t < 0:
            raise ValueError(
                f"tolerance must be None or a finite number >= 0, got {tolerance!r}"
            )


def iterate(
    step: Callable[[State], tuple[State, Array]],
    state: State,
    *,
    tolerance,
    max_iterations: int,
    done: int = 0,
    increment: Array | float = math.inf,
) -> tuple[State, IterationInfo]:
    """Repeat ``state, increment = step(state)`` until converged.

    Stops when ``increment <= tolerance`` or
    after ``max_iterations`` iterations in all, counting the ``done``
    iterations already taken before the call (whose last increment is
    ``increment``). With ``tolerance=None`` exactly ``max_iterations - done``
    steps run in a ``fori_loop``; with a tolerance a ``while_loop``, whose
    derivative (forward or reverse) is that of the same steps unrolled in
    a ``scan`` of ``max_iterations - done`` (see the module). A step whose
    new state or increment is not finite is discarded: the state stays as it
    was and the increment becomes NaN, which ends the ``while_loop`` (and
    leaves the ``fori_loop`` state fixed).
    Returns the final state and an ``IterationInfo``.
    """
    dtype = jax.tree_util.tree_leaves(state)[0].dtype
    increment = jnp.asarray(increment, dtype)
    step = _discard_non_finite(step)
    if tolerance is None:
        def body(_, carry):
            return step(carry[0])

        state, increment = jax.lax.fori_loop(
            done, max_iterations, body, (state, increment)
        )
        return state, IterationInfo(jnp.asarray(max(max_iterations, done)), increment)

    tol = jnp.asarray(tolerance, dtype)
    # The step's closed-over arrays (E, y, R, ...) become explicit arguments,
    # so derivatives with respect to them flow through the custom rule.
    converted, consts = jax.closure_convert(step, state)
    return _converge(converted, max_iterations, done, tol, state, increment, tuple(consts))


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _converge(step, max_iterations, done, tol, state, increment, consts):
    """The ``while_loop`` to convergence (no derivative of its own)."""
    def cond(carry):
        i, _, inc = carry
        return (i < max_iterations) & (inc > tol)

    def body(carry):
        i, s, _ = carry
        s, inc = step(s, *consts)
        return i + 1, s, inc

    i, state, increment = jax.lax.while_loop(
        cond, body, (jnp.asarray(done), state, increment)
    )
    return state, IterationInfo(i, increment)


@_converge.defjvp
def _converge_jvp(step, max_iterations, done, primals, tangents):
    """Derivative of the iterate that was reached: the same iterations in a
    ``scan`` of ``max_iterations − done`` steps, each past convergence a
    ``cond`` that keeps the state (so reverse mode works and a converged
    state's derivative is not touched by steps that did not run)."""
    return jax.jvp(partial(_converge_unrolled, step, max_iterations, done), primals, tangents)


def _converge_unrolled(step, max_iterations, done, tol, state, increment, consts):
    def body(carry, _):
        i, s, inc = carry
        active = (i < max_iterations) & (inc > tol)
        s, inc = jax.lax.cond(active, lambda: step(s, *consts), lambda: (s, inc))
        return (i + active.astype(i.dtype), s, inc), None

    (i, state, increment), _ = jax.lax.scan(
        body, (jnp.asarray(done), state, increment), None,
        length=max(max_iterations - done, 0))
    return state, IterationInfo(i, increment)


def _discard_non_finite(step):
    """Wrap ``step`` so that a non-finite result keeps the old state, with a NaN increment."""

    def guarded(state):
        new, inc = step(state)
        # The increment steers the loop; it has no derivative to carry (a
        # norm at zero would put NaN into a gradient).
        inc = jax.lax.stop_gradient(inc)
        ok = jnp.isfinite(inc)
        for leaf in jax.tree_util.tree_leaves(new):
            ok = ok & jnp.all(jnp.isfinite(leaf))
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
        return new, jnp.where(ok, inc, jnp.nan)

    return guarded
