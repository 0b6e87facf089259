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


def user_value(x) -> bool:
    """True for a value a user passes (validate it); False for what JAX's
    pytree machinery rebuilds an object with when it unflattens one
    (tracers, None, sentinel objects), which must pass unchecked."""
    return isinstance(x, (list, tuple, np.ndarray, np.number, float, int, jax.Array)) \
        and is_concrete(x)


def check_bool(name: str, value) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")


def check_number(name: str, x, *, low: float | None = None, high: float | None = None,
                 low_open: bool = True, high_open: bool = False, finite: bool = True,
                 shape: tuple | None = None, what: str = "a real scalar"):
    """Validate a concrete tuning value: real, of shape ``()`` (or ``shape``
    too, when given; a None entry there matches any length), entries in the
    interval from ``low`` to ``high`` (open or closed ends; None:
    unbounded), finite unless ``finite=False`` (which admits +inf where
    the interval does). Tracers and pytree
    placeholders pass unchecked (``user_value``). Returns ``x``.

    The message names ``name`` and the valid range, e.g. "factor must be
    finite and > 0 (a scalar or (n,) array), got -1.0".
    """
    if not user_value(x):
        return x
    a = np.asarray(x)
    shape_ok = a.shape == () or (shape is not None and len(a.shape) == len(shape) and all(
        want is None or got == want for got, want in zip(a.shape, shape)))
    real = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    if not shape_ok or not real:
        raise ValueError(f"{name} must be {what}, got {_show(x)} of shape {a.shape} "
                         f"and dtype {a.dtype}")
    v = a.astype(np.float64)
    ok = ~np.isnan(v)
    if finite:
        ok &= np.isfinite(v)
    if low is not None:
        ok &= (v > low) if low_open else (v >= low)
    if high is not None:
        ok &= (v < high) if high_open else (v <= high)
    if not np.all(ok):
        raise ValueError(f"{name} must be {_range_text(low, high, low_open, high_open, finite)}"
                         f"{'' if what == 'a real scalar' else f' ({what})'}, got {_show(x)}")
    return x


def _range_text(low, high, low_open, high_open, finite) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        text = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        text = f"{'<' if high_open else '<='} {high:g}"
    else:
        text = "a number"
    return f"finite and {text}" if finite else f"{text} (inf allowed)"


def _show(x) -> str:
    a = np.asarray(x)
    if a.size <= 8:
        return repr(a.tolist())
    return f"an array with entries in [{np.nanmin(a):g}, {np.nanmax(a):g}]"


def check_spread(name: str, E, *, consequence: str, advice: str) -> None:
    """Raise ``ValueError`` when the members (rows) of a concrete (N, n)
    ensemble ``E`` are all identical: its anomalies are zero, so no
    ensemble update can move it. ``consequence`` and ``advice`` complete
    the message (what goes wrong, how to draw an ensemble with spread)."""
    if not is_concrete(E):
        return
    a = np.asarray(E)
    if a.ndim == 2 and a.shape[0] >= 2 and np.all(a == a[:1]):
        raise ValueError(
            f"{name} has zero spread: its {a.shape[0]} members are identical, so "
            f"{consequence} (its anomalies are zero). {advice}")


def zero_spread_columns(E) -> np.ndarray:
    """Indices of the columns of a concrete (N, n) ensemble whose entries
    are equal in every member (an empty array for traced input)."""
    if not is_concrete(E):
        return np.zeros(0, int)
    a = np.asarray(E)
    return np.flatnonzero(np.all(a == a[:1], axis=0))
