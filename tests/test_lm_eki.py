"""Levenberg–Marquardt step rule (Iglesias 2016): the chosen α satisfies the
LM condition with equality (checked with dense linear algebra), and on a
linear problem deterministic EKI with it shrinks the misfit by exactly ρ per
step, stops by the discrepancy principle, and stops before the noise is fitted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inversion import EKI, LevenbergMarquardt, discrepancy_principle, lm_alpha
from enkit.inversion.levenberg_marquardt import lm_residual_ratio


def dense_ratio(G, y, Gamma, alpha):
    """α‖Γ^{1/2}(C + αΓ)⁻¹ r‖ / ‖Γ^{-1/2} r‖ by dense algebra (N − 1 covariances)."""
    G = np.asarray(G)
    Y = G - G.mean(0)
    C = Y.T @ Y / (G.shape[0] - 1)
    r = np.asarray(y) - G.mean(0)
    L = np.linalg.cholesky(Gamma)
    lhs = alpha * np.linalg.norm(L.T @ np.linalg.solve(C + alpha * Gamma, r))
    return lhs / np.linalg.norm(np.linalg.solve(L, r))


def random_case(N, d, seed=0):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(N, d)) * np.linspace(2.0, 0.2, d)
    B = rng.normal(size=(d, d))
    Gamma = 0.5 * (B @ B.T / d + np.eye(d))
    # data near the span of the output anomalies (so the root exists for d ≥ N)
    w = rng.normal(size=N)
    y = G.mean(0) + 3.0 * (G - G.mean(0)).T @ w / N + 0.05 * rng.normal(size=d)
    return G, y, Gamma


@pytest.mark.parametrize("N,d", [(10, 4), (5, 12)], ids=["d<N", "d>N"])
@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_condition_holds_with_equality(N, d, rho):
    G, y, Gamma = random_case(N, d)
    alpha = float(lm_alpha(G, y, enkit.Dense(Gamma), rho))
    assert np.isfinite(alpha) and alpha > 0
    np.testing.assert_allclose(dense_ratio(G, y, Gamma, alpha), rho, rtol=1e-9)
    # the residual ratio helper agrees with the dense formula at other α too
    for a in (0.1 * alpha, 10 * alpha):
        np.testing.assert_allclose(float(lm_residual_ratio(G, y, Gamma, a)),
                                   dense_ratio(G, y, Gamma, a), rtol=1e-10)
    # a larger ρ asks for a smaller step: the ratio is increasing in α
    assert float(lm_alpha(G, y, Gamma, min(rho + 0.1, 0.95))) > alpha


def test_step_size_is_inverse_alpha_capped_jit_vmap():
    G, y, Gamma = random_case(10, 4, seed=3)
    rule = LevenbergMarquardt(rho=0.6)
    a = float(rule.alpha(G, y, Gamma))
    dt = float(rule.step_size(0.0, G, y, Gamma))
    np.testing.assert_allclose(dt, 1.0 / a, rtol=1e-14)
    capped = LevenbergMarquardt(rho=0.6, max_dt=0.5 * dt)
    dt_c = float(capped.step_size(0.0, G, y, Gamma))
    assert dt_c == 0.5 * dt
    # capping keeps Iglesias's inequality: ratio ≥ ρ at the larger α
    assert dense_ratio(G, y, Gamma, 1.0 / dt_c) > 0.6
    f = jax.jit(lambda r, G: r.step_size(0.0, G, y, Gamma))
    np.testing.assert_allclose(float(f(rule, G)), dt, rtol=1e-12)
    rhos = jnp.array([0.3, 0.6, 0.9])
    dts = jax.vmap(lambda r: LevenbergMarquardt(rho=r).step_size(0.0, G, y, Gamma))(rhos)
    np.testing.assert_allclose(dts[1], dt, rtol=1e-12)
    assert np.all(np.diff(np.asarray(dts)) < 0)


def test_edge_cases_and_validation():
    G, y, Gamma = random_case(6, 3, seed=1)
    rule = LevenbergMarquardt(rho=0.5)
    # zero misfit: nothing to fit, a zero step
    assert float(rule.step_size(0.0, G, jnp.mean(jnp.asarray(G), axis=0), Gamma)) == 0.0
    # misfit wholly outside the span of the output anomalies (d > N − 1): no α
    # reaches equality; the largest step of the bracket is returned, finite,
    # and the condition holds as an inequality
    rng = np.random.default_rng(2)
    N, d = 3, 6
    Gs = rng.normal(size=(N, d))
    Y = Gs - Gs.mean(0)
    q, _ = np.linalg.qr(np.concatenate([Y.T, rng.normal(size=(d, 1))], axis=1))
    y_perp = Gs.mean(0) + q[:, -1]  # orthogonal to the anomalies (Γ = I)
    dt = float(rule.step_size(0.0, Gs, y_perp, 1.0))
    assert np.isfinite(dt) and dt > 1e10
    assert float(lm_residual_ratio(Gs, y_perp, 1.0, 1.0 / dt)) >= 0.5
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="rho"):
            LevenbergMarquardt(rho=bad)
    with pytest.raises(ValueError, match="max_dt"):
        LevenbergMarquardt(max_dt=0.0)
    with pytest.raises(ValueError, match="n_bisection"):
        LevenbergMarquardt(n_bisection=0)
    with pytest.raises(ValueError, match="y must have shape"):
        rule.step_size(0.0, G, y[:2], Gamma)


class IllPosed:
    """G(u) = A u, p = d = 16, singular values 1 … 1e-4, white noise σ = 0.01."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        p = d = 16
        Uo, _ = np.linalg.qr(rng.normal(size=(d, d)))
        Vo, _ = np.linalg.qr(rng.normal(size=(p, p)))
        self.A = Uo @ np.diag(np.logspace(0, -4, d)) @ Vo.T
        self.u_true = Vo @ (rng.normal(size=p) * np.logspace(0, -1.5, p))
        self.sigma, self.d = 1e-2, d
        self.y = self.A @ self.u_true + self.sigma * rng.normal(size=d)
        self.U0 = rng.normal(size=(24, p))


