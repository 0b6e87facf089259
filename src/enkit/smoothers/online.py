"""Fixed-lag smoothing online: observations arrive in chunks, smoothed
estimates are released as they leave the lag window, memory bounded by the
lag whatever the length of the stream."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from enkit.assimilation import compiled, cycle
from enkit.assimilation.driver import prepare
from enkit.assimilation.types import AssimilationResult
from enkit.io import (
    fingerprint,
    load_run_checkpoint,
    run_checkpoint_path,
    save_run_checkpoint,
    tree_from_arrays,
    tree_to_arrays,
)
from enkit.smoothers.enks import DEFAULT_SMOOTHED, LagSmoother

__all__ = ["StreamChunk", "enks_stream"]

_LOG = logging.getLogger("enkit.smoothers")
_KIND = "enkit.enks_stream"


class StreamChunk(NamedTuple):
    """What ``enks_stream`` yields for one chunk of observations.

    filtered: an ``AssimilationResult`` for the chunk's analysis cycles
    (times, steps, the stored filter outputs, and ``ensemble`` the filter
    ensemble after the chunk), or None for the final flush; smoothed: an
    ``AssimilationResult`` holding the smoothed outputs of the analysis
    times released during this chunk, with their own ``times`` and
    ``steps`` (L cycles behind the filter; empty rows while the first L
    cycles fill the window; the final flush releases the last L).
    """

    filtered: AssimilationResult | None
    smoothed: AssimilationResult


def enks_stream(model, E0, chunks: Iterable, scheme, *, lag: int, h, R, key=None,
                inflation=None, steps_per_obs: int = 1, model_noise=None,
                store=cycle.DEFAULT_OUTPUTS + DEFAULT_SMOOTHED, checkpoint=None,
                resume: bool = True) -> Iterator[StreamChunk]:
    """Fixed-lag EnKS over a stream of observation chunks (a generator).

    The same cycles as ``enks(..., lag=lag)`` (``LagSmoother``): the state
    between chunks is the filter ensemble, the inflation state and the L
    carried past ensembles, so memory is O(L N n) however many chunks
    arrive, and the estimates equal those of one ``enks`` run over the
    concatenated observations (same keys: cycle k uses ``fold_in(key, k)``
    with k counted over the whole stream). Chunks of one size share one
    compiled program.

    chunks: an iterable of (k_c, m) observation arrays, or of
    ``(values, mask)`` pairs with a (k_c, m) boolean mask (False: absent);
    it may be a generator that waits for data. lag: L ≥ 0 analysis times.
    model (JAX-traceable), E0, scheme, h, R (constant in time), key,
    inflation, model_noise, store: as for ``enks``; steps_per_obs: model
    steps between analyses (an int).

    Yields a ``StreamChunk`` per chunk and, when ``chunks`` is exhausted,
    one more (filtered None) releasing the last L smoothed estimates.

    checkpoint: None, or a file path: before reading each next chunk (that
    is, once the consumer has taken the previous yield) the stream's state
    is saved atomically (``enkit.io``). With ``resume`` (default) and a
    checkpoint present, the stream restarts from it: the chunks that were
    already consumed (the first cycles of ``chunks``, which must be given
    again in the same chunking) are skipped, so each chunk's yield is
    delivered at least once. A different configuration (model, E0, scheme,
    h, R, key, inflation, lag, steps, model noise, store) is refused.
    """
    if isinstance(lag, bool) or not isinstance(lag, (int, np.integer)) or lag < 0:
        raise ValueError(f"enks_stream: lag must be a non-negative integer, got {lag!r}")
    if isinstance(steps_per_obs, bool) or not isinstance(steps_per_obs, (int, np.integer)) \
            or steps_per_obs < 1:
        raise ValueError(f"steps_per_obs must be a positive integer, got {steps_per_obs!r}")
    names = cycle.resolve_outputs(store)
    smoothed_names = tuple(n for n in names if n in cycle.SMOOTHED_OUTPUTS) or DEFAULT_SMOOTHED
    outputs = tuple(n for n in names if n not in cycle.SMOOTHED_OUTPUTS)
    smoother = LagSmoother(lag=int(lag), outputs=smoothed_names)
    dt = getattr(model, "dt", None)
    unit = float(dt) if dt is not None else 1.0
    plan = None
    if checkpoint is not None:
        config = {name: fingerprint(v) for name, v in dict(
            model=model, E0=np.asarray(E0), scheme=scheme, h=h, R=R, key=key,
            inflation=inflation, lag=int(lag), steps_per_obs=int(steps_per_obs),
            model_noise=model_noise, store=list(names)).items()}
        plan = (run_checkpoint_path(checkpoint), config)
    return _stream(model, E0, chunks, scheme, smoother, h, R, key, inflation, steps_per_obs,
                   model_noise, outputs, unit, plan, resume)


def _stream(model, E0, chunks, scheme, smoother, h, R, key, inflation, steps_per_obs,
            model_noise, outputs, unit, plan, resume):
    L = smoother.lag
    carry, done = None, 0
    settings = None
    skip = 0
    if plan is not None and resume and os.path.exists(plan[0]):
        saved_arrays, meta = load_run_checkpoint(plan[0], _KIND, plan[1], what="stream")
        skip = meta["completed_cycles"]
        _LOG.info("enks_stream: resuming from %s after %d cycles", plan[0], skip)
    for chunk in chunks:
        values, mask = chunk if isinstance(chunk, tuple) else (chunk, None)
        k_c = np.shape(values)[0]
        run = prepare(model, E0, values, scheme, h=h, R=R, key=key, inflation=inflation,
                      mask=mask, steps_per_obs=steps_per_obs, model_noise=model_noise,
                      store=outputs)
        if run.python_path:
            raise ValueError("enks_stream needs a JAX-traceable model and (k_c, m) chunks")
        settings = dataclasses.replace(run.settings, smoother=smoother)
        if carry is None:
            carry = compiled.init_carry(settings, run.E0, outputs, np.shape(values)[1])
            if skip:
                carry = tree_from_arrays(carry, saved_arrays, "carry")
        if done < skip:
            if done + k_c > skip:
                raise ValueError(f"the checkpoint ends after {skip} cycles, inside a chunk: "
                                 "give the chunks again in the same chunking")
            done += k_c
            continue
        xs = run.record.scan_inputs()
        xs["k"] = xs["k"] + done
        xs["t0"] = xs["t0"] + done * steps_per_obs
        carry, (outs, rows) = compiled.run_window(settings, run.record, carry, xs, run.key,
                                                  outputs=outputs)
        ks = np.arange(done + 1, done + k_c + 1)
        filtered = AssimilationResult(ensemble=carry[0], times=jnp.asarray(ks * steps_per_obs
                                                                           * unit),
                                      steps=jnp.asarray(ks * steps_per_obs), **outs)
        keep = ks - L >= 1
        released = ks[keep] - L
        smoothed = AssimilationResult(
            times=jnp.asarray(released * steps_per_obs * unit),
            steps=jnp.asarray(released * steps_per_obs),
            **{name: v[keep] for name, v in rows.items()})
        done += k_c
        yield StreamChunk(filtered, smoothed)
        if plan is not None:
            _save(plan, carry, done)
    if carry is None or L == 0:
        return
    if done < skip:
        raise ValueError(f"the stream ended after {done} cycles, before its checkpoint "
                         f"({skip} cycles)")
    last = np.arange(done - L + 1, done + 1)
    tail = jax.vmap(lambda E: cycle.smoothed_statistics(smoother.outputs, E))(carry[2])
    keep = last >= 1
    yield StreamChunk(None, AssimilationResult(
        times=jnp.asarray(last[keep] * steps_per_obs * unit),
        steps=jnp.asarray(last[keep] * steps_per_obs),
        **{name: v[keep] for name, v in tail.items()}))


def _save(plan, carry, done) -> None:
    save_run_checkpoint(plan[0], _KIND, plan[1], tree_to_arrays(carry, "carry"),
                        {"completed_cycles": int(done)})
    _LOG.debug("enks_stream: checkpoint after %d cycles written to %s", done, plan[0])
