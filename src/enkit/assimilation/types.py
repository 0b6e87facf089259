"""The values a cycling run is described by and the result it returns.

The lowest module of ``enkit.assimilation``: it imports nothing from the
driver, so every other module of the package (and the smoothers) can use it.

- ``AssimilationResult``: the typed result of ``assimilate`` and of the
  smoothers (one row per analysis time);
- ``PerTime`` / ``per_time`` / ``stack_covariances``: h or R that change with
  the analysis time;
- ``over_window``: the cycle of the iterative EnKF (update the previous
  analysis through h ∘ M);
- ``BlackBoxModel``: a model stepped member by member through an executor;
- ``ObservationRecord`` and ``CycleSettings``: the two frozen pytrees that
  describe one compiled run (what is observed when; what is done at every
  cycle), passed as units through the compiled and the Python paths.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._pytree import register_dataclass
from enkit.covariance import Covariance
from enkit.diagnostics import rmse

__all__ = [
    "AssimilationResult",
    "BlackBoxModel",
    "CycleSettings",
    "NonFiniteError",
    "ObservationRecord",
    "PerTime",
    "RunInfo",
    "over_window",
    "per_time",
    "stack_covariances",
]


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
    cost_Jo = ½ ‖y − h(x̄_a)‖²_{R⁻¹}, cost_J = Jb + Jo (K,);
    innovation_chi2 = dᵀ S⁻¹ d / m (about 1 for a consistent filter),
    log_likelihood = log N(y; h̄, S) and dfs = trace(H K) (K,), with
    d = y − h̄, h̄ and S = H P Hᵀ + R from the ensemble the scheme received,
    over the present observations (0 at a time without any; see
    ``enkit.diagnostics``). analysis_correlations (K, n, n): the analysis
    covariance divided by the product of its standard deviations (NaN in the
    rows and columns of an entry without spread); simulated_obs_forecast_
    ensemble = h(x_f,i) and innovation_forecast_ensemble = y − h(x_f,i)
    (K, N, m), for each forecast member. Entries of absent observations are
    0. In the Python path with ragged observations, observation-space
    outputs are lists of (m_k,) arrays ((N, m_k) for the member ones).

    The running optimum, the cycle of lowest cost_J so far: index_of_optimum
    (K,) int32, the 0-based row k* ≤ k of that cycle (−1 before the first
    cycle with an observation); optimum_mean (K, n) = analysis_mean[k*],
    simulated_obs_optimum (K, m) = simulated_obs_analysis[k*] (not with
    ragged observations: its length would change with the optimum),
    cost_J_optimum/cost_Jb_optimum/cost_Jo_optimum (K,) = cost_J/Jb/Jo[k*]
    (NaN before the first cycle with an observation). Cycles without any
    present observation are skipped (their analysis is the forecast, so their
    J would be 0); of equal costs the earlier cycle is kept. A resumed,
    checkpointed run (and ``enks_stream`` across chunks) carries the
    optimum on. cycle_number (K,) int32: the 1-based number of the cycle.

    ADAO names are accepted for ``store`` with the meaning they have in
    ADAO's EnsembleKalmanFilter (``enkit.OUTPUTS`` lists them), in enkit's
    layout. ADAO stores ensembles as ``numpy.ravel`` of (n, N) columns
    (variable by variable: ADAO's vector is ``E.T.ravel()`` of enkit's
    (N, n) rows); enkit keeps members on the first axis. So CurrentState
    (ADAO: the analysis ensemble) is analysis_ensemble (K, N, n),
    ForecastState (ADAO: the forecast ensemble) is forecast_ensemble
    (K, N, n), SimulatedObservationAtCurrentState and
    InnovationAtCurrentState (ADAO: per forecast member) are
    simulated_obs_forecast_ensemble and innovation_forecast_ensemble
    (K, N, m); ForecastState and ForecastCovariance are, in both, of the
    forecast after model noise (ADAO's Q). ADAO's EnKF stores BMA per
    forecast member (x_f,i − x̄_a); enkit's bma is their mean over the
    members, x̄_f − x̄_a. IndexOfOptimum, CostFunctionJ*AtCurrentOptimum and
    SimulatedObservationAtCurrentOptimum are ADAO's values. ADAO's
    CurrentOptimum is ``Analysis[IndexOfOptimum]`` of an Analysis series that
    starts with the background, so it is shifted by one entry: the analysis
    of the cycle before the optimum (the background for an optimum at the
    first cycle); enkit's optimum_mean is the analysis of the optimal cycle
    itself. CurrentIterationNumber and CurrentStepNumber are cycle_number
    (ADAO's ensemble filters store CurrentStepNumber = 1 at the first
    analysis). The costs differ from ADAO's by their background term: enkit's
    Jb is measured from the mean x̄_b of the ensemble the scheme received,
    with that ensemble's sample covariance P_b (pseudo-inverse), at every
    cycle; ADAO's ensemble filters measure Jb = ½ (x̄_a − x_b)ᵀ B⁻¹ (x̄_a − x_b)
    from the initial background x_b with the static B at every cycle. Jo is
    the same in both; so J, the optimum and its index may differ.
    benchmarks/adao_output_names.py checks these statements against ADAO
    9.16's EnsembleKalmanFilter.

    Smoothers (``enkit.smoothers``) fill the smoothed outputs as well:
    smoothed_mean (K, n), smoothed_spread (K,), smoothed_ensemble (K, N, n),
    the estimate at each analysis time given the observations the smoother
    used for it (see each smoother's docstring).

    nonfinite: (K,) int8, the finite-check of ``assimilate(on_nonfinite=)``
    (None with "ignore"): 0 where the cycle's ensembles stayed finite, else
    the code of the first stage that produced NaN or inf (``NONFINITE_STAGES``:
    1 forecast, 2 inflation before the analysis, 3 analysis, 4 inflation
    after it). The compiled scan checks only the ensemble each cycle hands
    on and writes 9 for a cycle that failed; ``assimilate`` then re-runs
    that cycle to find its stage and puts the stage's code in its place.
    Under ``jit``/``grad`` of a whole run the driver can neither re-run nor
    raise: read the codes (9 for a failure) from the result.

    Particle schemes (``enkit.particle``: a scheme marked ``particle =
    True``) carry log-weights from cycle to cycle; their means, spreads,
    covariances and simulated observations above are the weighted ones
    (weights of the forecast: those carried from the previous analysis),
    and they fill log_weights (K, N), the normalised log-weights of each
    analysis ensemble (logsumexp 0; uniform −log N where it resampled), and
    ess (K,), the effective sample size 1/Σ w̄ᵢ² of each analysis's updated
    weights before any resampling (N at a cycle without observations).
    ``ensemble`` holds the particles at the end; their log-weights are
    ``log_weights[-1]``.

    info: a ``RunInfo`` (kind, method and options of the run; no array
    leaves, so it passes through ``jit``), filled by ``assimilate`` and the
    smoothers. ``to_xarray``/``to_netcdf`` write the result as an
    ``xarray.Dataset``/netCDF file (``enkit.results_io``).
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
    innovation_chi2: Any = None
    log_likelihood: Any = None
    dfs: Any = None
    smoothed_mean: Any = None
    smoothed_spread: Any = None
    smoothed_ensemble: Any = None
    nonfinite: Any = None
    info: Any = None
    log_weights: Any = None
    ess: Any = None
    analysis_correlations: Any = None
    simulated_obs_forecast_ensemble: Any = None
    innovation_forecast_ensemble: Any = None
    optimum_mean: Any = None
    simulated_obs_optimum: Any = None
    cost_J_optimum: Any = None
    cost_Jb_optimum: Any = None
    cost_Jo_optimum: Any = None
    index_of_optimum: Any = None
    cycle_number: Any = None

    def to_xarray(self, *, truth: ArrayLike | None = None,
                  observations: ArrayLike | None = None, mask: ArrayLike | None = None,
                  settings: dict | None = None):
        """This result as an ``xarray.Dataset`` (dimensions time, member,
        state, obs; layout in ``enkit.results_io``). truth: (K, n);
        observations: (K, m); mask: (K, m) booleans (False = absent);
        settings: extra attributes. Needs xarray (``pip install enkit[io]``)."""
        from enkit.results_io import assimilation_to_xarray

        return assimilation_to_xarray(self, truth=truth, observations=observations,
                                      mask=mask, settings=settings)

    def to_netcdf(self, path, **options) -> str:
        """Write ``to_xarray(**options)`` to ``path`` (netCDF3, atomically: a
        killed run never leaves half a file); returns the absolute path. The
        file opens in plain xarray without enkit."""
        from enkit.results_io import write_netcdf

        return write_netcdf(self.to_xarray(**options), path)

    def rmse(self, truth: ArrayLike) -> Array:
        """Analysis RMSE per time against truth (K, n) -> (K,)."""
        return rmse(self._need("analysis_mean"), truth)

    def forecast_rmse(self, truth: ArrayLike) -> Array:
        """Forecast RMSE per time against truth (K, n) -> (K,)."""
        return rmse(self._need("forecast_mean"), truth)

    def smoothed_rmse(self, truth: ArrayLike) -> Array:
        """Smoothed RMSE per time against truth (K, n) -> (K,)."""
        return rmse(self._need("smoothed_mean"), truth)

    def spread(self) -> Array:
        """Analysis spread per time, (K,)."""
        return self._need("analysis_spread")

    def _need(self, name):
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this run did not store {name!r}; pass store=(..., {name!r})")
        return value


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a result was made by: ``kind`` ("assimilation" or "smoother"),
    ``method`` (the scheme's name, with a smoother's), ``options`` ((name,
    text) pairs of the run's settings). Static: a pytree without leaves."""

    kind: str = "assimilation"
    method: str = ""
    options: tuple = ()


