"""The public entry of the cycling driver: ``assimilate``.

It validates every argument once, at the door, builds the two pytrees that
describe the run (``CycleSettings``, ``ObservationRecord``) and hands them
to one of two paths that share the same cycle (``enkit.assimilation.cycle``):

- compiled (``enkit.assimilation.compiled``): a JAX-traceable model and
  observations as one (K, m) array (padded, with a mask, when the network
  changes) → one ``lax.scan``, compiled once per shape;
- Python (``enkit.assimilation.python_loop``): a black-box model
  (``BlackBoxModel``, members evaluated through an executor) or ragged
  observations (a list of (m_k,) arrays) → a Python loop over cycles whose
  analyses are still compiled.

With ``checkpoint=path`` either path saves its state atomically after every
window of ``checkpoint_every`` cycles (``enkit.assimilation.checkpoint``; the
compiled scan then runs window by window) and a later call resumes it bit
for bit. With ``smoother=`` the same cycles also carry a smoother
(``enkit.smoothers``), which updates past ensembles with each analysis.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_float, check_ndim, check_spread, is_concrete
from enkit._progress import progress_bar
from enkit.assimilation import compiled, cycle, python_loop
from enkit.assimilation.checkpoint import checkpoint_plan, config_fingerprints
from enkit.assimilation.types import (
    AssimilationResult,
    BlackBoxModel,
    CycleSettings,
    NonFiniteError,
    ObservationRecord,
    PerTime,
    RunInfo,
    as_pytree,
    describe,
    is_particle,
    is_stochastic,
    over_window,
    scheme_flag,
)
from enkit.covariance import Covariance, as_covariance
from enkit.filters._common import SPREAD_ADVICE, ObservationOperator
from enkit.inflation import (
    AdditiveAnalysis,
    AdditiveForecast,
    InflationStep,
    MultiplicativeAnalysis,
    NoInflation,
)

__all__ = ["OUTPUTS", "PreparedRun", "assimilate", "prepare"]

OUTPUTS = cycle.OUTPUTS


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
    store: Sequence[str] = cycle.DEFAULT_OUTPUTS,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    smoother: Any = None,
    on_nonfinite: str = "raise",
    progress: bool = False,
    remat: str | int | None = None,
) -> AssimilationResult:
    """Cycle an ensemble through forecasts and analyses.

    For each analysis time k = 1..K, with keys derived from
    ``kₖ = fold_in(key, k)``:

        E ← model^{sₖ}(E) (+ model noise after every step)
        E ← inflation.before_analysis(E) → scheme(E, yₖ, h, R) → inflation.after_analysis

    Then ``forecast_steps`` more model steps with no analysis.

    model: one model step of one member, ``(n,) -> (n,)`` (``(x, u)`` with
    controls): JAX-traceable (compiled with the cycle) or a ``BlackBoxModel``;
    or a stochastic model (``stochastic = True``, called ``model(key, x)``:
    ``enkit.models.OrnsteinUhlenbeck``, ``DoubleWell``), which gets its own
    key per member and step from ``key`` (required).
    E0: (N, n) initial ensemble. observations: (K, m) array, or a list of
    K arrays of varying length m_k (Python path, h and R lists too).
    scheme: an L1 scheme with the uniform signature (bind options with
    ``functools.partial``), or ``over_window(scheme)``; or a particle
    scheme (``enkit.particle.bootstrap_pf``, ``optimal_proposal_pf``),
    whose log-weights the cycles carry and store (``log_weights``, ``ess``;
    means and spreads weighted; no inflation, smoother, checkpoint or
    Python path yet).
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
    "APosterioriCovariance", "CostFunctionJo", "CurrentOptimum" are accepted
    as aliases with ADAO's meaning, in enkit's layout; the running-optimum
    outputs, e.g. "optimum_mean", follow the cycle of lowest cost_J so far;
    "smoothed_mean", "smoothed_spread" and "smoothed_ensemble" need
    ``smoother``).

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

    smoother: None (a filter), or a smoother step from ``enkit.smoothers``
    (``LagSmoother``, ``RTSSmoother``) that the cycles carry: it fills the
    result's smoothed outputs (``enkit.enks`` and ``enkit.ensemble_rts``
    call ``assimilate`` with one). The filter outputs are those of the same
    run without it (to round-off: a smoother that needs the analysis
    transform runs the scheme on n + N columns).

    on_nonfinite: what a run does when its ensemble stops being finite (a
    model that diverges, an analysis or inflation that produces NaN/inf).
    Every cycle checks that the ensemble it hands on is finite (one
    reduction, stored as the result's ``nonfinite`` codes; measured at
    0-2% of a Lorenz-96 ETKF run, benchmarks/nonfinite_check.py); for the
    first cycle that failed the driver finds the stage (forecast, either
    inflation step, analysis) by running that cycle again with every stage
    checked (the Python path checks every stage as it goes). "raise" (default): raise ``NonFiniteError``
    naming the first such cycle, its time and the stage, with the outputs
    of the cycles before it in ``err.result``; the Python path stops at
    that cycle and a checkpointed run saves nothing from the failing
    window on, so its checkpoint holds the last finite state. "warn": warn
    (``RuntimeWarning``) with the same message and return the whole run.
    "ignore": no check (``nonfinite`` is None). Under ``jax.jit`` or
    ``jax.grad`` of a whole ``assimilate`` call the values are unknown
    when it returns: read ``result.nonfinite`` instead.

    progress: True shows a progress bar (tqdm, on standard error, only when
    that is a terminal): the Python path counts cycles; the compiled path
    then runs its scan in about 100 windows (two compilations, the results
    bit-identical to one scan; none of this under ``jit`` of the whole call).

    remat: what reverse-mode differentiation (``jax.grad`` of a loss of the
    run) keeps in memory, compiled path only; the values and derivatives
    are the same for every choice (``jax.checkpoint``). None (default):
    every cycle's intermediate values (every model step's, every
    analysis's): memory grows with K times a cycle's work. "cycle": only
    the carry (ensemble, inflation and smoother state) of every cycle, each
    cycle computed once more on the way back. An int L: the carry at every
    L-th cycle, and inside the segment being differentiated at each of its
    L cycles (memory O(K/L + L) carries; L ≈ √K gives O(√K); each cycle
    computed twice more). Measured on a 1,000-cycle Lorenz-96 ETKF run in
    benchmarks/remat_memory.py. The stored outputs are kept whatever remat.
    """
    run = prepare(model, E0, observations, scheme, h=h, R=R, key=key, inflation=inflation,
                  mask=mask, steps_per_obs=steps_per_obs, obs_times=obs_times,
                  controls=controls, model_noise=model_noise, forecast_steps=forecast_steps,
                  store=store, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                  resume=resume, smoother=smoother, on_nonfinite=on_nonfinite, remat=remat)
    stop = on_nonfinite == "raise"
    K = len(run.steps)
    bar = progress_bar(K, desc="assimilate", enabled=bool(progress) and is_concrete(run.E0))
    try:
        if run.python_path:
            result = python_loop.run(run.settings, run.record, run.E0, run.key,
                                     run.forecast_steps, run.outputs, run.plan,
                                     stop_on_nonfinite=stop,
                                     on_cycle=None if bar.disable else bar.update)
        elif run.plan is not None or (not bar.disable and K > 1):
            result = compiled.run_windows(run.settings, run.record, run.E0, run.key,
                                          run.forecast_steps, run.outputs, run.plan,
                                          stop_on_nonfinite=stop, every=_progress_window(K),
                                          on_window=None if bar.disable else bar.update)
        else:
            result = compiled.run(run.settings, run.record, run.E0, run.key,
                                  forecast_steps=run.forecast_steps, outputs=run.outputs)
    finally:
        bar.close()
    result = result._replace(times=jnp.asarray(run.times[:_rows(result, K)]),
                             steps=jnp.asarray(run.steps[:_rows(result, K)]),
                             info=_run_info(scheme, smoother, model, inflation, model_noise,
                                            run, store, on_nonfinite))
    return _check_nonfinite(result, on_nonfinite, run)


def _run_info(scheme, smoother, model, inflation, model_noise, run, store,
              on_nonfinite) -> RunInfo:
    """The result's ``RunInfo``: what made it, as short texts."""
    inner = scheme.scheme if isinstance(scheme, over_window) else scheme
    method = describe(inner) + (" over the window" if isinstance(scheme, over_window) else "")
    if smoother is not None:
        method += f" + {describe(smoother)}"
    spo = np.diff(np.concatenate([[0], np.asarray(run.steps)]))
    steps = str(int(spo[0])) if np.all(spo == spo[0]) else "varying"
    options = (("model", describe(model)), ("inflation", describe(inflation)),
               ("model_noise", describe(model_noise)), ("steps_per_obs", steps),
               ("forecast_steps", str(run.forecast_steps)),
               ("store", ", ".join(store)), ("on_nonfinite", on_nonfinite))
    return RunInfo("assimilation" if smoother is None else "smoother", method, options)


