"""The iEnKS (Bocquet & Sakov 2014): equal to the cycled IEnKF at lag 1,
exact on a linear-Gaussian problem (SDA, MDA with its balancing step, bundle,
Levenberg–Marquardt), accurate on Lorenz-63, reproducible, compiled once,
and strict about its inputs."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.models.cases import sakov2012_lorenz63
from enkit.smoothers.ienks import IENKS_OUTPUTS, _run, _window_plan, ienks

# ------------------------------------------------------------- lag 1 = IEnKF


@pytest.fixture(scope="module")
def l63():
    case = sakov2012_lorenz63()
    twin = case.twin(seed=0, cycles=20)
    return case, twin, case.initial_ensemble(twin, 10, seed=0)


@pytest.mark.parametrize("bundle_epsilon", [None, 1e-4], ids=["transform", "bundle"])
def test_lag_one_equals_the_cycled_ienkf(l63, bundle_epsilon):
    # over_window(ienkf): the IEnKF updates the previous analysis through
    # h ∘ M; its forecast_* are the forecast of that analysis and its
    # analysis_* the forecast of the updated ensemble: the iEnKS's
    # forecast/analysis rows for L = S = 1.
    case, twin, E0 = l63
    scheme = partial(enkit.ienkf, bundle_epsilon=bundle_epsilon, tolerance=1e-6,
                     max_iterations=20)
    ref = enkit.assimilate(case.model, E0, twin.observations, enkit.over_window(scheme),
                           h=case.h, R=case.R, steps_per_obs=case.steps_per_obs)
    res = ienks(case.model, E0, twin.observations, h=case.h, R=case.R, lag=1,
                bundle_epsilon=bundle_epsilon, tolerance=1e-6, max_iterations=20,
                steps_per_obs=case.steps_per_obs)
    # The transform variant repeats the IEnKF's operations exactly; the
    # bundle variant differs in the last bit where XLA folds the constant ε
    # of the partial, amplified by the chaotic dynamics over 20 cycles.
    rtol = 0 if bundle_epsilon is None else 1e-9
    for name in ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread"):
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), rtol=rtol, atol=0,
                                   err_msg=name)
    np.testing.assert_allclose(res.ensemble, ref.ensemble, rtol=rtol)
    np.testing.assert_array_equal(res.times, ref.times)
    # Smoothed at t_k: the update of the window [t_k, t_{k+1}] at its start;
    # at t_K (no later window) it is the analysis.
    np.testing.assert_array_equal(res.smoothed_mean[-1], res.analysis_mean[-1])
    assert not np.allclose(res.smoothed_mean[:-1], res.analysis_mean[:-1])


# ---------------------------------------------------- linear-Gaussian exact


def _linear(seed=1, n=4, m=2, N=8, K=7):
    rng = np.random.default_rng(seed)
    M = np.linalg.qr(rng.normal(size=(n, n)))[0] * 1.05 + 0.05 * rng.normal(size=(n, n))
    H = rng.normal(size=(m, n))
    Rv = np.array([0.5, 1.5])
    E0 = rng.normal(size=n) + rng.normal(size=(N, n)) @ rng.normal(size=(n, n))
    ys = 2.0 * rng.normal(size=(K, m))
    return M, H, Rv, E0, ys


def _kalman_smoother(M, H, Rv, E0, ys, k, upto):
    """Mean and covariance at t_k given y_1..y_upto, from the sample
    statistics of E0, for the perfect linear model x_k = M^k x_0: the batch
    Kalman update of x_0 with the stacked observations, propagated."""
    x0, P0 = E0.mean(0), np.cov(E0.T, ddof=1)
    if upto:
        Hs = np.vstack([H @ np.linalg.matrix_power(M, i) for i in range(1, upto + 1)])
        C = Hs @ P0 @ Hs.T + np.diag(np.tile(Rv, upto))
        G = np.linalg.solve(C, Hs @ P0).T
        x0, P0 = x0 + G @ (ys[:upto].reshape(-1) - Hs @ x0), P0 - G @ C @ G.T
    Mk = np.linalg.matrix_power(M, k)
    return Mk @ x0, Mk @ P0 @ Mk.T


@pytest.mark.parametrize("lag, shift, mda, options", [
    (3, 1, False, {}),
    (4, 2, True, {}),
    (3, 1, True, {"bundle_epsilon": 1e-3}),
    (3, 2, False, {"levenberg_marquardt": 1.0, "max_iterations": 80, "tolerance": 1e-13}),
], ids=["sda", "mda-S2", "mda-bundle", "sda-S2-lm"])
def test_linear_gaussian_equals_the_kalman_smoother(lag, shift, mda, options):
    # With a linear model and h, one Gauss–Newton step reaches the minimum
    # (the second changes nothing) and every row equals the Kalman smoother
    # of the ensemble's own sample statistics: smoothed and analysis rows
    # given the observations up to the end e_w of the window they come from
    # (all K for the last window's times), forecast rows given those before
    # the window's new ones. Under MDA the balancing step restores the full
    # weight of every observation in the window.
    M, H, Rv, E0, ys = _linear()
    K = ys.shape[0]
    Mj = jnp.asarray(M)
    res, info = ienks(lambda x: Mj @ x, E0, ys, h=H, R=Rv, lag=lag, shift=shift, mda=mda,
                      store=IENKS_OUTPUTS, return_info=True,
                      **{"tolerance": 1e-10, **options})
    if "levenberg_marquardt" not in options:
        assert np.all(np.asarray(info.iterations) == 2)
        assert np.all(np.asarray(info.increment) < 1e-10)
    plan = _window_plan(K, lag, shift, mda)
    W = plan["start"].shape[0]
    ends = np.minimum(np.arange(1, W + 1) * shift, K)
    for k in range(1, K + 1):
        w_s = W - 1 if plan["smooth_tail"][k - 1] else plan["smooth_window"][k - 1]
        w_a = plan["rows_window"][k - 1]
        checks = [("smoothed", ends[w_s]), ("analysis", ends[w_a])]
        if not mda:  # an MDA prior holds older observations with partial weights
            checks.append(("forecast", ends[w_a - 1] if w_a else 0))
        for name, upto in checks:
            x, P = _kalman_smoother(M, H, Rv, E0, ys, k, upto)
            E = np.asarray(getattr(res, f"{name}_ensemble")[k - 1])
            np.testing.assert_allclose(E.mean(0), x, rtol=1e-9, atol=1e-9, err_msg=f"{name} {k}")
            np.testing.assert_allclose(np.cov(E.T, ddof=1), P, rtol=1e-9, atol=1e-9,
                                       err_msg=f"{name} {k}")
            np.testing.assert_allclose(getattr(res, f"{name}_mean")[k - 1], E.mean(0),
                                       rtol=1e-12)
    np.testing.assert_array_equal(res.ensemble, res.analysis_ensemble[-1])


@pytest.mark.parametrize("K, lag, shift", [(7, 3, 1), (10, 4, 2), (11, 5, 3), (6, 6, 6)])
def test_window_weights_give_every_observation_weight_one(K, lag, shift):
    # SDA assimilates every observation once; MDA spreads weight 1 over the
    # windows that hold it, and the balancing weights complete what the
    # window's prior already holds to 1.
    sda = _window_plan(K, lag, shift, mda=False)
    mda = _window_plan(K, lag, shift, mda=True)
    obs = sda["start"][:, None] + np.arange(1, lag + 1)  # observation at each position
    for plan in (sda, mda):
        total = np.zeros(K + 1)
        for w in range(obs.shape[0]):
            used = plan["balance"][w] > 0
            np.testing.assert_allclose(total[obs[w]][used] + plan["balance"][w][used], 1.0,
                                       rtol=1e-12)
            np.add.at(total, obs[w], plan["weights"][w])
        np.testing.assert_allclose(total[1:], 1.0, rtol=1e-12)
    assert np.all(np.diff(sda["start"]) >= 0) and np.all(sda["shift"] <= shift)
    assert sda["start"][-1] + lag == K  # the last window ends at t_K


# ---------------------------------------------------------------- Lorenz-63


@pytest.fixture(scope="module")
def l63_run():
    case = sakov2012_lorenz63()
    twin = case.twin(seed=1, cycles=300)
    E0 = case.initial_ensemble(twin, 10, seed=1)
    run = partial(ienks, case.model, E0, twin.observations, h=case.h, R=case.R, lag=2,
                  inflation=1.02, rotate=True, steps_per_obs=case.steps_per_obs)
    return twin, run


def test_lorenz63_filters_and_smooths_accurately(l63_run):
    # Sakov, Oliver & Bertino (2012) setting; the published IEnKF analysis
    # RMSE is 0.31 (benchmarks/vs_dapper_ienks.py reproduces it over 10⁴
    # cycles); 250 cycles after burn-in are enough to separate the
    # filtering and smoothing estimates.
    twin, run = l63_run
    res = run(key=0)
    filt = float(jnp.mean(res.rmse(twin.truth)[50:]))
    smooth = float(jnp.mean(res.smoothed_rmse(twin.truth)[50:]))
    fcst = float(jnp.mean(res.forecast_rmse(twin.truth)[50:]))
    assert filt < 0.5
    assert smooth < 0.9 * filt < fcst


def test_same_key_same_run_and_no_recompilation(l63_run):
    twin, run = l63_run
    a, b, c = run(key=3), run(key=3), run(key=4)
    size = _run._cache_size()
    for name in ("analysis_mean", "smoothed_mean", "forecast_spread", "ensemble"):
        assert np.array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
    assert not np.allclose(a.analysis_mean, c.analysis_mean)
    # New values of the same shapes (observations, E0, model parameters,
    # inflation, tolerance, key) reuse the compiled run.
    ys = np.asarray(twin.observations) + 0.1
    E0 = np.asarray(a.ensemble)
    h = sakov2012_lorenz63().h
    ienks(enkit.Lorenz63(rho=27.0), E0, ys, h=h, R=enkit.Scalar(1.5, 3), lag=2,
          inflation=1.05, rotate=True, steps_per_obs=25, key=9, tolerance=1e-3)
    assert _run._cache_size() == size


def test_vmap_over_inflation_equals_a_loop():
    # Hyperparameters are array leaves: a sweep is one vmapped run.
    M, H, Rv, E0, ys = _linear()
    Mj = jnp.asarray(M)
    run = partial(ienks, lambda x: Mj @ x, E0, ys, h=H, R=Rv, lag=3, store=("smoothed_mean",),
                  max_iterations=1, tolerance=None)
    lams = jnp.array([1.0, 1.1, 1.3])
    swept = jax.vmap(lambda lam: run(inflation=lam).smoothed_mean)(lams)
    for lam, row in zip(lams, swept):
        np.testing.assert_allclose(row, run(inflation=float(lam)).smoothed_mean, rtol=1e-12)
    assert not np.allclose(swept[0], swept[2])


def test_float32_run():
    M, H, Rv, E0, ys = _linear()
    Mj = jnp.asarray(M, jnp.float32)
    res = ienks(lambda x: Mj @ x, E0.astype(np.float32), ys.astype(np.float32), h=H, R=Rv,
                lag=2, inflation=1.01)
    assert res.analysis_mean.dtype == jnp.float32 == res.smoothed_mean.dtype
    assert np.all(np.isfinite(res.smoothed_mean))


# ------------------------------------------------------------------- errors


def test_input_errors():
    model = enkit.Lorenz63()
    E0, ys = np.ones((5, 3)) + np.arange(5)[:, None], np.ones((4, 3))
    run = partial(ienks, model, h=np.eye(3), R=1.0)
    cases = [
        (dict(lag=0), ValueError, "lag must be a positive integer"),
        (dict(lag=5), ValueError, "lag must not exceed the number of observation times K=4"),
        (dict(lag=2, shift=0), ValueError, "shift must be a positive integer"),
        (dict(lag=2, shift=3), ValueError, r"shift must satisfy 1 <= shift <= lag=2"),
        (dict(lag=1.5), ValueError, "lag must be a positive integer"),
        (dict(lag=2, rotate=True), TypeError, "needs key="),
        (dict(lag=2, inflation=0.0), ValueError, "inflation must be None or a finite number > 0"),
        (dict(lag=2, bundle_epsilon=-1e-4), ValueError, "bundle_epsilon must be None"),
        (dict(lag=2, levenberg_marquardt=-1.0), ValueError, "levenberg_marquardt must be"),
        (dict(lag=2, max_iterations=0), ValueError, "max_iterations must be a positive"),
        (dict(lag=2, tolerance=-1.0), ValueError, "tolerance must be None"),
        (dict(lag=2, steps_per_obs=[1, 2]), ValueError, r"steps_per_obs must be an int or "
                                                        r"have shape \(4,\)"),
        (dict(lag=2, steps_per_obs=0), ValueError, "steps_per_obs must be positive"),
        (dict(lag=2, store=("analysis_mean", "cost_J")), ValueError, "unknown output 'cost_J'"),
        (dict(lag=2, mda=1), TypeError, "mda must be a bool"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            run(E0, ys, **kwargs)
    with pytest.raises(ValueError, match=r"E0 must have shape \(N, n\)"):
        run(E0[0], ys, lag=1)
    with pytest.raises(ValueError, match=r"observations must have shape \(K, m\)"):
        run(E0, ys[0], lag=1)
    with pytest.raises(ValueError, match="observations must be finite"):
        run(E0, np.full((4, 3), np.nan), lag=1)
    with pytest.raises(ValueError, match=r"h as a matrix must have shape \(m, n\) = \(3, 3\)"):
        ienks(model, E0, ys, h=np.eye(2, 3), R=1.0, lag=1)
    with pytest.raises(ValueError, match=r"h must map one member of shape \(3,\) to shape"):
        ienks(model, E0, ys, h=lambda x: x[:2], R=1.0, lag=1)
    with pytest.raises(ValueError, match="model must map one member of shape"):
        ienks(lambda x: x[:2], E0, ys, h=np.eye(3), R=1.0, lag=1)
    with pytest.raises(ValueError, match="R must be a scalar"):
        ienks(model, E0, ys, h=np.eye(3), R=np.ones(2), lag=1)
