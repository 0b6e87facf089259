"""Particle filters: importance weights on the log scale, resampling, and
the bootstrap, optimal-proposal and auxiliary particle filters, and the
hybrids with Kalman updates: the ensemble Kalman particle filter and the
Gaussian-mixture filter.

A particle analysis has the uniform signature of enkit's schemes plus the
particles' log-weights, ``scheme(E, y, h, R, *, key, log_weights=None,
...) -> ParticleAnalysis`` (ensemble, log_weights, ess, resampled,
log_evidence, degenerate), and is marked by the attribute ``particle =
True``: ``enkit.assimilate`` then carries the log-weights from cycle to
cycle and stores them per cycle (``log_weights``, ``ess``), its means
and spreads being the weighted ones. ``effective_sample_size`` is the one
of ``enkit.diagnostics`` (pass ``log_weights=``).
"""

from enkit.diagnostics import effective_sample_size
from enkit.particle._common import ParticleAnalysis, WeightDegeneracyError
from enkit.particle.auxiliary import auxiliary_pf
from enkit.particle.bootstrap import bootstrap_pf, gaussian_log_likelihood
from enkit.particle.enkpf import enkpf
from enkit.particle.gaussian_mixture import gaussian_mixture_filter
from enkit.particle.optimal import observation_matrix, optimal_proposal_pf
from enkit.particle.resampling import (
    RESAMPLERS,
    multinomial,
    normalize_log_weights,
    offspring_counts,
    regularize,
    residual,
    scott_bandwidth,
    silverman_bandwidth,
    stratified,
    systematic,
    uniform_log_weights,
    weighted_covariance_root,
    weighted_mean,
    weighted_spread,
)

__all__ = [
    "RESAMPLERS",
    "ParticleAnalysis",
    "WeightDegeneracyError",
    "auxiliary_pf",
    "bootstrap_pf",
    "effective_sample_size",
    "enkpf",
    "gaussian_log_likelihood",
    "gaussian_mixture_filter",
    "multinomial",
    "normalize_log_weights",
    "observation_matrix",
    "offspring_counts",
    "optimal_proposal_pf",
    "regularize",
    "residual",
    "scott_bandwidth",
    "silverman_bandwidth",
    "stratified",
    "systematic",
    "uniform_log_weights",
    "weighted_covariance_root",
    "weighted_mean",
    "weighted_spread",
]
