"""Deep plain text classifiers for IMDb: token embedding, then a deep MLP or 1-D CNN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from avggrad.models import registry
from avggrad.models.mlp import MLP
from avggrad.parallel import lookup_sharding, shard_examples

KINDS: tuple[str, ...] = ("mlp", "conv")


class TextModel(nnx.Module):
  """A token embedding followed by a deep plain network and a classifier head.

  * ``kind="mlp"``: the mean of the embeddings of the non-padding tokens, then an
    :class:`~avggrad.models.MLP` with ``depth`` hidden layers;
  * ``kind="conv"``: ``depth`` 1-D convolutions over the sequence (stride 2 every second
    layer), then the mean over positions and a linear head.

  No skips and no normalisation in either.

  Args:
    vocab_size: number of token ids (including the padding and out-of-vocabulary ids).
    num_classes: number of outputs.
    kind: ``"mlp"`` or ``"conv"``.
    embed_dim: embedding size.
    depth: number of hidden layers or convolutions.
    width: units or channels per layer.
    kernel_size: width of the 1-D kernels (``"conv"`` only).
    activation: name of the nonlinearity.
    kernel_init: name of the weight initialiser.
    pad_id: the padding token id (ignored by the mean of ``"mlp"``).
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from avggrad.models import TextModel
    >>> model = TextModel(1000, 2, kind="conv", depth=4, width=16, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((3, 64), jnp.int32)).shape
    (3, 2)
  """

  def __init__(
      self,
      vocab_size: int,
      num_classes: int = 2,
      *,
      kind: str = "mlp",
      embed_dim: int = 64,
      depth: int = 8,
      width: int = 128,
      kernel_size: int = 5,
      activation: str = "tanh",
      kernel_init: str = "glorot_uniform",
      pad_id: int = 0,
      rngs: nnx.Rngs,
  ):
    if kind not in KINDS:
      raise ValueError(f"Unknown text model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    self.kind = kind
    self.pad_id = pad_id
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    self.activation = registry.activation(activation)
    kinit = registry.initializer(kernel_init)
    if kind == "mlp":
      self.body = MLP(
          embed_dim, num_classes, depth=depth, width=width, activation=activation,
          kernel_init=kernel_init, rngs=rngs,
      )
    else:
      sizes = [embed_dim] + [width] * depth
      self.convs = nnx.List([
          nnx.Conv(m, n, (kernel_size,), strides=2 if i % 2 == 1 else 1, padding="SAME",
                   kernel_init=kinit, rngs=rngs)
          for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]))
      ])
      self.head = nnx.Linear(sizes[-1], num_classes, kernel_init=kinit, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(
          f"TextModel expects integer token ids of shape (N, length), got {tokens.shape} "
          f"{tokens.dtype}."
      )
    x = self.embed(tokens, out_sharding=lookup_sharding(tokens))
    if self.kind == "mlp":
      mask = (tokens != self.pad_id)[..., None].astype(x.dtype)
      pooled = (x * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
      return self.body(pooled)
    for conv in self.convs:
      x = shard_examples(self.activation(conv(x)))
    return self.head(x.mean(axis=1))
