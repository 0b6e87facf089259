"""The driver's finite-check and its input checks (no silent failures).

A run whose ensemble turns to NaN/inf names the first cycle and the stage;
bad observations, masks and initial ensembles are refused before any model
step; cycles without observations are forecast-only steps.
"""

import dataclasses
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit._pytree import register_dataclass
from enkit.inflation import InflationStep
from enkit.io import load_checkpoint

N, n, K = 6, 5, 30
H = np.eye(n)


def _model(x, u):
    """A damped linear model that turns NaN where the control is NaN."""
    return 0.9 * x + u


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    E0 = rng.normal(size=(N, n))
    ys = rng.normal(size=(K, n))
    return E0, ys


def _controls(blow_at=None, total=K + 1):
    u = np.zeros((total, 1))
    if blow_at is not None:
        u[blow_at] = np.nan  # the model step from step `blow_at` returns NaN
    return u


def test_clean_run_has_zero_codes(case):
    E0, ys = case
    r = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls())
    assert r.nonfinite.shape == (K,) and not np.any(r.nonfinite)
    assert enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls(),
                            on_nonfinite="ignore").nonfinite is None


def test_model_blow_up_names_cycle_stage_and_keeps_earlier_outputs(case):
    E0, ys = case
    clean = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls())
    # step 17 -> 18 is the forecast of cycle 18 (one step per cycle)
    with pytest.raises(enkit.NonFiniteError, match="after the forecast at cycle 18 of 30") as err:
        enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls(17))
    e = err.value
    assert (e.cycle, e.stage, e.time) == (18, "forecast", 18.0)
    assert "model diverged" in str(e)
    assert e.result.analysis_mean.shape == (17, n) and e.result.ensemble is None
    np.testing.assert_array_equal(e.result.analysis_mean, clean.analysis_mean[:17])
    np.testing.assert_array_equal(e.result.times, clean.times[:17])


def test_warn_returns_the_whole_run_and_ignore_is_silent(case):
    E0, ys = case
    with pytest.warns(RuntimeWarning, match="cycle 4 of 30"):
        r = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls(3),
                             on_nonfinite="warn")
    assert r.analysis_mean.shape == (K, n) and np.isnan(r.analysis_mean[-1]).all()
    assert list(np.flatnonzero(r.nonfinite)[:1]) == [3] and r.nonfinite[3] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls(3),
                             on_nonfinite="ignore")
    assert r.nonfinite is None
    with pytest.raises(ValueError, match="on_nonfinite must be"):
        enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, on_nonfinite="stop")


def _nan_when_large(E, y, h, R, **kw):
    """ETKF that fails (NaN) when the first observation is huge."""
    return jnp.where(y[0] > 1e5, jnp.nan, enkit.etkf(E, y, h, R))


@dataclasses.dataclass(frozen=True)
class _BadInflation(InflationStep):
    """Inflation before the analysis that fails when y[1] is huge."""

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        return jnp.where(y[1] > 1e5, jnp.inf, Ef), state


register_dataclass(_BadInflation)


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_analysis_and_inflation_stages_are_named(case, path):
    E0, ys = case
    ys = ys.copy()
    ys[9, 0] = 1e6  # scheme fails at cycle 10
    ys[4, 1] = 1e6  # inflation fails at cycle 5
    obs = ys if path == "compiled" else list(ys)
    with pytest.raises(enkit.NonFiniteError, match="inflation before the analysis at cycle 5"):
        enkit.assimilate(_model, E0, obs, _nan_when_large, h=H, R=1.0, controls=_controls(),
                         inflation=_BadInflation())
    with pytest.raises(enkit.NonFiniteError, match="after the analysis at cycle 10") as err:
        enkit.assimilate(_model, E0, obs, _nan_when_large, h=H, R=1.0, controls=_controls())
    assert err.value.stage == "analysis" and "check h, R" in str(err.value)
    assert err.value.result.forecast_mean.shape == (9, n)


def test_python_path_stops_at_the_failing_cycle(case):
    E0, ys = case
    calls = []

    def step(x):
        calls.append(1)
        return 0.9 * x

    model = enkit.BlackBoxModel(step)
    ys = ys.copy()
    ys[6, 0] = 1e6
    with pytest.raises(enkit.NonFiniteError, match="cycle 7 of 30"):
        enkit.assimilate(model, E0, ys, _nan_when_large, h=H, R=1.0)
    assert len(calls) == 7 * N  # seven forecasts, none after the failure


