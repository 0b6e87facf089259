"""The local particle filter (enkit.particle.local_pf, Penny & Miyoshi 2016):
the global bootstrap PF at a radius covering the domain, locality, the
local weights against a hand computation, the Kalman posterior of a
diagonal linear-Gaussian problem where the global PF degenerates, and a
Lorenz-96 run through ``enkit.assimilate``."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit import particle as pf
from enkit.assimilation.compiled import run as _run
from enkit.localization import periodic_distance, step
from enkit.models import Lorenz96
from enkit.models.twin import twin_experiment

RING = 8
COORDS = np.arange(RING, dtype=float)
RING_DIST = partial(periodic_distance, period=float(RING))


def small_problem(N=16, seed=0):
    """(E, y, H, R, prior log-weights) on a ring of 8, every other entry observed."""
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(N, RING))
    H = np.eye(RING)[::2]
    y = rng.normal(size=4)
    return E, y, H, enkit.Diagonal(np.array([0.5, 1.0, 0.8, 2.0])), rng.normal(size=N)


def hand_gaspari_cohn(d, c):
    """Gaspari & Cohn (1999) eq. (4.10), written out again."""
    z = np.abs(d) / c
    out = np.zeros_like(z)
    a = z <= 1
    out[a] = -z[a] ** 5 / 4 + z[a] ** 4 / 2 + 5 * z[a] ** 3 / 8 - 5 * z[a] ** 2 / 3 + 1
    b = (z > 1) & (z < 2)
    zb = z[b]
    out[b] = zb ** 5 / 12 - zb ** 4 / 2 + 5 * zb ** 3 / 8 + 5 * zb ** 2 / 3 - 5 * zb + 4 \
        - 2 / (3 * zb)
    return out


# --- limits and locality ----------------------------------------------------


@pytest.mark.parametrize("resampler", [pf.systematic, pf.stratified], ids=["sys", "strat"])
@pytest.mark.parametrize("smoothing", [None, 1.0], ids=["plain", "smoothed"])
def test_global_radius_is_the_bootstrap_pf(resampler, smoothing):
    """taper ≡ 1 (step, radius beyond the domain): every grid point has the
    global weights and, sharing the key, the global ancestors."""
    E, y, H, R, lw = small_problem()
    key = jax.random.key(7)
    loc = pf.local_pf(E, y, H, R, state_coords=COORDS, obs_coords=COORDS[::2], radius=10.0,
                      taper=step, distance=RING_DIST, key=key, log_weights=lw,
                      resampler=resampler, smoothing_radius=smoothing)
    glob = pf.bootstrap_pf(E, y, H, R, key=key, log_weights=lw, threshold=1.0,
                           resampler=resampler)
    assert bool(glob.resampled) and bool(loc.resampled) and not bool(loc.degenerate)
    np.testing.assert_array_equal(loc.ensemble, glob.ensemble)
    np.testing.assert_array_equal(loc.log_weights, glob.log_weights)  # uniform
    assert float(loc.ess) == pytest.approx(float(glob.ess), rel=1e-12)
    assert float(loc.log_evidence) == pytest.approx(float(glob.log_evidence), rel=1e-12)


def test_observations_beyond_the_radius_leave_points_untouched():
    """Observations at 2 and 3, Gaspari–Cohn support 2·1.5 = 3: grid points
    at distance ≥ 3 from both keep their particles (uniform weights, N a
    power of 2: systematic resampling returns every member once), and a
    change of the observation at 3 reaches only the points within 3 of it."""
    N, n = 16, 12
    rng = np.random.default_rng(3)
    E = rng.normal(size=(N, n))
    H = np.eye(n)[[2, 3]]
    c = np.arange(n, dtype=float)
    run = partial(pf.local_pf, E, h=H, R=enkit.Scalar(0.3, 2), state_coords=c,
                  obs_coords=c[[2, 3]], radius=1.5,
                  distance=partial(periodic_distance, period=float(n)), key=jax.random.key(0))
    a = np.asarray(run(y=np.array([1.5, -1.0])).ensemble)
    b = np.asarray(run(y=np.array([1.5, 2.0])).ensemble)
    far = [6, 7, 8, 9, 10, 11]  # at least 3 from 2 and from 3 (on the ring of 12)
    np.testing.assert_array_equal(a[:, far], E[:, far])
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # 0 sees only the observation at 2
    assert not np.array_equal(a[:, 1:6], E[:, 1:6])
    assert all(not np.array_equal(a[:, j], b[:, j]) for j in (1, 2, 3, 4, 5))
    lw = pf.local_log_weights(E, np.array([1.5, -1.0]), H, enkit.Scalar(0.3, 2),
                              state_coords=c, obs_coords=c[[2, 3]], radius=1.5,
                              distance=partial(periodic_distance, period=float(n)))
    np.testing.assert_allclose(np.asarray(lw)[far], -np.log(N), rtol=1e-12)


def test_local_weights_are_the_tapered_likelihood():
    """A tiny problem, by hand: nonlinear h, diagonal R, observations between
    grid points, incoming weights; the analysis resamples each grid point
    with those weights and the shared key (systematic)."""
    rng = np.random.default_rng(5)
    N, n = 5, 4
    E = rng.normal(size=(N, n))
    obs_c = np.array([0.5, 1.7, 3.2])
    r = np.array([0.5, 1.0, 2.0])
    y = np.array([0.3, -0.2, 1.1])
    prior = rng.normal(size=N)

    def h(x):
        return jnp.stack([x[0] ** 2 / 2, jnp.sin(x[1]), x[3] + x[0]])

    HE = np.stack([E[:, 0] ** 2 / 2, np.sin(E[:, 1]), E[:, 3] + E[:, 0]], axis=1)
    d = np.abs(np.arange(n)[:, None] - obs_c[None, :])
    d = np.minimum(d, n - d)  # periodic, period 4
    rho = hand_gaspari_cohn(d, 1.2)  # (n, m)
    ell = -0.5 * ((y - HE) ** 2 / r) @ rho.T  # (N, n)
    lw = prior[:, None] + ell
    lw = (lw - np.log(np.sum(np.exp(lw), axis=0))).T  # (n, N)
    kw = dict(state_coords=np.arange(n, dtype=float), obs_coords=obs_c, radius=1.2,
              distance=partial(periodic_distance, period=4.0), log_weights=prior)
    got = pf.local_log_weights(E, y, h, enkit.Diagonal(r), **kw)
    np.testing.assert_allclose(got, lw, rtol=1e-12, atol=1e-12)
    key = jax.random.key(11)
    res = pf.local_pf(E, y, h, enkit.Diagonal(r), key=key, **kw)
    k_resample = jax.random.split(key)[0]
    want = np.stack([E[np.asarray(pf.systematic(k_resample, lw[j])), j] for j in range(n)], 1)
    np.testing.assert_array_equal(res.ensemble, want)
    np.testing.assert_allclose(res.log_weights, -np.log(N), rtol=1e-12)
    glob = prior + pf.gaussian_log_likelihood(HE, y, enkit.Diagonal(r))
    assert float(res.ess) == pytest.approx(float(
        pf.effective_sample_size(log_weights=glob)), rel=1e-10)


def test_smoothing_averages_the_neighbours_selections():
    """smoothing_radius 1 on the ring: x_ij = mean over l ∈ {j−1, j, j+1} of
    x at j of l's ancestors, a strength α moving the values α of the way
    there; radius 0 is no smoothing."""
    E, y, H, R, lw = small_problem(N=6, seed=2)
    kw = dict(state_coords=COORDS, obs_coords=COORDS[::2], radius=1.0, distance=RING_DIST,
              key=jax.random.key(4), log_weights=lw)
    W = np.asarray(pf.local_log_weights(E, y, H, R, **{k: v for k, v in kw.items()
                                                        if k != "key"}))
    k_resample = jax.random.split(kw["key"])[0]
    A = np.stack([np.asarray(pf.systematic(k_resample, W[j])) for j in range(RING)])  # (n, N)
    want = np.stack([np.mean([E[A[(j + s) % RING], j] for s in (-1, 0, 1)], axis=0)
                     for j in range(RING)], axis=1)
    got = pf.local_pf(E, y, H, R, smoothing_radius=1.0, **kw)
    np.testing.assert_allclose(got.ensemble, want, rtol=1e-12)
    plain = np.stack([E[A[j], j] for j in range(RING)], axis=1)
    half = pf.local_pf(E, y, H, R, smoothing_radius=1.0, smoothing_strength=0.25, **kw)
    np.testing.assert_allclose(half.ensemble, plain + 0.25 * (want - plain), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_array_equal(pf.local_pf(E, y, H, R, smoothing_radius=0.0, **kw).ensemble,
                                  pf.local_pf(E, y, H, R, **kw).ensemble)


def test_traced_coordinates_chunks_and_float32():
    """The in-graph search (traced coordinates, a vmap over radii) and any
    chunk size give the analysis of the precomputed lists; float32 stays
    float32."""
    E, y, H, R, lw = small_problem()
    key = jax.random.key(1)
    kw = dict(distance=RING_DIST, key=key, log_weights=lw, smoothing_radius=1.0, noise=0.3)
    ref = pf.local_pf(E, y, H, R, state_coords=COORDS, obs_coords=COORDS[::2], radius=1.5,
                      **kw)

    @jax.jit
    def traced(sc, oc, radius):
        return pf.local_pf(E, y, H, R, state_coords=sc, obs_coords=oc, radius=radius, **kw)

    # a sweep over radii is a vmap (traced radius: the taper applied in the graph)
    got = jax.vmap(traced, in_axes=(None, None, 0))(COORDS, COORDS[::2], jnp.array([1.5, 2.5]))
    np.testing.assert_allclose(got.ensemble[0], ref.ensemble, rtol=1e-12, atol=1e-12)
    wide = pf.local_pf(E, y, H, R, state_coords=COORDS, obs_coords=COORDS[::2], radius=2.5,
                       **kw)
    np.testing.assert_allclose(got.ensemble[1], wide.ensemble, rtol=1e-12, atol=1e-12)
    chunked = pf.local_pf(E, y, H, R, state_coords=COORDS, obs_coords=COORDS[::2], radius=1.5,
                          chunk_size=3, **kw)
    np.testing.assert_array_equal(chunked.ensemble, ref.ensemble)
    f32 = np.float32
    res = pf.local_pf(E.astype(f32), y.astype(f32), H.astype(f32),
                      enkit.Diagonal(np.asarray(R.variances, f32)), state_coords=COORDS,
                      obs_coords=COORDS[::2], radius=1.5, **kw)
    for a in (res.ensemble, res.log_weights, res.ess, res.log_evidence):
        assert a.dtype == jnp.float32 and np.all(np.isfinite(a))


def test_degeneracy_and_bad_inputs():
    E, y, H, R, _ = small_problem()
    kw = dict(state_coords=COORDS, obs_coords=COORDS[::2], radius=1.5, distance=RING_DIST,
              key=jax.random.key(0))
    # every local weight zero at the grid points near the last observation
    tiny = enkit.Diagonal(np.array([0.5, 1.0, 0.8, 1e-300]))
    far = np.array([0.0, 0.0, 0.0, 1e200])
    with pytest.raises(pf.WeightDegeneracyError, match="zero local weight at"):
        pf.local_pf(E, far, H, tiny, **kw)
    nan_h = lambda x: jnp.where(x[0] > 1.0, jnp.nan, 1.0) * x[::2]  # noqa: E731
    with pytest.raises(pf.WeightDegeneracyError, match="NaN"):
        pf.local_pf(E, y, nan_h, R, **kw)
    res = jax.jit(lambda y: pf.local_pf(E, y, H, tiny, **kw))(far)
    assert bool(res.degenerate) and not bool(res.resampled)
    assert np.all(np.isnan(res.ensemble)) and np.all(np.isnan(res.log_weights))
    with pytest.raises(TypeError, match="key"):
        pf.local_pf(E, y, H, R, **{**kw, "key": None})
    with pytest.raises(ValueError, match="uncorrelated"):
        pf.local_pf(E, y, H, enkit.Dense(np.eye(4) + 0.1), **kw)
    with pytest.raises(ValueError, match="radius"):
        pf.local_pf(E, y, H, R, **{**kw, "radius": -1.0})
    with pytest.raises(ValueError, match="obs_coords"):
        pf.local_pf(E, y, H, R, **{**kw, "obs_coords": COORDS})
    with pytest.raises(TypeError):
        pf.local_pf(E, y, H, R, smoothing=1.0, **kw)


# --- the Kalman posterior where the global particle filter degenerates ------

DIAG_N = 50
R_DIAG = 0.5


@pytest.fixture(scope="module")
def diagonal():
    """n = 50 independent N(μ, 1) variables, each observed once with
    variance 0.5: the posterior is the Kalman one variable by variable.
    Local PF (step taper, each point sees its own observation) and global
    bootstrap PF at N = 100 and 1600: (mean error, mean variance, ESS)."""
    rng = np.random.default_rng(0)
    mu = rng.normal(size=DIAG_N)
    y = mu + rng.normal(size=DIAG_N) * np.sqrt(1 + R_DIAG)
    gain = 1 / (1 + R_DIAG)
    kf_mean, kf_var = mu + gain * (y - mu), R_DIAG * gain
    coords = np.arange(DIAG_N, dtype=float)[:, None]  # (n, 1): cartesian_distance
    R = enkit.Scalar(R_DIAG, DIAG_N)
    out = {}
    for N in (100, 1600):
        E = mu + np.random.default_rng(N).normal(size=(N, DIAG_N))
        key = jax.random.key(N)
        kw = dict(state_coords=coords, obs_coords=coords, radius=0.5, taper=step)
        loc = pf.local_pf(E, y, np.eye(DIAG_N), R, key=key, **kw)
        glob = pf.bootstrap_pf(E, y, np.eye(DIAG_N), R, key=key, threshold=1.0)
        # each grid point's local weights: its own observation's likelihood
        local_ess = pf.effective_sample_size(log_weights=(-0.5 * (y - E) ** 2 / R_DIAG).T)
        out[N] = {
            "local": np.sqrt(np.mean((loc.ensemble.mean(0) - kf_mean) ** 2)),
            "local_var": float(np.mean(np.var(loc.ensemble, axis=0, ddof=1))),
            "local_ess": float(np.mean(local_ess)),
            "global": np.sqrt(np.mean((glob.ensemble.mean(0) - kf_mean) ** 2)),
            "global_ess": float(glob.ess),
        }
    return out, kf_var


def test_local_pf_approaches_kalman_where_global_pf_degenerates(diagonal):
    out, kf_var = diagonal
    err = [out[N]["local"] for N in (100, 1600)]
    assert err[1] < 0.03 and err[0] < 0.12, err
    # the Monte Carlo error shrinks like 1/√N (×√16 = 4 from 100 to 1600)
    assert err[0] / err[1] > 2.5, err
    assert out[1600]["local_var"] == pytest.approx(kf_var, rel=0.05)
    # each local weight sees one observation: the local ESS stays a fixed fraction of N
    assert all(out[N]["local_ess"] > 0.5 * N for N in out), out
    # the global weights of 50 observations collapse onto a few particles
    assert all(out[N]["global_ess"] < 5 for N in out), out
    assert all(out[N]["global"] > 0.4 for N in out), out
    assert out[100]["global"] > 4 * out[100]["local"], out
    assert out[1600]["global"] > 20 * out[1600]["local"], out


# --- Lorenz-96 through enkit.assimilate -------------------------------------

L96_K = 90


@pytest.fixture(scope="module")
def lorenz96():
    """n = 40, every variable observed (R = I) every step (dt = 0.05), N = 20:
    the local PF (Gaspari–Cohn radius 2, noise 0.5) and the bootstrap PF
    (regularised, reg = 1), 10% of the observations absent; a second local
    run with another key reuses the compiled program."""
    model = Lorenz96()
    n = model.n
    R = enkit.Scalar(1.0, n)
    tw = twin_experiment(model, 8.0 + np.random.default_rng(0).normal(size=n), key=1,
                         n_obs=L96_K, h=np.eye(n), R=R, spinup=500)
    mask = np.random.default_rng(1).random((L96_K, n)) > 0.1
    E0 = np.asarray(tw.x0) + 2.0 * np.random.default_rng(2).normal(size=(20, n))
    c = np.arange(n, dtype=float)
    local = partial(pf.local_pf, state_coords=c, obs_coords=c, radius=2.0,
                    distance=partial(periodic_distance, period=float(n)), noise=0.5)
    run = partial(enkit.assimilate, model, E0, tw.observations, h=np.eye(n), R=R,
                  mask=mask, on_nonfinite="warn")
    loc = run(local, key=3)
    size = _run._cache_size()
    again = run(local, key=4)  # new values, same program
    assert _run._cache_size() == size and np.all(np.isfinite(again.ensemble))
    return np.asarray(tw.truth), loc, run(partial(pf.bootstrap_pf, reg=1.0), key=3)


def test_lorenz96_local_pf_beats_the_bootstrap_pf(lorenz96):
    truth, loc, boot = lorenz96

    def rmse(res):
        return np.sqrt(np.mean((np.asarray(res.analysis_mean) - truth) ** 2, axis=1))

    e_loc, e_boot = rmse(loc), rmse(boot)
    assert np.all(np.isfinite(e_loc)) and np.all(np.isfinite(loc.ensemble))
    late = slice(L96_K // 3, None)
    assert e_loc[late].mean() < 0.8, e_loc[late].mean()
    assert e_loc[late].mean() < 0.3 * e_boot[late].mean(), (e_loc[late].mean(),
                                                            e_boot[late].mean())
    # local resampling at every cycle: uniform weights carried, the global ESS stored
    np.testing.assert_allclose(loc.log_weights, -np.log(20), rtol=1e-12)
    assert loc.ess.shape == (L96_K,) and np.all((loc.ess >= 1) & (loc.ess <= 20))
