"""`enkit calibrate CONFIG.toml`: a full run of the shipped example, bad
configurations stopped before any model run, --help, and a SIGKILL in the
middle of a run continued with --resume to the uninterrupted result."""

import dataclasses
import os
import shutil
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

xr = pytest.importorskip("xarray")

from enkit.cli import main
from enkit.config import KEYS
from enkit.io import load_checkpoint
from enkit.results_io import read_netcdf

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "calibrate_external"
TRUTH = {"amplitude": 2.0, "rate": 0.8, "offset": 0.3}
TIMES = 0.5 * np.arange(8)


def _copy(tmp: Path, max_iterations: int = 5, **replace) -> Path:
    """The example in ``tmp`` with fewer iterations and optional text edits."""
    d = tmp / "ex"
    shutil.copytree(EXAMPLE, d)
    text = (d / "config.toml").read_text().replace("max_iterations = 8",
                                                  f"max_iterations = {max_iterations}")
    text = text.replace("timeout = 60\n", 'timeout = 60\nwork_dir = "runs"\n')
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    (d / "config.toml").write_text(text)
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the example (5 iterations), in this process."""
    d = _copy(tmp_path_factory.mktemp("ref"))
    log = d / "runs.log"
    os.environ["EXAMPLE_RUN_LOG"] = str(log)
    try:
        assert main(["calibrate", str(d / "config.toml"), "--quiet"]) == 0
    finally:
        del os.environ["EXAMPLE_RUN_LOG"]
    return d, read_netcdf(d / "result.nc"), log.read_text().splitlines()


def test_example_run_converges_and_writes_netcdf(reference):
    _, ds, runs = reference
    it, N, p = ds["parameters"].shape
    assert (it, N, p) == (6, 20, 3) and len(runs) == 6 * 20  # every member run once
    assert list(ds["parameter"].values) == ["amplitude", "rate", "offset"]
    assert ds.attrs["stopped_by"] == "max_iterations" and ds.attrs["n_iterations"] == 5
    # the members stay inside their bounds
    X = ds["parameters"].values
    assert np.all((X[..., 0] > 0.1) & (X[..., 0] < 10) & (X[..., 2] > -1) & (X[..., 2] < 1))
    # outputs are the model's: g = a exp(-k t) + c of each member's values
    G = X[..., :1] * np.exp(-X[..., 1:2] * TIMES) + X[..., 2:3]
    np.testing.assert_allclose(ds["outputs"].values, G, rtol=1e-12)
    # least-squares fit of the same data, by Gauss-Newton (exact to round-off)
    y = ds["y"].values
    th = np.array([2.0, 0.8, 0.3])
    for _ in range(30):
        e = np.exp(-th[1] * TIMES)
        J = np.stack([e, -th[0] * TIMES * e, np.ones_like(TIMES)], axis=1)
        th = th + np.linalg.lstsq(J, y - (th[0] * e + th[2]), rcond=None)[0]
    cov = 0.02 ** 2 * np.linalg.inv(J.T @ J)  # its (linearised) covariance
    est = ds["final_estimate"].values
    assert np.all(np.abs(est - th) < 2 * np.sqrt(np.diag(cov)))
    # the misfit fell from the prior's to the noise level (about sqrt(d))
    m = ds["misfit"].values
    assert m[0] > 30 and m[-1] < 2 * np.sqrt(8)


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for key, *_ in KEYS:
        assert key in out, key
    for flag in ("--resume", "--overwrite", "--quiet", "JSON object"):
        assert flag in out


BAD = {
    "missing key": ({'name = "EKI"\n': ""}, "process.name"),
    "missing noise": ({"noise_std = 0.02\n": ""}, "observations.noise_std"),
    "unknown key": ({"members = 20": "member = 20"}, "calibration.member"),
    "unknown process": ({'name = "EKI"': 'name = "EKX"'}, "process.name"),
    "bounds lower >= upper": ({"bounds = [0.01, 5.0]": "bounds = [5.0, 0.01]"},
                              "parameters.rate.bounds"),
    "missing command": ({'command = ["{python}"': 'command = ["no-such-program-enkit"'},
                        "model.command"),
    "missing script": ({"{config_dir}/model.py": "{config_dir}/nomodel.py"},
                       "model.command"),
    "parameter name with a slash": ({"[parameters.rate]": '[parameters."ra/te"]'},
                                    "parameters.'ra/te'"),
    "parameter name with shell characters": ({"[parameters.rate]": '[parameters."$(rm)"]'},
                                             "parameters.'$(rm)'"),
    "environment variable name": ({"[model]": '[model]\nenv = { "A B" = "1" }'},
                                  "model.env.'A B'"),
    "observation file that is a pickle": (
        {"values = [2.3069, 1.6571, 1.2053, 0.8763, 0.7219, 0.5796, 0.4707, 0.4332]":
         'file = "obs.nc"'}, "observations.file"),
    "observation file that is binary": (
        {"values = [2.3069, 1.6571, 1.2053, 0.8763, 0.7219, 0.5796, 0.4707, 0.4332]":
         'file = "obs_binary.csv"'}, "observations.file"),
    "observation file that is a corrupt netCDF": (
        {"values = [2.3069, 1.6571, 1.2053, 0.8763, 0.7219, 0.5796, 0.4707, 0.4332]":
         'file = "obs_corrupt.nc"'}, "observations.file"),
    "observation file with NaN": (
        {"values = [2.3069, 1.6571, 1.2053, 0.8763, 0.7219, 0.5796, 0.4707, 0.4332]":
         'file = "obs_nan.csv"'}, "observations.file"),
    "observation file of the wrong length": (
        {"values = [2.3069, 1.6571, 1.2053, 0.8763, 0.7219, 0.5796, 0.4707, 0.4332]":
         'file = "obs_short.csv"\nlength = 8'}, "observations.file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_stops_before_any_model_run(case, tmp_path, monkeypatch, capsys):
    edits, key = BAD[case]
    d = _copy(tmp_path, **edits)
    (d / "obs_nan.csv").write_text("y\n1.0\nnan\n0.5\n")
    (d / "obs_short.csv").write_text("y\n1.0\n0.9\n0.5\n")
    (d / "obs.nc").write_bytes(pickle.dumps([1.0, 2.0]))
    (d / "obs_binary.csv").write_bytes(bytes(range(256)))
    (d / "obs_corrupt.nc").write_bytes(b"CDF\x01" + bytes(range(200)))
    log = tmp_path / "runs.log"
    monkeypatch.setenv("EXAMPLE_RUN_LOG", str(log))
    assert main(["calibrate", str(d / "config.toml")]) == 2
    err = capsys.readouterr().err
    assert f"{key}:" in err, err
    assert not log.exists()  # the model never ran
    assert not (d / "checkpoint.npz").exists() and not (d / "result.nc").exists()


def test_existing_checkpoint_needs_resume_or_overwrite(reference, tmp_path, capsys):
    d, _, _ = reference
    assert main(["calibrate", str(d / "config.toml")]) == 2
    assert "--resume" in capsys.readouterr().err
    fresh = _copy(tmp_path)
    assert main(["calibrate", str(fresh / "config.toml"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def _cli(cfg: Path, *flags: str, env=None):
    return subprocess.Popen([sys.executable, "-m", "enkit.cli", "calibrate", str(cfg), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(reference, tmp_path):
    _, ref, _ = reference
    d = _copy(tmp_path)
    ckpt = d / "checkpoint.npz"
    proc = _cli(d / "config.toml")
    deadline = time.monotonic() + 120
    while not ckpt.exists():  # the first update is saved: kill inside iteration 1
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, meta = load_checkpoint(ckpt)
    assert meta["stopped_by"] is None and meta["completed_iterations"] < 5  # unfinished
    assert not (d / "result.nc").exists()
    again = _cli(d / "config.toml", "--resume")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "resuming" in out and f"iteration {meta['completed_iterations']:3d}" in out
    got = read_netcdf(d / "result.nc")
    for name in ref.variables:
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
    attrs = {k: v for k, v in got.attrs.items() if k != "config_file"}
    want = {k: v for k, v in ref.attrs.items() if k != "config_file"}
    assert attrs.keys() == want.keys()
    for k, v in want.items():
        np.testing.assert_array_equal(attrs[k], v, err_msg=k)


def test_entry_point_on_a_dask_cluster_equals_the_external_program(reference, tmp_path):
    """The same model as a Python entry point, run on a Dask cluster (an
    in-process one, reached by its address), gives the external program's
    result bit for bit."""
    distributed = pytest.importorskip("distributed")
    _, ref, _ = reference
    d = _copy(tmp_path)
    (d / "enkit_clitest_decay.py").write_text(
        "import math\n\ndef g(p):\n    return [p['amplitude'] * math.exp(-p['rate'] * 0.5 * i)"
        " + p['offset'] for i in range(8)]\n")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        text = (d / "config.toml").read_text()
        text = text.replace('command = ["{python}", "{config_dir}/model.py", "{input}", '
                            '"{output}"]\noutput_file = "output.json"\ntimeout = 60\n'
                            'work_dir = "runs"', 'entry_point = "enkit_clitest_decay:g"')
        text = text.replace("serial = true", f'dask = "{cluster.scheduler_address}"')
        (d / "config.toml").write_text(text)
        assert main(["calibrate", str(d / "config.toml"), "--quiet"]) == 0
    got = read_netcdf(d / "result.nc")
    assert got.attrs["executor.dask"] == cluster.scheduler_address
    assert got.attrs["model.entry_point"] == "enkit_clitest_decay:g"
    assert "model.command" not in got.attrs
    for name in ("parameters", "outputs", "misfit", "final_estimate"):
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)


def test_a_failing_model_stops_with_the_members_named(tmp_path, capsys):
    d = _copy(tmp_path, **{'"{config_dir}/model.py", "{input}", "{output}"':
                           '"-c", "import sys; sys.exit(3)", "{input}", "{output}"'})
    assert main(["calibrate", str(d / "config.toml")]) == 1
    err = capsys.readouterr().err
    assert "exited with status 3" in err and "iteration 0" in err, err
    assert len(list((d / "runs").iterdir())) == 20  # the failed runs are kept, with logs
    assert not (d / "result.nc").exists()


def test_calibration_to_xarray_round_trips_through_netcdf(tmp_path):
    import jax.numpy as jnp

    from enkit.inversion import ETKI, calibrate
    from enkit.results_io import calibration_to_xarray, write_netcdf

    A = jnp.array([[1.0, 0.5], [0.0, 2.0], [1.0, 1.0]])
    U0 = jnp.array([[0.1, -0.3], [0.7, 0.2], [-0.5, 0.4], [0.3, 0.9]])
    res = calibrate(lambda u: A @ u, ETKI(), U0, jnp.array([1.0, 2.0, 0.5]), 0.01,
                    max_iterations=2)
    ds = calibration_to_xarray(res, settings={"note": "linear", "flag": True, "none": None})
    assert dict(ds.sizes) == {"iteration": 3, "member": 4, "parameter": 2, "output": 3,
                              "step": 2, "parameter_b": 2}
    assert list(ds["parameter"].values) == ["p0", "p1"] and "final_estimate" not in ds
    assert ds.attrs["flag"] == 1 and ds.attrs["none"] == "None"
    path = write_netcdf(ds, tmp_path / "r.nc")
    back = read_netcdf(path)
    assert [f.name for f in tmp_path.iterdir()] == ["r.nc"]  # no temporary file left
    for name in ds.variables:
        np.testing.assert_array_equal(back[name].values, ds[name].values, err_msg=name)
    np.testing.assert_array_equal(back["parameters"].values, np.asarray(res.ensembles))
    np.testing.assert_array_equal(back["final_covariance_unconstrained"].values,
                                  np.asarray(res.covariance))
    assert back["parameters"].dtype == np.float64
    with pytest.raises(TypeError, match="tuple"):
        calibration_to_xarray(dataclasses.replace(res, forward_outputs=tuple(
            res.forward_outputs)))


def test_a_config_folder_with_braces_in_its_name_runs(tmp_path, capsys):
    odd = tmp_path / "cfg{odd}name{input}"
    odd.mkdir()
    d = _copy(odd, max_iterations=1, **{"members = 20": "members = 4"})
    assert main(["calibrate", str(d / "config.toml"), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert (d / "result.nc").exists()


def test_placeholders_are_substituted_once_and_literal_braces_kept():
    from enkit.config import _substitute

    values = {"python": "/bin/py", "config_dir": "/x/{output}/y"}
    assert _substitute("{config_dir}/m.py", values, escape=False) == "/x/{output}/y/m.py"
    assert _substitute("{config_dir}/m.py", values, escape=True) == "/x/{{output}}/y/m.py"
    assert _substitute("{{config_dir}} {python} {input}", values, escape=True) == \
        "{{config_dir}} /bin/py {input}"


def _tamper(src: Path, dst: Path, *, drop_array=None, drop_meta=None):
    """A copy of the checkpoint ``src`` at ``dst`` without one array or one
    metadata entry (written as the checkpoint format does: npz + JSON record)."""
    import json

    with np.load(src, allow_pickle=False) as z:
        raw = {k: z[k] for k in z.files}
    info = json.loads(bytes(raw["__checkpoint__"]).decode())
    if drop_array is not None:
        raw.pop(drop_array)
    if drop_meta is not None:
        info["metadata"].pop(drop_meta)
    raw["__checkpoint__"] = np.frombuffer(json.dumps(info).encode(), np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **raw)


@pytest.mark.parametrize("damage, expect", [
    ({"drop_array": "misfits"}, "lacks 'misfits'"),
    ({"drop_meta": "evaluated"}, "lacks 'evaluated'"),
    ({"drop_meta": "config"}, "lacks 'config'"),
])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_entry(
        reference, tmp_path, capsys, damage, expect):
    d0, _, _ = reference
    d = _copy(tmp_path)
    _tamper(d0 / "checkpoint.npz", d / "checkpoint.npz", **damage)
    code = main(["calibrate", str(d / "config.toml"), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint.npz" in err and expect in err and "--overwrite" in err, err
    assert "Traceback" not in err


def test_a_directory_at_the_checkpoint_path_is_a_config_error(tmp_path, capsys):
    d = _copy(tmp_path)
    (d / "checkpoint.npz").mkdir()
    assert main(["calibrate", str(d / "config.toml"), "--resume"]) == 2
    assert "calibration.checkpoint:" in capsys.readouterr().err
