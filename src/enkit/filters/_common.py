"""What every analysis scheme shares: input checks and the observed ensemble.

Every L1 scheme has the signature ``scheme(E, y, h, R, *, key=None, ...)``
and starts with ``prepare_analysis``, which validates the inputs once (naming
the argument and the expected shape) and returns them in a common form.

On concrete inputs (not under ``jit``) it also refuses what would make the
analysis silently wrong: NaN/inf in E, y, an H matrix or the simulated
observations h(E) (naming the first member and observation), and a forecast
ensemble of identical members (zero spread: no analysis can move it).

No observations (m = 0, y of shape (0,)) is an analysis with nothing to
assimilate: every scheme returns E unchanged (extra outputs take their
neutral value: an identity transform, zero iterations). h is then a (0, n)
matrix or a callable returning shape (0,), and R a positive scalar, a (0,)
vector, a (0, 0) matrix or a Covariance of dimension 0 (the library's
operators have dimension >= 1, so in practice one of the arrays).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import (
    check_ensemble,
    check_finite,
    check_ndim,
    check_spread,
    is_concrete,
)
from enkit.covariance import Covariance, Scalar, as_covariance

ObservationOperator = Union[Callable[[Array], Array], ArrayLike]


class Analysis(NamedTuple):
    """Validated inputs of one analysis.

    E: (N, n) forecast ensemble; y: (m,) observation; HE: (N, m) the
    ensemble's simulated observations; R: covariance operator of dimension m,
    in E's dtype, or None when m = 0 (there is nothing to assimilate: the
    scheme returns E unchanged before it would use R).
    """

    E: Array
    y: Array
    HE: Array
    R: Covariance


def observe(h: ObservationOperator, E: Array) -> Array:
    """Simulated observations of every member: ``vmap(h)(E)`` or ``E Hᵀ``.

    h: a callable on one member ``(n,) -> (m,)`` or an (m, n) matrix;
    E: (N, n). Returns (N, m).
    """
    if callable(h):
        return jax.vmap(h)(E)
    return E @ jnp.asarray(h, dtype=E.dtype).T


def prepare_analysis(E, y, h, R) -> Analysis:
    """Validate ``(E, y, h, R)`` and compute the simulated observations.

    Shapes are always checked; on concrete values also the finiteness of
    E, y, an H matrix and h(E), and that E's members are not all identical.
    With m = 0 the returned ``R`` is None (see the module docstring).
    """
    E = check_ensemble("E", E)
    check_spread("E", E, consequence="the analysis cannot update it",
                 advice=SPREAD_ADVICE)
    N, n = E.shape
    check_ndim("y", y, 1, "(m,)")
    y = jnp.asarray(y, dtype=E.dtype)
    check_finite("y", y)
    m = y.shape[0]
    if not callable(h):
        try:
            Hshape = np.shape(h)
        except Exception as err:  # pragma: no cover - exotic objects
            raise TypeError("h must be a callable or an (m, n) matrix") from err
        if Hshape != (m, n):
            raise ValueError(
                f"h as a matrix must have shape (m, n) = ({m}, {n}), got {Hshape}"
            )
        check_matrix_h(h)
    HE = observe(h, E)
    if HE.shape != (N, m):
        raise ValueError(
            f"h must map one member of shape ({n},) to shape (m,) = ({m},) "
            f"to match y, but it returned shape {HE.shape[1:]}"
        )
    check_observed(HE)
    if m:
        R = as_covariance(R, m).astype(E.dtype)
    else:
        _check_no_noise(R)
        R = None
    return Analysis(E, y, HE.astype(E.dtype), R)


SPREAD_ADVICE = (
    "Draw the members around the first guess x0, e.g. E = x0 + "
    "enkit.Diagonal(b).sample(key, (N,)) with b the (n,) background error variances"
)


def _kind(v) -> str:
    return "NaN" if np.isnan(v) else "inf"


def check_matrix_h(H) -> None:
    """Refuse a concrete H matrix with NaN/inf, naming its first bad entry."""
    if not is_concrete(H):
        return
    H = np.asarray(H)
    bad = ~np.isfinite(H)
    if bad.any():
        j, k = np.argwhere(bad)[0]
        raise ValueError(
            f"h must be finite, but the (m, n) matrix holds {_kind(H[j, k])} at h[{j}, {k}] "
            f"(observation index {j}, state index {k}), so observation {j} of every member "
            "(the first: member 0) would be non-finite"
        )


def check_observed(HE) -> None:
    """Refuse concrete simulated observations HE (N, m) with NaN/inf,
    naming the first member and observation where the callable h failed."""
    if not is_concrete(HE):
        return
    A = np.asarray(HE)
    bad = ~np.isfinite(A)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        members = np.flatnonzero(bad.any(axis=1))
        listed = members[:10].tolist() + (["..."] if members.size > 10 else [])
        raise ValueError(
            f"h must return finite values, but it returned non-finite values: "
            f"h(E[{i}]) is {_kind(A[i, j])} at observation index {j} (member {i} is "
            f"the first of {members.size} members with non-finite observations: {listed})"
        )


def linearize(h: ObservationOperator, xbar: Array, y: Array) -> tuple[Array, Array]:
    """``(H, ỹ)``: h linearised at the mean x̄ and the observation shifted so
    that a linear update sees the innovation ``y − h(x̄)``:
    ``H = ∂h/∂x(x̄)``, ``ỹ = y − h(x̄) + H x̄`` (a callable h); an H matrix
    and y as they are. Concrete non-finite h(x̄) or H raise, naming h.
    """
    if not callable(h):
        return jnp.asarray(h, dtype=xbar.dtype), y
    hx = h(xbar)
    if is_concrete(hx) and not np.all(np.isfinite(np.asarray(hx))):
        j = int(np.flatnonzero(~np.isfinite(np.asarray(hx)))[0])
        raise ValueError(
            "h must return finite values, but at the ensemble mean (where a callable h is "
            f"linearised) h(x̄) is {_kind(np.asarray(hx)[j])} at observation index {j}"
        )
    H = jax.jacfwd(h)(xbar).astype(xbar.dtype)
    if is_concrete(H) and not np.all(np.isfinite(np.asarray(H))):
        j, k = np.argwhere(~np.isfinite(np.asarray(H)))[0]
        raise ValueError(
            f"h's Jacobian at the ensemble mean must be finite (a callable h is linearised "
            f"there), but ∂h/∂x[{j}, {k}] (observation index {j}, state index {k}) is "
            f"{_kind(np.asarray(H)[j, k])}"
        )
    return H, (y - hx + H @ xbar).astype(xbar.dtype)


def _check_no_noise(R) -> None:
    """Validate the R of an analysis with m = 0 observations."""
    if isinstance(R, Covariance):
        if R.dim != 0:
            raise ValueError(f"R has dimension {R.dim}, expected 0 (= m)")
        return
    try:
        arr = jnp.asarray(R)
    except TypeError as err:
        raise TypeError(
            f"R must be a Covariance operator or an array, got {type(R).__name__}"
        ) from err
    if arr.ndim == 0:
        Scalar(arr, 1)  # the checks of a scalar variance: finite and > 0
    elif arr.shape not in ((0,), (0, 0)):
        raise ValueError(
            "R must be a scalar, a (0,) vector of variances or a (0, 0) matrix for "
            f"m = 0 observations, got shape {arr.shape}"
        )


def as_key(key, scheme: str) -> Array:
    """The PRNG key of a stochastic scheme; an integer is taken as a seed."""
    if key is None:
        raise TypeError(
            f"{scheme} is stochastic and needs key=jax.random.key(seed) "
            "(or an integer seed)"
        )
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key
