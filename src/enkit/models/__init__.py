"""Toy and benchmark dynamical systems in JAX, and twin-experiment helpers."""

from enkit.models.advection_diffusion import AdvectionDiffusion2D, torus_distance
from enkit.models.kuramoto_sivashinsky import KuramotoSivashinsky
from enkit.models.linear_advection import LinearAdvection, SmoothRandomField
from enkit.models.lorenz import Lorenz63, Lorenz96
from enkit.models.lorenz05 import Lorenz05
from enkit.models.lorenz96_two_scale import Lorenz96TwoScale
from enkit.models.twin import TwinExperiment, integrate, twin_experiment
from enkit.models.double_well import DoubleWell
from enkit.models.ornstein_uhlenbeck import OrnsteinUhlenbeck
from enkit.models.sde import (
    euler_maruyama_step,
    euler_maruyama_update,
    heun_step,
    heun_update,
    integrate_sde,
    milstein_step,
    milstein_update,
    sample_path,
)
from enkit.models import cases

__all__ = [
    "AdvectionDiffusion2D",
    "KuramotoSivashinsky",
    "Lorenz05",
    "Lorenz63",
    "Lorenz96",
    "Lorenz96TwoScale",
    "TwinExperiment",
    "cases",
    "integrate",
    "torus_distance",
    "twin_experiment",
    "DoubleWell",
    "OrnsteinUhlenbeck",
    "euler_maruyama_step",
    "euler_maruyama_update",
    "heun_step",
    "heun_update",
    "integrate_sde",
    "milstein_step",
    "milstein_update",
    "sample_path",
    "LinearAdvection",
    "SmoothRandomField",
]
