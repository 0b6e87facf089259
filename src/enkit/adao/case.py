"""An assimilation case built with ADAO's vocabulary and run by enkit.

A script written for ADAO's ``adaoBuilder.New()`` runs here once its import
becomes ``from enkit import adao as adaoBuilder`` (or ``enkit.adao.New``):

    case = adao.New(seed=1)
    case.setBackground(Vector=xb)
    case.setBackgroundError(ScalarSparseMatrix=1.0)
    case.setObservation(VectorSerie=Y)
    case.setObservationError(DiagonalSparseMatrix=r)
    case.setObservationOperator(Matrix=H)
    case.setEvolutionModel(OneFunction=step)
    case.setAlgorithmParameters(Algorithm="EnsembleKalmanFilter",
                                Parameters={"Variant": "ETKF", "NumberOfMembers": 20})
    case.execute()
    xa = case.get("Analysis")[-1]

Each ``set*`` method takes ADAO's keywords for that input (a misspelt
keyword is a ``TypeError``); unknown algorithm parameters are refused with
the list of valid names (ADAO ignores them). The run itself is
``enkit.assimilate`` (``enkit.enks`` for the EnKS variants) with the scheme
of ``enkit.adao.variants``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from enkit.adao._parameters import ENKF_STORABLE, check_parameters
from enkit.adao.linearity import linearity_test
from enkit.adao.variants import VARIANTS, scheme_for
from enkit.assimilation.driver import assimilate
from enkit.augmentation import IdentityModel, estimate_parameters
from enkit.assimilation.types import AssimilationResult, BlackBoxModel
from enkit.covariance import Covariance, Dense, Diagonal, Scalar
from enkit.inflation import MultiplicativeAnalysis, MultiplicativeForecast
from enkit.smoothers.enks import enks

__all__ = ["Case", "New", "TIME_CONVENTIONS"]

TIME_CONVENTIONS = ("enkit", "adao")
# Outputs with one entry per analysis that ADAO's series starts with the background's.
_WITH_BACKGROUND = ("Analysis", "APosterioriCovariance")
# Outputs ADAO stores per member, as (·, N) columns.
_PER_MEMBER = ("CurrentState", "ForecastState", "InnovationAtCurrentState",
               "SimulatedObservationAtCurrentState")


class Case:
    """An ADAO-style case: inputs set one by one, then ``execute()`` and ``get``.

    seed: integer seed of the run (the initial ensemble and every draw of
    the scheme and model noise); ADAO's "SetSeed" parameter, when given,
    takes its place. One of the two is needed by any run that draws.

    time_convention: how the observation series lines up with the model
    steps, with Background the state at time 0:

    - "enkit" (default): observation j (j = 0 … J−1) is assimilated after
      j + 1 model steps: every observation is used, J analyses;
    - "adao": observation j is at time j, and ADAO's filters start at time
      0 with no analysis, so observation 0 is never used: J − 1 analyses
      (``Y[step + 1]`` in ADAO's loops). This reproduces ADAO's results.

    With either, ``get("Analysis")`` holds the background first and then
    one analysis per assimilated observation, as ADAO's does.

    Stored outputs (``StoreSupplementaryCalculations``) read the enkit
    outputs of ``_parameters.ENKF_STORABLE``, with ADAO's meaning and two
    differences, both where ADAO is inconsistent: ``CurrentOptimum`` is the
    analysis of the lowest-cost cycle so far (ADAO indexes its Analysis
    series, which starts with the background, by the cost index, so its
    entry is the analysis one cycle before the optimum); the costs' Jb is
    ½ δᵀ P_b⁺ δ with the forecast ensemble's covariance P_b (ADAO's is taken
    against the initial background with the static B at every cycle; see
    ``AssimilationResult``). Per-member outputs (CurrentState,
    ForecastState, InnovationAtCurrentState,
    SimulatedObservationAtCurrentState) are (·, N) columns, as ADAO's.
    """

    def __init__(self, name: str = "", *, seed: int | None = None,
                 time_convention: str = "enkit"):
        if time_convention not in TIME_CONVENTIONS:
            raise ValueError(f"time_convention must be one of {TIME_CONVENTIONS}, "
                             f"got {time_convention!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        self.name = name
        self.seed = seed
        self.time_convention = time_convention
        self._inputs: dict[str, Any] = {}
        self._algorithm: str | None = None
        self._parameters: dict[str, Any] = {}
        self._outputs: dict[str, list] | None = None
        self.result: AssimilationResult | None = None
        self.initial_ensemble: np.ndarray | None = None

    # ------------------------------------------------------------------ inputs
    def setBackground(self, Vector=None):  # noqa: N802 - ADAO's names
        """Background state Xb: (n,) vector (the ensemble's centre at time 0)."""
        xb = _vector("Background Vector", Vector)
        self._set("Background", xb)
        return self

    def setCheckingPoint(self, Vector=None):  # noqa: N802
        """The point x of a checking algorithm (LinearityTest); ADAO holds it
        as the background, and so does this case."""
        return self.setBackground(Vector=Vector)

    def setBackgroundError(self, Matrix=None, ScalarSparseMatrix=None,  # noqa: N802
                           DiagonalSparseMatrix=None):
        """Background error covariance B: an (n, n) ``Matrix``, a variance
        ``ScalarSparseMatrix`` (σ² I) or ``DiagonalSparseMatrix`` variances."""
        self._set("BackgroundError", _covariance_input(
            "BackgroundError", Matrix, ScalarSparseMatrix, DiagonalSparseMatrix))
        return self

    def setObservation(self, Vector=None, VectorSerie=None):  # noqa: N802
        """Observations: one (m,) ``Vector``, or a ``VectorSerie`` of J (m,)
        vectors (a (J, m) array or a list), one per observation time."""
        if (Vector is None) == (VectorSerie is None):
            raise ValueError("setObservation needs exactly one of Vector, VectorSerie")
        if Vector is not None:
            Y, single = _vector("Observation Vector", Vector)[None], True
        else:
            Y, single = _series("Observation VectorSerie", VectorSerie), False
        self._set("Observation", (Y, single))
        return self

    def setObservationError(self, Matrix=None, ScalarSparseMatrix=None,  # noqa: N802
                            DiagonalSparseMatrix=None):
        """Observation error covariance R (the same three forms as B)."""
        self._set("ObservationError", _covariance_input(
            "ObservationError", Matrix, ScalarSparseMatrix, DiagonalSparseMatrix))
        return self

    def setObservationOperator(self, Matrix=None, OneFunction=None):  # noqa: N802
        """Observation operator H: an (m, n) ``Matrix`` or ``OneFunction``, a
        JAX-traceable function of one state ``(n,) -> (m,)`` (with a control
        input and EstimationOf "Parameters": ``(x, u) -> (m,)``)."""
        self._set("ObservationOperator", _operator("ObservationOperator", Matrix, OneFunction))
        return self

    def setEvolutionModel(self, Matrix=None, OneFunction=None):  # noqa: N802
        """Evolution model M over one observation interval: an (n, n)
        ``Matrix`` or ``OneFunction`` ``(n,) -> (n,)`` (``(x, u)`` with a
        control input): JAX-traceable, or an ``enkit.BlackBoxModel``."""
        self._set("EvolutionModel", _operator("EvolutionModel", Matrix, OneFunction,
                                              black_box_ok=True))
        return self

    def setEvolutionError(self, Matrix=None, ScalarSparseMatrix=None,  # noqa: N802
                          DiagonalSparseMatrix=None):
        """Model error covariance Q: N(0, Q) is added to every member after
        each forecast (the three forms as for B)."""
        self._set("EvolutionError", _covariance_input(
            "EvolutionError", Matrix, ScalarSparseMatrix, DiagonalSparseMatrix))
        return self

    def setControlInput(self, Vector=None, VectorSerie=None):  # noqa: N802
        """Control input U: one (p,) ``Vector`` for every step, or a
        ``VectorSerie`` whose entry k is the control of the forecast from
        analysis time k (one entry: used at every step)."""
        if (Vector is None) == (VectorSerie is None):
            raise ValueError("setControlInput needs exactly one of Vector, VectorSerie")
        U = (_vector("ControlInput Vector", Vector)[None] if Vector is not None
             else _series("ControlInput VectorSerie", VectorSerie))
        self._set("ControlInput", U)
        return self

    def setInitialEnsemble(self, Ensemble):  # noqa: N802
        """enkit's addition: the initial ensemble itself, (N, n) (members on
        rows), in place of the draw from Background and BackgroundError.
        N must equal NumberOfMembers."""
        E0 = np.asarray(Ensemble, dtype=float)
        if E0.ndim != 2 or not np.all(np.isfinite(E0)):
            raise ValueError(f"Ensemble must be a finite (N, n) array, got shape {E0.shape}")
        self._set("InitialEnsemble", E0)
        return self

    def setAlgorithmParameters(self, Algorithm: str = "EnsembleKalmanFilter",  # noqa: N802
                               Parameters: dict | None = None):
        """The algorithm ("EnsembleKalmanFilter" or "LinearityTest") and its
        ADAO parameters; unknown names and values outside ADAO's lists or
        bounds raise ``ValueError`` (the message lists the valid names)."""
        self._parameters = check_parameters(Algorithm, Parameters)
        self._algorithm = Algorithm
        self._outputs = None
        return self

    # --------------------------------------------------------------- running
    def execute(self) -> int:
        """Run the case (0 on success, as ADAO's ``execute``)."""
        if self._algorithm is None:
            raise ValueError("call setAlgorithmParameters before execute")
        if self._algorithm == "LinearityTest":
            self._outputs = self._linearity_test()
        else:
            self._outputs = self._filter()
        return 0

    def get(self, name: str) -> list:
        """The stored series ``name``: a list, one entry per stored time.

        "Analysis" (always stored): the background, then the analysis mean
        of every assimilated observation (the smoothed mean for the EnKS);
        "APosterioriCovariance": B first, then the analysis covariances;
        "CurrentState" / "ForecastState": analysis / forecast ensembles,
        (n, N) with members in columns as ADAO computes them (ADAO's own
        ``get`` returns them flattened, n·N); the others one entry per
        analysis. LinearityTest: "Residu", one residue per increment.
        """
        if self._outputs is None:
            raise ValueError("nothing to get: call execute() first")
        if name not in self._outputs:
            raise ValueError(f"{name!r} was not stored; stored: {', '.join(self._outputs)} "
                             f"(add it to StoreSupplementaryCalculations)")
        return list(self._outputs[name])

    # ------------------------------------------------------------- internals
    def _set(self, key, value):
        self._inputs[key] = value
        self._outputs = None

    def _need(self, *names):
        missing = [n for n in names if n not in self._inputs]
        if missing:
            raise ValueError(f"{self._algorithm} needs {', '.join(missing)} "
                             f"(set{missing[0]})")

    def _key(self):
        seed = self._parameters.get("SetSeed")
        seed = self.seed if seed is None else seed
        if seed is None:
            raise ValueError("this run draws random numbers: give Case(seed=...) or the "
                             "SetSeed parameter (enkit never draws from a hidden global state)")
        return jax.random.key(seed)

    def _linearity_test(self):
        self._need("Background", "ObservationOperator")
        p = self._parameters
        H = self._inputs["ObservationOperator"]
        F = (lambda x: H @ x) if not callable(H) else H
        direction = p["InitialDirection"] or None
        res = linearity_test(F, self._inputs["Background"], formula=p["ResiduFormula"],
                             min_exponent=p["EpsilonMinimumExponent"], direction=direction,
                             amplitude=p["AmplitudeOfInitialDirection"],
                             key=None if direction is not None else self._key())
        self.result = res
        return {"Residu": list(res.residues)}

    def _filter(self):
        self._need("Background", "BackgroundError", "Observation", "ObservationError",
                   "ObservationOperator")
        p = self._parameters
        state = p["EstimationOf"] == "State"
        if state:
            self._need("EvolutionModel")
        xb = self._inputs["Background"]
        n = xb.shape[0]
        B = _as_operator(self._inputs["BackgroundError"], n, "BackgroundError")
        Y, single = self._inputs["Observation"]
        if single or self.time_convention == "enkit":
            obs = Y
        else:
            if Y.shape[0] < 2:
                raise ValueError("with time_convention='adao' the first observation is not "
                                 "assimilated: give at least two")
            obs = Y[1:]
        K, m = obs.shape
        R = _as_operator(self._inputs["ObservationError"], m, "ObservationError")
        N = p["NumberOfMembers"]
        key = self._key()
        k_init, k_run = jax.random.split(key)
        E0 = self._initial_ensemble(k_init, xb, B, N)
        h, model, controls = self._operators(state, K)
        Q = self._inputs.get("EvolutionError")
        Q = None if Q is None or not state else _as_operator(Q, n, "EvolutionError")
        factor = p["InflationFactor"]
        inflation = None
        if factor != 1.0:
            inflation = (MultiplicativeAnalysis(factor)
                         if p["InflationType"] == "MultiplicativeOnAnalysisAnomalies"
                         else MultiplicativeForecast(factor))
        requested = p["StoreSupplementaryCalculations"]
        store = ["analysis_mean"] + [ENKF_STORABLE[s] for s in requested
                                     if ENKF_STORABLE[s] not in (None, "analysis_mean")]
        scheme = scheme_for(p["Variant"], p, B, N)
        options = dict(h=h, R=R, key=k_run, inflation=inflation, model_noise=Q)
        if VARIANTS[p["Variant"]].smoother:
            if not state and controls is not None:  # enks indexes them by model time 0..K
                controls = jnp.concatenate([controls[:1], controls])
            store = store + ["smoothed_mean"]
            result = enks(model, E0, obs, scheme, lag=min(p["SmootherLagL"], K - 1),
                          store=tuple(store), controls=controls, **options)
        elif state:
            result = assimilate(model, E0, obs, scheme, store=tuple(store), controls=controls,
                                **options)
        else:
            result = estimate_parameters(E0, obs, scheme, store=tuple(store),
                                         controls=controls, **options)
        self.result = result
        return self._series(result, requested, xb, B, n)

    def _initial_ensemble(self, key, xb, B: Covariance, N):
        E0 = self._inputs.get("InitialEnsemble")
        if E0 is None:
            E0 = np.asarray(xb + B.sample(key, (N,)))
        elif E0.shape != (N, xb.shape[0]):
            raise ValueError(f"the initial Ensemble has shape {E0.shape}, expected "
                             f"(NumberOfMembers, n) = ({N}, {xb.shape[0]})")
        self.initial_ensemble = E0
        return jnp.asarray(E0)

    def _operators(self, state, K):
        """(h, model, controls): ADAO gives the control of step k to the
        model of the forecast from analysis time k (State: controls for
        ``assimilate``, one per model time 0..K) or to h at the analysis it
        leads to (Parameters: controls for ``estimate_parameters``, one per
        analysis)."""
        H = self._inputs["ObservationOperator"]
        M = self._inputs.get("EvolutionModel")
        if state:
            model = (M if callable(M) or isinstance(M, BlackBoxModel)
                     else _matrix_model(jnp.asarray(M)))
        else:
            model = IdentityModel()
        U = self._inputs.get("ControlInput")
        if U is None:
            return H, model, None
        if U.shape[0] == 1:
            U = np.repeat(U, K, axis=0)
        elif U.shape[0] < K:
            raise ValueError(f"ControlInput VectorSerie has {U.shape[0]} entries; "
                             f"this run needs one per forecast ({K})")
        U = U[:K]
        if state:  # u[t] for the step from t; h ignores it
            controls = np.concatenate([U, U[-1:]])
            h = H if not callable(H) else _ignore_control(H)
            model = model if callable(M) or isinstance(M, BlackBoxModel) else _ignore_control(model)
        else:  # h at analysis k gets U[k - 1]
            controls, h = U, H
        return h, model, jnp.asarray(controls)

    def _series(self, result: AssimilationResult, requested, xb, B, n):
        smoothed = result.smoothed_mean is not None
        means = np.asarray(result.smoothed_mean if smoothed else result.analysis_mean)
        out = {"Analysis": [xb] + list(means)}
        for name in requested:
            if name == "Analysis":
                continue
            if name == "CurrentStepNumber":
                out[name] = list(range(1, means.shape[0] + 1))
                continue
            values = np.asarray(getattr(result, ENKF_STORABLE[name]))
            if name in _PER_MEMBER:  # (K, N, ·) rows -> ADAO's (·, N) columns
                values = np.swapaxes(values, 1, 2)
            series = list(values)
            if name in _WITH_BACKGROUND:
                series = [np.asarray(B.dense())] + series
            out[name] = series
        return out


def New(name: str = "", *, seed: int | None = None,  # noqa: N802 - ADAO's name
        time_convention: str = "enkit") -> Case:
    """A new ``Case`` (ADAO's ``adaoBuilder.New``); see ``Case``."""
    return Case(name, seed=seed, time_convention=time_convention)


# ---------------------------------------------------------------- helpers
def _matvec(M, x):
    return M @ x


def _matrix_model(M):
    """x ↦ M x as a pytree (M a leaf): a second run compiles nothing anew."""
    return jax.tree_util.Partial(_matvec, M)


def _without_control(f, x, u):
    del u
    return f(x)


def _ignore_control(f: Callable) -> Callable:
    """(x, u) ↦ f(x) (a pytree when f is one)."""
    if isinstance(f, jax.tree_util.Partial):
        return jax.tree_util.Partial(_without_control, f)
    return partial(_without_control, f)


def _vector(what, v):
    if v is None:
        raise ValueError(f"{what} is required")
    a = np.ravel(np.asarray(v, dtype=float))
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be a non-empty finite vector")
    return a


def _series(what, s):
    try:
        a = np.asarray([np.ravel(np.asarray(v, dtype=float)) for v in s])
    except ValueError as err:
        raise ValueError(f"{what} must hold vectors of one length") from err
    if a.ndim != 2 or a.shape[0] == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be a non-empty series of finite vectors, "
                         f"got shape {a.shape}")
    return a


