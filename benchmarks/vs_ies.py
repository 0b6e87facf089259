"""enkit's ESMDA vs the iterative_ensemble_smoother package's ESMDA.

ES-MDA (Emerick & Reynolds 2013), constant schedule αₖ = K, K = 4, on a
linear forward map with diagonal Γ. Both libraries get the same prior
ensemble, the same data and the same observation perturbations ξₖ (drawn
with enkit's key scheme, ``fold_in(key, k)``, and handed to the peer through
its ``observation_perturbations``); the peer runs with ``truncation=1.0``
(exact inversion, as enkit), so both compute the same update.

(a) accuracy: p = 100 parameters, d = 50 observations, N = 500 members,
    correlated Gaussian prior, G(u) = A u with A dense: the error of each
    library's posterior mean against the analytic (Kalman) posterior mean,
    and the largest difference between the two final ensembles.
(b) size: p = 200,000, d = 1,000, N = 100, G(u) = 2 u[idx] (each datum
    observes one parameter; forward cost negligible): wall time of the K
    analyses (forward evaluations excluded), CPU time, page faults and peak
    resident memory. Every variant lives in its own worker subprocess (its
    peak RSS is its own), started before the parent loads JAX; each does one
    warm-up run (enkit: compilation), then the parent asks the workers for
    one run each in turn, ``--repeats`` rounds: the variants run
    interleaved, one at a time, so they see the same machine load, and the
    1-minute load average is read before every run. Medians are reported.
    Variants: enkit ``tell`` jitted (a JAX forward model) and called eagerly
    on NumPy outputs (a black-box forward model), each with the default
    update and with ``overwrite=True`` (the told ensemble's buffer reused:
    jitted with ``donate_argnums=0``); enkit's EKI with Δt = 1/K (the same
    update, the same draws ξₖ); the peer with ``overwrite=False`` (its
    default) and ``overwrite=True``.

What the ratio depends on (measured on this 2-core machine, p = 200,000):
the (N, N) × (N, p) product costs the same in XLA and in OpenBLAS on one
thread (0.105 vs 0.106 s; the peer's (p, N) × (N, N) orientation 0.145 s),
and XLA's dot is single-threaded here (CPU time = wall time on a quiet
machine, though the process holds 16 threads). enkit forms the (N, d) and
(N, N) pieces first and makes one (N, N) × (N, p) product; the peer adds a
copy of X, a (p, N) anomaly array and an in-place sum, three more passes
over 153 MB. What moves with the load is memory: XLA allocates each (N, p)
result fresh, on 4 kB pages (39,063 first-touch page faults per analysis,
about 0.1 s of kernel time each at load 5-9, nearly half of enkit's CPU
time), while NumPy asks for transparent huge pages (about 2,000 faults).
``overwrite=True`` writes the update into the told ensemble's buffer: no
fresh pages, the kernel time gone. Without it, XLA's buffers come from
glibc's malloc (mmap for large blocks), which asks for transparent huge
pages when the process starts with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc >= 2.35; Linux with THP "always" or "madvise"): the "glibc
hugetlb=1" variant is the default jitted tell in a worker started so
(about 500 faults per analysis instead of 39,063). Measured on 2026-12-07 it
was no reliable gain: 0.78 -> 0.70 s in the quiet vs_ies.txt run, 0.79 ->
1.04 s in table.py's quiet run and 1.13 -> 1.47 s at load 2.6
(vs_ies_load2.txt); the row stays as that measured answer. An earlier figure of 0.92× "under
load" came from running the libraries one after the other while the
machine's load changed; the workers here run interleaved. And the loaded
figure of 1.81x (benchmarks/results/table_load2.txt before 2026-12-07) came
from one_thread.py leaving JAX's threads, where the compiled update runs,
pinned to the first CPU: under load the update could not move to the idler
core while the peer's single thread could (2.97x once every thread gets
all CPUs back).

--load L starts L busy-loop processes (``while True: pass``) for the whole
of (b), killed at the end, so a loaded machine is reproducible; the load
average recorded beside the timings includes them and anything else that
runs on the machine.

Thread settings: one thread for every library (OpenBLAS/MKL/OpenMP and XLA
set by one_thread.py, before NumPy and JAX load, and inherited by the subprocesses).
Writes benchmarks/results/vs_ies.txt, or vs_ies_load<L>.txt with --load L
(--quick: vs_ies_quick*.txt, its header marked QUICK).

Run (the peer lives in the bench environment):
    .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python benchmarks/vs_ies.py [--repeats 5] [--load 2]
    .venv-bench/bin/python benchmarks/vs_ies.py --quick    # small sizes
"""

