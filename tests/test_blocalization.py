"""B-localisation of the stochastic EnKF, DEnKF and serial EnSRF.

Checks: tapers of ones reproduce the unlocalised analyses; the localised
analyses equal a naive dense NumPy reference; an observation that a taper
isolates has exactly no effect where its weight is zero; on Lorenz-96 with
N=10 the localised filters are accurate where the unlocalised ones diverge.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LinearGaussian

import enkit
from enkit.localization import GainLocalization, gain_localization, gaspari_cohn, step
from enkit.models.cases import sakov2008_lorenz96

N_GRID = 12
GRID = np.arange(float(N_GRID))
OBS_AT = np.array([0, 1, 3, 4, 6, 8, 9, 11])
RING = partial(enkit.periodic_distance, period=float(N_GRID))


def ring_problem(N=6, seed=0, dtype=np.float64):
    """12 correlated variables on a ring, 8 observed, diagonal R."""
    rng = np.random.default_rng(seed)
    n, m = N_GRID, OBS_AT.size
    i = np.arange(n)
    d = np.minimum(np.abs(i[:, None] - i[None, :]), n - np.abs(i[:, None] - i[None, :]))
    L = np.linalg.cholesky(np.exp(-d / 2.0))  # positive definite on a circle
    E = rng.normal(size=n) + rng.normal(size=(N, n)) @ L.T
    H = np.eye(n)[OBS_AT]
    y = H @ rng.normal(size=n) + rng.normal(size=m)
    R = enkit.Diagonal(rng.uniform(0.5, 1.5, size=m))
    return E.astype(dtype), y.astype(dtype), H.astype(dtype), R


def ring_tapers(radius, taper=gaspari_cohn):
    return gain_localization(GRID, GRID[OBS_AT], radius, taper=taper, distance=RING)


def ones(n, m):
    return GainLocalization(jnp.ones((n, m)), jnp.ones((m, m)))


# --------------------------------------------------------------------------
# naive dense references (NumPy, explicit matrices)


def anomalies(A):
    A = np.asarray(A)
    return A.mean(0), (A - A.mean(0)) / np.sqrt(A.shape[0] - 1)


def dense_gain(E, HE, Rm, rho_xy, rho_yy):
    _, X = anomalies(E)
    _, Y = anomalies(HE)
    return (rho_xy * (X.T @ Y)) @ np.linalg.inv(rho_yy * (Y.T @ Y) + Rm)


def reference_enkf(E, y, H, Rm, rho_xy, rho_yy, D):
    HE = E @ H.T
    K = dense_gain(E, HE, Rm, rho_xy, rho_yy)
    return E + (D - HE) @ K.T


def reference_denkf(E, y, H, Rm, rho_xy, rho_yy):
    HE = E @ H.T
    K = dense_gain(E, HE, Rm, rho_xy, rho_yy)
    xbar, X = anomalies(E)
    ybar, Y = anomalies(HE)
    xa = xbar + K @ (y - ybar)
    Xa = X.T - 0.5 * K @ Y.T  # (n, N)
    return xa + np.sqrt(E.shape[0] - 1) * Xa.T


def reference_serial(E, y, H, r, rho_xy, rho_yy):
    """Whitaker & Hamill (2002) one observation at a time, tapered gains."""
    N = E.shape[0]
    xbar, X = anomalies(E)
    ybar, Y = anomalies(E @ H.T)
    X, Y = X.T.copy(), Y.T.copy()  # (n, N), (m, N)
    for j in range(y.size):
        yj = Y[j].copy()
        s = yj @ yj + r[j]
        kx = rho_xy[:, j] * (X @ yj) / s
        ky = rho_yy[:, j] * (Y @ yj) / s
        innov = y[j] - ybar[j]
        xbar, ybar = xbar + kx * innov, ybar + ky * innov
        alpha = 1.0 / (1.0 + np.sqrt(r[j] / s))
        X -= alpha * np.outer(kx, yj)
        Y -= alpha * np.outer(ky, yj)
    return xbar + np.sqrt(N - 1) * X.T


# --------------------------------------------------------------------------
# equivalences


@pytest.mark.parametrize("name", ["denkf", "ensrf_serial"])
@pytest.mark.parametrize("N", [4, 12])
def test_tapers_of_ones_equal_the_unlocalised_deterministic_analysis(name, N):
    E, y, H, R = ring_problem(N)
    scheme = enkit.SCHEMES[name]
    plain = scheme(E, y, H, R)
    local = scheme(E, y, H, R, localization=ones(N_GRID, OBS_AT.size))
    np.testing.assert_allclose(local, plain, rtol=0, atol=1e-12)


def test_tapers_of_ones_equal_the_unlocalised_analysis_with_dense_R():
    p = LinearGaussian(12)
    for scheme in (enkit.denkf, partial(enkit.enkf, key=jax.random.key(1))):
        plain = scheme(p.E, p.y, p.H, p.R)
        local = scheme(p.E, p.y, p.H, p.R, localization=ones(p.n, p.m))
        np.testing.assert_allclose(local, plain, rtol=0, atol=1e-11)


@pytest.mark.parametrize("center", [False, True])
def test_tapers_of_ones_equal_the_unlocalised_enkf_with_the_same_key(center):
    E, y, H, R = ring_problem(6)
    key = jax.random.key(7)
    plain = enkit.enkf(E, y, H, R, key=key, center_perturbations=center)
    local = enkit.enkf(E, y, H, R, key=key, center_perturbations=center,
                       localization=ones(N_GRID, OBS_AT.size))
    np.testing.assert_allclose(local, plain, rtol=0, atol=1e-12)
    other = enkit.enkf(E, y, H, R, key=jax.random.key(8), center_perturbations=center,
                       localization=ones(N_GRID, OBS_AT.size))
    assert np.max(np.abs(other - plain)) > 1e-3  # the key matters


@pytest.mark.parametrize("N", [4, 12])
def test_localised_analyses_equal_the_dense_reference(N):
    E, y, H, R = ring_problem(N, seed=2)
    loc = ring_tapers(2.0)
    rho_xy, rho_yy = np.asarray(loc.state_obs), np.asarray(loc.obs_obs)
    assert 0 < np.count_nonzero(rho_xy == 0) < rho_xy.size  # a real taper
    Rm = np.asarray(R.dense())
    np.testing.assert_allclose(
        enkit.denkf(E, y, H, R, localization=loc),
        reference_denkf(E, y, H, Rm, rho_xy, rho_yy), rtol=0, atol=1e-11)
    np.testing.assert_allclose(
        enkit.ensrf_serial(E, y, H, R, localization=loc),
        reference_serial(E, y, H, np.diag(Rm), rho_xy, rho_yy), rtol=0, atol=1e-11)
    key = jax.random.key(3)
    D = np.asarray(enkit.perturbed_observations(key, jnp.asarray(y), R, N))
    np.testing.assert_allclose(
        enkit.enkf(E, y, H, R, key=key, localization=loc),
        reference_enkf(E, y, H, Rm, rho_xy, rho_yy, D), rtol=0, atol=1e-11)
    # localisation changes the analysis (so the comparisons above can fail)
    assert np.max(np.abs(enkit.denkf(E, y, H, R, localization=loc) - enkit.denkf(E, y, H, R))) > 1e-3


def test_localised_enkf_with_a_dense_R_equals_the_reference():
    p = LinearGaussian(12)
    rng = np.random.default_rng(5)
    rho_xy = rng.uniform(0, 1, size=(p.n, p.m))
    B = rng.uniform(0, 1, size=(p.m, p.m))
    rho_yy = 0.5 * (B + B.T)
    np.fill_diagonal(rho_yy, 1.0)
    loc = GainLocalization(jnp.asarray(rho_xy), jnp.asarray(rho_yy))
    key = jax.random.key(4)
    R = enkit.Dense(p.R)
    D = np.asarray(enkit.perturbed_observations(key, jnp.asarray(p.y), R, p.N))
    np.testing.assert_allclose(
        enkit.enkf(p.E, p.y, p.H, R, key=key, localization=loc),
        reference_enkf(p.E, p.y, p.H, p.R, rho_xy, rho_yy, D), rtol=0, atol=1e-11)
    np.testing.assert_allclose(
        enkit.denkf(p.E, p.y, p.H, R, localization=loc),
        reference_denkf(p.E, p.y, p.H, p.R, rho_xy, rho_yy), rtol=0, atol=1e-11)


def test_one_observation_serial_and_denkf_share_the_localised_mean():
    # With one observation both give x̄ + K (y − ȳ) with K = ρ_xy ∘ Xᵀy / (yᵀy + r).
    E, y, H, R = ring_problem(8, seed=4)
    y1, H1, R1 = y[:1], H[:1], enkit.Diagonal(R.diagonal()[:1])
    loc = gain_localization(GRID, GRID[OBS_AT[:1]], 2.0, distance=RING)
    m_serial = np.mean(enkit.ensrf_serial(E, y1, H1, R1, localization=loc), axis=0)
    m_denkf = np.mean(enkit.denkf(E, y1, H1, R1, localization=loc), axis=0)
    np.testing.assert_allclose(m_serial, m_denkf, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------
# zero weights


SCHEME_CALLS = {
    "enkf": partial(enkit.enkf, key=jax.random.key(11)),
    "denkf": enkit.denkf,
    "ensrf_serial": enkit.ensrf_serial,
}


@pytest.mark.parametrize("name", sorted(SCHEME_CALLS))
def test_an_isolated_observation_has_exactly_no_effect_where_its_weight_is_zero(name):
    # On a line: observations at 0, 1, 3, 4, 6 and an isolated one at 11
    # (GC half-width 1.5, support 3: no other observation within 3 of it);
    # state entries 0..8 are 3 or more from it and have zero weight.
    E, _, _, _ = ring_problem(6, seed=6)
    obs_at = np.array([0, 1, 3, 4, 6, 11])
    H = np.eye(N_GRID)[obs_at]
    rng = np.random.default_rng(6)
    y = rng.normal(size=obs_at.size)
    R = enkit.Diagonal(rng.uniform(0.5, 1.5, size=obs_at.size))
    loc = gain_localization(GRID[:, None], GRID[obs_at][:, None], 1.5)
    rho = np.asarray(loc.state_obs)[:, -1]
    zero = rho == 0
    assert zero.tolist() == [True] * 9 + [False] * 3
    assert np.all(np.asarray(loc.obs_obs)[-1, :-1] == 0)
    scheme = SCHEME_CALLS[name]
    base = np.asarray(scheme(E, y, H, R, localization=loc))
    for far_value in (100.0, -1e30):
        moved = np.asarray(scheme(E, np.append(y[:-1], far_value), H, R, localization=loc))
        np.testing.assert_array_equal(moved[:, zero], base[:, zero])
        assert np.max(np.abs(moved[:, ~zero] - base[:, ~zero])) > 1e-3


@pytest.mark.parametrize("name", sorted(SCHEME_CALLS))
def test_an_observation_with_a_zero_taper_row_changes_nothing(name):
    E, y, H, R = ring_problem(6, seed=8)
    loc = ring_tapers(1.5)
    j = 2
    rho_xy = np.asarray(loc.state_obs).copy()
    rho_yy = np.asarray(loc.obs_obs).copy()
    rho_xy[:, j] = 0.0
    rho_yy[j, :] = rho_yy[:, j] = 0.0
    rho_yy[j, j] = 1.0
    loc = GainLocalization(jnp.asarray(rho_xy), jnp.asarray(rho_yy))
    scheme = SCHEME_CALLS[name]
    base = np.asarray(scheme(E, y, H, R, localization=loc))
    moved = np.asarray(scheme(E, np.where(np.arange(y.size) == j, 1e30, y), H, R,
                             localization=loc))
    np.testing.assert_array_equal(moved, base)


# --------------------------------------------------------------------------
# Lorenz-96: localisation makes N = 10 work


def l96_localization(radius):
    coords = jnp.arange(40.0)
    return gain_localization(coords, coords, radius,
                             distance=partial(enkit.periodic_distance, period=40.0))


@pytest.mark.parametrize("name", ["ensrf_serial", "denkf"])
def test_lorenz96_localised_filter_with_ten_members_is_accurate(name):
    # Sakov & Oke (2008) setting: n=40, all observed every 0.05, R = I.
    # N=10 with inflation 1.05: the unlocalised filter diverges (RMSE ≈ 4,
    # climatology ≈ 3.6); Gaspari-Cohn half-width 4 keeps it accurate (≈ 0.26
    # for both schemes on this 600-cycle run).
    case = sakov2008_lorenz96()
    scheme = enkit.SCHEMES[name]
    local = case.run(partial(scheme, localization=l96_localization(4.0)), 10,
                     inflation=1.05, cycles=600, burn_in=150).rmse
    plain = case.run(scheme, 10, inflation=1.05, cycles=600, burn_in=150).rmse
    assert local < 0.5, local
    assert plain > 1.0, plain


# --------------------------------------------------------------------------
# compilation, vmap, dtype, validation


def test_jit_without_retracing_and_vmap_over_the_radius():
    E, y, H, R = ring_problem(6, seed=9)
    traces = []

    @jax.jit
    def analyse(E, loc):
        traces.append(1)
        return enkit.denkf(E, y, H, R, localization=loc)

    a = analyse(E, ring_tapers(1.5))
    b = analyse(E + 0.1, ring_tapers(2.5))
    assert len(traces) == 1
    np.testing.assert_allclose(a, enkit.denkf(E, y, H, R, localization=ring_tapers(1.5)),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(b, enkit.denkf(E + 0.1, y, H, R, localization=ring_tapers(2.5)),
                               rtol=0, atol=1e-12)
    radii = jnp.array([1.0, 2.0, 3.0])
    sweep = jax.vmap(lambda c: enkit.ensrf_serial(E, y, H, R, localization=ring_tapers(c)))(radii)
    for k, c in enumerate(radii):
        np.testing.assert_allclose(
            sweep[k], enkit.ensrf_serial(E, y, H, R, localization=ring_tapers(float(c))),
            rtol=0, atol=1e-12)


def test_step_taper_covering_the_domain_is_the_unlocalised_filter():
    E, y, H, R = ring_problem(6, seed=10)
    loc = ring_tapers(6.0, taper=step)  # the largest ring distance is 6
    np.testing.assert_allclose(enkit.ensrf_serial(E, y, H, R, localization=loc),
                               enkit.ensrf_serial(E, y, H, R), rtol=0, atol=1e-12)


def test_float32_smoke():
    E, y, H, R = ring_problem(6, seed=12, dtype=np.float32)
    loc = ring_tapers(2.0)
    for name, scheme in SCHEME_CALLS.items():
        Ea = scheme(E, y, H, enkit.Diagonal(R.diagonal().astype(np.float32)), localization=loc)
        assert Ea.dtype == jnp.float32, name
        if name == "enkf":  # its draws depend on the dtype
            assert np.all(np.isfinite(Ea))
            continue
        Ea64 = scheme(E.astype(np.float64), y.astype(np.float64), H.astype(np.float64), R,
                      localization=loc)
        np.testing.assert_allclose(Ea, Ea64, atol=1e-4)


def test_bad_localization_inputs_are_named():
    E, y, H, R = ring_problem(6)
    n, m = N_GRID, OBS_AT.size
    with pytest.raises(TypeError, match="localization"):
        enkit.denkf(E, y, H, R, localization=np.ones((n, m)))
    with pytest.raises(TypeError, match="gain_localization"):
        enkit.enkf(E, y, H, R, key=0,
                   localization=enkit.localization_matrices(GRID[:, None], GRID[OBS_AT, None], 2.0))
    with pytest.raises(ValueError, match=r"state_obs must have shape \(n, m\) = \(12, 8\)"):
        enkit.ensrf_serial(E, y, H, R, localization=GainLocalization(jnp.ones((m, n)),
                                                                     jnp.ones((m, m))))
    with pytest.raises(ValueError, match=r"obs_obs must have shape \(m, m\)"):
        enkit.denkf(E, y, H, R, localization=GainLocalization(jnp.ones((n, m)),
                                                              jnp.ones((n, n))))
    with pytest.raises(ValueError, match="finite"):
        enkit.denkf(E, y, H, R, localization=GainLocalization(jnp.full((n, m), jnp.nan),
                                                              jnp.ones((m, m))))
    with pytest.raises(ValueError, match="method='ensemble'"):
        enkit.denkf(E, y, H, R, method="ensemble", localization=ones(n, m))
    with pytest.raises(ValueError, match="Scalar or Diagonal"):
        enkit.ensrf_serial(E, y, H, np.diag(R.diagonal()), localization=ones(n, m))
