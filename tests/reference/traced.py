"""Inspecting traced programs: which array shapes a computation forms."""

import math

import jax
import jax.extend


def traced_shapes(fn, *args):
    """Shapes of every array in the traced program of fn(*args), nested
    sub-programs (scan, cond, jit, custom rules) included."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    shapes = []

    def visit(jp):
        for eqn in jp.eqns:
            for v in list(eqn.outvars) + list(eqn.invars):
                aval = getattr(v, "aval", None)
                if aval is not None and hasattr(aval, "shape"):
                    shapes.append(tuple(aval.shape))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return shapes


def largest_array(fn, *args) -> int:
    """The number of entries of the largest array in the traced program of
    fn(*args) (nested sub-programs included): a bound on what it forms."""
    return max((math.prod(s) for s in traced_shapes(fn, *args)), default=0)
