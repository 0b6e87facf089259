"""RRSQRT's model error and rank reduction as a driver step, for ``assimilate``.

The reduced-rank square-root filter (``enkit.filters.rrsqrt``; Verlaan &
Heemink 1997) runs in the ensemble driver as ``estkf`` on an ensemble that
holds its q modes as error-subspace coordinates (``modes_to_ensemble``: N =
q + 1 members), with this step before each analysis:

    E0 = enkit.modes_to_ensemble(mean0, modes0)            # (q + 1, n)
    enkit.assimilate(model, E0, ys, enkit.estkf, h=H, R=R,
                     inflation=enkit.RankReduction(q, model_noise_sqrt=Q))

The analysis needs nothing new: ``estkf``'s error-subspace transform is
RRSQRT's mode-space update (``rrsqrt_analysis``), member for member. The
step supplies the rest of the RRSQRT forecast: it reads the modes of the
forecast ensemble (``S = Ωᵀ X``), appends the model-error square-root rows
A (``Q = Aᵀ A``), reduces to the q leading modes (``rrsqrt_reduce``) and
writes them back (zero rows for the members beyond q + 1), keeping the mean.

For a linear model and one model step per analysis this is RRSQRT exactly
(the driver's member forecast moves the modes by the model itself). For a
nonlinear model the driver propagates members, so the mean is the ensemble
mean and the modes move by differences of size √q‖sⱼ‖ (an ensemble-type
RRSQRT; ``rrsqrt_filter`` is the paper's tangent-linear cycle). Q is added
once per analysis, whatever ``steps_per_obs`` (give the model error of the
whole forecast), and only at times with observations: the driver skips the
inflation steps at a time without any.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from enkit.covariance import Covariance
from enkit.ensemble import scaled_anomalies
from enkit.filters.estkf import error_subspace_projection
from enkit.filters.rrsqrt import check_rank, noise_modes, rrsqrt_reduce
from enkit.inflation import InflationStep, _register

__all__ = ["RankReduction"]


@dataclasses.dataclass(frozen=True)
class RankReduction(InflationStep):
    """Before each analysis: append model error, keep the q leading modes.

        S = Ωᵀ X_f  (N − 1, n),    S ← rrsqrt_reduce([S; A], q),
        E ← x̄_f + √(N − 1) · Ω [S; 0]       (Ω = error_subspace_projection(N)),

    (module docstring). q (static): modes kept, 1 ≤ q ≤ N − 1 (checked when
    the run starts); model_noise_sqrt: None, a covariance operator Q of
    dimension n or an (r, n) array of square-root rows A (a leaf: swept or
    differentiated without recompiling). Deterministic: no key needed.

    Reference: Verlaan & Heemink (1997), Stoch. Hydrol. Hydraul. 11.
    """

    q: int
    model_noise_sqrt: Covariance | Any = None

    def __post_init__(self):
        check_rank("q", self.q)

    def init(self, E0):
        N = E0.shape[0]
        if self.q > N - 1:
            raise ValueError(f"RankReduction's q must be at most N - 1 = {N - 1} (the modes an "
                             f"ensemble of N = {N} members holds), got q = {self.q}; use "
                             "modes_to_ensemble(mean, modes) for an ensemble of q + 1 members")
        noise_modes(self.model_noise_sqrt, E0.shape[1], E0.dtype)  # shape checks
        return ()

    def before_analysis(self, state, key, Ef, y, h, R, mask):
        N, n = Ef.shape
        xbar, X = scaled_anomalies(Ef)
        Omega = error_subspace_projection(N, Ef.dtype)
        S = Omega.T @ X
        A = noise_modes(self.model_noise_sqrt, n, Ef.dtype)
        if A is not None:
            S = jnp.concatenate([S, A], axis=0)
        S = rrsqrt_reduce(S, self.q)
        if self.q < N - 1:
            S = jnp.concatenate([S, jnp.zeros((N - 1 - self.q, n), Ef.dtype)], axis=0)
        return xbar + jnp.sqrt(jnp.asarray(N - 1, Ef.dtype)) * (Omega @ S), state


_register(RankReduction, ["model_noise_sqrt"], ["q"])
