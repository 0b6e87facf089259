"""The 4D-EnKF (``assimilate_4d``) against the exact Kalman filter that
processes each observation batch at its own time, and its 3D limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.assimilation import assimilate_4d


def _linear_problem(n=6, m=3, N=12, K=3, L=3, window=4, seed=0):
    rng = np.random.default_rng(seed)
    A = np.eye(n) + 0.15 * rng.standard_normal((n, n))
    A /= 1.05 * max(abs(np.linalg.eigvals(A)))
    H = rng.standard_normal((m, n))
    r = 0.3 + rng.random(m)
    E0 = rng.standard_normal((N, n)) + rng.standard_normal(n)
    ys = rng.standard_normal((K, L, m))
    starts = np.arange(K) * window
    offs = np.sort(rng.integers(1, window + 1, size=(K, L)), axis=1)
    offs[:, -1] = np.minimum(offs[:, -1], window)
    return A, H, r, E0, ys, starts[:, None] + offs, window


def _sequential_kf(A, H, r, E0, ys, obs_steps, window):
    """Kalman filter from E0's sample statistics, each batch at its own step."""
    x = E0.mean(0)
    P = np.cov(E0.T, ddof=1)
    t = 0
    means, covs = [], []
    for k in range(ys.shape[0]):
        for l in range(ys.shape[1]):
            while t < obs_steps[k, l]:
                x, P, t = A @ x, A @ P @ A.T, t + 1
            S = H @ P @ H.T + np.diag(r)
            G = P @ H.T @ np.linalg.inv(S)
            x = x + G @ (ys[k, l] - H @ x)
            P = (np.eye(len(x)) - G @ H) @ P
        while t < (k + 1) * window:
            x, P, t = A @ x, A @ P @ A.T, t + 1
        means.append(x)
        covs.append(0.5 * (P + P.T))
    return np.array(means), np.array(covs)


def _matvec(A, x):
    return A @ x


def _model(A):
    return jax.tree_util.Partial(_matvec, jnp.asarray(A))


def test_4d_etkf_equals_sequential_kalman_filter():
    A, H, r, E0, ys, obs_steps, window = _linear_problem()
    res = assimilate_4d(_model(A), E0, ys, enkit.etkf, h=H, R=r, obs_steps=obs_steps,
                        steps_per_obs=window,
                        store=("analysis_mean", "analysis_covariance"))
    means, covs = _sequential_kf(A, H, r, E0, ys, obs_steps, window)
    np.testing.assert_allclose(res.analysis_mean, means, atol=1e-10, rtol=0)
    np.testing.assert_allclose(res.analysis_covariance, covs, atol=1e-10, rtol=0)
    # The final ensemble is the last analysis.
    np.testing.assert_allclose(np.mean(res.ensemble, 0), means[-1], atol=1e-10)


@pytest.mark.parametrize("scheme", [enkit.ensrf, enkit.estkf])
def test_other_square_root_schemes_agree(scheme):
    A, H, r, E0, ys, obs_steps, window = _linear_problem(seed=1)
    res = assimilate_4d(_model(A), E0, ys, scheme, h=lambda x: jnp.asarray(H) @ x, R=r,
                        obs_steps=obs_steps, steps_per_obs=window,
                        store=("analysis_mean", "analysis_covariance"))
    means, covs = _sequential_kf(A, H, r, E0, ys, obs_steps, window)
    np.testing.assert_allclose(res.analysis_mean, means, atol=1e-10, rtol=0)
    np.testing.assert_allclose(res.analysis_covariance, covs, atol=1e-10, rtol=0)


