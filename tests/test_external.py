"""enkit.external.ExternalModel: a forward model run as a program, one run
directory per member; failures (exit status, garbage, hangs) become failure
records; calibration and forecasting through it.

The programs are tiny pure-Python scripts run as ``sys.executable
script.py`` (no NumPy import: a member costs one interpreter start).
The calibration test uses deterministic EKI with geometrically growing
steps on G(u) = A u (N > p), whose limit is the least-squares solution
u_LS (exact answer).
"""

import dataclasses
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit._pytree import register_dataclass
from enkit.executors import (
    MemberExecutor,
    MemberTimeout,
    evaluate_members,
    process_pool,
)
from enkit.external import ExternalModel, ExternalModelError
from enkit.inversion import EKI, ForwardFailure, calibrate

P, D, N = 3, 5, 6
RNG = np.random.default_rng(7)
A = RNG.normal(size=(D, P))
GAMMA = 0.05 * np.eye(D)
Y = A @ np.array([0.5, -1.0, 1.5]) + np.sqrt(0.05) * RNG.normal(size=D)
U0 = RNG.normal(size=(N, P))
U_LS = np.linalg.lstsq(A, Y, rcond=None)[0]

LINEAR = """
import json, sys
u = json.load(open(sys.argv[1]))
A = json.load(open(sys.argv[3]))
print("member", u)
json.dump([sum(a * b for a, b in zip(row, u)) for row in A], open(sys.argv[2], "w"))
"""

# u[0] < -1: exits 3; u[1] < -1: writes garbage; u[2] < -1: hangs (with a
# child sleeping too: the whole process group must go); else echoes u.
FLAKY = """
import json, os, subprocess, sys, time
u = json.load(open(sys.argv[1]))
if u[0] < -1:
    sys.stderr.write("solver diverged\\n")
    sys.exit(3)
if u[1] < -1:
    open(sys.argv[2], "w").write("<html>not numbers")
    sys.exit(0)
if u[2] < -1:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open("child.pid", "w").write(str(child.pid))
    time.sleep(60)
json.dump(u, open(sys.argv[2], "w"))
"""

