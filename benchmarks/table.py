"""One table of enkit against its peers, with the machine load beside every row.

(a) Filters against DAPPER on the Lorenz-96 twin experiment of Sakov & Oke
    (2008) (n=40, F=8, dt=0.05, every variable observed every step, R=I,
    N=40; the truth, observations and initial ensemble of ``vs_dapper.py``'s
    ``make_twin``, made once with enkit and fed to both): ETKF (DAPPER
    ``EnKF('Sqrt')``), stochastic EnKF with centred perturbations
    (``'PertObs'``), DEnKF (``'DEnKF'``), serial EnSRF (``'Serial'``), each
    with the multiplicative inflation given in its row; LETKF on the case of
    ``vs_dapper_letkf.py`` (its ``make_case`` and workers: N=20, Gaspari-Cohn
    localisation, DAPPER batches of one variable). enkit: ``assimilate``
    keeping the analysis mean (its least statistics; LETKF: the workers'
    defaults), compilation excluded. DAPPER with its statistics on
    (``xp.assimilate``) and off (its EnKF cycle as ``EnKF.assimilate`` runs
    it: forecast, ``Obs``, ``EnKF_analysis``, ``post_process``; not for the
    LETKF, whose analysis has no function outside ``LETKF.assimilate``).
    enkit in float32 (initial ensemble and observations cast; x64 on) beside
    float64 for the ETKF and the EnKF.
(b) ES-MDA (and EKI with Δt = 1/K, the same update) against
    iterative_ensemble_smoother's ESMDA: the interleaved workers of
    ``vs_ies.py`` (at least 5 rounds; p = 200,000, d = 1,000, N = 100, K = 4; --quick: p =
    20,000, d = 200, N = 50), plus enkit's ESMDA in float32.
(c) The stochastic EnKF's analysis RMSE over --truths truths (default 8,
    --quick 2; one twin per seed): enkit centred and default against
    DAPPER's ``EnKF('PertObs')``. One truth alone scatters by a few per cent
    between the libraries (each draws its own perturbations); the mean is
    the comparison the RMSE column of (a) cannot make.

Every time is a median of --repeats runs (at least 5 rounds in (a) and (b));
the 1-minute load average is read after every run and its range printed on
the row. In (a) enkit's runs and DAPPER's statistics-off loop alternate,
round by round, so that the ratio compares runs under the same spells of load
(run one after the other, a change of load between them moved the ratio by
half), and each timing is a window of back-to-back runs of at least one
second (``vs_dapper_enkf.interleaved``): under load a single short enkit run
got half a core or a whole one by chance, while DAPPER's longer runs got the
average share. DAPPER with statistics on: --repeats runs. --load L starts L
busy-loop processes for the whole table (``machine_load.busy_loops``).
Thread settings: one thread for every library (set by one_thread.py, before NumPy and
JAX load, and inherited by the workers). No GPU run here: this machine has
none (the enkit rows run unchanged on a GPU build of JAX).

Writes benchmarks/results/table.txt (--quick: table_quick.txt; with --load L
> 0: table_loadL.txt, table_quick_loadL.txt).

Run (DAPPER and the peer live in the bench environment):
    .venv-bench/bin/python benchmarks/table.py [--load 2] [--quick]
"""

import os

import one_thread  # first: one thread for NumPy and XLA

import argparse  # noqa: E402
import functools  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the benchmark script's own choice

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import vs_dapper  # noqa: E402
import vs_dapper_enkf  # noqa: E402
import vs_dapper_letkf  # noqa: E402
import vs_ies  # noqa: E402
from machine_load import busy_loops, load_1min  # noqa: E402

import enkit  # noqa: E402

# (row name, enkit analysis, inflation, DAPPER's EnKF upd_a)
FILTERS = (
    ("ETKF", enkit.etkf, 1.02, "Sqrt"),
    ("EnKF PertObs (centred)", functools.partial(enkit.enkf, center_perturbations=True),
     vs_dapper_enkf.INFL, "PertObs"),
    ("DEnKF", enkit.denkf, 1.02, "DEnKF"),
    ("serial EnSRF", enkit.ensrf_serial, 1.02, "Serial"),
)
FLOAT32 = ("ETKF", "EnKF PertObs (centred)")
# The workers of vs_ies.py this table runs (vs_ies.py itself runs all of them).
ESMDA_VARIANTS = (("enkit", "jit", False), ("enkit", "jit", True), ("enkit", "jit-thp", False),
                  ("enkit", "eager", False),
                  ("eki", "jit", False), ("peer", "-", False), ("peer", "-", True))


