"""Time per step and memory of every optimizer of a grid, on each task's model, in one process.

For each task, every optimizer's training step (the same compiled step that
``avggrad.training.train`` runs) is timed in turns with the others, so machine drift hits all
alike; memory is XLA's allocation for one step (arguments, outputs, temporaries) without the
dataset. Ratios are against same-core RMSProp measured in the same process. The report uses
these times for wall-clock to target.

``--sessions n`` repeats the whole measurement (compilation included) n times in the process,
for the spread of close calls: each optimizer then records every session's seconds per step
(``sessions``) and their ``min``/``median``/``max``, its ``seconds_per_step`` is the median,
and ``ratio_rmsprop`` and the ratios of each session (``session_ratios``) are taken session by
session, against the same session's base.

``--add`` keeps a task's recorded figures and adds the selected optimizers to them
(:func:`add_to_task`): they are timed beside the task's recorded base (RMSProp) in one process,
and their seconds scaled by the recorded base's over the base's new time, so that they compare
with the figures already there (machine speed differs between processes; ratios within a
process do not depend on it).

Usage::

  python -m benchmarks.overheads benchmarks/grids/main.json [--tasks PATTERN]
      [--optimizers 'adam,avg-*'] [--sessions 5] [--add]
      [--out benchmarks/results/main/overheads.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
from typing import Any, Optional

import jax

from avggrad.timing import step_seconds
from benchmarks import run as run_lib


def measure_task(grid: dict[str, Any], task: dict[str, Any], *, chunk: int = 10,
                 number: int = 3, repeats: int = 5, data_dir: Optional[str] = None,
                 labels: Optional[list[str]] = None, sessions: int = 1,
                 base: Optional[str] = None) -> dict[str, dict[str, Any]]:
  """Times ``task``'s optimizers interleaved, ``sessions`` times (see the module docstring);
  ratios against ``base`` (default: ``rmsprop`` where timed, else the first label)."""
  if sessions < 1:
    raise ValueError(f"sessions must be at least 1, got {sessions}")
  config = run_lib.task_config(grid, task)
  if data_dir and not config.data_dir and config.dataset != "fashion_mnist_small":
    config = dataclasses.replace(config, data_dir=data_dir)
  limit = max(config.batch_size * chunk, 512)
  train_data, _ = run_lib.load_splits(dataclasses.replace(config, limit=limit))
  labels = labels or run_lib.task_optimizers(grid, task)
  specs = [grid["optimizers"][label] for label in labels]
  runs = []
  for _ in range(sessions):
    measured = step_seconds(config, specs, train_data, chunk=chunk, number=number,
                            repeats=repeats, memory=True)
    runs.append({label: measured[spec] for label, spec in zip(labels, specs)})
  base_label = base or ("rmsprop" if "rmsprop" in labels else labels[0])
  out: dict[str, dict[str, Any]] = {}
  for label in labels:
    seconds = [run[label]["seconds_per_step"] for run in runs]
    ratios = [run[label]["seconds_per_step"] / run[base_label]["seconds_per_step"]
              for run in runs]
    memory = runs[0][label]["bytes"]
    out[label] = {"seconds_per_step": statistics.median(seconds),
                  "ratio_rmsprop": statistics.median(ratios), "bytes": memory,
                  "memory_ratio_rmsprop": memory / runs[0][base_label]["bytes"]}
    if sessions > 1:
      out[label] |= {"sessions": seconds, "session_ratios": ratios, "min": min(seconds),
                     "median": statistics.median(seconds), "max": max(seconds)}
  return out


def add_to_task(grid: dict[str, Any], task: dict[str, Any], recorded: dict[str, dict[str, Any]],
                labels: list[str], **options: Any) -> dict[str, dict[str, Any]]:
  """``recorded`` (a task's figures) with ``labels`` timed and added: each is timed beside
  the recorded base (``rmsprop``, else the first recorded optimizer), its seconds (and each
  session's) scaled by the recorded base's seconds over the base's time in this process;
  ``scaled_by`` records the factor. Ratios and memory are this process's own."""
  if not recorded:
    raise ValueError(f"--add: task {task['name']!r} has no recorded figures to add to; "
                     "time it whole first (without --add)")
  base = "rmsprop" if "rmsprop" in recorded else next(iter(recorded))
  new = [label for label in labels if label != base]
  measured = measure_task(grid, task, labels=[base] + new, base=base, **options)
  scale = recorded[base]["seconds_per_step"] / measured[base]["seconds_per_step"]
  out = dict(recorded)
  for label in new:
    m = dict(measured[label])
    for key in ("seconds_per_step", "min", "median", "max"):
      if key in m:
        m[key] *= scale
    if "sessions" in m:
      m["sessions"] = [t * scale for t in m["sessions"]]
    out[label] = m | {"scaled_by": scale}
  return out


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grid")
  parser.add_argument("--tasks", default="*",
                      help="only tasks whose name matches one of these comma-separated globs")
  parser.add_argument("--optimizers", default="*",
                      help="only optimizers matching one of these comma-separated globs")
  parser.add_argument("--out", default=None, help="default: next to the grid's results")
  parser.add_argument("--results-dir", default=None,
                      help="the grid's results folder (default: as benchmarks.report reads it)")
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"))
  parser.add_argument("--chunk", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sessions", type=int, default=1,
                      help="repeat the whole timing this many times; record min/median/max")
  parser.add_argument("--add", action="store_true",
                      help="keep each task's recorded figures and add the selected optimizers, "
                           "timed beside the recorded base and scaled to it")
  args = parser.parse_args(argv)
  grid = run_lib.load_grid(args.grid)
  unknown = run_lib.unmatched_patterns(grid, args.optimizers)
  if unknown:
    parser.error(f"--optimizers: {', '.join(unknown)} matches no optimizer of the grid")
  out = args.out or os.path.join(run_lib.results_folder(grid, args.results_dir),
                                 "overheads.json")
  results: dict[str, Any] = {}
  if os.path.exists(out):
    with open(out) as f:
      results = json.load(f)
  device = jax.devices()[0]
  here = (f"{device.platform} {getattr(device, 'device_kind', '')}, "
          f"{platform.machine()}, {os.cpu_count()} cores")
  if args.add and results.get("device", here) != here:
    # --add scales new timings to the recorded figures: those, and their device, stand.
    print(f"warning: --add on {here!r}, the recorded figures are from {results['device']!r}; "
          "the added ones are scaled to them", file=sys.stderr)
  else:
    results["device"] = here
  tasks = results.setdefault("tasks", {})
  for task in grid["tasks"]:
    if not run_lib.matches(task["name"], args.tasks):
      continue
    labels = [label for label in run_lib.task_optimizers(grid, task)
              if run_lib.matches(label, args.optimizers)]
    if not labels:  # nothing selected on this task (an empty list would mean all of them)
      continue
    options = dict(chunk=args.chunk, repeats=args.repeats, data_dir=args.data_dir,
                   sessions=args.sessions)
    if args.add:
      tasks[task["name"]] = add_to_task(grid, task, tasks.get(task["name"], {}), labels,
                                        **options)
    else:
      tasks[task["name"]] = measure_task(grid, task, labels=labels, **options)
    print(f"[{task['name']}]")
    for label, m in tasks[task["name"]].items():
      print(f"  {label:24s} {1e3 * m['seconds_per_step']:8.2f} ms/step  x{m['ratio_rmsprop']:.2f}"
            f"  {m['bytes'] / 2**20:8.1f} MiB  x{m['memory_ratio_rmsprop']:.2f}"
            + (f"  sessions {1e3 * m['min']:.2f}/{1e3 * m['median']:.2f}/{1e3 * m['max']:.2f} ms"
               " (min/median/max)" if "sessions" in m else ""), flush=True)
    with open(out, "w") as f:
      json.dump(results, f, indent=2)
  print(out)


if __name__ == "__main__":
  main()
