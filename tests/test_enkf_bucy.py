"""The deterministic ensemble Kalman–Bucy filter against the exact
Kalman–Bucy filter (Riccati equation) on a continuously observed 2-D
Ornstein–Uhlenbeck process, and its pseudo-time limit, the ETKF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.filters import enkf_bucy, enkf_bucy_analysis, ensemble_with_covariance, etkf

# dX = A X dt + Q^{1/2} dW, dY = H X dt + R^{1/2} dV
A = np.array([[-1.0, 0.5], [-0.4, -0.6]])
Q = np.array([[0.4, 0.1], [0.1, 0.3]])
H = np.array([[1.0, 0.0]])
R = np.array([[0.2]])
M0, P0 = np.array([1.0, -1.0]), np.array([[1.0, 0.3], [0.3, 0.6]])
T = 1.0


def _f(x):
    return A @ x


def _riccati(P, t, n=4000):
    """P(t) from dP/dt = A P + P Aᵀ + Q − P Hᵀ R⁻¹ H P (RK4, n steps)."""
    Ri = np.linalg.inv(R)

    def rhs(P):
        return A @ P + P @ A.T + Q - P @ H.T @ Ri @ H @ P

    h = t / n
    for _ in range(n):
        k1 = rhs(P)
        k2 = rhs(P + 0.5 * h * k1)
        k3 = rhs(P + 0.5 * h * k2)
        k4 = rhs(P + h * k3)
        P = P + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return P


def _record(seed, dt_fine, n_fine):
    """A truth path and its observation increments on a fine grid (Euler–Maruyama)."""
    rng = np.random.default_rng(seed)
    Lq, Lr = np.linalg.cholesky(Q), np.linalg.cholesky(R)
    x = M0 + np.linalg.cholesky(P0) @ rng.normal(size=2)
    dY = np.empty((n_fine, 1))
    for j in range(n_fine):
        dY[j] = H @ x * dt_fine + Lr @ rng.normal(size=1) * np.sqrt(dt_fine)
        x = x + A @ x * dt_fine + Lq @ rng.normal(size=2) * np.sqrt(dt_fine)
    return dY


def _kalman_bucy_mean(dY, dt):
    """The Kalman–Bucy mean and covariance, Euler in time on the grid of dY."""
    m, P, Ri = M0.copy(), P0.copy(), np.linalg.inv(R)
    for dy in dY:
        K = P @ H.T @ Ri
        m, P = (m + A @ m * dt + K @ (dy - H @ m * dt),
                P + dt * (A @ P + P @ A.T + Q - K @ H @ P))
    return m, P


def _exact_ensemble(N, seed=0):
    E = jax.random.normal(jax.random.key(seed), (N, 2))
    return ensemble_with_covariance(E, jnp.asarray(M0), jnp.asarray(P0))


def _cov(E):
    return np.cov(np.asarray(E).T)


def test_covariance_follows_riccati_at_first_order_in_dt():
    P_exact = _riccati(P0, T)
    E0 = _exact_ensemble(8)  # N = 8 members with the exact mean and covariance
    dts = np.array([0.04, 0.02, 0.01, 0.005])
    errs = []
    for dt in dts:
        n = int(round(T / dt))
        dY = np.zeros((n, 1))  # the covariance does not depend on the record
        E = enkf_bucy(E0, dY, H, R, dt, f=_f, Q=Q)
        errs.append(np.abs(_cov(E) - P_exact).max())
    errs = np.array(errs)
    order = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert abs(order - 1.0) < 0.1, (order, errs)
    assert errs[-1] < 2e-3


def test_mean_tracks_kalman_bucy_and_error_shrinks_with_dt():
    dt_fine, n_fine = T / 2048, 2048
    dY_fine = _record(1, dt_fine, n_fine)
    m_ref, P_ref = _kalman_bucy_mean(dY_fine, dt_fine)  # reference: the fine grid
    E0 = _exact_ensemble(10)
    errs = []
    for r in (64, 32, 16, 8):
        dY = dY_fine.reshape(n_fine // r, r, 1).sum(1)
        E = enkf_bucy(E0, dY, H, R, dt_fine * r, f=_f, Q=Q)
        errs.append(np.abs(np.asarray(E).mean(0) - m_ref).max())
    errs = np.array(errs)
    assert np.all(np.diff(errs) < 0), errs
    assert errs[0] / errs[-1] > 4, errs  # eight times smaller dt
    assert errs[-1] < 0.02, errs


def test_tracking_over_intervals_and_error_shrinks_with_N():
    """Members drawn at random: the error of the sample covariance against
    the Riccati solution falls like N^{-1/2} (dt small: its error is 1e-4)."""
    dt, n_int, per = 0.002, 5, 50
    P_exact = [_riccati(P0, dt * per * (k + 1), n=200 * (k + 1)) for k in range(n_int)]
    dY = np.zeros((per, 1))
    mean_err = {}
    run = jax.jit(lambda E: enkf_bucy(E, dY, H, R, dt, f=_f, Q=Q))
    for N in (10, 160):
        worst = []
        for seed in range(6):
            E = M0 + jax.random.normal(jax.random.key(100 + seed), (N, 2)) @ np.linalg.cholesky(
                P0).T
            err = 0.0
            for k in range(n_int):
                E = run(E)
                err = max(err, np.abs(_cov(E) - P_exact[k]).max())
            worst.append(err)
        mean_err[N] = np.mean(worst)
    assert mean_err[160] < mean_err[10] / 2.5, mean_err


def test_pseudo_time_flow_approaches_the_etkf():
    rng = np.random.default_rng(0)
    for N, n, m in ((6, 4, 3), (20, 3, 2)):
        E = rng.normal(size=(N, n)) + rng.normal(size=n)
        Hm = rng.normal(size=(m, n))
        Rm = np.diag(rng.uniform(0.3, 1.0, m))
        y = rng.normal(size=m)
        Ea = np.asarray(etkf(E, y, Hm, Rm))
        gaps = np.array([np.abs(np.asarray(enkf_bucy_analysis(E, y, Hm, Rm, n_steps=s)) - Ea)
                         .max() for s in (25, 100, 400)])
        order = np.polyfit(np.log([25, 100, 400]), np.log(gaps), 1)[0]
        assert abs(order + 1.0) < 0.1, (order, gaps)
        assert gaps[-1] < 5e-3 * np.abs(Ea).max()
    # the analysis is enkf_bucy over s ∈ [0, 1] with dY = y ds and no dynamics
    np.testing.assert_allclose(
        enkf_bucy_analysis(E, y, Hm, Rm, n_steps=40),
        enkf_bucy(E, np.tile(y / 40, (40, 1)), Hm, Rm, 1 / 40), rtol=1e-13)


def test_analysis_in_the_driver_and_nonlinear_h():
    twin = enkit.twin_experiment(enkit.Lorenz63(), jnp.ones(3), key=0, n_obs=20, h=np.eye(3),
                                 R=2.0, steps_per_obs=10, spinup=500)
    E0 = twin.x0 + jax.random.normal(jax.random.key(1), (20, 3))
    kw = dict(h=np.eye(3), R=2.0, steps_per_obs=10)
    a = enkit.assimilate(enkit.Lorenz63(), E0, twin.observations, enkit.etkf, **kw)
    b = enkit.assimilate(enkit.Lorenz63(), E0, twin.observations, enkf_bucy_analysis, **kw)
    np.testing.assert_allclose(b.analysis_mean, a.analysis_mean, atol=0.3)
    # a callable h: the cross-covariance P_xh replaces P Hᵀ; linear h agrees with the matrix
    E = np.asarray(E0)
    np.testing.assert_allclose(enkf_bucy_analysis(E, np.zeros(2), lambda x: x[:2], 1.0),
                               enkf_bucy_analysis(E, np.zeros(2), np.eye(3)[:2], 1.0),
                               rtol=1e-12)


def test_deterministic_jit_and_no_observations():
    E0 = _exact_ensemble(8)
    dY = jnp.asarray(_record(2, 0.01, 30))
    a = enkf_bucy(E0, dY, H, R, 0.01, f=_f, Q=Q)
    b = jax.jit(lambda E, d: enkf_bucy(E, d, H, R, 0.01, f=_f, Q=Q))(E0, dY)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_array_equal(a, enkf_bucy(E0, dY, H, R, 0.01, f=_f, Q=Q))
    # no dynamics and a zero-information record: only the data term, which shrinks P
    c = enkf_bucy(E0, jnp.zeros((30, 1)), H, R, 0.01)
    assert np.trace(_cov(c)) < np.trace(_cov(E0))
    np.testing.assert_array_equal(enkf_bucy_analysis(E0, jnp.zeros(0), np.zeros((0, 2)), 1.0),
                                  E0)


def test_bad_inputs_name_the_argument():
    E0 = _exact_ensemble(8)
    with pytest.raises(ValueError, match="dY"):
        enkf_bucy(E0, jnp.zeros(5), H, R, 0.01)
    with pytest.raises(ValueError, match="dt"):
        enkf_bucy(E0, jnp.zeros((5, 1)), H, R, 0.0)
    with pytest.raises(ValueError, match="dt"):
        enkf_bucy(E0, jnp.zeros((5, 1)), H, R, -0.1)
    with pytest.raises(ValueError, match="h"):
        enkf_bucy(E0, jnp.zeros((5, 2)), H, R, 0.01)
    with pytest.raises(ValueError, match="Q"):
        enkf_bucy(E0[:2], jnp.zeros((5, 1)), H, R, 0.01, Q=Q)
    with pytest.raises(ValueError, match="Q"):
        enkf_bucy(E0, jnp.zeros((5, 1)), H, R, 0.01, Q=np.eye(3))
    with pytest.raises(ValueError, match="f must map"):
        enkf_bucy(E0, jnp.zeros((5, 1)), H, R, 0.01, f=lambda x: x[:1])
    with pytest.raises(ValueError, match="dY must be finite"):
        enkf_bucy(E0, jnp.full((5, 1), jnp.nan), H, R, 0.01)
    with pytest.raises(ValueError, match="E"):
        enkf_bucy(jnp.zeros(3), jnp.zeros((5, 1)), H, R, 0.01)
    with pytest.raises(ValueError, match="n_steps"):
        enkf_bucy_analysis(E0, jnp.zeros(1), H, R, n_steps=0)


def test_float32_smoke():
    E0 = np.asarray(_exact_ensemble(8), dtype=np.float32)
    E = enkf_bucy(E0, np.zeros((20, 1), np.float32), H, R, 0.01, f=_f, Q=Q)
    assert E.dtype == jnp.float32 and np.all(np.isfinite(E))
    Ea = enkf_bucy_analysis(E0, np.ones(1, np.float32), H, R, n_steps=50)
    assert Ea.dtype == jnp.float32
    np.testing.assert_allclose(Ea, etkf(E0, np.ones(1, np.float32), H, R), atol=0.05)


# --------------------------------------------------------------------------
# the stochastic (perturbed-observation) form


@pytest.fixture(scope="module")
def stochastic_run():
    """enkf_bucy's stochastic form over [0, T], compiled once: (E0, dY, key) -> E."""
    dt = 0.005
    return dt, jax.jit(lambda E, dY, k: enkf_bucy(E, dY, H, R, dt, f=_f, Q=Q,
                                                  form="stochastic", key=k))


