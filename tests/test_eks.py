"""EKS and ALDI samplers and the EKSStableScheduler.

Exact answers: one step against the formula in NumPy (round-off); on a
linear-Gaussian problem the long-run ensemble statistics against the
closed-form posterior (ALDI) and against the exact finite-ensemble
equilibrium of EKS, E[C] = (N − p − 2)/(N − 1) Σ (its density is
π^{⊗N}(U) det C(U)^{−(p+1)/2}, so (N − 1) C is Wishart with N − p − 2
degrees of freedom), within Monte-Carlo error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.kalman_numpy import kalman_analysis

import enkit
from enkit.inversion import (
    ALDI,
    EKS,
    EKSStableScheduler,
    GaussianPrior,
    NonFiniteEnsemble,
    aldi_update,
    eks_update,
    stable_step,
)


class Problem:
    """G(u) = A u, p = 3, d = 4, correlated prior and Γ (or diagonal ones)."""

    def __init__(self, diagonal=False, seed=0):
        rng = np.random.default_rng(seed)
        p, d = 3, 4
        self.p, self.d = p, d
        self.A = rng.normal(size=(d, p))
        L = rng.normal(size=(p, p)) + 2 * np.eye(p)
        self.C0 = L @ L.T / p
        self.m0 = rng.normal(size=p)
        B = rng.normal(size=(d, d))
        self.Gamma = 0.3 * (B @ B.T / d + np.eye(d))
        if diagonal:
            self.C0, self.Gamma = np.diag(np.diag(self.C0)), np.diag(np.diag(self.Gamma))
            self.prior = GaussianPrior(self.m0, np.diag(self.C0))
            self.noise = enkit.Diagonal(np.diag(self.Gamma))
        else:
            self.prior = GaussianPrior(self.m0, self.C0)
            self.noise = enkit.Dense(self.Gamma)
        u = self.m0 + np.linalg.cholesky(self.C0) @ rng.normal(size=p)
        self.y = self.A @ u + np.linalg.cholesky(self.Gamma) @ rng.normal(size=d)
        self.m_post, self.C_post = kalman_analysis(self.m0, self.C0, self.y, self.A, self.Gamma)


def long_run(proc, prob, N, dt, n_burn, n_keep, seed, chains):
    """Time averages (after burn-in) of the ensemble mean and of the sample
    covariance (N − 1) of ``chains`` independent ensembles. One compilation."""
    A, y, noise = jnp.asarray(prob.A), jnp.asarray(prob.y), prob.noise

    def step(s, _):
        U = proc.ask(s)
        s, _ = proc.tell(s, U @ A.T, y, noise, dt=dt)
        X = s.ensemble - s.ensemble.mean(0)
        return s, (s.ensemble.mean(0), X.T @ X / (N - 1))

    def one(key):
        s = proc.init(key, prob.prior.sample(jax.random.fold_in(key, 10**6), N))
        s, _ = jax.lax.scan(lambda s, _: (step(s, _)[0], None), s, None, length=n_burn)
        _, (m, C) = jax.lax.scan(step, s, None, length=n_keep)
        return m.mean(0), C.mean(0)

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(chains))
    m, C = jax.jit(jax.vmap(one))(keys)
    return np.asarray(m), np.asarray(C)


def test_aldi_samples_the_linear_gaussian_posterior():
    prob = Problem()
    N, dt, n_burn, n_keep = 200, 0.02, 250, 1250
    m, C = long_run(ALDI(prob.prior), prob, N, dt, n_burn, n_keep, seed=1, chains=1)
    m, C = m[0], C[0]
    # Expected Monte-Carlo error. At equilibrium C ≈ Σ, so the dynamics is
    # u − m = Σ^{1/2} z with z an Ornstein–Uhlenbeck process of rate 1: first
    # moments decorrelate as e^{−t} (integrated autocorrelation time 2),
    # second moments as e^{−2t} (time 1). Over T = n_keep·Δt and N i.i.d.
    # members: sd(m̂ₖ) = √(2 Σₖₖ / (N T)), sd(Ĉₖₗ) = √((ΣₖₖΣₗₗ + Σₖₗ²) / (N T)).
    S = prob.C_post
    T = n_keep * dt
    sd_m = np.sqrt(2 * np.diag(S) / (N * T))
    sd_C = np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / (N * T))
    # Plus the O(Δt) bias of the time step: a relative |bias| ≤ Δt/2 per
    # eigen-direction for the semi-implicit step (scalar analysis).
    scale = np.sqrt(np.outer(np.diag(S), np.diag(S)))
    assert np.all(np.abs(m - prob.m_post) < 4 * sd_m), (m - prob.m_post) / sd_m
    assert np.all(np.abs(C - S) < 4 * sd_C + dt / 2 * scale), (C - S) / sd_C
    # The test can fail: the prior is far from this posterior.
    assert np.max(np.abs(prob.m0 - prob.m_post) / sd_m) > 10
    assert np.max(np.abs(prob.C0 - S) / sd_C) > 10


def test_eks_has_its_exact_finite_ensemble_bias_and_aldi_removes_it():
    # N = 8 members for p = 3: EKS's equilibrium covariance is
    # (N − p − 2)/(N − 1) = 3/7 of the posterior's (an O(p/N) bias that a
    # larger N shrinks, e.g. 2 % at N = 200, below the Monte-Carlo error of
    # the test above); ALDI's is the posterior's. 24 independent ensembles;
    # the standard errors are those of the 24 chain averages.
    prob = Problem(diagonal=True, seed=2)
    N, dt, n_burn, n_keep, chains = 8, 0.02, 250, 1250, 24
    factor = (N - prob.p - 2) / (N - 1)
    S = prob.C_post
    out = {}
    for name, proc in [("ALDI", ALDI(prob.prior)), ("EKS", EKS(prob.prior))]:
        m, C = long_run(proc, prob, N, dt, n_burn, n_keep, seed=3, chains=chains)
        se_m = m.std(0, ddof=1) / np.sqrt(chains)
        se_C = C.std(0, ddof=1) / np.sqrt(chains)
        out[name] = m.mean(0), C.mean(0), se_m, se_C
    scale = np.sqrt(np.outer(np.diag(S), np.diag(S)))
    for name, target in [("ALDI", S), ("EKS", factor * S)]:
        m, C, se_m, se_C = out[name]
        assert np.all(np.abs(m - prob.m_post) < 4 * se_m + 1e-12), (name, m - prob.m_post, se_m)
        # Δt bias ≤ Δt/2 relative, as above.
        assert np.all(np.abs(C - target) < 4 * se_C + dt / 2 * scale), (name, C / target)
    # EKS's spread is clearly below the posterior's, ALDI's is not.
    d_eks = np.diag(out["EKS"][1]) / np.diag(S)
    d_aldi = np.diag(out["ALDI"][1]) / np.diag(S)
    assert np.all(d_eks < 0.6) and np.all(np.abs(d_aldi - 1) < 0.1)


def _numpy_step(U, G, y, Gam, m0, C0, dt, xi, correct):
    N, p = U.shape
    X = (U - U.mean(0)) / np.sqrt(N - 1)
    Y = (G - G.mean(0)) / np.sqrt(N - 1)
    C, CuG = X.T @ X, X.T @ Y
    P0 = np.linalg.inv(C0)
    rhs = U.T - dt * CuG @ np.linalg.solve(Gam, (G - y).T) + dt * (C @ P0 @ m0)[:, None]
    rhs += np.sqrt(2 * dt) * X.T @ xi.T
    if correct:
        rhs += dt * (p + 1) / (N - 1) * (U - U.mean(0)).T
    return np.linalg.solve(np.eye(p) + dt * C @ P0, rhs).T


@pytest.mark.parametrize("N", [6, 12], ids=["p>N (Woodbury)", "p<N"])
def test_one_step_equals_the_semi_implicit_formula(N):
    rng = np.random.default_rng(4)
    p, d = 8, 5
    U = rng.normal(size=(N, p))
    A = rng.normal(size=(d, p))
    G = np.tanh(U @ A.T)
    y = rng.normal(size=d)
    B = rng.normal(size=(d, d))
    Gam = B @ B.T / d + np.eye(d)
    L = rng.normal(size=(p, p)) + 2 * np.eye(p)
    C0 = L @ L.T / p
    m0 = rng.normal(size=p)
    prior = GaussianPrior(m0, C0)
    xi = rng.normal(size=(N, N))
    for f, correct in [(eks_update, False), (aldi_update, True)]:
        got = f(U, G, y, enkit.Dense(Gam), prior, 0.3, xi)
        want = _numpy_step(U, G, y, Gam, m0, C0, 0.3, xi, correct)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        # Δt = 0 is the identity, bit for bit.
        assert np.array_equal(f(U, G, y, enkit.Dense(Gam), prior, 0.0, xi), U)
    # tell draws ξ from fold_in(key, iteration): reproduced here by hand.
    key = jax.random.key(9)
    proc = EKS(prior)
    s = proc.init(key, U)
    s, info = proc.tell(s, G, y, Gam, dt=0.3)
    s, _ = proc.tell(s, np.tanh(np.asarray(s.ensemble) @ A.T), y, Gam, dt=0.3)
    U1 = _numpy_step(U, G, y, Gam, m0, C0, 0.3,
                     np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (N, N))), False)
    U2 = _numpy_step(U1, np.tanh(U1 @ A.T), y, Gam, m0, C0, 0.3,
                     np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (N, N))), False)
    np.testing.assert_allclose(s.ensemble, U2, rtol=1e-9, atol=1e-9)
    assert int(s.iteration) == 2 and abs(float(s.time) - 0.6) < 1e-15
    np.testing.assert_allclose(info.misfit, enkit.data_misfit(G, y, Gam), rtol=1e-12)


def test_scan_equals_loop_same_key_same_draws():
    prob = Problem(seed=5)
    proc = ALDI(prob.prior)
    U0 = prob.prior.sample(jax.random.key(0), 6)
    A, y = jnp.asarray(prob.A), jnp.asarray(prob.y)
    dts = jnp.asarray([0.1, 0.05, 0.2])

    def loop(key):
        s = proc.init(key, U0)
        for dt in dts:
            s, _ = proc.tell(s, proc.ask(s) @ A.T, y, prob.noise, dt=dt)
        return np.asarray(s.ensemble)

    @jax.jit
    def scan(s):
        def body(s, dt):
            return proc.tell(s, proc.ask(s) @ A.T, y, prob.noise, dt=dt)
        return jax.lax.scan(body, s, dts)[0].ensemble

    a = loop(jax.random.key(1))
    np.testing.assert_allclose(scan(proc.init(jax.random.key(1), U0)), a, rtol=1e-12, atol=1e-12)
    assert np.array_equal(loop(jax.random.key(1)), a)
    assert not np.allclose(loop(jax.random.key(2)), a)


def test_eks_stable_scheduler_formula_jit_and_vmap():
    rng = np.random.default_rng(6)
    N, d = 7, 4
    G = rng.normal(size=(N, d))
    y = rng.normal(size=d)
    B = rng.normal(size=(d, d))
    Gam = B @ B.T / d + np.eye(d)
    Gi = np.linalg.inv(Gam)
    D = (G - G.mean(0)) @ Gi @ (G - y).T / (N - 1)
    h, delta = 0.5, 1e-3
    expect = h / (np.sqrt(np.sum(D * D)) + delta)
    sched = EKSStableScheduler(h, delta)
    np.testing.assert_allclose(sched.step_size(0.0, G, y, Gam), expect, rtol=1e-12)
    jitted = jax.jit(lambda s, G: s.step_size(0.0, G, y, enkit.Dense(Gam)))
    np.testing.assert_allclose(jitted(sched, G), expect, rtol=1e-12)
    # Defaults h = 1, δ = float64 eps; a vmap over h is a sweep, no retrace.
    np.testing.assert_allclose(EKSStableScheduler().step_size(0.0, G, y, Gam),
                               1 / (np.sqrt(np.sum(D * D)) + np.finfo(float).eps), rtol=1e-12)
    hs = jnp.asarray([0.5, 1.0, 2.0])
    sweep = jax.vmap(lambda h: EKSStableScheduler(h, delta).step_size(0.0, G, y, Gam))(hs)
    np.testing.assert_allclose(sweep, np.asarray(hs) / (np.sqrt(np.sum(D * D)) + delta),
                               rtol=1e-12)
    # At the data with a collapsed ensemble D = 0: the step is h/δ, finite.
    assert float(EKSStableScheduler(1.0, 0.01).step_size(0.0, np.tile(y, (3, 1)), y, Gam)) \
        == pytest.approx(100.0)


def test_aldi_with_the_stable_scheduler_reaches_the_posterior_mean():
    # Adaptive steps inside one jitted scan; the ensemble mean of the last
    # 300 iterations approaches the posterior mean (Monte-Carlo tolerance
    # loose: this checks the scheduler drives a stable run, not the law).
    prob = Problem(seed=7)
    proc, sched = ALDI(prob.prior), EKSStableScheduler(0.05)
    A, y = jnp.asarray(prob.A), jnp.asarray(prob.y)

    @jax.jit
    def go(s):
        def body(s, _):
            G = proc.ask(s) @ A.T
            dt = sched.step_size(s.time, G, y, prob.noise)
            s, info = proc.tell(s, G, y, prob.noise, dt=dt)
            return s, (s.ensemble.mean(0), info.dt)
        return jax.lax.scan(body, s, None, length=600)

    s, (means, dts) = go(proc.init(jax.random.key(0), prob.prior.sample(jax.random.key(1), 50)))
    assert np.all(np.isfinite(np.asarray(s.ensemble)))
    assert np.all(np.asarray(dts) > 0)
    err = np.asarray(means[-300:]).mean(0) - prob.m_post
    sd = np.sqrt(np.diag(prob.C_post))
    assert np.all(np.abs(err) < 0.3 * sd), err / sd
    assert np.max(np.abs(prob.m0 - prob.m_post) / sd) > 1  # far from the prior mean


def test_invalid_options_raise():
    prob = Problem()
    U = np.asarray(prob.prior.sample(jax.random.key(0), 6))
    with pytest.raises(TypeError, match="prior"):
        EKS(None)
    with pytest.raises(TypeError):
        ALDI()  # the prior is required
    with pytest.raises(ValueError, match="N >= p \\+ 2"):
        ALDI(prob.prior).init(jax.random.key(0), U[:4])  # p = 3 needs N >= 5
    ALDI(prob.prior).init(jax.random.key(0), U[:5])
    with pytest.raises(TypeError, match="key"):
        EKS(prob.prior).init(None, U)
    with pytest.raises(ValueError, match="dimension"):
        EKS(GaussianPrior(np.zeros(2), 1.0)).init(jax.random.key(0), U)
    s = EKS(prob.prior).init(0, U)
    with pytest.raises(ValueError, match="dt"):
        EKS(prob.prior).tell(s, U @ prob.A.T, prob.y, prob.Gamma, dt=-0.1)
    with pytest.raises(TypeError, match="cap_dt"):
        EKS(prob.prior, cap_dt=1)
    for bad in [{"numerator": -1.0}, {"numerator": 0.0}, {"nugget": -1e-3},
                {"nugget": float("nan")}]:
        with pytest.raises(ValueError):
            EKSStableScheduler(**bad)


def test_float32_smoke():
    prob = Problem(seed=8)
    prior = GaussianPrior(np.float32(prob.m0), np.float32(prob.C0))
    proc = ALDI(prior)
    U = prior.sample(jax.random.key(0), 8)
    assert U.dtype == jnp.float32
    s = proc.init(jax.random.key(1), U)
    for _ in range(3):
        G = proc.ask(s) @ jnp.asarray(prob.A, jnp.float32).T
        dt = EKSStableScheduler().step_size(s.time, G, np.float32(prob.y), np.float32(prob.Gamma))
        s, _ = proc.tell(s, G, np.float32(prob.y), np.float32(prob.Gamma), dt=dt)
    assert s.ensemble.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(s.ensemble)))


def _stiff(u):
    """A stiff nonlinear 2-D forward map (Γ = 0.01 I): from an N(0, I)
    prior the data drift is ~10⁴ times the prior's."""
    return jnp.array([jnp.exp(1.5 * u[0]), u[1] ** 3 + 2 * u[0] * u[1]])


