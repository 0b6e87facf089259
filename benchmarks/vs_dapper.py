"""enkit vs DAPPER on the Lorenz-96 twin experiment of Sakov & Oke (2008).

Case: n=40, F=8, RK4 with dt=0.05, every variable observed every step with
R=I; ETKF (DAPPER: ``EnKF('Sqrt', N=40, infl=1.02)``), N=40, inflation
1.02 on the analysis anomalies. One truth and one observation record are made
once (with enkit, float64) and fed to both libraries.

Measured, each at least twice, medians reported, enkit and DAPPER
interleaved in one process, the 1-minute load average beside every timing:
- whole run: forecast + analysis + per-cycle statistics (enkit: forecast and
  analysis means and spreads; DAPPER: its default statistics), excluding
  compilation, which is reported separately;
- whole run, statistics off: enkit's ``assimilate`` storing only the
  analysis mean; DAPPER's EnKF loop as ``EnKF.assimilate`` runs it
  (forecast, ``Obs``, ``EnKF_analysis``, ``post_process``) without its
  statistics;
- analysis alone: the analysis step (observe, update, inflation) applied
  many times in a row to a forecast ensemble (enkit: inside one compiled
  loop; DAPPER: ``Obs``, ``EnKF_analysis`` and ``post_process``, as in its
  EnKF loop), for enkit's ``etkf``, ``ensrf_serial`` and ``enkf`` (with
  ``center_perturbations=True``, DAPPER's convention) against
  DAPPER's ``EnKF('Sqrt')``, ``EnKF('Serial')`` and ``EnKF('PertObs')``
  analyses at N = 20, 40, 100 (inflation 1.02, 1.02, 1.06; the forecast
  ensemble of each N is the forecast after 500 ETKF cycles with N members).

Thread settings: one thread for both (OpenBLAS/MKL/OpenMP and XLA set by one_thread.py,
before NumPy and JAX load). Writes benchmarks/results/vs_dapper.txt.

Run (DAPPER lives in its own environment, as its pins differ from enkit's):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python benchmarks/vs_dapper.py [--cycles 3000] [--repeats 3]
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


def identity(x):
    return x


def make_twin(cycles, seed):
    model = enkit.Lorenz96(n=40, F=8.0, dt=0.05)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x0 = model.F + jax.random.normal(k1, (40,))
    twin = enkit.twin_experiment(model, x0, key=k2, n_obs=cycles, h=identity, R=1.0,
                                 spinup=1000)
    E0 = twin.x0 + jax.random.normal(k3, (40, 40))
    return model, twin, E0


def run_enkit(model, twin, E0, burn_in, repeats):
    R = enkit.Scalar(1.0, 40)

    def run():
        return jax.block_until_ready(enkit.assimilate(
            model, E0, twin.observations, enkit.etkf, h=identity, R=R, inflation=1.02))

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = run()
        times.append(time.perf_counter() - t0)
    whole = statistics.median(times)
    rmse = float(jnp.mean(res.rmse(twin.truth)[burn_in:]))
    return rmse, whole, max(first - whole, 0.0), res.ensemble


def load():
    return os.getloadavg()[0]


def enkit_analysis_only(E, ys, repeats, scheme=enkit.etkf, infl=1.02, stochastic=False):
    """Seconds per analysis and the load averages of the repeats."""
    R = enkit.Scalar(1.0, 40)

    @jax.jit
    def loop(E, ys):
        def body(E, xs):
            k, y = xs
            kw = {"key": jax.random.fold_in(jax.random.key(0), k)} if stochastic else {}
            Ea = enkit.multiplicative_inflation(scheme(E, y, identity, R, **kw), infl)
            return E + 1e-12 * Ea, None  # depends on the analysis, stays near E
        return jax.lax.scan(body, E, (jnp.arange(ys.shape[0]), ys))[0]

    jax.block_until_ready(loop(E, ys))
    times, loads = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(loop(E, ys))
        times.append(time.perf_counter() - t0)
        loads.append(load())
    return statistics.median(times) / ys.shape[0], loads


def run_dapper(twin, E0, burn_in, repeats):
    import dapper.da_methods as da
    import dapper.mods as modelling
    import dapper.tools.progressbar as progressbar
    from dapper.mods.Lorenz96 import sakov2008

    progressbar.disable_progbar = True

    K = twin.observations.shape[0]
    HMM = sakov2008.HMM.copy()
    HMM.tseq = modelling.Chronology(dt=0.05, dko=1, Ko=K - 1, BurnIn=burn_in * 0.05)
    xx = np.vstack([np.asarray(twin.x0), np.asarray(twin.truth)])
    yy = np.asarray(twin.observations)
    HMM.X0 = modelling.GaussRV(C=1.0, mu=np.asarray(twin.x0))
    times, rmses = [], []
    for _ in range(repeats):
        xp = da.EnKF("Sqrt", N=40, infl=1.02)
        np.random.seed(0)
        t0 = time.perf_counter()
        xp.assimilate(HMM, xx, yy, liveplots=False)
        times.append(time.perf_counter() - t0)
        xp.stats.average_in_time()
        rmses.append(float(xp.avrgs.err.rms.a.val))
    return statistics.median(rmses), statistics.median(times)


def dapper_analysis_only(E, ys, repeats, upd_a="Sqrt", infl=1.02):
    """DAPPER's analysis step as its EnKF loop runs it: observe the ensemble,
    ``EnKF_analysis``, then ``post_process`` (inflation). Seconds per
    analysis and the load averages of the repeats."""
    from dapper.da_methods.ensemble import EnKF_analysis, post_process
    from dapper.mods.Lorenz96 import sakov2008
    from dapper.tools.seeding import set_seed

    Obs = sakov2008.HMM.Obs(0)
    E = np.asarray(E)
    times, loads = [], []
    for _ in range(repeats):
        set_seed(1)
        Ek = E.copy()
        t0 = time.perf_counter()
        for y in ys:
            Ea = EnKF_analysis(Ek, Obs(Ek), Obs.noise, y, upd_a)
            Ea = post_process(Ea, infl, False)
            Ek = Ek + 1e-12 * Ea
        times.append(time.perf_counter() - t0)
        loads.append(load())
    return statistics.median(times) / len(ys), loads


def enkit_no_stats(model, twin, E0, repeats):
    """enkit's ETKF run storing only the analysis mean: seconds, loads."""
    R = enkit.Scalar(1.0, 40)

    def run():
        return jax.block_until_ready(enkit.assimilate(
            model, E0, twin.observations, enkit.etkf, h=identity, R=R, inflation=1.02,
            store=("analysis_mean",)))

    run()
    times, loads = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        loads.append(load())
    return statistics.median(times), loads


