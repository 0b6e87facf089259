"""SDE integrators, the Ornstein–Uhlenbeck and double-well models, and the
driver with a stochastic forecast.

Orders are measured against exact solutions driven by the same Brownian
path: geometric Brownian motion (X_T a function of W_T) for the strong
orders of Euler–Maruyama (0.5) and Milstein (1.0); the Ornstein–Uhlenbeck
process sampled jointly with its Brownian increments for the strong order
of the additive-noise schemes; a coupled exact OU chain for the weak orders
(Euler–Maruyama 1, stochastic Heun 2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.covariance import Dense
from enkit.models import (
    DoubleWell,
    OrnsteinUhlenbeck,
    euler_maruyama_step,
    euler_maruyama_update,
    heun_step,
    heun_update,
    integrate_sde,
    milstein_step,
    milstein_update,
    sample_path,
)


def _drive(update, f, g, x0, dt, dW):
    """Paths (M, 1) driven by the increments dW (M, S): final states."""
    def one(dw):
        def body(x, w):
            return update(f, g, x, dt, w[None]), None
        return jax.lax.scan(body, x0, dw)[0]
    return jax.jit(jax.vmap(one))(dW)


def _slope(h, err):
    return np.polyfit(np.log(h), np.log(err), 1)[0]


def _coarsen(dW_fine, r):
    M, S = dW_fine.shape
    return dW_fine.reshape(M, S // r, r).sum(-1)


# --- strong orders on geometric Brownian motion: dX = a X dt + b X dW ---

A_GBM, B_GBM, T = 0.5, 0.8, 1.0


def _gbm_errors(update):
    M, S = 2000, 256
    dW = jnp.sqrt(T / S) * jax.random.normal(jax.random.key(0), (M, S))
    exact = np.exp((A_GBM - 0.5 * B_GBM**2) * T + B_GBM * np.asarray(dW.sum(1)))
    f = lambda x: A_GBM * x  # noqa: E731
    g = lambda x: B_GBM * x  # noqa: E731
    hs, errs = [], []
    for r in (32, 16, 8, 4):
        n = S // r
        xT = _drive(update, f, g, jnp.ones(1), T / n, _coarsen(dW, r))[:, 0]
        hs.append(T / n)
        errs.append(float(np.mean(np.abs(np.asarray(xT) - exact))))
    return np.array(hs), np.array(errs)


def test_euler_maruyama_strong_order_half_on_gbm():
    h, err = _gbm_errors(euler_maruyama_update)
    assert abs(_slope(h, err) - 0.5) < 0.12, (h, err)


def test_milstein_strong_order_one_on_gbm():
    h, err = _gbm_errors(milstein_update)
    h_em, err_em = _gbm_errors(euler_maruyama_update)
    assert abs(_slope(h, err) - 1.0) < 0.12, (h, err)
    assert np.all(err < err_em)


# --- OU sampled exactly with its Brownian increments (additive noise) ---

THETA, SIGMA, X0 = 1.5, 0.7, 2.0


def _ou_joint_path(key, M, S):
    """Fine Brownian increments dW (M, S) and the exact OU X_T driven by them."""
    d = T / S
    v_w = d
    v_i = (1 - np.exp(-2 * THETA * d)) / (2 * THETA)
    c = (1 - np.exp(-THETA * d)) / THETA
    L = np.linalg.cholesky(np.array([[v_w, c], [c, v_i]]))
    z = np.asarray(jax.random.normal(key, (M, S, 2)))
    pair = z @ L.T  # (ΔW, ∫ e^{−θ(d−s)} dW) on each fine interval
    dW, ou_part = pair[..., 0], pair[..., 1]
    x = np.full(M, X0)
    for j in range(S):
        x = np.exp(-THETA * d) * x + SIGMA * ou_part[:, j]
    return jnp.asarray(dW), x


def _ou_f(x):
    return -THETA * x


def _ou_g(x):
    return jnp.full_like(x, SIGMA)


@pytest.mark.parametrize("update", [euler_maruyama_update, heun_update],
                         ids=["euler_maruyama", "heun"])
def test_additive_noise_strong_order_one_on_ou(update):
    dW, exact = _ou_joint_path(jax.random.key(1), 2000, 256)
    hs, errs = [], []
    for r in (32, 16, 8, 4):
        n = 256 // r
        xT = _drive(update, _ou_f, _ou_g, jnp.full(1, X0), T / n, _coarsen(dW, r))[:, 0]
        hs.append(T / n)
        errs.append(float(np.mean(np.abs(np.asarray(xT) - exact))))
    assert abs(_slope(np.array(hs), np.array(errs)) - 1.0) < 0.15, (hs, errs)


def _ou_weak_errors(update):
    """E[X_h(T)²] − E[X(T)²] estimated with the exact OU chain driven by the
    same normals (unbiased for the weak error; the coupling only cuts the
    Monte-Carlo variance); also the (deterministic) error of the mean."""
    M = 20000
    hs, e2, e1 = [], [], []
    for n in (4, 8, 16):
        h = T / n
        xi = jax.random.normal(jax.random.key(2), (M, n))
        xh = _drive(update, _ou_f, _ou_g, jnp.full(1, X0), h, np.sqrt(h) * xi)[:, 0]
        a = np.exp(-THETA * h)
        s = SIGMA * np.sqrt((1 - a * a) / (2 * THETA))
        xe = np.full(M, X0)
        for j in range(n):
            xe = a * xe + s * np.asarray(xi[:, j])
        hs.append(h)
        e2.append(abs(float(np.mean(np.asarray(xh) ** 2 - xe**2))))
        e1.append(abs(float(np.mean(np.asarray(xh) - xe))))
    return np.array(hs), np.array(e2), np.array(e1)


def test_weak_orders_on_ou_second_moment():
    h, e2_em, e1_em = _ou_weak_errors(euler_maruyama_update)
    _, e2_heun, e1_heun = _ou_weak_errors(heun_update)
    assert abs(_slope(h, e2_em) - 1.0) < 0.2, e2_em
    assert abs(_slope(h, e1_em) - 1.0) < 0.2, e1_em
    assert abs(_slope(h, e2_heun) - 2.0) < 0.3, e2_heun
    assert abs(_slope(h, e1_heun) - 2.0) < 0.3, e1_heun


# --- OU moments, the exact transition and its sampler ---

def _ou2():
    return OrnsteinUhlenbeck(theta=[[1.0, 0.4], [-0.3, 0.8]], mu=[1.0, -0.5],
                             sigma=Dense([[0.5, 0.2], [0.2, 0.4]]), dt=0.01)


def _z_scores(X, mean, C):
    """z-scores of the sample mean and covariance entries of X (N, n)."""
    N = X.shape[0]
    z_mean = (X.mean(0) - mean) / np.sqrt(np.diag(C) / N)
    S = np.cov(X.T)
    var_S = (np.outer(np.diag(C), np.diag(C)) + C**2) / N
    return np.abs(z_mean), np.abs((S - C) / np.sqrt(var_S))


def test_ou_transition_closed_form_scalar():
    ou = OrnsteinUhlenbeck(theta=THETA, mu=jnp.array([0.3]), sigma=SIGMA)
    m, C = ou.transition(jnp.array([X0]), 0.7)
    np.testing.assert_allclose(m, 0.3 + np.exp(-THETA * 0.7) * (X0 - 0.3), rtol=1e-12)
    np.testing.assert_allclose(C, [[SIGMA**2 * (1 - np.exp(-2 * THETA * 0.7)) / (2 * THETA)]],
                               rtol=1e-10)
    np.testing.assert_allclose(ou.stationary_covariance(), [[SIGMA**2 / (2 * THETA)]],
                               rtol=1e-12)


def test_ou_transition_multivariate_solves_the_moment_equations():
    ou = _ou2()
    x0, t = jnp.array([2.0, 1.0]), 0.9
    m, C = ou.transition(x0, t)
    Th, S = np.asarray(ou.theta), np.asarray(ou.sigma.dense())
    # dm/dt = −Θ (m − μ), dC/dt = Σ − Θ C − C Θᵀ, by finite differences in t
    eps = 1e-5
    (mp, Cp), (mm, Cm) = ou.transition(x0, t + eps), ou.transition(x0, t - eps)
    np.testing.assert_allclose((mp - mm) / (2 * eps), -Th @ (m - ou.mu), atol=1e-8)
    np.testing.assert_allclose((Cp - Cm) / (2 * eps), S - Th @ C - C @ Th.T, atol=1e-8)
    # long times: the stationary covariance
    _, C_inf = ou.transition(x0, 60.0)
    np.testing.assert_allclose(C_inf, ou.stationary_covariance(), atol=1e-10)
    Ci = np.asarray(ou.stationary_covariance())
    np.testing.assert_allclose(Th @ Ci + Ci @ Th.T, S, atol=1e-12)


def test_ou_exact_sampler_matches_closed_form():
    ou = _ou2()
    x0 = jnp.array([2.0, 1.0])
    keys = jax.random.split(jax.random.key(3), 8000)
    X = np.asarray(jax.vmap(lambda k: ou.sample_transition(k, x0, 0.6))(keys))
    m, C = map(np.asarray, ou.transition(x0, 0.6))
    z_mean, z_cov = _z_scores(X, m, C)
    assert z_mean.max() < 4 and z_cov.max() < 4, (z_mean, z_cov)


@pytest.mark.parametrize("scheme", [None, heun_step, euler_maruyama_step],
                         ids=["exact", "heun", "euler_maruyama"])
def test_ou_ensemble_moments_after_T_match_closed_form(scheme):
    dt = 0.02 if scheme is not euler_maruyama_step else 0.002
    ou = OrnsteinUhlenbeck(theta=[[1.0, 0.4], [-0.3, 0.8]], mu=[1.0, -0.5],
                           sigma=Dense([[0.5, 0.2], [0.2, 0.4]]), dt=dt, scheme=scheme)
    x0, Tend, N = jnp.array([2.0, 1.0]), 1.0, 4000
    n = int(round(Tend / dt))
    keys = jax.random.split(jax.random.key(4), N)
    X = np.asarray(jax.jit(jax.vmap(lambda k: sample_path(k, ou, x0, n)[-1]))(keys))
    m, C = map(np.asarray, ou.transition(x0, Tend))
    z_mean, z_cov = _z_scores(X, m, C)
    assert z_mean.max() < 4 and z_cov.max() < 4, (z_mean, z_cov)


# --- double well ---

def test_double_well_visits_both_wells():
    dw = DoubleWell(sigma=0.7, dt=0.01)
    path = np.asarray(sample_path(5, dw, jnp.array([1.0]), 20000))[:, 0]
    assert (path < -0.5).mean() > 0.1 and (path > 0.5).mean() > 0.1
    # most of the time is spent near a well, not on the barrier
    assert (np.abs(path) > 0.4).mean() > 0.8


def test_double_well_stationary_density_histogram():
    sigma = 0.8
    dw = DoubleWell(sigma=sigma, dt=0.02)
    N, n = 4000, 1500  # members from x = 1, run to T = 30 (switch time ≈ 5)
    keys = jax.random.split(jax.random.key(6), N)
    X = np.asarray(jax.jit(jax.vmap(lambda k: sample_path(k, dw, jnp.ones(1), n)[-1]))(keys))
    edges = np.linspace(-2.0, 2.0, 17)
    grid = np.linspace(-3.5, 3.5, 70001)
    p = np.exp(-2 * (grid**4 / 4 - grid**2 / 2) / sigma**2)
    p /= np.trapezoid(p, grid)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(grid))])
    probs = np.diff(np.interp(edges, grid, cdf))
    counts = np.histogram(X[:, 0], edges)[0]
    expected = N * probs
    chi2 = np.sum((counts - expected) ** 2 / expected)
    dof = len(counts)
    assert chi2 < dof + 4 * np.sqrt(2 * dof), (chi2, counts, expected.round())
    np.testing.assert_allclose(dw.log_stationary_density(jnp.array([0.0, 1.0])),
                               [0.0, 2 * 0.25 / sigma**2])


# --- keys ---

def test_same_key_bit_identical_different_keys_differ():
    f, g = _ou_f, _ou_g
    for scheme in (euler_maruyama_step, milstein_step, heun_step):
        a = integrate_sde(7, f, g, jnp.ones(2), 0.01, 50, scheme=scheme, path=True)
        b = integrate_sde(jax.random.key(7), f, g, jnp.ones(2), 0.01, 50, scheme=scheme,
                          path=True)
        c = integrate_sde(8, f, g, jnp.ones(2), 0.01, 50, scheme=scheme, path=True)
        assert a.shape == (50, 2)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)
        np.testing.assert_array_equal(a[-1], integrate_sde(7, f, g, jnp.ones(2), 0.01, 50,
                                                           scheme=scheme))
    # step j uses fold_in(key, j): never one key for two steps
    key = jax.random.key(9)
    x1 = euler_maruyama_step(jax.random.fold_in(key, 0), f, g, jnp.ones(2), 0.01)
    x2 = euler_maruyama_step(jax.random.fold_in(key, 1), f, g, x1, 0.01)
    np.testing.assert_array_equal(integrate_sde(key, f, g, jnp.ones(2), 0.01, 2), x2)
    dw = DoubleWell()
    np.testing.assert_array_equal(sample_path(1, dw, jnp.ones(3), 10),
                                  sample_path(1, dw, jnp.ones(3), 10))


def test_matrix_diffusion_and_models_jit_without_recompiling():
    Lg = jnp.array([[0.3, 0.0, 0.1], [0.2, 0.5, 0.0]])  # (n, d) = (2, 3)
    x = integrate_sde(0, lambda x: -x, lambda x: Lg, jnp.ones(2), 0.01, 5)
    assert x.shape == (2,)
    traces = []

    @jax.jit
    def run(model, key):
        traces.append(1)
        return sample_path(key, model, jnp.zeros(2), 5)

    run(_ou2(), jax.random.key(0))
    other = OrnsteinUhlenbeck(theta=[[2.0, 0.0], [0.0, 1.0]], mu=[0.0, 0.0],
                              sigma=Dense([[0.3, 0.0], [0.0, 0.3]]), dt=0.01)
    run(other, jax.random.key(1))
    assert len(traces) == 1


# --- bad inputs, float32 ---

def test_bad_inputs_name_the_argument():
    f, g = _ou_f, _ou_g
    with pytest.raises(ValueError, match="sigma"):
        OrnsteinUhlenbeck(theta=1.0, mu=[0.0], sigma=-0.5)
    with pytest.raises(ValueError, match="sigma"):
        DoubleWell(sigma=-1.0)
    with pytest.raises(ValueError, match="dt"):
        DoubleWell(dt=0.0)
    with pytest.raises(ValueError, match="dt"):
        OrnsteinUhlenbeck(theta=1.0, mu=[0.0], sigma=1.0, dt=-0.1)
    with pytest.raises(ValueError, match="theta"):
        OrnsteinUhlenbeck(theta=np.ones((2, 3)), mu=[0.0, 0.0], sigma=1.0)
    with pytest.raises(ValueError, match="mu"):
        OrnsteinUhlenbeck(theta=1.0, mu=0.0, sigma=1.0)
    with pytest.raises(ValueError, match="dt"):
        integrate_sde(0, f, g, jnp.ones(2), 0.0, 10)
    with pytest.raises(ValueError, match="dt"):
        euler_maruyama_step(jax.random.key(0), f, g, jnp.ones(2), -1.0)
    with pytest.raises(ValueError, match="x0"):
        integrate_sde(0, f, g, jnp.ones((2, 2)), 0.1, 10)
    with pytest.raises(ValueError, match="n_steps"):
        integrate_sde(0, f, g, jnp.ones(2), 0.1, 0)
    with pytest.raises(ValueError, match="g must map"):
        integrate_sde(0, f, lambda x: jnp.ones(3), jnp.ones(2), 0.1, 10)
    with pytest.raises(ValueError, match="diagonal noise"):
        milstein_step(jax.random.key(0), f, lambda x: jnp.eye(2), jnp.ones(2), 0.1)
    with pytest.raises(ValueError, match="dW"):
        heun_update(f, g, jnp.ones(2), 0.1, jnp.ones(3))
    with pytest.raises(TypeError, match="key"):
        euler_maruyama_step(None, f, g, jnp.ones(2), 0.1)
    with pytest.raises(TypeError, match="key"):
        sample_path(None, DoubleWell(), jnp.ones(1), 3)


def test_float32_smoke():
    x32 = jnp.ones(2, jnp.float32)
    for scheme in (euler_maruyama_step, milstein_step, heun_step):
        x = integrate_sde(0, _ou_f, _ou_g, x32, 0.01, 20, scheme=scheme)
        assert x.dtype == jnp.float32 and np.all(np.isfinite(x))
    ou = OrnsteinUhlenbeck(theta=jnp.float32(1.0), mu=jnp.zeros(2, jnp.float32), sigma=0.5)
    for model in (ou, DoubleWell(n=2)):
        p = sample_path(0, model, x32, 20)
        assert p.dtype == jnp.float32 and np.all(np.isfinite(p))


# --- the driver with a stochastic forecast ---

def _kalman_filter(F, b, Qd, H, R, m, P, ys):
    means = []
    for y in ys:
        m, P = F @ m + b, F @ P @ F.T + Qd
        S = H @ P @ H.T + R
        K = P @ H.T @ np.linalg.inv(S)
        m, P = m + K @ (y - H @ m), (np.eye(len(m)) - K @ H) @ P
        means.append(m)
    return np.array(means), P


def test_assimilate_with_stochastic_ou_forecast_tracks_the_kalman_filter():
    ou = OrnsteinUhlenbeck(theta=[[1.0, 0.4], [-0.3, 0.8]], mu=[1.0, -0.5],
                           sigma=Dense([[0.5, 0.2], [0.2, 0.4]]), dt=0.1)
    H, R = np.array([[1.0, 0.0]]), 0.05
    twin = enkit.twin_experiment(ou, jnp.array([2.0, 1.0]), key=11, n_obs=15, h=H, R=R,
                                 steps_per_obs=3)
    assert twin.truth.shape == (15, 2)
    m0, P0 = np.array([1.5, 0.5]), 0.5 * np.eye(2)
    N = 2000
    E0 = m0 + jax.random.normal(jax.random.key(12), (N, 2)) @ np.linalg.cholesky(P0).T
    res = enkit.assimilate(ou, E0, twin.observations, enkit.ensrf, h=H, R=R, key=13,
                           steps_per_obs=3, store=("analysis_mean", "analysis_covariance"))
    decay = np.asarray(jax.scipy.linalg.expm(-ou.theta * 0.3))  # three steps of dt
    mean0, C3 = ou.transition(jnp.zeros(2), 0.3)
    means, P = _kalman_filter(decay, np.asarray(mean0), np.asarray(C3), H, R * np.eye(1),
                              m0, P0, np.asarray(twin.observations))
    err = np.abs(np.asarray(res.analysis_mean) - means).max()
    assert err < 0.05, err
    np.testing.assert_allclose(res.analysis_covariance[-1], P, atol=0.03)
    again = enkit.assimilate(ou, E0, twin.observations, enkit.ensrf, h=H, R=R, key=13,
                             steps_per_obs=3, store=("analysis_mean",))
    np.testing.assert_array_equal(again.analysis_mean, res.analysis_mean)
    other = enkit.assimilate(ou, E0, twin.observations, enkit.ensrf, h=H, R=R, key=14,
                             steps_per_obs=3, store=("analysis_mean",))
    assert not np.allclose(other.analysis_mean, res.analysis_mean)


def test_assimilate_stochastic_model_keys_per_member_and_checks():
    dw = DoubleWell(sigma=0.5, dt=0.01, n=2)
    E0 = jnp.zeros((6, 2))  # identical members: the stochastic forecast spreads them
    ys = jnp.zeros((3, 2))
    res = enkit.assimilate(dw, E0, ys, enkit.etkf, h=np.eye(2), R=1.0, key=0,
                           steps_per_obs=5, store=("forecast_ensemble",))
    Ef = np.asarray(res.forecast_ensemble[0])
    assert len(np.unique(Ef[:, 0])) == 6  # each member its own key
    # the first forecast is member i's path with keys split(split(fold_in(k, j))[0], N)[i]
    k_noise = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 1), 3)
    E = E0
    for j in range(5):
        k_model = jax.random.split(jax.random.fold_in(k_noise, j))[0]
        E = jax.vmap(dw)(jax.random.split(k_model, 6), E)
    np.testing.assert_allclose(Ef, E, rtol=1e-12)
    with pytest.raises(TypeError, match="key"):
        enkit.assimilate(dw, E0 + jnp.arange(6.0)[:, None], ys, enkit.etkf, h=np.eye(2),
                         R=1.0)
    with pytest.raises(ValueError, match="over_window"):
        enkit.assimilate(dw, E0, ys, enkit.over_window(enkit.etkf), h=np.eye(2), R=1.0, key=0)


def test_stochastic_model_on_the_python_path_draws_the_same_numbers():
    """Ragged observations run the Python loop: same keys, same forecasts."""
    dw = DoubleWell(sigma=0.5, dt=0.01, n=2)
    E0 = jax.random.normal(jax.random.key(3), (5, 2))
    ys = np.asarray(jax.random.normal(jax.random.key(4), (3, 2)))
    kw = dict(h=np.eye(2), R=1.0, key=2, steps_per_obs=4, store=("analysis_mean",))
    a = enkit.assimilate(dw, E0, ys, enkit.ensrf, **kw)
    b = enkit.assimilate(dw, E0, list(ys), enkit.ensrf, **kw)
    np.testing.assert_allclose(b.analysis_mean, a.analysis_mean, rtol=1e-12)
