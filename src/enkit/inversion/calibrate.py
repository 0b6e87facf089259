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
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim
from enkit.covariance import as_covariance
from enkit.inversion.failures import (
    ForwardFailure,
    Ignore,
    Raise,
    Resample,
    as_policy,
    ensemble_collapsed,
    evaluate,
    failure_message,
    member_fields,
    redraw,
    refill,
    take_members,
)
from enkit.inversion.schedulers import FixedStep
from enkit.io import (
    CheckpointError,
    fingerprint,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
    tree_from_arrays,
    tree_to_arrays,
)

__all__ = ["CalibrationResult", "IterationRecord", "calibrate", "calibrate_scan"]

_LOG = logging.getLogger("enkit.inversion")
DEFAULT_MAX_ITERATIONS = 20


class IterationRecord(NamedTuple):
    """What ``callback`` receives after ensemble k has been evaluated.

    iteration: k; parameters: (N, p) asked parameters; outputs: (N, d)
    (NaN rows for members that failed under ``Ignore``); misfit: scalar;
    time: algorithmic time of ensemble k; failed: (N,) bool, members whose
    first evaluation failed.
    """

    iteration: int
    parameters: Array
    outputs: Array
    misfit: float
    time: float
    failed: np.ndarray


@dataclasses.dataclass(frozen=True, repr=False)
class CalibrationResult:
    """The record of a calibration (I updates, I + 1 ensembles).

    ensembles: (I+1, N, p) asked parameters; ``forward_outputs[k]`` (I+1,
    N, d) are the outputs of ``ensembles[k]`` (a tuple of (N, d_k) arrays
    when an observation series changes d); misfits: (I+1,), ``misfits[k]`` =
    ‖Γ_k^{-1/2}(y_k − Ḡ_k)‖ of the successful members of ensemble k (UKI:
    of its central sigma point); dts: (I,), ``dts[k]`` the step from
    ensemble k to k+1; times: (I+1,) algorithmic time of each ensemble;
    failure_fractions: (I+1,) fraction of members whose first evaluation
    failed; failed: (I+1, N) bool, those members; errors: I+1 dicts member
    → exception message of that first evaluation (black-box models);
    stopped_by: ``"discrepancy"``,
    ``"collapse"``, ``"scheduler"``, ``"max_iterations"`` or ``"callback"``;
    mean, covariance: final estimate in the process's own (unconstrained)
    space, the sample mean and covariance (N − 1) of the final ensemble
    (UKI: its Gaussian); state: the final process state; settings: the
    options in force (shown by ``repr``).
    """

    ensembles: Array
    forward_outputs: Any
    misfits: Array
    dts: Array
    times: Array
    failure_fractions: Array
    failed: np.ndarray
    errors: tuple
    stopped_by: str
    mean: Array
    covariance: Array
    state: Any
    settings: dict

    @property
    def n_iterations(self) -> int:
        """I, the number of updates (``tell`` calls)."""
        return int(np.shape(self.dts)[0])

    def _index(self, i: int) -> int:
        n = self.n_iterations + 1
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"iteration must be an integer in [-{n}, {n - 1}], got {i!r}")
        return int(i) % n

    def parameters(self, i: int) -> Array:
        """(N, p) parameters of ensemble i (0: initial, -1: final)."""
        return self.ensembles[self._index(i)]

    def outputs(self, i: int) -> Array:
        """(N, d) forward outputs of ensemble i."""
        return self.forward_outputs[self._index(i)]

    def misfit(self, i: int) -> Array:
        """Data misfit of ensemble i."""
        return self.misfits[self._index(i)]

    def __repr__(self) -> str:
        N, p = np.shape(self.ensembles)[1:]
        opts = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return (f"CalibrationResult(iterations={self.n_iterations}, "
                f"stopped_by={self.stopped_by!r}, N={N}, p={p}, "
                f"misfit {float(self.misfits[0]):.4g} -> {float(self.misfits[-1]):.4g}, "
                f"max failure fraction={float(np.max(self.failure_fractions)):.3g};\n"
                f"  settings: {opts})")


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
    if scheduler is None and takes_dt and dt0 is inspect.Parameter.empty:
        raise ValueError(f"{name}.tell needs dt: give a scheduler (e.g. EKSStableScheduler())")
    if scheduler is None and takes_dt and dt0 is not None:
        scheduler = FixedStep(dt0)
    has_dt = scheduler is not None  # else tell gets no dt: the process's own default
    if has_dt and not takes_dt:
        raise ValueError(f"{name} sets its own steps (its tell takes no dt); scheduler "
                         "must be None")
    if has_dt and not callable(getattr(scheduler, "step_size", None)):
        raise TypeError("scheduler must have step_size(time, G, y, noise) (e.g. FixedStep, "
                        f"DataMisfitController), got {type(scheduler).__name__}")
    n_steps = getattr(_inner(process), "n_steps", None) if not takes_dt else None
    if max_iterations is None:
        max_iterations = n_steps if n_steps is not None else DEFAULT_MAX_ITERATIONS
    if (isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer))
            or max_iterations < 0):
        raise ValueError(f"max_iterations must be an integer >= 0, got {max_iterations!r}")
    if n_steps is not None and max_iterations > n_steps:
        raise ValueError(f"max_iterations={max_iterations} exceeds the {n_steps} steps of "
                         f"the {name} schedule")
    if tau is not None and not float(tau) > 0:
        raise ValueError(f"tau must be positive (usually 1.1-1.5) or None, got {tau!r}")
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