def _covariance_input(what, Matrix, ScalarSparseMatrix, DiagonalSparseMatrix):
    given = [(k, v) for k, v in (("Matrix", Matrix), ("ScalarSparseMatrix", ScalarSparseMatrix),
                                 ("DiagonalSparseMatrix", DiagonalSparseMatrix)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"set{what} needs exactly one of Matrix, ScalarSparseMatrix, "
                         f"DiagonalSparseMatrix")
    kind, value = given[0]
    if isinstance(value, Covariance):
        return value
    a = np.asarray(value, dtype=float)
    if kind == "ScalarSparseMatrix":
        if a.size != 1 or not float(a) > 0:
            raise ValueError(f"{what} ScalarSparseMatrix must be one positive variance")
        return ("scalar", float(a))
    if kind == "DiagonalSparseMatrix":
        a = np.ravel(a)
        if not np.all(a > 0):
            raise ValueError(f"{what} DiagonalSparseMatrix must hold positive variances")
        return ("diagonal", a)
    a = np.atleast_2d(a)
    if a.shape[0] != a.shape[1] or not np.allclose(a, a.T):
        raise ValueError(f"{what} Matrix must be square and symmetric, got shape {a.shape}")
    return ("dense", a)


def _as_operator(spec, dim, what) -> Covariance:
    if isinstance(spec, Covariance):
        if spec.dim != dim:
            raise ValueError(f"{what} has dimension {spec.dim}, expected {dim}")
        return spec
    kind, value = spec
    if kind == "scalar":
        return Scalar(value, dim)
    if value.shape[0] != dim:
        raise ValueError(f"{what} has dimension {value.shape[0]}, expected {dim}")
    return Diagonal(jnp.asarray(value)) if kind == "diagonal" else Dense(jnp.asarray(value))


def _operator(what, Matrix, OneFunction, black_box_ok=False):
    if (Matrix is None) == (OneFunction is None):
        raise ValueError(f"set{what} needs exactly one of Matrix, OneFunction")
    if OneFunction is not None:
        if not callable(OneFunction) and not (black_box_ok
                                              and isinstance(OneFunction, BlackBoxModel)):
            raise TypeError(f"{what} OneFunction must be callable")
        return OneFunction
    a = np.atleast_2d(np.asarray(Matrix, dtype=float))
    if a.ndim != 2 or not np.all(np.isfinite(a)):
        raise ValueError(f"{what} Matrix must be a finite 2-D array")
    return jnp.asarray(a)
