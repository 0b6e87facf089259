"""calibrate(): ask/tell driver, records, stopping rules, scan = loop.

Linear problem G(u) = A u: one calibrate step must equal a hand-made tell,
records must line up, stopping rules fire at the iteration computed by
hand, UKI reaches the exact Gaussian posterior, and the compiled scan
reproduces the Python loop to round-off.
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.kalman_numpy import kalman_analysis

import enkit
from enkit._pytree import register_dataclass
from enkit.inversion import (
    EKI,
    ESMDA,
    ETKI,
    UKI,
    Bounded,
    ConstrainedProcess,
    DataMisfitController,
    FixedStep,
    GaussianPrior,
    Parameter,
    ParameterSpace,
    calibrate,
    calibrate_scan,
    data_misfit,
    ensemble_collapsed,
    esmda_constant_alpha,
)

P, D, N = 3, 5, 12
RNG = np.random.default_rng(0)
A = RNG.normal(size=(D, P))
U_TRUE = np.array([0.5, -1.0, 1.5])
GAMMA = 0.05 * np.eye(D)
Y = A @ U_TRUE + np.sqrt(0.05) * RNG.normal(size=D)
U0 = RNG.normal(size=(N, P))


def G(u):
    return jnp.asarray(A) @ u


def test_one_step_equals_tell_by_hand_and_records_line_up():
    key = jax.random.key(3)
    for proc in (EKI(), EKI(stochastic=False)):
        res = calibrate(G, proc, U0, Y, GAMMA, key=key, max_iterations=1)
        s = proc.init(jax.random.split(key)[0], U0)
        s, info = proc.tell(s, proc.ask(s) @ A.T, Y, GAMMA, dt=1.0)
        np.testing.assert_allclose(res.parameters(1), s.ensemble, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(res.misfit(0), info.misfit, rtol=1e-12)
        assert res.n_iterations == 1 and res.stopped_by == "max_iterations"
    res = calibrate(G, EKI(), U0, Y, GAMMA, key=key, max_iterations=4)
    I = res.n_iterations
    assert res.ensembles.shape == (I + 1, N, P) and res.forward_outputs.shape == (I + 1, N, D)
    assert res.misfits.shape == (I + 1,) and res.dts.shape == (I,)
    np.testing.assert_allclose(res.parameters(0), U0)
    for k in range(I + 1):  # outputs[k] belong to ensembles[k], misfit[k] to outputs[k]
        np.testing.assert_allclose(res.outputs(k), res.parameters(k) @ A.T, rtol=1e-12)
        np.testing.assert_allclose(res.misfit(k), data_misfit(res.outputs(k), Y, GAMMA),
                                   rtol=1e-12)
    np.testing.assert_allclose(res.times, np.arange(I + 1.0))
    np.testing.assert_allclose(res.mean, res.parameters(-1).mean(0), rtol=1e-12)
    np.testing.assert_allclose(res.covariance, np.cov(np.asarray(res.parameters(-1)).T),
                               rtol=1e-10)
    with pytest.raises(IndexError, match="iteration"):
        res.parameters(I + 1)


def test_discrepancy_principle_stops_at_the_first_iteration_below_tau_sqrt_d():
    proc = ETKI()
    full = calibrate(G, proc, U0, Y, GAMMA, max_iterations=8)
    m = np.asarray(full.misfits)
    assert np.all(np.diff(m[:4]) < 0)
    tau = 0.5 * (m[2] + m[3]) / np.sqrt(D)  # fires first at ensemble 3
    res = calibrate(G, proc, U0, Y, GAMMA, max_iterations=8, tau=tau)
    assert res.stopped_by == "discrepancy" and res.n_iterations == 3
    np.testing.assert_allclose(res.ensembles, full.ensembles[:4], rtol=1e-12)
    # ETKI on a linear map: 3 unit steps are one Kalman update with noise Γ/3
    xa, Pa = kalman_analysis(U0.mean(0), np.cov(U0.T), Y, A, GAMMA / 3)
    np.testing.assert_allclose(res.mean, xa, rtol=1e-9)
    np.testing.assert_allclose(res.covariance, Pa, rtol=1e-8, atol=1e-12)


def test_data_misfit_controller_stops_at_time_one():
    res = calibrate(G, EKI(stochastic=False), U0, Y, GAMMA, max_iterations=50,
                    scheduler=DataMisfitController())
    assert res.stopped_by == "scheduler" and res.n_iterations < 50
    assert float(res.times[-1]) == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.asarray(res.times[:-1]) < 1.0)
    np.testing.assert_allclose(np.cumsum(res.dts), res.times[1:], rtol=1e-12)


def test_uki_reaches_the_exact_posterior_and_esmda_runs_its_schedule():
    m0, C0 = np.zeros(P), 2.0 * np.eye(P)
    res = calibrate(G, UKI(GaussianPrior(m0, C0)), None, Y, GAMMA, max_iterations=40)
    xa, Pa = kalman_analysis(m0, C0, Y, A, GAMMA)
    np.testing.assert_allclose(res.mean, xa, rtol=1e-9)
    np.testing.assert_allclose(res.covariance, Pa, rtol=1e-8, atol=1e-14)
    assert res.ensembles.shape == (41, 2 * P + 1, P)
    assert res.settings["scheduler"] == "FixedStep(dt=0.5)"
    # UKI's misfit is that of the central sigma point
    np.testing.assert_allclose(res.misfit(-1), np.linalg.norm((Y - A @ res.parameters(-1)[0])
                                                              / np.sqrt(0.05)), rtol=1e-10)

    es = ESMDA(esmda_constant_alpha(4), stochastic=False)
    r = calibrate(G, es, U0, Y, GAMMA)
    assert r.n_iterations == 4 and float(r.times[-1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scheduler must be None"):
        calibrate(G, es, U0, Y, GAMMA, scheduler=FixedStep(1.0))
    with pytest.raises(ValueError, match="exceeds the 4 steps"):
        calibrate(G, es, U0, Y, GAMMA, max_iterations=5)


def test_collapse_stop_and_constrained_process():
    res = calibrate(G, ETKI(), U0, Y, GAMMA, scheduler=FixedStep(30.0), collapse_tol=0.05,
                    max_iterations=50)
    assert res.stopped_by == "collapse"
    assert bool(ensemble_collapsed(res.parameters(-1), U0, tol=0.05))
    assert not bool(ensemble_collapsed(res.parameters(-2), U0, tol=0.05))

    space = ParameterSpace([Parameter("a", size=P, lower=-5.0, upper=5.0)])
    cp = ConstrainedProcess(EKI(stochastic=False), space)
    r = calibrate(lambda x: G(x), cp, U0, Y, GAMMA, max_iterations=3)
    X = np.asarray(r.ensembles)
    assert X.max() < 5 and X.min() > -5
    np.testing.assert_allclose(r.parameters(3), Bounded(-5.0, 5.0).forward(r.state.ensemble),
                               rtol=1e-12)


def test_scan_equals_the_python_loop():
    for proc in (EKI(stochastic=False), EKI()):
        loop = calibrate(G, proc, U0, Y, GAMMA, key=5, max_iterations=6)
        scan = calibrate_scan(G, proc, U0, Y, GAMMA, key=5, n_iterations=6)
        assert scan.stopped_by == loop.stopped_by == "max_iterations"
        np.testing.assert_allclose(scan.ensembles, loop.ensembles, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(scan.misfits, loop.misfits, rtol=1e-10)
        np.testing.assert_allclose(scan.dts, loop.dts)
    tau = 0.5 * (float(loop.misfits[1]) + float(loop.misfits[2])) / np.sqrt(D)
    loop = calibrate(G, EKI(), U0, Y, GAMMA, key=5, max_iterations=6, tau=tau)
    scan = calibrate_scan(G, EKI(), U0, Y, GAMMA, key=5, n_iterations=6, tau=tau)
    assert loop.stopped_by == scan.stopped_by == "discrepancy"
    assert loop.n_iterations == scan.n_iterations == 2
    np.testing.assert_allclose(scan.ensembles, loop.ensembles, rtol=1e-10, atol=1e-12)
    s = DataMisfitController()
    loop = calibrate(G, EKI(stochastic=False), U0, Y, GAMMA, scheduler=s, max_iterations=30)
    scan = calibrate_scan(G, EKI(stochastic=False), U0, Y, GAMMA, scheduler=s, n_iterations=30)
    assert loop.stopped_by == scan.stopped_by == "scheduler"
    np.testing.assert_allclose(scan.times, loop.times, rtol=1e-10)
    np.testing.assert_allclose(scan.ensembles, loop.ensembles, rtol=1e-9, atol=1e-12)


@dataclasses.dataclass(frozen=True)
class CountingStep:
    """FixedStep that records every trace of its step_size (test helper)."""

    dt: float
    traces: list = dataclasses.field(default_factory=list, compare=False)

    def step_size(self, time, G, y, noise):
        self.traces.append(1)
        return jnp.asarray(self.dt, G.dtype)


register_dataclass(CountingStep, data_fields=["dt"], meta_fields=["traces"])


def test_second_call_with_new_values_does_not_retrace():
    traces = []

    def f(u):
        traces.append(1)
        return jnp.asarray(A) @ u

    log = []
    calibrate(f, EKI(), U0, Y, GAMMA, key=1, max_iterations=2, scheduler=CountingStep(1.0, log))
    n, n_step = len(traces), len(log)
    assert n >= 1 and n_step >= 1
    calibrate(f, EKI(), U0 + 1.0, Y + 0.5, 0.1 * GAMMA, key=2, max_iterations=3,
              scheduler=CountingStep(0.5, log))
    assert len(traces) == n and len(log) == n_step  # neither forward nor tell recompiled
    calibrate_scan(f, EKI(), U0, Y, GAMMA, key=1, n_iterations=2)
    n = len(traces)
    calibrate_scan(f, EKI(), U0 - 1.0, Y, 2 * GAMMA, key=3, n_iterations=2, tau=None)
    assert len(traces) == n


def test_observation_series_callback_and_logging(caplog):
    class Series:  # a different data vector each iteration
        def at(self, k):
            return Y + 0.1 * k, GAMMA * (1 + k)

    seen = []
    with caplog.at_level(logging.INFO, logger="enkit.inversion"):
        res = calibrate(G, EKI(stochastic=False), U0, Series(), None, max_iterations=3,
                        callback=seen.append, progress=True)
    assert [r.iteration for r in seen] == [0, 1, 2, 3]
    assert len([r for r in caplog.records if "calibrate iteration" in r.message]) == 4
    proc, s = EKI(stochastic=False), EKI(stochastic=False).init(None, U0)
    for k in range(3):
        y, g = Series().at(k)
        s, _ = proc.tell(s, s.ensemble @ A.T, y, g, dt=1.0)
    np.testing.assert_allclose(res.parameters(3), s.ensemble, rtol=1e-12)
    np.testing.assert_allclose(res.misfit(2), data_misfit(res.outputs(2), Y + 0.2, 3 * GAMMA),
                               rtol=1e-12)
    stop = calibrate(G, EKI(stochastic=False), U0, Y, GAMMA, max_iterations=9,
                     callback=lambda r: r.iteration == 2)
    assert stop.stopped_by == "callback" and stop.n_iterations == 2


def test_repr_states_the_defaults():
    res = calibrate(G, EKI(), U0, Y, GAMMA, key=0, max_iterations=1)
    text = repr(res)
    for part in ("EKI(stochastic=True", "FixedStep(dt=1.0)", "max_iterations=1", "tau=None",
                 "failure=Raise()", "stopped_by='max_iterations'", "collapse_tol=None"):
        assert part in text, (part, text)
    d = calibrate(G, EKI(), U0, Y, GAMMA, key=0)
    assert d.settings["max_iterations"] == 20 and d.n_iterations == 20


def test_wrong_arguments_raise_clear_errors():
    with pytest.raises(TypeError, match="forward must be a callable"):
        calibrate(3, EKI(), U0, Y, GAMMA, key=0)
    with pytest.raises(TypeError, match="process must have init/ask/tell"):
        calibrate(G, object(), U0, Y, GAMMA, key=0)
    with pytest.raises(ValueError, match="failure must be"):
        calibrate(G, EKI(), U0, Y, GAMMA, key=0, failure="skip")
    with pytest.raises(ValueError, match="max_iterations must be"):
        calibrate(G, EKI(), U0, Y, GAMMA, key=0, max_iterations=-1)
    with pytest.raises(ValueError, match="tau must be positive"):
        calibrate(G, EKI(), U0, Y, GAMMA, key=0, tau=0.0)
    with pytest.raises(ValueError, match="y must have shape"):
        calibrate(G, EKI(), U0, Y[None], GAMMA, key=0)
    with pytest.raises(ValueError, match="noise must be None"):
        calibrate(G, EKI(), U0, type("S", (), {"at": lambda s, k: (Y, GAMMA)})(), GAMMA, key=0)
    with pytest.raises(TypeError, match="needs key"):
        calibrate(G, EKI(), U0, Y, GAMMA)
    with pytest.raises(ValueError, match=r"forward must map one member"):
        calibrate(lambda u: u, EKI(), U0, Y, GAMMA, key=0)
    with pytest.raises(TypeError, match="scheduler must have step_size"):
        calibrate(G, EKI(), U0, Y, GAMMA, key=0, scheduler=1.0)
    with pytest.raises(ValueError, match="'ignore' or 'resample'"):
        calibrate_scan(G, EKI(), U0, Y, GAMMA, key=0, n_iterations=2, failure="ignore")
    with pytest.raises(TypeError, match="executor must be"):
        calibrate(G, EKI(), U0, Y, GAMMA, key=0, executor=map)
    assert enkit.calibrate is calibrate


def test_float32_smoke_and_processes_that_need_a_scheduler():
    U32, y32 = U0.astype(np.float32), Y.astype(np.float32)
    res = calibrate(lambda u: jnp.asarray(A, jnp.float32) @ u, EKI(stochastic=False), U32,
                    y32, GAMMA.astype(np.float32), max_iterations=4)
    assert res.ensembles.dtype == jnp.float32 and res.forward_outputs.dtype == jnp.float32
    assert float(res.misfits[-1]) < 0.1 * float(res.misfits[0])
    bb = calibrate(lambda u: A.astype(np.float32) @ u, EKI(stochastic=False), U32, y32,
                   GAMMA.astype(np.float32), max_iterations=4, black_box=True)
    np.testing.assert_allclose(bb.ensembles, res.ensembles, rtol=1e-4, atol=1e-5)
    # A (user's) process whose tell requires dt needs a scheduler; EKS
    # takes its adaptive step without one.
    class NeedsDt(EKI):
        def tell(self, state, G, y, noise, *, dt):
            return super().tell(state, G, y, noise, dt=dt)

    with pytest.raises(ValueError, match="NeedsDt.tell needs dt"):
        calibrate(G, NeedsDt(), U0, Y, GAMMA, key=0)
    prior = GaussianPrior(np.zeros(P), np.eye(P))
    res = calibrate(G, enkit.inversion.EKS(prior), U0, Y, GAMMA, key=0, max_iterations=3)
    assert res.dts.shape == (3,) and np.all(np.asarray(res.dts) > 0)


def test_result_to_xarray_lines_up_with_the_records():
    res = calibrate(G, EKI(stochastic=False), U0, Y, GAMMA, key=0, max_iterations=3)
    ds = res.to_xarray(y=Y)
    assert ds.sizes["iteration"] == 4 and ds.sizes["step"] == 3
    np.testing.assert_array_equal(ds["parameters"].values[2], np.asarray(res.parameters(2)))
    np.testing.assert_array_equal(ds["misfit"].values, np.asarray(res.misfits))
    assert list(ds["parameter"].values) == ["p0", "p1", "p2"]
