"""enkit vs DAPPER: the LETKF on Lorenz-96 with n = 40, 400 and 4,000.

Case: Lorenz-96 with n variables, F=8, RK4 with dt=0.05, every variable
observed every step with R=I; LETKF (Hunt, Kostelich & Szunyogh 2007) with
N=20 members, Gaspari–Cohn R-localisation and inflation 1.04 on the analysis
anomalies. One truth, one observation record and one initial ensemble are
made per n (with enkit, float64) and fed to both libraries.

Localisation conventions. DAPPER's ``LETKF(N, loc_rad, taper='GC')`` with
its ``nd_Id_localization`` on a periodic 1-D grid scales the radius so that
the taper is exp(−1/2) at ``loc_rad``: it evaluates Gaspari & Cohn (1999)
eq. 4.10 with length scale ``1.82 · loc_rad`` (support 3.64 · loc_rad) and
drops observations whose weight is below 1e-3 (``dapper/tools/localization.py``).
enkit is given ``radius = 1.82 · loc_rad`` with ``gaspari_cohn`` and the
periodic distance (it keeps every observation with a positive weight; the
ones DAPPER drops weigh < 1e-3). DAPPER groups grid points into batches that
share one local analysis, at their mean distance; its Lorenz-96 setting
(``mods/Lorenz96/sakov2008.py``) uses batches of 2. The RMSE comparison uses
batches of 1 (one local analysis per grid point, the same algorithm as
enkit's); the time of DAPPER's default batches of 2 is reported beside it.

Measured per n, each library in a fresh subprocess per run (so its peak
resident memory, VmHWM, is its own), at least twice, medians:
- time-mean analysis RMSE after burn-in;
- time per cycle of the whole run (forecast + analysis + inflation +
  per-cycle statistics), enkit excluding its compilation (reported apart);
- peak resident memory of the process (VmHWM), and its peak after the imports.

Thread settings: one thread for every library (OpenBLAS/MKL/OpenMP and XLA
set by one_thread.py, before NumPy and JAX load, and inherited by the subprocesses).
Writes benchmarks/results/vs_dapper_letkf.txt (not in ``--quick`` mode).

Run (DAPPER lives in its own environment, as its pins differ from enkit's):
    .venv-bench/bin/python benchmarks/vs_dapper_letkf.py            # full
    .venv-bench/bin/python benchmarks/vs_dapper_letkf.py --quick    # a smoke run
    .venv-bench/bin/python benchmarks/vs_dapper_letkf.py --published
The last is the published small-ensemble case (n=40, N=7, 8, 10, loc_rad 4,
inflation 1.04, 3,000 cycles): RMSE ≈ 0.22 for DAPPER's
``LETKF(N=7, rot=True, infl=1.04, loc_rad=4)`` (Bocquet 2011, Fig. 6, as
listed in DAPPER's ``mods/Lorenz96/sakov2008.py``).
"""

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

N_MEMBERS = 20
LOC_RAD = 4.0  # DAPPER's loc_rad, grid points
DAPPER_GC_SCALE = 1.82  # DAPPER: GC length scale = 1.82 · loc_rad
INFLATION = 1.04
F, DT = 8.0, 0.05


def peak_rss_mb():
    """Peak resident memory of this process so far, MiB.

    Linux's VmHWM (reset by exec, unlike ``ru_maxrss``, which a child inherits
    from its parent); ``ru_maxrss`` elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- the case


def make_case(n, cycles, seed, path, members=N_MEMBERS):
    """Truth, observations and initial ensemble for one n, saved to ``path``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import enkit

    model = enkit.Lorenz96(n=n, F=F, dt=DT)
    k1, k2, k3 = jax.random.split(jax.random.fold_in(jax.random.key(seed), n), 3)
    x0 = model.F + jax.random.normal(k1, (n,))
    twin = enkit.twin_experiment(model, x0, key=k2, n_obs=cycles, h=identity, R=1.0,
                                 spinup=1000)
    E0 = twin.x0 + jax.random.normal(k3, (members, n))
    np.savez(path, x0=np.asarray(twin.x0), truth=np.asarray(twin.truth),
             obs=np.asarray(twin.observations), E0=np.asarray(E0))


def identity(x):
    return x


# ---------------------------------------------------------------- workers


def worker_enkit(data, burn_in):
    import jax

    jax.config.update("jax_enable_x64", True)
    from functools import partial

    import jax.numpy as jnp

    import enkit
    from enkit.localization import gaspari_cohn, periodic_distance

    rss0 = peak_rss_mb()
    n = data["x0"].shape[0]
    model = enkit.Lorenz96(n=n, F=F, dt=DT)
    coords = np.arange(float(n))
    letkf = partial(enkit.letkf, state_coords=coords, obs_coords=coords,
                    radius=DAPPER_GC_SCALE * LOC_RAD, taper=gaspari_cohn,
                    distance=partial(periodic_distance, period=float(n)))
    R = enkit.Scalar(1.0, n)
    E0, ys = jnp.asarray(data["E0"]), jnp.asarray(data["obs"])

    def run():
        return jax.block_until_ready(enkit.assimilate(
            model, E0, ys, letkf, h=identity, R=R, inflation=INFLATION))

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = run()
    whole = time.perf_counter() - t0
    rmse = float(jnp.mean(res.rmse(jnp.asarray(data["truth"]))[burn_in:]))
    return {"rmse": rmse, "seconds": whole, "compile": max(first - whole, 0.0),
            "rss_imports": rss0, "rss_peak": peak_rss_mb()}


