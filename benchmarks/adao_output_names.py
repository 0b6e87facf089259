"""ADAO's output names against enkit's, on one ETKF run of ADAO.

ADAO's EnsembleKalmanFilter (variant "ETKF": the symmetric square root, as
``enkit.etkf``) runs a linear-Gaussian case with an identity model and
model error Q (ADAO starts from identical members at x_b and spreads them
with Q). ADAO skips the first observation of its series (observation k + 1
is analysed at cycle k). At every cycle, the forecast ensemble ADAO analysed
(its EnsembleOfStates: the forecast after its Q perturbation) is given to
one enkit cycle (``assimilate`` with K = 1 from that ensemble; the forecast
of an identity model is the ensemble itself), and the names of
``assimilate(store=)`` documented in ``AssimilationResult`` are checked:

- Analysis, CurrentState, SimulatedObservationAtCurrentState,
  InnovationAtCurrentState, SimulatedObservationAtCurrentAnalysis and
  CostFunctionJo are enkit's values (ADAO's ensembles as ``ravel`` of
  (n, N) columns);
- ADAO's ForecastState (its forecast ensemble, after the Q perturbation:
  the ensemble analysed) is forecast_ensemble, ForecastCovariance is
  forecast_covariance, and BMA is per member, EMX − x̄_a: enkit's bma is its
  mean over the members;
- ADAO's CostFunctionJ uses Jb = ½ (x̄_a − x_b)ᵀ B⁻¹ (x̄_a − x_b) from the
  initial background with the static B, recomputed here from enkit's
  analyses; enkit's cost_Jb uses the forecast ensemble's P_b instead, so the
  running optimum of each may differ;
- ADAO's CurrentOptimum is Analysis[IndexOfOptimum], the analysis one cycle
  before the optimum (the background at index 0); its
  SimulatedObservationAtCurrentOptimum is not shifted; enkit's optimum_mean is
  the analysis of the optimal cycle itself (checked against its own index on
  a K-cycle enkit run from ADAO's first forecast without model noise).

Prints each check with the largest difference; a run's output is recorded
in benchmarks/results/adao_output_names.txt. Needs ADAO (9.16 tested: put
its unpacked source on PYTHONPATH) and numpy/scipy; single-threaded.

Run:
    PYTHONPATH=src:benchmarks:/path/to/adao-9.16.0.1 python benchmarks/adao_output_names.py
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

import enkit  # noqa: E402

n, m, N, K = 3, 2, 6, 8
H = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
R_VAR = np.array([0.5, 0.8])
XB = np.ones(n)
B_VAR = 2.0
ADAO_NAMES = ("Analysis", "CurrentState", "ForecastState", "SimulatedObservationAtCurrentState",
              "InnovationAtCurrentState", "SimulatedObservationAtCurrentAnalysis",
              "CostFunctionJ", "CostFunctionJo", "IndexOfOptimum", "CurrentOptimum",
              "SimulatedObservationAtCurrentOptimum", "CostFunctionJAtCurrentOptimum",
              "CurrentStepNumber", "EnsembleOfStates", "ForecastCovariance", "BMA")


Q_VAR = 0.1


def adao_run(ys):
    from adao import adaoBuilder

    case = adaoBuilder.New()
    case.setBackground(Vector=XB, Stored=True)
    case.setBackgroundError(ScalarSparseMatrix=B_VAR)
    case.setObservationOperator(Matrix=H)
    case.setObservationError(DiagonalSparseMatrix=R_VAR)
    case.setEvolutionModel(Matrix=np.eye(n))
    case.setEvolutionError(ScalarSparseMatrix=Q_VAR)
    case.setObservation(VectorSerie=list(ys), Stored=True)
    case.setAlgorithmParameters(Algorithm="EnsembleKalmanFilter", Parameters={
        "Variant": "ETKF", "NumberOfMembers": N, "SetSeed": 7,
        "StoreSupplementaryCalculations": list(ADAO_NAMES)})
    case.execute()
    return {name: [np.asarray(v) for v in case.get(name)] for name in ADAO_NAMES}


def identity(x):
    return x


STORE = ("analysis_mean", "analysis_ensemble", "forecast_ensemble", "forecast_covariance", "bma",
         "simulated_obs_forecast_ensemble", "innovation_forecast_ensemble",
         "simulated_obs_analysis", "cost_J", "cost_Jo", "optimum_mean", "index_of_optimum")


def enkit_cycle(Ef, y):
    """One enkit cycle analysing the forecast ensemble Ef (N, n)."""
    res = enkit.assimilate(identity, Ef, y[None], enkit.etkf, h=H, R=enkit.Diagonal(R_VAR),
                           store=STORE)
    return {name: np.asarray(getattr(res, name))[0] for name in STORE}


def main():
    rng = np.random.default_rng(5)
    scale = np.array([1.0, 3.0, 4.0, 0.3, 2.5, 0.2, 3.0, 0.8, 1.5])[:, None]
    ys = XB[:m] + scale * rng.normal(size=(K + 1, m))
    a = adao_run(ys)
    forecasts = [E.reshape(n, N).T for E in a["EnsembleOfStates"]]  # (N, n) each
    cyc = [enkit_cycle(forecasts[k], ys[k + 1]) for k in range(K)]
    ours = {name: np.stack([c[name] for c in cyc]) for name in STORE}
    rows = []

    def check(what, adao, enkit_value):
        d = float(np.max(np.abs(np.asarray(adao, float) - np.asarray(enkit_value, float))))
        rows.append((what, d))

    def ravel(E):  # enkit's (K, N, ·) rows as ADAO's raveled (·, N) columns
        return np.stack([e.T.ravel() for e in E])

    xa = ours["analysis_mean"]
    A = np.stack(a["Analysis"])  # K + 1 rows: the background first
    check("Analysis[1:] = analysis_mean", A[1:], xa)
    check("CurrentState = analysis_ensemble (raveled)", np.stack(a["CurrentState"]),
          ravel(ours["analysis_ensemble"]))
    check("EnsembleOfStates = forecast_ensemble (raveled)",
          np.stack(a["EnsembleOfStates"]).reshape(K, -1), ravel(ours["forecast_ensemble"]))
    check("ForecastState = forecast_ensemble (raveled)", np.stack(a["ForecastState"]),
          ravel(ours["forecast_ensemble"]))
    check("ForecastCovariance = forecast_covariance", np.stack(a["ForecastCovariance"]),
          ours["forecast_covariance"])
    bma = np.stack(a["BMA"]).reshape(K, n, N)
    check("BMA = forecast_ensemble − analysis_mean (raveled)", bma.reshape(K, -1),
          ravel(ours["forecast_ensemble"] - xa[:, None, :]))
    check("BMA's mean over the members = bma", bma.mean(axis=2), ours["bma"])
    check("SimulatedObservationAtCurrentState = simulated_obs_forecast_ensemble",
          np.stack(a["SimulatedObservationAtCurrentState"]),
          ravel(ours["simulated_obs_forecast_ensemble"]))
    check("InnovationAtCurrentState = innovation_forecast_ensemble",
          np.stack(a["InnovationAtCurrentState"]), ravel(ours["innovation_forecast_ensemble"]))
    check("SimulatedObservationAtCurrentAnalysis = simulated_obs_analysis",
          np.stack(a["SimulatedObservationAtCurrentAnalysis"]).reshape(K, m),
          ours["simulated_obs_analysis"])
    check("CostFunctionJo = cost_Jo", np.ravel(a["CostFunctionJo"]), ours["cost_Jo"])
    jb_static = 0.5 * np.sum((xa - XB) ** 2, axis=1) / B_VAR
    J_adao = np.ravel(a["CostFunctionJ"])
    check("CostFunctionJ = ½|x̄_a − x_b|²_B⁻¹ + cost_Jo", J_adao, jb_static + ours["cost_Jo"])
    idx_adao = np.ravel(a["IndexOfOptimum"]).astype(int)
    check("IndexOfOptimum = running argmin of CostFunctionJ", idx_adao,
          [int(np.argmin(J_adao[:k + 1])) for k in range(K)])
    check("CurrentOptimum = Analysis[IndexOfOptimum] (shifted: x_b first)",
          np.stack(a["CurrentOptimum"]), A[idx_adao])
    check("SimulatedObservationAtCurrentOptimum = simulated_obs_analysis[IndexOfOptimum]",
          np.stack(a["SimulatedObservationAtCurrentOptimum"]).reshape(K, m),
          ours["simulated_obs_analysis"][idx_adao])
    check("CostFunctionJAtCurrentOptimum = CostFunctionJ[IndexOfOptimum]",
          np.ravel(a["CostFunctionJAtCurrentOptimum"]), J_adao[idx_adao])
    check("CurrentStepNumber = 1, 2, ..., K (cycle_number)", np.ravel(a["CurrentStepNumber"]),
          np.arange(1, K + 1))
    run = enkit.assimilate(identity, forecasts[0], ys[1:], enkit.etkf, h=H,
                           R=enkit.Diagonal(R_VAR), store=STORE)
    idx = np.asarray(run.index_of_optimum)
    check("K-cycle run: optimum_mean = analysis_mean[index_of_optimum]", run.optimum_mean,
          np.asarray(run.analysis_mean)[idx])
    width = max(len(w) for w, _ in rows)
    print(f"ADAO EnsembleKalmanFilter (ETKF) vs enkit.etkf: n={n}, m={m}, N={N}, K={K}")
    print(f"{'check'.ljust(width)}  max |difference|")
    for what, d in rows:
        print(f"{what.ljust(width)}  {d:.2e}")
    print(f"ADAO CostFunctionJ (static-B Jb):       {np.array2string(J_adao, precision=3)}")
    print(f"enkit cost_J (ensemble P_b Jb), same cycles: "
          f"{np.array2string(ours['cost_J'], precision=3)}")
    print(f"ADAO IndexOfOptimum: {idx_adao.tolist()}; enkit on the same cycles: "
          f"{[int(np.argmin(ours['cost_J'][:k + 1])) for k in range(K)]}")
    shifted = [k for k in range(K) if not np.allclose(A[idx_adao[k]], A[idx_adao[k] + 1])]
    print(f"cycles where ADAO's CurrentOptimum is not the analysis of its optimal cycle: "
          f"{len(shifted)} of {K}")


if __name__ == "__main__":
    main()
