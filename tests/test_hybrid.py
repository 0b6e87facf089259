"""E3DVAR (enkit.e3dvar) and the ensemble-variational EnVar / 4DEnVar.

Ground truths: on a linear-Gaussian problem the E3DVAR mean is the Kalman
(BLUE) mean with the hybrid covariance (1 − a) B + a P_e, which is var3d's
with B at a = 0 and the ETKF's at a = 1, and its anomalies are the base
analysis's (ADAO's recentring); EnVar is the ETKF; one 4DEnVar window of a
linear model is the Kalman smoother's estimate of the initial state
(tests/reference/kalman_smoother.py, plus one RTS step back to t₀).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.kalman_numpy import kalman_analysis, sample_stats
from reference.kalman_smoother import kalman_filter, rts_smoother

import enkit
from enkit.covariance import Dense, Diagonal
from enkit.variational._common import lbfgs

N_STATE, M_OBS, N_MEMBERS = 4, 3, 8


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(3)
    n, m, N = N_STATE, M_OBS, N_MEMBERS
    A = rng.normal(size=(n, n))
    return dict(E=rng.normal(size=(N, n)) + 1.0, H=rng.normal(size=(m, n)),
                R=np.diag(rng.uniform(0.5, 2.0, m)), B=A @ A.T + np.eye(n),
                y=rng.normal(size=m))


def _hybrid_mean(p, a):
    """The Kalman mean of the forecast sample mean with (1 − a) B + a P_e."""
    xf, Pe = sample_stats(p["E"])
    return kalman_analysis(xf, (1 - a) * p["B"] + a * Pe, p["y"], p["H"], p["R"])[0]


def _exact(base, B, a):
    """An E3DVAR run to round-off: no cost-decrease stop."""
    return enkit.e3dvar(base, B, equilibrium=a, cost_tolerance=None)


def _analyse(scheme, E, y, h, R, **kw):
    """scheme(E, y, h, R, **kw) compiled as one program (run eagerly, its
    L-BFGS loop compiles many small ones, the slow part of these tests)."""
    return jax.jit(lambda E, y, R, kw: scheme(E, y, h, R, **kw))(E, y, R, kw)


# --- E3DVAR -------------------------------------------------------------------------------


def test_equilibrium_zero_is_var3d(linear):
    p = linear
    Ea = _analyse(_exact(enkit.etkf, Dense(p["B"]), 0.0), p["E"], p["y"], p["H"], p["R"])
    r = enkit.var3d(p["E"].mean(axis=0), Dense(p["B"]), p["y"], p["H"], p["R"])
    np.testing.assert_allclose(Ea.mean(axis=0), r.analysis, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.analysis, _hybrid_mean(p, 0.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("base", [enkit.etkf, enkit.mlef], ids=["etkf", "mlef"])
def test_equilibrium_one_is_the_base_update(linear, base):
    p = linear
    Ea = _analyse(_exact(base, Dense(p["B"]), 1.0), p["E"], p["y"], p["H"], p["R"])
    Eb = base(p["E"], p["y"], p["H"], p["R"])
    np.testing.assert_allclose(Ea, Eb, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Ea.mean(axis=0), _hybrid_mean(p, 1.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("a", [0.25, 0.5, 0.8])
def test_hybrid_mean_is_the_kalman_mean_with_the_hybrid_covariance(linear, a):
    p = linear
    h = jax.tree_util.Partial(lambda x: jnp.asarray(p["H"]) @ x)  # a callable h
    Ea = _analyse(_exact(enkit.etkf, Dense(p["B"]), a), p["E"], p["y"], h,
                  Diagonal(np.diag(p["R"])))
    np.testing.assert_allclose(Ea.mean(axis=0), _hybrid_mean(p, a), rtol=0, atol=1e-11)


def test_recentred_ensemble_keeps_the_base_analysis_anomalies(linear):
    """ADAO's recentring: x_a + (Eₐ' − mean Eₐ'), Eₐ' the base analysis
    (stochastic EnKF, same key), also for a nonlinear h."""
    p = linear
    key = jax.random.key(7)

    def h(x):
        return jnp.asarray(p["H"]) @ x + 0.1 * x[:M_OBS] ** 2

    scheme = enkit.e3dvar(enkit.enkf, 2.0, equilibrium=0.4, cost_tolerance=None)
    Ea = _analyse(scheme, p["E"], p["y"], h, p["R"], key=key)
    Eb = enkit.enkf(p["E"], p["y"], h, p["R"], key=key)
    np.testing.assert_allclose(Ea - Ea.mean(axis=0), Eb - Eb.mean(axis=0), rtol=0, atol=1e-12)
    # the mean is the hybrid 3D-Var minimiser: compare with var3d's with B_h
    xf, Pe = sample_stats(p["E"])
    r = enkit.var3d(xf, Dense(0.6 * 2.0 * np.eye(N_STATE) + 0.4 * Pe), p["y"], h, p["R"])
    np.testing.assert_allclose(Ea.mean(axis=0), r.analysis, rtol=0, atol=1e-5)


def test_without_key_a_stochastic_base_raises(linear):
    p = linear
    with pytest.raises(TypeError, match="key"):
        enkit.e3dvar(enkit.enkf, 1.0)(p["E"], p["y"], p["H"], p["R"])


def test_cost_decrease_stop():
    """lbfgs stops at the first iteration whose relative cost decrease
    (J_k − J_{k+1}) / max(|J_k|, |J_{k+1}|, 1) is at most cost_tolerance."""
    def cost(v):  # Rosenbrock, a long L-BFGS path
        return jnp.sum(100.0 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2)

    v0 = jnp.array([-1.2, 1.0, -0.5])

    @jax.jit  # the iteration bound and the tolerance traced: one compilation each
    def run(k, c):
        return lbfgs(cost, v0, max_iterations=k, tolerance=0.0, memory_size=5,
                     cost_tolerance=c)

    J = [cost(v0)]
    for k in range(1, 30):
        v, it = run(k, -1.0)  # a negative tolerance never stops
        assert int(it) == k
        J.append(cost(v))
    J = np.array(J)
    rel = (J[:-1] - J[1:]) / np.maximum(np.maximum(abs(J[:-1]), abs(J[1:])), 1.0)
    for c in (1e-1, 3e-3):
        first = int(np.flatnonzero(rel <= c)[0]) + 1
        v, it = run(1000, c)
        assert int(it) == first
        np.testing.assert_allclose(cost(v), J[first], rtol=1e-12)


def test_cost_tolerance_changes_the_scheme(linear):
    p = linear
    B = Dense(p["B"])
    # cost_tolerance 10 stops at a relative decrease of 0.22
    loose = enkit.e3dvar(enkit.etkf, B, equilibrium=0.5, cost_tolerance=10.0)
    Ea = _analyse(loose, p["E"], p["y"], p["H"], p["R"])
    err_loose = np.abs(Ea.mean(axis=0) - _hybrid_mean(p, 0.5)).max()
    Ed = _analyse(enkit.e3dvar(enkit.etkf, B, equilibrium=0.5), p["E"], p["y"], p["H"], p["R"])
    assert np.abs(Ed.mean(axis=0) - _hybrid_mean(p, 0.5)).max() < 1e-6 < err_loose


def test_jit_vmap_and_no_recompilation(linear):
    p = linear
    B = Dense(p["B"])

    @jax.jit
    def analyse(scheme, E):
        return scheme(E, p["y"], p["H"], p["R"])

    a = jnp.array([0.0, 0.3, 1.0])
    batched = jax.vmap(lambda a: analyse(enkit.e3dvar(enkit.etkf, B, equilibrium=a,
                                                      cost_tolerance=None), p["E"]))(a)
    for i, ai in enumerate(np.asarray(a)):
        np.testing.assert_allclose(batched[i].mean(axis=0), _hybrid_mean(p, ai), atol=1e-11)
    analyse(enkit.e3dvar(enkit.etkf, B, equilibrium=0.2), p["E"])
    before = analyse._cache_size()
    analyse(enkit.e3dvar(enkit.etkf, B, equilibrium=0.7), p["E"] + 1.0)
    assert analyse._cache_size() == before


def test_runs_in_assimilate(linear):
    """The driver's cycle equals a Python loop of forecast + scheme."""
    p = linear
    rng = np.random.default_rng(0)
    M = np.eye(N_STATE) + 0.1 * rng.normal(size=(N_STATE, N_STATE))
    model = jax.tree_util.Partial(lambda x: jnp.asarray(M) @ x)
    ys = rng.normal(size=(3, M_OBS))
    scheme = enkit.e3dvar(functools.partial(enkit.etkf), Dense(p["B"]), equilibrium=0.5)
    res = enkit.assimilate(model, p["E"], ys, scheme, h=p["H"], R=p["R"],
                           store=("analysis_mean", "analysis_ensemble"))
    E = p["E"]
    step = jax.jit(lambda E, y: scheme(E @ M.T, y, p["H"], p["R"]))  # compiled once
    for k, y in enumerate(ys):
        E = step(E, y)
        np.testing.assert_allclose(res.analysis_ensemble[k], E, atol=1e-10)


