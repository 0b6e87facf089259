"""The Python-driven paths of ``assimilate`` (private).

- ``run_python``: black-box models (members evaluated through an executor)
  and observation networks given as ragged lists. Each analysis is still
  one compiled call; the cycle pieces are those of the compiled path
  (``enkit._cycle``), so both paths give the same numbers.
- ``run_windows``: the compiled scan run window by window (``checkpoint_every``
  cycles per call) so that the state can be saved between windows.
- checkpoints of both (``enkit.io``): the configuration fingerprint, saving
  after a window of cycles, restoring a run.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from enkit import _cycle
from enkit.covariance import as_covariance
from enkit.io import (
    fingerprint,
    load_run_checkpoint,
    run_checkpoint_path,
    save_run_checkpoint,
    tree_from_arrays,
    tree_to_arrays,
)

_LOG = logging.getLogger("enkit.assimilate")

_OBS_SPACE = {"innovation_forecast", "innovation_analysis",
              "simulated_obs_forecast", "simulated_obs_analysis"}


def run_python(model, E0, observations, scheme, h, R, key, inflation, mask, steps,
               controls, noise, forecast_steps, outputs, plan=None):
    from enkit.assimilate import (
        AssimilationResult,
        BlackBoxModel,
        PerTime,
        _as_pytree,
        over_window,
    )

    if isinstance(scheme, over_window):
        raise ValueError("over_window needs a JAX model and an (K, m) observation array")
    K = len(observations)
    ragged = isinstance(observations, (list, tuple))

    def at(value, k):
        """The value for analysis k of a per-time argument (list or PerTime)."""
        if isinstance(value, PerTime):
            return jax.tree_util.tree_map(lambda a: a[k], value.value)
        if ragged and isinstance(value, (list, tuple)):
            if len(value) != K:
                raise ValueError(f"per-time lists must have K={K} entries, got {len(value)}")
            return value[k]
        return value

    if mask is not None and not ragged and not isinstance(mask, PerTime):  # (K, m) array
        mask = np.asarray(mask, dtype=bool)
        if np.ndim(observations) == 2 and mask.shape != np.shape(observations):
            raise ValueError(f"mask must have shape (K, m) = {np.shape(observations)}, "
                             f"got {mask.shape}")
        mask = PerTime(mask)
    if isinstance(model, BlackBoxModel):
        advance = partial(_black_box_forecast, model)
    else:
        advance = partial(_jax_forecast, _as_pytree(model))
    scheme = _as_pytree(scheme)
    E, state = E0, inflation.init(E0)
    outs = {name: [] for name in outputs}
    t, k0 = 0, 0
    ragged_names = [n for n in outputs if ragged and n in _OBS_SPACE]
    saved = None if plan is None else restore(plan, (E, state), outputs, ragged_names,
                                              stacklevel=3)
    if saved is not None:
        if saved.finished:
            return saved.result()
        E, state, t, k0 = saved.ensemble, saved.state, saved.model_step, saved.completed
        outs = {name: list(v) for name, v in saved.outputs.items()}

    def save(k, finished):
        rows = {name: vals if name in ragged_names else np.stack([np.asarray(v) for v in vals])
                for name, vals in outs.items()}
        save_run(plan, (E, state), rows, k, t, finished, ragged_names)

    for k in range(k0 + 1, K + 1):
        keys, k_noise = _cycle.cycle_keys(key, k)
        n = int(steps[k - 1]) - t
        Ef = advance(E, n, t, controls, noise, k_noise, cycle=k)
        t = int(steps[k - 1])
        y = jnp.asarray(observations[k - 1], dtype=E0.dtype)
        if y.ndim != 1:
            raise ValueError(f"observations[{k - 1}] must have shape (m,), got {y.shape}")
        h_k = at(h, k - 1)
        if controls is not None and callable(h_k):
            u = jax.tree_util.tree_map(lambda a: a[t], controls)
            h_k = partial(_call_with, h_k, u)
        R_k = as_covariance(at(R, k - 1), y.shape[0]).astype(E0.dtype)
        mask_k = None if mask is None else jnp.asarray(at(mask, k - 1), dtype=bool)
        if mask_k is not None and not bool(jnp.any(mask_k)):
            hm, ym, Rm = _cycle.masked_problem(h_k, y, R_k, mask_k)
            Ea, out = Ef, _stats_jit(outputs, Ef, Ef, Ef, _as_pytree(hm), ym, Rm)
        else:
            Ea, state, out = _analyse_jit(scheme, _as_pytree(h_k), y, R_k, mask_k, inflation,
                                          state, keys, Ef, outputs)
        for name in outputs:
            outs[name].append(out[name])
        E = Ea
        if plan is not None and k % plan.every == 0 and (k < K or forecast_steps):
            save(k, finished=False)
    if forecast_steps:
        k_noise = None if key is None else jax.random.fold_in(key, K + 1)
        E = advance(E, forecast_steps, t, controls, noise, k_noise, cycle=K + 1)
    if plan is not None:
        save(K, finished=True)
    stacked = {
        name: (vals if ragged and name in _OBS_SPACE else jnp.stack(vals))
        for name, vals in outs.items()
    }
    return AssimilationResult(ensemble=E, **stacked)


def _call_with(h, u, x):
    return h(x, u)


@partial(jax.jit, static_argnames=("outputs",))
def _analyse_jit(scheme, h, y, R, mask, inflation, state, keys, Ef, outputs):
    return _cycle.analyse(scheme, h, y, R, mask, inflation, state, keys, Ef, outputs)


@partial(jax.jit, static_argnames=("outputs",))
def _stats_jit(outputs, Ef, Eb, Ea, h, y, R):
    return _cycle.statistics(outputs, Ef, Eb, Ea, h, y, R)


@jax.jit
def _jax_forecast_jit(model, E, n, t0, controls, noise, key):
    return _cycle.forecast(model, E, n, t0=t0, controls=controls, noise=noise, key=key)


def _jax_forecast(model, E, n, t0, controls, noise, key, *, cycle):
    return _jax_forecast_jit(model, E, n, t0, controls, noise, key)


class _MemberRun:
    """Advance one member n steps with a black-box step (picklable for pools)."""

    def __init__(self, step, n, t0, controls):
        self.step, self.n, self.t0, self.controls = step, n, t0, controls

    def __call__(self, args):
        x, noise = args
        for j in range(self.n):
            if self.controls is None:
                x = self.step(x)
            else:
                u = jax.tree_util.tree_map(lambda a: np.asarray(a[self.t0 + j]), self.controls)
                x = self.step(x, u)
            x = np.asarray(x, dtype=float)
            if noise is not None:
                x = x + noise[j]
        return x


def _black_box_forecast(model, E, n, t0, controls, noise, key, *, cycle):
    N = E.shape[0]
    if noise is None:
        draws = [None] * N
    else:
        # The same draws as the compiled path: fold_in(key, j) for step j.
        z = jnp.stack([noise.sample(jax.random.fold_in(key, j), (N,)) for j in range(n)])
        draws = [np.asarray(z[:, i]) for i in range(N)]
    run = _MemberRun(model.step, n, t0, controls)
    members = [(np.asarray(E[i]), draws[i]) for i in range(N)]
    mapper = map if model.executor is None else model.executor.map
    results = list(mapper(run, members))
    for i, x in enumerate(results):
        if np.shape(x) != E.shape[1:] or not np.all(np.isfinite(x)):
            raise FloatingPointError(
                f"black-box model failed for member {i} in cycle {cycle}: it returned "
                f"{'non-finite values' if np.shape(x) == E.shape[1:] else f'shape {np.shape(x)}'}"
            )
    return jnp.asarray(np.stack(results), dtype=E.dtype)


# ------------------------------------------------------- compiled windows ----


def run_windows(model, E0, ys, mask, n_steps, scheme, h, R, key, inflation, controls, noise,
                forecast_steps, outputs, window, plan):
    """The compiled path in windows of ``plan.every`` cycles, saving after each.

    Each window is one call of the scan used by the plain path on that
    window's slice of the per-cycle inputs (one compilation for the
    full-size windows, one more for a shorter last window).
    """
    from enkit.assimilate import (
        AssimilationResult,
        _final_forecast_jit,
        _run_window,
        _scan_inputs,
    )

    K = ys.shape[0]
    carry = (E0, inflation.init(E0))
    k, t = 0, 0
    parts = {name: [] for name in outputs}
    saved = restore(plan, carry, outputs, [], stacklevel=4)
    if saved is not None:
        if saved.finished:
            return saved.result()
        carry, k, t = (saved.ensemble, saved.state), saved.completed, saved.model_step
        parts = {name: [v] for name, v in saved.outputs.items()}
    xs_all = _scan_inputs(ys, mask, n_steps, h, R)
    steps = np.cumsum(np.asarray(n_steps))

    def rows():
        return {name: np.concatenate(p) for name, p in parts.items()}

    while k < K:
        end = min(k + plan.every, K)
        xs = jax.tree_util.tree_map(lambda a: a[k:end], xs_all)  # noqa: B023
        carry, outs = _run_window(model, carry, xs, scheme, h, R, key, inflation, controls,
                                  noise, outputs=outputs, window=window)
        for name in outputs:
            parts[name].append(np.asarray(outs[name]))
        k, t = end, int(steps[end - 1])
        if k < K or forecast_steps:
            save_run(plan, carry, rows(), k, t, False, [])
    E = carry[0]
    if forecast_steps:
        E = _final_forecast_jit(model, E, n_steps, key, controls, noise,
                                forecast_steps=forecast_steps)
    final = rows()
    save_run(plan, (E, carry[1]), final, K, t, True, [])
    return AssimilationResult(ensemble=E, **{n: jnp.asarray(v) for n, v in final.items()})


# ------------------------------------------------------------ checkpoints ----

_KIND = "enkit.assimilate"


class CheckpointPlan(NamedTuple):
    """Where and how often a run saves, and the configuration it must match."""

    path: str
    every: int
    resume: bool
    config: dict


class SavedRun(NamedTuple):
    """A run restored from its checkpoint (outputs: name → (k, ...) rows, or
    a list of (m_k,) arrays for ragged observation-space outputs)."""

    ensemble: Any
    state: Any
    outputs: dict
    completed: int
    model_step: int
    finished: bool

    def result(self):
        from enkit.assimilate import AssimilationResult

        outs = {n: v if isinstance(v, list) else jnp.asarray(v) for n, v in self.outputs.items()}
        return AssimilationResult(ensemble=jnp.asarray(self.ensemble), **outs)


def checkpoint_plan(checkpoint, every, resume, default_every, config) -> CheckpointPlan:
    """Validate the checkpoint options of ``assimilate``."""
    path = run_checkpoint_path(checkpoint)
    if every is None:
        every = default_every
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError("checkpoint_every must be a positive integer (analysis cycles "
                         f"between checkpoints), got {every!r}")
    config = dict(config, checkpoint_every=fingerprint(int(every)))
    return CheckpointPlan(path, int(every), resume, config)


def config_fingerprints(model, E0, observations, scheme, h, R, key, inflation, mask, steps,
                        forecast_steps, controls, noise, outputs) -> dict[str, str]:
    """The parts of an assimilation that a resumed run must share, each as
    an ``enkit.io.fingerprint`` (see ``assimilate``'s docstring)."""
    from enkit.assimilate import BlackBoxModel

    def arrays(v):
        return jax.tree_util.tree_map(np.asarray, v)

    if isinstance(model, BlackBoxModel):  # the executor is not part of the configuration
        model = {"black_box_step": model.step, "dt": model.dt}
    obs = list(observations) if isinstance(observations, (list, tuple)) else observations
    return {
        "model": fingerprint(model),
        "E0": fingerprint(np.asarray(E0)),
        "observations": fingerprint(arrays(obs)),
        "scheme": fingerprint(scheme),
        "h": fingerprint(h),
        "R": fingerprint(R),
        "inflation": fingerprint(inflation),
        "mask": fingerprint(arrays(mask)),
        "steps": fingerprint({"analysis_steps": np.asarray(steps),
                              "forecast_steps": int(forecast_steps)}),
        "controls": fingerprint(arrays(controls)),
        "model_noise": fingerprint(noise),
        "key": fingerprint(key),
        "store": fingerprint(list(outputs)),
    }


def save_run(plan, carry, outputs, k, t, finished, ragged_names) -> None:
    """Checkpoint after ``k`` completed cycles (``finished``: the whole run,
    the ensemble then being the final one after any forecast-only steps)."""
    arrays = tree_to_arrays(carry, "carry")
    for name, v in outputs.items():
        if name in ragged_names:
            arrays.update({f"outputs.{name}[{i}]": a for i, a in enumerate(v)})
        else:
            arrays[f"outputs.{name}"] = v
    save_run_checkpoint(plan.path, _KIND, plan.config, arrays, {
        "completed_cycles": int(k), "model_step": int(t), "finished": bool(finished),
        "ragged_outputs": list(ragged_names)})
    _LOG.debug("assimilate: checkpoint after %d cycles written to %s", k, plan.path)


def restore(plan, template, outputs, ragged_names, *, stacklevel) -> SavedRun | None:
    """The run saved at ``plan.path``, or None (no file, or ``resume=False``)."""
    if not plan.resume or not os.path.exists(plan.path):
        return None
    arrays, meta = load_run_checkpoint(plan.path, _KIND, plan.config, what="assimilation",
                                       stacklevel=stacklevel + 1)
    k = meta["completed_cycles"]
    E, state = tree_from_arrays(template, arrays, "carry")
    saved_outputs = {}
    for name in outputs:
        if name in ragged_names:
            saved_outputs[name] = [jnp.asarray(arrays[f"outputs.{name}[{i}]"]) for i in range(k)]
        else:
            saved_outputs[name] = arrays[f"outputs.{name}"]
    _LOG.info("assimilate: resuming from %s after %d completed cycles%s", plan.path, k,
              " (finished)" if meta["finished"] else "")
    return SavedRun(E, state, saved_outputs, k, meta["model_step"], meta["finished"])
