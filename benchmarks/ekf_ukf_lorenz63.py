"""EKF and UKF on Lorenz-63 (Sakov, Oliver & Bertino 2012 setting).

Case: ``enkit.models.cases.sakov2012_lorenz63`` — Lorenz-63, RK4 dt 0.01,
x, y, z observed every 25 steps with R = 2 I, no model error; the filters
start from the truth's start with P0 = 2 I (DAPPER's X0). 10,000 cycles,
time-mean analysis RMSE over the last 9,000 (the case's burn-in 1,000).

Filters:
- ``ekf_filter`` with inflation ρ = 180^Δt per model step (DAPPER's
  ``ExtKF(infl=180)``, which DAPPER's ``Lorenz63/sakov2012.py`` lists at
  ≈ 0.92). DAPPER evaluates the model Jacobian at the mean *after* the step;
  enkit at the mean before it (the textbook EKF).
- ``ukf_filter`` (cubature weights, sigma points redrawn every step) with
  the same inflation, and without inflation;
- ``ukf`` in ``enkit.assimilate`` (sigma-point ensemble, points propagated
  through the whole 25-step window, ``model_noise`` = q I added per cycle).

Each runs with two observation records (seeds 0 and 1); the table shows
both RMSEs and their median, and the time of the second call (compiled).
float64. Thread settings: one thread for XLA and the BLAS (set by one_thread.py).

Run:  python benchmarks/ekf_ukf_lorenz63.py          # writes results/ekf_ukf_lorenz63.txt
      python benchmarks/ekf_ukf_lorenz63.py --quick  # 1,000 cycles, nothing written
"""

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import enkit  # noqa: E402
from enkit.models.cases import sakov2012_lorenz63  # noqa: E402


def runners(case):
    x0, P0 = jnp.asarray(case.x0), 2.0 * jnp.eye(3)
    rho = 180.0 ** case.model.dt
    common = dict(h=case.h, R=case.R, steps_per_obs=case.steps_per_obs)

    def gaussian(f, **kw):
        return lambda ys: f(case.model, x0, P0, ys, **common, **kw).analysis_mean

    def driver(q):
        scheme = partial(enkit.ukf, model_noise=q * jnp.eye(3))
        return lambda ys: enkit.assimilate(case.model, enkit.ukf_ensemble(x0, P0), ys, scheme,
                                           **common).analysis_mean

    return [
        ("ekf_filter, inflation 180^dt (DAPPER ExtKF infl=180: 0.92)",
         gaussian(enkit.ekf_filter, inflation=rho)),
        ("ekf_filter, no inflation", gaussian(enkit.ekf_filter)),
        ("ukf_filter, inflation 180^dt", gaussian(enkit.ukf_filter, inflation=rho)),
        ("ukf_filter, no inflation", gaussian(enkit.ukf_filter)),
        ("ukf in assimilate, model_noise 0.5 I per cycle", driver(0.5)),
        ("ukf in assimilate, no model_noise", driver(0.0)),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    cycles = 1000 if args.quick else 10_000
    case = sakov2012_lorenz63(cycles=cycles, burn_in=100 if args.quick else 1000)
    twins = [case.twin(seed=s) for s in (0, 1)]
    lines = [f"Lorenz-63 sakov2012: {cycles} cycles, burn-in {case.burn_in}, float64, "
             "1 thread", f"{'filter':58s} {'rmse (median)':>14s} {'runs':>16s} {'s/run':>7s}"]
    for name, run in runners(case):
        scores, seconds = [], 0.0
        for twin in twins:
            t = time.perf_counter()
            xa = np.asarray(run(twin.observations))
            seconds = time.perf_counter() - t
            err = xa[case.burn_in:] - np.asarray(twin.truth)[case.burn_in:]
            r = np.sqrt(np.mean(err**2, axis=1))
            scores.append(float(np.mean(r)) if np.all(np.isfinite(r)) else float("nan"))
        runs = " ".join(f"{s:.3f}" for s in scores)
        lines.append(f"{name:58s} {statistics.median(scores):14.3f} {runs:>16s} "
                     f"{seconds:7.2f}")
        print(lines[-1], flush=True)
    if not args.quick:
        out = pathlib.Path(__file__).parent / "results" / "ekf_ukf_lorenz63.txt"
        out.write_text("\n".join(lines) + "\n")
        print("wrote", out)


if __name__ == "__main__":
    main()
