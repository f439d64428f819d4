"""Estimator fidelity on the benchmark models at the step sizes training actually takes.

For each model: train with RMSProp (same core) for a while, in the package's own training loop
(:func:`avggrad.training.run_loop`, shuffled epochs); at several checkpoints take the update the
optimizer is about to make (RMSProp's, and Adam's from an Adam run), scale it by the
spans the optimizers use, and compare the factorized and trapezoid estimators (and the point
gradient) with the exact average gradient (16-node Gauss-Legendre quadrature): relative L2
error, cosine similarity, and the error of the predicted loss change ``avg_grad . delta``
against the actual one. Also times each estimator against ``jax.value_and_grad``.

Usage::

  python -m benchmarks.probes.estimator_accuracy [--models mlp16-tanh,cnn12-relu,...] [--quick]

writes ``benchmarks/results/estimators/estimators.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import avggrad
from avggrad import parallel, training
from benchmarks import run as run_lib
from avggrad.timing import interleaved_seconds

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/

MODELS: dict[str, dict[str, Any]] = {
    "mlp16-tanh": dict(dataset="fashion_mnist", model="mlp", depth=16, activation="tanh",
                       init="glorot_uniform"),
    "mlp12-sigmoid": dict(dataset="fashion_mnist", model="mlp", depth=12, activation="sigmoid",
                          init="glorot_uniform"),
    "mlp20-elu": dict(dataset="fashion_mnist", model="mlp", depth=20, activation="elu",
                      init="lecun_normal"),
    "cnn8-relu": dict(dataset="fashion_mnist", model="cnn", depth=8, channels=16,
                      activation="relu", init="he_normal"),
    "text-mlp8-tanh": dict(dataset="imdb_reviews", model="text-mlp", depth=8, width=128,
                           activation="tanh", init="glorot_uniform"),
}


def _rel(a: Any, b: Any) -> float:
  return float(optax.tree.norm(optax.tree.sub(a, b)) / optax.tree.norm(b))


def _cos(a: Any, b: Any) -> float:
  return float(optax.tree.vdot(a, b) / (optax.tree.norm(a) * optax.tree.norm(b)))


def state_at(config: training.TrainConfig, train_data: Any, step: int
             ) -> tuple[Any, Any, tuple[jax.Array, jax.Array]]:
  """``(params, opt_state)`` of ``config``'s run after ``step`` steps of the shared training
  loop (:func:`avggrad.training.run_loop`, shuffled epochs) and the minibatch of its next
  step."""
  indices = training.batch_indices(len(train_data.y), config.batch_size, step + 1, config.seed)
  dp = parallel.DataParallel(None)
  program, _ = training.single_program(config, train_data, dp)
  carry = program.carry
  if step:
    run = dataclasses.replace(config, steps=step, eval_every=step)
    eval_data = (train_data.x[:config.batch_size], train_data.y[:config.batch_size])
    carry = training.run_loop(run, program, indices[:step], eval_data=eval_data,
                              test_data=eval_data, desc="", progress=False).carry
  batch = indices[step]
  return carry[0], carry[1], (jnp.asarray(train_data.x[batch]), jnp.asarray(train_data.y[batch]))


def fidelity_row(loss: Any, params: Any, g: Any, delta: Any,
                 fns: dict[str, Any]) -> dict[str, float]:
  """Errors of the point gradient and of each estimator against the exact average gradient
  over ``delta``: relative L2, cosine, and the relative error of the predicted loss change."""
  value, exact = fns["exact"](params, delta)
  change = float(loss(optax.apply_updates(params, delta)) - value)

  def errors(prefix: str, approx: Any) -> dict[str, float]:
    predicted = float(optax.tree.vdot(approx, delta))
    return {f"{prefix}_rel_error": _rel(approx, exact), f"{prefix}_cosine": _cos(approx, exact),
            f"{prefix}_change_error": abs(predicted - change) / max(abs(change), 1e-12)}

  row = {"update_rms": float(optax.tree.norm(delta)) / np.sqrt(optax.tree.size(delta)),
         "loss_change": change} | errors("point", g)
  for est in ("factorized", "trapezoid"):
    row |= errors(est, fns[est](params, delta)[1])
  return row


def evaluate_model(name: str, spec: dict[str, Any], *, checkpoints: list[int],
                   spans: list[float], lr: float, data_dir: Optional[str]) -> list[dict]:
  """Fidelity rows of one model for RMSProp's and Adam's updates (registry ``rmsprop`` and
  ``adam``) at each checkpoint and span, and the estimators' cost at the last checkpoint."""
  rows = []
  for opt_name in ("rmsprop", "adam"):
    config = training.TrainConfig(**spec, optimizer=opt_name, lr=lr, data_dir=data_dir,
                                  steps=max(max(checkpoints), 1))
    train_data, _ = run_lib.load_splits(config)
    model = training.make_model(config, train_data, nnx.Rngs(config.seed))
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    tx = training.make_tx(config)
    for checkpoint in checkpoints:
      params, opt_state, batch = state_at(config, train_data, checkpoint)
      loss = functools.partial(training.loss_fn(graphdef, rest), batch=batch)
      g = jax.grad(loss)(params)
      update, _ = tx.update(g, opt_state, params)
      fns = {"exact": jax.jit(avggrad.value_and_average_grad(loss, estimator="quadrature",
                                                             num_points=16)),
             "factorized": jax.jit(avggrad.value_and_average_grad(loss)),
             "trapezoid": jax.jit(avggrad.value_and_average_grad(loss, estimator="trapezoid"))}
      for span in spans:
        delta = jax.tree.map(lambda u: span * u, update)
        row = {"model": name, "optimizer": opt_name, "lr": lr, "step": checkpoint,
               "span": span} | fidelity_row(loss, params, g, delta, fns)
        rows.append(row)
        print(f"[{name}] {opt_name} step {checkpoint} span {span:g}: |g-gbar|/|gbar| "
              f"{row['point_rel_error']:.3f}, factorized {row['factorized_rel_error']:.4f} "
              f"(cos {row['factorized_cosine']:.4f}), trapezoid "
              f"{row['trapezoid_rel_error']:.4f}", flush=True)
      if opt_name == "rmsprop" and checkpoint == checkpoints[-1]:
        rows.append(estimator_cost(name, loss, params, update, fns))
  return rows


