"""The examples run and reach their documented accuracy."""

import importlib.util
import pathlib

import jax
import numpy as np

import enkit

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quickstart_reaches_the_published_accuracy():
    rmse = _load("quickstart").main(n_obs=1000, burn_in=200)
    assert 0.17 < rmse < 0.21


def test_perturbed_observations():
    R = enkit.Diagonal(np.array([1.0, 4.0, 9.0]))
    y = np.array([1.0, 2.0, 3.0])
    D = enkit.perturbed_observations(jax.random.key(0), y, R, 20000)
    assert D.shape == (20000, 3)
    np.testing.assert_allclose(np.std(np.asarray(D), axis=0), [1, 2, 3], rtol=0.03)
    Dc = enkit.perturbed_observations(jax.random.key(0), y, R, 5, center=True)
    np.testing.assert_allclose(np.mean(np.asarray(Dc), axis=0), y, atol=1e-12)
