"""The auxiliary particle filter, the ensemble Kalman particle filter and
the Gaussian-mixture filter (enkit.particle): their limits (the optimal
proposal, the stochastic EnKF, the bootstrap PF), convergence to the
Kalman posterior, a bimodal posterior, and runs through enkit.assimilate."""

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
)
from reference.particle_problem import prior_draws as draws

import enkit
from enkit import particle as pf

QM = np.array([[0.3, 0.0], [0.0, 0.2]])
RS = enkit.Scalar(R1, 1)
NS = (100, 1600)
SEEDS = 32


def moments(res):
    C = pf.weighted_covariance_root(res.ensemble, res.log_weights)
    return pf.weighted_mean(res.ensemble, res.log_weights), jnp.sum(C * C, axis=0)


# --- the auxiliary particle filter ------------------------------------------


def test_apf_fully_adapted_is_the_optimal_proposal():
    """Linear h, exact predictive, optimal proposal: the second-stage
    weights are uniform to round-off, and the APF is optimal_proposal_pf
    (same draws, same resampling)."""
    E, Q, key = draws(0, 100), enkit.Dense(QM), jax.random.key(1)
    apf = partial(pf.auxiliary_pf, E, Y1, H1, RS, Q=Q, key=key, proposal="optimal")
    for threshold in (0.0, 1.0):
        a = apf(threshold=threshold)
        o = pf.optimal_proposal_pf(E, Y1, H1, RS, Q=Q, key=key, threshold=threshold)
        np.testing.assert_allclose(a.log_weights, o.log_weights, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(a.ensemble, o.ensemble, rtol=1e-11, atol=1e-12)
        assert float(a.ess) == pytest.approx(float(o.ess), rel=1e-12)
        assert float(a.log_evidence) == pytest.approx(float(o.log_evidence), rel=1e-11)
        assert bool(a.resampled) == bool(o.resampled) == (threshold > 0)
    # always resampling (the default): second-stage weights uniform
    a = apf()
    assert bool(a.resampled)
    np.testing.assert_allclose(a.log_weights, -np.log(100), rtol=1e-12)
    # the prior proposal with the same first stage: the same ESS, weights not uniform
    p = apf(proposal="prior")
    assert float(p.ess) == pytest.approx(float(a.ess), rel=1e-12)
    assert np.ptp(p.log_weights) > 1.0


def test_apf_point_predictive_is_the_bootstrap_first_stage():
    """predictive="point": the first-stage weights are the likelihoods at
    the fᵢ (the bootstrap PF's on E), and with threshold 0 the second stage
    leaves w̃ᵢ N(y; h(xᵢ), R) / N(y; h(fᵢ), R)."""
    E, Q, key = draws(0, 100), enkit.Dense(QM), jax.random.key(2)
    a = pf.auxiliary_pf(E, Y1, H1, RS, Q=Q, key=key, predictive="point", threshold=0.0)
    boot = pf.bootstrap_pf(E, Y1, H1, RS, key=key, threshold=0.0)
    assert float(a.ess) == pytest.approx(float(boot.ess), rel=1e-12)
    assert not bool(a.resampled)
    # no resampling: w ∝ w̃ p(y | x) / p̂(y | f) = p(y | x), x = f + η
    lik = pf.gaussian_log_likelihood(a.ensemble @ H1.T, Y1, RS)
    np.testing.assert_allclose(a.log_weights, pf.normalize_log_weights(lik), rtol=1e-10,
                               atol=1e-12)


@pytest.fixture(scope="module")
def apf_errors():
    """RMS errors (over SEEDS) of the APF's weighted mean and variances
    against the Kalman posterior (prior covariance P0 + Q), N = 100 and
    1600; and exp(log evidence − exact) per seed."""
    xa, Pa = kalman(MU, P0 + QM, H1, R1, Y1)
    S = H1 @ (P0 + QM) @ H1.T + R1
    d = Y1 - H1 @ MU
    exact = -0.5 * (d @ np.linalg.solve(S, d) + np.log(np.linalg.det(2 * np.pi * S)))

    def one(key, N):
        kp, ka = jax.random.split(key)
        res = pf.auxiliary_pf(draws(kp, N), Y1, H1, RS, Q=enkit.Dense(QM), key=ka)
        return (*moments(res), jnp.exp(res.log_evidence - exact))

    keys = jax.random.split(jax.random.key(3), SEEDS)
    out = {}
    for N in NS:
        m, v, z = jax.jit(jax.vmap(partial(one, N=N)))(keys)
        out[N] = (float(np.sqrt(np.mean((m - xa) ** 2))),
                  float(np.sqrt(np.mean((v - np.diag(Pa)) ** 2))), np.asarray(z))
    return out


def test_apf_converges_to_kalman_and_its_evidence_is_unbiased(apf_errors):
    """The APF with the prior proposal and the Gaussian predictive (a
    proposal that is not the optimal one, the weights correcting it)."""
    small, large = apf_errors[NS[0]], apf_errors[NS[1]]
    assert large[0] < 0.045 and large[1] < 0.045, large
    for k in (0, 1):  # N × 16 → error / 4
        assert 2.0 < small[k] / large[k] < 8.0, (small, large)
    for z in (small[2], large[2]):  # E[p̂(y)] = p(y)
        assert abs(z.mean() - 1.0) < 4 * z.std() / np.sqrt(SEEDS) + 1e-3


# --- the ensemble Kalman particle filter -------------------------------------


def test_enkpf_gamma_one_is_the_stochastic_enkf():
    E, key = draws(1, 100), jax.random.key(7)
    res = pf.enkpf(E, Y1, H1, RS, gamma=1.0, key=key)
    np.testing.assert_allclose(res.log_weights, -np.log(100), rtol=1e-12)
    assert float(res.ess) == pytest.approx(100.0)
    # the same draws: enkit.enkf with the first-stage key and the draws in
    # R's dtype (R.sample, as the particle filters make them)
    Ea = enkit.enkf(E, Y1, H1, RS, key=jax.random.split(key, 3)[1], draw_dtype=None)
    np.testing.assert_allclose(res.ensemble, Ea, rtol=1e-12, atol=1e-12)
    # log evidence: the Gaussian one of the ensemble's mean and covariance
    P = np.cov(E.T)
    S = H1 @ P @ H1.T + R1
    d = Y1 - H1 @ E.mean(0)
    exact = -0.5 * (d @ np.linalg.solve(S, d) + np.log(np.linalg.det(2 * np.pi * S)))
    assert float(res.log_evidence) == pytest.approx(float(exact), rel=1e-10)


def test_enkpf_gamma_zero_is_the_bootstrap_pf():
    E, key = draws(2, 100), jax.random.key(8)
    res = pf.enkpf(E, Y1, H1, RS, gamma=0.0, key=key, threshold=0.0)
    boot = pf.bootstrap_pf(E, Y1, H1, RS, key=key, threshold=0.0)
    np.testing.assert_allclose(res.log_weights, boot.log_weights, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(res.ensemble, E)
    assert float(res.log_evidence) == pytest.approx(float(boot.log_evidence), rel=1e-12)
    assert float(res.ess) == pytest.approx(float(boot.ess), rel=1e-12)
    # carried weights enter α as they enter the bootstrap weights
    lw = np.linspace(-1.0, 1.0, 100)
    res = pf.enkpf(E, Y1, H1, RS, gamma=0.0, key=key, threshold=0.0, log_weights=lw)
    carried = pf.bootstrap_pf(E, Y1, H1, RS, key=key, threshold=0.0, log_weights=lw)
    np.testing.assert_allclose(res.log_weights, carried.log_weights, rtol=1e-12, atol=1e-12)
    # resampled: the particles are forecast particles, without jitter
    res = pf.enkpf(E, Y1, H1, RS, gamma=0.0, key=key)
    assert bool(res.resampled)
    rows = {tuple(r) for r in np.asarray(E)}
    assert all(tuple(r) in rows for r in np.asarray(res.ensemble))
    # small γ: the weights tend to the bootstrap ones, the difference O(γ)
    diff = [np.max(np.abs(pf.enkpf(E, Y1, H1, RS, gamma=g, key=key, threshold=0.0).log_weights
                          - boot.log_weights)) for g in (1e-4, 1e-6)]
    assert diff[1] < 1e-3 and 50 < diff[0] / diff[1] < 200, diff


GAMMAS = np.array([0.0, 0.25, 0.5, 1.0])
BANDWIDTHS = np.array([0.2, 0.5, 1.0])


@pytest.fixture(scope="module")
def hybrid_errors():
    """RMS errors (over SEEDS) of the weighted mean and variances against
    the Kalman posterior at N = 100 and 1600: enkpf for each γ in GAMMAS,
    gaussian_mixture_filter for each bandwidth (one vmap over each)."""
    xa, Pa = kalman(MU, P0, H1, R1, Y1)

    def enkpf_one(key, gamma, N):
        kp, ka = jax.random.split(key)
        return moments(pf.enkpf(draws(kp, N), Y1, H1, RS, gamma=gamma, key=ka))

    def gmf_one(key, bandwidth, N):
        kp, ka = jax.random.split(key)
        return moments(pf.gaussian_mixture_filter(draws(kp, N), Y1, H1, RS, key=ka,
                                                  bandwidth=bandwidth))

    keys = jax.random.split(jax.random.key(4), SEEDS)
    out = {}
    for name, f, params in (("enkpf", enkpf_one, GAMMAS), ("gmf", gmf_one, BANDWIDTHS)):
        for N in NS:
            run = jax.jit(jax.vmap(jax.vmap(partial(f, N=N), (0, None)), (None, 0)))
            m, v = run(keys, params)  # (params, SEEDS, 2)
            out[name, N] = (np.sqrt(np.mean((m - xa) ** 2, axis=(1, 2))),
                            np.sqrt(np.mean((v - np.diag(Pa)) ** 2, axis=(1, 2))))
    return out


@pytest.mark.parametrize("name", ["enkpf", "gmf"])
def test_hybrids_converge_to_kalman_for_every_split(hybrid_errors, name):
    """Every γ (enkpf) and every bandwidth (gaussian_mixture_filter, with
    shrinkage) is consistent on a linear-Gaussian problem: the errors of
    the mean and variances fall like N^(-1/2)."""
    small, large = hybrid_errors[name, NS[0]], hybrid_errors[name, NS[1]]
    for k in (0, 1):
        assert np.all(large[k] < 0.045), (name, large)
        ratio = small[k] / large[k]
        assert np.all((ratio > 2.0) & (ratio < 8.0)), (name, ratio)


# --- the Gaussian-mixture filter ---------------------------------------------


def test_gmf_bandwidth_zero_is_the_bootstrap_pf():
    E, key = draws(3, 100), jax.random.key(9)
    res = pf.gaussian_mixture_filter(E, Y1, H1, RS, key=key, bandwidth=0.0, threshold=0.0)
    boot = pf.bootstrap_pf(E, Y1, H1, RS, key=key, threshold=0.0)
    np.testing.assert_allclose(res.log_weights, boot.log_weights, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.ensemble, E, rtol=1e-14, atol=1e-15)  # x̄ + 1·(xᵢ − x̄)
    assert float(res.log_evidence) == pytest.approx(float(boot.log_evidence), rel=1e-12)
    lw = np.linspace(-1.0, 1.0, 100)
    res = pf.gaussian_mixture_filter(E, Y1, H1, RS, key=key, bandwidth=0.0, threshold=0.0,
                                     log_weights=lw)
    boot = pf.bootstrap_pf(E, Y1, H1, RS, key=key, threshold=0.0, log_weights=lw)
    np.testing.assert_allclose(res.log_weights, boot.log_weights, rtol=1e-12, atol=1e-12)


def test_gmf_bandwidth_one_draws_the_kalman_posterior_of_the_ensemble():
    """h = 1 with shrinkage: one kernel N(x̄, P); uniform weights and draws
    of its Kalman posterior."""
    E = draws(4, 4000)
    res = pf.gaussian_mixture_filter(E, Y1, H1, RS, key=jax.random.key(10), bandwidth=1.0)
    np.testing.assert_allclose(res.log_weights, -np.log(4000), rtol=1e-12)
    xa, Pa = kalman(E.mean(0), np.cov(E.T), H1, R1, Y1)
    X = np.asarray(res.ensemble)
    assert np.all(np.abs(X.mean(0) - xa) < 4 * np.sqrt(np.diag(Pa) / 4000))
    np.testing.assert_allclose(np.cov(X.T), Pa, atol=0.03)
    # without shrinkage the kernels sit on the particles: the weights vary
    wide = pf.gaussian_mixture_filter(E, Y1, H1, RS, key=jax.random.key(10), bandwidth=1.0,
                                      shrink=False, threshold=0.0)
    assert np.ptp(wide.log_weights) > 0.1


# a bimodal prior ½ N(−2, 0.5²) + ½ N(2, 0.5²) in x₁ (x₂ ~ N(0, 1) apart), y = x₁ + v
B_SD, B_R, B_Y, B_N = 0.5, 1.0, np.array([0.5]), 4000


def bimodal_posterior(sd2, c):
    """The closed-form posterior of ½ N(−c, sd2) + ½ N(c, sd2) under y = x₁ + v:
    (weight of the mode at −c, its mean, the other mode's mean, the modes'
    variance)."""
    s = sd2 + B_R
    lw = np.array([-(B_Y[0] - mu) ** 2 / (2 * s) for mu in (-c, c)])
    w = np.exp(lw - lw.max())
    k = sd2 / s
    return w[0] / w.sum(), -c + k * (B_Y[0] + c), c + k * (B_Y[0] - c), sd2 * (1 - k)


def test_gmf_represents_both_modes_of_a_bimodal_posterior():
    """Against the closed-form posterior of the prior the kernels represent
    (modes at ±2a, variance a² 0.5² + h² P: shrinkage keeps the global
    moments, not the modes'), and of the true prior for a small h."""
    rng = np.random.default_rng(5)
    E = np.stack([rng.choice([-2.0, 2.0], B_N) + B_SD * rng.normal(size=B_N),
                  rng.normal(size=B_N)], axis=1)
    P = np.var(E[:, 0], ddof=1)
    run = partial(pf.gaussian_mixture_filter, E, B_Y, np.array([[1.0, 0.0]]),
                  enkit.Scalar(B_R, 1), key=jax.random.key(11))
    for h, exact, tol in ((0.1, bimodal_posterior(0.99 * B_SD ** 2 + 0.01 * P, 2 * 0.99 ** 0.5),
                           1.0), (0.05, bimodal_posterior(B_SD ** 2, 2.0), 1.5)):
        res = run(bandwidth=h)
        X, w = np.asarray(res.ensemble), np.exp(np.asarray(res.log_weights))
        left = X[:, 0] < 0
        m0 = np.average(X[left, 0], weights=w[left])
        m1 = np.average(X[~left, 0], weights=w[~left])
        var = np.average((X[~left, 0] - m1) ** 2, weights=w[~left])
        got = np.array([w[left].sum(), m0, m1, var])
        assert np.all(np.abs(got - exact) < tol * np.array([0.02, 0.06, 0.03, 0.03])), (h, got,
                                                                                        exact)


# --- errors, degeneracy, float32 ---------------------------------------------

SCHEMES = {
    "auxiliary_pf": partial(pf.auxiliary_pf, Q=enkit.Dense(QM)),
    "enkpf": partial(pf.enkpf, gamma=0.3),
    "gaussian_mixture_filter": pf.gaussian_mixture_filter,
}


def test_bad_arguments():
    E = draws(0, 10)
    for name, scheme in SCHEMES.items():
        with pytest.raises(TypeError, match="pass key="):
            scheme(E, Y1, H1, R1)
        with pytest.raises(ValueError, match="threshold"):
            scheme(E, Y1, H1, R1, key=jax.random.key(0), threshold=1.5)
        with pytest.raises(ValueError, match=r"shape \(N,\)"):
            scheme(E, Y1, H1, R1, key=jax.random.key(0), log_weights=jnp.zeros(3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        pf.enkpf(E, Y1, H1, R1, gamma=1.5, key=key)
    with pytest.raises(TypeError, match="gamma"):
        pf.enkpf(E, Y1, H1, R1, key=key)
    with pytest.raises(ValueError, match=r"bandwidth must be in \[0, 1\] with shrink"):
        pf.gaussian_mixture_filter(E, Y1, H1, R1, key=key, bandwidth=1.5)
    pf.gaussian_mixture_filter(E, Y1, H1, R1, key=key, bandwidth=1.5, shrink=False)
    with pytest.raises(ValueError, match="predictive must be one of"):
        pf.auxiliary_pf(E, Y1, H1, R1, Q=QM, key=key, predictive="exact")
    with pytest.raises(ValueError, match="proposal must be one of"):
        pf.auxiliary_pf(E, Y1, H1, R1, Q=QM, key=key, proposal="kalman")
    with pytest.raises(TypeError, match="Q"):
        pf.auxiliary_pf(E, Y1, H1, R1, key=key)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_degenerate_weights(name):
    """Outside jit an error; inside jit NaN particles flagged degenerate
    (and a second call with new values does not recompile)."""
    scheme = SCHEMES[name]
    E, far, tiny = draws(9, 100), np.array([1e200]), enkit.Scalar(1e-200, 1)
    with pytest.raises(pf.WeightDegeneracyError, match="zero weight"):
        scheme(E, far, H1, tiny, key=jax.random.key(0))
    bad = np.array(E)
    bad[[3, 7]] = np.nan
    with pytest.raises(pf.WeightDegeneracyError):
        scheme(bad, Y1, H1, RS, key=jax.random.key(0))
    traces = []

    @jax.jit
    def f(E, y, R, k):
        traces.append(1)
        return scheme(E, y, H1, R, key=k)

    res = f(E, far, tiny, jax.random.key(0))
    assert bool(res.degenerate) and not bool(res.resampled)
    assert np.all(np.isnan(res.ensemble)) and np.all(np.isnan(res.log_weights))
    ok = f(draws(10, 100), Y1, RS, jax.random.key(1))  # new values: no new trace
    assert not bool(ok.degenerate) and np.all(np.isfinite(ok.ensemble))
    assert len(traces) == 1


@pytest.mark.parametrize("name", list(SCHEMES))
def test_float32_smoke(name):
    f32 = np.float32
    res = SCHEMES[name](draws(0, 64).astype(f32), Y1.astype(f32), H1.astype(f32),
                        enkit.Scalar(f32(R1), 1), key=jax.random.key(1))
    assert res.ensemble.dtype == jnp.float32 and res.log_weights.dtype == jnp.float32
    assert np.all(np.isfinite(res.ensemble)) and np.all(np.isfinite(res.log_weights))


# --- through enkit.assimilate ---------------------------------------------------

K2, N2 = 6, 800
DRIVEN = {
    "auxiliary_pf": (partial(pf.auxiliary_pf, Q=enkit.Dense(Q2)), None),
    "enkpf": (partial(pf.enkpf, gamma=0.3), enkit.Dense(Q2)),
    "gaussian_mixture_filter": (pf.gaussian_mixture_filter, enkit.Dense(Q2)),
}


@pytest.fixture(scope="module")
def cycled():
    rng = np.random.default_rng(0)
    x, ys = rng.normal(size=2), []
    for _ in range(K2):
        x = A2 @ x + rng.multivariate_normal(np.zeros(2), Q2)
        ys.append(H1 @ x + np.sqrt(R1) * rng.normal(size=1))
    ys = np.array(ys)
    E0 = np.random.default_rng(1).normal(size=(N2, 2))
    runs = {name: enkit.assimilate(linear_model, E0, ys, scheme, h=H1, R=RS, key=3,
                                   model_noise=noise)
            for name, (scheme, noise) in DRIVEN.items()}
    return kalman_filter(np.zeros(2), np.eye(2), ys), runs


@pytest.mark.parametrize("name", list(DRIVEN))
def test_driver_runs_and_follows_kalman(cycled, name):
    (mean, std), res = cycled[0], cycled[1][name]
    assert res.log_weights.shape == (K2, N2) and res.ess.shape == (K2,)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(res.log_weights, axis=1), 0.0,
                               atol=1e-10)
    assert np.max(np.abs(res.analysis_mean - mean)) < 0.1
    np.testing.assert_allclose(res.analysis_spread, std, rtol=0.15)
    if name == "enkpf":  # resampled every cycle: uniform weights carried
        np.testing.assert_allclose(res.log_weights, -np.log(N2), rtol=1e-12)


def test_driver_refuses_model_noise_twice_for_the_apf():
    with pytest.raises(ValueError, match="added twice"):
        enkit.assimilate(linear_model, draws(0, 16), np.zeros((2, 1)), DRIVEN["auxiliary_pf"][0],
                         h=H1, R=RS, key=0, model_noise=enkit.Dense(Q2))


def test_driver_float32_callable_h_and_a_missing_observation():
    """The APF (optimal proposal: H the Jacobian of the masked callable h)
    through the driver in float32; no observation at cycle 2: the weights
    of cycle 1 are handed on."""
    f32 = np.float32
    mask = np.ones((K2, 1), bool)
    mask[1] = False
    ys = np.random.default_rng(2).normal(size=(K2, 1)).astype(f32)
    scheme = partial(pf.auxiliary_pf, Q=enkit.Dense(Q2.astype(f32)), proposal="optimal")
    res = enkit.assimilate(linear_model, draws(11, 32).astype(f32), ys, scheme,
                           h=lambda x: jnp.asarray(H1, f32) @ x, R=enkit.Scalar(f32(R1), 1),
                           key=0, mask=mask)
    for a in (res.log_weights, res.ess, res.analysis_mean, res.ensemble):
        assert a.dtype == jnp.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(res.log_weights[1], res.log_weights[0])
