"""The driver with real observation networks: masks, ragged networks, per-time
operators, controls, model noise, black-box models, outputs, windows."""

import concurrent.futures
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.assimilation.compiled import run as _run


def _setup(K=6, n=10, N=8, seed=0):
    rng = np.random.default_rng(seed)
    model = enkit.Lorenz96(n=n)
    E0 = 8.0 + rng.normal(size=(N, n))
    ys = 8.0 + rng.normal(size=(K, n))
    return model, E0, ys, rng


def _identity(x):
    return x


@pytest.mark.parametrize("scheme", ["etkf", "enkf"])
def test_masked_observation_has_exactly_no_effect(scheme):
    model, E0, ys, _ = _setup()
    mask = np.ones(ys.shape, bool)
    mask[2, 3] = mask[4, [0, 7]] = False
    ys_a, ys_b = ys.copy(), ys.copy()
    ys_a[~mask] = 123.0
    ys_b[~mask] = np.nan
    run = partial(enkit.assimilate, model, E0, scheme=enkit.SCHEMES[scheme], h=_identity,
                  R=enkit.Diagonal(np.linspace(0.5, 1.5, 10)), key=3, mask=mask,
                  store=("analysis_mean", "analysis_ensemble"))
    a, b = run(ys_a), run(ys_b)
    assert np.array_equal(np.asarray(a.analysis_ensemble), np.asarray(b.analysis_ensemble))
    assert np.all(np.isfinite(np.asarray(b.analysis_ensemble)))


def test_varying_network_compiles_once_and_matches_the_python_loop():
    model, E0, ys, rng = _setup(K=8)
    n = 10
    sizes = [3, 7, 10, 5, 1, 8, 6, 4]
    m_max = max(sizes)
    idx = [np.sort(rng.choice(n, size=s, replace=False)) for s in sizes]
    H_list = [np.eye(n)[i] for i in idx]
    y_list = [8.0 + rng.normal(size=s) for s in sizes]
    R_list = [enkit.Diagonal(rng.uniform(0.5, 2.0, size=s)) for s in sizes]
    H_pad = np.zeros((8, m_max, n))
    y_pad = np.zeros((8, m_max))
    v_pad = np.ones((8, m_max))
    mask = np.zeros((8, m_max), bool)
    for k, s in enumerate(sizes):
        H_pad[k, :s], y_pad[k, :s], v_pad[k, :s] = H_list[k], y_list[k], R_list[k].variances
        mask[k, :s] = True
    # A deterministic scheme: a stochastic one draws (N, m_max) perturbations
    # when padded but (N, m_k) in the ragged loop, so their draws differ.
    store = ("analysis_mean", "forecast_mean", "innovation_forecast", "cost_Jo")
    common = dict(key=1, inflation=1.02, store=store, steps_per_obs=2)
    before = _run._cache_size()
    comp = enkit.assimilate(model, E0, y_pad, enkit.etkf, h=enkit.per_time(H_pad),
                            R=enkit.stack_covariances([enkit.Diagonal(v) for v in v_pad]),
                            mask=mask, **common)
    assert _run._cache_size() == before + 1
    mask2 = mask.copy()
    mask2[0, :] = True  # another network: same shapes, no recompilation
    enkit.assimilate(model, E0, y_pad, enkit.etkf, h=enkit.per_time(H_pad),
                     R=enkit.stack_covariances([enkit.Diagonal(v) for v in 2 * v_pad]),
                     mask=mask2, **common)
    assert _run._cache_size() == before + 1
    loop = enkit.assimilate(model, E0, y_list, enkit.etkf, h=H_list, R=R_list, **common)
    np.testing.assert_allclose(comp.analysis_mean, loop.analysis_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(comp.cost_Jo, loop.cost_Jo, rtol=1e-12)
    for k, s in enumerate(sizes):
        np.testing.assert_allclose(comp.innovation_forecast[k, :s], loop.innovation_forecast[k],
                                   rtol=1e-12, atol=1e-12)
        assert np.all(np.asarray(comp.innovation_forecast[k, s:]) == 0)


def test_unknown_output_name_lists_the_valid_ones():
    model, E0, ys, _ = _setup()
    with pytest.raises(ValueError, match=r"unknown output 'Spread'.*analysis_mean.*APosterioriCovariance"):
        enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0, store=("Spread",))


