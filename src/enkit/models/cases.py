"""Standard twin-experiment cases with their published accuracies.

Each ``Case`` fixes a model, an observation network and an initial
ensemble; ``case.run(scheme, N, ...)`` makes the truth and observations from
a seed, assimilates and returns the time-mean analysis RMSE after burn-in.
``case.expected`` lists published time-mean analysis RMSEs (method → value)
for comparison.

- ``sakov2012_lorenz63``: Lorenz-63, dt 0.01, all three variables observed
  every 25 steps (0.25 time units) with R = 2 I (Sakov, Oliver & Bertino
  2012, MWR 140, Table 1).
- ``sakov2008_lorenz96``: Lorenz-96, n=40, F=8, dt 0.05, all variables
  observed every step with R = I (Sakov & Oke 2008, MWR 136 and Tellus 60A).
- ``bocquet2019_kuramoto_sivashinsky``: Kuramoto–Sivashinsky, n=128,
  L=32π, ETDRK4 with dt 0.5, all variables observed every time unit with
  R = I (Bocquet, Brajard, Carrassi & Bertino 2019, NPG 26, Fig. 4).
- ``evensen2009_linear_advection``: exact linear advection on a periodic
  grid of 1000 cells, truth and initial ensemble drawn from smooth random
  fields (variance 1, decorrelation length 20), 4 points observed every 5
  steps with R = 0.01 I (Evensen 2009, the book's linear advection
  example and IEEE Control Systems Magazine 29(3)).
- ``lorenz2005_model2``: Lorenz (2005) model II, n=240, K=8, F=15, dt
  0.025, all variables observed every 2 steps (0.05 time units) with
  R = I; no published RMSE (enkit's figures in benchmarks/published.py).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from enkit.covariance import Scalar
from enkit.models.kuramoto_sivashinsky import KuramotoSivashinsky
from enkit.models.linear_advection import LinearAdvection, SmoothRandomField
from enkit.models.lorenz import Lorenz63, Lorenz96
from enkit.models.lorenz05 import Lorenz05
from enkit.models.twin import TwinExperiment, twin_experiment

__all__ = ["Case", "CaseRun", "bocquet2019_kuramoto_sivashinsky",
           "evensen2009_linear_advection", "lorenz2005_model2", "ring_letkf",
           "sakov2008_lorenz96", "sakov2012_lorenz63"]


def _observe_all(x):
    return x


def _observe_at(x, indices):
    return x[indices]


class CaseRun(NamedTuple):
    """What ``Case.run`` returns: the time-mean analysis RMSE after burn-in,
    the ``AssimilationResult`` and the ``TwinExperiment``."""

    rmse: float
    result: Any
    twin: TwinExperiment


@dataclasses.dataclass(frozen=True)
class Case:
    """A twin experiment: model, observations, initial ensemble, references.

    model: one-step map; x0: (n,) start of the truth (advanced ``spinup``
    steps first), or None when ``truth_draw`` draws it; steps_per_obs:
    model steps between observations; h, R: observation operator and error
    covariance; ensemble_std: standard deviation of the initial ensemble
    around the truth; cycles, burn_in: default run length and cycles left
    out of the time mean; expected: published time-mean analysis RMSE per
    method; reference: the source.

    truth_draw: optional ``truth_draw(key) -> (n,)``, a random start of the
    truth drawn per seed (key ``fold_in(key(seed), 3)``) in place of x0;
    initial_draw: optional ``initial_draw(key, N, twin) -> (N, n)``, the
    initial ensemble drawn from the case's own prior (key ``fold_in(
    key(seed), 1)``) in place of ``twin.x0 + ensemble_std · z``. Both
    default to None, the fixed x0 and the Gaussian cloud around the truth.
    """

    name: str
    model: Callable
    x0: Any
    steps_per_obs: int
    h: Callable
    R: Any
    ensemble_std: float
    cycles: int
    burn_in: int
    spinup: int = 0
    expected: dict = dataclasses.field(default_factory=dict)
    reference: str = ""
    truth_draw: Callable | None = None
    initial_draw: Callable | None = None

    def twin(self, seed: int = 0, cycles: int | None = None) -> TwinExperiment:
        """Truth and observations from ``seed`` (``cycles`` analysis times)."""
        key = jax.random.fold_in(jax.random.key(seed), 0)
        if self.truth_draw is None:
            x0 = jnp.asarray(self.x0)
        else:
            x0 = jnp.asarray(self.truth_draw(jax.random.fold_in(jax.random.key(seed), 3)))
        return twin_experiment(
            self.model, x0, key=key, n_obs=cycles or self.cycles,
            h=self.h, R=self.R, steps_per_obs=self.steps_per_obs, spinup=self.spinup,
        )

    def initial_ensemble(self, twin: TwinExperiment, N: int, seed: int = 0):
        """(N, n) members: ``initial_draw(key, N, twin)`` when the case has
        one, else ``x0 + ensemble_std · z`` around the truth's start."""
        key = jax.random.fold_in(jax.random.key(seed), 1)
        if self.initial_draw is not None:
            E0 = jnp.asarray(self.initial_draw(key, N, twin), dtype=twin.x0.dtype)
            if E0.shape != (N, twin.x0.shape[0]):
                raise ValueError(f"initial_draw must return shape (N, n) = "
                                 f"({N}, {twin.x0.shape[0]}), got {E0.shape}")
            return E0
        z = jax.random.normal(key, (N, twin.x0.shape[0]), dtype=twin.x0.dtype)
        return twin.x0 + self.ensemble_std * z

    def run(self, scheme, N: int, *, seed: int = 0, cycles: int | None = None,
            burn_in: int | None = None, **options) -> CaseRun:
        """Assimilate with ``scheme`` and N members; returns (rmse, result, twin).

        options go to ``enkit.assimilate`` (inflation, store, ...); the key
        is derived from ``seed``. rmse is the time mean after ``burn_in``.
        """
        from enkit.assimilation import assimilate

        cycles = cycles or self.cycles
        burn_in = self.burn_in if burn_in is None else burn_in
        if not 0 <= burn_in < cycles:
            raise ValueError(f"burn_in must satisfy 0 <= burn_in < cycles, got {burn_in}")
        store = tuple(options.pop("store", ("forecast_mean", "analysis_mean",
                                            "forecast_spread", "analysis_spread")))
        if "analysis_mean" not in store:
            store += ("analysis_mean",)  # needed for the RMSE
        twin = self.twin(seed, cycles)
        E0 = self.initial_ensemble(twin, N, seed)
        result = assimilate(
            self.model, E0, twin.observations, scheme, h=self.h, R=self.R,
            key=jax.random.fold_in(jax.random.key(seed), 2),
            steps_per_obs=self.steps_per_obs, store=store, **options,
        )
        rmse = float(jnp.mean(result.rmse(twin.truth)[burn_in:]))
        return CaseRun(rmse, result, twin)


