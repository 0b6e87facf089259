"""What the R-localised local analyses share (private): input checks, the
whitened ensemble-space quantities, the taper weighting of one local
problem, observation lists found once from concrete coordinates, and the
chunked map over local problems. Used by ``letkf`` (one problem per grid
point) and ``patch_etkf`` (one per patch).

R with uncorrelated errors (``Scalar``, ``Diagonal``, a ``BlockDiagonal``
of those) is whitened once, globally, and each local problem scales its
columns by √ρ. Any other operator (correlated errors: ``Dense``,
``Banded``, ``LowRankDiagonal``, ...) is densified once, and each local
problem whitens with its own k × k block, the observations it sees:

    R̃_loc⁻¹ = D^{1/2} R_loc⁻¹ D^{1/2},   D = diag(ρ),

i.e. the anomalies and innovation are scaled by √ρ and then whitened by the
Cholesky factor of R_loc (Hunt, Kostelich & Szunyogh 2007, §2.3, with a
non-diagonal R_loc). Observations with ρ = 0 are left out of R_loc (their
rows and columns are replaced by the identity's), so for a diagonal R both
forms agree. Cost: O(m²) memory for R once, O(k³) per local problem.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import check_finite, is_concrete
from enkit.covariance import BlockDiagonal, Diagonal, Scalar
from enkit.ensemble import scaled_anomalies
from enkit.filters._common import prepare_analysis


class LocalProblem(NamedTuple):
    """Checked inputs and whitened ensemble-space quantities of an analysis.

    c: sqrt(N − 1); xbar: (n,) mean; X: (N, n) anomalies / sqrt(N − 1);
    S: (N, m) whitened observation anomalies ``Y R^{-1/2}``; d: (m,)
    whitened innovation ``R^{-1/2}(y − ȳ)``; state_coords: (n,) + point
    shape; obs_coords: (m,) + point shape; radius: scalar; E: (N, n) the
    checked forecast ensemble (returned as it is when m = 0); R_dense:
    None for uncorrelated errors, else the (m, m) matrix R, and then S and
    d are the unwhitened Y and y − ȳ (each local problem whitens them).
    """

    c: Array
    xbar: Array
    X: Array
    S: Array
    d: Array
    state_coords: Array
    obs_coords: Array
    radius: Array
    E: Array
    R_dense: Array | None = None


def uncorrelated(R) -> bool:
    """True when R's errors are uncorrelated by construction (no densifying)."""
    if isinstance(R, (Scalar, Diagonal)):
        return True
    return isinstance(R, BlockDiagonal) and all(uncorrelated(C) for C in R.blocks)


def local_problem(E, y, h, R, *, state_coords, obs_coords, radius, distance,
                  max_obs, chunk_size) -> LocalProblem:
    """Validate the inputs of an R-localised analysis and whiten (uncorrelated
    R) or keep R whole for the local blocks (any other operator)."""
    E, y, HE, R = prepare_analysis(E, y, h, R)
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
        d_shape = jax.eval_shape(distance, *(jax.ShapeDtypeStruct(c.shape[1:], c.dtype)
                                             for c in (state_coords, obs_coords))).shape
    except (ValueError, TypeError, IndexError) as err:
        d_shape = err
    if d_shape != ():
        raise ValueError(
            f"distance must map one state point of shape {state_coords.shape[1:]} and "
            f"one observation point of shape {obs_coords.shape[1:]} to a scalar, got "
            f"{d_shape!r} (coordinates hold one point per row: (n,) + point_shape)"
        )
    # (with m = 0 nothing is selected: any positive max_obs is accepted)
    if max_obs is not None and (
        isinstance(max_obs, bool) or not isinstance(max_obs, (int, np.integer))
        or max_obs < 1 or (m > 0 and max_obs > m)
    ):
        raise ValueError(f"max_obs must be None or an integer in [1, m={m}], got {max_obs!r}")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    xbar, X = scaled_anomalies(E)
    ybar, Y = scaled_anomalies(HE)
    c = jnp.sqrt(jnp.asarray(N - 1, E.dtype))
    if m == 0:  # no observations: S and d are empty, R is None
        return LocalProblem(c, xbar, X, Y, y, state_coords, obs_coords, radius, E)
    if not uncorrelated(R):
        return LocalProblem(c, xbar, X, Y, y - ybar, state_coords, obs_coords, radius, E,
                            R.dense())
    return LocalProblem(c, xbar, X, R.whiten(Y), R.whiten(y - ybar),
                        state_coords, obs_coords, radius, E)


