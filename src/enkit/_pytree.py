"""Registering enkit's frozen dataclasses as JAX pytrees.

Every configuration object (models, localisers, inflation steps, processes,
schedulers, smoother steps, the driver's records) is a frozen dataclass whose
array hyperparameters are pytree leaves and whose structural options are
metadata. ``register_dataclass`` here is the one place they are registered.

Why not ``jax.tree_util.register_dataclass``: with the JAX releases enkit
supports today (seen on 0.10.2), the tree structures of two *different*
classes registered that way compare equal when their field names and
metadata agree (``SECFisher()`` and ``SECNice()``, both field-less, have equal
``PyTreeDef``s; only their hashes differ). A compiled function's cache that
looks up signatures by a partial hash followed by equality can then hand the
program compiled for one class to the other: on one CI run, an inversion
with the ``SECNice`` localiser silently returned the result of ``Delta``
(then field-less too).
Nodes registered through ``register_pytree_with_keys`` carry their class in
the structure, so distinct classes never compare equal. Key paths are the
same as ``register_dataclass``'s (``GetAttrKey(field)``), and rebuilding an
object calls the class (``__post_init__`` runs, as before).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import jax

__all__ = ["register_dataclass"]


def register_dataclass(cls: type, data_fields: Iterable[str] = (),
                       meta_fields: Iterable[str] = ()) -> type:
    """Register the dataclass ``cls`` as a pytree: ``data_fields`` are
    children (array leaves or sub-pytrees), ``meta_fields`` static metadata
    (hashable; part of the tree structure). Together they must name every
    field of ``cls`` that ``__init__`` takes. Returns ``cls``."""
    data, meta = tuple(data_fields), tuple(meta_fields)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    if set(data) & set(meta) or set(data) | set(meta) != fields or \
            len(set(data)) != len(data) or len(set(meta)) != len(meta):
        raise ValueError(
            f"{cls.__name__}: data_fields {list(data)} and meta_fields {list(meta)} must "
            f"split its init fields {sorted(fields)} with no name twice")
    keys = tuple(jax.tree_util.GetAttrKey(name) for name in data)

    def flatten_with_keys(obj):
        return ([(k, getattr(obj, name)) for k, name in zip(keys, data)],
                tuple(getattr(obj, name) for name in meta))

    def flatten(obj):
        return [getattr(obj, name) for name in data], tuple(getattr(obj, name) for name in meta)

    def unflatten(aux, children):
        return cls(**dict(zip(data, children)), **dict(zip(meta, aux)))

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls
