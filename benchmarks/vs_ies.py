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
    analyses (forward evaluations excluded) and peak resident memory. Each
    library runs in a fresh subprocess (its ru_maxrss is its own peak), one
    warm-up run (enkit: compilation) then ``--repeats`` timed runs, median
    reported. enkit is measured twice: ``tell`` jitted (a JAX forward
    model) and called eagerly on NumPy outputs (a black-box forward model).
    Memory is the subprocess's peak RSS (VmHWM on Linux) and that peak
    minus the RSS after the imports (JAX's runtime alone is a few hundred
    MB). The subprocesses are started before the parent loads JAX.

Thread settings: one thread for every library (OpenBLAS/MKL/OpenMP and XLA
set below, before NumPy and JAX load, and inherited by the subprocesses).
Writes benchmarks/results/vs_ies.txt (--quick marks its header QUICK).

Run (the peer lives in the bench environment):
    .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python benchmarks/vs_ies.py [--repeats 3]
    .venv-bench/bin/python benchmarks/vs_ies.py --quick    # small sizes
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

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


def steady_runs(run, repeats):
    """One warm-up run, then ``repeats`` timed runs with the peak-RSS mark
    reset: returns times, the first run's time, the whole-process peak, the
    peak during the timed runs and the RSS just before them (MB)."""
    t0 = time.perf_counter()
    run()  # warm-up (enkit: compilation)
    first = time.perf_counter() - t0
    peak_all = rss_mb()
    gc.collect()
    reset_peak()
    before = rss_now_mb()
    times = []
    for _ in range(repeats):
        t, result = run()
        times.append(t)
    return result, dict(times=times, first=first, peak=max(peak_all, rss_mb()),
                        run_peak=rss_mb(), before=before)


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


