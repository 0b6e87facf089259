"""Checkpoints (enkit.io) and resumable calibrate().

- save/load round-trips a process-state pytree bit for bit (dtypes, typed
  PRNG keys included) and refuses missing, truncated, foreign and pickled
  files with clear errors;
- a write is atomic: a failing or SIGKILLed writer leaves the old checkpoint
  or the new one, never a partial file, and its temporaries are never read;
- calibrate(checkpoint=...) interrupted after k iterations (callback,
  a black-box forward interrupted mid-iteration, or SIGKILL of another
  process) and resumed gives a result bit-identical to an uninterrupted run:
  stochastic EKI (keys line up), the Ignore policy (its refill draws line
  up), UKI; a finished checkpoint returns its result without evaluating;
- another configuration is refused naming the part that differs, and the
  metadata holds the enkit version.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.inversion import (
    EKI,
    UKI,
    FixedStep,
    GaussianPrior,
    Ignore,
    ObservationSeries,
    calibrate,
)
from enkit.io import (
    CheckpointError,
    fingerprint,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
    tree_from_arrays,
    tree_to_arrays,
)

P, D, N = 3, 5, 12
RNG = np.random.default_rng(4)
A = RNG.normal(size=(D, P))
GAMMA = 0.05 * np.eye(D)
Y = A @ np.array([0.5, -1.0, 1.5]) + np.sqrt(0.05) * RNG.normal(size=D)
U0 = RNG.normal(size=(N, P))
SRC = os.path.join(os.path.dirname(__file__), os.pardir, "src")


def G(u):
    return jnp.asarray(A) @ u


def G_flaky(u):
    """A @ u, NaN for about 1 member in 5 (decided by the value of u[0])."""
    bad = jnp.mod(jnp.floor(jnp.abs(u[0]) * 1e6), 5.0) == 0.0
    return jnp.where(bad, jnp.nan, jnp.asarray(A) @ u)


def stop_at(k):
    def callback(record):
        if record.iteration == k:
            raise KeyboardInterrupt
    return callback


def state_bytes(state):
    out = []
    for leaf in jax.tree_util.tree_leaves(state):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.asarray(leaf)
        out.append((a.dtype.str, a.shape, a.tobytes()))
    return out


def assert_identical(a, b):
    """Every field of two CalibrationResults equal bit for bit."""
    for f in ("ensembles", "forward_outputs", "misfits", "dts", "times",
              "failure_fractions", "failed", "mean", "covariance"):
        x, y = np.asarray(getattr(a, f)), np.asarray(getattr(b, f))
        assert (x.dtype, x.shape) == (y.dtype, y.shape), f
        assert x.tobytes() == y.tobytes(), f  # bitwise: NaN rows compare too
    assert state_bytes(a.state) == state_bytes(b.state)
    assert (a.errors, a.stopped_by, a.settings) == (b.errors, b.stopped_by, b.settings)


# ------------------------------------------------------------------ io ----


class Toy(NamedTuple):
    ensemble: jax.Array
    small: jax.Array
    count: jax.Array
    mask: np.ndarray
    z: np.ndarray
    raw: np.ndarray
    half: jax.Array
    key: jax.Array
    rbg: jax.Array
    legacy: jax.Array
    nothing: None


def toy_state():
    r = np.random.default_rng(0)
    return Toy(jnp.asarray(r.normal(size=(4, 3))), jnp.asarray(r.normal(size=3), jnp.float32),
               jnp.asarray(7, jnp.int32), r.normal(size=5) > 0,
               r.normal(size=2) + 1j * r.normal(size=2), np.arange(6, dtype=np.uint8),
               jnp.asarray(r.normal(size=3), jnp.bfloat16),
               jax.random.fold_in(jax.random.key(5), 3), jax.random.key(2, impl="rbg"),
               jax.random.PRNGKey(9), None)


def test_pytree_state_and_metadata_round_trip_bit_for_bit(tmp_path):
    path = tmp_path / "state.npz"
    s = toy_state()
    meta = {"name": "ünïcode", "nested": {"a": [1, 2.5, None, True]}}
    save_checkpoint(path, tree_to_arrays(s, "state"), meta)
    arrays, got_meta = load_checkpoint(path)
    assert got_meta == meta
    r = tree_from_arrays(toy_state(), arrays, "state")
    assert r.nothing is None
    assert state_bytes(r) == state_bytes(s)
    for name in ("key", "rbg"):  # typed keys keep their implementation and draws
        k0, k1 = getattr(s, name), getattr(r, name)
        assert k1.dtype == k0.dtype
        np.testing.assert_array_equal(jax.random.normal(k1, (3,)), jax.random.normal(k0, (3,)))
    assert r.half.dtype == jnp.bfloat16 and r.legacy.dtype == jnp.uint32
    bad = dict(arrays)
    bad["state.ensemble"] = np.zeros((4, 2))
    with pytest.raises(CheckpointError, match=r"state\.ensemble.*shape \(4, 2\)"):
        tree_from_arrays(s, bad, "state")
    bad = dict(arrays)
    del bad["state.count"]
    with pytest.raises(CheckpointError, match=r"lacks 'state\.count'"):
        tree_from_arrays(s, bad, "state")


def test_load_and_save_refuse_bad_input_with_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    good = tmp_path / "good.npz"
    save_checkpoint(good, {"x": np.arange(1000.0)}, {"i": 1})
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(cut)
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "pickled.npz")
    np.savez(tmp_path / "plain.npz", x=np.ones(2))
    with pytest.raises(CheckpointError, match="not an enkit checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(TypeError, match="dtype object"):
        save_checkpoint(good, {"x": np.array([None])}, {})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(good, {"__checkpoint__": np.ones(1)}, {})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(good, {"x": np.ones(1)}, {"f": np.ones(1)})
    with pytest.raises(FileNotFoundError, match="directory"):
        save_checkpoint(tmp_path / "no" / "such.npz", {"x": np.ones(1)}, {})
    assert load_checkpoint(good)[1] == {"i": 1}  # refused saves left it alone


@pytest.mark.parametrize("where", ["replace", "fsync"])
def test_a_failing_write_keeps_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch,
                                                                     where):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, {"x": np.zeros(10)}, {"version": 1})

    def boom(*args):
        raise KeyboardInterrupt  # an interrupt in the middle of the write

    monkeypatch.setattr(os, where, boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": np.ones(10)}, {"version": 2})
    monkeypatch.undo()
    arrays, meta = load_checkpoint(path)
    assert meta == {"version": 1} and not arrays["x"].any()
    assert os.listdir(tmp_path) == ["ck.npz"]


WRITER = """
import os
import sys
import time
import numpy as np
from enkit.io import save_checkpoint

