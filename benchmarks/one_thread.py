"""One thread for every library in a benchmark process: import this first.

DAPPER and the other peers compute with NumPy on one BLAS thread (the
environment variables below, read when NumPy loads). JAX's CPU client sizes
its intra-op thread pool from the CPUs the process may run on when the
client starts, and XLA splits large elementwise kernels (e.g. the
perturbation draws of the stochastic EnKF, 1,600 threefry hashes and
normal transforms per cycle) across that pool; ``--xla_cpu_multi_thread_eigen``
governs only Eigen's own products. On a loaded 2-core machine a kernel split
in two waits for the busier core: an EnKF cycle measured 99-109 us with the
default pool against 55-62 us with a one-thread pool, in alternating
processes at load 4.2-4.6 (Lorenz-96, N = m = 40). So ``start_jax_on_one_cpu``
starts the client while the process may run on one CPU only, then gives
every thread of the process back all its CPUs: every kernel runs on one
thread, which the operating system may move between cores, like the peers'
single thread. Every thread, not only the calling one: a thread inherits the
affinity it was started with, and the threads JAX starts in the pinned window
(the client's pool, where the compiled computations run) would otherwise stay
on the first CPU for the life of the process, and lose to the peer, free to
use the idler core, as soon as the machine is loaded.

Outside Linux (no ``os.sched_setaffinity``) the client starts as JAX starts
it; ``ONE_THREAD`` says which happened.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false").strip()


def start_jax_on_one_cpu() -> bool:
    """Start JAX's CPU client with a one-thread intra-op pool (see the
    module docstring). Returns True when the affinity could be set."""
    if not hasattr(os, "sched_setaffinity"):
        import jax
        jax.devices("cpu")
        return False
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        import jax
        import jax.numpy as jnp
        jax.block_until_ready(jnp.zeros(1) + 1)  # the client and its pool start here
    finally:
        release_threads(cpus)
    return True


def release_threads(cpus) -> None:
    """Let every thread of this process run on ``cpus`` (Linux: one
    ``sched_setaffinity`` per thread id under /proc/self/task)."""
    os.sched_setaffinity(0, cpus)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):  # the thread has ended
            pass


def thread_affinities() -> set:
    """The distinct CPU sets of this process's threads (Linux)."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            out.add(frozenset(os.sched_getaffinity(int(tid))))
        except (ProcessLookupError, PermissionError):
            pass
    return out


ONE_THREAD = start_jax_on_one_cpu()
DESCRIPTION = ("1 thread everywhere (BLAS threads 1; JAX's CPU client started on one CPU, "
               "so XLA's intra-op pool has one thread)" if ONE_THREAD else
               "BLAS threads 1; JAX's CPU client with its default thread pool (no "
               "sched_setaffinity on this system)")