def worker_dapper(data, burn_in, batch, rot=False):
    import dapper.da_methods as da
    import dapper.mods as modelling
    from dapper.mods.Lorenz96 import step
    from dapper.tools import progressbar
    from dapper.tools.localization import nd_Id_localization

    progressbar.disable_progbar = True
    import dapper.mods.Lorenz96 as l96

    l96.Force = F  # DAPPER's module-level forcing (8 by default)
    rss0 = peak_rss_mb()
    n = data["x0"].shape[0]
    K = data["obs"].shape[0]
    E0 = np.array(data["E0"])
    tseq = modelling.Chronology(dt=DT, dko=1, Ko=K - 1, BurnIn=burn_in * DT)
    Dyn = {"M": n, "model": step, "noise": 0}
    Obs = modelling.partial_Id_Obs(n, np.arange(n))
    Obs["noise"] = 1
    Obs["localizer"] = nd_Id_localization((n,), (batch,))
    X0 = modelling.RV(M=n, func=lambda N: E0.copy())
    HMM = modelling.HiddenMarkovModel(Dyn, Obs, tseq, X0)
    xx = np.vstack([data["x0"], data["truth"]])
    yy = np.asarray(data["obs"])
    xp = da.LETKF(N=E0.shape[0], loc_rad=LOC_RAD, taper="GC", infl=INFLATION, rot=rot)
    t0 = time.perf_counter()
    xp.assimilate(HMM, xx, yy, liveplots=False)
    seconds = time.perf_counter() - t0
    xp.stats.average_in_time()
    import dapper

    return {"rmse": float(xp.avrgs.err.rms.a.val), "seconds": seconds,
            "rss_imports": rss0, "rss_peak": peak_rss_mb(), "version": dapper.__version__}


