"""Robust and non-Gaussian EnKF variants: the Student-t EnKF
(``student_t_enkf``) and the KDE-weighted EnKF (``kde_weighted_enkf``):
exact limits, a closed-form variational-Bayes reference, outlier
robustness and linear-Gaussian consistency."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from reference.particle_problem import H1, MU, P0, R1, Y1, kalman

import enkit
from enkit import particle as pf

# --- a small linear-Gaussian analysis problem (n = 3, m = 2) ---------------

RNG = np.random.default_rng(0)
N3, NS, MS = 20, 3, 2
MU3 = np.array([0.5, -1.0, 0.2])
L3 = np.array([[1.0, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.2, 0.3, 0.6]])
E3 = MU3 + RNG.normal(size=(N3, NS)) @ L3.T
H3 = np.array([[1.0, 0.5, 0.0], [0.0, -0.3, 1.0]])
R3 = np.array([0.4, 0.6])
Y3 = H3 @ MU3 + np.array([0.3, -0.5])


def vb_reference(E, y, H, r, nu, iterations):
    """The VB fixed point of Piché et al. (2012) on the sample mean and
    covariance of E, in closed form (Kalman formulas, NumPy): (mean, cov)."""
    xb, P = E.mean(0), np.cov(E.T)
    Rm = np.diag(r)
    m = y.shape[0]
    lam = 1.0
    for it in range(iterations + 1):
        S = H @ P @ H.T + Rm / lam
        K = P @ H.T @ np.linalg.inv(S)
        xa, Pa = xb + K @ (y - H @ xb), P - K @ H @ P
        if it == iterations:
            return xa, Pa
        d = y - H @ xa
        chi2 = d @ np.linalg.solve(Rm, d) + np.trace(np.linalg.solve(Rm, H @ Pa @ H.T))
        lam = (nu + m) / (nu + chi2)


def test_student_t_nu_infinite_is_the_gaussian_analysis_exactly():
    R = enkit.Diagonal(R3)
    np.testing.assert_array_equal(enkit.student_t_enkf(E3, Y3, H3, R, nu=np.inf),
                                  enkit.etkf(E3, Y3, H3, R))
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        enkit.student_t_enkf(E3, Y3, H3, R, nu=np.inf, scheme=enkit.enkf, key=key),
        enkit.enkf(E3, Y3, H3, R, key=key))
    # traced ν = inf: λ = 1 exactly, the same analysis to round-off
    f = jax.jit(lambda nu: enkit.student_t_enkf(E3, Y3, lambda x: jnp.asarray(H3) @ x, R,
                                                nu=nu))
    np.testing.assert_allclose(f(jnp.inf), enkit.etkf(E3, Y3, H3, R), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("nu", [1.0, 4.0, 30.0])
def test_student_t_matches_the_closed_form_vb_iteration(nu):
    Ea = enkit.student_t_enkf(E3, Y3 + np.array([3.0, 0.0]), H3, enkit.Diagonal(R3), nu=nu,
                              iterations=4)
    xa, Pa = vb_reference(E3, Y3 + np.array([3.0, 0.0]), H3, R3, nu, 4)
    np.testing.assert_allclose(np.mean(Ea, 0), xa, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.cov(np.asarray(Ea).T), Pa, rtol=1e-10, atol=1e-12)


def test_student_t_fixed_point_converges():
    f = partial(enkit.student_t_enkf, E3, Y3 + 5.0, H3, enkit.Diagonal(R3), nu=4.0)
    np.testing.assert_allclose(f(iterations=30), f(iterations=60), rtol=1e-10)


def test_student_t_resists_an_outlier():
    """The Gaussian analysis mean follows an outlier linearly; the t one
    (ν = 4) moves little and ever less as the outlier grows."""
    R = enkit.Diagonal(R3)
    base = np.mean(enkit.etkf(E3, Y3, H3, R), 0)
    shift = {}
    for size in (10.0, 100.0):
        y = Y3 + np.array([size, 0.0])
        g = np.linalg.norm(np.mean(enkit.etkf(E3, y, H3, R), 0) - base)
        t = np.linalg.norm(np.mean(enkit.student_t_enkf(E3, y, H3, R, nu=4.0,
                                                        iterations=10), 0) - base)
        shift[size] = (g, t)
    assert shift[100.0][0] > 9 * shift[10.0][0]  # Gaussian: linear in the outlier
    assert shift[10.0][1] < 0.5 * shift[10.0][0] and shift[100.0][1] < 0.05 * shift[100.0][0]
    assert shift[100.0][1] < shift[10.0][1], shift  # t: the larger outlier moves it less
    # a consistent observation: nearly the Gaussian analysis
    Eg = enkit.etkf(E3, Y3, H3, R)
    Et = enkit.student_t_enkf(E3, Y3, H3, R, nu=4.0)
    assert np.linalg.norm(np.mean(Et, 0) - np.mean(Eg, 0)) < 0.2 * np.linalg.norm(
        np.mean(Eg, 0) - E3.mean(0))


def test_student_t_jit_vmap_grad_and_float32():
    R = enkit.Diagonal(R3)
    f = jax.jit(lambda nu, y: enkit.student_t_enkf(E3, y, H3, R, nu=nu).mean(0))
    many = jax.vmap(f, in_axes=(0, None))(jnp.array([1.0, 4.0, 1e6]), Y3 + 4.0)
    gauss = enkit.etkf(E3, Y3 + 4.0, H3, R).mean(0)
    np.testing.assert_allclose(many[2], gauss, rtol=1e-4)  # ν large: nearly Gaussian
    d = np.linalg.norm(many - np.asarray(E3).mean(0), axis=1)
    assert d[0] < d[1] < d[2]  # the heavier the tails, the less the pull
    g = jax.grad(lambda nu: jnp.sum(f(nu, Y3 + 4.0)))(4.0)
    assert np.isfinite(g) and g != 0
    f32 = np.float32
    Ea = enkit.student_t_enkf(E3.astype(f32), (Y3 + 4).astype(f32), H3.astype(f32),
                              enkit.Diagonal(R3.astype(f32)), nu=f32(4.0))
    assert Ea.dtype == jnp.float32 and np.all(np.isfinite(Ea))


def test_student_t_no_observations_and_bad_arguments():
    np.testing.assert_array_equal(enkit.student_t_enkf(E3, np.zeros(0), np.zeros((0, 3)), 1.0),
                                  E3)
    with pytest.raises(ValueError, match="nu must be > 0"):
        enkit.student_t_enkf(E3, Y3, H3, R3, nu=0.0)
    with pytest.raises(ValueError, match="iterations"):
        enkit.student_t_enkf(E3, Y3, H3, R3, iterations=0)
    with pytest.raises(TypeError, match="scheme must be"):
        enkit.student_t_enkf(E3, Y3, H3, R3, scheme="etkf")
    with pytest.raises(TypeError, match="key"):
        enkit.student_t_enkf(E3, Y3, H3, R3, scheme=enkit.enkf)
    with pytest.raises(ValueError, match=r"shape \(m, n\)"):
        enkit.student_t_enkf(E3, Y3, H3.T, R3)


# --- the KDE-weighted EnKF ------------------------------------------------------


def test_kde_log_density_matches_scipy():
    rng = np.random.default_rng(1)
    C, X = rng.normal(size=(30, 2)), rng.normal(size=(7, 2))
    w = rng.random(30)
    ref = scipy.stats.gaussian_kde(C.T, bw_method=0.4, weights=w).logpdf(X.T)
    np.testing.assert_allclose(pf.kde_log_density(X, C, np.log(w), bandwidth=0.4), ref,
                               rtol=1e-10)


def test_kde_weights_are_prior_times_likelihood_over_proposal():
    """With the deterministic ETKF as proposal, against scipy's KDEs."""
    rng = np.random.default_rng(2)
    E = MU + rng.normal(size=(40, 2)) @ np.linalg.cholesky(P0).T
    lw0 = rng.normal(size=40) * 0.3
    res = pf.kde_weighted_enkf(E, Y1, H1, R1, key=jax.random.key(0), log_weights=lw0,
                               scheme=enkit.etkf, bandwidth=0.5, threshold=0.0)
    Ea = np.asarray(enkit.etkf(E, Y1, H1, R1))
    log_f = scipy.stats.gaussian_kde(E.T, bw_method=0.5, weights=np.exp(lw0)).logpdf(Ea.T)
    log_q = scipy.stats.gaussian_kde(Ea.T, bw_method=0.5).logpdf(Ea.T)
    log_l = scipy.stats.norm(Ea @ H1[0], np.sqrt(R1)).logpdf(Y1[0])
    lw = log_f + log_l - log_q
    np.testing.assert_allclose(res.log_weights, lw - scipy.special.logsumexp(lw), rtol=1e-9,
                               atol=1e-10)
    np.testing.assert_allclose(res.log_evidence, scipy.special.logsumexp(lw) - np.log(40),
                               rtol=1e-10)
    np.testing.assert_allclose(res.ensemble, Ea, rtol=1e-12)
    assert not res.resampled


