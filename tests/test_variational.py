"""3D-Var and incremental 4D-Var (enkit.variational).

Ground truths: the Kalman (BLUE) analysis for 3D-Var on a linear-Gaussian
problem; for 4D-Var over a window with a linear model, the batch
least-squares solution and a Kalman filter + RTS smoother (the smoothed
initial state; with model noise Q for weak constraint), whose filter mean at
the window end must equal the end of the 4D-Var trajectory (strong
constraint).
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.covariance import Dense, Diagonal, Scalar
from enkit.filters.kalman import kalman_update
from enkit.models.cases import sakov2012_lorenz63
from enkit.variational import var3d, var4d

var3d_module = importlib.import_module("enkit.variational.var3d")  # the modules, which the
var4d_module = importlib.import_module("enkit.variational.var4d")  # functions' names shadow

N_STATE, M_OBS, K_OBS, STEPS = 4, 3, 3, 2


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    n, m = N_STATE, M_OBS
    A = rng.normal(size=(n, n))
    B = A @ A.T + n * np.eye(n)
    M = np.eye(n) + 0.15 * rng.normal(size=(n, n))
    return dict(
        B=B, M=M, H=rng.normal(size=(m, n)), R=np.diag(rng.uniform(0.5, 2.0, m)),
        xb=rng.normal(size=n), y=rng.normal(size=m), ys=rng.normal(size=(K_OBS, m)),
        Q=0.05 * np.eye(n) + 0.01 * np.ones((n, n)),
        model=jax.tree_util.Partial(lambda x: jnp.asarray(M) @ x),
    )


def _kalman_smoother(p, Q):
    """Kalman filter then RTS smoother at every model step; returns the
    smoothed x₀ and the filter mean at the window end."""
    M, n = p["M"], p["xb"].shape[0]
    Qd = np.zeros((n, n)) if Q is None else Q
    x, P = p["xb"], p["B"]
    filt, pred = [(x, P)], []
    for s in range(1, K_OBS * STEPS + 1):
        xf, Pf = M @ x, M @ P @ M.T + Qd
        pred.append((xf, Pf))
        x, P = xf, Pf
        if s % STEPS == 0:
            x, P = map(np.asarray, kalman_update(xf, Pf, p["ys"][s // STEPS - 1], p["H"],
                                                 p["R"]))
        filt.append((x, P))
    xs = filt[-1][0]
    for s in range(K_OBS * STEPS - 1, -1, -1):
        (xa, Pa), (xf, Pf) = filt[s], pred[s]
        xs = xa + Pa @ M.T @ np.linalg.solve(Pf, xs - xf)
    return xs, filt[-1][0]


# --- 3D-Var -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_callable", [False, True])
def test_var3d_equals_kalman_analysis(linear, as_callable):
    p = linear
    H = p["H"]
    h = (lambda x: jnp.asarray(H) @ x) if as_callable else H
    r = var3d(p["xb"], Dense(p["B"]), p["y"], h, Diagonal(np.diag(p["R"])))
    mean_a, _ = kalman_update(p["xb"], p["B"], p["y"], H, p["R"])
    np.testing.assert_allclose(r.analysis, mean_a, rtol=0, atol=1e-8)
    assert float(r.gradient_norm) < 1e-9
    # Jb, Jo at the analysis, from their definitions in x
    d = np.asarray(r.analysis) - p["xb"]
    innov = p["y"] - H @ np.asarray(r.analysis)
    np.testing.assert_allclose(r.Jb, 0.5 * d @ np.linalg.solve(p["B"], d), rtol=1e-10)
    np.testing.assert_allclose(r.Jo, 0.5 * innov @ np.linalg.solve(p["R"], innov), rtol=1e-10)
    np.testing.assert_allclose(r.cost, r.Jb + r.Jo, rtol=1e-12)
    assert 0 < int(r.iterations) <= 200


@pytest.fixture(scope="module")
def nonlinear():
    rng = np.random.default_rng(3)
    n = 3
    xb = rng.normal(size=n)
    truth = xb + rng.normal(size=n)

    def h(x):
        return jnp.stack([x[0] ** 2 / 2 + x[1], jnp.sin(x[1]) + x[2], x[0] * x[2]])

    y = np.asarray(h(truth)) + 0.1 * rng.normal(size=3)
    return dict(xb=xb, B=np.diag([1.0, 0.5, 0.8]), y=y, h=h, R=Scalar(0.1, 3))


def test_var3d_nonlinear_h_stationary_point(nonlinear):
    p = nonlinear
    r = var3d(p["xb"], p["B"], p["y"], p["h"], p["R"])
    assert float(r.cost) < float(r.initial_cost)
    assert float(r.gradient_norm) < 1e-8
    # the physical-space gradient of J(x) vanishes too (independent of the control variable)
    def J(x):
        d, e = x - p["xb"], p["y"] - p["h"](x)
        return 0.5 * d @ jnp.linalg.solve(p["B"], d) + 0.5 * e @ e / 0.1

    assert float(jnp.max(jnp.abs(jax.grad(J)(r.analysis)))) < 1e-7
    np.testing.assert_allclose(J(r.analysis), r.cost, rtol=1e-10)


def test_var4d_identity_model_one_time_is_var3d(nonlinear):
    """A window of one step of the identity model, one observation: 4D-Var's
    x₀ and 3D-Var's analysis minimise the same cost (Gauss–Newton vs L-BFGS)."""
    p = nonlinear
    r3 = var3d(p["xb"], p["B"], p["y"], p["h"], p["R"])
    r4 = var4d(jax.tree_util.Partial(lambda x: x), p["xb"], p["B"], p["y"][None], p["h"],
               p["R"], outer_loops=50)
    np.testing.assert_allclose(r4.x0, r3.analysis, rtol=0, atol=1e-8)
    np.testing.assert_allclose(r4.cost, r3.cost, rtol=1e-10)
    assert float(r4.gradient_norm) < 1e-8 and float(r4.Jq) == 0.0


