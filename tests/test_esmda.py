"""enkit.inversion.ESMDA (Emerick & Reynolds 2013).

Checks: the schedule Σ 1/αₖ = 1 and its helpers; each step against a dense
NumPy evaluation of the published update with noise αₖΓ and data
perturbations from N(0, αₖΓ); the identity ES-MDA step k = EKI step with
Δt = 1/αₖ; the linear-Gaussian large-N limit against ``enkit.kalman_update``;
a 200,000-parameter case whose traced program forms no p×p, d×d or p×d
array; keys; scan = loop.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from reference.linear_inverse import LinearInverseProblem
from reference.traced import traced_shapes

import enkit
from enkit.inversion import (
    EKI,
    ESMDA,
    esmda_constant_alpha,
    esmda_geometric_alpha,
)

Linear = LinearInverseProblem


def run(proc, state, prob, n, noise=None):
    noise = prob.Gamma if noise is None else noise
    infos = []
    for _ in range(n):
        state, info = proc.tell(state, prob.G(proc.ask(state)), prob.y, noise)
        infos.append(info)
    return state, infos


def esmda_step_dense(U, G, y, Gamma, alpha, xi):
    """The published ES-MDA analysis in NumPy, observation space:
    uᵢ + C^{uG}(C^{GG} + αΓ)⁻¹(y + √α ξᵢ − G(uᵢ)), ξᵢ ~ N(0, Γ) given."""
    U, G, xi = (np.asarray(a, np.float64) for a in (U, G, xi))
    N = U.shape[0]
    X, Y = U - U.mean(0), G - G.mean(0)
    Cug, Cgg = X.T @ Y / (N - 1), Y.T @ Y / (N - 1)
    D = y + np.sqrt(alpha) * xi - G  # (N, d)
    return U + np.linalg.solve(Cgg + alpha * Gamma, D.T).T @ Cug.T


# ------------------------------------------------------------ schedule ----


def test_schedule_helpers_sum_to_one():
    a = np.asarray(esmda_constant_alpha(4))
    np.testing.assert_array_equal(a, [4.0, 4.0, 4.0, 4.0])
    g = np.asarray(esmda_geometric_alpha(5, ratio=0.5))
    assert np.all(np.diff(g) < 0)  # decreasing inflation
    np.testing.assert_allclose(g[1:] / g[:-1], 0.5, rtol=1e-14)
    for alpha in (a, g, esmda_geometric_alpha(3, ratio=2.0), esmda_constant_alpha(1)):
        np.testing.assert_allclose(np.sum(1.0 / np.asarray(alpha)), 1.0, rtol=1e-14)
    np.testing.assert_allclose(esmda_geometric_alpha(6, ratio=1.0), esmda_constant_alpha(6))
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="n_steps"):
            esmda_constant_alpha(bad)
    for ratio in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="ratio"):
            esmda_geometric_alpha(3, ratio=ratio)


def test_alpha_must_sum_to_one_with_a_clear_error():
    with pytest.raises(ValueError, match=r"sum\(1/alpha\) = 1.*got sum\(1/alpha\) = 0\.75"):
        ESMDA([2.0, 4.0])
    with pytest.raises(ValueError, match=r"sum\(1/alpha\)"):
        ESMDA([1.0, 1.0])  # a repeated plain EnKF is not ES-MDA
    with pytest.raises(ValueError, match="> 0"):
        ESMDA([-2.0, 2.0 / 3.0])  # sums to 1 but is negative
    with pytest.raises(ValueError, match=r"shape \(K,\)"):
        ESMDA(jnp.full((2, 2), 2.0))
    with pytest.raises(ValueError, match=r"shape \(K,\)"):
        ESMDA(jnp.zeros((0,)))
    with pytest.raises(TypeError, match="stochastic"):
        ESMDA(esmda_constant_alpha(2), stochastic=1)
    # The schedule of Emerick & Reynolds (2013), rounded as published.
    assert ESMDA([9.333, 7.0, 4.0, 2.0]).n_steps == 4
    assert ESMDA([1.0]).n_steps == 1


# --------------------------------------------------------- exactness ----


@pytest.mark.parametrize("stochastic", [True, False])
def test_each_step_is_the_published_update_with_noise_alpha_gamma(stochastic):
    prob = Linear(p=5, d=7, seed=2)  # d > N: the Woodbury path
    alpha = np.asarray(esmda_geometric_alpha(3, ratio=0.4))
    proc = ESMDA(alpha, stochastic=stochastic)
    key = jax.random.key(11)
    state = proc.init(key, prob.draws(6))
    for k in range(3):
        U = np.asarray(state.ensemble)
        G = np.asarray(prob.G(U))
        xi = (enkit.Dense(prob.Gamma).sample(jax.random.fold_in(key, k), (6,))
              if stochastic else np.zeros_like(G))
        state, info = proc.tell(state, G, prob.y, prob.Gamma)
        ref = esmda_step_dense(U, G, prob.y, prob.Gamma, alpha[k], xi)
        np.testing.assert_allclose(state.ensemble, ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(info.dt, 1.0 / alpha[k], rtol=1e-15)
        np.testing.assert_allclose(info.misfit, enkit.data_misfit(G, prob.y, prob.Gamma))
    assert int(state.iteration) == 3
    np.testing.assert_allclose(state.time, 1.0, rtol=1e-14)


@pytest.mark.parametrize("stochastic", [True, False])
def test_esmda_step_k_is_the_eki_step_with_dt_one_over_alpha(stochastic):
    prob = Linear(p=4, d=3, seed=3)
    alpha = np.asarray(esmda_geometric_alpha(4, ratio=0.6))
    U0 = prob.draws(10)
    es, eki = ESMDA(alpha, stochastic=stochastic), EKI(stochastic=stochastic)
    s_es = es.init(jax.random.key(4), U0)
    s_eki = eki.init(jax.random.key(4), U0)
    for a in alpha:
        s_es, i_es = es.tell(s_es, prob.G(es.ask(s_es)), prob.y, prob.Gamma)
        s_eki, i_eki = eki.tell(s_eki, prob.G(eki.ask(s_eki)), prob.y, prob.Gamma,
                                dt=1.0 / a)
        np.testing.assert_allclose(s_es.ensemble, s_eki.ensemble, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(i_es.dt, i_eki.dt, rtol=1e-15)
    assert int(s_es.iteration) == int(s_eki.iteration) == 4


def test_constant_schedule_reaches_the_kalman_posterior_for_large_n():
    prob = Linear(p=4, d=3, seed=0)
    N, K = 4000, 4
    ma, Pa = enkit.kalman_update(prob.m0, prob.C0, prob.y, prob.A, prob.Gamma)
    ma, Pa = np.asarray(ma), np.asarray(Pa)
    W = np.linalg.inv(np.linalg.cholesky(Pa))  # whitens the posterior

    def errors(state):
        U = np.asarray(state.ensemble)
        mean, cov = U.mean(0), np.cov(U.T)
        # mean error in posterior standard deviations (MC scale ~ sqrt(p/N) = 0.03)
        e_mean = np.linalg.norm(W @ (mean - ma))
        e_cov = np.linalg.norm(W @ (cov - Pa) @ W.T) / np.sqrt(4)  # ~ sqrt(p/N) too
        return e_mean, e_cov

    proc = ESMDA(esmda_constant_alpha(K))
    state, infos = run(proc, proc.init(jax.random.key(5), prob.draws(N, seed=6)), prob, K)
    e_mean, e_cov = errors(state)
    assert e_mean < 0.12 and e_cov < 0.12, (e_mean, e_cov)
    assert infos[-1].misfit < infos[0].misfit
    # The prior itself (and K plain EnKF steps, Σ Δt = 4) are far off at this scale.
    prior_state = proc.init(jax.random.key(5), prob.draws(N, seed=6))
    assert max(errors(prior_state)) > 1.0
    eki = EKI()
    over, _ = run(eki, eki.init(jax.random.key(5), prob.draws(N, seed=6)), prob, K)
    assert max(errors(over)) > 0.3


# ---------------------------------------------------------- large case ----


_shapes = traced_shapes


def test_large_problem_with_diagonal_noise_forms_no_pxp_or_dxd_matrix():
    p, d, N = 200_000, 1_000, 100
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    idx = jnp.arange(d) * (p // d)  # each datum observes one parameter
    y = jax.random.normal(k1, (d,))
    U0 = jax.random.normal(k2, (N, p))
    variances = 0.5 + jnp.arange(d) / d
    proc = ESMDA(esmda_constant_alpha(4))

    def step(state, y, noise):
        U = proc.ask(state)
        return proc.tell(state, 2.0 * U[:, idx], y, noise)

    state = proc.init(k3, U0)
    for noise in (enkit.Diagonal(variances), enkit.Scalar(0.7, d)):
        shapes = _shapes(step, state, y, noise)
        largest = max(int(np.prod(s)) for s in shapes)
        assert largest <= 3 * N * max(p, d), largest
        # no array with two axes longer than N: no p×p, d×d or p×d
        assert not [s for s in shapes if sum(n > N for n in s) >= 2]

    # It runs, and the step is the published one: a dense observation-space
    # evaluation with the d×d matrix (affordable here only because d = 1000).
    noise = enkit.Diagonal(variances)
    new, info = step(state, y, noise)
    assert new.ensemble.shape == (N, p) and np.all(np.isfinite(np.asarray(new.ensemble)))
    G = 2.0 * np.asarray(U0)[:, np.asarray(idx)]
    xi = noise.sample(jax.random.fold_in(k3, 0), (N,))
    Y = (G - G.mean(0)) / np.sqrt(N - 1)
    Wt = np.linalg.solve(Y.T @ Y + 4.0 * np.diag(np.asarray(variances)),
                         (np.asarray(y) + 2.0 * np.asarray(xi) - G).T)  # (d, N)
    U0n = np.asarray(U0)
    X = (U0n - U0n.mean(0)) / np.sqrt(N - 1)
    ref = U0n + (Wt.T @ Y.T) @ X
    assert np.max(np.abs(np.asarray(new.ensemble) - ref)) < 1e-9
    assert float(info.dt) == 0.25


# ------------------------------------------------------- keys, loops ----


def test_same_key_identical_different_key_different():
    prob = Linear(p=3, d=4, seed=13)
    proc = ESMDA(esmda_constant_alpha(3))
    U0 = prob.draws(8)

    def go(key):
        s, _ = run(proc, proc.init(key, U0), prob, 3)
        return np.asarray(s.ensemble)

    a = go(jax.random.key(1))
    assert np.array_equal(a, go(jax.random.key(1)))
    assert not np.allclose(a, go(jax.random.key(2)))
    assert np.array_equal(a, go(1))  # an integer seed is the same key
    # Successive iterations draw different perturbations (no key reuse).
    s = proc.init(jax.random.key(1), U0)
    G = prob.G(U0)
    s1, _ = proc.tell(s, G, prob.y, prob.Gamma)
    s2, _ = proc.tell(s1._replace(ensemble=s.ensemble), G, prob.y, prob.Gamma)
    assert not np.allclose(s1.ensemble, s2.ensemble)
    with pytest.raises(TypeError, match="key"):
        proc.init(None, U0)
    # The deterministic variant ignores the key.
    det = ESMDA(esmda_constant_alpha(3), stochastic=False)
    d1, _ = run(det, det.init(None, U0), prob, 3)
    d2, _ = run(det, det.init(jax.random.key(3), U0), prob, 3)
    assert np.array_equal(d1.ensemble, d2.ensemble)


def test_scan_equals_python_loop_and_schedule_is_a_leaf():
    prob = Linear(p=3, d=4, seed=12)
    A, y, Gam = jnp.asarray(prob.A), jnp.asarray(prob.y), enkit.Dense(prob.Gamma)
    U0 = prob.draws(8)
    key = jax.random.key(5)
    traces = []

    @jax.jit
    def scan(proc, state):
        traces.append(1)

        def body(s, _):
            return proc.tell(s, proc.ask(s) @ A.T, y, Gam)

        return jax.lax.scan(body, state, None, length=proc.n_steps)

    for alpha in (esmda_constant_alpha(4), esmda_geometric_alpha(4, ratio=0.5)):
        proc = ESMDA(alpha)
        s0 = proc.init(key, U0)
        loop, infos = run(proc, s0, prob, 4)
        sc, sinfos = scan(proc, s0)
        np.testing.assert_allclose(sc.ensemble, loop.ensemble, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sinfos.dt, 1.0 / np.asarray(alpha), rtol=1e-15)
        np.testing.assert_allclose(sinfos.misfit, [i.misfit for i in infos], rtol=1e-12)
        assert int(sc.iteration) == 4
    assert len(traces) == 1  # a new schedule of the same length: no retrace


def test_telling_past_the_schedule():
    prob = Linear(p=3, d=4, seed=14)
    proc = ESMDA(esmda_constant_alpha(2))
    state, _ = run(proc, proc.init(jax.random.key(0), prob.draws(8)), prob, 2)
    G = prob.G(state.ensemble)
    with pytest.raises(ValueError, match="K=2 steps"):
        proc.tell(state, G, prob.y, prob.Gamma)
    # Inside a trace the extra step is a zero step.
    after, info = jax.jit(lambda s: proc.tell(s, G, prob.y, enkit.Dense(prob.Gamma)))(state)
    assert np.array_equal(after.ensemble, state.ensemble)
    assert float(info.dt) == 0.0 and int(after.iteration) == 3


def test_float32_smoke():
    prob = Linear(p=3, d=6, seed=15)
    U0 = np.asarray(prob.draws(8), np.float32)
    proc = ESMDA(esmda_geometric_alpha(3, ratio=0.5))
    state = proc.init(0, U0)
    for _ in range(3):
        G = np.asarray(prob.G(state.ensemble), np.float32)
        state, info = proc.tell(state, G, np.asarray(prob.y, np.float32),
                                enkit.Diagonal(np.full(6, 0.3, np.float32)))
    assert state.ensemble.dtype == jnp.float32 and info.dt.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(state.ensemble)))
