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