import os

import one_thread  # first: one thread for NumPy and XLA

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from machine_load import busy_loops, load_1min  # noqa: E402

K = 4  # ES-MDA steps, αₖ = K


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this
    program's own memory (ru_maxrss would carry over the parent's peak
    across fork + exec); elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes vs KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def rss_now_mb() -> float:
    """Current resident set size, MB (VmRSS; 0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: ``5`` into clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def enkit_perturbations(key_seed, variances, N):
    """ξₖ ~ N(0, diag(variances)), k = 0..K−1, exactly as ESMDA.tell draws
    them: ``Diagonal(variances).sample(fold_in(key, k), (N,))``. (K, N, d)."""
    import jax

    jax.config.update("jax_enable_x64", True)  # the benchmark's own choice
    import enkit

    key = jax.random.key(key_seed)
    noise = enkit.Diagonal(np.asarray(variances))
    return np.stack([np.asarray(noise.sample(jax.random.fold_in(key, k), (N,)))
                     for k in range(K)])


# ------------------------------------------------------ (a) accuracy ----


def case_accuracy(p=100, d=50, N=500, seed=0):
    import jax

    jax.config.update("jax_enable_x64", True)
    import iterative_ensemble_smoother as ies

    import enkit

    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, p)) / np.sqrt(p)
    L = rng.normal(size=(p, p)) / np.sqrt(p) + np.eye(p)
    C0 = L @ L.T
    m0 = rng.normal(size=p)
    variances = 0.05 * (1.0 + rng.uniform(size=d))
    truth = m0 + L @ rng.normal(size=p)
    y = A @ truth + np.sqrt(variances) * rng.normal(size=d)
    U0 = m0 + rng.normal(size=(N, p)) @ L.T
    # analytic posterior mean
    S = A @ C0 @ A.T + np.diag(variances)
    m_post = m0 + C0 @ A.T @ np.linalg.solve(S, y - A @ m0)
    post_sd = np.sqrt(np.diag(C0 - C0 @ A.T @ np.linalg.solve(S, A @ C0)))

    key_seed = 1
    proc = enkit.ESMDA(enkit.esmda_constant_alpha(K))
    state = proc.init(key_seed, U0)
    noise = enkit.Diagonal(variances)
    for _ in range(K):
        U = np.asarray(proc.ask(state))
        state, _ = proc.tell(state, U @ A.T, y, noise)
    U_enkit = np.asarray(state.ensemble)

    xis = enkit_perturbations(key_seed, variances, N)
    smoother = ies.ESMDA(variances, y, alpha=np.full(K, float(K)), seed=0)
    X = U0.T.copy()  # the peer holds (p, N) columns
    for k in range(K):
        smoother.prepare_assimilation(Y=A @ X, truncation=1.0,
                                      observation_perturbations=xis[k].T.copy())
        X = smoother.assimilate_batch(X=X)
    U_peer = X.T

    def err(U):
        return float(np.sqrt(np.mean((U.mean(0) - m_post) ** 2)))

    return dict(p=p, d=d, N=N, err_enkit=err(U_enkit), err_peer=err(U_peer),
                err_prior=err(U0), post_sd=float(np.sqrt(np.mean(post_sd**2))),
                max_diff=float(np.max(np.abs(U_enkit - U_peer))))


# ---------------------------------------------------------- (b) size ----


VARIANTS = (  # (library, mode, overwrite); "eki": enkit's EKI with Δt = 1/K
    ("enkit", "jit", False),
    ("enkit", "jit", True),
    ("enkit", "jit-thp", False),
    ("enkit", "eager", False),
    ("enkit", "eager", True),
    ("eki", "jit", False),
    ("eki", "eager", True),
    ("peer", "-", False),
    ("peer", "-", True),
)


def size_problem(p, d, N, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.arange(d) * (p // d)
    variances = 0.5 + np.arange(d) / d
    y = 2.0 * rng.normal(size=d)
    return idx, variances, y


def enkit_runner(lib, p, d, N, xi_file, mode, overwrite):
    """enkit's K analyses as ``run() -> (Clock of the analyses, final ensemble mean)``, and
    the RSS after starting the JAX runtime (MB)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import enkit

    jax.block_until_ready(jnp.zeros(1) + 1)  # start the runtime before the baseline
    base = rss_mb()
    idx, variances, y = size_problem(p, d, N)
    U0 = jnp.asarray(np.random.default_rng(1).standard_normal((N, p)))
    noise = enkit.Diagonal(jnp.asarray(variances))
    y = jnp.asarray(y)
    jidx = jnp.asarray(idx)
    if lib == "eki":
        # EKI with Δt = 1/αₖ is the ES-MDA step, and draws the same ξₖ.
        proc = enkit.EKI(overwrite=overwrite)

        def tell(s, G):
            return proc.tell(s, G, y, noise, dt=1.0 / K)
    else:
        proc = enkit.ESMDA(enkit.esmda_constant_alpha(K), overwrite=overwrite)

        def tell(s, G):
            return proc.tell(s, G, y, noise)

    if mode in ("jit", "jit-thp"):
        step = jax.jit(tell, donate_argnums=0 if overwrite else ())
        forward = jax.jit(lambda U: 2.0 * U[:, jidx])
    else:
        step = tell

        def forward(U):
            return 2.0 * np.asarray(U)[:, idx]  # a black box: NumPy out

    def run():
        state = proc.init(1, U0)  # overwrite=True: init stores a copy of U0
        clock = Clock()
        for _ in range(K):
            G = jax.block_until_ready(forward(proc.ask(state)))
            with clock:
                state, _ = step(state, G)
                jax.block_until_ready(state.ensemble)
        return clock, np.asarray(jnp.mean(state.ensemble, axis=0))

    return run, base


