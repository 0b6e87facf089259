"""A twin experiment on a 2-D grid of 320 × 320 = 102,400 state variables.

Case: ``enkit.AdvectionDiffusion2D`` on a periodic 320 × 320 grid of unit
spacing (gyres of 40 cells, speed 1, drift (0.3, 0.2), κ = 0.05, dt = 1),
truth started from a smooth random field (length scale 8 cells, std 2),
observed every 5 steps on the coarse sub-grid of every 4th point in each
direction (80 × 80 = 6,400 observations, error std 0.2, R = 0.04 I).
N = 20 members xb + e_k around a background xb = truth + e_0, e_0 and e_k
independent smooth random fields of std 2 (the truth is one more member);
multiplicative inflation 1.05 of the analysis anomalies.

Schemes, both with a Gaspari–Cohn taper of length scale 6 cells (support
12) on the torus (``enkit.torus_distance``), each analysis restricted to the
exact maximum number of observations inside the support (``max_obs``):

- ``patch_etkf`` with 8 × 8 patches (1,600 local analyses, transforms
  blended bilinearly between patch centres);
- ``letkf`` (102,400 local analyses), unless ``--no-letkf``.

Reports, per scheme, the forecast and analysis RMSE against the truth at
every cycle and the median wall time per cycle (forecast of N members over
5 steps, analysis) over the cycles after the first (which includes
compilation). The RMSE of the free run (no assimilation) is given for
reference.

Thread settings: XLA's CPU backend is limited to one intra-op thread (set
below, before JAX is imported). This is not a ratio benchmark: it was run
once on a shared 2-core machine, so concurrent load can only make the times
pessimistic. Float64.

Run (full size, writes benchmarks/results/grid2d.txt):
    .venv/bin/python benchmarks/grid2d.py
Small smoke run (send its table elsewhere with --out):
    .venv/bin/python benchmarks/grid2d.py --n 64 --cycles 3 --out /tmp/grid2d.txt
"""

import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import pathlib
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import enkit

jax.config.update("jax_enable_x64", True)


def max_in_support(centres, obs, support, period):
    """Largest number of observations within ``support`` of any of the centres."""
    d = np.asarray(jax.vmap(lambda c: enkit.torus_distance(c, obs, period))(centres))
    return int((d < support).sum(axis=1).max())


