"""Reverse-mode gradients through whole assimilation runs: against central
finite differences and forward mode, for the hyperparameters users learn
(model parameters, inflation, localisation radius, R, y, the ensemble),
with and without rematerialisation (``assimilate(remat=...)``)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.finite_differences import central_differences

import enkit
from enkit import losses
from enkit.assimilation import compiled
from enkit.localization import periodic_distance
from enkit.models import Lorenz96

n, N, K = 40, 20, 50
GRID = np.arange(n, dtype=float)
OBS = GRID[::2]  # every second variable observed
H = np.eye(n)[::2]


@pytest.fixture(scope="module")
def twin():
    truth = enkit.twin_experiment(Lorenz96(n=n, F=8.0, dt=0.05), 8.0 + np.sin(GRID), key=0,
                                  n_obs=K, h=H, R=1.0, spinup=200)
    rng = np.random.default_rng(1)
    E0 = np.asarray(truth.x0) + rng.standard_normal((N, n))
    return jnp.asarray(E0), truth.observations


def _letkf(radius):
    return partial(enkit.letkf, state_coords=GRID, obs_coords=OBS, radius=radius,
                   distance=partial(periodic_distance, period=float(n)))


def _nll(p, E0, ys, local=False):
    """The run's negative log-likelihood; p = (F, inflation[, radius])."""
    scheme = _letkf(p[2]) if local else enkit.etkf
    r = enkit.assimilate(Lorenz96(n=n, F=p[0], dt=0.05), E0, ys, scheme, h=H, R=1.0,
                         inflation=p[1], store=("log_likelihood",), on_nonfinite="ignore")
    return losses.negative_log_likelihood(r)


@pytest.mark.parametrize("local", [False, True], ids=["etkf", "letkf"])
def test_a_50_cycle_lorenz96_run_differentiates_in_f_inflation_and_radius(twin, local):
    E0, ys = twin
    p = jnp.array([7.5, 1.05, 3.0] if local else [7.5, 1.05])
    f = jax.jit(lambda p: _nll(p, E0, ys, local))
    g = jax.jit(jax.grad(f))(p)
    fd = central_differences(lambda q: float(f(jnp.asarray(q))), p, 1e-5, relative=True)
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(p), g, rtol=1e-10)
    assert np.all(g != 0)