def _draws(N, seed):
    return M0 + jax.random.normal(jax.random.key(seed), (N, 2)) @ np.linalg.cholesky(P0).T


def test_stochastic_covariance_follows_riccati_in_expectation(stochastic_run):
    """Members drawn at random, no P⁻¹: the sample covariance at T, averaged
    over four runs, is the Riccati solution within its Monte Carlo error
    (N = 2000: the entries' standard error is about 0.004 a run, the O(1/N)
    and O(Δt) biases about 0.005); a tenth of the members is ~3× worse."""
    dt, run = stochastic_run
    P_exact = _riccati(P0, T)
    dY = jnp.zeros((int(round(T / dt)), 1))
    err = {}
    for N in (200, 2000):
        covs = [_cov(run(_draws(N, 100 + s), dY, jax.random.key(s))) for s in range(4)]
        err[N] = np.abs(np.mean(covs, axis=0) - P_exact).max()
    assert err[2000] < 0.012, err
    assert err[200] > 1.5 * err[2000], err


def test_stochastic_mean_tracks_kalman_bucy(stochastic_run):
    dt, run = stochastic_run
    r = 8  # the record on a grid 8 times finer than the filter's
    dY_fine = _record(3, dt / r, int(round(T / dt)) * r)
    m_ref, P_ref = _kalman_bucy_mean(dY_fine, dt / r)
    dY = dY_fine.reshape(-1, r, 1).sum(1)
    E = np.asarray(run(_draws(2000, 7), dY, jax.random.key(11)))
    # the mean's Monte Carlo error: sqrt(diag P / N) ≈ 0.012
    np.testing.assert_allclose(E.mean(0), m_ref, atol=0.05)
    np.testing.assert_allclose(_cov(E), P_ref, atol=0.03)


