"""``enkit.linalg.spd_solve_rows``: two triangular solves with r right-hand
sides against the explicit inverse ``B (L⁻ᵀ L⁻¹)``, the two ways it solves
the rows of ``B A⁻¹`` (it takes the inverse for r ≥ 2k,
``spd_solve_rows_by_inverse``).

For each (k, r): A = Yᵀ Y + I (k×k, Y 60×k), B (r, k); each way is run 500
times in a row inside one compiled scan (every result feeds the next A and
B, so nothing is hoisted); the ways take turns, round by round, each timed
over a window of at least one second (``vs_dapper_enkf.interleaved``).
Both ways are ``spd_solve_rows`` itself, its threshold held for the trace.
Also printed: the Cholesky factorisation alone, and the largest difference
between the two ways' results. The sizes are those of the EnKF solves on
Lorenz-96 (k = m = 40 observations against N + 1 = 41 or 101 rows) and a
few around them.

Thread settings: one thread (``one_thread.py``). Writes
benchmarks/results/spd_solve_rows.txt.

Run:
    .venv-bench/bin/python benchmarks/spd_solve_rows.py
"""

import one_thread  # first: one thread for NumPy and XLA

import pathlib  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the benchmark script's own choice

import jax.numpy as jnp  # noqa: E402
from vs_dapper import load  # noqa: E402
from vs_dapper_enkf import interleaved  # noqa: E402

import enkit  # noqa: E402

SIZES = ((20, 41), (40, 41), (40, 61), (40, 81), (40, 101), (20, 101), (10, 101), (100, 101),
         (100, 201))
LOOP = 500


def way(name):
    """spd_solve_rows itself, held to one way: its rows-per-column threshold
    (read when the solve is traced) set to 0 (always the inverse) or beyond
    any r (always the triangular solves)."""

    def solve(A, B):
        saved = enkit.linalg._INVERSE_MIN_ROWS_PER_COLUMN
        enkit.linalg._INVERSE_MIN_ROWS_PER_COLUMN = 0 if name == "inverse" else 2**62
        try:
            return enkit.linalg.spd_solve_rows(A, B)
        finally:
            enkit.linalg._INVERSE_MIN_ROWS_PER_COLUMN = saved
    return solve


def cholesky(A, B):
    return B + jax.lax.linalg.cholesky(A, symmetrize_input=False)[-1, -1]


def runner(f, A, B):
    k = A.shape[0]

    @jax.jit
    def loop(A, B):
        def body(c, _):
            A, B = c
            Z = f(A, B)
            return (A + 1e-14 * (Z[:k, :k] + Z[:k, :k].T), B + 1e-14 * Z), None
        return jax.lax.scan(body, (A, B), None, length=LOOP)[0]

    jax.block_until_ready(loop(A, B))
    return lambda: jax.block_until_ready(loop(A, B))


def main():
    lines = [
        "enkit.linalg.spd_solve_rows: rows of B A⁻¹ (A k×k SPD, B r×k), two triangular solves "
        "against the explicit inverse",
        f"float64, {one_thread.DESCRIPTION}; µs per solve (Cholesky included), medians of 5 "
        f"interleaved rounds of >= 1 s windows; enkit {enkit.__version__} (jax {jax.__version__})",
        "",
        f"{'k':>5}{'r':>5}{'triangular':>12}{'inverse':>10}{'Cholesky':>10}{'tri/inv':>9}"
        f"{'max |diff|':>12}{'enkit uses':>12}   load",
    ]
    for k, r in SIZES:
        Y = jax.random.normal(jax.random.key(k), (60, k)) / 8
        A = Y.T @ Y + jnp.eye(k)
        B = jax.random.normal(jax.random.key(r), (r, k))
        diff = float(jnp.max(jnp.abs(way("triangular")(A, B) - way("inverse")(A, B))))
        t = interleaved({"triangular": runner(way("triangular"), A, B),
                         "inverse": runner(way("inverse"), A, B),
                         "Cholesky": runner(cholesky, A, B)}, 5)
        us = {name: 1e6 * sec / LOOP for name, (sec, _) in t.items()}
        loads = [x for _, ls in t.values() for x in ls]
        uses = "inverse" if enkit.linalg.spd_solve_rows_by_inverse(r, k) else "triangular"
        lines.append(f"{k:>5}{r:>5}{us['triangular']:>12.2f}{us['inverse']:>10.2f}"
                     f"{us['Cholesky']:>10.2f}{us['triangular'] / us['inverse']:>9.2f}"
                     f"{diff:>12.1e}{uses:>12}   {min(loads):.1f}-{max(loads):.1f}")
    lines.append(f"load = 1-minute load average (2 cores), now {load():.1f}")
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "spd_solve_rows.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