def _progress_window(K: int) -> int:
    """Cycles per window of a compiled run with a progress bar: about K/100,
    a divisor of K when one is near (then one compilation, not two)."""
    w = -(-K // 100)
    return next((d for d in range(w, 2 * w + 1) if K % d == 0), w)


def _rows(result: AssimilationResult, K: int) -> int:
    """How many cycles a (possibly stopped) run returned."""
    codes = result.nonfinite
    return K if codes is None else len(codes)


def _check_nonfinite(result: AssimilationResult, mode: str, run) -> AssimilationResult:
    """Raise or warn (``mode``) when the finite-check found NaN/inf."""
    codes = result.nonfinite
    if mode == "ignore" or codes is None or not is_concrete(codes):
        return result
    codes = np.asarray(codes)
    K = len(run.steps)
    bad = np.flatnonzero(codes)
    if bad.size:
        k = int(bad[0])
        code = int(codes[k])
        if code == cycle.UNKNOWN and not run.python_path:
            code = compiled.failing_stage(run.settings, run.record, run.E0, run.key, k)
            codes = codes.copy()
            codes[k] = code
            result = result._replace(nonfinite=jnp.asarray(codes))
        cycle_no, stage, time = k + 1, cycle.STAGES[code], float(run.times[k])
        when = f"cycle {cycle_no} of {K} (analysis time {time:g}, model step {run.steps[k]})"
    elif run.forecast_steps and result.ensemble is not None and is_concrete(result.ensemble) \
            and not np.all(np.isfinite(np.asarray(result.ensemble))):
        k, cycle_no, stage, time = K, K + 1, cycle.STAGES[cycle.FINAL_FORECAST], None
        when = f"the {run.forecast_steps} forecast-only steps after the last analysis"
    else:
        return result
    hint = {
        "forecast": "the model diverged: check the model and its time step, the size of the "
                    "ensemble's perturbations and model_noise",
        "forecast after the last analysis": "the model diverged: check the model and its "
                                            "time step",
        "analysis": "check h, R and the observations of that cycle (an h that returns NaN/inf "
                    "for some member?)" + (
                        "; a particle scheme returns NaN particles when it cannot weight "
                        "them (weight degeneracy: every likelihood zero, or a NaN one): "
                        "check y against h(E) and R, or use more particles"
                        if is_particle(run.settings.scheme) else ""),
        "inflation before the analysis": "check the inflation's parameters",
        "inflation after the analysis": "check the inflation's parameters",
    }.get(stage, "re-running it did not reproduce the failure; run it with "
                 "on_nonfinite='warn' and store the ensembles to look at it")
    message = (f"assimilate: the ensemble holds NaN or inf after the {stage} at {when}; "
               f"{hint}.")
    if mode == "warn":
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return result
    saved = ""
    if run.plan is not None:
        saved = f" The checkpoint {os.fspath(run.plan.path)} keeps the last finite state."
    raise NonFiniteError(
        message + f" The outputs of the {k} cycles before it are in the error's .result "
        "(on_nonfinite='warn' returns the whole run)." + saved,
        cycle=cycle_no, stage=stage, time=time, result=_first_cycles(result, k))


def _first_cycles(result: AssimilationResult, k: int) -> AssimilationResult:
    """``result`` cut to its first k cycles, without the final ensemble and the
    smoothed outputs."""
    fields = {}
    for name, value in result._asdict().items():
        drop = name == "ensemble" or name in cycle.SMOOTHED_OUTPUTS or value is None
        fields[name] = value if name == "info" else None if drop else value[:k]
    return AssimilationResult(**fields)


class PreparedRun(NamedTuple):
    """A validated run, ready for one of the paths (``prepare``).

    settings, record: the run's two pytrees (on the compiled path their
    callables are wrapped as pytrees and the record holds JAX arrays);
    E0, key: the initial ensemble and PRNG key (or None); outputs: the
    statistics to store; steps: (K,) model-step index of each analysis and
    times the same in model time units; forecast_steps; plan: the
    checkpoint plan or None; python_path: True for the Python loop.
    """

    settings: CycleSettings
    record: ObservationRecord
    E0: Any
    key: Any
    outputs: tuple
    steps: np.ndarray
    times: np.ndarray
    forecast_steps: int
    plan: Any
    python_path: bool


def prepare(model, E0, observations, scheme, *, h, R, key=None, inflation=None, mask=None,
            steps_per_obs=1, obs_times=None, controls=None, model_noise=None, forecast_steps=0,
            store=cycle.DEFAULT_OUTPUTS, checkpoint=None, checkpoint_every=None, resume=True,
            smoother=None, on_nonfinite="raise", remat=None) -> PreparedRun:
    """Validate ``assimilate``'s arguments (same meaning) and build the run's
    pytrees, without running anything: every error a run can raise about
    its inputs is raised here, before any model step."""
    if on_nonfinite not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_nonfinite must be 'raise', 'warn' or 'ignore', got {on_nonfinite!r}")
    _check_remat(remat)
    outputs = cycle.resolve_outputs(store)
    smoothed = tuple(name for name in outputs if name in cycle.SMOOTHED_OUTPUTS)
    outputs = tuple(name for name in outputs if name not in cycle.SMOOTHED_OUTPUTS)
    if on_nonfinite != "ignore":
        outputs = (*outputs, cycle.NONFINITE)
    if smoothed and smoother is None:
        raise ValueError(f"{', '.join(smoothed)} need a smoother: use enkit.enks or "
                         "enkit.ensemble_rts, or pass smoother=")
    if smoother is not None:
        smoother = smoother.with_outputs(smoothed)
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
        factor = jnp.asarray(inflation, E0.dtype)
        if factor.shape not in ((), (E0.shape[1],)) or (is_concrete(factor) and not (
                np.all(np.isfinite(factor)) and np.all(np.asarray(factor) > 0))):
            raise ValueError(
                "inflation as a number is the factor λ multiplying the analysis anomalies "
                f"(1: none): a finite value > 0, scalar or of shape ({E0.shape[1]},); got "
                f"{inflation!r}")
        inflation = MultiplicativeAnalysis(factor)
    if not isinstance(forecast_steps, (int, np.integer)) or forecast_steps < 0:
        raise ValueError(f"forecast_steps must be a non-negative integer, got {forecast_steps!r}")
    if model_noise is not None:
        model_noise = as_covariance(model_noise, E0.shape[1], name="model_noise")
        model_noise = model_noise.astype(E0.dtype)
        if key is None:
            raise TypeError("model_noise draws random numbers: pass key=")
    stochastic = is_stochastic(model)
    if stochastic and key is None:
        raise TypeError(f"model is stochastic ({type(model).__name__} is called model(key, x), "
                        "a key per member per step): pass key=")
    if stochastic and isinstance(scheme, over_window):
        raise ValueError("over_window does not support a stochastic model yet")
    _check_spread(E0, model_noise is not None or stochastic, inflation)
    ragged = isinstance(observations, (list, tuple))
    if ragged and "simulated_obs_optimum" in outputs:
        raise ValueError("simulated_obs_optimum needs a (K, m) observation array (with mask= "
                         "for absent values): with ragged observations its length changes "
                         "with the optimum")
    if ragged:
        observations, mask = _ragged_observations(observations, mask, E0.dtype)
    else:
        check_ndim("observations", observations, 2,
                   "(K, m): one row per analysis time (or a list of K (m_k,) arrays)")
        if mask is not None and not isinstance(mask, PerTime):
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != np.shape(observations):
                raise ValueError(f"mask must have shape (K, m) = {np.shape(observations)} like "
                                 f"observations, got shape {mask.shape}")
        if is_concrete(observations):
            values = np.asarray(observations)
            masks = None if mask is None or isinstance(mask, PerTime) else mask
            _check_observed_finite(values, masks)
    K = len(observations) if ragged else np.shape(observations)[0]
    steps = analysis_steps(model, K, steps_per_obs, obs_times)
    dt = getattr(model, "dt", None)
    if controls is not None:
        total = int(steps[-1]) + forecast_steps + 1
        for leaf in jax.tree_util.tree_leaves(controls):
            if np.shape(leaf)[:1] != (total,):
                raise ValueError(
                    f"controls must have a leading axis of total model steps + 1 = {total}, "
                    f"got a leaf of shape {np.shape(leaf)}"
                )
    window = isinstance(scheme, over_window)
    inner = scheme.scheme if window else scheme
    python_path = isinstance(model, BlackBoxModel) or ragged
    if is_particle(inner):
        outputs = _particle_outputs(outputs, window=window, smoother=smoother,
                                    inflation=inflation, python_path=python_path,
                                    checkpoint=checkpoint)
        if model_noise is not None and scheme_flag(inner, "adds_model_noise"):
            raise ValueError(
                f"{describe(inner)} draws the model noise itself (bind Q to it): give no "
                "model_noise=, or the noise would be added twice")
    else:
        wrong = [name for name in outputs if name in cycle.PARTICLE_OUTPUTS]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} are outputs of a particle scheme "
                             "(enkit.particle.bootstrap_pf, optimal_proposal_pf)")
    if smoother is not None:
        smoother.check(K=K, scheme=inner)
    if python_path and remat is not None:
        raise ValueError("remat applies to the compiled path (a JAX model and a (K, m) "
                         "observation array); a black-box model or ragged observations "
                         "run in a Python loop")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    plan = None
    if checkpoint is not None:
        config = config_fingerprints(
            model, E0, observations, scheme, h, R, key, inflation, mask, steps,
            forecast_steps, controls, model_noise, outputs, smoother)
        plan = checkpoint_plan(checkpoint, checkpoint_every, resume,
                               1 if python_path else 100, config)
    elif checkpoint_every is not None:
        raise ValueError("checkpoint_every needs checkpoint= (a file path to save to)")
    n_steps = np.diff(np.concatenate([[0], steps]))
    settings = CycleSettings(model=model, scheme=inner, inflation=inflation,
                             model_noise=model_noise, smoother=smoother, window=window,
                             max_steps=int(np.max(n_steps)),
                             remat=remat)
    if python_path:
        record = ObservationRecord(values=observations, mask=mask, h=h, R=R, n_steps=n_steps,
                                   controls=controls)
    else:
        settings, record = _compiled_run(settings, E0, observations, h, R, mask, n_steps,
                                         controls)
    times = steps * (float(dt) if dt is not None else 1)
    return PreparedRun(settings, record, E0, key, outputs, steps, times, int(forecast_steps),
                       plan, python_path)