# --- 4D-Var, linear-Gaussian ------------------------------------------------------------


def test_var4d_strong_equals_batch_least_squares_and_kalman_smoother(linear):
    p = linear
    M, H, B, R, xb, ys = p["M"], p["H"], p["B"], p["R"], p["xb"], p["ys"]
    r = var4d(p["model"], xb, B, ys, H, R, steps_per_obs=STEPS)
    G = [H @ np.linalg.matrix_power(M, STEPS * (k + 1)) for k in range(K_OBS)]
    Ri = np.linalg.inv(R)
    hess = np.linalg.inv(B) + sum(g.T @ Ri @ g for g in G)
    x0 = xb + np.linalg.solve(hess, sum(g.T @ Ri @ (ys[k] - g @ xb) for k, g in enumerate(G)))
    np.testing.assert_allclose(r.x0, x0, rtol=0, atol=1e-8)
    smoothed0, filtered_end = _kalman_smoother(p, None)
    np.testing.assert_allclose(r.x0, smoothed0, rtol=0, atol=1e-8)
    np.testing.assert_allclose(r.trajectory[-1], filtered_end, rtol=0, atol=1e-8)
    expect = np.stack([np.linalg.matrix_power(M, STEPS * (k + 1)) @ x0 for k in range(K_OBS)])
    np.testing.assert_allclose(r.trajectory, expect, rtol=0, atol=1e-8)
    assert r.model_error is None and float(r.Jq) == 0.0
    assert float(r.gradient_norm) < 1e-9 and float(r.cost) < float(r.initial_cost)
    assert int(r.outer_iterations) <= 2  # linear: the first loop is exact, the second confirms


def test_var4d_weak_constraint_equals_kalman_smoother_with_model_noise(linear):
    p = linear
    r = var4d(p["model"], p["xb"], p["B"], p["ys"], p["H"], p["R"], steps_per_obs=STEPS,
              Q=p["Q"])
    smoothed0, _ = _kalman_smoother(p, p["Q"])
    np.testing.assert_allclose(r.x0, smoothed0, rtol=0, atol=1e-8)
    assert r.model_error.shape == (K_OBS, STEPS, N_STATE)
    # trajectory = the model plus the estimated errors; Jq from η and Q
    x, rows = np.asarray(r.x0), []
    for k in range(K_OBS):
        for s in range(STEPS):
            x = p["M"] @ x + np.asarray(r.model_error[k, s])
        rows.append(x)
    np.testing.assert_allclose(r.trajectory, np.stack(rows), rtol=0, atol=1e-10)
    eta = np.asarray(r.model_error).reshape(-1, N_STATE)
    Jq = 0.5 * np.sum(eta * np.linalg.solve(p["Q"], eta.T).T)
    np.testing.assert_allclose(r.Jq, Jq, rtol=1e-8)
    strong = var4d(p["model"], p["xb"], p["B"], p["ys"], p["H"], p["R"], steps_per_obs=STEPS)
    assert float(r.cost) < float(strong.cost)  # more freedom, lower minimum