def dapper_no_stats(twin, E0, repeats):
    """DAPPER's EnKF('Sqrt') loop as ``EnKF.assimilate`` runs it, statistics
    off: forecast, observe, ``EnKF_analysis``, ``post_process``."""
    from dapper.da_methods.ensemble import EnKF_analysis, post_process
    from dapper.mods.Lorenz96 import sakov2008

    HMM = sakov2008.HMM
    Obs = HMM.Obs(0)
    yy = np.asarray(twin.observations)
    times, loads = [], []
    for _ in range(repeats):
        E = np.asarray(E0).copy()
        t0 = time.perf_counter()
        for k, y in enumerate(yy):
            E = HMM.Dyn(E, k * 0.05, 0.05)
            E = EnKF_analysis(E, Obs(E), Obs.noise, y, "Sqrt")
            E = post_process(E, 1.02, False)
        times.append(time.perf_counter() - t0)
        loads.append(load())
    return statistics.median(times), loads


ANALYSES = (("ETKF", enkit.etkf, "Sqrt", 1.02, False),
            ("serial EnSRF", enkit.ensrf_serial, "Serial", 1.02, False),
            ("EnKF", functools.partial(enkit.enkf, center_perturbations=True), "PertObs", 1.06,
             True))


def forecast_ensemble(model, twin, N, seed):
    """The forecast after 500 ETKF cycles with N members (spread of the
    cycled regime)."""
    E0 = twin.x0 + jax.random.normal(jax.random.key(seed + N), (N, 40))
    res = enkit.assimilate(model, E0, twin.observations[:500], enkit.etkf, h=identity, R=1.0,
                           inflation=1.02 if N >= 40 else 1.06, store=())
    return jax.vmap(model)(res.ensemble)


