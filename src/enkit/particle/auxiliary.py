"""The auxiliary particle filter's analysis (Pitt & Shephard 1999) for
additive Gaussian model noise."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import cho_solve
from jax.typing import ArrayLike

from enkit.covariance import Dense, as_covariance
from enkit.filters._common import ObservationOperator, observe
from enkit.particle._common import (
    ParticleAnalysis,
    as_operand,
    check_threshold,
    check_weights,
    finish,
    need_key,
    prior_log_weights,
    resample_if,
    reweight,
)
from enkit.particle._mixture import corrected, tempered_predictive
from enkit.particle.bootstrap import gaussian_log_likelihood
from enkit.particle.optimal import observation_matrix
from enkit.particle.resampling import systematic, weighted_mean

__all__ = ["auxiliary_pf"]

PREDICTIVES = ("gaussian", "point")
PROPOSALS = ("prior", "optimal")


def auxiliary_pf(E: ArrayLike, y: ArrayLike, h: ObservationOperator, R, *, Q,
                 key: Array | None = None, log_weights: ArrayLike | None = None,
                 predictive: str = "gaussian", proposal: str = "prior",
                 threshold: ArrayLike = 1.0, resampler: Callable = systematic) -> ParticleAnalysis:
    """Auxiliary particle filter analysis (Pitt & Shephard 1999) for
    x = fᵢ + η, η ~ N(0, Q), and y = h(x) + v, v ~ N(0, R).

    As in ``optimal_proposal_pf``, E holds the forecasts fᵢ *before* model
    noise and the analysis adds it. The particles are first weighted by
    a predictive likelihood p̂(y | fᵢ) of where they will land,

        first stage:  log w̃ᵢ ∝ log w̄ᵢ + log p̂(y | fᵢ),
            p̂ = N(y; h(fᵢ), H Q Hᵀ + R)   (``predictive="gaussian"``,
                  exact for linear h: the fully adapted weights), or
            p̂ = N(y; h(fᵢ), R)            (``"point"``, Pitt & Shephard's
                  likelihood at the point prediction μᵢ = fᵢ),

    resampled by w̃ (when ESS(w̃) < threshold·N; default threshold = 1,
    always, as Pitt & Shephard's first-stage draw; otherwise the w̃ are
    kept, the view of Johansen & Doucet 2008), aᵢ the indices (aᵢ = i when
    not resampled), then propagated from the proposal q and reweighted,

        ``proposal="prior"``:   xᵢ = f_{aᵢ} + ηᵢ,
            log wᵢ ∝ log w̃ᵃᵢ + log N(y; h(xᵢ), R) − log p̂(y | f_{aᵢ});
        ``proposal="optimal"``: xᵢ ~ N(f_{aᵢ} + K (y − h(f_{aᵢ})), (I − KH) Q),
            K = Q Hᵀ (H Q Hᵀ + R)⁻¹, drawn as in ``optimal_proposal_pf``,
            log wᵢ ∝ log w̃ᵃᵢ + log N(y; h(xᵢ), R) + log N(xᵢ; f_{aᵢ}, Q)
                     − log q(xᵢ | f_{aᵢ}) − log p̂(y | f_{aᵢ}),

    w̃ᵃᵢ the weight after the resampling step (uniform, or w̃ᵢ). With a
    linear h, the "gaussian" predictive and the "optimal" proposal the APF
    is fully adapted: its second-stage weights are uniform to round-off and
    it is ``optimal_proposal_pf``; with a nonlinear h, whose Jacobian at
    the weighted mean of the fᵢ is H, both are approximations that the
    second stage corrects exactly. The log evidence is
    log Σᵢ w̄ᵢ p̂(y | fᵢ) + log Σᵢ w̃ᵃᵢ exp(second-stage log-weightᵢ)
    (Pitt 2002; Johansen & Doucet 2008), unbiased on the natural scale.

    E: (N, n) forecasts fᵢ; y: (m,); h: callable on one member or (m, n)
    matrix; R: covariance operator (m,); Q: covariance operator or array
    (n,), required. key: PRNG key (required). log_weights, resampler: as
    ``bootstrap_pf``; threshold: in [0, 1], on the first-stage ESS.
    predictive: "gaussian" or "point"; proposal: "prior" or "optimal"
    (the last forms Q and (I − KH)Q densely, n × n, and evaluates their
    densities: it needs Q positive definite; "prior" draws from a singular
    Q too). Returns a
    ``ParticleAnalysis`` whose ``ess`` is that of the first-stage weights
    w̃ (the one the threshold is compared with) and whose log_weights are
    the second-stage ones; every first- or second-stage weight zero (or a
    NaN one) is degenerate, handled as in ``bootstrap_pf``.

    In ``enkit.assimilate``, bind Q (``functools.partial(auxiliary_pf,
    Q=Q)``) and give no ``model_noise`` (see ``optimal_proposal_pf``).
    DAPPER has no APF. References: Pitt & Shephard (1999), JASA 94(446),
    590–599; Pitt (2002), Warwick economics research paper 641; Johansen &
    Doucet (2008), Statist. Probab. Lett. 78(12), 1498–1504.
    """
    E = jnp.asarray(E)
    N, n = E.shape
    key = need_key(key, "auxiliary_pf")
    check_threshold(threshold)
    if predictive not in PREDICTIVES:
        raise ValueError(f"predictive must be one of {PREDICTIVES}, got {predictive!r}")
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    y = jnp.asarray(y, E.dtype)
    R = as_covariance(R, y.shape[0], name="R").astype(E.dtype)
    Q = as_covariance(Q, n, name="Q").astype(E.dtype)
    log_prior = prior_log_weights(log_weights, N, E.dtype)
    result, stages = _auxiliary(E, y, as_operand(h), R, Q, key, log_prior, threshold,
                                predictive=predictive, proposal=proposal, resampler=resampler)
    log_pred, log_after, second = stages
    check_weights(log_prior, log_pred, "auxiliary_pf (first stage)")
    check_weights(log_after, second, "auxiliary_pf (second stage)")
    return result


@partial(jax.jit, static_argnames=("predictive", "proposal", "resampler"))
def _auxiliary(E, y, h, R, Q, key, log_prior, threshold, *, predictive, proposal, resampler):
    """The compiled body of ``auxiliary_pf``: (ParticleAnalysis, (first-stage
    log-likelihoods, log-weights after resampling, second-stage log-weights))."""
    N, _ = E.shape
    HF = observe(h, E)
    if predictive == "gaussian" or proposal == "optimal":
        H = observation_matrix(h, weighted_mean(E, log_prior))
        QHt = Q.dense() @ H.T
        log_gauss, S = tempered_predictive(HF, y, H @ QHt, R, 1.0)
    log_pred = log_gauss if predictive == "gaussian" else gaussian_log_likelihood(HF, y, R)
    log_w1, log_z1, degenerate1 = reweight(log_prior, log_pred)
    k_resample, k_q, k_r = jax.random.split(key, 3)
    ancestors, log_after, ess, resampled = resample_if(k_resample, log_w1, threshold, resampler)
    idx = jnp.where(resampled, ancestors, jnp.arange(N, dtype=ancestors.dtype))
    F = E[idx]
    Eta = Q.sample(k_q, (N,))
    if proposal == "prior":
        X = F + Eta
        log_q = 0.0
    else:
        Gt = cho_solve((S.factor, True), QHt.T)  # Kᵀ = S⁻¹ H Q
        X = corrected(F + Eta, HF[idx] + Eta @ H.T, R.sample(k_r, (N,)), y, Gt, 1.0)
        Pq = Q.dense() - QHt @ Gt  # (I − K H) Q
        log_q = (gaussian_log_likelihood(F, X, Q)
                 - gaussian_log_likelihood(F + (y - HF[idx]) @ Gt, X, Dense(Pq)))
    second = gaussian_log_likelihood(observe(h, X), y, R) + log_q - log_pred[idx]
    log_w, log_z2, degenerate2 = reweight(log_after, second)
    result = finish(X, log_w, ess, resampled, log_z1 + log_z2, degenerate1 | degenerate2)
    return result, (log_pred, log_after, second)


auxiliary_pf.particle = True
auxiliary_pf.adds_model_noise = True  # assimilate refuses model_noise= with it
