"""``calibrate``: drive an inversion process's ask/tell loop to a stopping
rule, with forward-model failures handled by a declared policy.

Iteration k (k = 0, 1, …) of the Python loop:

    U_k = process.ask(state_k)              ensembles[k]      (N, p)
    G_k = forward(U_k)  (failures → policy) outputs[k]        (N, d)
    misfit_k = ‖Γ^{-1/2}(y − Ḡ_k)‖           misfits[k]
    stop?  (discrepancy, collapse, scheduler finished, max_iterations, callback)
    Δt_k = scheduler.step_size(time_k, G_k, y, Γ)              dts[k]
    state_{k+1}, info = process.tell(state_k, G_k, y, Γ, dt=Δt_k)

so every ensemble has its own outputs and misfit: after I updates the
result holds I + 1 ensembles, I + 1 outputs and misfits (the final ensemble
is evaluated too; that evaluation is the one the stopping rules look at)
and I steps. (EnsembleKalmanProcesses.jl reports the error of ensemble
k − 1 at iteration k; here index k always means ensemble k.)

``calibrate_scan`` runs the same iterations compiled in one ``lax.scan``
for a JAX forward map.

With ``checkpoint=path`` the loop saves its carried state (process state,
records, time, k) atomically after every ``tell`` and when it stops
(``enkit.io``); a later call with the same configuration resumes at the
first iteration not completed, and its result is bit-identical to an
uninterrupted run's (DESIGN principle 8).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim
from enkit._progress import progress_bar
from enkit.covariance import as_covariance
from enkit.ensemble import ensemble_covariance, ensemble_mean
from enkit.inversion._calibrate_checkpoint import (
    config_fingerprints,
    restore_run,
    save_run,
)
from enkit.inversion._common import innermost_state
from enkit.inversion.calibration_result import CalibrationResult, IterationRecord
from enkit.inversion.failures import (
    ForwardFailure,
    Ignore,
    NonFiniteEnsemble,
    Raise,
    Resample,
    as_policy,
    evaluate,
    failure_message,
    member_fields,
    redraw,
    refill,
    take_members,
)
from enkit.inversion.schedulers import FixedStep
from enkit.inversion.stopping import ensemble_collapsed
from enkit.io import run_checkpoint_path
from enkit.particle.resampling import weighted_covariance_root, weighted_mean

__all__ = ["calibrate"]

_LOG = logging.getLogger("enkit.inversion")
DEFAULT_MAX_ITERATIONS = 20


# ---------------------------------------------------------------- pieces ----


@partial(jax.jit, static_argnums=0)
def _forward_all(forward, U):
    return jax.vmap(forward)(U)


def _advance_impl(process, scheduler, state, time, G, y, noise, has_dt):
    if has_dt:
        dt = scheduler.step_size(time, G, y, noise)
        return process.tell(state, G, y, noise, dt=dt)
    return process.tell(state, G, y, noise)


_advance = jax.jit(_advance_impl, static_argnames=("has_dt",))


def _check_finite_update(process, U, iteration: int, dt) -> None:
    """Raise ``NonFiniteEnsemble`` if the update of ``iteration`` (with step
    dt) left a non-finite row in the asked parameters U."""
    bad = ~np.all(np.isfinite(np.asarray(U)), axis=1)
    if bad.any():
        raise NonFiniteEnsemble(type(_inner(process)).__name__, iteration,
                                np.flatnonzero(bad), dt)


def _misfit(G, y, noise, central: bool, ok=None) -> Array:
    """‖Γ^{-1/2}(y − ḡ)‖, ḡ the mean of the rows of G where ``ok`` (all when
    None), or G[0] when ``central`` (UKI's central sigma point)."""
    if central:
        g = G[0]
    elif ok is None:
        g = jnp.mean(G, axis=0)
    else:
        g = jnp.sum(jnp.where(ok[:, None], G, 0.0), axis=0) / jnp.sum(ok)
    r = noise.whiten(y - g)
    return jnp.sqrt(jnp.sum(r * r))


_misfit_jit = jax.jit(_misfit, static_argnames=("central",))


def _inner(process):
    return getattr(process, "process", process) if hasattr(process, "space") else process


def _absorbs_failures(process) -> bool:
    """Whether the (wrapped) process's tell takes the failed rows itself
    (NaN/inf outputs as zero likelihood: SMC) under ``failure='ignore'``."""
    return bool(getattr(_inner(process), "absorbs_failures", False))


def _dt_default(process) -> tuple[bool, Any]:
    """(tell takes dt, its default) of the (wrapped) process."""
    params = inspect.signature(_inner(process).tell).parameters
    if "dt" not in params:
        return False, None
    return True, params["dt"].default


def _setup(forward, process, scheduler, max_iterations, tau, collapse_tol, failure,
           executor, black_box, callback, key):
    if not callable(forward):
        raise TypeError(f"forward must be a callable on one member, got {type(forward).__name__}")
    for m in ("init", "ask", "tell"):
        if not callable(getattr(process, m, None)):
            raise TypeError(f"process must have init/ask/tell (an inversion process), "
                            f"{type(process).__name__} lacks {m}")
    if not isinstance(black_box, bool):
        raise TypeError(f"black_box must be a bool, got {type(black_box).__name__}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError("executor must be a concurrent.futures.Executor (with submit), "
                        f"got {type(executor).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    policy = as_policy(failure)
    takes_dt, dt0 = _dt_default(process)
    name = type(_inner(process)).__name__
    if _absorbs_failures(process) and isinstance(policy, Resample):
        raise ValueError(f"{name} takes a failed member as a zero likelihood: use "
                         "failure='ignore' (or 'raise'); failure='resample' would redraw "
                         "members and break the invariance of its moves")
    if scheduler is None and takes_dt and dt0 is inspect.Parameter.empty:
        raise ValueError(f"{name}.tell needs dt: give a scheduler (e.g. EKSStableScheduler())")
    if scheduler is None and takes_dt and dt0 is not None:
        scheduler = FixedStep(dt0)
    has_dt = scheduler is not None  # else tell gets no dt: the process's own default
    n_steps = getattr(_inner(process), "n_steps", None)  # a fixed schedule (ES-MDA)
    if has_dt and (not takes_dt or n_steps is not None):
        raise ValueError(f"{name} sets its own steps (a fixed schedule, or a tell without "
                         "dt); scheduler must be None")
    if has_dt and not callable(getattr(scheduler, "step_size", None)):
        raise TypeError("scheduler must have step_size(time, G, y, noise) (e.g. FixedStep, "
                        f"DataMisfitController), got {type(scheduler).__name__}")
    max_tells = getattr(_inner(process), "max_tells", None)  # a self-ending run (SMC)
    if max_iterations is None:
        max_iterations = (n_steps if n_steps is not None else
                          max_tells if max_tells is not None else DEFAULT_MAX_ITERATIONS)
    if (isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer))
            or max_iterations < 0):
        raise ValueError(f"max_iterations must be an integer >= 0, got {max_iterations!r}")
    if n_steps is not None and max_iterations > n_steps:
        raise ValueError(f"max_iterations={max_iterations} exceeds the {n_steps} steps of "
                         f"the {name} schedule")
    if tau is not None and not (np.isfinite(float(tau)) and float(tau) > 0):
        raise ValueError(f"tau must be positive and finite (usually 1.1-1.5) or None, "
                         f"got {tau!r}")
    if collapse_tol is not None and not 0 < float(collapse_tol) < 1:
        raise ValueError(f"collapse_tol must be in (0, 1) or None, got {collapse_tol!r}")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = jax.random.key(int(key))
    if key is None:
        if policy.needs_ensemble:
            raise TypeError(f"failure={policy} draws replacement members and needs "
                            "key=jax.random.key(seed) (or an integer seed)")
        k_proc = k_fail = None
    else:
        k_proc, k_fail = jax.random.split(key)
    settings = {"process": repr(process),
                "scheduler": repr(scheduler) if has_dt else "None (the process's own steps)",
                "max_iterations": int(max_iterations), "tau": tau,
                "collapse_tol": collapse_tol, "failure": repr(policy),
                "black_box": black_box or executor is not None}
    return policy, scheduler, has_dt, int(max_iterations), k_proc, k_fail, settings


