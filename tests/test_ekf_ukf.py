"""EKF, UKF and the L0 sigma points.

Against a closed-form Kalman filter written here (linear model and
observation: both filters must be it, forecast covariances included),
against closed-form moments of the unscented transform, UKI against the
L0 set it now draws from, and short Lorenz-63 runs.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.linear_state_space import LinearStateSpace

import enkit
from enkit.models.cases import sakov2012_lorenz63

SCALINGS = [
    dict(),  # cubature: alpha 1, beta 0, kappa 0
    dict(alpha=1.0, beta=2.0, kappa=0.0),
    dict(alpha=0.5, beta=2.0, kappa=1.0),  # negative central weight
    dict(alpha=1.0, beta=0.0, kappa=-1.0),  # kappa = 3 - n
]


class LinearProblem(LinearStateSpace):
    """n = 4 states, m = 3 observations, K = 5 cycles, non-diagonal everything."""

    def __init__(self, seed=0, K=5):
        super().__init__(4, seed=seed, K=K)


@pytest.fixture(scope="module")
def lin():
    return LinearProblem()


@pytest.fixture(scope="module")
def reference(lin):
    return lin.kalman_filter()


def _assert_result(res, ref, tol=1e-10):
    for got, want in zip(res[:4], ref):
        np.testing.assert_allclose(np.asarray(got), want, atol=tol, rtol=0)
    np.testing.assert_allclose(np.asarray(res.mean), ref[1][-1], atol=tol, rtol=0)
    np.testing.assert_allclose(np.asarray(res.covariance), ref[3][-1], atol=tol, rtol=0)


# ------------------------------------------------------------ linear: = KF


@pytest.mark.parametrize("h", ["matrix", "callable"])
def test_ekf_filter_is_the_kalman_filter(lin, reference, h):
    """Means and covariances, forecast (M P Mᵀ + Q by jacfwd) and analysis."""
    res = enkit.ekf_filter(lin.model, lin.x0, lin.P0, lin.ys, h=lin.H if h == "matrix" else
                           lin.h, R=lin.R, Q=lin.Q)
    _assert_result(res, reference)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_ukf_filter_is_the_kalman_filter(lin, reference, scaling):
    res = enkit.ukf_filter(lin.model, lin.x0, lin.P0, lin.ys, h=lin.h, R=lin.R, Q=lin.Q,
                           **scaling)
    _assert_result(res, reference)


def test_filters_with_several_steps_and_inflation(lin):
    ref = lin.kalman_filter(steps=3, inflation=1.1)
    for f in (enkit.ekf_filter, enkit.ukf_filter):
        res = f(lin.model, lin.x0, lin.P0, lin.ys, h=lin.H, R=lin.R, Q=lin.Q,
                steps_per_obs=3, inflation=1.1)
        _assert_result(res, ref)


@pytest.mark.parametrize("scaling", SCALINGS[:2])
def test_ukf_in_the_driver_is_the_kalman_filter(lin, reference, scaling):
    """enkit.assimilate on the sigma-point ensemble with the ukf scheme: the
    UT moments of the stored ensembles are the KF's (the forecast one before
    the scheme adds Q), and the driver's plain analysis mean is the KF mean."""
    E0 = enkit.ukf_ensemble(lin.x0, lin.P0, **scaling)
    assert E0.shape == (2 * lin.n + 1, lin.n)
    res = enkit.assimilate(lin.model, E0, lin.ys, partial(enkit.ukf, model_noise=lin.Q,
                                                           **scaling),
                           h=lin.h, R=lin.R, store=("analysis_mean", "forecast_ensemble",
                                                    "analysis_ensemble", "analysis_spread"))
    xf, xa, Pf, Pa = reference
    moments = jax.vmap(partial(enkit.ukf_moments, **scaling))
    mf, Cf = moments(res.forecast_ensemble)
    ma, Ca = moments(res.analysis_ensemble)
    np.testing.assert_allclose(mf, xf, atol=1e-10)
    np.testing.assert_allclose(Cf + lin.Q, Pf, atol=1e-10)
    np.testing.assert_allclose(ma, xa, atol=1e-10)
    np.testing.assert_allclose(Ca, Pa, atol=1e-10)
    np.testing.assert_allclose(res.analysis_mean, xa, atol=1e-10)
    if not scaling:  # cubature weights: the plain sample covariance is P too
        spread = np.sqrt(np.mean(np.diagonal(Pa, axis1=1, axis2=2), axis=1))
        np.testing.assert_allclose(res.analysis_spread, spread, atol=1e-10)


