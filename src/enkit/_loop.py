"""The Python-loop path of ``assimilate`` (private).

Used for black-box models (members evaluated through an executor) and for
observation networks given as ragged lists. Each analysis is still one
compiled call; the cycle pieces are those of the compiled path
(``enkit._cycle``), so both paths give the same numbers.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from enkit import _cycle
from enkit.covariance import as_covariance

_OBS_SPACE = {"innovation_forecast", "innovation_analysis",
              "simulated_obs_forecast", "simulated_obs_analysis"}


def run_python(model, E0, observations, scheme, h, R, key, inflation, mask, steps,
               controls, noise, forecast_steps, outputs):
    from enkit.assimilate import AssimilationResult, BlackBoxModel, PerTime, _as_pytree, over_window

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

    if isinstance(model, BlackBoxModel):
        advance = partial(_black_box_forecast, model)
    else:
        advance = partial(_jax_forecast, _as_pytree(model))
    scheme = _as_pytree(scheme)
    E, state = E0, inflation.init(E0)
    outs = {name: [] for name in outputs}
    t = 0
    for k in range(1, K + 1):
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
    if forecast_steps:
        k_noise = None if key is None else jax.random.fold_in(key, K + 1)
        E = advance(E, forecast_steps, t, controls, noise, k_noise, cycle=K + 1)
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
