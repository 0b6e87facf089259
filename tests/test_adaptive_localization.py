"""Adaptive localisation from ensemble correlations (Anderson 2012).

Checks the Monte-Carlo lookup table (limits, monotonicity, reproducibility,
dependence on the ensemble size), the factors the schemes receive, and a
Lorenz-96 run where the correction alone makes N = 10 work.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.localization import (
    AdaptiveLocalization,
    GainLocalization,
    sample_correlations,
    sampling_error_factors,
    sampling_error_table,
)
from enkit.models.cases import sakov2008_lorenz96

SAMPLES = 100_000


@pytest.fixture(scope="module")
def tables():
    return {N: sampling_error_table(jax.random.key(0), N, n_samples=SAMPLES,
                                    chunk_size=SAMPLES)
            for N in (5, 10, 40)}


def test_table_limits_range_and_monotonicity(tables):
    for N, t in tables.items():
        f = np.asarray(t.factors)
        assert f[0] == 0.0 and f[-1] == 1.0
        assert np.all((f >= 0) & (f <= 1))
        assert np.all(np.diff(f) >= 0), N
        assert np.all(np.diff(np.asarray(t.correlations)) > 0)
        assert int(np.sum(t.counts)) >= SAMPLES
        r = jnp.linspace(0.0, 1.0, 101)
        a = np.asarray(sampling_error_factors(t, r))
        assert np.all((a >= 0) & (a <= 1))
        assert np.all(np.diff(a) >= 0)
        np.testing.assert_array_equal(sampling_error_factors(t, -r), a)  # even in r
        assert float(sampling_error_factors(t, 0.0)) == 0.0
        assert float(sampling_error_factors(t, 1.0)) == 1.0
        assert float(sampling_error_factors(t, -1.0)) == 1.0
        assert float(sampling_error_factors(t, 0.999)) > 0.95


def test_raw_bins_are_nearly_monotone_and_the_projection_only_smooths(tables):
    raw = sampling_error_table(jax.random.key(0), 10, n_samples=SAMPLES, chunk_size=SAMPLES,
                               monotone=False)
    iso = tables[10]
    np.testing.assert_array_equal(raw.counts, iso.counts)  # same draws
    # isotonic regression moves the factors by Monte-Carlo noise only
    assert np.max(np.abs(np.asarray(raw.factors) - np.asarray(iso.factors))) < 0.05
    assert np.any(np.diff(np.asarray(raw.factors)) < 0)  # which there is


def test_smaller_ensembles_get_stronger_damping(tables):
    r = jnp.array([0.2, 0.4, 0.6, 0.8])
    a5, a10, a40 = (np.asarray(sampling_error_factors(tables[N], r)) for N in (5, 10, 40))
    assert np.all(a5 < a10) and np.all(a10 < a40)
    # a sample correlation of 0.2 from 5 members is nearly pure noise; from
    # 40 members it is mostly signal
    assert a5[0] < 0.1 and a40[-1] > 0.95


def test_factor_of_a_large_ensemble_tends_to_one():
    t = sampling_error_table(jax.random.key(1), 200, n_bins=10, n_samples=10_000,
                             chunk_size=10_000)
    a = np.asarray(sampling_error_factors(t, jnp.array([0.3, 0.5, 0.9])))
    assert np.all(a > 0.9), a


def test_table_is_reproducible_with_the_same_key():
    kw = {"n_bins": 20, "n_samples": 20_000, "chunk_size": 10_000}  # two chunks
    a = sampling_error_table(jax.random.key(5), 10, **kw)
    b = sampling_error_table(jax.random.key(5), 10, **kw)
    c = sampling_error_table(jax.random.key(6), 10, **kw)
    np.testing.assert_array_equal(a.factors, b.factors)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(np.asarray(a.counts), np.asarray(c.counts))


def test_table_arguments_are_checked():
    with pytest.raises(ValueError, match="ensemble_size"):
        sampling_error_table(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="n_bins"):
        sampling_error_table(jax.random.key(0), 10, n_bins=0)
    with pytest.raises(ValueError, match="raise n_samples"):
        sampling_error_table(jax.random.key(0), 10, n_bins=100, n_samples=100, chunk_size=100)


def test_adaptive_tapers_are_the_factors_of_the_sample_correlations(tables):
    rng = np.random.default_rng(0)
    N, n, m = 10, 7, 4
    E = rng.normal(size=(N, n)) @ rng.normal(size=(n, n))
    H = rng.normal(size=(m, n))
    X = (E - E.mean(0)) / np.sqrt(N - 1)
    Y = X @ H.T
    corr = np.corrcoef(np.concatenate([X, Y], axis=1).T)  # NumPy reference
    np.testing.assert_allclose(sample_correlations(X, Y), corr[:n, n:], atol=1e-12)
    table = tables[10]
    rho_xy, rho_yy = AdaptiveLocalization(table).tapers(jnp.asarray(X), jnp.asarray(Y))
    np.testing.assert_allclose(rho_xy, sampling_error_factors(table, corr[:n, n:]), atol=1e-12)
    np.testing.assert_allclose(rho_yy, sampling_error_factors(table, corr[n:, n:]), atol=1e-12)
    np.testing.assert_allclose(np.diag(rho_yy), 1.0, atol=1e-9)
    # with a fixed taper the two multiply
    fixed = GainLocalization(jnp.asarray(rng.uniform(size=(n, m))),
                             jnp.asarray(rng.uniform(size=(m, m))))
    t_xy, t_yy = AdaptiveLocalization(table, taper=fixed).tapers(jnp.asarray(X), jnp.asarray(Y))
    np.testing.assert_allclose(t_xy, rho_xy * fixed.state_obs, atol=1e-12)
    np.testing.assert_allclose(t_yy, rho_yy * fixed.obs_obs, atol=1e-12)
    # a column without variance (an absent observation) gets factor 0, not NaN
    Y0 = Y.copy()
    Y0[:, 1] = 0.0
    z_xy, z_yy = AdaptiveLocalization(table).tapers(jnp.asarray(X), jnp.asarray(Y0))
    assert np.all(np.asarray(z_xy)[:, 1] == 0) and np.all(np.isfinite(z_yy))


@pytest.mark.parametrize("name", ["enkf", "denkf", "ensrf_serial"])
def test_schemes_with_adaptive_localisation_use_those_tapers(tables, name):
    rng = np.random.default_rng(1)
    N, n, m = 10, 8, 5
    E = rng.normal(size=(N, n)) @ rng.normal(size=(n, n))
    H = rng.normal(size=(m, n))
    y = rng.normal(size=m)
    R = enkit.Diagonal(rng.uniform(0.5, 2.0, size=m))
    adaptive = AdaptiveLocalization(tables[10])
    _, X = enkit.scaled_anomalies(E)
    _, Y = enkit.scaled_anomalies(E @ H.T)
    fixed = GainLocalization(*adaptive.tapers(X, Y))
    scheme = enkit.SCHEMES[name]
    if name == "enkf":
        scheme = partial(scheme, key=jax.random.key(2))
    got = scheme(E, y, H, R, localization=adaptive)
    np.testing.assert_allclose(got, scheme(E, y, H, R, localization=fixed), rtol=0, atol=1e-12)
    assert np.max(np.abs(got - scheme(E, y, H, R))) > 1e-3


def test_adaptive_localisation_refuses_another_ensemble_size(tables):
    rng = np.random.default_rng(2)
    E = rng.normal(size=(12, 4))
    with pytest.raises(ValueError, match="ensemble_size=10"):
        enkit.denkf(E, rng.normal(size=2), np.eye(4)[:2], 1.0,
                    localization=AdaptiveLocalization(tables[10]))


def test_lorenz96_adaptive_localisation_makes_ten_members_work(tables):
    # Sakov & Oke (2008) setting, N=10, inflation 1.05: the unlocalised serial
    # EnSRF diverges (RMSE ≈ 4, see test_blocalization.py); the sampling error
    # correction alone, with no distances, keeps it accurate (≈ 0.26).
    case = sakov2008_lorenz96()
    loc = AdaptiveLocalization(tables[10])
    rmse = case.run(partial(enkit.ensrf_serial, localization=loc), 10, inflation=1.05,
                    cycles=600, burn_in=150).rmse
    assert rmse < 0.5, rmse