@pytest.fixture(scope="module")
def kde_runs():
    """Weighted mean, variances and log-evidence of 32 runs at N = 800."""
    @jax.jit
    def runs(keys):
        def one(key):
            kp, ka = jax.random.split(key)
            E = MU + jax.random.normal(kp, (800, 2), jnp.float64) @ np.linalg.cholesky(P0).T
            res = pf.kde_weighted_enkf(E, Y1, H1, enkit.Scalar(R1, 1), key=ka, threshold=0.0)
            C = pf.weighted_covariance_root(res.ensemble, res.log_weights)
            return (pf.weighted_mean(res.ensemble, res.log_weights), jnp.sum(C * C, 0),
                    res.log_evidence, res.ess)
        return jax.vmap(one)(keys)

    out = [np.asarray(v) for v in runs(jax.random.split(jax.random.key(4), 32))]
    print("kde_runs: mean", out[0].mean(0), "var", out[1].mean(0), "logz", out[2].mean(),
          "ess min", out[3].min())
    return out


def test_kde_weighted_enkf_is_consistent_on_a_linear_gaussian_problem(kde_runs):
    """Against the large-N limit at a fixed bandwidth h (Scott's): the
    Gaussian of precision ((1 + h²) P0)⁻¹ + HᵀR⁻¹H + h²/(1 + h²) Pₐ⁻¹ (the
    kernel-smoothed prior times the likelihood times q/q̂, q = N(xₐ, Pₐ)
    the EnKF's proposal): mean, variances; and the evidence."""
    m, v, logz, ess = kde_runs
    h2 = pf.scott_bandwidth(800, 2) ** 2
    xa, Pa = kalman(MU, P0, H1, R1, Y1)
    xs, Ps = kalman(MU, (1 + h2) * P0, H1, R1, Y1)
    Pt = np.linalg.inv(np.linalg.inv(Ps) + h2 / (1 + h2) * np.linalg.inv(Pa))
    xt = Pt @ (np.linalg.solve(Ps, xs) + h2 / (1 + h2) * np.linalg.solve(Pa, xa))
    se = m.std(0) / np.sqrt(len(m))
    assert np.all(np.abs(m.mean(0) - xt) < 4 * se + 2e-3), (m.mean(0), xt, se)
    # measured 4.5% low at N = 800 (the finite-N bias of the KDEs)
    np.testing.assert_allclose(v.mean(0), np.diag(Pt), rtol=0.07)
    np.testing.assert_allclose(v.mean(0), np.diag(Pa), rtol=0.12)  # and the posterior's
    S = H1 @ P0 @ H1.T + R1
    d = Y1 - H1 @ MU
    exact = -0.5 * (d @ np.linalg.solve(S, d) + np.log(np.linalg.det(2 * np.pi * S)))
    assert abs(logz.mean() - float(exact)) < 0.06, (logz.mean(), exact)  # measured 0.044
    assert ess.min() > 0.7 * 800  # the EnKF proposal is close to the target: weights even


