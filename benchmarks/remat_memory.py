"""Memory and time of reverse-mode gradients through a long run: ``remat``.

Case: Lorenz-96 (n=40, F=8, RK4 dt=0.05), every second variable observed
every step (m=20, R=I), ETKF N=20, inflation 1.02, 1,000 cycles (and 250,
4,000 to show how memory grows). The loss is the run's negative
log-likelihood (``enkit.losses``); its gradient with respect to F and the
inflation factor is taken with ``jax.grad`` under ``jax.jit``, with
``assimilate(remat=None | "cycle" | L)`` for L = 8, 32 (≈ √1000) and 100.
Also the truncated gradient of ``enkit.losses.truncated_value_and_grad``
(windows of 25 cycles, start of each window held fixed), an O(window)
approximation.

Reported per setting:
- XLA temp MiB: the compiled gradient program's temporary buffers
  (``Compiled.memory_analysis().temp_size_in_bytes``), what reverse mode
  stores: exact and deterministic;
- peak RSS MiB: the rise of the process's peak resident memory (VmHWM) over
  the first execution, in a fresh interpreter per setting;
- s/grad: wall time of one gradient after compilation (median of 3);
- the gradient, which must equal the plain run's to round-off (and, for the
  truncated one, only approximately).

Thread settings: one thread (OpenBLAS/MKL/OpenMP and XLA set by one_thread.py, before
NumPy and JAX load, inherited by the subprocesses). Writes
benchmarks/results/remat_memory.txt (not with ``--quick``).

Run:  ./dev python benchmarks/remat_memory.py [--quick]
"""

import os

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

N, n, WINDOW = 20, 40, 25


def vm_hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(cycles: int, remat: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import enkit
    from enkit import losses
    from enkit.models import Lorenz96

    H = np.eye(n)[::2]
    grid = np.arange(n, dtype=float)
    twin = enkit.twin_experiment(Lorenz96(n=n, F=8.0, dt=0.05), 8.0 + np.sin(grid), key=0,
                                 n_obs=cycles, h=H, R=1.0, spinup=200)
    E0 = jnp.asarray(np.asarray(twin.x0) + np.random.default_rng(1).standard_normal((N, n)))
    ys = twin.observations
    p0 = jnp.array([7.5, 1.02])

    if remat == "truncated":
        def segment(p, E, y, key):
            r = enkit.assimilate(Lorenz96(n=n, F=p[0], dt=0.05), E, y, enkit.etkf, h=H,
                                 R=1.0, inflation=p[1], store=("log_likelihood",),
                                 on_nonfinite="ignore")
            return losses.negative_log_likelihood(r), r.ensemble

        def grad(p):
            return losses.truncated_value_and_grad(segment, p, E0, ys, window=WINDOW)[1]
    else:
        setting = None if remat == "none" else "cycle" if remat == "cycle" else int(remat)

        def loss(p):
            r = enkit.assimilate(Lorenz96(n=n, F=p[0], dt=0.05), E0, ys, enkit.etkf, h=H,
                                 R=1.0, inflation=p[1], remat=setting,
                                 store=("log_likelihood",), on_nonfinite="ignore")
            return losses.negative_log_likelihood(r)

        grad = jax.grad(loss)
    compiled = jax.jit(grad).lower(p0).compile()
    analysis = compiled.memory_analysis()
    temp = analysis.temp_size_in_bytes / 2**20 if analysis is not None else float("nan")
    before = vm_hwm()
    g = compiled(p0).block_until_ready()
    rise = vm_hwm() - before
    times = []
    for _ in range(3):
        t = time.perf_counter()
        compiled(p0).block_until_ready()
        times.append(time.perf_counter() - t)
    return {"temp": temp, "rss": rise, "s": sorted(times)[1], "grad": np.asarray(g).tolist()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return
    import jax
    import numpy as np

    import enkit

    start = time.time()
    load0 = os.getloadavg()[0]
    grid = ([(250, "none"), (250, "cycle")] if args.quick else
            [(c, s) for c in (250, 1000, 4000)
             for s in ("none", "cycle", "8", "32", "100", "truncated")])
    rows = []
    for cycles, setting in grid:
        out = subprocess.run([sys.executable, __file__, "--child", str(cycles), setting],
                             capture_output=True, text=True, check=True)
        rows.append((cycles, setting, json.loads(out.stdout.strip().splitlines()[-1])))
        print(cycles, setting, rows[-1][2], flush=True)
    plain = {c: r["grad"] for c, s, r in rows if s == "none"}
    lines = [
        "Reverse-mode memory and time through a long run: assimilate(remat=...)",
        f"Lorenz-96 n={n}, F=8, dt=0.05, every 2nd variable observed each step (m=20, R=I), "
        f"ETKF N={N}, inflation 1.02; gradient of the run's negative log-likelihood in "
        "(F, inflation) at (7.5, 1.02)",
        f"float64, 1 thread; each row a fresh process; enkit {enkit.__version__} (jax "
        f"{jax.__version__}); 1-min load average {load0:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end (2 cores); whole script {time.time() - start:.0f} s",
        "",
        f"{'cycles':>7} {'remat':>10} {'XLA temp MiB':>13} {'peak RSS rise MiB':>18} "
        f"{'s/grad':>8} {'temp / plain':>13} {'max rel. diff. of grad vs plain':>32}",
    ]
    temps = {c: r["temp"] for c, s, r in rows if s == "none"}
    for cycles, setting, r in rows:
        diff = np.max(np.abs(np.subtract(r["grad"], plain[cycles])) /
                      np.abs(plain[cycles]))
        diff = "(approximate)" if setting == "truncated" else f"{diff:.2e}"
        lines.append(f"{cycles:>7} {setting:>10} {r['temp']:>13.2f} {r['rss']:>18.1f} "
                     f"{r['s']:>8.3f} {r['temp'] / temps[cycles]:>13.4f} {diff:>32}")
    lines += [
        "",
        "remat: none = assimilate's default (every intermediate value kept); cycle = "
        "jax.checkpoint on every cycle; an integer L = nested segments of L cycles;",
        f"truncated = losses.truncated_value_and_grad with windows of {WINDOW} cycles (an "
        "approximate gradient: each window's ensemble at its start held fixed).",
        "XLA temp: temporary buffers of the compiled gradient program (what reverse mode "
        "stores); peak RSS rise: VmHWM growth during its first execution.",
        "gradients (F, inflation), exact vs truncated: " + "; ".join(
            f"{c} cycles {np.format_float_scientific(plain[c][0], 2)} vs "
            f"{next(r['grad'][0] for cc, s, r in rows if cc == c and s == 'truncated'):.4g}"
            for c in plain if any(cc == c and s == "truncated" for cc, s, _ in rows)),
        "(in F; the exact gradient through a chaotic run grows with the length of the run, "
        "the truncated one stays of the size of one window's sensitivity)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        out = pathlib.Path(__file__).parent / "results" / "remat_memory.txt"
        out.write_text(text)


if __name__ == "__main__":
    main()
