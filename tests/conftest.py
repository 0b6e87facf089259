"""Tests run in float64; each scheme family also has a float32 smoke test.

Compiled programs are shared across test modules and the two xdist workers
through JAX's persistent compilation cache, in a directory made for the run
(removed at its end) unless ENKIT_TEST_JAX_CACHE names one to keep: the
modules release their in-memory programs (``_release_compiled_programs``),
and many compile the same ones (the driver's scan on the same model and
scheme). A cached program is the same executable, so no result changes.
"""

import atexit
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

_CACHE = "ENKIT_TEST_JAX_CACHE"
if _CACHE not in os.environ:  # the first process (xdist's controller): workers inherit it
    os.environ[_CACHE] = tempfile.mkdtemp(prefix="enkit-jax-cache-")
    atexit.register(shutil.rmtree, os.environ[_CACHE], True)
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class LinearGaussian:
    """A small linear-Gaussian analysis problem with correlated everything.

    n=5 states, m=3 observations, correlated prior, mixing H, non-diagonal R.
    """

    def __init__(self, N: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        n, m = 5, 3
        L = rng.normal(size=(n, n)) + 2 * np.eye(n)
        self.mu = rng.normal(size=n)
        self.H = rng.normal(size=(m, n))
        A = rng.normal(size=(m, m))
        self.R = A @ A.T + 0.5 * np.eye(m)
        self.y = self.H @ self.mu + rng.normal(size=m)
        self.E = self.mu + rng.normal(size=(N, n)) @ L.T  # drawn last: same problem for every N
        self.n, self.m, self.N = n, m, N


@pytest.fixture(params=[4, 12], ids=["N<n", "N>n"])
def problem(request):
    return LinearGaussian(request.param)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module: compiled functions
    are shared within a module (module-scoped fixtures), and a single test
    process that keeps the executables of every module grows without bound
    (a full single-process run crashed inside XLA's compiler once)."""
    yield
    jax.clear_caches()
