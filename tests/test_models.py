"""Lorenz models and twin experiments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import enkit
from enkit.models import Lorenz63, Lorenz96, integrate


def test_lorenz96_tendency_matches_index_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=9)
    n, F = 9, 8.0
    expected = [(x[(i + 1) % n] - x[i - 2]) * x[i - 1] - x[i] + F for i in range(n)]
    np.testing.assert_allclose(Lorenz96(n=9).tendency(jnp.asarray(x)), expected, rtol=1e-13)


def test_ring_shifts_are_rolls_of_every_offset_batched_and_jitted():
    from enkit.models._ring import ring_shifts

    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7)))
    offsets = (1, -2, -1, 2, 0, 6, -6)
    for got, k in zip(ring_shifts(x, offsets), offsets):
        assert jnp.array_equal(got, jnp.roll(x, -k, axis=-1)), k
    jitted = jax.jit(lambda x: ring_shifts(x, offsets))(x)
    for got, k in zip(jitted, offsets):
        assert jnp.array_equal(got, jnp.roll(x, -k, axis=-1)), k
    with pytest.raises(ValueError, match=r"\|k\| < n = 7, got 7"):
        ring_shifts(x, (7,))


def test_lorenz96_ensemble_step_equals_the_roll_formula_bit_for_bit():
    # the tendency reads its neighbours from one doubled copy (models/_ring.py):
    # the same numbers as the jnp.roll formula, under vmap and jit
    def rolled(x):
        return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0

    E = 8.0 + 3.0 * jnp.asarray(np.random.default_rng(2).normal(size=(5, 40)))
    model = Lorenz96()
    assert jnp.array_equal(jax.jit(jax.vmap(model.tendency))(E), jax.jit(jax.vmap(rolled))(E))


@pytest.mark.parametrize("n", [4, 5, 7, 8, 9, 12, 40, 41])
def test_lorenz96_step_equals_rk4_of_the_tendency_bit_for_bit(n):
    # __call__ runs RK4 on one halo copy of the ring (ring_rk4_step): the
    # numbers of rk4_step(tendency), in float64 and float32, one state or an
    # ensemble under vmap and jit, with the halo concatenated (n >= 8) or
    # gathered (shorter rings)
    from enkit.models._integrate import rk4_step

    model = Lorenz96(n=n, F=8.0, dt=0.05)
    E = 8.0 + 3.0 * jnp.asarray(np.random.default_rng(n).normal(size=(6, n)))

    def reference(x):
        return rk4_step(model.tendency, x, model.dt)

    for A in (E, E.astype(jnp.float32)):
        assert jnp.array_equal(jax.jit(jax.vmap(model))(A), jax.jit(jax.vmap(reference))(A))
        assert jnp.array_equal(model(A[0]), reference(A[0]))


def test_lorenz96_step_derivatives_and_per_variable_forcing():
    from enkit.models._integrate import rk4_step

    x = 8.0 + jnp.asarray(np.random.default_rng(3).normal(size=10))

    def loss(F, dt, x, step):
        m = Lorenz96(n=10, F=F, dt=dt)
        return jnp.sum(jnp.sin(step(m, x)))

    new = jax.grad(loss, argnums=(0, 1, 2))(8.0, 0.05, x, lambda m, x: m(x))
    ref = jax.grad(loss, argnums=(0, 1, 2))(8.0, 0.05, x,
                                            lambda m, x: rk4_step(m.tendency, x, m.dt))
    for a, b in zip(new, ref):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)
    F = 8.0 + jnp.linspace(-1.0, 1.0, 10)  # a forcing per variable: the rk4_step path
    m = Lorenz96(n=10, F=F)
    np.testing.assert_array_equal(m(x), rk4_step(m.tendency, x, m.dt))


def test_ring_rk4_step_of_a_general_stencil_and_its_reach():
    # a stencil reading two entries left and three right (reach (2, 3)),
    # against rk4_step on the same tendency written with ring_shifts
    from enkit.models._integrate import rk4_step
    from enkit.models._ring import ring_rk4_step, ring_shifts

    def tendency(x):
        a, b, c, d = ring_shifts(x, (-2, 1, 2, 3))
        return 0.3 * a - x + 0.5 * b * c - 0.1 * d

    def window(z):
        w = z.shape[-1]
        return 0.3 * z[..., :w - 5] - z[..., 2:w - 3] + 0.5 * z[..., 3:w - 2] * z[..., 4:w - 1] \
            - 0.1 * z[..., 5:]

    for n in (6, 11, 30):  # halo 8 left, 12 right: gathered for n < 12
        x = jnp.asarray(np.random.default_rng(n).normal(size=(3, n)))
        np.testing.assert_allclose(ring_rk4_step(window, x, 0.1, (2, 3)),
                                   rk4_step(tendency, x, 0.1), rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="reach must be two integers >= 0"):
        ring_rk4_step(window, x, 0.1, (-1, 2))


def test_fixed_points_stay_fixed():
    m96 = Lorenz96(n=40, F=8.0)
    x = jnp.full(40, 8.0)
    np.testing.assert_allclose(m96(x), x, atol=1e-12)
    m63 = Lorenz63()
    r = np.sqrt(m63.beta * (m63.rho - 1))
    xs = jnp.array([r, r, m63.rho - 1])
    np.testing.assert_allclose(m63.tendency(xs), 0.0, atol=1e-12)


@pytest.mark.parametrize("model,x0", [
    (Lorenz63(dt=0.01), np.array([1.0, 2.0, 20.0])),
    (Lorenz96(n=10, dt=0.01), 8.0 + np.linspace(-1, 1, 10)),
])
def test_rk4_converges_at_fourth_order_to_an_accurate_solver(model, x0):
    T = 0.5
    ref = solve_ivp(lambda t, x: np.asarray(model.tendency(jnp.asarray(x))),
                    (0.0, T), x0, rtol=1e-13, atol=1e-13, method="DOP853").y[:, -1]
    errors = []
    for dt in (0.01, 0.005):
        m = type(model)(**{**model.__dict__, "dt": dt})
        errors.append(np.abs(integrate(m, jnp.asarray(x0), round(T / dt)) - ref).max())
    assert errors[1] < 1e-4
    assert 12 < errors[0] / errors[1] < 20  # 2⁴ = 16


def test_models_are_pytrees_with_traced_constants():
    f = jax.jit(lambda model, x: model(x))
    x = jnp.linspace(-1, 1, 40)
    a = f(Lorenz96(F=8.0), x)
    size = f._cache_size()
    b = f(Lorenz96(F=9.0), x)
    assert f._cache_size() == size  # new forcing, no recompilation
    assert not np.allclose(a, b)
    g = lambda F: jnp.sum(Lorenz96(F=F)(x))  # noqa: E731
    fd = (g(8.0 + 1e-6) - g(8.0 - 1e-6)) / 2e-6
    np.testing.assert_allclose(jax.grad(g)(8.0), fd, rtol=1e-7)


def test_lorenz96_rejects_tiny_rings():
    with pytest.raises(ValueError, match="n must be an integer >= 4"):
        Lorenz96(n=3)


def test_twin_experiment_observes_the_truth_with_noise_R():
    model = Lorenz96(n=10)
    twin = enkit.twin_experiment(model, 8.0 + jnp.arange(10.0) / 10, key=jax.random.key(1),
                                 n_obs=3000, h=lambda x: x[::2], R=0.25,
                                 steps_per_obs=2, spinup=50)
    assert twin.truth.shape == (3000, 10) and twin.observations.shape == (3000, 5)
    np.testing.assert_allclose(twin.times[:2], [0.1, 0.2])
    # truth[0] is x0 advanced two steps
    np.testing.assert_allclose(twin.truth[0], integrate(model, twin.x0, 2), rtol=1e-13)
    noise = np.asarray(twin.observations - twin.truth[:, ::2])
    assert abs(noise.var() - 0.25) < 0.02
    again = enkit.twin_experiment(model, 8.0 + jnp.arange(10.0) / 10, key=jax.random.key(1),
                                  n_obs=3000, h=lambda x: x[::2], R=0.25,
                                  steps_per_obs=2, spinup=50)
    assert np.array_equal(np.asarray(again.observations), np.asarray(twin.observations))
