"""Results to xarray and netCDF: the file opens in plain xarray and holds
the same arrays."""

import subprocess
import sys

import jax
import numpy as np
import pytest

import enkit
from enkit.models.cases import sakov2012_lorenz63

xr = pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def setting():
    case = sakov2012_lorenz63(cycles=12, burn_in=0)
    twin = case.twin(0, 12)
    return case, twin, case.initial_ensemble(twin, 6, 0)


ALL = ("forecast_mean", "analysis_mean", "forecast_spread", "analysis_spread",
       "analysis_ensemble", "analysis_covariance", "innovation_forecast", "cost_J",
       "innovation_chi2", "log_likelihood", "dfs")


def _plain_open(path):
    """The file's variables read by xarray in a process that never imports enkit."""
    code = ("import sys, xarray as xr, numpy as np\n"
            f"ds = xr.open_dataset({str(path)!r}).load()\n"
            "assert 'enkit' not in sys.modules\n"
            "v = {k: ds[k].values for k in ds.variables}\n"
            "v = {k: a.astype(str) if a.dtype == object else a for k, a in v.items()}\n"
            "np.savez(sys.argv[1], **v)\n"
            "print(ds.attrs['enkit_kind'])\n")
    out = path.with_suffix(".npz")
    kind = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, check=True).stdout.strip()
    with np.load(out, allow_pickle=False) as f:
        return kind, dict(f)


def _check_same(result, arrays, names):
    for name in names:
        want = np.asarray(getattr(result, name))
        got = arrays[name]
        # netCDF3 holds no 64-bit integers: int64 comes back as int32
        assert got.dtype == (np.int32 if want.dtype == np.int64 else want.dtype), name
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(arrays["time"], np.asarray(result.times))
    np.testing.assert_array_equal(arrays["final_ensemble"], np.asarray(result.ensemble))


def test_assimilation_round_trip_is_exact(setting, tmp_path):
    case, twin, E0 = setting
    res = enkit.assimilate(case.model, E0, twin.observations, enkit.etkf, h=case.h, R=case.R,
                           steps_per_obs=case.steps_per_obs, inflation=1.02, store=ALL)
    path = res.to_netcdf(tmp_path / "run.nc", truth=twin.truth,
                         observations=twin.observations)
    kind, arrays = _plain_open(tmp_path / "run.nc")
    assert kind == "assimilation"
    _check_same(res, arrays, ALL + ("steps", "nonfinite"))
    np.testing.assert_array_equal(arrays["truth"], np.asarray(twin.truth))
    ds = enkit.results_io.read_netcdf(path)
    assert ds["analysis_ensemble"].dims == ("time", "member", "state")
    assert ds["analysis_covariance"].dims == ("time", "state", "state_b")
    assert ds["innovation_forecast"].dims == ("time", "obs")
    assert ds.attrs["method"] == "etkf" and ds.attrs["option_inflation"] == "1.02"
    assert ds.attrs["option_steps_per_obs"] == "25"
    assert ds.attrs["enkit_version"] == enkit.__version__


def test_ragged_python_path_is_padded_with_a_presence_mask(setting, tmp_path):
    case, twin, E0 = setting
    y = [np.asarray(twin.observations[k, : 1 + k % 3]) for k in range(12)]
    H = [np.eye(3)[: 1 + k % 3] for k in range(12)]
    R = [2.0 * np.eye(1 + k % 3) for k in range(12)]
    res = enkit.assimilate(case.model, E0, y, enkit.etkf, h=H, R=R,
                           steps_per_obs=case.steps_per_obs,
                           store=("analysis_mean", "innovation_forecast"))
    _, arrays = _plain_open(res.to_netcdf(tmp_path / "ragged.nc") and tmp_path / "ragged.nc")
    d, present = arrays["innovation_forecast"], arrays["obs_present"]
    assert d.shape == (12, 3) and present.dtype == np.int8
    for k in range(12):
        m = 1 + k % 3
        np.testing.assert_array_equal(d[k, :m], np.asarray(res.innovation_forecast[k]))
        assert np.all(np.isnan(d[k, m:])) and present[k].sum() == m


def test_smoother_round_trip(setting, tmp_path):
    case, twin, E0 = setting
    res = enkit.enks(case.model, E0, twin.observations, enkit.etkf, h=case.h, R=case.R,
                     steps_per_obs=case.steps_per_obs, lag=3)
    kind, arrays = _plain_open(res.to_netcdf(tmp_path / "s.nc") and tmp_path / "s.nc")
    assert kind == "smoother"
    _check_same(res, arrays, ("analysis_mean", "smoothed_mean", "smoothed_spread"))


def test_calibration_round_trip(tmp_path):
    with jax.enable_x64(True):
        G = np.array([[1.0, 0.0], [0.5, 2.0], [1.0, 1.0]])
        res = enkit.calibrate(lambda t: G @ t, enkit.EKI(), np.random.default_rng(0)
                              .standard_normal((10, 2)), G @ np.array([0.5, -0.2]),
                              0.01 * np.ones(3), key=0, max_iterations=4)
    path = res.to_netcdf(tmp_path / "c.nc")
    kind, arrays = _plain_open(tmp_path / "c.nc")
    assert kind == "calibration"
    np.testing.assert_array_equal(arrays["parameters"], np.asarray(res.ensembles))
    np.testing.assert_array_equal(arrays["misfit"], np.asarray(res.misfits))
    assert enkit.results_io.read_netcdf(path).attrs["method"] == "EKI"


def test_info_passes_through_jit(setting):
    case, twin, E0 = setting

    @jax.jit
    def run(E):
        return enkit.assimilate(case.model, E, twin.observations, enkit.etkf, h=case.h,
                                R=case.R, steps_per_obs=case.steps_per_obs,
                                on_nonfinite="ignore")

    res = run(E0)
    assert res.info.kind == "assimilation" and res.info.method == "etkf"


def test_mismatched_extras_are_refused(setting):
    case, twin, E0 = setting
    res = enkit.assimilate(case.model, E0, twin.observations, enkit.etkf, h=case.h, R=case.R,
                           steps_per_obs=case.steps_per_obs)
    with pytest.raises(ValueError, match="K = 12"):
        res.to_xarray(truth=twin.truth[:5])
    with pytest.raises(ValueError, match="no times"):
        enkit.AssimilationResult().to_xarray()


def test_describe_names_arrays_by_shape_and_scalars_by_value():
    import jax
    import jax.numpy as jnp

    from enkit.assimilation.types import describe

    assert describe(jnp.ones((20,))) == "array(20,)"
    assert describe(np.float64(1.5)) == "1.5"
    seen = []
    jax.jit(lambda x: seen.append(describe(x)) or x)(jnp.float32(2.0))
    assert seen == ["array()"]


def test_file_format_reads_only_the_first_bytes(tmp_path):
    import pickle

    from enkit.results_io import file_format

    cases = {"a.nc": b"CDF\x01rest", "b.nc": b"\x89HDF\r\n\x1a\nrest",
             "c.pkl": pickle.dumps({"x": 1}), "d.npz": b"PK\x03\x04rest",
             "e.csv": "time,value\n1,2\n".encode(), "f.bin": bytes(range(256))}
    want = ["netCDF3", "netCDF4/HDF5", "a pickle", "a zip archive (e.g. .npz)", "text",
            "binary data"]
    for (name, data), expected in zip(cases.items(), want):
        (tmp_path / name).write_bytes(data)
        assert file_format(tmp_path / name) == expected, name
