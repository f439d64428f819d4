"""A small causal transformer language model: what users train today, beyond the paper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from avggrad.models import registry
from avggrad.parallel import lookup_sharding, shard_examples


class TransformerBlock(nnx.Module):
  """Pre-norm block: ``x + attention(LayerNorm(x))``, then ``x + MLP(LayerNorm(x))``."""

  def __init__(self, dim: int, heads: int, *, activation: str, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False,
                                            rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
    self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
    self.down = nnx.Linear(4 * dim, dim, rngs=rngs)
    self.activation = registry.activation(activation)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.norm1(x), mask=mask)
    return x + self.down(self.activation(self.up(self.norm2(x))))


class TransformerLM(nnx.Module):
  """Token and position embeddings, ``depth`` causal pre-norm blocks, a final LayerNorm and
  a linear head over the vocabulary: next-token logits at every position.

  Args:
    vocab_size: number of token ids.
    max_len: longest sequence (size of the position embedding).
    dim: model width.
    depth: number of blocks.
    heads: attention heads.
    activation: the MLP's nonlinearity.
    rngs: the random number generators.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from avggrad.models import TransformerLM
    >>> TransformerLM(100, 16, dim=32, depth=2, heads=2, rngs=nnx.Rngs(0))(
    ...     jnp.ones((3, 16), jnp.int32)).shape
    (3, 16, 100)
  """

  def __init__(self, vocab_size: int, max_len: int, *, dim: int = 64, depth: int = 2,
               heads: int = 4, activation: str = "gelu", rngs: nnx.Rngs):
    self.tokens = nnx.Embed(vocab_size, dim, rngs=rngs)
    self.positions = nnx.Embed(max_len, dim, rngs=rngs)
    self.blocks = nnx.List([TransformerBlock(dim, heads, activation=activation, rngs=rngs)
                            for _ in range(depth)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, vocab_size, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    h = (self.tokens(tokens, out_sharding=lookup_sharding(tokens))
         + self.positions(jnp.arange(tokens.shape[-1])))
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      h = shard_examples(block(h, mask))
    return self.head(self.norm(h))
