"""L0 localisation: distances, tapers and localisation matrices.

Localisation damps the spurious long-range sample correlations of a small
ensemble by weighting each state–observation (or state–state) pair with a
taper ``ρ(d, L)`` of their distance d and a length scale L.

Distances (pure, broadcasting, JAX-traceable):

- ``periodic_distance(a, b, period)``: positions on a 1-D ring (scalars);
- ``cartesian_distance(a, b)``: Euclidean distance of points whose
  coordinates lie on the last axis, ``(..., d)`` (2-D, 3-D grids);
- ``torus_distance(a, b, period)``: the same on a periodic domain;
- ``great_circle_distance(a, b, degrees=..., radius=...)``: points
  ``(..., 2)`` = (latitude, longitude) on a sphere.

Tapers ``taper(distance, length_scale) -> weight`` (elementwise, the length
scale an array leaf so a sweep over it is a ``vmap``):

- ``gaspari_cohn``: Gaspari & Cohn (1999) fifth-order piecewise rational
  function, compact support ``2L``;
- ``step``: hard cutoff, 1 for ``d ≤ L``, 0 beyond;
- ``gaussian``, ``soar`` (second-order auto-regressive), ``exponential``:
  global support (their weights reach exactly zero only by underflow).

``pairwise_distances``, ``localization_matrix`` and ``localization_matrices``
build the ``(n, m)`` state–observation and ``(n, n)`` state–state matrices
from coordinates: coordinate arrays hold one point per row of their leading
axis, ``(n,) + point_shape``, where ``point_shape`` is what the distance
function takes: ``()`` for ``periodic_distance``, ``(d,)`` for
``cartesian_distance``, ``(2,)`` for ``great_circle_distance``.

Adaptive localisation from ensemble correlations (Anderson 2012's
sampling error correction) builds on these in ``enkit.localization``
(``sampling_error_table``, ``AdaptiveLocalization``), and the SEC
localisers of inversion (``SEC``, ``SECFisher``, ``SECNice``, ...) beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_number

__all__ = [
    "LocalizationMatrices",
    "cartesian_distance",
    "exponential",
    "gaspari_cohn",
    "gaussian",
    "great_circle_distance",
    "localization_matrices",
    "localization_matrix",
    "pairwise_distances",
    "periodic_distance",
    "soar",
    "step",
    "torus_distance",
]

Distance = Callable[[Array, Array], Array]
Taper = Callable[[Array, Array], Array]


# --------------------------------------------------------------------------
# distances


def periodic_distance(a: ArrayLike, b: ArrayLike, period: ArrayLike) -> Array:
    """Distance of positions ``a`` and ``b`` on a ring of length ``period``.

    ``δ = |a − b| mod period``, distance ``min(δ, period − δ)``, in
    ``[0, period/2]``. a, b: positions (scalars or arrays, broadcast against
    each other); period: the ring's length (> 0). Returns the broadcast shape.
    Example: on a ring of 40 points, positions 1 and 39 are 2 apart.
    """
    _check_length("period", period)
    a, b = jnp.asarray(a), jnp.asarray(b)
    period = jnp.asarray(period, jnp.result_type(a, b, float))
    delta = jnp.mod(jnp.abs(a - b), period)
    return jnp.minimum(delta, period - delta)


def cartesian_distance(a: ArrayLike, b: ArrayLike) -> Array:
    """Euclidean distance ``‖a − b‖₂`` of points in Cartesian coordinates.

    a, b: (..., d) points with their d coordinates on the last axis (2-D or
    3-D grids; d = 1 is a line), broadcast against each other.
    Returns (...).
    """
    diff = jnp.asarray(a) - jnp.asarray(b)
    sq = jnp.sum(diff * diff, axis=-1)
    # sqrt has an infinite derivative at 0 (a point and itself): keep grads finite.
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def torus_distance(a: ArrayLike, b: ArrayLike, period: ArrayLike) -> Array:
    """Euclidean distance of points on a flat torus (periodic in every axis).

    a, b: (..., d) points with coordinates on the last axis, broadcast against
    each other; period: (d,) the domain's lengths (or a scalar for all axes).
    Each coordinate difference is wrapped, ``δ = |a − b| mod L``,
    ``min(δ, L − δ)``, and the distance is ``sqrt(Σ δ²)`` (at most
    ``‖L‖/2``). Example: on a 10 × 10 torus (1, 1) and (9, 8) are
    ``sqrt(2² + 3²)`` apart. Bind the period with ``functools.partial`` to
    pass it as the ``distance`` of ``enkit.letkf`` or ``enkit.patch_etkf``.
    Returns (...).
    """
    _check_length("period", period, shape=(None,), what="a scalar or (d,) array")
    a, b = jnp.asarray(a), jnp.asarray(b)
    dtype = jnp.result_type(a, b, float)
    period = jnp.asarray(period, dtype)
    delta = jnp.mod(jnp.abs(a - b).astype(dtype), period)
    delta = jnp.minimum(delta, period - delta)
    sq = jnp.sum(delta * delta, axis=-1)
    pos = sq > 0  # keep the gradient finite at distance 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def great_circle_distance(
    a: ArrayLike, b: ArrayLike, *, degrees: bool, radius: ArrayLike = 1.0
) -> Array:
    """Great-circle distance of points on a sphere of radius ``radius``.

    a, b: (..., 2) points as (latitude, longitude) on the last axis, in
    degrees when ``degrees=True`` and radians when ``degrees=False`` (no
    default: say which). The central angle uses the atan2 form of Vincenty's
    formula, accurate for every separation including antipodal points:

        Δσ = atan2( sqrt((cos φ₂ sin Δλ)² + (cos φ₁ sin φ₂ − sin φ₁ cos φ₂ cos Δλ)²),
                    sin φ₁ sin φ₂ + cos φ₁ cos φ₂ cos Δλ ),

    and the distance is ``radius · Δσ`` (radius 1: the angle in radians;
    6371.0 for the Earth in km). Returns (...).
    """
    _check_length("radius", radius)
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape[-1:] != (2,) or b.shape[-1:] != (2,):
        raise ValueError(
            "great_circle_distance takes points of shape (..., 2) = (latitude, "
            f"longitude), got shapes {a.shape} and {b.shape}"
        )
    a = jnp.asarray(a, jnp.result_type(a, float))
    b = jnp.asarray(b, jnp.result_type(b, float))
    if degrees:
        a, b = jnp.deg2rad(a), jnp.deg2rad(b)
    phi1, lam1 = a[..., 0], a[..., 1]
    phi2, lam2 = b[..., 0], b[..., 1]
    dlam = lam2 - lam1
    s1, c1, s2, c2 = jnp.sin(phi1), jnp.cos(phi1), jnp.sin(phi2), jnp.cos(phi2)
    u = c2 * jnp.sin(dlam)
    v = c1 * s2 - s1 * c2 * jnp.cos(dlam)
    num_sq = u * u + v * v
    pos = num_sq > 0
    num = jnp.where(pos, jnp.sqrt(jnp.where(pos, num_sq, 1.0)), 0.0)
    den = s1 * s2 + c1 * c2 * jnp.cos(dlam)
    return jnp.asarray(radius) * jnp.arctan2(num, den)


# --------------------------------------------------------------------------
# tapers


def _check_length(name, value, *, shape=None, what="a real scalar"):
    """A concrete length (scale, radius, period): finite and > 0."""
    check_number(name, value, low=0.0, shape=shape, what=what)


def _scaled(distance: ArrayLike, length_scale: ArrayLike) -> Array:
    """|d| / L, with a concrete L (scalar or an array broadcast against d)
    checked: every entry finite and > 0."""
    if jnp.ndim(length_scale):
        _check_length("length_scale", length_scale, shape=jnp.shape(length_scale),
                      what="an array broadcast against the distances")
    else:
        _check_length("length_scale", length_scale)
    d = jnp.asarray(distance)
    d = jnp.asarray(d, jnp.result_type(d, float))
    return jnp.abs(d) / jnp.asarray(length_scale, d.dtype)


def gaspari_cohn(distance: ArrayLike, length_scale: ArrayLike) -> Array:
    """Gaspari & Cohn (1999) taper, eq. (4.10): compact support ``2c``.

    With ``z = |d| / c`` (c = length_scale):

        ρ = −z⁵/4 + z⁴/2 + 5z³/8 − 5z²/3 + 1                    0 ≤ z ≤ 1
        ρ = z⁵/12 − z⁴/2 + 5z³/8 + 5z²/3 − 5z + 4 − 2/(3z)      1 < z < 2
        ρ = 0                                                   z ≥ 2

    ρ(0) = 1, ρ(c) = 5/24, ρ(2c) = 0; ρ is twice continuously differentiable
    and the correlation function of a compactly supported process (so
    ``ρ ∘ P`` stays positive semi-definite in 3-D). distance: any shape,
    length_scale: c > 0, broadcast against it. Returns the broadcast shape.

    Reference: Gaspari & Cohn (1999), QJRMS 125, 723–757.
    """
    z = _scaled(distance, length_scale)
    inner = ((((-0.25 * z + 0.5) * z + 0.625) * z - 5.0 / 3.0) * z) * z + 1.0
    zs = jnp.where(z > 1.0, z, 1.0)  # keep 1/z finite in the unused branch
    outer = (((((zs / 12.0 - 0.5) * zs + 0.625) * zs + 5.0 / 3.0) * zs - 5.0) * zs
             + 4.0 - 2.0 / (3.0 * zs))
    rho = jnp.where(z <= 1.0, inner, jnp.where(z < 2.0, outer, 0.0))
    return jnp.maximum(rho, 0.0)  # round-off just below 2c never goes negative


def gaussian(distance: ArrayLike, length_scale: ArrayLike) -> Array:
    """Gaussian taper ``ρ = exp(−d² / (2 L²))``; global support.

    distance: any shape; length_scale: L > 0, broadcast. Returns the
    broadcast shape.
    """
    z = _scaled(distance, length_scale)
    return jnp.exp(-0.5 * z * z)


def soar(distance: ArrayLike, length_scale: ArrayLike) -> Array:
    """Second-order auto-regressive taper ``ρ = (1 + d/L) exp(−d/L)``.

    Global support; differentiable at 0, unlike the exponential.
    distance: any shape; length_scale: L > 0. Returns the broadcast shape.
    Reference: Daley (1991), *Atmospheric Data Analysis*, §4.3.
    """
    z = _scaled(distance, length_scale)
    return (1.0 + z) * jnp.exp(-z)


def exponential(distance: ArrayLike, length_scale: ArrayLike) -> Array:
    """Exponential taper ``ρ = exp(−d/L)``; global support.

    distance: any shape; length_scale: L > 0. Returns the broadcast shape.
    """
    return jnp.exp(-_scaled(distance, length_scale))


def step(distance: ArrayLike, length_scale: ArrayLike) -> Array:
    """Hard cutoff: ``ρ = 1`` for ``|d| ≤ L``, 0 beyond (support L).

    With a radius covering the whole domain it switches localisation off.
    distance: any shape; length_scale: L > 0. Returns the broadcast shape
    (in the floating dtype of distance).
    """
    z = _scaled(distance, length_scale)
    return jnp.where(z <= 1.0, 1.0, 0.0).astype(z.dtype)


# --------------------------------------------------------------------------
# localisation matrices


def pairwise_distances(a: ArrayLike, b: ArrayLike, distance: Distance) -> Array:
    """All distances ``D[i, j] = distance(a[i], b[j])``.

    a: (n,) + point_shape, b: (m,) + point_shape (one point per row of the
    leading axis; point_shape is what ``distance`` takes, e.g. ``()`` for
    ``periodic_distance``, ``(d,)`` for ``cartesian_distance``); distance:
    a function of two points returning a scalar (bind options with
    ``functools.partial``). Returns (n, m).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    out = jax.vmap(lambda p: jax.vmap(lambda q: distance(p, q))(b))(a)
    if out.shape != (a.shape[0], b.shape[0]):
        raise ValueError(
            f"distance must map one point of shape {a.shape[1:]} and one of shape "
            f"{b.shape[1:]} to a scalar, but it returned shape {out.shape[2:]}"
        )
    return out


