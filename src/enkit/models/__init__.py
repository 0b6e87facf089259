"""Toy and benchmark dynamical systems in JAX, and twin-experiment helpers."""

from enkit.models.lorenz import Lorenz63, Lorenz96
from enkit.models.twin import TwinExperiment, integrate, twin_experiment

__all__ = ["Lorenz63", "Lorenz96", "TwinExperiment", "integrate", "twin_experiment"]
