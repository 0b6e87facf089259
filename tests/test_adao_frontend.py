"""The ADAO-compatible front end ``enkit.adao`` (ADAO itself is not needed).

Each variant's run equals ``enkit.assimilate`` with the scheme written out
here (not read from the variant table), a deterministic variant equals the
Kalman filter of its initial ensemble's statistics on a linear-Gaussian
case, unknown options are refused with the list of valid ones, the two time
conventions line up the observations as documented, and LinearityTest's
residues match their closed forms on a linear and a quadratic operator.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enkit import adao
from enkit.assimilation.driver import assimilate
from enkit.assimilation.types import over_window
from enkit.covariance import Dense, Diagonal, Scalar
from enkit.filters import enkf, etkf, etkf_n, ienkf, mlef
from enkit.inflation import MultiplicativeAnalysis, MultiplicativeForecast
from enkit.smoothers.enks import enks
from reference.kalman_numpy import kalman_analysis, sample_stats

n, m, J, N, SEED = 3, 2, 5, 8, 11
M = np.array([[0.9, 0.1, 0.0], [0.0, 0.95, 0.05], [0.02, 0.0, 0.9]])
H = np.array([[1.0, 0.5, 0.0], [0.0, -0.3, 1.0]])
r = np.array([0.5, 0.3])
XB = np.array([0.2, -0.1, 0.4])
Y = np.random.default_rng(0).normal(size=(J, m))


def make_case(variant="ETKF", *, time_convention="enkit", extra=None, seed=SEED, Y=Y):
    case = adao.New(seed=seed, time_convention=time_convention)
    case.setBackground(Vector=XB)
    case.setBackgroundError(DiagonalSparseMatrix=[1.0, 0.5, 2.0])
    case.setObservation(VectorSerie=Y)
    case.setObservationError(DiagonalSparseMatrix=r)
    case.setObservationOperator(Matrix=H)
    case.setEvolutionModel(Matrix=M)
    params = {"Variant": variant, "NumberOfMembers": N}
    params.update(extra or {})
    case.setAlgorithmParameters(Algorithm="EnsembleKalmanFilter", Parameters=params)
    return case


def run_key(seed=SEED):
    return jax.random.split(jax.random.key(seed))[1]


def model(x):
    return jnp.asarray(M) @ x


# The enkit scheme of each distinct variant, written out independently of adao.VARIANTS.
EXPECTED = {
    "EnKF-05": enkf,
    "EnKF-16": partial(enkf, center_perturbations=True),
    "ETKF-KFF": etkf,
    "ETKF-N-11": etkf_n,
    "ETKF-N-15": partial(etkf_n, mode_correction=True),
    "ETKF-N-16": partial(etkf_n, mode_correction=True, hessian="approximate"),
    "MLEF-T": mlef,
    "IEnKF-T": over_window(ienkf),
    "IEnKF-B": over_window(partial(ienkf, bundle_epsilon=1e-3 / np.sqrt(N - 1))),
}
ALIASES = {"EnKF": "EnKF-16", "StochasticEnKF": "EnKF-16", "ETKF": "ETKF-KFF",
           "ETKF-VAR": "ETKF-KFF", "ETKF-N": "ETKF-N-16", "MLEF": "MLEF-T", "MLEF-B": "MLEF-T",
           "IEnKF": "IEnKF-T", "IEKF": "IEnKF-B", "EnKS": "EnKS-KFF",
           "E3DVAR": "E3DVAR-ETKF"}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_variant_is_its_enkit_scheme(variant):
    case = make_case(variant)
    case.execute()
    E0 = case.initial_ensemble
    ref = assimilate(model, E0, Y, EXPECTED[variant], h=jnp.asarray(H), R=Diagonal(r),
                     key=run_key())
    got = np.asarray(case.get("Analysis"))
    np.testing.assert_array_equal(got[0], XB)
    np.testing.assert_allclose(got[1:], ref.analysis_mean, rtol=0, atol=1e-12)


def test_aliases_name_the_same_scheme():
    for alias, name in ALIASES.items():
        assert adao.VARIANTS[alias] == adao.VARIANTS[name], alias
    assert set(adao.VARIANTS) == set(adao.ALGORITHMS["EnsembleKalmanFilter"]["Variant"][1])


def test_enks_variant_is_enks_with_the_lag():
    case = make_case("EnKS-KFF", extra={"SmootherLagL": 2})
    case.execute()
    ref = enks(model, case.initial_ensemble, Y, etkf, lag=2, h=jnp.asarray(H), R=Diagonal(r),
               key=run_key())
    got = np.asarray(case.get("Analysis"))
    np.testing.assert_allclose(got[1:], ref.smoothed_mean, rtol=0, atol=1e-12)
    # the last analysis has no later observation: smoothed = filtered
    np.testing.assert_allclose(got[-1], ref.analysis_mean[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant, base", [("E3DVAR-ETKF", etkf), ("E3DVAR-EnKF", enkf),
                                           ("E3DVAR-MLEF", mlef)])
def test_e3dvar_variants_are_e3dvar_of_their_base(variant, base):
    try:
        from enkit.variational import e3dvar
    except ImportError:
        with pytest.raises(ValueError, match="need enkit.variational.e3dvar"):
            make_case(variant).execute()
        return
    hybrid = {"HybridCovarianceEquilibrium": 0.3, "HybridCostDecrementTolerance": 1e-9,
              "HybridMaximumNumberOfIterations": 500}
    case = make_case(variant, extra=hybrid)
    case.execute()
    B = Diagonal(jnp.asarray([1.0, 0.5, 2.0]))
    # ADAO's CostDecrementTolerance τ stops L-BFGS-B at a relative decrease τ·1e14·ε
    tol = 1e-9 * 1e14 * np.finfo(np.float64).eps
    scheme = e3dvar(base, B, equilibrium=0.3, cost_tolerance=tol, max_iterations=500)
    ref = assimilate(model, case.initial_ensemble, Y, scheme, h=jnp.asarray(H), R=Diagonal(r),
                     key=run_key())
    np.testing.assert_allclose(np.asarray(case.get("Analysis"))[1:], ref.analysis_mean,
                               rtol=0, atol=1e-12)


def test_etkf_variant_is_the_kalman_filter_on_a_linear_gaussian_case():
    """Linear model, linear h, no model error: the ETKF's mean and covariance
    are the Kalman filter's started from the initial ensemble's own sample
    mean and covariance, to round-off."""
    case = make_case("ETKF", extra={"StoreSupplementaryCalculations":
                                    ["APosterioriCovariance", "CurrentState"]})
    case.execute()
    mean, cov = sample_stats(case.initial_ensemble)
    means, covs = [], []
    for y in Y:
        mean, cov = M @ mean, M @ cov @ M.T
        mean, cov = kalman_analysis(mean, cov, y, H, np.diag(r))
        means.append(mean)
        covs.append(cov)
    np.testing.assert_allclose(np.asarray(case.get("Analysis"))[1:], means, rtol=0, atol=1e-12)
    P = case.get("APosterioriCovariance")
    np.testing.assert_allclose(P[0], np.diag([1.0, 0.5, 2.0]))
    np.testing.assert_allclose(np.asarray(P[1:]), covs, rtol=0, atol=1e-12)
    ensembles = case.get("CurrentState")
    assert ensembles[0].shape == (n, N)  # ADAO's layout: members in columns
    np.testing.assert_allclose(ensembles[-1].mean(axis=1), means[-1], rtol=0, atol=1e-12)


def test_initial_ensemble_is_drawn_from_background_and_its_error():
    """E0 = Xb + B^{1/2} z, z standard normal from the first half of the seed's key."""
    case = make_case("ETKF")
    case.execute()
    k_init = jax.random.split(jax.random.key(SEED))[0]
    z = np.asarray(jax.random.normal(k_init, (N, n), dtype=jnp.float64))
    np.testing.assert_allclose(case.initial_ensemble, XB + np.sqrt([1.0, 0.5, 2.0]) * z,
                               rtol=0, atol=1e-14)
    again = make_case("ETKF")
    again.execute()
    np.testing.assert_array_equal(again.initial_ensemble, case.initial_ensemble)
    other = make_case("ETKF", extra={"SetSeed": 5})
    other.execute()
    assert not np.allclose(other.initial_ensemble, case.initial_ensemble)  # SetSeed wins


