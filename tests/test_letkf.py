"""LETKF (Hunt, Kostelich & Szunyogh 2007): limits, locality, continuity,
transformations and the published Lorenz-96 accuracy."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.localization import periodic_distance, step
from enkit.models.cases import sakov2008_lorenz96

N_GRID = 12
GRID = jnp.arange(float(N_GRID))
RING = partial(periodic_distance, period=float(N_GRID))
OBS_AT = np.array([0, 1, 3, 4, 6, 8, 9, 11])  # observed grid points


def ring_problem(N=6, seed=0, dtype=np.float64):
    """A ring of 12 correlated variables, 8 of them observed, diagonal R."""
    rng = np.random.default_rng(seed)
    n, m = N_GRID, OBS_AT.size
    i = np.arange(n)
    dist = np.minimum(abs(i[:, None] - i[None, :]), n - abs(i[:, None] - i[None, :]))
    L = np.linalg.cholesky(np.exp(-((dist / 2.0) ** 2)) + 1e-6 * np.eye(n))
    E = (rng.normal(size=n) + rng.normal(size=(N, n)) @ L.T).astype(dtype)
    H = np.eye(n)[OBS_AT].astype(dtype)
    R = enkit.Diagonal(rng.uniform(0.5, 2.0, size=m).astype(dtype))
    y = (rng.normal(size=m) * 1.5).astype(dtype)
    return E, y, H, R, GRID[OBS_AT].astype(dtype)


_letkf = jax.jit(enkit.letkf, static_argnames=("taper", "distance", "max_obs", "chunk_size"))


def eager(E, y, H, R, obs, radius, **kw):
    return enkit.letkf(E, y, H, R, state_coords=GRID.astype(E.dtype), obs_coords=obs,
                       radius=radius, **kw)


def run(E, y, H, R, obs, radius, **kw):
    """enkit.letkf on the ring, compiled once per option set (keeps the tests fast)."""
    kw.setdefault("distance", RING)
    return _letkf(E, y, H, R, state_coords=GRID.astype(E.dtype), obs_coords=obs,
                  radius=radius, **kw)


@pytest.mark.parametrize("N, rkind", [(5, "diagonal"), (15, "scalar")])
def test_whole_domain_step_taper_equals_global_etkf(N, rkind):
    E, y, H, R, obs = ring_problem(N)
    if rkind == "scalar":
        R = enkit.Scalar(0.8, y.size)
    global_ = enkit.etkf(E, y, H, R)
    for kw in ({}, {"chunk_size": 5}, {"max_obs": y.size}):
        Ea = run(E, y, H, R, obs, 6.0, taper=step, **kw)  # max ring distance is 6
        np.testing.assert_allclose(Ea, global_, rtol=0, atol=1e-10)
    h = jax.tree_util.Partial(lambda H, x: H @ x, jnp.asarray(H))  # h as a callable
    Ea = _letkf(E, y, h, R, state_coords=GRID, obs_coords=obs, radius=6.0, taper=step,
                distance=RING)
    np.testing.assert_allclose(Ea, global_, rtol=0, atol=1e-10)
    # a localised analysis really differs from the global one
    assert np.max(np.abs(run(E, y, H, R, obs, 1.5) - global_)) > 1e-2


def _correlated_R(m, seed=3):
    """An SPD R with correlated errors: Gaussian correlations of the ring
    distance between the observed points, times random standard deviations."""
    rng = np.random.default_rng(seed)
    pos = np.asarray(OBS_AT, float)
    dd = np.abs(pos[:, None] - pos[None, :])
    dd = np.minimum(dd, N_GRID - dd)
    sd = rng.uniform(0.7, 1.4, m)
    return sd[:, None] * np.exp(-((dd / 1.5) ** 2)) * sd[None, :] + 0.05 * np.eye(m)


def test_correlated_R_whole_domain_equals_global_etkf():
    """A correlated R (dense, m × m): each local problem whitens with its own
    block of R; with a step taper over the whole ring that block is R and
    every point's analysis is the global ETKF with the correlated R."""
    E, y, H, _, obs = ring_problem(7)
    Rc = _correlated_R(y.size)
    global_ = enkit.etkf(E, y, H, enkit.Dense(Rc))
    assert np.max(np.abs(global_ - enkit.etkf(E, y, H, enkit.Diagonal(np.diag(Rc))))) > 1e-2
    for kw in ({}, {"chunk_size": 5}, {"max_obs": y.size}):
        Ea = run(E, y, H, enkit.Dense(Rc), obs, 6.0, taper=step, **kw)
        np.testing.assert_allclose(Ea, global_, rtol=0, atol=1e-10)
    # traced coordinates: the search inside the graph, the same blocks
    traced = jax.jit(lambda o: enkit.letkf(E, y, H, enkit.Dense(Rc), state_coords=GRID,
                                           obs_coords=o, radius=6.0, taper=step,
                                           distance=RING))
    np.testing.assert_allclose(traced(obs), global_, rtol=0, atol=1e-10)


