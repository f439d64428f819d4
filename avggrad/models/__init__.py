"""Flax NNX models of deep networks without skip connections or normalisation."""

from avggrad.models.cnn import CNN, POOLINGS
from avggrad.models.mlp import MLP
from avggrad.models.registry import ACTIVATIONS, INITIALIZERS, activation, initializer
from avggrad.models.text import KINDS, TextModel

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "INITIALIZERS",
    "KINDS",
    "MLP",
    "POOLINGS",
    "TextModel",
    "activation",
    "initializer",
]
