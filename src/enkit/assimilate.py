"""The cycling driver's names under their first module path.

The driver lives in the package ``enkit.assimilation``; this module keeps
``from enkit.assimilate import AssimilationResult`` (and the other names)
working. Note that ``enkit.assimilate`` itself is the function.
"""

from enkit.assimilation import (
    OUTPUTS,
    AssimilationResult,
    BlackBoxModel,
    PerTime,
    assimilate,
    over_window,
    per_time,
    stack_covariances,
)

__all__ = [
    "OUTPUTS",
    "AssimilationResult",
    "BlackBoxModel",
    "PerTime",
    "assimilate",
    "over_window",
    "per_time",
    "stack_covariances",
]
