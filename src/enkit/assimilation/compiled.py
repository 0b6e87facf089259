"""The compiled path of the driver: the whole run as one ``lax.scan``.

``run`` takes the two pytrees that describe a run (``CycleSettings``: what
is done at every cycle; ``ObservationRecord``: what is observed when), the
initial ensemble and the key, and compiles once per shape and per static
option (outputs, forecast-only steps, window cycles). ``run_window`` is the
same scan over a slice of the cycles, from a given carry; the checkpointed
path (``enkit.assimilation.checkpoint``) calls it window by window.

The carry of the scan is ``(E, inflation state, smoother state)`` (then a
particle scheme's log-weights, and the running optimum's state when an
optimum output is stored: ``cycle.close_cycle``); the per-cycle outputs are
``(statistics, smoother rows)``, and a smoother's ``finish`` turns its rows
and final state into the smoothed outputs.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from enkit.assimilation import cycle
from enkit.assimilation.checkpoint import restore, save_run
from enkit.assimilation import particles
from enkit.assimilation.types import (
    AssimilationResult,
    CycleSettings,
    ObservationRecord,
    is_particle,
)
from enkit.filters._common import observe
from enkit.particle.resampling import uniform_log_weights


def init_carry(settings: CycleSettings, E0, outputs=(), m: int = 0):
    """The carry before the first cycle: (E0, inflation state, smoother
    state), uniform log-weights after them for a particle scheme, and last
    the running optimum's state (``cycle.init_optimum``; m observations per
    cycle) when ``outputs`` hold an optimum output."""
    smoother = settings.smoother
    carry = (E0, settings.inflation.init(E0), () if smoother is None else smoother.init(E0))
    if is_particle(settings.scheme):
        carry = (*carry, uniform_log_weights(E0.shape[0], E0.dtype))
    if cycle.tracks_optimum(outputs):
        carry = (*carry, cycle.init_optimum(outputs, E0.shape[1], m, E0.dtype))
    return carry


def tracked(body, outputs):
    """The scan body ``body`` (which computes ``cycle.statistics_names(
    outputs)``) with the running outputs added: with an optimum output the
    carry's last entry is the optimum's state, updated after each cycle
    (``cycle.close_cycle``); cycle_number is the cycle's k. ``body`` itself
    when ``outputs`` hold neither."""
    optimum = cycle.tracks_optimum(outputs)
    if not optimum and cycle.CYCLE_NUMBER not in outputs:
        return body

    def with_running(carry, x):
        inner, opt = (carry[:-1], carry[-1]) if optimum else (carry, None)
        inner, (out, rows) = body(inner, x)
        opt, out = cycle.close_cycle(outputs, opt, x["k"], cycle.observed(x["y"], x["mask"]),
                                     out)
        return ((*inner, opt) if optimum else inner), (out, rows)

    return with_running


@partial(jax.jit, static_argnames=("forecast_steps", "outputs"))
def run(settings: CycleSettings, record: ObservationRecord, E0, key, *, forecast_steps,
        outputs) -> AssimilationResult:
    """The whole run: K cycles, then ``forecast_steps`` model steps."""
    carry, (outs, rows) = scan(settings, record, init_carry(settings, E0, outputs,
                                                            record.values.shape[1]),
                               record.scan_inputs(), key, outputs)
    E = carry[0]
    if forecast_steps:
        E = final_forecast(settings, record, E, key, forecast_steps)
    return AssimilationResult(ensemble=E, **outs, **finish(settings, carry, rows))


@partial(jax.jit, static_argnames=("outputs", "stages"))
def run_window(settings: CycleSettings, record: ObservationRecord, carry, xs, key, *, outputs,
               stages=False):
    """The cycles of one checkpoint window: ``xs`` is a slice of
    ``record.scan_inputs()``. Returns (carry, (statistics, smoother rows))."""
    return scan(settings, record, carry, xs, key, outputs, stages)


def failing_stage(settings: CycleSettings, record: ObservationRecord, E0, key, k: int) -> int:
    """The finite-check code, with its stage, of cycle k + 1 (0-based k) of a
    run whose scan found it not finite: the first k cycles are run again
    (the same keys: the same ensemble) and cycle k + 1 with every stage
    checked. ``cycle.UNKNOWN`` if the re-run finds it finite."""
    settings = dataclasses.replace(settings, smoother=None)
    xs = record.scan_inputs()
    carry = init_carry(settings, E0)
    if k:
        carry, _ = run_window(settings, record, carry,
                              jax.tree_util.tree_map(lambda a: a[:k], xs), key, outputs=())
    _, (outs, _) = run_window(settings, record, carry,
                              jax.tree_util.tree_map(lambda a: a[k:k + 1], xs), key,
                              outputs=(cycle.NONFINITE,), stages=True)
    code = int(outs[cycle.NONFINITE][0])
    return code if code else cycle.UNKNOWN


def finish(settings: CycleSettings, carry, rows) -> dict:
    """The smoothed outputs from the smoother's rows and final state ({}
    for a filter)."""
    if settings.smoother is None:
        return {}
    return settings.smoother.finish(carry[2], rows)


finish_jit = jax.jit(finish)


def final_forecast(settings: CycleSettings, record: ObservationRecord, E, key, forecast_steps):
    """The forecast-only steps after the last analysis (keys of cycle K + 1)."""
    n_steps = record.n_steps
    k_noise = None if key is None else jax.random.fold_in(key, n_steps.shape[0] + 1)
    return cycle.forecast(settings.model, E, forecast_steps, t0=jnp.sum(n_steps),
                          controls=record.controls, noise=settings.model_noise, key=k_noise)


final_forecast_jit = jax.jit(final_forecast, static_argnames=("forecast_steps",))


def scan(settings: CycleSettings, record: ObservationRecord, carry, xs, key, outputs,
         stages=False):
    """``lax.scan`` of the cycle over ``xs`` from ``carry`` (``stages``: the
    finite-check names the failing stage; see ``cycle.nonfinite_code``)."""
    model, scheme, inflation = settings.model, settings.scheme, settings.inflation
    noise, smoother, window = settings.model_noise, settings.smoother, settings.window
    h, R, controls = record.h, record.R, record.controls
    transform = smoother is not None and smoother.needs_transform
    particle = is_particle(scheme)
    names = cycle.statistics_names(outputs)

    def body(carry, x):
        E, state, sstate = carry[:3]
        h_k = x["h"] if x["h"] is not None else h
        R_k = x["R"] if x["R"] is not None else R
        keys, k_noise = cycle.cycle_keys(key, x["k"])
        t_obs = x["t0"] + x["n"]
        if controls is not None and callable(h_k):
            u = jax.tree_util.tree_map(lambda a: a[t_obs], controls)
            h_k = partial(_call_with, h_k, u)
        # The steps are read from the record even when every cycle has the
        # same number: the forecast is then a loop of its own (XLA inlines a
        # loop of a known single trip), so its result is made once. Inlined,
        # XLA fused a cheap model's last stages into each consumer of the
        # forecast and computed them there again (Lorenz-96 RK4, N = 40:
        # stochastic EnKF cycle 56 -> 44 µs, ETKF 36.6 -> 34.2 µs with
        # Lorenz96's one-halo step). Reverse mode goes through the same steps
        # with the static bound max_steps (cycle.bounded_loop).
        fc = partial(cycle.forecast, model, n_steps=x["n"], t0=x["t0"],
                     controls=controls, noise=noise, key=k_noise,
                     max_steps=settings.max_steps)
        Ef = fc(E)
        if particle:
            return _particle_cycle(scheme, h_k, x, R_k, keys[0], Ef, carry, names, stages)
        if window:
            h_win = partial(_through_model, fc, h_k)
            run = lambda: _window_analysis(  # noqa: E731
                scheme, h_win, h_k, x["y"], R_k, x["mask"], inflation, state, keys, E, Ef,
                fc, names, transform, stages)
        else:
            run = lambda: cycle.analyse(  # noqa: E731
                scheme, h_k, x["y"], R_k, x["mask"], inflation, state, keys, Ef, names,
                transform=transform, stages=stages)
        skip = lambda: (Ef, state, cycle.skipped(  # noqa: E731
            names, Ef, h_k, x["y"], R_k, x["mask"]),
            cycle.identity_transform(Ef) if transform else None)
        if x["y"].shape[0] == 0:  # m = 0: no analysis at any cycle
            Ea, state, out, G = skip()
        elif x["mask"] is None:
            Ea, state, out, G = run()
        else:
            Ea, state, out, G = jax.lax.cond(jnp.any(x["mask"]), run, skip)
        rows = {}
        if smoother is not None:
            sstate, rows = smoother.step(sstate, Ef, Ea, G)
        return (Ea, state, sstate), (out, rows)

    return remat_scan(tracked(body, outputs), carry, xs, settings.remat)


def _particle_cycle(scheme, h, x, R, key, Ef, carry, outputs, stages):
    """The analysis of a particle scheme (``enkit.assimilation.particles``):
    the log-weights are the carry's last entry."""
    E, state, sstate, log_w = carry
    run = lambda: particles.analyse(  # noqa: E731
        scheme, h, x["y"], R, x["mask"], key, Ef, log_w, outputs, stages=stages)
    skip = lambda: (Ef, log_w, particles.skipped(  # noqa: E731
        outputs, Ef, log_w, h, x["y"], R, x["mask"]))
    if x["y"].shape[0] == 0:
        Ea, log_a, out = skip()
    elif x["mask"] is None:
        Ea, log_a, out = run()
    else:
        Ea, log_a, out = jax.lax.cond(jnp.any(x["mask"]), run, skip)
    return (Ea, state, sstate, log_a), (out, {})


