"""TOML calibration configs: each key parsed into the right object, every
problem reported with its key path, and a linear-Gaussian run through the
config and the CLI that matches the exact Kalman update."""

import textwrap

import numpy as np
import pytest

from enkit.config import ConfigError, EntryPoint, load_config
from enkit.covariance import Diagonal
from enkit.inversion import EKSStableScheduler

BASE = """
[parameters.a]
bounds = [0.0, 4.0]
guess = 1.5
std = 0.5

[parameters.b]
mean = 0.25

[observations]
values = [1.0, 2.0, 3.0]
noise_std = 0.1

[process]
name = "EKI"

[model]
command = ["{python}", "-c", "pass", "{input}", "{output}"]
work_dir = "runs"
"""
CMD = 'command = ["{python}", "-c", "pass", "{input}", "{output}"]\nwork_dir = "runs"'


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _error(tmp_path, text) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    return exc.value


def test_valid_config_builds_every_piece(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.space.names == ("a", "b") and cfg.process_name == "EKI"
    # guess is the constrained prior centre: T(mean) = 1.5; b is unbounded
    x0 = cfg.space.to_constrained(cfg.space.prior_mean)
    np.testing.assert_allclose(np.asarray(x0), [1.5, 0.25], rtol=1e-14)
    np.testing.assert_allclose(np.asarray(cfg.space.prior_covariance.diagonal()), [0.25, 1.0])
    np.testing.assert_array_equal(cfg.y, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(cfg.noise_variance, [0.01] * 3, rtol=1e-15)
    assert cfg.members == 20 and cfg.seed == 0 and cfg.max_iterations == 10
    assert cfg.executor == ("serial", None) and cfg.checkpoint is None
    assert cfg.output == str(tmp_path / "c.nc") and cfg.scheduler is None
    E = cfg.initial_ensemble()
    assert E.shape == (20, 2) and E.dtype == np.float64
    np.testing.assert_array_equal(E, cfg.initial_ensemble())  # seeded, reproducible


@pytest.mark.parametrize("edit, key, words", [
    (("bounds = [0.0, 4.0]", "bound = [0.0, 4.0]"), "parameters.a.bound", "did you mean 'bounds'"),
    (("[process]", "[proces]"), "proces", "did you mean 'process'"),
    (('name = "EKI"', 'name = "EKI"\nspread = 1.0'), "process.spread", "not an option of EKI"),
    (('name = "EKI"', 'name = "foo"'), "process.name", "known: EKI"),
    (('name = "EKI"', 'name = "EKS"\nsteps = 3'), "process.steps", "its options: dt"),
    (("std = 0.5", "std = -0.5"), "parameters.a.std", "> 0"),
    (("guess = 1.5", "guess = 4.5"), "parameters.a.guess", "strictly inside"),
    (("guess = 1.5", "guess = 1.5\nmean = 0.0"), "parameters.a.guess", "not both"),
    (("bounds = [0.0, 4.0]", "bounds = [4.0, 4.0]"), "parameters.a.bounds", "lower must be < upper"),
    (("bounds = [0.0, 4.0]", "bounds = [0.0]"), "parameters.a.bounds", "[lower, upper]"),
    (("noise_std = 0.1", "noise_std = [0.1, 0.2]"), "observations.values", "wrong length 3"),
    (("noise_std = 0.1", "noise_std = 0.0"), "observations.noise_std", "> 0"),
    (("noise_std = 0.1", ""), "observations.noise_std", "exactly one"),
    (("noise_std = 0.1", "noise_std = 0.1\nlength = 4"), "observations.values", "wrong length"),
    (('values = [1.0, 2.0, 3.0]', 'values = [1.0, nan, 3.0]'), "observations.values", "NaN"),
    (('values = [1.0, 2.0, 3.0]', 'values = "x"'), "observations.values", "list of numbers"),
    (('"{python}", "-c"', '"no-such-program-enkit", "-c"'), "model.command", "not found"),
    (('"{input}"', '"{inptu}"'), "model.command", "unknown placeholder"),
    (('[model]', '[model]\noutput_file = "out.xyz"'), "model.output_file", "output_format"),
    (('[model]', '[model]\nkeep = "some"'), "model.keep", "keep must be one of"),
    (('[model]', '[model]\ntimeout = 0'), "model.timeout", "> 0"),
    ((CMD, 'entry_point = "nomodule"'),
     "model.entry_point", "module:function"),
    ((CMD,
      'entry_point = "no_such_module_enkit:f"'), "model.entry_point", "cannot import"),
    (('[model]', '[calibration]\nmembers = 1\n[model]'), "calibration.members", ">= 2"),
    (('[model]', '[calibration]\nfailure = "skip"\n[model]'), "calibration.failure", "one of"),
    (('[model]', '[calibration]\ntau = -1.0\n[model]'), "calibration.tau", "> 0"),
    (('[model]', '[calibration]\nseed = 1.5\n[model]'), "calibration.seed", "an integer"),
    (('[model]', '[calibration]\ncheckpoint = "nodir/c.npz"\n[model]'), "calibration.checkpoint",
     "does not exist"),
    (('[model]', '[executor]\nprocesses = 2\nthreads = 2\n[model]'), "executor.threads",
     "one executor"),
    (('[model]', '[executor]\nprocesses = 0\n[model]'), "executor.processes", ">= 1"),
    (('[model]', '[executor]\nprocess = 2\n[model]'), "executor.process", "did you mean 'processes'"),
])
def test_each_problem_names_its_key(tmp_path, edit, key, words):
    assert edit[0] in BASE
    err = _error(tmp_path, BASE.replace(edit[0], edit[1], 1))
    assert err.key == key and str(err).startswith(f"{key}: ")
    assert words in str(err), str(err)


def test_missing_tables_and_bad_toml(tmp_path):
    text = BASE.replace("[process]\nname = \"EKI\"\n", "")
    assert _error(tmp_path, text).key == "process"
    assert _error(tmp_path, BASE.replace('name = "EKI"', "")).key == "process.name"
    assert _error(tmp_path, BASE + "[[[").key == "<file>"


def test_observation_files_csv_and_netcdf(tmp_path):
    xr = pytest.importorskip("xarray")
    (tmp_path / "obs.csv").write_text("t,value,sd\n0,1.0,0.1\n1,2.0,0.2\n2,3.0,0.3\n")
    obs = 'file = "obs.csv"\ncolumn = "value"\nnoise_column = "sd"'
    cfg = load_config(_write(tmp_path, BASE.replace(
        "values = [1.0, 2.0, 3.0]\nnoise_std = 0.1", obs)))
    np.testing.assert_array_equal(cfg.y, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(cfg.noise_variance, [0.01, 0.04, 0.09], rtol=1e-15)
    xr.Dataset({"y": ("i", [4.0, 5.0]), "s": ("i", [1.0, 2.0])}).to_netcdf(
        tmp_path / "obs.nc", engine="scipy")
    cfg = load_config(_write(tmp_path, BASE.replace(
        "values = [1.0, 2.0, 3.0]\nnoise_std = 0.1", 'file = "obs.nc"\nnoise_column = "s"')))
    np.testing.assert_array_equal(cfg.y, [4.0, 5.0])
    np.testing.assert_array_equal(cfg.noise_variance, [1.0, 4.0])
    err = _error(tmp_path, BASE.replace("values = [1.0, 2.0, 3.0]", 'file = "obs.csv"\n'
                                        'column = "nope"'))
    assert err.key == "observations.file" and "columns: ['t', 'value', 'sd']" in str(err)


def test_process_choices(tmp_path):
    def load(proc, extra=""):
        return load_config(_write(tmp_path, BASE.replace('name = "EKI"',
                                                         f'name = "{proc}"\n{extra}')))

    esmda = load("ES-MDA", "steps = 3")
    assert esmda.process_name == "ESMDA" and esmda.max_iterations == 3
    np.testing.assert_allclose(np.asarray(esmda.process.process.alpha), [3.0, 3.0, 3.0])
    assert load("UKI", "dt = 0.25").initial_ensemble() is None
    assert isinstance(load("eks").scheduler, EKSStableScheduler)
    assert float(load("ETKI", "dt = 0.5").scheduler.dt) == 0.5
    assert isinstance(load("TEKI").process.process.prior.covariance, Diagonal)
    with pytest.raises(ConfigError, match="calibration.max_iterations: 5 exceeds"):
        load_config(_write(tmp_path, BASE.replace('name = "EKI"', 'name = "ESMDA"\nsteps = 2')
                           + "[calibration]\nmax_iterations = 5\n"))


def test_executor_specs(tmp_path):
    for table, spec in (("processes = 4", ("processes", 4)), ("threads = 2", ("threads", 2)),
                        ('dask = "tcp://scheduler:8786"', ("dask", "tcp://scheduler:8786")),
                        ("serial = true", ("serial", None))):
        cfg = load_config(_write(tmp_path, BASE + f"[executor]\n{table}\n"))
        assert cfg.executor == spec


def test_entry_point_gets_named_values(tmp_path):
    (tmp_path / "enkit_cfgtest_named.py").write_text(
        "def g(p):\n    return [p['a'] + 10 * p['b'], p['a'] * p['b'], 1.0]\n")
    cfg = load_config(_write(tmp_path, BASE.replace(
        CMD,
        'entry_point = "enkit_cfgtest_named:g"')))
    assert isinstance(cfg.forward, EntryPoint)
    np.testing.assert_array_equal(cfg.forward(np.array([2.0, 3.0])), [32.0, 6.0, 1.0])


def test_linear_gaussian_run_through_the_cli_is_the_exact_kalman_update(tmp_path):
    """ETKI, one step of Δt = 1 on G(u) = A u (unbounded parameters): the
    final ensemble's mean and covariance are the Kalman update of the
    initial sample mean and covariance (closed form)."""
    xr = pytest.importorskip("xarray")
    from enkit.cli import main

    A = np.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
    (tmp_path / "enkit_cfgtest_linear.py").write_text(
        f"A = {A.tolist()}\n"
        "def g(p):\n    return [r[0] * p['a'] + r[1] * p['b'] for r in A]\n")
    text = (BASE.replace(CMD,
                         'entry_point = "enkit_cfgtest_linear:g"')
            .replace("bounds = [0.0, 4.0]\nguess = 1.5\n", "mean = 0.5\n")
            .replace('name = "EKI"', 'name = "ETKI"')
            + "[calibration]\nmembers = 6\nmax_iterations = 1\n[executor]\nthreads = 2\n")
    cfg_path = _write(tmp_path, text)
    assert main(["calibrate", str(cfg_path), "--quiet"]) == 0
    ds = xr.load_dataset(tmp_path / "c.nc", engine="scipy")
    U0, U1 = ds["parameters"].values
    y, R = np.array([1.0, 2.0, 3.0]), 0.01 * np.eye(3)
    m0, C0 = U0.mean(0), np.cov(U0.T, ddof=1)
    K = C0 @ A.T @ np.linalg.inv(A @ C0 @ A.T + R)
    np.testing.assert_allclose(U1.mean(0), m0 + K @ (y - A @ m0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.cov(U1.T, ddof=1), C0 - K @ A @ C0, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ds["outputs"].values[1], U1 @ A.T, rtol=1e-12)
