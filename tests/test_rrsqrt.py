"""RRSQRT (reduced-rank square-root Kalman filter, Verlaan & Heemink 1997).

Against a closed-form Kalman filter written here (no truncation: q >= n),
against the truncated eigendecomposition (the reduction), against estkf on
the embedded modes (the analysis), and a short truncated Lorenz-96 run
beside an ETKF of the same size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.linear_state_space import LinearStateSpace
from reference.operators import DiagonalNoDense

import enkit
from enkit.filters.rrsqrt import noise_modes


class LinearProblem(LinearStateSpace):
    """n = 5 states, m = 3 observations, K = 6 cycles, non-diagonal everything."""

    def __init__(self, seed=0, K=6):
        super().__init__(5, seed=seed, K=K)


def cov(modes):
    S = np.asarray(modes)
    return np.swapaxes(S, -1, -2) @ S


def err(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)))


@pytest.fixture(scope="module")
def lp():
    return LinearProblem()


# ------------------------------------------------------ exact Kalman filter


@pytest.mark.parametrize("extra", [0, 2], ids=["q=n", "q=n+2"])
@pytest.mark.parametrize("rkind", ["dense", "diagonal"])
def test_untruncated_rrsqrt_is_the_kalman_filter(lp, extra, rkind):
    R = enkit.Dense(lp.R) if rkind == "dense" else DiagonalNoDense(np.diag(lp.R))
    Rd = lp.R if rkind == "dense" else np.diag(np.diag(lp.R))
    xf, xa, Pf, Pa = lp.kalman_filter(Rd, steps=2)
    st = enkit.rrsqrt_init(lp.x0, enkit.Dense(lp.P0), lp.n + extra)
    res = enkit.rrsqrt_filter(lp.model, st.mean, st.modes, lp.ys, h=lp.H, R=R,
                              model_noise_sqrt=enkit.Dense(lp.Q), steps_per_obs=2)
    assert res.analysis_modes.shape == (lp.K, lp.n + extra, lp.n)
    assert err(res.forecast_mean, xf) < 1e-10 and err(cov(res.forecast_modes), Pf) < 1e-10
    assert err(res.analysis_mean, xa) < 1e-10 and err(cov(res.analysis_modes), Pa) < 1e-10
    np.testing.assert_allclose(res.truncated_variance, 0.0, atol=1e-10)  # nothing dropped


def test_tangent_linear_callable_h_low_rank_noise_and_finite_differences(lp):
    # Q given as square-root rows A (Q = AᵀA), h a linear callable (linearised by
    # jvp), modes by finite differences: all the same Kalman filter on a linear model.
    A = np.linalg.cholesky(lp.Q).T
    xf, xa, Pf, Pa = lp.kalman_filter()
    st = enkit.rrsqrt_init(lp.x0, enkit.Dense(lp.P0), lp.n)
    H = jnp.asarray(lp.H)
    for eps, tol in ((None, 1e-10), (1e-2, 1e-9)):
        res = enkit.rrsqrt_filter(lp.model, st.mean, st.modes, lp.ys, h=lambda x: H @ x,
                                  R=lp.R, model_noise_sqrt=A, epsilon=eps)
        assert err(res.analysis_mean, xa) < tol and err(cov(res.analysis_modes), Pa) < tol


def test_driver_with_rank_reduction_step_is_the_kalman_filter(lp):
    # estkf on the embedded modes + RankReduction before each analysis = RRSQRT.
    xf, xa, Pf, Pa = lp.kalman_filter()
    st = enkit.rrsqrt_init(lp.x0, enkit.Dense(lp.P0), lp.n)
    E0 = enkit.modes_to_ensemble(st.mean, st.modes)
    out = enkit.assimilate(lp.model, E0, lp.ys, enkit.estkf, h=lp.H, R=enkit.Dense(lp.R),
                           inflation=enkit.RankReduction(lp.n, model_noise_sqrt=enkit.Dense(lp.Q)),
                           store=("analysis_mean", "analysis_covariance"))
    assert err(out.analysis_mean, xa) < 1e-10 and err(out.analysis_covariance, Pa) < 1e-10
    # Truncated (q = 3 modes): the same run as rrsqrt_filter with q = 3, both from the
    # three leading modes of P0 (the driver's ensemble then has N = 4 members).
    res = enkit.rrsqrt_filter(lp.model, st.mean, st.modes, lp.ys, h=lp.H, R=lp.R, q=3,
                              model_noise_sqrt=enkit.Dense(lp.Q))
    E3 = enkit.modes_to_ensemble(st.mean, enkit.rrsqrt_reduce(st.modes, 3))
    out = enkit.assimilate(lp.model, E3, lp.ys, enkit.estkf, h=lp.H, R=enkit.Dense(lp.R),
                           inflation=enkit.RankReduction(3, model_noise_sqrt=enkit.Dense(lp.Q)),
                           store=("analysis_mean", "analysis_covariance"))
    assert err(out.analysis_mean, res.analysis_mean) < 1e-10
    assert err(out.analysis_covariance, cov(res.analysis_modes)) < 1e-10


# ------------------------------------------------------------ the reduction


def test_reduction_is_the_truncated_eigendecomposition():
    rng = np.random.default_rng(3)
    p, n, q = 9, 6, 3
    S = rng.normal(size=(p, n)) * np.linspace(2.0, 0.2, p)[:, None]
    P = S.T @ S
    lam, U = np.linalg.eigh(P)
    lam, U = lam[::-1], U[:, ::-1]
    red = np.asarray(enkit.rrsqrt_reduce(S, q))
    assert red.shape == (q, n)
    best = (U[:, :q] * lam[:q]) @ U[:, :q].T
    assert err(red.T @ red, best) < 1e-10
    assert abs(np.trace(P) - np.trace(red.T @ red) - lam[q:].sum()) < 1e-10
    # Eckart–Young: the Frobenius error is that of the best rank-q approximation.
    assert abs(np.linalg.norm(P - red.T @ red) - np.sqrt(np.sum(lam[q:] ** 2))) < 1e-10
    # Orthogonal rows, squared norms the leading eigenvalues in order.
    assert err(red @ red.T, np.diag(lam[:q])) < 1e-10


def test_reduction_to_more_modes_keeps_everything():
    rng = np.random.default_rng(4)
    S = rng.normal(size=(3, 6))
    red = np.asarray(enkit.rrsqrt_reduce(S, 5))
    assert red.shape == (5, 6) and np.all(red[3:] == 0.0)
    assert err(red.T @ red, S.T @ S) < 1e-12


def test_forecast_reports_the_dropped_variance(lp):
    st = enkit.rrsqrt_init(lp.x0, enkit.Dense(lp.P0), lp.n)
    A = np.asarray(noise_modes(enkit.Dense(lp.Q), lp.n, jnp.float64))
    full = np.concatenate([np.asarray(st.modes) @ lp.M.T, A])
    lam = np.linalg.eigvalsh(full.T @ full)[::-1]
    mean, modes = enkit.rrsqrt_forecast(lp.model, st.mean, st.modes, q=2,
                                        model_noise_sqrt=enkit.Dense(lp.Q))
    assert modes.shape == (2, lp.n) and err(mean, lp.M @ lp.x0) < 1e-12
    assert abs(np.trace(cov(modes)) - lam[:2].sum()) < 1e-10
    res = enkit.rrsqrt_filter(lp.model, st.mean, st.modes, lp.ys[:1], h=lp.H, R=lp.R, q=2,
                              model_noise_sqrt=enkit.Dense(lp.Q))
    # rrsqrt_filter first reduces modes0 to q = 2, then forecasts: recompute that way.
    st2 = enkit.rrsqrt_reduce(st.modes, 2)
    full = np.concatenate([np.asarray(st2) @ lp.M.T, A])
    lam = np.linalg.eigvalsh(full.T @ full)[::-1]
    assert abs(float(res.truncated_variance[0]) - lam[2:].sum()) < 1e-10


# ------------------------------------------------------------- the analysis


@pytest.mark.parametrize("q", [2, 7])
def test_analysis_is_estkf_on_the_embedded_modes_and_the_kalman_update(lp, q):
    rng = np.random.default_rng(5)
    mean, modes = rng.normal(size=lp.n), rng.normal(size=(q, lp.n))
    y = rng.normal(size=lp.m)
    R = DiagonalNoDense(np.diag(lp.R))
    ma, Sa = enkit.rrsqrt_analysis(mean, modes, y, lp.H, R)
    Ea = enkit.estkf(enkit.modes_to_ensemble(mean, modes), y, lp.H, enkit.Diagonal(np.diag(lp.R)))
    assert err(enkit.modes_to_ensemble(ma, Sa), Ea) < 1e-10  # member for member
    back = enkit.ensemble_to_modes(Ea)
    assert err(back.mean, ma) < 1e-10 and err(back.modes, Sa) < 1e-10
    xk, Pk = enkit.kalman_update(mean, cov(modes), y, lp.H, np.diag(np.diag(lp.R)))
    assert err(ma, xk) < 1e-10 and err(cov(Sa), Pk) < 1e-10


def test_analysis_without_observations_returns_its_input(lp):
    mean, modes = np.ones(lp.n), np.eye(lp.n)[:2]
    ma, Sa = enkit.rrsqrt_analysis(mean, modes, np.zeros(0), np.zeros((0, lp.n)), 1.0)
    assert np.all(ma == mean) and np.all(Sa == modes)


# ------------------------------------------------- truncated Lorenz-96 smoke


def test_truncated_lorenz96_is_stable_and_close_to_an_etkf_of_the_same_size():
    # Every variable observed (R = I), one step per analysis; Q = 0.05 I acts as the
    # RRSQRT's only regularisation, multiplicative inflation 1.08 the ETKF's. Over
    # seeds 0-5 the RRSQRT's RMSE after spin-up was 0.27-0.31, the ETKF's 0.22-0.26.
    n, K, q = 20, 150, 10
    model = enkit.Lorenz96(n=n)
    rng = np.random.default_rng(1)
    step = jax.jit(model)
    x = 8.0 + rng.normal(size=n)
    for _ in range(300):
        x = step(x)
    x0 = np.asarray(x) + rng.normal(size=n)
    truth = []
    for _ in range(K):
        x = step(x)
        truth.append(np.asarray(x))
    truth = np.array(truth)
    H = np.eye(n)
    ys = truth + rng.normal(size=(K, n))
    st = enkit.rrsqrt_init(x0, 1.0, q)
    res = enkit.rrsqrt_filter(model, st.mean, st.modes, ys, h=H, R=1.0,
                              model_noise_sqrt=enkit.Scalar(0.05, n))
    rr = np.sqrt(np.mean((np.asarray(res.analysis_mean) - truth) ** 2, axis=1))[75:].mean()
    E0 = x0 + rng.normal(size=(q + 1, n))
    out = enkit.assimilate(model, E0, ys, enkit.etkf, h=H, R=1.0, inflation=1.08)
    et = np.sqrt(np.mean((np.asarray(out.analysis_mean) - truth) ** 2, axis=1))[75:].mean()
    assert np.all(np.isfinite(res.analysis_mean)) and rr < 0.5  # well below the obs error 1
    assert 0.7 * et < rr < 1.5 * et, (rr, et)


# ------------------------------------------------------------ bad inputs


def test_bad_inputs_are_refused_naming_the_argument(lp):
    mean, modes = np.zeros(lp.n), np.eye(lp.n)[:2]
    for q in (0, -1):
        with pytest.raises(ValueError, match="q must be an integer >= 1"):
            enkit.rrsqrt_reduce(modes, q)
    for q in (1.5, True, None):
        with pytest.raises(TypeError, match="q must be an integer >= 1"):
            enkit.rrsqrt_reduce(modes, q)
    with pytest.raises(ValueError, match="q must be an integer >= 1"):
        enkit.rrsqrt_forecast(lp.model, mean, modes, q=0)
    with pytest.raises(ValueError, match=r"modes must have shape \(q, n\) = \(q, 5\)"):
        enkit.rrsqrt_analysis(mean, np.eye(4), lp.ys[0], lp.H, lp.R)
    with pytest.raises(ValueError, match="modes must have shape"):
        enkit.rrsqrt_analysis(mean, np.ones(lp.n), lp.ys[0], lp.H, lp.R)
    with pytest.raises(ValueError, match=r"mean must have shape \(n,\)"):
        enkit.rrsqrt_analysis(modes, modes, lp.ys[0], lp.H, lp.R)
    with pytest.raises(ValueError, match=r"h as a matrix must have shape \(m, n\) = \(3, 5\)"):
        enkit.rrsqrt_analysis(mean, modes, lp.ys[0], lp.H.T, lp.R)
    with pytest.raises(ValueError, match=r"h must map one state"):
        enkit.rrsqrt_analysis(mean, modes, lp.ys[0], lambda x: x, lp.R)
    with pytest.raises(ValueError, match="modes must be finite"):
        enkit.rrsqrt_analysis(mean, np.full((2, lp.n), np.nan), lp.ys[0], lp.H, lp.R)
    with pytest.raises(ValueError, match=r"model_noise_sqrt must be .* \(r, n\) = \(r, 5\)"):
        enkit.rrsqrt_forecast(lp.model, mean, modes, model_noise_sqrt=np.ones((3, 4)))
    with pytest.raises(ValueError, match="model_noise_sqrt as a covariance operator"):
        enkit.rrsqrt_forecast(lp.model, mean, modes, model_noise_sqrt=enkit.Scalar(1.0, 4))
    with pytest.raises(ValueError, match="epsilon must be finite and > 0"):
        enkit.rrsqrt_forecast(lp.model, mean, modes, epsilon=0.0)
    with pytest.raises(ValueError, match=r"observations must have shape \(K, m\)"):
        enkit.rrsqrt_filter(lp.model, mean, modes, lp.ys[0], h=lp.H, R=lp.R)
    with pytest.raises(ValueError, match="steps_per_obs must be an integer >= 1"):
        enkit.rrsqrt_filter(lp.model, mean, modes, lp.ys, h=lp.H, R=lp.R, steps_per_obs=0)
    with pytest.raises(ValueError, match="model must map a state of shape"):
        enkit.rrsqrt_filter(lambda x: x[:2], mean, modes, lp.ys, h=lp.H, R=lp.R)
    with pytest.raises(ValueError, match="q must be an integer >= 1"):
        enkit.RankReduction(0)
    E0 = enkit.modes_to_ensemble(mean + 1.0, modes)  # N = 3 members: at most 2 modes
    with pytest.raises(ValueError, match=r"q must be at most N - 1 = 2"):
        enkit.assimilate(lp.model, E0, lp.ys, enkit.estkf, h=lp.H, R=lp.R,
                         inflation=enkit.RankReduction(3))


# ----------------------------------------------------- float32, jit, traces


def test_float32_smoke(lp):
    f32 = np.float32
    st = enkit.rrsqrt_init(lp.x0.astype(f32), enkit.Dense(lp.P0.astype(f32)), lp.n)
    res = enkit.rrsqrt_filter(lp.model, st.mean, st.modes, lp.ys.astype(f32),
                              h=lp.H.astype(f32), R=enkit.Dense(lp.R.astype(f32)), q=3,
                              model_noise_sqrt=enkit.Dense(lp.Q.astype(f32)))
    assert res.analysis_mean.dtype == jnp.float32 and res.analysis_modes.dtype == jnp.float32
    st64 = enkit.rrsqrt_init(lp.x0, enkit.Dense(lp.P0), lp.n)
    ref = enkit.rrsqrt_filter(lp.model, st64.mean, st64.modes, lp.ys, h=lp.H,
                              R=enkit.Dense(lp.R), q=3, model_noise_sqrt=enkit.Dense(lp.Q))
    assert err(res.analysis_mean, ref.analysis_mean) < 1e-3


def test_jit_and_no_recompilation_on_new_values(lp):
    rng = np.random.default_rng(6)
    mean, modes, y = rng.normal(size=lp.n), rng.normal(size=(3, lp.n)), rng.normal(size=lp.m)
    jitted = jax.jit(enkit.rrsqrt_analysis)(mean, modes, y, lp.H, enkit.Dense(lp.R))
    eager = enkit.rrsqrt_analysis(mean, modes, y, lp.H, enkit.Dense(lp.R))
    assert err(jitted[0], eager[0]) < 1e-12 and err(jitted[1], eager[1]) < 1e-12
    red = jax.jit(enkit.rrsqrt_reduce, static_argnums=1)(modes, 2)
    assert err(red, enkit.rrsqrt_reduce(modes, 2)) < 1e-12

    traces = []
    M = jnp.asarray(lp.M)

    def model(x):
        traces.append(1)  # runs when traced, not when the compiled program runs
        return M @ x

    def run(scale):
        st = enkit.rrsqrt_init(lp.x0 * scale, enkit.Dense(lp.P0 * scale), 3)
        return enkit.rrsqrt_filter(model, st.mean, st.modes, lp.ys * scale, h=lp.H,
                                   R=enkit.Dense(lp.R * scale),
                                   model_noise_sqrt=enkit.Dense(lp.Q * scale))

    a = run(1.0)
    count = len(traces)
    assert count > 0
    b = run(2.0)
    assert len(traces) == count  # the second call reused the compiled program
    assert not np.allclose(a.analysis_mean, b.analysis_mean)
