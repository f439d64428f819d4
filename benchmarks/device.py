"""One command that measures whatever accelerator JAX sees: step costs and a tuned sweep.

  PYTHONPATH=. python -m benchmarks.device --budget 480 [--out DIR] [--quick]

Needs only JAX, Flax, Optax and NumPy (nothing else is imported), so it runs from a checkout
on a machine where nothing can be installed. Two parts, each skipped or cut short when the
budget runs out (what was measured is written after every piece, so a partial result is
still a result):

1. **Step cost** of ``avggrad.adam`` against ``optax.adam`` at three MLP sizes (16 x 128 at
   batch 128, 32 x 1024 at batch 512, 8 x 4096 at batch 4096; the embedded images): the default
   (far end on every 4th example, ``batch=``), the whole batch, every 8th example, and a
   bfloat16 far end on every 4th. Timed interleaved in one process
   (:func:`avggrad.timing.step_seconds`, the training loop's own step).
2. **A tuned sweep** on two deep tasks of the embedded Fashion-MNIST subset (16-layer tanh
   MLP, 20-layer ELU MLP, width 128, batch 128): Adam, ``avggrad.adam``, NAdam, schedule-free
   AdamW and Muon, each on a ladder of learning rates (6 per decade) x 2 seeds in one vmapped
   program (:func:`avggrad.sweep.sweep`), each at its own best rate; the target is Adam's
   smoothed loss at 80% of the budget; iterations and seconds to it (seconds = median
   iterations x the interleaved step time), against Adam and against the best peer.

Writes ``benchmarks/results/device/<device>.json`` and ``<device>.md`` (or into ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

import avggrad
from avggrad import data, protocol, sweep, timing, training

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = [(16, 128, 128), (32, 1024, 512), (8, 4096, 4096)]
QUICK_SIZES = [(4, 32, 32), (2, 64, 64)]
VARIANTS: dict[str, str] = {
    "optax.adam": "optax-adam",
    "avggrad.adam (1/4 batch, default)": "avg-adam",
    "avggrad.adam (whole batch)": "avg-adam:far_batch_fraction=1",
    "avggrad.adam (1/8 batch)": "avg-adam:far_batch_fraction=0.125",
    "avggrad.adam (1/4 batch, bfloat16 far end)": "avg-adam:far_dtype=bfloat16",
}
"""The step-cost variants: label -> registry spec (:mod:`avggrad.optimizers`)."""
PEERS = ["adam", "avg-adam", "nadam", "schedule-free-adamw", "muon"]
TASKS = {
    "fmnist-small-mlp16-tanh": dict(depth=16, activation="tanh", init="glorot_uniform"),
    "fmnist-small-mlp20-elu": dict(depth=20, activation="elu", init="lecun_normal"),
}


def device_name() -> str:
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform) or device.platform
  return re.sub(r"[^A-Za-z0-9]+", "_", f"{device.platform}_{kind}").strip("_").lower()


class Budget:
  """Wall-clock left of ``seconds``."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def left(self) -> float:
    return self.end - time.perf_counter()


def step_cost(sizes: list[tuple[int, int, int]], budget: Budget, *, number: int,
              repeats: int, save: Callable[[], None], out: dict[str, Any]) -> None:
  """Part 1: step time of each variant relative to ``optax.adam``, per size (the training
  step of :mod:`avggrad.training`, on the embedded subset's images, timed by
  :func:`avggrad.timing.step_seconds`)."""
  train_data = data.load(data.EMBEDDED, "train")
  for depth, width, batch in sizes:
    name = f"{depth}x{width}, batch {batch}"
    if budget.left() < 5:
      out["skipped"].append(f"step cost {name}: budget spent")
      continue
    config = training.TrainConfig(model="mlp", depth=depth, width=width, batch_size=batch,
                                  activation="tanh")
    measured = timing.step_seconds(config, list(VARIANTS.values()), train_data,
                                   number=number, repeats=repeats)
    seconds = [measured[spec]["seconds_per_step"] for spec in VARIANTS.values()]
    base = seconds[0]
    out["step_cost"][name] = {v: {"seconds": s, "vs_optax_adam": s / base}
                              for v, s in zip(VARIANTS, seconds)}
    save()


