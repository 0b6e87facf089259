"""Ensemble Kalman processes for inverse problems (calibration).

A process has three pure methods (``ask``/``tell``, STYLE 1):

    state = process.init(key, U0)                  # U0: (N, p) prior draws
    U = process.ask(state)                          # (N, p) parameters
    state, info = process.tell(state, G, y, noise, dt=dt)   # G: (N, d)

Members are on axis 0 (EnsembleKalmanProcesses.jl holds (p, N) columns;
enkit holds rows). ``noise`` is Γ, a covariance operator or an array wrapped
by ``enkit.as_covariance``. Sample covariances use N − 1.

- ``EKI`` (Iglesias, Law & Stuart 2013), ``ETKI`` (square-root form,
  Huang et al. 2022), ``TEKI`` (Chada, Stuart & Tong 2020), ``UKI``
  (Huang, Schneider & Stuart 2022), ``GNKI`` (Chada, Chen & Sanz-Alonso 2021),
  ``ESMDA`` (Emerick & Reynolds 2013; schedules ``esmda_constant_alpha``,
  ``esmda_geometric_alpha``);
- schedulers for Δt: ``FixedStep``, ``DataMisfitController`` (Iglesias &
  Yang 2021);
- stopping: ``discrepancy_principle``, ``max_iterations_reached``,
  ``data_misfit``;
- ``GaussianPrior``; bounds and named parameters: ``Parameter``,
  ``ParameterSpace``, the bijections ``Unbounded``, ``BoundedBelow``,
  ``BoundedAbove``, ``Bounded``, and ``ConstrainedProcess`` (any process
  asked in the constrained space).

Seams for what is not here yet: constrained/named priors wrap
``GaussianPrior`` (processes work in its unconstrained space); failure
policies replace the finiteness check of ``_common.check_tell``; new
processes (IES, EKS/ALDI, sparse EKI) follow ``EnsembleProcess``;
Levenberg–Marquardt damping or other step rules implement
``step_size(time, G, y, noise)``; ``calibrate()`` drives ask/tell.
"""

from enkit.inversion._common import EnsembleState, InversionInfo
from enkit.inversion.constraints import (
    Bijection,
    Bounded,
    BoundedAbove,
    BoundedBelow,
    ConstrainedProcess,
    Parameter,
    ParameterSpace,
    Unbounded,
)
from enkit.inversion.eki import EKI, eki_update
from enkit.inversion.esmda import (
    ESMDA,
    esmda_constant_alpha,
    esmda_geometric_alpha,
)
from enkit.inversion.etki import ETKI, etki_update
from enkit.inversion.gnki import GNKI, GNKIState
from enkit.inversion.prior import GaussianPrior
from enkit.inversion.schedulers import DataMisfitController, FixedStep
from enkit.inversion.stopping import (
    data_misfit,
    discrepancy_principle,
    max_iterations_reached,
)
from enkit.inversion.teki import TEKI
from enkit.inversion.uki import UKI, UKIState

EnsembleKalmanInversion = EKI
EnsembleTransformKalmanInversion = ETKI
TikhonovEKI = TEKI
UnscentedKalmanInversion = UKI
GaussNewtonKalmanInversion = GNKI
EnsembleSmootherMDA = ESMDA

__all__ = [
    "EKI",
    "ESMDA",
    "ETKI",
    "GNKI",
    "TEKI",
    "UKI",
    "Bijection",
    "Bounded",
    "BoundedAbove",
    "BoundedBelow",
    "ConstrainedProcess",
    "DataMisfitController",
    "EnsembleKalmanInversion",
    "EnsembleSmootherMDA",
    "EnsembleState",
    "EnsembleTransformKalmanInversion",
    "FixedStep",
    "GNKIState",
    "GaussNewtonKalmanInversion",
    "GaussianPrior",
    "InversionInfo",
    "Parameter",
    "ParameterSpace",
    "TikhonovEKI",
    "UKIState",
    "Unbounded",
    "UnscentedKalmanInversion",
    "data_misfit",
    "discrepancy_principle",
    "eki_update",
    "esmda_constant_alpha",
    "esmda_geometric_alpha",
    "etki_update",
    "max_iterations_reached",
]
