"""`enkit run CONFIG.toml`, `enkit report RESULT.nc` and the demo's options."""

import pathlib
import shutil

import numpy as np
import pytest

from enkit.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "assimilate_from_file"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The shipped example, run in a copy of its folder."""
    folder = tmp_path_factory.mktemp("example")
    for name in ("config.toml", "observations.csv", "truth.csv"):
        shutil.copy(EXAMPLE / name, folder / name)
    rc = main(["run", str(folder / "config.toml"), "--quiet"])
    return rc, folder


def test_shipped_example_runs_and_writes_its_result(example_run):
    import xarray as xr

    rc, folder = example_run
    assert rc == 0
    with xr.open_dataset(folder / "result.nc") as ds:
        assert ds.attrs["enkit_kind"] == "assimilation"
        assert ds["analysis_mean"].dims == ("time", "state")
        assert ds.sizes["time"] == 300 and ds.sizes["state"] == 40
        err = ds["analysis_mean"].values - ds["truth"].values
        rmse = np.sqrt(np.mean(err**2, axis=1))
    # half the grid observed with R = I: the analysis error settles well below
    # the observation error and the climatological spread (about 3.6)
    assert np.mean(rmse[100:]) < 0.6


def test_report_prints_the_table_and_writes_the_figures(example_run, capsys, tmp_path):
    rc, folder = example_run
    capsys.readouterr()
    assert main(["report", str(folder / "result.nc"), "--figures", str(tmp_path),
                 "--burn-in", "100"]) == 0
    out = capsys.readouterr().out
    for label in ("assimilation", "analysis RMSE", "analysis spread", "innovation χ²/m",
                  "letkf"):
        assert label in out
    for name in ("timeseries", "rmse", "hovmoller"):
        assert (tmp_path / f"result-{name}.png").read_bytes()[:8] == PNG


def _config(tmp_path, text, marker=True):
    """A config in tmp_path whose model is a module that leaves a file when it
    runs; the example's observation file beside it."""
    shutil.copy(EXAMPLE / "observations.csv", tmp_path / "observations.csv")
    (tmp_path / "probe_model.py").write_text(
        "import pathlib\n"
        "from enkit.models import Lorenz96\n"
        "_m = Lorenz96()\n"
        "def step(x):\n"
        f"    pathlib.Path({str(tmp_path / 'ran')!r}).write_text('ran')\n"
        "    return _m(x)\n")
    model = ('[model]\nentry_point = "probe_model:step"\nsize = 40\ndt = 0.05\n'
             if marker else "")
    path = tmp_path / "config.toml"
    path.write_text(model + text)
    return path


GOOD = '[observations]\nfile = "observations.csv"\nperiodic = true\n[analysis]\nscheme = "etkf"\n'


def test_a_config_with_an_entry_point_model_runs(tmp_path):
    path = _config(tmp_path, GOOD + '[ensemble]\nmembers = 10\n[run]\nstore = ["analysis_mean"]\n')
    assert main(["run", str(path), "--quiet"]) == 0
    assert (tmp_path / "ran").exists() and (tmp_path / "config.nc").exists()


@pytest.mark.parametrize("text, key, words", [
    (GOOD.replace("scheme =", "schem ="), "analysis.schem", "did you mean 'scheme'"),
    (GOOD + '[ensemble]\nmean = [1.0, 2.0, 3.0]\n', "ensemble.mean", "expected 40"),
    (GOOD.replace("observations.csv", "missing.csv"), "observations.file", "no such file"),
    (GOOD.replace('"etkf"', '"etfk"'), "analysis.scheme", "did you mean 'etkf'"),
    (GOOD + '[analysis.options]\ncentre = true\n', "analysis.options.centre", "unknown key"),
    (GOOD + '[run]\nstore = ["analysis_maen"]\n', "run.store", "analysis_mean"),
    (GOOD + '[run]\nonnonfinite = "raise"\n', "run.onnonfinite", "on_nonfinite"),
    (GOOD.replace("[analysis]", "[analysis]\ninflation = 0.5"), "analysis.inflation", "[1, 10)"),
])
def test_a_bad_config_stops_before_the_model_runs_and_names_the_key(tmp_path, capsys, text,
                                                                   key, words):
    path = _config(tmp_path, text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert key in err and words in err
    assert not (tmp_path / "ran").exists()


def test_report_of_a_calibration_result(tmp_path, capsys):
    import jax

    import enkit

    with jax.enable_x64(True):
        G = np.array([[1.0, 0.5], [0.0, 2.0], [1.0, 1.0]])
        theta = np.array([0.3, -0.7])
        y = G @ theta
        E0 = np.random.default_rng(0).standard_normal((20, 2))
        res = enkit.calibrate(lambda t: G @ t, enkit.EKI(), E0, y, 0.01 * np.ones(3),
                              key=0, max_iterations=5)
        path = res.to_netcdf(tmp_path / "cal.nc")
    assert main(["report", str(path), "--figures", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "calibration" in out and "misfit" in out
    for name in ("misfit", "parameters", "pairwise"):
        assert (tmp_path / f"cal-{name}.png").read_bytes()[:8] == PNG


def test_report_refuses_a_file_that_is_not_a_result(tmp_path, capsys):
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"not a netCDF file at all")
    assert main(["report", str(bad)]) == 2
    assert "bad.nc" in capsys.readouterr().err


def test_demo_options_write_figures_and_a_netcdf_result(tmp_path, capsys):
    import xarray as xr

    fig, nc = tmp_path / "d.png", tmp_path / "d.nc"
    assert main(["demo", "--model", "lorenz63", "--method", "enkf", "--members", "10",
                 "--cycles", "200", "--burn-in", "50", "--inflation", "1.04", "--seed", "3",
                 "--figure", str(fig), "--output", str(nc)]) == 0
    out = capsys.readouterr().out
    assert "Lorenz-63" in out and "enkf" in out
    assert fig.read_bytes()[:8] == PNG
    assert (tmp_path / "d-hovmoller.png").read_bytes()[:8] == PNG
    with xr.open_dataset(nc) as ds:
        assert ds.sizes["time"] == 200 and ds.sizes["state"] == 3
        assert "truth" in ds and "observations" in ds