def _particle_outputs(outputs, *, window, smoother, inflation, python_path, checkpoint):
    """The outputs of a particle run (its log-weights and ESS always among
    them), after refusing what a particle run does not support yet."""
    from enkit.assimilation.particles import SUPPORTED  # noqa: PLC0415

    if window:
        raise ValueError("over_window does not support particle schemes")
    if smoother is not None:
        raise ValueError("smoothers do not support particle schemes yet")
    if not isinstance(inflation, NoInflation):
        raise ValueError("a particle scheme takes no inflation (its resampled particles are "
                         "jittered by the scheme's reg= option instead)")
    if python_path:
        raise ValueError("particle schemes run on the compiled path only (a JAX model and "
                         "a (K, m) observation array, with mask= for absent values)")
    if checkpoint is not None:
        raise ValueError("checkpoints do not support particle schemes yet")
    wrong = [name for name in outputs if name not in SUPPORTED]
    if wrong:
        raise ValueError(f"a particle run cannot store {', '.join(wrong)}; it stores "
                         f"{', '.join(n for n in SUPPORTED if n != cycle.NONFINITE)}")
    return (*outputs, *(name for name in cycle.PARTICLE_OUTPUTS if name not in outputs))


def _check_remat(remat) -> None:
    if remat is None or remat == "cycle":
        return
    if isinstance(remat, (bool, np.bool_)) or not isinstance(remat, (int, np.integer)) \
            or remat < 1:
        raise ValueError(f"remat must be None, 'cycle' or a positive int (cycles per "
                         f"checkpointed segment), got {remat!r}")