def test_no_observations_returns_the_base_analysis(linear):
    p = linear
    Ea = enkit.e3dvar(enkit.etkf, 1.0)(p["E"], np.zeros(0), np.zeros((0, N_STATE)), 1.0)
    np.testing.assert_array_equal(Ea, p["E"])


def test_float32(linear):
    p = linear
    E = p["E"].astype(np.float32)
    Ea = _analyse(enkit.e3dvar(enkit.etkf, Dense(p["B"].astype(np.float32)), equilibrium=0.5),
                  E, p["y"].astype(np.float32), p["H"].astype(np.float32),
                  p["R"].astype(np.float32))
    assert Ea.dtype == jnp.float32
    np.testing.assert_allclose(Ea.mean(axis=0), _hybrid_mean(p, 0.5), atol=1e-4)


def test_argument_errors(linear):
    p = linear
    B = Dense(p["B"])
    for a in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match="equilibrium"):
            enkit.e3dvar(enkit.etkf, B, equilibrium=a)
    with pytest.raises(TypeError, match="base"):
        enkit.e3dvar("etkf", B)
    with pytest.raises(TypeError, match="B"):
        enkit.e3dvar(enkit.etkf, "B")
    with pytest.raises(ValueError, match="B"):
        enkit.e3dvar(enkit.etkf, -1.0)
    with pytest.raises(ValueError, match="B"):
        enkit.e3dvar(enkit.etkf, np.ones((2, 3)))
    with pytest.raises(ValueError, match="cost_tolerance"):
        enkit.e3dvar(enkit.etkf, B, cost_tolerance=-1e-3)
    with pytest.raises(ValueError, match="max_iterations"):
        enkit.e3dvar(enkit.etkf, B, max_iterations=0)
    with pytest.raises(ValueError, match="memory_size"):
        enkit.e3dvar(enkit.etkf, B, memory_size=1.5)
    with pytest.raises(TypeError):
        enkit.e3dvar(enkit.etkf, B, equlibrium=0.5)  # misspelled option
    with pytest.raises(ValueError, match="B has dimension"):
        enkit.e3dvar(enkit.etkf, Dense(np.eye(2)))(p["E"], p["y"], p["H"], p["R"])


