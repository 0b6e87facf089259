"""Standard normal draws, bit-identical to ``jax.random.normal``, cheaper under jit on CPU.

JAX lowers its threefry2x32 hash on CPU as a rolled loop (a ``while`` of five
iterations of four rounds each, to keep compilation small). For the
thousands of numbers an ensemble analysis draws per cycle, the loop's
per-iteration overhead dominates: on Lorenz-96 with N = m = 40 (1,600
float64 normals per cycle) the draws cost 3–4 times what the same hash
costs written out (benchmarks/vs_dapper_enkf.py).

``normal`` draws exactly the numbers of ``jax.random.normal(key, shape,
dtype)`` — same key, same bits, same transform — through a PRNG
implementation whose ``random_bits`` is the threefry2x32 hash (Salmon et
al. 2011) with its twenty rounds unrolled, so XLA fuses it with the counters
and the normal transform into one loop. Its seed, split and fold_in are
JAX's threefry ones, and the uniform-to-normal transform is JAX's own. It
takes that path only where the result is provably the same: a key of the
default ``threefry2x32`` implementation (typed, or a raw ``uint32`` (2,)
array while that is JAX's default), JAX's "partitionable" threefry bits
(``jax_threefry_partitionable``, JAX's default) and fewer than 2³² numbers;
any other key or setting falls back to ``jax.random.normal`` itself.
Nothing global is changed: the implementation is a private ``PRNGSpec``,
registered nowhere.

Reference: Salmon, Moraes, Dror & Shaw (2011), "Parallel random numbers: as
easy as 1, 2, 3", SC'11 (Threefry-2x32, 20 rounds).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.extend.random import define_prng_impl, threefry_prng_impl

__all__ = ["fold_in", "normal"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 hash (20 rounds) of the counter pairs ``(x1, x2)``
    under the key ``(k1, k2)``, written out round by round.

    k1, k2: uint32 scalars; x1, x2: uint32 arrays of one shape. Returns the
    two uint32 output words, each of x1's shape.
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _random_bits(key: Array, bit_width: int, shape) -> Array:
    """threefry2x32 random bits as JAX's partitionable scheme makes them:
    the counter of entry j (row-major) is the 64-bit j as (high, low) words,
    hashed once; 32-bit draws are the xor of the two output words, 64-bit
    draws their concatenation, 8/16-bit the low bits of the xor."""
    size = math.prod(shape)
    if size >= 2**32:
        return threefry_prng_impl.random_bits(key, bit_width, shape)
    lo = jax.lax.iota(jnp.uint32, size).reshape(shape)
    hi = jnp.zeros(shape, jnp.uint32)
    b1, b2 = threefry2x32(key[0], key[1], hi, lo)
    dtype = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}[bit_width]
    if bit_width == 64:
        return (b1.astype(dtype) << dtype(32)) | b2.astype(dtype)
    return (b1 ^ b2).astype(dtype)


_UNROLLED = define_prng_impl(
    key_shape=(2,),
    seed=threefry_prng_impl.seed,
    split=threefry_prng_impl.split,
    random_bits=_random_bits,
    fold_in=threefry_prng_impl.fold_in,
    name="threefry2x32 (unrolled)",
    tag="fru",
)


def _unrolled_key(key):
    """key as a key of the unrolled implementation (the same data), or None
    where the draws could differ from JAX's own (see the module docstring)."""
    if not jax.config.jax_threefry_partitionable:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        data = jax.random.key_data(key)
    elif key.dtype == jnp.uint32 and key.shape[-1:] == (2,) and \
            jax.config.jax_default_prng_impl == "threefry2x32":
        data = key
    else:
        return None
    return jax.random.wrap_key_data(data, impl=_UNROLLED)


def normal(key: Array, shape: tuple[int, ...] = (), dtype=None) -> Array:
    """Standard normal draws: exactly ``jax.random.normal(key, shape, dtype)``.

    key: a JAX PRNG key (one key, as ``jax.random.normal`` takes it); shape:
    the shape of the draws; dtype: a floating dtype (None: JAX's default
    float, as in ``jax.random.normal``). For a threefry2x32
    key the same numbers are made with the hash unrolled (see the module
    docstring); any other key goes to ``jax.random.normal``.
    """
    fast = _unrolled_key(key)
    return jax.random.normal(key if fast is None else fast, tuple(shape), dtype)


def fold_in(key: Array, data) -> Array:
    """``jax.random.fold_in(key, data)``, bit for bit, the hash written out.

    JAX's threefry fold_in hashes the counter pair ``(0, uint32(data))``
    under the key's two words (the key of ``threefry_seed(data)``), through
    the same rolled loop as its draws; a loop that derives per-cycle keys
    pays that loop's per-iteration overhead every cycle (about 0.5 µs per
    fold_in on CPU against 0.25 µs written out). Here the hash is the
    unrolled ``threefry2x32``. One key of the default ``threefry2x32``
    implementation (typed, or a raw ``uint32`` (2,) array while that is
    JAX's default) gives a key of the same kind; any other key, or an
    array of keys, goes to ``jax.random.fold_in`` itself. data: a scalar
    integer (converted to uint32 as JAX converts it).
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return jax.random.fold_in(key, data)
        impl = jax.random.key_impl(key)
        words = jax.random.key_data(key)

        def wrap(w):
            return jax.random.wrap_key_data(w, impl=impl)
    elif key.dtype == jnp.uint32 and key.shape == (2,) and \
            jax.config.jax_default_prng_impl == "threefry2x32":
        words = key

        def wrap(w):
            return w
    else:
        return jax.random.fold_in(key, data)
    if np.ndim(data):
        return jax.random.fold_in(key, data)  # raises JAX's error for an array
    x = jnp.asarray(data, jnp.uint32)[None]
    b1, b2 = threefry2x32(words[0], words[1], jnp.zeros((1,), jnp.uint32), x)
    return wrap(jnp.concatenate([b1, b2]))
