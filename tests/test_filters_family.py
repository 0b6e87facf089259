"""Scheme-specific tests: DEnKF, serial EnSRF, ESTKF, rotated ETKF, square-root KF.

The registry tests in test_filters.py / test_validation.py already check every
scheme against the exact Kalman update, under jit, in float32 and on bad input;
these tests check what is particular to each scheme.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LinearGaussian
from reference.kalman_numpy import kalman_analysis, sample_stats
from reference.operators import DiagonalNoDense

import enkit
from enkit.filters.estkf import error_subspace_projection
from enkit.filters.etkf_rotated import mean_preserving_rotation


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


def r_operator(p, rkind):
    return {"dense": enkit.Dense(p.R), "diagonal": enkit.Diagonal(np.diag(p.R)),
            "scalar": enkit.Scalar(0.7, p.m)}[rkind]


RKINDS = ["dense", "diagonal", "scalar"]


# ---------------------------------------------------------------- DEnKF


@pytest.mark.parametrize("rkind", RKINDS)
def test_denkf_matches_its_closed_form(problem, rkind):
    p = problem
    R = r_operator(p, rkind)
    Rd = np.asarray(R.dense())
    xf, Pf = sample_stats(p.E)
    xa, Pa = kalman_analysis(xf, Pf, p.y, p.H, Rd)
    K = np.linalg.solve(p.H @ Pf @ p.H.T + Rd, p.H @ Pf).T
    B = np.eye(p.n) - 0.5 * K @ p.H
    ma, Ca = sample_stats(enkit.denkf(p.E, p.y, p.H, R))
    assert rel(ma, xa) < 1e-9  # exact Kalman mean
    assert rel(Ca, B @ Pf @ B.T) < 1e-9
    # ... which exceeds the Kalman covariance by ¼ K H P Hᵀ Kᵀ (not zero).
    extra = 0.25 * K @ p.H @ Pf @ p.H.T @ K.T
    assert rel(Ca - Pa, extra) < 1e-8 and np.linalg.norm(extra) > 1e-3 * np.linalg.norm(Pa)


def test_denkf_gain_paths_agree_and_bad_method_is_an_error():
    p = LinearGaussian(12)
    a = enkit.denkf(p.E, p.y, p.H, p.R, method="observation")
    b = enkit.denkf(p.E, p.y, p.H, p.R, method="ensemble")
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="method must be"):
        enkit.denkf(p.E, p.y, p.H, p.R, method="woodbury")


# ---------------------------------------------------------- serial EnSRF


def test_ensrf_serial_single_observation_equals_batch_ensrf():
    # For one scalar observation the Andrews gain of the batch EnSRF is αK:
    # the two schemes give the same members, not only the same statistics.
    p = LinearGaussian(12)
    H, y, R = p.H[:1], p.y[:1], p.R[:1, :1]
    a = enkit.ensrf_serial(p.E, y, H, R)
    b = enkit.ensrf(p.E, y, H, R)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_ensrf_serial_whitening_path_equals_direct_path_for_diagonal_R():
    # A diagonal R given as Dense goes through the decorrelation (whitening)
    # path; given as Diagonal it is processed directly. Gain and α are
    # invariant to rescaling an observation, so the members agree.
    p = LinearGaussian(12)
    v = np.array([0.3, 2.0, 1.1])
    a = enkit.ensrf_serial(p.E, p.y, p.H, enkit.Dense(np.diag(v)))
    b = enkit.ensrf_serial(p.E, p.y, p.H, enkit.Diagonal(v))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_ensrf_serial_decorrelation_is_needed_for_correlated_R():
    # Treating the dense R as its diagonal (ignoring correlations) gives a
    # different answer: the exact match with Kalman relies on the whitening.
    p = LinearGaussian(12)
    xf, Pf = sample_stats(p.E)
    xa, _ = kalman_analysis(xf, Pf, p.y, p.H, p.R)
    ma_dense, _ = sample_stats(enkit.ensrf_serial(p.E, p.y, p.H, enkit.Dense(p.R)))
    ma_diag, _ = sample_stats(enkit.ensrf_serial(p.E, p.y, p.H, enkit.Diagonal(np.diag(p.R))))
    assert rel(ma_dense, xa) < 1e-10
    assert rel(ma_diag, xa) > 1e-3


def test_ensrf_serial_gradient_matches_finite_differences():
    p = LinearGaussian(12)
    E, y, H, R = (jnp.asarray(a) for a in (p.E, p.y, p.H, p.R))
    W = jax.random.normal(jax.random.key(1), E.shape)
    f = lambda E: jnp.sum(W * enkit.ensrf_serial(E, y, H, R))
    g = jax.grad(f)(E)
    V = jax.random.normal(jax.random.key(2), E.shape)
    h = 1e-5
    fd = (f(E + h * V) - f(E - h * V)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(g, V), fd, rtol=1e-6)


# ----------------------------------------------------------------- ESTKF


@pytest.mark.parametrize("N", [2, 3, 7])
def test_error_subspace_projection(N):
    Om = np.asarray(error_subspace_projection(N))
    assert Om.shape == (N, N - 1)
    np.testing.assert_allclose(Om.T @ Om, np.eye(N - 1), atol=1e-14)
    np.testing.assert_allclose(np.ones(N) @ Om, 0.0, atol=1e-14)
    # Entries as printed in Nerger et al. (2012).
    a = 1.0 / (N * (1.0 / np.sqrt(N) + 1.0))
    expected = np.vstack([np.eye(N - 1) - a, np.full((1, N - 1), -1.0 / np.sqrt(N))])
    np.testing.assert_allclose(Om, expected, atol=1e-15)
    with pytest.raises(ValueError, match="N must be at least 2"):
        error_subspace_projection(1)


@pytest.mark.parametrize("rkind", RKINDS)
def test_estkf_gives_the_symmetric_etkf_transform(problem, rkind):
    # Nerger et al. (2012): the ESTKF performs the same (minimum) ensemble
    # transformation as the symmetric-root ETKF, so the members agree.
    p = problem
    R = r_operator(p, rkind)
    np.testing.assert_allclose(enkit.estkf(p.E, p.y, p.H, R),
                               enkit.etkf(p.E, p.y, p.H, R), rtol=1e-10, atol=1e-10)


def test_estkf_two_members():
    p = LinearGaussian(2)
    xf, Pf = sample_stats(p.E)
    xa, Pa = kalman_analysis(xf, Pf, p.y, p.H, p.R)
    ma, Ca = sample_stats(enkit.estkf(p.E, p.y, p.H, p.R))
    assert rel(ma, xa) < 1e-10 and rel(Ca, Pa) < 1e-10


# ----------------------------------------------------------- rotated ETKF


@pytest.mark.parametrize("N", [2, 5])
def test_mean_preserving_rotation_is_orthogonal_and_keeps_ones(N):
    U = np.asarray(mean_preserving_rotation(jax.random.key(4), N))
    np.testing.assert_allclose(U.T @ U, np.eye(N), atol=1e-13)
    np.testing.assert_allclose(U @ np.ones(N), np.ones(N), atol=1e-13)
    np.testing.assert_allclose(U.T @ np.ones(N), np.ones(N), atol=1e-13)


@pytest.mark.parametrize("rkind", RKINDS)
def test_etkf_rotated_same_statistics_as_etkf_different_members(problem, rkind):
    p = problem
    R = r_operator(p, rkind)
    Eb = enkit.etkf(p.E, p.y, p.H, R)
    Er = enkit.etkf_rotated(p.E, p.y, p.H, R, key=jax.random.key(11))
    mb, Cb = sample_stats(Eb)
    mr, Cr = sample_stats(Er)
    assert rel(mr, mb) < 1e-12 and rel(Cr, Cb) < 1e-12
    assert rel(Er, Eb) > 1e-2


def test_etkf_rotated_keys():
    p = LinearGaussian(12)
    a = enkit.etkf_rotated(p.E, p.y, p.H, p.R, key=jax.random.key(7))
    b = enkit.etkf_rotated(p.E, p.y, p.H, p.R, key=jax.random.key(7))
    c = enkit.etkf_rotated(p.E, p.y, p.H, p.R, key=jax.random.key(8))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(a, c)
    assert np.array_equal(np.asarray(enkit.etkf_rotated(p.E, p.y, p.H, p.R, key=7)),
                          np.asarray(a))
    with pytest.raises(TypeError, match="etkf_rotated is stochastic and needs key"):
        enkit.etkf_rotated(p.E, p.y, p.H, p.R)


def test_etkf_rotated_vmaps_over_keys():
    p = LinearGaussian(12)
    keys = jax.random.split(jax.random.key(0), 3)
    Es = jax.vmap(lambda k: enkit.etkf_rotated(p.E, p.y, p.H, p.R, key=k))(keys)
    for k, Ek in zip(keys, Es):
        np.testing.assert_allclose(Ek, enkit.etkf_rotated(p.E, p.y, p.H, p.R, key=k),
                                   rtol=1e-10, atol=1e-10)


# ------------------------------------------------------ square-root Kalman


@pytest.mark.parametrize("k", [2, 5, 9], ids=["k<n", "k=n", "k>n"])
@pytest.mark.parametrize("rkind", RKINDS)
def test_sqrt_kalman_update_matches_textbook_and_kalman_update(k, rkind):
    p = LinearGaussian(12)
    R = r_operator(p, rkind)
    Rd = np.asarray(R.dense())
    S = np.random.default_rng(5).normal(size=(p.n, k))
    xf = p.mu
    P = S @ S.T
    xa, Pa = kalman_analysis(xf, P, p.y, p.H, Rd)
    ma, Sa = enkit.sqrt_kalman_update(xf, S, p.y, p.H, R)
    assert Sa.shape == (p.n, min(k, p.n))
    assert rel(ma, xa) < 1e-10 and rel(Sa @ Sa.T, Pa) < 1e-10
    mk, Pk = enkit.kalman_update(xf, P, p.y, p.H, R)
    assert rel(ma, mk) < 1e-10 and rel(Sa @ Sa.T, Pk) < 1e-10


def test_sqrt_kalman_update_is_more_accurate_in_float32():
    # Ill-conditioned P (singular values 1 … 3e-4) and very accurate
    # observations: in float32 the square-root form keeps ~4 more digits
    # than the covariance forms (measured: rel. error 3e-5 vs 2e-3 Joseph,
    # 3e-2 standard).
    rng = np.random.default_rng(0)
    n = m = 6
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    S = Q * np.logspace(0, -3.5, n)
    H = np.eye(m, n) + 0.1 * rng.normal(size=(m, n))
    R = 1e-6 * np.eye(m)
    x = rng.normal(size=n)
    y = H @ x + 1e-3 * rng.normal(size=m)
    _, Pref = kalman_analysis(x, S @ S.T, y, H, R)
    f32 = lambda a: np.asarray(a, np.float32)
    _, Sa = enkit.sqrt_kalman_update(f32(x), f32(S), f32(y), f32(H), f32(R))
    assert Sa.dtype == jnp.float32
    Sa = np.asarray(Sa, np.float64)
    _, Pj = enkit.kalman_update(f32(x), f32(S @ S.T), f32(y), f32(H), f32(R))
    err_sqrt = rel(Sa @ Sa.T, Pref)
    err_joseph = rel(np.asarray(Pj, np.float64), Pref)
    assert err_sqrt < 3e-4
    assert err_sqrt < 0.1 * err_joseph


def test_sqrt_kalman_update_input_errors():
    p = LinearGaussian(12)
    S = np.eye(p.n)
    with pytest.raises(ValueError, match=r"S must have shape \(n, k\) with n = 5"):
        enkit.sqrt_kalman_update(p.mu, S[:4], p.y, p.H, p.R)
    with pytest.raises(ValueError, match=r"S must have shape \(n, k\)"):
        enkit.sqrt_kalman_update(p.mu, np.ones(p.n), p.y, p.H, p.R)
    with pytest.raises(ValueError, match=r"H must have shape \(m, n\) = \(3, 5\)"):
        enkit.sqrt_kalman_update(p.mu, S, p.y, p.H[:, :4], p.R)
    with pytest.raises(ValueError, match=r"mean must have shape \(n,\)"):
        enkit.sqrt_kalman_update(p.mu[None], S, p.y, p.H, p.R)
    with pytest.raises(ValueError, match="y must be finite"):
        enkit.sqrt_kalman_update(p.mu, S, np.array([1.0, np.nan, 0.0]), p.H, p.R)
    with pytest.raises(ValueError, match=r"R must be .* \(3, 3\) matrix"):
        enkit.sqrt_kalman_update(p.mu, S, p.y, p.H, np.eye(4))


def test_sqrt_kalman_update_jits():
    p = LinearGaussian(12)
    S = np.random.default_rng(1).normal(size=(p.n, 3))
    args = (p.mu, S, p.y, p.H, enkit.Dense(p.R))
    eager = enkit.sqrt_kalman_update(*args)
    jitted = jax.jit(enkit.sqrt_kalman_update)(*args)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_sqrt_kalman_equals_kalman_with_nonlinear_h():
    # Both linearise h at the forecast mean (extended Kalman analysis).
    p = LinearGaussian(12)
    H = jnp.asarray(p.H)
    h = lambda x: jnp.sin(H @ x) + 0.1 * (H @ x) ** 2
    ms, Cs = sample_stats(enkit.sqrt_kalman(p.E, p.y, h, p.R))
    mk, Ck = sample_stats(enkit.kalman(p.E, p.y, h, p.R))
    assert rel(ms, mk) < 1e-10 and rel(Cs, Ck) < 1e-10


# ------------------------------------------------------------ shared


@pytest.mark.parametrize("name", ["denkf", "ensrf_serial", "estkf", "etkf_rotated",
                                  "sqrt_kalman"])
def test_diagonal_R_is_never_densified(name):
    rng = np.random.default_rng(2)
    N, n, m = 8, 4, 40
    E = rng.normal(size=(N, n))
    H = rng.normal(size=(m, n))
    v = rng.uniform(0.5, 2.0, size=m)
    y = rng.normal(size=m)
    kw = {"method": "ensemble"} if name == "denkf" else {}
    f = enkit.SCHEMES[name]
    a = f(E, y, H, DiagonalNoDense(v), key=jax.random.key(0), **kw)
    b = f(E, y, H, enkit.Dense(np.diag(v)), key=jax.random.key(0), **kw)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