def _innermost(state):
    """The state of the innermost process (wrapper states hold ``inner``)."""
    while not hasattr(state, "ensemble") and hasattr(state, "inner"):
        state = state.inner
    return state


def _central(state) -> bool:
    """True for sigma-point (Gaussian) states, whose misfit is that of row 0."""
    return hasattr(_innermost(state), "covariance")


def _final(state):
    state = _innermost(state)
    if hasattr(state, "covariance"):
        return state.mean, state.covariance
    E = state.ensemble
    X = E - jnp.mean(E, axis=0)
    return jnp.mean(E, axis=0), X.T @ X / (E.shape[0] - 1)


def _stack(arrays):
    shapes = {np.shape(a) for a in arrays}
    return jnp.stack(arrays) if len(shapes) == 1 else tuple(arrays)


# ----------------------------------------------------------- checkpoints ----

_KIND = "enkit.calibrate"


def _config(process, scheduler, policy, max_it, tau, collapse_tol, bb, initial_ensemble,
            data, k_proc, k_fail) -> dict[str, str]:
    """The parts of a calibration that a resumed run must share, each as an
    ``enkit.io.fingerprint`` (see ``calibrate``'s docstring)."""
    def num(v):
        return None if v is None else float(v)

    return {
        "process": fingerprint(process),
        "scheduler": fingerprint(scheduler),
        "failure policy": fingerprint(policy),
        "stopping rules": fingerprint({"max_iterations": max_it, "tau": num(tau),
                                       "collapse_tol": num(collapse_tol)}),
        "black_box": fingerprint(bb),
        "initial_ensemble": fingerprint(
            None if initial_ensemble is None else np.asarray(initial_ensemble)),
        "data": fingerprint(data),
        "key": fingerprint((k_proc, k_fail)),
    }


def _column(values, dtype) -> np.ndarray:
    return np.stack([np.asarray(v) for v in values]) if values else np.zeros((0,), dtype)


def _save(path, template, state, rec, t, k, stopped_by, config) -> None:
    """Checkpoint after ``k`` completed updates (``stopped_by`` set: finished)."""
    import enkit  # the package is fully imported by the time a run saves

    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(template):
        raise CheckpointError("cannot checkpoint this process: its state changed structure "
                              "since init, so it cannot be rebuilt on resume")
    dtype = np.asarray(rec["U"][0]).dtype
    arrays = tree_to_arrays(state, "state")
    for i, (U, G) in enumerate(zip(rec["U"], rec["G"])):
        arrays[f"ensembles[{i}]"], arrays[f"outputs[{i}]"] = U, G
    arrays.update(misfits=_column(rec["m"], dtype), times=_column(rec["t"], dtype),
                  dts=_column(rec["dt"], dtype), time=np.asarray(t),
                  failure_fractions=np.asarray(rec["frac"], np.float64),
                  failed=np.stack(rec["failed"]))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    save_checkpoint(path, arrays, {
        "kind": _KIND, "enkit_version": enkit.__version__, "config_hash": digest,
        "config": config, "completed_iterations": k, "evaluated": len(rec["U"]),
        "stopped_by": stopped_by,
        "errors": [{str(i): e for i, e in err.items()} for err in rec["errors"]]})


