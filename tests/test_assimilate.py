"""The cycling driver: exactness on a linear model, equivalence with a Python
loop, compilation once, the published Lorenz-96 accuracy, and input errors."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.assimilation.compiled import run as _run
from enkit.demo import lorenz96_demo
from reference.kalman_numpy import kalman_analysis, sample_stats


def _linear_problem(N=10, K=6, seed=0):
    rng = np.random.default_rng(seed)
    n, m = 3, 2
    M = np.linalg.qr(rng.normal(size=(n, n)))[0] * 1.05
    H = rng.normal(size=(m, n))
    R = np.diag([0.5, 0.8])
    E0 = rng.normal(size=(N, n)) * 2.0
    ys = rng.normal(size=(K, m))
    return M, H, R, E0, ys


def test_linear_model_etkf_cycles_equal_the_kalman_filter():
    M, H, R, E0, ys = _linear_problem()
    Mj = jnp.asarray(M)
    res = enkit.assimilate(lambda x: Mj @ x, E0, ys, enkit.etkf, h=H, R=R)
    x, P = sample_stats(E0)
    for k, y in enumerate(ys):
        x, P = M @ x, M @ P @ M.T
        np.testing.assert_allclose(res.forecast_mean[k], x, rtol=1e-10, atol=1e-12)
        x, P = kalman_analysis(x, P, y, H, R)
        np.testing.assert_allclose(res.analysis_mean[k], x, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res.analysis_spread[k], np.sqrt(np.trace(P) / 3), rtol=1e-10)
    np.testing.assert_allclose(np.cov(np.asarray(res.ensemble).T), P, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scheme", ["enkf", "etkf", "ensrf"])
def test_scan_equals_a_python_loop_over_the_same_calls(scheme):
    model = enkit.Lorenz96(n=12)
    rng = np.random.default_rng(1)
    E0 = 8.0 + rng.normal(size=(8, 12))
    ys = 8.0 + rng.normal(size=(5, 6))

    def h(x):
        return x[::2]

    key = jax.random.key(4)
    f = enkit.SCHEMES[scheme]
    res = enkit.assimilate(model, E0, ys, f, h=h, R=1.0, key=key, inflation=1.05,
                           steps_per_obs=2)
    E = jnp.asarray(E0)
    for k, y in enumerate(ys, start=1):
        E = jax.vmap(lambda x: model(model(x)))(E)
        np.testing.assert_allclose(res.forecast_mean[k - 1], E.mean(0), rtol=1e-12)
        E = f(E, y, h, 1.0, key=jax.random.fold_in(jax.random.fold_in(key, k), 0))
        E = enkit.multiplicative_inflation(E, 1.05)
        np.testing.assert_allclose(res.analysis_mean[k - 1], E.mean(0), rtol=1e-12)
    np.testing.assert_allclose(res.ensemble, E, rtol=1e-12)


def test_second_call_with_new_values_does_not_recompile():
    model = enkit.Lorenz96(n=10)
    rng = np.random.default_rng(2)
    R = enkit.Scalar(1.0, 10)
    run = partial(enkit.assimilate, scheme=enkit.etkf, h=np.eye(10), R=R)
    run(model, 8.0 + rng.normal(size=(6, 10)), rng.normal(size=(4, 10)), inflation=1.0)
    size = _run._cache_size()
    run(enkit.Lorenz96(n=10, F=7.0), 8.0 + rng.normal(size=(6, 10)), rng.normal(size=(4, 10)),
        inflation=1.1)
    assert _run._cache_size() == size


def test_same_key_same_run():
    model = enkit.Lorenz96(n=10)
    rng = np.random.default_rng(3)
    E0, ys = 8.0 + rng.normal(size=(6, 10)), 8.0 + rng.normal(size=(4, 10))
    a = enkit.assimilate(model, E0, ys, enkit.enkf, h=np.eye(10), R=1.0, key=5)
    b = enkit.assimilate(model, E0, ys, enkit.enkf, h=np.eye(10), R=1.0, key=5)
    c = enkit.assimilate(model, E0, ys, enkit.enkf, h=np.eye(10), R=1.0, key=6)
    assert np.array_equal(np.asarray(a.ensemble), np.asarray(b.ensemble))
    assert not np.allclose(a.ensemble, c.ensemble)


def test_stochastic_scheme_without_key_is_an_error():
    rng = np.random.default_rng(3)
    with pytest.raises(TypeError, match="enkf is stochastic"):
        enkit.assimilate(enkit.Lorenz96(n=10), rng.normal(size=(6, 10)),
                         rng.normal(size=(4, 10)), enkit.enkf, h=np.eye(10), R=1.0)


def test_driver_input_errors():
    model = enkit.Lorenz96(n=10)
    E0, ys = 1.0 + 0.1 * np.arange(60.0).reshape(6, 10), np.ones((4, 10))
    with pytest.raises(ValueError, match=r"E0 must have shape \(N, n\)"):
        enkit.assimilate(model, E0[0], ys, enkit.etkf, h=np.eye(10), R=1.0)
    with pytest.raises(ValueError, match=r"observations must have shape \(K, m\)"):
        enkit.assimilate(model, E0, ys[0], enkit.etkf, h=np.eye(10), R=1.0)
    with pytest.raises(ValueError, match="model must map one member of shape"):
        enkit.assimilate(lambda x: x[:3], E0, ys, enkit.etkf, h=np.eye(10), R=1.0)
    with pytest.raises(TypeError, match="scheme must be an analysis function"):
        enkit.assimilate(model, E0, ys, "etkf", h=np.eye(10), R=1.0)
    with pytest.raises(ValueError, match="steps_per_obs must be positive integers"):
        enkit.assimilate(model, E0, ys, enkit.etkf, h=np.eye(10), R=1.0, steps_per_obs=0)


def test_demo_reproduces_sakov_oke_2008_lorenz96_etkf_accuracy():
    # Sakov & Oke (2008): ETKF, N=40, inflation 1.02, time-mean analysis
    # RMSE about 0.18-0.20. A 1500-cycle run (300 burn-in) is enough to check.
    s = lorenz96_demo(cycles=1500, burn_in=300, seed=0).summary
    assert 0.17 <= s["analysis_rmse"] <= 0.205, s
    assert 0.8 < s["analysis_spread"] / s["analysis_rmse"] < 1.4, s
    assert s["forecast_rmse"] > s["analysis_rmse"]


def test_demo_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown scheme"):
        lorenz96_demo(cycles=10, burn_in=0, scheme="nope")
    with pytest.raises(ValueError, match="burn_in"):
        lorenz96_demo(cycles=10, burn_in=10)
