"""The circulant covariance operator: every method against its dense
counterpart, every analysis scheme with it against the same scheme with the
dense matrix, and no m×m array in the traced program at m = 100,000."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.kalman_numpy import sample_stats
from reference.traced import largest_array

import enkit
from enkit import Circulant, Dense


def ring_column(m, length=2.0, nugget=0.1):
    """Gaussian correlation on a ring of m points plus a nugget."""
    d = np.minimum(np.arange(m), m - np.arange(m))
    return 2.0 * np.exp(-(d / length) ** 2) + nugget * (d == 0)


@pytest.mark.parametrize("m", [11, 12])  # odd and even (a Nyquist mode)
def test_every_method_equals_the_dense_matrix(m):
    c = ring_column(m)
    C = Circulant(c)
    full = np.array([[c[(i - j) % m] for j in range(m)] for i in range(m)])
    D = Dense(full)
    x = np.random.default_rng(1).normal(size=(3, m))
    np.testing.assert_allclose(C.dense(), full, rtol=0, atol=0)
    np.testing.assert_allclose(C.solve(x), D.solve(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(C.log_pdet, D.log_pdet, rtol=1e-12)
    np.testing.assert_allclose(C.log_pdet, np.linalg.slogdet(full)[1], rtol=1e-12)
    np.testing.assert_allclose(C.diagonal(), np.diag(full), rtol=1e-15)
    np.testing.assert_allclose(C.cholesky(), D.cholesky(), rtol=1e-10, atol=1e-12)
    # Another square root than Dense's (the symmetric one): the invariants.
    w = C.whiten(x)
    np.testing.assert_allclose(np.sum(w * w, -1), np.einsum("ki,ki->k", x, D.solve(x)),
                               rtol=1e-10)
    np.testing.assert_allclose(C.whiten_t(w), D.solve(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(C.colorize(C.colorize(x)), x @ full, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(C.colorize(w), x, rtol=1e-10, atol=1e-12)
    draws = C.sample(jax.random.key(0), (40000,))
    np.testing.assert_allclose(np.cov(np.asarray(draws).T), full, atol=0.06)


def test_it_is_a_pytree_leaf_that_differentiates():
    m = 10
    x = jnp.asarray(np.random.default_rng(2).normal(size=m))

    def f(col):
        return Circulant(col).solve(x) @ x + Circulant(col).log_pdet

    def g(col):
        return Dense(Circulant(col).dense()).solve(x) @ x + Dense(Circulant(col).dense()).log_pdet

    c = jnp.asarray(ring_column(m))
    out = jax.jit(lambda C: C.solve(x))(Circulant(c))
    np.testing.assert_allclose(out, Circulant(c).solve(x), rtol=1e-14)
    np.testing.assert_allclose(jax.grad(f)(c), jax.grad(g)(c), rtol=1e-9, atol=1e-12)


DETERMINISTIC = ["etkf", "ensrf", "kalman", "denkf", "estkf", "sqrt_kalman", "etkf_n",
                 "etkf_n_dual", "ienkf", "mlef"]


@pytest.mark.parametrize("scheme", DETERMINISTIC)
def test_schemes_give_the_dense_matrix_analysis(scheme):
    n, N = 12, 10
    rng = np.random.default_rng(3)
    E, y = rng.normal(size=(N, n)), rng.normal(size=6)
    H = np.eye(n)[::2] + 0.3 * np.eye(n)[1::2]  # 6 observations
    C = Circulant(ring_column(6))
    f = enkit.SCHEMES[scheme]
    np.testing.assert_allclose(f(E, y, H, C), f(E, y, H, Dense(C.dense())), rtol=1e-10,
                               atol=1e-12)


def test_serial_and_stochastic_schemes_keep_their_statistics():
    # The serial EnSRF whitens the observations with R's square root and the
    # stochastic EnKF draws with it: another root gives other members, the
    # same analysis mean and covariance (serial) or the same statistics in
    # distribution (perturbed observations, checked on the mean over keys).
    m, N = 12, 10
    rng = np.random.default_rng(4)
    E, y = rng.normal(size=(N, m)), rng.normal(size=m)
    H = np.eye(m)
    C = Circulant(ring_column(m))
    a = enkit.ensrf_serial(E, y, H, C)
    b = enkit.ensrf_serial(E, y, H, Dense(C.dense()))
    for sa, sb in zip(sample_stats(np.asarray(a)), sample_stats(np.asarray(b))):
        np.testing.assert_allclose(sa, sb, rtol=1e-10, atol=1e-12)
    keys = jax.random.split(jax.random.key(5), 400)
    mean_c = jnp.mean(jax.vmap(lambda k: enkit.enkf(E, y, H, C, key=k).mean(0))(keys), 0)
    mean_d = jnp.mean(jax.vmap(lambda k: enkit.enkf(E, y, H, Dense(C.dense()),
                                                    key=k).mean(0))(keys), 0)
    np.testing.assert_allclose(mean_c, mean_d, atol=0.05)


def test_no_m_by_m_array_at_m_100000():
    m, N = 100_000, 8
    C = Circulant(ring_column(m, length=30.0))
    E = jax.ShapeDtypeStruct((N, m), jnp.float64)
    x = jax.ShapeDtypeStruct((m,), jnp.float64)
    programs = {
        "methods": lambda C, x: (C.solve(x), C.whiten(x), C.colorize(x), C.log_pdet,
                                 C.sample(jax.random.key(0), (N,))),
        "etkf": lambda C, E, y: enkit.etkf(E, y, lambda v: v, C),
        "enkf": lambda C, E, y: enkit.enkf(E, y, lambda v: v, C, key=jax.random.key(0)),
    }
    sizes = {
        "methods": largest_array(programs["methods"], C, x),
        "etkf": largest_array(programs["etkf"], C, E, x),
        "enkf": largest_array(programs["enkf"], C, E, x),
    }
    assert max(sizes.values()) <= 4 * N * m, sizes  # an (m, m) array would be 10¹⁰


@pytest.mark.parametrize("column, match", [
    (np.array([1.0, 0.5, 0.2]), "must be symmetric"),
    (np.array([1.0, 0.9, 0.5, 0.9]), "positive spectrum"),  # eigenvalue −0.3
    (np.ones((2, 2)), "shape"),
    (np.array([1.0, np.nan, np.nan]), "finite"),
])
def test_bad_columns_are_refused(column, match):
    with pytest.raises(ValueError, match=match):
        Circulant(column)