# --- EnVar / 4DEnVar ----------------------------------------------------------------------


def test_envar_linear_is_the_etkf_and_the_kalman_update(linear):
    p = linear
    Ea = enkit.envar(p["E"], p["y"], p["H"], p["R"])
    np.testing.assert_allclose(Ea, enkit.etkf(p["E"], p["y"], p["H"], p["R"]), atol=1e-12)
    xa, Pa = kalman_analysis(*sample_stats(p["E"]), p["y"], p["H"], p["R"])
    mean, cov = sample_stats(Ea)
    np.testing.assert_allclose(mean, xa, atol=1e-12)
    np.testing.assert_allclose(cov, Pa, atol=1e-12)


@pytest.fixture(scope="module")
def window():
    rng = np.random.default_rng(5)
    n, m, N, K = N_STATE, 2, 9, 3
    M = np.eye(n) + 0.2 * rng.normal(size=(n, n))
    return dict(M=M, H=rng.normal(size=(m, n)), R=np.diag([0.5, 1.5]),
                E0=rng.normal(size=(N, n)), ys=rng.normal(size=(K, m)),
                model=jax.tree_util.Partial(lambda x: jnp.asarray(M) @ x))


def _smoothed_x0(p, M):
    """Kalman filter + RTS smoother, then one RTS step back to t₀."""
    x0, P0 = sample_stats(p["E0"])
    filt = kalman_filter(x0, P0, p["ys"], M, p["H"], p["R"])
    xs, Ps = rts_smoother(filt, M)
    J = P0 @ M.T @ np.linalg.inv(filt["Pf"][0])
    return x0 + J @ (xs[0] - filt["xf"][0]), P0 + J @ (Ps[0] - filt["Pf"][0]) @ J.T