def tuned_sweep(tasks: dict[str, dict[str, Any]], budget: Budget, *, steps: int,
                lrs: list[float], seeds: list[int], save: Callable[[], None],
                out: dict[str, Any]) -> None:
  """Part 2: each optimizer at its best rate; iterations and seconds to Adam's target."""
  train_data = data.load(data.EMBEDDED, "train")
  test_data = data.load(data.EMBEDDED, "test")
  for task, fields in tasks.items():
    config = training.TrainConfig(width=128, batch_size=128, steps=steps,
                                  eval_every=max(1, steps // 4), eval_examples=500, **fields)
    runs: dict[str, dict[tuple[float, int], training.RunResult]] = {}
    for spec in PEERS:
      if budget.left() < 10:
        out["skipped"].append(f"sweep {task} {spec}: budget spent")
        continue
      runs[spec] = sweep.sweep(dataclasses.replace(config, optimizer=spec), lrs, seeds,
                               train_data=train_data, test_data=test_data, progress=False)
    if "adam" not in runs:
      continue
    step_times = timing.step_seconds(config, list(runs), train_data, number=2, repeats=3)
    out["sweeps"][task] = summarize(config, runs, step_times, lrs, seeds)
    save()


def summarize(config: training.TrainConfig, runs: dict[str, dict], step_times: dict,
              lrs: list[float], seeds: list[int]) -> dict[str, Any]:
  """The protocol's figures for one task (:mod:`avggrad.protocol`)."""
  def score(r: training.RunResult) -> float:
    return protocol.score(r.losses, not r.diverged)

  best = {spec: protocol.best_lr({lr: [score(res[(lr, s)]) for s in seeds] for lr in lrs})
          for spec, res in runs.items()}
  target, _, _ = protocol.set_target(
      {"adam": {lr: [(runs["adam"][(lr, s)].losses, not runs["adam"][(lr, s)].diverged)
                     for s in seeds] for lr in lrs}}, 0.8, config.steps)
  rows = {}
  for spec, res in runs.items():
    chosen = [res[(best[spec], s)] for s in seeds]
    iters = [protocol.iterations(r.losses, not r.diverged, target, config.steps)
             for r in chosen]
    median = avggrad.metrics.median_iterations(iters)
    sps = step_times[spec]["seconds_per_step"]
    rows[spec] = {"best_lr": best[spec], "iterations": iters, "median_iterations": median,
                  "seconds_per_step": sps,
                  "seconds_to_target": protocol.seconds_to_target(median, sps),
                  "final_loss": float(np.median([score(r) for r in chosen]))}
  peers = [s for s in rows if not s.startswith("avg-")]
  best_peer = min(peers, key=lambda s: (rows[s]["seconds_to_target"], s))
  for row in rows.values():
    row["iterations_vs_adam"] = protocol.ratio(row["median_iterations"],
                                               rows["adam"]["median_iterations"])
    row["wall_vs_adam"] = protocol.ratio(row["seconds_to_target"],
                                         rows["adam"]["seconds_to_target"])
    row["wall_vs_best_peer"] = protocol.ratio(row["seconds_to_target"],
                                              rows[best_peer]["seconds_to_target"])
  return {"target": target, "best_peer": best_peer, "steps": config.steps, "lrs": lrs,
          "seeds": seeds, "optimizers": rows}


def markdown(out: dict[str, Any]) -> str:
  """The short summary written beside the JSON."""
  lines = [f"# Device benchmark: {out['device']}", "",
           f"`python -m benchmarks.device --budget {out['budget']:g}`; JAX {out['jax']}, "
           f"{out['device_count']} device(s); {out['elapsed']:.0f} s.", ""]
  if out["step_cost"]:
    sizes = list(out["step_cost"])
    lines += ["## Step time relative to `optax.adam`", "",
              "| variant | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for variant in VARIANTS:
      cells = []
      for size in sizes:
        row = out["step_cost"][size][variant]
        cells.append(f"{row['vs_optax_adam']:.2f} ({1e3 * row['seconds']:.2f} ms)")
      lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
  for task, s in out["sweeps"].items():
    lines += [f"## {task}: iterations and seconds to Adam's target ({s['target']:.4f})", "",
              f"{s['steps']} steps, {len(s['lrs'])} rates x {len(s['seeds'])} seeds; best "
              f"peer in wall-clock: {s['best_peer']}.", "",
              "| optimizer | best lr | iterations | vs Adam | ms/step | s to target | vs Adam "
              "| vs best peer | final loss |", "|---|---|---|---|---|---|---|---|---|"]
    for spec, r in s["optimizers"].items():
      it = r["median_iterations"]
      lines.append(
          f"| {spec} | {r['best_lr']:.3g} | {'n.r.' if math.isinf(it) else f'{it:.0f}'} | "
          f"{_fmt(r['iterations_vs_adam'])} | {1e3 * r['seconds_per_step']:.3f} | "
          f"{_fmt(r['seconds_to_target'], 3)} | {_fmt(r['wall_vs_adam'])} | "
          f"{_fmt(r['wall_vs_best_peer'])} | {r['final_loss']:.4f} |")
    lines.append("")
  if out["skipped"]:
    lines += ["Not measured (budget): " + "; ".join(out["skipped"]) + ".", ""]
  return "\n".join(lines)


def _fmt(value: float, digits: int = 2) -> str:
  if math.isnan(value):
    return "-"
  return "n.r." if math.isinf(value) else f"{value:.{digits}f}"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--budget", type=float, default=480.0, help="seconds in all")
  parser.add_argument("--out", default=os.path.join(HERE, "results", "device"),
                      help="folder for <device>.json and <device>.md")
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes and budgets (a smoke test, e.g. on CPU in the tests)")
  parser.add_argument("--parts", default="step_cost,sweep", help="which parts to run")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  budget = Budget(args.budget)
  name = device_name()
  os.makedirs(args.out, exist_ok=True)
  out: dict[str, Any] = {"device": name, "jax": jax.__version__,
                         "device_count": jax.device_count(), "budget": args.budget,
                         "quick": args.quick, "step_cost": {}, "sweeps": {}, "skipped": [],
                         "elapsed": 0.0}

  def save() -> None:
    out["elapsed"] = time.perf_counter() - start
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
      json.dump(out, f, indent=1, default=float)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
      f.write(markdown(out) + "\n")

  parts = args.parts.split(",")
  if "step_cost" in parts:
    step_cost(QUICK_SIZES if args.quick else SIZES, budget, number=2 if args.quick else 10,
              repeats=2 if args.quick else 5, save=save, out=out)
  if "sweep" in parts:
    if args.quick:
      tasks = {k: v | {"depth": 2} for k, v in list(TASKS.items())[:1]}
      tuned_sweep(tasks, budget, steps=20, lrs=[1e-3, 3e-3], seeds=[0], save=save, out=out)
    else:
      lrs = [float(f"{10 ** (e / 6):.3g}") for e in range(-24, -11)]  # 1e-4 .. 1e-2
      tuned_sweep(TASKS, budget, steps=1000, lrs=lrs, seeds=[0, 1], save=save, out=out)
  save()
  print(markdown(out))
  return out


if __name__ == "__main__":
  main()