def dapper_xp(twin, burn_in, upd_a, infl, repeats, seed):
    """DAPPER's ``xp.assimilate`` with its default statistics: (RMSE, median
    seconds, loads)."""
    import dapper.da_methods as da
    import dapper.tools.progressbar as progressbar
    from dapper.tools.seeding import set_seed

    progressbar.disable_progbar = True
    HMM = vs_dapper_enkf.dapper_hmm(twin, burn_in)
    xx = np.vstack([np.asarray(twin.x0), np.asarray(twin.truth)])
    yy = np.asarray(twin.observations)
    times, rmses, loads = [], [], []
    for _ in range(repeats):
        xp = da.EnKF(upd_a, N=40, infl=infl)
        set_seed(seed + 1)
        t0 = time.perf_counter()
        xp.assimilate(HMM, xx, yy, liveplots=False)
        times.append(time.perf_counter() - t0)
        loads.append(load_1min())
        xp.stats.average_in_time()
        rmses.append(float(xp.avrgs.err.rms.a.val))
    return statistics.median(rmses), statistics.median(times), loads


def float32_twin(twin, E0):
    """The twin's observations and the initial ensemble in float32."""
    return twin._replace(observations=jnp.asarray(twin.observations, jnp.float32)), \
        jnp.asarray(E0, jnp.float32)


def filter_rows(cycles, burn_in, repeats, seed=0):
    """Per filter: enkit's whole runs (float64, and float32 for the FLOAT32
    rows) and DAPPER's loop with statistics off, interleaved round by round
    (``vs_dapper_enkf.interleaved``), so that both libraries see the same
    spells of load; then DAPPER's ``xp.assimilate`` (statistics on)."""
    model, twin, E0 = vs_dapper.make_twin(cycles, seed)
    twin32, E032 = float32_twin(twin, E0)
    rows = []
    for name, scheme, infl, upd_a in FILTERS:
        cases = {"float64": (twin, E0)}
        if name in FLOAT32:
            cases["float32"] = (twin32, E032)
        runs, rmse, compile_s = {}, {}, {}
        for dtype, (tw, e0) in cases.items():
            run = vs_dapper_enkf.enkit_run(model, tw, e0, scheme, infl, seed)
            t0 = time.perf_counter()
            res = run()
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            run()
            compile_s[dtype] = max(first - (time.perf_counter() - t0), 0.0)
            rmse[dtype] = vs_dapper_enkf.analysis_rmse(res, tw, burn_in)
            runs[dtype] = run
        runs["dapper"] = functools.partial(vs_dapper_enkf.dapper_loop, twin, E0, burn_in, 1,
                                           seed, upd_a=upd_a, infl=infl)
        t = vs_dapper_enkf.interleaved(runs, max(repeats, 5))
        d_rmse, d_on, l_on = dapper_xp(twin, burn_in, upd_a, infl, repeats, seed)
        d_off, l_off = t["dapper"]
        for dtype in cases:
            rows.append(dict(name=f"{name}, infl {infl}" if dtype == "float64"
                             else "  the same, enkit float32",
                             enkit=t[dtype][0], rmse=rmse[dtype], d_on=d_on, d_off=d_off,
                             d_rmse=d_rmse, loads=t[dtype][1] + l_off + l_on,
                             compile=compile_s[dtype]))
    return rows


def enkf_rmse_rows(cycles, burn_in, seeds):
    """The stochastic EnKF's analysis RMSE over several truths (one twin per
    seed, as ``vs_dapper.make_twin`` makes it): enkit with centred
    perturbations (DAPPER's convention), enkit's default (independent
    draws) and DAPPER's ``EnKF('PertObs')``, inflation
    ``vs_dapper_enkf.INFL``. Each library draws its own perturbations, so
    one truth alone differs by a few per cent between them; the mean over
    the truths is the comparison. Rows (seed, centred, default, DAPPER)."""
    centred = {name: scheme for name, scheme, _, _ in FILTERS}["EnKF PertObs (centred)"]
    rows = []
    for seed in range(seeds):
        model, twin, E0 = vs_dapper.make_twin(cycles, seed)
        r = [vs_dapper_enkf.analysis_rmse(
            vs_dapper_enkf.enkit_run(model, twin, E0, scheme, vs_dapper_enkf.INFL, seed)(),
            twin, burn_in) for scheme in (centred, enkit.enkf)]
        d_rmse = dapper_xp(twin, burn_in, "PertObs", vs_dapper_enkf.INFL, 1, seed)[0]
        rows.append((seed, *r, d_rmse))
    return rows


