"""Importance weights on the log scale: normalisation, effective sample
size (``effective_sample_size``, the one of ``enkit.diagnostics``, which
takes ``log_weights=``), weighted moments, the four classical resampling
schemes and the Gaussian-kernel jitter applied after resampling.

Every function takes log-weights ``log_w`` of shape (N,), not necessarily
normalised (any common constant is irrelevant); normalised weights are
``w̄ᵢ = exp(log_wᵢ − logsumexp(log_w))``. Resamplers return ancestor
indices ``a`` of shape (N,) (int32): the resampled ensemble is ``E[a]``,
with uniform weights. All four are unbiased, E[#{j: aⱼ = i}] = N w̄ᵢ
(Douc, Cappé & Moulines 2005; Hol, Schön & Gustafsson 2006).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp
from jax.typing import ArrayLike

__all__ = [
    "RESAMPLERS",
    "multinomial",
    "normalize_log_weights",
    "offspring_counts",
    "regularize",
    "residual",
    "sample_with_root",
    "scott_bandwidth",
    "silverman_bandwidth",
    "stratified",
    "systematic",
    "uniform_log_weights",
    "weighted_covariance_root",
    "weighted_mean",
    "weighted_spread",
]


def uniform_log_weights(N: int, dtype=jnp.float32) -> Array:
    """Normalised uniform log-weights ``−log N``, shape (N,)."""
    return jnp.full((N,), -jnp.log(N), dtype=dtype)


def normalize_log_weights(log_w: ArrayLike) -> Array:
    """``log w̄ᵢ = log wᵢ − logsumexp(log w)`` (N,): Σ exp(log w̄) = 1.

    All entries −inf (every weight zero) gives NaN: see
    ``enkit.particle.check_weights`` for the error the analyses raise."""
    log_w = jnp.asarray(log_w)
    return log_w - logsumexp(log_w)


def _weights(log_w):
    log_w = jnp.asarray(log_w)
    return jnp.exp(normalize_log_weights(log_w))


def _inverse_cdf(u, w):
    """Indices i with F(i−1) ≤ uⱼ < F(i), F the cumulative weights (scaled to
    end exactly at 1, so u < 1 never runs past the last index)."""
    cdf = jnp.cumsum(w)
    cdf = cdf / cdf[-1]
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(idx, w.shape[0] - 1).astype(jnp.int32)


def multinomial(key: Array, log_w: ArrayLike) -> Array:
    """Multinomial resampling: N independent draws aⱼ ~ Categorical(w̄).

    key: PRNG key; log_w: (N,). Returns ancestor indices (N,) int32. The
    offspring counts are Multinomial(N, w̄): Var(cᵢ) = N w̄ᵢ (1 − w̄ᵢ), the
    largest of the four schemes (Gordon, Salmond & Smith 1993)."""
    w = _weights(log_w)
    u = jax.random.uniform(key, w.shape, dtype=w.dtype)
    return _inverse_cdf(u, w)


def stratified(key: Array, log_w: ArrayLike) -> Array:
    """Stratified resampling: uⱼ = (j + Uⱼ)/N with independent Uⱼ ~ U[0, 1),
    one draw in each stratum [j/N, (j+1)/N) of the cumulative weights
    (Kitagawa 1996). key: PRNG key; log_w: (N,). Returns (N,) int32,
    sorted."""
    w = _weights(log_w)
    N = w.shape[0]
    u = (jnp.arange(N, dtype=w.dtype) + jax.random.uniform(key, (N,), dtype=w.dtype)) / N
    return _inverse_cdf(u, w)


def systematic(key: Array, log_w: ArrayLike) -> Array:
    """Systematic resampling: uⱼ = (j + U)/N with one U ~ U[0, 1) shared by
    all strata (Carpenter, Clifford & Fearnhead 1999; Kitagawa 1996). Each
    member gets ⌊N w̄ᵢ⌋ or ⌈N w̄ᵢ⌉ offspring. key: PRNG key; log_w: (N,).
    Returns (N,) int32, sorted."""
    w = _weights(log_w)
    N = w.shape[0]
    u = (jnp.arange(N, dtype=w.dtype) + jax.random.uniform(key, (), dtype=w.dtype)) / N
    return _inverse_cdf(u, w)


def residual(key: Array, log_w: ArrayLike) -> Array:
    """Residual resampling (Liu & Chen 1998): member i first gets
    ⌊N w̄ᵢ⌋ offspring deterministically; the remaining D = N − Σ⌊N w̄ᵢ⌋
    are drawn multinomially with weights ∝ N w̄ᵢ − ⌊N w̄ᵢ⌋. key: PRNG key;
    log_w: (N,). Returns (N,) int32 (the deterministic ones first)."""
    w = _weights(log_w)
    N = w.shape[0]
    counts = jnp.floor(N * w).astype(jnp.int32)
    n_det = jnp.sum(counts)
    det = jnp.repeat(jnp.arange(N, dtype=jnp.int32), counts, total_repeat_length=N)
    rest = N * w - counts
    total = jnp.sum(rest)
    rest = jnp.where(total > 0, rest / jnp.where(total > 0, total, 1.0), 1.0 / N)
    u = jax.random.uniform(key, (N,), dtype=w.dtype)
    drawn = _inverse_cdf(u, rest)
    return jnp.where(jnp.arange(N) < n_det, det, drawn)


RESAMPLERS = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def offspring_counts(ancestors: ArrayLike, N: int) -> Array:
    """cᵢ = #{j: aⱼ = i}, the number of offspring of each member, (N,) int32."""
    return jnp.bincount(jnp.asarray(ancestors), length=N).astype(jnp.int32)