def test_given_initial_ensemble_and_inflation():
    E0 = np.random.default_rng(3).normal(size=(N, n))
    for kind, step in (("MultiplicativeOnAnalysisAnomalies", MultiplicativeAnalysis(1.1)),
                       ("MultiplicativeOnBackgroundAnomalies", MultiplicativeForecast(1.1))):
        case = make_case("ETKF", extra={"InflationType": kind, "InflationFactor": 1.1})
        case.setInitialEnsemble(E0)
        case.execute()
        np.testing.assert_array_equal(case.initial_ensemble, E0)
        ref = assimilate(model, E0, Y, etkf, h=jnp.asarray(H), R=Diagonal(r), inflation=step)
        np.testing.assert_allclose(np.asarray(case.get("Analysis"))[1:], ref.analysis_mean,
                                   rtol=0, atol=1e-12)
    case = make_case("ETKF")
    case.setInitialEnsemble(E0[:5])
    with pytest.raises(ValueError, match="expected"):
        case.execute()


def test_unknown_option_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown EnsembleKalmanFilter parameter.*"
                                         "'NumberOfMember'.*valid names:.*NumberOfMembers"):
        make_case(extra={"NumberOfMember": 10})
    with pytest.raises(ValueError, match="Variant 'ETKF-X' is not one of: EnKF, ETKF"):
        make_case("ETKF-X")
    with pytest.raises(ValueError, match="InflationType.*not one of"):
        make_case(extra={"InflationType": "AdditiveOnAnalysisCovariance"})
    with pytest.raises(ValueError, match="StoreSupplementaryCalculations.*'CurrentOptimal'"
                                         ".*supported: Analysis"):
        make_case(extra={"StoreSupplementaryCalculations": ["CurrentOptimal"]})
    with pytest.raises(ValueError, match=r"NumberOfMembers must lie in \[2, inf\]"):
        make_case(extra={"NumberOfMembers": 1})
    with pytest.raises(ValueError, match="unknown Algorithm 'Blue'.*EnsembleKalmanFilter"):
        adao.New(seed=1).setAlgorithmParameters(Algorithm="Blue")
    with pytest.raises(TypeError):
        adao.New().setBackground(Vectr=XB)  # a misspelt keyword


