"""Gain (B-) localisation tapers for the stochastic EnKF, DEnKF and serial EnSRF.

B-localisation multiplies, entry by entry (Schur product ``∘``), the two
sample covariances that make up the Kalman gain,

    K = (ρ_xy ∘ Xᵀ Y) (ρ_yy ∘ Yᵀ Y + R)⁻¹,

with X (N, n) and Y (N, m) the state and observation anomalies divided by
sqrt(N − 1): the state–observation block ``ρ_xy`` (n, m) and the
observation–observation block ``ρ_yy`` (m, m) (Houtekamer & Mitchell 2001).
The n×n state covariance is never formed. The schemes take a
``localization=`` object with one method,

    localization.tapers(X, Y) -> (ρ_xy (n, m), ρ_yy (m, m)),

called once per analysis on the forecast anomalies. Two kinds are provided:

- ``GainLocalization(state_obs, obs_obs)``: fixed taper matrices, usually
  from distances (``gain_localization(state_coords, obs_coords, L)``, which
  builds both blocks with one taper); ``tapers`` ignores the ensemble;
- ``AdaptiveLocalization(table)``: the sampling-error-correction factors of
  Anderson (2012), computed from the ensemble's own sample correlations
  through a lookup table (``sampling_error_table``) built offline by Monte
  Carlo for the ensemble size; optionally multiplied by a fixed
  ``GainLocalization`` (``AdaptiveLocalization(table, taper=...)``).

Both are frozen dataclasses registered as pytrees with their arrays as
leaves: they pass through ``jit`` and a sweep over radii is a ``vmap`` over
``gain_localization``'s length scale.

References: Houtekamer & Mitchell (2001), MWR 129; Anderson (2012), MWR 140,
2359–2371, "Localization and sampling error correction in ensemble Kalman
filter data assimilation".
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite
from enkit._pytree import register_dataclass
from enkit.localization._core import (
    Distance,
    Taper,
    cartesian_distance,
    gaspari_cohn,
    localization_matrix,
)

__all__ = [
    "AdaptiveLocalization",
    "GainLocalization",
    "SamplingErrorTable",
    "gain_localization",
    "sample_correlations",
    "sampling_error_factors",
    "sampling_error_table",
]


@dataclasses.dataclass(frozen=True)
class GainLocalization:
    """Fixed B-localisation tapers: state–obs (n, m) and obs–obs (m, m).

    state_obs: ``ρ_xy`` (n, m), weight of observation j in the update of
    state entry i; obs_obs: ``ρ_yy`` (m, m), symmetric, weight of the pair
    (j, k) in ``Yᵀ Y`` and (serial EnSRF) in the update of observation k's
    prior by observation j; its diagonal should be 1 (an observation is
    fully correlated with itself). Entries are usually in [0, 1].
    """

    state_obs: Array
    obs_obs: Array

    def tapers(self, X: Array, Y: Array) -> tuple[Array, Array]:
        """``(ρ_xy (n, m), ρ_yy (m, m))`` in X's dtype, shapes checked.

        X: (N, n), Y: (N, m) scaled anomalies (only their shapes are used).
        """
        n, m = X.shape[1], Y.shape[1]
        if jnp.shape(self.state_obs) != (n, m):
            raise ValueError(
                f"localization.state_obs must have shape (n, m) = ({n}, {m}), "
                f"got {jnp.shape(self.state_obs)}"
            )
        if jnp.shape(self.obs_obs) != (m, m):
            raise ValueError(
                f"localization.obs_obs must have shape (m, m) = ({m}, {m}), "
                f"got {jnp.shape(self.obs_obs)}"
            )
        check_finite("localization.state_obs", self.state_obs)
        check_finite("localization.obs_obs", self.obs_obs)
        return (jnp.asarray(self.state_obs, X.dtype), jnp.asarray(self.obs_obs, X.dtype))


register_dataclass(
    GainLocalization, data_fields=["state_obs", "obs_obs"], meta_fields=[]
)


def gain_localization(
    state_coords: ArrayLike,
    obs_coords: ArrayLike,
    length_scale: ArrayLike,
    *,
    taper: Taper = gaspari_cohn,
    distance: Distance = cartesian_distance,
) -> GainLocalization:
    """The B-localisation tapers of a grid and an observation network.

    ``ρ_xy[i, j] = taper(distance(state_coords[i], obs_coords[j]), L)`` and
    ``ρ_yy[j, k] = taper(distance(obs_coords[j], obs_coords[k]), L)``.

    state_coords: (n,) + point_shape; obs_coords: (m,) + point_shape
    (point_shape as ``enkit.localization.localization_matrix`` takes it);
    length_scale: L, an array leaf (vmap over it to sweep radii).
    Returns ``GainLocalization(state_obs=(n, m), obs_obs=(m, m))``.
    """
    return GainLocalization(
        localization_matrix(state_coords, obs_coords, length_scale,
                            taper=taper, distance=distance),
        localization_matrix(obs_coords, obs_coords, length_scale,
                            taper=taper, distance=distance),
    )


# --------------------------------------------------------------------------
# Anderson (2012) sampling error correction


@dataclasses.dataclass(frozen=True)
class SamplingErrorTable:
    """Lookup table of Anderson's (2012) factor α(|r|) for one ensemble size.

    correlations: (B + 2,) knots in |r| ∈ [0, 1] (0, the B bin centres, 1);
    factors: (B + 2,) α at the knots (α(0) = 0, α(1) = 1); counts: (B,)
    Monte-Carlo samples per bin; ensemble_size: N (static). Build it with
    ``sampling_error_table``; evaluate it with ``sampling_error_factors``.
    """

    correlations: Array
    factors: Array
    counts: Array
    ensemble_size: int


register_dataclass(
    SamplingErrorTable,
    data_fields=["correlations", "factors", "counts"],
    meta_fields=["ensemble_size"],
)


def sampling_error_table(
    key: Array,
    ensemble_size: int,
    *,
    n_bins: int = 100,
    n_samples: int = 1_000_000,
    chunk_size: int = 100_000,
    monotone: bool = True,
    dtype=None,
) -> SamplingErrorTable:
    """Build Anderson's (2012) sampling-error-correction table by Monte Carlo.

    For each of ``n_samples`` trials a "true" correlation ``ρ ~ U(−1, 1)``
    (Anderson's prior) is drawn, then N = ensemble_size pairs from the
    bivariate normal with unit variances and correlation ρ; the sample
    correlation r̂ and sample standard deviations s₁, s₂ (N − 1) give the
    regression coefficient the true correlation implies in the sample's
    units, ``q = ρ s₂ / s₁``. Trials are binned by |r̂| into ``n_bins``
    equal bins of [0, 1] (the problem is symmetric under ρ → −ρ, so
    ``q sign(r̂)`` is accumulated); with μ and σ the mean and standard
    deviation of ``q sign(r̂)`` in a bin,

        Q = μ² / (σ² (1 + 1/N)),     α = Q / (1 + Q) = μ² / (μ² + σ² (1 + 1/N)),

    the regression confidence factor: α minimises ``E[(α q₁ − q₂)²]`` for two
    independent draws q₁, q₂ of the bin's distribution (Anderson 2007,
    group filter; used for the tables of Anderson 2012), and ``1 + 1/N``
    allows for the sampling error of σ² itself (the factor used to generate
    the published tables, DART's ``full_error`` program). Knots at |r| = 0 and
    1 take the limits α = 0 (no correlation is left after correcting a zero
    sample correlation: μ = 0 by symmetry) and α = 1 (r̂ = ±1 is reached
    only when ρ = ±1, without error).

    key: PRNG key (the table is a deterministic function of key and the
    sizes); ensemble_size: N ≥ 3; n_bins: B bins of |r̂|; n_samples: Monte
    Carlo trials (rounded up to whole chunks); chunk_size: trials drawn at
    once (memory O(chunk_size · N)); monotone: replace the bin factors by
    their count-weighted least-squares projection onto non-decreasing
    sequences (isotonic regression, pool-adjacent-violators), removing the
    Monte-Carlo wiggles of neighbouring bins (the exact α is increasing in
    |r|); False keeps the raw bin values; dtype: of the draws and the table
    (None: JAX's default floating dtype, float64 when x64 is enabled).
    Raises if a bin received fewer than 2 trials (use more samples).

    References: Anderson (2012), MWR 140, 2359–2371; Anderson (2007),
    Physica D 230, 99–111 (regression confidence factor).
    """
    if not isinstance(ensemble_size, (int, np.integer)) or ensemble_size < 3:
        raise ValueError(f"ensemble_size must be an integer >= 3, got {ensemble_size!r}")
    for name, value in (("n_bins", n_bins), ("n_samples", n_samples), ("chunk_size", chunk_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    n_chunks = -(-int(n_samples) // int(chunk_size))
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    counts, s1, s2 = _table_sums(key, int(ensemble_size), int(n_bins), int(chunk_size),
                                 n_chunks, dtype)
    if int(jnp.min(counts)) < 2:
        raise ValueError(
            f"every bin needs at least 2 Monte-Carlo trials, but the emptiest of "
            f"n_bins={n_bins} got {int(jnp.min(counts))}: raise n_samples or lower n_bins"
        )
    c = counts.astype(s1.dtype)
    mean = s1 / c
    var = jnp.maximum(s2 - c * mean * mean, 0.0) / (c - 1.0)
    scaled_var = var * (1.0 + 1.0 / ensemble_size)
    alpha = jnp.where(scaled_var > 0, mean * mean / (mean * mean + scaled_var), 1.0)
    if monotone:
        alpha = jnp.asarray(_isotonic(np.asarray(alpha), np.asarray(c)), alpha.dtype)
    centres = (jnp.arange(n_bins, dtype=s1.dtype) + 0.5) / n_bins
    zero, one = jnp.zeros(1, s1.dtype), jnp.ones(1, s1.dtype)
    return SamplingErrorTable(
        correlations=jnp.concatenate([zero, centres, one]),
        factors=jnp.concatenate([zero, alpha, one]),
        counts=counts,
        ensemble_size=int(ensemble_size),
    )


@partial(jax.jit, static_argnames=("N", "n_bins", "chunk", "n_chunks", "dtype"))
def _table_sums(key, N, n_bins, chunk, n_chunks, dtype):
    """Per-bin (count, Σ q sign r̂, Σ q²) over n_chunks chunks of trials."""

    def one_chunk(i, sums):
        k_rho, k_z = jax.random.split(jax.random.fold_in(key, i))
        rho = jax.random.uniform(k_rho, (chunk,), dtype, -1.0, 1.0)
        z = jax.random.normal(k_z, (chunk, N, 2), dtype)
        a = z[..., 0]
        b = rho[:, None] * a + jnp.sqrt(1.0 - rho[:, None] ** 2) * z[..., 1]
        a = a - jnp.mean(a, axis=1, keepdims=True)
        b = b - jnp.mean(b, axis=1, keepdims=True)
        saa, sbb = jnp.sum(a * a, axis=1), jnp.sum(b * b, axis=1)
        r = jnp.sum(a * b, axis=1) / jnp.sqrt(saa * sbb)
        q = rho * jnp.sqrt(sbb / saa) * jnp.sign(r)
        idx = jnp.clip(jnp.floor(jnp.abs(r) * n_bins).astype(jnp.int32), 0, n_bins - 1)
        count, s1, s2 = sums
        return (count + jnp.bincount(idx, length=n_bins).astype(count.dtype),
                s1 + jax.ops.segment_sum(q, idx, n_bins),
                s2 + jax.ops.segment_sum(q * q, idx, n_bins))

    init = (jnp.zeros(n_bins, jnp.int32), jnp.zeros(n_bins, dtype), jnp.zeros(n_bins, dtype))
    return jax.lax.fori_loop(0, n_chunks, one_chunk, init)


def _isotonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(values.tolist(), weights.tolist()):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks])


def sampling_error_factors(table: SamplingErrorTable, r: ArrayLike) -> Array:
    """Anderson's (2012) factor for sample correlations r (any shape).

    ``α(|r|)`` by linear interpolation of the table's knots; in [0, 1],
    α(0) = 0, α(±1) = 1, even in r. Returns r's shape.
    """
    r = jnp.asarray(r)
    x = jnp.clip(jnp.abs(r), 0.0, 1.0)
    return jnp.interp(x, table.correlations.astype(x.dtype), table.factors.astype(x.dtype))


def sample_correlations(A: Array, B: Array) -> Array:
    """Sample correlations of the columns of two ensembles' anomalies.

    A: (N, a), B: (N, b) anomalies (any common scaling). Returns (a, b);
    an entry is 0 where either column has zero variance (an absent,
    masked observation), never NaN.
    """
    sa = jnp.sqrt(jnp.sum(A * A, axis=0))
    sb = jnp.sqrt(jnp.sum(B * B, axis=0))
    den = sa[:, None] * sb[None, :]
    pos = den > 0
    return jnp.where(pos, (A.T @ B) / jnp.where(pos, den, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class AdaptiveLocalization:
    """Adaptive B-localisation from the ensemble's sample correlations.

    ``ρ_xy = α(corr(X, Y))`` (n, m) and ``ρ_yy = α(corr(Y, Y))`` (m, m) with
    α the sampling-error-correction factor of Anderson (2012) read from
    ``table`` (``sampling_error_table`` for this ensemble size); when
    ``taper`` (a ``GainLocalization``) is given its matrices multiply the
    factors (Anderson's combination of the correction with a traditional
    localisation). The correlations are those of the prior (forecast)
    ensemble passed to the scheme; the serial EnSRF uses them for every
    observation rather than recomputing them after each scalar update.
    Cost O(N n m + N m²), plus the interpolation.

    Reference: Anderson (2012), MWR 140, 2359–2371.
    """

    table: SamplingErrorTable
    taper: GainLocalization | None = None

    def tapers(self, X: Array, Y: Array) -> tuple[Array, Array]:
        """``(ρ_xy (n, m), ρ_yy (m, m))`` from X: (N, n), Y: (N, m) anomalies."""
        if X.shape[0] != self.table.ensemble_size:
            raise ValueError(
                f"localization.table was built for ensemble_size="
                f"{self.table.ensemble_size}, but the ensemble has N={X.shape[0]} members"
            )
        rho_xy = sampling_error_factors(self.table, sample_correlations(X, Y))
        rho_yy = sampling_error_factors(self.table, sample_correlations(Y, Y))
        if self.taper is not None:
            t_xy, t_yy = self.taper.tapers(X, Y)
            rho_xy, rho_yy = rho_xy * t_xy, rho_yy * t_yy
        return rho_xy, rho_yy


register_dataclass(
    AdaptiveLocalization, data_fields=["table", "taper"], meta_fields=[]
)
