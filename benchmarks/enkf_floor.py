"""What the stochastic EnKF analysis costs, piece by piece, against a tenth
of DAPPER's ``EnKF('PertObs')`` analysis.

The case of ``vs_dapper.py``'s "analysis alone" rows (Lorenz-96, n = m = 40,
R = I, every variable observed, inflation 1.06, the forecast ensemble after
500 ETKF cycles with N members; N = 20, 40, 100). Each enkit piece runs many
times in a row inside one compiled loop (``vs_dapper.enkit_analysis_only``'s
pattern: every result feeds the next input, so nothing is hoisted), and
all of them and DAPPER's loop take turns, round by round, each timed over
a window of at least one second (``vs_dapper_enkf.interleaved``), so every
column sees the same spells of load:

- analysis: ``enkf(center_perturbations=True)`` and the inflation, as in
  ``vs_dapper.py``;
- draws: the perturbed observations alone (``perturbed_observations``,
  float32 normals coloured by R, the ``enkf`` default);
- algebra: the same analysis with the draws replaced by fixed perturbations
  (``y`` plus one centred (N, m) array drawn beforehand, so no centring
  either): anomalies, the innovation solve and the update
  ``E + (D − HE) C⁻¹ Yᵀ X``, by the solves and product order ``enkf`` takes
  (``kalman_solve_weights`` for N < m, else ``kalman_solve`` and enkf's
  ``_update_product``);
- Cholesky: the system that solve factors (m×m ``Yᵀ Y + R`` for N ≥ m,
  N×N ``I + Y R⁻¹ Yᵀ`` below), formed (one product) and factorised;
- product: one k×k matrix product, k = 40, for the scale of everything else.

DAPPER: ``Obs``, ``EnKF_analysis(..., 'PertObs')`` and ``post_process`` as its
EnKF loop runs them (``vs_dapper.dapper_analysis_only``). The last column is
the enkit analysis's speed-up; "draws + algebra" against "DAPPER / 10" says
whether a ten-fold speed-up fits under what the draws and the algebra cost
on their own.

Thread settings: one thread for both (``one_thread.py``, before NumPy and
JAX load). Writes benchmarks/results/enkf_floor.txt.

Run (DAPPER lives in the bench environment):
    .venv-bench/bin/python benchmarks/enkf_floor.py [--repeats 5]
"""

import one_thread  # first: one thread for NumPy and XLA

import argparse  # noqa: E402
import functools  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the benchmark script's own choice

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import vs_dapper  # noqa: E402

from vs_dapper import identity  # noqa: E402
from vs_dapper_enkf import interleaved  # noqa: E402

import enkit  # noqa: E402
from enkit.ensemble import scaled_anomalies  # noqa: E402
from enkit.filters.enkf import _update_product  # noqa: E402  (enkf's own product order)
from enkit.linalg import (  # noqa: E402
    _ensemble_space_system,
    kalman_solve,
    kalman_solve_weights,
    resolve_solve_method,
)

INFL = 1.06
R = enkit.Scalar(1.0, 40)
N_DAPPER = 300  # DAPPER analyses per timed call (enkit: 1,000 per compiled loop)


def compiled_loop(step, E, ys):
    """A callable running ``step(E, y, key) -> (N, n)`` once per observation
    inside one compiled scan (compiled here)."""

    @jax.jit
    def loop(E, ys):
        def body(E, xs):
            k, y = xs
            out = step(E, y, jax.random.fold_in(jax.random.key(0), k))
            return E + 1e-12 * out, None
        return jax.lax.scan(body, E, (jnp.arange(ys.shape[0]), ys))[0]

    jax.block_until_ready(loop(E, ys))
    return lambda: jax.block_until_ready(loop(E, ys))


