"""The 4D-EnKF: observations at several times inside each assimilation window.

``assimilate_4d`` cycles like ``assimilate`` (forecast → inflation →
analysis → inflation), but window k, from the analysis step s_{k−1} to the
analysis step s_k, holds L batches of observations taken at model steps
t_{k,1} ≤ … ≤ t_{k,L} in (s_{k−1}, s_k]. The forecast records every
member's simulated observations at those steps, and one analysis at s_k
assimilates all of them together (Hunt et al. 2004; Sakov et al. 2010):

    HEₖ = [h(E(t_{k,1})), …, h(E(t_{k,L}))]          (N, L·m)
    [Eₐ, ·] = scheme([E(s_k), HEₖ], [y_{k,1}; …; y_{k,L}], z ↦ z[n:], R_L)

with R_L = blockdiag(R, …, R). The scheme sees the augmented ensemble
Z = [E(s_k), HEₖ] (N, n + L·m) whose observation operator reads the
recorded predictions, so any L1 scheme that uses h only through h(E) (ETKF,
DEnKF, EnKF, EnSRF, ...) becomes its asynchronous version without
change, and its state part is the analysis at s_k. For a linear model and
linear h the trajectory anomalies are exact, so with an ETKF-type scheme
and N > n the analysis equals the Kalman filter that processes each batch
at its own time (tests/test_4denkf.py).

Inflation before the analysis acts on Z (the recorded predictions are
inflated with the state, which keeps them consistent for a scalar factor;
adaptive inflation then sees the stacked innovations); inflation after the
analysis acts on the state part. The per-time outputs are those of
``assimilate``, state-space ones of the state at s_k and observation-space
ones (innovations, simulated observations, χ², DFS, costs) over the
stacked (L·m,) observation vector, simulated observations being the
ensemble means of the recorded predictions (and of their analysed values).

References: Hunt, Kalnay, Kostelich, Ott, Patil, Sauer, Szunyogh, Yorke &
Zimin (2004), "Four-dimensional ensemble Kalman filtering", Tellus 56A;
Sakov, Evensen & Bertino (2010), "Asynchronous data assimilation with the
EnKF", Tellus 62A.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_ndim
from enkit.assimilation import compiled, cycle
from enkit.assimilation.driver import _check_nonfinite, _run_info, prepare
from enkit.assimilation.types import (
    AssimilationResult,
    BlackBoxModel,
    PerTime,
    RunInfo,
    over_window,
)
from enkit.covariance import Covariance, Dense, Diagonal, Scalar, as_covariance
from enkit.filters._common import observe
from enkit.inflation import AdditiveForecast, InflationStep, MultiplicativeForecast

__all__ = ["assimilate_4d", "stacked_covariance"]

# Outputs that are statistics of the state at the analysis time.
_STATE_OUTPUTS = ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread",
                  "forecast_ensemble", "analysis_ensemble", "forecast_covariance",
                  "analysis_covariance", "analysis_correlations", "analysis_variances",
                  "analysis_std", "bma")


def stacked_covariance(R: Covariance, L: int) -> Covariance:
    """blockdiag(R, …, R) (L blocks): the error covariance of L independent
    observation batches of one network. Scalar and Diagonal stay diagonal;
    other operators become ``Dense`` (L·m × L·m)."""
    if isinstance(R, Scalar):
        return Scalar(R.variance, L * R.dim)
    if isinstance(R, Diagonal):
        return Diagonal(jnp.tile(R.variances, L))
    return Dense(jnp.kron(jnp.eye(L, dtype=R.dtype), R.dense()))


def assimilate_4d(
    model: Callable[[Array], Array],
    E0: ArrayLike,
    observations: ArrayLike,
    scheme: Callable[..., Array],
    *,
    h: Any,
    R: Any,
    obs_steps: ArrayLike,
    steps_per_obs: int | ArrayLike = 1,
    key: Array | int | None = None,
    inflation: ArrayLike | InflationStep | None = None,
    mask: ArrayLike | None = None,
    controls: Any = None,
    model_noise: Covariance | None = None,
    forecast_steps: int = 0,
    store: Sequence[str] = cycle.DEFAULT_OUTPUTS,
    smoother: Any = None,
    on_nonfinite: str = "raise",
    remat: str | int | None = None,
) -> AssimilationResult:
    """Cycle an ensemble with the 4D-EnKF (asynchronous observations).

    Window k runs the model from analysis step s_{k−1} to s_k (s_0 = 0,
    s_k − s_{k−1} = ``steps_per_obs``), recording ``h(E)`` at the model
    steps ``obs_steps[k]``, and ends with one analysis at s_k of all L
    observation batches of the window (module docstring: the scheme runs on
    [E(s_k), HEₖ] with h reading HEₖ and R_L = blockdiag(R, …, R)).

    model: one JAX model step of one member (``(x, u)`` with controls);
    E0: (N, n); observations: (K, L, m), batch l of window k taken at
    absolute model step ``obs_steps[k, l]``; scheme: an L1 scheme with the
    uniform signature that uses h only through h(E) (``etkf``, ``denkf``,
    ``enkf``, ``ensrf``, ``estkf``, ``etkf_n``, ...; not ``letkf`` or
    B-localised schemes, which need the state's coordinates of the
    observations); h: callable ``(n,) -> (m,)`` (``(x, u)`` with controls,
    u at the observation step) or (m, n) matrix, the same for every batch
    (a network that changes: ``mask``); R: covariance operator or array of
    one batch (dimension m); obs_steps: (K, L) ints, non-decreasing along
    each row, with s_{k−1} < obs_steps[k, l] ≤ s_k (a batch at s_k is
    observed at the analysis time); steps_per_obs: model steps per window,
    int or (K,); mask: (K, L, m) booleans, False where absent.
    key, inflation, controls, model_noise, forecast_steps, store, smoother,
    on_nonfinite, remat: as in ``assimilate`` (inflation given as a number
    multiplies the analysis anomalies; a per-variable (n,) forecast
    inflation and additive forecast inflation are refused: they would
    change E(s_k) without the recorded predictions). Model noise between
    batches uses the keys ``fold_in(k_noise, l)`` for the segment ending
    at batch l ≥ 1 and ``k_noise`` for the first, so with one batch at the
    analysis time the run draws what ``assimilate`` draws.

    With every batch at the analysis time (L = 1, obs_steps = s) this is
    ``assimilate`` (to round-off: the scheme sees n + m columns).
    Returns an ``AssimilationResult``; observation-space outputs have shape
    (K, L·m), the batches in order. Always compiled (one ``lax.scan``); no
    checkpoints and no black-box models.

    References: Hunt et al. (2004), Tellus 56A; Sakov, Evensen & Bertino
    (2010), Tellus 62A.
    """
    if isinstance(model, BlackBoxModel):
        raise TypeError("assimilate_4d needs a JAX-traceable model (the forecast records "
                        "h(E) inside the compiled scan); a BlackBoxModel is not supported")
    if isinstance(scheme, over_window) or not callable(scheme):
        raise TypeError("scheme must be an L1 analysis function such as enkit.etkf, got "
                        f"{type(scheme).__name__}")
    if isinstance(h, PerTime) or isinstance(R, PerTime):
        raise ValueError("assimilate_4d takes one h and one R for every batch; describe a "
                         "network that changes with mask=")
    check_ndim("observations", observations, 3,
               "(K, L, m): L observation batches of m values per window")
    K, L, m = np.shape(observations)
    obs_steps = _check_obs_steps(obs_steps, K, L, steps_per_obs)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (K, L, m):
            raise ValueError(f"mask must have shape (K, L, m) = {(K, L, m)} like "
                             f"observations, got shape {mask.shape}")
        mask = mask.reshape(K, L * m)
    E0 = jnp.asarray(E0)
    check_ndim("E0", E0, 2, "(N, n): members on axis 0")
    _check_h(h, E0, m, controls)
    R_one = as_covariance(R, m).astype(E0.dtype) if m else None
    _check_inflation(inflation)
    flat = jnp.reshape(jnp.asarray(observations, dtype=E0.dtype), (K, L * m))
    run = prepare(model, E0, flat, scheme, h=h, R=None if m == 0 else
                  stacked_covariance(R_one, L), key=key, inflation=inflation, mask=mask,
                  steps_per_obs=steps_per_obs, controls=controls, model_noise=model_noise,
                  forecast_steps=forecast_steps, store=store, smoother=smoother,
                  on_nonfinite=on_nonfinite, remat=remat)
    starts = np.concatenate([[0], run.steps[:-1]])
    offsets = jnp.asarray(obs_steps - starts[:, None], dtype=jnp.int32)
    result = _run(run.settings, run.record, offsets, run.E0, run.key,
                  forecast_steps=run.forecast_steps, outputs=run.outputs)
    info = _run_info(scheme, smoother, model, inflation, model_noise, run, store,
                     on_nonfinite)
    info = RunInfo(info.kind, f"{info.method} (4D: {L} observation times per window)",
                   info.options)
    result = result._replace(times=jnp.asarray(run.times), steps=jnp.asarray(run.steps),
                             info=info)
    return _check_nonfinite(result, on_nonfinite, run)


def _check_obs_steps(obs_steps, K: int, L: int, steps_per_obs) -> np.ndarray:
    """(K, L) absolute observation steps, each in its window (s_{k−1}, s_k]."""
    a = np.asarray(obs_steps)
    if a.shape != (K, L):
        raise ValueError(f"obs_steps must have shape (K, L) = {(K, L)} like the first two "
                         f"axes of observations, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"obs_steps must be integer model-step indices, got dtype {a.dtype}")
    spo = np.broadcast_to(np.asarray(steps_per_obs), (K,))
    ends = np.cumsum(spo)
    starts = np.concatenate([[0], ends[:-1]])
    outside = (a <= starts[:, None]) | (a > ends[:, None])
    if outside.any():
        k, l = np.argwhere(outside)[0]
        raise ValueError(
            f"obs_steps must lie inside their window (s_(k-1), s_k] of model steps, but "
            f"obs_steps[{k}, {l}] = {a[k, l]} is outside window {k} = ({starts[k]}, "
            f"{ends[k]}] (steps_per_obs sets the windows)")
    if L > 1 and np.any(np.diff(a, axis=1) < 0):
        k = int(np.flatnonzero(np.any(np.diff(a, axis=1) < 0, axis=1))[0])
        raise ValueError(f"obs_steps must be non-decreasing along each window, but row {k} "
                         f"is {a[k].tolist()}")
    return a.astype(np.int64)


def _check_h(h, E0, m: int, controls) -> None:
    """h must map one member (n,) to (m,)."""
    n = E0.shape[1]
    if not callable(h):
        if np.shape(h) != (m, n):
            raise ValueError(f"h as a matrix must have shape (m, n) = ({m}, {n}), got "
                             f"{np.shape(h)}")
        return
    if controls is None:
        out = jax.eval_shape(h, E0[0])
    else:
        out = jax.eval_shape(h, E0[0], jax.tree_util.tree_map(lambda a: a[0], controls))
    if out.shape != (m,):
        raise ValueError(f"h must map one member of shape ({n},) to shape (m,) = ({m},) "
                         f"(the last axis of observations), but it returned {out.shape}")


def _check_inflation(step) -> None:
    """Refuse forecast inflation that would change E(s_k) without HEₖ."""
    if not isinstance(step, InflationStep):
        return
    steps = getattr(step, "steps", (step,))
    for s in steps:
        if isinstance(s, AdditiveForecast):
            raise ValueError("inflation: AdditiveForecast perturbs the state at the analysis "
                             "time but not the recorded predictions of the 4D-EnKF; use "
                             "model_noise or an inflation after the analysis")
        if isinstance(s, MultiplicativeForecast) and np.ndim(s.factor) != 0:
            raise ValueError("inflation: MultiplicativeForecast with a per-variable factor "
                             "cannot inflate the recorded predictions; give a scalar factor")


@partial(jax.jit, static_argnames=("forecast_steps", "outputs"))
def _run(settings, record, offsets, E0, key, *, forecast_steps, outputs):
    """The whole 4D run as one scan (``compiled.remat_scan``)."""
    model, scheme, inflation = settings.model, settings.scheme, settings.inflation
    noise, smoother = settings.model_noise, settings.smoother
    h, R, controls = record.h, record.R, record.controls
    transform = smoother is not None and smoother.needs_transform
    n = E0.shape[1]
    names = cycle.statistics_names(outputs)
    obs_outs = tuple(o for o in names if o not in _STATE_OUTPUTS)
    state_outs = tuple(o for o in names if o in _STATE_OUTPUTS)

    def read_predictions(z):
        return z[n:]

    def body(carry, x):
        E, istate, sstate = carry
        keys, k_noise = cycle.cycle_keys(key, x["k"])
        Ef, HE, done = E, [], 0
        for seg in range(offsets.shape[1] + 1):
            end = x["off"][seg] if seg < offsets.shape[1] else x["n"]
            k_seg = k_noise if (k_noise is None or seg == 0) else jax.random.fold_in(k_noise,
                                                                                     seg)
            Ef = cycle.forecast(model, Ef, end - done, t0=x["t0"] + done, controls=controls,
                                noise=noise, key=k_seg, max_steps=settings.max_steps)
            done = end
            if seg < offsets.shape[1]:
                h_l = h
                if controls is not None and callable(h):
                    u = jax.tree_util.tree_map(lambda a: a[x["t0"] + end], controls)  # noqa: B023
                    h_l = partial(compiled._call_with, h, u)
                HE.append(observe(h_l, Ef))
        Zf = jnp.concatenate([Ef, *HE], axis=1)

        def run():
            Zs, st, out, G = cycle.analyse(scheme, read_predictions, x["y"], R, x["mask"],
                                           _StatePartAfter(inflation, n), istate, keys, Zf,
                                           obs_outs, transform=transform, stages=True)
            return Zs, st, out, G

        def skip():
            out = cycle.skipped(obs_outs, Zf, read_predictions, x["y"], R, x["mask"])
            return Zf, istate, out, cycle.identity_transform(Zf) if transform else None

        if x["y"].shape[0] == 0:
            Za, istate, out, G = skip()
        elif x["mask"] is None:
            Za, istate, out, G = run()
        else:
            Za, istate, out, G = jax.lax.cond(jnp.any(x["mask"]), run, skip)
        Ea = Za[:, :n]
        out.update(cycle.statistics(state_outs, Ef, None, Ea, None, x["y"], None))
        rows = {}
        if smoother is not None:
            sstate, rows = smoother.step(sstate, Ef, Ea, G)
        return (Ea, istate, sstate), (out, rows)

    xs = {**record.scan_inputs(), "off": offsets}
    carry = compiled.init_carry(settings, E0, outputs, record.values.shape[1])
    carry, (outs, rows) = compiled.remat_scan(compiled.tracked(body, outputs), carry, xs,
                                              settings.remat)
    E = carry[0]
    if forecast_steps:
        E = compiled.final_forecast(settings, record, E, key, forecast_steps)
    return AssimilationResult(ensemble=E, **outs, **compiled.finish(settings, carry, rows))


@dataclasses.dataclass(frozen=True)
class _StatePartAfter:
    """An inflation step whose before-analysis part acts on the augmented
    ensemble Z = [E, HE] and whose after-analysis part on the state E only
    (the recorded predictions are dropped after the analysis)."""

    step: Any
    n: int

    def init(self, E0):
        return self.step.init(E0)

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        return self.step.before_analysis(state, key, Ef, y, h, R, mask)

    def after_analysis(self, state, key, Ef, Ea):
        n = self.n
        Xa, state = self.step.after_analysis(state, key, Ef[:, :n], Ea[:, :n])
        return jnp.concatenate([Xa, Ea[:, n:]], axis=1), state
