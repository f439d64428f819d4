"""The harness's overhead: its time per run against a hand-written jitted loop (issue 33).

One user task (an NNX MLP on the embedded Fashion-MNIST subset, softmax cross-entropy,
through :func:`avggrad.custom.make_task`, the path :func:`avggrad.compare_on` takes), one
optimizer (Optax's Adam, entered as a factory), trained three ways, each ``--repeats`` times:

* **hand**: a hand-written loop, one ``jax.jit`` step (gather the minibatch, loss and
  gradient, Optax update, donated state) called per step, the losses fetched at the end: the
  shortest loop a user would write for one run;
* **hand (scan)**: the same steps in one ``lax.scan``, one jitted call for the whole run (no
  evaluation, no host round trip: the fastest a single run can go; its wall-clock includes the
  compilation, its training time is a second, compiled call);
* **harness 1x1**: :func:`avggrad.sweep.sweep` at 1 rate x 1 seed (what ``compare_on``
  runs per optimizer), evaluations every ``steps // 6`` steps as ``compare_on`` does;
* **harness 8**: the same at 4 rates x 2 seeds, one vmapped program; per run = its time / 8.

Figures per run: the training time without compilation (the harness's own time per step, which
leaves out compilation, the first chunk and the evaluations, x steps; the hand loop's steps
timed after a compiled warm-up step) and the whole wall-clock of the call (compilation, the
memory estimate and the evaluations included). Medians over the repeats. The goal (issue 33): harness 1x1 at most
1.1x the hand loop per run, harness 8 below it.

Run: ``python -m benchmarks.harness_overhead [--steps 600] [--repeats 3]``.

Measured (``nice -n 5 python -m benchmarks.harness_overhead --steps 600 --repeats 3``, a
2-core CPU shared with other jobs, load average 12-17): training s/run hand 6.35, hand (scan)
4.23, harness 1x1 3.81 (0.60x the hand loop, 0.90x the scanned one), harness 8 4.11 per run
(1.08x the harness at 1x1: on two busy cores 8 vmapped runs cost about 8 runs' compute);
wall-clock s/run 11.68, 10.10, 10.04 (0.86x), 5.57 (0.48x). The loaded machine inflates the
per-step dispatch of the hand loop; figures on an idle machine will differ.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avggrad import custom, data, loop, sweep
from avggrad.config import TrainConfig


def make_model(rngs: nnx.Rngs, width: int = 256, depth: int = 3) -> nnx.Module:
  layers = [lambda x: x.reshape(x.shape[0], -1), nnx.Linear(784, width, rngs=rngs), nnx.tanh]
  for _ in range(depth - 1):
    layers += [nnx.Linear(width, width, rngs=rngs), nnx.tanh]
  return nnx.Sequential(*layers, nnx.Linear(width, 10, rngs=rngs))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def hand_loop(task, lr: float, steps: int, batch_size: int, seed: int) -> tuple[float, float]:
  """``(training seconds without compilation, whole wall-clock)`` of the hand-written loop."""
  start = time.perf_counter()
  tx = optax.adam(lr)
  graphdef, params, rest = nnx.split(task.make_model(nnx.Rngs(seed)), nnx.Param, ...)
  state = tx.init(params)
  x_all, y_all = (jnp.asarray(a) for a in task.train)
  order = jnp.asarray(loop.batch_indices(len(task), batch_size, steps, seed))

  def step(carry, x_all, y_all, row):
    params, state = carry
    loss, grads = jax.value_and_grad(
        lambda p: cross_entropy(nnx.merge(graphdef, p, rest)(x_all[row]), y_all[row]))(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  step = jax.jit(step, donate_argnums=0)
  carry, loss = step((params, state), x_all, y_all, order[0])  # compiles; the warm-up step
  jax.block_until_ready(loss)
  tick = time.perf_counter()
  losses = [loss]
  for row in order[1:]:
    carry, loss = step(carry, x_all, y_all, row)
    losses.append(loss)
  np.asarray(jax.device_get(losses))
  end = time.perf_counter()
  return (end - tick) * steps / (steps - 1), end - start


def hand_scan(task, lr: float, steps: int, batch_size: int, seed: int) -> tuple[float, float]:
  """The same, with every step in one ``lax.scan`` of one jitted call (timed on a second
  call, after the first compiled it)."""
  start = time.perf_counter()
  tx = optax.adam(lr)
  graphdef, params, rest = nnx.split(task.make_model(nnx.Rngs(seed)), nnx.Param, ...)
  x_all, y_all = (jnp.asarray(a) for a in task.train)
  order = jnp.asarray(loop.batch_indices(len(task), batch_size, steps, seed))

  def train(params, x_all, y_all, order):
    def step(carry, row):
      params, state = carry
      loss, grads = jax.value_and_grad(lambda p: cross_entropy(
          nnx.merge(graphdef, p, rest)(x_all[row]), y_all[row]))(params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss
    return jax.lax.scan(step, (params, tx.init(params)), order)

  train = jax.jit(train)
  jax.block_until_ready(train(params, x_all, y_all, order))  # compiles
  wall = time.perf_counter() - start
  tick = time.perf_counter()
  np.asarray(jax.device_get(train(params, x_all, y_all, order)[1]))
  seconds = time.perf_counter() - tick
  return seconds, wall


def harness(task, lrs, seeds, steps: int, batch_size: int) -> tuple[float, float]:
  """``(training seconds per run without compilation, whole wall-clock per run)`` of
  :func:`avggrad.sweep.sweep` (the time per step it reports is already per run)."""
  config = TrainConfig(model="user-mlp", dataset="user", optimizer="hand-adam", steps=steps,
                       batch_size=batch_size, eval_every=max(1, steps // 6))
  start = time.perf_counter()
  runs = sweep.sweep(config, lrs, seeds, task=task, progress=False)
  wall = time.perf_counter() - start
  first = next(iter(runs.values()))
  return first.seconds_per_step * steps, wall / len(runs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  train = data.load(data.EMBEDDED, "train")
  task = custom.make_task(make_model, cross_entropy, (train.x, train.y), name="user-mlp")
  custom.register(("hand-adam", optax.adam), 0)
  lr = 1e-3
  figures: dict[str, list[tuple[float, float]]] = {"hand": [], "hand (scan)": [],
                                                   "harness 1x1": [], "harness 8": []}
  for _ in range(args.repeats):
    figures["hand"].append(hand_loop(task, lr, args.steps, args.batch_size, 0))
    figures["hand (scan)"].append(hand_scan(task, lr, args.steps, args.batch_size, 0))
    figures["harness 1x1"].append(harness(task, [lr], [0], args.steps, args.batch_size))
    figures["harness 8"].append(harness(task, [3e-4, 1e-3, 3e-3, 1e-2], [0, 1], args.steps,
                                        args.batch_size))
  device = jax.devices()[0]
  print(f"{len(train)} examples, MLP 784-256-256-256-10, batch {args.batch_size}, "
        f"{args.steps} steps, Adam; {device.platform} ({device.device_kind}), "
        f"{len(jax.devices())} device(s); medians of {args.repeats} repeats")
  print(f"{'':<12} {'train s/run':>12} {'x hand':>7} {'wall s/run':>11} {'x hand':>7}")
  hand = [statistics.median(v) for v in zip(*figures["hand"])]
  for name, values in figures.items():
    train_s, wall_s = (statistics.median(v) for v in zip(*values))
    print(f"{name:<12} {train_s:12.3f} {train_s / hand[0]:7.2f} {wall_s:11.3f} "
          f"{wall_s / hand[1]:7.2f}")
  print("train s/run: the training steps without compilation (the harness: its reported time "
        "per step x steps, which leaves out compilation, the first chunk and the evaluations); "
        "wall s/run: the whole call, compilation, the memory estimate and the evaluations "
        "(every steps/6) included")


if __name__ == "__main__":
  main()
