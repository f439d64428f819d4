"""Error of the estimators against 16-node quadrature as the step shrinks (float64).

Prints, for a small MLP with several activations and a random step direction, the relative
error of the point gradient, the trapezoid rule and the factorized estimator at step scales
0.2, 0.1, 0.05, 0.025. Usage::

  python -m benchmarks.probes.estimator_order
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import avggrad  # noqa: E402


def _mlp(key, sizes):
  params = []
  for m, n in zip(sizes[:-1], sizes[1:]):
    key, sub = jax.random.split(key)
    params.append({"w": jax.random.normal(sub, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)})
  return params


def _apply(params, x, act):
  for layer in params[:-1]:
    x = act(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def main() -> None:
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 10))
  y = jax.random.randint(jax.random.PRNGKey(2), (32,), 0, 5)
  params = _mlp(jax.random.PRNGKey(0), [10, 16, 16, 16, 5])
  direction = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(3), p.shape), params)
  print("4-layer MLP 10-16-16-16-5, batch 32, softmax cross-entropy, float64;")
  print("relative L2 error against 16-node Gauss-Legendre quadrature\n")
  print(f"{'activation':<10} {'step':>6} {'point':>9} {'trapezoid':>10} {'factorized':>11}")
  for name in ["tanh", "sigmoid", "elu", "gelu", "relu"]:
    act = getattr(jax.nn, name) if name != "tanh" else jnp.tanh

    def loss(p, act=act):
      return optax.softmax_cross_entropy_with_integer_labels(_apply(p, x, act), y).mean()

    exact_fn = jax.jit(avggrad.value_and_average_grad(loss, estimator="quadrature",
                                                      num_points=16))
    trap_fn = jax.jit(avggrad.value_and_average_grad(loss, estimator="trapezoid"))
    fact_fn = jax.jit(avggrad.value_and_average_grad(loss))
    point = jax.grad(loss)(params)
    for scale in [0.2, 0.1, 0.05, 0.025]:
      delta = jax.tree.map(lambda d: scale * d, direction)
      exact = exact_fn(params, delta)[1]
      rel = lambda a: float(optax.tree.norm(optax.tree.sub(a, exact)) / optax.tree.norm(exact))
      print(f"{name:<10} {scale:6.3f} {rel(point):9.2e} {rel(trap_fn(params, delta)[1]):10.2e} "
            f"{rel(fact_fn(params, delta)[1]):11.2e}")


if __name__ == "__main__":
  main()
