"""Newton-Schulz once a step: ``avg-muon`` with the previous step as its range.

Issue 31 item 4: with ``update_range="predicted"`` (the default),
:func:`avggrad.average_gradient` runs the inner update twice a step (once on the point gradient
to predict the range, once on the combined gradient), so ``avg-muon`` pays for Muon's
Newton-Schulz twice; with ``update_range="previous"`` (the range is the update applied at the
previous step) it runs once. This trains ``avg-muon`` with each range, ``muon-split`` and
``muon`` on deep tasks of the fine grid at Muon's fast rates, on the same seeds, and prints one
JSON line per (task, spec): iterations to the grid's target per rate and seed, the fastest rate
(:func:`avggrad.protocol.fastest_lr`, AlgoPerf's rule) and its median; then, per task, the
seconds per step of each spec (:func:`avggrad.timing.step_seconds`, one run, not batched) and
their ratio to ``muon``'s.

Usage::

  python -m benchmarks.probes.muon_range benchmarks/grids/fine.json
      [--tasks fmnist-mlp16-tanh-glorot,...] [--rates 0.00147,0.00215] [--seeds 0,1]
      [--specs 'avg-muon:update_range=predicted;muon'] [--timing-only] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from avggrad import protocol, sweep, tasks as tasks_lib, timing
from benchmarks import run as run_lib

SPECS = ("avg-muon:update_range=predicted", "avg-muon:update_range=previous", "muon-split",
         "muon")
# Muon's fastest rate in benchmarks/results/fine (protocol.fastest_lr over its records) is
# 0.00215 on both tasks, the top rung it ran there; 0.00147 is next (and ties on seeds 0, 1).
RATES = (0.00147, 0.00215)
TASKS = ("fmnist-mlp16-tanh-glorot", "fmnist-mlp20-elu-lecun")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("grid")
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--rates", default=",".join(map(str, RATES)))
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--specs", default=";".join(SPECS), help="';'-separated specs")
  parser.add_argument("--timing-only", action="store_true", help="only the step times")
  parser.add_argument("--data-dir", default=None)
  args = parser.parse_args()
  with open(args.grid) as f:
    grid = json.load(f)
  tasks = {t["name"]: t for t in grid["tasks"]}
  rates = [float(r) for r in args.rates.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  specs = args.specs.split(";")
  names = args.tasks.split(",")
  configs, splits = {}, {}
  for name in names:
    configs[name] = run_lib.task_config(grid, tasks[name])
    if args.data_dir:
      configs[name] = dataclasses.replace(configs[name], data_dir=args.data_dir)
    splits[name] = tasks_lib.load_splits(configs[name])
  # Spec by spec (the ones the question is about first), then the step times.
  for spec in [] if args.timing_only else specs:
    for name in names:
      config = dataclasses.replace(configs[name], optimizer=spec)
      train_data, test_data = splits[name]
      start = time.time()
      results = sweep.sweep(config, rates, seeds, train_data=train_data, test_data=test_data,
                            progress=False)
      iters: dict[float, list] = {}
      for (lr, _), r in sorted(results.items()):
        iters.setdefault(lr, []).append(
            protocol.iterations(r.losses, r.status == "ok", tasks[name]["target"], config.steps))
      fastest = protocol.fastest_lr(iters)
      median = (None if fastest is None else statistics.median(
          float("inf") if i is None else i for i in iters[fastest]))
      print(json.dumps({
          "task": name, "spec": spec, "iterations": {str(lr): v for lr, v in iters.items()},
          "fastest_lr": fastest, "median_at_fastest": median,
          "seconds": round(time.time() - start, 1),
      }), flush=True)
  for name in names:
    step = timing.step_seconds(configs[name], list(specs), splits[name][0], number=2, repeats=3)
    ref = "muon" if "muon" in specs else specs[0]
    base = step[ref]["seconds_per_step"]
    print(json.dumps({"task": name, "ms_per_step": {
        s: round(1e3 * step[s]["seconds_per_step"], 2) for s in specs},
        f"step_vs_{ref}": {s: round(step[s]["seconds_per_step"] / base, 3)
                                for s in specs}}), flush=True)

if __name__ == "__main__":
  main()
