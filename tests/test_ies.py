"""enkit.inversion.IES (Chen & Oliver 2013; Evensen et al. 2019).

Checks: the first full step is the stochastic EnKF (EKI, Δt = 1) with the
same perturbations; every step against a dense NumPy evaluation of the
column-form Gauss–Newton / Levenberg–Marquardt equation on a nonlinear map;
a linear problem is a fixed point after one full step (Gauss–Newton
converges in one step) for p < N and p > N; large-N mean and covariance vs
the exact posterior; a nonlinear toy converges; the traced program of a
200,000-parameter case forms no p×p, d×d or p×d array; keys, jit/scan,
validation, float32.
"""

import itertools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from reference.linear_inverse import LinearInverseProblem
from reference.traced import traced_shapes

import enkit
from enkit.inversion import EKI, IES, ies_step_lengths

Linear = LinearInverseProblem


def nonlinear_G(U):
    """A smooth nonlinear map R² → R⁴ (rows: members)."""
    a, b = U[:, 0], U[:, 1]
    return jnp.stack([a + 0.5 * b**2, jnp.sin(b) + a, a * b, jnp.exp(0.3 * a)], axis=1)


def run(proc, state, G, y, noise, n, **kw):
    infos = []
    for _ in range(n):
        state, info = proc.tell(state, G(proc.ask(state)), y, noise, **kw)
        infos.append(info)
    return state, infos


def ies_step_dense(W, U0, G, y, Gamma, xi, gamma, lam):
    """Column-form IES step in NumPy, explicit inverses (Evensen et al. 2019,
    with the Levenberg–Marquardt damping of Chen & Oliver 2013):
    wⱼ ← wⱼ − γ (cI + SᵀΓ⁻¹S)⁻¹ (wⱼ + SᵀΓ⁻¹(gⱼ − y − ξⱼ)), S = Y Ω⁻¹,
    Y projected as Y A⁺A when p < N − 1."""
    W, U0, G, xi = (np.asarray(a, np.float64).T for a in (W, U0, G, xi))  # columns
    N = G.shape[1]
    Pi = np.eye(N) - np.ones((N, N)) / N
    Y = G @ Pi / np.sqrt(N - 1)
    U = U0 + (U0 @ Pi / np.sqrt(N - 1)) @ W
    Ai = U @ Pi / np.sqrt(N - 1)
    if Ai.shape[0] < N - 1:  # p < N − 1: project on the anomalies' row space
        Y = Y @ np.linalg.pinv(Ai) @ Ai
    Omega = np.eye(N) + W @ Pi / np.sqrt(N - 1)
    S = Y @ np.linalg.inv(Omega)
    Gi = np.linalg.inv(Gamma)
    H = (1 + lam) * np.eye(N) + S.T @ Gi @ S
    Wn = W - gamma * np.linalg.solve(H, W + S.T @ Gi @ (G - y[:, None] - xi))
    A0 = U0 @ Pi / np.sqrt(N - 1)
    return Wn.T, (U0 + A0 @ Wn).T  # rows again


# --------------------------------------------------------- exactness ----


@pytest.mark.parametrize("p,d,N", [(4, 3, 10), (5, 12, 6)])  # d ≤ N and d > N
def test_first_full_step_is_the_stochastic_enkf_with_the_same_perturbations(p, d, N):
    prob = Linear(p=p, d=d, seed=p)
    U0 = prob.draws(N)
    ies, eki = IES(), EKI()
    s_ies, i_ies = ies.tell(ies.init(7, U0), prob.G(U0), prob.y, prob.Gamma, dt=1.0)
    s_eki, i_eki = eki.tell(eki.init(7, U0), prob.G(U0), prob.y, prob.Gamma, dt=1.0)
    np.testing.assert_allclose(s_ies.ensemble, s_eki.ensemble, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(i_ies.misfit, i_eki.misfit, rtol=1e-14)
    # The deterministic variants agree too.
    ies, eki = IES(stochastic=False), EKI(stochastic=False)
    s_ies, _ = ies.tell(ies.init(None, U0), prob.G(U0), prob.y, prob.Gamma)
    s_eki, _ = eki.tell(eki.init(None, U0), prob.G(U0), prob.y, prob.Gamma)
    np.testing.assert_allclose(s_ies.ensemble, s_eki.ensemble, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma,lam,p,N", [(1.0, 0.0, 2, 7), (0.6, 0.0, 2, 7),
                                           (0.5, 2.0, 2, 7), (0.7, 0.5, 8, 6)])
