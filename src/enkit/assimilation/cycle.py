"""Pieces of one assimilation cycle shared by the compiled and Python drivers.

Private: ``assimilate`` and the smoothers compose them. A cycle is

    forecast (model steps, optional additive model noise)
    → inflation.before_analysis → scheme → inflation.after_analysis
    → the requested per-time outputs
    → the running outputs (``close_cycle``: the optimum of lowest cost so
    far, carried from cycle to cycle, and the cycle number)
    (→ the smoother step, which applies the analysis's ensemble transform
    to the past ensembles it carries).

Absent observations (``mask`` False) are neutralised before the scheme sees
them: their simulated value and observed value become 0 and their error
variance 1 with no correlation. Their observation anomalies are then exactly
zero, so they enter every scheme only multiplied by zero and have exactly no
effect, whatever placeholder values they held (NaN included).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from enkit._random import fold_in
from enkit.assimilation.types import is_stochastic
from enkit.covariance import Covariance, Dense, Diagonal, Scalar
from enkit.ensemble import ensemble_mean, ensemble_spread, scaled_anomalies
from enkit.filters._common import observe
from enkit.filters.ensemble_space import analysis_transform

# Output names and the ADAO names accepted as aliases of them (an alias has
# ADAO's meaning; where enkit's layout differs, ``AssimilationResult`` says how).
OUTPUTS = {
    "forecast_mean": (),
    "analysis_mean": ("Analysis",),
    "forecast_spread": (),
    "analysis_spread": (),
    "forecast_ensemble": ("ForecastState",),
    "analysis_ensemble": ("CurrentState",),
    "forecast_covariance": ("ForecastCovariance",),
    "analysis_covariance": ("APosterioriCovariance",),
    "analysis_correlations": ("APosterioriCorrelations",),
    "analysis_variances": ("APosterioriVariances",),
    "analysis_std": ("APosterioriStandardDeviations",),
    "bma": ("BMA",),
    "innovation_forecast": (),
    "innovation_analysis": ("InnovationAtCurrentAnalysis",),
    "innovation_forecast_ensemble": ("InnovationAtCurrentState",),
    "simulated_obs_forecast": (),
    "simulated_obs_analysis": ("SimulatedObservationAtCurrentAnalysis",),
    "simulated_obs_forecast_ensemble": ("SimulatedObservationAtCurrentState",),
    "cost_J": ("CostFunctionJ",),
    "cost_Jb": ("CostFunctionJb",),
    "cost_Jo": ("CostFunctionJo",),
    "optimum_mean": ("CurrentOptimum",),
    "simulated_obs_optimum": ("SimulatedObservationAtCurrentOptimum",),
    "cost_J_optimum": ("CostFunctionJAtCurrentOptimum",),
    "cost_Jb_optimum": ("CostFunctionJbAtCurrentOptimum",),
    "cost_Jo_optimum": ("CostFunctionJoAtCurrentOptimum",),
    "index_of_optimum": ("IndexOfOptimum",),
    "cycle_number": ("CurrentIterationNumber", "CurrentStepNumber"),
    "innovation_chi2": (),
    "log_likelihood": (),
    "dfs": (),
}
# The running-optimum outputs ("lowest cost_J so far") and the entry of the
# optimum's state (``init_optimum``) each one reads.
OPTIMUM_OUTPUTS = {
    "optimum_mean": "analysis_mean",
    "simulated_obs_optimum": "simulated_obs_analysis",
    "cost_J_optimum": "cost_J",
    "cost_Jb_optimum": "cost_Jb",
    "cost_Jo_optimum": "cost_Jo",
    "index_of_optimum": "index",
}
CYCLE_NUMBER = "cycle_number"
# Outputs computed by ``enkit.diagnostics`` from the ensemble the scheme received.
_DIAGNOSTICS = ("innovation_chi2", "log_likelihood", "dfs")
DEFAULT_OUTPUTS = ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread")
# Filled by a smoother (``assimilate(smoother=...)``), not by the cycle's statistics.
SMOOTHED_OUTPUTS = ("smoothed_mean", "smoothed_spread", "smoothed_ensemble")
# Filled by a particle scheme only (``enkit.particle``; see ``assimilation.particles``).
PARTICLE_OUTPUTS = ("log_weights", "ess")
_ALIASES = {alias: name for name, aliases in OUTPUTS.items() for alias in aliases}

# The finite-check (``assimilate(on_nonfinite=...)``): an internal output
# holding, per cycle, 0 when the ensemble stayed finite, else the code of the
# first stage whose result held NaN or inf.
NONFINITE = "nonfinite"
STAGES = {
    1: "forecast",
    2: "inflation before the analysis",
    3: "analysis",
    4: "inflation after the analysis",
    5: "forecast after the last analysis",
    9: "cycle (its stage is found by the driver, which re-runs the cycle)",
}
FORECAST, INFLATION_BEFORE, ANALYSIS, INFLATION_AFTER, FINAL_FORECAST = 1, 2, 3, 4, 5
UNKNOWN = 9  # the compiled scan's code: not finite, stage not looked for


def resolve_outputs(store) -> tuple[str, ...]:
    """Canonical output names for ``store`` (enkit names or ADAO aliases;
    the smoothed and the particle ones included)."""
    if isinstance(store, str):
        store = (store,)
    names = []
    for s in store:
        known = s in OUTPUTS or s in SMOOTHED_OUTPUTS or s in PARTICLE_OUTPUTS
        name = s if known else _ALIASES.get(s)
        if name is None:
            valid = (sorted(OUTPUTS) + list(SMOOTHED_OUTPUTS) + list(PARTICLE_OUTPUTS)
                     + sorted(_ALIASES))
            raise ValueError(f"unknown output {s!r}; valid names: {', '.join(valid)}")
        if name not in names:
            names.append(name)
    return tuple(names)


def masked_problem(h, y, R: Covariance, mask):
    """(h, y, R) with absent observations neutralised (see module docstring)."""
    if mask is None:
        return h, y, R
    w = mask.astype(y.dtype)

    def h_masked(x):
        return jnp.where(mask, observe(h, x[None])[0], 0.0)

    y = jnp.where(mask, y, 0.0)
    if isinstance(R, Scalar):
        R = Diagonal(jnp.where(mask, R.variance, 1.0))
    elif isinstance(R, Diagonal):
        R = Diagonal(jnp.where(mask, R.variances, 1.0))
    else:
        R = Dense(R.dense() * w[:, None] * w[None, :] + jnp.diag(1.0 - w))
    return h_masked, y, R


def forecast(model, E, n_steps, *, t0, controls, noise, key, max_steps=None):
    """Advance every member ``n_steps`` model steps from global step ``t0``.

    model(x) or model(x, u) with u = controls at the step's start time
    (a stochastic model: model(key, x) or model(key, x, u), see
    ``_model_step``); key: the cycle's model key (needed by model noise and
    by a stochastic model);
    noise: covariance operator Q of additive model error drawn after every
    step (key required), or None. ``n_steps`` may be traced; then
    ``max_steps`` (a static bound on it, or None) makes the loop
    differentiable in reverse mode (``bounded_loop``).
    """
    args = (model, controls, noise, key, t0)
    if max_steps is None or isinstance(n_steps, (int, np.integer)):
        return jax.lax.fori_loop(0, n_steps, partial(_model_step, args=args), E)
    return bounded_loop(_model_step, n_steps, E, max_steps, args)


def _model_step(j, E, args):
    """Model step j of the forecast (args: model, controls, noise, key, t0).

    A stochastic model (``is_stochastic``) is called ``model(key_i, x_i)``
    with member i's key ``split(k_model, N)[i]``, where ``k_model, k_noise =
    split(fold_in(key, j))``; the additive model noise then draws from
    k_noise. A deterministic model leaves ``fold_in(key, j)`` to the noise,
    as it always did."""
    model, controls, noise, key, t0 = args
    k_noise = None if key is None else fold_in(key, j)
    u = None if controls is None else jax.tree_util.tree_map(lambda a: a[t0 + j], controls)
    if is_stochastic(model):
        k_model, k_noise = jax.random.split(k_noise)
        keys = jax.random.split(k_model, E.shape[0])
        if controls is None:
            E = jax.vmap(model)(keys, E)
        else:
            E = jax.vmap(lambda k, x: model(k, x, u))(keys, E)
    elif controls is None:
        E = jax.vmap(model)(E)
    else:
        E = jax.vmap(lambda x: model(x, u))(E)
    if noise is not None:
        E = E + noise.sample(k_noise, (E.shape[0],))
    return E


def bounded_loop(step, n, x, max_steps: int, args=()):
    """``fori_loop(0, n, lambda j, x: step(j, x, args=args), x)`` for a
    traced ``n ≤ max_steps`` (static), differentiable in forward and
    reverse mode.

    The loop itself is the dynamic ``fori_loop`` (a ``while_loop``: n steps,
    no more); its derivative is taken through the same steps in a ``scan``
    of ``max_steps``, where step j ≥ n is a ``cond`` that keeps the state,
    so reverse mode, which needs static bounds, works, and a run that is not
    differentiated pays nothing for the bound. ``args`` (a pytree: the
    model, keys, step counters, controls) is passed explicitly, and arrays
    that ``step`` closes over (e.g. a parameter captured by a model written
    as a lambda) are made explicit too (``jax.closure_convert``), so
    derivatives with respect to both flow through the rule.
    """
    n = jnp.asarray(n)
    converted, consts = jax.closure_convert(lambda j, x, a: step(j, x, args=a),
                                            jnp.zeros((), n.dtype), x, args)
    return _dynamic_loop(converted, max_steps, n, x, args, tuple(consts))


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _dynamic_loop(step, max_steps, n, x, args, consts):
    return jax.lax.fori_loop(0, n, lambda j, x: step(j, x, args, *consts), x)


@_dynamic_loop.defjvp
def _dynamic_loop_jvp(step, max_steps, primals, tangents):
    return jax.jvp(partial(_masked_loop, step, max_steps), primals, tangents)


def _masked_loop(step, max_steps, n, x, args, consts):
    def body(x, j):
        return jax.lax.cond(j < n, lambda: step(j, x, args, *consts), lambda: x), None

    return jax.lax.scan(body, x, jnp.arange(max_steps, dtype=n.dtype))[0]


def nonfinite_code(*checks, stages: bool):
    """The finite-check of one cycle: ``checks`` are (stage code, ensemble)
    pairs in the order the cycle made them, the last one the ensemble the
    cycle hands on. Returns (int8) 0 when that one is finite, else, with
    ``stages``, the code of the first ensemble holding NaN or inf (one
    reduction per ensemble) and without, ``UNKNOWN`` (one reduction: what the
    compiled scan does every cycle; a cycle that failed is re-run with
    ``stages`` by the driver)."""
    if not stages:
        return jnp.where(jnp.all(jnp.isfinite(checks[-1][1])), jnp.int8(0), jnp.int8(UNKNOWN))
    code = jnp.zeros((), jnp.int8)
    for stage, E in reversed(checks):
        code = jnp.where(jnp.all(jnp.isfinite(E)), code, jnp.int8(stage))
    return code


def analyse(scheme, h, y, R, mask, inflation, infl_state, keys, Ef, outputs, *,
            transform=False, stages=False):
    """Inflation, analysis and outputs of one cycle.

    Returns (Ea, state, out, G): G (N, N) is the scheme's ensemble transform
    (``enkit.filters.ensemble_space``) from the ensemble it received to its
    result when ``transform`` is True, else None. With ``NONFINITE`` among
    the outputs, ``out`` also holds the cycle's finite-check code (with
    ``stages``, the code of the failing stage; see ``nonfinite_code``).
    """
    k_scheme, k_before, k_after = keys
    hm, ym, Rm = masked_problem(h, y, R, mask)
    Eb, infl_state = inflation.before_analysis(infl_state, k_before, Ef, ym, hm, Rm, mask)
    Es, G = run_scheme(scheme, Eb, ym, hm, Rm, k_scheme, transform)
    Ea, infl_state = inflation.after_analysis(infl_state, k_after, Eb, Es)
    out = statistics(outputs, Ef, Eb, Ea, hm, ym, Rm, mask)
    if NONFINITE in outputs:
        out[NONFINITE] = nonfinite_code((FORECAST, Ef), (INFLATION_BEFORE, Eb), (ANALYSIS, Es),
                                        (INFLATION_AFTER, Ea), stages=stages)
    return Ea, infl_state, out, G


def skipped(outputs, Ef, h, y, R, mask):
    """The outputs of a cycle without observations (a forecast-only step:
    the analysis ensemble is the forecast). With m = 0 (y of shape (0,)) h
    and R are not used and may be None."""
    if y.shape[0] == 0:
        h, R, mask = _no_observations, None, None
    out = statistics(outputs, Ef, Ef, Ef, *masked_problem(h, y, R, mask), mask)
    if NONFINITE in outputs:
        out[NONFINITE] = nonfinite_code((FORECAST, Ef), stages=True)
    return out


def _no_observations(x):
    return jnp.zeros((0,), x.dtype)


def run_scheme(scheme, E, y, h, R, key, transform):
    """``scheme(E, y, h, R[, key=])`` and, with ``transform``, its (N, N)
    ensemble transform (else None)."""
    if transform:
        return analysis_transform(scheme, E, y, h, R, key=key)
    kwargs = {} if key is None else {"key": key}
    return scheme(E, y, h, R, **kwargs), None


def identity_transform(E):
    """G = I (N, N): the transform of a cycle without observations."""
    return jnp.eye(E.shape[0], dtype=E.dtype)


def smoothed_statistics(names, E) -> dict:
    """The smoothed outputs ``names`` (of ``SMOOTHED_OUTPUTS``) of one
    smoothed ensemble E (N, n)."""
    stats = {"smoothed_mean": lambda: ensemble_mean(E),
             "smoothed_spread": lambda: ensemble_spread(E),
             "smoothed_ensemble": lambda: E}
    return {name: stats[name]() for name in names}


def statistics_names(outputs) -> tuple[str, ...]:
    """The names ``statistics`` computes for a cycle whose outputs are
    ``outputs``: those, less the running ones (``OPTIMUM_OUTPUTS``,
    ``cycle_number``: ``close_cycle`` fills them), plus what the running
    optimum reads (cost_J and the entries of the requested optimum outputs)."""
    names = [n for n in outputs if n not in OPTIMUM_OUTPUTS and n != CYCLE_NUMBER]
    if tracks_optimum(outputs):
        for source in ("cost_J", *(OPTIMUM_OUTPUTS[n] for n in outputs if n in OPTIMUM_OUTPUTS)):
            if source != "index" and source not in names:
                names.append(source)
    return tuple(names)


def tracks_optimum(outputs) -> bool:
    """True when ``outputs`` ask for a running-optimum output (then the
    cycles carry the optimum's state, ``init_optimum``)."""
    return any(n in OPTIMUM_OUTPUTS for n in outputs)


def init_optimum(outputs, n: int, m: int, dtype) -> dict:
    """The running optimum before the first cycle: index −1 (no optimum
    yet), cost_J and the entries the requested optimum outputs read (an
    (n,) analysis mean, an (m,) simulated observation, costs) NaN."""
    shapes = {"analysis_mean": (n,), "simulated_obs_analysis": (m,)}
    opt = {"index": jnp.asarray(-1, jnp.int32), "cost_J": jnp.full((), jnp.nan, dtype)}
    for name in outputs:
        source = OPTIMUM_OUTPUTS.get(name)
        if source is not None and source not in opt:
            opt[source] = jnp.full(shapes.get(source, ()), jnp.nan, dtype)
    return opt


def observed(y, mask):
    """Whether a cycle has an analysis: m > 0 and, with a mask, at least one
    present observation (a bool, traced when the mask is)."""
    if y.shape[0] == 0:
        return jnp.asarray(False)
    return jnp.asarray(True) if mask is None else jnp.any(mask)


def close_cycle(outputs, opt, k, has_analysis, out):
    """Update the running optimum with cycle k (1-based) and return
    ``(opt, outputs of the cycle)``.

    opt: the state of ``init_optimum``, or None when no optimum output is
    requested; out: the cycle's ``statistics(statistics_names(outputs),
    ...)``. Cycle k becomes the optimum when it has an analysis
    (``has_analysis``, see ``observed``) and its cost_J is below the
    optimum's (strictly: of equal costs the earlier cycle stays, as
    ``numpy.argmin`` chooses), or when there is no optimum yet or its cost
    is NaN. Cycles without observations are skipped: their J (0, Jb and Jo
    both vanish when the analysis is the forecast) would otherwise always
    win. Returns exactly the names of ``outputs``: the optimum ones read
    from the updated state, cycle_number k (int32), the others from out.
    """
    if opt is not None:
        candidate = {name: out[name] for name in opt if name != "index"}
        candidate["index"] = jnp.asarray(k - 1, jnp.int32)
        best = opt["cost_J"]
        take = has_analysis & ((opt["index"] < 0) | (candidate["cost_J"] < best)
                               | jnp.isnan(best))
        opt = jax.tree_util.tree_map(lambda a, b: jnp.where(take, a, b).astype(b.dtype),
                                     candidate, opt)
    row = {}
    for name in outputs:
        if name in OPTIMUM_OUTPUTS:
            row[name] = opt[OPTIMUM_OUTPUTS[name]]
        elif name == CYCLE_NUMBER:
            row[name] = jnp.asarray(k, jnp.int32)
        else:
            row[name] = out[name]
    return opt, row


def statistics(outputs, Ef, Eb, Ea, h, y, R, mask=None):
    """The requested per-time outputs (a dict name -> array); mask: the
    cycle's (m,) present observations (h, y, R already neutralised by
    ``masked_problem``) or None."""
    xf, Xf = scaled_anomalies(Ef)
    xa, Xa = scaled_anomalies(Ea)
    out = {}
    lazy = {}

    def hx(which):
        if which not in lazy:
            lazy[which] = observe(h, (xf if which == "f" else xa)[None])[0]
        return lazy[which]

    for name in outputs:
        if name == "forecast_mean":
            out[name] = xf
        elif name == "analysis_mean":
            out[name] = xa
        elif name == "forecast_spread":
            out[name] = ensemble_spread(Ef)
        elif name == "analysis_spread":
            out[name] = ensemble_spread(Ea)
        elif name == "forecast_ensemble":
            out[name] = Ef
        elif name == "analysis_ensemble":
            out[name] = Ea
        elif name == "forecast_covariance":
            out[name] = Xf.T @ Xf
        elif name == "analysis_covariance":
            out[name] = Xa.T @ Xa
        elif name == "analysis_correlations":
            C = Xa.T @ Xa
            s = jnp.sqrt(jnp.diag(C))
            out[name] = C / (s[:, None] * s[None, :])
        elif name == "analysis_variances":
            out[name] = jnp.sum(Xa * Xa, axis=0)
        elif name == "analysis_std":
            out[name] = jnp.sqrt(jnp.sum(Xa * Xa, axis=0))
        elif name == "bma":
            out[name] = xf - xa
        elif name == "innovation_forecast":
            out[name] = y - hx("f")
        elif name == "innovation_analysis":
            out[name] = y - hx("a")
        elif name == "simulated_obs_forecast":
            out[name] = hx("f")
        elif name == "simulated_obs_analysis":
            out[name] = hx("a")
        elif name == "simulated_obs_forecast_ensemble":
            out[name] = observe(h, Ef)
        elif name == "innovation_forecast_ensemble":
            out[name] = y - observe(h, Ef)
    if {"cost_J", "cost_Jb", "cost_Jo"} & set(outputs):
        xb, Xb = scaled_anomalies(Eb)
        # Jb = ½ δᵀ P_b⁺ δ with P_b = Xbᵀ Xb: the minimum-norm w with Xbᵀ w = δ.
        w = jnp.linalg.lstsq(Xb.T, xa - xb)[0]
        jb = 0.5 * jnp.sum(w * w)
        r = y - hx("a") if y.shape[0] == 0 else R.whiten(y - hx("a"))
        jo = 0.5 * jnp.sum(r * r)
        for name, value in (("cost_Jb", jb), ("cost_Jo", jo), ("cost_J", jb + jo)):
            if name in outputs:
                out[name] = value
    if set(_DIAGNOSTICS) & set(outputs):
        out.update(_diagnostics(outputs, Eb, h, y, R, mask))
    return out


def _diagnostics(outputs, Eb, h, y, R, mask):
    """innovation_chi2 (dᵀS⁻¹d / m over the present observations), the
    predictive log_likelihood of y and dfs (trace HK), from the ensemble the
    scheme received; 0 for a cycle without observations. A neutralised
    (absent) observation adds nothing to χ² and DFS; its log N(0; 0, 1) term
    is taken out of the log-likelihood."""
    from enkit import diagnostics  # noqa: PLC0415  (diagnostics imports the filters)

    m = y.shape[0]
    if m == 0:
        return {name: jnp.zeros((), Eb.dtype) for name in _DIAGNOSTICS if name in outputs}
    present = m if mask is None else jnp.sum(mask)
    some = present > 0
    out = {}
    if "innovation_chi2" in outputs:
        chi2 = diagnostics.innovation_statistics(Eb, y, h, R).chi2
        out["innovation_chi2"] = jnp.where(some, chi2 / jnp.maximum(present, 1), 0.0)
    if "log_likelihood" in outputs:
        ll = diagnostics.log_likelihood(Eb, y, h, R)
        ll = ll + 0.5 * (m - present) * jnp.log(2.0 * jnp.pi)
        out["log_likelihood"] = jnp.where(some, ll, 0.0)
    if "dfs" in outputs:
        out["dfs"] = jnp.where(some, diagnostics.dfs(Eb, h, R).total, 0.0)
    return out


def cycle_keys(key, k):
    """Per-cycle keys: (scheme, before-analysis, after-analysis), model noise:
    ``fold_in(fold_in(key, k), i)`` for i = 0..3, JAX's keys bit for bit
    (``enkit._random.fold_in``: the hash written out, not JAX's loop)."""
    if key is None:
        return (None, None, None), None
    kk = fold_in(key, k)
    return tuple(fold_in(kk, i) for i in range(3)), fold_in(kk, 3)