def test_defaults_are_adaos():
    p = adao.check_parameters("EnsembleKalmanFilter", {})
    assert (p["Variant"], p["NumberOfMembers"], p["EstimationOf"], p["InflationType"],
            p["InflationFactor"], p["SmootherLagL"]) == (
        "EnKF", 100, "State", "MultiplicativeOnAnalysisAnomalies", 1.0, 0)
    assert (p["HybridCovarianceEquilibrium"], p["HybridMaximumNumberOfIterations"],
            p["HybridCostDecrementTolerance"]) == (0.5, 15000, 1e-7)


def test_a_run_that_draws_needs_a_seed():
    case = make_case(seed=None)
    with pytest.raises(ValueError, match="SetSeed"):
        case.execute()
    with pytest.raises(ValueError, match="call execute"):
        case.get("Analysis")


def test_time_conventions():
    """'adao' skips the first observation (ADAO's Y[step + 1]); 'enkit' uses all."""
    a = make_case("ETKF", time_convention="adao")
    a.execute()
    e = make_case("ETKF", time_convention="enkit", Y=Y[1:])
    e.execute()
    assert len(a.get("Analysis")) == J and len(e.get("Analysis")) == J
    np.testing.assert_allclose(np.asarray(a.get("Analysis")), np.asarray(e.get("Analysis")),
                               rtol=0, atol=1e-12)
    Y2 = Y.copy()
    Y2[0] += 10.0
    a2 = make_case("ETKF", time_convention="adao", Y=Y2)
    a2.execute()
    np.testing.assert_array_equal(np.asarray(a2.get("Analysis")), np.asarray(a.get("Analysis")))
    e2 = make_case("ETKF", time_convention="enkit", Y=Y2)
    e2.execute()
    e1 = make_case("ETKF", time_convention="enkit")
    e1.execute()
    assert len(e1.get("Analysis")) == J + 1
    assert not np.allclose(e2.get("Analysis")[1], e1.get("Analysis")[1])
    with pytest.raises(ValueError, match="time_convention"):
        adao.New(time_convention="dapper")


def test_outputs_and_controls():
    case = make_case("ETKF", extra={"StoreSupplementaryCalculations": [
        "CurrentStepNumber", "ForecastState", "InnovationAtCurrentState", "CostFunctionJo"]})
    case.execute()
    assert case.get("CurrentStepNumber") == list(range(1, J + 1))
    assert case.get("ForecastState")[0].shape == (n, N)
    assert len(case.get("InnovationAtCurrentState")) == J
    assert case.get("InnovationAtCurrentState")[0].shape == (m, N)


