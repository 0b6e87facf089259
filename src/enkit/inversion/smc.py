"""Sequential Monte Carlo with adaptive tempering for static Bayesian
inverse problems (Del Moral, Doucet & Jasra 2006; Jasra et al. 2011;
Beskos, Jasra, Kantas & Thiery 2016; Kantas, Beskos & Jasra 2014).

The posterior π(u) ∝ N(u; m₀, C₀) · N(y; G(u), Γ) is reached through the
tempered targets πₖ(u) ∝ N(u; m₀, C₀) L(u)^{φₖ}, 0 = φ₀ < φ₁ < … < φ_K = 1,
L(u) = N(y; G(u), Γ). From N particles at φₖ (equally weighted):

1. reweight by exp((φₖ₊₁ − φₖ) ℓᵢ), ℓᵢ = log L(uᵢ), with φₖ₊₁ the
   temperature at which the effective sample size is ``target_ess``·N
   (bisection, ``enkit.particle.next_temperature``), and add
   log Σᵢ w̄ᵢ exp((φₖ₊₁ − φₖ) ℓᵢ) to the evidence estimate log Z;
2. resample (systematic by default, ``enkit.particle``);
3. move every particle by ``n_moves`` random-walk Metropolis steps that
   leave πₖ₊₁ invariant: proposal u' = u + s L ξ, ξ ~ N(0, I), L Lᵀ the
   weighted particle covariance at φₖ₊₁ (before resampling), accepted
   with probability min(1, exp(φₖ₊₁ (ℓ(u') − ℓ(u))) N(u'; m₀, C₀) /
   N(u; m₀, C₀)); the scale s starts at 2.38/√p (Roberts, Gelman & Gilks
   1997) and after every move is multiplied by exp(2 (a − a*)), a the
   move's acceptance rate and a* = ``target_acceptance``.

The moves need forward evaluations, so the sampler is an ask/tell process
(``enkit.calibrate`` runs it): each ``ask`` returns the members whose
outputs the next ``tell`` needs, the initial particles first and then the
N proposals of each move; a ``tell`` whose move ends a stage also
reweights, resamples and draws the next proposals. After the moves at
φ = 1 the run is finished (``finished(state)``) and ``ask`` returns the
final particles (the outputs of that last evaluation are posterior
predictive draws). Forward evaluations: N (1 + K·``n_moves``) + N for that
last one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.special import logsumexp

from enkit._checks import check_ndim, check_spread, is_concrete
from enkit.covariance import Covariance, as_covariance
from enkit.inversion._common import check_ensemble, init_key, iteration_key, register
from enkit.inversion.prior import GaussianPrior, check_prior
from enkit.particle._common import WeightDegeneracyError
from enkit.particle.bootstrap import gaussian_log_likelihood
from enkit.particle.resampling import (
    systematic,
    uniform_log_weights,
    weighted_covariance_root,
)
from enkit.particle.tempering import incremental_log_weights, next_temperature, tempered_ess

__all__ = ["SMC", "SMCHistory", "SMCInfo", "SMCState", "SMCSummary", "smc_summary"]


class SMCHistory(NamedTuple):
    """Per-stage record kept in the state (fixed capacity S = ``max_stages``;
    entries past ``stage`` are zero). temperatures: (S + 1,) φ₀ = 0, φ₁, …;
    ess: (S,) ESS of the reweighting from φₖ to φₖ₊₁; log_evidence_increments:
    (S,) log Σᵢ w̄ᵢ exp(Δφₖ ℓᵢ); acceptance: (S,) mean acceptance rate of the
    moves at φₖ₊₁; scales: (S,) the random-walk scale at the first of them."""

    temperatures: Array
    ess: Array
    log_evidence_increments: Array
    acceptance: Array
    scales: Array


class SMCState(NamedTuple):
    """Carried state of ``SMC``.

    ensemble: (N, p) the particles (unconstrained u); log_weights: (N,)
    their normalised log-weights (uniform after each resampling);
    log_likelihood: (N,) ℓᵢ = log N(y; G(uᵢ), Γ) (−inf for a failed member;
    0 before the first tell); proposals: (N, p) the members ``ask`` returns;
    temperature: φ of the current target; stage: number of reweightings
    done (K); move: moves done at the current temperature; scale: the
    random-walk scale s; root: (r, p), r = min(N, p), a square root
    rootᵀroot of the proposal covariance; log_evidence: Σ of the increments
    so far; iteration: tells done; done: the moves at φ = 1 are complete;
    key: the PRNG key of ``init`` (iteration n draws from ``fold_in(key,
    n)``); history: ``SMCHistory``.
    """

    ensemble: Array
    log_weights: Array
    log_likelihood: Array
    proposals: Array
    temperature: Array
    stage: Array
    move: Array
    scale: Array
    root: Array
    log_evidence: Array
    iteration: Array
    done: Array
    key: Array
    history: SMCHistory


class SMCInfo(NamedTuple):
    """Diagnostics of one ``SMC.tell``. misfit: ‖Γ^{-1/2}(y − Ḡ)‖ over the
    members that did not fail; dt: the temperature increment of this tell
    (0 unless it ended a stage), so ``calibrate``'s algorithmic time is the
    temperature; temperature: φ after the tell; acceptance_rate: of this
    move (1 for the initial evaluation); ess: of the reweighting (N when
    there was none); n_failed: members with non-finite outputs (zero
    likelihood); log_evidence: the running estimate."""

    misfit: Array
    dt: Array
    temperature: Array
    acceptance_rate: Array
    ess: Array
    n_failed: Array
    log_evidence: Array


class SMCSummary(NamedTuple):
    """What an SMC run produced (``smc_summary``), trimmed to its K stages.

    particles: (N, p) unconstrained; log_weights: (N,); temperatures: (K+1,)
    from 0 to 1 (when finished); ess: (K,); acceptance_rates: (K,);
    scales: (K,); log_evidence_increments: (K,); log_evidence: log Ẑ, the
    estimate of log ∫ N(u; m₀, C₀) N(y; G(u), Γ) du; n_stages: K;
    finished: whether the moves at φ = 1 are done."""

    particles: Array
    log_weights: Array
    temperatures: Array
    ess: Array
    acceptance_rates: Array
    scales: Array
    log_evidence_increments: Array
    log_evidence: Array
    n_stages: int
    finished: bool


def _concrete_float(name, v, lo, hi):
    if isinstance(v, bool):
        raise TypeError(f"{name} must be a number, got {v!r}")
    if isinstance(v, (int, float, np.number, np.ndarray, jax.Array)) and is_concrete(v):
        f = float(np.asarray(v))
        if not lo < f < hi:
            raise ValueError(f"{name} must be in ({lo}, {hi}), got {f!r}")


def _positive_int(name, v, low=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def _proposal_root(E, log_w):
    """(r, p) R with RᵀR = C_w (``weighted_covariance_root``), r = min(N, p):
    the triangular factor of a thin QR when p < N, else the N rows."""
    C12 = weighted_covariance_root(E, log_w)
    N, p = C12.shape
    return jnp.linalg.qr(C12, mode="r") if p < N else C12


def _prior_log_density(prior: GaussianPrior, U):
    """log N(u; m₀, C₀) up to its constant, (N,)."""
    r = prior.covariance.astype(U.dtype).whiten(U - jnp.asarray(prior.mean, U.dtype))
    return -0.5 * jnp.sum(r * r, axis=-1)


def _check_outputs(G, y, noise, N, dtype) -> tuple[Array, Array, Covariance]:
    check_ndim("G", G, 2, f"(N, d) = ({N}, d): one row per asked member")
    G = jnp.asarray(G)
    if G.shape[0] != N:
        raise ValueError(f"G must have shape (N, d) = ({N}, d), one row per asked member, "
                         f"got shape {G.shape}")
    d = G.shape[1]
    check_ndim("y", y, 1, f"(d,) = ({d},)")
    y = jnp.asarray(y, dtype)
    if y.shape != (d,):
        raise ValueError(f"y must have shape (d,) = ({d},) to match G, got shape {y.shape}")
    if is_concrete(y) and not bool(jnp.all(jnp.isfinite(y))):
        raise ValueError("y must be finite")
    return G.astype(dtype), y, as_covariance(noise, d, name="noise").astype(dtype)


@dataclasses.dataclass(frozen=True)
class SMC:
    """Tempered sequential Monte Carlo sampler (module docstring for the
    algorithm) as an ask/tell process:

        state = smc.init(key, prior.sample(key0, N))    # N i.i.d. prior draws
        while not smc.finished(state):
            U = smc.ask(state)                           # (N, p)
            state, info = smc.tell(state, G(U), y, noise)
        smc_summary(state)   # particles, temperatures, ESS, acceptance, log Z

    or ``enkit.calibrate(G, smc, prior.sample(key0, N), y, noise, key=...)``,
    which stops when ``finished`` (``stopped_by="finished"``); its
    ``result.mean``/``covariance`` are the weighted particle moments,
    ``result.times`` the temperatures at which each ensemble was asked and
    ``result.state`` the final ``SMCState`` (pass it to ``smc_summary``). In
    ``ConstrainedProcess(SMC(space.prior), space)`` the particles live in
    the unconstrained space of the ``ParameterSpace`` and the forward map
    receives the constrained x = T(u): the sampled posterior is that of u
    under the space's Gaussian prior (the push-forward prior on x).

    Failures: outputs with NaN/inf in a row are a zero likelihood
    (ℓᵢ = −inf): at the first reweighting such a member gets weight zero
    (the run then samples the posterior restricted to where the model runs,
    and log Z counts the failed prior mass as zero likelihood), a failed
    proposal is rejected. ``calibrate(failure="ignore")`` passes them on so;
    the default ``"raise"`` stops at the first failure; ``"resample"`` is
    refused (redrawing members would break the moves' invariance). Ignore's
    ``min_fraction`` still applies to every evaluation (more failed
    proposals than that raise ``ForwardFailure``).

    ``calibrate_scan`` runs it too (one compiled loop, ``n_iterations`` ≥
    ``1 + K·n_moves`` tells; it stops when ``finished``, and tells traced
    after the end leave the state unchanged).

    prior: ``GaussianPrior`` (m₀, C₀), required (a leaf); target_ess: the
    fraction of N kept by each reweighting, in (0, 1) (default 0.5; a
    leaf); n_moves: Metropolis steps per temperature (static, ≥ 1; default
    10); target_acceptance: a* in (0, 1) (default 0.234; a leaf); scale:
    initial random-walk scale s, None for 2.38/√p (static); max_stages:
    capacity S of the per-stage history (static, ≥ 1; default 500): the
    stage that would exceed it goes straight to φ = 1, with an ESS below
    target (``smc_summary`` warns); resampler: an ``enkit.particle``
    resampler ``(key, log_w) -> ancestors`` (static; default ``systematic``).
    Stochastic: ``init`` needs a key.

    References: Del Moral, Doucet & Jasra (2006), "Sequential Monte Carlo
    samplers", JRSS B 68(3); Jasra, Stephens, Doucet & Tsagaris (2011),
    Scand. J. Stat. 38(1); Beskos, Jasra, Kantas & Thiery (2016), Ann. Appl.
    Probab. 26(2); Kantas, Beskos & Jasra (2014), "Sequential Monte Carlo
    methods for high-dimensional inverse problems", SIAM/ASA JUQ 2(1).
    """

    prior: GaussianPrior
    target_ess: float = 0.5
    n_moves: int = 10
    target_acceptance: float = 0.234
    scale: float | None = None
    max_stages: int = 500
    resampler: Callable = systematic
    stochastic = True
    absorbs_failures = True  # calibrate passes failed rows to tell (zero likelihood)

    def __post_init__(self):
        if self.prior is None or isinstance(self.prior, (np.ndarray, jax.Array, list, tuple,
                                                          dict, int, float)):
            raise TypeError("SMC needs prior=GaussianPrior(mean, covariance): the prior "
                            f"enters the Metropolis moves; got {type(self.prior).__name__}")
        _concrete_float("target_ess", self.target_ess, 0.0, 1.0)
        _concrete_float("target_acceptance", self.target_acceptance, 0.0, 1.0)
        _positive_int("n_moves", self.n_moves)
        _positive_int("max_stages", self.max_stages)
        if self.scale is not None:
            s = self.scale
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (
                    np.isfinite(s) and s > 0):
                raise ValueError(f"scale must be a positive number or None, got {s!r}")
            object.__setattr__(self, "scale", float(s))
        if not callable(self.resampler):
            raise TypeError(f"resampler must be a callable (key, log_w) -> ancestors, got "
                            f"{type(self.resampler).__name__}")

    @property
    def needs_key(self) -> bool:
        """Always True: ``init`` needs a key (resampling, proposals, acceptance)."""
        return True

    @property
    def max_tells(self) -> int:
        """The most tells a run can take, 1 + ``max_stages``·``n_moves``
        (``calibrate``'s default ``max_iterations``)."""
        return 1 + self.max_stages * self.n_moves

    def init(self, key: Array | int, ensemble) -> SMCState:
        """Initial state from ``ensemble``: (N, p) i.i.d. draws of the prior
        (e.g. ``prior.sample``; any other ensemble gives a wrong posterior
        and evidence). key: PRNG key or int seed (required)."""
        E = check_ensemble(ensemble)
        check_prior(self.prior, E.shape[1])
        check_spread("ensemble", E, consequence="the random-walk proposals, scaled by the "
                     "particles' covariance, could never move them",
                     advice="Draw the initial ensemble from the prior: "
                     "prior.sample(key, N)")
        k = init_key(key, True, "SMC")
        N, p = E.shape
        dt = E.dtype
        S = self.max_stages
        lw = uniform_log_weights(N, dt)
        scale = 2.38 / np.sqrt(p) if self.scale is None else self.scale
        zeros = jnp.zeros((S,), dt)
        hist = SMCHistory(jnp.zeros((S + 1,), dt), zeros, zeros, zeros, zeros)
        i0 = jnp.asarray(0, jnp.int32)
        return SMCState(E, lw, jnp.zeros((N,), dt), E, jnp.zeros((), dt), i0,
                        jnp.asarray(self.n_moves, jnp.int32), jnp.asarray(scale, dt),
                        _proposal_root(E, lw), jnp.zeros((), dt), i0,
                        jnp.asarray(False), k, hist)

    def ask(self, state: SMCState) -> Array:
        """The (N, p) members whose outputs the next ``tell`` needs: the
        initial particles, then each move's proposals; the final particles
        once ``finished``."""
        return state.proposals

    def finished(self, state: SMCState) -> Array:
        """True once the moves at φ = 1 are done (bool scalar)."""
        return state.done

    def tell(self, state: SMCState, G, y, noise, *, dt=None) -> tuple[SMCState, SMCInfo]:
        """Take the outputs G: (N, d) of ``ask(state)`` (rows with NaN/inf are
        failed members, zero likelihood); y: (d,); noise: Γ, an operator or
        array. dt: None only (SMC chooses its temperatures). The first tell
        reweights the prior draws; later ones accept or reject the proposals
        and, at the end of a stage, reweight to the next temperature,
        resample and draw new proposals. Returns ``(state, SMCInfo)``.
        A concrete finished state, or weights that cannot be formed (every
        member failed), raise; inside ``jit`` the latter gives NaN particles
        (``calibrate`` then stops with ``NonFiniteEnsemble``)."""
        if dt is not None:
            raise ValueError("SMC chooses its temperatures itself (adaptive tempering): "
                             "pass dt=None (or leave it out) and no scheduler")
        if is_concrete(state.done) and bool(state.done):
            raise ValueError("this SMC run is finished (the moves at temperature 1 are done): "
                             "start again from init")
        N = state.ensemble.shape[0]
        G, y, noise = _check_outputs(G, y, noise, N, state.ensemble.dtype)
        new, info, degenerate = _tell(self, state, G, y, noise)
        if is_concrete(degenerate) and bool(degenerate):
            raise WeightDegeneracyError(
                f"SMC: every member has zero likelihood ({int(info.n_failed)} of {N} "
                "failed, or all log-likelihoods are -inf): no weights can be formed")
        return new, info


@jax.jit
def _tell(smc: SMC, state: SMCState, G, y, noise):
    """The numerics of ``SMC.tell`` (compiled once per shape; inlined when
    the caller is itself traced, as in ``calibrate``)."""
    U = state.ensemble
    N, p = U.shape
    dtype = U.dtype
    failed = ~jnp.all(jnp.isfinite(G), axis=1)
    ll_new = gaussian_log_likelihood(jnp.where(failed[:, None], 0.0, G), y, noise)
    ll_new = jnp.where(failed, -jnp.inf, ll_new)
    k_acc, k_res, k_prop = jax.random.split(iteration_key(state), 3)
    initial = state.iteration == 0
    phi = state.temperature
    P = state.proposals

    # Metropolis accept/reject of the proposals (the initial draws are taken).
    log_alpha = (phi * (ll_new - state.log_likelihood)
                 + _prior_log_density(smc.prior, P) - _prior_log_density(smc.prior, U))
    log_alpha = jnp.where(failed, -jnp.inf, log_alpha)
    u = jax.random.uniform(k_acc, (N,), dtype)
    accept = initial | (jnp.log(u) < log_alpha)
    E = jnp.where(accept[:, None], P, U)
    ll = jnp.where(accept, ll_new, state.log_likelihood)
    acc = jnp.mean(accept.astype(dtype))
    a_star = jnp.asarray(smc.target_acceptance, dtype)
    scale = jnp.where(initial, state.scale, state.scale * jnp.exp(2.0 * (acc - a_star)))
    move = jnp.where(initial, smc.n_moves, state.move + 1)
    stage_end = move >= smc.n_moves
    reweight = stage_end & (phi < 1)
    done = stage_end & (phi >= 1)

    # At the end of a stage below φ = 1: reweight, resample, new proposal root.
    operands = (E, ll, state.log_weights, phi, state.stage, state.root, k_res)
    E, ll, lw_next, phi_next, ess, log_z, root = jax.lax.cond(
        reweight, partial(_reweight, smc), _keep, *operands)
    degenerate = reweight & ~jnp.isfinite(log_z)
    E = jnp.where(degenerate, jnp.nan, E)
    k = state.stage
    h = state.history
    s_idx = jnp.minimum(k, smc.max_stages - 1)
    a_idx = jnp.maximum(k - 1, 0)
    h = SMCHistory(
        temperatures=jnp.where(reweight, h.temperatures.at[s_idx + 1].set(phi_next),
                               h.temperatures),
        ess=jnp.where(reweight, h.ess.at[s_idx].set(ess), h.ess),
        log_evidence_increments=jnp.where(
            reweight, h.log_evidence_increments.at[s_idx].set(log_z),
            h.log_evidence_increments),
        acceptance=jnp.where(initial, h.acceptance,
                             h.acceptance.at[a_idx].add(acc / smc.n_moves)),
        scales=jnp.where(reweight, h.scales.at[s_idx].set(scale), h.scales))
    new_phi = phi_next
    z = jax.random.normal(k_prop, (N, root.shape[0]), dtype)
    proposals = jnp.where(done, E, E + scale * (z @ root))
    new = SMCState(
        ensemble=E,
        log_weights=lw_next,
        log_likelihood=ll, proposals=proposals, temperature=new_phi,
        stage=k + reweight.astype(jnp.int32),
        move=jnp.where(reweight, 0, move).astype(jnp.int32), scale=scale, root=root,
        log_evidence=state.log_evidence + jnp.where(reweight, log_z, 0.0),
        iteration=state.iteration + 1, done=done, key=state.key, history=h)
    # A traced tell after the end (a fixed-length scan) changes nothing.
    new = jax.tree_util.tree_map(lambda old, n: jnp.where(state.done, old, n),
                                 state._replace(key=None), new._replace(key=None))
    new = new._replace(key=state.key)
    ok = ~failed
    n_ok = jnp.maximum(jnp.sum(ok), 1)
    g = jnp.sum(jnp.where(ok[:, None], G, 0.0), axis=0) / n_ok
    r = noise.whiten(y - g)
    info = SMCInfo(misfit=jnp.sqrt(jnp.sum(r * r)), dt=new.temperature - phi,
                   temperature=new_phi, acceptance_rate=acc,
                   ess=ess,
                   n_failed=jnp.sum(failed).astype(jnp.int32),
                   log_evidence=new.log_evidence)
    return new, info, degenerate & ~state.done


def _reweight(smc, E, ll, lw0, phi, stage, root, key):
    """φ → φ' (``next_temperature``; straight to 1 at the stage capacity),
    the increment log Σ w̄ᵢ exp((φ' − φ) ℓᵢ), the proposal root of the
    reweighted particles, then resampling to uniform weights."""
    dtype = E.dtype
    one = jnp.ones((), dtype)
    safe = jnp.minimum(phi, one - 4 * jnp.finfo(dtype).eps)  # φ < 1 here; guard a trace
    phi_next, ess = next_temperature(ll, safe, target=smc.target_ess, log_w=lw0)
    forced = stage >= smc.max_stages - 1
    phi_next = jnp.where(forced, one, phi_next)
    ess = jnp.where(forced, tempered_ess(lw0, ll, one - phi), ess)
    lw = lw0 + incremental_log_weights(ll, phi_next - phi)
    log_z = logsumexp(lw)
    lw = jnp.where(jnp.isfinite(log_z), lw - log_z, 0.0)  # degenerate: flagged by caller
    root = _proposal_root(E, lw)
    ancestors = smc.resampler(key, lw)
    N = E.shape[0]
    return E[ancestors], ll[ancestors], uniform_log_weights(N, dtype), phi_next, ess, log_z, root


def _keep(E, ll, lw0, phi, stage, root, key):
    """No reweighting (a move within a stage, or the run is at φ = 1)."""
    N = E.shape[0]
    return E, ll, lw0, phi, jnp.asarray(N, E.dtype), jnp.zeros((), E.dtype), root


register(SMC, data=["prior", "target_ess", "target_acceptance"],
         meta=["n_moves", "scale", "max_stages", "resampler"])


def smc_summary(state: SMCState) -> SMCSummary:
    """The run's particles, weights, temperatures, per-stage ESS, acceptance
    rates, scales and log-evidence (``SMCSummary``), trimmed to its K stages.
    state: an ``SMCState`` (``calibrate``'s ``result.state``). Warns when
    the stage capacity forced the last step to φ = 1 below the target ESS."""
    if not isinstance(state, SMCState):
        raise TypeError(f"state must be an SMCState (an SMC run's state), got "
                        f"{type(state).__name__}")
    K = int(state.stage)
    h = state.history
    if K >= h.ess.shape[0] and K > 0:
        warnings.warn(f"SMC used all {K} stages of its max_stages capacity: the last "
                      "one went straight to temperature 1 (its ESS is below target); "
                      "raise max_stages", UserWarning, stacklevel=2)
    return SMCSummary(state.ensemble, state.log_weights, h.temperatures[:K + 1], h.ess[:K],
                      h.acceptance[:K], h.scales[:K], h.log_evidence_increments[:K],
                      state.log_evidence, K, bool(state.done))
