"""L0 ensemble statistics against NumPy."""

import numpy as np
import pytest

import enkit


def test_statistics_match_numpy():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(7, 4))
    Y = rng.normal(size=(7, 2))
    np.testing.assert_allclose(enkit.ensemble_mean(E), E.mean(0), rtol=1e-13)
    X = enkit.anomalies(E)
    np.testing.assert_allclose(X.sum(0), 0, atol=1e-13)
    np.testing.assert_allclose(enkit.ensemble_covariance(E), np.cov(E.T, ddof=1), rtol=1e-12)
    full = np.cov(np.hstack([E, Y]).T, ddof=1)
    np.testing.assert_allclose(enkit.cross_covariance(E, Y), full[:4, 4:], rtol=1e-12)
    np.testing.assert_allclose(
        enkit.ensemble_spread(E), np.sqrt(np.mean(np.var(E, axis=0, ddof=1))), rtol=1e-12
    )


def test_cross_covariance_needs_same_members():
    with pytest.raises(ValueError, match="same number of members"):
        enkit.cross_covariance(np.ones((3, 2)), np.ones((4, 2)))


def test_rmse():
    np.testing.assert_allclose(enkit.rmse(np.array([[1.0, 3.0]]), np.array([[0.0, 0.0]])),
                               [np.sqrt(5.0)])
    with pytest.raises(ValueError, match="same shape"):
        enkit.rmse(np.ones(3), np.ones(4))


def test_multiplicative_inflation():
    rng = np.random.default_rng(1)
    E = rng.normal(size=(6, 3))
    Ei = enkit.multiplicative_inflation(E, 1.1)
    np.testing.assert_allclose(Ei.mean(0), E.mean(0), rtol=1e-13)
    np.testing.assert_allclose(np.cov(np.asarray(Ei).T), 1.21 * np.cov(E.T), rtol=1e-12)
