"""The local particle filter (Penny & Miyoshi 2016) on Lorenz-96: RMSE vs N.

Case: Lorenz-96 with n = 40, F = 8, RK4 with dt = 0.05, every variable
observed every step with R = I (the setting of ``vs_dapper_letkf.py``), one
truth and one observation record (enkit's ``twin_experiment``, spin-up 500
steps), initial ensembles x0 + 2·N(0, I). 1,200 cycles, the time-mean
analysis RMSE over the last 1,000.

Schemes (``enkit.assimilate``):
- ``local_pf``: Gaspari–Cohn R-localisation with ``radius`` (support
  2·radius), systematic resampling with one random number shared by all grid
  points, noise γ of the local posterior spread, with and without smoothing
  over the two neighbours (``smoothing_radius=1``, strength α);
- ``bootstrap_pf`` with Gaussian-kernel jitter (``reg=1``), the global PF;
- ``letkf`` N = 20, radius 7.28, inflation 1.04: the reference of
  ``vs_dapper_letkf.py`` (RMSE 0.224 there).

Each case runs twice (keys 3 and 4; the second call reuses the compiled
program): the RMSE is the median of the two runs (and both are shown), the
time per cycle that of the second run (compilation excluded). float32 (JAX's
default). Thread settings: one thread for XLA and the BLAS (set by one_thread.py before
JAX loads). Penny & Miyoshi's own figures (their L96 experiments with
longer forecast windows and other observation networks) were not at hand to
compare with; the comparison here is with the LETKF and the global PF.

Run:  python benchmarks/local_pf.py            # writes benchmarks/results/local_pf.txt
      python benchmarks/local_pf.py --quick    # 200 cycles, nothing written
"""

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import enkit  # noqa: E402
from enkit import particle as pf  # noqa: E402
from enkit.localization import periodic_distance  # noqa: E402
from enkit.models import Lorenz96  # noqa: E402
from enkit.models.twin import twin_experiment  # noqa: E402

N_VARS = 40
BURN = 200


def cases():
    c = np.arange(N_VARS, dtype=float)
    dist = partial(periodic_distance, period=float(N_VARS))
    local = partial(pf.local_pf, state_coords=c, obs_coords=c, distance=dist)
    out = []
    for N in (10, 20, 40, 80):
        out.append(("local_pf r=2 γ=0.5", N, partial(local, radius=2.0, noise=0.5), {}))
    for radius in (1.0, 3.0, 4.0):
        out.append((f"local_pf r={radius:g} γ=0.5", 40,
                    partial(local, radius=radius, noise=0.5), {}))
    for gamma in (0.25, 0.75, 1.0):
        out.append((f"local_pf r=2 γ={gamma:g}", 40, partial(local, radius=2.0, noise=gamma),
                    {}))
    for alpha in (1.0, 0.5, 0.25):
        out.append((f"local_pf r=2 γ=0.5 smooth=1 α={alpha:g}", 40,
                    partial(local, radius=2.0, noise=0.5, smoothing_radius=1.0,
                            smoothing_strength=alpha), {}))
    for gamma, alpha in ((1.0, 1.0), (0.75, 0.5)):
        out.append((f"local_pf r=2 γ={gamma:g} smooth=1 α={alpha:g}", 40,
                    partial(local, radius=2.0, noise=gamma, smoothing_radius=1.0,
                            smoothing_strength=alpha), {}))
    out.append(("local_pf r=2 γ=0 (no noise)", 40, partial(local, radius=2.0), {}))
    for N in (40, 80):
        out.append(("bootstrap_pf reg=1", N, partial(pf.bootstrap_pf, reg=1.0), {}))
    out.append(("letkf r=7.28 infl=1.04", 20,
                partial(enkit.letkf, state_coords=c, obs_coords=c, radius=7.28, distance=dist),
                {"inflation": 1.04}))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    K = 400 if args.quick else BURN + 1000
    burn = 100 if args.quick else BURN
    model = Lorenz96()
    R = enkit.Scalar(1.0, N_VARS)
    H = np.eye(N_VARS)
    tw = twin_experiment(model, 8.0 + np.random.default_rng(0).normal(size=N_VARS), key=1,
                         n_obs=K, h=H, R=R, spinup=500)
    truth = np.asarray(tw.truth)
    rows = []
    for name, N, scheme, kw in cases():
        E0 = np.asarray(tw.x0) + 2.0 * np.random.default_rng(2).normal(size=(N, N_VARS))
        rmses, times, ess = [], [], []
        for key in (3, 4):
            t = time.perf_counter()
            res = enkit.assimilate(model, E0, tw.observations, scheme, h=H, R=R, key=key,
                                   on_nonfinite="warn", **kw)
            jax.block_until_ready(res.analysis_mean)
            times.append(time.perf_counter() - t)
            e = np.sqrt(np.mean((np.asarray(res.analysis_mean) - truth) ** 2, axis=1))
            rmses.append(float(np.mean(e[burn:])) if np.all(np.isfinite(e)) else float("nan"))
            ess.append(float(np.mean(res.ess[burn:])) if res.ess is not None else float("nan"))
        row = (name, N, statistics.median(rmses), rmses, 1e3 * times[1] / K,
               times[0] - times[1], statistics.median(ess))
        rows.append(row)
        print(f"{name:36s} N={N:3d} RMSE {row[2]:.3f} ({rmses[0]:.3f}, {rmses[1]:.3f}) "
              f"{row[4]:.3f} ms/cycle, compile {row[5]:.1f} s, global ESS {row[6]:.2f}",
              flush=True)
    lines = [
        f"Lorenz-96 (n={N_VARS}, F=8, dt=0.05), every variable observed every step, R=I; "
        f"{K} cycles, RMSE over the last {K - burn}",
        "float32, 1 thread; median of 2 runs (keys 3, 4; both shown); ms/cycle: the second "
        "(compiled) run; compile: first minus second run",
        f"enkit (jax {jax.__version__}), numpy {np.__version__}",
        "",
        f"{'scheme':36s} {'N':>4s} {'RMSE':>7s} {'runs':>15s} {'ms/cycle':>9s} "
        f"{'compile s':>9s} {'global ESS':>10s}",
    ]
    for name, N, rmse, rmses, ms, comp, ess in rows:
        lines.append(f"{name:36s} {N:4d} {rmse:7.3f} {rmses[0]:7.3f} {rmses[1]:7.3f} "
                     f"{ms:9.3f} {comp:9.1f} {ess:10.2f}")
    clim = float(np.sqrt(np.mean(np.var(truth, axis=0))))
    lines += ["", "global ESS: time mean of the ESS of the untapered weights at each analysis "
              "(a particle scheme's `ess`; nan for the LETKF)",
              f"the truth's climatological spread (std about its time mean): {clim:.2f}; "
              f"a filter that has lost the truth scores about {np.sqrt(2) * clim:.1f}",
              "ms/cycle were measured on a shared 2-core machine with other jobs running: "
              "they swing by up to 2-3x between runs of the same case"]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        out = pathlib.Path(__file__).parent / "results" / "local_pf.txt"
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