def _check_spread(E0, noisy_forecast: bool, inflation) -> None:
    """Refuse an initial ensemble of identical members when nothing in the
    run adds spread (model noise, a stochastic model, additive inflation):
    its anomalies are zero, so no analysis can move it."""
    if noisy_forecast or _adds_spread(inflation):
        return
    check_spread("E0", E0, consequence="every analysis would leave it unchanged",
                 advice=SPREAD_ADVICE + ", or give model_noise= or an additive inflation step")


def _adds_spread(step) -> bool:
    """True for an inflation step that draws new perturbations (additive)."""
    if isinstance(step, (AdditiveForecast, AdditiveAnalysis)):
        return True
    return any(_adds_spread(s) for s in getattr(step, "steps", ()))


def _check_observed_finite(values, masks) -> None:
    """Every present observation must be finite. values: (K, m) array or a
    list of K (m_k,) arrays; masks likewise (True: present) or None."""
    bad = []
    for k, y in enumerate(values):
        y = np.asarray(y)
        wrong = ~np.isfinite(y)
        if masks is not None:
            wrong &= np.asarray(masks[k], dtype=bool)
        if wrong.any():
            bad.append((k, np.flatnonzero(wrong)))
    if not bad:
        return
    count = sum(len(pos) for _, pos in bad)
    where = "; ".join(f"observations[{k}] (cycle {k + 1}) at positions {pos[:8].tolist()}"
                      + (" ..." if len(pos) > 8 else "") for k, pos in bad[:3])
    more = f"; and {len(bad) - 3} more cycles" if len(bad) > 3 else ""
    fix = ("mark missing values absent with mask=False there" if masks is None else
           "the mask says they are present: set mask=False there")
    counted = "1 value is" if count == 1 else f"{count} values are"
    raise ValueError(f"observations must be finite where present, but {counted} NaN or inf: "
                     f"{where}{more}; {fix}")