STIFF_Y, STIFF_NOISE = np.array([2.0, 1.0]), 0.01 * np.eye(2)
# Posterior mean by quadrature on a 1601² grid over [-4, 4]²; standard
# deviations 0.033 and 0.046.
STIFF_MEAN = np.array([0.4597, 0.6999])


@pytest.mark.parametrize("cls", [EKS, ALDI])
def test_fixed_steps_on_a_stiff_problem_are_capped_and_stay_finite(cls):
    prior = GaussianPrior(np.zeros(2), np.eye(2))
    U0 = prior.sample(jax.random.key(0), 20)
    for dt in [0.005, 0.01]:
        r = enkit.calibrate_scan(_stiff, cls(prior), U0, STIFF_Y, STIFF_NOISE, key=1,
                                 n_iterations=200, scheduler=enkit.FixedStep(dt))
        assert np.all(np.isfinite(np.asarray(r.ensembles)))
        dts = np.asarray(r.dts)
        assert dts[0] < dt / 10 and dts[-1] == dt  # capped while the drift is strong
        np.testing.assert_allclose(np.asarray(r.mean), STIFF_MEAN, atol=0.05)
    # Without the cap the first steps blow the ensemble up and the forward
    # map overflows at iteration 2, in the compiled and the Python loop.
    for run, kw in [(enkit.calibrate_scan, {"n_iterations": 20}),
                    (enkit.calibrate, {"max_iterations": 20})]:
        with pytest.raises(enkit.inversion.ForwardFailure, match="iteration 2") as e:
            run(_stiff, cls(prior, cap_dt=False), U0, STIFF_Y, STIFF_NOISE, key=1,
                scheduler=enkit.FixedStep(0.01), **kw)
        assert e.value.iteration == 2


