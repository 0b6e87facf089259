"""Reverse-mode gradients of every registered scheme, alone and through the
driver: against central finite differences and forward mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference.finite_differences import central_differences

import enkit


@pytest.mark.parametrize("members", [3, 8])  # N > m: repeated eigenvalues of T
def test_etkf_analysis_mean_differentiates_in_y_r_and_the_ensemble(members):
    rng = np.random.default_rng(members)
    E = jnp.asarray(rng.standard_normal((members, 4)))
    Hm = jnp.asarray(rng.standard_normal((2, 4)))
    y, r = jnp.array([0.3, -0.7]), jnp.array([0.5, 1.5])

    @jax.jit
    def mean(E, y, r):
        return enkit.etkf(E, y, Hm, enkit.Diagonal(r)).mean(0)

    # One compiled program per mode gives the Jacobians in all three arguments.
    revs = jax.jit(jax.jacrev(mean, argnums=(0, 1, 2)))(E, y, r)
    fwds = jax.jit(jax.jacfwd(mean, argnums=(0, 1, 2)))(E, y, r)
    for arg, x in enumerate((E, y, r)):
        rev, fwd = revs[arg], fwds[arg]
        np.testing.assert_allclose(rev, fwd, rtol=1e-10, atol=1e-13)
        def at(v, arg=arg):
            args = [E, y, r]
            args[arg] = jnp.asarray(v)
            return mean(*args)

        fd = central_differences(at, x, 1e-6)
        np.testing.assert_allclose(rev, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", sorted(enkit.SCHEMES))
def test_every_scheme_differentiates_through_a_run(name):
    # A 6-cycle run of a small nonlinear model, the loss differentiated in
    # the model parameter a, the inflation factor and R's variance together
    # (stochastic schemes with a fixed key: a smooth function of them).
    rng = np.random.default_rng(2)
    E0 = jnp.asarray(rng.standard_normal((5, 3)))
    ys = jnp.asarray(rng.standard_normal((6, 2)))
    Hm = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    scheme = enkit.SCHEMES[name]

    def loss(p):
        def model(x):
            return p[0] * x + 0.1 * jnp.sin(jnp.roll(x, 1))

        r = enkit.assimilate(model, E0, ys, scheme, h=Hm, R=enkit.Scalar(p[2], 2),
                             inflation=p[1], key=4, store=("analysis_mean",),
                             on_nonfinite="ignore")
        return jnp.sum(r.analysis_mean ** 2)

    p = jnp.array([0.9, 1.05, 0.7])
    f = jax.jit(loss)
    g = jax.jit(jax.grad(f))(p)
    assert np.all(np.isfinite(g))
    fd = central_differences(lambda q: float(f(jnp.asarray(q))), p, 1e-6, relative=True)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)
