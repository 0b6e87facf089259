"""The random mean-preserving rotation for every deterministic scheme.

Exact answers: a rotated analysis has the analysis mean and covariance of
the scheme to round-off (on one analysis, and through a whole run of a
linear model, where the forecast statistics depend on the members only
through them); the members themselves change.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.assimilation.cycle import cycle_keys
from enkit.inflation import chain

SCHEMES = {
    "etkf": enkit.etkf, "ensrf": enkit.ensrf, "ensrf_serial": enkit.ensrf_serial,
    "denkf": enkit.denkf, "estkf": enkit.estkf, "etkf_n": enkit.etkf_n,
    "letkf": partial(enkit.letkf, radius=2.0, state_coords=np.arange(6.0)[:, None],
                     obs_coords=np.arange(0.0, 6, 2)[:, None]),
}


def _problem(seed=0, N=8, n=6):
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(N, n)) * 1.5 + 2.0
    H = np.eye(n)[::2]
    R = enkit.Diagonal(np.array([0.5, 0.8, 0.3]))
    y = rng.normal(size=3)
    return E, H, R, y


def _stats(E):
    E = np.asarray(E)
    return E.mean(0), np.cov(E.T)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_one_rotated_analysis_keeps_mean_and_covariance(name):
    E, H, R, y = _problem()
    Ea = SCHEMES[name](jnp.asarray(E), y, H, R)
    Er = enkit.rotate(Ea, key=jax.random.key(3))
    for a, b in zip(_stats(Ea), _stats(Er)):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(np.asarray(Er) - np.asarray(Ea))) > 1e-2  # members moved
    # Same key, same rotation; another key, another one.
    np.testing.assert_array_equal(enkit.rotate(Ea, key=jax.random.key(3)), Er)
    assert not np.allclose(enkit.rotate(Ea, key=jax.random.key(4)), Er)


@pytest.mark.parametrize("name", ["ensrf", "denkf", "etkf_n"])
def test_a_rotated_linear_run_has_the_statistics_of_the_plain_one(name):
    rng = np.random.default_rng(1)
    n, N, K = 6, 8, 6
    M = jnp.asarray(np.linalg.qr(rng.normal(size=(n, n)))[0] * 1.02)
    E0, H, R, _ = _problem(2, N, n)
    ys = rng.normal(size=(K, 3))
    run = partial(enkit.assimilate, lambda x: M @ x, E0, ys, SCHEMES[name], h=H, R=R, key=5)
    plain = run(inflation=enkit.MultiplicativeAnalysis(1.03))
    rot = run(inflation=chain(enkit.MultiplicativeAnalysis(1.03), enkit.MeanPreservingRotation()))
    np.testing.assert_allclose(rot.analysis_mean, plain.analysis_mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rot.analysis_spread, plain.analysis_spread, rtol=1e-10)
    np.testing.assert_allclose(np.cov(np.asarray(rot.ensemble).T),
                               np.cov(np.asarray(plain.ensemble).T), rtol=1e-9, atol=1e-10)
    assert np.max(np.abs(np.asarray(rot.ensemble) - np.asarray(plain.ensemble))) > 1e-2


def test_the_driver_step_is_etkf_rotated_on_its_own_keys():
    E, H, R, y = _problem(4)
    ys = np.stack([y, y + 0.5])
    res = enkit.assimilate(lambda x: x, E, ys, enkit.etkf, h=H, R=R, key=7,
                           inflation=enkit.MeanPreservingRotation(), store=("analysis_mean",))
    # Replay: cycle k rotates with the driver's after-analysis key of k.
    Ea = jnp.asarray(E)
    for k, yk in enumerate(ys, start=1):
        (_, _, k_after), _ = cycle_keys(jax.random.key(7), k)
        Ea = enkit.rotate(enkit.etkf(Ea, yk, H, R), key=k_after)
    np.testing.assert_allclose(res.ensemble, Ea, rtol=1e-12, atol=1e-12)


def test_rotation_needs_the_drivers_key():
    E, H, R, y = _problem()
    with pytest.raises(TypeError, match="MeanPreservingRotation"):
        enkit.assimilate(lambda x: x, E, y[None], enkit.etkf, h=H, R=R,
                         inflation=enkit.MeanPreservingRotation())
    with pytest.raises(TypeError, match="rotate"):
        enkit.rotate(jnp.asarray(E))