def sakov2012_lorenz63(*, cycles: int = 10_000, burn_in: int = 1_000) -> Case:
    """Lorenz-63, dt 0.01, x, y, z observed every 25 steps with R = 2 I.

    Published time-mean analysis RMSEs (Sakov, Oliver & Bertino 2012, Table
    1; the same values are listed by DAPPER's ``Lorenz63/sakov2012.py``):
    ETKF N=10 with inflation 1.02 and random rotations ≈ 0.60; stochastic
    EnKF N=10, inflation 1.04 ≈ 0.65; iterative EnKF (IEnKF) N=10, inflation
    1.02 ≈ 0.31.
    """
    return Case(
        name="Lorenz-63 (Sakov, Oliver & Bertino 2012)",
        model=Lorenz63(dt=0.01),
        x0=(1.509, -1.531, 25.46),
        steps_per_obs=25,
        h=_observe_all,
        R=Scalar(2.0, 3),
        ensemble_std=2.0**0.5,
        cycles=cycles,
        burn_in=burn_in,
        expected={
            "etkf_rotated N=10 inflation 1.02": 0.60,
            "enkf N=10 inflation 1.04": 0.65,
            "ienkf N=10 inflation 1.02": 0.31,
        },
        reference="Sakov, Oliver & Bertino (2012), MWR 140, Table 1",
    )


