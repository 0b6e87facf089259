"""Matplotlib figures of assimilation runs (imported lazily by the CLI)."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_twin_run"]


def plot_twin_run(truth, times, result, path, *, variable: int = 0, title: str = ""):
    """Truth vs analysis of one variable, and RMSE/spread over time; saved to path.

    truth: (K, n); times: (K,); result: ``enkit.AssimilationResult``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, times = np.asarray(truth), np.asarray(times)
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax0.plot(times, truth[:, variable], color="k", lw=1.2, label="truth")
    ax0.plot(times, np.asarray(result.analysis_mean)[:, variable], color="C1",
             lw=1.0, ls="--", label="analysis mean")
    ax0.set_ylabel(f"x[{variable}]")
    ax0.legend(loc="upper right")
    if title:
        ax0.set_title(title)
    ax1.plot(times, np.asarray(result.rmse(truth)), color="C0", lw=0.8, label="analysis RMSE")
    ax1.plot(times, np.asarray(result.analysis_spread), color="C2", lw=0.8, label="analysis spread")
    ax1.set_yscale("log")
    ax1.set_xlabel("time")
    ax1.set_ylabel("RMSE / spread")
    ax1.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
