"""enkit's ADAO front end (``enkit.adao``) against ADAO 9.16 itself.

Run with the bench extra (``pip install -e '.[bench]'``, which installs
adao==9.16.0.1):

    PYTHONPATH=src:benchmarks python benchmarks/vs_adao.py

Four parts, written to benchmarks/results/vs_adao.txt:

1. Parity. One linear-Gaussian case (n = 4, m = 3, N = 8, 6 observations,
   ADAO's time convention) run by ADAO and by ``enkit.adao`` from the same
   initial ensemble: enkit draws it, and ADAO is handed it by replacing its
   ``EnsembleOfBackgroundPerturbations`` in each of its filter modules (ADAO
   has no input for it). The largest difference of the Analysis series is
   printed for every deterministic variant; where ADAO's implementation is
   correct it is below 1e-8. The states stay near 3, where ADAO's default
   EvolutionError (1e-16 I) is not drawn (part 2e). The E3DVAR variants
   are compared with the closed-form hybrid mean of the first analysis.
2. ADAO's wrong behaviours, each beside enkit's answer: (a) the ETKF, MLEF
   and EnKS variants start from NumberOfMembers copies of Xb (B ignored), so
   without model error the ensemble never spreads and no observation is
   used; (b) EnKF-16 inverts the sample covariance of the perturbed
   observations, singular when p ≥ N; (c) ADAO's EnKS smooths the window one
   analysis late; (d) the ETKF-N variants' formulas (their Hessians have
   w·w I for w wᵀ; -15's observation term is elementwise for p > 1);
   (e) with no EvolutionError ADAO draws model noise from its default
   1e-16 I whenever the ensemble's entries are small.
   The stochastic variants (EnKF-05/-16) are compared by their mean error
   against the Kalman filter over many cycles, as their draws differ.
3. Speed: the same ETKF and EnKF (EnKF-05) cases, N = 20 and 100, n = 40,
   m = 10, Q = 0.01 I, 100 observations, by ADAO and by ``enkit.adao``: its
   first run (which compiles), later runs of new cases of the same shapes
   (nothing compiled anew), and ``enkit.assimilate`` called directly;
   medians of 2 runs, single-threaded (OMP/MKL/OpenBLAS, XLA CPU).
4. LinearityTest: ADAO's residues and enkit's for one nonlinear operator
   and direction, each formula.
"""

import os

import one_thread  # noqa: F401  (first: one thread for NumPy and XLA)

import contextlib  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from adao import adaoBuilder  # noqa: E402

import daAlgorithms.Atoms.enks  # noqa: E402,F401  (ADAO's modules, patched below)
import daAlgorithms.Atoms.etkf  # noqa: E402,F401
import daAlgorithms.Atoms.ienkf  # noqa: E402,F401
import daAlgorithms.Atoms.mlef  # noqa: E402,F401
import daAlgorithms.Atoms.senkf  # noqa: E402,F401

from enkit import adao  # noqa: E402
from enkit.assimilation.driver import assimilate  # noqa: E402
from enkit.covariance import Diagonal  # noqa: E402
from enkit.filters import enkf, etkf  # noqa: E402

ATOMS = [sys.modules[f"daAlgorithms.Atoms.{a}"] for a in ("etkf", "senkf", "mlef", "ienkf",
                                                          "enks")]
ORIGINAL = {mod: mod.EnsembleOfBackgroundPerturbations for mod in ATOMS}
OUT = os.path.join(os.path.dirname(__file__), "results", "vs_adao.txt")
LINES = []


def say(s=""):
    print(s, flush=True)
    LINES.append(s)


@contextlib.contextmanager
def adao_ensemble(E0):
    """ADAO's filters start from E0 ((N, n), rows) instead of their own draw."""
    def given(xb, B, N, *args):
        assert N == E0.shape[0]
        return np.array(E0.T, dtype=float)
    for mod in ATOMS:
        mod.EnsembleOfBackgroundPerturbations = given
    try:
        yield
    finally:
        for mod in ATOMS:
            mod.EnsembleOfBackgroundPerturbations = ORIGINAL[mod]


