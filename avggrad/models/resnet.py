"""A small residual CNN with normalisation: what users train today, beyond the paper's nets."""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from avggrad.models import registry
from avggrad.parallel import shard_examples


class ResidualBlock(nnx.Module):
  """``x + GroupNorm(conv(act(GroupNorm(conv(x)))))``, then the activation (pre-addition
  normalisation, as in ResNet v1 with GroupNorm in place of BatchNorm)."""

  def __init__(self, channels: int, *, activation: str, kernel_init: str, groups: int,
               rngs: nnx.Rngs):
    init = registry.initializer(kernel_init)
    self.conv1 = nnx.Conv(channels, channels, (3, 3), kernel_init=init, rngs=rngs)
    self.norm1 = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, (3, 3), kernel_init=init, rngs=rngs)
    self.norm2 = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
    self.activation = registry.activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.activation(self.norm1(self.conv1(x)))
    return self.activation(x + self.norm2(self.conv2(h)))


class ResNet(nnx.Module):
  """A residual CNN: a strided stem, ``depth`` residual blocks (a stride-2 convolution
  between stages), global average pooling and a linear head.

  GroupNorm (no running statistics) keeps every step a pure function of the parameters and
  the batch, as the average gradient needs.

  Args:
    input_shape: ``(height, width, channels)`` of one example.
    num_classes: number of outputs.
    depth: number of residual blocks (two convolutions each).
    channels: channels of every block.
    stages: how many stages the blocks are split into (a stride-2 convolution between).
    activation: name of the nonlinearity.
    kernel_init: name of the weight initialiser.
    groups: GroupNorm groups.
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from avggrad.models import ResNet
    >>> ResNet((28, 28, 1), 10, depth=4, channels=8, rngs=nnx.Rngs(0))(
    ...     jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(self, input_shape: Sequence[int], num_classes: int, *, depth: int = 4,
               channels: int = 16, stages: int = 2, activation: str = "relu",
               kernel_init: str = "he_normal", groups: int = 4, rngs: nnx.Rngs):
    if depth < 1 or channels < groups or channels % groups:
      raise ValueError(f"ResNet needs depth >= 1 and channels divisible by groups; got "
                       f"depth={depth}, channels={channels}, groups={groups}.")
    init = registry.initializer(kernel_init)
    self.stem = nnx.Conv(input_shape[-1], channels, (3, 3), strides=(2, 2), kernel_init=init,
                         rngs=rngs)
    self.blocks = nnx.List([
        ResidualBlock(channels, activation=activation, kernel_init=kernel_init, groups=groups,
                      rngs=rngs) for _ in range(depth)])
    per_stage = max(1, -(-depth // stages))
    self.down = nnx.List([
        nnx.Conv(channels, channels, (3, 3), strides=(2, 2), kernel_init=init, rngs=rngs)
        for _ in range((depth - 1) // per_stage)])
    self.per_stage = per_stage
    self.head = nnx.Linear(channels, num_classes, rngs=rngs)
    self.activation = registry.activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.activation(self.stem(x))
    for i, block in enumerate(self.blocks):
      if i and i % self.per_stage == 0:
        h = self.activation(self.down[i // self.per_stage - 1](h))
      h = shard_examples(block(h))
    return self.head(h.mean(axis=(1, 2)))
