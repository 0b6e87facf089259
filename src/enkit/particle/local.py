"""The local particle filter of Penny & Miyoshi (2016): local weights at
every grid point from the tapered likelihood of the observations near it,
local resampling with random numbers shared by all grid points, optional
smoothing of the resampled values over neighbouring grid points."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import logsumexp
from jax.typing import ArrayLike

from enkit._checks import check_number, is_concrete
from enkit.covariance import as_covariance
from enkit.diagnostics import effective_sample_size
from enkit.filters._common import ObservationOperator, observe
from enkit.filters._local import _coordinates, map_in_blocks, observation_lists, uncorrelated
from enkit.localization import cartesian_distance, gaspari_cohn, pairwise_distances
from enkit.particle._common import (
    ParticleAnalysis,
    WeightDegeneracyError,
    as_operand,
    check_weights,
    finish,
    need_key,
    prior_log_weights,
    reweight,
)
from enkit.particle.bootstrap import gaussian_log_likelihood
from enkit.particle.resampling import systematic, uniform_log_weights

__all__ = ["local_log_weights", "local_pf"]


def local_pf(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *,
             state_coords: ArrayLike, obs_coords: ArrayLike, radius: ArrayLike,
             taper: Callable[[Array, Array], Array] = gaspari_cohn,
             distance: Callable[[Array, Array], Array] = cartesian_distance,
             key: Array | None = None, log_weights: ArrayLike | None = None,
             resampler: Callable = systematic, smoothing_radius: ArrayLike | None = None,
             smoothing_strength: ArrayLike = 1.0, noise: ArrayLike = 0.0,
             chunk_size: int = 64) -> ParticleAnalysis:
    """Local particle filter analysis (Penny & Miyoshi 2016, NPG 23, 391–405).

    The paper's four steps: local weights from R-localised observations,
    local deterministic resampling, interpolation (smoothing) of the
    resampling between neighbouring grid points, and Gaussian noise scaled
    by the local spread. Every grid point j weights the particles by the
    likelihood of the observations near it, R-localised as in the LETKF
    (``enkit.letkf``: observation k's R⁻¹ multiplied by ρⱼₖ =
    taper(distance(state_coords[j], obs_coords[k]), radius)), R diagonal:

        log wᵢʲ = log w̄ᵢ − ½ Σₖ ρⱼₖ (yₖ − h(xᵢ)ₖ)² / Rₖₖ      (normalised over i),

    and is resampled on its own: ancestors aʲ = resampler(key, log wʲ),
    the analysis xₐ,ᵢⱼ = x_{aᵢʲ, j}. The key is the same at every grid
    point, so ``systematic`` (default; Kitagawa's deterministic resampling,
    as in the paper) and ``stratified`` use the same random numbers
    everywhere: neighbouring points with similar weights pick the same
    ancestors, and state entries stay paired as in the forecast particles.
    Observations with ρⱼₖ = 0 do not touch grid point j (``jnp.where``: not
    even a non-finite h(xᵢ)ₖ there), so with a compact taper the analysis
    at j sees only the observations within its support (2·radius for
    ``gaspari_cohn``, radius for ``step``: the radius convention of
    ``letkf``, DAPPER's ``loc_rad`` being radius / 1.82). With
    ``taper=step`` and a radius covering the domain every ρ = 1, all grid
    points share the global weights and ancestors, and the analysis is
    ``bootstrap_pf(..., threshold=1.0)`` with the same key.

    Smoothing, with ``smoothing_radius`` = s: the resampling at j is
    averaged with that of the grid points l within distance s of j (the
    paper's interpolation of the analysis weights, here with equal weights):
    xₐ,ᵢⱼ = x_{aᵢʲ, j} + α mean_l (x_{aᵢˡ, j} − x_{aᵢʲ, j}), the values at j
    that l's ancestors select, with the smoothing strength α =
    ``smoothing_strength`` (1: their plain mean; a strength in [0, 1] as
    in Farchi & Bocquet's 2018 review of local PFs); l = j alone when s is
    None, the default; exact copies where the ancestors agree. The mean
    shrinks the spread, so smoothing wants more noise: on the Lorenz-96
    case below (s = 1, N = 40) α = 1 loses the truth with γ = 0.5 and gives
    RMSE 0.44 with γ = 1 (0.56 unsmoothed), α = 0.5 with γ = 0.75 0.38
    (0.46 unsmoothed).

    Noise: ``noise`` = γ > 0 adds γ σⱼ εᵢⱼ, ε ~ N(0, 1) independent, with
    σⱼ² = Σᵢ wᵢʲ (xᵢⱼ − Σₗ wₗʲ xₗⱼ)² the local posterior variance estimated
    with the local weights (a choice made here: unlike the spread of the
    resampled values it does not vanish when one ancestor is chosen).
    Without noise (or model noise in the driver) resampled copies stay
    alike and the filter collapses. Lorenz-96 (n = 40, R = I, every
    variable observed every step; ``benchmarks/local_pf.py``, 1,000
    cycles): radius 2, γ = 0.5 gives RMSE ≈ 0.36 at N = 40 and 0.40–0.57 at
    N = 20, where the global bootstrap PF has lost the truth (≈ 5) and the
    LETKF (N = 20) reaches 0.21; γ = 0.25, no noise, or N = 10 lose it.

    What it carries: every grid point is resampled at every analysis, so the
    returned ``log_weights`` are uniform (−log N), ``resampled`` is True; the
    incoming ``log_weights`` enter every local weight. ``ess`` and
    ``log_evidence`` are diagnostics of the global (untapered) weights
    log w̄ᵢ + log N(y; h(xᵢ), R), those of ``bootstrap_pf``: the ESS a
    global particle filter would have (near 1 where it would degenerate);
    the local weights are ``local_log_weights``.

    E: (N, n) forecast particles; y: (m,); h: callable on one member or
    (m, n) matrix; R: uncorrelated covariance operator or array (``Scalar``,
    ``Diagonal``, ``BlockDiagonal`` of those; correlated R is refused: the
    local likelihood is a product over observations). state_coords: (n,) +
    point_shape; obs_coords: (m,) + point_shape; radius: the taper's length
    scale (scalar); taper, distance: as ``enkit.letkf``. key: PRNG key
    (required). log_weights: (N,) incoming log-weights, None for uniform.
    resampler: ``systematic``, ``stratified``, ``multinomial`` or
    ``residual`` (any ``(key, log_w) -> ancestors``). smoothing_radius:
    None or a distance (same ``distance`` on state_coords);
    smoothing_strength: α in [0, 1]. noise: γ ≥ 0.
    chunk_size: grid points whose weights are formed at once (memory
    O(chunk_size · N · k), k the most observations a point sees).

    Cost: with concrete coordinates and radius the observation lists are
    found once (as in ``letkf``), O(n N k) per analysis plus n resamplings;
    traced ones use all m observations per grid point, O(n N m). Returns a
    ``ParticleAnalysis``. A NaN likelihood, or a grid point where every
    local weight is zero, raises ``WeightDegeneracyError`` on concrete
    values; under ``jit`` (and in ``enkit.assimilate``) the ensemble and
    weights are NaN and ``degenerate`` is True, as in ``bootstrap_pf``.
    """
    key = need_key(key, "local_pf")
    prob = _setup(E, y, h, R, state_coords, obs_coords, radius, taper, distance, log_weights,
                  chunk_size)
    N, n = prob.E.shape
    if smoothing_radius is not None:
        check_number("smoothing_radius", smoothing_radius, low=0.0, low_open=False)
    check_number("smoothing_strength", smoothing_strength, low=0.0, low_open=False, high=1.0)
    check_number("noise", noise, low=0.0, low_open=False)
    neighbours = None
    if smoothing_radius is not None:
        neighbours = observation_lists(state_coords, state_coords, smoothing_radius,
                                       _within, distance, None, prob.E.dtype)
        if neighbours is None:  # traced: every grid point, masked by distance in the graph
            dist = pairwise_distances(prob.points, prob.points, distance)
            neighbours = (jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (n, n)), dist,
                          dist <= jnp.asarray(smoothing_radius, prob.E.dtype))
    jitter = not (is_concrete(noise) and float(noise) == 0.0)
    result, log_lik, local_ok = _local(
        *prob, key, neighbours, jnp.asarray(smoothing_strength, prob.E.dtype),
        jnp.asarray(noise, prob.E.dtype), taper=taper,
        distance=distance, resampler=resampler, jitter=jitter, chunk_size=int(chunk_size))
    _check_local(prob.log_prior, log_lik, local_ok)
    return result


def local_log_weights(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *,
                      state_coords: ArrayLike, obs_coords: ArrayLike, radius: ArrayLike,
                      taper: Callable[[Array, Array], Array] = gaspari_cohn,
                      distance: Callable[[Array, Array], Array] = cartesian_distance,
                      log_weights: ArrayLike | None = None, chunk_size: int = 64) -> Array:
    """The normalised local log-weights of ``local_pf``, one row per grid point:

        log wᵢʲ = log w̄ᵢ − ½ Σₖ ρⱼₖ (yₖ − h(xᵢ)ₖ)² / Rₖₖ − log Σₗ (same for l),

    ρⱼₖ = taper(distance(state_coords[j], obs_coords[k]), radius) (terms with
    ρ = 0 left out). A diagnostic (local ESS: ``effective_sample_size`` of
    a row) and what ``local_pf`` resamples. Arguments as ``local_pf``.
    Returns (n, N); a row whose weights cannot be normalised (all zero, or
    a NaN likelihood) is NaN.
    """
    prob = _setup(E, y, h, R, state_coords, obs_coords, radius, taper, distance, log_weights,
                  chunk_size)
    return _weights_jit(*prob, taper=taper, distance=distance, chunk_size=int(chunk_size))


class _Problem(NamedTuple):
    """Checked inputs of a local particle analysis (the leading arguments of
    the compiled bodies)."""

    E: Array
    y: Array
    h: object
    R: object
    log_prior: Array
    points: Array
    obs_points: Array
    radius: Array
    lists: object


def _setup(E, y, h, R, state_coords, obs_coords, radius, taper, distance, log_weights,
           chunk_size) -> _Problem:
    E = jnp.asarray(E)
    N, n = E.shape
    y = jnp.asarray(y, E.dtype)
    m = y.shape[0]
    R = as_covariance(R, m, name="R").astype(E.dtype)
    if not uncorrelated(R):
        raise ValueError(
            f"local_pf needs uncorrelated observation errors (Scalar, Diagonal or a "
            f"BlockDiagonal of those), got {type(R).__name__}: the local likelihood is a "
            "product of tapered per-observation terms")
    points = _coordinates("state_coords", state_coords, n, "n", E.dtype)
    obs_points = _coordinates("obs_coords", obs_coords, m, "m", E.dtype)
    check_number("radius", radius, low=0.0)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    log_prior = prior_log_weights(log_weights, N, E.dtype)
    # Lists from the arguments as given: concrete unless traced by the caller.
    lists = observation_lists(state_coords, obs_coords, radius, taper, distance, None,
                              E.dtype) if m else None
    return _Problem(E, y, as_operand(h), R, log_prior, points, obs_points,
                    jnp.asarray(radius, E.dtype), lists)


def _within(d, s):
    """1 for d ≤ s (s ≥ 0, s = 0 allowed: the point itself), else 0."""
    return jnp.where(d <= s, 1.0, 0.0).astype(jnp.result_type(d, float))


def _check_local(log_prior, log_lik, local_ok) -> None:
    """``WeightDegeneracyError`` for concrete weights: a NaN likelihood
    (the message of ``check_weights``), or a grid point whose local weights
    are all zero."""
    if not (is_concrete(log_lik) and is_concrete(local_ok)):
        return
    if bool(jnp.any(jnp.isnan(log_lik))):
        check_weights(log_prior, log_lik, "local_pf")
    bad = np.flatnonzero(~np.asarray(local_ok))
    if bad.size:
        raise WeightDegeneracyError(
            f"local_pf: every particle has zero local weight at {bad.size} grid point(s) "
            f"({bad[:8].tolist()}{' ...' if bad.size > 8 else ''}): the tapered likelihood "
            "vanishes for every member there, or the incoming log_weights are all -inf; "
            "check y against h(E) and R, or use more particles")


def _weights(E, y, h, R, log_prior, points, obs_points, radius, lists, *, taper, distance,
             chunk_size, extra=None, per_block=None):
    """Local log-weights (n, N) normalised (NaN rows where they cannot be),
    (n,) True where they can, the global log-likelihoods (N,); with
    ``per_block(lw_b, ok_b, *extra_b)`` its outputs on each block instead
    of the weights (``extra``: more (n, ...) arrays to block)."""
    N, n = E.shape
    m = y.shape[0]
    Y = observe(h, E)
    log_lik = gaussian_log_likelihood(Y, y, R)
    r = R.whiten(y - Y) if m else None
    q = None if r is None else r * r  # (N, m) squared whitened residuals
    if m and lists is None:  # traced coordinates or radius: every observation, tapered
        dist = pairwise_distances(points, obs_points, distance)
        lists = (jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (n, m)), dist,
                 jnp.ones((n, m), bool))
    if not m:  # no observations: placeholders, the prior weights at every grid point
        lists = (jnp.zeros((n, 1), jnp.int32), jnp.zeros((n, 1), E.dtype),
                 jnp.zeros((n, 1), bool))

    def block(idx, dist, valid, *extra_b):
        """The normalised local log-weights (B, N) of B grid points."""
        if q is None:
            lw = jnp.broadcast_to(log_prior, (idx.shape[0], N))
        else:
            rho = taper(dist, radius)  # (B, k)
            keep = valid & (rho > 0)
            qb = jnp.moveaxis(q[:, idx], 0, 1)  # (B, N, k)
            ell = -0.5 * jnp.sum(jnp.where(keep[:, None, :], rho[:, None, :] * qb, 0.0), -1)
            lw = log_prior + ell
        lz = logsumexp(lw, axis=1, keepdims=True)
        ok = jnp.isfinite(lz[:, 0])
        lw = jnp.where(ok[:, None], lw - lz, jnp.nan)
        if per_block is None:
            return lw, ok
        return per_block(lw, ok, *extra_b)

    out = map_in_blocks(block, (*lists, *(extra or ())), n, chunk_size)
    return out, log_lik


@partial(jax.jit, static_argnames=("taper", "distance", "chunk_size"))
def _weights_jit(*args, taper, distance, chunk_size):
    (lw, _), _ = _weights(*args, taper=taper, distance=distance, chunk_size=chunk_size)
    return lw


@partial(jax.jit, static_argnames=("taper", "distance", "resampler", "jitter", "chunk_size"))
def _local(E, y, h, R, log_prior, points, obs_points, radius, lists, key, neighbours,
           strength, noise, *, taper, distance, resampler, jitter, chunk_size):
    """The compiled body of ``local_pf``: (ParticleAnalysis, global
    log-likelihoods (N,), (n,) True where the local weights normalise)."""
    N, n = E.shape
    k_resample, k_noise = jax.random.split(key)

    def resample(lw, ok, x_b):
        """Ancestors (B, N), ok (B,), local posterior std (B,) of B grid points."""
        lw = jnp.where(ok[:, None], lw, uniform_log_weights(N, E.dtype))
        ancestors = jax.vmap(lambda lw_j: resampler(k_resample, lw_j))(lw)  # shared key
        w = jnp.exp(lw)
        mean = jnp.sum(w * x_b, axis=1, keepdims=True)
        return ancestors, ok, jnp.sqrt(jnp.sum(w * (x_b - mean) ** 2, axis=1))

    (A, local_ok, std), log_lik = _weights(
        E, y, h, R, log_prior, points, obs_points, radius, lists, taper=taper,
        distance=distance, chunk_size=chunk_size, extra=(E.T,), per_block=resample)
    log_w, log_z, degenerate = reweight(log_prior, log_lik)
    ess = effective_sample_size(log_weights=log_w)
    cols = jnp.arange(n)
    E_new = E[A.T, cols]  # (N, n): xₐ,ᵢⱼ = x_{aᵢʲ, j}
    if neighbours is not None:
        nb, _, valid = neighbours  # (n, k_s)
        # x_{aᵢʲ, j} + α mean_l (x_{aᵢˡ, j} − x_{aᵢʲ, j}): exact where the ancestors agree
        dev = E[A[nb], cols[:, None, None]] - E_new.T[:, None, :]  # (n, k_s, N)
        count = jnp.sum(valid, axis=1)[:, None]
        mean_dev = jnp.sum(jnp.where(valid[..., None], dev, 0.0), axis=1) / count
        E_new = E_new + strength * mean_dev.T
    if jitter:
        E_new = E_new + noise * std * jax.random.normal(k_noise, (N, n), E.dtype)
    degenerate = degenerate | ~jnp.all(local_ok)
    result = finish(E_new, uniform_log_weights(N, E.dtype), ess, jnp.asarray(True), log_z,
                    degenerate)
    return result, log_lik, local_ok


local_pf.particle = True