def test_correlated_R_local_blocks_and_the_uncorrelated_path_agree():
    E, y, H, Rd, obs = ring_problem(6)
    v = np.asarray(Rd.diagonal())
    # a diagonal matrix given as Dense (the local-block path) equals Diagonal (the global
    # whitening), with a tapered radius, lists or graph search, and max_obs
    for kw in ({}, {"max_obs": 5}):
        np.testing.assert_allclose(run(E, y, H, enkit.Dense(np.diag(v)), obs, 1.7, **kw),
                                   run(E, y, H, Rd, obs, 1.7, **kw), rtol=0, atol=1e-12)
    graph = jax.jit(lambda o, R: enkit.letkf(E, y, H, R, state_coords=GRID, obs_coords=o,
                                             radius=1.7, distance=RING))
    np.testing.assert_allclose(graph(obs, enkit.Dense(np.diag(v))), graph(obs, Rd),
                               rtol=0, atol=1e-12)
    # a BlockDiagonal of uncorrelated blocks is whitened globally, as its Diagonal
    blocks = enkit.BlockDiagonal([enkit.Diagonal(v[:3]), enkit.Scalar(v[3], 1),
                                  enkit.Diagonal(v[4:])])
    np.testing.assert_allclose(run(E, y, H, blocks, obs, 1.7), run(E, y, H, Rd, obs, 1.7),
                               rtol=0, atol=1e-12)
    # structured correlated operators equal their dense matrix
    rng = np.random.default_rng(1)
    U = rng.normal(size=(y.size, 2)) * 0.5
    lr = enkit.LowRankDiagonal(v, U)
    np.testing.assert_allclose(run(E, y, H, lr, obs, 1.7),
                               run(E, y, H, enkit.Dense(np.diag(v) + U @ U.T), obs, 1.7),
                               rtol=0, atol=1e-11)
    # and a local analysis with correlated R differs from ignoring the correlations
    Rc = _correlated_R(y.size)
    assert np.max(np.abs(run(E, y, H, enkit.Dense(Rc), obs, 1.7)
                         - run(E, y, H, enkit.Diagonal(np.diag(Rc)), obs, 1.7))) > 1e-2


def test_correlated_R_observations_beyond_the_support_have_no_effect():
    """The observations a point does not see leave its R block: changing a far
    observation's value changes nothing there, even with correlated R."""
    E, y, H, _, obs = ring_problem(6)
    R = enkit.Dense(_correlated_R(y.size))
    base = np.asarray(run(E, y, H, R, obs, 1.2))
    y_far = y.copy()
    y_far[4] += 50.0  # the observation at grid point 6 (reaches points within 2)
    moved = np.asarray(run(E, y_far, H, R, obs, 1.2))
    far = np.array([i for i in range(N_GRID) if min(abs(i - 6), N_GRID - abs(i - 6)) > 2])
    np.testing.assert_array_equal(moved[:, far], base[:, far])
    assert np.max(np.abs(moved - base)) > 1.0


def test_chunking_does_not_change_the_analysis():
    E, y, H, R, obs = ring_problem(7)
    whole = run(E, y, H, R, obs, 2.0)
    for chunk in (1, 5, 12):
        np.testing.assert_allclose(run(E, y, H, R, obs, 2.0, chunk_size=chunk), whole,
                                   rtol=0, atol=1e-13)


def test_observations_beyond_the_support_have_exactly_no_effect():
    E, y, H, R, obs = ring_problem(6)
    c = 1.2  # Gaspari-Cohn support 2.4: obs j reaches grid points within distance 2
    base = np.asarray(run(E, y, H, R, obs, c))
    j = 4  # the observation at grid point 6
    y_far = y.copy()
    y_far[j] = 1e30
    moved = np.asarray(run(E, y_far, H, R, obs, c))
    d = np.asarray(RING(GRID, float(obs[j])))
    far = d >= 2 * c
    np.testing.assert_array_equal(moved[:, far], base[:, far])  # bit-identical
    assert np.all(np.abs(moved[:, ~far] - base[:, ~far]).max(axis=0) > 1.0)
    # under jit (no finiteness check at the door) even an infinite value is ignored there
    y_inf = y.copy()
    y_inf[j] = np.inf
    np.testing.assert_array_equal(np.asarray(run(E, y_inf, H, R, obs, c))[:, far], base[:, far])
    # the same with the nearest-observation selection
    base_k = np.asarray(run(E, y, H, R, obs, c, max_obs=3))
    moved_k = np.asarray(run(E, y_far, H, R, obs, c, max_obs=3))
    np.testing.assert_array_equal(moved_k[:, far], base_k[:, far])


