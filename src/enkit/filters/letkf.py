"""Local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007).

One symmetric square-root ETKF per grid point, each with its own
observation weights (R-localisation), evaluated in ensemble space and
vmapped over chunks of grid points.

``letkf`` is exported from ``enkit.filters`` and ``enkit`` but is not in the
``SCHEMES`` registry: it needs the coordinates of the grid and of the
observations and a localisation radius, which the registry's uniform calls
``scheme(E, y, H, R, key=...)`` (the exactness and validation tests, the
CLI) cannot supply, and it refuses the dense R of those tests. In a cycling
run bind its options: ``partial(enkit.letkf, state_coords=..., obs_coords=...,
radius=..., taper=..., distance=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_finite, is_concrete
from enkit.covariance import Diagonal, Scalar
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import ObservationOperator, prepare_analysis
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
    R: ``Scalar`` or ``Diagonal`` (or a scalar / (m,) array); a ``Dense`` R
    is refused (R-localisation needs independent observation errors).
    state_coords: (n,) + point_shape, one point per state entry;
    obs_coords: (m,) + point_shape; point_shape is what ``distance`` takes,
    e.g. ``()`` with ``functools.partial(periodic_distance, period=40.)``,
    ``(d,)`` with ``cartesian_distance`` (the default), ``(2,)`` with
    ``great_circle_distance``. radius: the taper's length scale, a scalar
    array leaf (a sweep over radii is a ``vmap``; for ``gaspari_cohn`` the
    support is 2·radius). taper: ``taper(distance, radius) -> weight`` in
    [0, 1] (``enkit.localization``). distance: function of two points →
    scalar. max_obs: None (all observations) or k ≥ 1 (the k nearest per
    grid point). chunk_size: grid points per chunk. key: unused
    (deterministic scheme). Returns (N, n).

    References: Hunt, Kostelich & Szunyogh (2007), Physica D 230, 112–126;
    Ott et al. (2004), Tellus 56A; Greybush et al. (2011), MWR 139.
    """
    del key
    state_coords_in, obs_coords_in, radius_in = state_coords, obs_coords, radius
    E, y, HE, R = prepare_analysis(E, y, h, R)
    if not isinstance(R, (Scalar, Diagonal)):  # a wrong value of R, not a wrong type
        raise ValueError(  # noqa: TRY004
            "R must be diagonal (enkit.Scalar, enkit.Diagonal, a scalar or an (m,) "
            f"vector of variances) for the LETKF's R-localisation, got {type(R).__name__}"
        )
    N, n = E.shape
    m = y.shape[0]
    state_coords = _coordinates("state_coords", state_coords, n, "n", E.dtype)
    obs_coords = _coordinates("obs_coords", obs_coords, m, "m", E.dtype)
    radius = jnp.asarray(radius, E.dtype)
    if radius.ndim != 0:
        raise ValueError(f"radius must be a scalar, got shape {radius.shape}")
    if is_concrete(radius):
        check_finite("radius", radius)
        if not float(radius) > 0:
            raise ValueError(f"radius must be positive, got {float(radius)}")
    try:
        d_shape = jax.eval_shape(distance, state_coords[0], obs_coords[0]).shape
    except (ValueError, TypeError, IndexError) as err:
        d_shape = err
    if d_shape != ():
        raise ValueError(
            f"distance must map one state point of shape {state_coords.shape[1:]} and "
            f"one observation point of shape {obs_coords.shape[1:]} to a scalar, got "
            f"{d_shape!r} (coordinates hold one point per row: (n,) + point_shape)"
        )
    if max_obs is not None and (
        not isinstance(max_obs, (int, np.integer)) or not 1 <= max_obs <= m
    ):
        raise ValueError(f"max_obs must be None or an integer in [1, m={m}], got {max_obs!r}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")

    c = jnp.sqrt(jnp.asarray(N - 1, E.dtype))
    xbar, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    S = R.whiten(Y)  # (N, m)
    d = R.whiten(y - ybar)  # (m,)

    def weigh(S_loc, d_loc, dist, valid):
        """Taper the whitened anomalies and innovation of one local problem."""
        rho = taper(dist, radius)
        keep = valid & (rho > 0)
        sqrt_rho = jnp.sqrt(jnp.where(keep, rho, 1.0))  # finite gradients at ρ = 0
        S_loc = jnp.where(keep, S_loc * sqrt_rho, 0.0)
        d_loc = jnp.where(keep, d_loc * sqrt_rho, 0.0)
        return S_loc, d_loc

    def transform(S_b, d_b, xbar_b, X_b):
        """The local ETKFs of a block of B grid points; X_b: (B, N)."""
        w, Z = symmetric_transform(S_b, d_b)  # one batched transform per block
        return xbar_b[:, None] + jnp.sum(X_b * w, axis=1)[:, None] + c * jnp.einsum(
            "bij,bj->bi", Z, X_b
        )

    lists = _neighbour_lists(state_coords_in, obs_coords_in, radius_in, taper, distance,
                             max_obs, E.dtype)
    if lists is not None:  # static lists: each grid point touches only its k observations
        idx, dist_k, valid = lists
        ST = S.T  # (m, N)

        def analyse_block(idx_b, dist_b, valid_b, xbar_b, X_b):
            S_b = jnp.swapaxes(ST[idx_b], -1, -2)  # (B, N, k)
            S_b, d_b = jax.vmap(weigh)(S_b, d[idx_b], dist_b, valid_b)
            return transform(S_b, d_b, xbar_b, X_b)

        xs = (idx, dist_k, valid, xbar, X.T)
    else:

        def localise(point):
            """Tapered whitened anomalies and innovation of one grid point."""
            dist = jax.vmap(lambda q: distance(point, q))(obs_coords)  # (m,)
            S_loc, d_loc = S, d
            if max_obs is not None:
                _, idx = jax.lax.top_k(-dist, int(max_obs))
                dist, S_loc, d_loc = dist[idx], S[:, idx], d[idx]
            return weigh(S_loc, d_loc, dist, True)

        def analyse_block(points, xbar_b, X_b):
            S_b, d_b = jax.vmap(localise)(points)  # (B, N, m'), (B, m')
            return transform(S_b, d_b, xbar_b, X_b)

        xs = (state_coords, xbar, X.T)

    Xa = _map_in_blocks(analyse_block, xs, n, int(chunk_size))
    return Xa.T