def build(lib, inputs, params):
    if lib == "adao":
        case = adaoBuilder.New()
    else:
        case = adao.New(seed=params.get("SetSeed"), time_convention="adao")
    case.setBackground(Vector=inputs["xb"])
    case.setBackgroundError(DiagonalSparseMatrix=inputs["b"])
    case.setObservation(VectorSerie=inputs["Y"])
    case.setObservationError(DiagonalSparseMatrix=inputs["r"])
    case.setObservationOperator(Matrix=inputs["H"])
    case.setEvolutionModel(Matrix=inputs["M"])
    if "q" in inputs:
        case.setEvolutionError(DiagonalSparseMatrix=inputs["q"])
    case.setAlgorithmParameters(Algorithm="EnsembleKalmanFilter", Parameters=params)
    return case


def run(lib, inputs, params, E0=None):
    """The Analysis series (K+1, n) of one run (ADAO's printing silenced)."""
    case = build(lib, inputs, params)
    if lib == "enkit" and E0 is not None:
        case.setInitialEnsemble(E0)
    with contextlib.redirect_stdout(io.StringIO()):
        if lib == "adao" and E0 is not None:
            with adao_ensemble(E0):
                case.execute()
        else:
            case.execute()
    return np.asarray([np.ravel(a) for a in case.get("Analysis")]), case


def linear_case(rng, n=4, m=3, K=6, offset=0.0):
    """A linear twin: M a rotation (norms kept), observations of a truth
    started near Xb; ``offset`` shifts Xb and the truth away from 0."""
    S = rng.normal(size=(n, n))
    A = 0.3 * (S - S.T) / np.max(np.abs(S - S.T))
    M = np.linalg.matrix_power(np.eye(n) + A / 16 + (A / 16) @ (A / 16) / 2, 16)
    M /= np.max(np.abs(np.linalg.eigvals(M)))
    xb = offset + rng.normal(size=n)
    b, r, H = rng.uniform(0.5, 2.0, n), rng.uniform(0.2, 0.6, m), rng.normal(size=(m, n))
    x = xb + np.sqrt(b) * rng.normal(size=n)
    Y = []
    for _ in range(K + 1):
        Y.append(H @ x + np.sqrt(r) * rng.normal(size=m))
        x = M @ x
    return dict(xb=xb, b=b, Y=np.asarray(Y), r=r, H=H, M=M)


def kalman_filter(inputs, mean, cov):
    """Means of the Kalman filter (ADAO's convention: Y[0] not used)."""
    M, H, R = inputs["M"], inputs["H"], np.diag(inputs["r"])
    Q = np.diag(inputs["q"]) if "q" in inputs else 0.0
    out = []
    for y in inputs["Y"][1:]:
        mean, cov = M @ mean, M @ cov @ M.T + Q
        S = H @ cov @ H.T + R
        K = np.linalg.solve(S, H @ cov).T
        mean, cov = mean + K @ (y - H @ mean), cov - K @ S @ K.T
        out.append(mean)
    return np.asarray(out)


