"""Checkpoints: atomic, pickle-free files of named arrays plus JSON metadata
(DESIGN principle 8, "long runs are resumable").

A checkpoint is one uncompressed NumPy ``.npz`` archive holding

- the named arrays, each as a ``.npy`` member (any bool/int/uint/float/
  complex dtype; ``bfloat16``-like types are stored bit for bit with their
  dtype name; typed JAX PRNG keys as ``jax.random.key_data`` with their
  implementation's name, re-wrapped on load);
- one member ``__checkpoint__``: UTF-8 JSON bytes with the format number,
  the key/dtype bookkeeping and the caller's metadata.

Arrays and metadata live in the same file, so one rename commits both.
``save_checkpoint`` writes a temporary file ``.<name>.<random>.tmp`` in the
target's directory, flushes and ``fsync``s it, renames it over the target
with ``os.replace`` (atomic on POSIX and Windows), then ``fsync``s the
directory so the rename itself survives a power cut. A process killed at
any moment therefore leaves either the old checkpoint or the new one, never
a partial file; at worst a stray temporary file, which ``load_checkpoint``
never reads (``remove_partial_writes`` deletes such leftovers). Loading
uses ``allow_pickle=False``: nothing in a checkpoint can run code.

``tree_to_arrays`` / ``tree_from_arrays`` store a pytree (e.g. a process
state, a NamedTuple of arrays and a PRNG key) under names derived from its
key paths and rebuild it bit for bit on the structure of a template.
``fingerprint`` hashes configurations (objects, pytrees, arrays) for the
"same configuration?" check of a resumed run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import inspect
import json
import os
import re
import tempfile
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CheckpointError",
    "fingerprint",
    "load_checkpoint",
    "load_run_checkpoint",
    "remove_partial_writes",
    "run_checkpoint_path",
    "save_checkpoint",
    "save_run_checkpoint",
    "tree_from_arrays",
    "tree_to_arrays",
]

FORMAT = 1
_INFO = "__checkpoint__"
_PLAIN_KINDS = "biufc"  # bool, int, uint, float, complex: stored as they are


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, of another
    format, or not matching what it is loaded into."""


# ----------------------------------------------------------- encoding ----


def _is_key(a) -> bool:
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def _encode(name: str, a, keys: dict, dtypes: dict) -> np.ndarray:
    """A plain NumPy array for ``a`` (recording how to undo the encoding)."""
    if _is_key(a):
        keys[name] = str(jax.random.key_impl(a))
        return np.asarray(jax.random.key_data(a))
    arr = np.asarray(a)
    if arr.dtype.kind in _PLAIN_KINDS:
        return arr
    if arr.dtype.kind == "V" and arr.dtype.itemsize in (1, 2, 4, 8) and arr.dtype.names is None:
        try:  # an extension float type (bfloat16, float8_*): keep its bits
            ok = jnp.dtype(arr.dtype.name) == arr.dtype
        except TypeError:
            ok = False
        if ok:
            dtypes[name] = arr.dtype.name
            return arr.view(f"u{arr.dtype.itemsize}")
    raise TypeError(f"arrays[{name!r}] has dtype {arr.dtype}, which a checkpoint cannot "
                    "hold without pickle (allowed: bool, integer, float, complex, "
                    "bfloat16-like floats, JAX PRNG keys)")


def _decode(name: str, a: np.ndarray, keys: dict, dtypes: dict):
    if name in keys:
        return jax.random.wrap_key_data(jnp.asarray(a), impl=keys[name])
    if name in dtypes:
        return a.view(jnp.dtype(dtypes[name]))
    return a


