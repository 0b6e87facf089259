"""What every analysis scheme shares: input checks and the observed ensemble.

Every L1 scheme has the signature ``scheme(E, y, h, R, *, key=None, ...)``
and starts with ``prepare_analysis``, which validates the inputs once (naming
the argument and the expected shape) and returns them in a common form.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from enkit._checks import check_ensemble, check_finite, check_ndim
from enkit.covariance import Covariance, as_covariance

ObservationOperator = Union[Callable[[Array], Array], ArrayLike]


class Analysis(NamedTuple):
    """Validated inputs of one analysis.

    E: (N, n) forecast ensemble; y: (m,) observation; HE: (N, m) the
    ensemble's simulated observations; R: covariance operator of dimension m,
    in E's dtype.
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
    """Validate ``(E, y, h, R)`` and compute the simulated observations."""
    E = check_ensemble("E", E)
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
    HE = observe(h, E)
    if HE.shape != (N, m):
        raise ValueError(
            f"h must map one member of shape ({n},) to shape (m,) = ({m},) "
            f"to match y, but it returned shape {HE.shape[1:]}"
        )
    R = as_covariance(R, m).astype(E.dtype)
    return Analysis(E, y, HE.astype(E.dtype), R)


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