def test_optimum_and_per_member_outputs_read_the_driver_outputs():
    names = ["CurrentOptimum", "IndexOfOptimum", "CostFunctionJ", "CostFunctionJAtCurrentOptimum",
             "CostFunctionJbAtCurrentOptimum", "CostFunctionJoAtCurrentOptimum",
             "SimulatedObservationAtCurrentAnalysis", "SimulatedObservationAtCurrentOptimum",
             "SimulatedObservationAtCurrentState", "ForecastState", "APosterioriCorrelations"]
    case = make_case("ETKF", extra={"StoreSupplementaryCalculations": names})
    case.execute()
    J_ = np.asarray(case.get("CostFunctionJ"))
    index = np.asarray(case.get("IndexOfOptimum"))
    np.testing.assert_array_equal(index, [np.argmin(J_[:k + 1]) for k in range(len(J_))])
    analyses = np.asarray(case.get("Analysis"))[1:]  # the background first
    np.testing.assert_allclose(np.asarray(case.get("CurrentOptimum")), analyses[index],
                               rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(case.get("CostFunctionJAtCurrentOptimum")), J_[index])
    hxa = np.asarray(case.get("SimulatedObservationAtCurrentAnalysis"))
    np.testing.assert_allclose(np.asarray(case.get("SimulatedObservationAtCurrentOptimum")),
                               hxa[index])
    np.testing.assert_allclose(np.asarray(case.get("CostFunctionJbAtCurrentOptimum"))
                               + np.asarray(case.get("CostFunctionJoAtCurrentOptimum")), J_[index])
    hx_members = np.asarray(case.get("SimulatedObservationAtCurrentState"))
    forecasts = np.asarray(case.get("ForecastState"))  # (J, n, N) columns
    assert hx_members.shape == (J, m, N)
    np.testing.assert_allclose(hx_members, np.asarray(H) @ forecasts, rtol=0, atol=1e-12)
    corr = np.asarray(case.get("APosterioriCorrelations"))
    assert corr.shape == (J, n, n)
    np.testing.assert_allclose(np.diagonal(corr, axis1=1, axis2=2), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="was not stored"):
        case.get("APosterioriVariances")
    # a control input u_k added by the model of the forecast from time k
    U = np.arange(J * n, dtype=float).reshape(J, n) / 10
    c = make_case("ETKF")
    c.setEvolutionModel(OneFunction=lambda x, u: jnp.asarray(M) @ x + u)
    c.setControlInput(VectorSerie=U)
    c.execute()
    ref = assimilate(lambda x, u: jnp.asarray(M) @ x + u, c.initial_ensemble, Y, etkf,
                     h=jnp.asarray(H), R=Diagonal(r), controls=jnp.concatenate([U, U[-1:]]))
    np.testing.assert_allclose(np.asarray(c.get("Analysis"))[1:], ref.analysis_mean,
                               rtol=0, atol=1e-12)


def test_parameter_estimation_uses_the_identity_model():
    case = make_case("ETKF", extra={"EstimationOf": "Parameters"})
    case.setEvolutionModel(Matrix=5 * np.eye(n))  # not used when estimating parameters
    case.execute()
    ref = assimilate(lambda x: x, case.initial_ensemble, Y, etkf, h=jnp.asarray(H),
                     R=Diagonal(r))
    np.testing.assert_allclose(np.asarray(case.get("Analysis"))[1:], ref.analysis_mean,
                               rtol=0, atol=1e-12)
    # ADAO gives h the control of step k at the analysis of observation k + 1
    U = np.arange(J * m, dtype=float).reshape(J, m) / 10
    c = make_case("ETKF", extra={"EstimationOf": "Parameters"})
    c.setObservationOperator(OneFunction=lambda x, u: jnp.asarray(H) @ x + u)
    c.setControlInput(VectorSerie=U)
    c.execute()
    ref = assimilate(lambda x, u: x, c.initial_ensemble, Y, etkf,
                     h=lambda x, u: jnp.asarray(H) @ x + u, R=Diagonal(r),
                     controls=jnp.concatenate([U[:1], U]))
    np.testing.assert_allclose(np.asarray(c.get("Analysis"))[1:], ref.analysis_mean,
                               rtol=0, atol=1e-12)


