"""Checkpoints of a cycling run (``enkit.io`` files, no pickle).

- ``config_fingerprints``: the parts of a run that a resumed run must share;
- ``checkpoint_plan``: the validated checkpoint options;
- ``save_run`` / ``restore``: the carry (ensemble, inflation state, smoother
  state), every stored output so far, the completed-cycle count and the
  model step, written atomically after a window of cycles.

Used by both paths of the driver: the compiled scan run window by window
(``enkit.assimilation.compiled``) and the Python loop.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from enkit.assimilation.types import AssimilationResult, BlackBoxModel
from enkit.io import (
    fingerprint,
    load_run_checkpoint,
    reading_entries,
    run_checkpoint_path,
    save_run_checkpoint,
    tree_from_arrays,
    tree_to_arrays,
)

_LOG = logging.getLogger("enkit.assimilate")
_KIND = "enkit.assimilate"


class CheckpointPlan(NamedTuple):
    """Where and how often a run saves, and the configuration it must match."""

    path: str
    every: int
    resume: bool
    config: dict


class SavedRun(NamedTuple):
    """A run restored from its checkpoint (outputs: name → (k, ...) rows, or
    a list of (m_k,) arrays for ragged observation-space outputs)."""

    carry: Any
    outputs: dict
    completed: int
    model_step: int
    finished: bool

    def result(self) -> AssimilationResult:
        outs = {n: v if isinstance(v, list) else jnp.asarray(v) for n, v in self.outputs.items()}
        return AssimilationResult(ensemble=jnp.asarray(self.carry[0]), **outs)


def checkpoint_plan(checkpoint, every, resume, default_every, config) -> CheckpointPlan:
    """Validate the checkpoint options of ``assimilate``."""
    path = run_checkpoint_path(checkpoint)
    if every is None:
        every = default_every
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError("checkpoint_every must be a positive integer (analysis cycles "
                         f"between checkpoints), got {every!r}")
    config = dict(config, checkpoint_every=fingerprint(int(every)))
    return CheckpointPlan(path, int(every), resume, config)


def config_fingerprints(model, E0, observations, scheme, h, R, key, inflation, mask, steps,
                        forecast_steps, controls, noise, outputs, smoother=None) -> dict[str, str]:
    """The parts of an assimilation that a resumed run must share, each as
    an ``enkit.io.fingerprint`` (see ``assimilate``'s docstring)."""

    def arrays(v):
        return jax.tree_util.tree_map(np.asarray, v)

    if isinstance(model, BlackBoxModel):  # the executor is not part of the configuration
        model = {"black_box_step": model.step, "dt": model.dt}
    obs = list(observations) if isinstance(observations, (list, tuple)) else observations
    config = {
        "model": fingerprint(model),
        "E0": fingerprint(np.asarray(E0)),
        "observations": fingerprint(arrays(obs)),
        "scheme": fingerprint(scheme),
        "h": fingerprint(h),
        "R": fingerprint(R),
        "inflation": fingerprint(inflation),
        "mask": fingerprint(arrays(mask)),
        "steps": fingerprint({"analysis_steps": np.asarray(steps),
                              "forecast_steps": int(forecast_steps)}),
        "controls": fingerprint(arrays(controls)),
        "model_noise": fingerprint(noise),
        "key": fingerprint(key),
        "store": fingerprint(list(outputs)),
    }
    if smoother is not None:
        config["smoother"] = fingerprint(smoother)
    return config


def save_run(plan, carry, outputs, k, t, finished, ragged_names) -> None:
    """Checkpoint after ``k`` completed cycles (``finished``: the whole run,
    the ensemble then being the final one after any forecast-only steps)."""
    arrays = tree_to_arrays(carry, "carry")
    for name, v in outputs.items():
        if name in ragged_names:
            arrays.update({f"outputs.{name}[{i}]": a for i, a in enumerate(v)})
        else:
            arrays[f"outputs.{name}"] = v
    save_run_checkpoint(plan.path, _KIND, plan.config, arrays, {
        "completed_cycles": int(k), "model_step": int(t), "finished": bool(finished),
        "ragged_outputs": list(ragged_names), "outputs": list(outputs)})
    _LOG.debug("assimilate: checkpoint after %d cycles written to %s", k, plan.path)


def restore(plan, template, outputs, *, stacklevel) -> SavedRun | None:
    """The run saved at ``plan.path``, or None (no file, or ``resume=False``).

    template: a carry of the run's structure; outputs: the names saved when
    the checkpoint does not list them (files written before it did)."""
    if not plan.resume or not os.path.exists(plan.path):
        return None
    arrays, meta = load_run_checkpoint(plan.path, _KIND, plan.config, what="assimilation",
                                       stacklevel=stacklevel + 1)
    with reading_entries(plan.path):
        return _restore(arrays, meta, template, outputs, plan.path)


def _restore(arrays, meta, template, outputs, path) -> SavedRun:
    k = meta["completed_cycles"]
    ragged_names = meta.get("ragged_outputs", [])
    carry = tree_from_arrays(template, arrays, "carry")
    saved_outputs = {}
    for name in meta.get("outputs", outputs):
        if name in ragged_names:
            saved_outputs[name] = [jnp.asarray(arrays[f"outputs.{name}[{i}]"]) for i in range(k)]
        else:
            saved_outputs[name] = arrays[f"outputs.{name}"]
    _LOG.info("assimilate: resuming from %s after %d completed cycles%s", path, k,
              " (finished)" if meta["finished"] else "")
    return SavedRun(carry, saved_outputs, k, meta["model_step"], meta["finished"])
