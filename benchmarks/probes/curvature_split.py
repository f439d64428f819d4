"""How much of the average gradient's correction is per-coordinate (diagonal) curvature.

To second order the joint (path) average gradient is g + H delta / 2 and the per-coordinate
average is g + diag(H) delta / 2 (design brief section 3). For the update Adam and RMSProp are
about to make at initialisation on two deep plain MLPs (Fashion-MNIST, batch 128), this prints
both correction terms relative to |g|; diag(H) is Hutchinson's estimate with 64 Rademacher
probes. Usage::

  python -m benchmarks.probes.curvature_split [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import avggrad
from avggrad import data, training
from benchmarks.experimental import hutchinson_diagonal


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"))
  parser.add_argument("--probes", type=int, default=64)
  args = parser.parse_args(argv)
  train = data.load("fashion_mnist", "train", data_dir=args.data_dir, limit=2000)
  xb, yb = jnp.asarray(train.x[:128]), jnp.asarray(train.y[:128])
  norm = lambda t: float(optax.tree.norm(t))
  for spec in [dict(depth=16, activation="tanh", init="glorot_uniform"),
               dict(depth=20, activation="elu", init="lecun_normal")]:
    config = training.TrainConfig(dataset="fashion_mnist", **spec)
    graphdef, params = nnx.split(training.make_model(config, train, nnx.Rngs(0)), nnx.Param)
    loss = lambda p: training.cross_entropy(nnx.merge(graphdef, p), xb, yb)
    g = jax.grad(loss)(params)
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (params,), (v,))[1])
    diag = hutchinson_diagonal(jax.grad(loss), params, jax.random.key(0), args.probes)
    for name, inner in [("adam", avggrad.adam_baseline(3e-4)),
                        ("rmsprop", avggrad.rmsprop_baseline(3e-4))]:
      delta, _ = inner.update(g, inner.init(params), params)
      joint = jax.tree.map(lambda x: 0.5 * x, hvp(delta))
      per_coordinate = jax.tree.map(lambda h, d: 0.5 * h * d, diag, delta)
      print(f"{spec['depth']}-layer {spec['activation']}, {name} update (lr 3e-4): "
            f"|H delta/2| / |g| = {norm(joint) / norm(g):.3g}, "
            f"|diag(H) delta/2| / |g| = {norm(per_coordinate) / norm(g):.3g}")


if __name__ == "__main__":
  main()
