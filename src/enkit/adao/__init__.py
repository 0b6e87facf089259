"""ADAO-compatible front end: a case built with ADAO's vocabulary, run by enkit.

``enkit.adao.New()`` returns a ``Case`` with ADAO's ``adaoBuilder`` methods
(setBackground, setBackgroundError, setObservation, setObservationError,
setObservationOperator, setEvolutionModel, setEvolutionError,
setControlInput, setAlgorithmParameters, execute, get), so that an ADAO
script moves over by changing its import. It runs ADAO's
"EnsembleKalmanFilter" (every variant name mapped to an enkit scheme:
``enkit.adao.variants``) and "LinearityTest" (``linearity_test``).

Where this front end differs from ADAO 9.16 on purpose:

- unknown parameter names are refused with the list of valid ones (ADAO
  keeps and ignores them), as are the inflation types and stored outputs
  ADAO's ensemble filters accept but never apply or fill;
- every variant starts from one ensemble drawn from N(Background,
  BackgroundError) with an explicit seed (ADAO starts the ETKF, MLEF, EnKS
  and E3DVAR-ETKF/-MLEF variants from identical members, ignoring B);
- by default every observation is assimilated (``time_convention="enkit"``);
  ``time_convention="adao"`` reproduces ADAO's loops, which never use the
  first observation of a series.
- "MultiplicativeOnBackgroundAnomalies" inflates the forecast anomalies
  (``enkit.MultiplicativeForecast``); ADAO inflates the previous analysis
  before the forecast, the same for a linear model without model error;
- no EvolutionError means no model error (ADAO's default is 1e-16 I, drawn
  when the ensemble's entries are small);
- with EstimationOf "Parameters" the Analysis series ends with the last
  analysis (ADAO appends the analysis of least cost J once more).

References: ADAO (EDF R&D), https://www.salome-platform.org (its
EnsembleKalmanFilter and LinearityTest documentation).
"""

from enkit.adao._parameters import ALGORITHMS, ENKF_STORABLE, check_parameters
from enkit.adao.case import TIME_CONVENTIONS, Case, New
from enkit.adao.linearity import RESIDUE_FORMULAS, LinearityResult, linearity_test
from enkit.adao.variants import VARIANTS, Variant, scheme_for

__all__ = ["ALGORITHMS", "Case", "ENKF_STORABLE", "LinearityResult", "New",
           "RESIDUE_FORMULAS", "TIME_CONVENTIONS", "VARIANTS", "Variant", "check_parameters",
           "linearity_test", "scheme_for"]
