"""enkit vs DAPPER on the Lorenz-96 twin experiment of Sakov & Oke (2008).

Case: n=40, F=8, RK4 with dt=0.05, every variable observed every step with
R=I; ETKF (DAPPER: ``EnKF('Sqrt', N=40, infl=1.02)``), N=40, inflation
1.02 on the analysis anomalies. One truth and one observation record are made
once (with enkit, float64) and fed to both libraries.

Measured, each at least twice, medians reported:
- whole run: forecast + analysis + per-cycle statistics (enkit: forecast and
  analysis means and spreads; DAPPER: its default statistics), excluding
  compilation, which is reported separately;
- analysis alone: the analysis step (observe, ETKF update, inflation)
  applied 2,000 times in a row to a forecast ensemble (enkit: inside one
  compiled loop; DAPPER: ``Obs``, ``EnKF_analysis`` and ``post_process``,
  as in its EnKF loop).

Thread settings: one thread for both (OpenBLAS/MKL/OpenMP and XLA set below,
before NumPy and JAX load). Writes benchmarks/results/vs_dapper.txt.

Run (DAPPER lives in its own environment, as its pins differ from enkit's):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python benchmarks/vs_dapper.py [--cycles 5000] [--repeats 3]
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

import argparse  # noqa: E402
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


def enkit_analysis_only(E, ys, repeats):
    R = enkit.Scalar(1.0, 40)

    @jax.jit
    def loop(E, ys):
        def body(E, y):
            Ea = enkit.multiplicative_inflation(enkit.etkf(E, y, identity, R), 1.02)
            return E + 1e-12 * Ea, None  # depends on the analysis, stays near E
        return jax.lax.scan(body, E, ys)[0]

    jax.block_until_ready(loop(E, ys))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(loop(E, ys))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / ys.shape[0]


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


def dapper_analysis_only(E, ys, repeats):
    """DAPPER's analysis step as its EnKF loop runs it: observe the ensemble,
    ``EnKF_analysis``, then ``post_process`` (inflation)."""
    from dapper.da_methods.ensemble import EnKF_analysis, post_process
    from dapper.mods.Lorenz96 import sakov2008

    Obs = sakov2008.HMM.Obs(0)
    E = np.asarray(E)
    times = []
    for _ in range(repeats):
        Ek = E.copy()
        t0 = time.perf_counter()
        for y in ys:
            Ea = EnKF_analysis(Ek, Obs(Ek), Obs.noise, y, "Sqrt")
            Ea = post_process(Ea, 1.02, False)
            Ek = Ek + 1e-12 * Ea
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(ys)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5000)
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, twin, E0 = make_twin(args.cycles, args.seed)
    K = args.cycles
    e_rmse, e_whole, e_compile, e_final = run_enkit(model, twin, E0, args.burn_in, args.repeats)
    d_rmse, d_whole = run_dapper(twin, E0, args.burn_in, args.repeats)
    # A forecast ensemble typical of the cycled regime (spread ≈ 0.2): the
    # forecast of enkit's final analysis ensemble, fed to both libraries.
    Ef = jax.vmap(model)(e_final)
    ys = np.asarray(twin.observations[:2000])
    e_an = enkit_analysis_only(Ef, jnp.asarray(ys), args.repeats)
    d_an = dapper_analysis_only(Ef, ys, args.repeats)
    import dapper

    lines = [
        "Lorenz-96 (n=40, F=8, dt=0.05, obs every step, R=I), ETKF N=40, inflation 1.02",
        f"cycles {K}, burn-in {args.burn_in}, float64, 1 thread everywhere, "
        f"median of {args.repeats}",
        f"enkit {enkit.__version__} (jax {jax.__version__}), DAPPER {dapper.__version__}, "
        f"numpy {np.__version__}",
        "",
        f"{'':<28}{'enkit':>12}{'DAPPER':>12}{'ratio':>10}",
        f"{'analysis RMSE':<28}{e_rmse:>12.4f}{d_rmse:>12.4f}{d_rmse / e_rmse:>10.3f}",
        f"{'whole run, ms per cycle':<28}{1e3 * e_whole / K:>12.4f}{1e3 * d_whole / K:>12.4f}"
        f"{d_whole / e_whole:>9.1f}x",
        f"{'analysis alone, ms':<28}{1e3 * e_an:>12.4f}{1e3 * d_an:>12.4f}{d_an / e_an:>9.1f}x",
        f"{'enkit compile, s':<28}{e_compile:>12.2f}",
    ]
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "vs_dapper.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