register_dataclass(RunInfo, data_fields=[], meta_fields=["kind", "method", "options"])


def describe(obj) -> str:
    """A short text naming a scheme, model or option (for ``RunInfo``)."""
    import functools

    if obj is None:
        return "none"
    if isinstance(obj, functools.partial):
        kw = ", ".join(f"{k}={describe(v)}" for k, v in sorted(obj.keywords.items()))
        return f"{describe(obj.func)}({kw})" if kw else describe(obj.func)
    if isinstance(obj, (bool, int, float, str)):
        return repr(obj) if isinstance(obj, str) else str(obj)
    shape = getattr(obj, "shape", None)
    if isinstance(shape, tuple) and hasattr(obj, "dtype"):
        if shape == () and not isinstance(obj, jax.core.Tracer):
            return str(np.asarray(obj).item())
        return f"array{shape}"  # shapes only: a traced value has no number to show
    name = getattr(obj, "__name__", None)
    if name is not None:
        return name
    if dataclasses.is_dataclass(obj):
        return type(obj).__name__
    text = repr(obj)
    return text if len(text) <= 200 else type(obj).__name__


class NonFiniteError(FloatingPointError):
    """A run's ensemble stopped being finite (``assimilate(on_nonfinite=
    "raise")``). Attributes: cycle (1-based analysis cycle; K + 1 for the
    forecast-only steps after the last analysis), stage (its name, e.g.
    "forecast"), time (model time of that cycle's analysis, or None) and
    result: an ``AssimilationResult`` holding the per-time outputs of the
    cycles before ``cycle`` (its ``ensemble`` and smoothed outputs are None:
    the run's final ensemble is not finite)."""

    def __init__(self, message: str, *, cycle: int, stage: str, time, result):
        super().__init__(message)
        self.cycle, self.stage, self.time, self.result = cycle, stage, time, result


