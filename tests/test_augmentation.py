"""Augmentation for joint state–parameter estimation, block inflation with a
parameter spread floor, and ADAO's EstimationOf="Parameters": the augmented
step against the plain model with each member's θ, the padded h, split
round trips, blocks left bit for bit, the Lorenz-96 forcing recovered from
noisy observations, and the sequential parameter-only ETKF against one batch
Kalman update (linear case)."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit._pytree import register_dataclass
from enkit.augmentation import (
    AugmentedModel,
    BlockInflation,
    FieldParameters,
    SpreadFloor,
    StateObservation,
    augment,
    augmented_ensemble,
    augmented_observation,
    estimate_parameters,
    split,
    spread_floor,
)
from enkit.inflation import (
    RTPS,
    AdaptiveMultiplicative,
    AdditiveForecast,
    MultiplicativeAnalysis,
    additive,
    rtps,
)


@dataclasses.dataclass(frozen=True)
class Damped:
    """x ↦ a x + u: a linear model with a control, parameter a (n,)."""

    a: jax.Array

    def __call__(self, x, u):
        return self.a * x + u


register_dataclass(Damped, data_fields=["a"], meta_fields=[])


# ------------------------------------------------------------- augmented model


def test_augmented_step_uses_each_members_parameter_and_keeps_it():
    rng = np.random.default_rng(0)
    model = enkit.Lorenz96(n=8)
    aug = augment(model, "F")
    assert (aug.n_state, aug.n_parameters, aug.dim, aug.dt) == (8, 1, 9, model.dt)
    X = 8 + rng.normal(size=(5, 8))
    F = rng.normal(8.0, 1.0, size=(5, 1))
    Z = aug.ensemble(X, F)
    out = np.asarray(jax.jit(jax.vmap(aug))(Z))
    for i in range(5):
        expect = enkit.Lorenz96(n=8, F=float(F[i, 0]))(X[i])
        np.testing.assert_allclose(out[i, :8], expect, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(out[:, 8:], F)


def test_named_fields_and_a_function_setter_agree():
    rng = np.random.default_rng(1)
    model = enkit.Lorenz63()
    by_name = augment(model, ("sigma", "rho"))
    assert isinstance(by_name.set_parameters, FieldParameters)
    np.testing.assert_array_equal(by_name.set_parameters.values(model), [10.0, 28.0])

    def set_sigma_rho(m, theta):
        return dataclasses.replace(m, sigma=theta[0], rho=theta[1])

    by_function = augment(model, set_sigma_rho, n_parameters=2)
    Z = augmented_ensemble(rng.normal(size=(4, 3)), rng.normal([10, 28], 1.0, size=(4, 2)))
    np.testing.assert_array_equal(jax.vmap(by_name)(Z), jax.vmap(by_function)(Z))


def test_augmented_model_with_controls_in_the_driver():
    rng = np.random.default_rng(2)
    n, N, K = 3, 6, 4
    aug = augment(Damped(jnp.full(n, 0.9)), "a", n_state=n)
    assert aug.n_parameters == n
    E0 = aug.ensemble(rng.normal(size=(N, n)), rng.normal(0.9, 0.05, size=(N, n)))
    u = rng.normal(size=(K + 1, n))
    z = aug(E0[0], u[0])
    np.testing.assert_allclose(z[:n], E0[0, n:] * E0[0, :n] + u[0], rtol=1e-15)
    np.testing.assert_array_equal(z[n:], E0[0, n:])
    # h(x, u) also gets the control; θ is not observed.
    h = aug.observation(lambda x, u: x + 0.0 * u)
    res = enkit.assimilate(aug, E0, rng.normal(size=(K, n)), enkit.etkf, h=h, R=1.0,
                           controls=u, store=("forecast_mean", "analysis_mean"))
    expect = jnp.mean(jax.vmap(aug)(E0, jnp.broadcast_to(u[0], (N, n))), axis=0)
    np.testing.assert_allclose(res.forecast_mean[0], expect, rtol=1e-14)
    assert res.analysis_mean.shape == (K, 2 * n)


def test_observation_sees_the_state_only():
    rng = np.random.default_rng(3)
    n, p, m, K = 4, 2, 3, 5
    H = rng.normal(size=(m, n))
    Ha = augmented_observation(H, n, p)
    assert Ha.shape == (m, n + p)
    np.testing.assert_array_equal(Ha[:, :n], H)
    np.testing.assert_array_equal(Ha[:, n:], 0.0)
    z = rng.normal(size=n + p)
    h = augmented_observation(jnp.sin, n, p)
    assert isinstance(h, StateObservation)
    np.testing.assert_array_equal(h(z), jnp.sin(z[:n]))
    stack = augmented_observation(enkit.per_time(rng.normal(size=(K, m, n))), n, p)
    assert isinstance(stack, enkit.PerTime) and stack.value.shape == (K, m, n + p)
    assert [a.shape for a in augmented_observation([H, H[:2]], n, p)] == [(m, n + p), (2, n + p)]
    with pytest.raises(ValueError, match="n_state = 4 columns"):
        augmented_observation(rng.normal(size=(m, n + p)), n, p)
    with pytest.raises(ValueError, match=r"\(m, n\) matrix"):
        augmented_observation(rng.normal(size=(K, m, n)), n, p)


def test_split_round_trips():
    rng = np.random.default_rng(4)
    K, N, n, p = 3, 5, 4, 2
    ens = rng.normal(size=(K, N, n + p))
    mean = ens.mean(1)
    result = enkit.AssimilationResult(
        ensemble=ens[-1], analysis_mean=mean, forecast_mean=mean + 1.0,
        analysis_ensemble=ens)
    s = split(result, n)
    np.testing.assert_array_equal(s.state_mean, mean[:, :n])
    np.testing.assert_array_equal(s.parameter_mean, mean[:, n:])
    np.testing.assert_array_equal(s.parameter_forecast_mean, mean[:, n:] + 1.0)
    np.testing.assert_allclose(s.parameter_std, ens.std(1, ddof=1)[:, n:], rtol=1e-13)
    np.testing.assert_array_equal(
        augmented_ensemble(s.state_ensemble, s.parameter_ensemble), ens[-1])
    std = jnp.asarray(ens.std(1, ddof=1))
    s2 = split(result._replace(analysis_std=std, analysis_ensemble=None), n)
    np.testing.assert_array_equal(s2.state_std, std[:, :n])
    assert split(enkit.AssimilationResult(ensemble=ens[-1]), n).state_std is None
    fields = enkit.AssimilationResult(ensemble=ens[-1])._asdict()
    fields["smoothed_mean"] = mean - 1.0  # a smoother's result also has smoothed_mean
    smoothed = types.SimpleNamespace(**fields)
    np.testing.assert_array_equal(split(smoothed, n).parameter_smoothed_mean, mean[:, n:] - 1.0)


# ------------------------------------------------------------- block inflation


def _augmented_pair(N=8, n=5, p=2, seed=5):
    rng = np.random.default_rng(seed)
    Ef = 3.0 + rng.normal(size=(N, n + p))
    Ea = 1.0 + 0.4 * (Ef - Ef.mean(0)) + 0.1 * rng.normal(size=(N, n + p))
    return jnp.asarray(Ef), jnp.asarray(Ea)


def test_block_inflation_touches_only_its_block():
    Ef, Ea = _augmented_pair()
    n = 5
    state_only = BlockInflation(state=MultiplicativeAnalysis(1.3), n_state=n)
    out, _ = state_only.after_analysis(state_only.init(Ef), None, Ef, Ea)
    np.testing.assert_array_equal(out[:, n:], Ea[:, n:])
    np.testing.assert_allclose(out[:, :n], enkit.multiplicative_inflation(Ea[:, :n], 1.3),
                               rtol=1e-15)
    params_only = BlockInflation(parameters=RTPS(0.7), n_state=n)
    out, _ = params_only.after_analysis(params_only.init(Ef), None, Ef, Ea)
    np.testing.assert_array_equal(out[:, :n], Ea[:, :n])
    np.testing.assert_array_equal(out[:, n:], rtps(Ef[:, n:], Ea[:, n:], 0.7))
    # A stochastic step before the analysis, with the block's sub-key.
    key = jax.random.key(0)
    Q = enkit.Scalar(0.5, n)
    noisy = BlockInflation(state=AdditiveForecast(Q), n_state=n)
    out, _ = noisy.before_analysis(noisy.init(Ef), key, Ef, None, None, None, None)
    np.testing.assert_array_equal(out[:, n:], Ef[:, n:])
    np.testing.assert_array_equal(
        out[:, :n], additive(Ef[:, :n], Q, key=jax.random.fold_in(key, 0)))


def test_block_inflation_gives_adaptive_steps_the_blocks_h():
    Ef, _ = _augmented_pair(N=10)
    n, p = 5, 2
    rng = np.random.default_rng(6)
    H = rng.normal(size=(3, n))
    y = np.asarray(Ef[:, :n].mean(0) @ H.T) + 3.0 * rng.normal(size=3)
    plain = AdaptiveMultiplicative()
    expect, est = plain.before_analysis(plain.init(Ef[:, :n]), None, Ef[:, :n], y, H, 0.5, None)
    step = BlockInflation(state=AdaptiveMultiplicative(), n_state=n)
    out, (est_b, _) = step.before_analysis(
        step.init(Ef), None, Ef, y, augmented_observation(H, n, p), enkit.Scalar(0.5, 3), None)
    np.testing.assert_allclose(out[:, :n], expect, rtol=1e-12)
    np.testing.assert_allclose(est_b.factor, est.factor, rtol=1e-12)
    np.testing.assert_array_equal(out[:, n:], Ef[:, n:])


def test_spread_floor():
    rng = np.random.default_rng(7)
    E = rng.normal(size=(20, 3)) * np.array([0.01, 1.0, 0.02]) + 5.0
    out = np.asarray(spread_floor(E, 0.1))
    np.testing.assert_allclose(out.std(0, ddof=1), [0.1, E[:, 1].std(ddof=1), 0.1], rtol=1e-12)
    np.testing.assert_array_equal(out[:, 1], E[:, 1])
    np.testing.assert_allclose(out.mean(0), E.mean(0), rtol=1e-14)
    reset = np.asarray(SpreadFloor(0.1, 0.5).after_analysis((), None, E, E)[0])
    np.testing.assert_allclose(reset.std(0, ddof=1)[[0, 2]], 0.5, rtol=1e-12)
    flat = np.ones((4, 2))
    np.testing.assert_array_equal(spread_floor(flat, 0.1), flat)


# ------------------------------------------------------------- the case


def _lorenz96_forcing_run(scheme, floor, seed=0, N=20, K=300, driver=enkit.assimilate,
                          **options):
    """Truth F = 8, all 40 variables observed every step with R = I, initial
    F ensemble N(7, 0.5²); ETKF/DEnKF with 2 % multiplicative state inflation."""
    rng = np.random.default_rng(seed)
    model = enkit.Lorenz96(n=40)
    H = jnp.eye(40)
    twin = enkit.twin_experiment(model, 8 + rng.normal(size=40), key=seed, n_obs=K,
                                 h=H, R=1.0, spinup=500)
    aug = augment(model, "F")
    E0 = aug.ensemble(twin.x0 + rng.normal(size=(N, 40)), rng.normal(7.0, 0.5, size=(N, 1)))
    inflation = BlockInflation(state=MultiplicativeAnalysis(1.02),
                               parameters=SpreadFloor(floor), n_state=40)
    store = ("analysis_mean", "analysis_std") + (("smoothed_mean",) if options else ())
    result = driver(aug, E0, twin.observations, scheme, h=aug.observation(H), R=1.0,
                    inflation=inflation, store=store, **options)
    return aug.split(result), twin


@pytest.mark.parametrize("scheme", [enkit.etkf, enkit.denkf], ids=["etkf", "denkf"])
def test_recovers_the_lorenz96_forcing(scheme):
    s, twin = _lorenz96_forcing_run(scheme, floor=0.05)
    F = np.asarray(s.parameter_mean[:, 0])
    assert abs(F[0] - 8.0) > 0.5  # it starts far from the truth
    assert abs(F[-100:].mean() - 8.0) / 8.0 < 0.02  # measured: 0.02 % (etkf), 0.2 % (denkf)
    np.testing.assert_allclose(s.parameter_std[-1], 0.05, rtol=1e-10)  # held at the floor
    state_rmse = np.sqrt(np.mean((np.asarray(s.state_mean[-100:]) - twin.truth[-100:]) ** 2))
    assert state_rmse < 0.4  # below the observation error (1)


def test_smoothing_the_augmented_state():
    """The EnKS smooths the parameter too: the transforms of the five later
    analyses pull the early estimates of F towards the truth."""
    s, _ = _lorenz96_forcing_run(enkit.etkf, floor=0.05, K=120, driver=enkit.enks, lag=5)
    F_filter = np.asarray(s.parameter_mean[:, 0])
    F_smooth = np.asarray(s.parameter_smoothed_mean[:, 0])
    assert abs(F_smooth[-20:].mean() - 8.0) / 8.0 < 0.02
    assert abs(F_smooth[0] - 8.0) < abs(F_filter[0] - 8.0)


def test_without_a_floor_the_parameter_spread_collapses():
    s, _ = _lorenz96_forcing_run(enkit.etkf, floor=0.0)
    assert float(s.parameter_std[-1, 0]) < 0.01  # measured 1.3e-4, from 0.5


def test_float32_smoke():
    rng = np.random.default_rng(9)
    aug = augment(enkit.Lorenz96(n=8), "F")
    E0 = aug.ensemble(8 + rng.normal(size=(6, 8)).astype(np.float32),
                      rng.normal(7.0, 0.5, size=(6, 1)).astype(np.float32))
    inflation = BlockInflation(state=RTPS(0.5), parameters=SpreadFloor(0.1), n_state=8)
    res = enkit.assimilate(aug, E0, 8 + rng.normal(size=(10, 8)).astype(np.float32), enkit.etkf,
                           h=aug.observation(jnp.eye(8)), R=1.0, inflation=inflation)
    assert res.ensemble.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(res.ensemble)))
    theta = estimate_parameters(E0[:, 8:], np.ones((3, 1), np.float32), enkit.etkf,
                                h=jnp.ones((1, 1)), R=1.0)
    assert theta.ensemble.dtype == jnp.float32


# ------------------------------------------------------------- EstimationOf="Parameters"


def _batch_problem(N=5, p=3, m=2, K=4, seed=8):
    rng = np.random.default_rng(seed)
    L = np.eye(p) + 0.3 * rng.normal(size=(p, p))
    theta0 = rng.normal(size=p) + rng.normal(size=(N, p)) @ L
    Hs = rng.normal(size=(K, m, p))
    variances = rng.uniform(0.2, 1.0, size=(K, m))
    ys = rng.normal(size=(K, m))
    return theta0, Hs, variances, ys


def _batch_update(theta0, Hs, variances, ys):
    """One Kalman update of the ensemble's mean and covariance with all K
    observations stacked."""
    mean, cov = theta0.mean(0), np.cov(theta0, rowvar=False, ddof=1)
    return enkit.kalman_update(mean, cov, ys.reshape(-1), Hs.reshape(-1, Hs.shape[-1]),
                               enkit.Diagonal(variances.reshape(-1)))


def _final_stats(result):
    return result.analysis_mean[-1], result.analysis_covariance[-1]


def test_parameter_estimation_equals_one_batch_kalman_update():
    theta0, Hs, variances, ys = _batch_problem()
    result = estimate_parameters(
        theta0, ys, enkit.etkf, h=enkit.per_time(Hs),
        R=enkit.stack_covariances([enkit.Diagonal(v) for v in variances]),
        store=("analysis_mean", "analysis_covariance"))
    mean_b, cov_b = _batch_update(theta0, Hs, variances, ys)
    mean_s, cov_s = _final_stats(result)
    np.testing.assert_allclose(mean_s, mean_b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cov_s, cov_b, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(result.times, np.arange(1, 5))
    # The same with one ETKF analysis of the stacked observations.
    E = enkit.etkf(theta0, ys.reshape(-1), Hs.reshape(-1, 3),
                   enkit.Diagonal(variances.reshape(-1)))
    np.testing.assert_allclose(result.ensemble.mean(0), E.mean(0), atol=1e-9)


def test_parameter_estimation_with_controls_pairs_u_k_with_y_k():
    theta0, Hs, variances, ys = _batch_problem()
    A = Hs[0]
    u = np.array([0.5, -1.0, 2.0, 1.5])
    result = estimate_parameters(
        theta0, ys, enkit.etkf, h=lambda theta, u_k: u_k * (A @ theta),
        R=enkit.Diagonal(variances[0]), controls=u,
        store=("analysis_mean", "analysis_covariance"))
    mean_b, cov_b = _batch_update(theta0, u[:, None, None] * A,
                                  np.broadcast_to(variances[0], (4, 2)), ys)
    mean_s, cov_s = _final_stats(result)
    np.testing.assert_allclose(mean_s, mean_b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cov_s, cov_b, rtol=0, atol=1e-9)


# ------------------------------------------------------------- errors


def test_errors_name_the_argument():
    model = enkit.Lorenz96(n=8)
    with pytest.raises(ValueError, match=r"Lorenz96 has no field 'G'.*n, F, dt"):
        augment(model, "G")
    with pytest.raises(ValueError, match="field 'n' of Lorenz96 is static"):
        augment(model, "n")
    with pytest.raises(TypeError, match="n_parameters="):
        augment(model, lambda m, t: m)
    with pytest.raises(TypeError, match="n_state="):
        augment(Damped(jnp.ones(3)), "a")
    with pytest.raises(ValueError, match="n_parameters=2 disagrees"):
        augment(model, "F", n_parameters=2)
    with pytest.raises(ValueError, match="z must have shape"):
        augment(model, "F")(jnp.zeros(8))
    with pytest.raises(ValueError, match="same number of members"):
        augmented_ensemble(np.zeros((4, 8)), np.zeros((5, 1)))
    with pytest.raises(ValueError, match=r"parameters must have shape \(N, p\)"):
        augmented_ensemble(np.zeros((4, 8)), np.zeros(4))
    with pytest.raises(ValueError, match=r"states must have shape \(N, 8\)"):
        augment(model, "F").ensemble(np.zeros((4, 7)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="n_state must be a positive integer"):
        BlockInflation(n_state=0)
    with pytest.raises(TypeError, match="parameters must be an InflationStep"):
        BlockInflation(parameters=1.02, n_state=3)
    with pytest.raises(ValueError, match=r"BlockInflation\(n_state=8\) needs"):
        BlockInflation(n_state=8).init(jnp.zeros((4, 8)))
    theta0, Hs, variances, ys = _batch_problem()
    with pytest.raises(ValueError, match="controls must have a leading axis of K = 4"):
        estimate_parameters(theta0, ys, enkit.etkf, h=lambda t, u: t[:2], R=1.0,
                            controls=np.ones(5))
    with pytest.raises(ValueError, match=r"theta0 must have shape \(N, p\)"):
        estimate_parameters(theta0[:, 0], ys, enkit.etkf, h=Hs[0], R=1.0)
    with pytest.raises(TypeError, match="JAX-traceable model"):
        augment(enkit.BlackBoxModel(lambda x: x), "dt")
    assert isinstance(augment(model, "F"), AugmentedModel)
