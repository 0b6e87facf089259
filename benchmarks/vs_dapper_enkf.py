"""enkit vs DAPPER: the stochastic (perturbed-observation) EnKF on Lorenz-96.

Case: the twin experiment of Sakov & Oke (2008) as in ``vs_dapper.py``:
n=40, F=8, RK4 with dt=0.05, every variable observed every step with R=I,
N=40, inflation 1.06 on the analysis anomalies (DAPPER's
``EnKF('PertObs', N=40, infl=1.06)``, listed at RMSE 0.22 in its
``mods/Lorenz96/sakov2008.py``). One truth and one observation record per
seed are made with enkit (float64) and fed to both libraries; each library
draws its own initial ensemble spread and perturbations (DAPPER seeded with
its ``set_seed``), so per-seed RMSEs differ by Monte Carlo error and the
mean over seeds is the comparison.

Conventions. DAPPER's PertObs analysis (``dapper/da_methods/ensemble.py``)
draws ``D ~ N(0, R)``, removes the sample mean of the draws (``mean0``, no
rescaling), and solves with ``C = Yᵀ Y + (N − 1) R`` on unscaled anomalies,
which is enkit's ``C = Yᵀ Y + R`` on anomalies scaled by 1/sqrt(N − 1): the
same gain. enkit's ``enkf`` keeps the uncentred draws of Burgers et al.
(1998) by default; ``center_perturbations=True`` is DAPPER's convention.
Both are run, over several seeds, each seed with its own truth.

Measured (medians of --repeats runs):
- time-mean analysis RMSE after burn-in, per seed and its mean;
- whole run, ms per cycle, statistics off: enkit's ``assimilate`` storing
  only the analysis mean (the least it keeps), excluding compilation;
  DAPPER's EnKF loop as ``EnKF.assimilate`` runs it (forecast, ``Obs``,
  ``EnKF_analysis``, ``post_process``) without its statistics;
- DAPPER's ``xp.assimilate`` with its default statistics (beside it);
- enkit's ETKF (``vs_dapper.py``'s case, inflation 1.02) for the cost per
  cycle of the deterministic scheme on the same machine.

Where enkit's time goes. An earlier profile (2,000 cycles, pieces replaced
by stand-ins, load 4.6) put two thirds of the cycle in the perturbation
draws: JAX lowers its threefry2x32 hash on CPU as a rolled loop (five
iterations of four rounds), whose per-iteration overhead dominates at 1,600
numbers per cycle; the observation-space Cholesky solve ("auto" at m = N)
and the update products were about 0.02 ms, the ensemble-space solve no
cheaper. enkit now makes the hash written out (``enkit._random``, the same
bits as JAX's); the row "JAX's rolled threefry" is that former path (float64
draws through jax.random.normal's own lowering), kept by a stand-in for the
comparison. Of what was left, the float64 uniform-to-normal transform
(erf⁻¹) was the largest piece (about 2.5 times the hash at N = m = 40), so
enkf now draws its standard normals in float32 by default
(``enkit.DEFAULT_DRAW_DTYPE``; the perturbations are colourised in float64);
the row "float64 draws" is ``draw_dtype=None``, the former default, and the
last RMSE column its RMSE (the same truths; its own numbers).

Thread settings: one thread for both (OpenBLAS/MKL/OpenMP and XLA set by one_thread.py,
before NumPy and JAX load). The 1-minute load average is printed beside the
timings. Writes benchmarks/results/vs_dapper_enkf.txt.

Run (DAPPER lives in its own environment, as its pins differ from enkit's):
    .venv-bench/bin/python benchmarks/vs_dapper_enkf.py [--cycles 3000] [--seeds 4]
(results/vs_dapper_enkf.txt: --seeds 8 --repeats 5)
"""

import os

import one_thread  # first: one thread for NumPy and XLA

import argparse  # noqa: E402
import functools  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the benchmark script's own choice

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import enkit  # noqa: E402
from vs_dapper import identity, make_twin  # noqa: E402  (the same truths as vs_dapper.py)

INFL = 1.06


def load():
    return os.getloadavg()[0]


def timed(run, repeats):
    """(last result, median seconds, compile seconds, load averages)."""
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times, loads = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = run()
        times.append(time.perf_counter() - t0)
        loads.append(load())
    whole = statistics.median(times)
    return res, whole, max(first - whole, 0.0), loads


def run_enkit(model, twin, E0, scheme, infl, seed, repeats, burn_in):
    R = enkit.Scalar(1.0, 40)

    def run():
        return jax.block_until_ready(enkit.assimilate(
            model, E0, twin.observations, scheme, h=identity, R=R, key=seed,
            inflation=infl, store=("analysis_mean",)))

    res, whole, compile_s, loads = timed(run, repeats)
    return analysis_rmse(res, twin, burn_in), whole, compile_s, loads


def analysis_rmse(res, twin, burn_in):
    """The time-averaged RMSE of an enkit run's analysis means after burn_in."""
    err = res.analysis_mean - twin.truth
    return float(jnp.mean(jnp.sqrt(jnp.mean(err**2, axis=1))[burn_in:]))