def localization_matrix(
    a: ArrayLike,
    b: ArrayLike,
    length_scale: ArrayLike,
    *,
    taper: Taper = gaspari_cohn,
    distance: Distance = cartesian_distance,
) -> Array:
    """Taper weights ``ρ[i, j] = taper(distance(a[i], b[j]), L)``.

    a: (n,) + point_shape, b: (m,) + point_shape; length_scale: L (an array
    leaf: vmap over it to sweep radii). Returns (n, m).
    """
    return taper(pairwise_distances(a, b, distance), length_scale)


class LocalizationMatrices(NamedTuple):
    """State–observation ``(n, m)`` and state–state ``(n, n)`` tapers."""

    state_obs: Array
    state_state: Array


def localization_matrices(
    state_coords: ArrayLike,
    obs_coords: ArrayLike,
    length_scale: ArrayLike,
    *,
    taper: Taper = gaspari_cohn,
    distance: Distance = cartesian_distance,
) -> LocalizationMatrices:
    """The localisation matrices of a grid and an observation network.

    ``state_obs`` (n, m) localises the gain ``K = (ρ_xy ∘ P Hᵀ)(…)⁻¹``
    (B-localisation with a state–observation taper, Houtekamer & Mitchell
    2001); ``state_state`` (n, n) localises the covariance ``ρ ∘ P``.

    state_coords: (n,) + point_shape; obs_coords: (m,) + point_shape;
    length_scale: the taper's length scale (array leaf). Returns
    ``LocalizationMatrices(state_obs=(n, m), state_state=(n, n))``.
    """
    return LocalizationMatrices(
        localization_matrix(state_coords, obs_coords, length_scale,
                            taper=taper, distance=distance),
        localization_matrix(state_coords, state_coords, length_scale,
                            taper=taper, distance=distance),
    )