def test_covariance_input_forms():
    for kwargs, op in (({"Matrix": np.diag(r)}, Dense), ({"ScalarSparseMatrix": 0.4}, Scalar),
                       ({"DiagonalSparseMatrix": r}, Diagonal)):
        case = make_case("ETKF")
        case.setObservationError(**kwargs)
        case.execute()
        assert isinstance(case.result, tuple)
    with pytest.raises(ValueError, match="exactly one"):
        adao.New().setObservationError(Matrix=np.eye(2), ScalarSparseMatrix=1.0)
    with pytest.raises(ValueError, match="symmetric"):
        adao.New().setBackgroundError(Matrix=np.array([[1.0, 0.2], [0.0, 1.0]]))


def test_linearity_test_linear_operator():
    A = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    x = np.array([1.0, -2.0, 0.5])
    d = np.array([0.3, 0.1, -0.2])
    F = lambda v: jnp.asarray(A) @ v  # noqa: E731
    res = adao.linearity_test(F, x, formula="CenteredDL", direction=d, min_exponent=-4)
    np.testing.assert_allclose(res.alphas, [1, 0.1, 0.01, 1e-3, 1e-4])
    assert np.all(res.residues < 1e-13)
    res = adao.linearity_test(F, x, formula="Taylor", direction=d)
    assert np.all(res.residues < 1e-13)
    # ADAO's NominalTaylor applies F to α dX₀: F(x) ± (α − α²) F(dX₀) for linear F
    res = adao.linearity_test(F, x, formula="NominalTaylor", direction=d, min_exponent=-3)
    a = res.alphas[:, None]
    expect = np.maximum(np.linalg.norm(A @ x + (a - a**2) * (A @ d), axis=1),
                        np.linalg.norm(A @ x - (a - a**2) * (A @ d), axis=1))
    expect /= np.linalg.norm(A @ x)
    np.testing.assert_allclose(res.residues, expect, rtol=1e-12)
    res = adao.linearity_test(F, x, formula="NominalTaylorRMS", direction=d, min_exponent=-3)
    expect = np.sqrt(np.mean(((a - a**2) * (A @ d)) ** 2, axis=1)) / np.linalg.norm(A @ x)
    np.testing.assert_allclose(res.residues, expect, rtol=1e-9, atol=1e-15)


def test_linearity_test_quadratic_operator():
    x = np.array([1.0, -2.0, 0.5])
    F = lambda v: v**2  # noqa: E731
    res = adao.linearity_test(F, x, formula="CenteredDL", key=0, min_exponent=-3)
    d = res.direction
    expect = 2 * res.alphas**2 * np.linalg.norm(d**2) / np.linalg.norm(x**2)
    np.testing.assert_allclose(res.residues, expect, rtol=1e-8)
    assert res.residues[0] > 1e-2  # visibly nonlinear at α = 1
    res = adao.linearity_test(F, x, formula="Taylor", direction=d, min_exponent=-3)
    np.testing.assert_allclose(res.residues, expect / 2, rtol=1e-8)
    # ADAO's draw: component i from N(0, |x_i|), so the direction is not all zero
    assert np.all(d != 0)
    with pytest.raises(TypeError, match="needs key"):
        adao.linearity_test(F, x)
    with pytest.raises(ValueError, match="formula"):
        adao.linearity_test(F, x, formula="Centred", key=0)


def test_linearity_test_through_a_case():
    case = adao.New(seed=2)
    case.setBackground(Vector=[1.0, -2.0, 0.5])
    case.setObservationOperator(OneFunction=lambda v: v**2)
    case.setAlgorithmParameters(Algorithm="LinearityTest",
                                Parameters={"ResiduFormula": "CenteredDL",
                                            "EpsilonMinimumExponent": -2})
    case.execute()
    residues = case.get("Residu")
    assert len(residues) == 3
    np.testing.assert_allclose(residues[1] / residues[0], 1e-2, rtol=1e-8)  # ∝ α²
    lin = adao.New(seed=2)
    lin.setBackground(Vector=[1.0, -2.0, 0.5])
    lin.setObservationOperator(Matrix=np.eye(3))
    lin.setAlgorithmParameters(Algorithm="LinearityTest")
    lin.execute()
    assert max(lin.get("Residu")) < 1e-13
    with pytest.raises(ValueError, match="valid names"):
        lin.setAlgorithmParameters(Algorithm="LinearityTest", Parameters={"Variant": "ETKF"})
