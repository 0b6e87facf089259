"""Gain solves and symmetric matrix functions."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.linalg import (
    kalman_solve,
    kalman_solve_ensemble_space,
    kalman_solve_observation_space,
    sym_matrix_functions,
)


def _operators(m, rng):
    A = rng.normal(size=(m, m))
    return {
        "scalar": enkit.Scalar(0.3, m),
        "diagonal": enkit.Diagonal(rng.uniform(0.2, 2.0, size=m)),
        "dense": enkit.Dense(A @ A.T + 0.5 * np.eye(m)),
    }


@pytest.mark.parametrize("N,m", [(8, 30), (30, 8), (10, 10)])
@pytest.mark.parametrize("kind", ["scalar", "diagonal", "dense"])
def test_woodbury_and_observation_space_agree(N, m, kind):
    rng = np.random.default_rng(N * m)
    R = _operators(m, rng)[kind]
    Y = rng.normal(size=(N, m)) / np.sqrt(N - 1)
    D = rng.normal(size=(5, m))
    a = kalman_solve_observation_space(Y, R, D)
    b = kalman_solve_ensemble_space(Y, R, D)
    exact = np.linalg.solve(Y.T @ Y + np.asarray(R.dense()), D.T).T
    np.testing.assert_allclose(a, exact, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kalman_solve(Y, R, D), a, rtol=1e-10, atol=1e-12)


def test_kalman_solve_rejects_unknown_method():
    R = enkit.Scalar(1.0, 3)
    with pytest.raises(ValueError, match="method must be"):
        kalman_solve(jnp.ones((4, 3)), R, jnp.ones((1, 3)), method="svd")


def _largest_intermediate(fn, *args):
    """Size of the largest array in the traced program of fn(*args)."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    sizes = [1]

    def visit(jp):
        for eqn in jp.eqns:
            for v in list(eqn.outvars) + list(eqn.invars):
                aval = getattr(v, "aval", None)
                if aval is not None and hasattr(aval, "shape"):
                    sizes.append(int(np.prod(aval.shape)))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return max(sizes)


def test_large_diagonal_R_is_never_densified():
    m, N, n = 100_000, 20, 30
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    idx = jnp.arange(m) % n  # each observation looks at one state entry

    def h(x):
        return x[idx]

    E = jax.random.normal(k1, (N, n))
    R = enkit.Diagonal(jnp.full((m,), 2.0))
    y = h(jnp.zeros(n)) + jax.random.normal(k2, (m,))
    for name in ("enkf", "etkf"):
        fn = lambda E, y: enkit.SCHEMES[name](E, y, h, R, key=k3)  # noqa: E731
        # No intermediate of O(m²): the largest array is O(N m).
        assert _largest_intermediate(fn, E, y) <= 2 * N * m
        Ea = fn(E, y)
        assert Ea.shape == (N, n) and np.all(np.isfinite(np.asarray(Ea)))