def parity():
    say("1. Parity, same initial ensemble (n=4, m=3, N=8, 6 analyses, states near 3; "
        "max |ADAO - enkit| over the Analysis series, and at the first analysis)")
    rng = np.random.default_rng(1)
    inputs = linear_case(rng, offset=3.0)
    N = 8
    base = {"NumberOfMembers": N, "SetSeed": 3}
    E0 = None
    rows = []
    for variant in ("ETKF-KFF", "ETKF-VAR", "MLEF-T", "MLEF-B", "IEnKF-T", "IEnKF-B",
                    "ETKF-N-11", "ETKF-N-15", "ETKF-N-16", "EnKS-KFF"):
        params = dict(base, Variant=variant)
        if variant == "EnKS-KFF":
            params["SmootherLagL"] = 2
        ours, case = run("enkit", inputs, params)
        E0 = case.initial_ensemble if E0 is None else E0
        ours, _ = run("enkit", inputs, params, E0=E0)
        theirs, _ = run("adao", inputs, params, E0=E0)
        diff = float(np.max(np.abs(theirs - ours)))
        first = float(np.max(np.abs(theirs[1] - ours[1])))
        rows.append((variant, diff, first))
        verdict = "same (< 1e-8)" if diff < 1e-8 else "DIFFERENT (see part 2)"
        say(f"  {variant:10s} {diff:10.2e} {first:10.2e}   {verdict}")
    # E3DVAR: the first analysis mean against its closed form, the Kalman mean
    # with the hybrid covariance B_h = (1 - a) B + a P_e of the forecast ensemble
    Ef = E0 @ inputs["M"].T
    a = 0.5  # HybridCovarianceEquilibrium's default
    Bh = (1 - a) * np.diag(inputs["b"]) + a * np.cov(Ef.T)
    Hm, xf = inputs["H"], Ef.mean(axis=0)
    S = Hm @ Bh @ Hm.T + np.diag(inputs["r"])
    exact = xf + Bh @ Hm.T @ np.linalg.solve(S, inputs["Y"][1] - Hm @ xf)
    for variant in ("E3DVAR-ETKF", "E3DVAR-MLEF"):
        try:
            ours, _ = run("enkit", inputs, dict(base, Variant=variant), E0=E0)
        except ValueError as err:
            say(f"  {variant:10s} not run: {err}")
            continue
        theirs, _ = run("adao", inputs, dict(base, Variant=variant), E0=E0)
        diff = float(np.max(np.abs(theirs - ours)))
        first = float(np.max(np.abs(theirs[1] - ours[1])))
        say(f"  {variant:10s} {diff:10.2e} {first:10.2e}   first analysis vs its closed form: "
            f"enkit {np.max(np.abs(ours[1] - exact)):.1e}, ADAO "
            f"{np.max(np.abs(theirs[1] - exact)):.1e} (ADAO's 3D-Var stops at gradient "
            f"norm 1e-5, fixed)")
        rows.append((variant, diff, first))
    say()
    return inputs, E0, rows


