"""Recover a conductivity profile from temperatures: a nonlinear inverse
problem solved with the iterative ensemble smoother (IES), ask/tell, or
with ensemble Kalman inversion (EKI) through ``enkit.calibrate``.

Forward model (steady heat conduction on [0, 1], fixed ends):

    −(κ(x) T′(x))′ = f(x),   T(0) = T(1) = 0,   f(x) = 10,

discretised by finite volumes on 100 cells (a tridiagonal solve in JAX).
The unknown is log κ(x) = Σₖ σₖ θₖ φₖ(x) with 8 cosine modes φₖ and
decaying scales σₖ, θ ~ N(0, I) a priori. The map θ ↦ T is nonlinear
(κ enters as a product with T′). The data are T at 19 interior points
with 1 % noise. A "true" θ* is drawn from the prior (seed 0), so the known
answer is θ* and its profile log κ*(x).

What you should see (float64, N = 50 members, 10 IES iterations with the
step lengths γₖ of Evensen et al. 2019 from 0.8 down towards 0.4; about
5–20 s on a laptop CPU): the whitened data misfit of the ensemble mean
falls from ~2,200 to the noise level (≈ √19 ≈ 4.4; measured 3.65), the RMS
error of the mean log κ profile from 2.08 (prior mean) to 0.044, and
|θ̄ − θ*| from 3.3 to 0.34 (the fine-scale modes are the least determined
by 19 noisy temperatures).

With ``--method eki``: deterministic EKI, the data-misfit controller's
adaptive steps (Iglesias & Yang 2021) and the discrepancy principle
(τ = 1.2) as the stopping rule, the same prior ensemble: it stops after 10
updates with the mean's misfit at 4.90, log κ RMSE 0.087 and |θ̄ − θ*| 0.64
(EKI stays in the ensemble's span and stops at the noise level, so it fits
less than IES's ten fixed steps).

Run:  python examples/heat_conduction_inversion.py [--method eki]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import enkit

N_CELLS = 100
N_MODES = 8
N_OBS = 19
NOISE = 0.01  # relative noise on the temperatures


def basis(n_cells: int = N_CELLS, n_modes: int = N_MODES) -> jnp.ndarray:
    """(n_modes, n_cells) scaled cosine modes σₖ φₖ(x) at the cell centres
    x = (i + ½)/n_cells, σₖ = 1/(1 + k)."""
    x = (jnp.arange(n_cells) + 0.5) / n_cells
    k = jnp.arange(n_modes)
    sigma = 1.0 / (1.0 + k)
    return sigma[:, None] * jnp.cos(jnp.pi * k[:, None] * x[None, :])


def temperatures(theta: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """Temperatures at the n − 1 interior nodes xᵢ = i/n for one θ (p,).

    κ lives at the cell centres x_{i+½}; node i balances the fluxes
    −[κ_{i+½}(T_{i+1} − Tᵢ) − κ_{i−½}(Tᵢ − T_{i−1})]/h² = f.
    """
    kappa = jnp.exp(theta @ B)  # (n,)
    n = kappa.shape[0]
    h2 = (1.0 / n) ** 2
    k_minus, k_plus = kappa[:-1], kappa[1:]  # κ_{i−½}, κ_{i+½}, i = 1..n−1
    diag = (k_minus + k_plus) / h2
    lower = jnp.concatenate([jnp.zeros(1, kappa.dtype), -k_minus[1:] / h2])
    upper = jnp.concatenate([-k_plus[:-1] / h2, jnp.zeros(1, kappa.dtype)])
    f = jnp.full((n - 1, 1), 10.0, kappa.dtype)
    return jax.lax.linalg.tridiagonal_solve(lower, diag, upper, f)[:, 0]


class Problem(NamedTuple):
    B: jnp.ndarray  # (N_MODES, N_CELLS)
    obs_index: jnp.ndarray  # (N_OBS,)
    theta_true: jnp.ndarray  # (N_MODES,)
    y: jnp.ndarray  # (N_OBS,)
    noise: enkit.Diagonal


def make_problem(seed: int = 0) -> Problem:
    k_truth, k_noise = jax.random.split(jax.random.key(seed))
    B = basis()
    theta_true = jax.random.normal(k_truth, (N_MODES,))
    obs_index = jnp.linspace(4, N_CELLS - 6, N_OBS).astype(int)  # nodes 5..95
    T_true = temperatures(theta_true, B)[obs_index]
    sd = NOISE * jnp.max(jnp.abs(T_true)) * jnp.ones(N_OBS)
    y = T_true + sd * jax.random.normal(k_noise, (N_OBS,))
    return Problem(B, obs_index, theta_true, y, enkit.Diagonal(sd**2))


def main(n_members: int = 50, n_iterations: int = 10, seed: int = 0, verbose: bool = True,
         method: str = "ies"):
    """Run the inversion; returns a dict with the final ``misfit`` (whitened,
    of the ensemble mean), ``log_kappa_error`` (RMS over the grid, of the
    mean profile vs the truth), the prior's ``log_kappa_error_prior`` and
    ``iterations``. method: "ies" (``n_iterations`` fixed steps) or "eki"
    (at most 50 updates, stopped by the discrepancy principle)."""
    if method not in ("ies", "eki"):
        raise ValueError(f"method must be 'ies' or 'eki', got {method!r}")
    prob = make_problem(seed)

    @jax.jit
    def forward(U):  # (N, p) → (N, d), members on axis 0
        return jax.vmap(lambda th: temperatures(th, prob.B)[prob.obs_index])(U)

    def log_kappa_error(theta):
        return float(jnp.sqrt(jnp.mean(((theta - prob.theta_true) @ prob.B) ** 2)))

    def mean_misfit(U):
        theta = jnp.mean(U, axis=0, keepdims=True)
        return float(enkit.data_misfit(forward(theta), prob.y, prob.noise))

    U0 = jax.random.normal(jax.random.key(seed + 1), (n_members, N_MODES))
    if method == "eki":
        res = enkit.calibrate(lambda th: temperatures(th, prob.B)[prob.obs_index],
                              enkit.EKI(stochastic=False), U0, prob.y, prob.noise,
                              key=seed + 2, scheduler=enkit.DataMisfitController(),
                              max_iterations=50, tau=1.2)
        ensembles = list(res.ensembles)
    else:
        proc = enkit.IES()
        state = proc.init(jax.random.key(seed + 2), U0)
        steps = enkit.ies_step_lengths(n_iterations, max_step=0.8, min_step=0.4)
        ensembles = [proc.ask(state)]
        for k in range(n_iterations):
            state, _ = proc.tell(state, forward(ensembles[-1]), prob.y, prob.noise,
                                 dt=steps[k])
            ensembles.append(proc.ask(state))
    rows = []
    for k, U in enumerate(ensembles):
        mean = jnp.mean(U, axis=0)
        rows.append((k, mean_misfit(U), log_kappa_error(mean),
                     float(jnp.linalg.norm(mean - prob.theta_true))))
    if verbose:
        print(f"{method.upper()}, N = {n_members}, p = {N_MODES} modes, d = {N_OBS} temperatures "
              f"({NOISE:.0%} noise); noise-level misfit ≈ √d = {np.sqrt(N_OBS):.1f}")
        print(f"{'iter':>4} {'misfit':>10} {'log κ RMSE':>11} {'|θ̄ − θ*|':>10}")
        for k, m, e, t in rows:
            print(f"{k:>4} {m:>10.3f} {e:>11.4f} {t:>10.4f}")
    return dict(misfit=rows[-1][1], log_kappa_error=rows[-1][2],
                log_kappa_error_prior=rows[0][2], misfit_prior=rows[0][1],
                theta_error=rows[-1][3], iterations=len(rows) - 1)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["ies", "eki"], default="ies")
    jax.config.update("jax_enable_x64", True)  # the example's own choice
    main(method=parser.parse_args().method)
