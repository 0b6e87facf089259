"""Evidence for docs/choosing.md: which filter or smoother for which problem.

All runs are enkit's own (no other library), float64, one thread, on the
standard twin experiments of ``enkit.models.cases``:

A. Lag sweep. Lorenz-96 (Sakov & Oke 2008: n=40, F=8, dt=0.05, all observed
   every step, R=I), ETKF N=20, inflation 1.04: filter and smoothed RMSE and
   ms per cycle of ``enks(..., lag=L)`` for L = 0, 1, 2, 5, 10, 20 analysis
   times (and the plain filter, ``assimilate``, for its cost).
B. EnKS vs EnRTS over a 500-cycle window (100 burn-in): ``enks`` fixed lag
   20 and whole window (lag=None) against ``ensemble_rts``,
   - without model error, N=20, inflation 1.04;
   - with model error: the truth gets N(0, q I) added after every model step,
     q = 0.001, and the ensemble the same (``model_noise=q I``), no
     inflation, N=40 (N − 1 ≤ n) and N=60 (N − 1 > n).
   EnRTS with enkit's defaults, with ``decorrelation=0.9`` and with
   ``energy=None`` (no truncation); the largest difference of its smoothed
   mean from the whole-window EnKS's; and the smoothed RMSE against the
   distance from the end of the window.
C. Filters for reference on Lorenz-96 (3,000 cycles): ETKF (N=40 and 20),
   DEnKF, serial EnSRF (N=20), and N=10, where the global ETKF fails and the
   LETKF (Gaspari–Cohn R-localisation, radius 7.28 = DAPPER's loc_rad 4 ×
   1.82, periodic distance) does not.
D. Nonlinearity. Lorenz-63 (Sakov, Oliver & Bertino 2012: dt 0.01, all
   observed every 25 steps, R=2I), N=10: ETKF with random rotations and
   inflation 1.02, its EnKS with lags 1 and 2, and the IEnKF
   (``over_window(ienkf)``), inflation 1.02.

Every case is run for seeds 0 and 1 (different truth, observations and
initial ensemble); RMSEs are the mean over the two seeds of the time-mean
RMSE after burn-in; times are the median of the timed runs (each seed five
times in A, twice elsewhere, after a first call that compiles). Thread settings: one thread
(OpenBLAS/MKL/OpenMP and XLA set by one_thread.py, before NumPy and JAX load). Writes
benchmarks/results/smoother_guide.txt and smoother_guide.png.

Run:  ./dev python benchmarks/smoother_guide.py [--cycles 3000] [--burn-in 500]
"""

import os

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the script's own choice

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import enkit  # noqa: E402
from enkit.localization import gaspari_cohn, periodic_distance  # noqa: E402
from enkit.models.cases import sakov2008_lorenz96, sakov2012_lorenz63  # noqa: E402

SEEDS = (0, 1)
LAGS = (0, 1, 2, 5, 10, 20)
Q_NOISE = 0.001
WINDOW, WINDOW_BURN = 500, 100


def measure(run, data, repeats=2):
    """Run ``run(d)`` for each d in data, ``repeats`` times each, after a
    first call that compiles; return (results, median seconds of the timed
    runs, compile seconds)."""
    t0 = time.perf_counter()
    jax.block_until_ready(run(data[0]))
    first = time.perf_counter() - t0
    results, times = [], []
    for d in data:
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = jax.block_until_ready(run(d))
            times.append(time.perf_counter() - t0)
        results.append(res)
    sec = statistics.median(times)
    return results, sec, max(first - sec, 0.0)


def tmean(series, burn_in):
    return float(jnp.mean(series[burn_in:]))


def twins(case, cycles, N):
    out = []
    for s in SEEDS:
        tw = case.twin(s, cycles)
        out.append((tw, case.initial_ensemble(tw, N, s), s))
    return out


