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
