"""Analysis time with many observations and a diagonal R (never densified).

Case: n=30 states, m=100,000 scalar observations (each looks at one state
entry), R = 2 I as a ``Diagonal`` operator, N=20 members, float64. The
ensemble-space (Woodbury) path costs O(N² m); an m×m matrix would need 80 GB.

Thread settings: XLA's CPU backend is limited to one intra-op thread
(set below, before JAX is imported), so the numbers do not depend on how many
cores are idle. Each case runs once to compile, then 5 times; the median is
reported. Writes benchmarks/results/large_m_diagonal.txt.

Run:  ./dev python benchmarks/large_m_diagonal.py
"""

import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import enkit  # noqa: E402


def main():
    m, N, n = 100_000, 20, 30
    idx = jnp.arange(m) % n

    def h(x):
        return x[idx]

    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    rows = []
    with jax.enable_x64(True):
        E = jax.random.normal(k1, (N, n))
        y = h(jnp.zeros(n)) + jax.random.normal(k2, (m,))
        R = enkit.Diagonal(jnp.full((m,), 2.0))
        for name in ("enkf", "etkf"):
            scheme = enkit.SCHEMES[name]
            f = jax.jit(lambda E, y, key, scheme=scheme: scheme(E, y, h, R, key=key))
            t0 = time.perf_counter()
            jax.block_until_ready(f(E, y, k3))
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                jax.block_until_ready(f(E, y, k3))
                times.append(time.perf_counter() - t0)
            rows.append((name, compile_s, statistics.median(times)))
    lines = [
        f"large-m analysis: n={n}, m={m}, N={N}, diagonal R, float64, 1 XLA thread",
        f"jax {jax.__version__}, device {jax.devices()[0].platform}",
        f"{'scheme':<8} {'compile+first [s]':>18} {'median [ms]':>12}",
    ]
    lines += [f"{s:<8} {c:>18.3f} {t * 1e3:>12.1f}" for s, c, t in rows]
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "large_m_diagonal.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
