"""Benchmark runner: trains every job of a declarative grid file, one JSON line per run.

A grid file (JSON, see ``benchmarks/grids/``) lists tasks (dataset, model, depth,
activation, initialisation, budget), optimizers (label -> spec, see
``avggrad.training.parse_optimizer``), the shared learning-rate ladder (a task may give its own
``lrs``) and the seeds::

  {"name": "...", "defaults": {...TrainConfig fields...}, "lrs": [...], "seeds": [0, 1, 2],
   "baselines": ["rmsprop", "adam", ...], "target_fraction": 0.8,
   "optimizers": {"label": "spec", ...},
   "tasks": [{"name": "...", ...TrainConfig fields..., "target": null}, ...]}

Protocol, per task:

1. the baselines run first, at every learning rate and seed;
2. if the task has no ``target`` yet, it is set to the smoothed training loss that the best
   baseline (lowest final loss at its best learning rate) reaches at ``target_fraction`` of
   the budget, median over seeds, and **written into the grid file** before any other
   optimizer runs;
3. every other optimizer runs at every learning rate and seed;
4. whenever an optimizer's best learning rate sits at an edge of what it has run, the next
   rung of the ladder (x3 or /3 of the edge, up to ``max_extensions`` per side) is run for it.

Results go to ``benchmarks/results/<grid name>/runs.jsonl`` (one line per run: task,
optimizer, learning rate, seed, config, per-step losses, evaluations, time per step). A run
already present is skipped, so an interrupted grid resumes where it stopped. ``--shard i/n``
runs every n-th task (for several processes, each writing its own file); ``--quick`` runs a
representative slice.

Usage::

  python -m benchmarks.run benchmarks/grids/main.json [--tasks PATTERN] [--shard 0/2]
  python -m benchmarks.run --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import math
import os
import sys
import time
from typing import Any, Iterable, Optional

import numpy as np

from avggrad import data, metrics, training
from benchmarks import experimental  # noqa: F401  (registers the research optimizers)

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK_GRID = os.path.join(HERE, "grids", "quick.json")


def load_grid(path: str) -> dict[str, Any]:
  with open(path) as f:
    grid = json.load(f)
  for key in ("name", "lrs", "seeds", "optimizers", "tasks", "baselines"):
    if key not in grid:
      raise ValueError(f"{path}: the grid has no {key!r}.")
  unknown = [b for b in grid["baselines"] if b not in grid["optimizers"]]
  if unknown:
    raise ValueError(f"{path}: baselines {unknown} are not among the optimizers.")
  for spec in grid["optimizers"].values():
    training.parse_optimizer(spec)
  for task in grid["tasks"]:
    for label in task_optimizers(grid, task):
      if label not in grid["optimizers"]:
        raise ValueError(f"{path}: task {task['name']!r} names unknown optimizer {label!r}.")
  names = [t["name"] for t in grid["tasks"]]
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: task names must be unique.")
  return grid


def save_grid(path: str, grid: dict[str, Any]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(grid, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def results_path(grid: dict[str, Any], results_dir: Optional[str] = None) -> str:
  folder = results_dir or os.path.join(HERE, "results", grid["name"])
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, "runs.jsonl")


def read_results(path: str) -> list[dict[str, Any]]:
  """All run records of a results file (and of its shard files), skipping torn lines."""
  records = []
  folder = os.path.dirname(path)
  for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    if name.startswith("runs") and name.endswith(".jsonl"):
      with open(os.path.join(folder, name)) as f:
        for line in f:
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError:
            continue
  return records


def task_config(grid: dict[str, Any], task: dict[str, Any]) -> training.TrainConfig:
  fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
  values = {k: v for k, v in (grid.get("defaults", {}) | task).items() if k in fields}
  config = training.TrainConfig(**values)
  config.validate()
  return config


def task_optimizers(grid: dict[str, Any], task: dict[str, Any]) -> list[str]:
  """The task's optimizers (its own list, else the grid's ``task_optimizers``, else all),
  baselines first; a task's ``extra_optimizers`` are appended."""
  labels = task.get("optimizers") or grid.get("task_optimizers") or list(grid["optimizers"])
  labels = list(labels) + [x for x in task.get("extra_optimizers", []) if x not in labels]
  baselines = [b for b in grid["baselines"] if b in labels]
  return baselines + [label for label in labels if label not in baselines]