def sakov2008_lorenz96(*, cycles: int = 10_000, burn_in: int = 1_000) -> Case:
    """Lorenz-96, n=40, F=8, dt 0.05, all observed every step with R = I.

    Published time-mean analysis RMSEs (Sakov & Oke 2008; Bocquet 2011; as
    listed by DAPPER's ``Lorenz96/sakov2008.py``): ETKF N≈24–40 with
    inflation ≈1.02 ≈ 0.18; DEnKF N=40 inflation 1.01 ≈ 0.18; stochastic
    EnKF N=40 inflation 1.06 ≈ 0.22; ETKF-N N=40, no inflation ≈ 0.18–0.20;
    the EnKF-N with the mode-corrected hyperprior and approximate Hessian
    (``etkf_n(..., mode_correction=True, hessian="approximate")``), N=24
    with random rotations ≈ 0.21 (xN = 1) and ≈ 0.18 (xN = 2); the same
    without rotations, N=20 ≈ 0.24 and ≈ 0.19 (Bocquet, Raanes & Hannart
    2015, Fig. 3). benchmarks/published.py runs them.
    """
    n = 40
    return Case(
        name="Lorenz-96 (Sakov & Oke 2008)",
        model=Lorenz96(n=n, F=8.0, dt=0.05),
        x0=tuple(8.0 + (1.0 if i == 0 else 0.0) for i in range(n)),
        steps_per_obs=1,
        h=_observe_all,
        R=Scalar(1.0, n),
        ensemble_std=1.0,
        cycles=cycles,
        burn_in=burn_in,
        spinup=1000,
        expected={
            "etkf N=40 inflation 1.02": 0.18,
            "denkf N=40 inflation 1.01": 0.18,
            "enkf N=40 inflation 1.06": 0.22,
            "etkf_n N=40": 0.19,
            "enkf_n N=24 rotation": 0.21,
            "enkf_n N=24 rotation xN=2": 0.18,
            "enkf_n N=20": 0.24,
            "enkf_n N=20 xN=2": 0.19,
        },
        reference=("Sakov & Oke (2008), MWR 136 and Tellus 60A; Bocquet (2011), NPG 18; "
                   "Bocquet, Raanes & Hannart (2015), NPG 22"),
    )


def bocquet2019_kuramoto_sivashinsky(*, cycles: int = 10_000, burn_in: int = 1_000) -> Case:
    """Kuramoto–Sivashinsky, n=128, L=32π, ETDRK4 dt 0.5, all observed
    every 2 steps (1 time unit) with R = I.

    The truth starts from Kassam & Trefethen's u₀ advanced 150 time units
    (300 steps, as DAPPER's ``mods/KS`` does for its x0); the initial
    ensemble is that state plus N(0, 0.1²) noise per variable.

    Published time-mean analysis RMSEs (Bocquet, Brajard, Carrassi & Bertino
    2019, Fig. 4, top right; as listed by DAPPER's ``KS/bocquet2019.py``):
    LETKF with Gaspari–Cohn localisation, inflation on the analysis
    anomalies and random rotations, N=16, DAPPER ``loc_rad`` 51/1.82 (enkit
    radius 51 grid points), inflation 1.02 ≈ 0.11; N=6, radius 25, 1.06 ≈
    0.14; N=4, radius 15, 1.11 ≈ 0.18; the global ETKF, N=20, inflation
    1.03, rotations ≈ 0.115. ``ring_letkf(128, radius)`` builds the LETKF.

    These tunings are marginal over 10,000 cycles: some seeds diverge, in
    enkit (benchmarks/results/published.txt) as in DAPPER on its own truths
    (benchmarks/results/dapper_ks_divergence.txt); the listed RMSEs are
    those of runs that stay on track. The LETKF N=16 with inflation 1.04
    stays on track on every seed tried (0.114–0.116).
    """
    model = KuramotoSivashinsky(n=128, dt=0.5)
    return Case(
        name="Kuramoto-Sivashinsky (Bocquet et al. 2019)",
        model=model,
        x0=model.kassam_trefethen_state(),
        steps_per_obs=2,
        h=_observe_all,
        R=Scalar(1.0, model.n),
        ensemble_std=0.1,
        cycles=cycles,
        burn_in=burn_in,
        spinup=300,
        expected={
            "letkf N=16 radius 51 inflation 1.02 rotation": 0.11,
            "letkf N=6 radius 25 inflation 1.06 rotation": 0.14,
            "letkf N=4 radius 15 inflation 1.11 rotation": 0.18,
            "etkf N=20 inflation 1.03 rotation": 0.115,
        },
        reference="Bocquet, Brajard, Carrassi & Bertino (2019), NPG 26, Fig. 4",
    )


