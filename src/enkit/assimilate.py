"""L2 cycling driver: forecast → inflation → analysis → inflation, per time.

Two paths share the same cycle (``enkit._cycle``):

- compiled: a JAX-traceable model and observations as one (K, m) array
  (padded, with a mask, when the network changes) → one ``lax.scan``,
  compiled once per shape;
- Python: a black-box model (``BlackBoxModel``, members evaluated through an
  executor) or ragged observations (a list of (m_k,) arrays) → a Python loop
  over cycles whose analyses are still compiled.

With ``checkpoint=path`` either path saves its state atomically after every
window of ``checkpoint_every`` cycles (the compiled scan then runs window by
window, ``enkit._loop``) and a later call resumes it bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit import _cycle, _loop
from enkit._checks import check_finite, check_float, check_ndim
from enkit.covariance import Covariance, as_covariance
from enkit.diagnostics import rmse
from enkit.filters._common import ObservationOperator, observe
from enkit.inflation import InflationStep, MultiplicativeAnalysis, NoInflation

__all__ = [
    "AssimilationResult",
    "BlackBoxModel",
    "OUTPUTS",
    "PerTime",
    "assimilate",
    "over_window",
    "per_time",
    "stack_covariances",
]

OUTPUTS = _cycle.OUTPUTS


class AssimilationResult(NamedTuple):
    """What an assimilation run returns; one row per analysis time (K).

    times: (K,) analysis times in model time units (model steps × dt, or
    steps when the model has no ``dt``); steps: (K,) model-step index of each
    analysis; ensemble: (N, n) the final ensemble (after any forecast-only
    cycles). Each output requested through ``store`` holds an array with a
    leading K axis, the others are None:

    forecast_mean/analysis_mean (K, n); forecast_spread/analysis_spread (K,)
    (``ensemble_spread``; forecast statistics are of the model forecast before
    any inflation, analysis ones after it); forecast_ensemble/
    analysis_ensemble (K, N, n); forecast_covariance/analysis_covariance
    (K, n, n); analysis_variances/analysis_std (K, n); bma (K, n) forecast
    mean minus analysis mean; innovation_forecast = y − h(x̄_f) and
    innovation_analysis = y − h(x̄_a) (K, m), taken at the forecast and the
    analysis mean; simulated_obs_forecast = h(x̄_f), simulated_obs_analysis
    = h(x̄_a) (K, m); cost_Jb = ½ (x̄_a − x̄_b)ᵀ P_b⁺ (x̄_a − x̄_b) (P_b the
    sample covariance of the ensemble the scheme received),
    cost_Jo = ½ ‖y − h(x̄_a)‖²_{R⁻¹}, cost_J = Jb + Jo (K,). Entries of
    absent observations are 0. In the Python path with ragged observations,
    observation-space outputs are lists of (m_k,) arrays.
    """

    times: Any = None
    steps: Any = None
    ensemble: Any = None
    forecast_mean: Any = None
    analysis_mean: Any = None
    forecast_spread: Any = None
    analysis_spread: Any = None
    forecast_ensemble: Any = None
    analysis_ensemble: Any = None
    forecast_covariance: Any = None
    analysis_covariance: Any = None
    analysis_variances: Any = None
    analysis_std: Any = None
    bma: Any = None
    innovation_forecast: Any = None
    innovation_analysis: Any = None
    simulated_obs_forecast: Any = None
    simulated_obs_analysis: Any = None
    cost_J: Any = None
    cost_Jb: Any = None
    cost_Jo: Any = None

    def rmse(self, truth: ArrayLike) -> Array:
        """Analysis RMSE per time against truth (K, n) -> (K,)."""
        return rmse(self._need("analysis_mean"), truth)

    def forecast_rmse(self, truth: ArrayLike) -> Array:
        """Forecast RMSE per time against truth (K, n) -> (K,)."""
        return rmse(self._need("forecast_mean"), truth)

    def spread(self) -> Array:
        """Analysis spread per time, (K,)."""
        return self._need("analysis_spread")

    def _need(self, name):
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this run did not store {name!r}; pass store=(..., {name!r})")
        return value


@dataclasses.dataclass(frozen=True)
class PerTime:
    """Marks a value that changes with the analysis time: every leaf of
    ``value`` has a leading axis of length K, sliced at each analysis."""

    value: Any


jax.tree_util.register_dataclass(PerTime, data_fields=["value"], meta_fields=[])


def per_time(value) -> PerTime:
    """Mark ``h`` (a stack of (K, m, n) matrices) or ``R`` (a covariance
    operator whose leaves have a leading K axis, e.g. ``Diagonal`` built from
    stacked variances via ``stack_covariances``) as varying per analysis time."""
    return PerTime(value)


def stack_covariances(ops: Sequence[Covariance]) -> PerTime:
    """Stack K covariance operators of one type and dimension into ``per_time``."""
    types = {type(o) for o in ops}
    dims = {o.dim for o in ops}
    if len(types) != 1 or len(dims) != 1:
        raise ValueError("stack_covariances needs operators of one type and one dimension")
    return PerTime(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ops))


@dataclasses.dataclass(frozen=True)
class over_window:  # noqa: N801 - used like a function: over_window(ienkf)
    """Run ``scheme`` on the previous analysis ensemble with the model inside
    the observation operator, ``h ∘ M``, then forecast the updated ensemble.

    This is the cycle of the iterative EnKF (Sakov, Oliver & Bertino 2012):
    the update at time k−1 uses the observation at time k, and its forecast
    is the filter analysis at k. Any scheme can be cycled this way.
    """

    scheme: Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class BlackBoxModel:
    """A model that is not JAX-traceable: ``step(x) -> x`` on NumPy arrays,
    one model step of one member (``step(x, u)`` with controls).

    Members are evaluated through ``executor.map`` (any
    ``concurrent.futures.Executor``: process pools, ``distributed.Client``,
    ``mpi4py.futures``); None evaluates them one after another here.
    """

    step: Callable
    executor: Any = None
    dt: float | None = None


def assimilate(
    model: Callable[[Array], Array] | BlackBoxModel,
    E0: ArrayLike,
    observations: ArrayLike | Sequence[ArrayLike],
    scheme: Callable[..., Array] | over_window,
    *,
    h: ObservationOperator | PerTime | Sequence,
    R: Any,
    key: Array | int | None = None,
    inflation: ArrayLike | InflationStep | None = None,
    mask: ArrayLike | None = None,
    steps_per_obs: int | ArrayLike = 1,
    obs_times: ArrayLike | None = None,
    controls: Any = None,
    model_noise: Covariance | None = None,
    forecast_steps: int = 0,
    store: Sequence[str] = _cycle.DEFAULT_OUTPUTS,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
) -> AssimilationResult:
    """Cycle an ensemble through forecasts and analyses.

    For each analysis time k = 1..K, with keys derived from
    ``kₖ = fold_in(key, k)``:

        E ← model^{sₖ}(E) (+ model noise after every step)
        E ← inflation.before_analysis(E) → scheme(E, yₖ, h, R) → inflation.after_analysis

    Then ``forecast_steps`` more model steps with no analysis.

    model: one model step of one member, ``(n,) -> (n,)`` (``(x, u)`` with
    controls): JAX-traceable (compiled with the cycle) or a ``BlackBoxModel``.
    E0: (N, n) initial ensemble. observations: (K, m) array, or a list of
    K arrays of varying length m_k (Python path, h and R lists too).
    scheme: an L1 scheme with the uniform signature (bind options with
    ``functools.partial``), or ``over_window(scheme)``.
    h: callable or (m, n) matrix, or ``per_time(H)`` with H (K, m, n);
    R: covariance operator or array, or ``per_time``/``stack_covariances``.
    key: PRNG key or integer seed (needed by stochastic schemes, stochastic
    inflation and model noise). inflation: an ``InflationStep`` (or
    ``chain``), a number λ (multiplicative on the analysis anomalies), or None.
    mask: (K, m) booleans, False where an observation is absent (padding);
    an absent observation has exactly no effect, and a time with none is a
    forecast-only step. steps_per_obs: model steps between analyses, an int
    or (K,) ints; obs_times: (K,) increasing analysis times in model time
    units instead (converted to steps with ``model.dt``; must be multiples).
    controls: pytree whose leaves have a leading axis of total steps + 1
    (values at model times 0..T): the model step from t gets ``u[t]``, h at
    an analysis at step t gets ``u[t]``. model_noise: covariance operator Q,
    ``N(0, Q)`` added to every member after every model step.
    store: output names (see ``AssimilationResult``; ADAO names such as
    "APosterioriCovariance", "CostFunctionJo", "InnovationAtCurrentState"
    are accepted as aliases).

    checkpoint: None, or a file path (conventionally ``*.npz``) where the
    run is saved atomically (``enkit.io.save_checkpoint``: no pickle, never
    half-written) after every ``checkpoint_every`` completed analysis cycles
    and when it ends: the ensemble, the inflation state, every stored output
    so far (each save rewrites them all), the completed-cycle count and the
    model step. checkpoint_every: a positive int; default 100 on the
    compiled path (the scan then runs window by window: one compilation for
    the full windows, one more for a shorter last one) and 1 on the Python
    path (``BlackBoxModel`` or ragged observations, where a cycle may take
    minutes). Per-cycle keys are ``fold_in(key, k)``, so windows draw the
    same numbers: a windowed run, and a resumed one, equal the plain run bit
    for bit. Without ``checkpoint`` the run is one scan, as always.
    resume: with a checkpoint present at that path, True (default)
    continues after its last saved cycle (a finished run returns its result
    without running the model); False starts afresh and overwrites it. A
    checkpoint records the enkit version (another version warns) and
    SHA-256 fingerprints (``enkit.io.fingerprint``) of: model (a JAX model's
    pytree; a ``BlackBoxModel``'s step and dt, not its executor), E0,
    observations, scheme, h, R, inflation, mask, the analysis steps and
    forecast_steps, controls, model_noise, key, store and checkpoint_every.
    Resuming with any of these different raises ``CheckpointError`` naming
    the parts that differ. Functions are fingerprinted by module and
    qualified name, not by their code: a resumed run must be given the
    same model and operators.
    """
    outputs = _cycle.resolve_outputs(store)
    check_float("E0", E0)
    E0 = jnp.asarray(E0)
    check_ndim("E0", E0, 2, "(N, n): members on axis 0")
    check_finite("E0", E0)
    if not (callable(scheme) or isinstance(scheme, over_window)):
        raise TypeError(
            f"scheme must be an analysis function such as enkit.etkf, got {type(scheme).__name__}"
        )
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    if inflation is None:
        inflation = NoInflation()
    elif not isinstance(inflation, InflationStep):
        inflation = MultiplicativeAnalysis(jnp.asarray(inflation, E0.dtype))
    if not isinstance(forecast_steps, (int, np.integer)) or forecast_steps < 0:
        raise ValueError(f"forecast_steps must be a non-negative integer, got {forecast_steps!r}")
    if model_noise is not None:
        model_noise = as_covariance(model_noise, E0.shape[1], name="model_noise")
        model_noise = model_noise.astype(E0.dtype)
        if key is None:
            raise TypeError("model_noise draws random numbers: pass key=")
    ragged = isinstance(observations, (list, tuple))
    K = len(observations) if ragged else np.shape(observations)[0]
    steps = _analysis_steps(model, K, steps_per_obs, obs_times)
    dt = getattr(model, "dt", None)
    if controls is not None:
        total = int(steps[-1]) + forecast_steps + 1
        for leaf in jax.tree_util.tree_leaves(controls):
            if np.shape(leaf)[:1] != (total,):
                raise ValueError(
                    f"controls must have a leading axis of total model steps + 1 = {total}, "
                    f"got a leaf of shape {np.shape(leaf)}"
                )
    python_path = isinstance(model, BlackBoxModel) or ragged
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    plan = None
    if checkpoint is not None:
        config = _loop.config_fingerprints(
            model, E0, observations, scheme, h, R, key, inflation, mask, steps,
            forecast_steps, controls, model_noise, outputs)
        plan = _loop.checkpoint_plan(checkpoint, checkpoint_every, resume,
                                     1 if python_path else 100, config)
    elif checkpoint_every is not None:
        raise ValueError("checkpoint_every needs checkpoint= (a file path to save to)")
    if python_path:
        result = _loop.run_python(
            model, E0, observations, scheme, h, R, key, inflation, mask, steps,
            controls, model_noise, forecast_steps, outputs, plan,
        )
    else:
        result = _compiled(
            model, E0, observations, scheme, h, R, key, inflation, mask, steps,
            controls, model_noise, forecast_steps, outputs, plan,
        )
    times = steps * (float(dt) if dt is not None else 1)
    return result._replace(times=jnp.asarray(times), steps=jnp.asarray(steps))


def _analysis_steps(model, K, steps_per_obs, obs_times) -> np.ndarray:
    """Model-step index of each analysis, (K,) ints, strictly increasing."""
    if K < 1:
        raise ValueError("observations must hold at least one analysis time")
    if obs_times is not None:
        dt = getattr(model, "dt", None)
        if dt is None:
            raise ValueError("obs_times needs a model with a time step `dt`")
        t = np.asarray(obs_times, dtype=float)
        if t.shape != (K,):
            raise ValueError(f"obs_times must have shape (K,) = ({K},), got {t.shape}")
        s = t / float(dt)
        steps = np.rint(s).astype(np.int64)
        if np.any(np.abs(s - steps) > 1e-6 * np.maximum(1.0, np.abs(s))):
            raise ValueError(f"obs_times must be multiples of the model time step dt={dt}")
    else:
        spo = np.asarray(steps_per_obs)
        if not np.issubdtype(spo.dtype, np.integer):
            raise ValueError(f"steps_per_obs must be integers, got {steps_per_obs!r}")
        spo = np.broadcast_to(spo, (K,)) if spo.ndim == 0 else spo
        if spo.shape != (K,):
            raise ValueError(f"steps_per_obs must be an int or have shape ({K},)")
        if np.any(spo < 1):
            raise ValueError(f"steps_per_obs must be positive integers, got {steps_per_obs!r}")
        steps = np.cumsum(spo)
    if np.any(np.diff(np.concatenate([[0], steps])) < 1):
        raise ValueError("analysis times must be strictly increasing and after time 0")
    return steps


def _as_pytree(f):
    """Wrap a plain callable so jit treats it as static; keep pytrees as they are."""
    leaves = jax.tree_util.tree_leaves(f)
    if callable(f) and len(leaves) == 1 and leaves[0] is f:
        return jax.tree_util.Partial(f)
    return f


def _compiled(model, E0, observations, scheme, h, R, key, inflation, mask, steps,
              controls, model_noise, forecast_steps, outputs, plan):
    ys = jnp.asarray(observations, dtype=E0.dtype)
    check_ndim("observations", ys, 2, "(K, m): one row per analysis time")
    K, m = ys.shape
    if mask is None:
        check_finite("observations", ys)
    else:
        mask = jnp.asarray(mask, dtype=bool)
        if mask.shape != (K, m):
            raise ValueError(f"mask must have shape (K, m) = ({K}, {m}), got {mask.shape}")
    out = jax.eval_shape(model, E0[0]) if controls is None else jax.eval_shape(
        model, E0[0], jax.tree_util.tree_map(lambda a: a[0], controls))
    if out.shape != E0.shape[1:]:
        raise ValueError(
            f"model must map one member of shape {E0.shape[1:]} to the same shape, got {out.shape}"
        )
    if isinstance(R, PerTime):
        R_t = PerTime(jax.tree_util.tree_map(lambda a: jnp.asarray(a, E0.dtype), R.value))
    else:
        R_t = as_covariance(R, m).astype(E0.dtype)
    window = isinstance(scheme, over_window)
    if window and (controls is not None or model_noise is not None):
        raise ValueError("over_window does not support controls or model_noise yet")
    inner = scheme.scheme if window else scheme
    n_steps = jnp.asarray(np.diff(np.concatenate([[0], steps])), dtype=jnp.int32)
    if plan is not None:
        return _loop.run_windows(
            _as_pytree(model), E0, ys, mask, n_steps, _as_pytree(inner), _as_pytree(h), R_t,
            key, inflation, controls, model_noise, int(forecast_steps), outputs, window, plan)
    return _run(
        _as_pytree(model), E0, ys, mask, n_steps, _as_pytree(inner), _as_pytree(h), R_t,
        key, inflation, controls, model_noise,
        forecast_steps=int(forecast_steps), outputs=outputs, window=window,
    )


@partial(jax.jit, static_argnames=("forecast_steps", "outputs", "window"))
def _run(model, E0, ys, mask, n_steps, scheme, h, R, key, inflation, controls, noise,
         *, forecast_steps, outputs, window):
    xs = _scan_inputs(ys, mask, n_steps, h, R)
    (E, _), outs = _scan(model, (E0, inflation.init(E0)), xs, scheme, h, R, key, inflation,
                         controls, noise, outputs, window)
    if forecast_steps:
        E = _final_forecast(model, E, n_steps, key, controls, noise, forecast_steps)
    return AssimilationResult(ensemble=E, **outs)


def _scan_inputs(ys, mask, n_steps, h, R) -> dict:
    """The per-cycle inputs of the scan, each with a leading K axis."""
    t_starts = jnp.concatenate([jnp.zeros(1, n_steps.dtype), jnp.cumsum(n_steps)[:-1]])
    return {
        "k": jnp.arange(1, ys.shape[0] + 1),
        "y": ys,
        "mask": mask,
        "n": n_steps,
        "t0": t_starts,
        "h": h.value if isinstance(h, PerTime) else None,
        "R": R.value if isinstance(R, PerTime) else None,
    }


def _final_forecast(model, E, n_steps, key, controls, noise, forecast_steps):
    """The forecast-only steps after the last analysis (keys of cycle K + 1)."""
    k_noise = None if key is None else jax.random.fold_in(key, n_steps.shape[0] + 1)
    return _cycle.forecast(model, E, forecast_steps, t0=jnp.sum(n_steps),
                           controls=controls, noise=noise, key=k_noise)


@partial(jax.jit, static_argnames=("outputs", "window"))
def _run_window(model, carry, xs, scheme, h, R, key, inflation, controls, noise,
                *, outputs, window):
    """The cycles of one checkpoint window: ``xs`` is a slice of ``_scan_inputs``."""
    return _scan(model, carry, xs, scheme, h, R, key, inflation, controls, noise,
                 outputs, window)


_final_forecast_jit = jax.jit(_final_forecast, static_argnames=("forecast_steps",))


def _scan(model, carry, xs, scheme, h, R, key, inflation, controls, noise, outputs, window):
    """``lax.scan`` of the cycle over ``xs`` from carry (E, inflation state)."""

    def body(carry, x):
        E, state = carry
        h_k = x["h"] if isinstance(h, PerTime) else h
        R_k = x["R"] if isinstance(R, PerTime) else R
        keys, k_noise = _cycle.cycle_keys(key, x["k"])
        t_obs = x["t0"] + x["n"]
        if controls is not None and callable(h_k):
            u = jax.tree_util.tree_map(lambda a: a[t_obs], controls)
            h_k = partial(_call_with, h_k, u)
        fc = partial(_cycle.forecast, model, n_steps=x["n"], t0=x["t0"],
                     controls=controls, noise=noise, key=k_noise)
        Ef = fc(E)
        if window:
            h_win = partial(_through_model, fc, h_k)
            run = lambda: _window_analysis(  # noqa: E731
                scheme, h_win, h_k, x["y"], R_k, x["mask"], inflation, state, keys, E, Ef,
                fc, outputs)
        else:
            run = lambda: _cycle.analyse(  # noqa: E731
                scheme, h_k, x["y"], R_k, x["mask"], inflation, state, keys, Ef, outputs)
        if x["mask"] is None:
            Ea, state, out = run()
        else:
            skip = lambda: (Ef, state, _cycle.statistics(  # noqa: E731
                outputs, Ef, Ef, Ef, *_cycle.masked_problem(h_k, x["y"], R_k, x["mask"])))
            Ea, state, out = jax.lax.cond(jnp.any(x["mask"]), run, skip)
        return (Ea, state), out

    return jax.lax.scan(body, carry, xs)


def _call_with(h, u, x):
    return h(x, u)


def _through_model(fc, h, x):
    """h ∘ M for one member (the forecast of a one-member ensemble)."""
    return observe(h, fc(x[None]))[0]


def _window_analysis(scheme, h_win, h, y, R, mask, inflation, state, keys, E, Ef, fc, outputs):
    """over_window: update the previous analysis with h ∘ M, then forecast it."""
    k_scheme, k_before, k_after = keys
    hm, ym, Rm = _cycle.masked_problem(h_win, y, R, mask)
    Eb, state = inflation.before_analysis(state, k_before, E, ym, hm, Rm, mask)
    kwargs = {} if k_scheme is None else {"key": k_scheme}
    Es = scheme(Eb, ym, hm, Rm, **kwargs)
    Ea = fc(Es)
    Ea, state = inflation.after_analysis(state, k_after, Ef, Ea)
    return Ea, state, _cycle.statistics(
        outputs, Ef, Ef, Ea, *_cycle.masked_problem(h, y, R, mask))
