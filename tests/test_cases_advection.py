"""Linear advection model, smooth random fields, and the Evensen (2009)
linear advection and Lorenz-05 model II cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.models import LinearAdvection, SmoothRandomField
from enkit.models.cases import (
    Case,
    evensen2009_linear_advection,
    lorenz2005_model2,
    sakov2012_lorenz63,
)
from reference.kalman_numpy import kalman_analysis, sample_stats

# The exactness setting: n = 40 cells, N = 60 members (N − 1 ≥ n, so the
# ensemble's sample covariance has full rank), 12 analyses.
SMALL = dict(n=40, length=5.0, cycles=12)
N_SMALL = 60


@pytest.fixture(scope="module")
def small_run():
    case = evensen2009_linear_advection(**SMALL)
    run = case.run(enkit.etkf, N_SMALL, seed=3,
                   store=("analysis_mean", "analysis_covariance", "analysis_spread"))
    return case, run


@pytest.fixture(scope="module")
def draws():
    field = SmoothRandomField(200, 10.0)
    return field, np.asarray(field.sample(jax.random.key(11), (4000,)))


def test_advection_step_is_an_exact_shift():
    n = 37
    model = LinearAdvection(n=n)
    x = jnp.asarray(np.random.default_rng(0).normal(size=n))
    np.testing.assert_array_equal(model(x), jnp.roll(x, 1))
    np.testing.assert_array_equal(model.matrix() @ x, model(x))
    back = jax.jit(lambda x: enkit.models.integrate(model, x, n))(x)
    np.testing.assert_array_equal(back, x)  # n steps of one cell: the state again
    np.testing.assert_array_equal(LinearAdvection(n=n, shift=-3)(x), jnp.roll(x, -3))
    E = jnp.stack([x, 2 * x])  # leading axes are carried
    np.testing.assert_array_equal(model(E), jnp.roll(E, 1, axis=-1))
    assert jax.tree_util.tree_leaves(model) == [1.0]  # dt; n and shift are static
    assert model.dim == n


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), "n must be an integer >= 2"),
    (dict(n=10.0), "n must be an integer >= 2"),
    (dict(shift=0.5), "shift must be an integer"),
])
def test_advection_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearAdvection(**kwargs)


def test_smooth_field_spectrum_has_unit_variance_and_stated_decorrelation():
    field = SmoothRandomField(200, 10.0)
    rho = field.correlation()
    assert rho[0] == pytest.approx(1.0, abs=1e-12)
    assert rho[10] == pytest.approx(np.exp(-1.0), abs=1e-12)
    np.testing.assert_allclose(rho[:30], np.exp(-(np.arange(30) / 10.0) ** 2), atol=1e-6)
    C = field.covariance()
    np.testing.assert_allclose(np.diag(C), 1.0, atol=1e-12)
    np.testing.assert_allclose(C, C.T, atol=1e-14)
    assert np.min(np.linalg.eigvalsh(C)) > -1e-10


def test_smooth_field_draws_have_unit_variance_and_stated_decorrelation(draws):
    # 4000 fields of 200 cells: the variance of one cell is estimated to
    # ±sqrt(2/4000) ≈ 0.022 and a lag product to ±0.017 (one standard
    # error); averaging over the cells only shrinks these, 0.03 is ≥ 1.4 s.e.
    field, X = draws
    assert X.shape == (4000, 200)
    assert abs(np.mean(X)) < 0.03
    assert np.mean(X**2) == pytest.approx(1.0, abs=0.03)
    for lag in (1, 5, 10, 20):
        product = np.mean(X * np.roll(X, -lag, axis=1))
        assert product == pytest.approx(field.correlation()[lag], abs=0.03), lag
    assert np.mean(X * np.roll(X, -10, axis=1)) == pytest.approx(np.exp(-1.0), abs=0.03)
    # the empirical covariance of one cell with the others follows C
    c0 = X.T @ X[:, 0] / X.shape[0]
    np.testing.assert_allclose(c0, field.covariance()[:, 0], atol=0.08)


def test_smooth_field_sampling_is_reproducible_and_typed():
    field = SmoothRandomField(64, 4.0)
    a = field.sample(jax.random.key(0), (3,))
    b = field.sample(jax.random.key(0), (3,))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == (3, 64) and a.dtype == jnp.float64
    assert field.sample(jax.random.key(0), dtype=jnp.float32).dtype == jnp.float32
    assert field.sample(jax.random.key(0)).shape == (64,)


@pytest.mark.parametrize("kwargs", [dict(n=3, length=1.0), dict(n=64, length=0.0),
                                    dict(n=64, length=32.0), dict(n=64, length="4")])
def test_smooth_field_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="must be"):
        SmoothRandomField(**kwargs)


def test_etkf_on_linear_advection_is_the_exact_kalman_filter(small_run):
    # Linear, noise-free model and N − 1 ≥ n: the ETKF carries the Kalman
    # filter started from its own initial sample mean and covariance.
    case, run = small_run
    twin = run.twin
    E0 = case.initial_ensemble(twin, N_SMALL, seed=3)
    mean, cov = sample_stats(E0)
    n, M = SMALL["n"], np.asarray(case.model.matrix())
    idx = (np.arange(4) * n) // 4
    H, R = np.eye(n)[idx], 0.01 * np.eye(4)
    for k in range(SMALL["cycles"]):
        for _ in range(case.steps_per_obs):
            mean, cov = M @ mean, M @ cov @ M.T
        mean, cov = kalman_analysis(mean, cov, np.asarray(twin.observations[k]), H, R)
        np.testing.assert_allclose(run.result.analysis_mean[k], mean, rtol=0, atol=1e-10)
        np.testing.assert_allclose(run.result.analysis_covariance[k], cov, rtol=0, atol=1e-10)
    # the analysis error shrinks as the observed points sweep the ring
    e = np.asarray(run.result.rmse(twin.truth))
    assert np.all(np.isfinite(e)) and e[-1] < 0.5 * e[0]


def test_advection_case_draws_truth_and_ensemble_from_the_prior(small_run):
    case, run = small_run
    assert case.x0 is None and case.initial_draw is not None and case.truth_draw is not None
    t3, t3b, t4 = case.twin(3, cycles=2), case.twin(3, cycles=2), case.twin(4, cycles=2)
    assert np.array_equal(np.asarray(t3.x0), np.asarray(t3b.x0))
    assert not np.allclose(t3.x0, t4.x0)  # the truth's start is drawn per seed
    np.testing.assert_array_equal(t3.truth[0], jnp.roll(t3.x0, case.steps_per_obs))
    assert t3.observations.shape == (2, 4)
    np.testing.assert_allclose(t3.times, [5.0, 10.0])
    E0 = case.initial_ensemble(t3, 500, seed=3)
    assert E0.shape == (500, SMALL["n"])
    # members = first guess + field: spread about one, and the mean away
    # from the truth by a field draw (the first guess), not by noise / sqrt(N)
    assert float(jnp.mean(jnp.var(E0, axis=0, ddof=1))) == pytest.approx(1.0, abs=0.25)
    assert float(jnp.sqrt(jnp.mean((jnp.mean(E0, axis=0) - t3.x0) ** 2))) > 0.3


def test_case_initial_draw_default_and_shape_check():
    # Without initial_draw the ensemble is x0 + ensemble_std · z, as before.
    case = sakov2012_lorenz63(cycles=5)
    twin = case.twin(seed=2)
    z = jax.random.normal(jax.random.fold_in(jax.random.key(2), 1), (7, 3))
    np.testing.assert_array_equal(case.initial_ensemble(twin, 7, seed=2),
                                  twin.x0 + case.ensemble_std * z)
    bad = Case(name="bad", model=case.model, x0=case.x0, steps_per_obs=1, h=case.h, R=case.R,
               ensemble_std=1.0, cycles=5, burn_in=0,
               initial_draw=lambda key, N, twin: jnp.zeros((N + 1, 3)))
    with pytest.raises(ValueError, match="initial_draw must return shape"):
        bad.initial_ensemble(twin, 4)


def test_advection_case_published_setting():
    case = evensen2009_linear_advection()
    assert case.model.n == 1000 and case.steps_per_obs == 5 and case.cycles == 60
    assert case.R.dim == 4 and float(case.R.dense()[0, 0]) == pytest.approx(0.01)
    x = jnp.arange(1000.0)
    np.testing.assert_array_equal(case.h(x), [0.0, 250.0, 500.0, 750.0])
    with pytest.raises(ValueError, match="n_points"):
        evensen2009_linear_advection(n_points=0)


def test_lorenz2005_model2_case_runs_below_the_observation_error():
    case = lorenz2005_model2(cycles=100, burn_in=30)
    assert case.model.n == 240 and case.model.K == 8 and case.model.smoothing is None
    run = case.run(enkit.etkf, 40, inflation=1.02)
    assert np.isfinite(run.rmse) and run.rmse < 0.3, run.rmse  # R = I: obs error 1
    assert run.twin.observations.shape == (100, 240)
    np.testing.assert_allclose(run.twin.times[:2], [0.05, 0.1])
    sparse = lorenz2005_model2(obs_stride=2, cycles=2)
    assert sparse.twin(0).observations.shape == (2, 120)
    with pytest.raises(ValueError, match="obs_stride"):
        lorenz2005_model2(obs_stride=0)
