"""Sparse EKI (Schneider, Stuart & Wu 2022), penalised form.

Exact answers: λ = 0, θ = 0 is EKI bit for bit; the span elastic net
against ISTA in NumPy (full span) and against the optimality conditions
checked in NumPy (p > N); one step against the formula; on sparse linear
problems (over- and underdetermined) the mean is the lasso solution
(computed here by ISTA in NumPy) after one tell and stays there, with the
true zeros exactly zero, and the ensemble never collapses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inversion import (
    EKI,
    SparseEKI,
    soft_threshold,
    span_elastic_net,
)


class Sparse:
    """y = A u† + ε: by default p = 50 parameters, 5 non-zeros of size 1–2
    (random signs), d = 100, σ = 0.1; ``values`` fixes the non-zeros."""

    def __init__(self, seed=0, p=50, d=100, k=5, sigma=0.1, values=None):
        rng = np.random.default_rng(seed)
        self.p, self.d = p, d
        self.A = rng.normal(size=(self.d, self.p))
        self.support = np.sort(rng.choice(self.p, k, replace=False))
        self.u = np.zeros(self.p)
        self.u[self.support] = (rng.choice([-1, 1], k) * rng.uniform(1, 2, k)
                                if values is None else values)
        self.sigma = sigma
        self.y = self.A @ self.u + self.sigma * rng.normal(size=self.d)
        self.noise = enkit.Scalar(self.sigma**2, self.d)
        # The universal-threshold scale: |∂Φ/∂uₖ| at u† is about √d/σ for
        # a true zero (Aᵀ Γ⁻¹ ε, columns of norm √d), so λ = 3√d/σ zeroes
        # them while the lasso shrinks the non-zeros by about λσ²/d = 0.03.
        self.lam = 3 * np.sqrt(self.d) / self.sigma

    def lasso(self, iters=20000):
        """argmin ½‖(y − A u)/σ‖² + λ‖u‖₁ by ISTA (NumPy, independent)."""
        H = self.A.T @ self.A / self.sigma**2
        b = self.A.T @ self.y / self.sigma**2
        L = np.linalg.eigvalsh(H).max()
        u = np.zeros(self.p)
        for _ in range(iters):
            v = u - (H @ u - b) / L
            u = np.sign(v) * np.maximum(np.abs(v) - self.lam / L, 0)
        return u


@jax.jit
def _iterate(proc, s, A, y, noise):
    """30 iterations with Δt = 1 (the process is an argument: processes of
    one structure share the compilation)."""
    def body(s, _):
        return proc.tell(s, proc.ask(s) @ A.T, y, noise, dt=1.0)
    return jax.lax.scan(body, s, None, length=30)


def run(proc, prob, U0, key=0):
    s = proc.init(jax.random.key(key), U0)
    s, info = _iterate(proc, s, jnp.asarray(prob.A), jnp.asarray(prob.y), prob.noise)
    return np.asarray(s.ensemble), info


def test_sparse_eki_zeroes_the_inactive_parameters():
    prob = Sparse()
    U0 = np.random.default_rng(1).normal(size=(60, prob.p))
    zeros = np.setdiff1d(np.arange(prob.p), prob.support)
    u_lasso = prob.lasso()
    assert np.all(u_lasso[prob.support] != 0)  # λ keeps the true support

    # Deterministic: the mean lands on the lasso solution, exact zeros
    # included; the members keep their spread.
    U, _ = run(SparseEKI(l1_weight=prob.lam, stochastic=False), prob, U0)
    mean = U.mean(0)
    assert np.mean(np.abs(mean[zeros]) < 1e-12) >= 0.9  # zero up to the anomalies' rounding
    assert np.all(np.abs(mean[prob.support]) > 0.5)
    assert np.max(np.abs(mean - u_lasso)) < 1e-10  # measured 2e-14
    assert np.all(U.std(0) > 0)

    # Stochastic, with the hard threshold θ = 0.05 pruning what the
    # perturbations leave on the mean: far below the non-zeros (≥ 1).
    U, _ = run(SparseEKI(l1_weight=prob.lam, threshold=0.05), prob, U0)
    assert np.mean(np.abs(U.mean(0)[zeros]) < 1e-12) >= 0.9
    assert np.max(np.abs(U.mean(0)[prob.support] - prob.u[prob.support])) < 0.12

    # Plain EKI (λ = 0) leaves no exact zero: the test can fail.
    U, _ = run(SparseEKI(stochastic=False), prob, U0)
    assert np.mean(np.abs(U.mean(0)[zeros]) < 1e-12) == 0.0


class Underdetermined(Sparse):
    """The collapse case: p = 40 > d = 20, 3 non-zeros, σ = 0.05. The
    data leave 20 directions uninformed, where the analysis variance stays
    at the prior's; a threshold Δt λ (Cₐ)ₖₖ then exceeded every member."""

    def __init__(self, seed=0):
        super().__init__(seed, p=40, d=20, k=3, sigma=0.05, values=[1.5, -1.0, 2.0])


