"""Covariance operators for tests that check what a computation densifies."""

import jax

import enkit


@jax.tree_util.register_pytree_node_class
class DiagonalNoDense(enkit.Diagonal):
    """A diagonal R that refuses to become an m×m matrix."""

    def dense(self):
        raise AssertionError("diagonal R was densified")

    def cholesky(self):
        raise AssertionError("diagonal R was densified")