def test_all_batches_at_analysis_time_is_the_3d_driver():
    model = enkit.Lorenz96(n=10, F=8.0, dt=0.05)
    rng = np.random.default_rng(2)
    E0 = 8.0 + rng.standard_normal((8, 10))
    K, spo = 5, 2
    ys = 8.0 + rng.standard_normal((K, 10))
    store = ("forecast_mean", "analysis_mean", "analysis_spread", "innovation_forecast",
             "innovation_chi2")
    ref = enkit.assimilate(model, E0, ys, enkit.etkf, h=lambda x: x, R=1.0,
                           steps_per_obs=spo, inflation=1.02, store=store)
    res = assimilate_4d(model, E0, ys[:, None], enkit.etkf, h=lambda x: x, R=1.0,
                        obs_steps=(np.arange(1, K + 1) * spo)[:, None], steps_per_obs=spo,
                        inflation=1.02, store=store)
    for name in store:
        np.testing.assert_allclose(getattr(res, name), getattr(ref, name), atol=1e-12, rtol=0)
    np.testing.assert_allclose(res.ensemble, ref.ensemble, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(res.steps, ref.steps)


def test_masked_batches_have_no_effect():
    A, H, r, E0, ys, obs_steps, window = _linear_problem(seed=3)
    mask = np.ones(ys.shape, bool)
    mask[:, 1] = False
    ys_nan = ys.copy()
    ys_nan[:, 1] = np.nan
    res = assimilate_4d(_model(A), E0, ys_nan, enkit.etkf, h=H, R=r, obs_steps=obs_steps,
                        steps_per_obs=window, mask=mask, store=("analysis_mean",))
    keep = [0, 2]
    ref = assimilate_4d(_model(A), E0, ys[:, keep], enkit.etkf, h=H, R=r,
                        obs_steps=obs_steps[:, keep], steps_per_obs=window,
                        store=("analysis_mean",))
    np.testing.assert_allclose(res.analysis_mean, ref.analysis_mean, atol=1e-12)


def test_bad_inputs_name_the_argument():
    A, H, r, E0, ys, obs_steps, window = _linear_problem()
    model = _model(A)
    kw = dict(h=H, R=r, steps_per_obs=window)
    bad = obs_steps.copy()
    bad[1, 0] = window  # the previous window's end: outside (s_0, s_1]
    with pytest.raises(ValueError, match=r"obs_steps.*outside window 1"):
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=bad, **kw)
    bad[1, 0] = 3 * window + 1
    with pytest.raises(ValueError, match="obs_steps"):
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=bad, **kw)
    with pytest.raises(ValueError, match=r"obs_steps must have shape \(K, L\)"):
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=obs_steps[:, :2], **kw)
    with pytest.raises(ValueError, match="non-decreasing"):
        unordered = obs_steps.copy()
        unordered[0] = [window, 1, 1]
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=unordered, **kw)
    with pytest.raises(ValueError, match=r"observations.*\(K, L, m\)"):
        assimilate_4d(model, E0, ys[:, 0], enkit.etkf, obs_steps=obs_steps, **kw)
    with pytest.raises(ValueError, match=r"mask must have shape \(K, L, m\)"):
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=obs_steps,
                      mask=np.ones(ys.shape[:2], bool), **kw)
    with pytest.raises(ValueError, match=r"h as a matrix must have shape"):
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=obs_steps, h=H[:2], R=r,
                      steps_per_obs=window)
    with pytest.raises(ValueError, match=r"h must map one member"):
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=obs_steps, h=lambda x: x, R=r,
                      steps_per_obs=window)
    with pytest.raises(ValueError, match="AdditiveForecast"):
        assimilate_4d(model, E0, ys, enkit.etkf, obs_steps=obs_steps,
                      inflation=enkit.inflation.AdditiveForecast(enkit.Scalar(0.1, 6)), **kw)


def test_second_call_with_new_values_does_not_recompile():
    A, H, r, E0, ys, obs_steps, window = _linear_problem()
    from enkit.assimilation import fourd

    assimilate_4d(_model(A), E0, ys, enkit.etkf, h=H, R=r, obs_steps=obs_steps,
                  steps_per_obs=window)
    before = fourd._run._cache_size()
    assimilate_4d(_model(1.01 * A), E0 + 0.1, ys + 1.0, enkit.etkf, h=H, R=r,
                  obs_steps=obs_steps, steps_per_obs=window)
    assert fourd._run._cache_size() == before


def test_float32_smoke():
    A, H, r, E0, ys, obs_steps, window = _linear_problem()
    res = assimilate_4d(_model(A.astype(np.float32)), E0.astype(np.float32),
                        ys.astype(np.float32), enkit.etkf, h=H.astype(np.float32), R=r,
                        obs_steps=obs_steps, steps_per_obs=window)
    assert res.analysis_mean.dtype == jnp.float32
    means, _ = _sequential_kf(A, H, r, E0, ys, obs_steps, window)
    np.testing.assert_allclose(res.analysis_mean, means, atol=1e-3)
