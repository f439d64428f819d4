"""Cost of the average gradient: estimator time vs jax.value_and_grad, and optimizer steps.

Prints, for one deep plain MLP (default: 16 tanh layers of 128 units, batch 128, MNIST-sized
inputs), the time and compiled memory of

* each estimator of ``avggrad.value_and_average_grad`` against ``jax.value_and_grad``;
* one full training step (gradient, ``tx.update``, apply) of each optimizer against the
  same-core RMSProp baseline step,

all measured in this one process, interleaved, as medians. Usage::

  python -m benchmarks.step_cost [--depth 16] [--width 128] [--batch 128] [--json out]
      [--optimizers far_end point ...] [--no-estimators]
"""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import avggrad
from avggrad.models import MLP
from avggrad.timing import interleaved_seconds, peak_bytes


def optimizers() -> dict[str, optax.GradientTransformation]:
  lr = 1e-3
  paper = dict(combine="replace", span=1.0)  # the paper's form of AvgGrad-RMSProp
  return {
      "rmsprop_baseline": avggrad.rmsprop_baseline(lr),
      "avg_rmsprop paper form": avggrad.rmsprop(lr, **paper),
      "avg_rmsprop paper form, previous": avggrad.rmsprop(lr, update_range="previous", **paper),
      "avg_rmsprop default": avggrad.rmsprop(lr),
      "avg_rmsprop accumulate=point, trapezoid": avggrad.rmsprop(
          lr, accumulate="point", estimator="trapezoid"),
      "adam_baseline": avggrad.adam_baseline(lr),
      "avg_adam default": avggrad.adam(lr),
      "avg_adam full batch (trapezoid)": avggrad.adam(lr, far_batch_fraction=None),
      "avg_adam accumulate=point": avggrad.adam(lr, accumulate="point"),
      "avg_adam far end on 1/4 batch": avggrad.adam(lr, far_batch_fraction=0.25),
      "avg_adam far end on 1/8 batch": avggrad.adam(lr, far_batch_fraction=0.125),
      "avg_adam far end bfloat16": avggrad.adam(lr, far_dtype="bfloat16"),
      "avg_adam factorized": avggrad.adam(lr, estimator="factorized"),
      "avg_adam previous": avggrad.adam(lr, update_range="previous"),
      "optax.rmsprop": optax.rmsprop(lr),
      "optax.adam": optax.adam(lr),
  }


def main(argv: Any = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=16)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--activation", default="tanh")
  parser.add_argument("--number", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--json", help="also write the figures to this JSON file")
  parser.add_argument("--optimizers", nargs="*", default=None,
                      help="time only the train steps whose names contain one of these")
  parser.add_argument("--no-estimators", action="store_true",
                      help="skip the estimator table")
  args = parser.parse_args(argv)

  model = MLP(784, 10, depth=args.depth, width=args.width, activation=args.activation,
              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, 784))
  y = jax.random.randint(jax.random.PRNGKey(2), (args.batch,), 0, 10)

  def batch_loss(p: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    logits = nnx.merge(graphdef, p)(batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  def loss(p: Any) -> jax.Array:
    return batch_loss(p, (x, y))

  # A realistic step: RMSProp's first step is ~3e-3 per weight at lr 1e-3.
  delta = jax.tree.map(lambda p: 3e-3 * jnp.sign(p), params)
  estimators = {"jax.value_and_grad": (jax.jit(jax.value_and_grad(loss)), (params,))}
  for name in ("factorized", "trapezoid", "quadrature"):
    fn = avggrad.value_and_average_grad(loss, estimator=name, num_points=3)
    estimators[f"{name}" + (" (3 nodes)" if name == "quadrature" else "")] = (
        jax.jit(fn), (params, delta)
    )
  if args.no_estimators:
    estimators = {}
  est_times = interleaved_seconds(list(estimators.values()), number=args.number,
                                  repeats=args.repeats) if estimators else []
  est_mem = [peak_bytes(fn, *a) for fn, a in estimators.values()]

  steps = {}
  chosen = {n: tx for n, tx in optimizers().items()
            if not args.optimizers or n in ("rmsprop_baseline", "adam_baseline", "optax.adam")
            or any(k in n for k in args.optimizers)}
  for name, tx in chosen.items():
    tx = optax.with_extra_args_support(tx)

    def step(p, s, x, y, tx=tx):
      value, grads = jax.value_and_grad(batch_loss)(p, (x, y))
      updates, s = tx.update(grads, s, p, value_fn=batch_loss, batch=(x, y))
      return optax.apply_updates(p, updates), s, value
    steps[name] = (jax.jit(step), (params, tx.init(params), x, y))
  step_times = interleaved_seconds(list(steps.values()), number=args.number,
                                   repeats=args.repeats)
  step_mem = [peak_bytes(fn, *a) for fn, a in steps.values()]

  device = jax.devices()[0]
  header = (f"{args.depth}-layer {args.activation} MLP, width {args.width}, batch "
            f"{args.batch}; {device.platform} ({getattr(device, 'device_kind', '')}), "
            f"{platform.processor() or platform.machine()}")
  print(header)
  if estimators:
    print(f"\n{'estimator':<40} {'ms':>8} {'x vg':>7} {'MiB':>8} {'x vg':>7}")
    base_t, base_m = est_times[0], est_mem[0]
    for (name, _), t, m in zip(estimators.items(), est_times, est_mem):
      print(f"{name:<40} {1e3 * t:8.2f} {t / base_t:7.2f} {m / 2**20:8.2f} {m / base_m:7.2f}")
  print(f"\n{'train step':<44} {'ms':>8} {'x rms':>7} {'x adam':>7} {'x optax.adam':>13} "
        f"{'MiB':>8} {'x rms':>7}")
  base_t, base_m = step_times[0], step_mem[0]
  adam_t = step_times[list(steps).index("adam_baseline")]
  optax_adam_t = step_times[list(steps).index("optax.adam")]
  for (name, _), t, m in zip(steps.items(), step_times, step_mem):
    print(f"{name:<44} {1e3 * t:8.2f} {t / base_t:7.2f} {t / adam_t:7.2f} "
          f"{t / optax_adam_t:13.2f} {m / 2**20:8.2f} {m / base_m:7.2f}")
  result = {
      "config": vars(args) | {"device": str(device), "platform": device.platform},
      "estimators": {n: {"seconds": t, "bytes": m}
                     for n, t, m in zip(estimators, est_times, est_mem)},
      "steps": {n: {"seconds": t, "bytes": m} for n, t, m in zip(steps, step_times, step_mem)},
  }
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