def _restore(path, config, template):
    """(state, records, time, k, stopped_by) from the checkpoint at ``path``."""
    import enkit

    arrays, meta = load_checkpoint(path)
    if meta.get("kind") != _KIND:
        raise CheckpointError(f"{path!r} is not a calibrate checkpoint "
                              f"(kind {meta.get('kind')!r})")
    saved = meta.get("config", {})
    differ = [p for p in config if saved.get(p) != config[p]]
    differ += [p for p in saved if p not in config]
    if differ:
        raise CheckpointError(
            f"checkpoint {path!r} belongs to another calibration: configuration differs: "
            f"{', '.join(differ)}. To start afresh delete the file, pass another "
            "checkpoint path, or pass resume=False (the run then overwrites it).")
    if meta["enkit_version"] != enkit.__version__:
        warnings.warn(f"checkpoint {path!r} was written by enkit {meta['enkit_version']}, "
                      f"this is enkit {enkit.__version__}: the resumed run may differ from "
                      "an uninterrupted one", UserWarning, stacklevel=3)
    n = meta["evaluated"]
    rec = {"U": [jnp.asarray(arrays[f"ensembles[{i}]"]) for i in range(n)],
           "G": [jnp.asarray(arrays[f"outputs[{i}]"]) for i in range(n)],
           "m": [jnp.asarray(v) for v in arrays["misfits"]],
           "t": [jnp.asarray(v) for v in arrays["times"]],
           "frac": list(arrays["failure_fractions"]),
           "failed": list(arrays["failed"]),
           "errors": [{int(i): e for i, e in err.items()} for err in meta["errors"]],
           "dt": [jnp.asarray(v) for v in arrays["dts"]]}
    state = tree_from_arrays(template, arrays, "state")
    return (state, rec, jnp.asarray(arrays["time"]), meta["completed_iterations"],
            meta["stopped_by"])


