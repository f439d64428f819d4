"""A plain convolutional network: a stack of convolutions, no skips, no normalisation."""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from avggrad.models import registry
from avggrad.parallel import shard_examples

POOLINGS: tuple[str, ...] = ("stride", "max", "avg", "none")


class CNN(nnx.Module):
  """``depth`` convolutions (downsampling every few layers), then a linear classifier head.

  Every ``downsample_every``-th convolution halves the spatial size, by a stride of 2
  (``pooling="stride"``) or by 2x2 max or average pooling after its activation, as long as
  the feature map is larger than 2x2; ``"none"`` keeps the full resolution.

  Args:
    in_shape: ``(height, width, channels)`` of one input.
    num_classes: number of outputs.
    depth: number of convolutions (1-2 are the "shallow" models).
    channels: feature maps per convolution.
    kernel_size: size of the square kernels.
    activation: name of the nonlinearity.
    kernel_init: name of the weight initialiser.
    pooling: ``"stride"``, ``"max"``, ``"avg"`` or ``"none"``.
    downsample_every: downsample after every this many convolutions.
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from avggrad.models import CNN
    >>> model = CNN((28, 28, 1), 10, depth=6, channels=16, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
  """

  def __init__(
      self,
      in_shape: Sequence[int],
      num_classes: int,
      *,
      depth: int,
      channels: int = 32,
      kernel_size: int = 3,
      activation: str = "relu",
      kernel_init: str = "he_normal",
      pooling: str = "stride",
      downsample_every: int = 2,
      rngs: nnx.Rngs,
  ):
    if pooling not in POOLINGS:
      raise ValueError(f"Unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}.")
    if depth < 1 or channels < 1 or downsample_every < 1:
      raise ValueError("depth, channels and downsample_every must be positive.")
    height, width, features = in_shape
    self.activation = registry.activation(activation)
    kinit = registry.initializer(kernel_init)
    convs, plan = [], []
    for i in range(depth):
      down = pooling != "none" and (i + 1) % downsample_every == 0 and min(height, width) > 2
      stride = 2 if down and pooling == "stride" else 1
      convs.append(
          nnx.Conv(
              features, channels, (kernel_size, kernel_size), strides=stride,
              padding="SAME", kernel_init=kinit, rngs=rngs,
          )
      )
      plan.append(pooling if down and pooling in ("max", "avg") else "")
      if down:
        height, width = -(-height // 2), -(-width // 2)
      features = channels
    self.convs = nnx.List(convs)
    self.pool_plan = tuple(plan)
    self.in_shape = tuple(in_shape)
    self.head = nnx.Linear(height * width * channels, num_classes, kernel_init=kinit, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if tuple(x.shape[1:]) != self.in_shape:
      raise ValueError(f"CNN expects inputs of shape (N, {self.in_shape}), got {x.shape}.")
    for conv, pool in zip(self.convs, self.pool_plan):
      x = self.activation(conv(x))
      if pool == "max":
        x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
      elif pool == "avg":
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
      x = shard_examples(x)
    return self.head(x.reshape(x.shape[0], -1))
