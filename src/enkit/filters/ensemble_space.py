"""Analyses as ensemble-space transforms: ``Eₐ = G E`` with G (N, N).

Most ensemble analyses replace each member by a linear combination of the
members they received, with weights that depend on the observations, the
simulated observations and R but not on the unobserved state:

    Eₐ = G E,    G = G(h(E), y, R)  (N × N).

This is what lets a smoother update past ensembles with the analysis of the
present (Evensen & van Leeuwen 2000): the same G applied to the ensemble at
an earlier time is the update of that time given the new observation.

``analysis_transform`` returns both Eₐ and G from any such scheme, without
the scheme knowing: it runs the scheme on the augmented ensemble ``[E, I_N]``
(each member carries its own row of the identity, which h ignores), so the
last N columns of the result are ``G I = G``. Its cost is that of the scheme
on n + N columns instead of n.

``ENSEMBLE_SPACE`` lists the library's schemes that are of this form. The
exceptions: ``kalman`` and ``sqrt_kalman`` (they build an ensemble with the
exact covariance, not a combination of the members), ``letkf`` and
``patch_etkf`` (one transform per grid point or patch) and any scheme with
B-localisation (``localization=``: the tapered gain mixes state entries).
A user's own scheme of this form can be declared with ``ensemble_space``.

Reference: Evensen & van Leeuwen (2000), MWR 128 (the EnKS); Hunt,
Kostelich & Szunyogh (2007), Physica D 230 (analysis weights in ensemble
space).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from enkit._checks import check_spread
from enkit.filters._common import SPREAD_ADVICE, ObservationOperator
from enkit.filters.denkf import denkf
from enkit.filters.enkf import enkf
from enkit.filters.ensrf import ensrf
from enkit.filters.ensrf_serial import ensrf_serial
from enkit.filters.estkf import estkf
from enkit.filters.etkf import etkf
from enkit.filters.etkf_n import etkf_n, etkf_n_dual
from enkit.filters.etkf_rotated import etkf_rotated
from enkit.filters.ienkf import ienkf
from enkit.filters.mlef import mlef

__all__ = [
    "ENSEMBLE_SPACE",
    "analysis_transform",
    "check_ensemble_space",
    "ensemble_space",
    "is_ensemble_space",
]

ENSEMBLE_SPACE = frozenset({
    denkf, enkf, ensrf, ensrf_serial, estkf, etkf, etkf_n, etkf_n_dual, etkf_rotated,
    ienkf, mlef,
})


@dataclasses.dataclass(frozen=True)
class ensemble_space:  # noqa: N801 - used like a function: ensemble_space(my_scheme)
    """Declare that ``scheme`` (the uniform signature) returns a linear
    combination of its input members, ``Eₐ = G E`` with G depending only on
    h(E), y and R, so smoothers may apply its transform to past ensembles.
    ``analysis_transform`` then trusts the declaration (a test of your own
    should check ``G @ E == Eₐ`` on an example)."""

    scheme: Callable[..., Array]

    def __call__(self, E, y, h, R, **kwargs):
        return self.scheme(E, y, h, R, **kwargs)


def _base(scheme):
    """The function under ``functools.partial``/``jax.tree_util.Partial``
    layers, and the keyword options bound on the way."""
    keywords = {}
    while isinstance(scheme, (functools.partial, jax.tree_util.Partial)):
        keywords = {**scheme.keywords, **keywords}
        scheme = scheme.func
    return scheme, keywords


def is_ensemble_space(scheme) -> bool:
    """True when ``scheme`` (possibly with options bound by ``partial``) is
    an ensemble-space transform (see the module docstring)."""
    base, keywords = _base(scheme)
    if isinstance(base, ensemble_space):
        return True
    try:
        listed = base in ENSEMBLE_SPACE
    except TypeError:  # unhashable callables are not listed
        return False
    return listed and keywords.get("localization") is None


def check_ensemble_space(scheme, who: str) -> None:
    """Raise a ``ValueError`` for ``who`` (e.g. "enks") when ``scheme`` has
    no ensemble-space transform."""
    if is_ensemble_space(scheme):
        return
    base, keywords = _base(scheme)
    name = getattr(base, "__name__", type(base).__name__)
    why = ("B-localisation (localization=) mixes state entries"
           if keywords.get("localization") is not None else
           "it is not a linear combination of the forecast members with one (N, N) "
           "transform (e.g. letkf and patch_etkf use one per grid point, kalman and "
           "sqrt_kalman build an ensemble from the exact covariance)")
    raise ValueError(
        f"{who} applies each analysis's ensemble-space transform Ea = G Ef to past "
        f"ensembles, but the scheme {name!r} has none: {why}. Use one of "
        f"{', '.join(sorted(f.__name__ for f in ENSEMBLE_SPACE))}, or declare your own "
        "scheme with enkit.ensemble_space(scheme)"
    )


def _augmented_h(h: ObservationOperator, n: int, N: int):
    """h on the augmented member [x, g] (n + N,), reading x only."""
    if callable(h):
        return lambda z: h(z[:n])
    H = jnp.asarray(h)
    return jnp.concatenate([H, jnp.zeros((H.shape[0], N), H.dtype)], axis=1)


def analysis_transform(
    scheme: Callable[..., Array],
    E: Array,
    y: Array,
    h: ObservationOperator,
    R,
    *,
    key: Array | None = None,
) -> tuple[Array, Array]:
    """The analysis ``Eₐ`` of ``scheme`` and its ensemble transform G.

    ``Eₐ = G E`` with G (N, N), found by running ``scheme`` once on
    ``[E, I_N]`` with h reading the first n entries of each member (module
    docstring). The scheme must be an ensemble-space transform; this is
    not checked here (``check_ensemble_space`` does it at the door).

    E: (N, n); y: (m,); h: callable or (m, n) matrix; R: covariance
    operator or array; key: passed to stochastic schemes (the same draws
    as the plain call: they depend on N and m, not n).
    Returns (Eₐ (N, n), G (N, N)); with no observations (m = 0) the
    schemes return their input, so Eₐ = E and G = I_N exactly.
    """
    N, n = np.shape(E)
    # The augmented [E, I] always has spread: check E's own here.
    check_spread("E", E, consequence="the analysis cannot update it", advice=SPREAD_ADVICE)
    Z = jnp.concatenate([E, jnp.eye(N, dtype=E.dtype)], axis=1)
    kwargs = {} if key is None else {"key": key}
    Za = scheme(Z, y, _augmented_h(h, n, N), R, **kwargs)
    return Za[:, :n], Za[:, n:]
