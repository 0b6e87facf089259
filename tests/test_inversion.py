"""enkit.inversion: processes (ask/tell), schedulers, stopping, prior.

Exact answers on linear-Gaussian problems G(u) = A u: the Kalman posterior
(enkit.kalman_update, cross-checked by tests/reference/kalman_numpy.py),
least-squares solutions, and equivalences (scan = loop, tempering = one step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.kalman_numpy import kalman_analysis, sample_stats
from reference.linear_inverse import LinearInverseProblem

import enkit
from enkit.inversion import (
    EKI,
    ETKI,
    GNKI,
    TEKI,
    UKI,
    DataMisfitController,
    FixedStep,
    GaussianPrior,
    data_misfit,
    discrepancy_principle,
    max_iterations_reached,
)
from enkit.inversion._common import BlockDiagonal


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


Linear = LinearInverseProblem


@jax.jit
def tell_jit(process, state, G, y, noise, dt):
    return process.tell(state, G, y, noise, dt=dt)


def run_loop(process, state, prob, dts, noise=None, jit=False):
    """A Python loop over ask/tell (eager unless jit=True, which only
    compiles each tell, to keep the suite fast)."""
    noise = prob.Gamma if noise is None else noise
    tell = (lambda *a, dt: tell_jit(process, *a, dt)) if jit else process.tell
    infos = []
    for dt in dts:
        U = process.ask(state)
        state, info = tell(state, prob.G(U), prob.y, noise, dt=dt)
        infos.append(info)
    return state, infos


def run_scan(process, state, prob, dts):
    A, y, Gam = jnp.asarray(prob.A), jnp.asarray(prob.y), enkit.Dense(prob.Gamma)

    @jax.jit
    def go(state, dts):
        def body(s, dt):
            U = process.ask(s)
            s, info = process.tell(s, U @ A.T, y, Gam, dt=dt)
            return s, info

        return jax.lax.scan(body, state, dts)

    return go(state, jnp.asarray(dts))


# ---------------------------------------------------------------- EKI ----


def test_eki_one_step_reproduces_kalman_mean_within_monte_carlo():
    prob = Linear(p=4, d=3)
    N = 2000
    U0 = prob.draws(N)
    xf, Pf = sample_stats(U0)
    xa, Pa = kalman_analysis(xf, Pf, prob.y, prob.A, prob.Gamma)
    ma, _ = enkit.kalman_update(xf, Pf, prob.y, prob.A, prob.Gamma)
    assert rel(ma, xa) < 1e-12  # the two references agree

    proc = EKI()
    state = proc.init(jax.random.key(7), U0)
    state, info = proc.tell(state, prob.G(proc.ask(state)), prob.y, prob.Gamma, dt=1.0)
    mean, cov = sample_stats(state.ensemble)
    # The only error is K η̄ with η̄ ~ N(0, Γ/N): its standard deviation.
    K = np.linalg.solve(prob.A @ Pf @ prob.A.T + prob.Gamma, prob.A @ Pf).T
    sd = np.sqrt(np.trace(K @ prob.Gamma @ K.T) / N)
    err = np.linalg.norm(mean - xa)
    assert err < 4 * sd, (err, sd)
    assert rel(cov, Pa) < 0.15  # stochastic EnKF: covariance right in expectation
    assert int(state.iteration) == 1 and float(state.time) == 1.0
    np.testing.assert_allclose(info.misfit, data_misfit(prob.G(U0), prob.y, prob.Gamma))

    # Deterministic EKI: the mean update is the Kalman mean exactly.
    det = EKI(stochastic=False)
    s = det.init(None, U0)
    s, _ = det.tell(s, prob.G(U0), prob.y, prob.Gamma, dt=1.0)
    assert rel(np.mean(s.ensemble, 0), xa) < 1e-10


def test_deterministic_eki_converges_to_least_squares_in_the_ensemble_subspace():
    # N = 5 members in p = 10 dimensions: the affine span is 4-dimensional.
    prob = Linear(p=10, d=8, seed=3)
    U0 = np.asarray(prob.draws(5, seed=4))
    ubar0, X0 = U0.mean(0), U0 - U0.mean(0)
    Li = np.linalg.inv(np.linalg.cholesky(prob.Gamma))
    a, *_ = np.linalg.lstsq(Li @ prob.A @ X0.T, Li @ (prob.y - prob.A @ ubar0), rcond=None)
    u_ls = ubar0 + X0.T @ a  # argmin over u0 + span(X0) of ‖Γ^{-1/2}(y − A u)‖

    proc = EKI(stochastic=False)
    # Growing steps Δtₖ = 2ᵏ: the error falls by √2 per step. (Past ~1e-8 the
    # collapsed anomalies lose their relative precision and it stalls.)
    s20, _ = run_scan(proc, proc.init(None, U0), prob, 2.0 ** np.arange(20))
    state, _ = run_scan(proc, proc.init(None, U0), prob, 2.0 ** np.arange(40))
    U = np.asarray(state.ensemble)
    assert rel(U.mean(0), u_ls) < 1e-6
    assert rel(U.mean(0), u_ls) < 0.01 * rel(np.asarray(s20.ensemble).mean(0), u_ls)
    assert np.max(np.abs(U - u_ls)) < 1e-5 * np.linalg.norm(u_ls)  # collapse
    # Every member stays in the initial affine span (subspace property).
    P = X0.T @ np.linalg.pinv(X0.T)
    np.testing.assert_allclose((U - ubar0) @ P.T, U - ubar0, atol=1e-9)
    # The full-space least-squares solution is elsewhere: the test can fail.
    u_full, *_ = np.linalg.lstsq(Li @ prob.A, Li @ prob.y, rcond=None)
    assert rel(u_ls, u_full) > 1e-2


def test_eki_and_etki_are_linear_in_d_for_diagonal_noise():
    # d = 200,000: any d × d matrix would need 320 GB.
    rng = np.random.default_rng(5)
    N, p, d = 8, 3, 200_000
    U0 = rng.normal(size=(N, p))
    A = rng.normal(size=(d, p)) / np.sqrt(p)
    y = rng.normal(size=d)
    noise = enkit.Diagonal(rng.uniform(0.5, 2.0, size=d))
    G = U0 @ A.T
    se, _ = EKI(stochastic=False).tell(EKI(stochastic=False).init(None, U0), G, y, noise, dt=0.3)
    st, _ = ETKI().tell(ETKI().init(None, U0), G, y, noise, dt=0.3)
    # The two share the mean update ū + C^{uG}(C^{GG} + Γ/Δt)⁻¹(y − Ḡ).
    assert rel(se.ensemble.mean(0) - U0.mean(0), st.ensemble.mean(0) - U0.mean(0)) < 1e-9


# --------------------------------------------------------------- ETKI ----


@pytest.mark.parametrize("dts", [[0.25] * 4, [0.1, 0.5, 0.2, 0.7]], ids=["even", "uneven"])
@pytest.mark.parametrize("kind", ["dense", "diagonal"])
def test_tempered_etki_equals_one_kalman_update(dts, kind):
    prob = Linear(p=5, d=3, seed=2)
    U0 = prob.draws(12, seed=3)
    Gam = enkit.Dense(prob.Gamma) if kind == "dense" else enkit.Diagonal(np.diag(prob.Gamma))
    xf, Pf = sample_stats(U0)
    T = sum(dts)
    xa, Pa = kalman_analysis(xf, Pf, prob.y, prob.A, np.asarray(Gam.dense()) / T)
    proc = ETKI()
    state, _ = run_loop(proc, proc.init(None, U0), prob, dts, noise=Gam, jit=True)
    m, C = sample_stats(state.ensemble)
    assert rel(m, xa) < 1e-9 and rel(C, Pa) < 1e-9
    assert abs(float(state.time) - T) < 1e-14 and int(state.iteration) == 4
    # Not the same as four full steps (which would use Γ/4, not Γ/ΣΔt).
    if dts[0] != 0.25:
        xb, _ = kalman_analysis(xf, Pf, prob.y, prob.A, np.asarray(Gam.dense()) / 4)
        assert rel(m, xb) > 1e-3


# --------------------------------------------------------------- TEKI ----


def test_teki_converges_to_the_exact_posterior_mean():
    prob = Linear(p=4, d=3, seed=6)
    m_post, _ = prob.posterior()
    proc = TEKI(prob.prior, stochastic=False)
    U0 = prob.draws(12, seed=2)
    # Δtₖ = 2ᵏ; the error falls by √2 per step (measured: 2e-4 after 20
    # steps, 6e-9 after 50; it stalls near 1e-8 relative once the ensemble
    # has collapsed to round-off of its anomalies).
    s20, _ = run_scan(proc, proc.init(None, U0), prob, 2.0 ** np.arange(20))
    state, _ = run_scan(proc, proc.init(None, U0), prob, 2.0 ** np.arange(50))
    mean = np.asarray(state.ensemble).mean(0)
    assert rel(mean, m_post) < 1e-7
    assert rel(np.asarray(s20.ensemble).mean(0), m_post) > 1e3 * rel(mean, m_post)
    # Plain EKI has no prior term and goes to the least-squares point instead.
    Li = np.linalg.inv(np.linalg.cholesky(prob.Gamma))
    assert rel(m_post, np.linalg.lstsq(Li @ prob.A, Li @ prob.y, rcond=None)[0]) > 1e-2


def test_stochastic_teki_runs_and_uses_the_augmented_noise():
    prob = Linear(p=4, d=3, seed=6)
    proc = TEKI(prob.prior)
    U0 = prob.draws(3000, seed=5)
    state = proc.init(jax.random.key(1), U0)
    state, _ = proc.tell(state, prob.G(U0), prob.y, prob.Gamma, dt=1.0)
    # One Δt = 1 step of TEKI is the EnKF analysis with data (y, m₀): the
    # prior counts twice (once in the ensemble, once as data).
    xf, Pf = sample_stats(U0)
    H = np.vstack([prob.A, np.eye(4)])
    Sig = np.asarray(BlockDiagonal(enkit.Dense(prob.Gamma), enkit.Dense(prob.C0)).dense())
    xa, _ = kalman_analysis(xf, Pf, np.concatenate([prob.y, prob.m0]), H, Sig)
    assert rel(np.asarray(state.ensemble).mean(0), xa) < 0.05


def test_block_diagonal_operator_matches_dense():
    rng = np.random.default_rng(0)
    a, b = enkit.Dense(np.eye(3) + 0.3), enkit.Diagonal(np.array([1.0, 2.0]))
    op = BlockDiagonal(a, b)
    D = np.asarray(op.dense())
    x = rng.normal(size=(4, 5))
    np.testing.assert_allclose(op.solve(x), np.linalg.solve(D, x.T).T, atol=1e-12)
    np.testing.assert_allclose(op.colorize(op.whiten(x)), x, atol=1e-12)
    np.testing.assert_allclose(op.log_pdet, np.linalg.slogdet(D)[1], atol=1e-12)


# ---------------------------------------------------------------- UKI ----


@pytest.mark.parametrize("dt", [0.5, 0.9])
def test_uki_reaches_the_exact_posterior(dt):
    prob = Linear(p=3, d=4, seed=8)
    m_post, C_post = prob.posterior()
    proc = UKI(prob.prior)
    state = proc.init()
    for _ in range(60):
        chi = proc.ask(state)
        assert chi.shape == (7, 3)
        state, _ = tell_jit(proc, state, prob.G(chi), prob.y, prob.Gamma, dt)
    assert np.max(np.abs(state.mean - m_post)) < 1e-6
    assert np.max(np.abs(state.covariance - C_post)) < 1e-6
    assert rel(state.mean, m_post) < 1e-12 and rel(state.covariance, C_post) < 1e-12
    # NOT the fixed point of EnsembleKalmanProcesses.jl v2.7 (prior appended
    # with C₀ while Γ is inflated to 2Γ), whose precision is AᵀΓ⁻¹A + 2C₀⁻¹.
    prec2 = prob.A.T @ np.linalg.solve(prob.Gamma, prob.A) + 2 * np.linalg.inv(prob.C0)
    C2 = np.linalg.inv(prec2)
    m2 = C2 @ (prob.A.T @ np.linalg.solve(prob.Gamma, prob.y)
               + 2 * np.linalg.solve(prob.C0, prob.m0))
    assert rel(state.covariance, C2) > 0.05 and rel(state.mean, m2) > 1e-3


@pytest.mark.parametrize("p", [1, 9])
def test_uki_sigma_points_are_valid_for_every_p(p):
    # spread min(√p, 2): weights 1/(2s²) > 0; the points reproduce m and C.
    rng = np.random.default_rng(p)
    L = rng.normal(size=(p, p)) + 3 * np.eye(p)
    prior = GaussianPrior(rng.normal(size=p), L @ L.T)
    proc = UKI(prior)
    chi = np.asarray(proc.ask(proc.init()))
    s = min(np.sqrt(p), 2.0)
    X = (chi[1:] - chi[0]) / (np.sqrt(2) * s)
    np.testing.assert_allclose(X.T @ X, L @ L.T, rtol=1e-12)
    np.testing.assert_allclose(chi[0], prior.mean)
    # Exact on a linear problem at this p as well.
    A = rng.normal(size=(2, p))
    y, Gam = rng.normal(size=2), np.eye(2) * 0.5
    m_post, C_post = kalman_analysis(prior.mean, L @ L.T, y, A, Gam)
    state = proc.init()
    for _ in range(40):
        c = proc.ask(state)
        state, _ = tell_jit(proc, state, c @ A.T, y, Gam, 0.75)
    assert rel(state.mean, m_post) < 1e-10 and rel(state.covariance, C_post) < 1e-10


def test_uki_init_from_an_ensemble_uses_its_sample_statistics():
    prob = Linear()
    U0 = prob.draws(10)
    state = UKI(prob.prior).init(None, U0)
    m, C = sample_stats(U0)
    np.testing.assert_allclose(state.mean, m, rtol=1e-12)
    np.testing.assert_allclose(state.covariance, C, rtol=1e-12)


# --------------------------------------------------------------- GNKI ----


def test_gnki_converges_in_one_step_on_a_linear_problem():
    prob = Linear(p=4, d=3, seed=9)
    m_post, _ = prob.posterior()
    U0 = prob.draws(10, seed=2)
    proc = GNKI(prob.prior, stochastic=False)
    s0 = proc.init(None, U0)
    s1, _ = run_loop(proc, s0, prob, [1.0])
    assert rel(np.asarray(s1.ensemble).mean(0), m_post) < 1e-10
    s2, _ = run_loop(proc, s1, prob, [1.0])
    np.testing.assert_allclose(s2.ensemble, s1.ensemble, rtol=0, atol=1e-10)
    # Members: anchors + K (y − A anchors), K the exact Kalman gain of C₀.
    K = np.linalg.solve(prob.A @ prob.C0 @ prob.A.T + prob.Gamma, prob.A @ prob.C0).T
    anchors = np.asarray(U0) - np.asarray(U0).mean(0) + prob.m0
    np.testing.assert_allclose(s1.ensemble, anchors + (prob.y - anchors @ prob.A.T) @ K.T,
                               atol=1e-10)
    # A half step goes half way (Δt is the Gauss–Newton step length).
    sh, _ = run_loop(proc, s0, prob, [0.5])
    np.testing.assert_allclose(sh.ensemble, 0.5 * (np.asarray(U0) + s1.ensemble), atol=1e-10)

    # Stochastic: from any ensemble, one step gives uⱼ⁰ + K (y + ηⱼ − A uⱼ⁰).
    sto = GNKI(prob.prior)
    key = jax.random.key(3)
    t0 = sto.init(key, U0)
    for n in range(2):
        t0, _ = run_loop(sto, t0, prob, [1.0])
        eta = enkit.Dense(prob.Gamma).sample(jax.random.fold_in(key, n), (10,))
        expect = np.asarray(U0) + (prob.y + eta - U0 @ prob.A.T) @ K.T
        np.testing.assert_allclose(t0.ensemble, expect, atol=1e-10)


# ---------------------------------------------------------- schedulers ----


@pytest.mark.parametrize("make", [lambda p: EKI(), lambda p: ETKI(), lambda p: TEKI(p)],
                         ids=["EKI", "ETKI", "TEKI"])
def test_data_misfit_controller_reaches_time_one_then_stops(make):
    prob = Linear(p=4, d=3, seed=10, noise_scale=0.01)
    proc = make(prob.prior)
    sched = DataMisfitController()
    state = proc.init(jax.random.key(0), prob.draws(20))
    dts = []
    for _ in range(100):
        if sched.finished(state.time):
            break
        U = proc.ask(state)
        G = prob.G(U)
        dt = sched.step_size(state.time, G, prob.y, prob.Gamma)
        assert 0 < float(dt) <= 1
        dts.append(float(dt))
        state, _ = tell_jit(proc, state, G, prob.y, prob.Gamma, dt)
    assert bool(sched.finished(state.time))
    assert 1 < len(dts) < 100  # small noise: more than one step, finitely many
    assert abs(float(state.time) - 1.0) < 1e-12
    # Called afterwards: a zero step that leaves the ensemble exactly unchanged.
    for _ in range(2):
        G = prob.G(proc.ask(state))
        dt = sched.step_size(state.time, G, prob.y, prob.Gamma)
        assert float(dt) == 0.0
        new, info = tell_jit(proc, state, G, prob.y, prob.Gamma, dt)
        assert np.array_equal(new.ensemble, state.ensemble)
        assert np.all(np.isfinite(new.ensemble)) and float(new.time) == float(state.time)
        assert np.isfinite(info.misfit) and float(info.dt) == 0.0
        state = new


def test_data_misfit_controller_formula_and_degenerate_ensembles():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(6, 3))
    y = rng.normal(size=3)
    var = np.array([0.5, 1.0, 2.0])
    phi = 0.5 * np.sum((y - G) ** 2 / var, axis=1)
    expect = min(max(3 / (2 * phi.mean()), np.sqrt(3 / (2 * phi.var(ddof=1)))), 1 - 0.2)
    dt = DataMisfitController().step_size(0.2, G, y, var)
    np.testing.assert_allclose(dt, expect, rtol=1e-12)
    # Collapsed ensemble at the data: no division by zero, remaining time.
    dt = DataMisfitController().step_size(0.3, np.tile(y, (4, 1)), y, var)
    np.testing.assert_allclose(dt, 0.7, rtol=1e-12)
    assert float(FixedStep(0.25).step_size(0.0, G, y, var)) == 0.25


# ------------------------------------------------------------ stopping ----


def test_discrepancy_principle_stops_at_the_first_crossing():
    d = 4
    # Constructed misfits (in units of √d): crosses τ = 1.2 first at index 3.
    misfits = np.array([5.0, 3.0, 1.3, 1.19, 0.5, 2.0]) * np.sqrt(d)
    flags = [bool(discrepancy_principle(m, d, tau=1.2)) for m in misfits]
    assert flags.index(True) == 3
    assert flags == [False, False, False, True, True, False]
    assert bool(discrepancy_principle(1.3 * np.sqrt(d), d, tau=1.5))
    assert bool(max_iterations_reached(10, 10)) and not bool(max_iterations_reached(9, 10))

    # In a run: outputs constructed so that the mean residual is exactly
    # c_k Γ^{1/2} e / ‖e‖ · √d, whatever the members' spread.
    rng = np.random.default_rng(1)
    Gam = enkit.Dense(np.eye(d) + 0.2)
    e = rng.normal(size=d)
    y = rng.normal(size=d)
    stop = None
    for k, c in enumerate([4.0, 2.0, 1.1, 0.9]):
        spread = rng.normal(size=(5, d))
        G = y - np.sqrt(d) * c * np.asarray(Gam.colorize(e / np.linalg.norm(e))) \
            + spread - spread.mean(0)
        np.testing.assert_allclose(data_misfit(G, y, Gam), c * np.sqrt(d), rtol=1e-12)
        if discrepancy_principle(data_misfit(G, y, Gam), d, tau=1.2):
            stop = k
            break
    assert stop == 2


def test_discrepancy_stop_in_an_eki_run_matches_numpy():
    prob = Linear(p=6, d=5, seed=11, noise_scale=0.05)
    proc = EKI(stochastic=False)
    state = proc.init(None, prob.draws(30))
    Li = np.linalg.inv(np.linalg.cholesky(prob.Gamma))
    seen = []
    for k in range(50):
        U = np.asarray(proc.ask(state))
        seen.append(np.linalg.norm(Li @ (prob.y - (U @ prob.A.T).mean(0))))
        if discrepancy_principle(data_misfit(U @ prob.A.T, prob.y, prob.Gamma), 5, tau=1.2):
            break
        state, info = proc.tell(state, U @ prob.A.T, prob.y, prob.Gamma, dt=0.5)
        np.testing.assert_allclose(info.misfit, seen[-1], rtol=1e-10)
    first = next(i for i, m in enumerate(seen) if m <= 1.2 * np.sqrt(5))
    assert k == first and k > 0


# ------------------------------------------------- keys, purity, jit ----


PROCESSES = {
    "EKI": lambda p: EKI(),
    "EKI-det": lambda p: EKI(stochastic=False),
    "ETKI": lambda p: ETKI(),
    "TEKI": lambda p: TEKI(p),
    "GNKI": lambda p: GNKI(p),
    "UKI": lambda p: UKI(p),
}


def _snapshot(state):
    def leaf(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.array(x)

    return [leaf(x) for x in jax.tree_util.tree_leaves(state)]


def _init(proc, key, U0):
    return proc.init(key, None if isinstance(proc, UKI) else U0)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_scan_equals_python_loop_and_ask_is_pure(name):
    prob = Linear(p=3, d=4, seed=12)
    proc = PROCESSES[name](prob.prior)
    key = jax.random.key(5)
    s0 = _init(proc, key, prob.draws(8))
    before = _snapshot(s0)
    a1, a2 = proc.ask(s0), proc.ask(s0)
    assert np.array_equal(a1, a2)
    dts = [0.3, 0.2, 0.1, 0.25]
    loop, _ = run_loop(proc, s0, prob, dts)
    scan, infos = run_scan(proc, s0, prob, dts)
    for a, b in zip(_snapshot(loop), _snapshot(scan)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert infos.misfit.shape == (4,)
    # Neither ask nor tell changed the state they were given.
    assert all(np.array_equal(a, b) for a, b in zip(before, _snapshot(s0)))


@pytest.mark.parametrize("name", ["EKI", "TEKI", "GNKI"])
def test_same_key_bit_identical_different_key_different(name):
    prob = Linear(p=3, d=4, seed=13)
    proc = PROCESSES[name](prob.prior)
    U0 = prob.draws(8)

    def run(key):
        s, _ = run_loop(proc, proc.init(key, U0), prob, [0.5, 0.5, 0.5])
        return np.asarray(s.ensemble)

    a, b = run(jax.random.key(1)), run(jax.random.key(1))
    assert np.array_equal(a, b)
    assert not np.allclose(a, run(jax.random.key(2)))
    assert np.array_equal(a, run(1))  # an integer seed is the same key
    # Successive iterations draw different perturbations (no key reuse):
    s = proc.init(jax.random.key(1), U0)
    G = prob.G(U0)
    s1, _ = proc.tell(s, G, prob.y, prob.Gamma)
    s2, _ = proc.tell(s1._replace(ensemble=s.ensemble), G, prob.y, prob.Gamma)
    assert not np.allclose(s1.ensemble, s2.ensemble)
    with pytest.raises(TypeError, match="key"):
        proc.init(None, U0)


def test_deterministic_processes_ignore_the_key_and_jit_does_not_retrace():
    prob = Linear(p=3, d=4, seed=14)
    U0 = prob.draws(8)
    for proc in (EKI(stochastic=False), ETKI()):
        a, _ = run_loop(proc, proc.init(None, U0), prob, [1.0])
        b, _ = run_loop(proc, proc.init(jax.random.key(9), U0), prob, [1.0])
        assert np.array_equal(a.ensemble, b.ensemble) and a.key is None

    traces = []
    proc = EKI()

    @jax.jit
    def step(state, y, dt):
        traces.append(1)
        return proc.tell(state, prob.G(proc.ask(state)), y, enkit.Dense(prob.Gamma), dt=dt)

    s = proc.init(jax.random.key(0), U0)
    for k in range(3):
        s, _ = step(s, jnp.asarray(prob.y) + k, jnp.asarray(0.5 + 0.1 * k))
    assert len(traces) == 1
    # Hyperparameters are leaves: a vmap over prior means of TEKI.
    teki = TEKI(prob.prior, stochastic=False)
    means = jnp.stack([prob.m0, prob.m0 + 1.0])

    def one(m0):
        t = TEKI(GaussianPrior(m0, prob.prior.covariance), stochastic=False)
        st = t.init(None, U0)
        return t.tell(st, prob.G(U0), prob.y, prob.Gamma)[0].ensemble

    out = jax.vmap(one)(means)
    ref = teki.tell(teki.init(None, U0), prob.G(U0), prob.y, prob.Gamma)[0].ensemble
    np.testing.assert_allclose(out[0], ref, rtol=1e-12)
    assert not np.allclose(out[1], ref)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_float32_smoke(name):
    prob = Linear(p=3, d=4, seed=15)
    prior32 = GaussianPrior(prob.m0.astype(np.float32), prob.C0.astype(np.float32))
    proc = PROCESSES[name](prior32)
    U0 = np.asarray(prob.draws(8), np.float32)
    s = _init(proc, jax.random.key(0), U0)
    A = prob.A.astype(np.float32)
    for _ in range(3):
        U = proc.ask(s)
        s, info = proc.tell(s, U @ A.T, prob.y.astype(np.float32),
                            prob.Gamma.astype(np.float32), dt=0.5)
    for leaf in jax.tree_util.tree_leaves(s):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
    assert info.misfit.dtype == jnp.float32


# ------------------------------------------------------------- errors ----


def test_clear_errors():
    prob = Linear(p=3, d=4, seed=16)
    U0 = prob.draws(5)
    proc = EKI(stochastic=False)
    s = proc.init(None, U0)
    G = prob.G(U0)
    with pytest.raises(ValueError, match=r"G must have shape \(N, d\) = \(5, d\).*\(4, 4\)"):
        proc.tell(s, G[:4], prob.y, prob.Gamma)
    with pytest.raises(ValueError, match=r"G must have shape"):
        proc.tell(s, G[0], prob.y, prob.Gamma)
    with pytest.raises(ValueError, match=r"y must have shape \(d,\) = \(4,\)"):
        proc.tell(s, G, prob.y[:3], prob.Gamma)
    with pytest.raises(ValueError, match="noise"):
        proc.tell(s, G, prob.y, np.eye(3))
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        proc.tell(s, G.at[2, 1].set(jnp.nan), prob.y, prob.Gamma)
    with pytest.raises(ValueError, match="dt"):
        proc.tell(s, G, prob.y, prob.Gamma, dt=-0.1)
    with pytest.raises(ValueError, match=r"ensemble must have shape \(N, p\)"):
        proc.init(None, U0[0])
    with pytest.raises(ValueError, match="at least N=2"):
        proc.init(None, U0[:1])
    with pytest.raises(ValueError, match="prior has dimension"):
        TEKI(prob.prior).init(0, np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"dt must be in \[0, 1\)"):
        u = UKI(prob.prior)
        st = u.init()
        u.tell(st, prob.G(u.ask(st)), prob.y, prob.Gamma, dt=1.0)
    with pytest.raises(ValueError, match=r"G must have shape \(2p\+1, d\) = \(7, d\)"):
        u.tell(st, G, prob.y, prob.Gamma)
    # Unknown options are TypeErrors, never swallowed.
    with pytest.raises(TypeError):
        EKI(stocastic=False)
    with pytest.raises(TypeError):
        proc.tell(s, G, prob.y, prob.Gamma, dtt=0.5)
    with pytest.raises(TypeError, match="stochastic must be a bool"):
        EKI(stochastic="no")
    with pytest.raises(TypeError, match="prior must be a GaussianPrior"):
        GNKI(prior=(prob.m0, prob.C0)).init(0, U0)
    with pytest.raises(ValueError, match=r"mean must have shape \(p,\)"):
        GaussianPrior(np.zeros((2, 2)), 1.0)


# -------------------------------------------------------------- prior ----


def test_gaussian_prior_sample():
    prob = Linear(p=3, d=2, seed=17)
    E = prob.prior.sample(jax.random.key(0), 20000)
    assert E.shape == (20000, 3)
    m, C = sample_stats(E)
    assert np.max(np.abs(m - prob.m0)) < 4 * np.sqrt(np.max(np.diag(prob.C0)) / 20000)
    assert rel(C, prob.C0) < 0.05
    assert np.array_equal(E, prob.prior.sample(0, 20000))
    assert isinstance(GaussianPrior(np.zeros(3), np.ones(3)).covariance, enkit.Diagonal)
    with pytest.raises(TypeError, match="key"):
        prob.prior.sample(None, 3)
    with pytest.raises(ValueError, match="N must be a positive integer"):
        prob.prior.sample(0, 0)


def test_public_names_are_exported():
    for name in ("EKI", "ETKI", "TEKI", "UKI", "GNKI", "GaussianPrior",
                 "DataMisfitController", "FixedStep", "discrepancy_principle"):
        assert getattr(enkit, name) is getattr(enkit.inversion, name)


def test_uki_step_is_linear_in_d_for_diagonal_noise():
    """UKI is evaluated in the 2p-dimensional sigma-point space (the
    transform form): with a diagonal Γ no (d, d) array is ever formed."""
    from reference.traced import traced_shapes

    p, d = 4, 20_000
    prior = GaussianPrior(jnp.zeros(p), jnp.eye(p))
    proc = UKI(prior)
    A = jnp.ones((d, p)) / d
    state = proc.init()
    y = jnp.zeros(d)

    def step(state, y):
        return proc.tell(state, proc.ask(state) @ A.T, y, enkit.Diagonal(jnp.ones(d)))

    shapes = traced_shapes(step, state, y)
    assert max(int(np.prod(s)) for s in shapes) <= (2 * p + 1) * (d + p)
    assert not [s for s in shapes if sum(n >= d for n in s) >= 2]
