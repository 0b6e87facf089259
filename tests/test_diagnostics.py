"""Diagnostics against cases with known answers (closed forms, NumPy/SciPy,
calibrated and mis-calibrated ensembles, a linear twin with the exact KF)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import enkit
from enkit import diagnostics as dg

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy < 2 has only trapz


def _spd(rng, k, jitter=0.5):
    A = rng.normal(size=(k, k))
    return A @ A.T / k + jitter * np.eye(k)


def _exact_ensemble(rng, N, mean, cov):
    """An (N, n) ensemble whose sample mean and covariance are exactly given."""
    E0 = rng.normal(size=(N, mean.shape[0]))
    return np.asarray(enkit.ensemble_with_covariance(jnp.asarray(E0), mean, cov))


# ---------------------------------------------------------------- spread, skill


def test_spread_is_ensemble_spread_over_leading_axes():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(3, 2, 6, 4)) * rng.uniform(0.5, 2, size=(3, 2, 1, 1))
    s = dg.spread(E)
    assert s.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(s[i, j], enkit.ensemble_spread(E[i, j]), rtol=1e-13)
    np.testing.assert_allclose(dg.spread(E[0, 0]), enkit.ensemble_spread(E[0, 0]))


def _ensembles(rng, K, N, n, member_scale):
    """Per case a random N(μ, σ²); truth from it, members from N(μ, (cσ)²)."""
    mu = rng.normal(scale=2.0, size=(K, 1, n))
    sig = rng.uniform(0.2, 3.0, size=(K, 1, n))
    truth = (mu + sig * rng.normal(size=(K, 1, n)))[:, 0]
    E = mu + member_scale * sig * rng.normal(size=(K, N, n))
    return E, truth


def test_spread_skill_calibrated_and_underdispersive():
    rng = np.random.default_rng(1)
    N = 10
    E, truth = _ensembles(rng, 4000, N, 3, 1.0)
    s, e = dg.spread(E), dg.rmse(E.mean(1), truth)
    ratio = dg.spread_skill_ratio(s, e)
    corrected = dg.spread_skill_ratio(s, e, ensemble_size=N)
    np.testing.assert_allclose(corrected, ratio * np.sqrt((N + 1) / N), rtol=1e-14)
    assert abs(corrected - 1.0) < 0.05
    curve = dg.spread_skill(E, truth, bins=6)
    assert curve.spread.shape == curve.rmse.shape == curve.count.shape == (6,)
    assert float(curve.count.sum()) == 4000 * 3
    assert np.all(np.diff(curve.spread) > 0)
    # with the variance of each case known the binning is exact: NumPy reference
    var = E.var(1, ddof=1).ravel()
    err2 = ((E.mean(1) - truth) ** 2).ravel()
    order = np.argsort(var)
    for b, idx in enumerate(np.array_split(order, 6)):
        np.testing.assert_allclose(curve.spread[b], np.sqrt(var[idx].mean()), rtol=1e-12)
        np.testing.assert_allclose(curve.rmse[b], np.sqrt(err2[idx].mean()), rtol=1e-12)
    # calibrated: rmse = sqrt((N+1)/N) spread in every bin (with many members,
    # so that binning on the sampled spread selects on the true one)
    N = 200
    E, truth = _ensembles(rng, 3000, N, 2, 1.0)
    curve = dg.spread_skill(E, truth, bins=5)
    np.testing.assert_allclose(curve.rmse, np.sqrt((N + 1) / N) * curve.spread, rtol=0.1)
    # under-dispersive (members at half the spread): error twice the spread
    Eu, tu = _ensembles(rng, 3000, N, 2, 0.5)
    cu = dg.spread_skill(Eu, tu, bins=5)
    assert np.all(cu.rmse > 1.7 * cu.spread)
    assert dg.spread_skill_ratio(dg.spread(Eu), dg.rmse(Eu.mean(1), tu), ensemble_size=N) < 0.7


# ------------------------------------------------------------- rank histograms


def test_rank_histogram_flat_when_calibrated_u_shaped_when_underdispersive():
    rng = np.random.default_rng(2)
    N = 9
    E, truth = _ensembles(rng, 2000, N, 5, 1.0)
    counts = np.asarray(dg.rank_histogram(E, truth))
    assert counts.shape == (N + 1,) and counts.sum() == 2000 * 5
    assert stats.chisquare(counts).pvalue > 0.01
    # NumPy reference of the rank: members below the truth
    ref = np.bincount((E < truth[:, None, :]).sum(1).ravel(), minlength=N + 1)
    np.testing.assert_array_equal(counts, ref)
    Eu, tu = _ensembles(rng, 2000, N, 5, 0.5)
    cu = np.asarray(dg.rank_histogram(Eu, tu))
    assert stats.chisquare(cu).pvalue < 1e-10
    mean = cu.mean()
    assert cu[0] > 2 * mean and cu[-1] > 2 * mean and np.all(cu[2:-2] < mean)
    # a positively biased ensemble: the truth ranks low (a slope, not a U)
    cb = np.asarray(dg.rank_histogram(E + 1.0, truth))
    assert cb[0] > 2 * mean and cb[-1] < 0.5 * mean


def test_rank_histogram_ties_shared_or_broken_at_random():
    rng = np.random.default_rng(3)
    N, cases = 4, 20000
    # members and truth exchangeable on {0, 1, 2}: many ties
    vals = rng.integers(0, 3, size=(cases, N + 1, 1)).astype(float)
    E, truth = vals[:, :N], vals[:, N]
    naive = np.bincount((E < truth[:, None]).sum(1).ravel(), minlength=N + 1)
    assert stats.chisquare(naive).pvalue < 1e-10  # ignoring ties is far from flat
    shared = np.asarray(dg.rank_histogram(E, truth))
    drawn = np.asarray(dg.rank_histogram(E, truth, key=jax.random.key(0)))
    np.testing.assert_allclose(shared.sum(), cases)
    np.testing.assert_array_equal(drawn, np.round(drawn))
    assert drawn.sum() == cases
    for c in (shared, drawn):
        assert stats.chisquare(c).pvalue > 0.01
    # shared counts are the exact expectation of the random ones (one case)
    one = np.asarray(dg.rank_histogram(np.array([[0.0], [1.0], [1.0], [2.0]]), np.array([1.0])))
    np.testing.assert_allclose(one, [0, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_array_equal(
        dg.rank_histogram(E, truth, key=7), dg.rank_histogram(E, truth, key=jax.random.key(7))
    )


def test_observation_rank_histogram_needs_the_perturbation():
    rng = np.random.default_rng(4)
    K, N, n, m = 3000, 7, 3, 2
    E, x = _ensembles(rng, K, N, n, 1.0)
    H = rng.normal(size=(m, n))
    r = 25.0  # large observation noise compared with the ensemble's spread
    y = x @ H.T + np.sqrt(r) * rng.normal(size=(K, m))
    c = np.asarray(dg.observation_rank_histogram(E, y, H, r, key=1))
    assert c.shape == (N + 1,) and c.sum() == K * m
    assert stats.chisquare(c).pvalue > 0.01
    # without the R noise in the members (R ≈ 0) the ensemble looks under-dispersive
    c0 = np.asarray(dg.observation_rank_histogram(E, y, H, 1e-12, key=1))
    assert c0[0] > 1.5 * c0.mean() and c0[-1] > 1.5 * c0.mean()
    c_callable = dg.observation_rank_histogram(E, y, lambda v: H @ v, r, key=1)
    np.testing.assert_allclose(c_callable, c)


# --------------------------------------------------------- innovation statistics


@pytest.mark.parametrize("N", [4, 12], ids=["N<m (Woodbury)", "N>m"])
@pytest.mark.parametrize("rform", ["scalar", "diagonal", "dense"])
def test_innovation_statistics_and_log_likelihood_against_scipy(N, rform):
    rng = np.random.default_rng(5)
    n, m, K = 6, 7, 3
    H = rng.normal(size=(m, n))
    Rd = {"scalar": 0.7 * np.eye(m), "diagonal": np.diag(rng.uniform(0.3, 2, m)), "dense": _spd(rng, m)}[rform]
    R = {"scalar": 0.7, "diagonal": np.diag(Rd), "dense": Rd}[rform]
    E = rng.normal(size=(K, N, n)) * 1.5 + 0.3
    y = rng.normal(size=(K, m))
    st = dg.innovation_statistics(E, y, H, R)
    ll = dg.log_likelihood(E, y, H, R)
    assert st.d.shape == (K, m) and st.chi2.shape == (K,) and ll.shape == (K,)
    for k in range(K):
        HE = E[k] @ H.T
        S = np.cov(HE.T, ddof=1) + Rd
        d = y[k] - HE.mean(0)
        np.testing.assert_allclose(st.d[k], d, rtol=1e-12)
        np.testing.assert_allclose(st.S[k], S, rtol=1e-11)
        chi2 = d @ np.linalg.solve(S, d)
        np.testing.assert_allclose(st.chi2[k], chi2, rtol=1e-9)
        np.testing.assert_allclose(st.chi2_normalised[k], chi2 / m, rtol=1e-9)
        np.testing.assert_allclose(dg.innovation_chi2(d, S), chi2, rtol=1e-9)
        np.testing.assert_allclose(
            ll[k], stats.multivariate_normal(HE.mean(0), S).logpdf(y[k]), rtol=1e-10
        )
    # callable h, one cycle, R as an operator
    one = dg.log_likelihood(E[0], y[0], lambda v: H @ v, enkit.as_covariance(R, m))
    np.testing.assert_allclose(one, ll[0], rtol=1e-12)
    # a shared ensemble broadcasts against a series of observations
    np.testing.assert_allclose(dg.log_likelihood(E[0], y, H, R)[0], ll[0], rtol=1e-12)


def _linear_twin(K=5000, seed=6):
    """Exact Kalman filter on x_{k+1} = M x_k + q, y = H x + ε (NumPy)."""
    rng = np.random.default_rng(seed)
    n, m = 4, 3
    M = 0.9 * np.linalg.qr(rng.normal(size=(n, n)))[0]
    Q = _spd(rng, n, 0.3)
    H = rng.normal(size=(m, n))
    R = np.array([[1.0, 0.4, 0.0], [0.4, 0.8, -0.2], [0.0, -0.2, 1.5]])
    cq, cr = np.linalg.cholesky(Q), np.linalg.cholesky(R)
    x, xa, Pa = rng.normal(size=n), np.zeros(n), np.eye(n)
    d_ob, d_ab, S_all = np.empty((K, m)), np.empty((K, m)), np.empty((K, m, m))
    HBH = np.zeros((m, m))
    for k in range(K):
        x = M @ x + cq @ rng.normal(size=n)
        y = H @ x + cr @ rng.normal(size=m)
        xb, Pb = M @ xa, M @ Pa @ M.T + Q
        S = H @ Pb @ H.T + R
        G = Pb @ H.T @ np.linalg.inv(S)
        xa, Pa = xb + G @ (y - H @ xb), (np.eye(n) - G @ H) @ Pb
        d_ob[k], d_ab[k], S_all[k] = y - H @ xb, y - H @ xa, S
        HBH += H @ Pb @ H.T / K
    return d_ob, d_ab, S_all, R, HBH


@pytest.fixture(scope="module")
def twin():
    return _linear_twin()


def test_chi2_of_exact_kalman_filter_averages_m(twin):
    d_ob, _, S_all, R, _ = twin
    K, m = d_ob.shape
    chi2 = np.asarray(jax.vmap(dg.innovation_chi2)(d_ob, S_all))
    assert abs(chi2.mean() - m) < 4 * np.sqrt(2 * m / K)
    # and it detects a wrong innovation covariance
    wrong = np.asarray(jax.vmap(dg.innovation_chi2)(d_ob, S_all + 2 * R))
    assert wrong.mean() < m - 20 * np.sqrt(2 * m / K)


def test_chi2_of_consistent_ensemble_draws_averages_m():
    rng = np.random.default_rng(7)
    n, m, N, K = 5, 4, 8, 4000
    B, R, H = _spd(rng, n), _spd(rng, m), rng.normal(size=(m, n))
    mu = rng.normal(size=n)
    E = _exact_ensemble(rng, N, mu, B)  # sample mean mu, covariance B exactly
    x = mu + rng.normal(size=(K, n)) @ np.linalg.cholesky(B).T
    y = x @ H.T + rng.normal(size=(K, m)) @ np.linalg.cholesky(R).T
    st = dg.innovation_statistics(E, y, H, R)
    assert abs(float(st.chi2_normalised.mean()) - 1.0) < 4 * np.sqrt(2 / (m * K))
    too_small = dg.innovation_statistics(E, y, H, 0.2 * R)
    assert float(too_small.chi2_normalised.mean()) > 1.3


def test_desroziers_recovers_R_and_HBH(twin):
    d_ob, d_ab, _, R, HBH = twin
    est = dg.desroziers(d_ob, d_ab)
    rel = lambda A, B: np.linalg.norm(A - B) / np.linalg.norm(B)
    assert rel(est.R, R) < 0.1
    assert np.all(np.abs(np.diag(est.R) / np.diag(R) - 1) < 0.1)
    assert rel(est.HBHt, HBH) < 0.1
    assert rel(est.innovation, HBH + R) < 0.1
    # H A Hᵀ = H B Hᵀ − H B Hᵀ S⁻¹ H B Hᵀ
    HAH = HBH - HBH @ np.linalg.solve(HBH + R, HBH)
    assert rel(est.HAHt, HAH) < 0.15
    np.testing.assert_allclose(est.R, est.R.T)
    diag = dg.desroziers_diagonal(d_ob, d_ab)
    for full, dd in zip(est[:4], diag[:4]):
        np.testing.assert_allclose(dd, np.diag(full), rtol=1e-12)
    # missing observations (NaN where masked) give the same, from fewer pairs
    rng = np.random.default_rng(8)
    mask = rng.uniform(size=d_ob.shape) < 0.8
    est_m = dg.desroziers(np.where(mask, d_ob, np.nan), np.where(mask, d_ab, np.nan), mask=mask)
    assert rel(est_m.R, R) < 0.1
    both = mask[:, 0] & mask[:, 1]
    assert est_m.count[0, 1] == both.sum()
    ref = 0.5 * (np.mean(d_ab[both, 0] * d_ob[both, 1]) + np.mean(d_ab[both, 1] * d_ob[both, 0]))
    np.testing.assert_allclose(est_m.R[0, 1], ref, rtol=1e-12)
    dm = dg.desroziers_diagonal(d_ob, d_ab, mask=mask)
    np.testing.assert_allclose(dm.R, np.diag(est_m.R), rtol=1e-12)
    # an observation never present gives NaN, not a silent zero
    mask[:, 2] = False
    assert np.isnan(dg.desroziers_diagonal(d_ob, d_ab, mask=mask).R[2])


# ------------------------------------------------------------------------- CRPS


def test_crps_against_pairwise_formula_and_integral():
    rng = np.random.default_rng(9)
    E, x = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 3))
    out = dg.crps(E, x)
    plain = dg.crps(E, x, fair=False)
    assert out.per_variable.shape == (2, 3) and out.mean.shape == (2,)
    a = np.abs(E - x[:, None]).mean(1)
    pair = np.abs(E[:, :, None] - E[:, None, :]).sum((1, 2))
    np.testing.assert_allclose(out.per_variable, a - pair / (2 * 5 * 4), rtol=1e-12)
    np.testing.assert_allclose(plain.per_variable, a - pair / (2 * 25), rtol=1e-12)
    np.testing.assert_allclose(out.mean, out.per_variable.mean(-1), rtol=1e-14)
    # the plain form is ∫ (F_ens(z) − 1{z ≥ x})² dz
    z = np.linspace(-8, 8, 400001)
    F = (E[0, :, 0][:, None] <= z).mean(0)
    integral = _trapezoid((F - (z >= x[0, 0])) ** 2, z)
    np.testing.assert_allclose(plain.per_variable[0, 0], integral, atol=2e-4)
    # Gaussian closed form against the same integral
    mu, sig, xx = 0.3, 1.7, -0.8
    G = stats.norm.cdf(z, mu, sig)
    np.testing.assert_allclose(
        dg.crps_gaussian(mu, sig, xx), _trapezoid((G - (z >= xx)) ** 2, z), atol=5e-5
    )


def test_fair_crps_matches_gaussian_for_large_ensembles():
    rng = np.random.default_rng(10)
    N = 20000
    mu, sig = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 0.5, 2.0, 1.5])
    x = np.array([0.2, -1.0, 1.0, 0.5])
    E = mu + sig * rng.normal(size=(N, 4))
    got = np.asarray(dg.crps(E, x).per_variable)
    exact = np.asarray(dg.crps_gaussian(mu, sig, x))
    # Monte-Carlo standard error of the U-statistic, sd(|x_i − x| − mean_j |x_i − x_j|)/√N
    xs = np.sort(E, axis=0)
    i = np.arange(N)[:, None]
    cs = np.cumsum(xs, axis=0)
    pair = xs * i - (cs - xs) + (cs[-1] - cs) - xs * (N - 1 - i)  # Σ_j |x_(i) − x_j|
    se = np.std(np.abs(xs - x) - pair / (N - 1), axis=0) / np.sqrt(N)
    assert np.all(np.abs(got - exact) < 4 * se)
    assert np.all(4 * se < 0.05 * exact)  # the tolerance is tight enough to mean something


def test_fair_crps_is_unbiased_for_small_ensembles():
    rng = np.random.default_rng(11)
    reps, N = 20000, 3
    mu, sig, x = 0.5, 1.2, np.array([0.0, 2.0, -1.0])
    E = mu + sig * rng.normal(size=(reps, N, 3))
    exact = np.asarray(dg.crps_gaussian(mu, sig, x))
    fair = np.asarray(dg.crps(E, np.broadcast_to(x, (reps, 3))).per_variable)
    plain = np.asarray(dg.crps(E, np.broadcast_to(x, (reps, 3)), fair=False).per_variable)
    se = fair.std(0) / np.sqrt(reps)
    assert np.all(np.abs(fair.mean(0) - exact) < 4 * se)
    # the plain score is too large by E|X − X'| / (2N) = σ / (√π N)
    np.testing.assert_allclose(plain.mean(0) - exact, sig / (np.sqrt(np.pi) * N), atol=4 * se.max())
    assert np.all(np.abs(plain.mean(0) - exact) > 10 * se)


# ------------------------------------------------------------------------- DFS


def test_dfs_equals_trace_of_exact_kalman_gain():
    rng = np.random.default_rng(12)
    n, m, N = 5, 3, 12
    B, R, H = _spd(rng, n), _spd(rng, m), rng.normal(size=(m, n))
    E = _exact_ensemble(rng, N, rng.normal(size=n), B)
    np.testing.assert_allclose(np.cov(E.T), B, atol=1e-12)
    K = B @ H.T @ np.linalg.inv(H @ B @ H.T + R)
    HK = H @ K
    for out in (dg.dfs(E, H, R), dg.dfs(E, lambda v: H @ v, R), dg.dfs_exact(B, H, R)):
        np.testing.assert_allclose(out.total, np.trace(HK), rtol=1e-10)
        np.testing.assert_allclose(out.per_observation, np.diag(HK), rtol=1e-10)
    assert 0 < float(dg.dfs_exact(B, H, R).total) < m
    # more accurate observations carry more information
    assert dg.dfs_exact(B, H, 0.01 * R).total > dg.dfs_exact(B, H, R).total + 0.5


@pytest.mark.parametrize("rform", ["scalar", "diagonal", "dense"])
def test_dfs_ensemble_space_for_many_observations(rform):
    rng = np.random.default_rng(13)
    n, m, N = 6, 9, 5  # m > N: the Woodbury path
    H = rng.normal(size=(m, n))
    Rd = {"scalar": 0.5 * np.eye(m), "diagonal": np.diag(rng.uniform(0.3, 2, m)), "dense": _spd(rng, m)}[rform]
    R = {"scalar": 0.5, "diagonal": np.diag(Rd), "dense": Rd}[rform]
    E = rng.normal(size=(2, N, n))
    out = dg.dfs(E, H, R)
    for k in range(2):
        HPH = np.cov((E[k] @ H.T).T)
        HK = HPH @ np.linalg.inv(HPH + Rd)
        np.testing.assert_allclose(out.per_observation[k], np.diag(HK), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out.total[k], np.trace(HK), rtol=1e-10)
        assert out.total[k] < N - 1  # rank of P is at most N − 1


# ------------------------------------------------------------------------- ESS


def test_effective_sample_size():
    N = 10
    assert np.isclose(dg.effective_sample_size(np.full(N, 3.0)), N)
    assert np.isclose(dg.effective_sample_size(np.eye(N)[4]), 1.0)
    rng = np.random.default_rng(14)
    w = rng.uniform(size=(3, N))
    ref = w.sum(1) ** 2 / (w**2).sum(1)
    np.testing.assert_allclose(dg.effective_sample_size(w), ref, rtol=1e-12)
    np.testing.assert_allclose(dg.effective_sample_size(7 * w), ref, rtol=1e-12)
    lw = np.log(w)
    for shift in (-1000.0, 0.0, 1000.0):  # exp would under/overflow here
        np.testing.assert_allclose(dg.effective_sample_size(log_weights=lw + shift), ref, rtol=1e-10)
    one_hot = np.full(N, -np.inf)
    one_hot[2] = 5.0
    assert np.isclose(dg.effective_sample_size(log_weights=one_hot), 1.0)
    assert np.isclose(dg.effective_sample_size(log_weights=np.zeros(N)), N)


# ----------------------------------------------------------------- collapse


def test_ensemble_collapse_effective_rank_of_k_subspace():
    rng = np.random.default_rng(15)
    N, n, k = 12, 8, 3
    basis = np.linalg.qr(rng.normal(size=(n, k)))[0]  # (n, k) orthonormal
    C = rng.normal(size=(N, k))
    C = np.linalg.qr(C - C.mean(0))[0]  # centred, orthonormal coefficient columns
    U = 4.0 + 2.5 * C @ basis.T  # spread evenly over k directions
    out = dg.ensemble_collapse(U)
    assert out.singular_values.shape == (min(N, n),)
    np.testing.assert_allclose(out.effective_rank, k, rtol=1e-10)
    np.testing.assert_allclose(out.participation_ratio, k, rtol=1e-10)
    np.testing.assert_allclose(out.explained[k - 1 :], 1.0, rtol=1e-10)
    assert np.all(out.singular_values[k:] < 1e-10 * out.singular_values[0])
    np.testing.assert_allclose(out.singular_values[:k], 2.5 / np.sqrt(N - 1), rtol=1e-10)
    # uneven variance in the same subspace: below k; a full random ensemble: above k
    V = 4.0 + (C * [3.0, 1.0, 0.2]) @ basis.T
    uneven = dg.ensemble_collapse(V)
    assert 1.0 < uneven.effective_rank < k - 0.5
    assert uneven.participation_ratio < uneven.effective_rank
    np.testing.assert_allclose(uneven.explained[0], 9 / (9 + 1 + 0.04), rtol=1e-10)
    full = dg.ensemble_collapse(rng.normal(size=(2, N, n)))
    assert full.effective_rank.shape == (2,) and np.all(full.effective_rank > 5)
    assert float(dg.ensemble_collapse(np.ones((N, n))).effective_rank) == 0.0


# ------------------------------------------------------------ checks, jit, float32


def test_inputs_checked_at_the_door():
    E, t = np.zeros((5, 3)), np.zeros(3)
    with pytest.raises(ValueError, match=r"E must have shape \(N, n\)"):
        dg.rank_histogram(np.zeros(5), t)
    with pytest.raises(ValueError, match=r"truth must have shape \(3,\)"):
        dg.crps(E, np.zeros(4))
    with pytest.raises(ValueError, match="at least N=2"):
        dg.spread(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="E must be finite"):
        dg.spread(np.full((4, 3), np.nan))
    with pytest.raises(TypeError, match="E must have a floating dtype"):
        dg.spread(np.zeros((4, 3), dtype=int))
    with pytest.raises(ValueError, match=r"h as a matrix must have shape \(m, n\) = \(2, 3\)"):
        dg.innovation_statistics(E, np.zeros(2), np.eye(3), 1.0)
    with pytest.raises(ValueError, match=r"h must map one member of shape \(3,\) to shape \(2,\)"):
        dg.log_likelihood(E, np.zeros(2), lambda v: v, 1.0)
    with pytest.raises(ValueError, match="simulated observations, must be finite"):
        dg.dfs(E, lambda v: v / 0.0, 1.0)
    with pytest.raises(ValueError, match=r"R must be a scalar, an \(2,\) vector"):
        dg.innovation_statistics(E, np.zeros(2), np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="do not broadcast"):
        dg.innovation_statistics(np.ones((3, 5, 3)), np.zeros((4, 2)), np.ones((2, 3)), 1.0)
    with pytest.raises(TypeError, match="needs key"):
        dg.observation_rank_histogram(E, np.zeros(2), np.ones((2, 3)), 1.0, key=None)
    with pytest.raises(ValueError, match=r"d_ab must have the same shape \(K, m\)"):
        dg.desroziers(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="mask must have shape"):
        dg.desroziers(np.zeros((4, 2)), np.zeros((4, 2)), mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="d_ob must be finite where mask is True"):
        dg.desroziers_diagonal(np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(TypeError, match="exactly one"):
        dg.effective_sample_size(np.ones(3), log_weights=np.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        dg.effective_sample_size(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="sigma must be positive"):
        dg.crps_gaussian(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="bins must be at most"):
        dg.spread_skill(np.zeros((2, 5, 3)), np.zeros((2, 3)), bins=7)
    with pytest.raises(ValueError, match=r"B must have shape \(n, n\)"):
        dg.dfs_exact(np.ones((3, 2)), np.ones((2, 3)), 1.0)


def test_jit_and_float32_smoke():
    rng = np.random.default_rng(16)
    N, n, m = 6, 4, 3
    H = rng.normal(size=(m, n))
    E64, x64, y64 = rng.normal(size=(N, n)), rng.normal(size=n), rng.normal(size=m)
    Rd = np.array([0.5, 1.0, 2.0])

    def everything(E, x, y):
        dt = E.dtype
        Hd, R = H.astype(dt), Rd.astype(dt)
        st = dg.innovation_statistics(E, y, Hd, R)
        return {
            "spread": dg.spread(E),
            "rank": dg.rank_histogram(E, x),
            "orank": dg.observation_rank_histogram(E, y, Hd, R, key=jax.random.key(0)),
            "chi2": st.chi2,
            "chi2d": dg.innovation_chi2(st.d, st.S),
            "ll": dg.log_likelihood(E, y, Hd, R),
            "crps": dg.crps(E, x).mean,
            "crpsg": dg.crps_gaussian(x, jnp.ones_like(x), E[0]),
            "dfs": dg.dfs(E, Hd, R).total,
            "dfse": dg.dfs_exact(jnp.cov(E.T), Hd, R).total,
            "des": dg.desroziers(E[:, :m], E[:, 1:]).R,
            "ess": dg.effective_sample_size(log_weights=E[:, 0]),
            "rank_eff": dg.ensemble_collapse(E).effective_rank,
            "skill": dg.spread_skill(E[None], x[None], bins=2).rmse,
        }

    jitted = jax.jit(everything)(E64, x64, y64)  # the checks at the door pass tracers
    f32 = jax.jit(everything)(*(a.astype(np.float32) for a in (E64, x64, y64)))
    S = np.cov((E64 @ H.T).T) + np.diag(Rd)
    d = y64 - (E64 @ H.T).mean(0)
    np.testing.assert_allclose(jitted["chi2"], d @ np.linalg.solve(S, d), rtol=1e-10)
    np.testing.assert_allclose(jitted["spread"], enkit.ensemble_spread(E64), rtol=1e-12)
    for name in jitted:
        assert f32[name].dtype == jnp.float32, name
        assert np.all(np.isfinite(f32[name])), name
        np.testing.assert_allclose(f32[name], jitted[name], rtol=2e-4, atol=1e-5, err_msg=name)


def test_log_likelihood_gradient_in_the_observation_error_variance():
    """Differentiable through the Woodbury path (m > N): d/dr of log p(y | r)
    against central differences."""
    rng = np.random.default_rng(17)
    N, n, m = 4, 3, 6
    E, y, H = rng.normal(size=(N, n)), rng.normal(size=m), rng.normal(size=(m, n))
    f = jax.jit(lambda r: dg.log_likelihood(E, y, H, r * np.ones(m)))
    r, eps = 0.8, 1e-6
    fd = (f(r + eps) - f(r - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.grad(f)(r), fd, rtol=1e-6)
    assert abs(float(fd)) > 1e-3
