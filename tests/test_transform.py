"""The symmetric ETKF transform (filters._transform): the N×N path (m ≥ N) and
the m×m path (m < N) against an eigendecomposition."""

import jax.numpy as jnp
import numpy as np
import pytest

from enkit.filters._transform import symmetric_transform


def _reference(S, d):
    T = np.eye(S.shape[-2]) + S @ np.swapaxes(S, -1, -2)
    lam, V = np.linalg.eigh(T)
    Z = (V / np.sqrt(lam)[..., None, :]) @ np.swapaxes(V, -1, -2)
    return np.linalg.solve(T, (S @ d[..., None]))[..., 0], Z


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8), (3, 10, 4), (3, 4, 10)])
def test_both_paths_match_the_eigendecomposition(shape):
    rng = np.random.default_rng(0)
    S = rng.normal(size=shape) * 0.4
    d = rng.normal(size=shape[:-2] + shape[-1:])
    w, Z = symmetric_transform(jnp.asarray(S), jnp.asarray(d))
    w_ref, Z_ref = _reference(S, d)
    np.testing.assert_allclose(Z, Z_ref, atol=2e-15)
    np.testing.assert_allclose(w, w_ref, atol=2e-15)
    np.testing.assert_array_equal(Z, np.swapaxes(np.asarray(Z), -1, -2))


def test_zero_columns_change_nothing_across_the_paths():
    """Observations with zero anomalies and innovation (a tapered-out or absent
    observation) leave the transform as it was, on either side of m = N."""
    rng = np.random.default_rng(1)
    S = rng.normal(size=(6, 5)) * 0.4  # m < N
    d = rng.normal(size=5)
    S0 = np.concatenate([S, np.zeros((6, 3))], axis=1)  # m = 8 > N
    d0 = np.concatenate([d, np.zeros(3)])
    w, Z = symmetric_transform(jnp.asarray(S), jnp.asarray(d))
    w0, Z0 = symmetric_transform(jnp.asarray(S0), jnp.asarray(d0))
    np.testing.assert_allclose(Z, Z0, atol=1e-15)
    np.testing.assert_allclose(w, w0, atol=1e-15)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (8, 8), (3, 10, 4), (3, 4, 10)])
def test_apply_equals_the_transform_times_the_anomalies(shape):
    """symmetric_transform_apply gives (w, Z X) without forming Z when m < N."""
    from enkit.filters._transform import symmetric_transform_apply

    rng = np.random.default_rng(2)
    S = rng.normal(size=shape) * 0.4
    d = rng.normal(size=shape[:-2] + shape[-1:])
    X = rng.normal(size=shape[:-1] + (7,))
    w, ZX = symmetric_transform_apply(jnp.asarray(S), jnp.asarray(d), jnp.asarray(X))
    w_ref, Z_ref = _reference(S, d)
    np.testing.assert_allclose(ZX, Z_ref @ X, atol=1e-14)
    np.testing.assert_allclose(w, w_ref, atol=2e-15)
