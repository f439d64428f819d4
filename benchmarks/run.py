"""Benchmark runner: trains every job of a declarative grid file, one JSON line per run.

A grid file (JSON, see ``benchmarks/grids/``) lists tasks (dataset, model, depth,
activation, initialisation, budget), optimizers (label -> spec, see
``avggrad.optimizers.parse_optimizer``), the shared learning-rate ladder (a task may give its own
``lrs``) and the seeds::

  {"name": "...", "defaults": {...TrainConfig fields...}, "lrs": [...], "seeds": [0, 1, 2],
   "baselines": ["rmsprop", "adam", ...], "target_fraction": 0.8,
   "optimizers": {"label": "spec", ...},
   "optimizer_config": {"label": {...TrainConfig fields, e.g. "schedule"...}, ...},
   "tasks": [{"name": "...", ...TrainConfig fields..., "target": null}, ...]}

Protocol, per task:

1. the baselines run first, at every learning rate and seed;
2. if the task has no ``target`` yet, it is set to the smoothed training loss that the best
   baseline (lowest final loss at its best learning rate) reaches at ``target_fraction`` of
   the budget, median over seeds (:func:`avggrad.protocol.set_target`), and recorded in the
   results folder's ``targets.json`` before any other optimizer runs (the grid file is never
   written);
3. every other optimizer runs at every learning rate and seed;
4. whenever an optimizer's best learning rate sits at an edge of what it has run, under either
   rate rule (the lowest final loss, or AlgoPerf's fewest iterations to the target:
   :func:`avggrad.protocol.fastest_lr`), the next rungs of the ladder are run for it (up to
   ``max_extensions`` per side, or ``{"label": n, "*": n}`` per optimizer): on a geometric
   ladder (``"ladder": "geometric"``, e.g. 6 or 8 rates per decade) the next rates at the
   ladder's own spacing, otherwise x3 or /3 of the edge.

Harness: by default every learning rate and seed an optimizer still needs on a task is trained
together in one compiled program (:func:`avggrad.sweep.sweep`: vmapped runs, scanned steps);
``--one-at-a-time`` trains them one by one with :func:`avggrad.training.train` (the same
curves, see ``tests/test_sweep.py``). A task or grid may set ``"batched": false`` to train
one run at a time where batching is slower: on CPU, vmapped convolutions (one kernel per
run) ran 2-3x slower than the same runs one by one (``benchmarks/probes/harness_speed.py``).
Per-run step times are not measured by a sweep; wall-clock to target uses the interleaved
single-step times of ``benchmarks/overheads.py``.

Results go to ``results/<grid name>/runs.jsonl`` in the current folder (or under
``$AVGGRAD_RESULTS_DIR``, or ``--results-dir``; one line per run: task, optimizer, learning
rate, seed, config, per-step losses, evaluations, time per step). The readers (report,
headline, profiles) read that folder when it holds runs, else the tracked record in
``benchmarks/results/<grid name>/`` whose raw runs are packed with ``--pack`` into
``runs.jsonl.xz`` (xz-compressed JSON lines; ``.jsonl``, ``.jsonl.gz`` and ``.jsonl.xz`` are
all read). A run already present is skipped, so an interrupted grid resumes where it stopped. ``--shard i/n``
runs every n-th selected task (for several processes, each writing its own file); ``--quick`` runs a
representative slice.

Usage::

  python -m benchmarks.run benchmarks/grids/main.json [--tasks GLOB,GLOB] [--shard 0/2]
  python -m benchmarks.run --quick
  python -m benchmarks.run benchmarks/grids/main.json --results-dir benchmarks/results/main --pack
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import gzip
import json
import lzma
import math
import os
import sys
import time
from typing import Any, Iterable, Optional

import numpy as np

from avggrad import data, optimizers, protocol, sweep, training
from benchmarks import experimental

HERE = os.path.dirname(os.path.abspath(__file__))
QUICK_GRID = os.path.join(HERE, "grids", "quick.json")


def load_grid(path: str) -> dict[str, Any]:
  """Reads and checks a grid file (the research optimizers of ``benchmarks.experimental``
  are registered first, so grids may name them)."""
  experimental.register()
  with open(path) as f:
    grid = json.load(f)
  for key in ("name", "lrs", "seeds", "optimizers", "tasks", "baselines"):
    if key not in grid:
      raise ValueError(f"{path}: the grid has no {key!r}.")
  unknown = [b for b in grid["baselines"] if b not in grid["optimizers"]]
  if unknown:
    raise ValueError(f"{path}: baselines {unknown} are not among the optimizers.")
  for spec in grid["optimizers"].values():
    optimizers.parse_optimizer(spec)
  for task in grid["tasks"]:
    for label in task_optimizers(grid, task):
      if label not in grid["optimizers"]:
        raise ValueError(f"{path}: task {task['name']!r} names unknown optimizer {label!r}.")
  names = [t["name"] for t in grid["tasks"]]
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: task names must be unique.")
  return grid


RESULTS_ROOT = os.path.join(HERE, "results")
"""The tracked record: the results the README's tables are built from (raw runs packed as
``runs.jsonl.xz``, :func:`pack_results`)."""

PACKED = (".jsonl.xz", ".jsonl.gz")
"""Compressed run files: read before the plain ``.jsonl`` files appended since."""


def new_results_root() -> str:
  """Where new runs go by default: ``$AVGGRAD_RESULTS_DIR``, else ``results/`` in the current
  folder (ignored by git), never the tracked :data:`RESULTS_ROOT`."""
  return os.environ.get("AVGGRAD_RESULTS_DIR") or os.path.join(os.getcwd(), "results")


def results_folder(grid: dict[str, Any], results_dir: Optional[str] = None,
                   write: bool = False) -> str:
  """A grid's results folder: ``results_dir`` if given; for writing, ``<new results
  root>/<name>`` (:func:`new_results_root`); for reading, that folder when it holds runs (a
  grid you ran yourself), else the tracked ``benchmarks/results/<name>``. The grid's tasks
  without a target take the one the runner recorded there (``targets.json``)."""
  fresh = os.path.join(new_results_root(), grid["name"])
  if results_dir:
    folder = results_dir
  elif write or _run_files(fresh):
    folder = fresh
  else:
    folder = os.path.join(RESULTS_ROOT, grid["name"])
  targets = read_targets(folder)
  for task in grid["tasks"]:
    if task.get("target") is None and task["name"] in targets:
      task.update(targets[task["name"]])
  return folder


def results_path(grid: dict[str, Any], results_dir: Optional[str] = None,
                 write: bool = False) -> str:
  """The plain runs file of :func:`results_folder` (created when writing)."""
  folder = results_folder(grid, results_dir, write)
  if write:
    os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, "runs.jsonl")


def read_targets(folder: str) -> dict[str, dict[str, Any]]:
  """The targets the runner set for this folder's runs: ``{task: {"target", "target_source"}}``."""
  path = os.path.join(folder, "targets.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _run_files(folder: str) -> list[str]:
  """The folder's run files, packed ones first (older), then plain ones (appended since)."""
  if not os.path.isdir(folder):
    return []
  names = [n for n in os.listdir(folder) if n.startswith("runs")
           and (n.endswith(".jsonl") or n.endswith(PACKED))]
  return [os.path.join(folder, n) for n in sorted(names, key=lambda n: (n.endswith(".jsonl"), n))]


def _open_runs(path: str):
  if path.endswith(".xz"):
    return lzma.open(path, "rt")
  if path.endswith(".gz"):
    return gzip.open(path, "rt")
  return open(path)


def read_results(path: str) -> list[dict[str, Any]]:
  """All run records of a results folder (``path`` is its ``runs.jsonl``; packed and shard
  files are read too), skipping torn lines; a run recorded twice (the same task, optimizer,
  rate and seed) counts once, its last record."""
  records: dict[tuple, dict[str, Any]] = {}
  for name in _run_files(os.path.dirname(path)):
    with _open_runs(name) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        records[_key(record["task"], record["optimizer"], record["lr"], record["seed"])] = record
  return list(records.values())


def pack_results(folder: str) -> tuple[int, int]:
  """Packs a folder's run files into one ``runs.jsonl.xz`` (every record once, as
  :func:`read_results` reads them) and removes the rest: ``(bytes before, bytes after)``."""
  files = _run_files(folder)
  before = sum(os.path.getsize(f) for f in files)
  records = read_results(os.path.join(folder, "runs.jsonl"))
  target = os.path.join(folder, "runs.jsonl.xz")
  with lzma.open(target + ".tmp", "wt", preset=9) as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  os.replace(target + ".tmp", target)
  for name in files:
    if name != target:
      os.remove(name)
  return before, os.path.getsize(target)


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


load_splits = training.load_splits


class Runner:
  """Runs jobs of one grid, appending records and caching loaded datasets."""

  def __init__(self, grid_path: str, grid: dict[str, Any], out: str, *,
               progress: bool = False, data_dir: Optional[str] = None,
               batched: bool = True, devices: Optional[int] = None,
               shard_params: bool = False):
    self.grid_path, self.grid, self.out = grid_path, grid, out
    self.progress = progress
    self.data_dir = data_dir
    self.batched = batched
    # Data parallel over every device by default (avggrad.parallel); one device: unchanged.
    self.placement = dict(devices=devices, shard_params=shard_params)
    self.done = {_key(r["task"], r["optimizer"], r["lr"], r["seed"]): r
                 for r in read_results(out)}
    self._datasets: dict[tuple, tuple[data.Dataset, data.Dataset]] = {}

  def datasets(self, config: training.TrainConfig) -> tuple[data.Dataset, data.Dataset]:
    key = (config.dataset, config.limit, config.vocab_size, config.max_len)
    if key not in self._datasets:
      self._datasets[key] = load_splits(config)
    return self._datasets[key]

  def config(self, task: dict[str, Any], label: str) -> training.TrainConfig:
    """The task's configuration with the optimizer ``label`` (and the runner's data dir)."""
    config = dataclasses.replace(task_config(self.grid, task),
                                 optimizer=self.grid["optimizers"][label],
                                 **self.grid.get("optimizer_config", {}).get(label, {}))
    if self.data_dir and not config.data_dir and config.dataset != data.EMBEDDED:
      config = dataclasses.replace(config, data_dir=self.data_dir)
    return config

  def _record(self, task: dict[str, Any], label: str, lr: float, seed: int,
              config: training.TrainConfig, result: training.RunResult,
              wall_seconds: float) -> dict[str, Any]:
    key = _key(task["name"], label, lr, seed)
    record = {
        "task": task["name"], "optimizer": label, "spec": config.optimizer, "lr": key[2],
        "seed": int(seed),
        "config": dataclasses.asdict(config) | {"data_dir": None, "lr": float(lr),
                                                "seed": int(seed)},
        "status": result.status, "losses": _round(result.losses), "evals": result.evals,
        "test_loss": result.test_loss, "test_accuracy": result.test_accuracy,
        "seconds_per_step": result.seconds_per_step,
        "compile_seconds": result.compile_seconds,
        "batched_runs": result.batched_runs,
        "wall_seconds": wall_seconds,
    }
    # avggrad.auto's scale at the end (at the evaluations: in ``evals``); None without one.
    scale = getattr(result, "scale", None)
    if scale is None:
      scale = next((e["scale"] for e in reversed(result.evals) if "scale" in e), None)
    if scale is not None:
      record["scale"] = scale
    with open(self.out, "a") as f:
      f.write(json.dumps(record) + "\n")
    self.done[key] = record
    return record

  def run(self, task: dict[str, Any], label: str, lr: float, seed: int) -> Optional[dict]:
    """Trains one run (unless its record exists) and records it."""
    key = _key(task["name"], label, lr, seed)
    if key in self.done:
      return self.done[key]
    config = dataclasses.replace(self.config(task, label), lr=float(lr), seed=int(seed))
    train_data, test_data = self.datasets(config)
    start = time.perf_counter()
    result = training.train(config, train_data=train_data, test_data=test_data,
                            progress=self.progress, **self.placement)
    record = self._record(task, label, lr, seed, config, result,
                          time.perf_counter() - start)
    print(f"[{task['name']}] {label} lr={lr:g} seed={seed}: {result.status}, final loss "
          f"{final_loss(record):.4f}, {1e3 * result.seconds_per_step:.2f} ms/step "
          f"({record['wall_seconds']:.0f}s)", flush=True)
    return record

  def run_lrs(self, task: dict[str, Any], label: str, lrs: Iterable[float]) -> None:
    """Trains every seed at every learning rate of ``lrs`` that is not recorded yet: in one
    sweep (the default) or one run at a time."""
    seeds = [int(s) for s in self.grid["seeds"]]
    missing = [float(lr) for lr in lrs
               if any(_key(task["name"], label, lr, s) not in self.done for s in seeds)]
    if not missing:
      return
    if not (self.batched and task.get("batched", self.grid.get("batched", True))):
      for lr in missing:
        for seed in seeds:
          self.run(task, label, lr, seed)
      return
    config = self.config(task, label)
    train_data, test_data = self.datasets(config)
    start = time.perf_counter()
    results = sweep.sweep(config, missing, seeds, train_data=train_data, test_data=test_data,
                          progress=self.progress, **self.placement)
    wall = time.perf_counter() - start
    for (lr, seed), result in results.items():
      if _key(task["name"], label, lr, seed) not in self.done:
        self._record(task, label, lr, seed, config, result, wall / len(results))
    finals = {lr: float(np.median([final_loss(self.done[_key(task["name"], label, lr, s)])
                                   for s in seeds])) for lr in missing}
    print(f"[{task['name']}] {label}: {len(results)} runs in {wall:.0f}s; median final loss "
          + ", ".join(f"{lr:.3g}: {f:.4f}" for lr, f in finals.items()), flush=True)

  def records(self, task: dict[str, Any], label: str) -> dict[float, list[dict]]:
    by_lr: dict[float, list[dict]] = {}
    for (t, lab, lr, _), r in self.done.items():
      if t == task["name"] and lab == label:
        by_lr.setdefault(lr, []).append(r)
    return by_lr

  def best_lr(self, task: dict[str, Any], label: str) -> Optional[float]:
    """:func:`avggrad.protocol.best_lr` among learning rates with every seed done."""
    seeds = self.grid["seeds"]
    return protocol.best_lr({lr: [final_loss(r) for r in records]
                             for lr, records in self.records(task, label).items()
                             if len(records) >= len(seeds)})

  def lrs(self, task: dict[str, Any], label: str) -> list[float]:
    """The learning rates an optimizer starts from on a task: the task's ``lrs`` for that
    optimizer (``{"label": [...]}``) or for all, else the grid's."""
    lrs = task.get("lrs", self.grid["lrs"])
    if isinstance(lrs, dict):
      lrs = lrs.get(label, lrs.get("*", self.grid["lrs"]))
    return [float(lr) for lr in lrs]

  def fastest_lr(self, task: dict[str, Any], label: str) -> Optional[float]:
    """:func:`avggrad.protocol.fastest_lr` (AlgoPerf's rule) among learning rates with every
    seed done; ``None`` without a target or when no rate reaches it."""
    target = task.get("target")
    if target is None:
      return None
    steps = task_config(self.grid, task).steps
    return protocol.fastest_lr(
        {lr: [record_iterations(r, target, steps) for r in records]
         for lr, records in self.records(task, label).items()},
        seeds=len(self.grid["seeds"]))

  def edge_lr(self, task: dict[str, Any], label: str) -> Optional[float]:
    """The rate to extend the ladder from: the final-loss rule's best rate or AlgoPerf's
    fastest rate, whichever sits on an edge of what has run (the final-loss rate first)."""
    ran = sorted(self.records(task, label))
    picks = [self.best_lr(task, label), self.fastest_lr(task, label)]
    for pick in picks:
      if pick is not None and pick in (ran[0], ran[-1]):
        return pick
    return picks[0]

  def run_optimizer(self, task: dict[str, Any], label: str) -> None:
    lrs = self.lrs(task, label)
    self.run_lrs(task, label, lrs)
    max_ext = self.grid.get("max_extensions", 2)
    if isinstance(max_ext, dict):
      max_ext = max_ext.get(label, max_ext.get("*", 2))
    max_ext = int(max_ext)
    geometric = self.grid.get("ladder") == "geometric" and len(lrs) > 1
    ratio = (max(lrs) / min(lrs)) ** (1 / (len(lrs) - 1)) if geometric else None
    for _ in range(2 * max_ext):
      ran = sorted(self.records(task, label))
      best = self.edge_lr(task, label)
      if best is None or len(ran) < 2:
        return
      below = sum(lr < min(lrs) for lr in ran)
      above = sum(lr > max(lrs) for lr in ran)
      if best == ran[0] and below < max_ext:
        if geometric:
          new = [float(f"{best / ratio ** k:.3g}") for k in range(1, max_ext - below + 1)]
        else:
          new = [best / 3.0 if f"{best:.0e}".startswith("1") else best / (10 / 3)]
      elif best == ran[-1] and above < max_ext:
        if geometric:
          new = [float(f"{best * ratio ** k:.3g}") for k in range(1, max_ext - above + 1)]
        else:
          new = [best * 3.0 if f"{best:.0e}".startswith("1") else best * (10 / 3)]
      else:
        return
      if not geometric:
        new = [float(f"{new[0]:.1g}")]
      self.run_lrs(task, label, new)

  def set_target(self, task: dict[str, Any]) -> Optional[float]:
    """Computes the task's target from its baselines and records it in the results folder's
    ``targets.json``."""
    if task.get("target") is not None:
      return task["target"]
    fraction = float(self.grid.get("target_fraction", 0.8))
    config = task_config(self.grid, task)
    # Each baseline's rates with every seed done (as best_lr picks among them); the rule
    # itself is protocol's, and it waits (None) while a baseline has no complete rate.
    seeds = len(self.grid["seeds"])
    baselines = {label: {rate: [(r["losses"], r["status"] == "ok") for r in runs]
                         for rate, runs in self.records(task, label).items() if len(runs) >= seeds}
                 for label in self.grid["baselines"] if label in task_optimizers(self.grid, task)}
    chosen = protocol.set_target(baselines, fraction, config.steps)
    if chosen is None:
      return None
    target, best_label, best_lr = chosen
    runs = baselines[best_label][best_lr]
    target = float(f"{target:.5g}")
    source = (f"{best_label} (lr {best_lr:g}) smoothed loss at {fraction:.0%} of "
              f"{config.steps} steps, median of {len(runs)} seeds")
    # Recorded beside the runs, not in the grid file; re-read first so that concurrent
    # shards do not overwrite each other's targets (the first one set stays).
    folder = os.path.dirname(self.out)
    targets = read_targets(folder)
    entry = targets.setdefault(task["name"], {"target": target, "target_source": source})
    target = entry["target"]
    with open(os.path.join(folder, "targets.json.tmp"), "w") as f:
      json.dump(targets, f, indent=1)
    os.replace(os.path.join(folder, "targets.json.tmp"), os.path.join(folder, "targets.json"))
    task["target"] = target
    print(f"[{task['name']}] target set to {target} from {best_label}", flush=True)
    return target


def final_loss(record: dict[str, Any]) -> float:
  """:func:`avggrad.protocol.score` of a run record."""
  return protocol.score(record["losses"], record["status"] == "ok")


def record_iterations(record: dict[str, Any], target: Optional[float],
                      steps: int) -> Optional[int]:
  """:func:`avggrad.protocol.iterations` of a run record: iterations to ``target`` (``None``
  for a miss, a run that is not ok, or no target)."""
  return protocol.iterations(record["losses"], record["status"] == "ok", target, steps)


def matches(label: str, patterns: str) -> bool:
  """Whether ``label`` matches one of the comma-separated globs in ``patterns``."""
  return any(fnmatch.fnmatch(label, p.strip()) for p in patterns.split(","))


def unmatched_patterns(grid: dict[str, Any], patterns: str) -> list[str]:
  """The comma-separated globs of ``patterns`` that match none of the grid's optimizers (a
  typo would otherwise run nothing, silently)."""
  return [p.strip() for p in patterns.split(",")
          if not any(fnmatch.fnmatch(label, p.strip()) for label in grid["optimizers"])]


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grid", nargs="?", help="grid file (JSON)")
  parser.add_argument("--quick", action="store_true",
                      help=f"run the quick slice ({os.path.relpath(QUICK_GRID)})")
  parser.add_argument("--tasks", default="*",
                      help="only tasks whose name matches one of these comma-separated globs")
  parser.add_argument("--optimizers", default="*",
                      help="only optimizers matching one of these comma-separated globs "
                           "(the baselines always run: they set the target)")
  parser.add_argument("--shard", default="0/1",
                      help="i/n: run every n-th of the selected tasks, starting at i")
  parser.add_argument("--results-dir", default=None,
                      help="default results/<name> in the current folder (or under "
                           "$AVGGRAD_RESULTS_DIR)")
  parser.add_argument("--pack", action="store_true",
                      help="pack the results folder's run files into runs.jsonl.xz and stop")
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"),
                      help="folder with the datasets' original files (default "
                           "$AVGGRAD_DATA_DIR)")
  parser.add_argument("--progress", action="store_true")
  parser.add_argument("--one-at-a-time", action="store_true",
                      help="train runs one by one instead of one sweep per optimizer")
  parser.add_argument("--devices", type=int, default=None,
                      help="data parallel over this many devices (default: all JAX sees)")
  parser.add_argument("--shard-params", action="store_true",
                      help="shard parameters FSDP-style instead of replicating them")
  args = parser.parse_args(argv)
  path = QUICK_GRID if args.quick else args.grid
  if path is None:
    parser.error("give a grid file or --quick")
  i, n = (int(x) for x in args.shard.split("/"))
  if not 0 <= i < n:
    parser.error("--shard must be i/n with 0 <= i < n")
  grid = load_grid(path)
  unknown = unmatched_patterns(grid, args.optimizers)
  if unknown:
    parser.error(f"--optimizers: {', '.join(unknown)} matches no optimizer of the grid "
                 f"({', '.join(grid['optimizers'])})")
  out = results_path(grid, args.results_dir, write=True)
  if args.pack:
    before, after = pack_results(os.path.dirname(out))
    print(f"packed {os.path.dirname(out)}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return
  if n > 1:
    out = out.replace("runs.jsonl", f"runs.shard{i}of{n}.jsonl")
  runner = Runner(path, grid, out, progress=args.progress, data_dir=args.data_dir,
                  batched=not args.one_at_a_time, devices=args.devices,
                  shard_params=args.shard_params)
  start = time.perf_counter()
  selected = [task for task in grid["tasks"] if matches(task["name"], args.tasks)]
  for task in selected[i::n]:
    labels = task_optimizers(grid, task)
    for label in labels:
      if label in grid["baselines"]:
        runner.run_optimizer(task, label)
    runner.set_target(task)
    for label in labels:
      if label not in grid["baselines"] and matches(label, args.optimizers):
        runner.run_optimizer(task, label)
  print(f"done in {time.perf_counter() - start:.0f}s; results in {out}", file=sys.stderr)


if __name__ == "__main__":
  main()
