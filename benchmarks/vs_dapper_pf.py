"""enkit vs DAPPER: the bootstrap and optimal-proposal particle filters on
Lorenz-63.

Case: Sakov, Oliver & Bertino (2012) as in ``enkit.models.cases.
sakov2012_lorenz63`` and DAPPER's ``mods/Lorenz63/sakov2012.py``: dt 0.01
(RK4), x, y, z observed every 25 steps with R = 2 I, deterministic model,
initial ensemble N(x0, 2 I). One truth (every model step, for DAPPER's
statistics) and one observation record per seed are made with enkit
(float64) and fed to both libraries; each library draws its own initial
ensemble, resampling numbers and jitter (DAPPER seeded with its
``set_seed``), so per-seed RMSEs differ by Monte Carlo error and the mean
over seeds is the comparison.

Settings (DAPPER's documented time-mean analysis RMSEs, from
``sakov2012.py``): ``PartFilt(N=100, reg=2.4, NER=0.3)`` 0.38 and
``PartFilt(N=800, reg=0.9, NER=0.2)`` 0.28, run in enkit as
``bootstrap_pf(threshold=NER, reg=reg, duplicates_only=True)`` (DAPPER's
default ``nuj=True`` jitters only the resampled copies). DAPPER documents
no OptPF figure for this case; ``OptPF(N=100, Qs, reg, NER)`` is run beside
``optimal_proposal_pf(Qs=Qs, threshold=NER)`` with the settings below.
DAPPER resamples its OptPF after the draw and jitters with ``reg``;
enkit resamples before the draw, so its particles are distinct without
jitter.

Measured: the time-mean analysis RMSE after burn-in, per seed and the
mean; the ms per cycle of enkit's ``assimilate`` (compiled, storing the
analysis mean and the weights) against DAPPER's ``xp.assimilate`` (its
statistics on) and against DAPPER's PartFilt loop with the statistics off
(forecast, ``reweight``, the N_eff test, ``resample``, ``regularize``).

Thread settings: one thread for both (set before NumPy and JAX load); the
1-minute load average is printed beside the timings. Writes
benchmarks/results/vs_dapper_pf.txt.

Run (DAPPER lives in its own environment, as its pins differ from enkit's):
    .venv-bench/bin/python benchmarks/vs_dapper_pf.py [--cycles 2000] [--seeds 3]
"""

import os

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

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
from enkit import particle  # noqa: E402

STEPS, DT, R_VAR = 25, 0.01, 2.0
LOST = 1.5  # a time-mean RMSE above this: the filter lost the truth (climatology ≈ 7.6)
# (label, DAPPER method and arguments, documented RMSE or None)
CONFIGS = (
    ("PartFilt", dict(N=100, reg=2.4, NER=0.3), 0.38),
    ("PartFilt", dict(N=800, reg=0.9, NER=0.2), 0.28),
    ("OptPF", dict(N=100, Qs=1.0, reg=0.7, NER=0.3), None),
)


def load():
    return os.getloadavg()[0]


def make_twin(cycles, seed):
    """The truth at every model step (K·25 + 1, 3), the observations at
    every 25th (K, 3) and the initial ensemble's key."""
    case = enkit.models.cases.sakov2012_lorenz63(cycles=cycles)
    twin = case.twin(seed, cycles)
    # The steps between observations, integrated from each observed truth
    # (one integration of the whole run would part from the twin's by
    # round-off amplified by the chaos); the observed times are the twin's.
    starts = jnp.vstack([twin.x0[None], twin.truth[:-1]])
    segment = jax.jit(jax.vmap(lambda x: jax.lax.scan(lambda x, _: (case.model(x), x), x, None,
                                                      length=STEPS)[1]))
    xx = np.vstack([np.asarray(segment(starts)).reshape(-1, 3), np.asarray(twin.truth[-1:])])
    np.testing.assert_array_equal(xx[STEPS::STEPS], np.asarray(twin.truth))
    return case, twin, xx


