"""Ensemble-variational analyses: EnVar (3-D) and 4DEnVar over a window.

Both minimise the variational cost in ensemble space, ``x₀ = x̄ + Xᵀ w``
(X the normalised anomalies, so the background term is ``½‖w‖²`` with the
ensemble covariance as B), by Gauss–Newton with the sensitivities estimated
from the ensemble (observed members for EnVar, observed member trajectories
for 4DEnVar: no tangent linear or adjoint model), and return the ensemble
transform at the optimum, ``Eₐ = x̄ + Xᵀ w + sqrt(N − 1) (I + SSᵀ)^{-1/2} X``.
That is the IEnKF of Sakov, Oliver & Bertino (2012) — with h the observed
trajectory over a window for 4DEnVar — and its cycle over consecutive
windows is the iEnKS of Bocquet & Sakov (2014) with shift = lag, so these
entry points compose ``enkit.ienkf`` and ``enkit.ienks``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_ensemble, check_number
from enkit.assimilation.fourd import stacked_covariance
from enkit.assimilation.types import AssimilationResult, as_pytree
from enkit.filters._common import ObservationOperator
from enkit.filters._iterative import IterationInfo, check_iteration_options
from enkit.filters.ienkf import ienkf
from enkit.smoothers.ienks import ienks
from enkit.variational._common import apply_h, check_count, check_window

__all__ = ["EnVar4DResult", "envar", "envar4d", "envar4d_cycle"]


def envar(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
    bundle_epsilon: float | None = None,
    max_iterations: int = 20,
    tolerance: float | None = 1e-6,
    return_info: bool = False,
) -> Array | tuple[Array, IterationInfo]:
    """EnVar: the 3-D ensemble-variational analysis, which is the IEnKF.

    Minimises ``J(w) = ½ ‖w‖² + ½ ‖y − h(x̄ + Xᵀ w)‖²_{R⁻¹}`` (the 3D-Var
    cost with the ensemble covariance ``XᵀX`` as B, in its ensemble-space
    control variable, Lorenc 2003) by Gauss–Newton with the ensemble
    sensitivities ``S = R^{-1/2} Y`` and returns the ensemble transformed at
    the optimum, ``Eₐ = x̄ + Xᵀ w + sqrt(N − 1) (I + SSᵀ)^{-1/2} X``: exactly
    ``enkit.ienkf(E, y, h, R, ...)``, to which every option is passed (see
    it). For a linear h the first iteration is the minimum: the ETKF, i.e.
    the Kalman update of the sample mean and covariance.

    E: (N, n); y: (m,); h: callable on one member or (m, n) matrix; R:
    covariance operator or array; key: unused; bundle_epsilon,
    max_iterations, tolerance, return_info: as ``ienkf``.
    Returns Eₐ: (N, n) (and an ``IterationInfo``).

    References: Lorenc (2003), QJRMS 129; Sakov, Oliver & Bertino (2012),
    MWR 140; Bocquet & Sakov (2014), QJRMS 140.
    """
    return ienkf(E, y, h, R, key=key, bundle_epsilon=bundle_epsilon,
                 max_iterations=max_iterations, tolerance=tolerance, return_info=return_info)


class EnVar4DResult(NamedTuple):
    """What ``envar4d`` returns.

    ensemble: (N, n) the analysed ensemble at the window start t₀; x0: (n,)
    its mean, the analysis of the initial state; trajectory: (K, n) the
    model trajectory of x0 at the K observation times; info: the
    Gauss–Newton ``IterationInfo``.
    """

    ensemble: Array
    x0: Array
    trajectory: Array
    info: IterationInfo


def envar4d(
    model: Callable[[Array], Array],
    E0: ArrayLike,
    observations: ArrayLike,
    h: ObservationOperator,
    R: Any,
    *,
    steps_per_obs: int = 1,
    bundle_epsilon: float | None = None,
    max_iterations: int = 20,
    tolerance: float | None = 1e-6,
) -> EnVar4DResult:
    """4DEnVar over one window: ensemble trajectories give the 4-D sensitivities.

    With x̄₀, X₀ the mean and normalised anomalies of the window-start
    ensemble E0 and ``x₀ = x̄₀ + X₀ᵀ w``, minimises

        J(w) = ½ ‖w‖² + ½ Σ_{k=1..K} ‖y_k − h(M^{k·S}(x₀))‖²_{R⁻¹}   (S = steps_per_obs)

    by Gauss–Newton in ensemble space: the sensitivity of the stacked
    observations to w is estimated from the ensemble propagated through the
    window and observed at every y_k (no tangent linear or adjoint model,
    Liu, Xiao & Wang 2008), and the analysed ensemble is the transform at
    the optimum. It is ``enkit.ienkf`` with the window observation operator
    ``x₀ ↦ [h(x_S); …; h(x_{K·S})]`` and ``blockdiag(R, …, R)``. The transform
    variant's first iteration (``max_iterations=1``) is the classic
    non-iterative 4DEnVar with an ETKF-type ensemble update (the 4D-ETKF);
    more iterations give the iterative 4DEnVar of the iEnKS. For a linear
    model and h the result is the Kalman smoother's estimate of x₀ from the
    sample mean and covariance of E0 (and the ensemble's covariance its
    smoothed covariance when N > n).

    model: one-step map ``model(x) -> x`` of one state, JAX-traceable; E0:
    (N, n) ensemble at t₀; observations: (K, m), y_k after k·S steps; h:
    callable ``h(x) -> (m,)`` or an (m, n) matrix; R: observation
    covariance (operator or array), the same at every time; steps_per_obs:
    model steps between observations; bundle_epsilon, max_iterations,
    tolerance: as ``enkit.ienkf``. Returns an ``EnVar4DResult``.

    References: Liu, Xiao & Wang (2008), MWR 136; Buehner, Houtekamer,
    Charette, Mitchell & He (2010), MWR 138; Bocquet & Sakov (2014), QJRMS
    140 (the iEnKS, an iterative 4DEnVar).
    """
    if not callable(model):
        raise TypeError(f"model must be a callable model(x) -> x, got {type(model).__name__}")
    E0 = check_ensemble("E0", E0)
    N, n = E0.shape
    ys, h, R = check_window(observations, h, R, n, E0.dtype)
    K, m = ys.shape
    steps_per_obs = check_count("steps_per_obs", steps_per_obs)
    x_test = jax.eval_shape(model, E0[0])
    if x_test.shape != (n,):
        raise ValueError(f"model must map an (n,) = ({n},) state to ({n},), got {x_test.shape}")
    check_iteration_options(max_iterations, tolerance)
    if bundle_epsilon is not None:
        bundle_epsilon = float(check_number("bundle_epsilon", bundle_epsilon, low=0.0))
    return _envar4d(as_pytree(model), as_pytree(h), E0, ys, R, steps_per_obs=steps_per_obs,
                    bundle_epsilon=bundle_epsilon, max_iterations=max_iterations,
                    tolerance=tolerance)


@partial(jax.jit, static_argnames=("steps_per_obs", "bundle_epsilon", "max_iterations",
                                   "tolerance"))
def _envar4d(model, h, E0, ys, R, *, steps_per_obs, bundle_epsilon, max_iterations, tolerance):
    K = ys.shape[0]
    window_h = partial(_observed_trajectory, model, h, K=K, steps_per_obs=steps_per_obs)
    Ea, info = ienkf(E0, ys.reshape(-1), window_h, stacked_covariance(R, K),
                     bundle_epsilon=bundle_epsilon, max_iterations=max_iterations,
                     tolerance=tolerance, return_info=True)
    x0 = jnp.mean(Ea, axis=0)
    return EnVar4DResult(Ea, x0, _trajectory(model, x0, K, steps_per_obs), info)


def _trajectory(model, x0, K, steps_per_obs):
    """The states after k·steps_per_obs steps from x0, k = 1..K: (K, n)."""
    def interval(x, _):
        x = jax.lax.fori_loop(0, steps_per_obs, lambda _, x: model(x), x)
        return x, x

    return jax.lax.scan(interval, x0, None, length=K)[1]


def _observed_trajectory(model, h, x0, *, K, steps_per_obs):
    """``[h(x_S); …; h(x_{K·S})]`` (K·m,): the window observation operator."""
    states = _trajectory(model, x0, K, steps_per_obs)
    return jax.vmap(partial(apply_h, h))(states).reshape(-1)


def envar4d_cycle(
    model: Callable[[Array], Array],
    E0: ArrayLike,
    observations: ArrayLike,
    *,
    h: ObservationOperator,
    R: Any,
    window: int,
    shift: int | None = None,
    key: Array | int | None = None,
    bundle_epsilon: float | None = None,
    inflation: float | None = None,
    rotate: bool = False,
    max_iterations: int = 10,
    tolerance: float | None = 1e-4,
    steps_per_obs: int | ArrayLike = 1,
    store: str | Sequence[str] = ("forecast_mean", "analysis_mean", "smoothed_mean",
                                  "forecast_spread", "analysis_spread", "smoothed_spread"),
    return_info: bool = False,
) -> AssimilationResult | tuple[AssimilationResult, IterationInfo]:
    """Cycled 4DEnVar: consecutive windows of ``window`` observation times.

    Each window is the ``envar4d`` analysis of its start ensemble (the
    previous window's analysed ensemble propagated to its start, so the
    background covariance is the flow-dependent ensemble one). By default
    (``shift=None``) the windows do not overlap and each observation is used
    once: exactly ``enkit.ienks(model, E0, observations, h=h, R=R,
    lag=window, shift=window, ...)`` (SDA), to which the options are passed
    (see it for the outputs: ``analysis_*`` at t_k is the updated start
    ensemble of the window holding y_k propagated to t_k). A ``shift`` <
    ``window`` slides overlapping windows by ``shift`` observation times,
    each observation assimilated in the window where it is new (``ienks``
    with that shift; shift 1 is DAPPER's ``iEnKS(Lag=window)``).
    ``window=1`` is the cycled IEnKF, i.e. ``envar`` in ``enkit.assimilate``.

    model: one model step, JAX-traceable; E0: (N, n); observations: (K, m);
    h, R: as ``envar4d``; window: observation times per window (1 ≤ window
    ≤ K); shift: observation times between window starts (1 ≤ shift ≤
    window; None: window); key, bundle_epsilon, inflation, rotate, max_iterations,
    tolerance, steps_per_obs, store, return_info: as ``enkit.ienks``.
    Returns an ``AssimilationResult`` (and the per-window info).

    References: Bocquet & Sakov (2014), QJRMS 140; Liu, Xiao & Wang (2008),
    MWR 136.
    """
    window = check_count("window", window)
    shift = window if shift is None else check_count("shift", shift)
    return ienks(model, E0, observations, h=h, R=R, lag=window, shift=shift, key=key,
                 bundle_epsilon=bundle_epsilon, inflation=inflation, rotate=rotate,
                 max_iterations=max_iterations, tolerance=tolerance,
                 steps_per_obs=steps_per_obs, store=store, return_info=return_info)

