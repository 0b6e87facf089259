"""Central finite differences, the reference for the gradient tests."""

import numpy as np


def central_differences(f, x, eps=1e-6, *, relative=False):
    """(f(x + δᵢ) − f(x − δᵢ)) / (2δᵢ) for every entry i of x, δᵢ = eps (or,
    with ``relative``, eps·max(1, |xᵢ|)). f maps an array shaped like x to
    a number or an array; returns an array of shape f's shape + x's shape
    (the layout of ``jax.jacrev``; x's shape alone for a scalar f)."""
    x = np.asarray(x, float)
    columns = []
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps * max(1.0, abs(x[i])) if relative else eps
        columns.append((np.asarray(f(x + d)) - np.asarray(f(x - d))) / (2 * d[i]))
    J = np.array(columns)  # x.size, *f_shape
    return np.moveaxis(J, 0, -1).reshape(J.shape[1:] + x.shape)
