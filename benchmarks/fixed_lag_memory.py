"""Memory of a long fixed-lag EnKS: streamed (``enks_stream``) vs one ``enks`` call.

Case: Sakov & Oke (2008) Lorenz-96 (n=40, F=8, RK4 dt=0.05, every variable
observed every step, R=I, no model error), ETKF N=20, inflation 1.04,
fixed lag L=10 analysis times.

- stream: 100,000 cycles with ``enkit.enks_stream`` in chunks of 1,000. The
  truth and the observations are made chunk by chunk too (a compiled scan
  of 1,000 model steps from the last truth state, observation noise from
  ``fold_in(key, chunk)``), and the RMSEs are accumulated as running sums,
  so nothing of length 100,000 is ever held: the process keeps the L=10
  lagged ensembles, the current chunk and the truth of the last two chunks
  (the smoothed estimates released in a chunk lag L cycles behind it). The
  peak resident memory (VmHWM) is read after 10k, 20k, 25k, 50k and 100k
  cycles.
- plain: one ``enks(..., lag=10)`` call over the first 20,000 and 100,000
  cycles of the same record (the same chunks, concatenated), which holds
  the observations, the truth and every stored output (K, n).

Both store the analysis and smoothed means and spreads. Each run is a fresh
interpreter (so its VmHWM is its own), made twice; the table gives medians.
The smoothed RMSE of the plain 20,000-cycle run over times 1..20,000−L
must equal the stream's over the same times (same cycles, same numbers).

Thread settings: one thread (OpenBLAS/MKL/OpenMP and XLA set by one_thread.py, before
NumPy and JAX load, inherited by the workers). Writes
benchmarks/results/fixed_lag_memory.txt (not with ``--quick``).

Run:  ./dev python benchmarks/fixed_lag_memory.py [--cycles 100000] [--chunk 1000]
          [--lag 10] [--plain 20000 100000] [--repeats 2] [--quick]
"""

import os

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

N_MEMBERS = 20
INFLATION = 1.04
BURN_IN = 1000
STORE = ("analysis_mean", "analysis_spread", "smoothed_mean", "smoothed_spread")


