"""Every output name of ``assimilate(store=...)`` and every ADAO alias:
shapes and values against a NumPy recomputation from the stored ensembles,
the running optimum (lowest cost so far) on a hand-computed case whose costs
are not monotone, the compiled scan against the Python loop, a resumed
checkpoint, the 4-D driver, a stream, and the xarray layout."""

import importlib.util

import numpy as np
import pytest

import enkit
import enkit.assimilation.checkpoint
from enkit.assimilation import cycle

N, n, m, K = 6, 3, 2, 6
M = np.array([[0.9, 0.2, 0.0], [-0.1, 0.8, 0.3], [0.0, -0.2, 0.95]])
H = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
R_VAR = np.array([0.5, 0.8])
NAMES = tuple(cycle.OUTPUTS)
# The aliases whose meaning changed to follow ADAO's (enkit name they are now).
ADAO_MEANING = {
    "CurrentState": "analysis_ensemble",
    "ForecastState": "forecast_ensemble",
    "CurrentOptimum": "optimum_mean",
    "SimulatedObservationAtCurrentOptimum": "simulated_obs_optimum",
    "SimulatedObservationAtCurrentState": "simulated_obs_forecast_ensemble",
    "InnovationAtCurrentState": "innovation_forecast_ensemble",
    "APosterioriCorrelations": "analysis_correlations",
    "CostFunctionJAtCurrentOptimum": "cost_J_optimum",
    "CostFunctionJbAtCurrentOptimum": "cost_Jb_optimum",
    "CostFunctionJoAtCurrentOptimum": "cost_Jo_optimum",
    "IndexOfOptimum": "index_of_optimum",
    "CurrentIterationNumber": "cycle_number",
    "CurrentStepNumber": "cycle_number",
}


def _model(x):
    return x @ M.T


def _identity(x):
    return x


def _problem():
    rng = np.random.default_rng(4)
    E0 = 1.0 + rng.normal(size=(N, n))
    ys = rng.normal(size=(K, m)) * np.array([1.0, 3.0, 0.3, 2.0, 0.5, 1.5])[:, None]
    mask = np.ones((K, m), bool)
    mask[1, 0] = False  # one absent value
    mask[3] = False  # a cycle without observations
    return E0, ys, mask


def _run(model=_model, store=NAMES, **options):
    E0, ys, mask = _problem()
    return enkit.assimilate(model, E0, ys, enkit.etkf, h=H, R=enkit.Diagonal(R_VAR),
                            mask=mask, inflation=1.1, store=store, **options)


@pytest.fixture(scope="module")
def compiled_all():
    return _run()


@pytest.fixture(scope="module")
def python_all():
    return _run(model=enkit.BlackBoxModel(lambda x: M @ x))


def _running_optimum(J, observed):
    """Row of lowest J so far among observed cycles (−1 before the first)."""
    best, out = -1, []
    for k in range(len(J)):
        if observed[k] and (best < 0 or J[k] < J[best]):
            best = k
        out.append(best)
    return np.array(out)