def test_kde_weighted_enkf_in_the_driver_and_float32():
    A2 = np.array([[0.9, 0.2], [-0.1, 0.8]])
    rng = np.random.default_rng(3)
    ys = rng.normal(size=(4, 1))
    res = enkit.assimilate(lambda x: jnp.asarray(A2, x.dtype) @ x, rng.normal(size=(60, 2)),
                           ys, pf.kde_weighted_enkf, h=H1, R=enkit.Scalar(R1, 1), key=1,
                           model_noise=enkit.Dense(np.diag([0.2, 0.1])))
    assert res.log_weights.shape == (4, 60) and np.all(np.isfinite(res.analysis_mean))
    f32 = np.float32
    out = pf.kde_weighted_enkf(rng.normal(size=(30, 2)).astype(f32), Y1.astype(f32),
                               H1.astype(f32), enkit.Scalar(f32(R1), 1), key=jax.random.key(0))
    assert out.ensemble.dtype == jnp.float32 and out.log_weights.dtype == jnp.float32
    assert np.all(np.isfinite(out.ensemble)) and np.all(np.isfinite(out.log_weights))


def test_kde_weighted_enkf_bad_arguments():
    E = MU + np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(TypeError, match="pass key="):
        pf.kde_weighted_enkf(E, Y1, H1, R1)
    with pytest.raises(ValueError, match="N > n"):
        pf.kde_weighted_enkf(E[:2], Y1, H1, R1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="bandwidth"):
        pf.kde_weighted_enkf(E, Y1, H1, R1, key=jax.random.key(0), bandwidth=-1.0)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        pf.kde_weighted_enkf(E, Y1, H1, R1, key=jax.random.key(0), log_weights=np.zeros(3))
