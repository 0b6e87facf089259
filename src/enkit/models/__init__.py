"""Toy and benchmark dynamical systems in JAX, and twin-experiment helpers."""

from enkit.models.lorenz import Lorenz63, Lorenz96
from enkit.models.twin import TwinExperiment, integrate, twin_experiment
from enkit.models import cases

__all__ = ["Lorenz63", "Lorenz96", "TwinExperiment", "cases", "integrate", "twin_experiment"]