def test_an_observation_outside_every_support_changes_nothing():
    E, y, H, R, obs = ring_problem(6)
    line = enkit.cartesian_distance
    coords = GRID[:, None]
    obs_line = jnp.concatenate([obs, jnp.array([100.0])])[:, None]  # far off the line
    H2 = np.vstack([H, np.eye(N_GRID)[:1]])
    R2 = enkit.Diagonal(jnp.concatenate([R.variances, jnp.array([0.01])]))
    kw = {"state_coords": coords, "radius": 2.0, "distance": line}
    with_far = [np.asarray(_letkf(E, np.append(y, v), H2, R2, obs_coords=obs_line, **kw))
                for v in (0.0, -3e40)]
    np.testing.assert_array_equal(with_far[0], with_far[1])
    without = _letkf(E, y, H, R, obs_coords=obs_line[:-1], **kw)
    np.testing.assert_allclose(with_far[0], without, rtol=0, atol=1e-13)


def test_analysis_is_continuous_in_the_radius():
    E, y, H, R, obs = ring_problem(6)
    # at c = 1.5 the support 2c = 3 reaches observations exactly 3 points away
    for c in (1.5, 2.0, 2.5):
        lo = run(E, y, H, R, obs, c - 1e-7)
        hi = run(E, y, H, R, obs, c + 1e-7)
        assert np.max(np.abs(hi - lo)) < 1e-5, c
    # the hard cutoff jumps where an observation enters (so the check can fail)
    jump = run(E, y, H, R, obs, 3.0 + 1e-7, taper=step) - run(E, y, H, R, obs, 3.0 - 1e-7,
                                                              taper=step)
    assert np.max(np.abs(jump)) > 1e-2