def vm(field="VmHWM"):
    """VmHWM (peak) or VmRSS (current) resident memory of this process, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- the record, streamed


def setup(seed):
    import jax

    jax.config.update("jax_enable_x64", True)
    from enkit.models.cases import sakov2008_lorenz96

    case = sakov2008_lorenz96()
    twin = case.twin(seed, 1)  # only for its spun-up x0
    E0 = case.initial_ensemble(twin, N_MEMBERS, seed)
    return case, twin.x0, E0


def record_chunks(case, x0, key, chunk, n_chunks):
    """Yield (truth, observations), each (chunk, n), chunk after chunk: the
    truth continues from the last state of the previous chunk."""
    import jax

    model, R = case.model, case.R

    @jax.jit
    def make(x, k):
        def step(x, _):
            x = model(x)
            return x, x
        x, xs = jax.lax.scan(step, x, length=chunk)
        return x, xs, xs + R.sample(k, (chunk,))

    x = x0
    for c in range(n_chunks):
        x, truth, obs = make(x, jax.random.fold_in(key, c))
        yield np.asarray(truth), np.asarray(obs)


def per_time_rmse(mean, truth):
    return np.sqrt(np.mean((np.asarray(mean) - truth) ** 2, axis=1))


class Running:
    """Running sums of per-time RMSEs for times > burn-in (and ≤ a cut)."""

    def __init__(self):
        self.sum, self.count = 0.0, 0

    def add(self, times, values):
        keep = times > BURN_IN
        self.sum += float(values[keep].sum())
        self.count += int(keep.sum())

    def mean(self):
        return self.sum / max(self.count, 1)


def worker_stream(args):
    import jax

    import enkit

    rss_imports = vm()
    case, x0, E0 = setup(args.seed)
    key = jax.random.fold_in(jax.random.key(args.seed), 7)
    n_chunks = args.cycles // args.chunk
    truths = collections.deque(maxlen=2)  # (first time index, truth) of the last 2 chunks

    def observations():
        start = 1
        for truth, obs in record_chunks(case, x0, key, args.chunk, n_chunks):
            truths.append((start, truth))
            start += args.chunk
            yield obs

    def truth_at(times):
        out = np.empty((len(times), x0.shape[0]))
        for i, t in enumerate(times):
            for start, tr in truths:
                if start <= t < start + len(tr):
                    out[i] = tr[t - start]
                    break
            else:
                raise RuntimeError(f"truth of time {t} no longer held")
        return out

    marks = sorted({m for m in (10_000, 20_000, 25_000, 50_000, 100_000, args.cycles)
                    if m <= args.cycles})
    filt, smooth, report = Running(), Running(), {}
    done, t_after_first = 0, None
    stream = enkit.enks_stream(case.model, E0, observations(), enkit.etkf, lag=args.lag,
                               h=case.h, R=case.R, inflation=INFLATION, store=STORE)
    for part in stream:
        if part.filtered is not None:
            ks = np.asarray(part.filtered.steps)
            filt.add(ks, per_time_rmse(part.filtered.analysis_mean, truth_at(ks)))
            done = int(ks[-1])
        s = part.smoothed
        if s.smoothed_mean is not None and len(s.steps):
            ts = np.asarray(s.steps)
            smooth.add(ts, per_time_rmse(s.smoothed_mean, truth_at(ts)))
        if t_after_first is None:
            t_after_first = time.perf_counter()
            rss_first = vm()
        if part.filtered is not None and done in marks:
            report[str(done)] = {"hwm": vm(), "rss": vm("VmRSS"), "filter": filt.mean(),
                                 "smoothed": smooth.mean(),
                                 "smoothed_upto": done - args.lag}
    seconds = time.perf_counter() - t_after_first
    return {"marks": report, "rss_imports": rss_imports, "rss_first_chunk": rss_first,
            "hwm": vm(), "filter": filt.mean(), "smoothed": smooth.mean(),
            "ms_per_cycle": 1e3 * seconds / (args.cycles - args.chunk)}


def worker_plain(args):
    import jax
    import jax.numpy as jnp

    import enkit

    rss_imports = vm()
    case, x0, E0 = setup(args.seed)
    key = jax.random.fold_in(jax.random.key(args.seed), 7)
    K = args.cycles
    parts = list(record_chunks(case, x0, key, args.chunk, K // args.chunk))
    truth = np.concatenate([p[0] for p in parts])
    obs = jnp.asarray(np.concatenate([p[1] for p in parts]))
    del parts
    rss_record = vm()
    t0 = time.perf_counter()
    res = jax.block_until_ready(enkit.enks(case.model, E0, obs, enkit.etkf, lag=args.lag,
                                           h=case.h, R=case.R, inflation=INFLATION,
                                           store=STORE))
    seconds = time.perf_counter() - t0
    times = np.arange(1, K + 1)
    a = per_time_rmse(res.analysis_mean, truth)
    s = per_time_rmse(res.smoothed_mean, truth)
    keep = times > BURN_IN
    cut = keep & (times <= K - args.lag)
    return {"rss_imports": rss_imports, "rss_record": rss_record, "hwm": vm(),
            "filter": float(a[keep].mean()), "smoothed": float(s[keep].mean()),
            "smoothed_upto_cut": float(s[cut].mean()), "cut": K - args.lag,
            "seconds_with_compile": seconds}


def spawn(kind, args, cycles):
    cmd = [sys.executable, __file__, "--worker", kind, "--cycles", str(cycles),
           "--chunk", str(args.chunk), "--lag", str(args.lag), "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def med(runs, *path):
    def get(r):
        for p in path:
            r = r[p]
        return r
    return statistics.median(get(r) for r in runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--lag", type=int, default=10)
    parser.add_argument("--plain", type=int, nargs="+", default=[20_000, 100_000],
                        help="cycles of the single enks calls")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="20,000 streamed and 10,000 plain cycles, one run; writes nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "fixed_lag_memory.txt"))
    args = parser.parse_args()
    if args.worker:
        result = (worker_stream if args.worker == "stream" else worker_plain)(args)
        print(json.dumps(result))
        return
    if args.quick:
        args.cycles, args.plain, args.repeats = 20_000, [10_000], 1
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    stream = [spawn("stream", args, args.cycles) for _ in range(args.repeats)]
    print("stream done", flush=True)
    plain = {K: [spawn("plain", args, K) for _ in range(args.repeats)] for K in args.plain}
    wall = time.perf_counter() - t0
    load_end = os.getloadavg()[0]

    import jax

    import enkit

    marks = sorted(stream[0]["marks"], key=int)
    lines = [
        "Fixed-lag EnKS memory: Lorenz-96 (Sakov & Oke 2008: n=40, F=8, dt=0.05, all "
        f"observed every step, R=I), ETKF N={N_MEMBERS}, inflation {INFLATION}, lag {args.lag}",
        f"float64, 1 thread; each run a fresh process, median of {args.repeats}; RMSEs are "
        f"time means after {BURN_IN} burn-in cycles",
        f"enkit {enkit.__version__} (jax {jax.__version__}), numpy {np.__version__}; 1-min "
        f"load average {load_start:.2f} at start, {load_end:.2f} at end (2 cores); "
        f"whole script {wall:.0f} s",
        "",
        f"enks_stream, chunks of {args.chunk} cycles, truth and observations made chunk by "
        f"chunk ({med(stream, 'ms_per_cycle'):.3f} ms per cycle after the first chunk)",
        f"peak RSS after the imports {med(stream, 'rss_imports'):.0f} MiB, after the first "
        f"chunk (compiled) {med(stream, 'rss_first_chunk'):.0f} MiB",
        f"{'cycles':>9}{'peak RSS MiB':>14}{'RSS MiB':>9}{'filter RMSE':>13}"
        f"{'smoothed RMSE':>15}  (smoothed: times ≤ cycles − lag)",
    ]
    for m in marks:
        lines.append(f"{int(m):>9}{med(stream, 'marks', m, 'hwm'):>14.0f}"
                     f"{med(stream, 'marks', m, 'rss'):>9.0f}"
                     f"{med(stream, 'marks', m, 'filter'):>13.5f}"
                     f"{med(stream, 'marks', m, 'smoothed'):>15.5f}")
    lines += [
        f"  after the final flush: smoothed RMSE {med(stream, 'smoothed'):.4f} over all "
        f"{args.cycles} cycles",
        "",
        f"one enks(..., lag={args.lag}) call over the same record (observations, truth and "
        "every stored output held)",
        f"{'cycles':>9}{'peak RSS MiB':>14}{'record MiB':>12}{'filter RMSE':>13}"
        f"{'smoothed RMSE':>15}{'same, t ≤ K−L':>16}{'s incl. compile':>17}",
    ]
    for K, runs in plain.items():
        lines.append(f"{K:>9}{med(runs, 'hwm'):>14.0f}{med(runs, 'rss_record'):>12.0f}"
                     f"{med(runs, 'filter'):>13.5f}{med(runs, 'smoothed'):>15.5f}"
                     f"{med(runs, 'smoothed_upto_cut'):>16.5f}"
                     f"{med(runs, 'seconds_with_compile'):>17.1f}")
    lines += [
        "",
        "peak RSS: VmHWM of the whole process (Python, JAX and XLA included); record MiB: "
        "peak RSS once the truth and observations are made, before enks runs.",
        "check: the stream's smoothed RMSE at a mark (times ≤ mark − lag) equals the plain "
        "run's 't ≤ K−L' column for K = that mark (same cycles, same numbers).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
