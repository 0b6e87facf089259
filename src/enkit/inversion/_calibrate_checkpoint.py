"""Checkpoints of ``calibrate`` (private): the configuration fingerprint,
saving after each update and restoring a run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from enkit.io import (
    CheckpointError,
    fingerprint,
    load_run_checkpoint,
    reading_entries,
    save_run_checkpoint,
    tree_from_arrays,
    tree_to_arrays,
)

_KIND = "enkit.calibrate"


def config_fingerprints(process, scheduler, policy, max_it, tau, collapse_tol, bb,
                        initial_ensemble, data, k_proc, k_fail) -> dict[str, str]:
    """The parts of a calibration that a resumed run must share, each as an
    ``enkit.io.fingerprint`` (see ``calibrate``'s docstring)."""
    def num(v):
        return None if v is None else float(v)

    return {
        "process": fingerprint(process),
        "scheduler": fingerprint(scheduler),
        "failure policy": fingerprint(policy),
        "stopping rules": fingerprint({"max_iterations": max_it, "tau": num(tau),
                                       "collapse_tol": num(collapse_tol)}),
        "black_box": fingerprint(bb),
        "initial_ensemble": fingerprint(
            None if initial_ensemble is None else np.asarray(initial_ensemble)),
        "data": fingerprint(data),
        "key": fingerprint((k_proc, k_fail)),
    }


def _column(values, dtype) -> np.ndarray:
    return np.stack([np.asarray(v) for v in values]) if values else np.zeros((0,), dtype)


def save_run(path, template, state, rec, t, k, stopped_by, config) -> None:
    """Checkpoint after ``k`` completed updates (``stopped_by`` set: finished)."""

    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(template):
        raise CheckpointError("cannot checkpoint this process: its state changed structure "
                              "since init, so it cannot be rebuilt on resume")
    dtype = np.asarray(rec["U"][0]).dtype
    arrays = tree_to_arrays(state, "state")
    for i, (U, G) in enumerate(zip(rec["U"], rec["G"])):
        arrays[f"ensembles[{i}]"], arrays[f"outputs[{i}]"] = U, G
    arrays.update(misfits=_column(rec["m"], dtype), times=_column(rec["t"], dtype),
                  dts=_column(rec["dt"], dtype), time=np.asarray(t),
                  failure_fractions=np.asarray(rec["frac"], np.float64),
                  failed=np.stack(rec["failed"]))
    save_run_checkpoint(path, _KIND, config, arrays, {
        "completed_iterations": k, "evaluated": len(rec["U"]), "stopped_by": stopped_by,
        "errors": [{str(i): e for i, e in err.items()} for err in rec["errors"]]})


def restore_run(path, config, template):
    """(state, records, time, k, stopped_by) from the checkpoint at ``path``."""
    arrays, meta = load_run_checkpoint(path, _KIND, config, what="calibration",
                                       stacklevel=3)
    with reading_entries(path):
        return _restore(arrays, meta, template)


def _restore(arrays, meta, template):
    n = meta["evaluated"]
    rec = {"U": [jnp.asarray(arrays[f"ensembles[{i}]"]) for i in range(n)],
           "G": [jnp.asarray(arrays[f"outputs[{i}]"]) for i in range(n)],
           "m": [jnp.asarray(v) for v in arrays["misfits"]],
           "t": [jnp.asarray(v) for v in arrays["times"]],
           "frac": list(arrays["failure_fractions"]),
           "failed": list(arrays["failed"]),
           "errors": [{int(i): e for i, e in err.items()} for err in meta["errors"]],
           "dt": [jnp.asarray(v) for v in arrays["dts"]]}
    state = tree_from_arrays(template, arrays, "state")
    return (state, rec, jnp.asarray(arrays["time"]), meta["completed_iterations"],
            meta["stopped_by"])


# ---------------------------------------------------------------- driver ----
