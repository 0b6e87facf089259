"""Ensemble Kalman smoother, EnKS (Evensen & van Leeuwen 2000), fixed lag or
over the whole window, as a step the cycling driver carries."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from enkit._pytree import register_dataclass
from enkit.assimilation import assimilate, cycle
from enkit.assimilation.types import AssimilationResult
from enkit.filters.ensemble_space import check_ensemble_space

__all__ = ["LagSmoother", "enks"]

DEFAULT_SMOOTHED = ("smoothed_mean", "smoothed_spread")


def check_lag(lag, K: int, who: str) -> int:
    """The lag as an int in 0..K−1, or a ``ValueError`` naming ``who``."""
    if isinstance(lag, bool) or not isinstance(lag, (int, np.integer)):
        raise TypeError(f"{who}: lag must be a non-negative integer (analysis times), "
                        f"got {lag!r}")
    if lag < 0:
        raise ValueError(f"{who}: lag must be >= 0 (0 is the filter), got {lag}")
    if lag > K - 1:
        raise ValueError(
            f"{who}: lag={lag} is larger than the run: with K={K} analysis times an "
            f"estimate can see at most K-1={K - 1} later ones (lag={K - 1}, or lag=None, "
            "smooths over the whole window)")
    return int(lag)


@dataclasses.dataclass(frozen=True)
class LagSmoother:
    """The EnKS as a smoother step of ``assimilate(..., smoother=)``.

    The step carries the analysis ensembles of the last ``lag`` analysis
    times, ``B = (E_{k−L}, ..., E_{k−1})`` (L, N, n). At analysis k, with
    ``Eₖᵃ = Gₖ Eₖᵇ`` the scheme's ensemble transform
    (``enkit.filters.ensemble_space``), every carried ensemble is updated by
    the same transform,

        E_j ← Gₖ E_j,    j = k − L, ..., k − 1,

    which is the Kalman update of time j by the observation at k through the
    ensemble's cross-covariances (no n×n matrix, cost O(L N² n) per cycle).
    E_{k−L} has then seen the observations up to k = (k − L) + L: it leaves
    the buffer as the smoothed estimate of time k − L (released), and Eₖᵃ
    enters. After the last cycle the buffer holds the final estimates of
    the last L times. Memory O(L N n) whatever the run length.

    Inflation and rotation steps act on the present ensemble only (as in
    DAPPER's EnKS): the past ensembles receive the scheme's transform, not
    the inflation.

    lag (static): L ≥ 0 analysis times (0: the filter); outputs (static):
    the smoothed outputs to produce (of "smoothed_mean", "smoothed_spread",
    "smoothed_ensemble"; set by ``assimilate`` from ``store``).

    Reference: Evensen & van Leeuwen (2000), MWR 128, "An ensemble Kalman
    smoother for nonlinear dynamics"; Evensen (2009), "Data Assimilation:
    the Ensemble Kalman Filter", ch. 15 (fixed-lag EnKS).
    """

    lag: int
    outputs: tuple = DEFAULT_SMOOTHED

    needs_transform = True

    def check(self, *, K: int, scheme) -> None:
        """Validate against the run (before any model run)."""
        check_lag(self.lag, K, "enks")
        check_ensemble_space(scheme, "enks")

    def with_outputs(self, names) -> LagSmoother:
        return dataclasses.replace(self, outputs=tuple(names) or DEFAULT_SMOOTHED)

    def init(self, E0) -> Any:
        return jnp.zeros((self.lag, *E0.shape), E0.dtype)

    def step(self, buffer, Ef, Ea, G):
        """Update the carried ensembles with G; release the oldest (the
        present analysis itself with lag 0). Rows of the first L cycles are
        placeholders that ``finish`` drops."""
        del Ef
        if self.lag == 0:
            return buffer, cycle.smoothed_statistics(self.outputs, Ea)
        buffer = jnp.einsum("ij,ljn->lin", G, buffer)
        rows = cycle.smoothed_statistics(self.outputs, buffer[0])
        return jnp.concatenate([buffer[1:], Ea[None]]), rows

    def finish(self, buffer, rows) -> dict:
        """(K, ...) smoothed outputs: the released rows, then the buffer."""
        tail = jax.vmap(lambda E: cycle.smoothed_statistics(self.outputs, E))(buffer)
        return {name: jnp.concatenate([rows[name][self.lag:], tail[name]])
                for name in self.outputs}


register_dataclass(LagSmoother, data_fields=[], meta_fields=["lag", "outputs"])


def enks(model, E0, observations, scheme, *, lag: int | None = None,
         store=cycle.DEFAULT_OUTPUTS + DEFAULT_SMOOTHED, **options) -> AssimilationResult:
    """Ensemble Kalman smoother: ``assimilate`` with a ``LagSmoother``.

    Every analysis's ensemble-space transform ``Eₐ = G E_b`` is applied to
    the analysis ensembles of the previous ``lag`` analysis times (see
    ``LagSmoother``), so the smoothed estimate of time j uses the
    observations up to time j + lag:

        E_j^s = G_{j+L} ⋯ G_{j+1} E_j^a.

    lag: L ≥ 0 analysis times (0 is the filter; ADAO's "SmootherLagL"
    plays this role; DAPPER's ``Lag`` counts observation times likewise), or
    None for the whole window (L = K − 1, the full EnKS: every estimate uses
    every observation). On a linear-Gaussian problem with a deterministic
    scheme (ETKF, EnSRF, ...) and no model error the smoothed mean and
    covariance equal the Kalman (RTS) smoother of the ensemble's own
    statistics to round-off.

    model, E0, observations, scheme and ``options`` (h, R, key, inflation,
    mask, steps_per_obs, obs_times, controls, model_noise, forecast_steps,
    checkpoint, checkpoint_every, resume, on_nonfinite): as for ``assimilate``, which
    receives them unchanged (a misspelled option is its ``TypeError``).
    store: as for ``assimilate``, with "smoothed_mean", "smoothed_spread"
    and "smoothed_ensemble" (K, N, n) added; by default the four filter
    statistics and the smoothed mean and spread. The scheme must have an
    ensemble transform (``enkit.filters.ensemble_space``): letkf,
    patch_etkf, kalman, sqrt_kalman and B-localised schemes are refused
    before any model run.

    Returns an ``AssimilationResult`` with the filter outputs (to round-off
    those of ``assimilate``: the transform comes from running the scheme on
    n + N columns) and the smoothed outputs (K, ...).

    Reference: Evensen & van Leeuwen (2000), MWR 128.
    """
    K = len(observations) if isinstance(observations, (list, tuple)) else np.shape(observations)[0]
    if K < 1:
        raise ValueError("observations must hold at least one analysis time")
    if lag is None:
        lag = K - 1
    smoother = LagSmoother(lag=check_lag(lag, K, "enks"))
    return assimilate(model, E0, observations, scheme, store=store, smoother=smoother,
                      **options)
