"""Observation series from CSV, netCDF and xarray into the driver's inputs."""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest

import enkit
from enkit.observation_io import ObservationData, interpolation_matrix, read_observations
from enkit.results_io import write_netcdf

xr = pytest.importorskip("xarray")

N_STATE = 6


def _model(x):
    return 0.95 * x + 0.05 * jax.numpy.roll(x, 1)


def _series():
    """4 times, observations at positions 0, 2.5 and 5 (one missing), error
    variances that differ per observation."""
    rng = np.random.default_rng(0)
    times = np.array([0.5, 1.0, 1.5, 2.0])
    positions = np.array([0.0, 2.5, 5.0])
    values = rng.standard_normal((4, 3))
    values[2, 1] = np.nan
    var = np.array([0.5, 1.0, 2.0])
    return times, positions, values, var


def _write_csv(path, times, positions, values, var, *, std=False, extra_rows=()):
    with open(path, "w") as f:
        f.write("time,position,value," + ("error_std" if std else "error_variance") + "\n")
        for k, t in enumerate(times):
            for j, p in enumerate(positions):
                v = "" if np.isnan(values[k, j]) else repr(float(values[k, j]))
                e = float(np.sqrt(var[j]) if std else var[j])
                f.write(f"{t},{p},{v},{e!r}\n")
        for row in extra_rows:
            f.write(row + "\n")


def _hand_built(times, positions, values, var):
    H = np.zeros((3, N_STATE))
    H[0, 0] = 1.0
    H[1, 2] = H[1, 3] = 0.5
    H[2, 5] = 1.0
    mask = np.isfinite(values)
    return {"observations": np.where(mask, values, 0.0), "mask": mask, "h": H,
            "R": enkit.Diagonal(var), "obs_times": times}


def _run(inputs):
    """An ETKF run on a linear model stepping dt = 0.5 (so obs_times convert)."""
    E0 = np.random.default_rng(1).standard_normal((8, N_STATE))
    return enkit.assimilate(_wrapped_model, E0, scheme=enkit.etkf, **inputs,
                            store=("analysis_mean", "forecast_mean"))


class _Stepper:
    dt = 0.5

    def __call__(self, x):
        return _model(x)


_wrapped_model = _Stepper()


def test_csv_gives_the_hand_built_arrays_and_the_same_run(tmp_path):
    times, positions, values, var = _series()
    path = tmp_path / "obs.csv"
    _write_csv(path, times, positions, values, var)
    obs = read_observations(path)
    np.testing.assert_array_equal(obs.times, times)
    np.testing.assert_array_equal(obs.positions, positions)
    np.testing.assert_array_equal(obs.mask, np.isfinite(values))
    np.testing.assert_array_equal(obs.values[obs.mask], values[np.isfinite(values)])
    inputs = obs.driver_inputs(N_STATE)
    want = _hand_built(times, positions, values, var)
    np.testing.assert_array_equal(inputs["h"], want["h"])
    np.testing.assert_array_equal(inputs["R"].variances, want["R"].variances)
    a, b = _run(inputs), _run(want)
    np.testing.assert_array_equal(a.analysis_mean, b.analysis_mean)
    np.testing.assert_array_equal(a.ensemble, b.ensemble)


def test_error_std_column_is_squared(tmp_path):
    times, positions, values, var = _series()
    _write_csv(tmp_path / "a.csv", times, positions, values, var, std=True)
    obs = read_observations(tmp_path / "a.csv")
    np.testing.assert_allclose(obs.error_variance[0], var, rtol=1e-15)


def test_netcdf_round_trip_gives_the_same_series_and_run(tmp_path):
    times, positions, values, var = _series()
    _write_csv(tmp_path / "obs.csv", times, positions, values, var)
    from_csv = read_observations(tmp_path / "obs.csv")
    write_netcdf(from_csv.to_xarray(), tmp_path / "obs.nc")
    from_nc = read_observations(tmp_path / "obs.nc")
    for name in ("times", "values", "positions", "error_variance", "instrument"):
        np.testing.assert_array_equal(getattr(from_nc, name), getattr(from_csv, name))
    a = _run(from_nc.driver_inputs(N_STATE))
    b = _run(from_csv.driver_inputs(N_STATE))
    np.testing.assert_array_equal(a.analysis_mean, b.analysis_mean)