@dataclasses.dataclass(frozen=True)
class PerTime:
    """Marks a value that changes with the analysis time: every leaf of
    ``value`` has a leading axis of length K, sliced at each analysis."""

    value: Any


register_dataclass(PerTime, data_fields=["value"], meta_fields=[])


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


@dataclasses.dataclass(frozen=True)
class ObservationRecord:
    """The observations of one compiled run, one entry per analysis time.

    values: (K, m) observations; mask: (K, m) booleans (False: absent) or
    None; h: observation operator (a pytree: a ``jax.tree_util.Partial`` of
    a callable, or an (m, n) matrix) or ``PerTime`` of K of them; R:
    covariance operator or ``PerTime``; n_steps: (K,) int32 model steps
    before each analysis (from the previous one, or from time 0); controls:
    a pytree whose leaves have a leading axis of total model steps + 1, or
    None. Every field is a pytree leaf (or None), so a second run with new
    values of the same shapes reuses the compiled program.
    """

    values: Any
    mask: Any
    h: Any
    R: Any
    n_steps: Any
    controls: Any = None

    def scan_inputs(self) -> dict:
        """The per-cycle inputs of the scan, each with a leading K axis:
        cycle number k (1-based), y, mask, steps n and start step t0 of the
        forecast, and the per-time h and R (None when constant)."""
        n = self.n_steps
        t_starts = jnp.concatenate([jnp.zeros(1, n.dtype), jnp.cumsum(n)[:-1]])
        return {
            "k": jnp.arange(1, self.values.shape[0] + 1),
            "y": self.values,
            "mask": self.mask,
            "n": n,
            "t0": t_starts,
            "h": self.h.value if isinstance(self.h, PerTime) else None,
            "R": self.R.value if isinstance(self.R, PerTime) else None,
        }