# the length of argument 2, to prove no shell ever sees the arguments
ARGLEN = """
import json, sys
json.dump([len(sys.argv[2])], open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    d = tmp_path_factory.mktemp("scripts")
    for name, text in (("linear.py", LINEAR), ("flaky.py", FLAKY), ("arglen.py", ARGLEN)):
        (d / name).write_text(text)
    (d / "A.json").write_text(json.dumps(A.tolist()))
    return d


def linear_model(scripts, work, **options):
    return ExternalModel([sys.executable, str(scripts / "linear.py"), "{input}", "{output}",
                          str(scripts / "A.json")], work_dir=work, **options)


def test_runs_the_program_and_reads_its_outputs(scripts, tmp_path):
    model = linear_model(scripts, tmp_path / "w")
    u = np.array([0.1, -0.7, 2.3])
    np.testing.assert_allclose(model(u), A @ u, rtol=1e-14)
    assert os.listdir(tmp_path / "w") == []  # successful runs leave nothing (keep="failed")
    kept = linear_model(scripts, tmp_path / "k", keep="all")
    kept(u, tag="it003-m017")
    (run,) = (tmp_path / "k").iterdir()
    assert run.name.startswith("it003-m017-")
    assert json.loads((run / "input.json").read_text()) == u.tolist()  # exact round trip
    assert (run / "stdout.log").read_text().startswith("member [0.1, -0.7, 2.3]")
    # NumPy input and text output
    code = "import numpy, sys; numpy.savetxt('o.txt', 2 * numpy.load(sys.argv[1]))"
    npy = ExternalModel([sys.executable, "-c", code, "{input}"], input_format="npy",
                        output_file="o.txt", work_dir=tmp_path / "n")
    np.testing.assert_array_equal(npy(u), 2 * u)
    with pytest.raises(ValueError, match="tag must be"):
        model(u, tag="../x")
    with pytest.raises(ValueError, match=r"\(p,\) vector"):
        model(np.ones((2, 3)))


def test_arguments_are_a_list_never_a_shell_line(scripts, tmp_path):
    tricky = "$(echo hi); *  `ls` 'q'"
    model = ExternalModel([sys.executable, str(scripts / "arglen.py"), "{output}", tricky],
                          work_dir=tmp_path)
    np.testing.assert_array_equal(model(np.zeros(1)), [len(tricky)])
    with pytest.raises(TypeError, match="no shell string"):
        ExternalModel(f"{sys.executable} model.py")


def test_construction_validates_the_template_and_options(scripts, tmp_path):
    ok = [sys.executable, str(scripts / "linear.py"), "{input}", "{output}"]
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \['member'\]"):
        ExternalModel(ok + ["{member}"], work_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown placeholder"):
        ExternalModel(ok + ["{}"], work_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        ExternalModel(["no-such-program-enkit", "{input}"], work_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot hold placeholders"):
        ExternalModel(["{input}"], work_dir=tmp_path)
    with pytest.raises(ValueError, match="output_file must be a relative"):
        ExternalModel(ok, output_file="../out.json", work_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot infer output_format"):
        ExternalModel(ok, output_file="out.nc", work_dir=tmp_path)
    with pytest.raises(ValueError, match="input_format must be"):
        ExternalModel(ok, input_format="netcdf", work_dir=tmp_path)
    with pytest.raises(ValueError, match="keep must be"):
        ExternalModel(ok, keep="some", work_dir=tmp_path)
    with pytest.raises(ValueError, match="timeout must be"):
        ExternalModel(ok, timeout=-1, work_dir=tmp_path)
    with pytest.raises(TypeError, match="env must be"):
        ExternalModel(ok, env={"A": 1}, work_dir=tmp_path)
    # literal braces and env reach the program
    code = ("import json, os, sys; json.dump([len(os.environ['ENKIT_X']), len(sys.argv[1])], "
            "open('output.json', 'w'))")
    env = ExternalModel([sys.executable, "-c", code, "{{x}}"], env={"ENKIT_X": "abcd"},
                        work_dir=tmp_path)
    np.testing.assert_array_equal(env(np.zeros(1)), [4, 3])
    assert hash(env) == hash(dataclasses.replace(env))


def test_exit_status_garbage_and_hangs_are_failed_members_with_kept_logs(scripts, tmp_path):
    model = ExternalModel([sys.executable, str(scripts / "flaky.py"), "{input}", "{output}"],
                          work_dir=tmp_path / "w", timeout=1.0)
    U = np.array([[0.3, 0.2, 0.1], [-2.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, -2.0],
                  [0.5, 0.5, 0.5]])
    res = evaluate_members(model, U, executor="threads")
    assert [r.ok for r in res] == [True, False, False, False, True]
    np.testing.assert_array_equal(res[0].value, U[0])
    assert res[1].error.startswith("ExternalModelError: ") and "exited with status 3" in res[1].error
    assert "solver diverged" in res[1].error
    assert "is not a json array of numbers" in res[2].error
    assert res[3].error.startswith("MemberTimeout: ") and "killed" in res[3].error
    # the logs of the three failed members are kept, named in their errors
    runs = sorted((tmp_path / "w").iterdir())
    assert len(runs) == 3
    for r in res[1:4]:
        (run,) = [d for d in runs if str(d) in r.error]
        assert {"input.json", "stdout.log", "stderr.log"} <= set(os.listdir(run))
    # the hung program's child was killed with it (same process group)
    (hung,) = [d for d in runs if (d / "child.pid").exists()]
    pid = int((hung / "child.pid").read_text())
    for _ in range(100):  # reaped by init shortly after the kill
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child process {pid} of the timed-out program is still alive")
    # keep="none" removes even failed runs; the error says so
    gone = dataclasses.replace(model, work_dir=tmp_path / "g", keep="none")
    with pytest.raises(ExternalModelError, match="removed") as e:
        gone(U[1])
    assert e.value.run_dir is None and os.listdir(tmp_path / "g") == []
    with pytest.raises(MemberTimeout):
        gone(U[3])


@dataclasses.dataclass(frozen=True)
class Growing:
    """Δt = 3 max(t, 1): the time grows fourfold per step (test scheduler)."""

    def step_size(self, time, G, y, noise):
        return 3.0 * jnp.maximum(jnp.asarray(time, G.dtype), 1.0)


register_dataclass(Growing, data_fields=[], meta_fields=[])
OPTS = {"scheduler": Growing(), "max_iterations": 8, "key": 0}


def test_calibrate_with_an_external_model_converges_and_serial_equals_pool(scripts, tmp_path):
    proc = EKI(stochastic=False)
    model = linear_model(scripts, tmp_path / "w")
    serial = calibrate(model, proc, U0, Y, GAMMA, black_box=True, **OPTS)
    inproc = calibrate(lambda u: A @ u, proc, U0, Y, GAMMA, black_box=True, **OPTS)
    err = np.linalg.norm(serial.mean - U_LS) / np.linalg.norm(U_LS)
    assert err < 1e-3, err
    assert np.linalg.norm(U0.mean(0) - U_LS) / np.linalg.norm(U_LS) > 0.3  # can fail
    np.testing.assert_allclose(serial.ensembles, inproc.ensembles, rtol=1e-9, atol=1e-12)
    # stochastic EKI (perturbed data drawn from the seed): same seed, same run
    noisy = calibrate(model, EKI(), U0, Y, GAMMA, black_box=True, max_iterations=3, key=5)
    with process_pool(2) as pool:
        pooled = calibrate(model, proc, U0, Y, GAMMA, executor=pool, **OPTS)
        noisy_pooled = calibrate(model, EKI(), U0, Y, GAMMA, executor=pool, max_iterations=3,
                                 key=5)
    np.testing.assert_array_equal(pooled.ensembles, serial.ensembles)
    np.testing.assert_array_equal(pooled.forward_outputs, serial.forward_outputs)
    np.testing.assert_array_equal(noisy_pooled.ensembles, noisy.ensembles)
    assert not np.allclose(noisy.ensembles[-1], serial.ensembles[3])  # the noise mattered
    assert os.listdir(tmp_path / "w") == []


def test_30_member_calibration_on_a_dask_cluster_equals_serial(scripts, tmp_path):
    """A LocalCluster on loopback with 2 worker processes runs a 30-member
    stochastic EKI calibration of the external program to convergence; the
    serial loop gives identical results for the seed (the process pool's
    equality with it is tested above)."""
    pytest.importorskip("distributed", reason="needs 'distributed' (pip install 'enkit[dask]')")
    U30 = np.random.default_rng(11).normal(size=(30, P))
    proc = EKI()
    model = linear_model(scripts, tmp_path / "w")
    opts = {**OPTS, "max_iterations": 6, "key": 21}
    serial = calibrate(model, proc, U30, Y, GAMMA, black_box=True, **opts)
    with enkit.executors.dask_executor(n_workers=2, processes=True) as dask:
        via_dask = calibrate(model, proc, U30, Y, GAMMA, executor=dask, **opts)
    np.testing.assert_array_equal(via_dask.ensembles, serial.ensembles)
    np.testing.assert_array_equal(via_dask.forward_outputs, serial.forward_outputs)
    err = np.linalg.norm(via_dask.mean - U_LS) / np.linalg.norm(U_LS)
    assert err < 1e-2, err
    assert np.linalg.norm(U30.mean(0) - U_LS) / np.linalg.norm(U_LS) > 0.3  # can fail


def test_failed_members_reach_the_failure_policy(scripts, tmp_path):
    model = ExternalModel([sys.executable, str(scripts / "flaky.py"), "{input}", "{output}"],
                          work_dir=tmp_path, timeout=1.0)
    U = np.array([[0.3, 0.2, 0.1], [-2.0, 0.0, 0.0], [0.1, 0.4, 0.2], [0.2, -0.1, 0.3]])
    with pytest.raises(ForwardFailure, match=r"members \[1\].*exited with status 3") as e:
        calibrate(model, EKI(stochastic=False), U, np.zeros(3), np.eye(3),
                  executor=MemberExecutor("threads", retries=1, retry_on=MemberTimeout))
    assert e.value.members == [1] and e.value.iteration == 0


def test_forecast_through_black_box_model_equals_the_jax_model(scripts, tmp_path):
    M = 0.9 * np.eye(D) + 0.05 * RNG.normal(size=(D, D))
    (tmp_path / "M.json").write_text(json.dumps(M.tolist()))
    step = ExternalModel([sys.executable, str(scripts / "linear.py"), "{input}", "{output}",
                          str(tmp_path / "M.json")], work_dir=tmp_path / "w")
    E0 = RNG.normal(size=(N, D))
    obs = RNG.normal(size=(2, 2))
    H = np.eye(D)[:2]
    run = {"h": H, "R": 0.5 * np.eye(2)}
    ext = enkit.assimilate(enkit.BlackBoxModel(step), E0, obs, enkit.etkf, **run)
    ref = enkit.assimilate(lambda x: jnp.asarray(M) @ x, E0, obs, enkit.etkf, **run)
    np.testing.assert_allclose(ext.ensemble, ref.ensemble, rtol=1e-12, atol=1e-12)
    assert not np.allclose(ext.ensemble, E0)


def test_input_names_write_a_json_object(scripts, tmp_path):
    model = linear_model(scripts, tmp_path / "k", keep="all", input_names=("a", "b", "c"))
    u = np.array([0.1, -0.7, 2.3])
    with pytest.raises(Exception):  # linear.py expects a list: the object reaches it
        model(u)
    run = next((tmp_path / "k").iterdir())
    assert json.loads((run / "input.json").read_text()) == {"a": 0.1, "b": -0.7, "c": 2.3}
    with pytest.raises(ValueError, match="input_names names 3"):
        model(np.zeros(2))
    with pytest.raises(ValueError, match="input_format='json'"):
        linear_model(scripts, tmp_path, input_names=("a",), input_format="npy")
    for bad in ("abc", ("a", "a"), (), ("a", 1)):
        with pytest.raises(TypeError, match="input_names"):
            linear_model(scripts, tmp_path, input_names=bad)
