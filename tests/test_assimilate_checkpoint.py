"""Checkpoints of ``assimilate``: windowed runs equal the plain run bit for
bit, interrupted runs (an exception, a SIGKILL) resume to the same result,
a different configuration is refused by name, and the options are checked."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import enkit
import enkit.assimilation.checkpoint
import enkit.assimilation.compiled
from enkit.io import CheckpointError, load_checkpoint, save_checkpoint


N, n, K = 8, 10, 7
STORE = ("forecast_mean", "analysis_mean", "analysis_spread", "forecast_ensemble",
         "innovation_forecast", "cost_J")
FIELDS = ("ensemble",) + STORE


def _problem(K=K, seed=0):
    rng = np.random.default_rng(seed)
    E0 = 8.0 + rng.normal(size=(N, n))
    ys = 8.0 + 2.0 * rng.normal(size=(K, 5))
    mask = np.ones((K, 5), bool)
    mask[1, [0, 3]] = False
    mask[min(4, K - 1)] = False  # a forecast-only cycle
    return E0, ys, mask


H = np.eye(n)[::2]


def _assert_identical(a, b, fields=FIELDS):
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        if isinstance(x, list):
            assert len(x) == len(y)
            for xi, yi in zip(x, y):
                np.testing.assert_array_equal(np.asarray(xi), np.asarray(yi), err_msg=f)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f)


class _Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _crash_after_saves(monkeypatch, count):
    """Make the run die right after its ``count``-th (genuine) checkpoint write."""
    real, calls = enkit.assimilation.checkpoint.save_run_checkpoint, []

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == count:
            raise _Crash

    monkeypatch.setattr(enkit.assimilation.checkpoint, "save_run_checkpoint", save_then_die)


# ------------------------------------------------------ compiled path ----

# R varies per analysis time (sliced window by window like the observations).
COMPILED = {"h": H, "key": 3, "store": STORE, "forecast_steps": 2, "steps_per_obs": 2,
            "inflation": enkit.AdaptiveMultiplicative(),
            "R": enkit.stack_covariances([enkit.Diagonal(np.full(5, 0.5 + 0.1 * k))
                                          for k in range(K)])}


@pytest.mark.parametrize("scheme", [enkit.etkf, enkit.enkf], ids=["etkf", "enkf"])
def test_compiled_windows_and_resume_equal_the_plain_run_bitwise(scheme, tmp_path,
                                                                 monkeypatch):
    E0, ys, mask = _problem()
    model = enkit.Lorenz96(n=n)
    plain = enkit.assimilate(model, E0, ys, scheme, mask=mask, **COMPILED)
    path = tmp_path / "run.npz"
    # Windows 3, 3, 1 without interruption: bit-identical to the single scan.
    windowed = enkit.assimilate(model, E0, ys, scheme, mask=mask, checkpoint=path,
                                checkpoint_every=3, **COMPILED)
    _assert_identical(windowed, plain)
    arrays, meta = load_checkpoint(path)
    assert meta["finished"] and meta["completed_cycles"] == K and meta["kind"] == \
        "enkit.assimilate"
    np.testing.assert_array_equal(arrays["outputs.analysis_mean"], plain.analysis_mean)

    # Interrupted right after the second window's checkpoint, then resumed.
    path = tmp_path / "interrupted.npz"
    _crash_after_saves(monkeypatch, 2)
    with pytest.raises(_Crash):
        enkit.assimilate(model, E0, ys, scheme, mask=mask, checkpoint=path,
                         checkpoint_every=3, **COMPILED)
    monkeypatch.undo()
    arrays, meta = load_checkpoint(path)
    assert not meta["finished"] and meta["completed_cycles"] == 6 and meta["model_step"] == 12
    np.testing.assert_array_equal(arrays["outputs.analysis_mean"], plain.analysis_mean[:6])
    windows = []
    real_window = enkit.assimilation.compiled.run_window

    def counting_window(*args, **kwargs):
        windows.append(args[3]["k"])
        return real_window(*args, **kwargs)

    monkeypatch.setattr(enkit.assimilation.compiled, "run_window", counting_window)
    resumed = enkit.assimilate(model, E0, ys, scheme, mask=mask, checkpoint=path,
                               checkpoint_every=3, **COMPILED)
    assert len(windows) == 1 and list(np.asarray(windows[0])) == [7]  # only cycle 7 ran
    _assert_identical(resumed, plain)
    np.testing.assert_array_equal(resumed.times, plain.times)

    # A finished checkpoint returns its result without running a window.
    again = enkit.assimilate(model, E0, ys, scheme, mask=mask, checkpoint=path,
                             checkpoint_every=3, **COMPILED)
    assert len(windows) == 1
    _assert_identical(again, plain)


# ----------------------------------------------------- black-box path ----

_FAIL_AT_CALL = None  # the black-box step raises on this call count (None: never)
_CALLS = [0]


def l96_step(x):
    """One RK4 step (dt=0.05, F=8) of Lorenz-96 in NumPy: a black-box model."""
    if os.environ.get("ENKIT_TEST_SLOW_STEP"):
        time.sleep(0.01)
    _CALLS[0] += 1
    if _FAIL_AT_CALL is not None and _CALLS[0] >= _FAIL_AT_CALL:
        raise RuntimeError("simulated model crash")

    def f(x):
        return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + 8.0

    dt = 0.05
    k1 = f(x)
    k2 = f(x + dt / 2 * k1)
    k3 = f(x + dt / 2 * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


BLACK_BOX = enkit.BlackBoxModel(l96_step, dt=0.05)
BB_OPTIONS = {"h": H, "R": 1.0, "key": 5, "inflation": 1.05, "store": STORE}


def _black_box_run(path=None, K=K, **kwargs):
    E0, ys, mask = _problem(K=K, seed=1)
    return enkit.assimilate(BLACK_BOX, E0, ys, enkit.enkf, mask=mask, checkpoint=path,
                            **BB_OPTIONS, **kwargs)


def test_black_box_checkpoints_and_resume_after_a_model_crash(tmp_path, monkeypatch):
    global _FAIL_AT_CALL
    plain = _black_box_run()
    # The black-box path honours the (K, m) mask as the compiled path does.
    E0, ys, mask = _problem(seed=1)
    compiled = enkit.assimilate(enkit.Lorenz96(n=n), E0, ys, enkit.enkf, mask=mask,
                                **BB_OPTIONS)
    np.testing.assert_allclose(plain.analysis_mean, compiled.analysis_mean, rtol=1e-9)
    with pytest.raises(ValueError, match=r"mask must have shape \(K, m\) = \(7, 5\)"):
        enkit.assimilate(BLACK_BOX, E0, ys, enkit.enkf, mask=mask[:, :4], **BB_OPTIONS)
    every1 = _black_box_run(tmp_path / "a.npz")  # default: every cycle
    _assert_identical(every1, plain)
    every2 = _black_box_run(tmp_path / "b.npz", checkpoint_every=2)
    _assert_identical(every2, plain)
    # The model crashes inside cycle 4 (its 3·N + 3-th member step).
    path = tmp_path / "c.npz"
    _CALLS[0], _FAIL_AT_CALL = 0, 3 * N + 3
    try:
        with pytest.raises(RuntimeError, match="simulated model crash"):
            _black_box_run(path, checkpoint_every=2)
        meta = load_checkpoint(path)[1]
        assert meta["completed_cycles"] == 2 and not meta["finished"]
        _FAIL_AT_CALL = None
        _CALLS[0] = 0
        resumed = _black_box_run(path, checkpoint_every=2)
        assert _CALLS[0] == (K - 2) * N  # only cycles 3..K were forecast again
        _assert_identical(resumed, plain)
        # Finished: returned without calling the model (which would now crash).
        _CALLS[0], _FAIL_AT_CALL = 0, 1
        _assert_identical(_black_box_run(path, checkpoint_every=2), plain)
        assert _CALLS[0] == 0
    finally:
        _FAIL_AT_CALL = None


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_enable_x64", True)
import importlib
module = importlib.import_module({module!r})
module._black_box_run({path!r}, K={K})
"""