def enkit_run(model, twin, E0, scheme, infl, seed):
    """One whole enkit run (compiled on its first call)."""
    R = enkit.Scalar(1.0, 40)
    return lambda: jax.block_until_ready(enkit.assimilate(
        model, E0, twin.observations, scheme, h=identity, R=R, key=seed,
        inflation=infl, store=("analysis_mean",)))


def interleaved(runs, rounds, min_seconds=1.0):
    """Each run of ``runs`` (name -> callable) timed once per round, in turn,
    after one warm-up call each: {name: (median seconds per call, load
    averages)}, so every library and variant sees the same spells of load.

    One timing is a window of back-to-back calls lasting at least
    ``min_seconds`` (its seconds per call), so that a fast run and a slow one
    sample the scheduler alike. On a loaded 2-core machine (2 busy loops)
    a single 80 ms enkit run got either half a core or a whole one, depending
    on whether it shared its core with a busy loop at the time (CPU/wall time
    0.50-0.55 in 9 of 12 runs, 0.95-1.00 in 3), while a 1.3 s DAPPER run
    averaged the fair share (0.63-0.74); in windows of at least 1 s both
    measured 0.57-0.78."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    loads = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            calls, t0 = 0, time.perf_counter()
            while True:
                run()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    break
            times[name].append(elapsed / calls)
            loads[name].append(load())
    return {name: (statistics.median(times[name]), loads[name]) for name in runs}


def dapper_hmm(twin, burn_in):
    import dapper.mods as modelling
    from dapper.mods.Lorenz96 import sakov2008

    K = twin.observations.shape[0]
    HMM = sakov2008.HMM.copy()
    HMM.tseq = modelling.Chronology(dt=0.05, dko=1, Ko=K - 1, BurnIn=burn_in * 0.05)
    HMM.X0 = modelling.GaussRV(C=1.0, mu=np.asarray(twin.x0))
    return HMM


def run_dapper(twin, E0, burn_in, repeats, seed, center=True):
    """DAPPER's ``xp.assimilate`` (its default statistics): RMSE and time.
    ``center=False`` runs it with its ``mean0`` of the perturbations made the
    identity (uncentred draws, everything else DAPPER's own)."""
    import dapper.da_methods as da
    import dapper.da_methods.ensemble as dapper_ensemble
    import dapper.tools.progressbar as progressbar
    from dapper.tools.seeding import set_seed

    centre = dapper_ensemble.mean0
    if not center:
        dapper_ensemble.mean0 = lambda a, axis=0: a

    progressbar.disable_progbar = True
    HMM = dapper_hmm(twin, burn_in)
    xx = np.vstack([np.asarray(twin.x0), np.asarray(twin.truth)])
    yy = np.asarray(twin.observations)
    times, rmses, loads = [], [], []
    for _ in range(repeats):
        xp = da.EnKF("PertObs", N=40, infl=INFL)
        set_seed(seed + 1)  # DAPPER draws from its own generator (dapper.tools.seeding)
        t0 = time.perf_counter()
        xp.assimilate(HMM, xx, yy, liveplots=False)
        times.append(time.perf_counter() - t0)
        loads.append(load())
        xp.stats.average_in_time()
        rmses.append(float(xp.avrgs.err.rms.a.val))
    dapper_ensemble.mean0 = centre
    return statistics.median(rmses), statistics.median(times), loads


def dapper_loop(twin, E0, burn_in, repeats, seed, upd_a="PertObs", infl=INFL):
    """DAPPER's EnKF cycle as ``EnKF.assimilate`` runs it, statistics off:
    forecast, observe, ``EnKF_analysis(upd_a)``, ``post_process`` with
    inflation ``infl``: (median seconds, loads)."""
    from dapper.da_methods.ensemble import EnKF_analysis, post_process
    from dapper.tools.seeding import set_seed

    HMM = dapper_hmm(twin, burn_in)
    yy = np.asarray(twin.observations)
    Obs = HMM.Obs(0)
    times, loads = [], []
    for _ in range(repeats):
        set_seed(seed + 1)
        E = np.asarray(E0).copy()
        t0 = time.perf_counter()
        for k, y in enumerate(yy):
            E = HMM.Dyn(E, k * 0.05, 0.05)
            E = EnKF_analysis(E, Obs(E), Obs.noise, y, upd_a)
            E = post_process(E, infl, False)
        times.append(time.perf_counter() - t0)
        loads.append(load())
    return statistics.median(times), loads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    K, B, reps = args.cycles, args.burn_in, args.repeats
    uncentred = functools.partial(enkit.enkf)
    centred = functools.partial(enkit.enkf, center_perturbations=True)
    draw64 = functools.partial(enkit.enkf, draw_dtype=None)
    import enkit._random as draws
    rows, t = [], {}
    for seed in range(args.seeds):
        model, twin, E0 = make_twin(K, seed)
        r = 1 if seed else reps  # timings from seed 0 (interleaved); RMSE from every seed
        r_unc, _, c_unc, _ = run_enkit(model, twin, E0, uncentred, INFL, seed, 1, B)
        r_cen, _, _, _ = run_enkit(model, twin, E0, centred, INFL, seed, 1, B)
        r_64, _, _, _ = run_enkit(model, twin, E0, draw64, INFL, seed, 1, B)
        r_d, t_d, l_d = run_dapper(twin, E0, B, r, seed)
        r_du, _, _ = run_dapper(twin, E0, B, 1, seed, center=False)
        rows.append((seed, r_unc, r_cen, r_d, r_du, r_64))
        if seed == 0:
            fast_key = draws._unrolled_key
            draws._unrolled_key = lambda key: None  # stand-in: jax.random.normal itself
            try:
                # a new scheme object (traced anew), float64 draws as before
                fresh = functools.partial(enkit.enkf, draw_dtype=None)
                old = enkit_run(model, twin, E0, fresh, INFL, seed)
                res_old = old()  # compiled with JAX's own lowering of the draws
            finally:
                draws._unrolled_key = fast_key
            err = res_old.analysis_mean - twin.truth
            assert float(jnp.mean(jnp.sqrt(jnp.mean(err**2, axis=1))[B:])) == r_64
            runs = {"unc": enkit_run(model, twin, E0, uncentred, INFL, seed),
                    "cen": enkit_run(model, twin, E0, centred, INFL, seed),
                    "f64": enkit_run(model, twin, E0, draw64, INFL, seed),
                    "old": old,
                    "etkf": enkit_run(model, twin, E0, enkit.etkf, 1.02, seed),
                    "dapper_loop": lambda: dapper_loop(twin, E0, B, 1, seed)}
            t = interleaved(runs, reps)
            t.update(dapper_stats=(t_d, l_d), compile=c_unc)
    import dapper

    def ms(s):
        return 1e3 * s / K

    def ld(loads):
        return f"{min(loads):.1f}-{max(loads):.1f}"

    d_loop = t["dapper_loop"][0]
    lines = [
        f"Lorenz-96 (n=40, F=8, dt=0.05, obs every step, R=I), stochastic EnKF N=40, "
        f"inflation {INFL}",
        f"cycles {K}, burn-in {B}, float64, {one_thread.DESCRIPTION}, median of {reps} "
        f"interleaved rounds (each variant and DAPPER's loop in turn); same truth and "
        f"observations for both",
        f"enkit {enkit.__version__} (jax {jax.__version__}), DAPPER {dapper.__version__}, "
        f"numpy {np.__version__}; load = 1-minute load average (2 cores)",
        "",
        "time, seed 0              ms/cycle  DAPPER/enkit   load",
        f"{'DAPPER loop, no stats':<26}{ms(d_loop):>8.4f}{'':>14}   {ld(t['dapper_loop'][1])}",
        f"{'DAPPER xp.assimilate':<26}{ms(t['dapper_stats'][0]):>8.4f}{'':>14}   "
        f"{ld(t['dapper_stats'][1])}",
    ]
    for name, k in (("enkit enkf", "unc"), ("enkit enkf, centred", "cen"),
                    ("enkit enkf, float64 draws", "f64"),
                    ("  JAX's rolled threefry", "old"),
                    ("enkit etkf (infl 1.02)", "etkf")):
        sec, loads = t[k]
        lines.append(f"{name:<26}{ms(sec):>8.4f}{d_loop / sec:>13.1f}x   {ld(loads)}")
    lines.append("  (enkf: float32 draws, the default; float64 draws: draw_dtype=None; JAX's "
                 "rolled threefry: float64 draws by jax.random.normal's own lowering, the "
                 "same numbers, the path before enkit._random)")
    lines += [
        f"{'enkit compile, s':<26}{t['compile']:>8.2f}",
        "",
        "analysis RMSE         enkit enkf            DAPPER PertObs      enkit/DAPPER"
        "          enkit float64 draws",
        "seed            uncentred   centred    centred  uncentred    centred  uncentred"
        "     RMSE  /DAPPER unc.",
    ]
    for seed, ru, rc, rd, rdu, r64 in rows:
        lines.append(f"{seed:>4}{ru:>17.4f}{rc:>10.4f}{rd:>11.4f}{rdu:>11.4f}"
                     f"{rc / rd:>11.3f}{ru / rdu:>11.3f}{r64:>9.4f}{r64 / rdu:>9.3f}")
    mu, mc, md, mdu, m64 = (statistics.mean(r[i] for r in rows) for i in (1, 2, 3, 4, 5))
    lines.append(f"{'mean':>4}{mu:>17.4f}{mc:>10.4f}{md:>11.4f}{mdu:>11.4f}"
                 f"{mc / md:>11.3f}{mu / mdu:>11.3f}{m64:>9.4f}{m64 / mdu:>9.3f}")
    lines.append("centred: the perturbations' sample mean removed (DAPPER's default, mean0; "
                 "enkit's center_perturbations=True); DAPPER uncentred: its mean0 made the "
                 "identity")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        out = pathlib.Path(__file__).parent / "results" / "vs_dapper_enkf.txt"
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
