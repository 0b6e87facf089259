"""Particle filters (enkit.particle): resampling, ESS, the bootstrap and
optimal-proposal analyses against the Kalman filter, and weighted
ensembles through ``enkit.assimilate``."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.particle_problem import (
    A2,
    H1,
    MU,
    P0,
    Q2,
    R1,
    Y1,
    kalman,
    kalman_filter,
    linear_model,
    prior_draws,
)

import enkit
from enkit import particle as pf
from enkit.assimilation.compiled import run as _run

N_COUNTS = 10
W_COUNTS = np.array([0.3, 0.05, 0.15, 0.02, 0.08, 0.1, 0.12, 0.03, 0.1, 0.05])
N_KEYS = 4000


@jax.jit
def _all_counts(keys, log_w):
    """Offspring counts (keys, N) of every resampler (one compilation)."""
    return {name: jax.vmap(lambda k, f=f: pf.offspring_counts(f(k, log_w), N_COUNTS))(keys)
            for name, f in pf.RESAMPLERS.items()}


@pytest.fixture(scope="module")
def offspring():
    """Offspring counts (N_KEYS, N) of each resampler on fixed weights."""
    keys = jax.random.split(jax.random.key(0), N_KEYS)
    return {k: np.asarray(v) for k, v in _all_counts(keys, np.log(W_COUNTS)).items()}


@pytest.mark.parametrize("name", list(pf.RESAMPLERS))
def test_resampler_unbiased(offspring, name):
    counts = offspring[name]
    assert counts.shape == (N_KEYS, N_COUNTS) and np.all(counts.sum(1) == N_COUNTS)
    se = counts.std(0) / np.sqrt(N_KEYS) + 1e-12
    # E[c_i] = N w_i, within 5 standard errors (members whose count is
    # deterministic, se ≈ 0, must match to round-off).
    assert np.all(np.abs(counts.mean(0) - N_COUNTS * W_COUNTS) <= 5 * se + 1e-9)


def test_systematic_has_lowest_offspring_variance(offspring):
    var = {name: offspring[name].var(0).sum() for name in offspring}
    # multinomial: Σ N wᵢ (1 − wᵢ) in theory
    assert var["multinomial"] == pytest.approx(N_COUNTS * (1 - np.sum(W_COUNTS ** 2)), rel=0.1)
    assert all(var["systematic"] < var[name] for name in var if name != "systematic"), var
    assert var["stratified"] < var["multinomial"] and var["residual"] < var["multinomial"]


def test_resamplers_never_pick_zero_weight():
    log_w = np.full(N_COUNTS, -np.inf)
    log_w[[1, 3, 9]] = [0.0, -1.0, -3.0]
    counts = _all_counts(jax.random.split(jax.random.key(1), N_KEYS), log_w)
    for name, c in counts.items():
        assert np.all(np.asarray(c)[:, [0, 2, 4, 5, 6, 7, 8]] == 0), name
        assert c.dtype == jnp.int32
    for name, f in pf.RESAMPLERS.items():
        out = jax.eval_shape(f, jax.random.key(2), log_w)
        assert out.dtype == jnp.int32 and out.shape == (N_COUNTS,)


def test_effective_sample_size():
    assert pf.effective_sample_size(log_weights=jnp.zeros(7)) == pytest.approx(7.0)
    one_hot = jnp.array([0.0, -jnp.inf, -jnp.inf])
    assert pf.effective_sample_size(log_weights=one_hot) == pytest.approx(1.0)
    # scale-free and stable: no underflow for log-weights around -1e4
    lw = jnp.log(jnp.asarray(W_COUNTS))
    ess = 1.0 / np.sum(W_COUNTS ** 2)
    assert pf.effective_sample_size(log_weights=lw - 1e4) == pytest.approx(ess)
    assert pf.effective_sample_size(log_weights=lw + 700.0) == pytest.approx(ess)


def test_weighted_moments():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(6, 3))
    u = jnp.zeros(6)
    np.testing.assert_allclose(pf.weighted_mean(E, u), E.mean(0), rtol=1e-12)
    assert pf.weighted_spread(E, u) == pytest.approx(float(enkit.ensemble_spread(E)))
    w = rng.random(6)
    w /= w.sum()
    np.testing.assert_allclose(pf.weighted_mean(E, np.log(w) + 3.0), w @ E, rtol=1e-12)
    C12 = pf.weighted_covariance_root(E, np.log(w))
    A = E - w @ E
    np.testing.assert_allclose(C12.T @ C12, (A.T * w) @ A / (1 - np.sum(w ** 2)), rtol=1e-12)
    # one member holding all the weight: the unweighted covariance is used
    one = jnp.array([0.0] + [-jnp.inf] * 5)
    C12 = pf.weighted_covariance_root(E, one)
    np.testing.assert_allclose(C12.T @ C12, np.cov(E.T), rtol=1e-12)


def test_bandwidths():
    assert pf.scott_bandwidth(100, 2) == pytest.approx(100 ** (-1 / 6))
    assert pf.silverman_bandwidth(100, 2) == pytest.approx((4 / 400) ** (1 / 6))


def test_regularize_jitter_covariance():
    rng = np.random.default_rng(1)
    E = jnp.asarray(rng.normal(size=(40, 2)) @ np.array([[1.0, 0.5], [0.0, 0.7]]))
    lw = rng.normal(size=40)
    h, hs = pf.scott_bandwidth(40, 2), pf.silverman_bandwidth(40, 2)

    @jax.jit
    def jitter(key):
        """(plain, jitter covariance with Scott's h, with Silverman's, C_w)."""
        a = pf.systematic(jax.random.key(0), lw)
        keys = jax.random.split(key, 500)

        def cov(bandwidth):
            d = jax.vmap(lambda k: pf.regularize(k, E, lw, a, reg=0.5,
                                                 bandwidth=bandwidth))(keys) - E[a]
            return jnp.einsum("kni,knj->ij", d, d) / d.shape[0] / d.shape[1]

        C = pf.weighted_covariance_root(E, lw)
        return (pf.regularize(key, E, lw, a, reg=0.0) - E[a], cov(None), cov(hs), C.T @ C)

    plain, scott, silverman, C = jitter(jax.random.key(2))
    np.testing.assert_array_equal(plain, 0.0)
    np.testing.assert_allclose(scott, (0.5 * h) ** 2 * C, rtol=0.1, atol=2e-3)
    # the same draws: the bandwidth only scales them
    np.testing.assert_allclose(silverman, (hs / h) ** 2 * scott, rtol=1e-10)


# --- a one-step linear-Gaussian problem (2-D state, one observation; from
# reference.particle_problem, as the cycled one below) -------------------------


@pytest.fixture(scope="module")
def bootstrap_errors():
    """RMS (over 48 seeds) error of the bootstrap PF's weighted mean and
    variance against the Kalman posterior, at N = 200 and 3200."""
    xa, Pa = kalman(MU, P0, H1, R1, Y1)

    def one(key, N):
        kp, ka = jax.random.split(key)
        res = pf.bootstrap_pf(prior_draws(kp, N), Y1, H1, enkit.Scalar(R1, 1), key=ka,
                              threshold=0.0)
        m = pf.weighted_mean(res.ensemble, res.log_weights)
        C = pf.weighted_covariance_root(res.ensemble, res.log_weights)
        return m, jnp.sum(C * C, axis=0)

    keys = jax.random.split(jax.random.key(3), 48)
    out = {}
    for N in (200, 3200):
        m, v = jax.jit(jax.vmap(partial(one, N=N)))(keys)
        out[N] = (float(np.sqrt(np.mean((m - xa) ** 2))),
                  float(np.sqrt(np.mean((v - np.diag(Pa)) ** 2))))
    return out


def test_bootstrap_converges_to_kalman_at_root_n(bootstrap_errors):
    e = bootstrap_errors
    assert e[3200][0] < 0.05 and e[3200][1] < 0.05
    for k in (0, 1):  # mean, variance: N × 16 → error / 4
        assert 2.5 < e[200][k] / e[3200][k] < 6.5, e


@jax.jit
def _optimal_runs(keys, L0, Q):
    """optimal_proposal_pf on 300 forecasts fᵢ = μ + L0 zᵢ, one run per key;
    with the weighted mean and variances of each."""
    def one(key):
        kp, ka = jax.random.split(key)
        F = MU + jax.random.normal(kp, (300, 2), dtype=L0.dtype) @ L0.T
        res = pf.optimal_proposal_pf(F, Y1, H1, enkit.Scalar(R1, 1), Q=enkit.Dense(Q), key=ka)
        C = pf.weighted_covariance_root(res.ensemble, res.log_weights)
        return res, pf.weighted_mean(res.ensemble, res.log_weights), jnp.sum(C * C, axis=0)

    return jax.vmap(one)(keys)


def test_optimal_proposal_exact_from_a_perfect_prior_point():
    """All forecasts fᵢ = μ (the previous state known exactly): the weights
    stay uniform and the particles are draws of the exact posterior
    N(μ + K(y − Hμ), (I − KH)Q)."""
    res, _, _ = _optimal_runs(jax.random.split(jax.random.key(4), 64), np.zeros((2, 2)), P0)
    xa, Pa = kalman(MU, P0, H1, R1, Y1)
    np.testing.assert_allclose(res.log_weights, -np.log(300), rtol=1e-12)
    np.testing.assert_allclose(res.ess, 300, rtol=1e-12)
    assert not np.any(res.resampled)
    X = np.asarray(res.ensemble).reshape(-1, 2)  # 19200 draws
    se = np.sqrt(np.diag(Pa) / X.shape[0])
    assert np.all(np.abs(X.mean(0) - xa) < 4 * se)
    np.testing.assert_allclose(np.cov(X.T), Pa, atol=0.03)
    # log p(y) = log N(y; Hμ, H Q Hᵀ + R) exactly
    S = H1 @ P0 @ H1.T + R1
    d = Y1 - H1 @ MU
    exact = -0.5 * (d @ np.linalg.solve(S, d) + np.log(np.linalg.det(2 * np.pi * S)))
    np.testing.assert_allclose(res.log_evidence, float(exact), rtol=1e-12)


def test_optimal_proposal_matches_kalman_in_expectation():
    """fᵢ drawn from N(μ, P0), x = f + η: the posterior is the Kalman one
    with prior covariance P0 + Q; the mean over seeds of the weighted mean
    matches it within Monte Carlo error."""
    Qm = np.array([[0.3, 0.0], [0.0, 0.2]])
    xa, Pa = kalman(MU, P0 + Qm, H1, R1, Y1)
    _, m, v = _optimal_runs(jax.random.split(jax.random.key(5), 64), np.linalg.cholesky(P0), Qm)
    assert np.all(np.abs(m.mean(0) - xa) < 4 * m.std(0) / 8 + 1e-3)
    np.testing.assert_allclose(v.mean(0), np.diag(Pa), rtol=0.05)


def test_observation_matrix_of_a_linear_callable():
    x = np.array([3.0, -2.0])
    np.testing.assert_array_equal(pf.observation_matrix(lambda v: jnp.asarray(H1) @ v, x), H1)
    np.testing.assert_array_equal(pf.observation_matrix(H1, x), H1)


def test_resampling_threshold():
    E = prior_draws(8, 64)
    R = enkit.Scalar(R1, 1)
    kept = pf.bootstrap_pf(E, Y1, H1, R, key=jax.random.key(0), threshold=0.0)
    lik = pf.gaussian_log_likelihood(E @ H1.T, Y1, R)
    np.testing.assert_allclose(kept.log_weights, pf.normalize_log_weights(lik), rtol=1e-12)
    np.testing.assert_array_equal(kept.ensemble, E)
    assert not kept.resampled and kept.ess < 64
    # carried weights enter the update: prior log-weights + likelihood
    again = pf.bootstrap_pf(E, Y1, H1, R, key=jax.random.key(0), threshold=0.0,
                            log_weights=kept.log_weights)
    np.testing.assert_allclose(again.log_weights, pf.normalize_log_weights(2 * lik), rtol=1e-12)
    res = pf.bootstrap_pf(E, Y1, H1, R, key=jax.random.key(0), threshold=1.0)
    assert res.resampled and res.ess == pytest.approx(float(kept.ess))
    np.testing.assert_allclose(res.log_weights, -np.log(64), rtol=1e-12)
    rows = {tuple(r) for r in np.asarray(E)}
    assert all(tuple(r) in rows for r in np.asarray(res.ensemble))


def test_degenerate_weights_raise_outside_jit():
    E = prior_draws(9, 64)
    far = np.array([1e200])
    R = enkit.Scalar(1e-200, 1)
    with pytest.raises(pf.WeightDegeneracyError, match="zero weight"):
        pf.bootstrap_pf(E, far, H1, R, key=jax.random.key(0))
    with pytest.raises(pf.WeightDegeneracyError, match="zero weight"):
        pf.bootstrap_pf(E, Y1, H1, R, key=jax.random.key(0), log_weights=jnp.full(64, -jnp.inf))
    bad = np.array(E)
    bad[[3, 7]] = np.nan  # h(x) NaN for two members
    with pytest.raises(pf.WeightDegeneracyError, match=r"NaN for 2 .* \(members \[3, 7\]"):
        pf.bootstrap_pf(bad, Y1, H1, R, key=jax.random.key(0))


def test_degenerate_weights_inside_jit_flagged_as_nan_and_no_recompilation():
    """...and a second call with new values does not recompile; with reg > 0
    the resampled particles are jittered (none equals a forecast particle)."""
    traces = []

    @jax.jit
    def f(E, y, R, key, threshold):
        traces.append(1)
        return pf.bootstrap_pf(E, y, H1, R, key=key, reg=0.2, threshold=threshold)

    res = f(prior_draws(9, 64), np.array([1e200]), enkit.Scalar(1e-200, 1), jax.random.key(0),
            0.5)
    assert bool(res.degenerate) and np.all(np.isnan(res.ensemble))
    assert np.all(np.isnan(res.log_weights)) and not bool(res.resampled)
    E = prior_draws(10, 64)
    ok = f(E, np.array([0.0]), enkit.Scalar(R1, 1), jax.random.key(1), 1.0)
    assert not bool(ok.degenerate) and bool(ok.resampled)
    rows = {tuple(r) for r in E}
    assert not any(tuple(r) in rows for r in np.asarray(ok.ensemble))
    assert len(traces) == 1


def test_bad_arguments():
    E = prior_draws(0, 10)
    with pytest.raises(TypeError, match="pass key="):
        pf.bootstrap_pf(E, Y1, H1, R1)
    with pytest.raises(ValueError, match="threshold"):
        pf.bootstrap_pf(E, Y1, H1, R1, key=jax.random.key(0), threshold=1.5)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        pf.bootstrap_pf(E, Y1, H1, R1, key=jax.random.key(0), log_weights=jnp.zeros(3))


def test_float32_smoke():
    """bootstrap_pf in float32 (optimal_proposal_pf: test_driver_float32_smoke)."""
    E = np.asarray(prior_draws(0, 64), np.float32)
    y, H = np.float32(Y1), np.float32(H1)
    R = enkit.Scalar(np.float32(R1), 1)
    res = pf.bootstrap_pf(E, y, H, R, key=jax.random.key(1), reg=0.5, threshold=1.0)
    assert res.ensemble.dtype == jnp.float32 and res.log_weights.dtype == jnp.float32
    assert np.all(np.isfinite(res.ensemble)) and np.all(np.isfinite(res.log_weights))


# --- weighted ensembles through enkit.assimilate ---------------------------

K2 = 6
CARRY = partial(pf.bootstrap_pf, threshold=0.0)  # one object: one compilation
OPTIMAL = partial(pf.optimal_proposal_pf, Q=enkit.Dense(Q2))


def twin(seed, K=K2):
    rng = np.random.default_rng(seed)
    x, ys = rng.normal(size=2), []
    for _ in range(K):
        x = A2 @ x + rng.multivariate_normal(np.zeros(2), Q2)
        ys.append(H1 @ x + np.sqrt(R1) * rng.normal(size=1))
    return np.array(ys)


@pytest.fixture(scope="module")
def cycled():
    """Bootstrap and optimal-proposal runs of N = 1500 against the Kalman filter."""
    ys = twin(0)
    E0 = np.random.default_rng(1).normal(size=(1500, 2))
    kf = kalman_filter(np.zeros(2), np.eye(2), ys)
    run = partial(enkit.assimilate, linear_model, E0, ys, h=H1, R=enkit.Scalar(R1, 1), key=3)
    return kf, run(pf.bootstrap_pf, model_noise=enkit.Dense(Q2)), run(OPTIMAL)


@pytest.mark.parametrize("which", [1, 2], ids=["bootstrap", "optimal"])
def test_cycled_pf_follows_kalman(cycled, which):
    (mean, std), res = cycled[0], cycled[which]
    assert res.log_weights.shape == (K2, 1500) and res.ess.shape == (K2,)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(res.log_weights, axis=1), 0.0,
                               atol=1e-10)
    assert np.all((res.ess >= 1) & (res.ess <= 1500))
    assert np.max(np.abs(res.analysis_mean - mean)) < 0.08
    np.testing.assert_allclose(res.analysis_spread, std, rtol=0.12)
    assert res.ess.mean() > (700 if which == 2 else 300)  # the optimal proposal keeps more


def small_run(ys, E0, mask, **kw):
    return enkit.assimilate(linear_model, E0, ys, CARRY, h=H1, R=enkit.Scalar(R1, 1), key=5,
                            mask=mask, store=("forecast_mean", "analysis_mean", "analysis_spread",
                                              "forecast_ensemble", "analysis_ensemble"), **kw)


def test_driver_carries_weights_and_returns_weighted_means():
    ys = twin(4)
    mask = np.ones((K2, 1), bool)
    mask[2] = False  # a cycle without observations: weights carried unchanged
    E0 = prior_draws(11, 64)
    res = small_run(ys, E0, mask)
    E, total = np.asarray(E0), np.zeros(64)
    for k in range(K2):
        E = E @ A2.T
        if mask[k, 0]:
            total = total + pf.gaussian_log_likelihood(E @ H1.T, ys[k], enkit.Scalar(R1, 1))
        lw = pf.normalize_log_weights(total)
        np.testing.assert_allclose(res.log_weights[k], lw, rtol=1e-9, atol=1e-9)
        ess = pf.effective_sample_size(log_weights=lw)
        assert float(res.ess[k]) == pytest.approx(float(ess))
        np.testing.assert_allclose(res.analysis_ensemble[k], E, rtol=1e-12)
    np.testing.assert_allclose(res.log_weights[2], res.log_weights[1], rtol=1e-12)
    np.testing.assert_allclose(res.ensemble, E, rtol=1e-12)
    for k in range(K2):
        np.testing.assert_allclose(res.analysis_mean[k], pf.weighted_mean(
            res.analysis_ensemble[k], res.log_weights[k]), rtol=1e-12)
        np.testing.assert_allclose(res.analysis_spread[k], pf.weighted_spread(
            res.analysis_ensemble[k], res.log_weights[k]), rtol=1e-12)
        prior = res.log_weights[k - 1] if k else np.zeros(64)
        np.testing.assert_allclose(res.forecast_mean[k], pf.weighted_mean(
            res.forecast_ensemble[k], prior), rtol=1e-12)
    assert not np.allclose(res.analysis_mean[-1], res.analysis_ensemble[-1].mean(0))
    ds = res.to_xarray()
    assert ds["log_weights"].dims == ("time", "member") and ds["ess"].dims == ("time",)
    np.testing.assert_array_equal(ds["log_weights"].values, res.log_weights)
    # a second run with new values reuses the compiled program
    size = _run._cache_size()
    small_run(twin(5), prior_draws(12, 64), mask)
    assert _run._cache_size() == size


def test_driver_weight_degeneracy_is_an_error():
    ys = twin(4)
    ys[3] = 1e200
    mask = np.ones((K2, 1), bool)
    E0 = prior_draws(11, 64)
    run = partial(enkit.assimilate, linear_model, E0, ys, CARRY, h=H1,
                  R=enkit.Scalar(1e-200, 1), key=5, mask=mask)
    with pytest.raises(enkit.NonFiniteError, match="weight degeneracy") as err:
        run()
    assert err.value.cycle == 4 and err.value.stage == "analysis"
    assert err.value.result.log_weights.shape == (3, 64)
    with pytest.warns(RuntimeWarning, match="weight degeneracy"):
        res = run(on_nonfinite="warn")
    assert np.all(np.isnan(res.log_weights[3:]))


def test_driver_refuses_what_particles_do_not_support():
    ys = twin(4)
    E0 = prior_draws(11, 64)
    run = partial(enkit.assimilate, linear_model, E0, observations=ys, h=H1, R=R1, key=5)
    with pytest.raises(ValueError, match="outputs of a particle scheme"):
        run(scheme=enkit.etkf, store=("analysis_mean", "log_weights"))
    with pytest.raises(ValueError, match="no inflation"):
        run(scheme=CARRY, inflation=1.1)
    with pytest.raises(ValueError, match="cannot store cost_J"):
        run(scheme=CARRY, store=("analysis_mean", "cost_J"))
    with pytest.raises(ValueError, match="over_window"):
        run(scheme=enkit.over_window(CARRY))
    with pytest.raises(ValueError, match="compiled path"):
        run(scheme=CARRY, observations=list(ys))
    with pytest.raises(ValueError, match="added twice"):
        run(scheme=OPTIMAL, model_noise=enkit.Dense(Q2))


def test_driver_windows_equal_one_scan():
    """The windowed scan (``progress=True``, checkpoints) carries the weights too."""
    from enkit.assimilation import compiled, driver

    mask = np.ones((K2, 1), bool)
    run = driver.prepare(linear_model, prior_draws(11, 64), twin(4), CARRY, h=H1,
                         R=enkit.Scalar(R1, 1), key=5, mask=mask)
    one = compiled.run(run.settings, run.record, run.E0, run.key, forecast_steps=0,
                       outputs=run.outputs)
    windows = compiled.run_windows(run.settings, run.record, run.E0, run.key, 0, run.outputs,
                                   None, every=2)
    for name in ("log_weights", "ess", "analysis_mean", "ensemble"):
        np.testing.assert_allclose(getattr(windows, name), getattr(one, name), rtol=1e-12)


def test_driver_float32_smoke():
    """float32 through the driver, with a callable (linear) h and an absent
    observation: the optimal proposal takes H as the Jacobian of masked h."""
    f32 = np.float32
    mask = np.ones((K2, 1), bool)
    mask[1] = False
    Q = enkit.Dense(Q2.astype(f32))
    res = enkit.assimilate(linear_model, prior_draws(11, 32).astype(f32), twin(4).astype(f32),
                           partial(pf.optimal_proposal_pf, Q=Q),
                           h=lambda x: jnp.asarray(H1, f32) @ x, R=enkit.Scalar(f32(R1), 1),
                           key=0, mask=mask)
    for a in (res.log_weights, res.ess, res.analysis_mean, res.ensemble):
        assert a.dtype == jnp.float32 and np.all(np.isfinite(a))
    # no observation at cycle 2: its weights are those cycle 1 handed on
    np.testing.assert_array_equal(res.log_weights[1], res.log_weights[0])


# --- DAPPER's variants: jitter of duplicates only, artificial noise ----------

def test_regularize_duplicates_only():
    """duplicates_only jitters exactly the members whose ancestor was drawn
    more than once (every copy), leaves the others as they were, and the
    jitter of the copies is the one of the full regularisation."""
    rng = np.random.default_rng(5)
    E = jnp.asarray(rng.normal(size=(30, 2)))
    lw = jnp.asarray(3.0 * rng.normal(size=30))
    for resampler in (pf.systematic, pf.residual):  # sorted and unsorted ancestors
        a = resampler(jax.random.key(6), lw)
        full = pf.regularize(jax.random.key(7), E, lw, a, reg=0.8)
        dup = pf.regularize(jax.random.key(7), E, lw, a, reg=0.8, duplicates_only=True)
        copied = np.asarray(pf.offspring_counts(a, 30))[np.asarray(a)] > 1
        assert 0 < copied.sum() < 30
        np.testing.assert_array_equal(dup[~copied], E[a][~copied])
        np.testing.assert_allclose(dup[copied], full[copied], rtol=0, atol=1e-15)
    res = pf.bootstrap_pf(E, Y1, H1 * np.ones((1, 2)) / 2, R1, key=jax.random.key(8),
                          threshold=1.0, reg=0.5, duplicates_only=True)
    assert bool(res.resampled) and np.all(np.isfinite(res.ensemble))


def test_optimal_proposal_artificial_noise():
    """Qs: the noise N(0, (Qs·h)² C_w) in the ensemble's terms gives the
    weights of the fixed-Q analysis with that Q, draws with covariance
    (I − KH) Q, and Qs = 0 is the bootstrap PF without jitter."""
    rng = np.random.default_rng(2)
    N, n = 4000, 3
    E = jnp.asarray(rng.normal(size=(N, n)) @ np.array([[1, 0.3, 0], [0, 1, 0.2], [0, 0, 0.5]]))
    H = jnp.asarray(rng.normal(size=(2, n)))
    R, y = enkit.Scalar(0.5, 2), jnp.array([0.3, -0.2])
    Q = (0.7 * pf.scott_bandwidth(N, n)) ** 2 * np.cov(np.asarray(E).T)
    key = jax.random.key(1)
    ens = pf.optimal_proposal_pf(E, y, H, R, Qs=0.7, key=key, threshold=0.0)
    fixed = pf.optimal_proposal_pf(E, y, H, R, Q=Q, key=key, threshold=0.0)
    np.testing.assert_allclose(ens.log_weights, fixed.log_weights, rtol=0, atol=1e-11)
    np.testing.assert_allclose(ens.log_evidence, fixed.log_evidence, rtol=1e-13)
    S = H @ Q @ H.T + 0.5 * np.eye(2)
    K = Q @ H.T @ np.linalg.inv(S)
    D = np.asarray(ens.ensemble - (E + (y - E @ H.T) @ K.T))
    np.testing.assert_allclose(np.cov(D.T), (np.eye(n) - K @ H) @ Q, atol=0.06 * Q.max())
    none = pf.optimal_proposal_pf(E, y, H, R, Qs=0.0, key=key, threshold=1.0)
    boot = pf.bootstrap_pf(E, y, H, R, key=key, threshold=1.0)
    np.testing.assert_allclose(none.log_weights, boot.log_weights, rtol=0, atol=1e-12)
    with pytest.raises(TypeError, match="exactly one of Q="):
        pf.optimal_proposal_pf(E, y, H, R, key=key)
    with pytest.raises(TypeError, match="exactly one of Q="):
        pf.optimal_proposal_pf(E, y, H, R, Q=Q, Qs=0.5, key=key)
    with pytest.raises(ValueError, match="Qs must be >= 0"):
        pf.optimal_proposal_pf(E, y, H, R, Qs=-1.0, key=key)


def test_driver_artificial_noise_on_lorenz63():
    """Both DAPPER variants run through assimilate on a deterministic
    chaotic model and stay near the truth (short smoke run; the published
    figures are benchmarks/vs_dapper_pf.py's)."""
    case = enkit.models.cases.sakov2012_lorenz63(cycles=30, burn_in=10)
    for scheme in (partial(pf.bootstrap_pf, threshold=0.3, reg=2.4, duplicates_only=True),
                   partial(pf.optimal_proposal_pf, Qs=1.0, threshold=0.3)):
        run = case.run(scheme, N=100, seed=0)
        assert np.isfinite(run.rmse) and run.rmse < 1.5


@pytest.mark.parametrize("k", [2, 7], ids=["wide", "tall"])
def test_sample_with_root(k):
    """Both roots (the given one for k ≤ n, its QR factor for k > n) draw
    N(0, rootᵀ root)."""
    root = jnp.asarray(np.random.default_rng(k).normal(size=(k, 3)))
    z = pf.sample_with_root(jax.random.key(0), root, 20_000)
    assert z.shape == (20_000, 3)
    C = np.asarray(root.T @ root)
    np.testing.assert_allclose(np.cov(np.asarray(z).T), C, atol=0.05 * np.abs(C).max())