def _observations(y, noise):
    """k -> (y_k, Γ_k): a fixed pair, or a series with ``at(k)``."""
    if callable(getattr(y, "at", None)):
        if noise is not None:
            raise ValueError("noise must be None when y is an observation series with "
                             "at(iteration) -> (y, noise)")
        return lambda k: _check_obs(*y.at(k), what=f"y.at({k})")
    pair = _check_obs(y, noise, what="y")
    return lambda k: pair


def _check_obs(y, noise, what):
    check_ndim(what, y, 1, "(d,)")
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.result_type(float))
    check_finite(what, y)
    if noise is None:
        raise ValueError(f"noise (Γ of dimension d={y.shape[0]}) is required with {what}")
    return y, as_covariance(noise, y.shape[0], name="noise").astype(y.dtype)


def _central(state) -> bool:
    """True for sigma-point (Gaussian) states, whose misfit is that of row 0."""
    return hasattr(innermost_state(state), "covariance")


def _final(state):
    state = innermost_state(state)
    if hasattr(state, "covariance"):
        return state.mean, state.covariance
    if hasattr(state, "log_weights"):  # weighted particles (SMC)
        C12 = weighted_covariance_root(state.ensemble, state.log_weights)
        return weighted_mean(state.ensemble, state.log_weights), C12.T @ C12
    return ensemble_mean(state.ensemble), ensemble_covariance(state.ensemble)