def run(args):
    n, every, N = args.n, args.obs_every, args.members
    model = enkit.AdvectionDiffusion2D(
        nx=n, ny=n, Lx=float(n), Ly=float(n), cells=max(1, n // 80), A=1.0, U=0.3, V=0.2,
        kappa=0.05, dt=1.0,
    )
    key = jax.random.key(args.seed)
    x0 = 2.0 * model.random_field(jax.random.fold_in(key, 0), 8.0)
    idx = jnp.arange(model.dim).reshape(n, n)[::every, ::every].ravel()
    m = int(idx.size)
    obs_coords = model.coordinates[idx]
    sigma = 0.2

    def h(x):
        return x[idx]

    twin = enkit.twin_experiment(model, x0, key=jax.random.fold_in(key, 1), n_obs=args.cycles,
                                 h=h, R=sigma**2, steps_per_obs=args.steps_per_obs)
    # background mean x0 + e₀ and members around it, e_k of the same law: the truth is
    # statistically one more member
    xb = x0 + 2.0 * model.random_field(jax.random.fold_in(key, 2), 8.0)
    E0 = xb + 2.0 * model.random_field(jax.random.fold_in(key, 3), 8.0, (N,))
    R = enkit.Scalar(sigma**2, m)
    period = (float(n), float(n))
    distance = partial(enkit.torus_distance, period=period)
    support = 2.0 * args.radius
    # exact counts inside the support (the network repeats every `every` cells)
    p = args.patch
    patch_centres = jnp.array([[0.5 * (p - 1), 0.5 * (p - 1)]])
    k_patch = max_in_support(patch_centres, obs_coords, support, period)
    grid_block = jnp.stack(jnp.meshgrid(jnp.arange(every), jnp.arange(every)), -1).reshape(-1, 2)
    k_letkf = max_in_support(grid_block.astype(float), obs_coords, support, period)

    forecast = jax.jit(jax.vmap(lambda x: enkit.models.integrate(model, x, args.steps_per_obs)))
    schemes = {
        "patch_etkf": partial(
            enkit.patch_etkf, grid_shape=(n, n), patch_shape=(p, p),
            state_coords=model.coordinates, obs_coords=obs_coords, radius=args.radius,
            distance=distance, periodic=True, max_obs=k_patch,
        ),
    }
    if args.letkf:
        schemes["letkf"] = partial(
            enkit.letkf, state_coords=model.coordinates, obs_coords=obs_coords,
            radius=args.radius, distance=distance, max_obs=k_letkf, chunk_size=256,
        )

    def inflate(E):
        mean = E.mean(axis=0)
        return mean + args.inflation * (E - mean)

    rows, timing = [], {}
    truth = np.asarray(twin.truth)
    x_free = np.asarray(E0.mean(axis=0))
    free = []
    free_step = jax.jit(lambda x: enkit.models.integrate(model, x, args.steps_per_obs))
    for k in range(args.cycles):
        x_free = free_step(x_free)  # the model is linear: the mean of free runs
        free.append(float(enkit.rmse(x_free, truth[k])))
    for name, scheme in schemes.items():
        analyse = jax.jit(lambda E, y, scheme=scheme: inflate(scheme(E, y, h, R)))
        E = E0
        t_f, t_a = [], []
        for k in range(args.cycles):
            t0 = time.perf_counter()
            E = jax.block_until_ready(forecast(E))
            t1 = time.perf_counter()
            rmse_f = float(enkit.rmse(E.mean(axis=0), truth[k]))
            t2 = time.perf_counter()
            E = jax.block_until_ready(analyse(E, twin.observations[k]))
            t3 = time.perf_counter()
            rmse_a = float(enkit.rmse(E.mean(axis=0), truth[k]))
            spread = float(enkit.ensemble_spread(E))
            t_f.append(t1 - t0)
            t_a.append(t3 - t2)
            rows.append((name, k + 1, free[k], rmse_f, rmse_a, spread, t1 - t0, t3 - t2))
            print(rows[-1], flush=True)
        later = slice(1, None) if args.cycles > 1 else slice(None)
        timing[name] = (statistics.median(t_f[later]), statistics.median(t_a[later]),
                        t_f[0], t_a[0])

    lines = [
        (f"2-D twin experiment: AdvectionDiffusion2D {n} x {n} = {model.dim} state variables, "
         f"N={N}, m={m} observations (every {every}th point, error std {sigma}), "
         f"{args.steps_per_obs} model steps per cycle, {args.cycles} cycles, inflation "
         f"{args.inflation}"),
        (f"localisation: Gaspari-Cohn length scale {args.radius} (support {support}) on the "
         f"torus; patch_etkf {p} x {p} patches ({(n // p) ** 2} local analyses, blended), "
         f"max_obs={k_patch}; letkf max_obs={k_letkf}"),
        (f"float64, 1 XLA intra-op thread; jax {jax.__version__}, device "
         f"{jax.devices()[0].platform}; run once on a shared 2-core machine with other jobs"),
        "running, so the times are pessimistic (not a ratio benchmark). Time per cycle =",
        "forecast + analysis, median over cycles 2..K (cycle 1 includes compilation).",
        "RMSE of the ensemble mean against the truth; free = no assimilation.",
        "",
        (f"{'scheme':<11} {'cycle':>5} {'free RMSE':>10} {'forecast':>9} {'analysis':>9} "
         f"{'spread':>8} {'t_fc [s]':>9} {'t_an [s]':>9}"),
    ]
    lines += [f"{s:<11} {k:>5} {fr:>10.4f} {f:>9.4f} {a:>9.4f} {sp:>8.4f} {tf:>9.3f} {ta:>9.3f}"
              for s, k, fr, f, a, sp, tf, ta in rows]
    lines += ["", (f"{'scheme':<11} {'forecast [s]':>13} {'analysis [s]':>13} {'cycle [s]':>10} "
                   f"{'1st fc+compile':>15} {'1st an+compile':>15}")]
    lines += [f"{s:<11} {tf:>13.3f} {ta:>13.3f} {tf + ta:>10.3f} {f0:>15.3f} {a0:>15.3f}"
              for s, (tf, ta, f0, a0) in timing.items()]
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=320, help="grid points per side")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--obs-every", type=int, default=4)
    parser.add_argument("--steps-per-obs", type=int, default=5)
    parser.add_argument("--patch", type=int, default=8, help="patch side in grid points")
    parser.add_argument("--radius", type=float, default=6.0, help="Gaspari-Cohn length scale")
    parser.add_argument("--inflation", type=float, default=1.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-letkf", dest="letkf", action="store_false")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "grid2d.txt"))
    args = parser.parse_args()
    run(args)


if __name__ == "__main__":
    main()
