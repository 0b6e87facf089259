"""Tempered SMC (``enkit.inversion.SMC``) and adaptive tempering
(``enkit.particle.next_temperature``).

Exact answers: on a linear-Gaussian problem the weighted particle mean and
covariance against the closed-form posterior and log Ẑ against
log N(y; A m₀, A C₀ Aᵀ + Γ); on a bimodal 2-D posterior the mode masses,
a mode's mean and log Ẑ against quadrature on a grid; all within
Monte-Carlo error (tolerances below, set from the spread over 6–16 seeds:
mean errors are N(0, Σ/N)-sized, relative variance errors ≈ √(2/N), the
sd of log Ẑ is ≈ 0.045, of the bimodal mass ≈ 0.015 at N = 1000–2000).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

import enkit
from enkit.inversion import (
    SMC,
    ForwardFailure,
    GaussianPrior,
    Ignore,
    Parameter,
    ParameterSpace,
    ConstrainedProcess,
    SMCState,
    smc_summary,
)
from enkit.particle import WeightDegeneracyError, next_temperature, tempered_ess


class Linear:
    """G(u) = A u, p = 2, d = 3, correlated prior, Γ = 0.01 I (≈ 5 stages)."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        p, d = 2, 3
        self.A = rng.normal(size=(d, p))
        self.m0 = rng.normal(size=p)
        L = rng.normal(size=(p, p)) + 2 * np.eye(p)
        self.C0 = L @ L.T / p
        self.Gamma = 0.01 * np.eye(d)
        self.y = self.A @ (self.m0 + 1.0) + 0.1 * rng.normal(size=d)
        self.prior = GaussianPrior(self.m0, self.C0)
        P = np.linalg.inv(self.C0) + self.A.T @ np.linalg.solve(self.Gamma, self.A)
        self.S = np.linalg.inv(P)
        self.m = self.S @ (np.linalg.solve(self.C0, self.m0)
                           + self.A.T @ np.linalg.solve(self.Gamma, self.y))
        Cy = self.A @ self.C0 @ self.A.T + self.Gamma
        r = self.y - self.A @ self.m0
        self.log_z = float(-0.5 * r @ np.linalg.solve(Cy, r)
                           - 0.5 * np.linalg.slogdet(2 * np.pi * Cy)[1])

    def forward(self, u):
        return jnp.asarray(self.A) @ u

    def forward_numpy(self, u):
        return self.A @ np.asarray(u)


N_LIN = 2000


@pytest.fixture(scope="module")
def lin():
    return Linear()


@pytest.fixture(scope="module")
def lin_run(lin):
    return enkit.calibrate(lin.forward, SMC(lin.prior), lin.prior.sample(1, N_LIN), lin.y,
                           lin.Gamma, key=2)


def test_linear_gaussian_posterior_moments(lin, lin_run):
    res = lin_run
    assert res.stopped_by == "finished"
    sd = np.sqrt(np.diag(lin.S))
    # mean within 4.5 standard errors of an ESS of N/2 (measured: |z| < 1.6 at ESS = N)
    np.testing.assert_array_less(np.abs(np.asarray(res.mean) - lin.m),
                                 4.5 * sd / np.sqrt(N_LIN / 2))
    C = np.asarray(res.covariance)
    rel = np.abs(np.diag(C) / np.diag(lin.S) - 1)
    np.testing.assert_array_less(rel, 4 * np.sqrt(2 / (N_LIN / 2)))
    corr = C[0, 1] / np.sqrt(C[0, 0] * C[1, 1])
    corr_exact = lin.S[0, 1] / np.sqrt(lin.S[0, 0] * lin.S[1, 1])
    assert abs(corr - corr_exact) < 0.08
    s = smc_summary(res.state)
    # the summary's particles are the state's; their uniform weights give result.mean
    np.testing.assert_allclose(np.mean(np.asarray(s.particles), 0), res.mean, rtol=1e-12)


def test_linear_gaussian_log_evidence(lin, lin_run):
    s = smc_summary(lin_run.state)
    assert abs(float(s.log_evidence) - lin.log_z) < 0.25  # measured sd 0.045
    np.testing.assert_allclose(float(np.sum(s.log_evidence_increments)), float(s.log_evidence),
                               rtol=1e-12)