def test_the_adaptive_step_is_the_default():
    prior = GaussianPrior(np.zeros(2), np.eye(2))
    U0 = prior.sample(jax.random.key(0), 20)
    r = enkit.calibrate(_stiff, EKS(prior), U0, STIFF_Y, STIFF_NOISE, key=1, max_iterations=5)
    assert r.settings["scheduler"].startswith("None")
    for k in range(5):
        want = stable_step(r.forward_outputs[k], STIFF_Y, STIFF_NOISE)
        np.testing.assert_allclose(r.dts[k], want, rtol=1e-12)
    s = EKS(prior).init(0, U0)
    G = jax.vmap(_stiff)(s.ensemble)
    _, info = EKS(prior).tell(s, G, STIFF_Y, STIFF_NOISE)
    _, info_big = EKS(prior).tell(s, G, STIFF_Y, STIFF_NOISE, dt=1.0)  # capped
    _, info_off = EKS(prior, cap_dt=False).tell(s, G, STIFF_Y, STIFF_NOISE, dt=1.0)
    assert float(info.dt) == float(info_big.dt) == float(stable_step(G, STIFF_Y, STIFF_NOISE))
    assert float(info_off.dt) == 1.0


class _Poisoned(EKS):
    """EKS whose update of iteration 2 sets member 3 to NaN: a fault injected
    to check that the drivers stop there and say so."""

    def tell(self, state, G, y, noise, *, dt=None):
        new, info = super().tell(state, G, y, noise, dt=dt)
        E = jnp.where(state.iteration == 2, new.ensemble.at[3].set(jnp.nan), new.ensemble)
        return new._replace(ensemble=E), info


enkit.inversion._common.register(_Poisoned, data=["prior"], meta=["cap_dt"])


def test_a_non_finite_update_stops_the_run_with_its_iteration():
    prior = GaussianPrior(np.zeros(2), np.eye(2))
    U0 = prior.sample(jax.random.key(0), 20)
    for run, kw in [(enkit.calibrate_scan, {"n_iterations": 10}),
                    (enkit.calibrate, {"max_iterations": 10}),
                    (enkit.calibrate, {"max_iterations": 10, "failure": "ignore"})]:
        with pytest.raises(NonFiniteEnsemble, match="update of iteration 2 with") as e:
            run(_stiff, _Poisoned(prior), U0, STIFF_Y, STIFF_NOISE, key=1,
                scheduler=enkit.FixedStep(0.005), **kw)
        assert e.value.iteration == 2 and e.value.members == [3] and e.value.dt == 0.005