def remat_scan(body, carry, xs, remat):
    """``lax.scan(body, carry, xs)`` with what reverse mode stores chosen by
    ``remat`` (see ``assimilate``): None stores every cycle's intermediate
    values; "cycle" wraps the body in ``jax.checkpoint`` (the carry of every
    cycle is kept, each cycle recomputed once on the way back); an int L
    runs the first ⌊K/L⌋·L cycles as a scan over segments of L cycles, each
    segment checkpointed and its cycles too (kept: the carry at every
    segment's start, and during the backward pass of one segment its L
    carries: memory O(K/L + L) carries, O(√K) for L ≈ √K; each cycle
    recomputed twice), and the remaining cycles as a "cycle" scan. The
    values and derivatives are those of the plain scan."""
    if remat is None:
        return jax.lax.scan(body, carry, xs)
    body = jax.checkpoint(body, prevent_cse=False)
    K = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if remat == "cycle" or remat >= K:
        return jax.lax.scan(body, carry, xs)
    L = int(remat)
    S = K // L

    @partial(jax.checkpoint, prevent_cse=False)
    def segment(c, xs_seg):
        return jax.lax.scan(body, c, xs_seg)

    head = jax.tree_util.tree_map(lambda a: a[:S * L].reshape(S, L, *a.shape[1:]), xs)
    carry, ys = jax.lax.scan(segment, carry, head)
    ys = jax.tree_util.tree_map(lambda a: a.reshape(S * L, *a.shape[2:]), ys)
    if S * L == K:
        return carry, ys
    carry, tail = jax.lax.scan(body, carry, jax.tree_util.tree_map(lambda a: a[S * L:], xs))
    return carry, jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, tail)