def letkf_row(cycles, burn_in, repeats, seed=0):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "case.npz")
        vs_dapper_letkf.make_case(40, cycles, seed, path)
        data = dict(np.load(path))
    e = [vs_dapper_letkf.worker_enkit(data, burn_in) for _ in range(repeats)]
    loads = [load_1min()]
    d = [vs_dapper_letkf.worker_dapper(data, burn_in, batch=1) for _ in range(repeats)]
    loads.append(load_1min())
    med = statistics.median
    return dict(name=f"LETKF N={vs_dapper_letkf.N_MEMBERS}, infl {vs_dapper_letkf.INFLATION}",
                enkit=med(r["seconds"] for r in e), rmse=med(r["rmse"] for r in e),
                d_on=med(r["seconds"] for r in d), d_off=None,
                d_rmse=med(r["rmse"] for r in d), loads=loads,
                compile=med(r["compile"] for r in e))


def esmda_float32(p, d, N, repeats):
    """enkit's ESMDA, jitted tell, float64 and float32 on vs_ies's case (b),
    their runs interleaved: {dtype name: (median seconds of the K analyses,
    loads)}."""
    idx, variances, y = vs_ies.size_problem(p, d, N)
    U64 = np.random.default_rng(1).standard_normal((N, p))

    def runner(dtype):
        proc = enkit.ESMDA(enkit.esmda_constant_alpha(vs_ies.K))
        noise = enkit.Diagonal(jnp.asarray(variances, dtype))
        yj, jidx, U0 = jnp.asarray(y, dtype), jnp.asarray(idx), jnp.asarray(U64, dtype)
        step = jax.jit(lambda s, G: proc.tell(s, G, yj, noise))
        forward = jax.jit(lambda U: 2.0 * U[:, jidx])

        def run():
            state = proc.init(1, U0)
            elapsed = 0.0
            for _ in range(vs_ies.K):
                G = jax.block_until_ready(forward(proc.ask(state)))
                t0 = time.perf_counter()
                state, _ = step(state, G)
                jax.block_until_ready(state.ensemble)
                elapsed += time.perf_counter() - t0
            return elapsed

        run()  # compilation
        return run

    runs = {np.dtype(t).name: runner(t) for t in (jnp.float64, jnp.float32)}
    times = {k: [] for k in runs}
    loads = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            times[k].append(run())
            loads[k].append(load_1min())
    return {k: (statistics.median(times[k]), loads[k]) for k in runs}


def ld(loads):
    return f"{min(loads):.1f}-{max(loads):.1f}"


def render_enkf_rmse(rows, args):
    """Section (c): the per-truth RMSEs, their means and the mean ratios."""
    lines = [
        "",
        f"(c) stochastic EnKF analysis RMSE over {len(rows)} truths (Lorenz-96 as in (a), "
        f"{args.cycles} cycles, burn-in {args.burn_in}, N=40, infl {vs_dapper_enkf.INFL})",
        f"{'truth (seed)':<16}{'enkit':>9}{'enkit':>10}{'DAPPER':>9}{'centred /':>11}"
        f"{'default /':>11}",
        f"{'':<16}{'centred':>9}{'default':>10}{'PertObs':>9}{'DAPPER':>11}{'DAPPER':>11}",
    ]
    for seed, c, u, d in rows:
        lines.append(f"{seed:<16}{c:>9.4f}{u:>10.4f}{d:>9.4f}{c / d:>11.3f}{u / d:>11.3f}")
    mc, mu, md = (statistics.mean(r[i] for r in rows) for i in (1, 2, 3))
    lines += [
        f"{'mean':<16}{mc:>9.4f}{mu:>10.4f}{md:>9.4f}{mc / md:>11.3f}{mu / md:>11.3f}",
        "    centred: center_perturbations=True, DAPPER's PertObs convention (the row in (a));",
        "    default: enkit.enkf's independent draws; each library draws its own",
        "    perturbations, so single truths scatter by a few per cent; the ratio of the",
        "    means is the comparison",
    ]
    return lines