def _stack(arrays):
    shapes = {np.shape(a) for a in arrays}
    return jnp.stack(arrays) if len(shapes) == 1 else tuple(arrays)


# ----------------------------------------------------------- checkpoints ----

def calibrate(
    forward: Callable,
    process: Any,
    initial_ensemble: ArrayLike | None,
    y: ArrayLike | Any,
    noise: Any = None,
    *,
    key: Array | int | None = None,
    scheduler: Any = None,
    max_iterations: int | None = None,
    tau: float | None = None,
    collapse_tol: float | None = None,
    failure: str | Raise | Ignore | Resample = "raise",
    executor: concurrent.futures.Executor | None = None,
    black_box: bool = False,
    callback: Callable[[IterationRecord], Any] | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
) -> CalibrationResult:
    """Calibrate ``forward`` with an inversion process: loop ask → evaluate
    → tell until a stopping rule fires (iteration scheme in the module
    docstring; ``result.forward_outputs[k]`` belong to ``result.ensembles[k]``).

    forward: for a JAX model, a function of one member's parameters (p,) →
    (d,), evaluated as ``jit(vmap(forward))`` (compiled once per forward
    and shape: a second call with new values does not recompile); with
    ``black_box=True`` or an ``executor``, any Python callable on one
    member's NumPy parameters, run member by member (``failures.evaluate``),
    an exception becoming a failure of that member.
    process: EKI, ETKI, TEKI, UKI, GNKI, ESMDA, SMC or a ``ConstrainedProcess``
    (then ``forward`` receives constrained parameters).
    initial_ensemble: (N, p) initial members (UKI: or None for its prior),
    e.g. ``prior.sample(key, N)``; identical members raise (zero spread: no
    update could move them), a parameter with zero spread warns.
    y: (d,) data, or an observation series with ``at(k) -> (y_k, Γ_k)``
    (then ``noise`` must be None; e.g. ``ObservationSeries``). If the
    series also has ``output_selection(k) -> (idx, D)`` (a series of index
    batches of one vector, ``ObservationSeries.from_vector``), ``forward``
    returns the whole (D,) vector and iteration k compares ``G[:, idx]``
    with y_k; ``forward_outputs`` records those selected columns.
    noise: Γ, an operator or array.

    Defaults (all shown in ``repr(result)``):
    key: PRNG key or int seed, needed by stochastic processes and the
    ``ignore``/``resample`` policies; the process is initialised with
    ``jax.random.split(key)[0]``, policies draw from ``split(key)[1]``.
    scheduler: None → ``FixedStep(Δt)`` with the process's own default Δt
    (1 for EKI/ETKI/TEKI/GNKI, 1/2 for UKI); for a wrapper whose default is
    None, tell gets no dt (the wrapped process's default: EKS/ALDI take
    their adaptive step); must be None for ESMDA, whose steps are its α
    schedule. max_iterations: None → 20 (ESMDA: its K).
    tau: None, or stop at the first ensemble with misfit ≤ τ√d (discrepancy
    principle, Iglesias 2016). collapse_tol: None, or stop when
    ``ensemble_collapsed(ensembles[k], ensembles[0], tol=collapse_tol)``.
    A scheduler with ``finished(time)`` (``DataMisfitController``) stops the
    run when it returns True; so does a process with ``finished(state)``
    (``SMC``, after its moves at temperature 1: ``stopped_by="finished"``;
    its default max_iterations is its ``max_tells``). failure: ``"raise"`` (default), ``"ignore"``,
    ``"resample"`` or a policy object (``enkit.inversion.failures``); a
    process with ``absorbs_failures`` (``SMC``) is told the failed rows
    under ``"ignore"`` (zero likelihood) and refuses ``"resample"``. An
    update that leaves NaN or inf in the ensemble (finite forward outputs,
    too long a step) stops the run with ``NonFiniteEnsemble`` naming the
    iteration, its members and Δt, whatever the policy. callback: called with an ``IterationRecord`` after each evaluation; a
    return value of True stops the run. progress: a progress bar (tqdm, on
    standard error when it is a terminal; iterations counted against
    ``max_iterations``, the misfit shown) and each iteration's line on the
    ``"enkit.inversion"`` logger at INFO (else DEBUG).

    checkpoint: None, or a file path (conventionally ``*.npz``) where the
    run's state is saved atomically after every completed update and when
    it stops (``enkit.io.save_checkpoint``: no pickle, never half-written;
    each save rewrites all records so far). It holds the process state
    (PRNG key included), every record, the algorithmic time and the count
    of completed updates; schedulers and failure policies carry no state
    of their own (their inputs are the time and the outputs). resume: with
    a checkpoint present at that path, True (default) continues from its
    last completed update (a finished run returns its result at once;
    ``callback`` is not called again for the iterations already done) and
    the final result is bit-identical to an uninterrupted run's; False
    starts afresh and overwrites it. A checkpoint records the enkit version
    (another version warns) and SHA-256 fingerprints
    (``enkit.io.fingerprint``) of: the process (its pytree: class, static
    options and leaves), the scheduler in force, the failure policy, the
    stopping rules (max_iterations, tau, collapse_tol), ``black_box``, the
    initial ensemble (dtype, shape, bytes), the data (y and Γ after
    validation, or the observation series' fields) and the keys split from
    ``key``. Resuming with any of these different raises
    ``CheckpointError`` naming the parts that differ. Not hashed: the
    forward map, the executor, callback and progress (a resumed run must be
    given the same forward map). ``calibrate_scan`` has no checkpoints.

    Nothing is added to the process: EKI stays textbook EKI (no
    localisation, momentum or adaptive step unless you pass them).
    Returns a ``CalibrationResult``.
    """
    (policy, scheduler, has_dt, max_it, k_proc, k_fail, settings) = _setup(
        forward, process, scheduler, max_iterations, tau, collapse_tol, failure,
        executor, black_box, callback, key)
    bb = black_box or executor is not None
    obs = _observations(y, noise)
    select = (y.output_selection if callable(getattr(y, "output_selection", None))
              else lambda k: None)
    state = process.init(k_proc, initial_ensemble)
    fields = member_fields(state)
    absorbs = _absorbs_failures(process)
    if policy.needs_ensemble and fields is None and not absorbs:
        raise ValueError(f"failure={policy} needs an ensemble process (state EnsembleState "
                         f"or GNKIState); {type(_inner(process)).__name__} carries a "
                         f"{type(state).__name__}, whose members cannot be dropped or "
                         "redrawn (use failure='raise')")
    E_init = state.ensemble if fields is not None else None
    level = logging.INFO if progress else logging.DEBUG
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    if checkpoint is not None:
        checkpoint = run_checkpoint_path(checkpoint)
        config = config_fingerprints(process, scheduler, policy, max_it, tau, collapse_tol, bb,
                         initial_ensemble, y if callable(getattr(y, "at", None)) else obs(0),
                         k_proc, k_fail)
        template = state

    def run(U, d, rows=None):
        if bb:
            sel = np.arange(U.shape[0]) if rows is None else rows
            G, failed, errors = evaluate(forward, np.asarray(U)[sel], executor, output_dim=d)
            if rows is not None:
                errors = {int(rows[i]): e for i, e in errors.items()}
            return G, failed, errors
        G = _forward_all(forward, U)
        if G.shape != (U.shape[0], d):
            raise ValueError(f"forward must map one member (p,) to (d,) = ({d},), "
                             f"got outputs of shape {G.shape[1:]}")
        G = np.asarray(G)
        G = G if rows is None else G[rows]
        return G, ~np.all(np.isfinite(G), axis=1), {}

    rec = {k: [] for k in ("U", "G", "m", "t", "frac", "failed", "errors", "dt")}
    stopped_by, k, t = None, 0, None
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        state, rec, t, k, stopped_by = restore_run(checkpoint, config, template)
        _LOG.log(level, "calibrate: resuming from %s after %d completed iterations%s",
                 checkpoint, k, f" (finished: {stopped_by})" if stopped_by else "")
    bar = progress_bar(max_it + 1, desc="calibrate", unit="iteration", enabled=progress,
                       initial=min(k, max_it + 1))
    try:
        while stopped_by is None:
            y_k, noise_k = obs(k)
            d = y_k.shape[0]
            sel = select(k)
            run_k = run if sel is None else partial(_run_selected, run, *sel)
            U = process.ask(state)
            if rec["dt"]:
                _check_finite_update(process, U, k - 1, rec["dt"][-1])
            t = jnp.zeros((), U.dtype) if t is None else t  # Σ Δt, the algorithmic time
            G, failed, errors = run_k(U, d)
            failed0 = failed.copy()
            if failed.any():
                if isinstance(policy, Raise):
                    raise ForwardFailure(failure_message("failure='raise'", failed, k, errors),
                                         np.flatnonzero(failed), k, errors)
                if isinstance(policy, Resample):
                    state, U, G, failed = _resample(policy, state, failed, G, run_k, d, k, k_fail,
                                                    E_init, process)
                elif (~failed).sum() < policy.min_successes(failed.size):
                    raise ForwardFailure(
                        failure_message(f"{policy} needs at least "
                                        f"{policy.min_successes(failed.size)} successes",
                                        failed, k, errors), np.flatnonzero(failed), k, errors)
            ok = ~failed
            G = jnp.asarray(G, U.dtype)
            m = _misfit_jit(G, y_k, noise_k, central=_central(state), ok=jnp.asarray(ok))
            for name, v in zip(rec, (U, G, m, t, failed0.mean(), failed0, errors)):
                rec[name].append(v)
            _LOG.log(level, "calibrate iteration %d: misfit %.6g, time %.6g, failed %d/%d",
                     k, float(m), float(t), int(failed0.sum()), failed0.size)
            bar.update(1)
            bar.set_postfix_str(f"misfit {float(m):.4g}")
            stop = None
            if callback is not None and callback(
                    IterationRecord(k, U, G, float(m), float(t), failed0)) is True:
                stop = "callback"
            if tau is not None and float(m) <= float(tau) * np.sqrt(d):
                stop = "discrepancy"
            elif collapse_tol is not None and k > 0 and bool(
                    ensemble_collapsed(U, rec["U"][0], tol=collapse_tol)):
                stop = "collapse"
            elif callable(getattr(scheduler, "finished", None)) and bool(scheduler.finished(t)):
                stop = "scheduler"
            elif callable(getattr(_inner(process), "finished", None)) and bool(
                    _inner(process).finished(state)):
                stop = "finished"
            elif k >= max_it:
                stop = "max_iterations"
            if stop is not None:
                stopped_by = stop
                if checkpoint is not None:
                    save_run(checkpoint, template, state, rec, t, k, stopped_by, config)
                break
            if ok.all() or absorbs:  # SMC: failed rows are zero likelihoods
                state, info = _advance(process, scheduler, state, t, G, y_k, noise_k,
                                       has_dt=has_dt)
            else:  # Ignore: update the successful members, refill the failed ones
                idx = np.flatnonzero(ok)
                sub, info = _advance(process, scheduler, take_members(state, idx), t,
                                     jnp.asarray(np.asarray(G)[idx]), y_k, noise_k,
                                     has_dt=has_dt)
                state = refill(sub, state, ok, jax.random.fold_in(jax.random.fold_in(k_fail, k), 0))
            rec["dt"].append(info.dt)
            t = t + info.dt
            k += 1
            if checkpoint is not None:
                save_run(checkpoint, template, state, rec, t, k, None, config)
    finally:
        bar.close()
    mean, cov = _final(state)
    return CalibrationResult(
        ensembles=jnp.stack(rec["U"]), forward_outputs=_stack(rec["G"]),
        misfits=jnp.stack(rec["m"]),
        dts=jnp.stack(rec["dt"]) if rec["dt"] else jnp.zeros((0,), rec["U"][0].dtype),
        times=jnp.stack(rec["t"]), failure_fractions=np.asarray(rec["frac"]),
        failed=np.stack(rec["failed"]), errors=tuple(rec["errors"]), stopped_by=stopped_by,
        mean=mean, covariance=cov, state=state, settings=settings)


