"""Flax NNX models: deep networks without skip connections or normalisation (the paper's
kind: :class:`MLP`, :class:`CNN`, :class:`TextModel`), and two of the kind users train today
(:class:`ResNet`, :class:`TransformerLM`).

They are plain Flax modules under any mesh a user sets (``jax.set_mesh`` with ``Auto`` or
``Explicit`` axes, ``jax.shard_map``): only inside the training loop's step
(:meth:`avggrad.parallel.DataParallel.tracing`) do they pin their hidden activations to the
``data`` axis (:func:`avggrad.parallel.shard_examples`)."""

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