def wrong_behaviours(inputs, E0, first):
    say("2. ADAO's behaviours that differ from the method, beside enkit's answer")
    N = E0.shape[0]
    kf = kalman_filter(inputs, E0.mean(axis=0), np.cov(E0.T))
    # (a) identical initial members
    free = [inputs["xb"]]
    for _ in range(len(inputs["Y"]) - 1):
        free.append(inputs["M"] @ free[-1])
    free = np.asarray(free[1:])
    for variant in ("ETKF-KFF", "MLEF-T", "EnKS-KFF"):
        params = {"Variant": variant, "NumberOfMembers": N, "SetSeed": 3}
        theirs, _ = run("adao", inputs, params)
        ours, _ = run("enkit", inputs, params, E0=E0)
        say(f"  (a) {variant}: ADAO's own start: max |Analysis - free run of Xb| = "
            f"{np.max(np.abs(theirs[1:] - free)):.1e} (no observation used); "
            f"enkit from N(Xb, B): max |Analysis - Kalman filter| = "
            f"{np.max(np.abs(ours[1:] - kf)):.1e}" if variant != "EnKS-KFF" else
            f"  (a) {variant}: ADAO's own start: max |Analysis - free run of Xb| = "
            f"{np.max(np.abs(theirs[1:] - free)):.1e}")
    # (b) p >= N
    rng = np.random.default_rng(2)
    big = linear_case(rng, n=6, m=8, K=3)
    for N_small in (6, 12):
        params = {"Variant": "EnKF-16", "NumberOfMembers": N_small, "SetSeed": 4}
        try:
            theirs, _ = run("adao", big, params)
            finite = bool(np.all(np.isfinite(theirs)))
            spread = np.max(np.abs(theirs[-1]))
            status = f"finite={finite}, max |xa| = {spread:.3g}"
        except Exception as err:  # noqa: BLE001 - recording what ADAO does
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "ingular" in ln), lines[0] if lines else "")
            status = f"raises {type(err).__name__} ({why[:50]})"
        ours, _ = run("enkit", big, params)
        say(f"  (b) EnKF-16, p = 8, N = {N_small}: ADAO {status}; enkit finite="
            f"{bool(np.all(np.isfinite(ours)))}, max |xa| = {np.max(np.abs(ours[-1])):.3g}")
    # (c) EnKS lag
    for lag in (1, 2):
        params = {"Variant": "EnKS-KFF", "NumberOfMembers": N, "SetSeed": 3, "SmootherLagL": lag}
        theirs, _ = run("adao", inputs, params, E0=E0)
        ours, case = run("enkit", inputs, params, E0=E0)
        filt = np.asarray(case.result.analysis_mean)
        d_lag = np.max(np.abs(theirs[1:] - ours[1:]))
        d_filt = np.max(np.abs(theirs[1:] - filt))
        say(f"  (c) EnKS lag {lag}: max |ADAO - enkit EnKS| = {d_lag:.2e}; "
            f"max |ADAO - filter| = {d_filt:.2e}")
    say("      (ADAO's enks.py takes each smoothed ensemble afresh from the filter analyses "
        "and updates it once, by the transform of the analysis L - 1 times later: with "
        "lag 1 an analysis gets its own update twice; enkit applies the L later ones)")
    # (e) ADAO's default EvolutionError
    rng = np.random.default_rng(1)
    small = linear_case(rng, offset=0.0)  # scaled to states of size about 0.1
    small = dict(small, xb=0.1 * small["xb"], b=0.01 * small["b"], Y=0.1 * small["Y"],
                 r=0.01 * small["r"])
    params = {"Variant": "ETKF-KFF", "NumberOfMembers": N, "SetSeed": 3}
    _, case = run("enkit", small, params)
    E0s = case.initial_ensemble
    ours, _ = run("enkit", small, params, E0=E0s)
    theirs, _ = run("adao", small, params, E0=E0s)
    say(f"  (e) no EvolutionError set: ADAO's default Q = 1e-16 I is drawn and added to the "
        f"forecast when the mean |entry| of the ensemble is below about 0.45 (ETKF, states "
        f"near 0.1: max |ADAO - enkit| = {np.max(np.abs(theirs - ours)):.1e}; enkit adds no "
        f"model error unless EvolutionError is given)")
    # (d) ETKF-N
    say(f"  (d) ETKF-N-11: the first analysis mean agrees to {first['ETKF-N-11']:.1e} "
        f"(ADAO's CG stops at gradient norm 1e-5): the cost is Bocquet (2011)'s; the later "
        f"analyses differ because ADAO's Hessian has w·w I in place of w wᵀ. ETKF-N-15 "
        f"(first analysis {first['ETKF-N-15']:.1e}) and -16 ({first['ETKF-N-16']:.1e}) use "
        f"κ = N + 1 (-15 with an elementwise Jo for p > 1); enkit maps them to etkf_n with "
        f"the mode correction (Bocquet, Raanes & Hannart 2015)")
    # stochastic variants: error against the Kalman filter over a longer run
    rng = np.random.default_rng(5)
    long = linear_case(rng, n=4, m=3, K=200)
    long["q"] = np.full(4, 0.05)
    N = 40
    E0l = None
    for variant in ("EnKF-05", "EnKF-16"):
        params = {"Variant": variant, "NumberOfMembers": N, "SetSeed": 6}
        ours, case = run("enkit", long, params)
        E0l = case.initial_ensemble if E0l is None else E0l
        ours, _ = run("enkit", long, params, E0=E0l)
        theirs, _ = run("adao", long, params, E0=E0l)
        kf = kalman_filter(long, E0l.mean(axis=0), np.cov(E0l.T))
        rms = lambda a: float(np.sqrt(np.mean((a[1:] - kf) ** 2)))  # noqa: E731
        say(f"  stochastic {variant} (n=4, m=3, N=40, Q=0.05 I, 200 analyses): RMS distance "
            f"to the Kalman filter mean: ADAO {rms(theirs):.4f}, enkit {rms(ours):.4f}")
    say()