@pytest.mark.parametrize("bundle_epsilon", [None, 1e-4])
def test_envar4d_linear_window_is_the_kalman_smoother(window, bundle_epsilon):
    p = window
    r = enkit.envar4d(p["model"], p["E0"], p["ys"], p["H"], p["R"],
                      bundle_epsilon=bundle_epsilon)
    xs, Ps = _smoothed_x0(p, p["M"])
    np.testing.assert_allclose(r.x0, xs, atol=1e-10)
    np.testing.assert_allclose(sample_stats(r.ensemble)[1], Ps, atol=1e-10)
    traj = [xs]
    for _ in p["ys"]:
        traj.append(p["M"] @ traj[-1])
    np.testing.assert_allclose(r.trajectory, np.array(traj[1:]), atol=1e-10)


def test_envar4d_steps_per_obs(window):
    p = window
    r = enkit.envar4d(p["model"], p["E0"], p["ys"], p["H"], p["R"], steps_per_obs=2)
    xs, _ = _smoothed_x0(p, p["M"] @ p["M"])
    np.testing.assert_allclose(r.x0, xs, atol=1e-10)


def test_envar4d_cycle_is_the_window_analysis_propagated(window):
    p = window
    K = p["ys"].shape[0]
    r = enkit.envar4d(p["model"], p["E0"], p["ys"], p["H"], p["R"])
    c = enkit.envar4d_cycle(p["model"], p["E0"], p["ys"], h=p["H"], R=p["R"], window=K)
    np.testing.assert_allclose(c.analysis_mean, r.trajectory, atol=1e-10)
    # overlapping windows: the iEnKS with that shift
    s = enkit.envar4d_cycle(p["model"], p["E0"], p["ys"], h=p["H"], R=p["R"], window=2,
                            shift=1)
    i = enkit.ienks(p["model"], p["E0"], p["ys"], h=p["H"], R=p["R"], lag=2, shift=1)
    np.testing.assert_array_equal(s.analysis_mean, i.analysis_mean)
    # window 1: the cycled EnVar (IEnKF) in the driver
    d = enkit.envar4d_cycle(p["model"], p["E0"], p["ys"], h=p["H"], R=p["R"], window=1)
    a = enkit.assimilate(p["model"], p["E0"], p["ys"], enkit.over_window(enkit.envar),
                         h=p["H"], R=p["R"])
    np.testing.assert_allclose(d.analysis_mean, a.analysis_mean, atol=1e-10)


def test_envar4d_errors(window):
    p = window
    with pytest.raises(TypeError, match="model"):
        enkit.envar4d(None, p["E0"], p["ys"], p["H"], p["R"])
    with pytest.raises(ValueError, match="observations"):
        enkit.envar4d(p["model"], p["E0"], p["ys"][0], p["H"], p["R"])
    with pytest.raises(ValueError, match=r"h as a matrix"):
        enkit.envar4d(p["model"], p["E0"], p["ys"], np.ones((3, 3)), p["R"])
    with pytest.raises(ValueError, match="steps_per_obs"):
        enkit.envar4d(p["model"], p["E0"], p["ys"], p["H"], p["R"], steps_per_obs=0)
    with pytest.raises(ValueError, match="bundle_epsilon"):
        enkit.envar4d(p["model"], p["E0"], p["ys"], p["H"], p["R"], bundle_epsilon=-1.0)
    with pytest.raises(ValueError, match="max_iterations"):
        enkit.envar4d(p["model"], p["E0"], p["ys"], p["H"], p["R"], max_iterations=0)
    with pytest.raises(ValueError, match="window"):
        enkit.envar4d_cycle(p["model"], p["E0"], p["ys"], h=p["H"], R=p["R"], window=0)
    with pytest.raises(ValueError, match="shift"):
        enkit.envar4d_cycle(p["model"], p["E0"], p["ys"], h=p["H"], R=p["R"], window=2,
                            shift=3)
