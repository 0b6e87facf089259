"""The Kuramoto–Sivashinsky model: the semi-discrete tendency against the
analytic derivatives, ETDRK4 against a fine RK4 reference, its exact linear
part and conserved mean, the attractor's statistics and pytree leaves."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.models import KuramotoSivashinsky
from enkit.models._integrate import rk4_step


def advance(model, x, steps):
    return jax.lax.fori_loop(0, steps, lambda _, x: model(x), x)


advance = jax.jit(advance, static_argnums=2)


@pytest.fixture(scope="module")
def attractor_state():
    """The Kassam–Trefethen start after 150 time units (300 steps of 0.5)."""
    m = KuramotoSivashinsky()
    return advance(m, m.kassam_trefethen_state(), 300)


def test_tendency_is_the_pde_on_resolved_modes():
    # u = a sin(κx) + b cos(2κx): every term of −u u_x − u_xx − u_xxxx by hand.
    m = KuramotoSivashinsky(n=64, length=2 * math.pi * 5.0)
    x = np.asarray(m.grid())
    kap = 2 * math.pi * 3 / m.length
    a, b = 0.7, -0.4
    u = a * np.sin(kap * x) + b * np.cos(2 * kap * x)
    ux = a * kap * np.cos(kap * x) - 2 * b * kap * np.sin(2 * kap * x)
    uxx = -a * kap**2 * np.sin(kap * x) - 4 * b * kap**2 * np.cos(2 * kap * x)
    uxxxx = a * kap**4 * np.sin(kap * x) + 16 * b * kap**4 * np.cos(2 * kap * x)
    np.testing.assert_allclose(m.tendency(jnp.asarray(u)), -u * ux - uxx - uxxxx,
                               rtol=1e-12, atol=1e-12)


def test_etdrk4_matches_a_fine_rk4_reference(attractor_state):
    # One time unit from a state on the attractor: RK4 with dt = 1/4000 (its
    # own error is < 1e-13) against ETDRK4 with dt = 0.5 … 1/32. Measured
    # relative errors 5.9e-4 (0.5), 7.1e-5, 9.0e-6, 1.1e-6, 1.1e-7: order 3 at
    # these steps (the stiff order of ETDRK4, Hochbruck & Ostermann 2005),
    # rising towards 4 as dt shrinks.
    m = KuramotoSivashinsky()
    ref = jax.jit(lambda x: jax.lax.fori_loop(
        0, 4000, lambda _, x: rk4_step(m.tendency, x, 1 / 4000), x))(attractor_state)
    err = {}
    for dt in (0.5, 0.25, 1 / 32, 1 / 64):
        x = advance(KuramotoSivashinsky(dt=dt), attractor_state, round(1 / dt))
        err[dt] = float(jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref))
    assert err[0.5] < 1e-3, err
    assert err[0.5] / err[0.25] > 7, err
    assert err[1 / 32] / err[1 / 64] > 10, err


def test_linear_part_is_exact_and_the_mean_is_conserved():
    # A small single mode evolves by e^{(k² − k⁴) t} (up to the O(ε²)
    # nonlinear term); the mean of u never changes.
    m = KuramotoSivashinsky()
    x = m.grid()
    for j in (3, 7, 20):
        k = 2 * math.pi * j / m.length
        u = 1e-9 * jnp.sin(k * x)
        expected = u * math.exp(4 * m.dt * (k**2 - k**4))
        np.testing.assert_allclose(advance(m, u, 4), expected, rtol=1e-8, atol=1e-20)
    u = m.kassam_trefethen_state() + 0.3
    out = advance(m, u, 200)
    np.testing.assert_allclose(jnp.mean(out), jnp.mean(u), rtol=1e-12)


def test_attractor_statistics_and_leading_lyapunov_exponent(attractor_state):
    # Chaotic, with a spatial standard deviation about 1.3 (DAPPER's
    # climatology RMSE for this setting) and a leading Lyapunov exponent
    # about 0.09 per time unit (measured 0.090 over 4,000 time units; here
    # 1,000, by renormalised twin trajectories).
    m = KuramotoSivashinsky()
    stride = jax.jit(lambda x: advance(m, x, 20))
    x = attractor_state
    d0 = 1e-8
    dx = jax.random.normal(jax.random.key(0), x.shape)
    xp = x + d0 * dx / jnp.linalg.norm(dx)
    growth, stds = 0.0, []
    for _ in range(100):
        x, xp = stride(x), stride(xp)
        dist = float(jnp.linalg.norm(xp - x))
        growth += math.log(dist / d0)
        xp = x + (xp - x) * (d0 / dist)
        stds.append(float(jnp.std(x)))
    assert 0.07 < growth / 1000.0 < 0.11, growth / 1000.0
    assert 1.15 < np.mean(stds) < 1.45, np.mean(stds)


def test_leaves_and_vmap():
    m = KuramotoSivashinsky()
    leaves, treedef = jax.tree_util.tree_flatten(m)
    assert len(leaves) == 2  # length and dt; n is static
    X = jnp.stack([m.kassam_trefethen_state() * s for s in (1.0, 0.5, -0.3)])
    f = jax.jit(lambda model, x: model(x))
    np.testing.assert_allclose(jax.jit(jax.vmap(m))(X), jnp.stack([f(m, x) for x in X]),
                               rtol=1e-12, atol=1e-14)
    f(KuramotoSivashinsky(dt=0.25), X[0])
    assert f._cache_size() == 1  # a new dt is a new leaf value, not a recompile

    def loss(dt):
        return jnp.sum(advance(KuramotoSivashinsky(dt=dt), X[0], 3) ** 2)

    g = jax.grad(loss)(0.5)
    fd = (loss(0.5 + 1e-6) - loss(0.5 - 1e-6)) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-5)


def test_float32_stays_float32():
    m = KuramotoSivashinsky()
    x = m.kassam_trefethen_state().astype(jnp.float32)
    assert m(x).dtype == jnp.float32 and m.tendency(x).dtype == jnp.float32


@pytest.mark.parametrize("n", [5, 2, 64.0, True])
def test_bad_n_is_refused(n):
    with pytest.raises(ValueError, match="n must be an even integer >= 4"):
        KuramotoSivashinsky(n=n)


def test_exported():
    assert enkit.models.KuramotoSivashinsky is KuramotoSivashinsky
    assert enkit.KuramotoSivashinsky is KuramotoSivashinsky
