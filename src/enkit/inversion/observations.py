"""Observation series: many data samples (or index batches of one long data
vector), each with its own noise, cycled through in (shuffled) minibatches.

An ``ObservationSeries`` answers ``at(iteration) -> (y, noise)``: the data and
noise that ``tell`` should receive at that iteration. A driver calls

    y, noise = series.at(n)
    state, info = process.tell(state, G_of(y), y, noise, dt=dt)

(G must produce the outputs of the samples in the batch, in the order of
``series.batch_indices(n)``).

Epoch e = n // B (B batches per epoch) visits every sample exactly once:
the samples are ordered by ``jax.random.permutation(fold_in(key, e), K)``
(K samples) when shuffling, by their index otherwise, and cut into
consecutive batches of ``batch_size``. The order is a function of
(key, e) alone, so the same key gives the same sequence on every run and a
resumed run continues it. The series is host-side bookkeeping: ``at``
takes a concrete integer iteration (samples may differ in size, so the
result's shape may change from batch to batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, check_ndim, is_concrete
from enkit.covariance import Covariance, Dense, Diagonal, Scalar, as_covariance
from enkit.filters._common import as_key
from enkit.inversion._common import BlockDiagonal

__all__ = ["ObservationSeries", "block_noise", "restrict_noise"]


def _check_indices(name: str, idx, dim: int | None) -> np.ndarray:
    """Validate a 1-D sequence of distinct integer indices in [0, dim) (dim
    None: only ≥ 0)."""
    a = np.asarray(idx)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be a non-empty 1-D sequence of integer indices, "
                         f"got shape {a.shape} and dtype {a.dtype}")
    if dim is None and a.min() < 0:
        raise ValueError(f"{name} must hold indices >= 0, got {a.min()}")
    if dim is not None and (a.min() < 0 or a.max() >= dim):
        raise ValueError(f"{name} must hold indices in [0, {dim}), got min {a.min()}, "
                         f"max {a.max()}")
    vals, counts = np.unique(a, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{name} repeats indices {vals[counts > 1].tolist()}")
    return a.astype(np.int64)


def restrict_noise(noise: Covariance, idx: ArrayLike) -> Covariance:
    """The marginal covariance Γ[idx, idx] of the entries ``idx`` (k,).

    A ``Scalar`` stays scalar, a ``Diagonal`` diagonal (never densified); any
    other operator gives a ``Dense`` k×k block.
    """
    idx = _check_indices("idx", idx, noise.dim)
    if isinstance(noise, Scalar):
        return Scalar(noise.variance, int(idx.size))
    if isinstance(noise, Diagonal):
        return Diagonal(noise.variances[idx])
    C = noise.dense()
    return Dense(C[np.ix_(idx, idx)])


def block_noise(noises: Sequence[Covariance]) -> Covariance:
    """blockdiag(Γ₁, …, Γₖ) of covariance operators (dimensions add up).

    Scalar/diagonal blocks give one ``Diagonal``; otherwise a nested block
    operator whose solves act block by block (nothing is densified).
    """
    noises = list(noises)
    if not noises:
        raise ValueError("noises must hold at least one covariance")
    if len(noises) == 1:
        return noises[0]
    if all(isinstance(c, (Scalar, Diagonal)) for c in noises):
        dtype = jnp.result_type(*[c.dtype for c in noises])
        return Diagonal(jnp.concatenate([c.diagonal().astype(dtype) for c in noises]))
    out = noises[-1]
    for c in reversed(noises[:-1]):
        out = BlockDiagonal(c, out)
    return out


class ObservationSeries:
    """K data samples (y_k, Γ_k), served in minibatches by ``at(iteration)``.

    samples: sequence of pairs (y_k: (d_k,), Γ_k: covariance operator of
    dimension d_k or an array, ``as_covariance``); batch_size: b ≥ 1 samples
    per batch, dividing K (so every epoch has B = K/b equal batches);
    shuffle: draw a new order every epoch (then ``key`` is required: a PRNG
    key or an int seed); key: the key of the orders, epoch e uses
    ``fold_in(key, e)``.

    A batch's data is the concatenation of its samples' y (in batch order)
    and its noise the block-diagonal blockdiag(Γ_{k₁}, …, Γ_{k_b})
    (``block_noise``): the samples' errors are independent. For inflation
    with minibatches scale the step by s = b/K (see ``process_inflation``).
    """

    def __init__(self, samples: Sequence[tuple[ArrayLike, Covariance | ArrayLike]], *,
                 batch_size: int = 1, shuffle: bool = True,
                 key: Array | int | None = None):
        samples = list(samples)
        if not samples:
            raise ValueError("samples must hold at least one (y, noise) pair")
        ys, noises = [], []
        for k, pair in enumerate(samples):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"samples[{k}] must be a pair (y, noise)")
            y, noise = pair
            check_ndim(f"samples[{k}] y", y, 1, "(d_k,)")
            y = jnp.asarray(y)
            if not jnp.issubdtype(y.dtype, jnp.floating):
                y = y.astype(jnp.result_type(float))
            check_finite(f"samples[{k}] y", y)
            ys.append(y)
            noises.append(as_covariance(noise, y.shape[0], name=f"samples[{k}] noise"))
        K = len(ys)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or not 1 <= batch_size <= K or K % batch_size:
            raise ValueError(
                f"batch_size must be an integer in [1, {K}] dividing the number of "
                f"samples K={K} (equal batches every epoch), got {batch_size!r}"
            )
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        self.ys, self.noises = tuple(ys), tuple(noises)
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.key = as_key(key, "ObservationSeries(shuffle=True)") if shuffle else None
        self._outputs = None  # (index sets, d) when built by from_vector

    @classmethod
    def from_vector(cls, y: ArrayLike, noise: Covariance | ArrayLike,
                    batches: Sequence[ArrayLike], *, batch_size: int = 1,
                    shuffle: bool = True, key: Array | int | None = None
                    ) -> ObservationSeries:
        """Samples that are index sets of one long data vector: sample k is
        (y[idx_k], Γ[idx_k, idx_k]) (``restrict_noise``). y: (d,); noise: Γ of
        dimension d; batches: sequence of (d_k,) integer index arrays (they
        may overlap; each is used as one sample)."""
        check_ndim("y", y, 1, "(d,)")
        y = jnp.asarray(y)
        noise = as_covariance(noise, y.shape[0], name="noise")
        samples, indices = [], []
        for k, idx in enumerate(batches):
            idx = _check_indices(f"batches[{k}]", idx, y.shape[0])
            samples.append((y[idx], restrict_noise(noise, idx)))
            indices.append(idx)
        series = cls(samples, batch_size=batch_size, shuffle=shuffle, key=key)
        series._outputs = (tuple(indices), int(y.shape[0]))
        return series

    @property
    def n_samples(self) -> int:
        """K, the number of samples."""
        return len(self.ys)

    @property
    def n_batches(self) -> int:
        """B = K / batch_size, the number of batches (iterations) per epoch."""
        return self.n_samples // self.batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The (K,) order of the samples in ``epoch`` (a permutation)."""
        epoch = _check_count("epoch", epoch)
        if not self.shuffle:
            return np.arange(self.n_samples)
        perm = jax.random.permutation(jax.random.fold_in(self.key, epoch), self.n_samples)
        return np.asarray(perm)

    def batch_indices(self, iteration: int) -> np.ndarray:
        """The (b,) sample indices of the batch used at ``iteration``."""
        n = _check_count("iteration", iteration)
        epoch, j = divmod(n, self.n_batches)
        b = self.batch_size
        return self.epoch_order(epoch)[j * b:(j + 1) * b]

    def output_selection(self, iteration: int) -> tuple[np.ndarray, int] | None:
        """Which forward outputs the batch at ``iteration`` observes.

        For a series built by ``from_vector`` the forward map returns the
        whole (d,) vector and the batch observes its entries ``idx`` (the
        batch's index sets, concatenated in batch order): returns ``(idx,
        d)``; ``calibrate`` evaluates the forward map once per member and
        compares ``G[:, idx]`` with the batch's y. For a series of separate
        samples returns None: the forward map's output is compared with
        the batch's y as it is (same length).
        """
        if self._outputs is None:
            return None
        indices, d = self._outputs
        idx = self.batch_indices(iteration)
        return np.concatenate([indices[k] for k in idx]), d

    def at(self, iteration: int) -> tuple[Array, Covariance]:
        """(y, noise) of the batch at ``iteration`` (a concrete int ≥ 0):
        y the concatenated samples (Σ d_k,), noise their block-diagonal Γ."""
        idx = self.batch_indices(iteration)
        y = jnp.concatenate([self.ys[k] for k in idx])
        return y, block_noise([self.noises[k] for k in idx])


def _check_count(name: str, n) -> int:
    if not is_concrete(n):
        raise TypeError(f"{name} must be a concrete integer (ObservationSeries is "
                        "host-side bookkeeping; call it outside jit)")
    v = np.asarray(n)
    if v.ndim != 0 or not np.issubdtype(v.dtype, np.integer) or int(v) < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
    return int(v)
