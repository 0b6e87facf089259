"""Smoothers on the driver: EnKS (fixed lag and whole window) and the
ensemble RTS smoother against the exact Kalman (RTS) smoother, limits
(lag 0 = filter, lag ≥ K−1 = full smoother, EnRTS = EnKS without model
error), both driver paths, checkpoints, and errors at the door."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.filters.ensemble_space import ENSEMBLE_SPACE, analysis_transform
from reference.kalman_smoother import kalman_filter, rts_smoother

ENSEMBLES = ("analysis_mean", "analysis_ensemble", "smoothed_mean", "smoothed_ensemble")


def _linear(N=10, K=6, seed=0, n=3):
    rng = np.random.default_rng(seed)
    m = 2
    M = np.linalg.qr(rng.normal(size=(n, n)))[0] * 1.05
    H = rng.normal(size=(m, n))
    R = np.diag([0.5, 0.8])
    E0 = rng.normal(size=(N, n)) * 2.0
    ys = rng.normal(size=(K, m))
    Mj = jnp.asarray(M)
    return M, H, R, E0, ys, (lambda x: Mj @ x)


def _cov(E):
    return np.cov(np.asarray(E).T, ddof=1)


@pytest.mark.parametrize("scheme", [enkit.etkf, enkit.ensrf_serial, enkit.denkf],
                         ids=["etkf", "ensrf_serial", "denkf"])
def test_enks_whole_window_equals_the_rts_smoother_of_its_own_statistics(scheme):
    M, H, R, E0, ys, model = _linear()
    res = enkit.enks(model, E0, ys, scheme, h=H, R=R, store=ENSEMBLES)
    if scheme is enkit.denkf:  # not Kalman-exact: compare with its own filter covariances
        filt = {"xf": [], "Pf": [], "xa": np.asarray(res.analysis_mean),
                "Pa": np.array([_cov(E) for E in res.analysis_ensemble])}
        filt["xf"] = np.concatenate([[M @ E0.mean(0)], filt["xa"][:-1] @ M.T])
        filt["Pf"] = np.array([M @ P @ M.T for P in
                               np.concatenate([[_cov(E0)], filt["Pa"][:-1]])])
    else:
        filt = kalman_filter(E0.mean(0), _cov(E0), ys, M, H, R)
        np.testing.assert_allclose(res.analysis_mean, filt["xa"], rtol=1e-10, atol=1e-12)
    xs, Ps = rts_smoother(filt, M)
    np.testing.assert_allclose(res.smoothed_mean, xs, rtol=1e-10, atol=1e-12)
    for k in range(len(ys)):
        np.testing.assert_allclose(_cov(res.smoothed_ensemble[k]), Ps[k], rtol=1e-9,
                                   atol=1e-12)


def test_lag_zero_is_the_filter_and_the_filter_outputs_are_unchanged():
    M, H, R, E0, ys, model = _linear()
    filt = enkit.assimilate(model, E0, ys, enkit.etkf, h=H, R=R, store=ENSEMBLES[:2])
    res = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=0, store=ENSEMBLES)
    np.testing.assert_allclose(res.smoothed_ensemble, filt.analysis_ensemble, rtol=1e-12,
                               atol=1e-13)
    for L in (2, 5):
        res = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=L, store=ENSEMBLES)
        np.testing.assert_allclose(res.analysis_ensemble, filt.analysis_ensemble, rtol=1e-12,
                                   atol=1e-13)


@pytest.mark.parametrize("lag", [1, 2])
def test_lag_L_estimate_of_time_j_is_the_full_smoother_of_the_observations_up_to_j_plus_L(lag):
    """The whole-window smoother with the observations after j + L masked out
    (forecast-only cycles, transform I) sees exactly what lag L gives time j."""
    M, H, R, E0, ys, model = _linear(K=7)
    res = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=lag, store=ENSEMBLES)
    K = len(ys)
    for j in range(K):
        mask = np.zeros(ys.shape, bool)
        mask[:j + lag + 1] = True
        part = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, mask=mask, store=ENSEMBLES)
        np.testing.assert_allclose(res.smoothed_ensemble[j], part.smoothed_ensemble[j],
                                   rtol=1e-11, atol=1e-12, err_msg=f"time {j}")
    full = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=K - 1)
    whole = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R)  # lag=None: the whole window
    np.testing.assert_array_equal(full.smoothed_mean, whole.smoothed_mean)


@pytest.mark.parametrize("N", [4, 10], ids=["N<n", "N>n"])
def test_ensemble_rts_equals_enks_without_model_error(N):
    M, H, R, E0, ys, model = _linear(N=N, n=5 if N == 4 else 3)
    a = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, store=ENSEMBLES)
    b = enkit.ensemble_rts(model, E0, ys, enkit.etkf, h=H, R=R, store=ENSEMBLES)
    np.testing.assert_allclose(b.smoothed_ensemble, a.smoothed_ensemble, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(b.analysis_ensemble, enkit.assimilate(
        model, E0, ys, enkit.etkf, h=H, R=R, store=ENSEMBLES[:2]).analysis_ensemble)


def test_ensemble_rts_with_model_error():
    """The smoothed mean is the RTS recursion on the ensemble's own statistics
    (round-off); mean and covariance approach the exact RTS smoother with Q
    (Monte Carlo); the EnKS differs from it once there is model error."""
    M, H, R, _, ys, model = _linear(K=5)
    Q = 0.3 * np.eye(3)
    N = 4000
    E0 = np.random.default_rng(5).normal(size=(N, 3)) * 2.0
    opts = dict(h=H, R=R, model_noise=enkit.Dense(Q), key=7)
    store = ("forecast_ensemble", "analysis_ensemble", "smoothed_mean", "smoothed_ensemble")
    # serial EnSRF: Kalman-exact and O(N m (n + m)), cheap with N = 4000 members
    res = enkit.ensemble_rts(model, E0, ys, enkit.ensrf_serial, store=store, **opts)
    Ef, Ea = np.asarray(res.forecast_ensemble), np.asarray(res.analysis_ensemble)
    xs = Ea[-1].mean(0)
    for k in range(len(ys) - 2, -1, -1):
        Aa, Af = Ea[k] - Ea[k].mean(0), Ef[k + 1] - Ef[k + 1].mean(0)
        J = (Aa.T @ Af) @ np.linalg.inv(Af.T @ Af)
        xs = Ea[k].mean(0) + J @ (xs - Ef[k + 1].mean(0))
        np.testing.assert_allclose(res.smoothed_mean[k], xs, rtol=1e-10, atol=1e-12)
    exact = kalman_filter(np.zeros(3), 4.0 * np.eye(3), ys, M, H, R, Q)
    xs_exact, Ps_exact = rts_smoother(exact, M)
    for k in range(len(ys)):
        tol = 5 * np.sqrt(np.diag(Ps_exact[k]) / N)
        assert np.all(np.abs(res.smoothed_mean[k] - xs_exact[k]) < tol), k
        np.testing.assert_allclose(_cov(res.smoothed_ensemble[k]), Ps_exact[k], atol=0.1)
    enks = enkit.enks(model, E0[:400], ys, enkit.ensrf_serial, store=store, **opts)
    rts = enkit.ensemble_rts(model, E0[:400], ys, enkit.ensrf_serial, store=store, **opts)
    assert np.max(np.abs(enks.smoothed_mean[0] - rts.smoothed_mean[0])) > 1e-6


def test_python_path_and_checkpointed_windows_equal_the_compiled_run(tmp_path):
    M, H, R, E0, ys, model = _linear(K=7)
    mask = np.ones(ys.shape, bool)
    mask[3] = False  # a forecast-only cycle: G = I
    plain = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=2, mask=mask, store=ENSEMBLES)
    box = enkit.BlackBoxModel(lambda x: M @ x)
    python = enkit.enks(box, E0, ys, enkit.etkf, h=H, R=R, lag=2, mask=mask, store=ENSEMBLES)
    np.testing.assert_allclose(python.smoothed_ensemble, plain.smoothed_ensemble, rtol=1e-12,
                               atol=1e-13)
    np.testing.assert_array_equal(plain.smoothed_ensemble[3], plain.smoothed_ensemble[3])
    windows = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=2, mask=mask, store=ENSEMBLES,
                         checkpoint=tmp_path / "run.npz", checkpoint_every=3)
    for name in ENSEMBLES:
        np.testing.assert_array_equal(getattr(windows, name), getattr(plain, name), err_msg=name)
    again = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=2, mask=mask, store=ENSEMBLES,
                       checkpoint=tmp_path / "run.npz", checkpoint_every=3)  # finished: loaded
    np.testing.assert_array_equal(again.smoothed_ensemble, plain.smoothed_ensemble)
    rts = enkit.ensemble_rts(model, E0, ys, enkit.etkf, h=H, R=R, mask=mask,
                             checkpoint=tmp_path / "rts.npz", checkpoint_every=2)
    np.testing.assert_array_equal(
        rts.smoothed_mean, enkit.ensemble_rts(model, E0, ys, enkit.etkf, h=H, R=R,
                                              mask=mask).smoothed_mean)


def test_stochastic_scheme_smooths_with_its_own_draws():
    M, H, R, E0, ys, model = _linear()
    filt = enkit.assimilate(model, E0, ys, enkit.enkf, h=H, R=R, key=3, store=ENSEMBLES[:2])
    res = enkit.enks(model, E0, ys, enkit.enkf, h=H, R=R, key=3, lag=0, store=ENSEMBLES)
    np.testing.assert_allclose(res.smoothed_ensemble, filt.analysis_ensemble, rtol=1e-12,
                               atol=1e-13)


@pytest.mark.parametrize("scheme", sorted(ENSEMBLE_SPACE, key=lambda f: f.__name__),
                         ids=lambda f: f.__name__)
def test_every_listed_scheme_is_its_ensemble_transform(scheme):
    rng = np.random.default_rng(2)
    E = jnp.asarray(rng.normal(size=(8, 5)))
    y, H, R = rng.normal(size=3), rng.normal(size=(3, 5)), np.diag([0.5, 1.0, 2.0])
    key = jax.random.key(1)
    Ea, G = analysis_transform(scheme, E, y, H, R, key=key)
    np.testing.assert_allclose(G @ E, Ea, rtol=1e-12, atol=1e-12)
    kwargs = {"key": key} if scheme in (enkit.enkf, enkit.etkf_rotated) else {}
    np.testing.assert_allclose(Ea, scheme(E, y, H, R, **kwargs), rtol=1e-11, atol=1e-12)


def test_declared_scheme_and_refused_schemes():
    M, H, R, E0, ys, model = _linear()
    mine = enkit.ensemble_space(lambda E, y, h, R: enkit.etkf(E, y, h, R))
    a = enkit.enks(model, E0, ys, mine, h=H, R=R)
    b = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R)
    np.testing.assert_allclose(a.smoothed_mean, b.smoothed_mean, rtol=1e-12)
    coords = np.arange(3.0)[:, None]  # (n, 1) positions
    refused = [enkit.kalman, lambda E, y, h, R: enkit.etkf(E, y, h, R),
               jax.tree_util.Partial(enkit.enkf, localization=enkit.gain_localization(
                   coords, coords[:2], 1.0))]
    for scheme in refused:
        with pytest.raises(ValueError, match="has none"):
            enkit.enks(model, E0, ys, scheme, h=H, R=R, key=0)


def test_bad_lags_and_outputs_are_errors_before_any_model_run():
    _, H, R, E0, ys, _ = _linear()

    def model(x):
        raise AssertionError("the model must not run")

    for lag, err, match in [(-1, ValueError, "lag must be >= 0"),
                            (6, ValueError, "larger than the run"),
                            (1.5, TypeError, "non-negative integer"),
                            (True, TypeError, "non-negative integer")]:
        with pytest.raises(err, match=match):
            enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=lag)
    with pytest.raises(ValueError, match="need a smoother"):
        enkit.assimilate(model, E0, ys, enkit.etkf, h=H, R=R, store=("smoothed_mean",))
    with pytest.raises(TypeError, match="unexpected keyword"):
        enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, inflaton=1.02)
    with pytest.raises(ValueError, match="has none"):
        enkit.enks(model, E0, ys, enkit.letkf, h=H, R=R)


def test_lorenz96_smoothing_beats_filtering():
    """Sakov & Oke (2008) setting, short: ETKF N=20, infl 1.02, lag 5."""
    case = enkit.models.cases.sakov2008_lorenz96()
    run = case.run(enkit.etkf, 20, cycles=400, burn_in=100, inflation=1.02,
                   smoother=enkit.LagSmoother(lag=5))
    a = run.rmse
    s = float(jnp.mean(run.result.smoothed_rmse(run.twin.truth)[100:]))
    assert a < 0.25 and s < 0.8 * a, (a, s)


def test_stream_equals_one_run_and_resumes_from_its_checkpoint(tmp_path):
    """Chunks of a stream give the estimates of one enks run bit for bit
    (stochastic EnKF: the keys follow the global cycle count); a stream
    stopped after its consumer took two chunks restarts after the first
    (saved once the consumer came back for the second)."""
    rng = np.random.default_rng(0)
    model = enkit.Lorenz96(n=12)
    E0, ys = 8 + rng.normal(size=(8, 12)), 8 + rng.normal(size=(10, 6))
    opts = dict(h=lambda x: x[::2], R=1.0, key=3, lag=3, inflation=1.02,
                store=("analysis_mean", "smoothed_mean"))
    full = enkit.enks(model, E0, ys, enkit.enkf, **opts)
    chunks = [ys[:4], ys[4:8], ys[8:]]
    out = list(enkit.enks_stream(model, E0, chunks, enkit.enkf, **opts))
    assert len(out) == 4 and out[-1].filtered is None
    assert [len(c.smoothed.steps) for c in out] == [1, 4, 2, 3]  # 3 cycles fill the window
    np.testing.assert_array_equal(np.concatenate([c.smoothed.steps for c in out]),
                                  np.arange(1, 11))
    np.testing.assert_array_equal(np.concatenate([c.smoothed.smoothed_mean for c in out]),
                                  full.smoothed_mean)
    np.testing.assert_array_equal(
        np.concatenate([c.filtered.analysis_mean for c in out[:-1]]), full.analysis_mean)
    path = tmp_path / "stream.npz"
    stream = enkit.enks_stream(model, E0, chunks, enkit.enkf, checkpoint=path, **opts)
    first, _ = next(stream), next(stream)
    stream.close()
    with pytest.raises(ValueError, match="same chunking"):  # saved after 4 cycles
        list(enkit.enks_stream(model, E0, [ys[:3], ys[3:]], enkit.enkf, checkpoint=path, **opts))
    rest = list(enkit.enks_stream(model, E0, chunks, enkit.enkf, checkpoint=path, **opts))
    np.testing.assert_array_equal(rest[0].smoothed.steps, [2, 3, 4, 5])
    np.testing.assert_array_equal(
        np.concatenate([first.smoothed.smoothed_mean] + [c.smoothed.smoothed_mean for c in rest]),
        full.smoothed_mean)
    with pytest.raises(enkit.io.CheckpointError, match="lag"):
        list(enkit.enks_stream(model, E0, chunks, enkit.enkf, checkpoint=path,
                               **{**opts, "lag": 2}))


def test_float32_smoke():
    M, H, R, E0, ys, _ = _linear()
    M32 = jnp.asarray(M, jnp.float32)
    a = enkit.enks(lambda x: M32 @ x, E0.astype(np.float32), ys, enkit.etkf,
                   h=H.astype(np.float32), R=R, lag=2)
    b = enkit.ensemble_rts(lambda x: M32 @ x, E0.astype(np.float32), ys, enkit.etkf,
                           h=H.astype(np.float32), R=R)
    *_, model = _linear()
    c = enkit.enks(model, E0, ys, enkit.etkf, h=H, R=R, lag=2)
    assert a.smoothed_mean.dtype == b.smoothed_mean.dtype == jnp.float32
    np.testing.assert_allclose(a.smoothed_mean, c.smoothed_mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b.smoothed_mean[-1], c.analysis_mean[-1], rtol=1e-3, atol=1e-4)


def test_rts_decorrelation_limits():
    """decorrelation 0 leaves the filter analyses; 1 is the plain EnRTS."""
    M, H, R, E0, ys, model = _linear()
    zero = enkit.ensemble_rts(model, E0, ys, enkit.etkf, h=H, R=R, decorrelation=0.0,
                              store=ENSEMBLES)
    np.testing.assert_array_equal(zero.smoothed_ensemble, zero.analysis_ensemble)
    one = enkit.ensemble_rts(model, E0, ys, enkit.etkf, h=H, R=R, decorrelation=1.0)
    plain = enkit.ensemble_rts(model, E0, ys, enkit.etkf, h=H, R=R)
    np.testing.assert_array_equal(one.smoothed_mean, plain.smoothed_mean)