def peer_runner(lib, p, d, N, xi_file, mode, overwrite):
    """The peer's K analyses as ``run() -> (Clock, final ensemble mean)``, and
    the RSS after the imports (MB)."""
    import iterative_ensemble_smoother as ies

    base = rss_mb()
    idx, variances, y = size_problem(p, d, N)
    X0 = np.random.default_rng(1).standard_normal((N, p)).T.copy()  # (p, N) columns
    xis = np.load(xi_file)

    def run():
        smoother = ies.ESMDA(variances, y, alpha=np.full(K, float(K)), seed=0)
        X = X0.copy() if overwrite else X0  # overwrite: the peer may mutate X
        clock = Clock()
        for k in range(K):
            Y = 2.0 * X[idx, :]
            xi = xis[k].T.copy()
            with clock:
                smoother.prepare_assimilation(Y=Y, truncation=1.0,
                                              observation_perturbations=xi)
                X = smoother.assimilate_batch(X=X, overwrite=overwrite)
        return clock, X.mean(axis=1)

    return run, base


class Clock:
    """Sums, over the ``with`` blocks it times, the wall seconds, CPU seconds
    (user + system), system seconds and minor page faults of this process."""

    def __init__(self):
        self.wall = self.cpu = self.sys = 0.0
        self.faults = 0

    def __enter__(self):
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._t0
        r0, r1 = self._r0, resource.getrusage(resource.RUSAGE_SELF)
        self.cpu += (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        self.sys += r1.ru_stime - r0.ru_stime
        self.faults += r1.ru_minflt - r0.ru_minflt


def worker(lib, p, d, N, xi_file, out_file, mode, overwrite):
    """A worker subprocess: set up, warm up, then one run per ``run`` line
    on stdin (answering one JSON line each) until ``done`` (answering the
    memory figures, and saving the final ensemble mean to out_file)."""
    make = peer_runner if lib == "peer" else enkit_runner
    run, base = make(lib, p, d, N, xi_file, mode, overwrite)
    t0 = time.perf_counter()
    run()  # warm-up (enkit: compilation)
    first = time.perf_counter() - t0
    peak_all = rss_mb()
    gc.collect()
    reset_peak()
    before = rss_now_mb()
    print(json.dumps(dict(ready=True)), flush=True)
    mean = None
    for line in sys.stdin:
        if line.strip() == "done":
            break
        load = load_1min()
        clock, mean = run()
        print(json.dumps(dict(time=clock.wall, load=load, cpu=clock.cpu, sys=clock.sys,
                              faults=clock.faults)), flush=True)
    np.save(out_file, mean)
    print(json.dumps(dict(first=first, peak=max(peak_all, rss_mb()), run_peak=rss_mb(),
                          before=before, base=base)), flush=True)


def start_worker(lib, mode, overwrite, p, d, N, xi_file, out_file):
    cmd = [sys.executable, __file__, "--child", lib, "--mode", mode,
           "--size", f"{p},{d},{N}", "--xi-file", xi_file, "--out-file", out_file]
    if overwrite:
        cmd.append("--overwrite")
    env = dict(os.environ)
    if mode.endswith("-thp"):  # glibc's malloc asks for huge pages (read at process start)
        env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"),
                                                       "glibc.malloc.hugetlb=1")))
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def ask(proc, line=None):
    """Send ``line`` to a worker (if given) and read its JSON answer."""
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    out = proc.stdout.readline()
    if not out:
        raise RuntimeError(f"worker failed:\n{proc.stderr.read()}")
    return json.loads(out)