def test_stochastic_pseudo_time_analysis_is_the_kalman_analysis_in_expectation():
    """The perturbed-observation flow over s ∈ [0, 1] gives, in expectation,
    the Kalman analysis of the forecast's own sample statistics (the
    stochastic EnKF's continuous limit): within a few standard errors."""
    rng = np.random.default_rng(4)
    N, n = 4000, 2
    E = rng.normal(size=(N, n)) @ np.array([[1.0, 0.4], [0.0, 0.8]]) + 1.0
    Hm = np.array([[1.0, 0.0], [1.0, 1.0]])
    Rm = np.diag([0.5, 0.8])
    y = np.array([0.3, 2.5])
    m0, P = E.mean(0), np.cov(E.T)
    K = P @ Hm.T @ np.linalg.inv(Hm @ P @ Hm.T + Rm)
    ma, Pa = m0 + K @ (y - Hm @ m0), P - K @ Hm @ P
    Ea = np.asarray(enkf_bucy_analysis(E, y, Hm, Rm, key=5, n_steps=200, form="stochastic"))
    se_mean = np.sqrt(np.diag(Pa) / N)
    assert np.all(np.abs(Ea.mean(0) - ma) < 5 * se_mean + 5e-3), (Ea.mean(0), ma)
    np.testing.assert_allclose(np.cov(Ea.T), Pa, atol=0.1 * np.abs(Pa).max())
    # and it is not the deterministic flow: the members are perturbed
    Ed = np.asarray(enkf_bucy_analysis(E, y, Hm, Rm, n_steps=200))
    assert np.abs(Ea - Ed).max() > 0.05