def _call_with(h, u, x):
    return h(x, u)


def _through_model(fc, h, x):
    """h ∘ M for one member (the forecast of a one-member ensemble)."""
    return observe(h, fc(x[None]))[0]


def _window_analysis(scheme, h_win, h, y, R, mask, inflation, state, keys, E, Ef, fc, outputs,
                     transform, stages):
    """over_window: update the previous analysis with h ∘ M, then forecast it
    (G: the transform of the update of the previous analysis)."""
    k_scheme, k_before, k_after = keys
    hm, ym, Rm = cycle.masked_problem(h_win, y, R, mask)
    Eb, state = inflation.before_analysis(state, k_before, E, ym, hm, Rm, mask)
    Es, G = cycle.run_scheme(scheme, Eb, ym, hm, Rm, k_scheme, transform)
    Em = fc(Es)
    Ea, state = inflation.after_analysis(state, k_after, Ef, Em)
    out = cycle.statistics(outputs, Ef, Ef, Ea, *cycle.masked_problem(h, y, R, mask), mask)
    if cycle.NONFINITE in outputs:
        out[cycle.NONFINITE] = cycle.nonfinite_code(
            (cycle.FORECAST, Ef), (cycle.INFLATION_BEFORE, Eb), (cycle.ANALYSIS, Es),
            (cycle.FORECAST, Em), (cycle.INFLATION_AFTER, Ea), stages=stages)
    return Ea, state, out, G