def case_size(p, d, N, repeats, variants=VARIANTS):
    """Every variant in its own worker, runs interleaved: round r asks each
    worker for one run in turn (so no two runs overlap). variants: a subset
    of ``VARIANTS`` holding the peer's default ("peer", "-", False). Returns
    ({variant: dict(times, loads, cpu, sys, faults, first, peak, ...)},
    largest difference of the final ensemble means vs the peer's)."""
    with tempfile.TemporaryDirectory() as tmp:
        xi_file = os.path.join(tmp, "xi.npy")
        res = subprocess.run(
            [sys.executable, __file__, "--child", "xi", "--size", f"{p},{d},{N}",
             "--xi-file", xi_file], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"perturbation subprocess failed:\n{res.stderr}")
        files = {v: os.path.join(tmp, "{}-{}-{}.npy".format(*v)) for v in variants}
        workers = {}
        try:
            for v in variants:  # set up and warm up one at a time
                workers[v] = start_worker(*v, p, d, N, xi_file, files[v])
                ask(workers[v])
            out = {v: dict(times=[], loads=[], cpu=[], sys=[], faults=[]) for v in variants}
            for _ in range(repeats):
                for v in variants:
                    r = ask(workers[v], "run")
                    for field, key in (("times", "time"), ("loads", "load"), ("cpu", "cpu"),
                                       ("sys", "sys"), ("faults", "faults")):
                        out[v][field].append(r[key])
            for v in variants:
                out[v].update(ask(workers[v], "done"))
                workers[v].wait()
        finally:
            for w in workers.values():
                if w.poll() is None:
                    w.kill()
        means = {v: np.load(files[v]) for v in variants}
    ref = means[("peer", "-", False)]
    diff = max(float(np.max(np.abs(m - ref))) for m in means.values())
    return out, diff


