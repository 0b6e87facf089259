"""The 2-D advection–diffusion model against closed-form solutions, and the
torus distance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import enkit
from enkit.models import AdvectionDiffusion2D, integrate, torus_distance

NX, NY, LX, LY = 32, 24, 8.0, 6.0  # spacing 0.25 in both directions


def grid(model):
    c = np.asarray(model.coordinates)
    return c[:, 0], c[:, 1]


def mode(model, kx, ky):
    """cos(2π kx x / Lx + 2π ky y / Ly) on the grid (flattened)."""
    x, y = grid(model)
    return np.cos(2 * np.pi * (kx * x / model.Lx + ky * y / model.Ly))


_step = jax.jit(lambda model, x, k: integrate(model, x, k), static_argnums=2)


def test_state_layout_and_coordinates():
    m = AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY)
    c = np.asarray(m.coordinates)
    assert c.shape == (NX * NY, 2) and m.dim == NX * NY
    i = 5 * NX + 7  # row iy = 5, column ix = 7
    np.testing.assert_allclose(c[i], [7 * LX / NX, 5 * LY / NY])
    x = jnp.arange(m.dim, dtype=float)
    assert m.field(x)[5, 7] == i and m.field(jnp.stack([x, x])).shape == (2, NY, NX)


def test_constant_velocity_shifts_the_field_by_whole_cells():
    # U dt = 3 Δx, V dt = −2 Δy: after k steps the field is rolled by (−2k, 3k) cells
    m = AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY, A=0.0, U=0.75, V=-0.5, kappa=0.0)
    x = jax.random.normal(jax.random.key(0), (m.dim,))
    out = _step(m, x, 4)
    want = jnp.roll(m.field(x), (-8, 12), axis=(0, 1))
    np.testing.assert_allclose(m.field(out), want, rtol=0, atol=1e-13)


def test_half_cell_shift_damps_a_mode_by_the_cubic_interpolation_factor():
    # Shift by half a cell: cubic Lagrange weights (−1, 9, 9, −1)/16 multiply the mode
    # e^{ikx} by G = (9 cos(θ/2) − cos(3θ/2)) / 8, θ = kΔx, and shift its phase exactly.
    m = AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY, A=0.0, U=0.125, V=0.0, kappa=0.0)
    kx = 5
    theta = 2 * np.pi * kx / NX
    G = (9 * np.cos(theta / 2) - np.cos(3 * theta / 2)) / 8
    x, _ = grid(m)
    q0 = np.cos(2 * np.pi * kx * x / LX + 0.3)
    q1 = G * np.cos(2 * np.pi * kx * (x - 0.125) / LX + 0.3)
    np.testing.assert_allclose(m(jnp.asarray(q0)), q1, rtol=0, atol=1e-13)
    assert 1 - G > 1e-3  # the damping is visible, so the check can fail


def test_fourier_mode_decays_and_is_forced_at_its_exact_rate():
    kappa, gamma, dt, steps = 0.07, 0.02, 0.3, 7
    m = AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY, A=0.0, U=0.0, V=0.0,
                             kappa=kappa, damping=gamma, dt=dt)
    kx, ky = 3, -2
    k2 = (2 * np.pi * kx / LX) ** 2 + (2 * np.pi * ky / LY) ** 2
    lam, t = kappa * k2 + gamma, steps * dt
    q0 = mode(m, kx, ky)
    np.testing.assert_allclose(_step(m, jnp.asarray(q0), steps), np.exp(-lam * t) * q0,
                               rtol=0, atol=1e-13)
    # forcing f = a mode plus a constant: q(t) = e^{−λt} q0 + (1 − e^{−λt})/λ f per mode
    f = 2.0 * mode(m, 1, 1) + 0.5
    lam1 = kappa * ((2 * np.pi / LX) ** 2 + (2 * np.pi / LY) ** 2) + gamma
    forced = AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY, A=0.0, U=0.0, V=0.0,
                                  kappa=kappa, damping=gamma, dt=dt,
                                  forcing=jnp.asarray(f.reshape(NY, NX)))
    want = (np.exp(-lam * t) * q0 + 2.0 * mode(m, 1, 1) * -np.expm1(-lam1 * t) / lam1
            + 0.5 * -np.expm1(-gamma * t) / gamma)
    np.testing.assert_allclose(_step(forced, jnp.asarray(q0), steps), want, rtol=0, atol=1e-12)


def test_cellular_flow_is_divergence_free_and_leaves_the_streamfunction_steady():
    m = AdvectionDiffusion2D(nx=64, ny=64, Lx=16.0, Ly=16.0, A=1.0, U=0.0, V=0.0,
                             kappa=0.0, cells=1, dt=0.25)
    pts = jax.random.uniform(jax.random.key(1), (20, 2), maxval=16.0)

    def div(p):
        J = jax.jacfwd(lambda p: jnp.stack(m.velocity(p[0], p[1])))(p)
        return J[0, 0] + J[1, 1]

    np.testing.assert_allclose(jax.vmap(div)(pts), 0.0, atol=1e-14)
    # u·∇ψ = 0: a field that is a function of the stream function is steady
    x, y = grid(m)
    k = 2 * np.pi / 16.0
    psi = np.sin(k * x) * np.sin(k * y)
    other = np.sin(k * x) * np.sin(2 * k * y)
    out_psi = np.asarray(_step(m, jnp.asarray(psi), 16))
    out_other = np.asarray(_step(m, jnp.asarray(other), 16))
    assert np.abs(out_psi - psi).max() < 2e-4  # interpolation error only
    assert np.abs(out_other - other).max() > 0.1  # other fields are stirred


def test_random_field_has_unit_variance_and_is_reproducible():
    m = AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY)
    q = np.asarray(m.random_field(jax.random.key(3), 0.5, (200,)))
    assert q.shape == (200, m.dim)
    var = q.var(axis=0).mean()  # ± about 3 · sqrt(2/200) / sqrt(effective samples)
    assert abs(var - 1.0) < 0.1
    np.testing.assert_array_equal(m.random_field(jax.random.key(3), 0.5, (200,)), q)
    # correlation between neighbours is high (smooth), far apart low
    c = np.corrcoef(q[:, 0], q[:, 1])[0, 1]
    assert c > 0.8
    assert abs(np.corrcoef(q[:, 0], q[:, NY // 2 * NX + NX // 2])[0, 1]) < 0.3


def test_torus_distance():
    np.testing.assert_allclose(torus_distance(jnp.array([1.0, 1.0]), jnp.array([9.0, 8.0]),
                                              period=10.0), np.sqrt(13.0))
    a = jnp.array([[0.5, 5.5], [3.0, 0.0]])
    b = jnp.array([7.5, 0.5])
    np.testing.assert_allclose(torus_distance(a, b, period=(8.0, 6.0)),
                               [np.sqrt(1.0 + 1.0), np.sqrt(3.5**2 + 0.5**2)])
    g = jax.grad(lambda p: torus_distance(p, p, period=(8.0, 6.0)))(jnp.ones(2))
    assert np.all(np.isfinite(g))


def test_model_is_a_pytree_vmapped_over_members_and_float32():
    f = jax.jit(jax.vmap(lambda model, x: model(x), in_axes=(None, 0)))
    m = AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY)
    E = m.random_field(jax.random.key(4), 0.5, (3,))
    a = f(m, E)
    size = f._cache_size()
    b = f(AdvectionDiffusion2D(nx=NX, ny=NY, Lx=LX, Ly=LY, kappa=0.2, A=0.5), E)
    assert f._cache_size() == size and not np.allclose(a, b)
    np.testing.assert_allclose(a[1], m(E[1]), rtol=0, atol=1e-14)
    a32 = f(m, E.astype(jnp.float32))
    assert a32.dtype == jnp.float32
    np.testing.assert_allclose(a32, a, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"nx": 3}, "nx must be an integer >= 4"),
    ({"cells": 0}, "cells must be a positive integer"),
    ({"Lx": -1.0}, "Lx must be a positive finite number"),
    ({"forcing": np.zeros((3, 3))}, "forcing must be a scalar or a"),
])
def test_rejects_bad_grids(change, message):
    with pytest.raises(ValueError, match=message):
        AdvectionDiffusion2D(**change)


def test_exported():
    assert enkit.AdvectionDiffusion2D is AdvectionDiffusion2D
    assert enkit.torus_distance is torus_distance
