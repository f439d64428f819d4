"""Kinks (relu, max pooling): where the factorized estimator's error goes as the step shrinks.

A convolutional model with relu activations and max (or average) pooling, float64, a step in a
random direction at four sizes. Printed: the relative error, against a composite reference
(128 panels of 4 Gauss-Legendre nodes), of the factorized estimate, of 16-node Gauss-Legendre
quadrature and of the point gradient. 16-node quadrature stalls: the gradient jumps wherever
a unit crosses a kink along the step, and a Gauss rule converges only like 1/K on a
discontinuous integrand. Measured against 16 nodes, the factorized error therefore seems to
stop falling; against the composite reference it keeps falling (docs/factorization.md,
"Kinks").

Usage::

  python -m benchmarks.probes.kinks
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import avggrad
from benchmarks import conformance


def _rel(a, b) -> float:
  return float(optax.tree.norm(optax.tree.sub(a, b)) / optax.tree.norm(b))


def main() -> list[tuple]:
  jax.config.update("jax_enable_x64", True)
  rows = []
  print("| model | step (RMS per weight) | factorized | 16-node Gauss | point gradient |")
  print("|---|---|---|---|---|")
  for pool in ("max", "avg"):
    module = conformance._ConvPool(pool, jax.nn.relu, nnx.Rngs(0))
    case = conformance._nnx_case(module, conformance._images(16), conformance._labels(16),
                                 smooth=False)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), case.params)
    factorized = jax.jit(avggrad.value_and_average_grad(case.loss))
    gauss = jax.jit(avggrad.value_and_average_grad(case.loss, estimator="quadrature",
                                                   num_points=16))
    composite = jax.jit(lambda p, d: conformance.composite_average(case.loss, p, d))
    point = jax.grad(case.loss)(params)
    for scale in (0.04, 0.02, 0.01, 0.005):
      delta = conformance.direction(params, scale)
      exact = composite(params, delta)
      row = (f"conv, relu, {pool} pool", scale, _rel(factorized(params, delta)[1], exact),
             _rel(gauss(params, delta)[1], exact), _rel(point, exact))
      rows.append(row)
      print("| %s | %g | %.2e | %.2e | %.2e |" % row, flush=True)
  return rows


if __name__ == "__main__":
  main()
