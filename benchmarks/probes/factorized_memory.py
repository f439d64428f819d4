"""Compiled memory of the factorized estimator against jax.value_and_grad, and a floor.

Prints XLA's allocation (arguments + outputs + temporaries) for one call of

* ``jax.value_and_grad`` of a deep tanh MLP's loss;
* ``avggrad.value_and_average_grad`` (factorized) of the same loss;
* the trapezoid estimator;
* the factorized estimate of a plain tanh MLP written out by hand, keeping only what its
  backward pass needs (a midpoint input and a secant slope per layer), with the two ends
  evaluated as two chains and, alternatively, stacked into one batched chain.

The hand-written forms bound what a better interpreter could reach under XLA's CPU
scheduler: even they take 2.9-3.7x ``jax.value_and_grad``'s memory here, because the step
``delta`` is an extra parameter-sized argument, both ends' activations are live at once and
XLA does not free one end's values before the other end has caught up.

Usage::

  python -m benchmarks.probes.factorized_memory [--depth 16] [--width 128] [--batch 128]
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import avggrad
from avggrad.models import MLP
from avggrad.timing import peak_bytes


def _tanh_secant(a: jax.Array, b: jax.Array) -> jax.Array:
  d = b - a
  far = jnp.abs(d) > 1e-4
  return jnp.where(far, (jnp.tanh(b) - jnp.tanh(a)) / jnp.where(far, d, 1.0),
                   1 - jnp.tanh(0.5 * (a + b)) ** 2)


def hand_written(weights: list[jax.Array], deltas: list[jax.Array], x: jax.Array,
                 stacked: bool) -> list[jax.Array]:
  """Factorized average gradient of ``sum(tanh(... tanh(x W1) ...) Wn)^2)``, by hand."""
  ends = [w + d for w, d in zip(weights, deltas)]
  residuals = []
  if stacked:
    h = jnp.stack([x, x])
    for w0, w1 in zip(weights, ends):
      z = jnp.einsum("ebi,eij->ebj", h, jnp.stack([w0, w1]))
      residuals.append((0.5 * (h[0] + h[1]), _tanh_secant(z[0], z[1])))
      h = jnp.tanh(z)
    h0, h1 = h[0], h[1]
  else:
    h0 = h1 = x
    for w0, w1 in zip(weights, ends):
      z0, z1 = h0 @ w0, h1 @ w1
      residuals.append((0.5 * (h0 + h1), _tanh_secant(z0, z1)))
      h0, h1 = jnp.tanh(z0), jnp.tanh(z1)
  ct = h0 + h1  # the secant of the square
  grads = []
  for (mid, slope), w, d in reversed(list(zip(residuals, weights, deltas))):
    cz = ct * slope
    grads.append(mid.T @ cz)
    ct = cz @ (w + 0.5 * d).T
  return grads[::-1]


def main(argv: Any = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=16)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--batch", type=int, default=128)
  args = parser.parse_args(argv)
  model = MLP(784, 10, depth=args.depth, width=args.width, activation="tanh",
              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, 784))
  y = jax.random.randint(jax.random.PRNGKey(2), (args.batch,), 0, 10)

  def loss(p: Any) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()

  delta = jax.tree.map(lambda p: 3e-3 * jnp.sign(p), params)
  figures = {
      "jax.value_and_grad": peak_bytes(jax.value_and_grad(loss), params),
      "factorized": peak_bytes(avggrad.value_and_average_grad(loss), params, delta),
      "trapezoid": peak_bytes(avggrad.value_and_average_grad(loss, estimator="trapezoid"),
                              params, delta),
  }
  keys = jax.random.split(jax.random.PRNGKey(0), args.depth)
  weights = [jax.random.normal(k, (args.width, args.width)) / args.width ** 0.5 for k in keys]
  deltas = [3e-3 * jnp.sign(w) for w in weights]
  h = jax.random.normal(jax.random.PRNGKey(1), (args.batch, args.width))

  def plain(ws: list[jax.Array]) -> Any:
    def f(ws: list[jax.Array]) -> jax.Array:
      z = h
      for w in ws:
        z = jnp.tanh(z @ w)
      return jnp.sum(z ** 2)
    return jax.value_and_grad(f)(ws)

  hand = {
      "hand-written: jax.value_and_grad": peak_bytes(plain, weights),
      "hand-written factorized, two chains": peak_bytes(
          lambda w, d: hand_written(w, d, h, False), weights, deltas),
      "hand-written factorized, stacked ends": peak_bytes(
          lambda w, d: hand_written(w, d, h, True), weights, deltas),
  }
  print(f"{args.depth}-layer tanh MLP, width {args.width}, batch {args.batch}; "
        f"{jax.devices()[0].platform}\n")
  base = figures["jax.value_and_grad"]
  for name, b in figures.items():
    print(f"{name:<40} {b / 2**20:8.2f} MiB  x{b / base:.2f}")
  base = hand["hand-written: jax.value_and_grad"]
  for name, b in hand.items():
    print(f"{name:<40} {b / 2**20:8.2f} MiB  x{b / base:.2f}")
  return {name: float(b) for name, b in (figures | hand).items()}


if __name__ == "__main__":
  main()
