"""Throughput of the benchmark harness: runs one at a time against one vmapped sweep.

Trains ``--lrs`` learning rates x ``--seeds`` seeds of one task and optimizer (a) as one
:func:`avggrad.sweep.sweep` (vmapped runs, scanned steps), (b) as one sweep without the scan
(one compiled call per step, all runs together), and times (c) one run of
:func:`avggrad.training.train`, multiplied by the number of runs (every run costs the same).
All in this process, compile included, as the benchmark runner uses them.

Usage::

  python -m benchmarks.probes.harness_speed --grid benchmarks/grids/fine.json \\
      --task fmnist-mlp16-tanh-glorot --optimizer adam [--lrs 7] [--seeds 3] [--steps 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, Optional

from avggrad import sweep, training
from benchmarks import run as run_lib


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--grid", default="benchmarks/grids/fine.json")
  parser.add_argument("--task", default="fmnist-mlp16-tanh-glorot")
  parser.add_argument("--optimizer", default="adam")
  parser.add_argument("--lrs", type=int, default=7)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"))
  args = parser.parse_args(argv)
  grid = run_lib.load_grid(args.grid)
  task = next(t for t in grid["tasks"] if t["name"] == args.task)
  config = dataclasses.replace(run_lib.task_config(grid, task),
                               optimizer=grid["optimizers"][args.optimizer],
                               data_dir=args.data_dir)
  if args.steps:
    config = dataclasses.replace(config, steps=args.steps)
  train_data, test_data = training.load_splits(config)
  lrs = [1e-4 * 10 ** (k / 6) for k in range(args.lrs)]
  seeds = list(range(args.seeds))
  runs = len(lrs) * len(seeds)
  seconds = {}
  for name, scan in (("sweep (vmap + scan)", True), ("sweep (vmap, one call per step)", False)):
    start = time.perf_counter()
    sweep.sweep(config, lrs, seeds, train_data=train_data, test_data=test_data,
                progress=False, scan=scan)
    seconds[name] = time.perf_counter() - start
  start = time.perf_counter()
  training.train(dataclasses.replace(config, lr=lrs[len(lrs) // 2]), train_data=train_data,
                 test_data=test_data, progress=False)
  seconds[f"one at a time ({runs} x one run)"] = runs * (time.perf_counter() - start)
  base = seconds[f"one at a time ({runs} x one run)"]
  print(f"{args.task}, {args.optimizer}: {len(lrs)} learning rates x {len(seeds)} seeds, "
        f"{config.steps} steps, compile included\n")
  for name, s in seconds.items():
    print(f"{name:<36} {s:8.1f} s   speed-up x{base / s:.2f}")
  return seconds


if __name__ == "__main__":
  main()