def spawn(kind, data_path, burn_in):
    """One run of ``kind`` in a fresh interpreter; returns its result dict.

    kind: "enkit", "dapper1" / "dapper2" (DAPPER, batches of 1 / 2 points),
    "dapper2rot" (batches of 2 with random rotations)."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--data", str(data_path),
         "--burn-in", str(burn_in)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs, field):
    return statistics.median(r[field] for r in runs)


# ---------------------------------------------------------------- main


def published(args):
    """Lorenz-96 n=40, N = 7, 8, 10, loc_rad 4, inflation 1.04: the LETKF's
    published accuracy (Bocquet 2011, Fig. 6; DAPPER's sakov2008.py lists
    ``LETKF(N=7, rot=True, infl=1.04, loc_rad=4)`` at RMSE 0.22)."""
    K = args.cycles[0] if args.cycles != [3000, 1000, 200] else 3000
    burn_in = int(args.burn_in * K)
    lines = [(f"Lorenz-96 n=40, obs every 0.05, R=I, LETKF loc_rad={LOC_RAD:g} "
             f"(enkit radius {DAPPER_GC_SCALE * LOC_RAD:g}), inflation {INFLATION}, "
             f"{K} cycles, burn-in {burn_in}; median of {args.repeats}"),
             f"{'N':>4}{'enkit':>10}{'DAPPER b1':>11}{'DAPPER b2 rot':>15}"]
    with tempfile.TemporaryDirectory() as tmp:
        for N in (7, 8, 10):
            path = pathlib.Path(tmp) / f"l96_40_{N}.npz"
            make_case(40, K, args.seed, path, members=N)
            r = {kind: median_of([spawn(kind, path, burn_in) for _ in range(args.repeats)],
                                 "rmse") for kind in ("enkit", "dapper1", "dapper2rot")}
            lines.append(f"{N:>4}{r['enkit']:>10.4f}{r['dapper1']:>11.4f}"
                         f"{r['dapper2rot']:>15.4f}")
            print(lines[-1], flush=True)
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 400, 4000])
    parser.add_argument("--cycles", type=int, nargs="+", default=[3000, 1000, 200],
                        help="cycles per size (one value, or one per size)")
    parser.add_argument("--burn-in", type=float, default=0.2,
                        help="fraction of the cycles left out of the time mean")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-batch2", action="store_true",
                        help="skip DAPPER with its default Lorenz-96 batches of 2")
    parser.add_argument("--quick", action="store_true",
                        help="n = 40 and 400, 60 cycles, one run each; writes nothing")
    parser.add_argument("--published", action="store_true",
                        help="instead: the published small-ensemble case, n=40, N=7, 8, 10")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "vs_dapper_letkf.txt"),
                        help="where the table is written (not in --quick mode)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        data = dict(np.load(args.data))
        burn_in = int(args.burn_in)
        if args.worker == "enkit":
            res = worker_enkit(data, burn_in)
        else:
            res = worker_dapper(data, burn_in, batch=int(args.worker[6]),
                                rot=args.worker.endswith("rot"))
        print(json.dumps(res))
        return

    if args.published:
        published(args)
        return
    if args.quick:
        args.sizes, args.cycles, args.repeats = [40, 400], [60], 1
    cycles = args.cycles * len(args.sizes) if len(args.cycles) == 1 else args.cycles
    if len(cycles) != len(args.sizes):
        parser.error("--cycles takes one value or one per size")
    kinds = ["enkit", "dapper1"] + ([] if args.no_batch2 else ["dapper2"])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, K in zip(args.sizes, cycles):
            path = pathlib.Path(tmp) / f"l96_{n}.npz"
            make_case(n, K, args.seed, path)
            burn_in = int(args.burn_in * K)
            runs = {kind: [spawn(kind, path, burn_in) for _ in range(args.repeats)]
                    for kind in kinds}
            rows.append((n, K, burn_in, runs))
            print(f"n={n}: " + ", ".join(
                f"{kind} rmse {median_of(r, 'rmse'):.4f} "
                f"{1e3 * median_of(r, 'seconds') / K:.3f} ms/cycle"
                for kind, r in runs.items()), flush=True)

    import jax

    import enkit

    version = rows[0][3]["dapper1"][0]["version"]
    lines = [
        (f"Lorenz-96 (F={F:g}, dt={DT:g}, every variable observed every step, R=I), "
        f"LETKF N={N_MEMBERS}, inflation {INFLATION}"),
        (f"Gaspari-Cohn localisation: DAPPER loc_rad={LOC_RAD:g} (its batches of 1 point), "
        f"enkit radius={DAPPER_GC_SCALE * LOC_RAD:g} (= {DAPPER_GC_SCALE} x loc_rad)"),
        (f"float64, 1 thread everywhere, median of {args.repeats} runs, each in a fresh "
        "process; same truth, observations and initial ensemble for both"),
        (f"enkit {enkit.__version__} (jax {jax.__version__}), DAPPER {version}, "
        f"numpy {np.__version__}"),
        "",
        f"{'n':>6}{'cycles':>8}{'RMSE enkit':>12}{'DAPPER':>9}{'diff %':>8}"
        f"{'ms/cycle enkit':>16}{'DAPPER':>10}{'ratio':>8}"
        + (f"{'DAPPER b2':>11}{'ratio':>8}" if "dapper2" in kinds else "")
        + f"{'compile s':>11}{'peak MiB enkit':>16}{'DAPPER':>8}",
    ]
    for n, K, burn_in, runs in rows:
        e, d = runs["enkit"], runs["dapper1"]
        e_ms, d_ms = (1e3 * median_of(r, "seconds") / K for r in (e, d))
        e_rmse, d_rmse = median_of(e, "rmse"), median_of(d, "rmse")
        line = (f"{n:>6}{K:>8}{e_rmse:>12.4f}{d_rmse:>9.4f}"
                f"{100 * (e_rmse - d_rmse) / d_rmse:>+8.2f}"
                f"{e_ms:>16.3f}{d_ms:>10.2f}{d_ms / e_ms:>7.1f}x")
        if "dapper2" in kinds:
            b_ms = 1e3 * median_of(runs["dapper2"], "seconds") / K
            line += f"{b_ms:>11.2f}{b_ms / e_ms:>7.1f}x"
        line += (f"{median_of(e, 'compile'):>11.2f}{median_of(e, 'rss_peak'):>16.0f}"
                 f"{median_of(d, 'rss_peak'):>8.0f}")
        lines.append(line)
    lines.append("")
    if "dapper2" in kinds:
        lines.append("DAPPER b2: its Lorenz-96 default, one local analysis per 2 grid "
                     "points; RMSE " + ", ".join(
                         f"n={n}: {median_of(runs['dapper2'], 'rmse'):.4f}"
                         for n, _, _, runs in rows))
    lines.append("peak MiB: peak resident memory of the whole process; after the imports "
                 "alone: enkit " + ", ".join(
                     f"{median_of(r['enkit'], 'rss_imports'):.0f}" for *_, r in rows)
                 + ", DAPPER " + ", ".join(
                     f"{median_of(r['dapper1'], 'rss_imports'):.0f}" for *_, r in rows))
    if len(rows) > 1:  # growth of the time per cycle with n: slope in log-log
        ns = np.log([r[0] for r in rows])
        for kind, label in (("enkit", "enkit"), ("dapper1", "DAPPER")):
            ts = np.log([1e3 * median_of(r[3][kind], "seconds") / r[1] for r in rows])
            slope = np.polyfit(ns, ts, 1)[0]
            lines.append(f"time per cycle ~ n^{slope:.2f} ({label}, least squares over "
                         "the sizes; 1 = linear)")
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