def _key(task: str, label: str, lr: float, seed: int) -> tuple[str, str, float, int]:
  return task, label, float(f"{lr:.6g}"), int(seed)


def _round(values: Iterable[float]) -> list[float]:
  return [float(f"{v:.5g}") if math.isfinite(v) else v for v in values]


def load_splits(config: training.TrainConfig) -> tuple[data.Dataset, data.Dataset]:
  """The training and test splits a configuration names."""
  kwargs = dict(data_dir=config.data_dir, limit=config.limit, vocab_size=config.vocab_size,
                max_len=config.max_len)
  return data.load(config.dataset, "train", **kwargs), data.load(config.dataset, "test", **kwargs)


class Runner:
  """Runs jobs of one grid, appending records and caching loaded datasets."""

  def __init__(self, grid_path: str, grid: dict[str, Any], out: str, *,
               progress: bool = False, data_dir: Optional[str] = None):
    self.grid_path, self.grid, self.out = grid_path, grid, out
    self.progress = progress
    self.data_dir = data_dir
    self.done = {_key(r["task"], r["optimizer"], r["lr"], r["seed"]): r
                 for r in read_results(out)}
    self._datasets: dict[tuple, tuple[data.Dataset, data.Dataset]] = {}

  def datasets(self, config: training.TrainConfig) -> tuple[data.Dataset, data.Dataset]:
    key = (config.dataset, config.limit, config.vocab_size, config.max_len)
    if key not in self._datasets:
      self._datasets[key] = load_splits(config)
    return self._datasets[key]

  def run(self, task: dict[str, Any], label: str, lr: float, seed: int) -> Optional[dict]:
    key = _key(task["name"], label, lr, seed)
    if key in self.done:
      return self.done[key]
    config = dataclasses.replace(task_config(self.grid, task),
                                 optimizer=self.grid["optimizers"][label], lr=float(lr),
                                 seed=int(seed))
    if self.data_dir and not config.data_dir and config.dataset != data.EMBEDDED:
      config = dataclasses.replace(config, data_dir=self.data_dir)
    train_data, test_data = self.datasets(config)
    start = time.perf_counter()
    result = training.train(config, train_data=train_data, test_data=test_data,
                            progress=self.progress)
    record = {
        "task": task["name"], "optimizer": label, "spec": config.optimizer, "lr": key[2],
        "seed": int(seed), "config": dataclasses.asdict(config) | {"data_dir": None},
        "status": result.status, "losses": _round(result.losses), "evals": result.evals,
        "test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
        "seconds_per_step": result.seconds_per_step,
        "compile_seconds": result.compile_seconds,
        "wall_seconds": time.perf_counter() - start,
    }
    with open(self.out, "a") as f:
      f.write(json.dumps(record) + "\n")
    self.done[key] = record
    final = final_loss(record)
    print(f"[{task['name']}] {label} lr={lr:g} seed={seed}: {result.status}, final loss "
          f"{final:.4f}, {1e3 * result.seconds_per_step:.2f} ms/step "
          f"({record['wall_seconds']:.0f}s)", flush=True)
    return record

  def records(self, task: dict[str, Any], label: str) -> dict[float, list[dict]]:
    by_lr: dict[float, list[dict]] = {}
    for (t, lab, lr, _), r in self.done.items():
      if t == task["name"] and lab == label:
        by_lr.setdefault(lr, []).append(r)
    return by_lr

  def best_lr(self, task: dict[str, Any], label: str) -> Optional[float]:
    """Lowest median final loss over seeds, among learning rates with every seed done."""
    seeds = self.grid["seeds"]
    scores = {}
    for lr, records in self.records(task, label).items():
      if len(records) < len(seeds):
        continue
      scores[lr] = float(np.median([final_loss(r) for r in records]))
    if not scores:
      return None
    return min(scores, key=lambda lr: (scores[lr], lr))

  def run_optimizer(self, task: dict[str, Any], label: str) -> None:
    lrs = [float(lr) for lr in task.get("lrs", self.grid["lrs"])]
    for lr in lrs:
      for seed in self.grid["seeds"]:
        self.run(task, label, lr, seed)
    max_ext = int(self.grid.get("max_extensions", 2))
    for _ in range(2 * max_ext):
      ran = sorted(self.records(task, label))
      best = self.best_lr(task, label)
      if best is None or len(ran) < 2:
        return
      if best == ran[0] and sum(lr < min(lrs) for lr in ran) < max_ext:
        new = best / 3.0 if f"{best:.0e}".startswith("1") else best / (10 / 3)
      elif best == ran[-1] and sum(lr > max(lrs) for lr in ran) < max_ext:
        new = best * 3.0 if f"{best:.0e}".startswith("1") else best * (10 / 3)
      else:
        return
      new = float(f"{new:.1g}")
      for seed in self.grid["seeds"]:
        self.run(task, label, new, seed)

  def set_target(self, task: dict[str, Any]) -> Optional[float]:
    """Computes the task's target from its baselines and writes it into the grid file."""
    if task.get("target") is not None:
      return task["target"]
    fraction = float(self.grid.get("target_fraction", 0.8))
    config = task_config(self.grid, task)
    window = metrics.default_window(config.steps)
    best_label, best_score, best_lr = None, math.inf, None
    for label in self.grid["baselines"]:
      if label not in task_optimizers(self.grid, task):
        continue
      lr = self.best_lr(task, label)
      if lr is None:
        return None
      score = float(np.median([final_loss(r) for r in self.records(task, label)[lr]]))
      if score < best_score:
        best_label, best_score, best_lr = label, score, lr
    if best_label is None:
      return None
    index = int(round(fraction * config.steps)) - 1
    values = []
    for r in self.records(task, best_label)[best_lr]:
      smoothed = metrics.smooth(r["losses"], window)
      values.append(smoothed[index] if index < len(smoothed) and r["status"] == "ok"
                    else math.inf)
    target = float(f"{np.median(values):.5g}")
    # Re-read the grid so that concurrent shards do not overwrite each other's targets.
    grid = load_grid(self.grid_path)
    for t in grid["tasks"]:
      if t["name"] == task["name"] and t.get("target") is None:
        t["target"] = target
        t["target_source"] = (f"{best_label} (lr {best_lr:g}) smoothed loss at "
                              f"{fraction:.0%} of {config.steps} steps, median of "
                              f"{len(values)} seeds")
      task_target = t.get("target") if t["name"] == task["name"] else None
      if task_target is not None:
        target = task_target
    save_grid(self.grid_path, grid)
    task["target"] = target
    print(f"[{task['name']}] target set to {target} from {best_label}", flush=True)
    return target


