"""Reduced-rank square-root Kalman filter, RRSQRT (Verlaan & Heemink 1997).

The error covariance is carried by q modes, the rows of a square root
``S: (q, n)`` with ``P ≈ Sᵀ S`` (rows, as enkit holds ensembles: the modes
play the part of the normalised anomalies X of an (N, n) ensemble, for
which ``P = Xᵀ X``; the paper's n × q matrix of columns is ``Sᵀ``). One
cycle:

- forecast (``rrsqrt_forecast``, one model step): the mean by the model,
  ``x̄ ← M(x̄)``; every mode by the tangent-linear model at x̄,
  ``sⱼ ← M'(x̄) sⱼ`` (``jax.linearize``: exact for a JAX model), or by the
  paper's finite difference ``sⱼ ← (M(x̄ + ε sⱼ) − M(x̄)) / ε`` with
  ``epsilon=ε``; the r rows of a model-error square root ``A`` (``Q = Aᵀ A``)
  are appended, giving q + r modes, and the rank is reduced back to q
  (``rrsqrt_reduce``);
- reduction (``rrsqrt_reduce``, the defining step): with the small
  (q + r) × (q + r) Gram matrix ``G = S Sᵀ = V Λ Vᵀ`` (eigenvalues in
  decreasing order), ``S ← V_qᵀ S``: the new rows are orthogonal, their
  squared norms are the q leading eigenvalues, and ``Sᵀ S`` becomes the
  best rank-q approximation of the old one (the leading eigenpairs of P,
  found from the small matrix), its trace lower by the dropped eigenvalues;
- analysis (``rrsqrt_analysis``): the square-root update in the
  q-dimensional mode space, all observations at once (not serially), with
  ``Y = S Hᵀ`` (q, m), ``Ỹ = Y R^{-1/2}``, ``d = R^{-1/2}(y − H x̄)`` and
  ``T = I_q + Ỹ Ỹᵀ``:

      x̄ₐ = x̄ + Sᵀ T⁻¹ Ỹ d     (= x̄ + K (y − H x̄), K = P Hᵀ (H P Hᵀ + R)⁻¹),
      Sₐ = T^{-1/2} S          (symmetric root: Sₐᵀ Sₐ = P − K H P).

  This is the symmetric square-root transform that ``etkf`` and ``estkf``
  apply to their anomalies (``enkit.filters._transform``), here on the
  modes: with the modes embedded as the error-subspace coordinates of a
  (q + 1)-member ensemble (``modes_to_ensemble``), ``estkf`` returns the
  ensemble of ``rrsqrt_analysis``'s result, member for member. R enters
  only through ``whiten`` (never densified).

``rrsqrt_filter`` cycles forecast and analysis in one ``lax.scan``. In the
ensemble driver ``enkit.assimilate`` RRSQRT runs as ``estkf`` on the
embedded modes with the reduction as a driver step
(``enkit.rank_reduction.RankReduction``): identical for a linear model; for
a nonlinear one the driver propagates members (the modes by differences of
size √q‖sⱼ‖ about the ensemble mean), where ``rrsqrt_filter`` propagates
the mean and the tangent-linear modes.

Reference: Verlaan & Heemink (1997), "Tidal flow forecasting using reduced
rank square root filters", Stochastic Hydrology and Hydraulics 11:349–368.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import (
    check_ensemble,
    check_finite,
    check_float,
    check_ndim,
    check_number,
    is_concrete,
)
from enkit.covariance import Covariance, as_covariance
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, check_matrix_h
from enkit.filters._transform import symmetric_transform
from enkit.filters.estkf import error_subspace_projection

__all__ = [
    "RRSQRTResult",
    "RRSQRTState",
    "ensemble_to_modes",
    "modes_to_ensemble",
    "rrsqrt_analysis",
    "rrsqrt_filter",
    "rrsqrt_forecast",
    "rrsqrt_init",
    "rrsqrt_reduce",
]


class RRSQRTState(NamedTuple):
    """The state RRSQRT carries: mean (n,) and modes (q, n), ``P = modesᵀ modes``."""

    mean: Array
    modes: Array


class RRSQRTResult(NamedTuple):
    """What ``rrsqrt_filter`` returns, one row per analysis time (K).

    forecast_mean, analysis_mean: (K, n); forecast_modes, analysis_modes:
    (K, q, n) (covariances ``modesᵀ modes``); truncated_variance: (K,) the
    variance the reductions of each forecast dropped (the sum of the
    dropped eigenvalues over its model steps); state: the final
    ``RRSQRTState`` (the last analysis).
    """

    forecast_mean: Array
    analysis_mean: Array
    forecast_modes: Array
    analysis_modes: Array
    truncated_variance: Array
    state: RRSQRTState


# ------------------------------------------------------------------ checks


def check_rank(name: str, q) -> int:
    """q must be a Python/NumPy integer ≥ 1 (a static number of modes)."""
    if isinstance(q, (bool, np.bool_)) or not isinstance(q, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1 (the number of modes kept), "
                        f"got {q!r}")
    if q < 1:
        raise ValueError(f"{name} must be an integer >= 1 (the number of modes kept), got {q}")
    return int(q)


def _check_mean_modes(mean, modes) -> tuple[Array, Array]:
    check_float("mean", mean)
    check_float("modes", modes)
    mean, modes = jnp.asarray(mean), jnp.asarray(modes)
    check_ndim("mean", mean, 1, "(n,)")
    n = mean.shape[0]
    check_ndim("modes", modes, 2, f"(q, n) = (q, {n}): one mode per row")
    if modes.shape[1] != n or modes.shape[0] < 1:
        raise ValueError(f"modes must have shape (q, n) = (q, {n}) with q >= 1, one mode per "
                         f"row, got {modes.shape}")
    check_finite("mean", mean)
    check_finite("modes", modes)
    dtype = jnp.result_type(mean, modes)
    return mean.astype(dtype), modes.astype(dtype)


def noise_modes(model_noise_sqrt, n: int, dtype) -> Array | None:
    """The rows A (r, n) of a model-error square root, ``Q = Aᵀ A``.

    model_noise_sqrt: None; a covariance operator Q of dimension n (its
    factor's columns as rows, ``Q.colorize(I)``: r = n); or an (r, n) array
    of rows A (a low-rank Q, e.g. a few noise sources) — an array is always
    the square root, never Q itself.
    """
    if model_noise_sqrt is None:
        return None
    if isinstance(model_noise_sqrt, Covariance):
        if model_noise_sqrt.dim != n:
            raise ValueError(f"model_noise_sqrt as a covariance operator must have dimension "
                             f"n = {n}, got {model_noise_sqrt.dim}")
        return model_noise_sqrt.astype(dtype).colorize(jnp.eye(n, dtype=dtype))
    check_float("model_noise_sqrt", model_noise_sqrt)
    A = jnp.asarray(model_noise_sqrt)
    if A.ndim != 2 or A.shape[1] != n:
        raise ValueError(f"model_noise_sqrt must be a covariance operator of dimension {n} or "
                         f"an (r, n) = (r, {n}) array of square-root rows (Q = Aᵀ A), got "
                         f"shape {A.shape}")
    check_finite("model_noise_sqrt", A)
    return A.astype(dtype)


def _check_epsilon(epsilon):
    if epsilon is None:
        return None
    check_number("epsilon", epsilon, low=0.0)
    return epsilon


def check_observations(observations, dtype):
    """The (K, m) observation record of a filter cycle as an array of
    ``dtype``, K ≥ 1, finite (the one check of ``rrsqrt_filter``,
    ``ekf_filter`` and ``ukf_filter``)."""
    check_float("observations", observations)
    ys = jnp.asarray(observations, dtype)
    check_ndim("observations", ys, 2, "(K, m): one row per analysis time")
    check_finite("observations", ys)
    if ys.shape[0] == 0:
        raise ValueError("observations must hold at least one analysis time (K >= 1)")
    return ys


def _observation_operator(h, n: int, m: int):
    """A matrix h as an (m, n) array (checked); a callable as it is."""
    if callable(h):
        return h
    if np.shape(h) != (m, n):
        raise ValueError(f"h as a matrix must have shape (m, n) = ({m}, {n}), got {np.shape(h)}")
    check_matrix_h(h)
    return h


# ------------------------------------------------------------------ L1 pieces


def rrsqrt_reduce(modes: ArrayLike, q: int) -> Array:
    """Reduce p modes to the q leading ones: ``S ← V_qᵀ S``.

    With the p × p Gram matrix ``G = S Sᵀ = V Λ Vᵀ`` (λ₁ ≥ … ≥ λ_p) and V_q
    its q leading eigenvectors, the reduced rows ``V_qᵀ S`` are orthogonal
    with squared norms λ₁..λ_q, in that order, and

        S_redᵀ S_red = Σ_{i ≤ q} uᵢ λᵢ uᵢᵀ,    uᵢ = Sᵀ vᵢ / √λᵢ,

    the truncated eigendecomposition of ``P = Sᵀ S`` (its best rank-q
    approximation); ``trace P − trace P_red = Σ_{i > q} λᵢ``. Only the
    small p × p matrix is decomposed (O(p² n + p³)); the reduced modes are
    formed from S itself, not from √λ. With p ≤ q nothing is dropped: the
    p rows are rotated onto the eigenbasis and q − p zero rows appended
    (the shape stays (q, n)). The signs of the modes are arbitrary.

    modes: (p, n) rows; q: number of modes kept (int ≥ 1). Returns (q, n).
    The reduction is differentiable where λ_q > λ_{q+1} and the eigenvalues
    are distinct (``eigh``'s derivative).

    Reference: Verlaan & Heemink (1997), Stoch. Hydrol. Hydraul. 11, §3.
    """
    q = check_rank("q", q)
    check_float("modes", modes)
    S = jnp.asarray(modes)
    check_ndim("modes", S, 2, "(p, n): one mode per row")
    p = S.shape[0]
    G = S @ S.T
    _, V = jnp.linalg.eigh(0.5 * (G + G.T))  # ascending eigenvalues
    V = V[:, ::-1][:, : min(p, q)]  # leading first
    reduced = V.T @ S
    if p < q:
        reduced = jnp.concatenate([reduced, jnp.zeros((q - p, S.shape[1]), S.dtype)])
    return reduced


def rrsqrt_analysis(
    mean: ArrayLike,
    modes: ArrayLike,
    y: ArrayLike,
    h: ObservationOperator,
    R,
) -> tuple[Array, Array]:
    """RRSQRT measurement update of ``N(mean, modesᵀ modes)`` in mode space.

    With ``Y = S Hᵀ`` (q, m), whitened by R (``Ỹ = Y R^{-1/2}``,
    ``d = R^{-1/2} (y − H x̄)``) and ``T = I_q + Ỹ Ỹᵀ``:

        x̄ₐ = x̄ + Sᵀ T⁻¹ Ỹ d,        Sₐ = T^{-1/2} S (symmetric root),

    so ``x̄ₐ`` is the Kalman mean and ``Sₐᵀ Sₐ = (I − K H) P`` the Kalman
    covariance of ``P = Sᵀ S``. T^{-1/2} is the symmetric transform of
    ``etkf``/``estkf`` (``enkit.filters._transform.symmetric_transform``,
    q × q): the update is that of ``estkf`` on ``modes_to_ensemble(mean,
    modes)``. All m observations are processed at once; R is used through
    ``whiten`` only. A callable h is linearised at the mean by ``jax.jvp``
    (``Y``'s rows ``H'(x̄) sⱼ``, innovation ``y − h(x̄)``; exact for a
    linear h) without forming H.

    mean: (n,); modes: (q, n) rows, ``P = modesᵀ modes``; y: (m,); h: (m, n)
    matrix or callable ``(n,) -> (m,)``; R: covariance operator or array
    (scalar, (m,) variances or (m, m)). Returns ``(mean_a (n,), modes_a
    (q, n))``. With m = 0 the input comes back unchanged.

    Reference: Verlaan & Heemink (1997), Stoch. Hydrol. Hydraul. 11.
    """
    mean, modes = _check_mean_modes(mean, modes)
    n = mean.shape[0]
    check_ndim("y", y, 1, "(m,)")
    y = jnp.asarray(y, mean.dtype)
    check_finite("y", y)
    m = y.shape[0]
    h = _observation_operator(h, n, m)
    if m == 0:
        return mean, modes
    R = as_covariance(R, m).astype(mean.dtype)
    if callable(h):
        hx, h_lin = jax.linearize(h, mean)
        if hx.shape != (m,):
            raise ValueError(f"h must map one state of shape ({n},) to shape (m,) = ({m},) "
                             f"to match y, but it returned shape {hx.shape}")
        Y = jax.vmap(h_lin)(modes)
    else:
        H = jnp.asarray(h, mean.dtype)
        hx, Y = H @ mean, modes @ H.T
    if is_concrete(hx) and not (np.all(np.isfinite(np.asarray(hx)))
                                and np.all(np.isfinite(np.asarray(Y)))):
        raise ValueError("h must return finite values at the mean and finite derivatives "
                         "along the modes, but h(mean) or H·modes holds NaN or inf")
    w, Z = symmetric_transform(R.whiten(Y.astype(mean.dtype)), R.whiten(y - hx))
    return mean + w @ modes, Z @ modes


def rrsqrt_forecast(
    model: Callable[[Array], Array],
    mean: ArrayLike,
    modes: ArrayLike,
    *,
    q: int | None = None,
    model_noise_sqrt: Covariance | ArrayLike | None = None,
    epsilon: ArrayLike | None = None,
) -> tuple[Array, Array]:
    """One RRSQRT forecast step: propagate, add model error, reduce.

        x̄ ← M(x̄),
        sⱼ ← M'(x̄) sⱼ                      (epsilon=None: ``jax.linearize``)
        sⱼ ← (M(x̄ + ε sⱼ) − M(x̄)) / ε      (epsilon=ε: finite differences),
        S ← rrsqrt_reduce([S; A], q)         (Q = Aᵀ A, r rows of A).

    The tangent-linear path is exact and needs a JAX-differentiable model;
    the finite-difference path (the paper's, for a nonlinear model) needs
    only evaluations, at q + 1 states (ε is relative to each mode: the
    perturbation is ε sⱼ).

    model: one model step ``(n,) -> (n,)`` (JAX-traceable); mean: (n,);
    modes: (p, n); q: modes kept (default p); model_noise_sqrt: None, a
    covariance operator Q or (r, n) square-root rows A (see ``noise_modes``);
    epsilon: None or a positive step. Returns ``(mean (n,), modes (q, n))``.
    """
    mean, modes = _check_mean_modes(mean, modes)
    q = modes.shape[0] if q is None else check_rank("q", q)
    A = noise_modes(model_noise_sqrt, mean.shape[0], mean.dtype)
    epsilon = _check_epsilon(epsilon)
    mean_f, modes_f, _ = _forecast_step(model, mean, modes, A, epsilon, q)
    return mean_f, modes_f


def _forecast_step(model, mean, modes, A, epsilon, q):
    """(mean, reduced modes, dropped variance) after one model step."""
    out = jax.eval_shape(model, mean)
    if out.shape != mean.shape:  # checked when traced (shapes are static)
        raise ValueError(f"model must map a state of shape {mean.shape} to the same shape, "
                         f"got {out.shape}")
    if epsilon is None:
        mean_f, tl = jax.linearize(lambda x: model(x).astype(mean.dtype), mean)
        prop = jax.vmap(tl)(modes)
    else:
        eps = jnp.asarray(epsilon, mean.dtype)
        mean_f = model(mean).astype(mean.dtype)
        prop = ((jax.vmap(model)(mean + eps * modes) - mean_f) / eps).astype(mean.dtype)
    full = prop if A is None else jnp.concatenate([prop, A.astype(prop.dtype)], axis=0)
    reduced = rrsqrt_reduce(full, q)
    dropped = jnp.sum(full * full) - jnp.sum(reduced * reduced)
    return mean_f, reduced, jnp.maximum(dropped, 0.0)


def rrsqrt_init(mean: ArrayLike, cov: Covariance | ArrayLike, q: int) -> RRSQRTState:
    """The initial state: ``mean`` and the q leading modes of the prior
    covariance (``rrsqrt_reduce`` of the rows of its factor, ``cov.colorize(I)``:
    forms an n × n matrix, meant for moderate n). mean: (n,); cov:
    covariance operator or array (scalar, (n,) variances, (n, n)); q: int ≥ 1.
    """
    q = check_rank("q", q)
    check_float("mean", mean)
    mean = jnp.asarray(mean)
    check_ndim("mean", mean, 1, "(n,)")
    n = mean.shape[0]
    C = as_covariance(cov, n).astype(mean.dtype)
    return RRSQRTState(mean, rrsqrt_reduce(C.colorize(jnp.eye(n, dtype=mean.dtype)), q))


# ------------------------------------------------------ modes as an ensemble


def modes_to_ensemble(mean: ArrayLike, modes: ArrayLike) -> Array:
    """The (q + 1)-member ensemble whose error-subspace coordinates are the modes.

        E = x̄ + √q · Ω S,     Ω = ``error_subspace_projection(q + 1)`` (q + 1, q),

    Ωᵀ Ω = I and Ωᵀ 1 = 0, so E's sample mean is x̄, its normalised
    anomalies are ``X = Ω S`` and its sample covariance ``Xᵀ X = Sᵀ S``;
    ``ensemble_to_modes`` inverts it exactly. mean: (n,); modes: (q, n).
    Returns (q + 1, n).
    """
    mean, modes = _check_mean_modes(mean, modes)
    q = modes.shape[0]
    Omega = error_subspace_projection(q + 1, mean.dtype)
    return mean + jnp.sqrt(jnp.asarray(q, mean.dtype)) * (Omega @ modes)


def ensemble_to_modes(E: ArrayLike) -> RRSQRTState:
    """Sample mean and error-subspace modes ``S = Ωᵀ X`` (N − 1, n) of an
    ensemble (X: its normalised anomalies), so ``Sᵀ S`` is its sample
    covariance; the inverse of ``modes_to_ensemble``. E: (N, n), N ≥ 2."""
    E = check_ensemble("E", E)
    xbar, X = scaled_anomalies(E)
    return RRSQRTState(xbar, error_subspace_projection(E.shape[0], E.dtype).T @ X)


# ------------------------------------------------------------------ the cycle


def rrsqrt_filter(
    model: Callable[[Array], Array],
    mean0: ArrayLike,
    modes0: ArrayLike,
    observations: ArrayLike,
    *,
    h: ObservationOperator,
    R: Any,
    q: int | None = None,
    model_noise_sqrt: Covariance | ArrayLike | None = None,
    steps_per_obs: int = 1,
    epsilon: ArrayLike | None = None,
) -> RRSQRTResult:
    """Cycle RRSQRT forecasts and analyses in one compiled ``lax.scan``.

    For each analysis time k = 1..K: ``steps_per_obs`` forecast steps
    (``rrsqrt_forecast``: model, tangent-linear or finite-difference modes,
    model error ``Q`` appended after every model step, reduction to q), then
    ``rrsqrt_analysis`` with ``observations[k − 1]``. For a linear model and
    q ≥ n it is the Kalman filter (nothing is ever truncated).

    model: one model step ``(n,) -> (n,)``, JAX-traceable (a pytree such as
    ``enkit.Lorenz96``, or any function); mean0: (n,); modes0: (p, n)
    initial modes (``rrsqrt_init`` makes them from a covariance);
    observations: (K, m); h: (m, n) matrix or callable; R: covariance
    operator or array; q: modes kept (default p); model_noise_sqrt: None, a
    covariance operator Q or (r, n) rows A with ``Q = Aᵀ A``; steps_per_obs:
    model steps per analysis (int ≥ 1); epsilon: None (``jax.linearize``) or
    the finite-difference step. Compiled once per shape and option set: a
    second call with new values (means, modes, observations, R, Q, ε, a
    model's parameters) reuses the program. Returns an ``RRSQRTResult``.

    Observations are a dense (K, m) array here (no masks, controls or
    checkpoints): for those, run RRSQRT through ``enkit.assimilate`` (the
    module docstring, ``enkit.rank_reduction.RankReduction``).

    Reference: Verlaan & Heemink (1997), Stoch. Hydrol. Hydraul. 11.
    """
    mean0, modes0 = _check_mean_modes(mean0, modes0)
    n = mean0.shape[0]
    q = modes0.shape[0] if q is None else check_rank("q", q)
    steps = check_rank("steps_per_obs", steps_per_obs)
    ys = check_observations(observations, mean0.dtype)
    K, m = ys.shape
    h = _observation_operator(h, n, m)
    if callable(h) and not _is_pytree(h):
        h = jax.tree_util.Partial(h)
    if not callable(h):
        h = jnp.asarray(h, mean0.dtype)
    R = as_covariance(R, m).astype(mean0.dtype) if m else None
    A = noise_modes(model_noise_sqrt, n, mean0.dtype)
    epsilon = _check_epsilon(epsilon)
    if epsilon is not None:
        epsilon = jnp.asarray(epsilon, mean0.dtype)
    model = model if _is_pytree(model) else jax.tree_util.Partial(model)
    # Start from exactly q modes (reduction, or zero rows, to q).
    modes0 = rrsqrt_reduce(modes0, q) if modes0.shape[0] != q else modes0
    return _filter_scan(model, h, R, A, epsilon, mean0, modes0, ys, steps=steps)


def _is_pytree(f) -> bool:
    """True when f is a pytree with array leaves (not a bare function leaf)."""
    leaves = jax.tree_util.tree_leaves(f)
    return not (len(leaves) == 1 and leaves[0] is f)


@partial(jax.jit, static_argnames=("steps",))
def _filter_scan(model, h, R, A, epsilon, mean0, modes0, ys, *, steps):
    q = modes0.shape[0]

    def forecast(carry, _):
        mean, modes, lost = carry
        mean, modes, dropped = _forecast_step(model, mean, modes, A, epsilon, q)
        return (mean, modes, lost + dropped), None

    def one_cycle(state, y):
        mean, modes = state
        zero = jnp.zeros((), mean.dtype)
        (mean_f, modes_f, lost), _ = jax.lax.scan(forecast, (mean, modes, zero), None,
                                                  length=steps)
        if R is None:  # m = 0: forecasts only
            mean_a, modes_a = mean_f, modes_f
        else:
            mean_a, modes_a = rrsqrt_analysis(mean_f, modes_f, y, h, R)
        return (mean_a, modes_a), (mean_f, mean_a, modes_f, modes_a, lost)

    (mean, modes), (xf, xa, Sf, Sa, lost) = jax.lax.scan(one_cycle, (mean0, modes0), ys)
    return RRSQRTResult(xf, xa, Sf, Sa, lost, RRSQRTState(mean, modes))
