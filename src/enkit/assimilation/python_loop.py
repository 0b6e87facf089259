"""The Python-driven path of the driver (private).

``run`` serves black-box models (members evaluated through an executor) and
observation networks given as ragged lists. Each analysis (and smoother
step) is still one compiled call; the cycle pieces are those of the
compiled path (``enkit.assimilation.cycle``), so both paths give the same
numbers. With a checkpoint plan it saves after every ``plan.every`` cycles
(``enkit.assimilation.checkpoint``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from enkit.assimilation import cycle as _cycle
from enkit.assimilation.checkpoint import restore, save_run
from enkit.assimilation.types import (
    AssimilationResult,
    BlackBoxModel,
    CycleSettings,
    ObservationRecord,
    PerTime,
    as_pytree,
)
from enkit.covariance import as_covariance

_OBS_SPACE = {"innovation_forecast", "innovation_analysis",
              "simulated_obs_forecast", "simulated_obs_analysis",
              "innovation_forecast_ensemble", "simulated_obs_forecast_ensemble"}


def run(settings: CycleSettings, record: ObservationRecord, E0, key, forecast_steps, outputs,
        plan=None, stop_on_nonfinite=False, on_cycle=None) -> AssimilationResult:
    """K cycles in Python, then ``forecast_steps`` model steps.

    on_cycle: None or a callable ``on_cycle(1)`` called after every cycle
    (a progress bar's ``update``); a resumed run first reports the cycles
    already done, ``on_cycle(k0)``.

    With ``stop_on_nonfinite`` (and the finite-check among the outputs) the
    loop stops after the first cycle whose check fails, saves nothing more
    and returns the outputs up to that cycle (ensemble and smoothed outputs
    None), for the driver to report.

    record: values a (K, m) array or a list of K (m_k,) arrays; h and R a
    constant, ``PerTime``, or (ragged) lists of K entries; mask a (K, m)
    array, ``PerTime``, a list, or None; n_steps the (K,) model steps
    before each analysis (NumPy ints). settings.model: a ``BlackBoxModel`` or a
    JAX model.
    """
    model, scheme, inflation = settings.model, settings.scheme, settings.inflation
    noise, smoother = settings.model_noise, settings.smoother
    observations, mask, h, R = record.values, record.mask, record.h, record.R
    steps, controls = np.cumsum(record.n_steps), record.controls  # analysis step indices
    if settings.window:
        raise ValueError("over_window needs a JAX model and an (K, m) observation array")
    transform = smoother is not None and smoother.needs_transform
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
        advance = partial(_jax_forecast, as_pytree(model))
    scheme = as_pytree(scheme)
    E, state = E0, inflation.init(E0)
    sstate = () if smoother is None else smoother.init(E0)
    names = _cycle.statistics_names(outputs)
    opt = None
    if _cycle.tracks_optimum(outputs):
        m = 0 if ragged else int(np.shape(observations)[1])
        opt = _cycle.init_optimum(outputs, E0.shape[1], m, E0.dtype)
    outs = {name: [] for name in outputs}
    srows: dict = {}
    t, k0 = 0, 0
    ragged_names = [n for n in outputs if ragged and n in _OBS_SPACE]
    saved = None if plan is None else restore(plan, _carry(E, state, sstate, opt), outputs,
                                              stacklevel=3)
    if saved is not None:
        if saved.finished:
            return saved.result()
        (E, state, sstate), t, k0 = saved.carry[:3], saved.model_step, saved.completed
        opt = saved.carry[3] if opt is not None else None
        outs = {name: list(saved.outputs[name]) for name in outputs}
        srows = {name[5:]: list(v) for name, v in saved.outputs.items()
                 if name.startswith("rows.")}

    def stacked_rows():
        return {name: jnp.stack(vals) for name, vals in srows.items()}

    def save(k, finished, extra=None):
        rows = {name: vals if name in ragged_names else np.stack([np.asarray(v) for v in vals])
                for name, vals in outs.items()}
        if extra is None:
            rows.update({f"rows.{name}": np.asarray(v) for name, v in stacked_rows().items()})
        else:
            rows.update({name: np.asarray(v) for name, v in extra.items()})
        save_run(plan, _carry(E, state, sstate, opt), rows, k, t, finished, ragged_names)

    if on_cycle is not None and k0:
        on_cycle(k0)
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
        if y.shape[0] == 0:  # no observations: a forecast-only step
            R_k, mask_k = None, None
        else:
            R_k = as_covariance(at(R, k - 1), y.shape[0]).astype(E0.dtype)
            mask_k = None if mask is None else jnp.asarray(at(mask, k - 1), dtype=bool)
        has_analysis = not (y.shape[0] == 0 or (mask_k is not None
                                                and not bool(jnp.any(mask_k))))
        if not has_analysis:
            Ea, out = Ef, _skipped_jit(names, Ef, as_pytree(h_k), y, R_k, mask_k)
            G = _cycle.identity_transform(Ef) if transform else None
        else:
            Ea, state, out, G = _analyse_jit(scheme, as_pytree(h_k), y, R_k, mask_k, inflation,
                                             state, keys, Ef, names, transform)
        opt, out = _cycle.close_cycle(outputs, opt, k, jnp.asarray(has_analysis), out)
        for name in outputs:
            outs[name].append(out[name])
        if stop_on_nonfinite and _cycle.NONFINITE in out and int(out[_cycle.NONFINITE]):
            return AssimilationResult(**_stacked(outs, ragged))
        if smoother is not None:
            sstate, row = _smoother_step_jit(smoother, sstate, Ef, Ea, G)
            for name, v in row.items():
                srows.setdefault(name, []).append(v)
        E = Ea
        if plan is not None and k % plan.every == 0 and (k < K or forecast_steps):
            save(k, finished=False)
        if on_cycle is not None:
            on_cycle(1)
    if forecast_steps:
        k_noise = None if key is None else jax.random.fold_in(key, K + 1)
        E = advance(E, forecast_steps, t, controls, noise, k_noise, cycle=K + 1)
    smoothed = {} if smoother is None else _smoother_finish_jit(smoother, sstate, stacked_rows())
    if plan is not None:
        save(K, finished=True, extra=smoothed)
    return AssimilationResult(ensemble=E, **_stacked(outs, ragged), **smoothed)


def _carry(E, state, sstate, opt):
    """What a checkpoint of the loop saves: the running optimum's state
    last, when it is tracked."""
    return (E, state, sstate) if opt is None else (E, state, sstate, opt)


def _stacked(outs: dict, ragged: bool) -> dict:
    """The per-cycle outputs as arrays with a leading K axis (ragged
    observation-space outputs stay lists)."""
    return {name: (vals if ragged and name in _OBS_SPACE else jnp.stack(vals))
            for name, vals in outs.items()}


def _call_with(h, u, x):
    return h(x, u)


@partial(jax.jit, static_argnames=("outputs", "transform"))
def _analyse_jit(scheme, h, y, R, mask, inflation, state, keys, Ef, outputs, transform):
    # One call per cycle: the finite-check names the failing stage at once.
    return _cycle.analyse(scheme, h, y, R, mask, inflation, state, keys, Ef, outputs,
                          transform=transform, stages=True)


@jax.jit
def _smoother_step_jit(smoother, sstate, Ef, Ea, G):
    return smoother.step(sstate, Ef, Ea, G)


@jax.jit
def _smoother_finish_jit(smoother, sstate, rows):
    return smoother.finish(sstate, rows)


@partial(jax.jit, static_argnames=("outputs",))
def _skipped_jit(outputs, Ef, h, y, R, mask):
    return _cycle.skipped(outputs, Ef, h, y, R, mask)


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
