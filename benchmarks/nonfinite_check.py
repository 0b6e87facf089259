"""Cost of the driver's finite-check, and what it reports on a blow-up.

Case: Sakov & Oke (2008) Lorenz-96 (n=40, F=8, RK4 dt=0.05, every variable
observed every step, R=I), ETKF N=20, inflation 1.02, 10,000 cycles in one
compiled scan. The model is ``Lorenz96`` plus a control added to the state
(zero everywhere, so the clean runs are plain Lorenz-96); in the blow-up run
the control is NaN for the model step into cycle 6,000.

- cost: the same clean run with ``on_nonfinite="raise"`` (the check: one
  finiteness reduction per cycle, of the ensemble the cycle hands on; the
  failing stage is found afterwards by re-running the failed cycle) and with "ignore"
  (no check), each compiled once beforehand, then alternated, 21 times
  each; the table gives the medians, the median of the paired ratios and
  the ratio of the fastest runs. Times are the process's CPU time (XLA and
  BLAS on one thread), which other processes on a loaded 2-core machine
  disturb less than wall time (single wall-time runs vary by ±15% there).
- blow-up: the error's cycle, stage and message, and that its partial
  result holds the 5,999 earlier cycles, equal to the clean run's.

Thread settings: one thread (OpenBLAS/MKL/OpenMP and XLA set by one_thread.py, before
NumPy and JAX load). Writes benchmarks/results/nonfinite_check.txt (not with
``--quick``).

Run:  ./dev python benchmarks/nonfinite_check.py [--cycles 10000] [--blow-at 6000]
          [--repeats 21] [--quick]
"""

import os

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import enkit  # noqa: E402
from enkit.models.twin import integrate  # noqa: E402

jax.config.update("jax_enable_x64", True)


def make_case(cycles: int, n: int = 40, N: int = 20, seed: int = 0):
    l96 = enkit.Lorenz96(n=n, F=8.0, dt=0.05)
    k_x0, k_obs, k_ens = jax.random.split(jax.random.key(seed), 3)
    x0 = integrate(l96, 8.0 + jax.random.normal(k_x0, (n,)), 2000)
    _, truth = jax.lax.scan(lambda x, _: (l96(x), l96(x)), x0, length=cycles)
    ys = truth + jax.random.normal(k_obs, truth.shape)
    E0 = x0 + jax.random.normal(k_ens, (N, n))
    return l96, truth, ys, E0


def forced(x, u, l96=enkit.Lorenz96(n=40, F=8.0, dt=0.05)):
    """One Lorenz-96 step plus the control u (one function object, so every
    run reuses one compiled program)."""
    return l96(x) + u


def run(l96, E0, ys, controls, mode):
    return enkit.assimilate(forced, E0, ys, enkit.etkf, h=jnp.eye(E0.shape[1]), R=1.0,
                            inflation=1.02, controls=controls, on_nonfinite=mode,
                            store=("analysis_mean",))


def main(cycles=10_000, blow_at=6_000, repeats=21, quick=False):
    l96, truth, ys, E0 = make_case(cycles)
    clean = jnp.zeros((cycles + 1, 1))
    lines = [f"Lorenz-96 n=40, ETKF N=20, inflation 1.02, {cycles} cycles, one compiled scan; "
             f"load {os.getloadavg()[0]:.2f} at start", ""]
    times = {"raise": [], "ignore": []}
    for mode in times:  # compile both first
        jax.block_until_ready(run(l96, E0, ys, clean, mode).analysis_mean)
    for _ in range(repeats):
        for mode in times:
            t0 = time.process_time()
            jax.block_until_ready(run(l96, E0, ys, clean, mode).analysis_mean)
            times[mode].append(time.process_time() - t0)
    med = {m: float(np.median(v)) for m, v in times.items()}
    lines += ["on_nonfinite   median CPU [s]   runs (process CPU time) [s]",
              *[f"{m:<14} {med[m]:14.3f}   " + " ".join(f"{t:.3f}" for t in times[m])
                for m in times],
              f"check cost: {100 * (med['raise'] / med['ignore'] - 1):+.1f}% of the run time "
              "(medians), "
              f"{100 * (np.median(np.divide(times['raise'], times['ignore'])) - 1):+.1f}% "
              "(median of the paired ratios), "
              f"{100 * (min(times['raise']) / min(times['ignore']) - 1):+.1f}% (fastest runs)",
              ""]
    reference = run(l96, E0, ys, clean, "ignore")
    blown = clean.at[blow_at - 1].set(jnp.nan)
    try:
        run(l96, E0, ys, blown, "raise")
        lines.append("blow-up: NOT reported")
    except enkit.NonFiniteError as err:
        same = bool(np.array_equal(err.result.analysis_mean,
                                   reference.analysis_mean[:blow_at - 1]))
        lines += [f"blow-up at cycle {blow_at}: reported cycle {err.cycle}, stage "
                  f"{err.stage!r}, time {err.time:g}",
                  f"partial result: {err.result.analysis_mean.shape[0]} cycles, equal to the "
                  f"clean run's: {same}", f"message: {err}"]
    rmse = float(jnp.mean(reference.rmse(truth)[cycles // 10:]))
    lines.append(f"clean run analysis RMSE (after 10% burn-in): {rmse:.3f}")
    text = "\n".join(lines)
    print(text)
    if not quick:
        out = os.path.join(os.path.dirname(__file__), "results", "nonfinite_check.txt")
        with open(out, "w") as f:
            f.write(text + "\n")
    return med, text


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=10_000)
    p.add_argument("--blow-at", type=int, default=6_000)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.quick:
        main(cycles=1_000, blow_at=600, repeats=2, quick=True)
    else:
        main(a.cycles, a.blow_at, a.repeats)