def estimator_cost(name: str, loss: Any, params: Any, update: Any,
                   fns: dict[str, Any]) -> dict[str, Any]:
  """Each estimator's time against ``jax.value_and_grad``, interleaved."""
  quad3 = jax.jit(avggrad.value_and_average_grad(loss, estimator="quadrature", num_points=3))
  calls = [(jax.jit(jax.value_and_grad(loss)), (params,)),
           (fns["factorized"], (params, update)), (fns["trapezoid"], (params, update)),
           (quad3, (params, update))]
  times = interleaved_seconds(calls, number=5, repeats=5)
  return {"model": name, "timing": True, "value_and_grad_s": times[0],
          "factorized_x": times[1] / times[0], "trapezoid_x": times[2] / times[0],
          "quadrature3_x": times[3] / times[0]}


def write_markdown(rows: list[dict], path: str) -> None:
  lines = ["# Estimator fidelity at training step sizes", "",
           "Relative L2 error and cosine against the exact average gradient (16-node "
           "Gauss-Legendre), and the relative error of the predicted loss change "
           "`avg_grad . delta` against the actual change, for the update the optimizer is "
           "about to make (times the span). Generated by "
           "`python -m benchmarks.probes.estimator_accuracy`.", "",
           "| model | optimizer | step | span | update RMS | point: rel. err / cos | "
           "factorized: rel. err / cos / change err | trapezoid: rel. err / cos / change err |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r.get("timing"):
      continue
    lines.append(
        f"| {r['model']} | {r['optimizer']} | {r['step']} | {r['span']:g} | "
        f"{r['update_rms']:.1e} | {r['point_rel_error']:.3f} / {r['point_cosine']:.3f} | "
        f"{r['factorized_rel_error']:.4f} / {r['factorized_cosine']:.4f} / "
        f"{r['factorized_change_error']:.1e} | {r['trapezoid_rel_error']:.4f} / "
        f"{r['trapezoid_cosine']:.4f} / {r['trapezoid_change_error']:.1e} |")
  lines += ["", "Cost against `jax.value_and_grad` (same process, interleaved medians):", "",
            "| model | value_and_grad (ms) | factorized | trapezoid | quadrature (3 nodes) |",
            "|---|---|---|---|---|"]
  for r in rows:
    if r.get("timing"):
      lines.append(f"| {r['model']} | {1e3 * r['value_and_grad_s']:.2f} | "
                   f"{r['factorized_x']:.2f}x | {r['trapezoid_x']:.2f}x | "
                   f"{r['quadrature3_x']:.2f}x |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--quick", action="store_true", help="fewer checkpoints and spans")
  parser.add_argument("--lr", type=float, default=3e-4)
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"))
  parser.add_argument("--out", default=os.path.join(HERE, "results", "estimators"))
  args = parser.parse_args(argv)
  checkpoints = [0, 100] if args.quick else [0, 100, 500]
  spans = [1.0, 8.0] if args.quick else [1.0, 4.0, 8.0, 16.0]
  rows: list[dict] = []
  for name in args.models.split(","):
    if name not in MODELS:
      parser.error(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    rows += evaluate_model(name, MODELS[name], checkpoints=checkpoints, spans=spans,
                           lr=args.lr, data_dir=args.data_dir)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "estimators.json"), "w") as f:
    json.dump(rows, f, indent=1)
  write_markdown(rows, os.path.join(args.out, "estimators.md"))
  print(os.path.join(args.out, "estimators.md"))


if __name__ == "__main__":
  main()
