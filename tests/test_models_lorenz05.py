"""Lorenz (2005) models II and III against a direct transcription of the
paper's sums (eqs. 9, 10, 13 and 15), against Lorenz-96 for K = 1, and on
their fixed point, leaves and stability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.models import Lorenz05, Lorenz96
from enkit.models.lorenz05 import bracket


def modified_sum(f, J, halve):
    """Σ′_{i=−J…J} f(i), the two end terms halved when ``halve``."""
    return sum((0.5 if halve and abs(i) == J and J > 0 else 1.0) * f(i)
               for i in range(-J, J + 1))


def bracket_loops(X, Y, K):
    """Eq. 10 as a double sum: Σ′_j Σ′_i (−X_{n−2K−i} Y_{n−K−j}
    + X_{n−K+j−i} Y_{n+K+j}) / K²."""
    n = len(X)
    J, halve = K // 2, K % 2 == 0
    return np.array([
        modified_sum(lambda j: modified_sum(
            lambda i: -X[(m - 2 * K - i) % n] * Y[(m - K - j) % n]
            + X[(m - K + j - i) % n] * Y[(m + K + j) % n], J, halve), J, halve) / K**2
        for m in range(n)])


def tendency_loops(Z, K, r, b, c, F):
    """Eqs. 13 and 15, with r for Lorenz's I."""
    n = len(Z)
    alpha = (3 * r**2 + 3) / (2 * r**3 + 4 * r)
    beta = (2 * r**2 + 1) / (r**4 + 2 * r**2)
    X = np.array([modified_sum(lambda i: (alpha - beta * abs(i)) * Z[(m + i) % n], r, True)
                  for m in range(n)])
    Y = Z - X
    return (bracket_loops(X, X, K) + b**2 * bracket_loops(Y, Y, 1)
            + c * bracket_loops(Y, X, 1) - X - b * Y + F)


RNG = np.random.default_rng(5)


@pytest.mark.parametrize("K", [1, 4, 5, 8])  # 8: the FFT path (more than 5 terms)
def test_bracket_is_the_double_sum(K):
    X, Y = RNG.normal(size=30), RNG.normal(size=30)
    np.testing.assert_allclose(bracket(jnp.asarray(X), jnp.asarray(Y), K),
                               bracket_loops(X, Y, K), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K, r", [(4, 2), (5, 3)])
def test_model_iii_tendency_is_the_paper_equation(K, r):
    m = Lorenz05(n=48, K=K, smoothing=r, b=3.0, c=1.5, F=9.0)
    Z = 5.0 + RNG.normal(size=48)
    np.testing.assert_allclose(m.tendency(jnp.asarray(Z)), tendency_loops(Z, K, r, 3.0, 1.5, 9.0),
                               rtol=1e-12, atol=1e-11)
    X, Y = m.decompose(jnp.asarray(Z))
    np.testing.assert_allclose(X + Y, Z, rtol=1e-14)


def test_smoothing_keeps_constants_and_has_no_second_moment():
    w = Lorenz05().smoothing_weights()
    i = np.arange(-12, 13)
    np.testing.assert_allclose([w.sum(), (w * i**2).sum()], [1.0, 0.0], atol=1e-13)


def test_model_ii_with_k1_is_lorenz96():
    z = 8.0 + RNG.normal(size=40)
    m2 = Lorenz05(n=40, K=1, smoothing=None, F=8.0, dt=0.05)
    l96 = Lorenz96(n=40, F=8.0, dt=0.05)
    np.testing.assert_allclose(m2.tendency(jnp.asarray(z)), l96.tendency(jnp.asarray(z)),
                               rtol=1e-13)
    np.testing.assert_allclose(m2(jnp.asarray(z)), l96(jnp.asarray(z)), rtol=1e-13)


@pytest.mark.parametrize("smoothing", [None, 12])
def test_the_constant_state_f_is_a_fixed_point(smoothing):
    # A constant z: X = z, Y = 0 and every bracket vanishes, so dz/dt = F − z.
    m = Lorenz05(smoothing=smoothing)
    for z in (15.0, 3.0):
        np.testing.assert_allclose(m.tendency(jnp.full(960, z)), 15.0 - z, atol=1e-12)


@pytest.mark.parametrize("model", [Lorenz05(), Lorenz05(n=240, K=8, smoothing=None, dt=0.025)],
                         ids=["III", "II"])
def test_default_steps_stay_bounded_and_chaotic(model):
    # 2,000 steps from a perturbed rest state: finite, bounded, and two
    # starts 1e-8 apart separate (chaos).
    z0 = jnp.full(model.n, 3.0 + 4.0).at[0].add(1.0)
    run = jax.jit(lambda z: jax.lax.fori_loop(0, 2000, lambda _, z: model(z), z))
    a = run(z0)
    b = run(z0.at[model.n // 2].add(1e-8))
    assert np.all(np.isfinite(a)) and float(jnp.max(jnp.abs(a))) < 100
    assert float(jnp.std(a)) > 1.0
    assert float(jnp.linalg.norm(a - b)) > 1e-4


def test_leaves_are_differentiable_without_recompiling():
    m = Lorenz05(n=96, K=8, smoothing=4)
    leaves = jax.tree_util.tree_leaves(m)
    assert len(leaves) == 4  # b, c, F, dt
    z = jnp.asarray(7.0 + RNG.normal(size=96))
    f = jax.jit(lambda model, z: model(z))
    f(m, z)
    f(Lorenz05(n=96, K=8, smoothing=4, F=10.0), z)
    assert f._cache_size() == 1

    @jax.jit
    def loss(F):
        return jnp.sum(Lorenz05(n=96, K=8, smoothing=4, F=F)(z) ** 2)

    g = jax.jit(jax.grad(loss))(15.0)
    np.testing.assert_allclose(g, (loss(15.0 + 1e-6) - loss(15.0 - 1e-6)) / 2e-6, rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(K=0), "K must be an integer >= 1"),
    (dict(smoothing=0), "smoothing must be None"),
    (dict(smoothing=2.0), "smoothing must be None"),
    (dict(n=3), "n must be an integer >= 4"),
])
def test_bad_sizes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lorenz05(**kwargs)


def test_exported():
    assert enkit.models.Lorenz05 is Lorenz05 and enkit.Lorenz05 is Lorenz05