def test_checkpoint_keeps_the_last_finite_window(case, tmp_path):
    E0, ys = case
    path = os.fspath(tmp_path / "run.npz")
    with pytest.raises(enkit.NonFiniteError, match="keeps the last finite state") as err:
        enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls(24),
                         checkpoint=path, checkpoint_every=10)
    assert err.value.cycle == 25 and err.value.result.analysis_mean.shape == (24, n)
    arrays, meta = load_checkpoint(path)
    assert meta["completed_cycles"] == 20 and not meta["finished"]
    carry = [v for name, v in arrays.items() if name.startswith("carry")]
    assert carry and all(np.all(np.isfinite(v)) for v in carry)
    assert arrays["outputs.analysis_mean"].shape == (20, n)
    clean = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls())
    np.testing.assert_array_equal(err.value.result.analysis_mean, clean.analysis_mean[:24])


def test_forecast_only_steps_are_checked(case):
    E0, ys = case
    with pytest.raises(enkit.NonFiniteError, match="forecast-only steps") as err:
        enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, forecast_steps=3,
                         controls=_controls(K + 1, total=K + 4))
    assert err.value.cycle == K + 1
    assert err.value.result.analysis_mean.shape == (K, n)


def test_under_jit_the_codes_are_returned(case):
    E0, ys = case

    @jax.jit
    def run(E0, ys):
        return enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0,
                                controls=_controls(11)).nonfinite

    codes = np.asarray(run(jnp.asarray(E0), jnp.asarray(ys)))
    assert np.flatnonzero(codes)[0] == 11 and codes[11] == 9  # failed, stage not looked for


def test_reverse_mode_gradient_with_the_check_on(case):
    E0, ys = case

    def loss(a):
        r = enkit.assimilate(lambda x: a * x, jnp.asarray(E0), ys[:8], enkit.etkf, h=H, R=1.0)
        return jnp.sum(r.analysis_mean ** 2)

    g = jax.grad(loss)(0.9)
    fd = (loss(0.9 + 1e-6) - loss(0.9 - 1e-6)) / 2e-6
    assert np.isfinite(g) and abs(g - fd) < 1e-5 * abs(fd)
    assert abs(g - jax.jacfwd(loss)(0.9)) < 1e-10 * abs(g)


def test_varying_forecast_lengths_differentiate_in_both_modes(case):
    E0, ys = case
    spo = np.tile([1, 2, 3], K // 3)

    def loss(a):
        r = enkit.assimilate(lambda x: a * x + 0.1 * jnp.sin(x), jnp.asarray(E0), ys,
                             enkit.etkf, h=H, R=1.0, steps_per_obs=spo)
        return jnp.sum(r.analysis_mean ** 2)

    fd = (loss(0.9 + 1e-6) - loss(0.9 - 1e-6)) / 2e-6
    g = jax.grad(loss)(0.9)
    assert abs(g - fd) < 1e-5 * abs(fd)
    assert abs(jax.jacfwd(loss)(0.9) - g) < 1e-10 * abs(g)


# ---------------------------------------------------------------- inputs


def _counting_model():
    calls = []

    def step(x):
        calls.append(1)
        return x

    return enkit.BlackBoxModel(step), calls


@pytest.mark.parametrize("ragged", [False, True])
def test_nan_observation_marked_present_is_refused_before_any_step(case, ragged):
    E0, ys = case
    ys = ys.copy()
    ys[3, 2] = np.nan
    ys[8, [0, 4]] = np.inf
    mask = np.ones((K, n), bool)
    model, calls = _counting_model()
    obs = list(ys) if ragged else ys
    with pytest.raises(ValueError, match=r"3 values are NaN or inf: observations\[3\] \(cycle 4\) "
                                         r"at positions \[2\]; observations\[8\] \(cycle 9\) at "
                                         r"positions \[0, 4\]; the mask says"):
        enkit.assimilate(model, E0, obs, enkit.etkf, h=H, R=1.0, mask=mask)
    with pytest.raises(ValueError, match="mark missing values absent with mask=False"):
        enkit.assimilate(model, E0, obs, enkit.etkf, h=H, R=1.0)
    assert calls == []
    mask[3, 2] = mask[8, 0] = mask[8, 4] = False  # absent: accepted, no effect
    r = enkit.assimilate(_model, E0, obs, enkit.etkf, h=H, R=1.0, mask=mask,
                         controls=_controls())
    assert np.all(np.isfinite(r.analysis_mean))


def test_zero_spread_initial_ensemble_is_refused_unless_noise_adds_spread(case):
    _, ys = case
    E0 = np.tile(np.arange(n, dtype=float), (N, 1))
    with pytest.raises(ValueError, match="E0 has zero spread: its 6 members are identical"):
        enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls())
    Q = enkit.Scalar(0.1, n)
    r = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls(),
                         model_noise=Q, key=0)
    assert np.all(r.analysis_spread > 0)
    r = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, controls=_controls(),
                         inflation=enkit.AdditiveForecast(Q), key=0)
    assert np.all(r.analysis_spread > 0)