def test_temperatures_rise_to_exactly_one_at_the_target_ess(lin_run):
    s = smc_summary(lin_run.state)
    T = np.asarray(s.temperatures)
    assert s.finished and s.n_stages >= 3
    assert T[0] == 0.0 and T[-1] == 1.0
    assert np.all(np.diff(T) > 0)
    ess = np.asarray(s.ess)
    np.testing.assert_allclose(ess[:-1], 0.5 * N_LIN, rtol=1e-9)  # bisection tolerance
    assert ess[-1] >= 0.5 * N_LIN * (1 - 1e-9)
    acc = np.asarray(s.acceptance_rates)
    assert np.all((acc > 0.1) & (acc < 0.5))  # the scale adapts towards 0.234
    # calibrate's algorithmic time is the temperature: Σ dt = 1
    np.testing.assert_allclose(np.asarray(lin_run.times)[-1], 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.unique(np.asarray(lin_run.times)), T, rtol=1e-12)
    # forward evaluations: the prior draws, n_moves proposals per stage, the final particles
    n_moves = 10
    assert lin_run.n_iterations == 1 + s.n_stages * n_moves
    assert np.shape(lin_run.ensembles)[0] == 2 + s.n_stages * n_moves


# ---------------------------------------------------------------- bimodal ----

M0_BI, Y_BI, SIG_BI = np.array([0.3, 0.0]), np.array([1.0, 0.5]), 0.2
N_BI = 2000


def forward_bimodal(u):
    return jnp.stack([u[0] ** 2, u[1]])


@pytest.fixture(scope="module")
def quadrature():
    """log Z, P(u₁ > 0) and E[u₁ | u₁ > 0] on a 2000² grid of [−4, 4]²."""
    h = 0.004
    g = np.arange(-4, 4, h) + h / 2
    U1, U2 = np.meshgrid(g, g, indexing="ij")
    lp = -0.5 * ((U1 - M0_BI[0]) ** 2 + (U2 - M0_BI[1]) ** 2) - np.log(2 * np.pi)
    ll = (-0.5 * (((U1 ** 2 - Y_BI[0]) / SIG_BI) ** 2 + ((U2 - Y_BI[1]) / SIG_BI) ** 2)
          - 2 * np.log(SIG_BI) - np.log(2 * np.pi))
    w = np.exp(lp + ll) * h * h
    Z = w.sum()
    P = w / Z
    mass = P[U1 > 0].sum()
    return np.log(Z), mass, (P * U1)[U1 > 0].sum() / mass


@pytest.fixture(scope="module")
def bimodal_run():
    prior = GaussianPrior(M0_BI, np.ones(2))
    return enkit.calibrate(forward_bimodal, SMC(prior), prior.sample(3, N_BI), Y_BI,
                           SIG_BI ** 2, key=4)


def test_bimodal_masses_and_evidence_against_quadrature(quadrature, bimodal_run):
    log_z, mass, mean_pos = quadrature
    assert 0.6 < mass < 0.7  # the prior's offset makes the modes unequal
    s = smc_summary(bimodal_run.state)
    E = np.asarray(s.particles)
    w = np.exp(np.asarray(s.log_weights))
    pos = E[:, 0] > 0
    assert abs(w[pos].sum() - mass) < 0.06  # measured sd 0.015 over 16 seeds
    assert abs(np.sum(w * E[:, 0] * pos) / w[pos].sum() - mean_pos) < 0.02
    assert abs(np.sum(w * E[:, 0] * ~pos) / w[~pos].sum() + mean_pos) < 0.05
    assert abs(float(s.log_evidence) - log_z) < 0.2  # measured sd 0.04
    assert np.asarray(s.temperatures)[-1] == 1.0


# ------------------------------------------------- next_temperature alone ----