def pieces(N):
    """The enkit pieces for N members: name -> step(E, y, key)."""
    P = enkit.perturbed_observations(jax.random.key(1), jnp.zeros(40), R, N, center=True)
    ensemble = resolve_solve_method("auto", N, 40) == "ensemble"

    def draws(E, y, key):
        return enkit.perturbed_observations(key, y, R, N)

    def algebra(E, y, key):
        _, X = scaled_anomalies(E)
        _, Y = scaled_anomalies(E)  # h = identity
        if ensemble:
            return E + kalman_solve_weights(Y, R, (y + P) - E) @ X
        return E + _update_product(kalman_solve(Y, R, (y + P) - E), Y, X)

    def cholesky(E, y, key):
        _, Y = scaled_anomalies(E)
        # the systems of kalman_solve_ensemble_space / kalman_solve_observation_space
        C = _ensemble_space_system(Y, R)[0] if ensemble else Y.T @ Y + R.dense()
        L = jax.lax.linalg.cholesky(C, symmetrize_input=False)
        return E + L[-1, -1]

    def product(E, y, key):
        A = E[:40, :40] if N >= 40 else jnp.concatenate([E, E])[:40, :40]
        B = A.T @ A
        return E + B[0, 0]

    return {"draws": draws, "algebra": algebra, "Cholesky": cholesky, "product": product}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds of the interleaved timing (at least 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, twin, _ = vs_dapper.make_twin(1800, args.seed)
    ys = np.asarray(twin.observations[500:1500])
    enkf = functools.partial(enkit.enkf, center_perturbations=True)
    rows = []
    for N in (20, 40, 100):
        Ef = vs_dapper.forecast_ensemble(model, twin, N, args.seed)
        steps = {"analysis": lambda E, y, key: enkit.multiplicative_inflation(
            enkf(E, y, identity, R, key=key), INFL), **pieces(N)}
        runs = {name: compiled_loop(step, Ef, jnp.asarray(ys)) for name, step in steps.items()}
        runs["DAPPER"] = functools.partial(vs_dapper.dapper_analysis_only, Ef, ys[:N_DAPPER], 1,
                                           "PertObs", INFL)
        t = interleaved(runs, max(args.repeats, 5))
        per = {name: sec / (N_DAPPER if name == "DAPPER" else len(ys))
               for name, (sec, _) in t.items()}
        loads = [x for name, (_, ls) in t.items() if name != "DAPPER" for x in ls]
        rows.append((N, per, loads, t["DAPPER"][1]))
    import dapper

    us = 1e6
    lines = [
        "Stochastic EnKF analysis (centred perturbations, inflation 1.06), piece by piece, "
        "against DAPPER's EnKF('PertObs') analysis",
        f"Lorenz-96 n = m = 40, R = I; float64, {one_thread.DESCRIPTION}, "
        f"medians of {max(args.repeats, 5)} interleaved rounds; enkit {enkit.__version__} "
        f"(jax {jax.__version__}), DAPPER {dapper.__version__}",
        "µs per analysis; load = 1-minute load average (2 cores)",
        "",
        f"{'N':>4}{'analysis':>10}{'draws':>8}{'algebra':>9}{'draws+alg':>11}{'Cholesky':>10}"
        f"{'product':>9}{'DAPPER':>9}{'DAPPER/10':>11}{'ratio':>8}   load enkit / DAPPER",
    ]
    for N, t, loads, dloads in rows:
        e, d = t["analysis"], t["DAPPER"]
        lines.append(
            f"{N:>4}{us * e:>10.1f}{us * t['draws']:>8.1f}{us * t['algebra']:>9.1f}"
            f"{us * (t['draws'] + t['algebra']):>11.1f}{us * t['Cholesky']:>10.1f}"
            f"{us * t['product']:>9.1f}{us * d:>9.1f}{us * d / 10:>11.1f}{d / e:>7.1f}x   "
            f"{min(loads):.1f}-{max(loads):.1f} / {min(dloads):.1f}-{max(dloads):.1f}")
    lines += [
        "",
        "analysis: enkf(center_perturbations=True) and the inflation; draws: the perturbed",
        "observations alone; algebra: the analysis on fixed perturbations (no draws, no",
        "centring); Cholesky: the m×m (N ≥ m) or N×N (N < m) system formed (one product) and",
        "factorised; product: one 40×40 matrix product. Each piece's loop pays the loop's own",
        "overhead (~1 µs per iteration), so draws + algebra counts it twice.",
    ]
    text = "\n".join(lines)
    print(text)
    out = pathlib.Path(__file__).parent / "results" / "enkf_floor.txt"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
