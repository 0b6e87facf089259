"""Iterative ensemble Kalman smoother, iEnKS (Bocquet & Sakov 2014).

A 4D variational analysis in ensemble space over a window of ``lag``
analysis times, cycled by sliding the window ``shift`` times forward. One
compiled ``lax.scan`` over windows whose carry is the window-start ensemble
(and the last window's trajectory), so the cost per window does not grow
with the run length.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_ensemble, check_finite, check_float, check_ndim, is_concrete
from enkit.assimilation.types import AssimilationResult
from enkit.assimilation.cycle import forecast
from enkit.assimilation.driver import analysis_steps
from enkit.assimilation.types import as_pytree
from enkit.covariance import as_covariance
from enkit.ensemble import ensemble_spread, scaled_anomalies
from enkit.filters._common import ObservationOperator, as_key, observe
from enkit.filters._iterative import IterationInfo, check_iteration_options, iterate
from enkit.filters.etkf_rotated import mean_preserving_rotation
from enkit.linalg import inverse_sqrt_identity_plus, spd_solve

__all__ = ["IENKS_OUTPUTS", "ienks"]

IENKS_OUTPUTS = tuple(f"{when}_{what}" for when in ("forecast", "analysis", "smoothed")
                      for what in ("mean", "spread", "ensemble"))
_DEFAULT_STORE = ("forecast_mean", "analysis_mean", "smoothed_mean",
                  "forecast_spread", "analysis_spread", "smoothed_spread")


def ienks(
    model: Callable[[Array], Array],
    E0: ArrayLike,
    observations: ArrayLike,
    *,
    h: ObservationOperator,
    R: Any,
    lag: int,
    shift: int = 1,
    key: Array | int | None = None,
    bundle_epsilon: float | None = None,
    mda: bool = False,
    levenberg_marquardt: float | None = None,
    inflation: float | None = None,
    rotate: bool = False,
    max_iterations: int = 10,
    tolerance: float | None = 1e-4,
    steps_per_obs: int | ArrayLike = 1,
    store: str | Sequence[str] = _DEFAULT_STORE,
    return_info: bool = False,
) -> AssimilationResult | tuple[AssimilationResult, IterationInfo]:
    """Iterative ensemble Kalman smoother (iEnKS), SDA or MDA, over a whole run.

    **Window.** Each data-assimilation window spans L = ``lag`` observation
    intervals, from a start time t₀ to t_L. With x̄₀, X₀ the mean and
    normalised anomalies (rows, over sqrt(N − 1)) of the window-start
    ensemble, the state is ``x₀ = x̄₀ + X₀ᵀ w`` and the analysis minimises

        J(w) = ½ ‖w‖² + ½ Σ_{p=1..L} β_p ‖y_p − h(M_{0→p}(x₀))‖²_{R⁻¹}

    by Gauss–Newton in ensemble space from w = 0, T = I, exactly as the
    IEnKF (``enkit.ienkf``) but with the L whitened, weighted innovations
    stacked: per iteration the ensemble ``Eᵢ = x̄₀ + X₀ᵀw + sqrt(N − 1) T X₀``
    (transform variant; ``ε X₀`` for the bundle variant) is propagated
    through the window and observed at every p, and with
    ``S = [sqrt(β_p) R^{-1/2} T⁻¹ Y_p]_p`` (``Y_p/ε`` for the bundle) and
    ``d = [sqrt(β_p) R^{-1/2}(y_p − ȳ_p)]_p``

        Δw = (I + λ_LM I + S Sᵀ)⁻¹ (S d − w),   T = (I + S Sᵀ)^{-1/2},

    until ``‖Δw‖ ≤ tolerance`` (λ_LM = ``levenberg_marquardt``, 0 for plain
    Gauss–Newton). The updated window-start ensemble is
    ``E₀ᵃ = x̄₀ + X₀ᵀ w + sqrt(N − 1) T X₀``, then inflated (anomalies × λ,
    ``inflation``) and rotated (``rotate``: a random mean-preserving
    orthogonal U, ``E ← x̄ + U (E − x̄)``), as DAPPER's ``post_process``;
    propagating it shifts the window by S = ``shift`` observation times.

    **Weights β** (Bocquet & Sakov 2014). Window w ends at
    ``e_w = min(w S, K)`` and starts at ``a_w = max(0, e_w − L)``: the first
    windows start at time 0 and grow (as DAPPER's iEnKS) until they reach L
    intervals; each window always runs the model over L intervals, the
    observations not yet arrived (index > e_w) carrying weight 0.
    - SDA (``mda=False``): β = 1 for the observations new in the window
      (index in (e_{w−1}, e_w]) and 0 for the older ones, already in the
      prior. Each observation is assimilated once.
    - MDA (``mda=True``): every arrived observation j of the window gets
      β = 1/c_j, c_j the number of windows it appears in (c_j = L/S in the
      steady state when S divides L; fewer at the end of the run), so its
      weights sum to 1 over the run (R inflated by c_j each time). The
      ensemble so updated is the one propagated to the next window. The
      outputs come from a second, *balancing* minimisation from the same
      prior with weights 1 − (the weight j already has in the prior), which
      gives every observation in the window its full weight (Bocquet &
      Sakov 2014; Grudzien & Bocquet 2022, GMD 15, the rebalancing step).
      When the two weightings coincide (S = L) one minimisation is run;
      otherwise both ensembles get the same inflation and rotation.
      Note this is MDA *over windows*; DAPPER's ``iEnKS(MDA=True)`` anneals
      over the iterations of one window (ES-MDA style) instead.

    **Outputs** (one row per analysis time k = 1..K; ``store`` chooses):
    - ``forecast_*``: the window-start ensemble before the update,
      propagated to t_k, for the window in which y_k is new (transform
      variant: the first iteration; bundle: one extra propagation). Under
      MDA that prior holds the older in-window observations only partially.
    - ``analysis_*`` (the filtering estimate): the updated (inflated,
      rotated) window-start ensemble propagated to t_k, from the window in
      which y_k is new, so conditioned on the observations up to e_w ≥ k
      (for S = 1: exactly up to k).
    - ``smoothed_*``: for a_w ≤ k < a_{w+1}, the updated ensemble of window w
      propagated to t_k (S = 1: the window-start analysis of the window that
      starts at t_k, given observations up to k + L, DAPPER's convention);
      the times of the last window, k ≥ a_W, from the last window (given
      all K observations), as DAPPER's trailing windows without new data.
    - ``ensemble``: the filtering ensemble at t_K.
    ``*_mean`` (K, n), ``*_spread`` (K,) (``ensemble_spread``),
    ``*_ensemble`` (K, N, n).

    Where enkit differs from DAPPER's iEnKS (``dapper/da_methods/
    variational.py``): the shift S may exceed 1; the analysis at t_k is the
    propagated updated ensemble, not DAPPER's linearised
    ``E + (Δw + T − T_old) X_f`` (one more model propagation of the window
    per cycle: N (I + 1) L interval forecasts for I iterations, against
    DAPPER's N (I L + 1); under MDA two minimisations and a propagation by
    S more), and it is taken after inflation/rotation (means
    are unaffected at the window start); convergence is ``‖Δw‖ ≤ tolerance``
    with w of prior covariance I (DAPPER's default ``wtol=0`` always runs
    ``nIter``: use ``tolerance=None``); the bundle forecast is a propagation
    of the ensemble, not the re-inflated bundle; MDA is over windows (above).
    ``lag=1, shift=1`` is the IEnKF cycle, ``enkit.assimilate(...,
    enkit.over_window(enkit.ienkf))``, whose forecast and analysis it equals.

    model: one model step of one member, (n,) -> (n,), JAX-traceable (model
    error and controls are not supported). E0: (N, n) ensemble at time 0.
    observations: (K, m), one row per analysis time. h: callable on one
    member (n,) -> (m,) or an (m, n) matrix. R: covariance operator or array.
    lag: L ≥ 1 observation intervals per window, L ≤ K. shift: 1 ≤ S ≤ L.
    key: PRNG key or integer seed, needed by ``rotate`` (window w uses
    ``fold_in(key, w)``). bundle_epsilon: None (transform variant) or ε > 0
    (bundle variant; Bocquet & Sakov use 1e-4). mda: multiple data
    assimilation over windows (above). levenberg_marquardt: None, or a fixed
    damping λ_LM ≥ 0 added to the Gauss–Newton Hessian (Bocquet & Sakov
    2012; no adaptive trust region). inflation: None or λ > 0, multiplicative
    on the updated window-start anomalies (DAPPER's ``infl``). rotate: random
    mean-preserving rotation after each update (DAPPER's ``rot=True``).
    max_iterations, tolerance: as ``enkit.ienkf`` (None runs exactly
    ``max_iterations``). steps_per_obs: model steps per observation
    interval, an int or (K,) ints. store: names from ``IENKS_OUTPUTS``.
    return_info: also return an ``IterationInfo`` per window, fields of
    shape (W,), W = ceil(K / S) (with two minimisations under MDA: (W, 2),
    balancing then cycled).
    Returns an ``AssimilationResult`` (times, steps, ensemble and the stored
    outputs; the others None).

    References: Bocquet & Sakov (2014), QJRMS 140, 1521–1535, "An iterative
    ensemble Kalman smoother"; Sakov, Oliver & Bertino (2012), MWR 140
    (L = 1, the IEnKF); Bocquet & Sakov (2013), NPG 20 (MDA); Bocquet &
    Sakov (2012), NPG 19 (Levenberg–Marquardt).
    """
    E0 = check_ensemble("E0", E0)
    N, n = E0.shape
    check_float("observations", observations)
    check_ndim("observations", observations, 2, "(K, m): one row per analysis time")
    ys = jnp.asarray(observations, dtype=E0.dtype)
    check_finite("observations", ys)
    K, m = ys.shape
    if K < 1:
        raise ValueError("observations must hold at least one analysis time")
    lag = _positive_int("lag", lag)
    shift = _positive_int("shift", shift)
    if lag > K:
        raise ValueError(f"lag must not exceed the number of observation times K={K}, "
                         f"got lag={lag}")
    if shift > lag:
        raise ValueError(f"shift must satisfy 1 <= shift <= lag={lag}, got shift={shift}")
    for name, flag in (("mda", mda), ("rotate", rotate), ("return_info", return_info)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    check_iteration_options(max_iterations, tolerance)
    eps = _optional_number("bundle_epsilon", bundle_epsilon, E0.dtype, strict=True)
    lam = _optional_number("levenberg_marquardt", levenberg_marquardt, E0.dtype, strict=False)
    infl = _optional_number("inflation", inflation, E0.dtype, strict=True)
    if rotate:
        key = as_key(key, "ienks(rotate=True)")
    elif isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    # the driver's rule for steps_per_obs (int or (K,) positive ints), as intervals
    n_steps = np.diff(analysis_steps(model, K, steps_per_obs, None), prepend=0).astype(np.int32)
    outputs = _outputs(store)
    out_shape = jax.eval_shape(model, E0[0])
    if out_shape.shape != (n,):
        raise ValueError(f"model must map one member of shape ({n},) to the same shape, "
                         f"got {out_shape.shape}")
    if callable(h):
        h_shape = jax.eval_shape(h, E0[0]).shape
        if h_shape != (m,):
            raise ValueError(f"h must map one member of shape ({n},) to shape (m,) = ({m},) "
                             f"to match observations, but it returned shape {h_shape}")
    elif np.shape(h) != (m, n):
        raise ValueError(f"h as a matrix must have shape (m, n) = ({m}, {n}), "
                         f"got {np.shape(h)}")
    R = as_covariance(R, m).astype(E0.dtype)

    plan = _window_plan(K, lag, shift, mda)
    weights = plan.pop("weights")
    two_stage = mda and not np.array_equal(weights, plan["balance"])
    if two_stage:
        plan["cycled"] = weights
    for name in ("balance", "cycled"):
        if name in plan:
            plan[name] = jnp.asarray(plan[name], E0.dtype)
    config = _Config(lag=lag, shift=shift, two_stage=two_stage, bundle=eps is not None,
                     lm=lam is not None, inflate=infl is not None, rotate=rotate,
                     max_iterations=int(max_iterations), tolerance=tolerance is not None,
                     outputs=outputs)
    hyper = {"eps": eps, "lam": lam, "infl": infl,
             "tol": None if tolerance is None else jnp.asarray(tolerance, E0.dtype)}
    result, info = _run(as_pytree(model), as_pytree(h), R, E0, ys, jnp.asarray(n_steps),
                        plan, hyper, key, config=config)
    steps = np.cumsum(n_steps)
    dt = getattr(model, "dt", None)
    times = steps * (float(dt) if dt is not None else 1)
    result = result._replace(times=jnp.asarray(times), steps=jnp.asarray(steps))
    return (result, info) if return_info else result


class _Config(NamedTuple):
    """The static options of one compiled run (hashable)."""

    lag: int
    shift: int
    two_stage: bool
    bundle: bool
    lm: bool
    inflate: bool
    rotate: bool
    max_iterations: int
    tolerance: bool
    outputs: tuple


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _optional_number(name, value, dtype, *, strict):
    """None, or a scalar array (> 0 if strict, else >= 0) in ``dtype``."""
    if value is None:
        return None
    if is_concrete(value):
        v = np.asarray(value)
        bad = v.ndim != 0 or not np.issubdtype(v.dtype, np.number) or not np.isfinite(v)
        if bad or (v <= 0 if strict else v < 0):
            raise ValueError(f"{name} must be None or a finite number "
                             f"{'> 0' if strict else '>= 0'}, got {value!r}")
    return jnp.asarray(value, dtype)


def _outputs(store) -> tuple[str, ...]:
    store = (store,) if isinstance(store, str) else tuple(store)
    for name in store:
        if name not in IENKS_OUTPUTS:
            raise ValueError(f"unknown output {name!r} for ienks; valid names: "
                             f"{', '.join(IENKS_OUTPUTS)}")
    return tuple(dict.fromkeys(store))


def _window_plan(K: int, L: int, S: int, mda: bool) -> dict:
    """Which observations each window holds, with which weights, and which
    window each output row comes from (NumPy, from the static sizes).

    Windows w = 0..W−1 (0-based here) end at e_w = min((w + 1) S, K) and
    start at a_w = max(0, e_w − L); window position p = 1..L is observation
    a_w + p (1-based). Returns int32/float arrays: start (W,), shift (W,)
    (a_{w+1} − a_w, 0 for the last), index (W,) = w + 1 (for keys), newest
    (W, S) positions of the observations new in w (clipped to L), weights
    and balance (W, L) (see ``ienks``), and the (K,) row maps: rows_window,
    rows_slot (forecast/analysis), smooth_window, smooth_slot, smooth_tail,
    tail_pos, plus last_pos: the position of t_K in the last window.
    """
    W = -(-K // S)
    e = np.minimum(np.arange(1, W + 1) * S, K)
    e_prev = np.concatenate([[0], e[:-1]])
    a = np.maximum(0, e - L)
    j = a[:, None] + np.arange(1, L + 1)  # (W, L) observation index at each position
    arrived = j <= e[:, None]
    new = arrived & (j > e_prev[:, None])
    if mda:
        # Observation j is in the consecutive windows from (j − 1) // S, where
        # it is new, on: c_j of them, each giving it the weight 1/c_j.
        count = np.maximum(np.bincount(j[arrived], minlength=K + 1)[j], 1)
        earlier = np.arange(W)[:, None] - (j - 1) // S  # windows that already held it
        weights = np.where(arrived, 1.0 / count, 0.0)
        balance = np.where(arrived, 1.0 - earlier / count, 0.0)
    else:
        weights = balance = new.astype(float)
    k = np.arange(1, K + 1)
    rows_window = (k - 1) // S
    smooth_window = np.searchsorted(a, k, side="right") - 1
    tail = smooth_window == W - 1
    plan = {
        "start": a.astype(np.int32),
        "shift": np.concatenate([a[1:] - a[:-1], [0]]).astype(np.int32),
        "index": np.arange(1, W + 1, dtype=np.int32),
        "newest": np.minimum(e_prev[:, None] + 1 + np.arange(S) - a[:, None], L)
        .astype(np.int32),
        "weights": weights,
        "balance": balance,
        "rows_window": rows_window.astype(np.int32),
        "rows_slot": (k - 1 - rows_window * S).astype(np.int32),
        "smooth_window": np.where(tail, 0, smooth_window).astype(np.int32),
        "smooth_slot": np.where(tail, 0, k - a[smooth_window]).astype(np.int32),
        "smooth_tail": tail,
        "tail_pos": np.where(tail, k - a[-1], 0).astype(np.int32),
    }
    plan["last_pos"] = int(K - a[-1])
    return plan


def _propagate(model, h, E, n_w, *, states: bool, observed: bool):
    """Forecast E through the window's intervals n_w (L,): the ensemble
    (L, N, n) and its simulated observations (L, N, m) at each position."""

    def interval(E, n):
        E = forecast(model, E, n, t0=0, controls=None, noise=None, key=None)
        return E, (E if states else None, observe(h, E) if observed else None)

    _, (X, Y) = jax.lax.scan(interval, E, n_w)
    return X, Y


def _minimise(model, h, R, xbar, X, HE0, y_w, n_w, beta, hyper, config):
    """Gauss–Newton (or fixed-damping LM) minimisation of the window cost.

    xbar, X: (n,), (N, n) window-start mean and normalised anomalies; HE0:
    (L, N, m) the simulated observations of the prior trajectory (used by
    the transform variant's first iteration); y_w (L, m); n_w (L,); beta (L,).
    Returns ((w, T), IterationInfo).
    """
    N = X.shape[0]
    c = jnp.sqrt(jnp.asarray(N - 1, X.dtype))
    eye = jnp.eye(N, dtype=X.dtype)
    sq = jnp.sqrt(beta)

    def gauss_newton(w, HEi, Tinv):
        ybar = jnp.mean(HEi, axis=1)
        Yi = (HEi - ybar[:, None, :]) / c  # (L, N, m)
        Z = Yi / hyper["eps"] if config.bundle else jnp.einsum("ij,ljm->lim", Tinv, Yi)
        S = (R.whiten(Z) * sq[:, None, None]).transpose(1, 0, 2).reshape(N, -1)
        d = (R.whiten(y_w - ybar) * sq[:, None]).reshape(-1)
        A = S @ S.T
        T = inverse_sqrt_identity_plus(A)  # (I + A)^{-1/2}
        g = S @ d - w
        if config.lm:
            dw = spd_solve(A + (1.0 + hyper["lam"]) * eye, g)
        else:
            dw = T @ (T @ g)  # (I + A)⁻¹ (S d − w)
        Tinv = Tinv if config.bundle else (eye + A) @ T  # (I + A)^{1/2}
        return (w + dw, T, Tinv), jnp.linalg.norm(dw)

    def step(state):
        w, T, Tinv = state
        x = xbar + w @ X
        Ei = x + c * (hyper["eps"] * X if config.bundle else T @ X)
        _, HEi = _propagate(model, h, Ei, n_w, states=False, observed=True)
        return gauss_newton(w, HEi, Tinv)

    tol = hyper["tol"] if config.tolerance else None
    w0 = jnp.zeros(N, X.dtype)
    if config.bundle:
        state, info = iterate(step, (w0, eye, eye), tolerance=tol,
                              max_iterations=config.max_iterations)
    else:
        state, inc = gauss_newton(w0, HE0, eye)
        state, info = iterate(step, state, tolerance=tol, max_iterations=config.max_iterations,
                              done=1, increment=inc)
    w, T, _ = state
    return (w, T), info


def _updated(xbar, X, solution, U, hyper, config):
    """The updated window-start ensemble, inflated and rotated."""
    w, T = solution
    c = jnp.sqrt(jnp.asarray(X.shape[0] - 1, X.dtype))
    Ea = xbar + w @ X + c * (T @ X)
    if config.inflate or config.rotate:
        xa = jnp.mean(Ea, axis=0)
        A = Ea - xa
        if config.inflate:
            A = hyper["infl"] * A
        if config.rotate:
            A = U @ A
        Ea = xa + A
    return Ea


def _stats(out, prefix, Es, outputs):
    """Requested statistics of ensembles Es (..., N, n) under ``prefix``."""
    if f"{prefix}_mean" in outputs:
        out[f"{prefix}_mean"] = jnp.mean(Es, axis=-2)
    if f"{prefix}_spread" in outputs:
        out[f"{prefix}_spread"] = jax.vmap(ensemble_spread)(Es)
    if f"{prefix}_ensemble" in outputs:
        out[f"{prefix}_ensemble"] = Es


@partial(jax.jit, static_argnames=("config",))
def _run(model, h, R, E0, ys, n_steps, plan, hyper, key, *, config):
    L, S, outputs = config.lag, config.shift, config.outputs
    want_forecast = any(o.startswith("forecast_") for o in outputs)

    def window(carry, x):
        E, _ = carry
        y_w = jax.lax.dynamic_slice_in_dim(ys, x["start"], L)
        n_w = jax.lax.dynamic_slice_in_dim(n_steps, x["start"], L)
        prior = HE0 = None  # the prior's trajectory: forecast rows, transform's first step
        if want_forecast or not config.bundle:
            prior, HE0 = _propagate(model, h, E, n_w, states=want_forecast,
                                    observed=not config.bundle)
        xbar, X = scaled_anomalies(E)
        args = (model, h, R, xbar, X, HE0, y_w, n_w)
        sol, info = _minimise(*args, x["balance"], hyper, config)
        U = (mean_preserving_rotation(jax.random.fold_in(key, x["index"]), E.shape[0], E.dtype)
             if config.rotate else None)
        Ea = _updated(xbar, X, sol, U, hyper, config)
        later, _ = _propagate(model, h, Ea, n_w, states=True, observed=False)
        traj = jnp.concatenate([Ea[None], later])  # (L + 1, N, n) at positions 0..L
        if config.two_stage:
            sol_c, info_c = _minimise(*args, x["cycled"], hyper, config)
            Ec = _updated(xbar, X, sol_c, U, hyper, config)
            steps = jnp.sum(jnp.where(jnp.arange(L) < x["shift"], n_w, 0))
            E_next = forecast(model, Ec, steps, t0=0, controls=None, noise=None, key=None)
            info = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), info, info_c)
        else:
            E_next = traj[x["shift"]]
        out = {}
        if want_forecast:
            _stats(out, "forecast", prior[x["newest"] - 1], outputs)
        _stats(out, "analysis", traj[x["newest"]], outputs)
        _stats(out, "smoothed", traj[:S], outputs)
        return (E_next, traj), (out, info)

    xs = {name: plan[name] for name in ("start", "shift", "index", "newest", "balance")}
    if config.two_stage:
        xs["cycled"] = plan["cycled"]
    traj0 = jnp.zeros((L + 1,) + E0.shape, E0.dtype)
    (_, traj), (outs, info) = jax.lax.scan(window, (E0, traj0), xs)

    rows = (plan["rows_window"], plan["rows_slot"])
    result = {}
    for name in outputs:
        if name.startswith("smoothed_"):
            continue
        result[name] = outs[name][rows]
    tail = {}
    _stats(tail, "smoothed", traj, outputs)
    for name, value in tail.items():
        per_window = outs[name][plan["smooth_window"], plan["smooth_slot"]]
        from_tail = value[plan["tail_pos"]]
        pick = plan["smooth_tail"].reshape((-1,) + (1,) * (per_window.ndim - 1))
        result[name] = jnp.where(pick, from_tail, per_window)
    return AssimilationResult(ensemble=traj[plan["last_pos"]], **result), info