def test_stochastic_form_keys_and_options(stochastic_run):
    dt, run = stochastic_run
    E0 = _draws(6, 1)
    dY = jnp.asarray(_record(2, dt, 20))
    a = run(E0, dY, jax.random.key(3))
    np.testing.assert_array_equal(a, run(E0, dY, jax.random.key(3)))
    assert np.abs(np.asarray(a) - np.asarray(run(E0, dY, jax.random.key(4)))).max() > 1e-3
    np.testing.assert_allclose(  # eager, an integer seed
        enkf_bucy(E0, dY, H, R, dt, f=_f, Q=Q, form="stochastic", key=3), a, rtol=1e-12)
    # Q needs no P⁻¹ here: N = 2 <= n = 2 is allowed
    assert np.all(np.isfinite(enkf_bucy(E0[:2], dY, H, R, dt, Q=Q, form="stochastic", key=0)))
    with pytest.raises(TypeError, match="key"):
        enkf_bucy(E0, dY, H, R, dt, form="stochastic")
    with pytest.raises(ValueError, match="key is only used"):
        enkf_bucy(E0, dY, H, R, dt, key=0)
    with pytest.raises(ValueError, match="form"):
        enkf_bucy(E0, dY, H, R, dt, form="perturbed")
    with pytest.raises(ValueError, match="form"):
        enkf_bucy_analysis(E0, jnp.zeros(1), H, R, form="perturbed")
    with pytest.raises(TypeError, match="key"):
        enkf_bucy_analysis(E0, jnp.zeros(1), H, R, form="stochastic")
    # the deterministic analysis ignores a key (the L1 signature passes one)
    np.testing.assert_array_equal(enkf_bucy_analysis(E0, jnp.ones(1), H, R, key=1, n_steps=5),
                                  enkf_bucy_analysis(E0, jnp.ones(1), H, R, n_steps=5))


def test_cheaper_product_order_gives_the_same_result():
    """N large against m and n takes the (m, n) product order: the same numbers."""
    rng = np.random.default_rng(8)
    E = rng.normal(size=(300, 2))
    dY = rng.normal(size=(5, 1)) * 0.1
    from enkit.filters.enkf_bucy import _cross
    W, Y, X = rng.normal(size=(300, 1)), rng.normal(size=(300, 1)), rng.normal(size=(300, 2))
    np.testing.assert_allclose(_cross(W, Y, X), (W @ Y.T) @ X, rtol=1e-12)
    np.testing.assert_allclose(_cross(W[:3], Y[:3], X[:3]), (W[:3] @ Y[:3].T) @ X[:3],
                               rtol=1e-12)
    assert np.all(np.isfinite(enkf_bucy(E, dY, H, R, 0.01, f=_f)))