def final_loss(record: dict[str, Any]) -> float:
  """:func:`avggrad.metrics.final_loss` of a run record."""
  return metrics.final_loss(record["losses"], record["status"] != "ok")


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grid", nargs="?", help="grid file (JSON)")
  parser.add_argument("--quick", action="store_true",
                      help=f"run the quick slice ({os.path.relpath(QUICK_GRID)})")
  parser.add_argument("--tasks", default="*", help="only tasks whose name matches this glob")
  parser.add_argument("--shard", default="0/1", help="i/n: run every n-th task starting at i")
  parser.add_argument("--results-dir", default=None, help="default benchmarks/results/<name>")
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"),
                      help="folder with the datasets' original files (default "
                           "$AVGGRAD_DATA_DIR)")
  parser.add_argument("--progress", action="store_true")
  args = parser.parse_args(argv)
  path = QUICK_GRID if args.quick else args.grid
  if path is None:
    parser.error("give a grid file or --quick")
  i, n = (int(x) for x in args.shard.split("/"))
  if not 0 <= i < n:
    parser.error("--shard must be i/n with 0 <= i < n")
  grid = load_grid(path)
  out = results_path(grid, args.results_dir)
  if n > 1:
    out = out.replace("runs.jsonl", f"runs.shard{i}of{n}.jsonl")
  runner = Runner(path, grid, out, progress=args.progress, data_dir=args.data_dir)
  start = time.perf_counter()
  for index, task in enumerate(grid["tasks"]):
    if not fnmatch.fnmatch(task["name"], args.tasks) or index % n != i:
      continue
    labels = task_optimizers(grid, task)
    for label in labels:
      if label in grid["baselines"]:
        runner.run_optimizer(task, label)
    runner.set_target(task)
    for label in labels:
      if label not in grid["baselines"]:
        runner.run_optimizer(task, label)
  print(f"done in {time.perf_counter() - start:.0f}s; results in {out}", file=sys.stderr)


if __name__ == "__main__":
  main()