def render(frows, size, b, diff, f32, rmse_rows, args):
    import dapper
    import iterative_ensemble_smoother as ies_pkg

    p, d, N = size
    K = args.cycles
    med = statistics.median

    def ms(s):
        return "—" if s is None else f"{1e3 * s / K:.4f}"

    def ratio(s, t):
        return "—" if s is None else f"{s / t:.1f}x"

    lines = [
        "enkit against its peers, one table; machine load beside every row",
        *(["QUICK mode: short runs and small ES-MDA sizes"] if args.quick else []),
        f"enkit {enkit.__version__} (jax {jax.__version__}), DAPPER {dapper.__version__}, "
        f"iterative_ensemble_smoother {ies_pkg.__version__}, numpy {np.__version__}",
        f"{one_thread.DESCRIPTION}, {os.cpu_count()} CPUs, CPU only (no GPU on this machine); "
        f"medians of {args.repeats} runs ((a), (b): of {max(args.repeats, 5)} rounds; (a): each "
        f"timing a window of >= 1 s of back-to-back runs); {args.load} busy-loop processes "
        "started by the benchmark;",
        "load = range of the 1-minute load average read after the row's runs",
        "",
        f"(a) filters, Lorenz-96 n=40 (Sakov & Oke 2008), {K} cycles, burn-in "
        f"{args.burn_in}, float64 unless marked; ms per cycle",
        f"{'':<34}{'enkit':>8}{'DAPPER':>9}{'ratio':>7}{'DAPPER':>9}{'ratio':>7}"
        f"{'RMSE':>8}{'RMSE':>8}{'compile':>8}{'load':>10}",
        f"{'':<34}{'':>8}{'stats on':>9}{'':>7}{'stats off':>9}{'':>7}"
        f"{'enkit':>8}{'DAPPER':>8}{'s':>8}",
    ]
    for r in frows:
        lines.append(
            f"{r['name']:<34}{ms(r['enkit']):>8}{ms(r['d_on']):>9}"
            f"{ratio(r['d_on'], r['enkit']):>7}{ms(r['d_off']):>9}"
            f"{ratio(r['d_off'], r['enkit']):>7}{r['rmse']:>8.4f}{r['d_rmse']:>8.4f}"
            f"{r['compile']:>8.2f}{ld(r['loads']):>10}")
    lines += [
        "    ratio = DAPPER time / enkit time (> 1: enkit faster); enkit keeps the analysis",
        "    mean only (LETKF: its default statistics); the float32 rows repeat DAPPER's",
        "    float64 figures for comparison",
        "",
        f"(b) ES-MDA, p={p:,}, d={d:,}, N={N}, K={vs_ies.K}, diagonal Gamma; seconds for the "
        f"{vs_ies.K} analyses (vs_ies.py's interleaved workers)",
        f"{'':<44}{'time, s':>8}{'ratio':>7}{'cpu, s':>8}{'run extra, MB':>14}{'faults':>8}"
        f"{'load':>10}",
    ]
    names = vs_ies.VARIANT_NAMES
    t_peer = med(b[("peer", "-", False)]["times"])
    for key, name in names.items():
        if key not in b:
            continue
        r = b[key]
        t = med(r["times"])
        lines.append(f"{name:<44}{t:>8.3f}{t_peer / t:>6.2f}x{med(r['cpu']):>8.3f}"
                     f"{r['run_peak'] - r['before']:>14.0f}{med(r['faults']) / vs_ies.K:>8.0f}"
                     f"{ld(r['loads']):>10}")
    t64 = f32["float64"][0]
    for dtype in ("float64", "float32"):
        t, loads = f32[dtype]
        lines.append(f"{'enkit ESMDA, jitted, ' + dtype + ' (in-process)':<44}{t:>8.3f}"
                     f"{t64 / t:>6.2f}x{'':>8}{'':>14}{'':>8}{ld(loads):>10}")
    lines += [
        "    ratio = the peer's time (overwrite=False, its default) / this time; cpu: CPU",
        "    seconds (user + system) of the analyses; run extra: peak RSS during the timed runs",
        "    above the RSS before them; faults: minor page faults per analysis; the two last",
        "    rows run interleaved with each other in this process (not in workers), their",
        "    ratio = the float64 time / this time",
        f"    largest |difference| of the posterior means vs the peer: {diff:.2e}",
        *render_enkf_rmse(rmse_rows, args),
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="300 cycles, ES-MDA at p=20,000; writes table_quick.txt")
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--burn-in", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load", type=int, default=0,
                        help="busy-loop processes to run during the table (default 0)")
    parser.add_argument("--truths", type=int, default=None,
                        help="truths of the EnKF RMSE comparison (c) (default 8; --quick: 2)")
    args = parser.parse_args()
    if args.truths is None:
        args.truths = 2 if args.quick else 8
    if args.truths < 1:
        parser.error("--truths must be >= 1")
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 (medians of at least two runs)")
    if args.quick:
        args.cycles, args.burn_in = 300, 100
    size = (20_000, 200, 50) if args.quick else (200_000, 1_000, 100)
    with busy_loops(args.load):
        b, diff = vs_ies.case_size(*size, max(args.repeats, 5), variants=ESMDA_VARIANTS)
        f32 = esmda_float32(*size, args.repeats)
        frows = filter_rows(args.cycles, args.burn_in, args.repeats)
        frows.append(letkf_row(args.cycles, args.burn_in, args.repeats))
        rmse_rows = enkf_rmse_rows(args.cycles, args.burn_in, args.truths)
    text = render(frows, size, b, diff, f32, rmse_rows, args)
    print(text)
    name = ("table_quick" if args.quick else "table") + (f"_load{args.load}" if args.load else "")
    out = pathlib.Path(__file__).parent / "results" / f"{name}.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