def enkit_scheme(label, cfg):
    if label == "PartFilt":
        return functools.partial(particle.bootstrap_pf, threshold=cfg["NER"], reg=cfg["reg"],
                                 duplicates_only=True)
    return functools.partial(particle.optimal_proposal_pf, Qs=cfg["Qs"], threshold=cfg["NER"])


def run_enkit(case, twin, scheme, N, seed, burn_in, repeats):
    E0 = case.initial_ensemble(twin, N, seed)

    def run():
        return jax.block_until_ready(enkit.assimilate(
            case.model, E0, twin.observations, scheme, h=case.h, R=case.R, key=seed,
            steps_per_obs=STEPS, store=("analysis_mean",)))

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
    err = res.analysis_mean - twin.truth
    rmse = float(jnp.mean(jnp.sqrt(jnp.mean(err**2, axis=1))[burn_in:]))
    return rmse, whole, max(first - whole, 0.0), loads, float(jnp.mean(res.ess))


def dapper_hmm(xx, cycles, burn_in):
    import dapper.mods as modelling
    from dapper.mods.Lorenz63 import sakov2012

    HMM = sakov2012.HMM.copy()
    HMM.tseq = modelling.Chronology(DT, dko=STEPS, Ko=cycles - 1, BurnIn=burn_in * STEPS * DT)
    HMM.X0 = modelling.GaussRV(C=R_VAR, mu=xx[0])
    return HMM


def run_dapper(label, cfg, xx, yy, burn_in, repeats, seed):
    """DAPPER's ``xp.assimilate`` (its default statistics): RMSE and time."""
    import dapper.da_methods as da
    import dapper.tools.progressbar as progressbar
    from dapper.tools.seeding import set_seed

    progressbar.disable_progbar = True
    HMM = dapper_hmm(xx, len(yy), burn_in)
    times, rmses, loads = [], [], []
    for _ in range(repeats):
        xp = getattr(da, label)(**cfg)
        set_seed(seed + 1)
        t0 = time.perf_counter()
        xp.assimilate(HMM, xx, yy, liveplots=False)
        times.append(time.perf_counter() - t0)
        loads.append(load())
        xp.stats.average_in_time()
        rmses.append(float(xp.avrgs.err.rms.a.val))
    return statistics.median(rmses), statistics.median(times), loads


def dapper_loop(cfg, xx, yy, burn_in, repeats, seed):
    """DAPPER's PartFilt cycle as ``PartFilt.assimilate`` runs it, with its
    statistics off: forecast, ``reweight``, N_eff test, ``resample``,
    ``regularize``."""
    from dapper.da_methods.particle import auto_bandw, raw_C12, regularize, resample, reweight
    from dapper.tools.seeding import set_seed

    HMM = dapper_hmm(xx, len(yy), burn_in)
    N, NER, reg = cfg["N"], cfg["NER"], cfg["reg"]
    Obs = HMM.Obs(0)
    Rm12 = Obs.noise.C.sym_sqrt_inv
    times, loads = [], []
    for _ in range(repeats):
        set_seed(seed + 1)
        E, w = HMM.X0.sample(N), np.full(N, 1.0 / N)
        t0 = time.perf_counter()
        for k, y in enumerate(yy):
            for j in range(STEPS):
                E = HMM.Dyn(E, (k * STEPS + j) * DT, DT)
            w = reweight(w, innovs=(y - Obs(E)) @ Rm12.T)
            if 1.0 / (w @ w) <= N * NER:
                C12 = reg * auto_bandw(N, 3) * raw_C12(E, w)
                idx, w = resample(w, "Sys")
                E, _ = regularize(C12, E, idx, True)
        times.append(time.perf_counter() - t0)
        loads.append(load())
    return statistics.median(times), loads


