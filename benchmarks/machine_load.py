"""Machine load for the benchmarks: read it, and create it on purpose.

``load_1min()`` is the 1-minute load average (runnable processes, averaged
with a one-minute time constant, so it lags a change by tens of seconds);
the benchmarks print it beside every timing. ``busy_loops(n)`` starts n
processes that spin (``while True: pass``) for the duration of a ``with``
block and kills them at its end, so "under load" is reproducible: on a
machine with c cores and nothing else running, n busy loops leave each of
the benchmark's single-threaded processes about c / (n + 1) of a core.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time


def load_1min() -> float:
    """The 1-minute load average (``os.getloadavg``; NaN where missing)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


@contextlib.contextmanager
def busy_loops(n: int, settle_s: float = 2.0):
    """Run ``n`` spinning Python processes inside the block; kill them after.

    settle_s: seconds to wait after starting them (they are running at once;
    the load average catches up over the next minute).
    """
    if n < 0:
        raise ValueError(f"the number of busy loops must be >= 0, got {n}")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdin=subprocess.DEVNULL) for _ in range(n)]
    try:
        if n:
            time.sleep(settle_s)
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
