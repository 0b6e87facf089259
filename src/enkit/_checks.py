"""Input validation shared by the public entry points (private).

Shape checks always run (shapes are static under ``jit``). Value checks
(finiteness, positivity) run only on concrete arrays: inside a traced
function the values are unknown and the check is skipped, as DESIGN.md asks
("validate once at the public entry").
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, x) -> None:
    """Raise ``ValueError`` naming ``name`` if a concrete ``x`` has NaN/inf."""
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} must be finite, but it contains NaN or inf")


def check_ndim(name: str, x, ndim: int, expected: str) -> None:
    """Raise ``ValueError`` if ``x`` does not have ``ndim`` dimensions."""
    if np.ndim(x) != ndim:
        raise ValueError(
            f"{name} must have shape {expected}, got shape {np.shape(x)}"
        )


def check_float(name: str, x) -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating dtype."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")


def check_ensemble(name: str, E):
    """Validate an (N, n) ensemble with N ≥ 2 floating, finite members;
    returns it as a JAX array."""
    import jax.numpy as jnp

    check_float(name, E)
    E = jnp.asarray(E)
    check_ndim(name, E, 2, "(N, n): members on axis 0")
    if E.shape[0] < 2:
        raise ValueError(f"{name} must hold at least N=2 members on axis 0, got N={E.shape[0]}")
    check_finite(name, E)
    return E