register_dataclass(
    ObservationRecord,
    data_fields=["values", "mask", "h", "R", "n_steps", "controls"],
    meta_fields=[],
)


@dataclasses.dataclass(frozen=True)
class CycleSettings:
    """What is done at every cycle of a compiled run.

    model: one model step of one member (a pytree: a JAX model such as
    ``enkit.Lorenz96`` or a ``Partial`` of a function); scheme: the L1
    analysis (a pytree likewise); inflation: an ``InflationStep``;
    model_noise: covariance operator Q added after every model step, or
    None; smoother: a smoother step (``enkit.smoothers``: carries past
    ensembles and updates them with each analysis's ensemble transform), or
    None for a filter; window (static): True for ``over_window`` cycles;
    max_steps (static): the largest number of model steps of a forecast
    (each cycle reads its own from the record's ``n_steps``; the bound makes
    that loop differentiable in reverse mode, ``cycle.bounded_loop``);
    remat (static): what reverse mode keeps of the scan (``assimilate``'s
    ``remat``): None (everything), "cycle" (the carry of every cycle) or an
    int L (the carry at every L-th cycle and, inside the segment being
    differentiated, of its cycles).
    """

    model: Any
    scheme: Any
    inflation: Any
    model_noise: Any = None
    smoother: Any = None
    window: bool = False
    max_steps: int | None = None
    remat: str | int | None = None


register_dataclass(
    CycleSettings,
    data_fields=["model", "scheme", "inflation", "model_noise", "smoother"],
    meta_fields=["window", "max_steps", "remat"],
)


def is_stochastic(model) -> bool:
    """True for a stochastic model, one step ``model(key, x)`` (``model(key,
    x, u)`` with controls): an object whose ``stochastic`` attribute is True
    (``enkit.models.OrnsteinUhlenbeck``, ``DoubleWell``), also when wrapped
    by ``as_pytree``."""
    target = model.func if isinstance(model, jax.tree_util.Partial) else model
    return getattr(target, "stochastic", False) is True


def is_particle(scheme) -> bool:
    """True for a particle scheme (``enkit.particle``): a callable whose
    ``particle`` attribute is True, also through ``functools.partial`` and
    ``jax.tree_util.Partial`` (and ``as_pytree``) wrappers."""
    return scheme_flag(scheme, "particle")


def scheme_flag(scheme, name: str) -> bool:
    """True when the attribute ``name`` of ``scheme`` is True, looked up
    through ``functools.partial``/``Partial`` wrappers (their ``func``)."""
    target = scheme
    for _ in range(8):
        if getattr(target, name, False) is True:
            return True
        inner = getattr(target, "func", None)
        if inner is None or inner is target:
            return False
        target = inner
    return False


def as_pytree(f):
    """Wrap a plain callable so jit treats it as static; keep pytrees as they are."""
    leaves = jax.tree_util.tree_leaves(f)
    if callable(f) and len(leaves) == 1 and leaves[0] is f:
        return jax.tree_util.Partial(f)
    return f
