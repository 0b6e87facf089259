"""L2 cycling driver: forecast → inflation → analysis → inflation, per time.

Modules, imports going downwards only:

- ``types``: the result type, ``PerTime``, ``over_window``, ``BlackBoxModel``
  and the two pytrees that describe a run (``ObservationRecord``,
  ``CycleSettings``);
- ``cycle``: the pieces of one cycle (forecast, masked analysis, outputs,
  per-cycle keys);
- ``checkpoint``: configuration fingerprints, saving and restoring a run;
- ``compiled``: the whole run as one ``lax.scan`` (and window by window);
- ``python_loop``: black-box models and ragged observations;
- ``driver``: ``assimilate``, the public entry that validates and dispatches;
- ``fourd``: ``assimilate_4d``, the 4D-EnKF (observations at several times
  inside each window), built on ``driver.prepare`` and the cycle pieces.
"""

from enkit.assimilation.cycle import STAGES as NONFINITE_STAGES
from enkit.assimilation.driver import OUTPUTS, assimilate
from enkit.assimilation.fourd import assimilate_4d, stacked_covariance
from enkit.assimilation.types import (
    AssimilationResult,
    BlackBoxModel,
    CycleSettings,
    NonFiniteError,
    ObservationRecord,
    PerTime,
    over_window,
    per_time,
    stack_covariances,
)

__all__ = [
    "NONFINITE_STAGES",
    "OUTPUTS",
    "AssimilationResult",
    "BlackBoxModel",
    "CycleSettings",
    "NonFiniteError",
    "ObservationRecord",
    "PerTime",
    "assimilate",
    "assimilate_4d",
    "over_window",
    "per_time",
    "stack_covariances",
    "stacked_covariance",
]