def test_cycles_without_observations_are_forecast_only(case):
    E0, ys = case
    obs = [ys[0], np.zeros(0), ys[2][:3]]
    hs = [H, np.zeros((0, n)), H[:3]]
    r = enkit.assimilate(_model, E0, obs, enkit.etkf, h=hs, R=[1.0, 1.0, 1.0],
                         controls=_controls(total=4),
                         store=("forecast_mean", "analysis_mean", "innovation_forecast",
                                "cost_J"))
    np.testing.assert_array_equal(r.analysis_mean[1], r.forecast_mean[1])
    assert r.innovation_forecast[1].shape == (0,) and float(r.cost_J[1]) == 0.0
    ref = enkit.assimilate(_model, E0, [ys[0], ys[2][:3]], enkit.etkf, h=[H, H[:3]],
                           R=[1.0, 1.0], steps_per_obs=[1, 2], controls=_controls(total=4))
    np.testing.assert_allclose(r.analysis_mean[np.array([0, 2])], ref.analysis_mean, rtol=1e-13)
    none = enkit.assimilate(_model, E0, np.zeros((4, 0)), enkit.etkf, h=np.zeros((0, n)), R=1.0,
                            controls=_controls(total=5))
    np.testing.assert_array_equal(none.analysis_mean, none.forecast_mean)


def test_ragged_path_accepts_a_K_by_m_mask_and_names_bad_masks(case):
    E0, ys = case
    mask = np.ones((K, n), bool)
    mask[2, 1] = mask[5] = False
    a = enkit.assimilate(_model, E0, list(ys), enkit.etkf, h=H, R=1.0, mask=mask,
                         controls=_controls())
    b = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, mask=mask, controls=_controls())
    np.testing.assert_allclose(a.analysis_mean, b.analysis_mean, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"mask must be a list of K=30 boolean arrays .* "
                                         r"got an array of shape \(30, 4\)"):
        enkit.assimilate(_model, E0, list(ys), enkit.etkf, h=H, R=1.0, mask=mask[:, :4])
    with pytest.raises(ValueError, match="mask as a list must hold K=30 entries"):
        enkit.assimilate(_model, E0, list(ys), enkit.etkf, h=H, R=1.0, mask=list(mask[:3]))
    bad = list(mask)
    bad[7] = bad[7][:2]
    with pytest.raises(ValueError, match=r"mask\[7\] must have shape \(m_k,\) = \(5,\)"):
        enkit.assimilate(_model, E0, list(ys), enkit.etkf, h=H, R=1.0, mask=bad)
    with pytest.raises(ValueError, match=r"observations\[4\] must have shape \(m_k,\)"):
        enkit.assimilate(_model, E0, [*ys[:4], ys[4:6], *ys[6:]], enkit.etkf, h=H, R=1.0)
    with pytest.raises(ValueError, match=r"mask must have shape \(K, m\) = \(30, 5\)"):
        enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, mask=mask[:, :4])


@pytest.mark.parametrize("bad", [-1.0, 0.0, np.nan, np.inf, np.ones(3)])
def test_bad_inflation_factor_is_refused(case, bad):
    E0, ys = case
    with pytest.raises(ValueError, match="inflation as a number is the factor"):
        enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=1.0, inflation=bad,
                         controls=_controls())


# ---------------------------------------------------------------- per-cycle diagnostics


def test_per_cycle_diagnostics_equal_enkit_diagnostics(case):
    """store=("innovation_chi2", "log_likelihood", "dfs") per cycle equal the
    diagnostics of the ensemble the scheme received (here the forecast:
    inflation after the analysis), and absent observations drop out."""
    E0, ys = case
    names = ("forecast_ensemble", "innovation_chi2", "log_likelihood", "dfs")
    mask = np.ones((K, n), bool)
    mask[3, :2] = False
    mask[7] = False
    R = np.diag(np.linspace(0.5, 1.5, n))
    r = enkit.assimilate(_model, E0, ys, enkit.etkf, h=H, R=R, controls=_controls(),
                         inflation=1.1, mask=mask, store=names)
    for k in (0, 3, 12):
        Ef, p = r.forecast_ensemble[k], mask[k]
        Hk, Rk = H[p], R[np.ix_(p, p)]
        st = enkit.innovation_statistics(Ef, ys[k][p], Hk, Rk)
        np.testing.assert_allclose(r.innovation_chi2[k], st.chi2 / p.sum(), rtol=1e-11)
        np.testing.assert_allclose(r.log_likelihood[k],
                                   enkit.log_likelihood(Ef, ys[k][p], Hk, Rk), rtol=1e-11)
        np.testing.assert_allclose(r.dfs[k], enkit.dfs(Ef, Hk, Rk).total, rtol=1e-11)
    assert r.innovation_chi2[7] == r.log_likelihood[7] == r.dfs[7] == 0.0