def test_next_temperature_hits_the_target_ess_by_bisection():
    ll = -0.5 * np.random.default_rng(5).chisquare(3, size=400) * 50
    phi, ess = next_temperature(jnp.asarray(ll), 0.1, target=0.3)
    assert 0.1 < float(phi) < 1
    np.testing.assert_allclose(float(ess), 0.3 * 400, rtol=1e-10)
    w = np.exp((float(phi) - 0.1) * (ll - ll.max()))
    np.testing.assert_allclose(w.sum() ** 2 / (w * w).sum(), 0.3 * 400, rtol=1e-9)
    # a flat likelihood: the whole step at once, exactly to 1
    phi, ess = next_temperature(jnp.full(10, -3.0), 0.25)
    assert float(phi) == 1.0 and abs(float(ess) - 10) < 1e-9
    # zero-likelihood members: the target is relative to the others (8 of 10)
    ll2 = np.concatenate([ll[:8], [-np.inf, -np.inf]])
    phi, ess = next_temperature(jnp.asarray(ll2), 0.0, target=0.9)
    np.testing.assert_allclose(float(ess), 0.9 * 8, rtol=1e-9)
    np.testing.assert_allclose(float(tempered_ess(jnp.zeros(10), jnp.asarray(ll2), 0.0)), 8)
    with pytest.raises(ValueError, match="target must be in"):
        next_temperature(jnp.asarray(ll), 0.0, target=1.0)
    with pytest.raises(ValueError, match="temperature must be in"):
        next_temperature(jnp.asarray(ll), 1.0)
    with pytest.raises(ValueError, match="log_lik must have shape"):
        next_temperature(jnp.zeros((2, 2)), 0.0)


# ------------------------------------------------ doors: black box, bounds ----

N_SMALL = 300


def test_black_box_and_scan_match_the_jax_forward(lin):
    U0 = lin.prior.sample(7, N_SMALL)
    jx = enkit.calibrate(lin.forward, SMC(lin.prior, n_moves=3), U0, lin.y, lin.Gamma, key=8)
    bb = enkit.calibrate(lin.forward_numpy, SMC(lin.prior, n_moves=3), U0, lin.y, lin.Gamma,
                         key=8, black_box=True)
    assert bb.stopped_by == jx.stopped_by == "finished"
    assert bb.n_iterations == jx.n_iterations
    np.testing.assert_allclose(bb.state.ensemble, jx.state.ensemble, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(bb.state.log_evidence), float(jx.state.log_evidence),
                               rtol=1e-10)
    # one compiled lax.scan: stops when finished, the same run
    sc = enkit.calibrate_scan(lin.forward, SMC(lin.prior, n_moves=3), U0, lin.y, lin.Gamma,
                              key=8, n_iterations=200)
    assert sc.stopped_by == "finished" and sc.n_iterations == jx.n_iterations
    np.testing.assert_allclose(sc.state.ensemble, jx.state.ensemble, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sc.times, jx.times, rtol=1e-12)


def test_a_hand_written_ask_tell_loop_is_calibrate(lin):
    """The protocol by hand (NumPy forward between ask and tell) gives
    calibrate's run (its process key is ``split(key)[0]``); the first
    temperature puts the ESS of exp(φ₁ ℓ(U₀)), ℓ computed here in NumPy, at
    N/2; a traced tell after the end changes nothing."""
    import jax

    U0 = lin.prior.sample(7, N_SMALL)
    smc = SMC(lin.prior, n_moves=3)
    state = smc.init(jax.random.split(jax.random.key(8))[0], U0)
    first = None
    while not bool(smc.finished(state)):
        U = np.asarray(smc.ask(state))
        state, info = smc.tell(state, U @ lin.A.T, lin.y, lin.Gamma)
        first = float(info.temperature) if first is None else first
    r = (lin.y - np.asarray(U0) @ lin.A.T) / 0.1
    ll = -0.5 * np.sum(r * r, axis=1)
    w = np.exp(first * (ll - ll.max()))
    np.testing.assert_allclose(w.sum() ** 2 / (w * w).sum(), 0.5 * N_SMALL, rtol=1e-8)
    ref = enkit.calibrate(lin.forward, smc, U0, lin.y, lin.Gamma, key=8)
    np.testing.assert_allclose(state.ensemble, ref.state.ensemble, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(state.log_evidence), float(ref.state.log_evidence),
                               rtol=1e-10)
    U = np.asarray(smc.ask(state))
    np.testing.assert_array_equal(U, state.ensemble)  # finished: ask gives the particles
    after, info = jax.jit(smc.tell)(state, U @ lin.A.T, lin.y, lin.Gamma)
    np.testing.assert_array_equal(after.ensemble, state.ensemble)
    np.testing.assert_array_equal(after.history.acceptance, state.history.acceptance)
    assert float(info.dt) == 0.0 and int(after.iteration) == int(state.iteration)


