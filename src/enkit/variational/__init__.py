"""Variational data assimilation: 3D-Var and incremental 4D-Var.

Both work in the control variable v with ``x₀ = x_b + B^{1/2} v`` (B's
``colorize``), so the background term is ``½‖v‖²``. ``var3d`` minimises the
full nonlinear cost with optax's L-BFGS; ``var4d`` runs Gauss–Newton outer
loops (the tangent linear model by ``jax.linearize``, the adjoint by
``jax.linear_transpose``, i.e. reverse-mode autodiff of the JAX model) with
CG inner solves, strong-constraint by default and weak-constraint with a
model-error covariance Q. ``var4d_cycle`` cycles windows in one compiled
scan, each background the previous analysis (static B). ``e3dvar`` builds
the hybrid ensemble-3D-Var analysis scheme (ADAO's E3DVAR): a base ensemble
analysis recentred on the 3D-Var mean with the covariance (1 − a) B + a P_e.
``envar`` (3-D) and ``envar4d`` (one window) / ``envar4d_cycle`` are the
ensemble-variational analyses in ensemble space (the IEnKF and the iEnKS).
"""

from enkit.variational.var3d import Var3DResult, var3d
from enkit.variational.var4d import Var4DResult, var4d
from enkit.variational.cycle import Var4DCycleResult, var4d_cycle
from enkit.variational.e3dvar import E3DVar, e3dvar
from enkit.variational.envar import EnVar4DResult, envar, envar4d, envar4d_cycle

__all__ = ["E3DVar", "EnVar4DResult", "Var3DResult", "Var4DCycleResult", "Var4DResult",
           "e3dvar", "envar", "envar4d", "envar4d_cycle", "var3d", "var4d", "var4d_cycle"]