def test_second_call_does_not_recompile(linear):
    p = linear
    var4d(p["model"], p["xb"], p["B"], p["ys"], p["H"], p["R"], steps_per_obs=STEPS)
    before = var4d_module._var4d._cache_size()
    var4d(p["model"], p["xb"] + 1.0, 2.0 * p["B"], p["ys"] - 1.0, p["H"], p["R"],
          steps_per_obs=STEPS)
    assert var4d_module._var4d._cache_size() == before
    var3d(p["xb"], p["B"], p["y"], p["H"], p["R"])
    before = var3d_module._var3d._cache_size()
    var3d(p["xb"] - 1.0, 3.0 * p["B"], p["y"] + 1.0, 2.0 * p["H"], p["R"])
    assert var3d_module._var3d._cache_size() == before


# --- 4D-Var, nonlinear ------------------------------------------------------------------


def test_var4d_nonlinear_h_stationary_point(nonlinear):
    q = nonlinear
    model = jax.tree_util.Partial(lambda x: x[:3] + 0.1 * jnp.sin(x[:3]))
    ys = np.stack([q["y"], q["y"] + 0.1])
    r = var4d(model, q["xb"], q["B"], ys, q["h"], q["R"], outer_loops=30)
    assert float(r.cost) < float(r.initial_cost)
    assert float(r.gradient_norm) < 1e-8


@pytest.fixture(scope="module")
def lorenz_cycles():
    """Six 4D-Var windows of two observation times (50 steps) on the Sakov et
    al. (2012) Lorenz-63 case, each window's background the previous
    analysis trajectory's end; returns analysis and background RMSEs."""
    case = sakov2012_lorenz63(cycles=12)
    twin = case.twin(seed=0, cycles=12)
    K = 2
    xb = twin.x0 + 2.0**0.5 * jax.random.normal(jax.random.key(5), (3,))
    rmse_a, rmse_b, results = [], [], []
    for w in range(6):
        ys, truth = twin.observations[w * K:(w + 1) * K], twin.truth[w * K:(w + 1) * K]
        r = var4d(case.model, xb, 2.0, ys, case.h, case.R, steps_per_obs=case.steps_per_obs)
        results.append(r)
        rmse_a.append(float(enkit.rmse(r.trajectory, truth).mean()))
        xs, x = [], xb
        for _ in range(K):
            for _ in range(case.steps_per_obs):
                x = case.model(x)
            xs.append(x)
        rmse_b.append(float(enkit.rmse(jnp.stack(xs), truth).mean()))
        xb = r.trajectory[-1]
    return np.array(rmse_a), np.array(rmse_b), results


def test_var4d_lorenz63_closer_to_truth_than_background(lorenz_cycles):
    rmse_a, rmse_b, results = lorenz_cycles
    assert rmse_a.mean() < 0.5 * rmse_b.mean()
    assert rmse_a.mean() < 2.0**0.5  # better than the observations (σ = sqrt 2)
    for r in results:
        assert float(r.cost) <= float(r.initial_cost)
        assert float(r.gradient_norm) < 1e-4