def size_problem(p, d, N, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.arange(d) * (p // d)
    variances = 0.5 + np.arange(d) / d
    y = 2.0 * rng.normal(size=d)
    return idx, variances, y


def child_enkit(p, d, N, repeats, xi_file, out_file, mode):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import enkit

    jax.block_until_ready(jnp.zeros(1) + 1)  # start the runtime before the baseline
    base = rss_mb()
    idx, variances, y = size_problem(p, d, N)
    U0 = np.random.default_rng(1).standard_normal((N, p))
    U0 = jnp.asarray(U0)
    proc = enkit.ESMDA(enkit.esmda_constant_alpha(K))
    noise = enkit.Diagonal(jnp.asarray(variances))
    y = jnp.asarray(y)
    jidx = jnp.asarray(idx)

    if mode == "jit":
        step = jax.jit(lambda s, G: proc.tell(s, G, y, noise))
        forward = jax.jit(lambda U: 2.0 * U[:, jidx])
    else:
        def step(s, G):
            return proc.tell(s, G, y, noise)

        def forward(U):
            return 2.0 * np.asarray(U)[:, idx]  # a black box: NumPy out

    def run():
        state = proc.init(1, U0)
        elapsed = 0.0
        for _ in range(K):
            G = jax.block_until_ready(forward(proc.ask(state)))
            t0 = time.perf_counter()
            state, _ = step(state, G)
            jax.block_until_ready(state.ensemble)
            elapsed += time.perf_counter() - t0
        return elapsed, state

    state, out = steady_runs(run, repeats)
    np.save(out_file, np.asarray(jnp.mean(state.ensemble, axis=0)))
    return dict(out, base=base)


def child_peer(p, d, N, repeats, xi_file, out_file, mode):
    import iterative_ensemble_smoother as ies

    base = rss_mb()
    idx, variances, y = size_problem(p, d, N)
    X0 = np.random.default_rng(1).standard_normal((N, p)).T.copy()  # (p, N) columns
    xis = np.load(xi_file)

    def run():
        smoother = ies.ESMDA(variances, y, alpha=np.full(K, float(K)), seed=0)
        X = X0
        elapsed = 0.0
        for k in range(K):
            Y = 2.0 * X[idx, :]
            t0 = time.perf_counter()
            smoother.prepare_assimilation(Y=Y, truncation=1.0,
                                          observation_perturbations=xis[k].T.copy())
            X = smoother.assimilate_batch(X=X)
            elapsed += time.perf_counter() - t0
        return elapsed, X

    X, out = steady_runs(run, repeats)
    np.save(out_file, X.mean(axis=1))
    return dict(out, base=base)


def spawn(lib, p, d, N, repeats, xi_file, out_file, mode="-"):
    cmd = [sys.executable, __file__, "--child", lib, "--mode", mode,
           "--size", f"{p},{d},{N}", "--repeats", str(repeats),
           "--xi-file", xi_file, "--out-file", out_file]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{lib} subprocess failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def case_size(p, d, N, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        xi_file = os.path.join(tmp, "xi.npy")
        res = subprocess.run(
            [sys.executable, __file__, "--child", "xi", "--size", f"{p},{d},{N}",
             "--xi-file", xi_file], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"perturbation subprocess failed:\n{res.stderr}")
        out = {}
        means = {}
        for lib, mode in (("enkit", "jit"), ("enkit", "eager"), ("peer", "-")):
            f = os.path.join(tmp, f"{lib}-{mode}.npy")
            out[(lib, mode)] = spawn(lib, p, d, N, repeats, xi_file, f, mode)
            means[(lib, mode)] = np.load(f)
    diff = max(float(np.max(np.abs(means[k] - means[("peer", "-")]))) for k in means)
    return out, diff


# ------------------------------------------------------------- main ----


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: (b) at p=20,000, d=200, N=50")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["enkit", "peer", "xi"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="-", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--xi-file", help=argparse.SUPPRESS)
    parser.add_argument("--out-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 (medians of at least two runs)")

    if args.child:
        p, d, N = (int(v) for v in args.size.split(","))
        if args.child == "xi":
            np.save(args.xi_file, enkit_perturbations(1, size_problem(p, d, N)[1], N))
            return
        fn = child_enkit if args.child == "enkit" else child_peer
        print(json.dumps(fn(p, d, N, args.repeats, args.xi_file, args.out_file, args.mode)))
        return

    p, d, N = (20_000, 200, 50) if args.quick else (200_000, 1_000, 100)
    b, diff = case_size(p, d, N, args.repeats)
    a = case_accuracy()

    import iterative_ensemble_smoother as ies_pkg
    import jax

    import enkit
    t_peer = statistics.median(b[("peer", "-")]["times"])
    lines = [
        f"ES-MDA, constant alpha_k = {K}, K = {K}; enkit ESMDA vs iterative_ensemble_smoother "
        "ESMDA (truncation=1.0)",
        *(["QUICK mode: small sizes for (b), not the benchmark's target sizes"]
          if args.quick else []),
        f"float64, 1 thread everywhere, median of {args.repeats} runs after one warm-up; "
        "same prior, data and perturbations",
        f"enkit {enkit.__version__} (jax {jax.__version__}), iterative_ensemble_smoother "
        f"{ies_pkg.__version__}, numpy {np.__version__}",
        "",
        f"(a) p={a['p']}, d={a['d']}, N={a['N']}, linear G, correlated prior: RMS error of "
        "the posterior mean vs the analytic one",
        f"    enkit {a['err_enkit']:.6f}   iterative_ensemble_smoother {a['err_peer']:.6f}   "
        f"(prior mean {a['err_prior']:.4f}, posterior sd {a['post_sd']:.4f})",
        f"    largest |enkit - peer| over the final ensembles: {a['max_diff']:.2e}",
        "",
        f"(b) p={p:,}, d={d:,}, N={N}, diagonal Gamma: {K} analyses (forward runs excluded)",
        f"{'':<34}{'time, s':>9}{'ratio':>8}{'peak RSS':>10}{'above base':>12}"
        f"{'run peak':>10}{'run extra':>11}{'first run, s':>14}",
    ]
    names = {("enkit", "jit"): "enkit ESMDA, jitted tell",
             ("enkit", "eager"): "enkit ESMDA, eager tell (NumPy G)",
             ("peer", "-"): "iterative_ensemble_smoother"}
    for key, name in names.items():
        r = b[key]
        t = statistics.median(r["times"])
        lines.append(f"{name:<34}{t:>9.3f}{t_peer / t:>7.2f}x{r['peak']:>10.0f}"
                     f"{r['peak'] - r['base']:>12.0f}{r['run_peak']:>10.0f}"
                     f"{r['run_peak'] - r['before']:>11.0f}{r['first']:>14.2f}")
    lines += [
        "    ratio = peer time / this time (> 1: faster than the peer); memory in MB:",
        "    peak RSS of the whole subprocess (warm-up and compilation included), that peak",
        "    above the RSS after imports (enkit: after starting the JAX runtime), the peak",
        "    during the timed runs alone, and that peak above the RSS just before them;",
        f"    one (N, p) float64 array is {N * p * 8 / 2**20:.0f} MB",
        f"    largest |difference| of the posterior means vs the peer: {diff:.2e}",
    ]
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "vs_ies.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