def test_sigkilled_black_box_run_resumes_to_the_uninterrupted_result(tmp_path):
    path = str(tmp_path / "killed.npz")
    K_long = 20
    code = _CHILD.format(tests=os.path.dirname(__file__), module=l96_step.__module__,
                         path=path, K=K_long)
    env = dict(os.environ, ENKIT_TEST_SLOW_STEP="1", JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, "-c", code], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(path):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint written within 120 s"
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    meta = load_checkpoint(path)[1]
    assert 1 <= meta["completed_cycles"] < K_long and not meta["finished"]
    resumed = _black_box_run(path, K=K_long)
    _assert_identical(resumed, _black_box_run(K=K_long))


def test_ragged_observations_resume_with_observation_space_lists(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    E0 = 8.0 + rng.normal(size=(N, n))
    idx = [np.arange(0, n, 2), np.arange(1, n, 3), np.arange(0, n, 4), np.arange(n)]
    ys = [8.0 + rng.normal(size=i.size) for i in idx]
    hs = [np.eye(n)[i] for i in idx]

    def run(path=None):
        return enkit.assimilate(enkit.Lorenz96(n=n), E0, ys, enkit.etkf, h=hs, R=1.0,
                                store=("analysis_mean", "innovation_forecast"),
                                checkpoint=path, checkpoint_every=None if path is None else 2)

    plain = run()
    path = tmp_path / "ragged.npz"
    _crash_after_saves(monkeypatch, 1)
    with pytest.raises(_Crash):
        run(path)
    monkeypatch.undo()
    assert load_checkpoint(path)[1]["completed_cycles"] == 2
    resumed = run(path)
    assert [np.shape(v) for v in resumed.innovation_forecast] == [(i.size,) for i in idx]
    _assert_identical(resumed, plain, ("ensemble", "analysis_mean", "innovation_forecast"))


# ------------------------------------------------- refusals and options ----


def test_a_different_configuration_is_refused_naming_the_parts(tmp_path):
    path = tmp_path / "run.npz"
    _black_box_run(path, K=3)
    E0, ys, mask = _problem(K=3, seed=1)
    with pytest.raises(CheckpointError, match=r"configuration differs: R\. .*resume=False"):
        enkit.assimilate(BLACK_BOX, E0, ys, enkit.enkf, mask=mask, checkpoint=path,
                         **dict(BB_OPTIONS, R=2.0))
    with pytest.raises(CheckpointError, match=r"differs: key, checkpoint_every\."):
        enkit.assimilate(BLACK_BOX, E0, ys, enkit.enkf, mask=mask, checkpoint=path,
                         checkpoint_every=2, **dict(BB_OPTIONS, key=6))
    with pytest.raises(CheckpointError, match=r"differs: observations, mask\."):
        enkit.assimilate(BLACK_BOX, E0, ys + 1e-12, enkit.enkf, checkpoint=path,
                         **BB_OPTIONS)
    with pytest.raises(CheckpointError, match=r"differs: model, scheme, checkpoint_every\."):
        enkit.assimilate(enkit.Lorenz96(n=n), E0, ys, enkit.etkf, mask=mask,
                         checkpoint=path, **BB_OPTIONS)
    other = tmp_path / "other.npz"
    save_checkpoint(other, {"x": np.zeros(2)}, {"kind": "enkit.calibrate"})
    with pytest.raises(CheckpointError, match="not an 'enkit.assimilate' checkpoint"):
        _black_box_run(other, K=3)


def test_resume_false_starts_afresh_and_overwrites(tmp_path):
    path = tmp_path / "run.npz"
    E0, ys, mask = _problem(K=3, seed=1)
    enkit.assimilate(BLACK_BOX, E0, ys, enkit.enkf, mask=mask, checkpoint=path,
                     **dict(BB_OPTIONS, R=2.0))
    fresh = _black_box_run(path, K=3, resume=False)
    _assert_identical(fresh, _black_box_run(K=3))
    meta = load_checkpoint(path)[1]
    assert meta["finished"]
    _assert_identical(_black_box_run(path, K=3), fresh)  # now it matches this configuration


def test_a_checkpoint_of_another_enkit_version_warns_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    _crash_after_saves(monkeypatch, 1)
    with pytest.raises(_Crash):
        _black_box_run(path, K=3)
    monkeypatch.undo()
    arrays, meta = load_checkpoint(path)
    save_checkpoint(path, arrays, dict(meta, enkit_version="0.0.1"))
    with pytest.warns(UserWarning, match="written by enkit 0.0.1"):
        resumed = _black_box_run(path, K=3)
    _assert_identical(resumed, _black_box_run(K=3))


@pytest.mark.parametrize("every", [0, -2, 1.5, True, "3"])
def test_invalid_checkpoint_every_raises(tmp_path, every):
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        _black_box_run(tmp_path / "x.npz", K=2, checkpoint_every=every)


def test_invalid_checkpoint_options_raise(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint="):
        _black_box_run(K=2, checkpoint_every=2)
    with pytest.raises(TypeError, match="resume must be a bool"):
        _black_box_run(tmp_path / "x.npz", K=2, resume="yes")
    with pytest.raises(FileNotFoundError, match="existing directory"):
        _black_box_run(tmp_path, K=2)
    with pytest.raises(FileNotFoundError, match="existing directory"):
        _black_box_run(tmp_path / "missing" / "x.npz", K=2)
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        _black_box_run(3.0, K=2)
    assert not os.listdir(tmp_path)  # nothing was written by the refused calls
