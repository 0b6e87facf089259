"""Update groups: parameter blocks updated only from the data that inform them.

``UpdateGroups(process, groups=[(param_indices, data_indices), ...])`` runs
the wrapped process's update once per group g on the sub-problem

    U[:, P_g] ← step(U[:, P_g], G[:, D_g], y[D_g], Γ[D_g, D_g], Δt),

and leaves the parameters that are in no group unchanged. This imposes a
known independence (a block structure of the Kalman gain): parameters in
P_g get no update from data outside D_g. The parameter sets must be
disjoint (a parameter is updated once); data sets may overlap (a datum may
inform several groups). Γ[D_g, D_g] is the marginal block
(``restrict_noise``); correlations between data in different groups are
ignored, as the block structure assumes.

Only processes whose step is a function of the ensemble and the data alone
can be split: EKI, ETKI, ESMDA (and future processes of the same kind).
Processes with a prior over all p parameters (TEKI, GNKI) or a state that
is not a parameter ensemble (UKI) raise at construction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax import Array

from enkit._pytree import register_dataclass
from enkit.inversion._common import (
    EnsembleProcess,
    EnsembleState,
    InversionInfo,
    check_tell,
    misfit,
)
from enkit.inversion.observations import _check_indices, restrict_noise
from enkit.inversion.process_inflation import _tell

__all__ = ["UpdateGroups"]

# Group g >= 1 draws from the stream fold_in(key, _GROUP_STREAM + g), far from
# the iteration counts n of the process's own fold_in(key, n) draws.
_GROUP_STREAM = 0x5EED0000


def _as_groups(groups) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups:
        raise ValueError("groups must be a non-empty sequence of (param_indices, "
                         "data_indices) pairs")
    out, seen = [], {}
    for g, pair in enumerate(groups):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"groups[{g}] must be a pair (param_indices, data_indices)")
        P = _check_indices(f"groups[{g}] param_indices", pair[0], None)
        D = _check_indices(f"groups[{g}] data_indices", pair[1], None)
        for i in P.tolist():
            if i in seen:
                raise ValueError(
                    f"parameter {i} is in groups[{seen[i]}] and groups[{g}]: parameter "
                    "groups must be disjoint (each parameter is updated once)"
                )
            seen[i] = g
        out.append((tuple(P.tolist()), tuple(D.tolist())))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class UpdateGroups:
    """A process updated block by block: group g = (P_g, D_g) updates the
    parameters P_g from the data D_g only,

        U[:, P_g] ← step(U[:, P_g], G[:, D_g], y[D_g], Γ[D_g, D_g], Δt),

    parameters in no group unchanged. With one group holding every index
    it is the wrapped process; with block-diagonal A and Γ and groups
    matching the blocks, it equals separate runs of the process on the
    blocks.

    process: EKI, ETKI, ESMDA or another ``EnsembleProcess`` without a prior
    (static structure, a pytree leaf); groups: sequence of (param_indices,
    data_indices) integer sequences, parameter sets disjoint (static).
    Randomness: group 0 draws from the process's own key stream, group
    g ≥ 1 from that of ``fold_in(key, 0x5EED0000 + g)``, so the groups' perturbations are
    independent. ``info.misfit`` is the misfit of all the data told.

    Reference: the update groups of EnsembleKalmanProcesses.jl (the idea;
    a block-diagonal, localised gain as in Houtekamer & Mitchell 2001).
    """

    process: Any
    groups: Sequence

    def __post_init__(self):
        proc = self.process
        if not isinstance(proc, EnsembleProcess) or hasattr(proc, "prior"):
            why = ("its state is not an ensemble of the parameters"
                   if not isinstance(proc, EnsembleProcess) else
                   "its update uses a prior over all p parameters, which cannot be "
                   "split into groups")
            raise TypeError(
                f"UpdateGroups cannot split the update of {type(proc).__name__}: {why}; "
                "use EKI, ETKI or ESMDA"
            )
        if getattr(proc, "localizer", None) is not None:
            raise TypeError(
                "UpdateGroups cannot split a localised process: its localiser is "
                "defined on all p parameters and d data; localise within groups instead"
            )
        object.__setattr__(self, "groups", _as_groups(self.groups))

    def init(self, key, ensemble) -> EnsembleState:
        """The wrapped ``init(key, ensemble)``; checks the parameter indices
        against p."""
        state = self.process.init(key, ensemble)
        p = state.ensemble.shape[1]
        for g, (P, _) in enumerate(self.groups):
            if max(P) >= p:
                raise ValueError(f"groups[{g}] param_indices must be < p={p}, got {max(P)}")
        return state

    def ask(self, state: EnsembleState) -> Array:
        """The wrapped ``ask``: (N, p)."""
        return self.process.ask(state)

    def tell(self, state: EnsembleState, G, y, noise, *, dt=None
             ) -> tuple[EnsembleState, InversionInfo]:
        """One grouped step. G: (N, d) outputs of ``ask(state)``; y: (d,);
        noise: Γ; dt: Δt, or None for the process's default."""
        U = state.ensemble
        G, y, noise = check_tell(G, y, noise, U.shape[0], U.dtype)
        d = G.shape[1]
        new, last, dt_used = U, None, None
        for g, (P, D) in enumerate(self.groups):
            if max(D) >= d:
                raise ValueError(f"groups[{g}] data_indices must be < d={d}, got {max(D)}")
            key = state.key
            if key is not None and g > 0:
                key = jax.random.fold_in(key, _GROUP_STREAM + g)
            Pa, Da = np.asarray(P), np.asarray(D)
            sub_noise = noise if D == tuple(range(d)) else restrict_noise(noise, Da)
            sub = state._replace(ensemble=U[:, Pa], key=key)
            last, info = _tell(self.process, sub, G[:, Da], y[Da], sub_noise, dt)
            new = new.at[:, Pa].set(last.ensemble)
            dt_used = info.dt
        out = last._replace(ensemble=new, key=state.key)
        return out, InversionInfo(misfit(G, y, noise), dt_used)


register_dataclass(UpdateGroups, data_fields=["process"],
                                 meta_fields=["groups"])
