"""Distances, tapers and localisation matrices (enkit.localization)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit import localization as loc


def gc_closed_form(z):
    """Gaspari & Cohn (1999) eq. (4.10), written with explicit powers."""
    z = abs(z)
    if z <= 1:
        return -(z**5) / 4 + z**4 / 2 + 5 * z**3 / 8 - 5 * z**2 / 3 + 1
    if z < 2:
        return z**5 / 12 - z**4 / 2 + 5 * z**3 / 8 + 5 * z**2 / 3 - 5 * z + 4 - 2 / (3 * z)
    return 0.0


# ---------------------------------------------------------------- tapers

def test_gaspari_cohn_landmarks():
    c = 3.0
    np.testing.assert_allclose(loc.gaspari_cohn(0.0, c), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(loc.gaspari_cohn(c, c), 5 / 24, rtol=1e-14)
    assert float(loc.gaspari_cohn(2 * c, c)) == 0.0
    assert float(loc.gaspari_cohn(2 * c + 1e-9, c)) == 0.0
    assert float(loc.gaspari_cohn(7 * c, c)) == 0.0
    assert 0.0 < float(loc.gaspari_cohn(2 * c - 1e-3, c)) < 1e-8
    assert float(loc.gaspari_cohn(-c, c)) == float(loc.gaspari_cohn(c, c))


def test_gaspari_cohn_matches_closed_form_and_is_continuous():
    c = 1.7
    d = np.linspace(0, 2.5 * c, 301)
    got = np.asarray(loc.gaspari_cohn(d, c))
    want = np.array([gc_closed_form(x / c) for x in d])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert np.all(got >= 0) and np.all(np.diff(got) <= 1e-15)  # monotone non-increasing
    for edge in (c, 2 * c):  # value and slope continuous at the piece boundaries
        lo, hi = loc.gaspari_cohn(edge - 1e-9, c), loc.gaspari_cohn(edge + 1e-9, c)
        assert abs(float(lo) - float(hi)) < 1e-9
        g = jax.grad(loc.gaspari_cohn)
        assert abs(float(g(edge - 1e-7, c)) - float(g(edge + 1e-7, c))) < 1e-5


@pytest.mark.parametrize("taper, at_L", [
    (loc.gaussian, np.exp(-0.5)),
    (loc.soar, 2 * np.exp(-1.0)),
    (loc.exponential, np.exp(-1.0)),
    (loc.step, 1.0),
])
def test_other_tapers_closed_forms(taper, at_L):
    L = 2.5
    np.testing.assert_allclose(taper(0.0, L), 1.0, rtol=1e-15)
    np.testing.assert_allclose(taper(L, L), at_L, rtol=1e-14)
    np.testing.assert_allclose(taper(-L, L), at_L, rtol=1e-14)
    d = np.array([0.3, 1.1, 4.0, 9.0])
    z = d / L
    want = {loc.gaussian: np.exp(-z**2 / 2), loc.soar: (1 + z) * np.exp(-z),
            loc.exponential: np.exp(-z), loc.step: (z <= 1).astype(float)}[taper]
    np.testing.assert_allclose(taper(d, L), want, rtol=1e-14)


def test_step_is_a_hard_cutoff():
    assert float(loc.step(2.0, 2.0)) == 1.0
    assert float(loc.step(2.0 + 1e-12, 2.0)) == 0.0


@pytest.mark.parametrize("taper", [loc.gaspari_cohn, loc.gaussian, loc.soar,
                                   loc.exponential, loc.step])
def test_tapers_vmap_over_the_length_scale(taper):
    d = jnp.linspace(0.0, 10.0, 11)
    scales = jnp.array([1.0, 2.5, 4.0])
    got = jax.vmap(lambda L: taper(d, L))(scales)
    want = np.stack([np.asarray(taper(d, float(L))) for L in scales])
    np.testing.assert_array_equal(got, want)
    assert jax.jit(taper)(d, 2.0).shape == d.shape


# ------------------------------------------------------------- distances

def test_periodic_distance_wraps():
    assert float(loc.periodic_distance(1.0, 39.0, 40.0)) == 2.0
    assert float(loc.periodic_distance(39.0, 1.0, 40.0)) == 2.0
    assert float(loc.periodic_distance(0.0, 20.0, 40.0)) == 20.0
    assert float(loc.periodic_distance(-1.0, 1.0, 40.0)) == 2.0
    assert float(loc.periodic_distance(3.5, 0.5, 40.0)) == 3.0
    assert float(loc.periodic_distance(2.0, 82.0, 40.0)) == 0.0
    got = loc.periodic_distance(jnp.arange(5.0)[:, None], jnp.array([0.0, 4.0]), 5.0)
    np.testing.assert_array_equal(got, [[0, 1], [1, 2], [2, 2], [2, 1], [1, 0]])


def test_cartesian_distance():
    assert float(loc.cartesian_distance(jnp.array([0.0, 0.0]), jnp.array([3.0, 4.0]))) == 5.0
    np.testing.assert_allclose(
        loc.cartesian_distance(jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 4.0, 5.0])), 3.0)
    a = jnp.zeros((4, 2))
    b = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(loc.cartesian_distance(a, b), [1, 2, 5, 0])
    g = jax.grad(lambda x: loc.cartesian_distance(x, jnp.array([1.0, 1.0])))(jnp.ones(2))
    assert np.all(np.isfinite(g))  # finite gradient at zero distance


def test_great_circle_distance():
    pi = np.pi
    gc = loc.great_circle_distance
    # antipodal points, on the equator and pole to pole
    np.testing.assert_allclose(gc(jnp.array([0.0, 0.0]), jnp.array([0.0, 180.0]),
                                  degrees=True), pi, rtol=1e-15)
    np.testing.assert_allclose(gc(jnp.array([90.0, 0.0]), jnp.array([-90.0, 33.0]),
                                  degrees=True), pi, rtol=1e-15)
    np.testing.assert_allclose(gc(jnp.array([30.0, -60.0]), jnp.array([-30.0, 120.0]),
                                  degrees=True, radius=6371.0), 6371.0 * pi, rtol=1e-12)
    # a quarter of a great circle, in radians, and longitude wrap
    np.testing.assert_allclose(gc(jnp.array([0.0, 0.0]), jnp.array([0.0, pi / 2]),
                                  degrees=False), pi / 2, rtol=1e-15)
    np.testing.assert_allclose(gc(jnp.array([0.0, 179.0]), jnp.array([0.0, -179.0]),
                                  degrees=True), np.deg2rad(2.0), rtol=1e-12)
    # 60° along a meridian from the equator
    np.testing.assert_allclose(gc(jnp.array([0.0, 10.0]), jnp.array([60.0, 10.0]),
                                  degrees=True, radius=2.0), 2 * pi / 3, rtol=1e-14)
    assert float(gc(jnp.array([12.0, 34.0]), jnp.array([12.0, 34.0]), degrees=True)) == 0.0
    with pytest.raises(ValueError, match="latitude"):
        gc(jnp.zeros(3), jnp.zeros(3), degrees=True)


# -------------------------------------------------------------- builders

def test_localization_matrices_shapes_and_values():
    state = jnp.arange(10.0)
    obs = jnp.array([0.5, 3.0, 9.5])
    dist = partial(loc.periodic_distance, period=10.0)
    M = loc.localization_matrices(state, obs, 2.0, distance=dist)
    assert M.state_obs.shape == (10, 3) and M.state_state.shape == (10, 10)
    np.testing.assert_allclose(M.state_state, M.state_state.T)
    np.testing.assert_allclose(jnp.diag(M.state_state), 1.0)
    np.testing.assert_allclose(M.state_obs[0, 2], loc.gaspari_cohn(0.5, 2.0))  # wraps
    np.testing.assert_allclose(M.state_obs[3, 1], 1.0)
    assert float(M.state_obs[8, 1]) == 0.0  # 5 > 2c = 4
    # 2-D Cartesian points and a sweep over the length scale as a vmap
    grid = jnp.stack(jnp.meshgrid(jnp.arange(4.0), jnp.arange(3.0)), -1).reshape(-1, 2)
    stations = jnp.array([[0.0, 0.0], [3.0, 2.0]])
    D = loc.pairwise_distances(grid, stations, loc.cartesian_distance)
    assert D.shape == (12, 2)
    np.testing.assert_allclose(D[-1], [np.hypot(3, 2), 0.0])
    sweep = jax.vmap(lambda L: loc.localization_matrix(grid, stations, L))(jnp.array([1.0, 2.0]))
    assert sweep.shape == (2, 12, 2)
    np.testing.assert_allclose(sweep[1], loc.gaspari_cohn(D, 2.0))


def test_pairwise_distances_rejects_a_non_scalar_distance():
    with pytest.raises(ValueError, match="distance must map"):
        loc.pairwise_distances(jnp.zeros((3, 2)), jnp.zeros((2, 2)), lambda a, b: a - b)


def test_public_names():
    for name in ("gaspari_cohn", "periodic_distance", "great_circle_distance",
                 "cartesian_distance", "localization_matrices", "letkf"):
        assert hasattr(enkit, name), name
    assert enkit.localization is loc