def noisy_twin(case, q, cycles, N, seed):
    """Truth with N(0, q I) added after every model step, its observations and
    an initial ensemble (x0 + N(0, I))."""
    key, k_obs, k_ens = jax.random.split(jax.random.fold_in(jax.random.key(seed), 11), 3)
    x0 = case.twin(seed, 1).x0

    def step(x, k):
        x = case.model(x) + jnp.sqrt(q) * jax.random.normal(jax.random.fold_in(key, k), x.shape)
        return x, x

    _, truth = jax.lax.scan(step, x0, jnp.arange(cycles))
    obs = truth + case.R.sample(k_obs, (cycles,))
    E0 = x0 + jax.random.normal(k_ens, (N, x0.shape[0]))
    return enkit.TwinExperiment(x0, truth, obs, None), E0, seed


# ---------------------------------------------------------------- A: lag sweep


def lag_sweep(case, cycles, burn_in):
    data = twins(case, cycles, 20)
    opts = dict(h=case.h, R=case.R, inflation=1.04)
    rows = []
    filt, sec, comp = measure(lambda d: enkit.assimilate(
        case.model, d[1], d[0].observations, enkit.etkf, **opts), data, repeats=5)
    rows.append(dict(lag="filter", filter=np.mean([tmean(r.rmse(d[0].truth), burn_in)
                                                   for r, d in zip(filt, data)]),
                     smoothed=float("nan"), ms=1e3 * sec / cycles, compile=comp))
    for L in LAGS:
        res, sec, comp = measure(lambda d, L=L: enkit.enks(
            case.model, d[1], d[0].observations, enkit.etkf, lag=L, **opts), data, repeats=5)
        rows.append(dict(
            lag=L, filter=np.mean([tmean(r.rmse(d[0].truth), burn_in) for r, d in zip(res, data)]),
            smoothed=np.mean([tmean(r.smoothed_rmse(d[0].truth), burn_in)
                              for r, d in zip(res, data)]),
            ms=1e3 * sec / cycles, compile=comp))
        print(f"A lag {L}: {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------- B: EnKS vs EnRTS


def enks_vs_rts(case):
    settings = [
        ("no model error, N=20, infl 1.04", 0.0, 20, 1.04),
        (f"model error q={Q_NOISE:g}, N=40, no infl", Q_NOISE, 40, None),
        (f"model error q={Q_NOISE:g}, N=60, no infl", Q_NOISE, 60, None),
    ]
    out = []
    for label, q, N, infl in settings:
        if q:
            data = [noisy_twin(case, q, WINDOW, N, s) for s in SEEDS]
        else:
            data = twins(case, WINDOW, N)
        opts = dict(h=case.h, R=case.R, inflation=infl, key=3)
        if q:
            opts["model_noise"] = enkit.Scalar(q, 40)
        methods = {
            "EnKS lag 20": lambda d: enkit.enks(case.model, d[1], d[0].observations,
                                                enkit.etkf, lag=20, **opts),
            "EnKS whole": lambda d: enkit.enks(case.model, d[1], d[0].observations,
                                               enkit.etkf, lag=None, **opts),
            "EnRTS": lambda d: enkit.ensemble_rts(case.model, d[1], d[0].observations,
                                                  enkit.etkf, **opts),
            "EnRTS c=0.9": lambda d: enkit.ensemble_rts(case.model, d[1], d[0].observations,
                                                        enkit.etkf, decorrelation=0.9, **opts),
            "EnRTS untruncated": lambda d: enkit.ensemble_rts(
                case.model, d[1], d[0].observations, enkit.etkf, energy=None, **opts),
        }
        row = dict(label=label, N=N)
        for name, run in methods.items():
            res, sec, comp = measure(run, data)
            row["filter"] = np.mean([tmean(r.rmse(d[0].truth), WINDOW_BURN)
                                     for r, d in zip(res, data)])
            row[name] = np.mean([tmean(r.smoothed_rmse(d[0].truth), WINDOW_BURN)
                                 for r, d in zip(res, data)])
            row[name + " ms"] = 1e3 * sec / WINDOW
            # smoothed RMSE against the distance from the window's end (seed mean)
            row[name + " curve"] = np.mean([np.asarray(r.smoothed_rmse(d[0].truth))[::-1]
                                            for r, d in zip(res, data)], axis=0)
            if name == "EnKS whole":
                row["max |EnRTS - EnKS|"] = None
                whole = res
            if name in ("EnRTS", "EnRTS untruncated"):
                row[f"max |{name} - EnKS|"] = max(
                    float(jnp.max(jnp.abs(r.smoothed_mean - w.smoothed_mean)))
                    for r, w in zip(res, whole))
        out.append(row)
        print(f"B {label}: filter {row['filter']:.4f} " + ", ".join(
            f"{m} {row[m]:.4f}" for m in methods) + f", max diff {row['max |EnRTS - EnKS|']:.1e}"
            f" (untruncated {row['max |EnRTS untruncated - EnKS|']:.1e})", flush=True)
    return out


# ---------------------------------------------------------------- C, D: filters, nonlinearity


def letkf_scheme(n):
    coords = np.arange(float(n))
    return partial(enkit.letkf, state_coords=coords, obs_coords=coords, radius=1.82 * 4.0,
                   taper=gaspari_cohn, distance=partial(periodic_distance, period=float(n)))


def filters(case, cycles, burn_in):
    runs = [
        ("ETKF", enkit.etkf, 40, 1.02),
        ("ETKF", enkit.etkf, 20, 1.04),
        ("DEnKF", enkit.denkf, 20, 1.04),
        ("serial EnSRF", enkit.ensrf_serial, 20, 1.04),
        ("ETKF", enkit.etkf, 10, 1.04),
        ("LETKF r=7.28", letkf_scheme(40), 10, 1.04),
    ]
    rows = []
    for label, scheme, N, infl in runs:
        data = twins(case, cycles, N)
        res, sec, comp = measure(lambda d, scheme=scheme, infl=infl: enkit.assimilate(
            case.model, d[1], d[0].observations, scheme, h=case.h, R=case.R,
            inflation=infl), data)
        rows.append(dict(label=f"{label} N={N}", infl=infl,
                         filter=np.mean([tmean(r.rmse(d[0].truth), burn_in)
                                         for r, d in zip(res, data)]),
                         ms=1e3 * sec / cycles))
        print(f"C {rows[-1]}", flush=True)
    return rows


def nonlinear(cycles, burn_in):
    case = sakov2012_lorenz63()
    data = twins(case, cycles, 10)
    rows = []

    def opts(d):
        return dict(h=case.h, R=case.R, inflation=1.02, steps_per_obs=case.steps_per_obs,
                    key=jax.random.fold_in(jax.random.key(d[2]), 2))

    runs = [
        ("ETKF + rotation (filter)", None,
         lambda d: enkit.assimilate(case.model, d[1], d[0].observations, enkit.etkf_rotated,
                                    **opts(d))),
        ("ETKF + rotation, EnKS lag 1", 1,
         lambda d: enkit.enks(case.model, d[1], d[0].observations, enkit.etkf_rotated,
                              lag=1, **opts(d))),
        ("ETKF + rotation, EnKS lag 2", 2,
         lambda d: enkit.enks(case.model, d[1], d[0].observations, enkit.etkf_rotated,
                              lag=2, **opts(d))),
        ("IEnKF, over_window(ienkf)", None,
         lambda d: enkit.assimilate(case.model, d[1], d[0].observations,
                                    enkit.over_window(enkit.ienkf), **opts(d))),
    ]
    for label, lag, run in runs:
        res, sec, comp = measure(run, data)
        row = dict(label=label, filter=np.mean([tmean(r.rmse(d[0].truth), burn_in)
                                                for r, d in zip(res, data)]),
                   smoothed=float("nan"), ms=1e3 * sec / cycles)
        if lag is not None:
            row["smoothed"] = np.mean([tmean(r.smoothed_rmse(d[0].truth), burn_in)
                                       for r, d in zip(res, data)])
        rows.append(row)
        print(f"D {row}", flush=True)
    return rows


# ---------------------------------------------------------------- figure


def figure(A, B, C, D, path):
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    lagged = [r for r in A if r["lag"] != "filter"]
    lags = [r["lag"] for r in lagged]
    ax = axes[0, 0]
    ax.plot(lags, [r["smoothed"] for r in lagged], "o-", label="EnKS smoothed")
    ax.plot(lags, [r["filter"] for r in lagged], "s--", color="grey",
            label="filter (analysis)")
    ax.set_xlabel("lag L (analysis times; 1 = 0.05 time units)")
    ax.set_ylabel("time-mean RMSE")
    ax.set_title("(a) Lorenz-96, ETKF N=20, infl 1.04: RMSE vs lag")
    ax.set_xticks(lags)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend()

    ax = axes[0, 1]
    ax.plot(lags, [r["ms"] for r in lagged], "o-", label="enks(lag=L)")
    ax.axhline(A[0]["ms"], color="grey", ls="--", label="filter alone (assimilate)")
    ax.set_xlabel("lag L (analysis times)")
    ax.set_ylabel("ms per cycle (1 thread, compile excluded)")
    ax.set_title("(b) cost per cycle vs lag (N=20, n=40)")
    ax.set_xticks(lags)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.legend()

    ax = axes[1, 0]
    colours = ["C3", "C0", "C2"]
    for row, c in zip(B, colours):
        box = np.ones(10) / 10  # 10-point running mean, for legibility
        d = np.arange(WINDOW - 9)
        ax.semilogy(d, np.convolve(row["EnRTS curve"], box, "valid"), "-", color=c, lw=1.2,
                    label=f"EnRTS, {row['label']}")
        ax.semilogy(d, np.convolve(row["EnKS lag 20 curve"], box, "valid"), ":", color=c,
                    lw=1.8, label=f"EnKS lag 20, {row['label']}")
        if row is B[0]:
            ax.semilogy(d, np.convolve(row["EnRTS c=0.9 curve"], box, "valid"), "--", color=c,
                        lw=1.2, label=f"EnRTS decorrelation=0.9, {row['label']}")
    ax.set_xlabel("distance from the end of the window (analysis times)")
    ax.set_ylabel("smoothed RMSE (2 seeds, 10-point mean, log)")
    ax.set_title(f"(c) EnRTS vs EnKS over a {WINDOW}-cycle window")
    ax.set_ylim(4e-2, 1e7)  # room for the legend above the curves
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="upper left")

    ax = axes[1, 1]
    labels, values, colours = [], [], []
    for r in C:
        labels.append(f"L96 {r['label']}, infl {r['infl']}")
        values.append(r["filter"])
        colours.append("C2" if "LETKF" in r["label"] else "C0")
    best = max((r for r in A if r["lag"] != "filter"), key=lambda r: r["lag"])
    labels.append(f"L96 EnKS lag {best['lag']} (ETKF N=20), smoothed")
    values.append(best["smoothed"])
    colours.append("C1")
    for r in D:
        if np.isnan(r["smoothed"]):
            labels.append(f"L63 N=10 {r['label']}")
            values.append(r["filter"])
            colours.append("C4" if "IEnKF" in r["label"] else "C0")
        else:
            labels.append(f"L63 N=10 {r['label']}, smoothed")
            values.append(r["smoothed"])
            colours.append("C1")
    y = np.arange(len(labels))[::-1]
    ax.barh(y, np.minimum(values, 1.0), color=colours)
    for yi, v in zip(y, values):
        ax.text(min(v, 1.0) + 0.01, yi, f"{v:.3f}" if v < 1 else f"{v:.1f} (diverged)",
                va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(0, 1.3)
    ax.set_xlabel("time-mean RMSE (bars cut at 1)")
    ax.set_title("(d) filters and smoothers, time-mean RMSE")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="C0", label="global filter"),
                       Patch(color="C2", label="localised filter"),
                       Patch(color="C4", label="iterative filter"),
                       Patch(color="C1", label="smoother")], fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.suptitle("enkit: which filter or smoother (twin experiments, float64, 1 thread, "
                 "2 seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "smoother_guide"))
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    case = sakov2008_lorenz96()
    A = lag_sweep(case, args.cycles, args.burn_in)
    B = enks_vs_rts(case)
    C = filters(case, args.cycles, args.burn_in)
    D = nonlinear(args.cycles, args.burn_in)
    wall = time.perf_counter() - t_start

    lines = [
        "Which filter or smoother: enkit twin experiments, float64, 1 thread; RMSE: mean over "
        "seeds 0 and 1 of the time-mean after burn-in; ms/cycle: median of the timed runs "
        "(10 in A, 4 elsewhere), compile excluded",
        f"enkit {enkit.__version__} (jax {jax.__version__}); 1-min load average "
        f"{load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end (2 cores); "
        f"whole script {wall:.0f} s",
        "",
        f"A. Lorenz-96 (Sakov & Oke 2008), ETKF N=20, inflation 1.04, {args.cycles} cycles, "
        f"burn-in {args.burn_in}: enks(lag=L)",
        f"{'lag':>8}{'filter RMSE':>13}{'smoothed RMSE':>15}{'ms/cycle':>10}{'compile s':>11}",
    ]
    for r in A:
        sm = "" if r["lag"] == "filter" else f"{r['smoothed']:.4f}"
        lines.append(f"{r['lag']!s:>8}{r['filter']:>13.4f}{sm:>15}{r['ms']:>10.3f}"
                     f"{r['compile']:>11.2f}")
    lines += [
        "",
        f"B. EnKS vs EnRTS, Lorenz-96, ETKF, {WINDOW} cycles, burn-in {WINDOW_BURN}; model error: "
        "N(0, q I) after every model step in the truth and the ensemble",
        f"{'':<38}{'':>8}{'smoothed RMSE':^47}{'max |EnRTS - EnKS whole|':^28}"
        f"{'ms per cycle':^24}",
        f"{'':<38}{'filter':>8}{'EnKS L=20':>11}{'EnKS whole':>12}{'EnRTS':>12}{'EnRTS c=0.9':>12}"
        f"{'default':>14}{'energy=None':>14}{'EnKS L=20':>10}{'whole':>7}{'EnRTS':>7}",
    ]
    for r in B:
        lines.append(f"{r['label']:<38}{r['filter']:>8.4f}{r['EnKS lag 20']:>11.4f}"
                     f"{r['EnKS whole']:>12.4f}{r['EnRTS']:>12.4g}{r['EnRTS c=0.9']:>12.4g}"
                     f"{r['max |EnRTS - EnKS|']:>14.1e}{r['max |EnRTS untruncated - EnKS|']:>14.1e}"
                     f"{r['EnKS lag 20 ms']:>10.3f}{r['EnKS whole ms']:>7.2f}{r['EnRTS ms']:>7.3f}")
    lines.append("EnRTS: enkit's defaults (energy=0.99999, decorrelation=1); c=0.9: "
                 "decorrelation=0.9; energy=None: no truncation of the pseudo-inverse.")
    lines.append("EnRTS smoothed RMSE by distance from the window's end (0-49, 100-149, "
                 "200-249, 400-499 analysis times):")
    for r in B:
        c = r["EnRTS curve"]
        lines.append(f"  {r['label']:<38}" + "  ".join(
            f"{np.mean(c[a:b]):.3g}" for a, b in ((0, 50), (100, 150), (200, 250), (400, 500))))
    lines += [
        "",
        f"C. Filters, Lorenz-96 (Sakov & Oke 2008), {args.cycles} cycles, burn-in {args.burn_in}",
        f"{'':<26}{'infl':>6}{'RMSE':>9}{'ms/cycle':>10}",
    ]
    for r in C:
        lines.append(f"{r['label']:<26}{r['infl']:>6}{r['filter']:>9.4f}{r['ms']:>10.3f}")
    lines += [
        "",
        f"D. Nonlinearity: Lorenz-63 (Sakov et al. 2012: obs every 25 steps, R=2I), N=10, "
        f"inflation 1.02, {args.cycles} cycles, burn-in {args.burn_in}",
        f"{'':<32}{'filter':>8}{'smoothed':>10}{'ms/cycle':>10}",
    ]
    for r in D:
        sm = "" if np.isnan(r["smoothed"]) else f"{r['smoothed']:.4f}"
        lines.append(f"{r['label']:<32}{r['filter']:>8.4f}{sm:>10}{r['ms']:>10.3f}")
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(args.out)
    out.with_suffix(".txt").write_text(text + "\n")
    figure(A, B, C, D, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
