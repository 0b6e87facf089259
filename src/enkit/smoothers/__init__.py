"""L2 smoothers: the past corrected by later observations.

- ``enks`` / ``LagSmoother``: ensemble Kalman smoother, fixed lag or the
  whole window (Evensen & van Leeuwen 2000);
- ``ensemble_rts`` / ``RTSSmoother``: ensemble Rauch–Tung–Striebel backward
  pass (Raanes 2016);
- ``ienks``: iterative ensemble Kalman smoother (Bocquet & Sakov 2014),
  its own compiled scan over data-assimilation windows (lag, shift,
  transform or bundle, MDA, Levenberg–Marquardt damping);
- ``enks_stream``: the fixed-lag EnKS online, over chunks of observations,
  releasing smoothed estimates as they leave the lag window (memory bounded
  by the lag; checkpoints between chunks);

``LagSmoother`` and ``RTSSmoother`` are smoother steps carried by the
cycling driver, ``assimilate(..., smoother=...)``. A smoother step is a
frozen pytree with

- ``check(K=, scheme=)``: validation before any model run;
- ``with_outputs(names)``: the smoothed outputs to produce;
- ``needs_transform``: whether ``step`` needs the analysis's ensemble
  transform G (``enkit.filters.ensemble_space``);
- ``init(E0) -> state``; ``step(state, Ef, Ea, G) -> (state, rows)`` once per
  cycle inside the compiled scan (rows: a dict of arrays, one row per
  cycle); ``finish(state, rows) -> {name: (K, ...)}`` after the last cycle.
"""

from enkit.smoothers.enks import LagSmoother, enks
from enkit.smoothers.ienks import IENKS_OUTPUTS, ienks
from enkit.smoothers.online import StreamChunk, enks_stream
from enkit.smoothers.rts import RTSSmoother, ensemble_rts, rts_gain_step

__all__ = [
    "IENKS_OUTPUTS",
    "LagSmoother",
    "RTSSmoother",
    "StreamChunk",
    "enks",
    "enks_stream",
    "ensemble_rts",
    "ienks",
    "rts_gain_step",
]
