"""A plain multilayer perceptron: a stack of dense layers, no skips, no normalisation."""

from __future__ import annotations

import jax
from flax import nnx

from avggrad.models import registry
from avggrad.parallel import shard_examples


class MLP(nnx.Module):
  """``depth`` hidden dense layers of ``width`` units and a linear classifier head.

  .. math::

    h_0 = \\mathrm{flatten}(x), \\quad h_k = \\sigma(W_k h_{k-1} + b_k), \\quad
    \\mathrm{logits} = W_{\\text{out}} h_{\\text{depth}} + b_{\\text{out}}

  Args:
    in_features: size of the flattened input.
    num_classes: number of outputs.
    depth: number of hidden layers (0 gives a linear model; 1-2 are the "shallow" models).
    width: units per hidden layer.
    activation: name of the nonlinearity (see ``avggrad.models.ACTIVATIONS``).
    kernel_init: name of the weight initialiser (see ``avggrad.models.INITIALIZERS``).
    bias_init: name of the bias initialiser.
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from avggrad.models import MLP
    >>> model = MLP(784, 10, depth=16, width=128, activation="tanh", rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((4, 28, 28, 1))).shape
    (4, 10)
  """

  def __init__(
      self,
      in_features: int,
      num_classes: int,
      *,
      depth: int,
      width: int,
      activation: str = "tanh",
      kernel_init: str = "glorot_uniform",
      bias_init: str = "zeros",
      rngs: nnx.Rngs,
  ):
    if depth < 0 or width < 1:
      raise ValueError(f"depth must be >= 0 and width >= 1, got depth={depth}, width={width}.")
    self.activation = registry.activation(activation)
    kinit = registry.initializer(kernel_init)
    binit = registry.initializer(bias_init)
    sizes = [in_features] + [width] * depth
    self.hidden = nnx.List([
        nnx.Linear(m, n, kernel_init=kinit, bias_init=binit, rngs=rngs)
        for m, n in zip(sizes[:-1], sizes[1:])
    ])
    self.head = nnx.Linear(sizes[-1], num_classes, kernel_init=kinit, bias_init=binit, rngs=rngs)
    self.in_features = in_features

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != self.in_features:
      raise ValueError(
          f"MLP expects {self.in_features} input features per example, got {x.shape[1]}."
      )
    for layer in self.hidden:
      x = shard_examples(self.activation(layer(x)))
    return self.head(x)