def test_ukf_scheme_equals_the_kalman_update_on_a_sigma_ensemble(lin):
    E = enkit.ukf_ensemble(lin.x0, lin.P0, alpha=1.0, beta=2.0)
    Ea = enkit.ukf(E, lin.ys[0], lin.H, lin.R, beta=2.0)
    mean, cov = enkit.ukf_moments(Ea, beta=2.0)
    want = enkit.kalman_update(lin.x0, lin.P0, lin.ys[0], lin.H, lin.R)
    np.testing.assert_allclose(mean, want[0], atol=1e-12)
    np.testing.assert_allclose(cov, want[1], atol=1e-12)
    # The cubature set's plain sample statistics are the Gaussian's.
    E = enkit.ukf_ensemble(lin.x0, lin.P0)
    np.testing.assert_allclose(enkit.ensemble.ensemble_mean(E), lin.x0, atol=1e-13)
    np.testing.assert_allclose(enkit.ensemble.ensemble_covariance(E), lin.P0, atol=1e-12)


def test_ekf_update_and_forecast_one_step(lin):
    x, P = enkit.ekf_forecast(lin.model, lin.x0, lin.P0, Q=lin.Q)
    np.testing.assert_allclose(x, lin.M @ lin.x0, atol=1e-13)
    np.testing.assert_allclose(P, lin.M @ lin.P0 @ lin.M.T + lin.Q, atol=1e-12)
    got = enkit.ekf_update(x, P, lin.ys[0], lin.h, lin.R)
    want = enkit.kalman_update(x, P, lin.ys[0], lin.H, lin.R)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-12)
    # The uniform-signature EKF analysis is enkit.kalman (h linearised at the mean).
    got_u = enkit.ukf_update(x, P, lin.ys[0], lin.h, lin.R)
    for g, w in zip(got_u, want):
        np.testing.assert_allclose(g, w, atol=1e-12)


def test_nonlinear_observation_linearised_at_the_mean():
    """EKF analysis with h(x) = x²: H = diag(2x̄), innovation y − x̄²."""
    x, P, y, R = jnp.array([1.0, -2.0]), jnp.eye(2) * 0.5, jnp.array([1.5, 3.0]), 0.1
    got = enkit.ekf_update(x, P, y, lambda v: v**2, R)
    H = jnp.diag(2 * x)
    S = H @ P @ H.T + R * jnp.eye(2)
    K = P @ H.T @ jnp.linalg.inv(S)
    np.testing.assert_allclose(got[0], x + K @ (y - x**2), atol=1e-12)


def test_filters_do_not_recompile(lin):
    lin2 = LinearProblem(seed=1)
    for f in (enkit.ekf_filter, enkit.ukf_filter):
        f(lin.model, lin.x0, lin.P0, lin.ys, h=lin.H, R=lin.R, Q=lin.Q)
        before = enkit.filters._gaussian.gaussian_filter_scan._cache_size()
        f(lin.model, lin2.x0, lin2.P0, lin2.ys, h=lin2.H, R=lin2.R, Q=lin2.Q)
        assert enkit.filters._gaussian.gaussian_filter_scan._cache_size() == before


# ------------------------------------------------------------ sigma points


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(3)
    n = 3
    C = rng.normal(size=(n, n))
    return rng.normal(size=n), C @ C.T + 0.5 * np.eye(n)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_sigma_points_reproduce_the_gaussian(gaussian, scaling):
    m, P = gaussian
    sp = enkit.unscented_sigma_points(m, P, **scaling)
    assert sp.points.shape == (7, 3)
    np.testing.assert_allclose(jnp.sum(sp.mean_weights), 1.0, atol=1e-14)
    mu, C = enkit.sigma_point_moments(*sp)
    np.testing.assert_allclose(mu, m, atol=1e-13)
    np.testing.assert_allclose(C, P, atol=1e-12)
    # any square root gives the same moments
    L = np.linalg.cholesky(P) @ np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    sp2 = enkit.unscented_sigma_points(m, root=L, **scaling)
    np.testing.assert_allclose(enkit.sigma_point_moments(*sp2)[1], P, atol=1e-12)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_unscented_transform_of_an_affine_map_is_exact(gaussian, scaling):
    m, P = gaussian
    rng = np.random.default_rng(4)
    A, b = rng.normal(size=(5, 3)), rng.normal(size=5)
    ut = enkit.unscented_transform(lambda x: A @ x + b,
                                   enkit.unscented_sigma_points(m, P, **scaling))
    np.testing.assert_allclose(ut.mean, A @ m + b, atol=1e-12)
    np.testing.assert_allclose(ut.covariance, A @ P @ A.T, atol=1e-11)
    np.testing.assert_allclose(ut.cross_covariance, P @ A.T, atol=1e-11)


