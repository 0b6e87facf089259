"""Progress bars: shown only on a terminal, never changing a result."""

import io

import jax
import numpy as np
import pytest

import enkit
from enkit._progress import progress_bar
from enkit.models.cases import sakov2012_lorenz63


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def case():
    c = sakov2012_lorenz63(cycles=40, burn_in=0)
    twin = c.twin(0, 40)
    return c, twin, c.initial_ensemble(twin, 10, 0)


def test_no_bar_off_a_terminal_or_when_disabled():
    for file, enabled in ((io.StringIO(), True), (_Terminal(), False)):
        bar = progress_bar(10, desc="x", enabled=enabled, file=file)
        assert bar.disable
        bar.update(3)
        bar.close()
        assert file.getvalue() == ""


def test_bar_on_a_terminal_counts_to_the_total():
    file = _Terminal()
    bar = progress_bar(10, desc="work", file=file)
    bar.update(4)
    bar.update(6)
    assert bar.n == 10
    bar.close()
    assert "work" in file.getvalue()


def _runs(case, monkeypatch, **kw):
    c, twin, E0 = case
    args = (c.model, E0, twin.observations, enkit.etkf)
    opts = dict(h=c.h, R=c.R, steps_per_obs=c.steps_per_obs, inflation=1.02, **kw)
    plain = enkit.assimilate(*args, **opts)
    file = _Terminal()
    monkeypatch.setattr("sys.stderr", file)
    shown = enkit.assimilate(*args, progress=True, **opts)
    monkeypatch.undo()
    return plain, shown, file.getvalue()


def test_compiled_run_with_a_bar_equals_the_plain_run(case, monkeypatch):
    plain, shown, text = _runs(case, monkeypatch)
    assert "assimilate" in text and "40/40" in text
    for a, b in zip(plain, shown):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_python_path_with_a_bar_equals_the_plain_run(case, monkeypatch):
    c, twin, E0 = case
    step = jax.jit(c.model)
    model = enkit.BlackBoxModel(lambda x: np.asarray(step(x)), dt=c.model.dt)
    args = (model, E0, twin.observations, enkit.etkf)
    opts = dict(h=c.h, R=c.R, steps_per_obs=c.steps_per_obs, inflation=1.02)
    a = enkit.assimilate(*args, **opts)
    file = _Terminal()
    monkeypatch.setattr("sys.stderr", file)
    b = enkit.assimilate(*args, progress=True, **opts)
    monkeypatch.undo()
    assert "40/40" in file.getvalue()
    np.testing.assert_array_equal(np.asarray(a.analysis_mean), np.asarray(b.analysis_mean))


def test_bar_off_a_terminal_leaves_stderr_empty(case, capsys):
    c, twin, E0 = case
    enkit.assimilate(c.model, E0, twin.observations, enkit.etkf, h=c.h, R=c.R,
                     steps_per_obs=c.steps_per_obs, progress=True)
    assert capsys.readouterr().err == ""


def test_calibrate_bar_counts_iterations_and_shows_the_misfit(monkeypatch):
    A = np.array([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0]])
    y = A @ np.array([1.0, -0.5])
    E0 = np.random.default_rng(0).standard_normal((12, 2))
    args = (lambda u: A @ u, enkit.EKI(), E0, y, 0.01 * np.eye(3))
    plain = enkit.calibrate(*args, max_iterations=5, key=0)
    file = _Terminal()
    monkeypatch.setattr("sys.stderr", file)
    shown = enkit.calibrate(*args, max_iterations=5, key=0, progress=True)
    monkeypatch.undo()
    text = file.getvalue()
    assert "calibrate" in text and "6/6" in text and "misfit" in text
    np.testing.assert_array_equal(plain.ensembles, shown.ensembles)
