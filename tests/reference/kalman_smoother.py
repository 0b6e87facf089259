"""Closed-form Kalman filter and Rauch–Tung–Striebel smoother in plain NumPy,
independent of enkit (x_{k} = M x_{k−1} + N(0, Q), y_k = H x_k + N(0, R))."""

import numpy as np

from reference.kalman_numpy import kalman_analysis


def kalman_filter(mean0, cov0, ys, M, H, R, Q=None):
    """Forecast and analysis means/covariances at each of the K times."""
    Q = np.zeros_like(cov0) if Q is None else Q
    x, P = mean0, cov0
    out = {"xf": [], "Pf": [], "xa": [], "Pa": []}
    for y in ys:
        x, P = M @ x, M @ P @ M.T + Q
        out["xf"].append(x)
        out["Pf"].append(P)
        x, P = kalman_analysis(x, P, y, H, R)
        out["xa"].append(x)
        out["Pa"].append(P)
    return {k: np.array(v) for k, v in out.items()}


def rts_smoother(filt, M):
    """Smoothed means and covariances from ``kalman_filter``'s output."""
    xs, Ps = filt["xa"].copy(), filt["Pa"].copy()
    for k in range(len(xs) - 2, -1, -1):
        J = filt["Pa"][k] @ M.T @ np.linalg.inv(filt["Pf"][k + 1])
        xs[k] = filt["xa"][k] + J @ (xs[k + 1] - filt["xf"][k + 1])
        Ps[k] = filt["Pa"][k] + J @ (Ps[k + 1] - filt["Pf"][k + 1]) @ J.T
    return xs, Ps
