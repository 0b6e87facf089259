"""Inflation family: each pure function against its closed form, each driver
step against its pure function, adaptive inflation against a known
under-dispersion, jit/vmap over hyperparameters, and Lorenz-96 runs that the
inflation keeps from diverging."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inflation import (
    RTPP,
    RTPS,
    AdaptiveMultiplicative,
    AdditiveAnalysis,
    AdditiveForecast,
    InflationEstimate,
    MultiplicativeAnalysis,
    MultiplicativeForecast,
    adaptive_inflation,
    additive,
    chain,
    ledoit_wolf,
    multiplicative,
    rtpp,
    rtps,
)


def _pair(N=8, n=5, seed=0):
    """A forecast ensemble and an analysis ensemble with smaller spread."""
    rng = np.random.default_rng(seed)
    Ef = 3.0 + rng.normal(size=(N, n)) * rng.uniform(0.5, 2.0, size=n)
    Ea = 1.0 + 0.4 * (Ef - Ef.mean(0)) + 0.2 * rng.normal(size=(N, n))
    return Ef, Ea


def _anom(E):
    E = np.asarray(E)
    return E - E.mean(0)


# ---------------------------------------------------------------- multiplicative


def test_multiplicative_per_variable_factor():
    Ef, _ = _pair()
    lam = np.array([1.0, 1.1, 1.2, 0.9, 2.0])
    out = multiplicative(Ef, lam)
    np.testing.assert_allclose(np.mean(out, 0), Ef.mean(0), rtol=1e-13)
    np.testing.assert_allclose(_anom(out), _anom(Ef) * lam, rtol=1e-12, atol=1e-13)


def test_multiplicative_forecast_step_acts_before_the_analysis_only():
    Ef, Ea = _pair()
    step = MultiplicativeForecast(1.3)
    Eb, st = step.before_analysis(step.init(Ef), None, Ef, None, None, None, None)
    np.testing.assert_array_equal(Eb, multiplicative(Ef, 1.3))
    assert st == ()
    same, _ = step.after_analysis((), None, Ef, Ea)
    assert same is Ea
    # and the analysis one is its mirror image
    step = MultiplicativeAnalysis(1.3)
    same, _ = step.before_analysis((), None, Ef, None, None, None, None)
    assert same is Ef
    np.testing.assert_array_equal(step.after_analysis((), None, Ef, Ea)[0],
                                  multiplicative(Ea, 1.3))


# ---------------------------------------------------------------- additive


def test_additive_adds_the_operator_draws_recentred():
    Ef, _ = _pair(N=6, n=3)
    A = np.array([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.1, -0.3, 0.7]])
    Q = enkit.Dense(A @ A.T)
    key = jax.random.key(3)
    draws = np.asarray(Q.sample(key, (6,)))
    raw = additive(Ef, Q, key=key, recentre=False)
    np.testing.assert_allclose(raw, Ef + draws, rtol=1e-13)
    rec = additive(Ef, Q, key=key)
    np.testing.assert_allclose(rec, Ef + draws - draws.mean(0), rtol=1e-13)
    np.testing.assert_allclose(np.mean(rec, 0), Ef.mean(0), rtol=1e-13)  # mean unchanged
    np.testing.assert_allclose(_anom(rec), _anom(raw), atol=1e-12)  # same anomalies
    # same key -> bit-identical; another key -> different; integer seed accepted
    assert np.array_equal(rec, additive(Ef, Q, key=key))
    assert not np.allclose(rec, additive(Ef, Q, key=jax.random.key(4)))
    assert np.array_equal(additive(Ef, Q, key=7), additive(Ef, Q, key=jax.random.key(7)))


def test_additive_covariance_grows_by_q():
    # Monte-Carlo: E + eps with E = 0 -> sample covariance of the result ~ Q.
    Q = enkit.Diagonal(jnp.array([0.5, 2.0, 4.0]))
    out = additive(jnp.zeros((40000, 3)), Q, key=0)
    np.testing.assert_allclose(np.cov(np.asarray(out).T), np.diag([0.5, 2.0, 4.0]),
                               atol=0.06)


def test_additive_needs_a_key_and_a_matching_q():
    Ef, _ = _pair(n=3)
    with pytest.raises(TypeError, match="needs key="):
        additive(Ef, 1.0, key=None)
    with pytest.raises(ValueError, match="Q has dimension 4"):
        additive(Ef, enkit.Scalar(1.0, 4), key=0)
    Q = enkit.Scalar(1.0, 3)
    with pytest.raises(TypeError, match="AdditiveForecast draws random numbers"):
        AdditiveForecast(Q).before_analysis((), None, Ef, None, None, None, None)
    with pytest.raises(TypeError, match="AdditiveAnalysis draws random numbers"):
        AdditiveAnalysis(Q).after_analysis((), None, Ef, Ef)


def test_additive_steps_equal_the_pure_function():
    Ef, Ea = _pair(n=3)
    Q = enkit.Diagonal(jnp.array([0.1, 0.2, 0.3]))
    key = jax.random.key(11)
    Eb, _ = AdditiveForecast(Q).before_analysis((), key, Ef, None, None, None, None)
    np.testing.assert_array_equal(Eb, additive(Ef, Q, key=key))
    Eb, _ = AdditiveForecast(Q, recentre=False).before_analysis((), key, Ef, None, None,
                                                                 None, None)
    np.testing.assert_array_equal(Eb, additive(Ef, Q, key=key, recentre=False))
    Eo, _ = AdditiveAnalysis(Q).after_analysis((), key, Ef, Ea)
    np.testing.assert_array_equal(Eo, additive(Ea, Q, key=key))


# ---------------------------------------------------------------- RTPS / RTPP


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, np.array([0.0, 0.2, 0.5, 0.9, 1.0])])
def test_rtps_gives_exactly_the_blended_spread(alpha):
    Ef, Ea = _pair()
    out = np.asarray(rtps(Ef, Ea, alpha))
    sf, sa = Ef.std(0, ddof=1), Ea.std(0, ddof=1)
    np.testing.assert_allclose(out.std(0, ddof=1), (1 - alpha) * sa + alpha * sf, rtol=1e-12)
    np.testing.assert_allclose(out.mean(0), Ea.mean(0), rtol=1e-13)
    # a per-variable rescaling of the analysis anomalies, nothing else
    ratio = _anom(out) / _anom(Ea)
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), rtol=1e-10)
    if np.all(alpha == 0):
        np.testing.assert_allclose(out, Ea, rtol=1e-13)


def test_rtps_leaves_a_variable_without_analysis_spread_alone():
    Ef, Ea = _pair()
    Ea[:, 2] = 5.0
    out = np.asarray(rtps(Ef, Ea, 0.5))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, 2], 5.0)
    g = jax.grad(lambda a: jnp.sum(rtps(Ef, Ea, a) ** 2))(0.5)
    assert np.isfinite(g)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0, np.array([0.0, 0.2, 0.5, 0.9, 1.0])])
def test_rtpp_is_the_exact_blend_of_anomalies(alpha):
    Ef, Ea = _pair()
    out = np.asarray(rtpp(Ef, Ea, alpha))
    np.testing.assert_allclose(out.mean(0), Ea.mean(0), rtol=1e-13)
    np.testing.assert_allclose(_anom(out), (1 - alpha) * _anom(Ea) + alpha * _anom(Ef),
                               rtol=1e-12, atol=1e-13)


def test_rtps_rtpp_steps_equal_their_functions_and_check_shapes():
    Ef, Ea = _pair()
    for Step, f in ((RTPS, rtps), (RTPP, rtpp)):
        out, _ = Step(0.35).after_analysis((), None, Ef, Ea)
        np.testing.assert_array_equal(out, f(Ef, Ea, 0.35))
        same, _ = Step(0.35).before_analysis((), None, Ef, None, None, None, None)
        assert same is Ef
        with pytest.raises(ValueError, match="Ef and Ea must both have shape"):
            f(Ef[:-1], Ea, 0.5)


# ---------------------------------------------------------------- adaptive


def _adaptive_problem(seed=0, N=10, n=6, m=4):
    rng = np.random.default_rng(seed)
    Ef = rng.normal(size=(N, n)) * 1.5
    H = rng.normal(size=(m, n))
    A = rng.normal(size=(m, m))
    R = A @ A.T + np.eye(m)
    y = rng.normal(size=m) * 10
    return Ef, H, R, y


def _adaptive_numpy(Ef, H, R, y, rho_b, v_b):
    """Miyoshi (2011) / Li et al. (2009) update, written with R⁻¹ traces."""
    HE = Ef @ H.T
    d = y - HE.mean(0)
    HPH = np.cov(HE.T, ddof=1)
    Ri = np.linalg.inv(R)
    p = len(y)
    t = np.trace(Ri @ HPH)
    rho_o = (d @ Ri @ d - p) / t
    v_o = 2 / p * ((rho_b * t + p) / t) ** 2
    return (rho_b * v_o + rho_o * v_b) / (v_b + v_o), v_b * v_o / (v_b + v_o)


def test_adaptive_inflation_matches_the_closed_form():
    Ef, H, R, y = _adaptive_problem()
    rho, v = _adaptive_numpy(Ef, H, R, y, 1.2, 0.3)
    assert rho > 1.2  # this problem asks for more inflation
    est = adaptive_inflation(Ef, y, H, R, InflationEstimate(1.2, 0.3))
    np.testing.assert_allclose(est.factor, rho, rtol=1e-12)
    np.testing.assert_allclose(est.variance, v, rtol=1e-12)
    # a callable h gives the same; bounds clip the factor
    est2 = adaptive_inflation(Ef, y, lambda x: jnp.asarray(H) @ x, enkit.Dense(R),
                              InflationEstimate(1.2, 0.3))
    np.testing.assert_allclose(est2.factor, rho, rtol=1e-12)
    cap = 0.5 * (1.2 + rho)
    capped = adaptive_inflation(Ef, y, H, R, InflationEstimate(1.2, 0.3), max_factor=cap)
    np.testing.assert_allclose(capped.factor, cap, rtol=1e-14)
    # a consistent ensemble (tiny innovation) asks for deflation, refused by default
    y0 = (Ef @ H.T).mean(0)
    assert float(adaptive_inflation(Ef, y0, H, R, InflationEstimate(1.0, 1.0)).factor) == 1.0
    low = adaptive_inflation(Ef, y0, H, R, InflationEstimate(1.0, 1.0), min_factor=0.0)
    assert float(low.factor) < 1.0


@pytest.mark.parametrize("diag", [True, False], ids=["Diagonal", "Dense"])
def test_adaptive_inflation_ignores_absent_observations(diag):
    Ef, H, R, y = _adaptive_problem(m=6)
    if diag:
        R = np.diag(np.diag(R))
    mask = np.array([True, False, True, True, False, True])
    keep = np.flatnonzero(mask)
    ref = adaptive_inflation(Ef, y[keep], H[keep], R[np.ix_(keep, keep)],
                             InflationEstimate(1.1, 0.2))
    np.testing.assert_allclose(ref.factor, _adaptive_numpy(
        Ef, H[keep], R[np.ix_(keep, keep)], y[keep], 1.1, 0.2)[0], rtol=1e-12)
    y_bad = np.where(mask, y, np.nan)
    H_bad = np.where(mask[:, None], H, 1e6)
    Rop = enkit.Diagonal(np.diag(R)) if diag else enkit.Dense(R)
    for yy, HH in ((y, H), (y_bad, H_bad)):
        est = adaptive_inflation(Ef, yy, HH, Rop, InflationEstimate(1.1, 0.2), mask=mask)
        np.testing.assert_allclose(est.factor, ref.factor, rtol=1e-12)
        np.testing.assert_allclose(est.variance, ref.variance, rtol=1e-12)
    # nothing observed: the prior comes back unchanged
    none = adaptive_inflation(Ef, y_bad, H_bad, Rop, InflationEstimate(1.1, 0.2),
                              mask=np.zeros(6, bool))
    assert (float(none.factor), float(none.variance)) == (1.1, 0.2)


def test_adaptive_step_equals_the_function_and_carries_its_state():
    Ef, H, R, y = _adaptive_problem()
    step = AdaptiveMultiplicative(initial=1.2, variance=0.3, update_variance=True)
    st0 = step.init(Ef)
    assert (float(st0.factor), float(st0.variance)) == (1.2, 0.3)
    Eb, st1 = step.before_analysis(st0, None, Ef, y, H, R, None)
    est = adaptive_inflation(Ef, y, H, R, InflationEstimate(1.2, 0.3))
    np.testing.assert_allclose(st1.factor, est.factor, rtol=1e-14)
    np.testing.assert_allclose(Eb, multiplicative(Ef, np.sqrt(est.factor)), rtol=1e-13)
    # the next cycle starts from the posterior (variance carried) ...
    _, st2 = step.before_analysis(st1, None, Ef, y, H, R, None)
    np.testing.assert_allclose(st2.factor, adaptive_inflation(Ef, y, H, R, st1).factor,
                               rtol=1e-14)
    # ... or with the prior variance reset (Miyoshi's fixed variance)
    fixed = AdaptiveMultiplicative(initial=1.2, variance=0.3)
    _, sf2 = fixed.before_analysis(st1, None, Ef, y, H, R, None)
    ref = adaptive_inflation(Ef, y, H, R, InflationEstimate(st1.factor, 0.3))
    np.testing.assert_allclose(sf2.factor, ref.factor, rtol=1e-14)
    np.testing.assert_allclose(sf2.variance, ref.variance, rtol=1e-14)


_RNG = np.random.default_rng(0)
_UD_R = enkit.Diagonal(jnp.asarray(_RNG.uniform(0.5, 2.0, size=60)))
_UD_H = jnp.asarray(np.eye(60) + 0.3 * _RNG.normal(size=(60, 60)))


@partial(jax.jit, static_argnames="cycles")
def _underdispersed_run(step, rho_true, cycles=1500):
    """Each cycle: a fresh forecast ensemble (N=20, n=m=60) whose true error
    covariance is rho_true times its sample covariance, observed through H
    with a diagonal R. Returns the final state and the factor of each cycle."""
    N, n = 20, 60
    H, R = _UD_H, _UD_R

    def cycle(state, key):
        k1, k2, k3 = jax.random.split(key, 3)
        Ef = 5.0 + jax.random.normal(k1, (N, n))
        xbar = Ef.mean(0)
        X = (Ef - xbar) / jnp.sqrt(N - 1.0)
        truth = xbar + jnp.sqrt(rho_true) * (jax.random.normal(k2, (N,)) @ X)
        y = H @ truth + jnp.sqrt(R.variances) * jax.random.normal(k3, (n,))
        _, state = step.before_analysis(state, None, Ef, y, H, R, None)
        return state, state.factor

    keys = jax.random.split(jax.random.key(0), cycles)
    return jax.lax.scan(cycle, step.init(jnp.zeros((N, n))), keys)


def test_adaptive_inflation_finds_the_true_underdispersion():
    # Running estimate (variance carried): settles at the truth.
    state, factors = _underdispersed_run(AdaptiveMultiplicative(update_variance=True), 2.0)
    sd = np.sqrt(float(state.variance))
    assert sd < 0.02
    assert abs(factors[-1] - 2.0) < 0.05, (factors[-1], sd)
    # Fixed prior variance (Miyoshi 2011): tracks it with fluctuations
    # (stationary sd ~0.15 here, so average a long stretch).
    _, factors = _underdispersed_run(AdaptiveMultiplicative(), 2.0)
    factors = np.asarray(factors[200:])
    assert abs(factors.mean() - 2.0) < 0.06, factors.mean()
    assert factors.std() > 0.05  # it keeps tracking, it does not freeze
    # Over-dispersion: deflation only when the lower bound allows it.
    _, factors = _underdispersed_run(AdaptiveMultiplicative(), 0.5)
    assert factors.min() == 1.0 and factors.mean() < 1.02
    state, _ = _underdispersed_run(
        AdaptiveMultiplicative(min_factor=0.0, update_variance=True), 0.5)
    assert abs(state.factor - 0.5) < 0.02, state.factor


# ---------------------------------------------------------------- Ledoit-Wolf


def _ledoit_wolf_numpy(E):
    """Ledoit & Wolf (2004), section 3.1, term by term (normalised Frobenius)."""
    N, n = E.shape
    X = E - E.mean(0)
    S = X.T @ X / N

    def norm2(A):
        return np.trace(A @ A.T) / n

    m = np.trace(S) / n
    d2 = norm2(S - m * np.eye(n))
    b2bar = sum(norm2(np.outer(x, x) - S) for x in X) / N**2
    b2 = min(b2bar, d2)
    a2 = d2 - b2
    return b2 / d2 * m * np.eye(n) + a2 / d2 * S, b2 / d2


@pytest.mark.parametrize("N,n", [(8, 20), (50, 6), (200, 10)])
def test_ledoit_wolf_matches_the_2004_formula(N, n):
    rng = np.random.default_rng(N)
    L = np.tril(rng.normal(size=(n, n))) + np.diag(rng.uniform(1, 3, size=n))
    E = 2.0 + rng.normal(size=(N, n)) @ L.T
    S_star, rho = ledoit_wolf(E)
    ref, rho_ref = _ledoit_wolf_numpy(E)
    np.testing.assert_allclose(rho, rho_ref, rtol=1e-11)
    np.testing.assert_allclose(S_star, ref, rtol=1e-11, atol=1e-12)
    assert 0.0 < float(rho) < 1.0
    S = np.cov(E.T, bias=True)
    np.testing.assert_allclose(np.trace(S_star), np.trace(S), rtol=1e-12)
    assert np.linalg.eigvalsh(np.asarray(S_star)).min() > 0  # even when N < n


def test_ledoit_wolf_intensity_limits():
    rng = np.random.default_rng(0)
    # spherical truth: shrinking towards mu*I is right -> strong shrinkage
    _, rho_sph = ledoit_wolf(rng.normal(size=(30, 20)))
    # strongly non-spherical truth with many members -> little shrinkage
    _, rho_ani = ledoit_wolf(rng.normal(size=(2000, 5)) * np.array([10, 5, 1, 0.5, 0.1]))
    assert float(rho_sph) > 0.7
    assert float(rho_ani) < 0.01
    # already proportional to I: S* = S and intensity reported as 0
    E = np.vstack([np.eye(3), -np.eye(3)])
    S_star, rho = ledoit_wolf(E)
    assert float(rho) == 0.0
    np.testing.assert_allclose(S_star, np.eye(3) / 3, rtol=1e-14)
    with pytest.raises(ValueError, match="N >= 2"):
        ledoit_wolf(np.ones((1, 3)))


# ---------------------------------------------------------------- composition, jit, vmap


def test_chain_runs_steps_in_order_with_their_own_subkeys():
    Ef, H, R, y = _adaptive_problem()
    Ea = Ef * 0.5
    Q = enkit.Scalar(0.1, Ef.shape[1])
    step = chain(MultiplicativeForecast(1.1), AdaptiveMultiplicative(), AdditiveForecast(Q),
                 RTPS(0.5), RTPP(0.2))
    key = jax.random.key(0)
    st = step.init(Ef)
    Eb, st = step.before_analysis(st, key, Ef, y, H, R, None)
    E1 = multiplicative(Ef, 1.1)
    est = adaptive_inflation(E1, y, H, R, InflationEstimate(1.0, 0.01))
    E2 = multiplicative(E1, jnp.sqrt(est.factor))
    E3 = additive(E2, Q, key=jax.random.fold_in(key, 2))
    np.testing.assert_allclose(Eb, E3, rtol=1e-13)
    np.testing.assert_allclose(st[1].factor, est.factor, rtol=1e-14)
    Eo, _ = step.after_analysis(st, key, Eb, Ea)
    np.testing.assert_allclose(Eo, rtpp(Eb, rtps(Eb, Ea, 0.5), 0.2), rtol=1e-13)
    with pytest.raises(TypeError, match="chain takes InflationStep"):
        chain(RTPS(0.5), 1.02)


def test_jit_and_vmap_over_hyperparameters():
    Ef, Ea = _pair()
    alphas = jnp.linspace(0.0, 1.0, 5)
    for f in (rtps, rtpp):
        swept = jax.vmap(partial(f, Ef, Ea))(alphas)
        for a, out in zip(alphas, swept):
            np.testing.assert_allclose(out, f(Ef, Ea, a), rtol=1e-12)
        np.testing.assert_allclose(jax.jit(f)(Ef, Ea, 0.3), f(Ef, Ea, 0.3), rtol=1e-13)

    # a step is a pytree: vmap over its leaf, jit it without recompiling
    @jax.jit
    def after(step, Ef, Ea):
        return step.after_analysis((), None, Ef, Ea)[0]

    swept = jax.vmap(lambda a: after(RTPS(a), Ef, Ea))(alphas)
    np.testing.assert_allclose(swept[2], rtps(Ef, Ea, alphas[2]), rtol=1e-12)
    after(RTPP(0.3), Ef, Ea)
    size = after._cache_size()
    after(RTPP(0.7), Ef, Ea)
    assert after._cache_size() == size

    # adaptive: vmap over the prior variance; additive: vmap over Q's variance
    Ef2, H, R, y = _adaptive_problem()

    def adapt(v):
        step = AdaptiveMultiplicative(variance=v)
        return step.before_analysis(step.init(Ef2), None, Ef2, y, H, R, None)[1].factor

    vs = jnp.array([0.01, 0.1, 1.0])
    np.testing.assert_allclose(jax.vmap(adapt)(vs), [adapt(v) for v in vs], rtol=1e-12)
    key = jax.random.key(1)
    add = jax.vmap(lambda s: additive(Ef, enkit.Scalar(s, 5), key=key))(jnp.array([0.1, 0.4]))
    np.testing.assert_allclose(_anom(add[1]) - _anom(Ef), 2 * (_anom(add[0]) - _anom(Ef)),
                               rtol=1e-10, atol=1e-12)


def test_float32_inputs_stay_float32():
    Ef, Ea = (a.astype(np.float32) for a in _pair())
    Ef2, H, R, y = (a.astype(np.float32) for a in _adaptive_problem())
    outs = [multiplicative(Ef, 1.1), rtps(Ef, Ea, 0.5), rtpp(Ef, Ea, 0.5),
            additive(Ef, 0.1, key=0), *ledoit_wolf(Ef),
            *adaptive_inflation(Ef2, y, H, R, InflationEstimate(1.0, 0.1)),
            AdaptiveMultiplicative().before_analysis(
                AdaptiveMultiplicative().init(Ef2), None, Ef2, y, H, R, None)[0]]
    for out in outs:
        assert out.dtype == jnp.float32
        assert np.all(np.isfinite(out))


# ---------------------------------------------------------------- in the driver


def test_driver_runs_the_steps_like_a_python_loop_with_masks():
    """chain(adaptive, RTPS) through ``assimilate`` with absent observations
    (NaN placeholders) equals a loop over the pure functions."""
    model = enkit.Lorenz96(n=12)
    rng = np.random.default_rng(5)
    E0 = 8.0 + rng.normal(size=(10, 12))
    K, m = 6, 6
    ys = 8.0 + rng.normal(size=(K, m))
    mask = rng.uniform(size=(K, m)) > 0.3
    mask[3] = False  # a time with nothing observed: no analysis, no update
    ys = np.where(mask, ys, np.nan)
    R = enkit.Diagonal(jnp.linspace(0.5, 1.5, m))

    def h(x):
        return x[::2]

    step = chain(AdaptiveMultiplicative(variance=0.05, update_variance=True), RTPS(0.3))
    res = enkit.assimilate(model, E0, ys, enkit.etkf, h=h, R=R, inflation=step, mask=mask,
                           store=("analysis_ensemble",))
    E, est = jnp.asarray(E0), InflationEstimate(1.0, 0.05)
    for k in range(K):
        E = jax.vmap(model)(E)
        if mask[k].any():
            keep = np.flatnonzero(mask[k])
            est = adaptive_inflation(E, ys[k], h, R, est, mask=mask[k])
            Eb = multiplicative(E, jnp.sqrt(est.factor))
            Ea = enkit.etkf(Eb, ys[k][keep], lambda x, keep=keep: h(x)[keep],
                            enkit.Diagonal(R.variances[keep]))
            E = rtps(Eb, Ea, 0.3)
        np.testing.assert_allclose(res.analysis_ensemble[k], E, rtol=1e-10, atol=1e-10)
    assert float(est.factor) > 1.0


def test_driver_additive_same_key_same_run_and_needs_a_key():
    model = enkit.Lorenz96(n=10)
    rng = np.random.default_rng(3)
    E0, ys = 8.0 + rng.normal(size=(6, 10)), 8.0 + rng.normal(size=(4, 10))
    run = partial(enkit.assimilate, model, E0, ys, enkit.etkf, h=np.eye(10), R=1.0,
                  inflation=AdditiveForecast(enkit.Scalar(0.05, 10)))
    a, b, c = run(key=5), run(key=5), run(key=6)
    assert np.array_equal(np.asarray(a.ensemble), np.asarray(b.ensemble))
    assert not np.allclose(a.ensemble, c.ensemble)
    with pytest.raises(TypeError, match="AdditiveForecast draws random numbers"):
        run()


def test_driver_sweep_over_rtps_alpha_is_a_vmap():
    model = enkit.Lorenz96(n=10)
    rng = np.random.default_rng(4)
    E0, ys = 8.0 + rng.normal(size=(6, 10)), 8.0 + rng.normal(size=(5, 10))

    def run(alpha):
        return enkit.assimilate(model, E0, ys, enkit.etkf, h=np.eye(10), R=1.0,
                                inflation=RTPS(alpha)).analysis_mean

    alphas = jnp.array([0.0, 0.5, 0.9])
    swept = jax.vmap(run)(alphas)
    for a, out in zip(alphas, swept):
        np.testing.assert_allclose(out, run(a), rtol=1e-10, atol=1e-12)
    assert not np.allclose(swept[0], swept[2])


@pytest.fixture(scope="module")
def lorenz96_twin():
    """Lorenz-96 (n=40, F=8, dt=0.05), all variables observed every step with
    R = I, N=20 members: the ETKF without inflation diverges."""
    model = enkit.Lorenz96(n=40, F=8.0, dt=0.05)
    R = enkit.Scalar(1.0, 40)
    k_truth, k_obs, k_ens = jax.random.split(jax.random.key(0), 3)
    x0 = model.F + jax.random.normal(k_truth, (40,))
    twin = enkit.twin_experiment(model, x0, key=k_obs, n_obs=1500, h=_identity, R=R,
                                 spinup=1000)
    E0 = twin.x0 + jax.random.normal(k_ens, (20, 40))

    def mean_rmse(inflation):
        res = enkit.assimilate(model, E0, twin.observations, enkit.etkf, h=_identity, R=R,
                               inflation=inflation)
        return float(jnp.mean(res.rmse(twin.truth)[300:]))

    return mean_rmse, mean_rmse(None)


def _identity(x):
    return x


@pytest.mark.parametrize(
    "inflation",
    [RTPS(0.4), RTPP(0.6), AdaptiveMultiplicative()],
    ids=["RTPS", "RTPP", "adaptive"],
)
def test_inflation_keeps_lorenz96_etkf_n20_from_diverging(lorenz96_twin, inflation):
    # 1500 cycles, first 300 discarded. Measured (seed 0, float64): no
    # inflation ~3.0, RTPS 0.4 ~0.21, RTPP 0.6 ~0.26, adaptive ~0.19.
    mean_rmse, none = lorenz96_twin
    assert none > 1.5
    rmse = mean_rmse(inflation)
    assert rmse < 0.3, rmse
    assert rmse < none / 5