def test_max_obs_keeps_the_nearest_observations():
    E, y, H, R, _ = ring_problem(6)
    obs_all = GRID  # every grid point observed
    H = np.eye(N_GRID)
    R = enkit.Diagonal(np.linspace(0.5, 1.5, N_GRID))
    y = np.random.default_rng(1).normal(size=N_GRID)
    # a step taper of radius 2 sees 5 observations; the 5 nearest of a wider one are those
    want = run(E, y, H, R, obs_all, 2.0, taper=step)
    got = run(E, y, H, R, obs_all, 5.0, taper=step, max_obs=5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    got_gc = run(E, y, H, R, obs_all, 1.5, max_obs=7)  # support 3: 7 observations
    np.testing.assert_allclose(got_gc, run(E, y, H, R, obs_all, 1.5), rtol=0, atol=1e-12)


def test_jit_without_retracing_and_vmap_over_the_radius():
    E, y, H, R, obs = ring_problem(6)
    traces = []

    @jax.jit
    def analyse(E, y, radius):
        traces.append(1)
        return run(E, y, H, R, obs, radius)

    a = analyse(E, y, 1.5)
    b = analyse(E + 0.1, y, 2.5)
    assert len(traces) == 1
    np.testing.assert_allclose(a, run(E, y, H, R, obs, 1.5), rtol=0, atol=1e-12)
    np.testing.assert_allclose(b, run(E + 0.1, y, H, R, obs, 2.5), rtol=0, atol=1e-12)
    radii = jnp.array([1.0, 2.0, 6.0])
    sweep = jax.vmap(lambda r: run(E, y, H, R, obs, r))(radii)
    for k, r in enumerate(radii):
        np.testing.assert_allclose(sweep[k], run(E, y, H, R, obs, float(r)),
                                   rtol=0, atol=1e-12)


def test_gradient_with_respect_to_the_radius_is_finite():
    E, y, H, R, obs = ring_problem(6)
    g = jax.grad(lambda r: jnp.sum(run(E, y, H, R, obs, r) ** 2))(2.0)
    assert np.isfinite(float(g)) and float(g) != 0.0


def test_float32_smoke():
    E, y, H, R, obs = ring_problem(6, dtype=np.float32)
    Ea = run(E, y, H, R, obs, 2.0)
    assert Ea.dtype == jnp.float32 and np.all(np.isfinite(Ea))
    E64, y64, H64, R64, obs64 = ring_problem(6)
    np.testing.assert_allclose(Ea, run(E64, y64, H64, R64, obs64, 2.0), atol=1e-4)


def test_bad_inputs_are_named():
    E, y, H, R, obs = ring_problem(6)
    run = partial(eager, distance=RING)  # value checks run outside jit
    with pytest.raises(ValueError, match="state_coords"):
        enkit.letkf(E, y, H, R, state_coords=GRID[:-1], obs_coords=obs, radius=2.0,
                    distance=RING)
    with pytest.raises(ValueError, match="obs_coords"):
        run(E, y, H, R, obs[:-1], 2.0)
    with pytest.raises(ValueError, match="radius"):
        run(E, y, H, R, obs, -1.0)
    with pytest.raises(ValueError, match="distance must map"):
        eager(E, y, H, R, obs, 2.0, distance=enkit.cartesian_distance)  # scalar points
    with pytest.raises(ValueError, match="max_obs"):
        run(E, y, H, R, obs, 2.0, max_obs=0)
    with pytest.raises(ValueError, match="chunk_size"):
        run(E, y, H, R, obs, 2.0, chunk_size=0)
    with pytest.raises(TypeError):
        run(E, y, H, R, obs, 2.0, tapr=step)  # misspelled option


def test_not_in_the_registry_but_exported():
    assert "letkf" not in enkit.SCHEMES
    assert enkit.filters.letkf is enkit.letkf


def test_lorenz96_small_ensemble_letkf_converges_where_etkf_diverges():
    # Lorenz-96, n=40, all observed every 0.05 with R = I (Sakov & Oke 2008 setting):
    # the LETKF with N=10 and inflation 1.04 is accurate; the global ETKF diverges.
    case = sakov2008_lorenz96()
    coords = jnp.arange(40.0)
    letkf = partial(enkit.letkf, state_coords=coords, obs_coords=coords, radius=5.0,
                    distance=partial(periodic_distance, period=40.0), chunk_size=8)
    local = case.run(letkf, 10, inflation=1.04, cycles=1000, burn_in=200).rmse
    global_ = case.run(enkit.etkf, 10, inflation=1.04, cycles=1000, burn_in=200).rmse
    assert local < 0.25, local
    assert global_ > 1.0, global_


def _closed(radius=None, **kw):
    """letkf with the coordinates bound as constants: the static neighbour lists."""
    kw.setdefault("distance", RING)
    f = partial(enkit.letkf, state_coords=np.asarray(GRID), **kw)
    return f if radius is None else partial(f, radius=radius)


def test_static_neighbour_lists_give_the_same_analysis():
    # concrete coordinates (and radius): each grid point gets its list of observations
    # once, outside the graph; traced coordinates search all m inside it (`run`)
    E, y, H, R, obs = ring_problem(7)
    obs = np.asarray(obs)
    for radius, kw in ((2.0, {"chunk_size": 5}), (5.0, {"max_obs": 5, "taper": step}),
                       (1.2, {"max_obs": 6})):
        want = run(E, y, H, R, obs, radius, **kw)
        got = jax.jit(_closed(radius, obs_coords=obs, **kw))(E, y, H, R)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # a traced radius with max_obs: lists by distance, the taper applied in the graph
    radii = jnp.array([1.0, 2.5])
    sweep = jax.jit(jax.vmap(lambda r: _closed(obs_coords=obs, max_obs=6)(E, y, H, R, radius=r)))(
        radii)
    for k, r in enumerate(radii):
        np.testing.assert_allclose(sweep[k], run(E, y, H, R, obs, float(r), max_obs=6),
                                   rtol=0, atol=1e-12)


def _shapes(jaxpr):
    """Shapes of every value computed in a jaxpr, its sub-jaxprs included."""
    out = set()
    for eqn in jaxpr.eqns:
        out.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for p in eqn.params.values():
            for q in p if isinstance(p, (list, tuple)) else (p,):
                sub = getattr(q, "jaxpr", q)
                if hasattr(sub, "eqns"):
                    out |= _shapes(sub)
    return out


def test_static_lists_touch_only_nearby_observations():
    E, y, H, R, _ = ring_problem(6)
    H, R = np.eye(N_GRID), enkit.Scalar(1.0, N_GRID)
    y = np.random.default_rng(2).normal(size=N_GRID)
    obs = np.asarray(GRID)
    # Gaspari-Cohn with c = 1.2: support 2.4, so 5 observations per grid point
    f = _closed(1.2, obs_coords=obs, chunk_size=4)
    local = _shapes(jax.make_jaxpr(f)(E, y, H, R).jaxpr)
    assert (4, 6, 5) in local  # a chunk's whitened anomalies: (B, N, k) with k = 5
    assert not any(len(s) == 3 and s[-1] == N_GRID for s in local), local
    traced = jax.make_jaxpr(lambda s: enkit.letkf(E, y, H, R, state_coords=s, obs_coords=obs,
                                                  radius=1.2, distance=RING, chunk_size=4))
    assert (4, 6, N_GRID) in _shapes(traced(GRID).jaxpr)  # the traced path: (B, N, m)
    # far observations are not even read: an infinite one leaves the rest bit-identical
    base = np.asarray(jax.jit(f)(E, y, H, R))
    y_inf = y.copy()
    y_inf[6] = np.inf
    moved = np.asarray(jax.jit(f)(E, y_inf, H, R))
    far = np.asarray(RING(GRID, 6.0)) >= 2.4
    np.testing.assert_array_equal(moved[:, far], base[:, far])