def test_constrained_prior_is_sampled_in_the_unconstrained_space():
    """x₀ = exp(u₀) > 0, x₁ = −1 + 3σ(u₁) ∈ (−1, 2); G(x) = A [log x₀,
    logit((x₁ + 1)/3)] = A u is linear in u, so the posterior of u is the
    closed-form Gaussian one."""
    space = ParameterSpace([Parameter("k", mean=0.2, std=0.5, lower=0.0),
                            Parameter("c", mean=-0.3, std=1.0, lower=-1.0, upper=2.0)])
    A = np.array([[1.0, 0.4], [-0.5, 1.0], [0.3, 0.3]])
    Gam = 0.05 * np.eye(3)
    y = A @ np.array([0.6, 0.4]) + np.array([0.05, -0.1, 0.02])
    m0, C0 = np.asarray(space.prior_mean), np.asarray(space.prior_covariance.dense())
    S = np.linalg.inv(np.linalg.inv(C0) + A.T @ np.linalg.solve(Gam, A))
    m = S @ (np.linalg.solve(C0, m0) + A.T @ np.linalg.solve(Gam, y))
    asked = []

    def forward(x):
        asked.append(np.asarray(x))
        u = np.array([np.log(x[0]), np.log(x[1] + 1.0) - np.log(2.0 - x[1])])
        return A @ u

    N = 400
    res = enkit.calibrate(forward, ConstrainedProcess(SMC(space.prior, n_moves=5), space),
                          space.sample(9, N), y, Gam, key=10, black_box=True)
    X = np.stack(asked)
    assert np.all(X[:, 0] > 0) and np.all((X[:, 1] > -1) & (X[:, 1] < 2))
    assert res.stopped_by == "finished"
    sd = np.sqrt(np.diag(S))
    np.testing.assert_array_less(np.abs(np.asarray(res.mean) - m), 4.5 * sd / np.sqrt(N / 2))
    np.testing.assert_array_less(np.abs(np.diag(res.covariance) / np.diag(S) - 1),
                                 4 * np.sqrt(2 / (N / 2)))


# --------------------------------------------------------------- failures ----

def _failing(lin, kind):
    """The linear forward, failing (raising or NaN) where u₀ > c: a region
    with prior mass but (almost) no posterior mass."""
    c = lin.m[0] + 6 * np.sqrt(lin.S[0, 0])

    if kind == "raise":
        def forward(u):
            if u[0] > c:
                raise RuntimeError("solver diverged")
            return lin.forward_numpy(u)
    else:
        def forward(u):
            return jnp.where(u[0] > c, jnp.nan, lin.forward(u))
    return forward, c


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_failed_members_are_zero_likelihood_under_ignore(lin, kind):
    forward, c = _failing(lin, kind)
    U0 = lin.prior.sample(11, N_SMALL)
    assert np.any(np.asarray(U0)[:, 0] > c)  # some prior draws do fail
    res = enkit.calibrate(forward, SMC(lin.prior, n_moves=3), U0, lin.y, lin.Gamma, key=12,
                          failure=Ignore(min_fraction=0.2), black_box=kind == "raise")
    assert res.stopped_by == "finished"
    assert res.failed[0].any()
    assert res.failed[1:].any()  # failed proposals of the moves too: rejected
    if kind == "raise":
        assert "solver diverged" in next(iter(res.errors[0].values()))
    E = np.asarray(res.state.ensemble)
    assert np.all(np.isfinite(E)) and np.all(E[:, 0] <= c)
    assert np.all(np.isfinite(np.asarray(res.state.log_likelihood)))
    s = smc_summary(res.state)
    assert abs(float(s.log_evidence) - lin.log_z) < 0.4  # the failed region holds ~no mass
    sd = np.sqrt(np.diag(lin.S))
    np.testing.assert_array_less(np.abs(np.asarray(res.mean) - lin.m),
                                 4.5 * sd / np.sqrt(N_SMALL / 4))


