"""Every scheme in enkit.filters.SCHEMES against the exact Kalman update."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.filters import SCHEMES, STOCHASTIC
from reference.kalman_numpy import kalman_analysis, sample_stats
from conftest import LinearGaussian

DETERMINISTIC = sorted(set(SCHEMES) - STOCHASTIC)

# Deterministic schemes whose analysis is, by design, not the Kalman update of
# the forecast sample statistics (name -> reason). Each has its own test
# against its own closed form; all others must match the Kalman update.
NOT_KALMAN_EXACT: dict[str, str] = {
    "denkf": "covariance (I − ½KH)P(I − ½KH)ᵀ by design (Sakov & Oke 2008); "
             "tested against it in test_filters_family.py",
    "etkf_n": "finite-size prior (Bocquet 2011) replaces the Gaussian one; "
              "tested against its optimality conditions in test_filters_iterative.py",
    "etkf_n_dual": "same analysis as etkf_n (Bocquet et al. 2015 dual form); "
                   "tested in test_filters_iterative.py",
}
KALMAN_EXACT = sorted(set(DETERMINISTIC) - set(NOT_KALMAN_EXACT))


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


def test_registry_lists_the_foundation_schemes():
    assert {"enkf", "etkf", "ensrf", "kalman"} <= set(SCHEMES)
    assert STOCHASTIC <= set(SCHEMES)
    assert all(callable(f) for f in SCHEMES.values())


@pytest.mark.parametrize("name", KALMAN_EXACT)
@pytest.mark.parametrize("rkind", ["dense", "diagonal", "scalar"])
def test_deterministic_scheme_equals_exact_kalman(problem, name, rkind):
    p = problem
    R = {"dense": enkit.Dense(p.R), "diagonal": enkit.Diagonal(np.diag(p.R)),
         "scalar": enkit.Scalar(0.7, p.m)}[rkind]
    xf, Pf = sample_stats(p.E)
    xa, Pa = kalman_analysis(xf, Pf, p.y, p.H, np.asarray(R.dense()))
    Ea = SCHEMES[name](p.E, p.y, p.H, R)
    assert Ea.shape == p.E.shape
    ma, Ca = sample_stats(Ea)
    assert rel(ma, xa) < 1e-9
    assert rel(Ca, Pa) < 1e-9


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_callable_h_equals_matrix_h(problem, name):
    p = problem
    H = jnp.asarray(p.H)
    Ea_mat = SCHEMES[name](p.E, p.y, p.H, p.R)
    Ea_fun = SCHEMES[name](p.E, p.y, lambda x: H @ x, p.R)
    np.testing.assert_allclose(Ea_fun, Ea_mat, rtol=1e-10, atol=1e-10)


def test_kalman_update_matches_textbook_form():
    p = LinearGaussian(12)
    xf, Pf = sample_stats(p.E)
    xa, Pa = kalman_analysis(xf, Pf, p.y, p.H, p.R)
    for joseph in (True, False):
        ma, Ca = enkit.kalman_update(xf, Pf, p.y, p.H, p.R, joseph=joseph)
        assert rel(ma, xa) < 1e-12 and rel(Ca, Pa) < 1e-12


def test_ensemble_with_covariance_is_exact_in_the_span():
    rng = np.random.default_rng(3)
    E = rng.normal(size=(6, 9))
    X = E - E.mean(0)
    B = rng.normal(size=(6, 6))
    cov = X.T @ (B @ B.T) @ X / 5.0  # range inside span of the anomalies
    mean = rng.normal(size=9)
    Ea = enkit.ensemble_with_covariance(E, mean, cov)
    ma, Ca = sample_stats(Ea)
    assert rel(ma, mean) < 1e-12 and rel(Ca, cov) < 1e-10


def _enkf_errors(N, keys, center=False, draw_dtype=None):
    p = LinearGaussian(N)
    xf, Pf = sample_stats(p.E)
    xa, Pa = kalman_analysis(xf, Pf, p.y, p.H, p.R)
    S = p.H @ Pf @ p.H.T + p.R
    K = np.linalg.solve(S, p.H @ Pf).T
    out = []
    for k in keys:
        Ea = enkit.enkf(p.E, p.y, p.H, p.R, key=jax.random.key(k),
                        center_perturbations=center, draw_dtype=draw_dtype)
        ma, Ca = sample_stats(Ea)
        out.append((ma - xa, rel(Ca, Pa)))
    return out, K, p


def test_enkf_within_monte_carlo_error_at_N2000():
    out, K, p = _enkf_errors(2000, range(3))
    # The mean error is K ε̄ with ε̄ ~ N(0, R/N) (plus second-order terms).
    sd = np.sqrt(np.diag(K @ p.R @ K.T) / p.N)
    for dmean, crel in out:
        assert np.all(np.abs(dmean) < 5 * sd + 1e-12)
        assert crel < 0.1


def test_enkf_float32_draws_within_monte_carlo_error_at_N2000():
    out, K, p = _enkf_errors(2000, range(3), draw_dtype=jnp.float32)
    sd = np.sqrt(np.diag(K @ p.R @ K.T) / p.N)
    for dmean, crel in out:
        assert np.all(np.abs(dmean) < 5 * sd + 1e-12)
        assert crel < 0.1
    out, _, _ = _enkf_errors(50, range(2), center=True, draw_dtype=jnp.float32)
    for dmean, _ in out:
        assert np.max(np.abs(dmean)) < 1e-10


def test_enkf_draw_dtype_sets_only_the_standard_normal_draws():
    p = LinearGaussian(12)
    key = jax.random.key(3)
    R = enkit.Diagonal(jnp.asarray(np.diag(p.R)))
    a = enkit.enkf(p.E, p.y, p.H, R, key=key, draw_dtype=jnp.float32)
    z = jax.random.normal(key, (p.N, p.y.shape[0]), dtype=jnp.float32)
    D = jnp.asarray(p.y) + R.colorize(z.astype(jnp.float64))
    np.testing.assert_array_equal(
        enkit.perturbed_observations(key, jnp.asarray(p.y), R, p.N, draw_dtype=jnp.float32), D)
    assert a.dtype == jnp.float64
    # float32 draws are the default; None draws in R's dtype (R.sample)
    assert enkit.DEFAULT_DRAW_DTYPE == jnp.float32
    np.testing.assert_array_equal(a, enkit.enkf(p.E, p.y, p.H, R, key=key))
    np.testing.assert_array_equal(enkit.perturbed_observations(key, jnp.asarray(p.y), R, p.N), D)
    b = enkit.enkf(p.E, p.y, p.H, R, key=key, draw_dtype=None)
    assert b.dtype == jnp.float64 and not np.array_equal(a, b)
    np.testing.assert_array_equal(
        enkit.perturbed_observations(key, jnp.asarray(p.y), R, p.N, draw_dtype=None),
        jnp.asarray(p.y) + R.sample(key, (p.N,)))


def test_enkf_error_shrinks_like_one_over_sqrt_N():
    keys = range(12)
    e_small = np.mean([c for _, c in _enkf_errors(200, keys)[0]])
    e_large = np.mean([c for _, c in _enkf_errors(3200, keys)[0]])
    ratio = e_small / e_large  # sqrt(3200/200) = 4
    assert 2.5 < ratio < 6.5, ratio


def test_enkf_centered_perturbations_give_the_exact_mean():
    out, _, _ = _enkf_errors(50, range(2), center=True)
    for dmean, _ in out:
        assert np.max(np.abs(dmean)) < 1e-10


@pytest.mark.parametrize("N,m,method", [(12, 5, "auto"), (12, 5, "pinv"), (12, 5, "ensemble"),
                                          (4, 9, "auto"), (6, 6, "observation"), (8, 6, "auto"),
                                          (30, 4, "observation")])
def test_enkf_centred_analysis_is_the_kalman_update_of_the_centred_perturbations(N, m, method):
    # m <= N centres after the m x m triangular solves (N + 1 < 2m: (6, 6), (8, 6)),
    # before the explicit inverse (N + 1 >= 2m) and the ensemble-space solve:
    # either way the update of perturbed_observations(center=True), to round-off.
    rng = np.random.default_rng(N + m)
    n = 7
    E = rng.normal(size=(N, n))
    H = rng.normal(size=(m, n))
    R = enkit.Diagonal(rng.uniform(0.5, 2.0, size=m))
    y = rng.normal(size=m)
    key = jax.random.key(5)
    Dc = np.asarray(enkit.perturbed_observations(key, y, R, N, center=True))
    X = (E - E.mean(0)) / np.sqrt(N - 1)
    Y = X @ H.T
    K = X.T @ Y @ np.linalg.inv(Y.T @ Y + np.asarray(R.dense()))
    want = E + (Dc - E @ H.T) @ K.T
    got = enkit.enkf(E, y, H, R, key=key, center_perturbations=True, method=method)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)
    local = enkit.enkf(E, y, H, R, key=key, center_perturbations=True,
                       localization=enkit.GainLocalization(np.ones((n, m)), np.ones((m, m))))
    np.testing.assert_allclose(local, want, rtol=1e-10, atol=1e-11)


def test_enkf_same_key_identical_different_key_different():
    p = LinearGaussian(12)
    a = enkit.enkf(p.E, p.y, p.H, p.R, key=jax.random.key(7))
    b = enkit.enkf(p.E, p.y, p.H, p.R, key=jax.random.key(7))
    c = enkit.enkf(p.E, p.y, p.H, p.R, key=jax.random.key(8))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(a, c)
    assert np.array_equal(np.asarray(enkit.enkf(p.E, p.y, p.H, p.R, key=7)),
                          np.asarray(a))


def test_enkf_without_key_is_an_error():
    p = LinearGaussian(12)
    with pytest.raises(TypeError, match="key"):
        enkit.enkf(p.E, p.y, p.H, p.R)


def test_enkf_gain_paths_agree():
    p = LinearGaussian(12)
    a = enkit.enkf(p.E, p.y, p.H, p.R, key=1, method="observation")
    b = enkit.enkf(p.E, p.y, p.H, p.R, key=1, method="ensemble")
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_deterministic_schemes_repeat_exactly(name):
    p = LinearGaussian(12)
    a = SCHEMES[name](p.E, p.y, p.H, p.R, key=jax.random.key(0))
    b = SCHEMES[name](p.E, p.y, p.H, p.R, key=jax.random.key(0))
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_scheme_runs_under_jit(name):
    p = LinearGaussian(12)
    R = enkit.Dense(p.R)
    f = jax.jit(partial(SCHEMES[name]))
    key = jax.random.key(3)
    eager = SCHEMES[name](p.E, p.y, p.H, R, key=key)
    jitted = f(jnp.asarray(p.E), jnp.asarray(p.y), jnp.asarray(p.H), R, key=key)
    np.testing.assert_allclose(jitted, eager, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_float32_smoke(name):
    p = LinearGaussian(12)
    E, y, H = (np.asarray(a, np.float32) for a in (p.E, p.y, p.H))
    R = enkit.Dense(np.asarray(p.R, np.float32))
    Ea = SCHEMES[name](E, y, H, R, key=jax.random.key(0))
    assert Ea.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(Ea)))
    if name in KALMAN_EXACT:
        xf, Pf = sample_stats(p.E)
        xa, Pa = kalman_analysis(xf, Pf, p.y, p.H, p.R)
        ma, Ca = sample_stats(np.asarray(Ea, np.float64))
        assert rel(ma, xa) < 1e-4 and rel(Ca, Pa) < 1e-3


def test_etkf_gradients_are_finite_and_exact_with_repeated_eigenvalues():
    # N=12 > m=3: S Sᵀ has 9 zero eigenvalues (repeated).
    p = LinearGaussian(12)
    E, y, H, R = (jnp.asarray(a) for a in (p.E, p.y, p.H, p.R))

    def mean_a(E, y):
        return jnp.mean(enkit.etkf(E, y, H, R), axis=0)

    gy = jax.grad(lambda y: jnp.sum(mean_a(E, y)))(y)
    gE = jax.grad(lambda E: jnp.sum(mean_a(E, y)))(E)
    assert np.all(np.isfinite(gy)) and np.all(np.isfinite(gE))
    # d x̄ₐ / d y = K exactly, so the gradient of the sum is Kᵀ 1.
    xf, Pf = sample_stats(p.E)
    K = np.linalg.solve(p.H @ Pf @ p.H.T + p.R, p.H @ Pf).T
    np.testing.assert_allclose(gy, K.T @ np.ones(p.n), rtol=1e-9)
    # Directional derivative in E against central finite differences.
    V = jax.random.normal(jax.random.key(0), E.shape)
    f = lambda E: jnp.sum(mean_a(E, y))  # noqa: E731
    h = 1e-5
    fd = (f(E + h * V) - f(E - h * V)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(gE, V), fd, rtol=1e-6)


def test_etkf_full_ensemble_gradient_matches_finite_differences():
    p = LinearGaussian(12)
    E, y, H, R = (jnp.asarray(a) for a in (p.E, p.y, p.H, p.R))
    W = jax.random.normal(jax.random.key(1), E.shape)
    f = lambda E: jnp.sum(W * enkit.etkf(E, y, H, R))  # noqa: E731
    g = jax.grad(f)(E)
    assert np.all(np.isfinite(g))
    V = jax.random.normal(jax.random.key(2), E.shape)
    h = 1e-5
    fd = (f(E + h * V) - f(E - h * V)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(g, V), fd, rtol=1e-6)


def test_etkf_gradient_with_exactly_repeated_eigenvalues():
    # With H = 0 the ensemble-space matrix S Sᵀ is exactly zero (all N
    # eigenvalues equal): the analysis is the forecast, and d x̄ₐ/dE = 1/N.
    p = LinearGaussian(12)
    E, y, R = jnp.asarray(p.E), jnp.asarray(p.y), jnp.asarray(p.R)
    H0 = jnp.zeros((p.m, p.n))
    g = jax.grad(lambda E: jnp.sum(jnp.mean(enkit.etkf(E, y, H0, R), axis=0)))(E)
    np.testing.assert_allclose(g, np.full(E.shape, 1.0 / p.N), atol=1e-14)


def test_perturbed_observations():
    R = enkit.Diagonal(np.array([1.0, 4.0, 9.0]))
    y = np.array([1.0, 2.0, 3.0])
    D = enkit.perturbed_observations(jax.random.key(0), y, R, 20000)
    assert D.shape == (20000, 3)
    np.testing.assert_allclose(np.std(np.asarray(D), axis=0), [1, 2, 3], rtol=0.03)
    Dc = enkit.perturbed_observations(jax.random.key(0), y, R, 5, center=True)
    np.testing.assert_allclose(np.mean(np.asarray(Dc), axis=0), y, atol=1e-12)


def test_centring_removes_the_mean_of_the_same_draws():
    R = enkit.Diagonal(np.array([1.0, 4.0, 9.0]))
    y = np.array([1.0, 2.0, 3.0])
    from enkit.filters.enkf import _CENTRE_BY_PRODUCT_MAX_N as n_product

    for N in (5, 64, 65, 200, n_product, n_product + 1):  # centred by a product, then not
        D = np.asarray(enkit.perturbed_observations(jax.random.key(1), y, R, N))
        Dc = np.asarray(enkit.perturbed_observations(jax.random.key(1), y, R, N, center=True))
        np.testing.assert_allclose(Dc, D - D.mean(0) + y, atol=1e-12)
        np.testing.assert_allclose(Dc.mean(0), y, atol=1e-12)