# ---------------------------------------------------------------- driver ----


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
    process: EKI, ETKI, TEKI, UKI, GNKI, ESMDA or a ``ConstrainedProcess``
    (then ``forward`` receives constrained parameters).
    initial_ensemble: (N, p) initial members (UKI: or None for its prior).
    y: (d,) data, or an observation series with ``at(k) -> (y_k, Γ_k)``
    (then ``noise`` must be None); noise: Γ, an operator or array.

    Defaults (all shown in ``repr(result)``):
    key: PRNG key or int seed, needed by stochastic processes and the
    ``ignore``/``resample`` policies; the process is initialised with
    ``jax.random.split(key)[0]``, policies draw from ``split(key)[1]``.
    scheduler: None → ``FixedStep(Δt)`` with the process's own default Δt
    (1 for EKI/ETKI/TEKI/GNKI, 1/2 for UKI); for a wrapper whose default is
    None, tell gets no dt (the wrapped process's default); a process whose
    tell requires dt (EKS) needs one; must be None for ESMDA, whose steps
    are its α schedule. max_iterations: None → 20 (ESMDA: its K).
    tau: None, or stop at the first ensemble with misfit ≤ τ√d (discrepancy
    principle, Iglesias 2016). collapse_tol: None, or stop when
    ``ensemble_collapsed(ensembles[k], ensembles[0], tol=collapse_tol)``.
    A scheduler with ``finished(time)`` (``DataMisfitController``) stops the
    run when it returns True. failure: ``"raise"`` (default), ``"ignore"``,
    ``"resample"`` or a policy object (``enkit.inversion.failures``).
    callback: called with an ``IterationRecord`` after each evaluation; a
    return value of True stops the run. progress: log each iteration's
    line on the ``"enkit.inversion"`` logger at INFO (else DEBUG).

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
    state = process.init(k_proc, initial_ensemble)
    fields = member_fields(state)
    if policy.needs_ensemble and fields is None:
        raise ValueError(f"failure={policy} needs an ensemble process (state EnsembleState "
                         f"or GNKIState); {type(_inner(process)).__name__} carries a "
                         f"{type(state).__name__}, whose members cannot be dropped or "
                         "redrawn (use failure='raise')")
    E_init = state.ensemble if fields is not None else None
    level = logging.INFO if progress else logging.DEBUG
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    if checkpoint is not None:
        try:
            checkpoint = os.fspath(checkpoint)
        except TypeError:
            raise TypeError("checkpoint must be a file path (str or os.PathLike) or None, "
                            f"got {type(checkpoint).__name__}") from None
        if os.path.isdir(checkpoint) or not os.path.isdir(
                os.path.dirname(os.path.abspath(checkpoint))):
            raise FileNotFoundError(f"checkpoint must be a file path in an existing "
                                    f"directory, got {checkpoint!r}")
        remove_partial_writes(checkpoint)
        config = _config(process, scheduler, policy, max_it, tau, collapse_tol, bb,
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
        state, rec, t, k, stopped_by = _restore(checkpoint, config, template)
        _LOG.log(level, "calibrate: resuming from %s after %d completed iterations%s",
                 checkpoint, k, f" (finished: {stopped_by})" if stopped_by else "")
    while stopped_by is None:
        y_k, noise_k = obs(k)
        d = y_k.shape[0]
        U = process.ask(state)
        t = jnp.zeros((), U.dtype) if t is None else t  # Σ Δt, the algorithmic time
        G, failed, errors = run(U, d)
        failed0 = failed.copy()
        if failed.any():
            if isinstance(policy, Raise):
                raise ForwardFailure(failure_message("failure='raise'", failed, k, errors),
                                     np.flatnonzero(failed), k, errors)
            if isinstance(policy, Resample):
                state, U, G, failed = _resample(policy, state, failed, G, run, d, k, k_fail,
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
        elif k >= max_it:
            stop = "max_iterations"
        if stop is not None:
            stopped_by = stop
            if checkpoint is not None:
                _save(checkpoint, template, state, rec, t, k, stopped_by, config)
            break
        if ok.all():
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
            _save(checkpoint, template, state, rec, t, k, None, config)
    mean, cov = _final(state)
    return CalibrationResult(
        ensembles=jnp.stack(rec["U"]), forward_outputs=_stack(rec["G"]),
        misfits=jnp.stack(rec["m"]),
        dts=jnp.stack(rec["dt"]) if rec["dt"] else jnp.zeros((0,), rec["U"][0].dtype),
        times=jnp.stack(rec["t"]), failure_fractions=np.asarray(rec["frac"]),
        failed=np.stack(rec["failed"]), errors=tuple(rec["errors"]), stopped_by=stopped_by,
        mean=mean, covariance=cov, state=state, settings=settings)


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


# ------------------------------------------------------------------ scan ----


@partial(jax.jit, static_argnames=("forward", "n", "has_dt", "use_tau", "use_finished",
                                   "central"))
def _scan_run(forward, process, scheduler, state0, y, noise, tau, *, n, has_dt, use_tau,
              use_finished, central):
    sqrt_d = jnp.sqrt(jnp.asarray(y.shape[0], y.dtype))

    def stop_rule(t, m):
        s = jnp.asarray(False)
        if use_tau:
            s = s | (m <= tau * sqrt_d)
        if use_finished:
            s = s | scheduler.finished(t)
        return s

    def body(carry, _):
        state, stopped, t = carry
        U = process.ask(state)
        G = jax.vmap(forward)(U)
        m = _misfit(G, y, noise, central)
        stop = stopped | stop_rule(t, m)
        new, info = _advance_impl(process, scheduler, state, t, G, y, noise, has_dt)
        state = jax.lax.cond(stop, lambda a, b: a, lambda a, b: b, state, new)
        t_next = jnp.where(stop, t, t + info.dt)
        return (state, stop, t_next), (U, G, m, t, info.dt, stop)

    t0 = jnp.zeros((), y.dtype)
    (state, _, t), recs = jax.lax.scan(body, (state0, jnp.asarray(False), t0), None, length=n)
    U = process.ask(state)
    G = jax.vmap(forward)(U)
    m = _misfit(G, y, noise, central)
    return state, recs, (U, G, m, t, stop_rule(t, m))


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
    updates. Only ``failure="raise"`` is possible inside a compiled loop:
    non-finite outputs are found after the scan and raise
    ``ForwardFailure`` naming the first failing iteration and its members.
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
    tau_a = jnp.asarray(1.0 if tau is None else tau, y.dtype)
    state, r, last = _scan_run(forward, process, scheduler, state0, y, noise, tau_a, n=n,
                               has_dt=has_dt, use_tau=tau is not None,
                               use_finished=use_finished, central=central)
    stops = np.asarray(r[5])
    I = int(np.argmax(stops)) if stops.any() else n
    U = jnp.concatenate([r[0][:I], last[0][None]]) if I == n else r[0][:I + 1]
    G = jnp.concatenate([r[1][:I], last[1][None]]) if I == n else r[1][:I + 1]
    m = jnp.concatenate([r[2][:I], last[2][None]]) if I == n else r[2][:I + 1]
    t = jnp.concatenate([r[3][:I], last[3][None]]) if I == n else r[3][:I + 1]
    failed = ~np.all(np.isfinite(np.asarray(G)), axis=2)
    if failed.any():
        k = int(np.argmax(failed.any(axis=1)))
        raise ForwardFailure(failure_message("failure='raise'", failed[k], k, {}),
                             np.flatnonzero(failed[k]), k)
    final_stop = bool(last[4]) if I == n else True
    if final_stop and tau is not None and float(m[-1]) <= float(tau) * np.sqrt(y.shape[0]):
        stopped_by = "discrepancy"
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