def _ragged_observations(observations, mask, dtype):
    """Validate a list of K (m_k,) observation arrays and their mask (a list
    of K (m_k,) boolean arrays, ``per_time`` of one, or a (K, m) array when
    every m_k = m); returns both as lists (mask None stays None)."""
    K = len(observations)
    ys = []
    for k, y in enumerate(observations):
        check_ndim(f"observations[{k}]", y, 1, "(m_k,): the observations of one analysis time")
        ys.append(np.asarray(y, dtype=dtype))
    masks = None
    if mask is not None:
        value = mask.value if isinstance(mask, PerTime) else mask
        if isinstance(value, (list, tuple)):
            if len(value) != K:
                raise ValueError(f"mask as a list must hold K={K} entries (one (m_k,) boolean "
                                 f"array per analysis time), got {len(value)}")
            masks = [np.asarray(v, dtype=bool) for v in value]
        else:
            a = np.asarray(value, dtype=bool)
            sizes = {y.shape[0] for y in ys}
            if a.ndim != 2 or a.shape[0] != K or len(sizes) != 1 or a.shape[1] not in sizes:
                raise ValueError(
                    f"mask must be a list of K={K} boolean arrays shaped like the "
                    "observations ((m_k,) each), or a (K, m) array when every analysis time "
                    f"has the same m; got an array of shape {a.shape} for observations of "
                    f"sizes {sorted(sizes)}")
            masks = list(a)
        for k, (y, m_k) in enumerate(zip(ys, masks)):
            if m_k.shape != y.shape:
                raise ValueError(f"mask[{k}] must have shape (m_k,) = {y.shape} like "
                                 f"observations[{k}], got shape {m_k.shape}")
    _check_observed_finite(ys, masks)
    return ys, masks