@pytest.mark.parametrize("scaling", SCALINGS)
def test_unscented_transform_of_a_quadratic_has_the_exact_mean(gaussian, scaling):
    """E[xᵀ A x] = tr(A P) + mᵀ A m and E[x ⊙ x] = m² + diag P."""
    m, P = gaussian
    A = np.array([[2.0, 0.3, -1.0], [0.3, 1.0, 0.5], [-1.0, 0.5, -0.7]])
    f = lambda x: jnp.stack([x @ jnp.asarray(A) @ x, *(x * x)])  # noqa: E731
    ut = enkit.unscented_transform(f, enkit.unscented_sigma_points(m, P, **scaling))
    want = np.concatenate([[np.trace(A @ P) + m @ A @ m], m**2 + np.diag(P)])
    np.testing.assert_allclose(ut.mean, want, atol=1e-12)


def test_julier_kappa_gets_the_variance_of_a_square_in_one_dimension():
    """n = 1, κ = 3 − n matches the Gaussian's fourth moment:
    Var[x²] = 4 m² σ² + 2 σ⁴ exactly."""
    m, s2 = 1.3, 0.7
    ut = enkit.unscented_transform(lambda x: x**2, enkit.unscented_sigma_points(
        jnp.array([m]), jnp.array([[s2]]), kappa=2.0))
    np.testing.assert_allclose(ut.mean[0], m**2 + s2, atol=1e-13)
    np.testing.assert_allclose(ut.covariance[0, 0], 4 * m**2 * s2 + 2 * s2**2, atol=1e-12)


def test_uki_draws_the_central_set(gaussian):
    m, P = gaussian
    prior = enkit.GaussianPrior(jnp.asarray(m), jnp.asarray(P))
    uki = enkit.UKI(prior, spread=1.7)
    pts = uki.ask(uki.init())
    sp = enkit.central_sigma_points(m, P, spread=1.7)
    np.testing.assert_array_equal(pts, sp.points)
    mu, C = enkit.sigma_point_moments(*sp)
    np.testing.assert_allclose(mu, m, atol=1e-14)
    np.testing.assert_allclose(C, P, atol=1e-12)


def test_uki_is_unchanged_on_a_recorded_run():
    """Values recorded before UKI drew its points from enkit.sigma_points."""
    rng = np.random.default_rng(0)
    p, d = 4, 6
    A, y = rng.normal(size=(d, p)), rng.normal(size=d)
    uki = enkit.UKI(enkit.GaussianPrior(jnp.zeros(p), jnp.eye(p)))
    st = uki.init()
    for _ in range(5):
        st, _ = uki.tell(st, uki.ask(st) @ A.T, y, enkit.Scalar(0.3, d))
    np.testing.assert_allclose(st.mean, [0.26863492699251784, 0.29104457472572115,
                                         0.35391275810972883, -0.24903274329373948],
                               atol=1e-12)


# ------------------------------------------------------------ Lorenz-63


@pytest.fixture(scope="module")
def l63():
    case = sakov2012_lorenz63(cycles=120, burn_in=20)
    twin = case.twin(seed=0)
    return case, twin.truth, twin.observations


def _rmse(case, truth, means):
    err = np.asarray(means)[case.burn_in:] - np.asarray(truth)[case.burn_in:]
    return float(np.mean(np.sqrt(np.mean(err**2, axis=1))))


def test_lorenz63_ekf_and_ukf_stay_finite_and_track(l63):
    case, truth, ys = l63
    x0 = jnp.asarray(case.x0)  # the truth's start, P0 = ensemble_std² I as in DAPPER
    P0 = 2.0 * jnp.eye(3)
    ekf = enkit.ekf_filter(case.model, x0, P0, ys, h=case.h, R=case.R,
                           steps_per_obs=case.steps_per_obs, inflation=180.0**0.01)
    ukf = enkit.ukf_filter(case.model, x0, P0, ys, h=case.h, R=case.R,
                           steps_per_obs=case.steps_per_obs, inflation=180.0**0.01)
    E0 = enkit.ukf_ensemble(x0, P0)
    drv = enkit.assimilate(case.model, E0, ys, partial(enkit.ukf, model_noise=0.5 * jnp.eye(3)),
                           h=case.h, R=case.R, steps_per_obs=case.steps_per_obs)
    scores = {}
    for name, means in (("ekf", ekf.analysis_mean), ("ukf", ukf.analysis_mean),
                        ("ukf driver", drv.analysis_mean)):
        assert np.all(np.isfinite(np.asarray(means))), name
        scores[name] = _rmse(case, truth, means)
    print("Lorenz-63 analysis RMSE", scores)
    for name, r in scores.items():
        assert r < 1.4, (name, r)  # obs error is sqrt(2) ≈ 1.41; DAPPER ExtKF ≈ 0.92


