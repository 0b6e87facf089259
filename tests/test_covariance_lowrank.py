"""The structured operators LowRankDiagonal, Kronecker and BlockDiagonal:
every method against the dense matrix, the square root consistent, every
analysis scheme with them against the same scheme with the dense matrix, and
no m×m array in the traced program at m = 100,000."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference.kalman_numpy import sample_stats
from reference.traced import largest_array

import enkit
from enkit import BlockDiagonal, Circulant, Dense, Diagonal, Kronecker, LowRankDiagonal, Scalar


def spd(k, seed):
    A = np.random.default_rng(seed).normal(size=(k, k))
    return A @ A.T + 0.5 * np.eye(k)


def lowrank(m=7, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return LowRankDiagonal(rng.uniform(0.5, 2.0, m), rng.normal(size=(m, k)))


def operators():
    return {
        "lowrank": lowrank(),
        "lowrank_k0": LowRankDiagonal(np.full(4, 0.7), np.zeros((4, 0))),
        "kronecker": Kronecker(Dense(spd(2, 1)), Diagonal(np.array([1.0, 2.0, 0.5]))),
        "kronecker_nested": Kronecker(Dense(spd(2, 2)),
                                      Kronecker(Circulant(np.array([2.0, 0.5, 0.5])),
                                                lowrank(2, 1, 3))),
        "block": BlockDiagonal([Diagonal(np.array([1.0, 3.0])), Dense(spd(3, 4)),
                                Scalar(0.4, 2), lowrank(3, 2, 5)]),
    }


@pytest.mark.parametrize("name", list(operators()))
def test_every_method_equals_the_dense_matrix(name):
    C = operators()[name]
    full = np.asarray(C.dense())
    m = C.dim
    D = Dense(full)
    rng = np.random.default_rng(1)
    tol = dict(rtol=1e-10, atol=1e-12)
    x = rng.normal(size=(2, 3, m))  # (N, m) row blocks, and a further leading axis
    v = rng.normal(size=(2, 3, m))

    @jax.jit  # one compiled program per operator: cheaper than op-by-op dispatch
    def outputs(C, x, v):
        w = C.whiten(x)
        eye = jnp.eye(m)
        return dict(solve=C.solve(x), w=w, wt_w=C.whiten_t(w), col_w=C.colorize(w),
                    w_col=C.whiten(C.colorize(x)), wt_v=C.whiten_t(v), vec=C.solve(x[0, 0]),
                    L=C.colorize(eye).T, Linv=C.whiten(eye).T, LinvT=C.whiten_t(eye).T)

    o = outputs(C, x, v)
    np.testing.assert_allclose(o["solve"], D.solve(x), **tol)
    np.testing.assert_allclose(o["vec"], D.solve(x[0, 0]), **tol)  # a single (m,) vector
    # Another root than Dense's: the invariants.
    np.testing.assert_allclose(np.sum(o["w"] ** 2, -1), np.sum(x * D.solve(x), -1), **tol)
    np.testing.assert_allclose(o["wt_w"], D.solve(x), **tol)
    np.testing.assert_allclose(o["col_w"], x, **tol)
    np.testing.assert_allclose(o["w_col"], x, **tol)
    # whiten_t is whiten's transpose: x·L⁻ᵀv = L⁻¹x·v.
    np.testing.assert_allclose(np.sum(x * o["wt_v"], -1), np.sum(o["w"] * v, -1), **tol)
    # L Lᵀ = C from the columns of the identity, and the inverse factors.
    eye = np.eye(m)
    L = np.asarray(o["L"])
    np.testing.assert_allclose(L @ L.T, full, **tol)
    np.testing.assert_allclose(np.asarray(o["Linv"]) @ L, eye, **tol)
    np.testing.assert_allclose(o["LinvT"], np.linalg.inv(L).T, **tol)
    np.testing.assert_allclose(C.whiten(x[0]), np.asarray(o["w"])[0], **tol)  # eager = jit
    np.testing.assert_allclose(C.log_pdet, np.linalg.slogdet(full)[1], rtol=1e-12)
    np.testing.assert_allclose(C.diagonal(), np.diag(full), rtol=1e-14)
    np.testing.assert_allclose(C.cholesky(), np.linalg.cholesky(full), **tol)
    assert np.allclose(full, full.T) and C.cholesky().shape == (m, m)
    n_draws = 20000
    draws = np.asarray(C.sample(jax.random.key(0), (n_draws,)))
    assert draws.shape == (n_draws, m)
    # Monte-Carlo standard error of each sample covariance entry.
    se = np.sqrt((np.outer(np.diag(full), np.diag(full)) + full**2) / n_draws)
    assert np.all(np.abs(np.cov(draws.T) - full) < 5 * se), np.max(np.abs(np.cov(draws.T)
                                                                         - full) / se)


def test_the_dense_counterparts_are_the_defining_matrices():
    rng = np.random.default_rng(6)
    d, U = rng.uniform(0.5, 2, 5), rng.normal(size=(5, 2))
    np.testing.assert_allclose(LowRankDiagonal(d, U).dense(), np.diag(d) + U @ U.T, rtol=0,
                               atol=1e-15)
    A, B = spd(2, 7), spd(3, 8)
    np.testing.assert_allclose(Kronecker(Dense(A), Dense(B)).dense(), np.kron(A, B),
                               rtol=1e-15)
    # Index i = ia·b + ib: (A ⊗ B) x = vec(A X Bᵀ) with X the row-major reshape.
    x = rng.normal(size=6)
    np.testing.assert_allclose(Kronecker(Dense(A), Dense(B)).colorize(x),
                               (np.linalg.cholesky(A) @ x.reshape(2, 3)
                                @ np.linalg.cholesky(B).T).ravel(), rtol=1e-12)
    blocks = BlockDiagonal((Diagonal(d), Dense(B)))
    full = np.zeros((8, 8))
    full[:5, :5], full[5:, 5:] = np.diag(d), B
    np.testing.assert_allclose(blocks.dense(), full, rtol=0, atol=0)
    assert blocks.sizes == (5, 3) and blocks.dim == 8


def test_they_are_pytrees_that_jit_vmap_and_differentiate():
    rng = np.random.default_rng(2)
    d, U = jnp.asarray(rng.uniform(0.5, 2, 6)), jnp.asarray(rng.normal(size=(6, 2)))
    A = jnp.asarray(spd(2, 9))
    x = jnp.asarray(rng.normal(size=6))

    def build(d, U, A):
        return BlockDiagonal([LowRankDiagonal(d, U),
                              Kronecker(Dense(A), Diagonal(d[:3]))])

    def f(d, U, A, dense):
        C = build(d, U, A)
        C = Dense(C.dense()) if dense else C
        xx = jnp.concatenate([x, x])
        w = C.whiten(xx)
        return C.solve(xx) @ xx + C.log_pdet + w @ w + jnp.sum(C.diagonal())

    g = jax.jit(jax.grad(f, argnums=(0, 1, 2)), static_argnums=3)
    for a, b in zip(g(d, U, A, False), g(d, U, A, True)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # The root itself (eigen-based) differentiates: compare with finite differences.
    check_grads(jax.jit(lambda U: LowRankDiagonal(d, U).colorize(x)), (U,), order=1,
                              modes=["rev"], atol=1e-6, rtol=1e-6)

    traces = []

    @jax.jit
    def program(C, x):
        traces.append(1)
        return C.solve(x), C.colorize(x), C.log_pdet

    C1, C2 = build(d, U, A), build(2 * d, U + 1, A + jnp.eye(2))
    xx = jnp.concatenate([x, x])
    out = program(C1, xx)
    np.testing.assert_allclose(out[0], C1.solve(xx), rtol=1e-12)
    program(C2, xx)
    assert len(traces) == 1  # new values, same shapes: no recompilation
    batched = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), C1, C2)
    logdets = jax.vmap(lambda C: C.log_pdet)(batched)
    np.testing.assert_allclose(logdets, [C1.log_pdet, C2.log_pdet], rtol=1e-12)


DETERMINISTIC = ["etkf", "ensrf", "kalman", "denkf", "estkf", "sqrt_kalman", "etkf_n",
                 "etkf_n_dual", "ienkf", "mlef"]


@pytest.fixture(scope="module")
def analysis_problem():
    # One operator holding all three structures: m = 4 + 6 = 10 observations.
    R = BlockDiagonal([lowrank(4, 2, 10),
                       Kronecker(Dense(spd(2, 11)), Circulant(np.array([2.0, 0.5, 0.5])))])
    n, N = 12, 10
    rng = np.random.default_rng(3)
    return rng.normal(size=(N, n)), rng.normal(size=R.dim), rng.normal(size=(R.dim, n)), R


@pytest.mark.parametrize("scheme", DETERMINISTIC)
def test_schemes_give_the_dense_matrix_analysis(scheme, analysis_problem):
    E, y, H, R = analysis_problem
    f = enkit.SCHEMES[scheme]
    np.testing.assert_allclose(f(E, y, H, R), f(E, y, H, Dense(R.dense())), rtol=1e-10,
                               atol=1e-12)


def test_serial_and_stochastic_schemes_keep_their_statistics(analysis_problem):
    E, y, H, R = analysis_problem
    a = enkit.ensrf_serial(E, y, H, R)
    b = enkit.ensrf_serial(E, y, H, Dense(R.dense()))
    for sa, sb in zip(sample_stats(np.asarray(a)), sample_stats(np.asarray(b))):
        np.testing.assert_allclose(sa, sb, rtol=1e-10, atol=1e-12)
    key = jax.random.key(7)  # the rotation does not depend on R
    np.testing.assert_allclose(enkit.etkf_rotated(E, y, H, R, key=key),
                               enkit.etkf_rotated(E, y, H, Dense(R.dense()), key=key),
                               rtol=1e-10, atol=1e-12)
    keys = jax.random.split(jax.random.key(5), 200)
    Rd = Dense(R.dense())
    mean_c = jnp.mean(jax.vmap(lambda k: enkit.enkf(E, y, H, R, key=k).mean(0))(keys), 0)
    mean_d = jnp.mean(jax.vmap(lambda k: enkit.enkf(E, y, H, Rd, key=k).mean(0))(keys), 0)
    np.testing.assert_allclose(mean_c, mean_d, atol=0.05)


def test_no_m_by_m_array_at_m_100000():
    m, N = 100_000, 20
    rng = np.random.default_rng(8)
    ops = {
        "lowrank": LowRankDiagonal(rng.uniform(0.5, 2, m), rng.normal(size=(m, 10))),
        "kronecker": Kronecker(Dense(spd(100, 12)), Diagonal(rng.uniform(0.5, 2, 1000))),
        "block": BlockDiagonal([Diagonal(rng.uniform(0.5, 2, m - 10)), Dense(spd(10, 13))]),
    }
    E = jax.ShapeDtypeStruct((N, m), jnp.float64)
    x = jax.ShapeDtypeStruct((m,), jnp.float64)

    def methods(C, x):
        return (C.solve(x), C.whiten(x), C.whiten_t(x), C.colorize(x), C.log_pdet,
                C.diagonal(), C.sample(jax.random.key(0), (N,)))

    def etkf(C, E, y):
        return enkit.etkf(E, y, lambda v: v, C)

    sizes = {}
    for name, C in ops.items():
        assert C.dim == m
        sizes[name, "methods"] = largest_array(methods, C, x)
        sizes[name, "etkf"] = largest_array(etkf, C, E, x)
    assert max(sizes.values()) <= 4 * N * m, sizes  # an (m, m) array would be 10¹⁰


def test_float32_smoke():
    R = BlockDiagonal([lowrank(4, 2, 14).astype(jnp.float32),
                       Kronecker(Dense(np.eye(2, dtype=np.float32)),
                                 Diagonal(np.ones(3, np.float32)))])
    assert R.dtype == jnp.float32
    rng = np.random.default_rng(4)
    E = rng.normal(size=(8, 5)).astype(np.float32)
    H = rng.normal(size=(R.dim, 5)).astype(np.float32)
    y = rng.normal(size=R.dim).astype(np.float32)
    Ea = enkit.etkf(E, y, H, R)
    assert Ea.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(Ea)))
    x = jnp.ones(R.dim, jnp.float32)
    assert R.solve(x).dtype == jnp.float32 and R.colorize(x).dtype == jnp.float32


def test_dtypes_are_made_common():
    C = LowRankDiagonal(np.ones(3, np.float32), np.ones((3, 1)))
    assert C.diag.dtype == C.factor.dtype == jnp.float64
    C = LowRankDiagonal(np.ones(3, np.int32), np.ones((3, 1), np.int32))
    assert jnp.issubdtype(C.dtype, jnp.floating)
    K = Kronecker(Diagonal(np.ones(2, np.float32)), Diagonal(np.ones(3)))
    assert K.left.dtype == K.right.dtype == jnp.float64
    B = BlockDiagonal([Diagonal(np.ones(2, np.float32)), Scalar(1.0, 2)])
    assert {blk.dtype for blk in B.blocks} == {jnp.dtype(jnp.float64)}


@pytest.mark.parametrize("build, error, match", [
    (lambda: LowRankDiagonal(np.ones((2, 2)), np.ones((2, 1))), ValueError, r"diagonal.*\(m,\)"),
    (lambda: LowRankDiagonal(np.array([1.0, -1.0]), np.ones((2, 1))), ValueError, "positive"),
    (lambda: LowRankDiagonal(np.ones(3), np.ones((2, 1))), ValueError, r"factor.*\(3, k\)"),
    (lambda: LowRankDiagonal(np.ones(3), np.ones(3)), ValueError, r"factor.*shape"),
    (lambda: LowRankDiagonal(np.ones(2), np.array([[1.0], [np.nan]])), ValueError, "finite"),
    (lambda: Kronecker(np.eye(2), Diagonal(np.ones(2))), TypeError, "left must be a Covariance"),
    (lambda: Kronecker(Diagonal(np.ones(2)), 1.0), TypeError, "right must be a Covariance"),
    (lambda: BlockDiagonal([]), ValueError, "at least one"),
    (lambda: BlockDiagonal(Diagonal(np.ones(2))), TypeError, "list or tuple"),
    (lambda: BlockDiagonal([Diagonal(np.ones(2)), np.eye(2)]), TypeError, r"blocks\[1\]"),
])
def test_bad_inputs_are_refused(build, error, match):
    with pytest.raises(error, match=match):
        build()
