"""Process inflation wrappers: multiplicative (mean kept, covariance scaled by
exactly 1/(1 − sΔt)), additive (covariance grows by sΔt/(1 − sΔt) Σ within
Monte-Carlo error), and the subspace-trap inflation (zero when the misfit
lies in the span of the output anomalies; θ² checked against a dense
projector)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inversion import (
    EKI,
    ESMDA,
    ETKI,
    UKI,
    AdditiveInflation,
    CollapseInflation,
    GaussianPrior,
    MultiplicativeInflation,
    SubspaceInflation,
    esmda_constant_alpha,
    subspace_residual_fraction,
)
from enkit.inversion.process_inflation import state_ensemble
from enkit.inversion.stopping import spread_ratio


def linear(p=3, d=2, N=8, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, p))
    U0 = rng.normal(size=(N, p))
    y = rng.normal(size=d)
    return A, U0, y, 0.5 * np.eye(d)


def cov(E):
    return np.cov(np.asarray(E).T, ddof=1)


@pytest.mark.parametrize("s,dt", [(1.0, 0.5), (0.25, 2.0)])
def test_multiplicative_keeps_mean_scales_covariance_exactly(s, dt):
    A, U0, y, Gam = linear()
    plain = EKI(stochastic=True)
    infl = MultiplicativeInflation(plain, s=s)
    st0 = plain.init(3, U0)
    G = U0 @ A.T
    ref, info_ref = plain.tell(st0, G, y, Gam, dt=dt)
    new, info = infl.tell(infl.init(3, U0), G, y, Gam, dt=dt)
    E, Er = np.asarray(new.ensemble), np.asarray(ref.ensemble)
    np.testing.assert_allclose(E.mean(0), Er.mean(0), rtol=0, atol=1e-14)
    np.testing.assert_allclose(cov(E), cov(Er) / (1 - s * dt), rtol=1e-12)
    assert info.misfit == info_ref.misfit and info.dt == info_ref.dt
    assert int(new.iteration) == 1


def test_multiplicative_checks_and_default_dt():
    A, U0, y, Gam = linear()
    infl = MultiplicativeInflation(ETKI(), s=1.0)
    with pytest.raises(ValueError, match="s\\*dt < 1"):
        infl.tell(infl.init(None, U0), U0 @ A.T, y, Gam, dt=1.0)
    with pytest.raises(ValueError, match="s must be"):
        MultiplicativeInflation(ETKI(), s=-1.0)
    with pytest.raises(TypeError, match="carries no ensemble"):
        MultiplicativeInflation(UKI(GaussianPrior(np.zeros(3), 1.0)))
    # ESMDA's tell takes no dt: Δt = 1/α₀ from info is used
    alpha = esmda_constant_alpha(4)
    es = MultiplicativeInflation(ESMDA(alpha, stochastic=False), s=2.0)
    new, _ = es.tell(es.init(None, U0), U0 @ A.T, y, Gam)
    ref, _ = ESMDA(alpha, stochastic=False).tell(
        ESMDA(alpha, stochastic=False).init(None, U0), U0 @ A.T, y, Gam)
    np.testing.assert_allclose(cov(new.ensemble), cov(ref.ensemble) / (1 - 2.0 / 4), rtol=1e-12)


def test_additive_covariance_increase_within_mc_error():
    rng = np.random.default_rng(1)
    p, d, N = 3, 2, 4000
    A = rng.normal(size=(d, p))
    U0 = rng.normal(size=(N, p)) @ np.diag([1.0, 0.5, 2.0])
    y = rng.normal(size=d)
    B = rng.normal(size=(p, p))
    Sigma = B @ B.T / p + 0.2 * np.eye(p)
    s, dt = 0.5, 1.0
    h = s * dt / (1 - s * dt)
    proc = EKI(stochastic=False)  # cheap for large N (ETKI forms N×N matrices)
    infl = AdditiveInflation(proc, Sigma, s=s)
    state = infl.init(11, U0)
    new, info = infl.tell(state, U0 @ A.T, y, 0.3, dt=dt)
    ref, _ = proc.tell(proc.init(None, U0), U0 @ A.T, y, 0.3, dt=dt)
    E, Er = np.asarray(new.inner.ensemble), np.asarray(ref.ensemble)
    # recentred draws: the mean is exactly the process's
    np.testing.assert_allclose(E.mean(0), Er.mean(0), atol=1e-12)
    # covariance increase hΣ within MC error: the sample covariance of N
    # draws has relative standard error about √(2/N) ≈ 0.022, plus the
    # zero-mean cross terms with the ensemble; allow 5 standard errors
    inc = cov(E) - cov(Er)
    se = np.sqrt((np.outer(np.diag(h * Sigma), np.diag(h * Sigma) + 2 * np.diag(cov(Er)))
                  + (h * Sigma) ** 2) / (N - 1))
    assert np.all(np.abs(inc - h * Sigma) < 5 * se)
    assert np.abs(inc - h * Sigma).max() < 0.1 * np.abs(h * Sigma).max()
    # same key → same draws; another key → other draws
    again, _ = infl.tell(infl.init(11, U0), U0 @ A.T, y, 0.3, dt=dt)
    np.testing.assert_array_equal(again.inner.ensemble, new.inner.ensemble)
    other, _ = infl.tell(infl.init(12, U0), U0 @ A.T, y, 0.3, dt=dt)
    assert not np.allclose(other.inner.ensemble, new.inner.ensemble)
    assert info.dt == dt


def test_additive_without_recentring_moves_mean_and_needs_key():
    A, U0, y, Gam = linear(N=6)
    infl = AdditiveInflation(ETKI(), 1.0, s=0.5, recentre=False)
    new, _ = infl.tell(infl.init(0, U0), U0 @ A.T, y, Gam, dt=1.0)
    ref, _ = ETKI().tell(ETKI().init(None, U0), U0 @ A.T, y, Gam, dt=1.0)
    assert not np.allclose(new.inner.ensemble.mean(0), ref.ensemble.mean(0))
    with pytest.raises(TypeError, match="needs key"):
        infl.init(None, U0)
    with pytest.raises(ValueError, match="covariance"):
        AdditiveInflation(ETKI(), np.eye(2)).init(0, U0)


def test_additive_draws_differ_across_iterations_and_jit():
    A, U0, y, Gam = linear(N=6)
    infl = AdditiveInflation(EKI(stochastic=False), 0.1 * np.eye(3), s=0.2)
    tell = jax.jit(lambda w, st, G: w.tell(st, G, y, Gam, dt=1.0))
    st = infl.init(5, U0)
    incs = []
    for _ in range(2):
        U = infl.ask(st)
        new, _ = tell(infl, st, U @ A.T)
        ref, _ = EKI(stochastic=False).tell(st.inner, U @ A.T, y, Gam, dt=1.0)
        incs.append(np.asarray(new.inner.ensemble - ref.ensemble))
        st = new
    assert int(st.inner.iteration) == 2
    assert not np.allclose(incs[0], incs[1], atol=1e-3)


def test_subspace_fraction_matches_dense_projector():
    rng = np.random.default_rng(4)
    N, d = 4, 7  # the span of the anomalies has dimension N − 1 = 3 < d
    G = rng.normal(size=(N, d))
    y = rng.normal(size=d)
    B = rng.normal(size=(d, d))
    Gam = B @ B.T / d + np.eye(d)
    L = np.linalg.cholesky(Gam)
    Yw = np.linalg.solve(L, (G - G.mean(0)).T)  # (d, N) whitened anomalies
    r = np.linalg.solve(L, y - G.mean(0))
    P = Yw @ np.linalg.pinv(Yw)
    want = np.sum(((np.eye(d) - P) @ r) ** 2) / np.sum(r**2)
    got = float(subspace_residual_fraction(G, y, Gam))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert 0 < got < 1
    # misfit inside the span: θ = 0; orthogonal to it: θ = 1; no misfit: 0
    y_in = G.mean(0) + L @ (Yw @ rng.normal(size=N))
    assert float(subspace_residual_fraction(G, y_in, Gam)) < 1e-20
    q = (np.eye(d) - P) @ rng.normal(size=d)
    np.testing.assert_allclose(
        float(subspace_residual_fraction(G, G.mean(0) + L @ q, Gam)), 1.0, rtol=1e-10)
    assert float(subspace_residual_fraction(G, G.mean(0), Gam)) == 0.0


def test_subspace_inflation_zero_in_span_and_equal_to_additive_outside():
    A, U0, y, Gam = linear(p=3, d=2, N=8)
    # d = 2 ≤ N − 1 and A has full rank: the output anomalies span ℝᵈ, so the
    # misfit always lies in the span and the inflation is exactly zero
    plain = EKI(stochastic=True)
    sub = SubspaceInflation(plain, np.eye(3), gamma=5.0)
    st_p, st_s = plain.init(2, U0), sub.init(2, U0)
    for _ in range(3):
        U = plain.ask(st_p)
        np.testing.assert_array_equal(sub.ask(st_s), U)
        st_p, _ = plain.tell(st_p, U @ A.T, y, Gam, dt=0.5)
        st_s, _ = sub.tell(st_s, U @ A.T, y, Gam, dt=0.5)
    np.testing.assert_array_equal(st_s.inner.ensemble, st_p.ensemble)
    # a trapped misfit (d > N − 1): the perturbation is the additive one of
    # strength h = γ θ² Δt, i.e. AdditiveInflation with sΔt/(1 − sΔt) = h
    rng = np.random.default_rng(5)
    N, p, d = 3, 4, 6
    A2 = rng.normal(size=(d, p))
    U2 = rng.normal(size=(N, p))
    y2 = rng.normal(size=d)
    G2 = U2 @ A2.T
    gamma, dt = 0.8, 0.5
    th2 = float(subspace_residual_fraction(G2, y2, 1.0))
    assert th2 > 0.1
    h = gamma * th2 * dt
    s = h / (dt * (1 + h))
    Sigma = np.diag([1.0, 2.0, 0.5, 1.5])
    a, _ = SubspaceInflation(ETKI(), Sigma, gamma=gamma).tell(
        SubspaceInflation(ETKI(), Sigma, gamma=gamma).init(9, U2), G2, y2, 1.0, dt=dt)
    b, _ = AdditiveInflation(ETKI(), Sigma, s=s).tell(
        AdditiveInflation(ETKI(), Sigma, s=s).init(9, U2), G2, y2, 1.0, dt=dt)
    np.testing.assert_allclose(a.inner.ensemble, b.inner.ensemble, rtol=1e-12)
    ref, _ = ETKI().tell(ETKI().init(None, U2), G2, y2, 1.0, dt=dt)
    assert not np.allclose(a.inner.ensemble, ref.ensemble)
    with pytest.raises(ValueError, match="gamma"):
        SubspaceInflation(ETKI(), Sigma, gamma=-1.0)


def test_wrappers_compose_and_float32():
    A, U0, y, Gam = linear()
    proc = MultiplicativeInflation(AdditiveInflation(EKI(stochastic=False), 0.1, s=0.1), s=0.1)
    st = proc.init(1, jnp.asarray(U0, jnp.float32))
    new, _ = proc.tell(st, proc.ask(st) @ jnp.asarray(A.T, jnp.float32), y, Gam, dt=1.0)
    assert new.inner.ensemble.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(new.inner.ensemble)))
    assert state_ensemble(new) is new.inner.ensemble


# --------------------------------------------------------------------------
# Collapse-triggered inflation
# --------------------------------------------------------------------------


def _stalling_problem():
    """A 2-parameter problem on which deterministic EKI with Δt = 1 and a
    small noise collapses in its first steps and then stalls far from the
    truth (2, 1.5)."""
    def G(U):
        return jnp.stack([jnp.exp(U[:, 0]), U[:, 0] * U[:, 1], jnp.exp(0.5 * U[:, 1])], 1)

    y = np.asarray(G(jnp.array([[2.0, 1.5]])))[0]
    U0 = 0.5 * np.random.default_rng(0).normal(size=(20, 2))
    return G, y, enkit.Scalar(1e-4, 3), U0


def _run(proc, G, y, noise, U0, steps):
    st = proc.init(None, U0)
    tell = jax.jit(lambda st, Gu: proc.tell(st, Gu, y, noise, dt=1.0))
    for _ in range(steps):
        st, info = tell(st, G(proc.ask(st)))
    return st, info


def test_collapse_inflation_restores_the_spread_exactly_and_keeps_the_mean():
    G, y, noise, U0 = _stalling_problem()
    plain = EKI(stochastic=False)
    wrapped = CollapseInflation(plain, tol=0.05, restore=0.5)
    st = wrapped.init(None, U0)
    np.testing.assert_allclose(st.initial_spread, U0.std(0, ddof=1), rtol=1e-14)
    seen = {True: 0, False: 0}
    for _ in range(12):
        Gu = G(wrapped.ask(st))
        ref, _ = plain.tell(st.inner, Gu, y, noise, dt=1.0)  # the bare update
        new, info = wrapped.tell(st, Gu, y, noise, dt=1.0)
        E, E_ref = np.asarray(state_ensemble(new)), np.asarray(ref.ensemble)
        r_ref = float(spread_ratio(jnp.asarray(E_ref), st.initial_spread))
        hit = r_ref < 0.05
        seen[hit] += 1
        assert int(new.triggered) == int(st.triggered) + hit
        if hit:
            np.testing.assert_allclose(E.mean(0), E_ref.mean(0), rtol=1e-13, atol=1e-13)
            assert abs(float(spread_ratio(jnp.asarray(E), st.initial_spread)) - 0.5) < 1e-12
            # the scaling is about the mean: same directions, one factor
            np.testing.assert_allclose(E - E.mean(0), (E_ref - E_ref.mean(0)) * 0.5 / r_ref,
                                       rtol=1e-10, atol=1e-12)
        else:
            np.testing.assert_array_equal(E, E_ref)
        st = new
    assert seen[True] > 0 and seen[False] > 0  # both branches ran


def test_collapse_inflation_lets_eki_finish_where_it_stalls():
    G, y, noise, U0 = _stalling_problem()
    st, info = _run(EKI(stochastic=False), G, y, noise, U0, 40)
    stalled = np.asarray(st.ensemble).mean(0)
    assert float(info.misfit) > 1000 and np.max(np.abs(stalled - [2.0, 1.5])) > 0.4
    proc = CollapseInflation(EKI(stochastic=False), tol=0.05, restore=0.5)
    st, info = _run(proc, G, y, noise, U0, 40)
    mean = np.asarray(state_ensemble(st)).mean(0)
    assert float(info.misfit) < 30 and np.max(np.abs(mean - [2.0, 1.5])) < 5e-3
    assert int(st.triggered) > 10


def test_collapse_inflation_checks_its_arguments():
    with pytest.raises(ValueError, match="below restore"):
        CollapseInflation(EKI(), tol=0.5, restore=0.1)
    with pytest.raises(ValueError, match="tol"):
        CollapseInflation(EKI(), tol=-1.0)
    with pytest.raises(TypeError, match="init/ask/tell"):
        CollapseInflation(object())
