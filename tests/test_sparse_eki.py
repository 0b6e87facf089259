"""Sparse EKI (Schneider, Stuart & Wu 2022), soft-threshold form.

Exact answers: λ = 0, θ = 0 is EKI bit for bit; one step against the
formula in NumPy; on a sparse linear problem the true zeros become exactly
zero and the ensemble settles near the lasso solution (computed here by
ISTA in NumPy).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inversion import EKI, SparseEKI, analysis_variances, soft_threshold


class Sparse:
    """y = A u† + ε: p = 50 parameters, 5 non-zeros of size 1–2, d = 100."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.p, self.d = 50, 100
        self.A = rng.normal(size=(self.d, self.p))
        self.support = np.sort(rng.choice(self.p, 5, replace=False))
        self.u = np.zeros(self.p)
        self.u[self.support] = rng.choice([-1, 1], 5) * rng.uniform(1, 2, 5)
        self.sigma = 0.1
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

    # Deterministic, soft threshold only.
    U, _ = run(SparseEKI(l1_weight=prob.lam, stochastic=False), prob, U0)
    assert np.mean(U[:, zeros] == 0) >= 0.9
    assert np.all(U[:, prob.support] != 0)
    # Non-zeros: the lasso's shrinkage (≈ 0.03, measured 0.04) plus the
    # diagonal-metric approximation of the proximal step (measured 0.04).
    mean = U.mean(0)
    assert np.max(np.abs(mean[prob.support] - prob.u[prob.support])) < 0.12
    assert np.max(np.abs(mean - u_lasso)) < 0.06

    # Stochastic, with the hard threshold θ = 0.05 pruning what the
    # perturbations leave: far below the non-zeros (≥ 1), above the
    # members' spread on the zeros.
    U, _ = run(SparseEKI(l1_weight=prob.lam, threshold=0.05), prob, U0)
    assert np.mean(U[:, zeros] == 0) >= 0.9
    assert np.max(np.abs(U.mean(0)[prob.support] - prob.u[prob.support])) < 0.12

    # Plain EKI (λ = 0) leaves no exact zero: the test can fail.
    U, _ = run(SparseEKI(stochastic=False), prob, U0)
    assert np.mean(U[:, zeros] == 0) == 0.0


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
    Ca = X.T @ X - K @ Y.T @ X
    np.testing.assert_allclose(analysis_variances(U, G, enkit.Diagonal(np.diag(Gam)), dt),
                               np.diag(Ca), rtol=1e-10, atol=1e-14)
    key = jax.random.key(6)
    xi = np.asarray(enkit.Diagonal(np.diag(Gam)).sample(jax.random.fold_in(key, 0), (N,)))
    Ut = U + (y + xi / np.sqrt(dt) - G) @ K.T
    tau = dt * lam * np.diag(Ca)
    want = np.sign(Ut) * np.maximum(np.abs(Ut) - tau, 0)
    want = np.where(np.abs(want) > theta, want, 0.0)

    proc = SparseEKI(l1_weight=lam, threshold=theta)
    s, _ = proc.tell(proc.init(key, U), G, y, np.diag(Gam), dt=dt)
    np.testing.assert_allclose(s.ensemble, want, rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(s.ensemble)[:, 2] == 0)  # no spread: stays zero
    assert np.any((want == 0) & (Ut != 0))  # the thresholds bite

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
    assert np.any(np.asarray(s.ensemble) == 0)