def analysis_steps(model, K, steps_per_obs, obs_times) -> np.ndarray:
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


def _compiled_run(settings, E0, observations, h, R, mask, n_steps, controls):
    """Validate the compiled path's inputs; its settings and record."""
    ys = jnp.asarray(observations, dtype=E0.dtype)
    K, m = ys.shape
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
    model = settings.model
    args = (E0[0],) if controls is None else (
        E0[0], jax.tree_util.tree_map(lambda a: a[0], controls))
    if is_stochastic(model):  # the key's shape only: eval_shape draws nothing
        args = (jax.ShapeDtypeStruct((), jax.random.key(0).dtype), *args)
    out = jax.eval_shape(model, *args)
    if out.shape != E0.shape[1:]:
        raise ValueError(
            f"model must map one member of shape {E0.shape[1:]} to the same shape, got {out.shape}"
        )
    if m == 0:  # no observations at all: every cycle is a forecast-only step
        R_t = None
    elif isinstance(R, PerTime):
        R_t = PerTime(jax.tree_util.tree_map(lambda a: jnp.asarray(a, E0.dtype), R.value))
    else:
        R_t = as_covariance(R, m).astype(E0.dtype)
    if settings.window and (controls is not None or settings.model_noise is not None):
        raise ValueError("over_window does not support controls or model_noise yet")
    settings = dataclasses.replace(settings, model=as_pytree(model),
                                   scheme=as_pytree(settings.scheme))
    record = ObservationRecord(values=ys, mask=mask, h=as_pytree(h), R=R_t,
                               n_steps=jnp.asarray(n_steps, dtype=jnp.int32), controls=controls)
    return settings, record
