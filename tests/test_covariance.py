"""Covariance operators against their dense matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit


def _ops(m=4):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(m, m))
    return [
        enkit.Scalar(0.7, m),
        enkit.Diagonal(rng.uniform(0.5, 2.0, size=m)),
        enkit.Dense(A @ A.T + np.eye(m)),
    ]


@pytest.mark.parametrize("R", _ops(), ids=lambda R: type(R).__name__)
def test_operator_matches_dense(R):
    C = np.asarray(R.dense())
    L = np.asarray(R.cholesky())
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 2, R.dim))  # batch axes in front
    np.testing.assert_allclose(L @ L.T, C, rtol=1e-12)
    np.testing.assert_allclose(np.tril(L), L)
    np.testing.assert_allclose(R.solve(x), np.linalg.solve(C, x[..., None])[..., 0], rtol=1e-10)
    np.testing.assert_allclose(R.whiten(x), np.linalg.solve(L, x[..., None])[..., 0], rtol=1e-10)
    np.testing.assert_allclose(R.whiten_t(x), np.linalg.solve(L.T, x[..., None])[..., 0], rtol=1e-10)
    np.testing.assert_allclose(R.colorize(x), x @ L.T, rtol=1e-12)
    np.testing.assert_allclose(R.log_pdet, np.linalg.slogdet(C)[1], rtol=1e-12)
    np.testing.assert_allclose(R.diagonal(), np.diag(C), rtol=1e-12)


@pytest.mark.parametrize("R", _ops(), ids=lambda R: type(R).__name__)
def test_sample_has_the_covariance(R):
    z = np.asarray(R.sample(jax.random.key(0), (200_000,)))
    assert z.shape == (200_000, R.dim)
    np.testing.assert_allclose(np.cov(z.T), R.dense(), atol=0.03 * np.abs(R.dense()).max())
    assert np.abs(z.mean(0)).max() < 0.02
    same = R.sample(jax.random.key(0), (5,))
    assert np.array_equal(np.asarray(same), np.asarray(R.sample(jax.random.key(0), (5,))))


@pytest.mark.parametrize("R", _ops(), ids=lambda R: type(R).__name__)
def test_operators_are_pytrees(R):
    f = jax.jit(lambda R, x: R.solve(x))
    x = jnp.ones(R.dim)
    np.testing.assert_allclose(f(R, x), R.solve(x))
    R32 = R.astype(jnp.float32)
    assert R32.dtype == jnp.float32 and type(R32) is type(R)


def test_as_covariance_wraps_by_shape():
    assert isinstance(enkit.as_covariance(2.0, 3), enkit.Scalar)
    assert isinstance(enkit.as_covariance(np.ones(3), 3), enkit.Diagonal)
    assert isinstance(enkit.as_covariance(np.eye(3), 3), enkit.Dense)
    R = enkit.Diagonal(np.ones(3))
    assert enkit.as_covariance(R, 3) is R
    with pytest.raises(ValueError, match=r"R must be a scalar, an \(3,\) vector"):
        enkit.as_covariance(np.ones(4), 3)
    with pytest.raises(TypeError, match="R must be a Covariance operator or an array"):
        enkit.as_covariance("identity", 3)


def test_scalar_variance_is_differentiable():
    g = jax.grad(lambda v: enkit.Scalar(v, 3).log_pdet)(2.0)
    np.testing.assert_allclose(g, 3 / 2.0)