@jax.jit
def _iterate_dt(proc, s, A, y, noise, dt):
    def body(s, _):
        return proc.tell(s, proc.ask(s) @ A.T, y, noise, dt=dt)
    return jax.lax.scan(body, s, None, length=100)


@pytest.mark.parametrize("lam, dt", [(20.0, 1.0), (2.0, 1.0), (200.0, 1.0), (20.0, 0.05)])
def test_never_collapses_and_is_the_lasso(lam, dt):
    prob = Underdetermined()
    prob.lam = lam
    u_lasso = prob.lasso(iters=200000)
    U0 = np.random.default_rng(1).normal(size=(100, prob.p))
    A, y = jnp.asarray(prob.A), jnp.asarray(prob.y)
    # One tell puts the mean on the lasso solution, deterministic or not.
    for proc in [SparseEKI(l1_weight=lam, stochastic=False), SparseEKI(l1_weight=lam)]:
        s = proc.init(jax.random.key(2), U0)
        s, _ = proc.tell(s, proc.ask(s) @ A.T, y, prob.noise, dt=dt)
        mean = np.asarray(s.ensemble).mean(0)
        assert np.max(np.abs(mean - u_lasso)) < 1e-10  # measured 1e-14
        assert np.array_equal(np.abs(mean) < 1e-13, u_lasso == 0)
    # 100 more keep it there; the spread of the uninformed directions is
    # the prior's: no coordinate of the ensemble has collapsed.
    proc = SparseEKI(l1_weight=lam, stochastic=False)
    s, _ = _iterate_dt(proc, proc.init(None, U0), A, y, prob.noise, dt)
    U = np.asarray(s.ensemble)
    assert np.max(np.abs(U.mean(0) - u_lasso)) < 1e-10  # measured 5e-14
    assert np.min(U.std(0)) > 0.1
    # With the hard threshold of the reported case the ensemble stays alive
    # and the mean is the lasso solution with its entries ≤ 1e-2 pruned.
    proc = SparseEKI(l1_weight=lam, threshold=1e-2, stochastic=False)
    s, _ = _iterate_dt(proc, proc.init(None, U0), A, y, prob.noise, dt)
    U = np.asarray(s.ensemble)
    assert np.min(U.std(0)) > 0.1
    big = np.abs(u_lasso) > 1e-2
    assert np.all(np.abs(U.mean(0)[~big]) < 1e-13)
    assert np.max(np.abs(U.mean(0)[big] - u_lasso[big])) < 1e-2


def _ista(H, b, lam, u0, alpha=0.0, iters=100000):
    """argmin ½ uᵀHu − bᵀu + Σ λ|u| + ½ α‖u‖² by ISTA (NumPy)."""
    L = np.linalg.eigvalsh(H).max() + np.max(alpha)
    u = u0.copy()
    for _ in range(iters):
        v = u - (H @ u - b + alpha * u) / L
        u = np.sign(v) * np.maximum(np.abs(v) - lam / L, 0)
    return u


def test_span_elastic_net_is_the_elastic_net_of_the_linearised_problem():
    # Full span (N > p), a nonlinear G: the linearisation is the regression
    # of G's anomalies on U's. Vector λ with an unpenalised entry, a ridge.
    rng = np.random.default_rng(11)
    N, p, d = 30, 6, 8
    U = rng.normal(size=(N, p))
    A = rng.normal(size=(d, p))
    G = U @ A.T + 0.3 * np.sin(U @ A.T)
    y = rng.normal(size=d) * 3
    gam = rng.uniform(0.5, 2.0, size=d)
    lam = np.array([0.5, 1.0, 2.0, 0.0, 3.0, 1.5])
    X, Y = U - U.mean(0), G - G.mean(0)
    B = np.linalg.lstsq(X, Y, rcond=None)[0].T  # (d, p)
    ub = U.mean(0)
    H = B.T @ (B / gam[:, None])
    b = B.T @ ((y - G.mean(0)) / gam)
    for alpha in [0.0, np.array([0.7, 0.0, 0.2, 1.0, 0.0, 0.3])]:
        # In w = u − ū: ½wᵀHw − bᵀw, penalties on ū + w; ISTA on u directly.
        want = _ista(H, b + H @ ub, lam, ub, alpha)
        got, info = span_elastic_net(jnp.asarray(U), jnp.asarray(G), jnp.asarray(y),
                                     enkit.Diagonal(gam), jnp.asarray(lam), jnp.asarray(alpha))
        np.testing.assert_allclose(got, want, atol=1e-10)
        assert np.array_equal(np.asarray(got) == 0, want == 0) and np.any(want == 0)
        assert bool(info.polished)