def test_every_output_name_has_its_shape_and_numpy_value(compiled_all):
    res = compiled_all
    _, ys, mask = _problem()
    Ef, Ea = np.asarray(res.forecast_ensemble), np.asarray(res.analysis_ensemble)
    Rinv = np.diag(1.0 / R_VAR)
    expect = {name: [] for name in NAMES}
    for k in range(K):
        f, a = Ef[k], Ea[k]
        xf, xa = f.mean(0), a.mean(0)
        Pf, Pa = np.cov(f.T), np.cov(a.T)
        w = mask[k].astype(float)
        y = ys[k] * w
        hf, ha = (H @ xf) * w, (H @ xa) * w
        HE = (f @ H.T) * w
        # Cycle 4 has no observation: its analysis is the forecast (Jb = 0).
        Pb, xb = (Pf, xf) if mask[k].any() else (Pa, xa)
        jb = 0.5 * (xa - xb) @ np.linalg.solve(Pb, xa - xb)
        jo = 0.5 * (y - ha) @ Rinv @ (y - ha)
        present = mask[k]
        Hp, dp = H[present], (ys[k] - H @ xf)[present]
        S = Hp @ Pf @ Hp.T + np.diag(R_VAR[present])
        p = present.sum()
        rows = {
            "forecast_mean": xf, "analysis_mean": xa,
            "forecast_spread": np.sqrt(np.mean(np.diag(Pf))),
            "analysis_spread": np.sqrt(np.mean(np.diag(Pa))),
            "forecast_ensemble": f, "analysis_ensemble": a,
            "forecast_covariance": Pf, "analysis_covariance": Pa,
            "analysis_correlations": np.corrcoef(a.T),
            "analysis_variances": np.diag(Pa), "analysis_std": np.sqrt(np.diag(Pa)),
            "bma": xf - xa,
            "innovation_forecast": y - hf, "innovation_analysis": y - ha,
            "innovation_forecast_ensemble": y - HE,
            "simulated_obs_forecast": hf, "simulated_obs_analysis": ha,
            "simulated_obs_forecast_ensemble": HE,
            "cost_J": jb + jo, "cost_Jb": jb, "cost_Jo": jo, "cycle_number": k + 1,
            "innovation_chi2": dp @ np.linalg.solve(S, dp) / p if p else 0.0,
            "log_likelihood": -0.5 * (dp @ np.linalg.solve(S, dp) + np.linalg.slogdet(S)[1]
                                      + p * np.log(2 * np.pi)) if p else 0.0,
            "dfs": np.trace(Hp @ Pf @ Hp.T @ np.linalg.inv(S)) if p else 0.0,
        }
        for name, v in rows.items():
            expect[name].append(v)
    J = np.array(expect["cost_J"])
    best = _running_optimum(J, mask.any(axis=1))
    assert np.any(np.diff(J) > 0) and np.any(np.diff(J) < 0) and len(set(best)) > 1
    expect["index_of_optimum"] = best
    for name, source in (("optimum_mean", "analysis_mean"),
                         ("simulated_obs_optimum", "simulated_obs_analysis"),
                         ("cost_J_optimum", "cost_J"), ("cost_Jb_optimum", "cost_Jb"),
                         ("cost_Jo_optimum", "cost_Jo")):
        expect[name] = np.asarray(expect[source])[best]
    shapes = {"forecast_ensemble": (K, N, n), "analysis_ensemble": (K, N, n),
              "forecast_covariance": (K, n, n), "analysis_covariance": (K, n, n),
              "analysis_correlations": (K, n, n), "innovation_forecast_ensemble": (K, N, m),
              "simulated_obs_forecast_ensemble": (K, N, m)}
    for name in NAMES:
        value = np.asarray(getattr(res, name))
        want = np.asarray(expect[name])
        assert value.shape == want.shape, name
        if name in shapes:
            assert value.shape == shapes[name], name
        if name in ("index_of_optimum", "cycle_number"):
            assert value.dtype == np.int32, name
            np.testing.assert_array_equal(value, want, err_msg=name)
        else:
            np.testing.assert_allclose(value, want, rtol=1e-9, atol=1e-11, err_msg=name)


def test_every_alias_names_its_output_with_adao_meaning(compiled_all):
    for name, aliases in cycle.OUTPUTS.items():
        for alias in aliases:
            assert cycle.resolve_outputs(alias) == (name,)
    for alias, name in ADAO_MEANING.items():
        assert cycle.resolve_outputs(alias) == (name,), alias
    assert cycle.resolve_outputs("Analysis") == ("analysis_mean",)
    aliases = [a for name in NAMES for a in cycle.OUTPUTS[name]]
    res = _run(store=aliases)
    for name in NAMES:
        value = getattr(res, name)
        if cycle.OUTPUTS[name]:
            np.testing.assert_array_equal(np.asarray(value),
                                          np.asarray(getattr(compiled_all, name)), err_msg=name)
        else:
            assert value is None, name