def test_failures_raise_by_default_and_resample_is_refused(lin):
    forward, _ = _failing(lin, "raise")
    U0 = lin.prior.sample(11, N_SMALL)
    with pytest.raises(ForwardFailure, match="solver diverged") as err:
        enkit.calibrate(forward, SMC(lin.prior), U0, lin.y, lin.Gamma, key=12, black_box=True)
    assert err.value.iteration == 0 and err.value.members
    with pytest.raises(ValueError, match="zero likelihood.*resample"):
        enkit.calibrate(forward, SMC(lin.prior), U0, lin.y, lin.Gamma, key=12,
                        black_box=True, failure="resample")


def test_direct_tell_takes_nan_rows_as_zero_likelihood(lin):
    smc = SMC(lin.prior, n_moves=3)
    U0 = lin.prior.sample(13, N_SMALL)
    state = smc.init(0, U0)
    G = np.asarray(U0) @ lin.A.T
    G[[3, 7]] = np.nan
    new, info = smc.tell(state, G, lin.y, lin.Gamma)
    assert int(info.n_failed) == 2 and float(info.temperature) > 0
    assert np.all(np.isfinite(np.asarray(new.ensemble)))
    # no resampled particle descends from a failed member
    picked = {tuple(r) for r in np.asarray(new.ensemble)}
    assert tuple(np.asarray(U0)[3]) not in picked and tuple(np.asarray(U0)[7]) not in picked
    with pytest.raises(WeightDegeneracyError, match="zero likelihood"):
        smc.tell(state, np.full_like(G, np.nan), lin.y, lin.Gamma)


# ------------------------------------------- checkpoints, capacity, dtype ----

def test_a_resumed_run_is_bit_identical(lin, tmp_path):
    U0 = lin.prior.sample(14, N_SMALL)
    smc = SMC(lin.prior, n_moves=3)
    full = enkit.calibrate(lin.forward, smc, U0, lin.y, lin.Gamma, key=15)
    path = tmp_path / "smc.npz"

    def stop_at(rec):
        if rec.iteration == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enkit.calibrate(lin.forward, smc, U0, lin.y, lin.Gamma, key=15, checkpoint=path,
                        callback=stop_at)
    again = enkit.calibrate(lin.forward, smc, U0, lin.y, lin.Gamma, key=15, checkpoint=path)
    assert again.n_iterations == full.n_iterations
    np.testing.assert_array_equal(again.state.ensemble, full.state.ensemble)
    assert float(again.state.log_evidence) == float(full.state.log_evidence)


def test_the_stage_capacity_ends_at_one_and_warns(lin):
    res = enkit.calibrate(lin.forward, SMC(lin.prior, n_moves=3, max_stages=2),
                          lin.prior.sample(16, N_SMALL), lin.y, lin.Gamma, key=17)
    assert res.stopped_by == "finished"
    with pytest.warns(UserWarning, match="max_stages"):
        s = smc_summary(res.state)
    assert s.n_stages == 2 and float(s.temperatures[-1]) == 1.0
    assert float(s.ess[-1]) < 0.5 * N_SMALL


def test_float32_smoke(lin):
    prior = GaussianPrior(lin.m0.astype(np.float32), lin.C0.astype(np.float32))
    U0 = prior.sample(18, 200).astype(jnp.float32)
    res = enkit.calibrate(lambda u: jnp.asarray(lin.A, jnp.float32) @ u, SMC(prior, n_moves=3),
                          U0, lin.y.astype(np.float32), lin.Gamma.astype(np.float32), key=19)
    assert res.state.ensemble.dtype == jnp.float32 and res.stopped_by == "finished"
    assert np.all(np.isfinite(np.asarray(res.mean)))
    assert abs(float(res.state.log_evidence) - lin.log_z) < 1.0


# ------------------------------------------------------------------ errors ----

