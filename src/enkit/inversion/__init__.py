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
  ``esmda_geometric_alpha``), ``IES`` (Chen & Oliver 2013; Evensen et al.
  2019; step lengths ``ies_step_lengths``), ``SparseEKI`` (Schneider,
  Stuart & Wu 2022; ℓ1 soft threshold and hard pruning);
- samplers: ``EKS`` (Garbuno-Iñigo, Hoffmann, Li & Stuart 2020) and
  ``ALDI`` (Garbuno-Iñigo, Nüsken & Reich 2020), whose ``tell`` needs Δt;
  ``SMC`` (alias ``TemperedSMC``), sequential Monte Carlo with adaptive
  tempering and random-walk Metropolis moves (Del Moral, Doucet & Jasra
  2006; Beskos et al. 2016): exact in the limit N → ∞ for any G, with a
  log-evidence estimate (``smc_summary``);
- schedulers for Δt: ``FixedStep``, ``DataMisfitController`` (Iglesias &
  Yang 2021), ``EKSStableScheduler`` (Δt = h/(‖D‖_F + δ)),
  ``LevenbergMarquardt`` (Iglesias 2016; ``lm_alpha``);
- process wrappers: ``MultiplicativeInflation``, ``AdditiveInflation``,
  ``SubspaceInflation`` (subspace-trap escape), ``CollapseInflation``, ``NesterovAccelerated`` and
  ``ConstantMomentum`` (Kovachki & Stuart 2019), ``UpdateGroups``;
  minibatched data: ``ObservationSeries`` (``at(iteration) -> (y, noise)``);
- the continuous-time EKI flow: ``eki_flow`` (diffrax), its linear closed
  form ``eki_flow_linear``;
- stopping: ``discrepancy_principle``, ``max_iterations_reached``,
  ``data_misfit``;
- model error: ``augment_model_error`` (model errors q ~ N(0, Q) as extra
  unknowns, Evensen 2019; any process runs on the ``ModelErrorProblem``);
- ``GaussianPrior``; bounds and named parameters: ``Parameter``,
  ``ParameterSpace``, the bijections ``Unbounded``, ``BoundedBelow``,
  ``BoundedAbove``, ``Bounded``, and ``ConstrainedProcess`` (any process
  asked in the constrained space).

Every ``tell`` takes ``dt`` by keyword (ES-MDA only ``dt=None``: its steps
are 1/αₖ of its schedule). Failure policies for crashed members
(``Raise``, ``Ignore``, ``Resample``) and forward evaluation through
executors are in ``enkit.inversion.failures``; ``calibrate()`` drives
ask/tell (checkpoints, stopping rules, progress), ``calibrate_scan`` runs a
JAX forward map in one compiled loop. New processes follow
``EnsembleProcess``; step rules implement ``step_size(time, G, y, noise)``.
"""

from enkit.inversion._common import EnsembleState, InversionInfo
from enkit.inversion._calibrate_scan import calibrate_scan
from enkit.inversion.calibrate import calibrate
from enkit.inversion.calibration_result import CalibrationResult, IterationRecord
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
from enkit.inversion.eki_flow import (
    EKIFlowResult,
    eki_flow,
    eki_flow_linear,
    eki_flow_vector_field,
)
from enkit.inversion.esmda import (
    ESMDA,
    esmda_constant_alpha,
    esmda_geometric_alpha,
)
from enkit.inversion.etki import ETKI, etki_update
from enkit.inversion.failures import (
    ForwardFailure,
    Ignore,
    NonFiniteEnsemble,
    Raise,
    Resample,
    evaluate,
)
from enkit.inversion.eks import ALDI, EKS, aldi_update, eks_update
from enkit.inversion.gnki import GNKI, GNKIState
from enkit.inversion.ies import IES, IESState, ies_step_lengths, ies_update
from enkit.inversion.levenberg_marquardt import (
    LevenbergMarquardt,
    lm_alpha,
    lm_residual_ratio,
)
from enkit.inversion.model_error import ModelErrorProblem, augment_model_error
from enkit.inversion.momentum import (
    ConstantMomentum,
    MomentumState,
    NesterovAccelerated,
)
from enkit.inversion.observations import ObservationSeries, block_noise, restrict_noise
from enkit.inversion.prior import GaussianPrior
from enkit.inversion.process_inflation import (
    AdditiveInflation,
    CollapseInflation,
    CollapseState,
    InflatedState,
    MultiplicativeInflation,
    SubspaceInflation,
    subspace_residual_fraction,
)
from enkit.inversion.smc import (
    SMC,
    SMCHistory,
    SMCInfo,
    SMCState,
    SMCSummary,
    smc_summary,
)
from enkit.inversion.schedulers import (
    DataMisfitController,
    EKSStableScheduler,
    FixedStep,
    stable_step,
)
from enkit.inversion.stopping import (
    data_misfit,
    discrepancy_principle,
    ensemble_collapsed,
    max_iterations_reached,
    spread_ratio,
)
from enkit.inversion.sparse_eki import (
    SparseEKI,
    soft_threshold,
    span_elastic_net,
)
from enkit.inversion.teki import TEKI
from enkit.inversion.uki import UKI, UKIState
from enkit.inversion.update_groups import UpdateGroups

EnsembleKalmanInversion = EKI
EnsembleTransformKalmanInversion = ETKI
TikhonovEKI = TEKI
UnscentedKalmanInversion = UKI
GaussNewtonKalmanInversion = GNKI
EnsembleSmootherMDA = ESMDA
TemperedSMC = SMC
IterativeEnsembleSmoother = IES

__all__ = [
    "AdditiveInflation",
    "CollapseInflation",
    "CollapseState",
    "ConstantMomentum",
    "InflatedState",
    "LevenbergMarquardt",
    "MomentumState",
    "MultiplicativeInflation",
    "NesterovAccelerated",
    "ObservationSeries",
    "SubspaceInflation",
    "UpdateGroups",
    "block_noise",
    "lm_alpha",
    "lm_residual_ratio",
    "restrict_noise",
    "subspace_residual_fraction",
    "CalibrationResult",
    "ForwardFailure",
    "NonFiniteEnsemble",
    "Ignore",
    "IterationRecord",
    "Raise",
    "Resample",
    "calibrate",
    "calibrate_scan",
    "ensemble_collapsed",
    "spread_ratio",
    "evaluate",
    "ALDI",
    "EKS",
    "EKSStableScheduler",
    "stable_step",
    "SparseEKI",
    "SMC",
    "SMCHistory",
    "SMCInfo",
    "SMCState",
    "SMCSummary",
    "TemperedSMC",
    "smc_summary",
    "aldi_update",
    "eks_update",
    "soft_threshold",
    "span_elastic_net",
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
    "IES",
    "IESState",
    "IterativeEnsembleSmoother",
    "GaussNewtonKalmanInversion",
    "GaussianPrior",
    "ModelErrorProblem",
    "augment_model_error",
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
    "EKIFlowResult",
    "eki_flow",
    "eki_flow_linear",
    "eki_flow_vector_field",
    "esmda_constant_alpha",
    "esmda_geometric_alpha",
    "etki_update",
    "ies_step_lengths",
    "ies_update",
    "max_iterations_reached",
]