def test_dataset_with_moving_positions_and_changing_variances_becomes_per_time():
    times, _, values, _ = _series()
    pos = np.array([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.5, 4.0], [5.5, 0.0, 1.0]])
    var = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.0, 3.0, 1.0], [1.0, 1.0, 4.0]])
    ds = xr.Dataset({"observations": (("time", "obs"), values),
                     "error_variance": (("time", "obs"), var)},
                    coords={"time": times, "position": (("time", "obs"), pos)})
    obs = read_observations(ds)
    inputs = obs.driver_inputs(N_STATE, periodic=True)
    assert isinstance(inputs["h"], enkit.PerTime)
    H = np.asarray(inputs["h"].value)
    assert H.shape == (4, 3, N_STATE)
    # Position 5.5 on a periodic grid of 6 points: half x5, half x0.
    np.testing.assert_array_equal(H[3, 0], [0.5, 0, 0, 0, 0, 0.5])
    assert isinstance(inputs["R"], enkit.PerTime)
    np.testing.assert_array_equal(np.asarray(inputs["R"].value.variances)[obs.mask],
                                  var[obs.mask])
    hand = dict(inputs, h=enkit.per_time(interpolation_matrix(pos, N_STATE, periodic=True)),
                R=enkit.stack_covariances([enkit.Diagonal(np.where(np.isnan(v), 1.0, w))
                                           for v, w in zip(values, var)]))
    np.testing.assert_array_equal(_run(inputs).analysis_mean, _run(hand).analysis_mean)


def test_instruments_define_the_obs_axis(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("time,position,value,error_variance,instrument\n"
                    "1,0,1.0,1,radar\n1,0,2.0,4,buoy\n2,0,3.0,1,radar\n2,3,4.0,4,buoy\n")
    obs = read_observations(path)
    assert list(obs.instrument) == ["buoy", "buoy", "radar"]
    np.testing.assert_array_equal(obs.positions, [0.0, 3.0, 0.0])
    np.testing.assert_array_equal(obs.mask, [[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(obs.error_variance, [[4, 1, 1], [1, 4, 1]])


def test_interpolation_matrix_rows_sum_to_one_and_select_integer_points():
    H = interpolation_matrix([0.0, 0.25, 4.0], 5)
    np.testing.assert_array_equal(H, [[1, 0, 0, 0, 0], [0.75, 0.25, 0, 0, 0],
                                      [0, 0, 0, 0, 1]])
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        interpolation_matrix([4.5], 5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        interpolation_matrix([5.0], 5, periodic=True)


def test_error_variance_argument_fills_in_when_the_file_has_none(tmp_path):
    path = tmp_path / "novar.csv"
    path.write_text("time,position,value\n1,0,1.5\n2,0,\n")
    with pytest.raises(ValueError, match="error_variance"):
        read_observations(path)
    obs = read_observations(path, error_variance=0.25)
    np.testing.assert_array_equal(obs.error_variance, [[0.25], [1.0]])
    np.testing.assert_array_equal(obs.mask, [[True], [False]])


@pytest.mark.parametrize("text, match", [
    ("time,pos,value\n1,0,1\n", "header needs columns time, position, value"),
    ("time,position,value,colour\n1,0,1,red\n", "unknown column 'colour'"),
    ("time,position,value,error_variance\n1,0,1,1\n1,0,2,1\n", "line 3: a second row"),
    ("time,position,value,error_variance\n1,0,abc,1\n", "line 2: value 'abc' is not a number"),
    ("time,position,value,error_variance\n1,0,1\n", "line 2: 3 fields"),
    ("time,position,value,error_variance\n1,0,1,-1\n", "must be positive"),
    ("time,position,value,error_variance\nnan,0,1,1\n", "time must be finite"),
    ("time,position,value,error_variance\n1,0,inf,1\n", "must be finite"),
    ("time,position,value,error_variance\n", "no observation rows"),
])
def test_bad_csv_files_are_refused_with_the_line_and_the_reason(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_observations(path)


def test_other_files_are_recognised_by_their_bytes_and_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled",))

    p = tmp_path / "obs.nc"  # a netCDF name on pickle bytes
    p.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="found a pickle"):
        read_observations(p)
    with pytest.raises(ValueError, match="no such file"):
        read_observations(tmp_path / "absent.csv")
    with pytest.raises(TypeError, match="xarray.Dataset or a file path"):
        read_observations(np.zeros((3, 2)))


def test_dataset_problems_name_the_variable():
    times, positions, values, var = _series()
    base = {"time": times, "position": ("obs", positions)}
    with pytest.raises(ValueError, match="no observation variable"):
        read_observations(xr.Dataset({"z": (("time", "obs"), values)}, coords=base))
    with pytest.raises(ValueError, match="needs a position"):
        read_observations(xr.Dataset({"y": (("time", "obs"), values)},
                                     coords={"time": times}), error_variance=1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        read_observations(xr.Dataset({"y": (("time", "obs"), values)},
                                     coords=dict(base, time=times[::-1])),
                          error_variance=1.0)
    ds = xr.Dataset({"y": (("time", "obs"), values), "error_std": ((), 2.0)}, coords=base)
    obs = read_observations(ds)
    assert isinstance(obs, ObservationData)
    np.testing.assert_array_equal(obs.error_variance[obs.mask], 4.0)