def test_clear_errors_for_bad_arguments(lin):
    with pytest.raises(TypeError, match="GaussianPrior"):
        SMC(None)
    with pytest.raises(TypeError, match="GaussianPrior"):
        SMC(np.zeros(2))
    for bad, match in [(dict(target_ess=1.5), "target_ess"), (dict(target_ess=0.0), "target_ess"),
                       (dict(target_acceptance=1.0), "target_acceptance"),
                       (dict(n_moves=0), "n_moves"), (dict(max_stages=0), "max_stages"),
                       (dict(scale=-1.0), "scale")]:
        with pytest.raises(ValueError, match=match):
            SMC(lin.prior, **bad)
    smc = SMC(lin.prior)
    U0 = lin.prior.sample(0, 20)
    with pytest.raises(TypeError, match="key"):
        smc.init(None, U0)
    with pytest.raises(ValueError, match="p=3 parameters but the prior has dimension 2"):
        smc.init(0, np.zeros((20, 3)) + np.arange(3.0) + np.arange(20.0)[:, None])
    with pytest.raises(ValueError, match="zero spread"):
        smc.init(0, np.ones((20, 2)))
    state = smc.init(0, U0)
    G = np.asarray(U0) @ lin.A.T
    with pytest.raises(ValueError, match="dt=None"):
        smc.tell(state, G, lin.y, lin.Gamma, dt=0.5)
    with pytest.raises(ValueError, match=r"G must have shape \(N, d\)"):
        smc.tell(state, G[:5], lin.y, lin.Gamma)
    with pytest.raises(ValueError, match="y must have shape"):
        smc.tell(state, G, lin.y[:2], lin.Gamma)
    with pytest.raises(ValueError, match="finished"):
        smc.tell(state._replace(done=jnp.asarray(True)), G, lin.y, lin.Gamma)
    with pytest.raises(ValueError, match="dt=None"):
        enkit.calibrate(lin.forward, smc, U0, lin.y, lin.Gamma, key=0,
                        scheduler=enkit.FixedStep(0.5))
    with pytest.raises(TypeError, match="SMCState"):
        smc_summary(enkit.EKI(stochastic=False).init(None, U0))
    assert isinstance(state, SMCState)
    assert enkit.TemperedSMC is enkit.SMC is SMC


def test_proposal_root_and_the_weighted_final_moments():
    """rootᵀroot is the weighted covariance C_w for p < N (thin QR) and
    p ≥ N (the N rows); calibrate's final mean/covariance of a weighted
    state are the weighted ones."""
    from enkit.inversion.calibrate import _final
    from enkit.inversion.smc import _proposal_root
    from enkit.particle import weighted_covariance_root, weighted_mean

    rng = np.random.default_rng(20)
    for N, p in [(40, 3), (5, 8)]:
        E = jnp.asarray(rng.normal(size=(N, p)))
        lw = jnp.asarray(rng.normal(size=N))
        C12 = weighted_covariance_root(E, lw)
        R = _proposal_root(E, lw)
        assert R.shape == (min(N, p), p)
        np.testing.assert_allclose(R.T @ R, C12.T @ C12, rtol=1e-10, atol=1e-12)
    prior = GaussianPrior(np.zeros(3), np.ones(3))
    state = SMC(prior).init(0, E[:, :3])
    state = state._replace(log_weights=lw - logsumexp(lw))
    m, C = _final(state)
    np.testing.assert_allclose(m, weighted_mean(E[:, :3], lw), rtol=1e-12)
    C12 = weighted_covariance_root(E[:, :3], lw)
    np.testing.assert_allclose(C, C12.T @ C12, rtol=1e-12)


def test_a_second_run_with_new_values_does_not_retrace(lin):
    """The prior, target_ess and target_acceptance are leaves, the data and
    Γ arguments: a second run with new values reuses the compiled tell (the
    resampler, static, counts the traces)."""
    from enkit.particle import systematic

    traces = []

    def counting(key, log_w):
        traces.append(1)
        return systematic(key, log_w)

    U0 = lin.prior.sample(21, 100)
    enkit.calibrate(lin.forward, SMC(lin.prior, n_moves=2, resampler=counting), U0, lin.y,
                    lin.Gamma, key=1)
    n = len(traces)
    assert n >= 1
    prior2 = GaussianPrior(lin.m0 + 0.1, 2 * lin.C0)
    res = enkit.calibrate(lin.forward, SMC(prior2, target_ess=0.7, target_acceptance=0.3,
                                           n_moves=2, resampler=counting),
                          prior2.sample(22, 100), lin.y + 0.1, 2 * lin.Gamma, key=2)
    assert len(traces) == n and res.stopped_by == "finished"
    np.testing.assert_allclose(np.asarray(smc_summary(res.state).ess)[:-1], 70, rtol=1e-9)