def _neighbour_lists(state_coords, obs_coords, radius, taper, distance, max_obs, dtype,
                     rows=256):
    """Each grid point's observation list, computed once from concrete inputs.

    Returns ``(idx, dist, valid)``, each (n, k): the indices of the
    observations grid point i can see, their distances, and False on padding;
    or None when the coordinates are traced (or, without ``max_obs``, the
    radius is), in which case the lists are found inside the graph. With
    ``max_obs`` the candidates are the k nearest (ties to the lower index, as
    ``lax.top_k``); with a concrete radius only those with ρᵢⱼ > 0 are kept,
    and k is the largest such count over the grid points. The (n, m)
    distances are evaluated ``rows`` grid points at a time, never stored.
    """
    if not (is_concrete(state_coords) and is_concrete(obs_coords)):
        return None
    radius_known = is_concrete(radius)
    if max_obs is None and not radius_known:
        return None
    with jax.ensure_compile_time_eval():
        points = jnp.asarray(state_coords, dtype)
        obs = jnp.asarray(obs_coords, dtype)
        to_obs = jax.jit(jax.vmap(jax.vmap(distance, (None, 0)), (0, None)))
        weight = jax.jit(taper)
        blocks = []
        for start in range(0, points.shape[0], rows):
            dist = np.asarray(to_obs(points[start:start + rows], obs))  # (B, m)
            order = np.broadcast_to(np.arange(dist.shape[1]), dist.shape)
            if max_obs is not None:
                order = np.argsort(dist, axis=1, kind="stable")[:, : int(max_obs)]
                dist = np.take_along_axis(dist, order, axis=1)
            if radius_known:
                seen = np.asarray(weight(dist, jnp.asarray(radius, dtype))) > 0
            else:
                seen = np.ones(dist.shape, bool)
            blocks.append((order, dist, seen))
    k = max(1, max(int(seen.sum(axis=1).max()) for _, _, seen in blocks))
    out = []
    for order, dist, seen in blocks:
        first = np.argsort(~seen, axis=1, kind="stable")[:, :k]  # the seen ones first
        out.append([np.take_along_axis(a, first, axis=1) for a in (order, dist, seen)])
    idx, dist, valid = (np.concatenate(parts) for parts in zip(*out))
    return jnp.asarray(idx, jnp.int32), jnp.asarray(dist, dtype), jnp.asarray(valid)


def _coordinates(name, coords, count, letter, dtype):
    coords = jnp.asarray(coords)
    if coords.ndim < 1 or coords.shape[0] != count:
        raise ValueError(
            f"{name} must have shape ({letter},) + point_shape with {letter} = {count} "
            f"(one point per row), got shape {coords.shape}"
        )
    check_finite(name, coords)
    return coords.astype(dtype)


def _map_in_blocks(f, xs, n, chunk):
    """``f`` on blocks of ``chunk`` rows of xs (leading axis n), concatenated."""
    if chunk >= n:
        return f(*xs)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def blocks(a):
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(lambda b: f(*b), tuple(blocks(a) for a in xs))
    return out.reshape((n_chunks * chunk,) + out.shape[2:])[:n]
