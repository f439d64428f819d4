"""Cost of the average gradient: estimator time vs jax.value_and_grad, and optimizer steps.

Prints, for one deep plain MLP (default: 16 tanh layers of 128 units, batch 128, on the
embedded Fashion-MNIST subset), the time and compiled memory of

* each estimator of ``avggrad.value_and_average_grad`` against ``jax.value_and_grad``;
* one training step of each optimizer, the step every run takes
  (:func:`avggrad.training.update_step`, timed by :func:`avggrad.timing.step_seconds`):
  registry specs (:mod:`avggrad.optimizers`), the paper's form built from
  :data:`avggrad.PAPER_FORM`, against the same-core RMSProp and Adam and Optax's own,

all measured in this one process, interleaved, as medians. Usage::

  python -m benchmarks.step_cost [--depth 16] [--width 128] [--batch 128] [--json out]
      [--optimizers "1/4" "whole" ...] [--no-estimators]
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
from avggrad import data, timing, training
from avggrad.models import MLP

PAPER_SPEC = "avg-rmsprop:" + ",".join(
    f"{k}={v}" for k, v in ({"momentum": 0} | dict(avggrad.PAPER_FORM)).items())
"""The paper's AvgGrad-RMSProp as a registry spec: ``avg-rmsprop`` (eps 1e-7 outside the
root) without momentum, with :data:`avggrad.PAPER_FORM` (factorized estimator, span 1,
``replace``, the average accumulator)."""

STEPS: dict[str, str] = {
    "rmsprop (same-core baseline)": "rmsprop",
    "optax.rmsprop": "optax-rmsprop",
    "AvgGrad-RMSProp, the paper's form (PAPER_FORM)": PAPER_SPEC,
    "AvgGrad-RMSProp, the paper's form, previous step's range":
        PAPER_SPEC + ",update_range=previous",
    "avg-rmsprop (registry: momentum 0.9, trapezoid, accelerate)": "avg-rmsprop",
    "adam (same-core baseline)": "adam",
    "optax.adam": "optax-adam",
    "avggrad.adam, far end on 1/4 batch (the default with batch=)": "avg-adam",
    "avggrad.adam, far end on 1/8 batch": "avg-adam:far_batch_fraction=0.125",
    "avggrad.adam, far end on the whole batch": "avg-adam:far_batch_fraction=1",
    "avggrad.adam, whole batch, bfloat16 far end":
        "avg-adam:far_batch_fraction=1,far_dtype=bfloat16",
    "avggrad.adam, factorized estimator": "avg-adam:estimator=factorized",
    "avggrad.adam, accumulate=point": "avg-adam:accumulate=point",
    "avggrad.adam, previous step's range": "avg-adam:update_range=previous",
}
"""The timed train steps: label -> registry spec."""

ALWAYS = ("rmsprop (same-core baseline)", "adam (same-core baseline)", "optax.adam")
"""The references every selection keeps (the table's ratios are to them)."""


def estimator_table(config: training.TrainConfig, number: int, repeats: int
                    ) -> dict[str, dict[str, float]]:
  """Time and memory of each estimator of ``avggrad.value_and_average_grad`` and of
  ``jax.value_and_grad`` on one batch of ``config``'s MLP, for a realistic step (3e-3 per
  weight, RMSProp's first step at lr 1e-3)."""
  model = MLP(784, 10, depth=config.depth, width=config.width,
              activation=config.activation, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.random.uniform(jax.random.PRNGKey(1), (config.batch_size, 784))
  y = jax.random.randint(jax.random.PRNGKey(2), (config.batch_size,), 0, 10)

  def loss(p: Any) -> jax.Array:
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  delta = jax.tree.map(lambda p: 3e-3 * jnp.sign(p), params)
  calls = {"jax.value_and_grad": (jax.jit(jax.value_and_grad(loss)), (params,))}
  for name in ("factorized", "trapezoid", "quadrature"):
    fn = avggrad.value_and_average_grad(loss, estimator=name, num_points=3)
    calls[name + (" (3 nodes)" if name == "quadrature" else "")] = (jax.jit(fn), (params, delta))
  seconds = timing.interleaved_seconds(list(calls.values()), number=number, repeats=repeats)
  return {name: {"seconds": t, "bytes": timing.peak_bytes(fn, *args)}
          for (name, (fn, args)), t in zip(calls.items(), seconds)}


def step_table(config: training.TrainConfig, labels: list[str], repeats: int
               ) -> dict[str, dict[str, Any]]:
  """Seconds and compiled bytes per training step of each labelled spec (:data:`STEPS`)."""
  train_data = data.load(data.EMBEDDED, "train")
  specs = [STEPS[label] for label in labels]
  measured = timing.step_seconds(config, specs, train_data, memory=True, repeats=repeats)
  return {label: {"spec": spec, "seconds": measured[spec]["seconds_per_step"],
                  "bytes": measured[spec]["bytes"]} for label, spec in zip(labels, specs)}


def print_tables(header: str, estimators: dict[str, dict], steps: dict[str, dict]) -> None:
  print(header)
  if estimators:
    print(f"\n{'estimator':<40} {'ms':>8} {'x vg':>7} {'MiB':>8} {'x vg':>7}")
    base = estimators["jax.value_and_grad"]
    for name, e in estimators.items():
      print(f"{name:<40} {1e3 * e['seconds']:8.2f} {e['seconds'] / base['seconds']:7.2f} "
            f"{e['bytes'] / 2**20:8.2f} {e['bytes'] / base['bytes']:7.2f}")
  rms, adam, optax_adam = (steps[label] for label in ALWAYS)
  print(f"\n{'train step':<64} {'ms':>8} {'x rms':>7} {'x adam':>7} {'x optax.adam':>13} "
        f"{'MiB':>8} {'x rms':>7}")
  for name, s in steps.items():
    t, m = s["seconds"], s["bytes"]
    print(f"{name:<64} {1e3 * t:8.2f} {t / rms['seconds']:7.2f} {t / adam['seconds']:7.2f} "
          f"{t / optax_adam['seconds']:13.2f} {m / 2**20:8.2f} {m / rms['bytes']:7.2f}")


def main(argv: Any = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=16)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--activation", default="tanh")
  parser.add_argument("--number", type=int, default=20, help="estimator calls per turn")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--json", help="also write the figures to this JSON file")
  parser.add_argument("--optimizers", nargs="*", default=None,
                      help="time only the train steps whose labels contain one of these "
                           f"(and always {', '.join(ALWAYS)})")
  parser.add_argument("--no-estimators", action="store_true",
                      help="skip the estimator table")
  args = parser.parse_args(argv)
  config = training.TrainConfig(model="mlp", depth=args.depth, width=args.width,
                                batch_size=args.batch, activation=args.activation)
  estimators = {} if args.no_estimators else estimator_table(config, args.number, args.repeats)
  labels = [label for label in STEPS if not args.optimizers or label in ALWAYS
            or any(k in label for k in args.optimizers)]
  steps = step_table(config, labels, args.repeats)
  device = jax.devices()[0]
  print_tables(f"{args.depth}-layer {args.activation} MLP, width {args.width}, batch "
               f"{args.batch}; {device.platform} ({getattr(device, 'device_kind', '')}), "
               f"{platform.processor() or platform.machine()}", estimators, steps)
  result = {"config": vars(args) | {"device": str(device), "platform": device.platform},
            "estimators": estimators, "steps": steps}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
