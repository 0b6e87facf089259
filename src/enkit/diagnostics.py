"""Verification statistics of ensemble runs.

Pure JAX functions, jit-able, float32 and float64, with members on the
leading axis of one ensemble: ``E: (N, n)``, truth ``(n,)``, an observation
``(m,)``. Every function that works per cycle also takes a series: extra
*leading* axes ``(..., N, n)`` (typically ``(K, N, n)`` for K times) with
the truth ``(..., n)`` and observations ``(..., m)``; the last two axes are
always members and entries, nothing is guessed from ``ndim``.

Where an observation operator and an observation-error covariance are taken,
``h`` is a callable on one member ``(n,) -> (m,)`` or an ``(m, n)`` matrix
(as in every analysis scheme, ``enkit.observe``) and ``R`` a covariance
operator or an array (scalar, ``(m,)`` variances or ``(m, m)``,
``enkit.as_covariance``). The innovation covariance ``S = H P Hᵀ + R`` is
never formed when m > N: χ², log-likelihoods and degrees of freedom then go
through the ensemble-space (Woodbury) form, O(N² m), with R only solved.

Input checks run once at the door and name the argument and the expected
shape; value checks (finiteness, signs) run on concrete arrays only.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import cho_factor, cho_solve, solve_triangular
from jax.scipy.stats import norm
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_float, is_concrete
from enkit.covariance import Covariance, as_covariance
from enkit.ensemble import ensemble_spread, scaled_anomalies
from enkit.filters._common import ObservationOperator, as_key, observe

__all__ = [
    "CRPS",
    "DFS",
    "DesroziersEstimate",
    "EnsembleCollapse",
    "InnovationStatistics",
    "SpreadSkill",
    "crps",
    "crps_gaussian",
    "desroziers",
    "desroziers_diagonal",
    "dfs",
    "dfs_exact",
    "effective_sample_size",
    "ensemble_collapse",
    "innovation_chi2",
    "innovation_statistics",
    "log_likelihood",
    "observation_rank_histogram",
    "rank_histogram",
    "rmse",
    "spread",
    "spread_skill",
    "spread_skill_ratio",
]


def rmse(estimate: ArrayLike, truth: ArrayLike) -> Array:
    """Root-mean-square error over the last axis: ``sqrt(mean_j (x̂_j − x_j)²)``.

    estimate, truth: (..., n) of the same shape. Returns shape (...).
    """
    estimate, truth = jnp.asarray(estimate), jnp.asarray(truth)
    if estimate.shape != truth.shape:
        raise ValueError(
            f"estimate and truth must have the same shape, got {estimate.shape} "
            f"and {truth.shape}"
        )
    return jnp.sqrt(jnp.mean((estimate - truth) ** 2, axis=-1))


# --------------------------------------------------------------------------
# Checks and shared pieces (private)

_E_SHAPE = "(N, n) (members on axis 0), or (..., N, n) for a series"


def _members(name: str, E, shape: str = _E_SHAPE) -> Array:
    """An ensemble or series of ensembles ``(..., N, n)``, N ≥ 2, finite."""
    check_float(name, E)
    E = jnp.asarray(E)
    if E.ndim < 2:
        raise ValueError(f"{name} must have shape {shape}, got shape {E.shape}")
    if E.shape[-2] < 2:
        raise ValueError(
            f"{name} must hold at least N=2 members on axis -2, got N={E.shape[-2]}"
        )
    check_finite(name, E)
    return E


def _truth(name: str, truth, E: Array) -> Array:
    """The verifying truth ``(..., n)`` of an ensemble series ``(..., N, n)``."""
    truth = jnp.asarray(truth, dtype=E.dtype)
    expected = E.shape[:-2] + E.shape[-1:]
    if truth.shape != expected:
        raise ValueError(
            f"{name} must have shape {expected} (E's shape without the member "
            f"axis), got shape {truth.shape}"
        )
    check_finite(name, truth)
    return truth


def _leading(fn, nlead: int):
    """``fn`` vmapped over ``nlead`` leading axes of every argument."""
    for _ in range(nlead):
        fn = jax.vmap(fn)
    return fn


def _observed(E: Array, h: ObservationOperator, m: int | None = None) -> Array:
    """Simulated observations ``(..., N, m)`` of ``E: (..., N, n)``, checked."""
    n = E.shape[-1]
    if not callable(h):
        Hshape = np.shape(h)
        if len(Hshape) != 2 or Hshape[1] != n or (m is not None and Hshape[0] != m):
            want = f"({m}, {n})" if m is not None else f"(m, {n})"
            raise ValueError(f"h as a matrix must have shape (m, n) = {want}, got {Hshape}")
    HE = observe(h, E.reshape(-1, n))
    if HE.ndim != 2 or (m is not None and HE.shape[1] != m):
        want = f"({m},)" if m is not None else "(m,)"
        raise ValueError(
            f"h must map one member of shape ({n},) to shape {want}, but it "
            f"returned shape {HE.shape[1:]}"
        )
    check_finite("h(E), the simulated observations,", HE)
    return HE.reshape(E.shape[:-1] + HE.shape[1:]).astype(E.dtype)


def _observation_problem(E, y, h, R):
    """Validate ``(E, y, h, R)`` of a series; returns ``(HE, y, R)`` with HE
    ``(..., N, m)`` and y ``(..., m)`` broadcast to common leading axes."""
    E = _members("E", E)
    y = jnp.asarray(y, dtype=E.dtype)
    if y.ndim < 1:
        raise ValueError(f"y must have shape (m,), or (..., m) for a series, got shape {y.shape}")
    check_finite("y", y)
    m = y.shape[-1]
    HE = _observed(E, h, m)
    try:
        lead = jnp.broadcast_shapes(E.shape[:-2], y.shape[:-1])
    except ValueError as err:
        raise ValueError(
            f"the leading (series) axes of E {E.shape[:-2]} and y {y.shape[:-1]} "
            "do not broadcast"
        ) from err
    HE = jnp.broadcast_to(HE, lead + HE.shape[-2:])
    y = jnp.broadcast_to(y, lead + (m,))
    return HE, y, as_covariance(R, m).astype(E.dtype)


def _scaled(E: Array) -> tuple[Array, Array]:
    """``enkit.scaled_anomalies`` over leading axes: ((..., n), (..., N, n))."""
    return _leading(scaled_anomalies, E.ndim - 2)(E)


def _innovation(HE: Array, y: Array) -> tuple[Array, Array]:
    """``(d, Y)``: innovation ``y − mean(HE)`` and normalised anomalies of HE."""
    hbar, Y = _scaled(HE)
    return y - hbar, Y


def _chi2_logdet(Y: Array, R: Covariance, d: Array) -> tuple[Array, Array]:
    """``(dᵀ S⁻¹ d, log det S)`` with ``S = Yᵀ Y + R``, one cycle.

    m ≤ N: Cholesky of the m×m S. m > N: the Woodbury form with
    ``G = I_N + Ỹ Ỹᵀ`` (Ỹ = rows of Y whitened by R):
    ``dᵀ S⁻¹ d = |d̃|² − |L_G⁻¹ Ỹ d̃|²``, ``log det S = log det R + log det G``.
    """
    N, m = Y.shape
    if m <= N:
        L = jnp.linalg.cholesky(Y.T @ Y + R.dense())
        z = solve_triangular(L, d, lower=True)
        return z @ z, 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    Yt, dt = R.whiten(Y), R.whiten(d)
    L = jnp.linalg.cholesky(jnp.eye(N, dtype=Y.dtype) + Yt @ Yt.T)
    z = solve_triangular(L, Yt @ dt, lower=True)
    return dt @ dt - z @ z, R.log_pdet + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))


def _influence_diagonal(Y: Array, R: Covariance) -> Array:
    """``diag(H K)`` with ``H K = Yᵀ Y (Yᵀ Y + R)⁻¹``, one cycle, (m,).

    m ≤ N: ``diag(S⁻¹ Yᵀ Y)``. m > N: ``H K = Yᵀ G⁻¹ Y R⁻¹`` with
    ``G = I_N + Y R⁻¹ Yᵀ``, so ``(H K)_ii = Σ_a Y_ai (G⁻¹ Y R⁻¹)_ai``.
    """
    N, m = Y.shape
    if m <= N:
        YtY = Y.T @ Y
        return jnp.diagonal(cho_solve(cho_factor(YtY + R.dense(), lower=True), YtY))
    RiY = R.solve(Y)
    G = jnp.eye(N, dtype=Y.dtype) + Y @ RiY.T
    return jnp.sum(Y * cho_solve(cho_factor(G, lower=True), RiY), axis=0)


# --------------------------------------------------------------------------
# Spread and spread–skill


def spread(E: ArrayLike) -> Array:
    """Ensemble spread ``sqrt(mean_j P_jj)``, the root of the mean sample variance.

    The library's definition (``enkit.ensemble_spread``, N − 1 normalisation),
    mapped over leading axes. E: (N, n), or (..., N, n) for a series.
    Returns shape (...).
    """
    return _spread(_members("E", E))


@jax.jit
def _spread(E):
    return _leading(ensemble_spread, E.ndim - 2)(E)


def spread_skill_ratio(
    spread: ArrayLike, rmse: ArrayLike, *, ensemble_size: int | None = None
) -> Array:
    """Spread–skill ratio ``sqrt(mean_k s_k² / mean_k e_k²)`` over the last axis.

    spread: (..., K) spreads s_k (``enkit.diagnostics.spread``); rmse:
    (..., K) RMSEs e_k of the ensemble mean against the truth, same shape.
    Variances are averaged before the root, so the ratio is that of the mean
    spread and mean error *variances*. For a calibrated ensemble of N
    members ``E[e²] = (1 + 1/N) E[s²]``, so the ratio tends to
    ``sqrt(N / (N + 1))``; with ``ensemble_size=N`` the ratio is multiplied
    by ``sqrt((N + 1) / N)`` and tends to 1 (Fortin et al., 2014).
    Returns shape (...).
    """
    s, e = jnp.asarray(spread), jnp.asarray(rmse)
    if s.shape != e.shape or s.ndim < 1:
        raise ValueError(
            f"spread and rmse must have the same shape (..., K), got {s.shape} and {e.shape}"
        )
    ratio = jnp.sqrt(jnp.mean(s**2, axis=-1) / jnp.mean(e**2, axis=-1))
    if ensemble_size is not None:
        if not isinstance(ensemble_size, (int, np.integer)) or ensemble_size < 2:
            raise ValueError(f"ensemble_size must be an integer N ≥ 2, got {ensemble_size!r}")
        ratio = ratio * math.sqrt((ensemble_size + 1) / ensemble_size)
    return ratio


class SpreadSkill(NamedTuple):
    """Binned spread–skill curve: per bin, ``spread`` = sqrt of the mean
    ensemble variance, ``rmse`` = root of the mean squared error of the
    ensemble mean, ``count`` = cases in the bin; each (bins,), bins ordered
    by increasing spread."""

    spread: Array
    rmse: Array
    count: Array


def spread_skill(E_series: ArrayLike, truth: ArrayLike, *, bins: int = 10) -> SpreadSkill:
    """Spread–skill curve: error of the mean against spread, in spread bins.

    A case is one entry j at one time: its ensemble variance ``v = P_jj``
    and squared error ``e² = (x̄_j − x_j)²``. The K·n cases are sorted by v
    and split into ``bins`` bins of (nearly) equal population; per bin the
    curve gives ``sqrt(mean v)`` and ``sqrt(mean e²)``. A reliable ensemble
    lies on ``rmse = sqrt((N + 1) / N) · spread`` in every bin
    (Leutbecher & Palmer, 2008; Fortin et al., 2014), up to the sampling
    noise of v itself: binning on the sampled variance also sorts that
    noise, so with few members a reliable ensemble's curve is flatter than
    the line (error above it in the low-spread bins, below it in the high).

    E_series: (K, N, n), or any (..., N, n); truth: (K, n) (resp. (..., n)).
    bins: number of bins, at most the number of cases. Returns
    ``SpreadSkill`` of (bins,) arrays.
    """
    E = _members("E_series", E_series, "(K, N, n): times, members, entries")
    truth = _truth("truth", truth, E)
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    cases = truth.size
    if bins > cases:
        raise ValueError(f"bins must be at most the number of cases ({cases}), got {bins}")
    return _spread_skill(E, truth, int(bins))


@partial(jax.jit, static_argnums=2)
def _spread_skill(E, truth, bins):
    var = jnp.var(E, axis=-2, ddof=1).ravel()
    err2 = ((jnp.mean(E, axis=-2) - truth) ** 2).ravel()
    cases = var.shape[0]
    order = jnp.argsort(var)
    which = jnp.zeros_like(order).at[order].set(
        (jnp.arange(cases, dtype=order.dtype) * bins) // cases
    )
    count = jnp.zeros(bins, E.dtype).at[which].add(1.0)
    s = jnp.zeros(bins, E.dtype).at[which].add(var)
    e = jnp.zeros(bins, E.dtype).at[which].add(err2)
    return SpreadSkill(jnp.sqrt(s / count), jnp.sqrt(e / count), count)


# --------------------------------------------------------------------------
# Rank histograms


def _rank_counts(below: Array, equal: Array, N: int, key, dtype) -> Array:
    """Histogram over the N + 1 ranks of values with ``below`` members
    strictly smaller and ``equal`` members equal: ties shared out evenly
    (key None) or broken uniformly at random."""
    below, equal = below.ravel(), equal.ravel()
    if key is None:
        w = 1.0 / (equal + 1.0).astype(dtype)
        diff = jnp.zeros(N + 2, dtype).at[below].add(w).at[below + equal + 1].add(-w)
        return jnp.cumsum(diff)[: N + 1]
    u = jax.random.uniform(key, below.shape, dtype=dtype)
    rank = below + jnp.minimum(jnp.floor(u * (equal + 1)).astype(below.dtype), equal)
    return jnp.zeros(N + 1, dtype).at[rank].add(1.0)


def rank_histogram(E: ArrayLike, truth: ArrayLike, *, key: Array | int | None = None) -> Array:
    """Talagrand rank histogram: counts of the truth's rank among the members.

    For every entry (and every leading index) the rank of the truth among
    the N members is the number of members below it, 0..N; the histogram
    counts the N + 1 ranks over all entries and leading axes. A calibrated
    ensemble (truth and members exchangeable) gives a flat histogram, an
    under-dispersive one a U, a biased one a slope (Anderson, 1996; Hamill &
    Colucci, 1997; Talagrand et al., 1997; Hamill, 2001).

    Ties (members equal to the truth, e.g. with discrete or clipped
    variables): with ``key=None`` (default) a value tied with t members
    adds 1/(t + 1) to each of its t + 1 possible ranks (the histogram's
    expectation under random tie-breaking, deterministic, fractional
    counts); with a PRNG key (or an integer seed) each tie is broken
    uniformly at random, so counts are whole numbers (Hamill, 2001).

    E: (N, n), or (..., N, n) for a series; truth: (n,) (resp. (..., n)).
    Returns (N + 1,) counts in E's dtype, summing to the number of entries.
    """
    E = _members("E", E)
    truth = _truth("truth", truth, E)
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    return _rank_histogram(E, truth, key)


@jax.jit
def _rank_histogram(E, truth, key):
    below = jnp.sum(E < truth[..., None, :], axis=-2)
    equal = jnp.sum(E == truth[..., None, :], axis=-2)
    return _rank_counts(below, equal, E.shape[-2], key, E.dtype)


def observation_rank_histogram(
    E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *, key: Array | int
) -> Array:
    """Rank histogram in observation space: rank of y among perturbed H(x_i).

    The members' simulated observations ``h(x_i)`` are perturbed with
    ``ε_i ~ N(0, R)`` so that they sample the predictive distribution of
    the observation, and the rank of each observed value ``y_j`` among the
    N perturbed ``h(x_i)_j`` is counted (Anderson, 1996; Hamill, 2001).
    Without the perturbation an ensemble that is calibrated in state space
    looks under-dispersive against noisy observations. Ties have
    probability zero after the perturbation; any left are shared out as in
    ``rank_histogram``.

    E: (N, n) or (..., N, n); y: (m,) or (..., m) (leading axes broadcast);
    h: callable or (m, n) matrix; R: covariance operator or array;
    key: PRNG key or integer seed (required). Returns (N + 1,) counts.
    """
    key = as_key(key, "observation_rank_histogram")
    HE, y, R = _observation_problem(E, y, h, R)
    return _rank_histogram(HE + _sample(R, key, HE.shape[:-1]), y, None)


@partial(jax.jit, static_argnums=2)
def _sample(R, key, shape):
    return R.sample(key, shape)


# --------------------------------------------------------------------------
# Innovation statistics


def innovation_chi2(d: ArrayLike, S) -> Array:
    """Innovation χ² statistic ``dᵀ S⁻¹ d``, computed as ``|L⁻¹ d|²``, S = L Lᵀ.

    When the innovation covariance is right, ``d ~ N(0, S)`` and the
    statistic is χ²-distributed with m degrees of freedom: its expectation
    is m (so ``χ²/m`` averages 1) and its variance 2m (Dee, 1995; Ménard et
    al., 2000). d: (m,), or (..., m) for a series; S: covariance operator
    or array (scalar, (m,) variances or (m, m)) of dimension m. Returns
    shape (...).
    """
    check_float("d", d)
    d = jnp.asarray(d)
    if d.ndim < 1:
        raise ValueError(f"d must have shape (m,), or (..., m) for a series, got shape {d.shape}")
    check_finite("d", d)
    return _chi2(d, as_covariance(S, d.shape[-1], name="S").astype(d.dtype))


@jax.jit
def _chi2(d, S):
    w = S.whiten(d)
    return jnp.sum(w * w, axis=-1)


class InnovationStatistics(NamedTuple):
    """Innovation statistics of one cycle (or a series, leading axes ...).

    d: (..., m) innovation ``y − H x̄``; Y: (..., N, m) normalised anomalies
    of the simulated observations (``H P Hᵀ = Yᵀ Y``); R: the observation
    error operator; chi2: (...) ``dᵀ S⁻¹ d``; chi2_normalised: (...) χ²/m,
    expectation 1. ``S`` (a property) is ``Yᵀ Y + R`` as an (..., m, m)
    array, formed only when asked for.
    """

    d: Array
    Y: Array
    R: Covariance
    chi2: Array
    chi2_normalised: Array

    @property
    def S(self) -> Array:
        """Innovation covariance ``H P Hᵀ + R``, (..., m, m)."""
        return jnp.swapaxes(self.Y, -1, -2) @ self.Y + self.R.dense()


def innovation_statistics(
    E: ArrayLike, y: ArrayLike, h: ObservationOperator, R
) -> InnovationStatistics:
    """Innovation ``d = y − H x̄``, its covariance S and the χ² consistency check.

    With the forecast ensemble's statistics ``S = H P Hᵀ + R`` (``H P Hᵀ``
    the sample covariance of the simulated observations ``h(x_i)``;
    ``H x̄`` their mean) and ``χ² = dᵀ S⁻¹ d``. A consistent system has
    ``E[χ²] = m`` (Dee, 1995; Ménard et al., 2000; Desroziers et al., 2005):
    a time mean of ``chi2_normalised`` above 1 says S is too small (too
    little spread or too small an R), below 1 too large. For m > N, χ² uses
    the Woodbury form (R only solved, never densified).

    E: (N, n) forecast ensemble, or (..., N, n); y: (m,), or (..., m)
    (leading axes broadcast with E's); h: callable or (m, n) matrix;
    R: covariance operator or array. Returns ``InnovationStatistics``.
    """
    HE, y, R = _observation_problem(E, y, h, R)
    d, Y, chi2, _ = _innovation_chi2_logdet(HE, y, R)
    return InnovationStatistics(d, Y, R, chi2, chi2 / d.shape[-1])


@jax.jit
def _innovation_chi2_logdet(HE, y, R):
    d, Y = _innovation(HE, y)
    chi2, logdet = _leading(lambda Y_, d_: _chi2_logdet(Y_, R, d_), d.ndim - 1)(Y, d)
    return d, Y, chi2, logdet


def log_likelihood(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R) -> Array:
    """Predictive log-likelihood of y under ``N(H x̄, H P Hᵀ + R)``.

        log p(y) = −½ [dᵀ S⁻¹ d + log det S + m log 2π],   d = y − H x̄,

    with the ensemble's sample mean and covariance of the simulated
    observations (the Gaussian "evidence" of one cycle; summed over cycles
    it is the filter's marginal likelihood, Carrassi et al., 2017). For
    m > N, ``log det S = log det R + log det(I_N + Y R⁻¹ Yᵀ)`` with
    ``log det R`` from the operator (``R.log_pdet``).

    E: (N, n) or (..., N, n); y: (m,) or (..., m); h: callable or (m, n)
    matrix; R: covariance operator or array. Returns shape (...).
    """
    HE, y, R = _observation_problem(E, y, h, R)
    d, _, chi2, logdet = _innovation_chi2_logdet(HE, y, R)
    m = d.shape[-1]
    return -0.5 * (chi2 + logdet + m * math.log(2.0 * math.pi))


# --------------------------------------------------------------------------
# Desroziers et al. (2005)


class DesroziersEstimate(NamedTuple):
    """Desroziers et al. (2005) estimates, from innovation series.

    R ≈ E[d_ab d_obᵀ]; HBHt ≈ E[d_ba d_obᵀ]; HAHt ≈ E[d_ba d_abᵀ];
    innovation ≈ E[d_ob d_obᵀ] = H B Hᵀ + R; count: the number of times
    entering each estimate. Each (m, m) from ``desroziers`` (symmetrised),
    (m,) from ``desroziers_diagonal``.
    """

    R: Array
    HBHt: Array
    HAHt: Array
    innovation: Array
    count: Array


def _desroziers_inputs(d_ob, d_ab, mask):
    for name, a in (("d_ob", d_ob), ("d_ab", d_ab)):
        check_float(name, a)
        if np.ndim(a) != 2:
            raise ValueError(f"{name} must have shape (K, m): times, observations, got {np.shape(a)}")
    d_ob = jnp.asarray(d_ob)
    d_ab = jnp.asarray(d_ab, dtype=d_ob.dtype)
    if d_ab.shape != d_ob.shape:
        raise ValueError(
            f"d_ab must have the same shape (K, m) as d_ob = {d_ob.shape}, got {d_ab.shape}"
        )
    if mask is None:
        mask = jnp.ones(d_ob.shape, dtype=bool)
    else:
        if np.shape(mask) != d_ob.shape:
            raise ValueError(
                f"mask must have shape (K, m) = {d_ob.shape} (True where observed), "
                f"got {np.shape(mask)}"
            )
        mask = jnp.asarray(mask, dtype=bool)
    if is_concrete(d_ob) and is_concrete(d_ab) and is_concrete(mask):
        for name, a in (("d_ob", d_ob), ("d_ab", d_ab)):
            if not np.all(np.isfinite(np.asarray(a))[np.asarray(mask)]):
                raise ValueError(f"{name} must be finite where mask is True")
    return d_ob, d_ab, mask


@partial(jax.jit, static_argnums=3)
def _desroziers(d_ob, d_ab, mask, full):
    zero = jnp.zeros((), d_ob.dtype)
    d_ob, d_ab = jnp.where(mask, d_ob, zero), jnp.where(mask, d_ab, zero)
    d_ba, w = d_ob - d_ab, mask.astype(d_ob.dtype)
    if full:
        count = w.T @ w

        def mean(a, b):
            M = jnp.where(count > 0, (a.T @ b) / jnp.maximum(count, 1), jnp.nan)
            return 0.5 * (M + M.T)

    else:
        count = jnp.sum(w, axis=0)

        def mean(a, b):
            return jnp.where(count > 0, jnp.sum(a * b, axis=0) / jnp.maximum(count, 1), jnp.nan)

    return DesroziersEstimate(
        mean(d_ab, d_ob), mean(d_ba, d_ob), mean(d_ba, d_ab), mean(d_ob, d_ob), count
    )


def desroziers(
    d_ob: ArrayLike, d_ab: ArrayLike, *, mask: ArrayLike | None = None
) -> DesroziersEstimate:
    """Desroziers et al. (2005) diagnosis of R and H B Hᵀ, full (m, m) form.

    From the background innovations ``d_ob = y − H x_b`` and analysis
    residuals ``d_ab = y − H x_a`` of K cycles, with ``d_ba = d_ob − d_ab =
    H x_a − H x_b``: for an optimal linear analysis

        E[d_ab d_obᵀ] = R,   E[d_ba d_obᵀ] = H B Hᵀ,   E[d_ba d_abᵀ] = H A Hᵀ,
        E[d_ob d_obᵀ] = H B Hᵀ + R.

    Expectations are time means of the raw products (innovations are taken
    as unbiased; remove a bias first if there is one), each entry (i, j)
    over the times where both i and j are observed, then symmetrised
    (``(A + Aᵀ)/2``, equal in expectation). An entry never observed jointly
    is NaN. The estimates may be iterated (analyse again with the
    estimated R, re-estimate), as Desroziers et al. (2005) do.

    d_ob, d_ab: (K, m); mask: (K, m) booleans, True where observed (values
    where False are ignored and may be NaN). Returns ``DesroziersEstimate``
    of (m, m) arrays.
    """
    return _desroziers(*_desroziers_inputs(d_ob, d_ab, mask), True)


def desroziers_diagonal(
    d_ob: ArrayLike, d_ab: ArrayLike, *, mask: ArrayLike | None = None
) -> DesroziersEstimate:
    """Desroziers et al. (2005) diagnosis, diagonal form: the variances only.

    ``R_ii ≈ mean_k d_ab,ki d_ob,ki`` and ``(H B Hᵀ)_ii ≈ mean_k d_ba,ki
    d_ob,ki`` (and likewise H A Hᵀ and the innovation variance), each over
    the times where observation i is present; O(K m), no m×m array. Same
    arguments as ``desroziers``; returns ``DesroziersEstimate`` of (m,)
    arrays (NaN for an observation never present).
    """
    return _desroziers(*_desroziers_inputs(d_ob, d_ab, mask), False)


# --------------------------------------------------------------------------
# CRPS


class CRPS(NamedTuple):
    """CRPS per variable, (..., n), and its mean over the variables, (...)."""

    per_variable: Array
    mean: Array


def crps(E: ArrayLike, truth: ArrayLike, *, fair: bool = True) -> CRPS:
    """Continuous ranked probability score of an ensemble, per variable.

        CRPS = (1/N) Σ_i |x_i − x| − c Σ_{i<j} |x_i − x_j|,
        c = 1 / (N (N − 1))  (fair, default),   c = 1 / N²  (plain).

    The plain form is the CRPS of the ensemble's empirical distribution
    (Hersbach, 2000); it favours small ensembles, being biased by
    ``E|X − X'| / (2N)``. The fair form is its unbiased estimate of the CRPS
    of the distribution the members are drawn from (Ferro, 2014; Zamo &
    Naveau, 2018). The pair sum is ``Σ_k (2k − N + 1) x_(k)`` over the
    sorted members: O(N log N).

    E: (N, n), or (..., N, n); truth: (n,) (resp. (..., n)). Returns
    ``CRPS(per_variable (..., n), mean (...))``.
    """
    E = _members("E", E)
    return _crps(E, _truth("truth", truth, E), bool(fair))


@partial(jax.jit, static_argnums=2)
def _crps(E, truth, fair):
    N = E.shape[-2]
    a = jnp.mean(jnp.abs(E - truth[..., None, :]), axis=-2)
    k = jnp.arange(N, dtype=E.dtype)[:, None]
    pairs = jnp.sum((2.0 * k - (N - 1)) * jnp.sort(E, axis=-2), axis=-2)
    per_variable = a - pairs / (N * (N - 1) if fair else N * N)
    return CRPS(per_variable, jnp.mean(per_variable, axis=-1))


def crps_gaussian(mu: ArrayLike, sigma: ArrayLike, x: ArrayLike) -> Array:
    """Closed-form CRPS of the Gaussian ``N(μ, σ²)`` at the outcome x.

        CRPS = σ [z (2 Φ(z) − 1) + 2 φ(z) − 1/√π],   z = (x − μ)/σ

    (Gneiting et al., 2005). mu, sigma (> 0), x: broadcastable arrays.
    Returns their broadcast shape.
    """
    dtype = jnp.result_type(float, mu, sigma, x)
    mu, sigma, x = (jnp.asarray(a, dtype) for a in (mu, sigma, x))
    if is_concrete(sigma) and not np.all(np.asarray(sigma) > 0):
        raise ValueError("sigma must be positive")
    return _crps_gaussian(mu, sigma, x)


@jax.jit
def _crps_gaussian(mu, sigma, x):
    z = (x - mu) / sigma
    return sigma * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / math.sqrt(math.pi))


# --------------------------------------------------------------------------
# Degrees of freedom for signal


class DFS(NamedTuple):
    """Degrees of freedom for signal: ``total = trace(H K)``, (...), and
    ``per_observation = diag(H K)``, (..., m), the self-sensitivities."""

    total: Array
    per_observation: Array


def dfs(E: ArrayLike, h: ObservationOperator, R) -> DFS:
    """Degrees of freedom for signal ``trace(H K)`` from the ensemble statistics.

    ``H K = H P Hᵀ (H P Hᵀ + R)⁻¹`` is the influence matrix ∂(H x_a)/∂y of
    the analysis; its trace counts the independent pieces of information
    the observations bring (between 0 and min(m, rank P)), its diagonal the
    self-sensitivity of each observation (Rodgers, 2000; Cardinali et al.,
    2004). ``H P Hᵀ`` is the sample covariance of the simulated
    observations; for m > N the Woodbury form ``H K = Yᵀ (I_N + Y R⁻¹ Yᵀ)⁻¹
    Y R⁻¹`` is used (R only solved).

    E: (N, n) forecast ensemble, or (..., N, n); h: callable or (m, n)
    matrix; R: covariance operator or array. Returns ``DFS``.
    """
    E = _members("E", E)
    HE = _observed(E, h)
    return _dfs(HE, as_covariance(R, HE.shape[-1]).astype(E.dtype))


@jax.jit
def _dfs(HE, R):
    _, Y = _scaled(HE)
    diag = _leading(lambda Y_: _influence_diagonal(Y_, R), Y.ndim - 2)(Y)
    return DFS(jnp.sum(diag, axis=-1), diag)


def dfs_exact(B: ArrayLike, H: ArrayLike, R) -> DFS:
    """Degrees of freedom for signal of the exact Kalman gain, given B.

    ``K = B Hᵀ (H B Hᵀ + R)⁻¹`` and ``H K = H B Hᵀ (H B Hᵀ + R)⁻¹``
    (Rodgers, 2000; Cardinali et al., 2004), by Cholesky of the m×m S.

    B: (n, n) background covariance; H: (m, n) observation matrix;
    R: covariance operator or array. Returns ``DFS`` (total scalar,
    per_observation (m,)).
    """
    check_float("B", B)
    B = jnp.asarray(B)
    if B.ndim != 2 or B.shape[0] != B.shape[1]:
        raise ValueError(f"B must have shape (n, n), got shape {B.shape}")
    check_finite("B", B)
    H = jnp.asarray(H, dtype=B.dtype)
    if H.ndim != 2 or H.shape[1] != B.shape[0]:
        raise ValueError(f"H must have shape (m, n) = (m, {B.shape[0]}), got shape {H.shape}")
    check_finite("H", H)
    return _dfs_exact(B, H, as_covariance(R, H.shape[0]).astype(B.dtype))


@jax.jit
def _dfs_exact(B, H, R):
    HBHt = H @ B @ H.T
    diag = jnp.diagonal(cho_solve(cho_factor(HBHt + R.dense(), lower=True), HBHt))
    return DFS(jnp.sum(diag), diag)


# --------------------------------------------------------------------------
# Effective sample size


def effective_sample_size(
    weights: ArrayLike | None = None, *, log_weights: ArrayLike | None = None
) -> Array:
    """Effective sample size of a weighted ensemble, ``(Σ w)² / Σ w²``.

    N for equal weights, 1 when one member holds all the weight (Kong,
    1992; Liu, 1996). Weights need not be normalised. Pass exactly one of
    ``weights`` (non-negative) or ``log_weights`` (any real, −inf allowed);
    log-weights are handled stably, ``exp(2 logsumexp(ℓ) − logsumexp(2ℓ))``.

    weights or log_weights: (N,), or (..., N) with members on the last
    axis. Returns shape (...).
    """
    if (weights is None) == (log_weights is None):
        raise TypeError("pass exactly one of weights or log_weights=")
    name, w = ("weights", weights) if weights is not None else ("log_weights", log_weights)
    check_float(name, w)
    w = jnp.asarray(w)
    if w.ndim < 1:
        raise ValueError(f"{name} must have shape (N,), or (..., N), got shape {w.shape}")
    if weights is not None:
        check_finite(name, w)
        if is_concrete(w) and not (np.all(np.asarray(w) >= 0) and np.all(np.asarray(w).sum(-1) > 0)):
            raise ValueError("weights must be non-negative with a positive sum")
        return _ess(w)
    if is_concrete(w):
        wn = np.asarray(w)
        if np.any(np.isnan(wn)) or np.any(wn == np.inf) or not np.all(np.any(np.isfinite(wn), -1)):
            raise ValueError("log_weights must not be NaN or +inf, with one finite entry at least")
    return _ess_log(w)


@jax.jit
def _ess(w):
    return jnp.sum(w, axis=-1) ** 2 / jnp.sum(w * w, axis=-1)


@jax.jit
def _ess_log(w):
    lse = jax.scipy.special.logsumexp
    return jnp.exp(2.0 * lse(w, axis=-1) - lse(2.0 * w, axis=-1))


# --------------------------------------------------------------------------
# Ensemble collapse


class EnsembleCollapse(NamedTuple):
    """Subspace diagnostics of an ensemble (see ``ensemble_collapse``).

    singular_values: (..., r), r = min(N, n), of the normalised anomalies,
    decreasing; effective_rank: (...) exp of the entropy of the variance
    fractions; participation_ratio: (...) ``1 / Σ p_i²``; explained:
    (..., r) cumulative fraction of the total variance in the leading
    directions.
    """

    singular_values: Array
    effective_rank: Array
    participation_ratio: Array
    explained: Array


def ensemble_collapse(U: ArrayLike) -> EnsembleCollapse:
    """How many directions the ensemble still spans: spectrum and effective rank.

    With σ_i the singular values of the normalised anomalies
    ``(U − ū)/sqrt(N − 1)`` (so σ_i² are the eigenvalues of the sample
    covariance) and ``p_i = σ_i² / Σ σ²`` the fraction of the variance in
    direction i:

        effective_rank = exp(−Σ p_i log p_i),   participation_ratio = 1 / Σ p_i².

    Both equal k for an ensemble spread evenly over k directions and fall
    below k when the variance is uneven; the entropy form is that of Roy &
    Vetterli (2007), applied to the variance fractions σ² (not σ), so that
    it measures the spread. Ensemble Kalman inversion keeps its ensemble in
    the span of the initial one and collapses inside it (Schillings &
    Stuart, 2017); a shrinking effective rank shows it. A fully collapsed
    ensemble (no spread) has rank 0.

    U: (N, n) ensemble (of parameters or states), or (..., N, n).
    Returns ``EnsembleCollapse``.
    """
    return _collapse(_members("U", U))


@jax.jit
def _collapse(U):
    _, X = _scaled(U)
    s = jnp.linalg.svd(X, compute_uv=False)
    lam = s * s
    total = jnp.sum(lam, axis=-1, keepdims=True)
    alive = total > 0
    p = jnp.where(alive, lam / jnp.where(alive, total, 1.0), 0.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    alive = alive[..., 0]
    eff = jnp.where(alive, jnp.exp(-jnp.sum(plogp, axis=-1)), 0.0)
    pr = jnp.where(alive, 1.0 / jnp.where(alive, jnp.sum(p * p, axis=-1), 1.0), 0.0)
    return EnsembleCollapse(s, eff, pr, jnp.cumsum(p, axis=-1))