def weighted_mean(E: ArrayLike, log_w: ArrayLike) -> Array:
    """x̄ = Σᵢ w̄ᵢ xᵢ. E: (N, n); log_w: (N,). Returns (n,)."""
    E = jnp.asarray(E)
    return _weights(log_w).astype(E.dtype) @ E


def _degenerate(w):
    """True when (to round-off) one member holds all the weight."""
    return 1.0 - jnp.max(w) < 100 * jnp.finfo(w.dtype).eps


def weighted_covariance_root(E: ArrayLike, log_w: ArrayLike) -> Array:
    """C½ (N, n) with C½ᵀ C½ = C_w, the reliability-weighted covariance

        C_w = Σᵢ w̄ᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ / (1 − Σᵢ w̄ᵢ²),

    which is the unbiased sample covariance (N − 1 denominator) for uniform
    weights. Rows: C½ᵢ = √(w̄ᵢ / (1 − Σ w̄²)) (xᵢ − x̄). When one member
    holds all the weight (C_w undefined) the unweighted sample covariance
    is used instead, as DAPPER's ``raw_C12`` does. E: (N, n); log_w: (N,)."""
    E = jnp.asarray(E)
    w = _weights(log_w).astype(E.dtype)
    w = jnp.where(_degenerate(w), jnp.full_like(w, 1.0 / w.shape[0]), w)
    A = E - w @ E
    ub = 1.0 / (1.0 - jnp.sum(w * w))
    return jnp.sqrt(ub * w)[:, None] * A


def weighted_spread(E: ArrayLike, log_w: ArrayLike) -> Array:
    """Spread ``sqrt(mean_j (C_w)_jj)`` of a weighted ensemble
    (``weighted_covariance_root``); equals ``enkit.ensemble_spread`` for
    uniform weights. E: (N, n); log_w: (N,). Returns a scalar."""
    C12 = weighted_covariance_root(E, log_w)
    return jnp.sqrt(jnp.mean(jnp.sum(C12 * C12, axis=0)))


def scott_bandwidth(N: int, n: int) -> float:
    """Scott's rule-of-thumb kernel bandwidth h = N^(−1/(n+4)) (the
    factor on the standard deviation; Scott 1992; DAPPER's ``auto_bandw``)."""
    return float(N) ** (-1.0 / (n + 4))


def silverman_bandwidth(N: int, n: int) -> float:
    """Silverman's rule-of-thumb bandwidth h = (4 / (N (n + 2)))^(1/(n+4))
    (Silverman 1986, eq. 4.14; optimal for a Gaussian target and kernel)."""
    return (4.0 / (N * (n + 2.0))) ** (1.0 / (n + 4))


def sample_with_root(key: Array, root: ArrayLike, count: int) -> Array:
    """``count`` draws of N(0, rootᵀ root), root (k, n), through the smaller
    of two roots: root itself (z ~ N(0, I_k)) when k ≤ n, else the n × n
    triangular factor of root's QR decomposition (z ~ N(0, I_n)), the same
    distribution at O(count · n · min(k, n)). Returns (count, n)."""
    root = jnp.asarray(root)
    k, n = root.shape
    if k > n:  # Rᵀ R = rootᵀ root with R (n, n)
        root = jnp.linalg.qr(root, mode="r")
    return jax.random.normal(key, (count, root.shape[0]), dtype=root.dtype) @ root


def regularize(key: Array, E: ArrayLike, log_w: ArrayLike, ancestors: ArrayLike, *,
               reg: ArrayLike = 1.0, bandwidth: ArrayLike | None = None,
               duplicates_only: bool = False) -> Array:
    """Resample and jitter: the regularised particle filter's kernel step
    (Musso, Oudjane & Le Gland 2001; Doucet, de Freitas & Gordon 2001, §12.2.2).

        x̃ⱼ = x_{aⱼ} + reg · h · C½ᵀ zⱼ,  zⱼ ~ N(0, I_N),

    so each jitter is N(0, (reg·h)² C_w), with C_w the weighted covariance
    of the ensemble before resampling (``weighted_covariance_root``) and h
    the bandwidth: ``scott_bandwidth(N, n)`` when None (DAPPER's
    convention: its ``PartFilt(reg=...)`` is this ``reg``), or pass
    ``silverman_bandwidth(N, n)`` or any number. By default every
    resampled member is jittered (DAPPER's ``nuj=False``);
    ``duplicates_only=True`` jitters only the members whose ancestor left
    more than one offspring, every copy of it included, and leaves the
    particles drawn once as they were (DAPPER's default ``nuj=True``, which
    marks the same members for any order of the ancestors). reg = 0 gives
    plain resampling. The jitter is drawn through the smaller of the two
    roots of C_w: C½ itself (zⱼ ~ N(0, I_N)) when N ≤ n, else the n × n
    triangular factor of C½'s QR decomposition (zⱼ ~ N(0, I_n)), the same
    distribution at O(N n min(N, n)) cost.

    key: PRNG key; E: (N, n) ensemble before resampling; log_w: (N,) its
    log-weights; ancestors: (N,) from a resampler. Returns (N, n)."""
    E = jnp.asarray(E)
    N, n = E.shape
    ancestors = jnp.asarray(ancestors)
    h = scott_bandwidth(N, n) if bandwidth is None else bandwidth
    C12 = weighted_covariance_root(E, log_w)
    jitter = (jnp.asarray(reg, E.dtype) * h) * sample_with_root(key, C12, N)
    if duplicates_only:
        copied = offspring_counts(ancestors, N)[ancestors] > 1
        jitter = jnp.where(copied[:, None], jitter, 0.0)
    return E[ancestors] + jitter