def analysis_table(model, twin, repeats, n_enkit, n_dapper, seed):
    """Rows (scheme, N, enkit s, enkit loads, DAPPER s, DAPPER loads)."""
    rows = []
    ys = np.asarray(twin.observations[500:500 + max(n_enkit, n_dapper)])
    for N in (20, 40, 100):
        Ef = forecast_ensemble(model, twin, N, seed)
        for name, scheme, upd_a, infl, stochastic in ANALYSES:
            e, le = enkit_analysis_only(Ef, jnp.asarray(ys[:n_enkit]), repeats, scheme, infl,
                                        stochastic)
            d, ld = dapper_analysis_only(Ef, ys[:n_dapper], repeats, upd_a, infl)
            rows.append((name, N, e, le, d, ld))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, twin, E0 = make_twin(args.cycles, args.seed)
    K = args.cycles
    e_rmse, e_whole, e_compile, e_final = run_enkit(model, twin, E0, args.burn_in, args.repeats)
    l_whole = load()
    d_rmse, d_whole = run_dapper(twin, E0, args.burn_in, args.repeats)
    l_dwhole = load()
    e_off, l_off = enkit_no_stats(model, twin, E0, args.repeats)
    d_off, l_doff = dapper_no_stats(twin, E0, args.repeats)
    rows = analysis_table(model, twin, args.repeats, 1000, 300, args.seed)
    import dapper

    def ld(loads):
        loads = loads if isinstance(loads, list) else [loads]
        return f"{min(loads):.1f}-{max(loads):.1f}"

    lines = [
        "Lorenz-96 (n=40, F=8, dt=0.05, obs every step, R=I), ETKF N=40, inflation 1.02",
        f"cycles {K}, burn-in {args.burn_in}, float64, {one_thread.DESCRIPTION}, "
        f"median of {args.repeats}",
        f"enkit {enkit.__version__} (jax {jax.__version__}), DAPPER {dapper.__version__}, "
        f"numpy {np.__version__}; load = 1-minute load average (2 cores)",
        "",
        f"{'':<32}{'enkit':>10}{'DAPPER':>10}{'ratio':>9}   load enkit / DAPPER",
        f"{'analysis RMSE':<32}{e_rmse:>10.4f}{d_rmse:>10.4f}{d_rmse / e_rmse:>9.3f}",
        f"{'whole run, ms per cycle':<32}{1e3 * e_whole / K:>10.4f}{1e3 * d_whole / K:>10.4f}"
        f"{d_whole / e_whole:>8.1f}x   {ld(l_whole)} / {ld(l_dwhole)}",
        f"{'whole run, statistics off':<32}{1e3 * e_off / K:>10.4f}{1e3 * d_off / K:>10.4f}"
        f"{d_off / e_off:>8.1f}x   {ld(l_off)} / {ld(l_doff)}",
        f"{'enkit compile, s':<32}{e_compile:>10.2f}",
        "",
        "analysis alone (observe, update, inflation), ms per analysis",
        f"{'enkit vs DAPPER':<32}{'enkit':>10}{'DAPPER':>10}{'ratio':>9}   load enkit / DAPPER",
    ]
    for name, N, e, le, d, ldp in rows:
        dname = {"ETKF": "Sqrt", "serial EnSRF": "Serial", "EnKF": "PertObs"}[name]
        label = f"{name} / {dname}, N={N}"
        lines.append(f"{label:<32}{1e3 * e:>10.4f}{1e3 * d:>10.4f}{d / e:>8.1f}x   "
                     f"{ld(le)} / {ld(ldp)}")
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "vs_dapper.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
