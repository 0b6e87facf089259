"""Closed-form Kalman analysis in plain NumPy, independent of enkit.

Uses the textbook covariance form ``Pa = P − P Hᵀ S⁻¹ H P`` (not Joseph), so
it cross-checks ``enkit.kalman_update`` rather than repeating it.
"""

import numpy as np


def kalman_analysis(mean, cov, y, H, R):
    S = H @ cov @ H.T + R
    K = np.linalg.solve(S, H @ cov).T
    mean_a = mean + K @ (y - H @ mean)
    cov_a = cov - K @ S @ K.T
    return mean_a, 0.5 * (cov_a + cov_a.T)


def sample_stats(E):
    E = np.asarray(E)
    return E.mean(axis=0), np.cov(E.T, ddof=1)