path, pause = sys.argv[1], sys.argv[2] == "pause"
big = np.empty(1_000_000)


def stalled_fsync(fd):  # stops a write after its data, before the rename
    print("in-write", flush=True)
    time.sleep(60)


i = 0
while True:
    big.fill(i)
    save_checkpoint(path, {"big": big, "i": np.array(i)}, {"i": i})
    if i == 0:
        print("ready", flush=True)
        if pause:
            os.fsync = stalled_fsync
    i += 1
"""


def test_sigkill_during_writes_never_leaves_a_partial_checkpoint(tmp_path):
    """A writer saving an 8 MB checkpoint in a loop (most of its time is
    spent inside save_checkpoint) is SIGKILLed at random moments, and once
    while it is held inside a write: the file always loads, complete and
    self-consistent (old or new), and the temporaries are never taken for it."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "ck.npz"
    env = dict(os.environ, PYTHONPATH=SRC)
    rng = np.random.default_rng(1)
    for mode in ("random", "random", "pause"):
        proc = subprocess.Popen([sys.executable, str(script), str(path), mode],
                                stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        if mode == "pause":
            assert proc.stdout.readline().strip() == b"in-write"
        else:
            time.sleep(rng.uniform(0.02, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        arrays, meta = load_checkpoint(path)
        i = meta["i"]
        assert int(arrays["i"]) == i and np.all(arrays["big"] == i)  # one write, whole
        others = sorted(set(os.listdir(tmp_path)) - {"ck.npz", "writer.py"})
        assert all(f.startswith(".ck.npz.") and f.endswith(".tmp") for f in others)
        if mode == "pause":  # killed inside the second write: the first one stands
            assert i == 0 and len(others) == 1
        assert sorted(remove_partial_writes(path)) == sorted(str(tmp_path / f) for f in others)


def test_fingerprint_separates_content_and_ignores_identity():
    a = np.arange(4.0)
    b = a.copy()
    b[2] = np.nextafter(b[2], 3.0)  # one bit
    assert fingerprint(a) == fingerprint(np.arange(4.0)) != fingerprint(b)
    assert fingerprint(a) != fingerprint(a.astype(np.float32))
    assert fingerprint(EKI()) == fingerprint(EKI()) != fingerprint(EKI(stochastic=False))
    assert fingerprint(FixedStep(1.0)) != fingerprint(FixedStep(0.5))
    assert fingerprint(jax.random.key(1)) != fingerprint(jax.random.key(2))
    assert fingerprint(Ignore()) != fingerprint(Ignore(min_fraction=0.6))
    def series(key):  # a plain object: hashed by its fields
        return ObservationSeries([(Y, GAMMA), (Y + 1.0, GAMMA)], key=key)

    assert fingerprint(series(1)) == fingerprint(series(1)) != fingerprint(series(2))


# ----------------------------------------------------------- calibrate ----


def test_interrupted_stochastic_eki_resumes_bit_identical(tmp_path):
    path = tmp_path / "eki.npz"
    full = calibrate(G, EKI(), U0, Y, GAMMA, key=3, max_iterations=6)
    completed = []

    def watch(record):  # a checkpoint is on disk after every completed update
        if record.iteration > 0:
            completed.append(load_checkpoint(path)[1]["completed_iterations"])
        stop_at(4)(record)

    with pytest.raises(KeyboardInterrupt):
        calibrate(G, EKI(), U0, Y, GAMMA, key=3, max_iterations=6, checkpoint=path,
                  callback=watch)
    assert completed == [1, 2, 3, 4]
    seen = []
    res = calibrate(G, EKI(), U0, Y, GAMMA, key=3, max_iterations=6, checkpoint=path,
                    callback=lambda r: seen.append(r.iteration))
    assert seen == [4, 5, 6]  # resumed at the first update not completed
    assert_identical(res, full)
    meta = load_checkpoint(path)[1]
    assert meta["stopped_by"] == "max_iterations" and meta["completed_iterations"] == 6


def test_interrupted_run_with_the_ignore_policy_resumes_bit_identical(tmp_path):
    path = tmp_path / "ignore.npz"
    kw = {"key": 5, "max_iterations": 4, "failure": Ignore()}
    full = calibrate(G_flaky, EKI(), U0, Y, GAMMA, **kw)
    frac = np.asarray(full.failure_fractions)
    assert frac[:2].any() and frac[2:].any()  # refills before and after the cut
    with pytest.raises(KeyboardInterrupt):
        calibrate(G_flaky, EKI(), U0, Y, GAMMA, checkpoint=path, callback=stop_at(2), **kw)
    assert_identical(calibrate(G_flaky, EKI(), U0, Y, GAMMA, checkpoint=path, **kw), full)


def test_interrupted_uki_resumes_bit_identical(tmp_path):
    path = tmp_path / "uki.npz"
    uki = UKI(GaussianPrior(np.zeros(P), np.eye(P)))
    full = calibrate(G, uki, None, Y, GAMMA, max_iterations=5)
    with pytest.raises(KeyboardInterrupt):
        calibrate(G, uki, None, Y, GAMMA, max_iterations=5, checkpoint=path,
                  callback=stop_at(2))
    assert_identical(calibrate(G, uki, None, Y, GAMMA, max_iterations=5, checkpoint=path),
                     full)


class Interrupting:
    """A black-box A @ u that raises KeyboardInterrupt at call number
    ``at`` (in the middle of an iteration) and counts its calls."""

    def __init__(self, at=None):
        self.at, self.calls = at, 0

    def __call__(self, u):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return A @ u


def test_black_box_interrupted_mid_iteration_and_finished_checkpoint(tmp_path):
    path = tmp_path / "bb.npz"
    kw = {"key": 8, "max_iterations": 4, "black_box": True}
    full = calibrate(Interrupting(), EKI(), U0, Y, GAMMA, **kw)
    f = Interrupting(at=2 * N + 5)  # member 4 of iteration 2
    with pytest.raises(KeyboardInterrupt):
        calibrate(f, EKI(), U0, Y, GAMMA, checkpoint=path, **kw)
    assert load_checkpoint(path)[1]["completed_iterations"] == 2
    f = Interrupting()
    assert_identical(calibrate(f, EKI(), U0, Y, GAMMA, checkpoint=path, **kw), full)
    assert f.calls == 3 * N  # iterations 2, 3, 4 only
    f = Interrupting()  # a finished run's checkpoint: the result, no evaluation
    assert_identical(calibrate(f, EKI(), U0, Y, GAMMA, checkpoint=path, **kw), full)
    assert f.calls == 0


def test_another_configuration_is_refused_naming_the_part(tmp_path):
    path = tmp_path / "cfg.npz"
    base = {"forward": G, "process": EKI(), "initial_ensemble": U0, "y": Y, "noise": GAMMA,
            "key": 3, "max_iterations": 2}
    first = calibrate(**base, checkpoint=path)
    changes = [("process", {"process": EKI(stochastic=False)}),
               ("data", {"y": Y + 1e-12}),
               ("data", {"noise": 2 * GAMMA}),
               ("initial_ensemble", {"initial_ensemble": U0[::-1]}),
               ("key", {"key": 4}),
               ("stopping rules", {"max_iterations": 3}),
               ("scheduler", {"scheduler": FixedStep(0.5)}),
               ("failure policy", {"failure": Ignore()})]
    for part, change in changes:
        with pytest.raises(CheckpointError,
                           match=f"configuration differs: {part}\\..*resume=False"):
            calibrate(**{**base, **change}, checkpoint=path)
    assert_identical(calibrate(**base, checkpoint=path), first)  # still the same file
    new = calibrate(**{**base, "key": 4}, checkpoint=path, resume=False)
    assert_identical(new, calibrate(**{**base, "key": 4}))
    assert_identical(calibrate(**{**base, "key": 4}, checkpoint=path), new)  # overwritten
    with pytest.raises(TypeError, match="resume must be a bool"):
        calibrate(**base, checkpoint=path, resume="yes")
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        calibrate(**base, checkpoint=3)
    with pytest.raises(FileNotFoundError, match="existing directory"):
        calibrate(**base, checkpoint=tmp_path / "no" / "such.npz")


def test_metadata_records_the_version_and_another_version_warns(tmp_path):
    path = tmp_path / "v.npz"
    kw = {"key": 3, "max_iterations": 2, "checkpoint": path}
    first = calibrate(G, EKI(), U0, Y, GAMMA, **kw)
    arrays, meta = load_checkpoint(path)
    assert meta["enkit_version"] == enkit.__version__
    assert set(meta["config"]) == {"process", "scheduler", "failure policy", "stopping rules",
                                   "black_box", "initial_ensemble", "data", "key"}
    with zipfile.ZipFile(path) as z:  # one archive, no pickle: plain .npy members
        assert all(n.endswith(".npy") for n in z.namelist())
    save_checkpoint(path, arrays, {**meta, "enkit_version": "0.0.0-old"})
    with pytest.warns(UserWarning, match=r"enkit 0\.0\.0-old"):
        assert_identical(calibrate(G, EKI(), U0, Y, GAMMA, **kw), first)


PROBLEM = """
import sys
import time
import numpy as np

SLEEP = 0.0
P, D, N = 3, 5, 8
_r = np.random.default_rng(7)
A = _r.normal(size=(D, P))
Y = A @ np.array([0.5, -1.0, 1.5]) + 0.2 * _r.normal(size=D)
U0 = _r.normal(size=(N, P))


def forward(u):
    time.sleep(SLEEP)
    return A @ u


def run(path):
    from enkit.inversion import EKI, calibrate
    return calibrate(forward, EKI(), U0, Y, 0.05 * np.eye(D), key=11, black_box=True,
                     max_iterations=8, checkpoint=path)


if __name__ == "__main__":
    import jax
    jax.config.update("jax_enable_x64", True)
    SLEEP = float(sys.argv[2])
    run(sys.argv[1])
"""


def test_sigkilled_calibration_resumes_to_the_uninterrupted_result(tmp_path):
    """Another process runs a black-box EKI calibration (about 0.25 s per
    iteration) and is SIGKILLed after its second checkpoint; the run
    resumed here equals the uninterrupted run exactly."""
    script = tmp_path / "problem.py"
    script.write_text(PROBLEM)
    path = tmp_path / "run.npz"
    proc = subprocess.Popen([sys.executable, str(script), str(path), "0.03"],
                            env=dict(os.environ, PYTHONPATH=SRC))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and load_checkpoint(path)[1]["completed_iterations"] >= 2:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    meta = load_checkpoint(path)[1]
    assert 2 <= meta["completed_iterations"] < 8 and meta["stopped_by"] is None
    spec = importlib.util.spec_from_file_location("problem", script)
    problem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(problem)
    resumed = problem.run(path)
    assert_identical(resumed, problem.run(None))
    assert resumed.n_iterations == 8
    assert json.loads(json.dumps(load_checkpoint(path)[1]))["stopped_by"] == "max_iterations"