def test_the_python_loop_agrees_with_the_compiled_scan(compiled_all, python_all):
    for name in NAMES:
        np.testing.assert_allclose(np.asarray(getattr(python_all, name)),
                                   np.asarray(getattr(compiled_all, name)),
                                   rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(python_all.ensemble, compiled_all.ensemble, rtol=1e-10)


# ----------------------------------------------- hand-computed optimum ----

OPTIMUM = ("cost_J", "cost_Jb", "cost_Jo", "optimum_mean", "simulated_obs_optimum",
           "cost_J_optimum", "cost_Jb_optimum", "cost_Jo_optimum", "index_of_optimum",
           "cycle_number")


def _scalar_run(model, **options):
    """x̄ = 0, P = 1 (exactly), identity model and h, R = 1: the ETKF is the
    Kalman filter, J = ½ d²/(P_f + R) for the innovation d, and
    Jb = ½ (K d)²/P_f, Jo = ½ ((1 − K) d)², K = P_f/(P_f + R).

    cycle  P_f   y     d     J      x̄_a  Jb     Jo
    1      1     —     (no observation: skipped, x̄ and P unchanged)
    2      1     2     2     1      1    0.5    0.5
    3      1/2   4     3     3      2    1      2
    4      1/3   2.4   0.4   0.06   2.1  0.015  0.045
    5      1/4   —     (no observation)
    6      1/4   3.1   1     0.4    2.3  0.08   0.32
    """
    z = np.array([-1.5, -0.5, 0.5, 1.5])
    E0 = (z / z.std(ddof=1))[:, None]
    ys = np.array([[0.0], [2.0], [4.0], [2.4], [0.0], [3.1]])
    mask = np.array([[False], [True], [True], [True], [False], [True]])
    return enkit.assimilate(model, E0, ys, enkit.etkf, h=np.eye(1), R=1.0, mask=mask,
                            store=OPTIMUM, **options)


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_the_running_optimum_keeps_the_lowest_cost_so_far(path):
    model = _identity if path == "compiled" else enkit.BlackBoxModel(_identity)
    res = _scalar_run(model)
    nan = np.nan
    np.testing.assert_allclose(res.cost_J, [0, 1, 3, 0.06, 0, 0.4], atol=1e-12)
    np.testing.assert_array_equal(res.index_of_optimum, [-1, 1, 1, 3, 3, 3])
    np.testing.assert_array_equal(res.cycle_number, [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(res.cost_J_optimum, [nan, 1, 1, 0.06, 0.06, 0.06], atol=1e-12)
    np.testing.assert_allclose(res.cost_Jb_optimum, [nan, 0.5, 0.5, 0.015, 0.015, 0.015],
                               atol=1e-12)
    np.testing.assert_allclose(res.cost_Jo_optimum, [nan, 0.5, 0.5, 0.045, 0.045, 0.045],
                               atol=1e-12)
    # The analysis of the optimal cycle itself (ADAO's CurrentOptimum would be
    # the analysis of the cycle before it).
    np.testing.assert_allclose(res.optimum_mean[:, 0], [nan, 1, 1, 2.1, 2.1, 2.1], atol=1e-12)
    np.testing.assert_allclose(res.simulated_obs_optimum[:, 0], [nan, 1, 1, 2.1, 2.1, 2.1],
                               atol=1e-12)


def test_float32_runs_keep_the_optimum_in_float32():
    z = np.array([-1.5, -0.5, 0.5, 1.5], np.float32)
    E0 = (z / z.std(ddof=1))[:, None]
    ys = np.array([[2.0], [4.0], [2.4]], np.float32)
    res = enkit.assimilate(_identity, E0, ys, enkit.etkf, h=np.eye(1, dtype=np.float32),
                           R=1.0, store=OPTIMUM)
    np.testing.assert_array_equal(res.index_of_optimum, [0, 0, 2])
    np.testing.assert_allclose(res.cost_J_optimum, [1, 1, 0.06], rtol=1e-5)
    assert res.optimum_mean.dtype == np.float32 and res.cost_J_optimum.dtype == np.float32


def test_a_resumed_checkpoint_keeps_the_running_optimum(tmp_path, monkeypatch):
    # The first window (cycles 1-4) finds the optimum at cycle 4; cycle 6 costs
    # more, so it stays only if the resumed run restores the optimum's state
    # from the checkpoint's carry (else cycle 6 would be the first observed).
    real, calls = enkit.assimilation.checkpoint.save_run_checkpoint, []

    class Crash(Exception):
        pass

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise Crash

    for i, model in enumerate((_identity, enkit.BlackBoxModel(_identity))):
        plain = _scalar_run(model)
        path = tmp_path / f"run{i}.npz"
        calls.clear()
        monkeypatch.setattr(enkit.assimilation.checkpoint, "save_run_checkpoint", save_then_die)
        with pytest.raises(Crash):
            _scalar_run(model, checkpoint=path, checkpoint_every=4)
        monkeypatch.undo()
        resumed = _scalar_run(model, checkpoint=path, checkpoint_every=4)
        np.testing.assert_array_equal(resumed.index_of_optimum, [-1, 1, 1, 3, 3, 3])
        for name in OPTIMUM:
            np.testing.assert_array_equal(np.asarray(getattr(resumed, name)),
                                          np.asarray(getattr(plain, name)), err_msg=name)


def test_the_4d_driver_with_one_batch_per_window_gives_the_same_optimum(compiled_all):
    E0, ys, mask = _problem()
    store = ("cost_J", "index_of_optimum", "optimum_mean", "cost_Jb_optimum",
             "simulated_obs_optimum", "cycle_number", "analysis_correlations")
    plain = compiled_all
    res = enkit.assimilate_4d(_model, E0, ys[:, None], enkit.etkf, h=H,
                              R=enkit.Diagonal(R_VAR), obs_steps=np.arange(1, K + 1)[:, None],
                              mask=mask[:, None], inflation=1.1, store=store)
    np.testing.assert_array_equal(res.index_of_optimum, plain.index_of_optimum)
    np.testing.assert_array_equal(res.cycle_number, plain.cycle_number)
    for name in ("cost_J", "optimum_mean", "cost_Jb_optimum", "simulated_obs_optimum",
                 "analysis_correlations"):
        np.testing.assert_allclose(getattr(res, name), getattr(plain, name), rtol=1e-8,
                                   atol=1e-10, err_msg=name)


def test_a_stream_carries_the_optimum_across_chunks(compiled_all):
    E0, ys, mask = _problem()
    store = ("analysis_mean", "cost_J", "index_of_optimum", "cost_J_optimum", "cycle_number")
    plain = compiled_all
    chunks = [(ys[:3], mask[:3]), (ys[3:], mask[3:])]
    parts = [c.filtered for c in enkit.enks_stream(_model, E0, chunks, enkit.etkf, h=H,
                                                   R=enkit.Diagonal(R_VAR), inflation=1.1,
                                                   lag=0, store=store)
             if c.filtered is not None]
    for name in ("index_of_optimum", "cost_J_optimum", "cycle_number"):
        np.testing.assert_allclose(np.concatenate([getattr(p, name) for p in parts]),
                                   getattr(plain, name), rtol=1e-10, err_msg=name)


def test_ragged_observations_give_the_optimum_except_its_simulated_observation(compiled_all):
    E0, ys, mask = _problem()
    observed = mask.any(axis=1)
    store = ("cost_J", "index_of_optimum", "optimum_mean", "simulated_obs_forecast_ensemble")
    plain = compiled_all
    rows = [ys[k] if observed[k] else np.zeros(0) for k in range(K)]
    hs = [H if observed[k] else np.zeros((0, n)) for k in range(K)]
    masks = [mask[k] if observed[k] else np.zeros(0, bool) for k in range(K)]
    res = enkit.assimilate(_model, E0, rows, enkit.etkf, h=hs, R=enkit.Diagonal(R_VAR),
                           mask=masks, inflation=1.1, store=store)
    np.testing.assert_array_equal(res.index_of_optimum, plain.index_of_optimum)
    np.testing.assert_allclose(res.optimum_mean, plain.optimum_mean, rtol=1e-10)
    assert [np.shape(v) for v in res.simulated_obs_forecast_ensemble] == \
        [(N, m) if observed[k] else (N, 0) for k in range(K)]
    if importlib.util.find_spec("xarray") is not None:
        ds = res.to_xarray()
        assert ds["simulated_obs_forecast_ensemble"].dims == ("time", "member", "obs")
        padded = ds["simulated_obs_forecast_ensemble"].values
        np.testing.assert_array_equal(padded[0], res.simulated_obs_forecast_ensemble[0])
        assert np.isnan(padded[3]).all() and ds["obs_present"].values[3].sum() == 0
    with pytest.raises(ValueError, match="simulated_obs_optimum needs a \\(K, m\\)"):
        enkit.assimilate(_model, E0, rows, enkit.etkf, h=hs, R=enkit.Diagonal(R_VAR),
                         mask=masks, store=("SimulatedObservationAtCurrentOptimum",))


def test_a_particle_run_refuses_the_optimum_outputs():
    E0, ys, _ = _problem()
    with pytest.raises(ValueError, match="a particle run cannot store optimum_mean"):
        enkit.assimilate(_model, E0, ys, enkit.bootstrap_pf, h=H, R=1.0, key=0,
                         store=("CurrentOptimum",))


def test_the_xarray_layout_of_the_new_outputs(compiled_all):
    pytest.importorskip("xarray")
    ds = compiled_all.to_xarray()
    dims = {"analysis_correlations": ("time", "state", "state_b"),
            "simulated_obs_forecast_ensemble": ("time", "member", "obs"),
            "innovation_forecast_ensemble": ("time", "member", "obs"),
            "optimum_mean": ("time", "state"), "simulated_obs_optimum": ("time", "obs"),
            "cost_J_optimum": ("time",), "cost_Jb_optimum": ("time",),
            "cost_Jo_optimum": ("time",), "index_of_optimum": ("time",),
            "cycle_number": ("time",)}
    for name, d in dims.items():
        assert ds[name].dims == d, name
        np.testing.assert_array_equal(ds[name].values, np.asarray(getattr(compiled_all, name)))
    assert ds["index_of_optimum"].dtype == np.int32
    missing = [name for name in NAMES if name not in ds]
    assert missing == []