def describe(label, cfg):
    return f"{label}(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--burn-in", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    K, B, reps = args.cycles, args.burn_in, args.repeats
    twins = [make_twin(K, seed) for seed in range(args.seeds)]
    rows, timing = [], []
    for label, cfg, documented in CONFIGS:
        scheme, per_seed = enkit_scheme(label, cfg), []
        for seed, (case, twin, xx) in enumerate(twins):
            r = reps if seed == 0 else 1  # timings from seed 0; RMSE from every seed
            e_rmse, e_t, e_c, e_l, ess = run_enkit(case, twin, scheme, cfg["N"], seed, B, r)
            d_rmse, d_t, d_l = run_dapper(label, cfg, xx, np.asarray(twin.observations), B, r,
                                          seed)
            per_seed.append((seed, e_rmse, d_rmse, ess))
            if seed == 0:
                loop = (dapper_loop(cfg, xx, np.asarray(twin.observations), B, r, seed)
                        if label == "PartFilt" else None)
                timing.append((describe(label, cfg), e_t, e_c, e_l, d_t, d_l, loop))
        rows.append((describe(label, cfg), documented, per_seed))
    import dapper

    def ms(s):
        return 1e3 * s / K

    def ld(loads):
        return f"{min(loads):.1f}-{max(loads):.1f}"

    lines = [
        "Lorenz-63 (Sakov, Oliver & Bertino 2012: dt 0.01, x, y, z observed every 25 steps, "
        "R = 2 I)",
        f"cycles {K}, burn-in {B}, float64, 1 thread everywhere, {args.seeds} seeds (each its "
        "own truth and observations, the same for both)",
        f"enkit {enkit.__version__} (jax {jax.__version__}), DAPPER {dapper.__version__}, "
        f"numpy {np.__version__}; load = 1-minute load average (2 cores)",
        "",
        "analysis RMSE, time mean after burn-in",
        f"{'DAPPER method (enkit: see the docstring)':<44}{'seed':>5}{'enkit':>9}{'DAPPER':>9}"
        f"{'ratio':>8}{'enkit ESS':>11}",
    ]
    for name, documented, per_seed in rows:
        for seed, e, d, ess in per_seed:
            lines.append(f"{name if seed == 0 else '':<44}{seed:>5}{e:>9.4f}{d:>9.4f}"
                         f"{e / d:>8.3f}{ess:>11.1f}")
        me = statistics.mean(r[1] for r in per_seed)
        md = statistics.mean(r[2] for r in per_seed)
        doc = f"   documented {documented}" if documented else ""
        lines.append(f"{'':<44}{'mean':>5}{me:>9.4f}{md:>9.4f}{me / md:>8.3f}{doc}")
        kept = [r for r in per_seed if max(r[1], r[2]) < LOST]
        if 0 < len(kept) < len(per_seed):
            me = statistics.mean(r[1] for r in kept)
            md = statistics.mean(r[2] for r in kept)
            lines.append(f"{'':<44}{'kept':>5}{me:>9.4f}{md:>9.4f}{me / md:>8.3f}   "
                         f"mean of the {len(kept)} seeds where neither lost the truth")
    lines += ["", "time, seed 0, ms/cycle (25 model steps + analysis)",
              f"{'method':<44}{'enkit':>9}{'compile s':>11}{'DAPPER':>9}{'ratio':>7}"
              f"{'DAPPER no stats':>17}{'ratio':>7}   load"]
    for name, e_t, e_c, e_l, d_t, d_l, loop in timing:
        extra = (f"{ms(loop[0]):>17.3f}{loop[0] / e_t:>6.1f}x" if loop else f"{'':>17}{'':>7}")
        loads = e_l + d_l + (loop[1] if loop else [])
        lines.append(f"{name:<44}{ms(e_t):>9.3f}{e_c:>11.2f}{ms(d_t):>9.3f}{d_t / e_t:>6.1f}x"
                     f"{extra}   {ld(loads)}")
    lines += ["", f"An RMSE above {LOST} means the filter lost the truth for part of the run "
              "(a particle filter does, now and then, at these N); the documented figures are "
              "DAPPER's own long-run averages."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        out = pathlib.Path(__file__).parent / "results" / "vs_dapper_pf.txt"
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