def speed():
    say("3. Speed, n=40, m=10, 100 analyses (seconds; medians of 2 runs, single thread)")
    say(f"  {'case':9s} {'N':>4s} {'ADAO':>8s} {'enkit 1st':>10s} {'ratio':>7s} "
        f"{'enkit.adao':>11s} {'ratio':>7s} {'assimilate':>11s} {'ratio':>7s}")
    rng = np.random.default_rng(7)
    inputs = linear_case(rng, n=40, m=10, K=100)
    inputs["q"] = np.full(40, 0.01)
    H, R = jnp.asarray(inputs["H"]), Diagonal(jnp.asarray(inputs["r"]))
    Mj = jnp.asarray(inputs["M"])
    model = lambda x: Mj @ x  # noqa: E731
    for variant, scheme in (("ETKF", etkf), ("EnKF-05", enkf)):
        for N in (20, 100):
            params = {"Variant": variant, "NumberOfMembers": N, "SetSeed": 8}
            t_adao, t_ours, t_comp = [], [], []
            t0 = time.perf_counter()
            run("enkit", inputs, params)
            t_first = time.perf_counter() - t0
            for _ in range(2):
                t0 = time.perf_counter()
                run("adao", inputs, params)
                t_adao.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, case = run("enkit", inputs, params)
                t_ours.append(time.perf_counter() - t0)
                E0 = jnp.asarray(case.initial_ensemble)
                Y = jnp.asarray(inputs["Y"][1:])
                assimilate(model, E0, Y, scheme, h=H, R=R, key=1,
                           model_noise=Diagonal(jnp.asarray(inputs["q"]))
                           ).analysis_mean.block_until_ready()
                t0 = time.perf_counter()
                assimilate(model, E0, Y, scheme, h=H, R=R, key=1,
                           model_noise=Diagonal(jnp.asarray(inputs["q"]))
                           ).analysis_mean.block_until_ready()
                t_comp.append(time.perf_counter() - t0)
            a, o, c = (float(np.median(t)) for t in (t_adao, t_ours, t_comp))
            say(f"  {variant:9s} {N:4d} {a:8.3f} {t_first:10.3f} {a / t_first:6.2f}x "
                f"{o:11.3f} {a / o:6.1f}x {c:11.4f} {a / c:6.0f}x")
    say("  ratio = ADAO time / enkit time (> 1: enkit faster). 'enkit 1st': the first "
        "enkit.adao run (compiles); 'enkit.adao': later runs of new cases of the same shapes "
        "(no compilation); 'assimilate': enkit.assimilate called directly, compiled")


def linearity():
    say()
    say("4. LinearityTest, F(x) = (x1², x1 x2, sin x3) at x = (1, -2, 0.5), the same "
        "direction; max relative difference of the residues over alpha = 1 ... 1e-6")
    x = np.array([1.0, -2.0, 0.5])
    d = np.array([0.3, 0.1, -0.2])

    def f_np(v):
        v = np.ravel(v)
        return np.array([v[0] ** 2, v[0] * v[1], np.sin(v[2])])

    def f_jax(v):
        return jnp.stack([v[0] ** 2, v[0] * v[1], jnp.sin(v[2])])

    for formula in adao.RESIDUE_FORMULAS:
        params = {"ResiduFormula": formula, "InitialDirection": list(d),
                  "EpsilonMinimumExponent": -6}
        theirs = adaoBuilder.New()
        theirs.setCheckingPoint(Vector=x)
        theirs.setObservationOperator(OneFunction=f_np)
        theirs.setAlgorithmParameters(Algorithm="LinearityTest", Parameters=params)
        with contextlib.redirect_stdout(io.StringIO()):
            theirs.execute()
        ours = adao.New()
        ours.setCheckingPoint(Vector=x)
        ours.setObservationOperator(OneFunction=f_jax)
        ours.setAlgorithmParameters(Algorithm="LinearityTest", Parameters=params)
        ours.execute()
        a, o = np.ravel(theirs.get("Residu")), np.asarray(ours.get("Residu"))
        rel = float(np.max(np.abs(a - o) / np.abs(a)))
        note = ""
        if formula == "Taylor":
            note = (f"  (ADAO's tangent is a finite difference, enkit's exact (jax.jvp): "
                    f"R(1e-2), R(1e-6) = {a[2]:.1e}, {a[6]:.1e} (ADAO), "
                    f"{o[2]:.1e}, {o[6]:.1e} (enkit, ∝ alpha²))")
        say(f"  {formula:16s} {rel:9.2e}{note}")


def main():
    say("enkit.adao vs ADAO 9.16.0.1 (benchmarks/vs_adao.py)")
    say(f"jax {jax.__version__}, numpy {np.__version__}; threads: 1 (OMP/MKL/OpenBLAS, XLA)")
    say()
    inputs, E0, rows = parity()
    wrong_behaviours(inputs, E0, dict((r[0], r[2]) for r in rows))
    speed()
    linearity()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