@pytest.mark.parametrize("stochastic", [False, True], ids=["det", "stoch"])
def test_lm_eki_discrepancy_stops_before_fitting_noise(stochastic):
    prob = IllPosed()
    A, y, d = prob.A, prob.y, prob.d
    noise = enkit.Diagonal(np.full(d, prob.sigma**2))
    rho = 0.7
    tau = 1.2 / rho  # Iglesias: τ > 1/ρ
    rule = LevenbergMarquardt(rho=rho)
    proc = EKI(stochastic=stochastic)
    tell = jax.jit(lambda s, G, dt: proc.tell(s, G, y, noise, dt=dt))
    step = jax.jit(lambda G: rule.step_size(0.0, G, y, noise))
    state = proc.init(7, prob.U0)
    misfits, errors, stop = [], [], None
    for n in range(30):
        U = proc.ask(state)
        G = U @ A.T
        state, info = tell(state, G, step(G))
        misfits.append(float(info.misfit))
        errors.append(np.linalg.norm(np.asarray(U).mean(0) - prob.u_true))
        if stop is None and bool(discrepancy_principle(info.misfit, d, tau=tau)):
            stop = n
    m = np.array(misfits)
    if not stochastic:
        # linear G, deterministic EKI: the mean's misfit shrinks by exactly ρ
        np.testing.assert_allclose(m[1:12] / m[:11], rho, rtol=1e-8)
        expected = int(np.ceil(np.log(tau * np.sqrt(d) / m[0]) / np.log(rho)))
        assert stop == expected
    assert stop is not None and stop <= 10
    # semi-convergence: at the stop the error is below the prior's, while
    # iterating on fits the noise and the error explodes (to ‖A⁻¹y − u†‖ ≈ 87)
    assert errors[stop] < (0.9 if not stochastic else 1.0) * errors[0]
    assert errors[-1] > 20 * errors[stop]


def test_float32_smoke():
    G, y, Gamma = random_case(10, 4)
    rule = LevenbergMarquardt(rho=0.5)
    dt = rule.step_size(0.0, jnp.asarray(G, jnp.float32), jnp.asarray(y, jnp.float32),
                        jnp.asarray(Gamma, jnp.float32))
    assert dt.dtype == jnp.float32
    np.testing.assert_allclose(dense_ratio(G, y, Gamma, 1.0 / float(dt)), 0.5, rtol=1e-4)
