"""Patch domain localisation (``enkit.patch_etkf``): limits (global ETKF,
LETKF), exact locality, bilinear blending, validation, jit/vmap, and a small
twin experiment on the 2-D advection–diffusion model."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.localization import step

N0, N1 = 6, 8  # grid rows (y) and columns (x)
GEOM = enkit.AdvectionDiffusion2D(nx=N1, ny=N0, Lx=float(N1), Ly=float(N0))
COORDS = GEOM.coordinates  # (48, 2) = (x, y), unit spacing
TORUS = partial(enkit.torus_distance, period=(float(N1), float(N0)))
OBS_AT = np.array([0, 3, 5, 9, 12, 14, 18, 21, 22, 26, 29, 31, 33, 36, 40, 43, 45, 47])


def grid_problem(N=6, seed=0, dtype=np.float64):
    """A correlated field on the 6 x 8 torus, 18 points observed, diagonal R."""
    rng = np.random.default_rng(seed)
    n, m = N0 * N1, OBS_AT.size
    field = np.asarray(GEOM.random_field(jax.random.key(seed), 1.5, (N + 1,)))
    E = (field[0] + field[1:]).astype(dtype)
    H = np.eye(n)[OBS_AT].astype(dtype)
    R = enkit.Diagonal(rng.uniform(0.5, 2.0, size=m).astype(dtype))
    y = (rng.normal(size=m) * 1.5).astype(dtype)
    return E, y, H, R, np.asarray(COORDS)[OBS_AT].astype(dtype)


_patch = jax.jit(
    enkit.patch_etkf,
    static_argnames=("grid_shape", "patch_shape", "taper", "distance", "periodic", "blend",
                     "max_obs", "chunk_size"),
)
_letkf = jax.jit(enkit.letkf, static_argnames=("taper", "distance", "max_obs", "chunk_size"))


def run(E, y, H, R, obs, radius, patch, **kw):
    """patch_etkf on the 6 x 8 torus; every option passed, so equal settings share
    one compilation (keeps the tests fast)."""
    kw = {"taper": enkit.gaspari_cohn, "distance": TORUS, "periodic": True, "blend": True,
          "max_obs": None, "chunk_size": 64, **kw}
    return _patch(E, y, H, R, grid_shape=(N0, N1), patch_shape=patch,
                  state_coords=COORDS.astype(E.dtype), obs_coords=obs, radius=radius, **kw)


def test_one_patch_with_no_taper_is_the_global_etkf():
    E, y, H, R, obs = grid_problem(6)
    global_ = enkit.etkf(E, y, H, R)
    for kw in ({}, {"blend": False, "periodic": False, "max_obs": y.size}):
        Ea = run(E, y, H, R, obs, 6.0, (N0, N1), taper=step, **kw)  # torus diameter 5
        np.testing.assert_allclose(Ea, global_, rtol=0, atol=1e-10)
    # localised patches really differ from the global analysis
    assert np.max(np.abs(run(E, y, H, R, obs, 0.9, (2, 2)) - global_)) > 1e-2


def test_unit_patches_are_the_letkf():
    E, y, H, R, obs = grid_problem(6)
    for radius in (1.2, 2.0):
        want = _letkf(E, y, H, R, state_coords=COORDS, obs_coords=obs, radius=radius,
                      distance=TORUS)
        for kw in ({}, {"blend": False, "chunk_size": 5}):
            got = run(E, y, H, R, obs, radius, (1, 1), **kw)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    want_k = _letkf(E, y, H, R, state_coords=COORDS, obs_coords=obs, radius=1.2,
                    distance=TORUS, max_obs=8)
    np.testing.assert_allclose(run(E, y, H, R, obs, 1.2, (1, 1), max_obs=8), want_k,
                               rtol=0, atol=1e-10)
    # concrete coordinates: the nearest observations are listed once, outside the graph
    static = jax.jit(lambda E, y, r: enkit.patch_etkf(
        E, y, H, R, grid_shape=(N0, N1), patch_shape=(1, 1), state_coords=COORDS,
        obs_coords=obs, radius=r, distance=TORUS, periodic=True, max_obs=8))
    np.testing.assert_allclose(static(E, y, 1.2), want_k, rtol=0, atol=1e-10)


def test_an_observation_outside_every_halo_has_exactly_no_effect():
    E, y, H, R, obs = grid_problem(6)
    H2 = np.vstack([H, np.eye(N0 * N1)[:1]])
    R2 = enkit.Diagonal(jnp.concatenate([R.variances, jnp.array([0.01])]))
    obs2 = np.vstack([obs, [[100.0, 100.0]]])  # far off the (non-periodic) plane
    kw = {"distance": enkit.cartesian_distance, "periodic": False}
    with_far = [np.asarray(run(E, np.append(y, v), H2, R2, obs2, 1.5, (2, 4), **kw))
                for v in (0.0, -3e40)]
    np.testing.assert_array_equal(with_far[0], with_far[1])
    without = run(E, y, H, R, obs, 1.5, (2, 4), **kw)
    np.testing.assert_allclose(with_far[0], without, rtol=0, atol=1e-13)


def _reaches(patch, centre_index, size, periodic=True):
    """Whether the blending weight of a patch centre reaches each index of an axis:
    the tent of the centre spans one centre spacing (= patch size) either side."""
    off = np.abs(np.arange(size) - centre_index)
    if periodic:
        off = np.minimum(off, size - off)
    return off < patch


@pytest.mark.parametrize("blend", [True, False])
def test_an_observation_changes_only_points_whose_patches_see_it(blend):
    E, y, H, R, obs = grid_problem(6)
    p0, p1, c = 2, 2, 0.9  # Gaspari-Cohn support 1.8 around each patch centre
    base = np.asarray(run(E, y, H, R, obs, c, (p0, p1), blend=blend))
    j = 7  # the observation at grid point 21 = (x 5, y 2)
    y_far = y.copy()
    y_far[j] = 1e30
    moved = np.asarray(run(E, y_far, H, R, obs, c, (p0, p1), blend=blend))
    # patches whose centre sees observation j
    centres = np.asarray(COORDS).reshape(N0 // p0, p0, N1 // p1, p1, 2).mean(axis=(1, 3))
    sees = np.asarray(TORUS(centres, obs[j])) < 2 * c  # (3, 4)
    assert 0 < sees.sum() < sees.size
    affected = np.zeros((N0, N1), bool)
    for a, b in zip(*np.nonzero(sees)):
        if blend:
            r0 = _reaches(p0, a * p0 + 0.5 * (p0 - 1), N0)
            r1 = _reaches(p1, b * p1 + 0.5 * (p1 - 1), N1)
        else:
            r0 = np.arange(N0) // p0 == a
            r1 = np.arange(N1) // p1 == b
        affected |= r0[:, None] & r1[None, :]
    affected = affected.ravel()
    assert 0 < affected.sum() < affected.size
    np.testing.assert_array_equal(moved[:, ~affected], base[:, ~affected])  # bit-identical
    assert np.all(np.abs(moved[:, affected] - base[:, affected]).max(axis=0) > 1.0)


def test_blending_interpolates_the_patch_transforms_bilinearly():
    # A spatially constant ensemble makes every point's analysis x̄ + M_i X with the
    # same X, so the analysis field is the (periodic) bilinear interpolation of its
    # values at the patch centres, where the blended and block analyses agree.
    rng = np.random.default_rng(3)
    n0, n1, p0, p1 = 6, 9, 3, 3  # odd patches: centres on grid points 1, 4, 7
    geom = enkit.AdvectionDiffusion2D(nx=n1, ny=n0, Lx=float(n1), Ly=float(n0))
    dist = partial(enkit.torus_distance, period=(float(n1), float(n0)))
    E = np.repeat(rng.normal(size=(7, 1)), n0 * n1, axis=1)
    obs = rng.uniform(0, [n1, n0], size=(15, 2))
    H = rng.normal(size=(15, n0 * n1)) / n0
    R = enkit.Diagonal(rng.uniform(0.2, 0.5, 15))
    y = rng.normal(size=15)
    kw = {"grid_shape": (n0, n1), "patch_shape": (p0, p1), "state_coords": geom.coordinates,
              "obs_coords": obs, "radius": 1.5, "distance": dist, "periodic": True}
    blended = np.asarray(_patch(E, y, H, R, blend=True, **kw)).reshape(7, n0, n1)
    block = np.asarray(_patch(E, y, H, R, blend=False, **kw)).reshape(7, n0, n1)
    centre_values = block[:, 1::3, 1::3]  # (7, 2, 3)
    np.testing.assert_allclose(blended[:, 1::3, 1::3], centre_values, rtol=0, atol=1e-12)

    def interp(v, i, p, size):  # periodic linear interpolation along axis -1 of v
        t = (i - 0.5 * (p - 1)) / p
        a = np.floor(t).astype(int)
        f = t - a
        return v[..., a % v.shape[-1]] * (1 - f) + v[..., (a + 1) % v.shape[-1]] * f

    rows = interp(np.swapaxes(centre_values, 1, 2), np.arange(n0), p0, n0)  # (7, 3, n0)
    want = interp(np.swapaxes(rows, 1, 2), np.arange(n1), p1, n1)  # (7, n0, n1)
    np.testing.assert_allclose(blended, want, rtol=0, atol=1e-12)
    # across a patch edge the block analysis jumps by the whole difference of the two
    # centres' analyses, the blended one moves by a third of it (3 points apart)
    jump_block = block[:, 1::3, 3] - block[:, 1::3, 2]  # on the rows of the centres
    assert np.abs(jump_block).max() > 0.1
    np.testing.assert_allclose(jump_block, 3 * (blended[:, 1::3, 3] - blended[:, 1::3, 2]),
                               rtol=0, atol=1e-12)


def test_non_periodic_blending_holds_the_outer_centres_transform():
    rng = np.random.default_rng(4)
    n0, n1 = 4, 8  # patches 4 x 4: centres at (1.5, 1.5) and (1.5, 5.5)
    E = np.repeat(rng.normal(size=(5, 1)), n0 * n1, axis=1)
    coords = enkit.AdvectionDiffusion2D(nx=n1, ny=n0, Lx=8.0, Ly=4.0).coordinates
    obs = rng.uniform(0, [8, 4], size=(10, 2))
    H = rng.normal(size=(10, n0 * n1)) / 4
    R, y = enkit.Scalar(0.3, 10), rng.normal(size=10)
    Ea = np.asarray(_patch(E, y, H, R, grid_shape=(n0, n1), patch_shape=(4, 4),
                           state_coords=coords, obs_coords=obs, radius=2.0,
                           periodic=False)).reshape(5, n0, n1)
    # one row of centres: every row equal; columns 0, 1 take the first centre's
    # transform, columns 6, 7 the last one's, columns 2..5 are linear in between
    np.testing.assert_allclose(Ea, Ea[:, :1, :].repeat(n0, axis=1), rtol=0, atol=1e-12)
    row = Ea[:, 0, :]
    np.testing.assert_allclose(row[:, 0], row[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(row[:, 6], row[:, 7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.diff(row[:, 2:6], 2, axis=1), 0.0, atol=1e-12)
    assert np.abs(row[:, 7] - row[:, 0]).max() > 1e-2


def test_correlated_R_one_patch_is_the_global_etkf_and_diagonal_dense_is_diagonal():
    """Correlated R: each patch whitens with its own block of R (the LETKF's
    local blocks); one patch with no taper is the global ETKF with that R."""
    E, y, H, R, obs = grid_problem(6)
    rng = np.random.default_rng(2)
    A = rng.normal(size=(y.size, y.size))
    Rc = A @ A.T / y.size + 0.3 * np.eye(y.size)
    Ea = run(E, y, H, enkit.Dense(Rc), obs, 6.0, (N0, N1), taper=step)
    np.testing.assert_allclose(Ea, enkit.etkf(E, y, H, enkit.Dense(Rc)), rtol=0, atol=1e-10)
    v = np.asarray(R.diagonal())
    np.testing.assert_allclose(run(E, y, H, enkit.Dense(np.diag(v)), obs, 0.9, (2, 2)),
                               run(E, y, H, R, obs, 0.9, (2, 2)), rtol=0, atol=1e-12)


def test_validation_messages():
    E, y, H, R, obs = grid_problem(6)
    base = {"grid_shape": (N0, N1), "patch_shape": (2, 2), "state_coords": COORDS,
                "obs_coords": obs, "radius": 1.0}
    cases = [
        ({"grid_shape": (4, 8)}, "holds 32 points"),
        ({"patch_shape": (4, 2)}, "must divide"),
        ({"patch_shape": (0, 2)}, "pair of integers >= 1"),
        ({"grid_shape": 48}, "pair of integers"),
        ({"periodic": (True,)}, "periodic must be"),
        ({"state_coords": COORDS[:-1]}, "state_coords must have shape"),
        ({"obs_coords": obs[:-1]}, "obs_coords must have shape"),
        ({"radius": -1.0}, "radius must be positive"),
        ({"radius": np.ones(2)}, "radius must be a scalar"),
        ({"max_obs": 0}, "max_obs must be"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"chunk_size": 1.5}, "chunk_size must be"),
        ({"distance": lambda a, b: a - b}, "distance must map"),
    ]
    for change, message in cases:
        args = {**base, "R": R, **change}
        Rx = args.pop("R")
        with pytest.raises(ValueError, match=message):
            enkit.patch_etkf(E, y, H, Rx, **args)
    with pytest.raises(TypeError, match="blend must be True or False"):
        enkit.patch_etkf(E, y, H, R, **base, blend=1)


def test_jit_without_retracing_vmap_over_radius_and_float32():
    E, y, H, R, obs = grid_problem(6)
    traces = []

    @jax.jit
    def analyse(E, y, radius):
        traces.append(1)
        return run(E, y, H, R, obs, radius, (2, 2))

    a = analyse(E, y, 1.5)
    b = analyse(E + 0.1, y, 2.5)
    assert len(traces) == 1 and not np.allclose(a, b)
    sweep = jax.vmap(lambda r: run(E, y, H, R, obs, r, (2, 2)))(jnp.array([1.5, 2.5]))
    np.testing.assert_allclose(sweep[0], a, rtol=0, atol=1e-12)
    Ea32 = run(*grid_problem(6, dtype=np.float32), 1.5, (2, 2))
    assert Ea32.dtype == jnp.float32
    np.testing.assert_allclose(Ea32, a, rtol=0, atol=1e-3)


def test_cycling_on_the_2d_model_beats_the_free_run():
    model = enkit.AdvectionDiffusion2D(nx=16, ny=16, Lx=16.0, Ly=16.0)
    key = jax.random.key(0)
    x0 = 2.0 * model.random_field(jax.random.fold_in(key, 0), 3.0)
    idx = jnp.arange(model.dim).reshape(16, 16)[::2, ::2].ravel()  # 64 observations

    def h(x):
        return x[idx]

    twin = enkit.twin_experiment(model, x0, key=jax.random.fold_in(key, 1), n_obs=5, h=h,
                                 R=0.1, steps_per_obs=2)
    E0 = x0 + 2.0 * model.random_field(jax.random.fold_in(key, 2), 3.0, (8,))
    scheme = partial(enkit.patch_etkf, grid_shape=(16, 16), patch_shape=(4, 4),
                     state_coords=model.coordinates, obs_coords=model.coordinates[idx],
                     radius=2.5, distance=partial(enkit.torus_distance, period=(16.0, 16.0)),
                     periodic=True)
    result = enkit.assimilate(model, E0, twin.observations, scheme, h=h, R=0.1,
                              steps_per_obs=2, inflation=1.05)
    free = enkit.models.integrate(model, E0.mean(axis=0), 10)  # linear model: mean of runs
    free_rmse = float(enkit.rmse(free, twin.truth[-1]))
    rmse = np.asarray(result.rmse(twin.truth))
    assert rmse[-1] < 0.3 * free_rmse, (rmse, free_rmse)
    assert rmse[-1] < rmse[0]