def test_sym_matrix_functions_values():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(6, 6))
    A = B @ B.T
    sq, inv = sym_matrix_functions(jnp.asarray(A), (jnp.sqrt, lambda x: 1.0 / x))
    np.testing.assert_allclose(sq @ sq, A, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(inv @ A, np.eye(6), atol=1e-9)


def _rsqrt1p(x):
    return 1.0 / jnp.sqrt(1.0 + x)


@pytest.mark.parametrize("spectrum", ["distinct", "repeated", "zero"])
def test_sym_matrix_functions_derivative_matches_finite_differences(spectrum):
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    lam = {"distinct": np.arange(1.0, 7.0),
           "repeated": np.array([0.0, 0.0, 0.0, 2.0, 2.0, 5.0]),
           "zero": np.zeros(6)}[spectrum]
    A = jnp.asarray(Q @ np.diag(lam) @ Q.T)
    dA = rng.normal(size=(6, 6))
    dA = jnp.asarray(dA + dA.T)

    def f(A):
        return sym_matrix_functions(A, (_rsqrt1p,))[0]

    _, tangent = jax.jvp(f, (A,), (dA,))
    h = 1e-6
    fd = (f(A + h * dA) - f(A - h * dA)) / (2 * h)
    assert np.all(np.isfinite(np.asarray(tangent)))
    np.testing.assert_allclose(tangent, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lam_max", [0.0, 0.2, 0.5, 20.0, 5000.0])  # series, NS, eigh
def test_inverse_sqrt_identity_plus_is_exact_on_every_path(lam_max):
    from enkit.linalg import inverse_sqrt_identity_plus

    rng = np.random.default_rng(4)
    B = rng.normal(size=(12, 7))  # rank 7 < 12: repeated zero eigenvalues
    A = B @ B.T
    A = A * (lam_max / np.linalg.eigvalsh(A)[-1])
    lam, V = np.linalg.eigh(A)
    ref = (V / np.sqrt(1 + lam)) @ V.T
    Z = inverse_sqrt_identity_plus(jnp.asarray(A))
    np.testing.assert_allclose(Z, ref, atol=1e-13)
    np.testing.assert_allclose(Z, Z.T, atol=0)
    dA = rng.normal(size=(12, 12))
    dA = jnp.asarray(dA + dA.T)
    _, t = jax.jvp(inverse_sqrt_identity_plus, (jnp.asarray(A),), (dA,))
    _, t_ref = jax.jvp(lambda A: sym_matrix_functions(A, (_rsqrt1p,))[0], (jnp.asarray(A),), (dA,))
    np.testing.assert_allclose(t, t_ref, atol=1e-12)


@pytest.mark.parametrize("path", ["series17", "series23", "series29", "series35",
                                  "newton_schulz"])
def test_each_matrix_product_path_alone_is_exact(path):
    from functools import partial

    from enkit import linalg

    rng = np.random.default_rng(5)
    B = rng.normal(size=(10, 10))
    A = B @ B.T
    # inside the domain of each series: r^(d+1) <= eps/2 (1 - r) for the bound below
    lam_max = {"series17": 0.09, "series23": 0.2, "series29": 0.3, "series35": 0.4,
               "newton_schulz": 0.4}[path]
    A = A * (lam_max / np.linalg.eigvalsh(A)[-1])
    lam, V = np.linalg.eigh(A)
    ref = (V / np.sqrt(1 + lam)) @ V.T
    A2 = A @ A
    bound = 0.5 * np.sqrt(np.sqrt(np.sum(A2 * A2)))
    assert lam_max <= 2 * bound  # the bound of inverse_sqrt_identity_plus holds
    plans = dict(linalg._SERIES_PLANS)
    if path == "newton_schulz":
        fn = linalg._newton_schulz_isqrt
    else:
        degree = int(path[len("series"):])
        r = bound / (1 + bound)
        assert r ** (degree + 1) <= 0.5 * np.finfo(float).eps * (1 - r)
        fn = partial(linalg._series_isqrt, degree=degree, block=plans[degree])
    np.testing.assert_allclose(fn(jnp.asarray(A), jnp.asarray(A2), bound), ref, atol=2e-15)


def test_inverse_sqrt_identity_plus_takes_the_lowest_exact_series_degree():
    # the path chosen from r = b/(1+b), b = ||A^2||_F^(1/2)/2: each spectrum
    # below lands on another series branch (17, 23, 29, 35), then Newton-Schulz,
    # then eigh; the result is exact on each
    from enkit import linalg

    rng = np.random.default_rng(6)
    B = rng.normal(size=(9, 9))
    A0 = B @ B.T
    eps = np.finfo(float).eps
    seen = []
    for lam_max in (0.2, 0.4, 0.6, 0.8, 3.0, 500.0):
        A = A0 * (lam_max / np.linalg.eigvalsh(A0)[-1])
        A2 = A @ A
        b = 0.5 * np.sqrt(np.sqrt(np.sum(A2 * A2)))
        r = b / (1 + b)
        exact = [d for d, _ in linalg._SERIES_PLANS if r ** (d + 1) <= 0.5 * eps * (1 - r)]
        seen.append(min(exact) if exact else ("newton_schulz" if b <= 64 else "eigh"))
        lam, V = np.linalg.eigh(A)
        ref = (V / np.sqrt(1 + lam)) @ V.T
        got = linalg.inverse_sqrt_identity_plus(jnp.asarray(A))
        np.testing.assert_allclose(got, ref, atol=1e-13)
    assert seen == [17, 23, 29, 35, "newton_schulz", "eigh"], seen
