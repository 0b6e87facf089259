"""enkit.losses: scalar losses of a run, exact and differentiable."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit import losses

n, m, K, N = 3, 2, 6, 8
A = jnp.array([[0.9, 0.2, 0.0], [0.0, 0.8, 0.3], [0.1, 0.0, 0.95]])
H = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
R = 0.5 * jnp.eye(m)


def _model(x):
    return A @ x


@pytest.fixture(scope="module")
def problem():
    key = jax.random.key(0)
    x = jnp.array([1.0, -1.0, 0.5])
    ys = []
    for k in range(K):
        x = A @ x
        ys.append(H @ x + jnp.sqrt(0.5) * jax.random.normal(jax.random.fold_in(key, k), (m,)))
    E0 = jax.random.normal(jax.random.fold_in(key, 99), (N, n))
    return jnp.stack(ys), E0


def _kalman_log_likelihood(E0, ys):
    x = E0.mean(0)
    P = jnp.cov(E0.T, ddof=1)
    total = 0.0
    for y in ys:
        x, P = A @ x, A @ P @ A.T
        S = H @ P @ H.T + R
        d = y - H @ x
        total += -0.5 * (d @ jnp.linalg.solve(S, d) + jnp.linalg.slogdet(S)[1]
                         + m * np.log(2 * np.pi))
        Kg = P @ H.T @ jnp.linalg.inv(S)
        x, P = x + Kg @ d, P - Kg @ H @ P
    return total


def _run(E0, ys, inflation=None, store=("log_likelihood",)):
    return enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=R, inflation=inflation,
                            store=store, on_nonfinite="ignore")


def test_negative_log_likelihood_of_the_etkf_is_the_kalman_filters(problem):
    ys, E0 = problem
    nll = losses.negative_log_likelihood(_run(E0, ys))
    np.testing.assert_allclose(nll, -_kalman_log_likelihood(E0, ys), rtol=1e-10)


def test_gradients_through_the_run_match_finite_differences(problem):
    ys, E0 = problem

    def loss(lam):
        return losses.negative_log_likelihood(_run(E0, ys, inflation=lam))

    g = jax.grad(loss)(1.1)
    eps = 1e-6
    fd = (loss(1.1 + eps) - loss(1.1 - eps)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6)

    def loss_e0(E):
        return losses.innovation_mse(_run(E, ys, store=("innovation_forecast",)))

    gE = jax.grad(loss_e0)(E0)
    v = jax.random.normal(jax.random.key(7), E0.shape)
    fd = (loss_e0(E0 + eps * v) - loss_e0(E0 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(gE * v), fd, rtol=1e-6)


def test_innovation_mse_counts_present_observations_only(problem):
    ys, E0 = problem
    mask = np.ones((K, m), bool)
    mask[2, 1] = mask[4, 0] = False
    res = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=R, mask=mask,
                           store=("innovation_forecast",))
    d = np.asarray(res.innovation_forecast)
    np.testing.assert_allclose(losses.innovation_mse(res, mask), np.mean(d[mask] ** 2))
    with pytest.raises(ValueError, match="shape"):
        losses.innovation_mse(res, mask[:2])


def test_crps_and_spread_skill_losses(problem):
    ys, E0 = problem
    truth = jnp.zeros((K, n))
    res = _run(E0, ys, store=("forecast_ensemble", "analysis_mean", "analysis_spread"))
    c = losses.crps_loss(res, truth)
    np.testing.assert_allclose(c, jnp.mean(enkit.crps(res.forecast_ensemble, truth).mean))
    s = losses.spread_skill_loss(res, truth)
    ratio = jnp.mean(res.analysis_spread) / jnp.mean(enkit.rmse(res.analysis_mean, truth))
    np.testing.assert_allclose(s, jnp.log(ratio) ** 2)
    # zero when the spread is exactly the RMSE
    fake = res._replace(analysis_spread=enkit.rmse(res.analysis_mean, truth))
    np.testing.assert_allclose(losses.spread_skill_loss(fake, truth), 0.0, atol=1e-20)
    assert np.isfinite(jax.grad(lambda E: losses.crps_loss(
        _run(E, ys, store=("forecast_ensemble",)), truth))(E0)).all()


def test_a_missing_output_is_named(problem):
    ys, E0 = problem
    res = _run(E0, ys, store=("analysis_mean",))
    with pytest.raises(ValueError, match="log_likelihood"):
        losses.negative_log_likelihood(res)
    with pytest.raises(ValueError, match="stage"):
        losses.crps_loss(res, jnp.zeros((K, n)), stage="smoothed")


def _segment(lam, E, y, key):
    r = enkit.assimilate(_model, E, y, enkit.enkf, h=H, R=R, inflation=lam, key=key,
                         store=("log_likelihood",), on_nonfinite="ignore")
    return losses.negative_log_likelihood(r), r.ensemble


def test_truncated_gradient_is_exact_for_one_window_and_sums_windows(problem):
    ys, E0 = problem
    key = jax.random.key(5)
    # one window: the run's loss and its exact gradient
    v, g, E = losses.truncated_value_and_grad(_segment, 1.1, E0, ys, window=K, key=key)
    v0, g0 = jax.value_and_grad(lambda lam: _segment(lam, E0, ys, jax.random.fold_in(key, 0))[0])(
        1.1)
    np.testing.assert_allclose([v, g], [v0, g0], rtol=1e-12)
    # windows of 4 (K = 6: one of 4, one of 2): each differentiated from its start
    v, g, E = losses.truncated_value_and_grad(_segment, 1.1, E0, ys, window=4, key=key)
    k0, k1 = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    (v1, E1), g1 = jax.value_and_grad(_segment, has_aux=True)(1.1, E0, ys[:4], k0)
    (v2, E2), g2 = jax.value_and_grad(_segment, has_aux=True)(1.1, E1, ys[4:], k1)
    np.testing.assert_allclose([v, g], [v1 + v2, g1 + g2], rtol=1e-12)
    np.testing.assert_allclose(E, E2, rtol=1e-12)
    assert abs(g - g0) > 1e-8 * abs(g0)  # truncated: not the exact gradient


def test_truncated_gradient_memory_does_not_grow_with_the_cycles(problem):
    ys, E0 = problem

    def temp(reps, truncated):
        y = jnp.tile(ys, (reps, 1))
        if truncated:
            def f(lam):
                return losses.truncated_value_and_grad(_segment, lam, E0, y, window=3,
                                                       key=1)[1]
        else:
            f = jax.grad(lambda lam: _segment(lam, E0, y, jax.random.key(1))[0])
        analysis = jax.jit(f).lower(1.1).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend gives no memory analysis")
        return analysis.temp_size_in_bytes

    # 35 more repetitions of the K = 6 cycles are 70 more windows of 3: at
    # most one float64 scalar per window may be added (the per-window
    # value), nothing that scales with the cycles' state (one (N, n)
    # ensemble per cycle would be 35·6·N·n·8 bytes)
    assert temp(40, True) - temp(5, True) <= 70 * 8
    assert temp(40, False) > 4 * temp(5, False)


def test_truncated_gradient_inputs_are_checked(problem):
    ys, E0 = problem
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="window must be a positive int"):
            losses.truncated_value_and_grad(_segment, 1.1, E0, ys, window=bad)
    with pytest.raises(ValueError, match="same leading axis"):
        losses.truncated_value_and_grad(_segment, 1.1, E0, (ys, ys[:3]), window=2)