def _run_selected(run, idx, full_dim, U, d, rows=None):
    """Evaluate the whole (full_dim,) output and keep the columns ``idx`` that
    the current batch observes (an observation series built from one vector)."""
    if len(idx) != d:
        raise ValueError(f"the observation series selects {len(idx)} outputs but its "
                         f"batch has d = {d} data")
    G, failed, errors = run(U, full_dim, rows)
    return np.asarray(G)[:, idx], failed, errors


def _resample(policy, state, failed, G, run, d, k, k_fail, E_init, process):
    """Redraw and re-evaluate the failed members up to ``max_retries`` times."""
    G = np.array(G)
    failed = failed.copy()
    errors = {}
    for attempt in range(1, policy.max_retries + 1):
        if policy.source == "initial":
            source, mask = E_init, np.ones(failed.size, bool)
        else:
            if (~failed).sum() < 2:
                raise ForwardFailure(failure_message(
                    f"{policy} needs at least 2 successful members to draw from",
                    failed, k, errors), np.flatnonzero(failed), k, errors)
            source, mask = state.ensemble, ~failed
        rows = np.flatnonzero(failed)
        state = redraw(state, failed, jax.random.fold_in(jax.random.fold_in(k_fail, k),
                                                         attempt), source, jnp.asarray(mask))
        U = process.ask(state)
        G_new, f_new, errors = run(U, d, rows)
        G[rows] = G_new
        failed[rows] = f_new
        if not failed.any():
            return state, U, G, failed
    raise ForwardFailure(failure_message(
        f"{policy}: still failing after {policy.max_retries} redraws", failed, k, errors),
        np.flatnonzero(failed), k, errors)