# ------------------------------------------------------------ writing ----


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX; no-op on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse it
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, Any],
                    metadata: dict[str, Any]) -> None:
    """Write ``arrays`` and ``metadata`` to ``path`` atomically.

    path: the checkpoint file (written exactly there, conventionally
    ``*.npz``; its directory must exist); arrays: name → array (NumPy or
    JAX, including typed PRNG keys; names are non-empty strings not starting
    with ``"__"``); metadata: a JSON-serialisable dict.

    The file is complete or absent at every instant: temporary file in the
    same directory, flush + ``os.fsync``, ``os.replace`` onto ``path``,
    ``fsync`` of the directory. On any error the temporary file is removed
    and an existing checkpoint at ``path`` is left unchanged.
    """
    path = os.fspath(path)
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict name -> array, got {type(arrays).__name__}")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    keys: dict[str, str] = {}
    dtypes: dict[str, str] = {}
    plain = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"array names must be non-empty strings not starting with "
                             f"'__' (reserved), got {name!r}")
        plain[name] = _encode(name, a, keys, dtypes)
    try:
        info = json.dumps({"format": FORMAT, "keys": keys, "dtypes": dtypes,
                           "metadata": metadata})
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from None
    plain[_INFO] = np.frombuffer(info.encode("utf-8"), np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED,
                                 allowZip64=True) as zf:
                for name, a in plain.items():
                    with zf.open(name + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, a, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def remove_partial_writes(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files that interrupted ``save_checkpoint`` calls
    for ``path`` left behind (``.<name>.*.tmp`` beside it); returns their
    paths. Only call it while no other process is writing that checkpoint."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(glob.escape(directory),
                           f".{glob.escape(os.path.basename(path))}.*.tmp")
    removed = []
    for tmp in glob.glob(pattern):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed


# ------------------------------------------------------------ reading ----


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``.

    Returns ``(arrays, metadata)``: arrays name → NumPy array, bit for bit
    and dtype for dtype as saved (typed PRNG keys come back as JAX key
    arrays of the same implementation). Raises ``FileNotFoundError`` when
    there is no file at ``path`` and ``CheckpointError`` when the file is
    not a complete checkpoint of a known format (pickle is never allowed).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CheckpointError("a single .npy array, not a checkpoint archive")
            raw = {name: z[name] for name in z.files}
        info = json.loads(bytes(raw.pop(_INFO)).decode("utf-8"))
    except CheckpointError as err:
        raise CheckpointError(f"{path!r} is not an enkit checkpoint: {err}") from None
    except KeyError:
        raise CheckpointError(f"{path!r} is not an enkit checkpoint (no {_INFO} record)"
                              ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path!r} is not a readable checkpoint (truncated, corrupt, "
                              f"or needing pickle): {type(err).__name__}: {err}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else None
        raise CheckpointError(f"{path!r} has checkpoint format {got!r}; this enkit reads "
                              f"format {FORMAT}")
    with reading_entries(path):
        arrays = {name: _decode(name, a, info["keys"], info["dtypes"])
                  for name, a in raw.items()}
        return arrays, info["metadata"]


# ------------------------------------------------------------ pytrees ----


def tree_to_arrays(tree: Any, prefix: str) -> dict[str, Any]:
    """The leaves of ``tree`` under names ``prefix + keystr(path)`` (e.g.
    ``"state.ensemble"``, ``"state.inner.previous"``), ready for
    ``save_checkpoint``. None entries are part of the structure, not leaves."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(p): leaf for p, leaf in leaves}


def tree_from_arrays(template: Any, arrays: dict[str, Any], prefix: str) -> Any:
    """Rebuild a pytree with the structure of ``template`` from the arrays
    named as by ``tree_to_arrays``. Each leaf must have the template leaf's
    shape and dtype (else ``CheckpointError`` naming it); values are taken
    bit for bit from ``arrays`` (NumPy where the template leaf is NumPy,
    else JAX arrays)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for p, ref in paths:
        name = prefix + jax.tree_util.keystr(p)
        if name not in arrays:
            raise CheckpointError(f"checkpoint lacks {name!r} (the saved state has another "
                                  "structure)")
        a = arrays[name]
        ref_dtype = ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype
        if np.shape(a) != np.shape(ref) or a.dtype != ref_dtype:
            raise CheckpointError(
                f"checkpoint entry {name!r} has shape {np.shape(a)} and dtype {a.dtype}, "
                f"expected shape {np.shape(ref)} and dtype {ref_dtype}")
        numpy_leaf = isinstance(ref, (np.ndarray, np.generic)) and not _is_key(a)
        leaves.append(a if numpy_leaf or _is_key(a) else jnp.asarray(a))
    return jax.tree_util.tree_unflatten(treedef, leaves)


# -------------------------------------------------------- fingerprint ----

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _text(s: str) -> str:
    """``s`` without memory addresses (they differ between processes)."""
    return _ADDRESS.sub("", s)


def _feed(h, obj, depth: int) -> None:
    if depth > 32:
        raise ValueError("fingerprint: object nested more than 32 levels (a cycle?)")
    if obj is None or isinstance(obj, (bool, int, float, complex, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, bytes):
        h.update(b"bytes:%d;" % len(obj) + obj)
    elif _is_key(obj):
        data = np.asarray(jax.random.key_data(obj))
        h.update(f"key:{jax.random.key_impl(obj)}:{data.shape};".encode() + data.tobytes())
    elif isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        a = np.ascontiguousarray(np.asarray(obj))
        h.update(f"array:{a.dtype.str}:{a.shape};".encode() + a.tobytes())
    elif jax.tree_util.treedef_is_leaf(treedef := jax.tree_util.tree_structure(obj)):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            h.update(f"dataclass:{type(obj).__qualname__};".encode())
            for f in dataclasses.fields(obj):
                h.update(f"{f.name}=".encode())
                _feed(h, getattr(obj, f.name), depth + 1)
        elif inspect.isroutine(obj) or isinstance(obj, type):
            h.update(f"callable:{getattr(obj, '__module__', '')}."
                     f"{obj.__qualname__};".encode())
        elif getattr(obj, "__dict__", None):
            h.update(f"object:{type(obj).__qualname__};".encode())
            for name in sorted(vars(obj)):
                h.update(f"{name}=".encode())
                _feed(h, vars(obj)[name], depth + 1)
        else:
            h.update(f"repr:{_text(repr(obj))};".encode())
    else:  # a pytree: its structure (with static fields) and its leaves
        h.update(f"tree:{_text(str(treedef))};".encode())
        for leaf in jax.tree_util.tree_leaves(obj):
            _feed(h, leaf, depth + 1)


def fingerprint(obj: Any) -> str:
    """SHA-256 (hex) of a configuration object, equal for equal content.

    Hashed: Python scalars and strings by type and repr; arrays (NumPy or
    JAX) by dtype, shape and raw bytes; PRNG keys by implementation and key
    data; pytrees (NamedTuples, registered dataclasses such as processes,
    schedulers and covariance operators) by their tree structure, static
    fields included, then their leaves; other dataclasses and objects by
    class name and fields; functions by module and qualified name; anything
    else by repr. Memory addresses (``at 0x…``) are removed first, so the
    same configuration built in another process has the same fingerprint.
    """
    h = hashlib.sha256()
    _feed(h, obj, 0)
    return h.hexdigest()


# ------------------------------------------------------ run checkpoints ----
# What the resumable drivers (calibrate, assimilate) share: the path check,
# the metadata every run checkpoint carries, and the refusal to resume a
# different configuration.


def run_checkpoint_path(checkpoint: str | os.PathLike) -> str:
    """Validate a driver's ``checkpoint=`` path (a file in an existing
    directory) and remove temporary files left beside it by killed writes.
    Returns the path as a string."""
    try:
        path = os.fspath(checkpoint)
    except TypeError:
        raise TypeError("checkpoint must be a file path (str or os.PathLike) or None, "
                        f"got {type(checkpoint).__name__}") from None
    if os.path.isdir(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(f"checkpoint must be a file path in an existing directory, "
                                f"got {path!r}")
    remove_partial_writes(path)
    return path


def save_run_checkpoint(path: str, kind: str, config: dict[str, str],
                        arrays: dict[str, Any], metadata: dict[str, Any]) -> None:
    """``save_checkpoint`` with the metadata of a run: its ``kind`` (which
    driver), the enkit version, the configuration ``config`` (part name →
    ``fingerprint``) and their combined hash, plus ``metadata``."""
    import enkit  # the package is fully imported by the time a run saves

    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    save_checkpoint(path, arrays, {"kind": kind, "enkit_version": enkit.__version__,
                                   "config_hash": digest, "config": config, **metadata})


_CANNOT_RESUME = ("it cannot be resumed; resume=False (the CLI's --overwrite) starts the run "
                  "afresh and replaces it")


@contextlib.contextmanager
def reading_entries(path: str):
    """Within: reading a run checkpoint's arrays and metadata. A missing
    entry (``KeyError``) or one of the wrong kind raises ``CheckpointError``
    naming the file and the entry, with what ``resume=False`` (the CLI's
    ``--overwrite``) would do."""
    try:
        yield
    except CheckpointError:
        raise
    except KeyError as err:
        raise CheckpointError(f"checkpoint {path!r} is incomplete or damaged: it lacks "
                              f"{err.args[0]!r}; {_CANNOT_RESUME}") from None
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path!r} is damaged: {type(err).__name__}: {err}; "
                              f"{_CANNOT_RESUME}") from None


def load_run_checkpoint(path: str, kind: str, config: dict[str, str], *, what: str,
                        stacklevel: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a run checkpoint written by ``save_run_checkpoint`` and check it
    belongs to this run: same ``kind`` and every configuration part equal,
    else ``CheckpointError`` naming the parts that differ (``what``: the
    run's name in the message, e.g. "calibration"). A different enkit
    version only warns. Returns ``(arrays, metadata)``."""
    import warnings

    import enkit

    arrays, meta = load_checkpoint(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path!r} is damaged: its metadata is not a record")
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path!r} is not an {kind!r} checkpoint "
                              f"(kind {meta.get('kind')!r})")
    absent = [e for e in ("enkit_version", "config") if e not in meta]
    if absent:
        raise CheckpointError(f"checkpoint {path!r} is incomplete or damaged: it lacks "
                              f"{absent[0]!r}; {_CANNOT_RESUME}")
    saved = meta["config"]
    differ = [p for p in config if saved.get(p) != config[p]]
    differ += [p for p in saved if p not in config]
    if differ:
        raise CheckpointError(
            f"checkpoint {path!r} belongs to another {what}: configuration differs: "
            f"{', '.join(differ)}. To start afresh delete the file, pass another "
            "checkpoint path, or pass resume=False (the run then overwrites it).")
    if meta["enkit_version"] != enkit.__version__:
        warnings.warn(f"checkpoint {path!r} was written by enkit {meta['enkit_version']}, "
                      f"this is enkit {enkit.__version__}: the resumed run may differ from "
                      "an uninterrupted one", UserWarning, stacklevel=stacklevel + 1)
    return arrays, meta