def test_var4d_cycle_equals_python_loop_of_var4d(lorenz_cycles):
    """The compiled cycle over windows = the Python loop of var4d calls in the fixture."""
    _, _, results = lorenz_cycles
    case = sakov2012_lorenz63(cycles=12)
    twin = case.twin(seed=0, cycles=12)
    xb = twin.x0 + 2.0**0.5 * jax.random.normal(jax.random.key(5), (3,))
    c = enkit.var4d_cycle(case.model, xb, 2.0, twin.observations, case.h, case.R, window=2,
                          steps_per_obs=case.steps_per_obs)
    assert c.analysis.shape == (12, 3) and c.x0.shape == (6, 3)
    np.testing.assert_allclose(c.analysis, np.concatenate([r.trajectory for r in results]),
                               rtol=0, atol=1e-8)
    np.testing.assert_allclose(c.cost, [float(r.cost) for r in results], rtol=1e-8)
    np.testing.assert_allclose(c.background[1:], c.analysis[1::2][:-1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of window = 5"):
        enkit.var4d_cycle(case.model, xb, 2.0, twin.observations, case.h, case.R, window=5)


# --- float32 and errors -----------------------------------------------------------------


def test_float32_smoke(linear):
    p = linear
    f32 = {k: np.asarray(p[k], np.float32) for k in ("xb", "B", "y", "ys", "H", "R")}
    r3 = var3d(f32["xb"], f32["B"], f32["y"], f32["H"], f32["R"])
    assert r3.analysis.dtype == jnp.float32
    mean_a, _ = kalman_update(p["xb"], p["B"], p["y"], p["H"], p["R"])
    np.testing.assert_allclose(r3.analysis, mean_a, atol=1e-3)
    model = jax.tree_util.Partial(lambda x: jnp.asarray(p["M"], x.dtype) @ x)
    r4 = var4d(model, f32["xb"], f32["B"], f32["ys"], f32["H"], f32["R"],
               steps_per_obs=STEPS, Q=np.float32(0.05))
    assert r4.x0.dtype == jnp.float32 and r4.trajectory.dtype == jnp.float32
    assert np.all(np.isfinite(r4.trajectory)) and float(r4.cost) < float(r4.initial_cost)


def test_bad_arguments(linear):
    p = linear
    xb, B, y, ys, H, R, model = (p[k] for k in ("xb", "B", "y", "ys", "H", "R", "model"))
    with pytest.raises(ValueError, match="xb must have shape"):
        var3d(xb[None], B, y, H, R)
    with pytest.raises(TypeError, match="xb must have a floating dtype"):
        var3d(np.arange(N_STATE), B, y, H, R)
    with pytest.raises(ValueError, match="xb must be finite"):
        var3d(np.full(N_STATE, np.nan), B, y, H, R)
    with pytest.raises(ValueError, match="B must be a scalar"):
        var3d(xb, np.eye(N_STATE + 1), y, H, R)
    with pytest.raises(ValueError, match="y must have shape"):
        var3d(xb, B, ys, H, R)
    with pytest.raises(ValueError, match=r"h as a matrix must have shape \(m, n\)"):
        var3d(xb, B, y, H.T, R)
    with pytest.raises(ValueError, match="R must be"):
        var3d(xb, B, y, H, np.eye(M_OBS + 1))
    with pytest.raises(ValueError, match="max_iterations must be an integer >= 1"):
        var3d(xb, B, y, H, R, max_iterations=0)
    with pytest.raises(ValueError, match="tolerance must be a finite number"):
        var3d(xb, B, y, H, R, tolerance=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        var3d(xb, B, y, H, R, tol=1e-3)
    with pytest.raises(TypeError, match="model must be a callable"):
        var4d(p["M"], xb, B, ys, H, R)
    with pytest.raises(ValueError, match=r"observations must have shape \(K, m\)"):
        var4d(model, xb, B, y, H, R)
    with pytest.raises(ValueError, match="observations must be finite"):
        var4d(model, xb, B, ys * np.nan, H, R)
    with pytest.raises(ValueError, match="steps_per_obs must be an integer >= 1"):
        var4d(model, xb, B, ys, H, R, steps_per_obs=0)
    with pytest.raises(ValueError, match="outer_loops must be an integer >= 1"):
        var4d(model, xb, B, ys, H, R, outer_loops=True)
    with pytest.raises(ValueError, match="Q must be a scalar"):
        var4d(model, xb, B, ys, H, R, Q=np.eye(N_STATE + 1))
    with pytest.raises(ValueError, match="model must map"):
        var4d(jax.tree_util.Partial(lambda x: x[:2]), xb, B, ys, H, R)


def test_top_level_names():
    assert enkit.var3d is var3d and enkit.var4d is var4d
    assert enkit.variational.Var4DResult is enkit.Var4DResult