def test_float32_smoke(lin):
    f32 = partial(jnp.asarray, dtype=jnp.float32)
    for f in (enkit.ekf_filter, enkit.ukf_filter):
        res = f(lin.model, f32(lin.x0), f32(lin.P0), f32(lin.ys), h=f32(lin.H),
                R=f32(lin.R), Q=f32(lin.Q))
        assert res.analysis_mean.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(res.analysis_covariance)))
    E = enkit.ukf_ensemble(f32(lin.x0), f32(lin.P0))
    Ea = enkit.ukf(E, f32(lin.ys[0]), f32(lin.H), f32(lin.R))
    assert Ea.dtype == jnp.float32 and Ea.shape == E.shape
    sp = enkit.unscented_sigma_points(f32(lin.x0), f32(lin.P0))
    assert sp.points.dtype == sp.mean_weights.dtype == jnp.float32


# ------------------------------------------------------------ errors


def test_clear_errors(lin):
    with pytest.raises(ValueError, match=r"E must be a sigma-point ensemble of shape \(2n \+ 1"):
        enkit.ukf(jnp.ones((5, 4)) + jnp.arange(5.0)[:, None], lin.ys[0], lin.H, lin.R)
    with pytest.raises(ValueError, match="alpha"):
        enkit.ukf_ensemble(lin.x0, lin.P0, alpha=0.0)
    with pytest.raises(ValueError, match="kappa"):
        enkit.unscented_sigma_points(lin.x0, lin.P0, kappa=-4.0)
    with pytest.raises(TypeError, match="exactly one of cov"):
        enkit.unscented_sigma_points(lin.x0)
    with pytest.raises(ValueError, match="positive definite"):
        enkit.unscented_sigma_points(lin.x0, -np.eye(4))
    with pytest.raises(ValueError, match=r"cov must have shape \(n, n\)"):
        enkit.unscented_sigma_points(lin.x0, np.eye(3))
    with pytest.raises(ValueError, match="cov0 must be a covariance of dimension n = 4"):
        enkit.ekf_filter(lin.model, lin.x0, np.eye(3), lin.ys, h=lin.H, R=lin.R)
    with pytest.raises(ValueError, match="Q must be None or a covariance"):
        enkit.ukf_filter(lin.model, lin.x0, lin.P0, lin.ys, h=lin.H, R=lin.R, Q=np.eye(2))
    with pytest.raises(ValueError, match="observations must have"):
        enkit.ekf_filter(lin.model, lin.x0, lin.P0, lin.ys[0], h=lin.H, R=lin.R)
    with pytest.raises(ValueError, match="steps_per_obs"):
        enkit.ekf_filter(lin.model, lin.x0, lin.P0, lin.ys, h=lin.H, R=lin.R, steps_per_obs=0)
    with pytest.raises(ValueError, match="inflation"):
        enkit.ekf_filter(lin.model, lin.x0, lin.P0, lin.ys, h=lin.H, R=lin.R, inflation=-1.0)
    with pytest.raises(ValueError, match="model must map a state of shape"):
        enkit.ukf_filter(lambda x: x[:2], lin.x0, lin.P0, lin.ys, h=lin.H, R=lin.R)
    with pytest.raises(ValueError, match="h as a matrix must have shape"):
        enkit.ekf_filter(lin.model, lin.x0, lin.P0, lin.ys, h=np.eye(4), R=lin.R)
    with pytest.raises(ValueError, match="h must map one state"):
        enkit.ekf_update(lin.x0, lin.P0, lin.ys[0], lambda x: x, lin.R)
    with pytest.raises(TypeError, match="model must be a callable"):
        enkit.ekf_filter(None, lin.x0, lin.P0, lin.ys, h=lin.H, R=lin.R)


def test_ukf_in_the_driver_over_a_window_of_several_steps(lin):
    """steps_per_obs = 3: the points go through M³ without a redraw and the
    scheme's model_noise is added once per window, P_f = M³ P M³ᵀ + Q."""
    M3 = np.linalg.matrix_power(lin.M, 3)
    x, P, want = lin.x0, lin.P0, []
    for y in lin.ys:
        x, P = M3 @ x, M3 @ P @ M3.T + lin.Q
        S = lin.H @ P @ lin.H.T + lin.R
        K = np.linalg.solve(S, lin.H @ P).T
        x, P = x + K @ (y - lin.H @ x), P - K @ S @ K.T
        want.append((x, P))
    res = enkit.assimilate(lin.model, enkit.ukf_ensemble(lin.x0, lin.P0), lin.ys,
                           partial(enkit.ukf, model_noise=lin.Q), h=lin.H, R=lin.R,
                           steps_per_obs=3, store=("analysis_ensemble",))
    ma, Ca = jax.vmap(enkit.ukf_moments)(res.analysis_ensemble)
    np.testing.assert_allclose(ma, np.array([w[0] for w in want]), atol=1e-10)
    np.testing.assert_allclose(Ca, np.array([w[1] for w in want]), atol=1e-10)