# ------------------------------------------------------------- main ----


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: (b) at p=20,000, d=200, N=50")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load", type=int, default=0,
                        help="busy-loop processes to run during (b) (default 0)")
    parser.add_argument("--child", choices=["enkit", "eki", "peer", "xi"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="-", help=argparse.SUPPRESS)
    parser.add_argument("--overwrite", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--xi-file", help=argparse.SUPPRESS)
    parser.add_argument("--out-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 (medians of at least two runs)")
    if args.load < 0:
        parser.error("--load must be >= 0")

    if args.child:
        p, d, N = (int(v) for v in args.size.split(","))
        if args.child == "xi":
            np.save(args.xi_file, enkit_perturbations(1, size_problem(p, d, N)[1], N))
            return
        worker(args.child, p, d, N, args.xi_file, args.out_file, args.mode, args.overwrite)
        return

    p, d, N = (20_000, 200, 50) if args.quick else (200_000, 1_000, 100)
    with busy_loops(args.load):
        b, diff = case_size(p, d, N, args.repeats)
    a = case_accuracy()
    print(render(a, b, diff, p, d, N, args))



# The row label of each worker variant (library, tell, overwrite).
VARIANT_NAMES = {("enkit", "jit", False): "enkit ESMDA, jitted tell",
                 ("enkit", "jit", True): "enkit ESMDA, jitted, overwrite=True",
                 ("enkit", "jit-thp", False): "enkit ESMDA, jitted, glibc hugetlb=1",
                 ("enkit", "eager", False): "enkit ESMDA, eager tell (NumPy G)",
                 ("enkit", "eager", True): "enkit ESMDA, eager, overwrite=True",
                 ("eki", "jit", False): "enkit EKI dt=1/4, jitted tell",
                 ("eki", "eager", True): "enkit EKI dt=1/4, eager, overwrite",
                 ("peer", "-", False): "iterative_ensemble_smoother",
                 ("peer", "-", True): "iterative_ensemble_smoother, overwrite"}

def render(a, b, diff, p, d, N, args):
    import iterative_ensemble_smoother as ies_pkg
    import jax

    import enkit

    med = statistics.median
    loads = [x for r in b.values() for x in r["loads"]]
    lines = [
        f"ES-MDA, constant alpha_k = {K}, K = {K}; enkit ESMDA vs iterative_ensemble_smoother "
        "ESMDA (truncation=1.0)",
        *(["QUICK mode: small sizes for (b), not the benchmark's target sizes"]
          if args.quick else []),
        f"float64, {one_thread.DESCRIPTION}; (b): {args.repeats} interleaved rounds after one "
        "warm-up each, medians; same prior, data and perturbations",
        f"enkit {enkit.__version__} (jax {jax.__version__}), iterative_ensemble_smoother "
        f"{ies_pkg.__version__}, numpy {np.__version__}; {os.cpu_count()} CPUs",
        "",
        f"(a) p={a['p']}, d={a['d']}, N={a['N']}, linear G, correlated prior: RMS error of "
        "the posterior mean vs the analytic one",
        f"    enkit {a['err_enkit']:.6f}   iterative_ensemble_smoother {a['err_peer']:.6f}   "
        f"(prior mean {a['err_prior']:.4f}, posterior sd {a['post_sd']:.4f})",
        f"    largest |enkit - peer| over the final ensembles: {a['max_diff']:.2e}",
        "",
        f"(b) p={p:,}, d={d:,}, N={N}, diagonal Gamma: {K} analyses (forward runs excluded)",
        f"    machine load: {args.load} busy-loop processes started by the benchmark; "
        f"1-minute load average over the timed runs {min(loads):.2f} to {max(loads):.2f} "
        f"(median {med(loads):.2f})",
        f"{'':<38}{'time, s':>8}{'ratio':>7}{'cpu, s':>8}{'sys, s':>8}{'faults':>8}"
        f"{'load':>6}{'peak RSS':>9}{'above base':>11}{'run peak':>9}{'run extra':>10}"
        f"{'first, s':>9}",
    ]
    names = VARIANT_NAMES
    t_peer = med(b[("peer", "-", False)]["times"])
    for key, name in names.items():
        r = b[key]
        t = med(r["times"])
        lines.append(f"{name:<38}{t:>8.3f}{t_peer / t:>6.2f}x{med(r['cpu']):>8.3f}"
                     f"{med(r['sys']):>8.3f}{med(r['faults']) / K:>8.0f}{med(r['loads']):>6.2f}"
                     f"{r['peak']:>9.0f}{r['peak'] - r['base']:>11.0f}{r['run_peak']:>9.0f}"
                     f"{r['run_peak'] - r['before']:>10.0f}{r['first']:>9.2f}")
    lines += [
        "    ratio = time of the peer (its default, overwrite=False) / this time (> 1: faster);",
        "    cpu, sys: CPU seconds (user + system) and system seconds of the timed K analyses;",
        "    faults: minor page faults per analysis (a fresh (N, p) array on 4 kB pages is",
        f"    {N * p * 8 // 4096:,} faults); load: median 1-minute load average at this "
        "variant's runs;",
        "    memory in MB: peak RSS of the whole worker (warm-up and compilation included),",
        "    that peak above the RSS after imports (enkit: after starting the JAX runtime),",
        "    the peak during the timed runs alone, and that peak above the RSS just before",
        f"    them; one (N, p) float64 array is {N * p * 8 / 2**20:.0f} MB",
        f"    largest |difference| of the posterior means vs the peer: {diff:.2e}",
    ]
    text = "\n".join(lines)
    name = "vs_ies" + ("_quick" if args.quick else "") + (
        f"_load{args.load}" if args.load else "") + ".txt"
    out = pathlib.Path(__file__).parent / "results" / name
    out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