def test_outputs_and_adao_aliases():
    model, E0, ys, _ = _setup()
    H = np.eye(10)[::2]
    y = ys[:, ::2]
    R = enkit.Diagonal(np.linspace(0.5, 1.0, 5))
    res = enkit.assimilate(
        model, E0, y, enkit.etkf, h=H, R=R, inflation=1.1,
        store=("forecast_mean", "APosterioriCovariance", "analysis_ensemble", "forecast_ensemble",
               "CostFunctionJ", "CostFunctionJb", "CostFunctionJo", "innovation_forecast",
               "InnovationAtCurrentAnalysis", "SimulatedObservationAtCurrentAnalysis", "BMA",
               "APosterioriVariances", "analysis_mean"))
    assert res.analysis_spread is None
    with pytest.raises(ValueError, match="did not store 'analysis_spread'"):
        res.spread()
    for k in range(ys.shape[0]):
        Ea, Ef = np.asarray(res.analysis_ensemble[k]), np.asarray(res.forecast_ensemble[k])
        np.testing.assert_allclose(res.analysis_covariance[k], np.cov(Ea.T), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res.analysis_variances[k], np.var(Ea, 0, ddof=1), rtol=1e-10)
        np.testing.assert_allclose(res.forecast_mean[k], Ef.mean(0), rtol=1e-12)
        np.testing.assert_allclose(res.bma[k], Ef.mean(0) - Ea.mean(0), atol=1e-12)
        np.testing.assert_allclose(res.innovation_forecast[k], y[k] - H @ Ef.mean(0), atol=1e-12)
        np.testing.assert_allclose(res.innovation_analysis[k], y[k] - H @ Ea.mean(0), atol=1e-12)
        np.testing.assert_allclose(res.simulated_obs_analysis[k], H @ Ea.mean(0), atol=1e-12)
        d = y[k] - H @ Ea.mean(0)
        np.testing.assert_allclose(res.cost_Jo[k], 0.5 * np.sum(d * d / R.variances), rtol=1e-10)
        # Jb: with N-1 < n the increment lies in the anomaly span; pinv gives P⁺.
        delta = Ea.mean(0) - Ef.mean(0)
        jb = 0.5 * delta @ np.linalg.pinv(np.cov(Ef.T)) @ delta
        np.testing.assert_allclose(res.cost_Jb[k], jb, rtol=1e-6)
        np.testing.assert_allclose(res.cost_J[k], res.cost_Jb[k] + res.cost_Jo[k], rtol=1e-12)


def test_time_without_observations_is_a_forecast_only_step_and_tail_forecast():
    model, E0, ys, _ = _setup()
    mask = np.ones(ys.shape, bool)
    mask[3] = False
    res = enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0, mask=mask,
                           inflation=1.05, forecast_steps=4,
                           store=("forecast_ensemble", "analysis_ensemble"))
    assert np.array_equal(np.asarray(res.forecast_ensemble[3]), np.asarray(res.analysis_ensemble[3]))
    assert not np.allclose(res.forecast_ensemble[2], res.analysis_ensemble[2])
    expected = enkit.models.integrate(jax.vmap(model), res.analysis_ensemble[-1], 4)
    np.testing.assert_allclose(res.ensemble, expected, rtol=1e-12)


def test_observation_times_as_floats_or_steps():
    model, E0, ys, _ = _setup(K=4)
    a = enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0,
                         steps_per_obs=np.array([1, 3, 2, 2]))
    b = enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0,
                         obs_times=np.array([0.05, 0.2, 0.3, 0.4]))
    np.testing.assert_allclose(a.analysis_mean, b.analysis_mean, rtol=1e-13)
    np.testing.assert_allclose(b.times, [0.05, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(b.steps, [1, 4, 6, 8])
    with pytest.raises(ValueError, match="multiples of the model time step"):
        enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0,
                         obs_times=np.array([0.05, 0.21, 0.3, 0.4]))
    with pytest.raises(ValueError, match="strictly increasing"):
        enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0,
                         obs_times=np.array([0.05, 0.05, 0.3, 0.4]))