def weigh(taper: Callable, radius, S_loc, d_loc, dist, valid=True, R_loc=None):
    """Taper the whitened anomalies (N, k) and innovation (k,) of one local
    problem by ρ = taper(dist, radius): columns with ρ = 0 (or not
    ``valid``) become exactly 0 (``jnp.where``: no effect even when
    non-finite), the others are scaled by √ρ. With ``R_loc`` (k, k), S_loc
    and d_loc are unwhitened: after the scaling they are whitened by the
    Cholesky factor of R_loc restricted to the kept observations (the
    others' rows and columns replaced by the identity's)."""
    rho = taper(dist, radius)
    keep = valid & (rho > 0)
    sqrt_rho = jnp.sqrt(jnp.where(keep, rho, 1.0))  # finite gradients at ρ = 0
    S_loc = jnp.where(keep, S_loc * sqrt_rho, 0.0)
    d_loc = jnp.where(keep, d_loc * sqrt_rho, 0.0)
    if R_loc is None:
        return S_loc, d_loc
    both = keep[:, None] & keep[None, :]
    eye = jnp.eye(R_loc.shape[0], dtype=R_loc.dtype)
    L = jnp.linalg.cholesky(jnp.where(both, R_loc, eye))
    lower = functools.partial(jax.scipy.linalg.solve_triangular, L, lower=True)
    return lower(S_loc.T).T, lower(d_loc)


def observation_lists(points, obs_coords, radius, taper, distance, max_obs, dtype,
                      rows=256):
    """Each local problem's observation list, computed once from concrete inputs.

    points: (P,) + point_shape, the centres of the local problems (grid
    points, patch centres). Returns ``(idx, dist, valid)``, each (P, k): the
    indices of the observations point i can see, their distances, and False
    on padding; or None when the coordinates are traced (or, without
    ``max_obs``, the radius is), in which case the search happens inside the
    graph. With ``max_obs`` the candidates are the k nearest (ties to the
    lower index, as ``lax.top_k``); with a concrete radius only those with
    ρᵢⱼ > 0 are kept, and k is the largest such count over the points. The
    (P, m) distances are evaluated ``rows`` points at a time, never stored.
    """
    if not (is_concrete(points) and is_concrete(obs_coords)):
        return None
    radius_known = is_concrete(radius)
    if max_obs is None and not radius_known:
        return None
    with jax.ensure_compile_time_eval():
        points = jnp.asarray(points, dtype)
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


def local_inputs(points, prob: LocalProblem, taper, distance, max_obs, lists):
    """The tapered whitened anomalies (B, N, k) and innovations (B, k) of a
    block of local problems: from static ``lists`` (idx, dist, valid of the
    block) when given, else by searching all m observations in the graph
    around ``points`` (B,) + point_shape (the k = max_obs nearest with
    ``lax.top_k`` when given)."""
    S, d, Rd = prob.S, prob.d, prob.R_dense

    def block(idx):  # R's (k, k) block of one problem's observations, or None
        return None if Rd is None else Rd[idx[:, None], idx[None, :]]

    if lists is not None:
        idx, dist, valid = lists
        S_b = jnp.swapaxes(S.T[idx], -1, -2)  # (B, N, k)
        return jax.vmap(lambda s, e, r, v, i: weigh(taper, prob.radius, s, e, r, v, block(i)))(
            S_b, d[idx], dist, valid, idx)

    def one(point):
        dist = jax.vmap(lambda q: distance(point, q))(prob.obs_coords)  # (m,)
        if max_obs is None:
            return weigh(taper, prob.radius, S, d, dist, R_loc=Rd)
        _, idx = jax.lax.top_k(-dist, int(max_obs))
        return weigh(taper, prob.radius, S[:, idx], d[idx], dist[idx], R_loc=block(idx))

    return jax.vmap(one)(points)


def _coordinates(name, coords, count, letter, dtype):
    coords = jnp.asarray(coords)
    if coords.ndim < 1 or coords.shape[0] != count:
        raise ValueError(
            f"{name} must have shape ({letter},) + point_shape with {letter} = {count} "
            f"(one point per row), got shape {coords.shape}"
        )
    check_finite(name, coords)
    return coords.astype(dtype)


def map_in_blocks(f, xs, n, chunk):
    """``f`` on blocks of ``chunk`` rows of xs (a tuple of pytrees whose
    leaves have leading axis n; None entries pass through), concatenated
    (leaf by leaf when f returns a pytree);
    f receives each block whole (a batch), never under ``vmap``."""
    if chunk >= n:
        return f(*xs)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def blocks(a):
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    out = jax.lax.map(lambda b: f(*b), jax.tree.map(blocks, tuple(xs)))
    return jax.tree.map(lambda o: o.reshape((n_chunks * chunk,) + o.shape[2:])[:n], out)
