"""Particle filters: importance weights on the log scale, resampling, and
the bootstrap, optimal-proposal, auxiliary and local (Penny & Miyoshi
2016) particle filters, and the hybrids with Kalman updates: the
ensemble Kalman particle filter, the Gaussian-mixture filter and the
KDE-weighted EnKF.

A particle analysis has the uniform signature of enkit's schemes plus the
particles' log-weights, ``scheme(E, y, h, R, *, key, log_weights=None,
...) -> ParticleAnalysis`` (ensemble, log_weights, ess, resampled,
log_evidence, degenerate), and is marked by the attribute ``particle =
True``: ``enkit.assimilate`` then carries the log-weights from cycle to
cycle and stores them per cycle (``log_weights``, ``ess``), its means
and spreads being the weighted ones. ``effective_sample_size`` is the one
of ``enkit.diagnostics`` (pass ``log_weights=``). Adaptive tempering
(``next_temperature``: the next temperature at a target ESS, by bisection)
serves the tempered SMC sampler ``enkit.inversion.SMC``.

Differentiable resampling (``SoftResampler``, ``OTResampler``, passed as
``bootstrap_pf(resampler=...)``) keeps the filter a differentiable function
of the model's parameters: see ``enkit.particle.differentiable``.
"""

from enkit.diagnostics import effective_sample_size
from enkit.particle._common import ParticleAnalysis, WeightDegeneracyError
from enkit.particle.auxiliary import auxiliary_pf
from enkit.particle.bootstrap import bootstrap_pf, gaussian_log_likelihood
from enkit.particle.differentiable import (
    EnsembleResampler,
    OTResampler,
    SinkhornResult,
    SoftResampler,
    ot_resample,
    sinkhorn_plan,
    soft_resample,
)
from enkit.particle.enkpf import enkpf
from enkit.particle.gaussian_mixture import gaussian_mixture_filter
from enkit.particle.local import local_log_weights, local_pf
from enkit.particle.optimal import observation_matrix, optimal_proposal_pf
from enkit.particle.resampling import (
    RESAMPLERS,
    multinomial,
    normalize_log_weights,
    offspring_counts,
    regularize,
    residual,
    sample_with_root,
    scott_bandwidth,
    silverman_bandwidth,
    stratified,
    systematic,
    uniform_log_weights,
    weighted_covariance_root,
    weighted_mean,
    weighted_spread,
)
from enkit.particle.tempering import (
    incremental_log_weights,
    next_temperature,
    tempered_ess,
)
from enkit.particle.weighted_enkf import kde_log_density, kde_weighted_enkf

__all__ = [
    "EnsembleResampler",
    "OTResampler",
    "ParticleAnalysis",
    "RESAMPLERS",
    "SinkhornResult",
    "SoftResampler",
    "WeightDegeneracyError",
    "auxiliary_pf",
    "bootstrap_pf",
    "effective_sample_size",
    "enkpf",
    "gaussian_log_likelihood",
    "gaussian_mixture_filter",
    "incremental_log_weights",
    "kde_log_density",
    "kde_weighted_enkf",
    "local_log_weights",
    "local_pf",
    "multinomial",
    "next_temperature",
    "normalize_log_weights",
    "observation_matrix",
    "offspring_counts",
    "optimal_proposal_pf",
    "ot_resample",
    "regularize",
    "residual",
    "sample_with_root",
    "scott_bandwidth",
    "silverman_bandwidth",
    "sinkhorn_plan",
    "soft_resample",
    "stratified",
    "systematic",
    "tempered_ess",
    "uniform_log_weights",
    "weighted_covariance_root",
    "weighted_mean",
    "weighted_spread",
]
