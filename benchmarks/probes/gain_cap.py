"""What a cap on the gain costs: iterations to target of ``avg-adam`` with ``max_gain``.

Issue 32: without ``grad=``, a clip before the wrapper is undone silently, since the far end
sees the raw gradient. Bounding the combined gradient by the incoming one, coordinate by
coordinate (``max_gain``: :math:`|\\tilde g_i| \\le c\\,|g_i|`), would hold an upstream clip to
within a known factor :math:`c`. This trains the fine grid's ``avg-adam`` (whole-batch far
end) at its tuned rate on deep tasks, with no cap and with each cap, on the same seeds, and
prints one JSON line per (task, cap): iterations to the grid's target per seed, their
median, and the final losses (mean over the last 10% of steps).

Usage::

  python -m benchmarks.probes.gain_cap benchmarks/grids/fine.json --caps 2,4,8,16
      [--tasks fmnist-mlp16-tanh-glorot,...] [--seeds 0,1,2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from avggrad import protocol, sweep
from benchmarks import run as run_lib

# avg-adam's best rate in benchmarks/results/fine (lowest median final loss).
RATES = {"fmnist-mlp16-tanh-glorot": 3.16e-4, "fmnist-mlp20-elu-lecun": 3.16e-4,
         "mnist-mlp16-tanh-glorot": 4.64e-4}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("grid")
  parser.add_argument("--caps", default="2,4,8,16")
  parser.add_argument("--tasks", default=",".join(RATES))
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--label", default="avg-adam", help="the grid's optimizer to cap")
  parser.add_argument("--data-dir", default=None)
  args = parser.parse_args()
  with open(args.grid) as f:
    grid = json.load(f)
  tasks = {t["name"]: t for t in grid["tasks"]}
  spec = grid["optimizers"][args.label]
  seeds = [int(s) for s in args.seeds.split(",")]
  for name in args.tasks.split(","):
    task = tasks[name]
    for cap in [None] + [float(c) for c in args.caps.split(",")]:
      config = dataclasses.replace(
          run_lib.task_config(grid, task),
          optimizer=spec if cap is None else f"{spec},max_gain={cap}")
      if args.data_dir:
        config = dataclasses.replace(config, data_dir=args.data_dir)
      start = time.time()
      results = sweep.sweep(config, [RATES[name]], seeds, progress=False)
      iters = [protocol.iterations(r.losses, r.status == "ok", task["target"], config.steps)
               for r in results.values()]
      finals = [statistics.mean(r.losses[-config.steps // 10:]) for r in results.values()]
      print(json.dumps({
          "task": name, "max_gain": cap, "lr": RATES[name], "iterations": iters,
          "median": statistics.median(float("inf") if i is None else i for i in iters),
          "final": [round(x, 4) for x in finals], "seconds": round(time.time() - start, 1),
      }), flush=True)


if __name__ == "__main__":
  main()
