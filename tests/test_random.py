"""enkit._random.normal: the draws of jax.random.normal, bit for bit, through the
unrolled threefry2x32 hash."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit._random import _unrolled_key, normal, threefry2x32

KEYS = {
    "typed": lambda: jax.random.key(3),
    "folded": lambda: jax.random.fold_in(jax.random.key(11), 5),
    "raw uint32": lambda: jax.random.PRNGKey(7),
}


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))


def test_threefry2x32_known_answers():
    """The Random123 known-answer vectors of Threefry-2x32, 20 rounds."""
    cases = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
             ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
             ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
    for (k1, k2), (x1, x2), expected in cases:
        out = threefry2x32(jnp.uint32(k1), jnp.uint32(k2),
                           jnp.array([x1], jnp.uint32), jnp.array([x2], jnp.uint32))
        assert (int(out[0][0]), int(out[1][0])) == expected


@pytest.mark.parametrize("key", list(KEYS))
@pytest.mark.parametrize("dtype", [None, jnp.float64, jnp.float32, jnp.float16, jnp.bfloat16])
def test_normal_equals_jax(key, dtype):
    k = KEYS[key]()
    assert _unrolled_key(k) is not None  # the unrolled path is taken
    for shape in [(), (1,), (40, 40), (3, 5, 7), (0, 4)]:
        _same(normal(k, shape, dtype), jax.random.normal(k, shape, dtype))


def test_normal_equals_jax_under_jit_and_vmap():
    k = jax.random.key(2)
    draw = jax.jit(normal, static_argnums=(1, 2))
    _same(draw(k, (40, 40), jnp.float64), jax.random.normal(k, (40, 40), jnp.float64))
    keys = jax.random.split(k, 4)
    _same(jax.vmap(lambda kk: normal(kk, (6, 3)))(keys),
          jax.vmap(lambda kk: jax.random.normal(kk, (6, 3)))(keys))


def test_other_key_implementations_fall_back():
    k = jax.random.key(5, impl="rbg")
    assert _unrolled_key(k) is None
    _same(normal(k, (8, 3)), jax.random.normal(k, (8, 3)))


def test_covariance_sample_draws_jax_normals():
    R = enkit.Diagonal(jnp.array([1.0, 4.0, 9.0]))
    k = jax.random.key(9)
    np.testing.assert_array_equal(R.sample(k, (5,)),
                                  R.colorize(jax.random.normal(k, (5, 3), jnp.float64)))


def _key_words(k):
    return jax.random.key_data(k) if jnp.issubdtype(k.dtype, jax.dtypes.prng_key) else k


@pytest.mark.parametrize("key", list(KEYS))
def test_fold_in_equals_jax(key):
    from enkit._random import fold_in

    k = KEYS[key]()
    for data in (0, 1, 7, 2**31 - 1, 2**32 - 1, np.int64(12), jnp.int32(5), jnp.uint8(200),
                 jnp.int64(2**40 + 3)):
        got, want = fold_in(k, data), jax.random.fold_in(k, data)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(_key_words(got), _key_words(want))
    jitted = jax.jit(fold_in)(k, jnp.int64(2**40 + 3))
    np.testing.assert_array_equal(_key_words(jitted),
                                  _key_words(jax.random.fold_in(k, jnp.int64(2**40 + 3))))
    # the key it makes draws what JAX's key draws
    _same(normal(fold_in(k, 3), (4, 5)), jax.random.normal(jax.random.fold_in(k, 3), (4, 5)))


def test_fold_in_falls_back_and_raises_like_jax():
    from enkit._random import fold_in

    for k in (jax.random.key(5, impl="rbg"), jax.random.split(jax.random.key(1), 3)):
        if k.shape:  # an array of keys: JAX refuses it, so does fold_in
            with pytest.raises(Exception):
                jax.random.fold_in(k, 2)
            with pytest.raises(Exception):
                fold_in(k, 2)
            continue
        np.testing.assert_array_equal(_key_words(fold_in(k, 2)),
                                      _key_words(jax.random.fold_in(k, 2)))
    k = jax.random.key(0)
    for bad in (-1, 2**33):  # out of uint32: JAX's OverflowError
        with pytest.raises(OverflowError):
            fold_in(k, bad)
    with pytest.raises(TypeError, match="scalar"):
        fold_in(k, jnp.arange(2))
