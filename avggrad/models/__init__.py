"""Flax NNX models: deep networks without skip connections or normalisation (the paper's
kind: :class:`MLP`, :class:`CNN`, :class:`TextModel`), and two of the kind users train today
(:class:`ResNet`, :class:`TransformerLM`)."""

from avggrad.models.cnn import CNN, POOLINGS
from avggrad.models.mlp import MLP
from avggrad.models.registry import ACTIVATIONS, INITIALIZERS, activation, initializer
from avggrad.models.resnet import ResNet
from avggrad.models.text import KINDS, TextModel
from avggrad.models.transformer import TransformerLM

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "INITIALIZERS",
    "KINDS",
    "MLP",
    "POOLINGS",
    "ResNet",
    "TextModel",
    "TransformerLM",
    "activation",
    "initializer",
]
