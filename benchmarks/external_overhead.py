"""Per-member overhead of external-program models, and Dask throughput.

Case 1, the overhead enkit adds around a program: the trivial external
model G(u) = u run as ``cp {input} {output}`` (the JSON input list is a
valid JSON output), so a member's time is enkit's work (fresh run
directory, write input.json, spawn with logs redirected, wait, read and
check output.json, remove the run directory) plus the cost of starting
``cp``. Reported per member, for serial evaluation, a thread pool and a
process pool (2 workers each), next to a bare ``subprocess.run(["cp", ...])``
on a prepared file (the floor: spawning alone).

Case 2, Dask: ``n_dask`` members per iteration through ``dask_executor``
(a LocalCluster of 2 worker processes on 127.0.0.1, 1 thread each), with
(a) a trivial Python function (the driver's own rate: submit and gather
in member order; it bounds what any model can reach) and (b) the trivial
external model. If (a) is well above (b), the driver is not the
bottleneck. Reported as members per second, with the CPU time this
process (the client and, for a LocalCluster, the scheduler) spends per
member: the driver is the bottleneck only if that approaches the wall
time per member.

Thread settings: OMP/MKL/OpenBLAS threads = 1 and one XLA thread (set
below before NumPy/JAX are imported); pools use 2 workers. Each case runs
``repeats`` times (≥ 2) and the median is reported.
Writes benchmarks/results/external_overhead.txt (its first line says
whether it is a quick smoke run or the full run).

Run (full size):  .venv/bin/python benchmarks/external_overhead.py
Quick check:      .venv/bin/python benchmarks/external_overhead.py --quick
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import pathlib
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np

from enkit.executors import dask_executor, evaluate_members, process_pool, thread_pool
from enkit.external import ExternalModel


def trivial(x):
    """The trivial Python member (module level: picklable by reference)."""
    return x


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _check(results, U):
    bad = [r.error for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} members failed, first: {bad[0]}")
    np.testing.assert_array_equal(np.stack([r.value for r in results]), U)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args()
    n_members, n_dask, repeats = (40, 100, 2) if args.quick else (500, 1000, 3)
    cp = shutil.which("cp")
    U = np.random.default_rng(0).normal(size=(n_members, 10))
    work = pathlib.Path(tempfile.mkdtemp(prefix="enkit-bench-"))
    model = ExternalModel([cp, "{input}", "{output}"], work_dir=work / "runs")
    rows = []

    src = work / "in.json"
    src.write_text("[0.0]")

    def bare():
        for _ in range(n_members):
            subprocess.run([cp, str(src), str(work / "out.json")], check=True)

    rows.append(("bare subprocess.run(cp), serial", _median_time(bare, repeats) / n_members))
    _check(evaluate_members(model, U), U)  # warm-up and correctness
    rows.append(("ExternalModel(cp), serial",
                 _median_time(lambda: _check(evaluate_members(model, U), U), repeats)
                 / n_members))
    with thread_pool(2) as ex:
        rows.append(("ExternalModel(cp), 2 threads",
                     _median_time(lambda: _check(evaluate_members(model, U, executor=ex), U),
                                  repeats) / n_members))
    with process_pool(2) as ex:
        _check(evaluate_members(model, U[:4], executor=ex), U[:4])  # start the workers
        rows.append(("ExternalModel(cp), 2 processes",
                     _median_time(lambda: _check(evaluate_members(model, U, executor=ex), U),
                                  repeats) / n_members))

    dask_rows = []
    try:
        import distributed  # noqa: F401
    except ImportError:
        dask_rows.append(("Dask not run: pip install 'enkit[dask]'", "-", "-"))
    else:
        V = np.random.default_rng(1).normal(size=(n_dask, 10))
        with dask_executor(n_workers=2, threads_per_worker=1) as ex:
            for name, fn in (("trivial Python function", trivial),
                             ("ExternalModel(cp)", model)):
                _check(evaluate_members(fn, V[:4], executor=ex), V[:4])  # warm-up
                c0 = time.process_time()
                t = _median_time(lambda fn=fn: _check(evaluate_members(fn, V, executor=ex), V),
                                 repeats)
                cpu = (time.process_time() - c0) / (repeats * n_dask)
                dask_rows.append((f"Dask LocalCluster 2x1, {name}",
                                  f"{n_dask / t:,.0f}", f"{1e3 * cpu:.2f}"))
    shutil.rmtree(work, ignore_errors=True)

    lines = [
        (f"external-program overhead ({'QUICK smoke run' if args.quick else 'full run'}): "
         f"{n_members} members of p=10, median of {repeats} runs"),
        (f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
         "BLAS/OMP threads 1, pools of 2 workers"),
        f"{'case':<40} {'per member [ms]':>16}",
    ]
    lines += [f"{name:<40} {1e3 * t:>16.2f}" for name, t in rows]
    lines += ["", (f"Dask throughput, {n_dask} members per iteration (driver CPU: this "
                   "process, i.e. client + scheduler, per member)"),
              f"{'case':<52} {'members/s':>10} {'driver CPU [ms]':>16}"]
    lines += [f"{name:<52} {v:>10} {c:>16}" for name, v, c in dask_rows]
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "external_overhead.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