def test_span_elastic_net_in_a_partial_span_meets_the_optimality_conditions():
    # p > N: the solution lies in ū + span; check stationarity in the span
    # with the least-norm subgradient on the zeros (NumPy), |z_I| ≤ λ, the
    # signs, and that the cost is below nearby points of the span.
    rng = np.random.default_rng(12)
    N, p, d = 8, 30, 12
    U = rng.normal(size=(N, p))
    A = rng.normal(size=(d, p))
    G = U @ A.T
    y = A @ np.where(np.arange(p) < 3, 2.0, 0.0) + 0.1 * rng.normal(size=d)
    lam = 200.0  # large enough for zeros in the 7-dimensional affine span
    got, info = span_elastic_net(jnp.asarray(U), jnp.asarray(G), jnp.asarray(y),
                                 enkit.Scalar(0.01, d), lam, 0.0)
    u = np.asarray(got)
    assert bool(info.polished)
    ub = U.mean(0)
    Q = np.linalg.svd(U - ub, full_matrices=False)[2][: N - 1]  # (r, p) span basis
    np.testing.assert_allclose(Q.T @ (Q @ (u - ub)), u - ub, atol=1e-12)  # in the span
    grad = A.T @ ((A @ u - y) / 0.01)  # G is linear: the linearisation is A on the span
    zero = u == 0
    assert zero.sum() >= 1
    z = np.where(zero, 0.0, lam * np.sign(u))
    zI = np.linalg.lstsq(Q[:, zero], -Q @ (grad + z), rcond=None)[0]
    z[zero] = zI
    np.testing.assert_allclose(Q @ (grad + z), 0, atol=1e-8 * np.abs(Q @ grad).max())
    assert np.all(np.abs(zI) <= lam * (1 + 1e-8))

    def cost(v):
        return 0.5 * np.sum((A @ v - y) ** 2) / 0.01 + lam * np.abs(v).sum()
    for _ in range(20):
        v = u + 1e-3 * Q.T @ rng.normal(size=N - 1)
        assert cost(v) >= cost(u)


def test_tells_in_a_partial_span_reach_a_solution():
    # p > N: ten deterministic tells leave a mean that the next solve
    # recognises as its solution (the support check passes, no ADMM step).
    rng = np.random.default_rng(13)
    N, p, d = 12, 30, 20
    U0 = rng.normal(size=(N, p))
    A = jnp.asarray(rng.normal(size=(d, p)))
    y = A @ jnp.where(jnp.arange(p) < 3, 2.0, 0.0) + 0.1 * jnp.asarray(rng.normal(size=d))
    noise = enkit.Scalar(0.01, d)
    for lam in [5.0, 50.0]:
        proc = SparseEKI(l1_weight=lam, stochastic=False)
        s = proc.init(None, U0)
        for _ in range(10):
            s, _ = proc.tell(s, s.ensemble @ A.T, y, noise)
        m, info = span_elastic_net(s.ensemble, s.ensemble @ A.T, y, noise, lam, 0.0)
        assert bool(info.polished) and int(info.iterations) == 0
        np.testing.assert_allclose(m, np.asarray(s.ensemble).mean(0), atol=1e-12)


def test_zero_weight_and_threshold_is_eki_bit_for_bit():
    prob = Sparse(seed=2)
    U0 = np.random.default_rng(3).normal(size=(12, prob.p))
    A = prob.A
    for sto in [True, False]:
        a, b = SparseEKI(stochastic=sto), EKI(stochastic=sto)
        sa, sb = a.init(jax.random.key(4), U0), b.init(jax.random.key(4), U0)
        for dt in [0.5, 1.0, 0.25]:
            sa, ia = a.tell(sa, a.ask(sa) @ A.T, prob.y, prob.noise, dt=dt)
            sb, ib = b.tell(sb, b.ask(sb) @ A.T, prob.y, prob.noise, dt=dt)
            assert np.array_equal(sa.ensemble, sb.ensemble)
            assert np.array_equal(ia.misfit, ib.misfit)


