"""Two-scale Lorenz-96 (Lorenz 1996): equations, energy budget, decoupled
limit, symmetry, pytree behaviour and input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.models import Lorenz96TwoScale


def random_state(model, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=model.dim) * scale)


def loop_tendency(x, K, J, F, h, c, b):
    """The equations written index by index (independent of the vectorised code)."""
    X, Y = x[:K], x[K:]
    out = np.zeros(K + K * J)
    for k in range(K):
        out[k] = (X[k - 1] * (X[(k + 1) % K] - X[k - 2]) - X[k] + F
                  - h * c / b * sum(Y[k * J + j] for j in range(J)))
    KJ = K * J
    for i in range(KJ):
        out[K + i] = (-c * b * Y[(i + 1) % KJ] * (Y[(i + 2) % KJ] - Y[i - 1]) - c * Y[i]
                      + h * c / b * X[i // J])
    return out


def test_tendency_matches_the_equations_index_by_index():
    model = Lorenz96TwoScale(K=5, J=3, F=9.0, h=0.7, c=4.0, b=6.0)
    x = random_state(model)
    want = loop_tendency(np.asarray(x), 5, 3, 9.0, 0.7, 4.0, 6.0)
    np.testing.assert_allclose(model.tendency(x), want, rtol=1e-13, atol=1e-12)


def test_shapes_split_join_and_ensembles():
    model = Lorenz96TwoScale(K=6, J=4)
    assert model.dim == 30
    x = random_state(model)
    X, Y = model.split(x)
    assert X.shape == (6,) and Y.shape == (6, 4)
    np.testing.assert_array_equal(model.join(X, Y), x)
    np.testing.assert_array_equal(Y[2], x[6 + 8:6 + 12])  # sector k holds points J·k..J·k+J-1
    E = jnp.stack([x, 2 * x, -x])
    Ef = jax.vmap(model)(E)
    assert Ef.shape == (3, 30)
    np.testing.assert_allclose(Ef[1], model(2 * x), rtol=0, atol=1e-13)
    Xs, Ys = model.split(E)
    assert Xs.shape == (3, 6) and Ys.shape == (3, 6, 4)


def test_energy_budget_advection_and_coupling_conserve_energy():
    # d/dt ½(ΣX² + ΣY²) = −ΣX² + F ΣX − c ΣY²: the quadratic advection and the
    # coupling exchange energy without creating it (Lorenz 1996).
    model = Lorenz96TwoScale(K=8, J=5, F=10.0, h=1.3, c=7.0, b=4.0)
    for seed in range(3):
        x = random_state(model, seed)
        X, Y = model.split(x)
        budget = -jnp.sum(X**2) + model.F * jnp.sum(X) - model.c * jnp.sum(Y**2)
        np.testing.assert_allclose(jnp.dot(x, model.tendency(x)), budget, rtol=1e-12)
    # the check can fail: a wrong coupling sign breaks it
    x = random_state(model, 0)
    X, Y = model.split(x)
    flipped = model.tendency(x).at[:8].add(2 * 1.3 * 7.0 / 4.0 * Y.sum(axis=1))
    budget = -jnp.sum(X**2) + model.F * jnp.sum(X) - model.c * jnp.sum(Y**2)
    assert abs(float(jnp.dot(x, flipped) - budget)) > 1.0


def test_no_coupling_gives_the_one_scale_model_and_decaying_fast_variables():
    K, J, dt = 12, 4, 0.002
    two = Lorenz96TwoScale(K=K, J=J, F=8.0, h=0.0, c=10.0, b=10.0, dt=dt)
    one = enkit.Lorenz96(n=K, F=8.0, dt=dt)
    x = random_state(two, 1, scale=0.5).at[:K].add(8.0)
    X0 = x[:K]
    steps = 100

    def run(model, x):
        return jax.lax.fori_loop(0, steps, lambda _, x: model(x), x)

    x_end = run(two, x)
    X_end, Y_end = two.split(x_end)
    np.testing.assert_allclose(X_end, run(one, X0), rtol=0, atol=1e-12)
    # the fast ring alone conserves ½ΣY² up to its damping: ΣY² ∝ exp(−2 c t)
    t = steps * dt
    ratio = jnp.sum(Y_end**2) / jnp.sum(two.split(x)[1] ** 2)
    np.testing.assert_allclose(ratio, np.exp(-2 * two.c * t), rtol=1e-3)


def test_translation_by_one_sector_commutes_with_a_step():
    model = Lorenz96TwoScale(K=6, J=3, dt=0.005)
    x = random_state(model, 2)

    def shift(x):
        X, Y = model.split(x)
        return model.join(jnp.roll(X, 1), jnp.roll(Y, 1, axis=0))

    np.testing.assert_allclose(model(shift(x)), shift(model(x)), rtol=0, atol=1e-12)
    # a shift of one fast point only is not a symmetry (the check can fail)
    X, Y = model.split(x)
    wrong = model.join(X, jnp.roll(Y.ravel(), 1).reshape(Y.shape))
    assert float(jnp.max(jnp.abs(model(wrong) - model.join(*model.split(model(x)))))) > 1e-3


def test_parameters_are_leaves_jit_does_not_retrace_and_gradients_are_finite():
    traces = []

    @jax.jit
    def advance(model, x):
        traces.append(1)
        return model(x)

    base = Lorenz96TwoScale(K=5, J=2)
    x = random_state(base)
    a = advance(base, x)
    b = advance(Lorenz96TwoScale(K=5, J=2, F=12.0, h=0.5, c=5.0, b=3.0), x)
    assert len(traces) == 1
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    leaves = jax.tree_util.tree_leaves(base)
    assert len(leaves) == 5
    g = jax.grad(lambda h: jnp.sum(Lorenz96TwoScale(K=5, J=2, h=h)(x) ** 2))(1.0)
    eps = 1e-6
    fd = (jnp.sum(Lorenz96TwoScale(K=5, J=2, h=1.0 + eps)(x) ** 2)
          - jnp.sum(Lorenz96TwoScale(K=5, J=2, h=1.0 - eps)(x) ** 2)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="K must"):
        Lorenz96TwoScale(K=3)
    with pytest.raises(ValueError, match="J must"):
        Lorenz96TwoScale(J=0)