def test_controls_reach_model_and_observation_operator():
    rng = np.random.default_rng(5)
    n, N, K = 3, 6, 4
    A = jnp.asarray(0.9 * np.eye(n))

    def model(x, u):
        return A @ x + u[:n]

    def h(x, u):
        return x[:2] + u[n:]

    u = jnp.asarray(rng.normal(size=(2 * K + 1, n + 2)))
    E0 = rng.normal(size=(N, n))
    ys = rng.normal(size=(K, 2))
    res = enkit.assimilate(model, E0, ys, enkit.etkf, h=h, R=0.5, controls=u, steps_per_obs=2,
                           store=("analysis_ensemble",))
    E, t = jnp.asarray(E0), 0
    for k in range(K):
        for _ in range(2):
            E = jax.vmap(lambda x: model(x, u[t]))(E)
            t += 1
        E = enkit.etkf(E, ys[k], partial(h, u=u[t]), 0.5)
        np.testing.assert_allclose(res.analysis_ensemble[k], E, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="leading axis of total model steps \\+ 1 = 9"):
        enkit.assimilate(model, E0, ys, enkit.etkf, h=h, R=0.5, controls=u[:5], steps_per_obs=2)


def _l96_numpy_step(x, F=8.0, dt=0.05):
    def f(x):
        return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + F
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize("executor", [None, "threads"])
def test_black_box_model_matches_the_compiled_path(executor):
    model, E0, ys, _ = _setup()
    Q = enkit.Scalar(0.01, 10)
    ex = concurrent.futures.ThreadPoolExecutor(2) if executor else None
    bb = enkit.BlackBoxModel(_l96_numpy_step, executor=ex, dt=0.05)
    common = dict(h=_identity, R=1.0, key=2, model_noise=Q, steps_per_obs=2, inflation=1.02)
    a = enkit.assimilate(model, E0, ys, enkit.enkf, **common)
    b = enkit.assimilate(bb, E0, ys, enkit.enkf, **common)
    if ex:
        ex.shutdown()
    np.testing.assert_allclose(b.analysis_mean, a.analysis_mean, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(b.times, a.times)


def test_black_box_member_failure_names_the_member():
    model, E0, ys, _ = _setup()

    def step(x):
        y = _l96_numpy_step(x)
        if x[0] > 9.9:
            y[0] = np.nan
        return y

    E0 = E0.copy()
    E0[:, 0] = 8.0
    E0[5, 0] = 10.0
    with pytest.raises(FloatingPointError, match="member 5 in cycle 1"):
        enkit.assimilate(enkit.BlackBoxModel(step), E0, ys, enkit.etkf, h=_identity, R=1.0)


def test_model_noise_needs_a_key_and_spreads_the_ensemble():
    model, E0, ys, _ = _setup()
    with pytest.raises(TypeError, match="model_noise draws random numbers"):
        enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0, model_noise=0.1)
    a = enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0)
    b = enkit.assimilate(model, E0, ys, enkit.etkf, h=_identity, R=1.0, model_noise=0.5, key=0)
    assert np.mean(b.forecast_spread[1:]) > np.mean(a.forecast_spread[1:])


def test_over_window_equals_the_filter_on_a_linear_model():
    rng = np.random.default_rng(8)
    n, N, K = 4, 9, 5
    M = jnp.asarray(np.linalg.qr(rng.normal(size=(n, n)))[0] * 1.02)
    H = rng.normal(size=(2, n))
    E0 = rng.normal(size=(N, n))
    ys = rng.normal(size=(K, 2))
    model = lambda x: M @ x  # noqa: E731
    common = dict(h=H, R=np.diag([0.3, 0.6]), steps_per_obs=3,
                  store=("analysis_mean", "forecast_mean", "analysis_ensemble"))
    a = enkit.assimilate(model, E0, ys, enkit.etkf, **common)
    b = enkit.assimilate(model, E0, ys, enkit.over_window(enkit.etkf), **common)
    np.testing.assert_allclose(b.analysis_mean, a.analysis_mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b.forecast_mean, a.forecast_mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.cov(np.asarray(b.analysis_ensemble[-1]).T),
                               np.cov(np.asarray(a.analysis_ensemble[-1]).T), rtol=1e-9, atol=1e-12)