def evensen2009_linear_advection(*, n: int = 1000, length: float = 20.0, n_points: int = 4,
                                 steps_per_obs: int = 5, obs_variance: float = 0.01,
                                 cycles: int = 60, burn_in: int = 0) -> Case:
    """Exact linear advection on a periodic grid of n = 1000 cells, one cell
    per step, with ``n_points`` = 4 equally spaced points (cells 0, 250,
    500, 750) observed every 5 steps with R = 0.01 I, over 300 steps (60
    analyses), as in Evensen's linear advection example.

    Every random field is a ``SmoothRandomField(n, length)`` draw (variance
    one, decorrelation length 20 cells): the true initial state is one; the
    first guess is the truth plus another; the initial ensemble is the first
    guess plus N more (``initial_draw``). The truth given the first guess is
    then N(first guess, C), C the fields' covariance, so the filter's prior
    is exact, and the model being linear and noise-free, the Kalman filter
    started from (first guess, C) is the optimal solution; an ensemble
    filter with N − 1 ≥ n and its own sample mean and covariance as the
    start is that Kalman filter to round-off.

    No table of RMSEs is published for this case (Evensen shows the
    fields and the error variance); the analysis error decreases with time
    as the observed points sweep the domain, so the time mean depends on
    the run length. DAPPER's ``mods/LA/evensen2009.py`` (a mix with Sakov
    & Oke 2008's sinusoidal initial ensemble) suggests a perturbed-
    observation EnKF with N = 100 and inflation 1.02. benchmarks/
    published.py records enkit's figures; measured on seeds 0 and 1: the
    exact Kalman filter from (first guess, C) 0.41 and 0.44 (the optimum),
    the ETKF N=100 0.45 and 0.50, the EnKF N=100 with inflation 1.02 0.52
    and 0.64.

    n, length, n_points, steps_per_obs, obs_variance: grid size,
    decorrelation length (cells), number of observed points, steps between
    observations and the observation error variance (smaller settings make
    a case where N − 1 ≥ n is affordable).

    References: Evensen (2009), "Data Assimilation: The Ensemble Kalman
    Filter", 2nd ed., Springer (linear advection example); Evensen (2009),
    "The ensemble Kalman filter for combined state and parameter
    estimation", IEEE Control Systems Magazine 29(3), 83–104.
    """
    if not isinstance(n_points, int) or not 1 <= n_points <= n:
        raise ValueError(f"n_points must be an integer in [1, n], got {n_points!r}")
    field = SmoothRandomField(n, length)
    indices = (np.arange(n_points) * n) // n_points

    def truth_draw(key):
        return field.sample(key)

    def initial_draw(key, N, twin):
        k_guess, k_members = jax.random.split(key)
        dtype = twin.x0.dtype
        first_guess = twin.x0 + field.sample(k_guess, dtype=dtype)
        return first_guess + field.sample(k_members, (N,), dtype=dtype)

    return Case(
        name="Linear advection (Evensen 2009)",
        model=LinearAdvection(n=n, shift=1, dt=1.0),
        x0=None,
        steps_per_obs=steps_per_obs,
        h=functools.partial(_observe_at, indices=indices),
        R=Scalar(obs_variance, n_points),
        ensemble_std=1.0,
        cycles=cycles,
        burn_in=burn_in,
        expected={},
        reference=("Evensen (2009), Data Assimilation: The Ensemble Kalman Filter, 2nd ed.; "
                   "Evensen (2009), IEEE Control Systems Magazine 29(3)"),
        truth_draw=truth_draw,
        initial_draw=initial_draw,
    )


