"""``calibrate_scan``: the calibration loop for a JAX forward map, compiled
as one ``lax.scan``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit.inversion.calibrate import (
    _advance_impl,
    _central,
    _check_finite_update,
    _check_obs,
    _final,
    _misfit,
    _inner,
    _setup,
)
from enkit.inversion.calibration_result import CalibrationResult
from enkit.inversion.failures import (
    ForwardFailure,
    Raise,
    as_policy,
    failure_message,
)

__all__ = ["calibrate_scan"]


@partial(jax.jit, static_argnames=("forward", "n", "has_dt", "use_tau", "use_finished",
                                   "central", "ends_itself"))
def _scan_run(forward, process, scheduler, state0, y, noise, tau, *, n, has_dt, use_tau,
              use_finished, central, ends_itself):
    sqrt_d = jnp.sqrt(jnp.asarray(y.shape[0], y.dtype))

    def stop_rule(t, m, state):
        s = jnp.asarray(False)
        if use_tau:
            s = s | (m <= tau * sqrt_d)
        if use_finished:
            s = s | scheduler.finished(t)
        if ends_itself:
            s = s | _inner(process).finished(state)
        return s

    def body(carry, _):
        state, stopped, t = carry
        U = process.ask(state)
        G = jax.vmap(forward)(U)
        m = _misfit(G, y, noise, central)
        # A non-finite member here comes from the previous update: stop.
        stop = stopped | stop_rule(t, m, state) | ~jnp.all(jnp.isfinite(U))
        new, info = _advance_impl(process, scheduler, state, t, G, y, noise, has_dt)
        state = jax.lax.cond(stop, lambda a, b: a, lambda a, b: b, state, new)
        t_next = jnp.where(stop, t, t + info.dt)
        return (state, stop, t_next), (U, G, m, t, info.dt, stop)

    t0 = jnp.zeros((), y.dtype)
    (state, _, t), recs = jax.lax.scan(body, (state0, jnp.asarray(False), t0), None, length=n)
    U = process.ask(state)
    G = jax.vmap(forward)(U)
    m = _misfit(G, y, noise, central)
    return state, recs, (U, G, m, t, stop_rule(t, m, state))


def calibrate_scan(
    forward: Callable[[Array], Array],
    process: Any,
    initial_ensemble: ArrayLike | None,
    y: ArrayLike,
    noise: Any,
    *,
    key: Array | int | None = None,
    n_iterations: int,
    scheduler: Any = None,
    tau: float | None = None,
    failure: str | Raise = "raise",
) -> CalibrationResult:
    """``calibrate`` for a JAX ``forward``, compiled as one ``lax.scan`` of
    ``n_iterations`` ask/evaluate/tell steps.

    Same arguments, defaults, keys and result as ``calibrate`` (forward:
    JAX function (p,) → (d,); y: (d,) fixed data). Stopping rules: the
    discrepancy principle (``tau``) and a scheduler's ``finished``, both
    evaluated inside the scan (later steps leave the state unchanged and
    the records are cut at the stop); otherwise it runs ``n_iterations``
    updates (a process with ``finished(state)``, ``SMC``, stops when it
    returns True: ``stopped_by="finished"``). Only ``failure="raise"`` is
    possible inside a compiled loop:
    non-finite outputs are found after the scan and raise
    ``ForwardFailure`` naming the first failing iteration and its members;
    an update that leaves a non-finite member stops the scan there and
    raises ``NonFiniteEnsemble`` naming that iteration (as ``calibrate``
    does).
    """
    if not isinstance(as_policy(failure), Raise):
        raise ValueError("calibrate_scan supports failure='raise' only; use calibrate for "  # noqa: TRY004
                         "'ignore' or 'resample'")
    _, scheduler, has_dt, n, k_proc, _, settings = _setup(
        forward, process, scheduler, n_iterations, tau, None, failure, None, False, None, key)
    if callable(getattr(y, "at", None)):
        raise ValueError(  # noqa: TRY004
            "calibrate_scan needs fixed data y (d,); use calibrate for a series")
    y, noise = _check_obs(y, noise, "y")
    state0 = process.init(k_proc, initial_ensemble)
    central = _central(state0)
    y = y.astype(jnp.asarray(process.ask(state0)).dtype)
    noise = noise.astype(y.dtype)
    use_finished = callable(getattr(scheduler, "finished", None))
    ends_itself = callable(getattr(_inner(process), "finished", None))
    tau_a = jnp.asarray(1.0 if tau is None else tau, y.dtype)
    state, r, last = _scan_run(forward, process, scheduler, state0, y, noise, tau_a, n=n,
                               has_dt=has_dt, use_tau=tau is not None,
                               use_finished=use_finished, central=central,
                               ends_itself=ends_itself)
    stops = np.asarray(r[5])
    I = int(np.argmax(stops)) if stops.any() else n
    U = jnp.concatenate([r[0][:I], last[0][None]]) if I == n else r[0][:I + 1]
    G = jnp.concatenate([r[1][:I], last[1][None]]) if I == n else r[1][:I + 1]
    m = jnp.concatenate([r[2][:I], last[2][None]]) if I == n else r[2][:I + 1]
    t = jnp.concatenate([r[3][:I], last[3][None]]) if I == n else r[3][:I + 1]
    failed = ~np.all(np.isfinite(np.asarray(G)), axis=2)
    k_g = int(np.argmax(failed.any(axis=1))) if failed.any() else len(failed)
    for k, Uk in enumerate(np.asarray(U)[1:k_g + 1], start=1):  # updates with finite G
        _check_finite_update(process, Uk, k - 1, r[4][k - 1])
    if failed.any():
        k = k_g
        raise ForwardFailure(failure_message("failure='raise'", failed[k], k, {}),
                             np.flatnonzero(failed[k]), k)
    final_stop = bool(last[4]) if I == n else True
    if final_stop and tau is not None and float(m[-1]) <= float(tau) * np.sqrt(y.shape[0]):
        stopped_by = "discrepancy"
    elif final_stop and ends_itself and bool(_inner(process).finished(state)):
        stopped_by = "finished"
    elif final_stop and use_finished:
        stopped_by = "scheduler"
    else:
        stopped_by = "max_iterations"
    mean, cov = _final(state)
    N = U.shape[1]
    return CalibrationResult(
        ensembles=U, forward_outputs=G, misfits=m, dts=r[4][:I], times=t,
        failure_fractions=np.zeros(I + 1), failed=np.zeros((I + 1, N), bool),
        errors=tuple({} for _ in range(I + 1)), stopped_by=stopped_by, mean=mean,
        covariance=cov, state=state, settings=settings)