def run_windows(settings: CycleSettings, record: ObservationRecord, E0, key, forecast_steps,
                outputs, plan, stop_on_nonfinite=False, *, every=None,
                on_window=None) -> AssimilationResult:
    """The compiled path in windows of ``plan.every`` cycles, saving after each.

    plan None: no checkpoint, windows of ``every`` cycles. on_window: None or
    a callable ``on_window(cycles)`` called after each window with the
    number of cycles it ran (a progress bar's ``update``; first with the
    cycles restored from a checkpoint).

    Each window is one call of the plain path's scan on that window's slice
    of the per-cycle inputs (one compilation for the full-size windows, one
    more for a shorter last window). A smoother's rows are saved with the
    outputs (as ``rows.NAME``) and its state with the carry. With
    ``stop_on_nonfinite``, a window whose finite-check fails is not saved
    (the checkpoint keeps the last finite window) and the run stops there,
    returning the outputs up to that window's end (ensemble None).
    """
    K, m = record.values.shape
    carry = init_carry(settings, E0, outputs, m)
    k, t = 0, 0
    parts: dict = {}
    saved = None if plan is None else restore(plan, carry, outputs, stacklevel=4)
    if saved is not None:
        if saved.finished:
            return saved.result()
        carry, k, t = saved.carry, saved.completed, saved.model_step
        parts = {name: [v] for name, v in saved.outputs.items()}
        if on_window is not None and k:
            on_window(k)
    every = plan.every if plan is not None else every
    xs_all = record.scan_inputs()
    steps = np.cumsum(np.asarray(record.n_steps))

    def rows():
        return {name: np.concatenate(p) for name, p in parts.items()}

    while k < K:
        end = min(k + every, K)
        xs = jax.tree_util.tree_map(lambda a: a[k:end], xs_all)  # noqa: B023
        carry, (outs, srows) = run_window(settings, record, carry, xs, key, outputs=outputs)
        named = {**outs, **{f"rows.{name}": v for name, v in srows.items()}}
        for name, v in named.items():
            parts.setdefault(name, []).append(np.asarray(v))
        if stop_on_nonfinite and cycle.NONFINITE in outs and np.any(outs[cycle.NONFINITE]):
            return AssimilationResult(**{n: jnp.asarray(v) for n, v in rows().items()
                                         if not n.startswith("rows.")})
        if on_window is not None:
            on_window(end - k)
        k, t = end, int(steps[end - 1])
        if plan is not None and (k < K or forecast_steps):
            save_run(plan, carry, rows(), k, t, False, [])
    E = carry[0]
    if forecast_steps:
        E = final_forecast_jit(settings, record, E, key, forecast_steps=forecast_steps)
    final = rows()
    srows = {name[5:]: jnp.asarray(final.pop(name)) for name in list(final)
             if name.startswith("rows.")}
    final.update({name: np.asarray(v) for name, v in finish_jit(settings, carry, srows).items()})
    if plan is not None:
        save_run(plan, (E, *carry[1:]), final, K, t, True, [])
    return AssimilationResult(ensemble=E, **{n: jnp.asarray(v) for n, v in final.items()})
