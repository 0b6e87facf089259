"""enkit's pytree registration: distinct classes never share a tree structure."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import pytest

import enkit
from enkit._pytree import register_dataclass


def _registered_classes():
    """Every public enkit dataclass that is a registered pytree node."""
    seen = []
    for name in dir(enkit):
        obj = getattr(enkit, name)
        if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and obj not in seen:
            seen.append(obj)
    return seen


def test_field_less_localisers_have_distinct_structures():
    a, b = jax.tree_util.tree_structure(enkit.Delta()), jax.tree_util.tree_structure(enkit.SECNice())
    assert a != b
    wrapped = [jax.tree_util.tree_structure(enkit.EKI(localizer=loc))
               for loc in (enkit.Delta(), enkit.SECNice(), enkit.SECFisher())]
    assert len({(t, i) for i, t in enumerate(wrapped)}) == 3
    assert all(wrapped[i] != wrapped[j] for i in range(3) for j in range(i + 1, 3))


def test_classes_with_the_same_fields_are_not_equal_structures():
    @dataclasses.dataclass(frozen=True)
    class A:
        x: float
        tag: str = "t"

    @dataclasses.dataclass(frozen=True)
    class B:
        x: float
        tag: str = "t"

    register_dataclass(A, ["x"], ["tag"])
    register_dataclass(B, ["x"], ["tag"])
    assert jax.tree_util.tree_structure(A(1.0)) != jax.tree_util.tree_structure(B(1.0))
    assert jax.tree_util.tree_structure(A(1.0)) == jax.tree_util.tree_structure(A(2.0))
    assert jax.tree_util.tree_structure(A(1.0)) != jax.tree_util.tree_structure(A(1.0, "u"))


def test_public_classes_round_trip_and_keep_attribute_paths():
    loc = enkit.RBF(2.0)
    leaves, tree = jax.tree_util.tree_flatten(loc)
    assert jax.tree_util.tree_unflatten(tree, leaves) == loc
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(loc)[0]]
    assert paths == [".length_scale"]
    model = enkit.Lorenz96(n=6, F=8.0, dt=0.05)
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, model)
    assert (doubled.n, float(doubled.F), float(doubled.dt)) == (6, 16.0, 0.1)


def test_rebuilding_runs_post_init():
    with pytest.raises(ValueError, match="length_scale"):
        jax.tree_util.tree_map(lambda v: -1.0, enkit.RBF(2.0))


def test_compiled_functions_tell_field_less_classes_apart():
    @jax.jit
    def tapers(loc, U, G):
        return loc.tapers(None, U, G)[0]

    U = jax.random.normal(jax.random.key(0), (8, 5))
    G = U @ jax.random.normal(jax.random.key(1), (5, 5))
    for _ in range(3):
        d, s = tapers(enkit.Delta(), U, G), tapers(enkit.SECNice(), U, G)
        assert jnp.array_equal(d, jnp.eye(5))
        assert not jnp.array_equal(s, d)


def test_registration_must_name_every_init_field_once():
    @dataclasses.dataclass(frozen=True)
    class C:
        a: float
        b: int

    with pytest.raises(ValueError, match="init fields"):
        register_dataclass(C, ["a"], [])
    with pytest.raises(ValueError, match="init fields"):
        register_dataclass(C, ["a", "b"], ["b"])


def test_every_public_dataclass_structure_names_its_class():
    """Flattening any public configuration class and its leaves gives a
    structure unequal to every other class's (checked pairwise on defaults
    that can be built without arguments)."""
    built = {}
    for cls in _registered_classes():
        try:
            obj = cls()
        except TypeError:
            continue
        tree = jax.tree_util.tree_structure(obj)
        if tree.num_nodes == 1 and tree.num_leaves == 1:
            continue  # not a registered node: a leaf
        built[cls.__name__] = tree
    assert len(built) >= 3, sorted(built)
    names = sorted(built)
    clashes = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if built[a] == built[b]]
    assert clashes == []
