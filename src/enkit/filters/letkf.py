"""Local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007).

One symmetric square-root ETKF per grid point, each with its own
observation weights (R-localisation), evaluated in ensemble space and
vmapped over chunks of grid points.

``letkf`` is exported from ``enkit.filters`` and ``enkit`` but is not in the
``SCHEMES`` registry: it needs the coordinates of the grid and of the
observations and a localisation radius, which the registry's uniform calls
``scheme(E, y, H, R, key=...)`` (the exactness and validation tests, the
CLI) cannot supply. In a cycling
run bind its options: ``partial(enkit.letkf, state_coords=..., obs_coords=...,
radius=..., taper=..., distance=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from enkit.filters._common import ObservationOperator
from enkit.filters._local import (
    local_inputs,
    local_problem,
    map_in_blocks,
    observation_lists,
)
from enkit.filters._transform import symmetric_transform
from enkit.localization import cartesian_distance, gaspari_cohn

__all__ = ["letkf"]


def letkf(
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    state_coords: ArrayLike,
    obs_coords: ArrayLike,
    radius: ArrayLike,
    taper: Callable[[Array, Array], Array] = gaspari_cohn,
    distance: Callable[[Array, Array], Array] = cartesian_distance,
    max_obs: int | None = None,
    chunk_size: int = 64,
    key: Array | None = None,
) -> Array:
    """LETKF analysis: a local ETKF at every grid point, R-localised.

    With X, Y the state and observation anomalies divided by sqrt(N − 1),
    ``S = Y R^{-1/2}`` and ``d = R^{-1/2} (y − ȳ)`` (R diagonal), grid point i
    weights observation j by ``ρᵢⱼ = taper(distance(state_coords[i],
    obs_coords[j]), radius)``, i.e. multiplies its ``R⁻¹`` by ρᵢⱼ
    (R-localisation, Hunt et al. 2007 §2.3; Greybush et al. 2011):

        Sᵢ = S diag(√ρᵢ),  dᵢ = diag(√ρᵢ) d,  Tᵢ = I_N + Sᵢ Sᵢᵀ,
        w̄ᵢ = Tᵢ⁻¹ Sᵢ dᵢ,   xₐ,ᵢ = x̄ᵢ + Xᵢᵀ w̄ᵢ + sqrt(N − 1) Tᵢ^{-1/2} Xᵢ,

    with Xᵢ the i-th column of X. Only observations with ρᵢⱼ > 0 enter the
    local analysis: the others get a whitened anomaly and innovation of
    exactly 0 (``jnp.where``, so even a non-finite value there has no
    effect), so the cutoff is the taper's support and the analysis is
    continuous in the radius for a taper that is continuous and vanishes at
    its support's edge (``gaspari_cohn``). With ``taper=step`` and a radius
    covering the domain every ρᵢⱼ = 1 and the LETKF is the global ETKF.

    Design. Shapes are fixed under ``jit``, so "selecting" observations is
    gathering or weighting them. When the coordinates are concrete (NumPy
    arrays, or bound with ``functools.partial`` before ``jit``, as in a
    cycling run) and so is the radius, each grid point's list of the
    observations with ρᵢⱼ > 0 is computed once, outside the graph (the
    (n, m) distances ``256`` rows at a time, never stored); the analysis
    then gathers only those k ≤ m observations per grid point (padding to
    the longest list is weighted 0): cost O(n N² k), linear in n for a
    fixed observation density. With ``max_obs`` and a traced radius (a
    ``vmap`` over radii, a gradient) the lists hold the k nearest and the
    taper is applied in the graph. With traced coordinates the search is
    in the graph: each local analysis sees all m observations (cost
    O(n N² m), exact), or with ``max_obs=k`` its k nearest (``lax.top_k``
    of the distances, chunk by chunk; cost O(n (m + N² k))); choose k at
    least the largest number of observations inside the support, or the
    farthest ones in it are dropped. Every path gives the same analysis up
    to round-off. Grid points are processed ``chunk_size`` at a time: each
    chunk's local problems are built with a ``vmap`` and solved as one
    batch of transforms (``symmetric_transform``; one path choice per
    chunk), the chunks run in a ``lax.map`` (a scan), so memory is
    O(chunk_size · N · k) (or m) whatever n.

    E: (N, n) forecast ensemble; y: (m,); h: callable or (m, n) matrix;
    R: any covariance operator or array. Uncorrelated errors (``Scalar``,
    ``Diagonal``, a ``BlockDiagonal`` of those, a scalar or (m,) array) are
    whitened once; correlated ones (``Dense``, ``Banded``,
    ``LowRankDiagonal``, ...) are densified once (m × m) and each grid point
    whitens with the k × k block of the observations it sees, tapered as
    ``D^{1/2} R_loc⁻¹ D^{1/2}`` (D = diag ρ), cost O(k³) more per point.
    state_coords: (n,) + point_shape, one point per state entry;
    obs_coords: (m,) + point_shape; point_shape is what ``distance`` takes,
    e.g. ``()`` with ``functools.partial(periodic_distance, period=40.)``,
    ``(d,)`` with ``cartesian_distance`` (the default), ``(2,)`` with
    ``great_circle_distance``. radius: the taper's length scale, a scalar
    array leaf (a sweep over radii is a ``vmap``; for ``gaspari_cohn`` the
    support is 2·radius, so radius is half the support). Coming from
    DAPPER: its ``loc_rad`` scales the Gaspari–Cohn function by 1.82, so the
    same taper is ``radius = 1.82 · loc_rad``. taper: ``taper(distance, radius) -> weight`` in
    [0, 1] (``enkit.localization``). distance: function of two points →
    scalar. max_obs: None (all observations) or k ≥ 1 (the k nearest per
    grid point). chunk_size: grid points per chunk. key: unused
    (deterministic scheme). Returns (N, n).

    References: Hunt, Kostelich & Szunyogh (2007), Physica D 230, 112–126;
    Ott et al. (2004), Tellus 56A; Greybush et al. (2011), MWR 139.
    """
    del key
    prob = local_problem(E, y, h, R, state_coords=state_coords, obs_coords=obs_coords,
                         radius=radius, distance=distance, max_obs=max_obs,
                         chunk_size=chunk_size)
    if prob.d.shape[0] == 0:  # no observations: nothing to assimilate
        return prob.E
    n = prob.X.shape[1]

    def analyse_block(points_b, lists_b, xbar_b, X_b):
        """The local ETKFs of a block of B grid points; X_b: (B, N)."""
        S_b, d_b = local_inputs(points_b, prob, taper, distance, max_obs, lists_b)
        w, Z = symmetric_transform(S_b, d_b)  # one batched transform per block
        return xbar_b[:, None] + jnp.sum(X_b * w, axis=1)[:, None] + prob.c * jnp.einsum(
            "bij,bj->bi", Z, X_b
        )

    # Lists from the arguments as given: concrete unless traced by the caller.
    lists = observation_lists(state_coords, obs_coords, radius, taper, distance,
                              max_obs, prob.X.dtype)
    xs = (prob.state_coords, lists, prob.xbar, prob.X.T)
    Xa = map_in_blocks(analyse_block, xs, n, int(chunk_size))
    return Xa.T
