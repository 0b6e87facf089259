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


def test_heat_conduction_inversion_converges():
    res = _load("heat_conduction_inversion").main(verbose=False)
    assert res["misfit"] < 6.0 and res["misfit"] < 1e-2 * res["misfit_prior"]
    assert res["log_kappa_error"] < 0.1 < res["log_kappa_error_prior"]


def test_lorenz96_localized_eki_quick():
    res = _load("lorenz96_localized_eki").main(n=40, n_iter=10, spinup=2000)
    assert res["SECNice"][1] < 0.9 * res["none"][1]
    assert res["SEC(1)"][1] < 0.9 * res["none"][1]