def lorenz2005_model2(*, n: int = 240, K: int = 8, F: float = 15.0, obs_stride: int = 1,
                      cycles: int = 10_000, burn_in: int = 1_000) -> Case:
    """Lorenz (2005) model II, n=240, K=8, F=15, RK4 with dt 0.025, all
    variables observed every 2 steps (0.05 time units) with R = I.

    The observation network is that of the Lorenz-96 case of Sakov & Oke
    (2008): every variable, R = I, every 0.05 time units (the interval
    DAPPER's ``mods/Lorenz05/settings01.py`` uses for model III). The
    truth starts at 7 in every variable but the first, which is 8, and is
    spun up 2000 steps (50 time units); the initial ensemble is that state
    plus N(0, 1) noise per variable.

    n, K, F: the model's size, averaging width and forcing; obs_stride:
    observe every ``obs_stride``-th variable (1: all; 2: every other, a
    sparser network).

    No published RMSE is known for this exact setting;
    benchmarks/published.py records enkit's. Measured over 2,000 cycles
    (400 burn-in), seeds 0 and 1: ETKF N=40, inflation 1.02 ≈ 0.065; ETKF
    N=20, inflation 1.05 ≈ 0.08; LETKF N=20, radius 60, inflation 1.02 ≈
    0.077 (``ring_letkf(240, 60.0)``; the long, smooth waves want a wide
    localisation).

    Reference: Lorenz (2005), "Designing chaotic models", J. Atmos. Sci.
    62, 1574–1587.
    """
    if not isinstance(obs_stride, int) or not 1 <= obs_stride <= n:
        raise ValueError(f"obs_stride must be an integer in [1, n], got {obs_stride!r}")
    model = Lorenz05(n=n, K=K, smoothing=None, F=F, dt=0.025)
    indices = np.arange(0, n, obs_stride)
    return Case(
        name="Lorenz-05 model II",
        model=model,
        x0=tuple(7.0 + (1.0 if i == 0 else 0.0) for i in range(n)),
        steps_per_obs=2,
        h=_observe_all if obs_stride == 1 else functools.partial(_observe_at, indices=indices),
        R=Scalar(1.0, len(indices)),
        ensemble_std=1.0,
        cycles=cycles,
        burn_in=burn_in,
        spinup=2000,
        expected={},
        reference="Lorenz (2005), J. Atmos. Sci. 62 (model II)",
    )


def ring_letkf(n: int, radius: float, **options):
    """The LETKF on a periodic 1-D grid of n points observed everywhere:
    Gaspari–Cohn taper of half-support ``radius`` (grid points; DAPPER's
    ``loc_rad`` is radius / 1.82) and the ring distance. options go to
    ``enkit.letkf``."""
    from enkit.filters.letkf import letkf
    from enkit.localization import gaspari_cohn, periodic_distance

    coords = jnp.arange(float(n))
    return functools.partial(letkf, state_coords=coords, obs_coords=coords, radius=radius,
                             taper=gaspari_cohn,
                             distance=functools.partial(periodic_distance, period=float(n)),
                             **options)
