"""The banded and Toeplitz covariance operators: every method against the
dense matrix (same Cholesky root, so whiten/colorize agree entry by entry),
every analysis scheme with them against the same scheme with the dense
matrix, and no m×m array in the traced program at m = 100,000."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.traced import largest_array

import enkit
from enkit import Banded, Dense, Toeplitz


def gc_matrix(m, length=2.0):
    """Gaspari–Cohn-tapered exponential correlation on a line (bandwidth 3)."""
    d = np.abs(np.arange(m)[:, None] - np.arange(m)[None, :]).astype(float)
    return np.asarray(enkit.gaspari_cohn(d, length)) * np.exp(-d / 3.0) + 0.1 * np.eye(m)


def ar_column(m, phi=0.7):
    return 1.5 * phi ** np.arange(m) + 0.05 * (np.arange(m) == 0)


CASES = {
    "banded-gc": lambda m: (Banded.from_dense(gc_matrix(m), 3), gc_matrix(m)),
    "banded-b0": lambda m: (Banded.from_dense(np.diag(np.linspace(1, 2, m)), 0),
                            np.diag(np.linspace(1, 2, m))),
    "toeplitz": lambda m: (Toeplitz(ar_column(m)), ar_column(m)[
        np.abs(np.arange(m)[:, None] - np.arange(m)[None, :])]),
    "toeplitz-cg": lambda m: (Toeplitz(ar_column(m), cg_tol=1e-14), ar_column(m)[
        np.abs(np.arange(m)[:, None] - np.arange(m)[None, :])]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_method_equals_the_dense_matrix(case):
    m = 13
    op, full = CASES[case](m)
    D = Dense(full)
    x = np.random.default_rng(1).normal(size=(4, m))
    np.testing.assert_allclose(op.dense(), full, rtol=0, atol=1e-15)
    for name in ["solve", "whiten", "whiten_t", "colorize"]:
        for arg in (x, x[0], x.reshape(2, 2, m)):
            np.testing.assert_allclose(getattr(op, name)(arg), getattr(D, name)(arg),
                                       rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(op.log_pdet, np.linalg.slogdet(full)[1], rtol=1e-12)
    np.testing.assert_allclose(op.diagonal(), np.diag(full), rtol=1e-15)
    np.testing.assert_allclose(op.cholesky(), np.linalg.cholesky(full), rtol=1e-10,
                               atol=1e-12)
    n = 20000
    S = np.cov(np.asarray(op.sample(jax.random.key(0), (n,))).T)
    d = np.diag(full)
    mc = np.sqrt((d[:, None] * d[None, :] + full**2) / n)  # std of each sample entry
    assert np.all(np.abs(S - full) <= 6 * mc + 1e-12)


@pytest.mark.parametrize("kind", ["banded", "toeplitz", "toeplitz-cg"])
def test_pytree_jit_vmap_grad_and_no_recompile(kind):
    m = 9
    x = jnp.asarray(np.random.default_rng(2).normal(size=m))
    if kind == "banded":
        leaf = jnp.asarray(Banded.from_dense(gc_matrix(m), 3).bands)
        make = Banded
    else:
        leaf = jnp.asarray(ar_column(m))
        make = (Toeplitz if kind == "toeplitz"
                else (lambda c: Toeplitz(c, cg_tol=1e-14)))

    def f(p):
        return make(p).solve(x) @ x + make(p).log_pdet + jnp.sum(make(p).whiten(x))

    def g(p):
        D = Dense(make(p).dense())
        return D.solve(x) @ x + D.log_pdet + jnp.sum(D.whiten(x))

    np.testing.assert_allclose(jax.jit(jax.grad(f))(leaf), jax.jit(jax.grad(g))(leaf),
                               rtol=1e-8, atol=1e-10)
    traces = []

    @jax.jit
    def apply(C):
        traces.append(1)
        return C.solve(x), C.colorize(x), C.log_pdet

    a, b = make(leaf), make(leaf * 1.5)
    for op in (a, b):
        np.testing.assert_allclose(apply(op)[0], op.solve(x), rtol=1e-12)
    assert len(traces) == 1
    both = jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v]), a, b)
    out = jax.vmap(lambda C: C.whiten(x))(both)
    np.testing.assert_allclose(out[1], b.whiten(x), rtol=1e-12)


DETERMINISTIC = ["etkf", "ensrf", "kalman", "denkf", "estkf", "sqrt_kalman", "etkf_n",
                 "etkf_n_dual", "ienkf", "mlef", "ensrf_serial"]


@pytest.fixture(scope="module")
def problem():
    n, N = 12, 10
    rng = np.random.default_rng(3)
    E, y = rng.normal(size=(N, n)), rng.normal(size=6)
    H = np.eye(n)[::2] + 0.3 * np.eye(n)[1::2]  # 6 observations
    ops = {"banded": Banded.from_dense(gc_matrix(6), 3), "toeplitz": Toeplitz(ar_column(6))}
    return E, y, H, ops


@pytest.mark.parametrize("kind", ["banded", "toeplitz"])
@pytest.mark.parametrize("scheme", DETERMINISTIC + sorted(enkit.STOCHASTIC))
def test_schemes_give_the_dense_matrix_analysis(problem, scheme, kind):
    # Same Cholesky root as Dense: the serial EnSRF and the perturbed
    # observations of the stochastic schemes agree member by member too.
    E, y, H, ops = problem
    C = ops[kind]
    f = enkit.SCHEMES[scheme]
    key = jax.random.key(5) if scheme in enkit.STOCHASTIC else None
    np.testing.assert_allclose(f(E, y, H, C, key=key), f(E, y, H, Dense(C.dense()), key=key),
                               rtol=1e-10, atol=1e-12)


def test_woodbury_enkf_with_the_cg_solve():
    m, N = 30, 6  # m > N: the ensemble-space (Woodbury) form, R.solve by CG
    rng = np.random.default_rng(4)
    E, y = rng.normal(size=(N, m)), rng.normal(size=m)
    C = Toeplitz(ar_column(m), cg_tol=1e-14)
    a = enkit.enkf(E, y, np.eye(m), C, key=jax.random.key(1))
    b = enkit.enkf(E, y, np.eye(m), Dense(C.dense()), key=jax.random.key(1))
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


def test_no_m_by_m_array_at_m_100000():
    m, N = 100_000, 20
    rng = np.random.default_rng(6)
    bands = np.vstack([2.0 + rng.random(m)] + [0.1 * rng.random(m) for _ in range(5)])
    B = Banded(bands)  # the O(m b²) factorisation runs; nothing O(m²)
    E = jax.ShapeDtypeStruct((N, m), jnp.float64)
    x = jax.ShapeDtypeStruct((m,), jnp.float64)
    col = jax.ShapeDtypeStruct((m,), jnp.float64)

    def methods(C, x):
        return (C.solve(x), C.whiten(x), C.whiten_t(x), C.colorize(x), C.log_pdet,
                C.diagonal(), C.sample(jax.random.key(0), (N,)))

    programs = {
        "banded": (lambda B, x: methods(B, x), (B, x)),
        "banded-etkf": (lambda B, E, y: enkit.etkf(E, y, lambda v: v, B), (B, E, x)),
        "banded-enkf": (lambda B, E, y: enkit.enkf(E, y, lambda v: v, B,
                                                   key=jax.random.key(0)), (B, E, x)),
        # Toeplitz built inside the trace: its O(m²) recursion is not run.
        "toeplitz": (lambda c, x: methods(Toeplitz(c), x), (col, x)),
        "toeplitz-cg": (lambda c, x: methods(Toeplitz(c, cg_tol=1e-10), x), (col, x)),
        "toeplitz-etkf": (lambda c, E, y: enkit.etkf(E, y, lambda v: v, Toeplitz(c)),
                          (col, E, x)),
    }
    sizes = {k: largest_array(f, *args)
             for k, (f, args) in programs.items()}
    assert max(sizes.values()) <= 4 * N * m, sizes  # an (m, m) array would be 10¹⁰


def test_float32_smoke():
    m = 10
    for op64 in (Banded.from_dense(gc_matrix(m), 3), Toeplitz(ar_column(m))):
        op = type(op64)(*(jnp.asarray(op64.bands if isinstance(op64, Banded)
                                      else op64.column, jnp.float32),))
        x = np.random.default_rng(7).normal(size=(3, m))
        w = op.whiten(x.astype(np.float32))
        assert w.dtype == jnp.float32 and op.log_pdet.dtype == jnp.float32
        np.testing.assert_allclose(w, op64.whiten(x), rtol=1e-4, atol=1e-5)
        Ea = enkit.etkf(np.random.default_rng(8).normal(size=(6, m)).astype(np.float32),
                        np.zeros(m, np.float32), np.eye(m, dtype=np.float32), op)
        assert Ea.dtype == jnp.float32 and np.all(np.isfinite(Ea))


@pytest.mark.parametrize("make, match", [
    (lambda: Banded(np.ones(4)), "shape"),
    (lambda: Banded(np.ones((5, 4))), "b < m"),
    (lambda: Banded(np.array([[1.0, np.nan, 1.0]])), "finite"),
    (lambda: Banded(np.array([[1.0, 1.0, 1.0], [0.9, 0.9, 0.0]])), "pivot of row 2"),
    (lambda: Banded.from_dense(np.array([[1.0, 0.2], [0.1, 1.0]]), 1), "symmetric"),
    (lambda: Banded.from_dense(np.ones((3, 3)) + np.eye(3), 1), "outside the band"),
    (lambda: Banded.from_dense(np.eye(3), 3), "bandwidth"),
    (lambda: Toeplitz(np.ones((2, 2))), "shape"),
    (lambda: Toeplitz(np.array([1.0, np.inf])), "finite"),
    (lambda: Toeplitz(np.array([1.0, 0.9, 0.0])), "order 2"),
    (lambda: Toeplitz(np.array([1.0, 0.5]), cg_tol=-1.0), "cg_tol"),
    (lambda: Toeplitz(np.array([1.0, 0.5]), cg_maxiter=0), "cg_maxiter"),
])
def test_bad_inputs_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()
