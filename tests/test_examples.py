"""The examples run and reach their documented accuracy."""

import importlib.util
import pathlib


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quickstart_reaches_the_published_accuracy():
    rmse = _load("quickstart").main(n_obs=1000, burn_in=200)
    assert 0.17 < rmse < 0.21
