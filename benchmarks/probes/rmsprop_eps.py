"""Where RMSProp's ``eps`` sits, on a task of a grid: iterations to its target at each rate.

Issue 31, item 8: the README recommends the RMSProp form the benchmarks measured (the
registry's ``avg-rmsprop``: ``eps=1e-7`` outside the root, the Keras/PyTorch placement), while
``avggrad.rmsprop``'s defaults are ``optax.rmsprop``'s (``eps=1e-8`` inside the root). This
trains RMSProp and AvgGrad-RMSProp (with and without momentum) at both placements on one task
of a grid, every rate and seed in one sweep, and records each run's iterations to the task's
target and its final loss (the mean over the last 10% of steps).

Usage::

  python -m benchmarks.probes.rmsprop_eps benchmarks/grids/fine.json
      --task fmnist-mlp12-sigmoid-glorot --data-dir DATA [--lrs 1e-5,1e-4,1e-3,1e-2]
      [--seeds 0,1] [--out benchmarks/results/fine/rmsprop_eps.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Optional

import numpy as np

from avggrad import protocol, sweep
from benchmarks import run as run_lib

# The registry's forms (eps 1e-7 outside the root) and the same at optax.rmsprop's placement.
OPTAX_EPS = "eps=1e-8,eps_in_sqrt=True"
SPECS = ("optax-rmsprop", "rmsprop", "avg-rmsprop:momentum=0",
         f"avg-rmsprop:momentum=0,{OPTAX_EPS}", "avg-rmsprop", f"avg-rmsprop:{OPTAX_EPS}")


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grid")
  parser.add_argument("--task", default="fmnist-mlp12-sigmoid-glorot")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--lrs", default="1e-5,1e-4,1e-3,1e-2")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--optimizers", default=";".join(SPECS), help="';'-separated specs")
  parser.add_argument("--out", default="benchmarks/results/fine/rmsprop_eps.json")
  args = parser.parse_args(argv)
  grid = run_lib.load_grid(args.grid)
  task = next(t for t in grid["tasks"] if t["name"] == args.task)
  config = run_lib.task_config(grid, task)
  if args.data_dir:
    config = dataclasses.replace(config, data_dir=args.data_dir)
  target = task["target"]
  train_data, test_data = run_lib.load_splits(config)
  lrs = [float(x) for x in args.lrs.split(",")]
  seeds = [int(x) for x in args.seeds.split(",")]
  out = {"task": task["name"], "target": target, "steps": config.steps, "lrs": lrs,
         "seeds": seeds, "runs": {}}
  for spec in args.optimizers.split(";"):
    start = time.time()
    runs = sweep.sweep(dataclasses.replace(config, optimizer=spec), lrs, seeds,
                       train_data=train_data, test_data=test_data, progress=False)
    rows = {}
    for lr in lrs:
      records = [runs[(lr, s)] for s in seeds]
      rows[f"{lr:g}"] = {
          "iterations": [protocol.iterations(r.losses, not r.diverged, target, config.steps)
                         for r in records],
          "final_loss": [float(np.mean(r.losses[-config.steps // 10:])) for r in records]}
    out["runs"][spec] = rows
    print(f"{spec} ({time.time() - start:.0f} s): " + "; ".join(
        f"{lr}: reached {sum(i is not None for i in row['iterations'])}/{len(seeds)}, final "
        + ", ".join(f"{x:.3f}" for x in row["final_loss"]) for lr, row in rows.items()),
        flush=True)
    with open(args.out, "w") as f:
      json.dump(out, f, indent=1)
  print(args.out)


if __name__ == "__main__":
  main()
