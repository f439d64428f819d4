"""``avggrad.auto``'s curvature: the difference of two float32 losses against the second
directional derivative (issue 32, item 5).

``curvature``: on a plain tanh MLP (Fashion-MNIST, 16 layers of 128, Glorot uniform, the
measurement's quarter of a 128 batch), the curvature per unit scale ``c = u'Hu`` along the
first Adam step ``u`` at a 1e-5 rate, computed four ways: the old form ``2 (L(w+u) - L(w) +
p)`` and ``jax.jvp`` of ``jax.jvp``, each in float32 and float64; and ``s* = p / c``.
``ramp``: ``auto_adam`` from small initial rates, with only the curvature's computation
swapped (the old difference form patched in), the effective rate ``scale x rate`` along the
first steps and the training loss at the end. ``cost``: the time of one training step
(gradient, update, apply; jitted) of Adam and of ``auto_adam`` with either curvature, timed
interleaved in one process (median of rounds). Usage::

  python -m benchmarks.probes.auto_curvature curvature [--data-dir ../shared/data]
  python -m benchmarks.probes.auto_curvature ramp [--steps 200] [--seeds 0 1]
  python -m benchmarks.probes.auto_curvature cost [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import avggrad
from avggrad import data, step_length


def _mlp(key, sizes, dtype):
  params = []
  for m, n in zip(sizes[:-1], sizes[1:]):
    key, sub = jax.random.split(key)
    limit = np.sqrt(6.0 / (m + n))
    params.append({"w": jax.random.uniform(sub, (m, n), dtype, -limit, limit),
                   "b": jnp.zeros((n,), dtype)})
  return params


def _apply(params, x):
  x = x.reshape(x.shape[0], -1)
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _loss(params, batch):
  x, y = batch
  return optax.softmax_cross_entropy_with_integer_labels(_apply(params, x), y).mean()


def _old_measure(value_fn, params, direction, scale):
  """The curvature as it was before issue 32: from the loss change over the step."""
  step = jax.tree.map(lambda d: (scale * d).astype(d.dtype), direction)
  loss0, derivative = jax.jvp(value_fn, (params,), (step,))
  far = value_fn(jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, step))
  safe = jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)
  curvature = 2.0 * (far - loss0 - derivative) / jnp.square(safe)
  return (-derivative / safe).astype(jnp.float32), curvature.astype(jnp.float32), far


def curvature(train, lr=1e-5):
  jax.config.update("jax_enable_x64", True)
  sizes = [784] + [128] * 15 + [10]
  params = _mlp(jax.random.PRNGKey(0), sizes, jnp.float32)
  x, y = jnp.asarray(train.x[:128]), jnp.asarray(train.y[:128])
  g = jax.grad(_loss)(params, (x, y))
  tx = avggrad.adam_baseline(lr)
  u, _ = tx.update(g, tx.init(params), params)
  quarter = (x[::4], y[::4])
  print(f"tanh MLP 16x128, Fashion-MNIST, Adam's first step at rate {lr:g}, 32 examples")
  for dtype in (jnp.float32, jnp.float64):
    cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)  # noqa: E731
    loss = lambda p: _loss(p, (quarter[0].astype(dtype), quarter[1]))  # noqa: E731
    p, u_ = cast(params), cast(u)
    one = jnp.asarray(1.0, dtype)
    for name, fn in (("loss difference", _old_measure), ("auto (hybrid)", step_length._measure)):
      slope, curv, _ = fn(loss, p, u_, one)
      print(f"  {jnp.dtype(dtype).name:8s} {name:16s} p = {float(slope):.4g}  "
            f"c = {float(curv):.4g}  s* = p/c = {float(slope) / float(curv):.4g}")


def ramp(train, steps, seeds, rates=(1e-5, 1e-4)):
  sizes = [784] + [128] * 15 + [10]
  x_all, y_all = jnp.asarray(train.x), jnp.asarray(train.y)
  marks = [m for m in (10, 25, 50, 100, 150, 200, 400) if m <= steps]
  print(f"auto_adam on the tanh MLP 16x128, Fashion-MNIST batch 128, {steps} steps; "
        f"effective rate (scale x rate) after {marks} steps; mean training loss of the last "
        f"20 steps")
  for form, measure in (("loss difference", _old_measure), ("auto (hybrid)", step_length._measure)):
    step_length._measure = measure
    try:
      for rate in rates:
        for seed in seeds:
          params = _mlp(jax.random.PRNGKey(seed), sizes, jnp.float32)
          tx = avggrad.auto_adam(rate)
          state = tx.init(params)

          @jax.jit
          def step(p, s, batch):
            grad = jax.grad(_loss)(p, batch)
            updates, s = tx.update(grad, s, p, value_fn=_loss, batch=batch, grad=grad)
            return optax.apply_updates(p, updates), s, _loss(p, batch)

          rng = np.random.default_rng(seed)
          rates_at, losses = {}, []
          start = time.perf_counter()
          for t in range(1, steps + 1):
            idx = rng.integers(0, len(train), 128)
            params, state, loss = step(params, state, (x_all[idx], y_all[idx]))
            losses.append(float(loss))
            if t in marks:
              rates_at[t] = float(state.scale) * rate
          print(f"  {form:16s} rate {rate:g} seed {seed}: "
                + " ".join(f"{rates_at[m]:.2e}" for m in marks)
                + f"  loss {np.mean(losses[-20:]):.4f}  ({time.perf_counter() - start:.0f} s)")
    finally:
      step_length._measure = _new


_new = step_length._measure


def cost(train, steps, rounds=7):
  sizes = [784] + [128] * 15 + [10]
  params = _mlp(jax.random.PRNGKey(0), sizes, jnp.float32)
  batch = (jnp.asarray(train.x[:128]), jnp.asarray(train.y[:128]))
  steppers = {}
  for name, measure in (("adam", None), ("auto, loss difference", _old_measure),
                        ("auto (hybrid)", _new)):
    step_length._measure = measure or _new
    tx = avggrad.adam_baseline(1e-3) if measure is None else avggrad.auto_adam(1e-3)

    def one(p, s, tx=tx):
      grad = jax.grad(_loss)(p, batch)
      updates, s = tx.update(grad, s, p, value_fn=_loss, batch=batch, grad=grad)
      return optax.apply_updates(p, updates), s

    def many(p, s, one=one):
      return jax.lax.fori_loop(0, steps, lambda _, c: one(*c), (p, s))

    steppers[name] = (jax.jit(many), tx.init(params))
    jax.block_until_ready(steppers[name][0](params, steppers[name][1]))  # compile now
  step_length._measure = _new
  times = {name: [] for name in steppers}
  for _ in range(rounds):
    for name, (fn, state) in steppers.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(params, state))
      times[name].append((time.perf_counter() - start) / steps)
  adam = float(np.median(times["adam"]))
  print(f"one step, tanh MLP 16x128, batch 128 (measured on 32), median of {rounds} rounds of "
        f"{steps} steps, interleaved:")
  for name, t in times.items():
    print(f"  {name:24s} {1e3 * float(np.median(t)):.2f} ms  ({float(np.median(t)) / adam:.2f}x "
          f"Adam)")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("part", choices=["curvature", "ramp", "cost"])
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"))
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  args = parser.parse_args(argv)
  train = data.load("fashion_mnist", "train", data_dir=args.data_dir, limit=10000)
  if args.part == "curvature":
    curvature(train)
  elif args.part == "cost":
    cost(train, args.steps or 50)
  else:
    ramp(train, args.steps or 200, args.seeds)


if __name__ == "__main__":
  main()