def test_each_step_is_the_dense_gauss_newton_levenberg_marquardt_step(gamma, lam, p, N):
    # p = 2 < N − 1: the projected sensitivity; p = 8 ≥ N − 1: S = Y Ω⁻¹ as is.
    rng = np.random.default_rng(3)
    U0 = jnp.asarray(rng.normal(size=(N, p)))
    y = np.array([1.0, 0.5, 0.3, 1.2])
    Gamma = np.diag([0.1, 0.2, 0.1, 0.15]) + 0.02
    key = jax.random.key(9)
    xi = enkit.Dense(Gamma).sample(jax.random.fold_in(key, 0), (N,))
    proc = IES()
    state = proc.init(key, U0)
    for _ in range(3):  # W ≠ 0 from the second step on: Ω matters
        W, U = np.asarray(state.weights), np.asarray(state.ensemble)
        G = np.asarray(nonlinear_G(U))
        state, info = proc.tell(state, G, y, Gamma, dt=gamma, damping=lam)
        W_ref, U_ref = ies_step_dense(W, U0, G, y, Gamma, xi, gamma, lam)
        np.testing.assert_allclose(state.weights, W_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state.ensemble, U_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(info.dt, gamma)
        np.testing.assert_allclose(info.misfit, enkit.data_misfit(G, y, Gamma))
    assert int(state.iteration) == 3
    np.testing.assert_allclose(state.time, 3 * gamma, rtol=1e-14)


@pytest.mark.parametrize("p,N", [(3, 12), (30, 8)])
def test_linear_problem_is_a_fixed_point_after_one_full_step(p, N):
    prob = Linear(p=p, d=5, seed=p)
    proc = IES()
    state, _ = run(proc, proc.init(1, prob.draws(N)), prob.G, prob.y, prob.Gamma, 1)
    after_one = np.asarray(state.ensemble)
    state, _ = run(proc, state, prob.G, prob.y, prob.Gamma, 3)
    np.testing.assert_allclose(state.ensemble, after_one, rtol=1e-9, atol=1e-9)
    # A half step does not get there; repeated half steps converge to it.
    half, _ = run(proc, proc.init(1, prob.draws(N)), prob.G, prob.y, prob.Gamma, 1, dt=0.5)
    assert np.max(np.abs(np.asarray(half.ensemble) - after_one)) > 1e-2
    half, _ = run(proc, half, prob.G, prob.y, prob.Gamma, 40, dt=0.5)
    np.testing.assert_allclose(half.ensemble, after_one, rtol=1e-8, atol=1e-8)


def test_large_ensemble_reaches_the_kalman_posterior():
    prob = Linear(p=4, d=3, seed=0)
    N = 2000
    ma, Pa = enkit.kalman_update(prob.m0, prob.C0, prob.y, prob.A, prob.Gamma)
    ma, Pa = np.asarray(ma), np.asarray(Pa)
    Wh = np.linalg.inv(np.linalg.cholesky(Pa))  # whitens the posterior
    proc = IES()
    state, _ = run(proc, proc.init(5, prob.draws(N, seed=6)), prob.G, prob.y,
                   prob.Gamma, 2)

    def errors(U):
        U = np.asarray(U)
        e_mean = np.linalg.norm(Wh @ (U.mean(0) - ma))  # MC scale ~ sqrt(p/N) = 0.045
        e_cov = np.linalg.norm(Wh @ (np.cov(U.T) - Pa) @ Wh.T) / 2
        return e_mean, e_cov

    e_mean, e_cov = errors(state.ensemble)
    assert e_mean < 0.12 and e_cov < 0.12, (e_mean, e_cov)
    assert max(errors(prob.draws(N, seed=6))) > 1.0  # the prior is far off


def test_nonlinear_toy_converges_to_the_data():
    # Truth u* = (0.8, -0.6), prior N(0, 0.25 I), Γ = 1e-3 I: the posterior
    # concentrates near u* (p = 2 < N − 1: the projected sensitivity is used).
    truth = jnp.array([[0.8, -0.6]])
    y = np.asarray(nonlinear_G(truth))[0]
    Gamma = enkit.Scalar(1e-3, 4)
    U0 = 0.5 * jax.random.normal(jax.random.key(0), (50, 2))
    for stochastic, factor in ((False, 0.01), (True, 0.02)):
        proc = IES(stochastic=stochastic)
        state = proc.init(1, U0)
        mis = []
        for g in ies_step_lengths(10, max_step=1.0, min_step=0.5):
            state, info = proc.tell(state, nonlinear_G(proc.ask(state)), y, Gamma, dt=g)
            mis.append(float(info.misfit))
        assert all(b < a for a, b in itertools.pairwise(mis)), mis  # misfit decreases
        assert mis[-1] < factor * mis[0], mis
        np.testing.assert_allclose(np.mean(np.asarray(state.ensemble), 0), truth[0],
                                   atol=0.01)


# ---------------------------------------------------------- large case ----


_shapes = traced_shapes


def test_large_problem_with_diagonal_noise_forms_no_pxp_or_dxd_matrix():
    p, d, N = 200_000, 1_000, 100
    idx = jnp.arange(d) * (p // d)
    y = jnp.zeros((d,))
    U0 = jax.ShapeDtypeStruct((N, p), jnp.float64)
    proc = IES()

    def step(U0, y, noise):
        state = proc.init(jax.random.key(0), U0)
        U = proc.ask(state)
        return proc.tell(state, 2.0 * U[:, idx] ** 3, y, noise, dt=0.5, damping=1.0)

    for noise in (enkit.Diagonal(0.5 + jnp.arange(d) / d), enkit.Scalar(0.7, d)):
        shapes = _shapes(step, U0, y, noise)
        largest = max(int(np.prod(s)) for s in shapes)
        assert largest <= 3 * N * max(p, d), largest
        assert not [s for s in shapes if sum(n > N for n in s) >= 2]


# ------------------------------------------------- keys, loops, checks ----


def test_perturbations_fixed_for_the_run_and_keys():
    prob = Linear(p=3, d=4, seed=13)
    U0 = prob.draws(8)
    proc = IES()

    def go(key, n=3):
        s, _ = run(proc, proc.init(key, U0), prob.G, prob.y, prob.Gamma, n, dt=0.7)
        return np.asarray(s.ensemble)

    a = go(jax.random.key(1))
    assert np.array_equal(a, go(jax.random.key(1)))
    assert np.array_equal(a, go(1))  # an integer seed is the same key
    assert not np.allclose(a, go(jax.random.key(2)))
    # The same ξ in every iteration: telling the same (state, G) at a later
    # iteration count gives the same result (EKI would draw afresh).
    s = proc.init(1, U0)
    G = prob.G(U0)
    s1, _ = proc.tell(s, G, prob.y, prob.Gamma)
    s2, _ = proc.tell(s._replace(iteration=s.iteration + 5), G, prob.y, prob.Gamma)
    assert np.array_equal(s1.ensemble, s2.ensemble)
    with pytest.raises(TypeError, match="key"):
        proc.init(None, U0)
    det = IES(stochastic=False)
    d1, _ = run(det, det.init(None, U0), prob.G, prob.y, prob.Gamma, 2)
    d2, _ = run(det, det.init(jax.random.key(3), U0), prob.G, prob.y, prob.Gamma, 2)
    assert np.array_equal(d1.ensemble, d2.ensemble)


def test_scan_equals_python_loop_without_retracing():
    prob = Linear(p=3, d=4, seed=12)
    A, y, Gam = jnp.asarray(prob.A), jnp.asarray(prob.y), enkit.Dense(prob.Gamma)
    U0 = prob.draws(8)
    proc = IES()
    traces = []

    @jax.jit
    def scan(state, gammas, lam):
        traces.append(1)

        def body(s, g):
            return proc.tell(s, proc.ask(s) @ A.T, y, Gam, dt=g, damping=lam)

        return jax.lax.scan(body, state, gammas)

    s0 = proc.init(4, U0)
    for gammas, lam in ((ies_step_lengths(4), 0.0), (jnp.array([1.0, 0.0, 0.5, 0.2]), 0.3)):
        loop, infos = s0, []
        for g in gammas:
            loop, info = proc.tell(loop, proc.ask(loop) @ A.T, y, Gam, dt=g, damping=lam)
            infos.append(info)
        sc, sinfos = scan(s0, jnp.asarray(gammas), jnp.asarray(lam, jnp.float64))
        np.testing.assert_allclose(sc.ensemble, loop.ensemble, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(sinfos.misfit, [i.misfit for i in infos], rtol=1e-11)
    assert len(traces) == 1


def test_zero_step_changes_nothing_and_validation():
    prob = Linear(p=3, d=4, seed=14)
    proc = IES()
    s = proc.init(0, prob.draws(8))
    G = prob.G(s.ensemble)
    s0, info = proc.tell(s, G, prob.y, prob.Gamma, dt=0.0)
    assert np.array_equal(s0.ensemble, s.ensemble) and np.array_equal(s0.weights, s.weights)
    assert int(s0.iteration) == 1 and float(info.dt) == 0.0
    with pytest.raises(ValueError, match=r"step length\) must be in \[0, 1\]"):
        proc.tell(s, G, prob.y, prob.Gamma, dt=1.5)
    with pytest.raises(ValueError, match="dt"):
        proc.tell(s, G, prob.y, prob.Gamma, dt=-0.1)
    with pytest.raises(ValueError, match="damping must be finite and >= 0"):
        proc.tell(s, G, prob.y, prob.Gamma, damping=-1.0)
    with pytest.raises(ValueError, match="damping must be a scalar"):
        proc.tell(s, G, prob.y, prob.Gamma, damping=jnp.ones(2))
    with pytest.raises(ValueError, match=r"G must have shape \(N, d\)"):
        proc.tell(s, G[:5], prob.y, prob.Gamma)
    with pytest.raises(TypeError, match="stochastic"):
        IES(stochastic=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        proc.tell(s, G, prob.y, prob.Gamma, step=0.5)
    for bad in ({"min_step": 0.0}, {"max_step": 1.5}, {"min_step": 0.7, "max_step": 0.6},
                {"halflife": 0.0}):
        with pytest.raises(ValueError):
            ies_step_lengths(3, **bad)
    with pytest.raises(ValueError, match="n_steps"):
        ies_step_lengths(0)
    g = np.asarray(ies_step_lengths(6, max_step=0.6, min_step=0.3, halflife=2.0))
    np.testing.assert_allclose(g, 0.3 + 0.3 * 2.0 ** (-np.arange(6) / 2.0), rtol=1e-15)


def test_float32_smoke():
    prob = Linear(p=3, d=6, seed=15)
    U0 = np.asarray(prob.draws(8), np.float32)
    proc = IES()
    state = proc.init(0, U0)
    for g in ies_step_lengths(3):
        G = np.asarray(prob.G(state.ensemble), np.float32)
        state, _ = proc.tell(state, G, np.asarray(prob.y, np.float32),
                                enkit.Diagonal(np.full(6, 0.3, np.float32)), dt=g)
    assert state.ensemble.dtype == jnp.float32 and state.weights.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(state.ensemble)))
