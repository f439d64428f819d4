"""Small networks written directly in JAX, independent of avggrad's own models."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def mlp_params(key: jax.Array, sizes: list[int], dtype=jnp.float32) -> list[dict]:
  params = []
  for m, n in zip(sizes[:-1], sizes[1:]):
    key, sub = jax.random.split(key)
    w = jax.random.normal(sub, (m, n), dtype) / float(np.sqrt(m))
    params.append({"w": w, "b": jnp.full((n,), 0.1, dtype)})
  return params


def mlp_apply(params: list[dict], x: jax.Array, act: Callable) -> jax.Array:
  for layer in params[:-1]:
    x = act(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def cnn_params(key: jax.Array, dtype=jnp.float32) -> dict:
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "c1": jax.random.normal(k1, (3, 3, 1, 4), dtype) / 3.0,
      "c2": jax.random.normal(k2, (3, 3, 4, 4), dtype) / 6.0,
      "out": jax.random.normal(k3, (16, 3), dtype) / 4.0,
  }


def cnn_apply(params: dict, x: jax.Array, pool: str = "max") -> jax.Array:
  """conv-tanh, max- (or average-) pool, conv-sigmoid, average-pool, dense; (N, 8, 8, 1)."""
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.lax.conv_general_dilated(x, params["c1"], (1, 1), "SAME", dimension_numbers=dn)
  h = jnp.tanh(h)
  if pool == "max":
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  else:
    h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
  h = jax.lax.conv_general_dilated(h, params["c2"], (1, 1), "SAME", dimension_numbers=dn)
  h = jax.nn.sigmoid(h)
  h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
  return h.reshape(h.shape[0], -1) @ params["out"]


def classification_loss(apply: Callable, x: jax.Array, y: jax.Array) -> Callable:
  def loss(params: Any) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()

  return loss


def rel_error(a: Any, b: Any) -> float:
  return float(optax.tree.norm(optax.tree.sub(a, b)) / optax.tree.norm(b))


def random_like(key: jax.Array, tree: Any, scale: float = 1.0) -> Any:
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef,
      [scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)],
  )