def test_letkf_gradients_are_finite_with_observations_beyond_the_radius(twin):
    # radius 1.5: Gaspari-Cohn support 3, so each grid point sees 2-3 of the
    # 20 observations and every other one has weight exactly 0.
    E0, ys = twin
    ys = ys[:5]

    def loss(E0, y, r, radius):
        res = enkit.assimilate(lambda x: x, E0, y, _letkf(radius), h=H, R=enkit.Diagonal(r),
                               store=("analysis_mean",), on_nonfinite="ignore")
        return jnp.sum(res.analysis_mean ** 2)

    args = (E0, ys, jnp.ones(n // 2), 1.5)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
    for g in grads:
        assert np.all(np.isfinite(g))
    assert float(grads[3]) != 0.0
    fd = (loss(*args[:3], 1.5 + 1e-6) - loss(*args[:3], 1.5 - 1e-6)) / 2e-6
    np.testing.assert_allclose(grads[3], fd, rtol=1e-5)


# ------------------------------------------------------------ remat


@pytest.mark.parametrize("remat", ["cycle", 5])
def test_remat_gives_the_same_values_and_gradients(twin, remat):
    E0, ys = twin
    ys = ys[:12]  # remat=5: two segments and a remainder of two cycles

    def loss(F, remat):
        r = enkit.assimilate(Lorenz96(n=n, F=F, dt=0.05), E0, ys, enkit.etkf, h=H, R=1.0,
                             inflation=1.02, remat=remat, store=("log_likelihood",
                                                                 "analysis_mean"))
        return losses.negative_log_likelihood(r) + jnp.sum(r.analysis_mean[-1])

    v0, g0 = jax.value_and_grad(loss)(7.8, None)
    v, g = jax.value_and_grad(loss)(7.8, remat)
    np.testing.assert_allclose(v, v0, rtol=1e-13)
    np.testing.assert_allclose(g, g0, rtol=1e-11)


def test_remat_lowers_the_memory_of_reverse_mode(twin):
    E0, ys = twin
    ys = jnp.tile(ys, (4, 1))  # 200 cycles

    def temp_bytes(remat):
        def loss(F):
            r = enkit.assimilate(Lorenz96(n=n, F=F, dt=0.05), E0, ys, enkit.etkf, h=H,
                                 R=1.0, remat=remat, store=("log_likelihood",),
                                 on_nonfinite="ignore")
            return losses.negative_log_likelihood(r)

        analysis = jax.jit(jax.grad(loss)).lower(8.0).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend gives no memory analysis")
        return analysis.temp_size_in_bytes

    plain, per_cycle, nested = temp_bytes(None), temp_bytes("cycle"), temp_bytes(14)
    assert per_cycle < plain / 3 and nested < per_cycle / 3


def test_remat_is_checked():
    E0 = np.random.default_rng(0).standard_normal((4, 2))
    for bad in (0, -3, 2.5, True, "segments"):
        with pytest.raises(ValueError, match="remat must be None, 'cycle' or a positive int"):
            enkit.assimilate(lambda x: x, E0, np.zeros((3, 2)), enkit.etkf, h=np.eye(2),
                             R=1.0, remat=bad)
    with pytest.raises(ValueError, match="remat applies to the compiled path"):
        enkit.assimilate(lambda x: x, E0, [np.zeros(2)] * 3, enkit.etkf, h=np.eye(2), R=1.0,
                         remat="cycle")


# ------------------------------------------------------- no recompilation


def test_new_hyperparameter_values_do_not_recompile(twin):
    E0, ys = twin
    ys = ys[:3]

    def run(F, lam, r):
        return enkit.assimilate(Lorenz96(n=n, F=F, dt=0.05), E0, ys, enkit.etkf, h=H,
                                R=enkit.Diagonal(r), inflation=lam)

    run(8.0, 1.01, jnp.ones(n // 2))
    before = compiled.run._cache_size()
    for F, lam, r in ((7.0, 1.1, 2.0), (9.5, 1.0, 0.5)):
        run(F, lam, r * jnp.ones(n // 2))
    assert compiled.run._cache_size() == before


# ---------------------------------------------- stochastic EnKF, operators


def test_stochastic_enkf_gradients_with_fixed_keys(twin):
    # The perturbations are drawn as R^{1/2} z with z fixed by the key, so
    # the run is a smooth function of R, F and E0 (reparameterisation).
    E0, ys = twin
    ys = ys[:10]

    def loss(p):
        r = enkit.assimilate(Lorenz96(n=n, F=p[0], dt=0.05), E0, ys, enkit.enkf, h=H,
                             R=enkit.Scalar(p[1], n // 2), key=3, store=("analysis_mean",),
                             on_nonfinite="ignore")
        return jnp.sum(r.analysis_mean ** 2)

    p = jnp.array([7.7, 0.8])
    f = jax.jit(loss)
    g = jax.grad(f)(p)
    fd = central_differences(lambda q: float(f(jnp.asarray(q))), p, 1e-6, relative=True)
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    np.testing.assert_allclose(jax.jacfwd(f)(p), g, rtol=1e-10)


def test_an_observation_operators_gain_and_bias_are_learned(twin):
    # The observing instrument reads gain·x + bias with gain 1.2, bias -0.5;
    # the filter's h has both as parameters, fitted by minimising the run's
    # negative log-likelihood (Gauss-Newton-free: plain gradient descent
    # with a line search from optax).
    optax = pytest.importorskip("optax")
    E0, _ = twin
    truth = enkit.twin_experiment(Lorenz96(n=n, F=8.0, dt=0.05), 8.0 + np.sin(GRID), key=4,
                                  n_obs=40, h=lambda x: 1.2 * x[::2] - 0.5, R=0.25,
                                  spinup=200)
    model = Lorenz96(n=n, F=8.0, dt=0.05)

    @jax.jit
    def loss(theta):
        r = enkit.assimilate(model, E0, truth.observations, enkit.etkf,
                             h=lambda x: theta[0] * x[::2] + theta[1], R=0.25,
                             inflation=1.05, store=("log_likelihood",), on_nonfinite="ignore")
        return losses.negative_log_likelihood(r)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(theta, state):
        value, grad = value_and_grad(theta, state=state)
        updates, state = solver.update(grad, state, theta, value=value, grad=grad,
                                       value_fn=loss)
        return optax.apply_updates(theta, updates), state

    theta = jnp.array([1.0, 0.0])
    state = solver.init(theta)
    for _ in range(15):
        theta, state = step(theta, state)
    np.testing.assert_allclose(theta, [1.2, -0.5], atol=0.05)


def test_varying_steps_with_model_noise_differentiate_in_reverse_mode():
    rng = np.random.default_rng(3)
    E0 = jnp.asarray(rng.standard_normal((5, 3)))
    ys = jnp.asarray(rng.standard_normal((6, 3)))
    Q = enkit.Diagonal(0.01 * jnp.ones(3))

    def loss(a):
        r = enkit.assimilate(lambda x: a * x + 0.1 * jnp.sin(x), E0, ys, enkit.etkf,
                             h=jnp.eye(3), R=1.0, key=2, model_noise=Q,
                             steps_per_obs=[1, 3, 2, 1, 4, 2], store=("analysis_mean",),
                             on_nonfinite="ignore")
        return jnp.sum(r.analysis_mean ** 2)

    g = jax.grad(loss)(0.8)
    fd = (loss(0.8 + 1e-6) - loss(0.8 - 1e-6)) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-5)
    np.testing.assert_allclose(jax.jacfwd(loss)(0.8), g, rtol=1e-10)