def test_one_step_equals_the_formula_and_zeros_are_absorbing():
    rng = np.random.default_rng(5)
    N, p, d = 7, 4, 6
    U = rng.normal(size=(N, p))
    U[:, 2] = 0.0  # an inactive parameter, zero in every member
    A = rng.normal(size=(d, p))
    G = U @ A.T + 0.1 * rng.normal(size=(N, d)) ** 2
    y = rng.normal(size=d)
    Gam = np.diag(rng.uniform(0.5, 2.0, size=d))
    dt, lam, theta = 0.7, np.array([0.3, 2.0, 1.0, 0.0]), 0.02

    X = (U - U.mean(0)) / np.sqrt(N - 1)
    Y = (G - G.mean(0)) / np.sqrt(N - 1)
    S = Y.T @ Y + Gam / dt
    K = X.T @ Y @ np.linalg.inv(S)
    key = jax.random.key(6)
    xi = np.asarray(enkit.Diagonal(np.diag(Gam)).sample(jax.random.fold_in(key, 0), (N,)))
    Ut = U + (y + xi / np.sqrt(dt) - G) @ K.T
    m = Ut.mean(0)
    # The mean: the lasso of the linearised problem by ISTA on the
    # coordinates with spread (coordinate 2 has none: it cannot move), the
    # linearisation the regression of G's anomalies on theirs.
    free = [0, 1, 3]
    B = np.linalg.lstsq(X[:, free], Y, rcond=None)[0].T  # (d, 3)
    gi = 1 / np.diag(Gam)
    H = B.T @ (B * gi[:, None])
    ub = U.mean(0)[free]
    v = _ista(H, B.T @ ((y - G.mean(0)) * gi) + H @ ub, lam[free], ub, iters=200000)
    ms = m.copy()
    ms[free] = v
    ms = np.where(np.abs(ms) > theta, ms, 0.0)
    want = Ut + (ms - m)

    proc = SparseEKI(l1_weight=lam, threshold=theta)
    s, _ = proc.tell(proc.init(key, U), G, y, np.diag(Gam), dt=dt)
    np.testing.assert_allclose(s.ensemble, want, rtol=1e-10, atol=1e-11)
    mean = np.asarray(s.ensemble).mean(0)
    assert np.all(np.asarray(s.ensemble)[:, 2] == 0)  # no spread: stays zero
    assert np.sum(np.abs(mean) < 1e-14) >= 2 and np.any(ms[free] == 0)  # the penalty bites

    # soft_threshold: exact zeros inside [−τ, τ], shifts outside, τ = 0 exact.
    v = jnp.asarray([[-3.0, -0.5, 0.0, 0.2, 2.0]])
    np.testing.assert_array_equal(soft_threshold(v, 1.0), [[-2.0, 0.0, 0.0, 0.0, 1.0]])
    assert np.array_equal(soft_threshold(v, 0.0), v)


def test_invalid_options_raise():
    U = np.zeros((5, 3)) + np.arange(5)[:, None]
    with pytest.raises(ValueError, match="l1_weight"):
        SparseEKI(l1_weight=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        SparseEKI(threshold=-0.1)
    with pytest.raises(ValueError, match="l1_weight"):
        SparseEKI(l1_weight=[1.0, float("nan"), 0.0])
    with pytest.raises(TypeError, match="stochastic"):
        SparseEKI(stochastic=1)
    with pytest.raises(ValueError, match="active_set_steps"):
        SparseEKI(active_set_steps=-1)
    with pytest.raises(ValueError, match="shape \\(p,\\) = \\(3,\\)"):
        SparseEKI(l1_weight=np.ones(4), stochastic=False).init(None, U)
    with pytest.raises(TypeError, match="key"):
        SparseEKI().init(None, U)
    s = SparseEKI(stochastic=False).init(None, U)
    with pytest.raises(ValueError, match="dt"):
        SparseEKI(stochastic=False).tell(s, U, np.zeros(3), 1.0, dt=-1.0)


def test_float32_smoke():
    prob = Sparse(seed=7)
    U0 = np.random.default_rng(8).normal(size=(10, prob.p)).astype(np.float32)
    proc = SparseEKI(l1_weight=np.float32(prob.lam), threshold=0.01)
    s = proc.init(jax.random.key(0), U0)
    s, _ = proc.tell(s, s.ensemble @ jnp.asarray(prob.A, jnp.float32).T,
                     np.float32(prob.y), np.float32(prob.sigma**2), dt=1.0)
    assert s.ensemble.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(s.ensemble)))
    assert np.any(np.abs(np.asarray(s.ensemble).mean(0)) < 1e-6)
