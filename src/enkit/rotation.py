"""The random mean-preserving rotation as a driver step, for every scheme.

Published tables (Sakov & Oke 2008; Bocquet 2011) run the EnSRF, DEnKF,
ETKF and EnKF-N with a random mean-preserving rotation of the analysis
anomalies after each analysis. ``MeanPreservingRotation`` is that rotation
as an ``InflationStep`` (after the analysis), so any scheme gets it in
``assimilate`` and it chains with inflation:

    enkit.assimilate(model, E0, ys, enkit.ensrf, h=H, R=R, key=0,
                     inflation=enkit.inflation.chain(enkit.MultiplicativeAnalysis(1.02),
                                                     enkit.MeanPreservingRotation()))

On one analysis, compose the pure function: ``rotate(ensrf(E, y, h, R), key=k)``.
"""

from __future__ import annotations

import dataclasses

from enkit.filters.etkf_rotated import rotate
from enkit.inflation import InflationStep, _register, _step_key

__all__ = ["MeanPreservingRotation", "rotate"]


@dataclasses.dataclass(frozen=True)
class MeanPreservingRotation(InflationStep):
    """After each analysis, ``rotate`` the analysis ensemble:

        Eₐ' = x̄ₐ + U (Eₐ − x̄ₐ),   U orthogonal with U 1 = 1, drawn afresh,

    which keeps the analysis mean and covariance (to round-off) and only
    redistributes the members, breaking up the collapse onto a few
    outlying members of deterministic square-root filters (Sakov & Oke
    2008) — DAPPER's ``rot=True``. The driver's key is needed (the step's
    key of cycle k is derived from it). In a chain, put it last: steps
    after it see rotated members. Smoothers' transforms are those of the
    scheme: the rotation, like inflation, acts on the present ensemble only.

    Reference: Sakov & Oke (2008), "Implications of the form of the
    ensemble transformation in the ensemble square root filters", MWR 136,
    1042–1053.
    """

    def after_analysis(self, state, key, Ef, Ea):
        return rotate(Ea, key=_step_key(key, "MeanPreservingRotation")), state


_register(MeanPreservingRotation, [])
